"""softmaxloss.torch where a wrong answer would be silent (issue 12): the gradient written
in place over memory PyTorch protects, forward-mode AD and torch.func transforms, and
ignored rows under a NaN or infinite upstream gradient. Each held to what PyTorch itself
does with the same tensors. Skips without torch."""

import copy
import math
import re

import numpy as np
import pytest
from _helpers import random_probabilities, random_targets

import softmaxloss as sml

torch = pytest.importorskip("torch")
smt = pytest.importorskip("softmaxloss.torch")
F = torch.nn.functional
forward_ad = torch.autograd.forward_ad

# torch compiles its forward-AD decompositions with torch.jit.script the first time a
# dual tensor is made (torch.func.jvp too), which warns; pytest makes warnings errors.
torch_jvp_warning = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def target_for(logits):
    """Class indices for every row of (N, C) logits, every class used."""
    return torch.arange(logits.shape[0]) % logits.shape[1]


# ---- inplace_grad=True: PyTorch's in-place rules --------------------------------------

def leaf(*shape):
    return torch.randn(*shape or (4, 3), dtype=torch.float64, requires_grad=True)


def non_leaf(*shape):
    return leaf(*shape) * 2


def view_in(context, tensor):
    with context():
        return tensor[:]


class ReturnsItsInput(torch.autograd.Function):
    """A custom Function returning its input as-is: PyTorch makes the output a view."""

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad


def owned(make_owner, make_logits):
    """A case: (logits, the tensor owning their memory), built afresh on each call."""
    def build():
        owner = make_owner()
        return make_logits(owner), owner
    return build


# The sentence PyTorch's error for an in-place op on such a tensor says (`tensor.mul_(1)`).
LEAF = "a leaf Variable that requires grad is being used in an in-place operation"
VIEW_OF_LEAF = "a view of a leaf Variable that requires grad is being used in an in-place operation"
MULTIPLE_VIEWS = "the output of a function that returns multiple views"
NO_GRAD_VIEW = "created in no_grad mode"
INFERENCE_VIEW = "created in inference mode"
CUSTOM_FUNCTION_VIEW = "created inside a custom Function"

REFUSED = {
    "leaf": (owned(leaf, lambda w: w), LEAF),
    "parameter": (owned(lambda: torch.nn.Parameter(torch.randn(4, 3)), lambda p: p), LEAF),
    "slice of a leaf": (owned(leaf, lambda w: w[:]), VIEW_OF_LEAF),
    "view of a leaf": (owned(lambda: leaf(12), lambda w: w.view(4, 3)), VIEW_OF_LEAF),
    "view of a view of a leaf": (owned(leaf, lambda w: w.view(-1)[:12].view(4, 3)), VIEW_OF_LEAF),
    "view of a parameter": (owned(lambda: torch.nn.Parameter(torch.randn(4, 3)), lambda p: p.view(4, 3)),
                            VIEW_OF_LEAF),
    "transposed leaf (not written, refused alike)": (owned(lambda: leaf(3, 4), lambda w: w.t()), VIEW_OF_LEAF),
    "view made to require grad": (owned(lambda: torch.randn(4, 3), lambda b: b[:].requires_grad_()), VIEW_OF_LEAF),
    "chunk of a leaf": (owned(lambda: leaf(8, 3), lambda w: w.chunk(2)[0]), MULTIPLE_VIEWS),
    "chunk of a non-leaf": (owned(lambda: non_leaf(8, 3), lambda h: h.chunk(2)[1]), MULTIPLE_VIEWS),
    "unbind of a non-leaf": (owned(lambda: non_leaf(2, 4, 3), lambda h: h.unbind(0)[0]), MULTIPLE_VIEWS),
    "no_grad view of a leaf": (owned(leaf, lambda w: view_in(torch.no_grad, w)), NO_GRAD_VIEW),
    "no_grad view of a non-leaf": (owned(non_leaf, lambda h: view_in(torch.no_grad, h)), NO_GRAD_VIEW),
    "view of a no_grad view": (owned(non_leaf, lambda h: view_in(torch.no_grad, h)[:]), NO_GRAD_VIEW),
    "inference_mode view of a leaf": (owned(leaf, lambda w: view_in(torch.inference_mode, w)), INFERENCE_VIEW),
    "inference_mode view of a non-leaf": (owned(non_leaf, lambda h: view_in(torch.inference_mode, h)),
                                          INFERENCE_VIEW),
    "input returned by a custom Function": (owned(non_leaf, ReturnsItsInput.apply), CUSTOM_FUNCTION_VIEW),
}


@pytest.mark.parametrize("build,rule", REFUSED.values(), ids=REFUSED.keys())
def test_inplace_grad_is_refused_where_pytorch_refuses_an_inplace_op(build, rule):
    """inplace_grad=True writes the gradient over the logits' memory: refused, with
    PyTorch's rule in a RuntimeError, for every tensor on which PyTorch refuses an in-place
    op, before any work (the memory's owner keeps its values and version)."""
    logits, _ = build()
    with pytest.raises(RuntimeError, match=re.escape(rule)):
        logits.mul_(1)  # PyTorch's own verdict on such a tensor
    logits, owner = build()
    before, version = owner.detach().clone(), owner._version
    with pytest.raises(RuntimeError, match=re.escape(rule)):
        smt.cross_entropy(logits, target_for(logits), inplace_grad=True)
    assert torch.equal(owner.detach(), before), "the memory was written"
    assert owner._version == version


VIEWS_OF_A_NON_LEAF = {
    "itself": lambda h: h,
    "reshaped": lambda h: h.view(24, 5),
    "view of a view": lambda h: h.view(-1).view(24, 5),
    "first rows": lambda h: h[:6],
}


@pytest.mark.parametrize("view", VIEWS_OF_A_NON_LEAF.values(), ids=VIEWS_OF_A_NON_LEAF.keys())
def test_inplace_grad_over_a_view_of_a_non_leaf_is_allowed_and_exact(rng, view):
    """Logits computed by the model, or a view of them (as PyTorch allows an in-place op
    there): overwritten with the gradient, and the model's gradients are PyTorch's."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 10).double()
    twin = copy.deepcopy(model)
    x = torch.tensor(rng.standard_normal((12, 8)))
    logits = view(model(x))
    target = target_for(logits)
    before = logits.detach().clone()
    loss = smt.cross_entropy(logits, target, inplace_grad=True)
    _, expected_grad = sml.cross_entropy_with_grad(before.numpy(), target.numpy())
    np.testing.assert_array_equal(logits.detach().numpy(), expected_grad)  # overwritten
    loss.backward()
    F.cross_entropy(view(twin(x)), target).backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("view", [lambda e: e, lambda e: e[:], lambda e: e.view(-1).view(4, 3)],
                         ids=["itself", "slice", "view of a view"])
def test_inplace_grad_over_memory_another_node_saved_fails_at_backward(view):
    """exp saves its output for backward: overwriting that output, or a view of it, bumps
    the version counter the views share, so backward raises PyTorch's own error."""
    logits = view(leaf().exp())
    loss = smt.cross_entropy(logits, target_for(logits), inplace_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("view", [lambda w: w, lambda w: w[:]], ids=["leaf", "view of a leaf"])
def test_inplace_grad_with_grad_mode_off_only_computes_the_loss(context, view):
    """Grad mode off: PyTorch allows in-place ops even on a parameter, and no gradient is
    needed: the loss is PyTorch's and nothing is written."""
    w = leaf()
    before, version = w.detach().clone(), w._version
    with context():
        loss = smt.cross_entropy(view(w), target_for(w), inplace_grad=True)
    torch.testing.assert_close(loss, F.cross_entropy(before, target_for(w)), rtol=1e-12, atol=0)
    assert torch.equal(w.detach(), before) and w._version == version


def test_logits_overwritten_by_inplace_grad_are_not_differentiated_as_the_old_logits(rng):
    """After inplace_grad=True the logits hold the gradient, and their history is rebased
    as after any PyTorch in-place op: a later differentiable use of them, or of the base
    they view, is a RuntimeError at backward, not the gradient of the old logits. Rows of
    the base outside the view stay differentiable, exactly."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 10).double()
    x = torch.tensor(rng.standard_normal((12, 8)))
    logits = model(x)
    loss = smt.cross_entropy(logits, target_for(logits), inplace_grad=True)
    with pytest.raises(RuntimeError, match="inplace_grad=True"):
        (loss + logits.square().mean()).backward()
    h = model(x)
    logits = h.view(24, 5)
    loss = smt.cross_entropy(logits, target_for(logits), inplace_grad=True)
    with pytest.raises(RuntimeError, match="inplace_grad=True"):
        (loss + h.sum()).backward()
    logits = model(x)  # the loss of the overwritten logits: of the gradient, not the logits
    loss = smt.cross_entropy(logits, target_for(logits), inplace_grad=True)
    with pytest.raises(RuntimeError, match="inplace_grad=True"):
        smt.cross_entropy(logits, target_for(logits)).backward()

    model.zero_grad()  # the refused backward calls accumulated into it
    twin = copy.deepcopy(model)
    h = model(x)
    loss = smt.cross_entropy(h[:6], target_for(h[:6]), inplace_grad=True)
    (loss + h[6:].square().mean()).backward()
    h = twin(x)
    (F.cross_entropy(h[:6], target_for(h[:6])) + h[6:].square().mean()).backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)


# ---- forward-mode AD and torch.func: refused, never a dropped tangent ---------------------

X = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5], [0.0, 3.0, 1.0], [-2.0, 1.0, 0.5]], dtype=torch.float64)
TARGET = torch.tensor([0, 1, 2, 0])

TRANSFORMS = {
    "grad": lambda f, x: torch.func.grad(f)(x),
    "vjp": lambda f, x: torch.func.vjp(f, x)[1](torch.ones((), dtype=x.dtype)),
    "jacrev": lambda f, x: torch.func.jacrev(f)(x),
    "jvp": lambda f, x: torch.func.jvp(f, (x,), (torch.ones_like(x),)),
    "jacfwd": lambda f, x: torch.func.jacfwd(f)(x),
    "hessian": lambda f, x: torch.func.hessian(f)(x),
    "vmap": lambda f, x: torch.func.vmap(f)(torch.stack([x, 2 * x])),
    "functionalize": lambda f, x: torch.func.functionalize(f)(x),
}
UNSUPPORTED_TRANSFORM = "torch.func.*not supported.*torch.nn.functional.cross_entropy"


@torch_jvp_warning
@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_torch_func_transforms_are_refused_clearly(transform):
    """Under every torch.func transform the loss is a NotImplementedError saying what to
    use instead (which works under the same transform), not a storage error or, under
    functionalize, a loss of uninitialised memory."""
    transform(lambda z: F.cross_entropy(z, TARGET), X)
    with pytest.raises(NotImplementedError, match=UNSUPPORTED_TRANSFORM):
        transform(lambda z: smt.cross_entropy(z, TARGET), X)


def test_a_transformed_target_or_weight_is_refused_too():
    """Batched targets under vmap, a weight differentiated by torch.func.grad."""
    targets = torch.stack([TARGET, TARGET.flip(0)])
    with pytest.raises(NotImplementedError, match="target.*" + UNSUPPORTED_TRANSFORM):
        torch.func.vmap(lambda t: smt.cross_entropy(X, t))(targets)
    with pytest.raises(NotImplementedError, match="weight.*" + UNSUPPORTED_TRANSFORM):
        torch.func.grad(lambda w: smt.cross_entropy(X, TARGET, weight=w))(torch.ones(3, dtype=X.dtype))


def dual_case(where):
    """cross_entropy's arguments with a forward-AD tangent on one of them."""
    tangent = lambda t: forward_ad.make_dual(t, torch.ones_like(t))  # noqa: E731
    args = dict(input=X, target=TARGET, weight=None, sample_weight=None)
    if where == "input":
        args["input"] = tangent(X)
    elif where == "input requiring grad":
        args["input"] = tangent(X.clone().requires_grad_(True))
    elif where == "probability target":
        args["target"] = tangent(torch.full_like(X, 1 / 3))
    else:
        args[where] = tangent(torch.ones(X.shape[1] if where == "weight" else X.shape[0], dtype=X.dtype))
    return args


@torch_jvp_warning
@pytest.mark.parametrize("where", ["input", "input requiring grad", "probability target", "weight", "sample_weight"])
def test_forward_ad_dual_tensors_are_refused_not_their_tangent_dropped(where):
    """A dual tensor anywhere in the arguments is a NotImplementedError (a RuntimeError)
    naming it, not a loss whose tangent is silently None."""
    with forward_ad.dual_level():
        args = dual_case(where)
        name = "target" if where == "probability target" else where.split()[0]
        with pytest.raises(NotImplementedError, match=f"{name} .*forward-mode AD.*torch.nn.functional.cross_entropy"):
            smt.cross_entropy(**args)
        assert issubclass(NotImplementedError, RuntimeError)


# ---- ignored rows under a NaN or infinite upstream gradient ---------------------------------

def torch_and_ours(x, target, cotangent, **options):
    """(PyTorch's gradient, ours) of the loss for the upstream gradient `cotangent`."""
    grads = []
    for loss_function in (F.cross_entropy, smt.cross_entropy):
        logits = x.clone().requires_grad_(True)
        loss_function(logits, target, **options).backward(cotangent)
        grads.append(logits.grad)
    return grads


def assert_as_torch(ours, expected):
    """Equal to PyTorch's gradient elementwise, NaN where it is NaN, with one exception:
    where PyTorch's log_softmax backward forms -inf + inf (an infinite upstream, at the
    target class) it gives NaN and we give the product grad * upstream, an infinity."""
    infinite_upstream = ~torch.isfinite(ours) & ~torch.isnan(ours) & torch.isnan(expected)
    expected = torch.where(infinite_upstream, ours, expected)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14, equal_nan=True)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted,smoothing", [(False, 0.0), (True, 0.0), (False, 0.2), (True, 0.2)],
                         ids=["plain", "weight", "smoothing", "weight-smoothing"])
@pytest.mark.parametrize("shape", [(9, 4), (5, 4, 3)], ids=["2d", "3d"])
def test_ignored_rows_get_zero_gradient_whatever_the_upstream(rng, bad, reduction, weighted, smoothing, shape):
    """A NaN or infinite upstream gradient (the scalar one, or per-row ones for 'none',
    some in ignored rows): ignored rows get exactly 0, as in PyTorch; the other rows get
    PyTorch's gradient, NaN where it is NaN."""
    x = torch.tensor(rng.standard_normal(shape))
    target = torch.from_numpy(random_targets(rng, shape, 1, n_ignored=3))
    ignored = target == -100
    weight = torch.tensor(rng.uniform(0.5, 2.0, shape[1])) if weighted else None
    if reduction == "none":
        cotangent = torch.tensor(rng.uniform(-2, 2, target.shape))
        cotangent[ignored.nonzero()[0].unbind()] = bad  # an ignored row's
        cotangent[(~ignored).nonzero()[0].unbind()] = bad  # and a counted row's
    else:
        cotangent = torch.tensor(bad, dtype=x.dtype)
    expected, ours = torch_and_ours(x, target, cotangent, weight=weight, reduction=reduction,
                                    label_smoothing=smoothing)
    ignored_entries = ignored.unsqueeze(1).expand_as(x)
    assert torch.all(expected[ignored_entries] == 0)  # PyTorch's behaviour, which we follow
    assert torch.all(ours[ignored_entries] == 0)
    assert_as_torch(ours, expected)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nan_upstream_with_probability_targets_is_as_torch(rng, reduction):
    """Probability targets have no ignored rows: a NaN upstream makes its rows NaN."""
    shape = (6, 5)
    x = torch.tensor(rng.standard_normal(shape))
    target = torch.tensor(random_probabilities(rng, shape, 1))
    cotangent = torch.tensor(math.nan, dtype=x.dtype)
    if reduction == "none":
        cotangent = torch.tensor(rng.uniform(-2, 2, shape[0]))
        cotangent[2] = math.nan
    expected, ours = torch_and_ours(x, target, cotangent, reduction=reduction, label_smoothing=0.1)
    assert_as_torch(ours, expected)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_unbatched_ignored_input_gets_zero_under_a_nan_upstream(reduction):
    """A (C,) input whose scalar target is ignore_index: its gradient is 0, as PyTorch's."""
    expected, ours = torch_and_ours(X[0], torch.tensor(-100), torch.tensor(math.nan, dtype=X.dtype),
                                    reduction=reduction)
    assert torch.equal(expected, torch.zeros(3, dtype=X.dtype))
    assert torch.equal(ours, expected)


def test_loss_backward_hands_over_the_saved_gradient_without_a_pass():
    """grad_output == 1 (loss.backward()): backward returns the gradient the forward pass
    saved, the same memory, with no multiplication and no finiteness check over it."""
    logits = X.clone().requires_grad_(True)
    loss = smt.cross_entropy(logits, torch.tensor([0, -100, 2, 0]))
    (saved, *_) = loss.grad_fn.saved_tensors
    returned = []
    loss.grad_fn.register_hook(lambda grad_inputs, grad_outputs: returned.append(grad_inputs[0]))
    loss.backward()
    assert returned[0].data_ptr() == saved.data_ptr()

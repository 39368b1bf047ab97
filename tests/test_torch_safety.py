"""softmaxloss.torch where a wrong answer would be silent (issue 12): the gradient written
in place over memory PyTorch protects, forward-mode AD and torch.func transforms (now
PyTorch's values; refused only for nested forward mode and inplace_grad=True), and
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


# ---- forward-mode AD and torch.func: PyTorch's values, never a dropped tangent ------------

X = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5], [0.0, 3.0, 1.0], [-2.0, 1.0, 0.5]], dtype=torch.float64)
TARGET = torch.tensor([0, 1, 2, 0])

TRANSFORMS = {
    "grad": lambda f, x: torch.func.grad(f)(x),
    "vjp": lambda f, x: torch.func.vjp(f, x)[1](torch.ones((), dtype=x.dtype)),
    "jacrev": lambda f, x: torch.func.jacrev(f)(x),
    "jvp": lambda f, x: torch.func.jvp(f, (x,), (torch.ones_like(x),)),
    "jacfwd": lambda f, x: torch.func.jacfwd(f)(x),
    "hessian": lambda f, x: torch.func.hessian(f)(x),
    "jacrev of jacrev": lambda f, x: torch.func.jacrev(torch.func.jacrev(f))(x),
    "jacrev of jacfwd": lambda f, x: torch.func.jacrev(torch.func.jacfwd(f))(x),
    "vmap": lambda f, x: torch.func.vmap(f)(torch.stack([x, 2 * x])),
    "vmap of grad": lambda f, x: torch.func.vmap(torch.func.grad(f))(torch.stack([x, 2 * x])),
    "grad of vmap": lambda f, x: torch.func.grad(lambda z: torch.func.vmap(f)(z).sum())(torch.stack([x, 2 * x])),
    "functionalize": lambda f, x: torch.func.functionalize(f)(x),
}
TARGETS = {"index": TARGET, "ignored": torch.tensor([0, -100, 2, 0]),
           "probabilities": torch.tensor(random_probabilities(np.random.default_rng(3), (4, 3), 1))}


@torch_jvp_warning
@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS.keys())
def test_torch_func_transforms_give_torchs_values(transform, target):
    """Under every torch.func transform, and compositions of them, the values of
    torch.nn.functional.cross_entropy under the same transform, not a storage error or,
    under functionalize, a loss of uninitialised memory."""
    options = dict(label_smoothing=0.1, weight=torch.tensor([1.0, 2.0, 0.5], dtype=X.dtype))
    expected = transform(lambda z: F.cross_entropy(z, target, **options), X)
    actual = transform(lambda z: smt.cross_entropy(z, target, **options), X)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-14)


@torch_jvp_warning
@pytest.mark.parametrize("transform", [lambda f, x: torch.func.jacfwd(torch.func.jacfwd(f))(x),
                                       lambda f, x: torch.func.jvp(lambda z: torch.func.jvp(f, (z,), (z,))[1],
                                                                   (x,), (x,))],
                         ids=["jacfwd of jacfwd", "jvp of jvp"])
def test_nested_forward_mode_is_refused_not_zeros(transform):
    """PyTorch gives zeros for the second-order tangent of an autograd.Function's jvp
    rule under nested forward mode: refused, saying what works instead."""
    with pytest.raises(NotImplementedError, match="nested forward-mode.*torch.func.hessian"):
        transform(lambda z: smt.cross_entropy(z, TARGET), X)


@pytest.mark.parametrize("transform", [lambda f, x: torch.func.functionalize(torch.func.grad(f))(x),
                                       lambda f, x: torch.func.grad(torch.func.functionalize(f))(x)],
                         ids=["functionalize of grad", "grad of functionalize"])
def test_functionalize_with_a_derivative_is_refused_clearly(transform):
    """PyTorch has no functionalize rule for an autograd.Function's derivatives (its own
    error is "NYI: Functionalize rule for custom_function_call"): refused, saying so."""
    with pytest.raises(NotImplementedError, match="functionalize together with grad.*functionalize alone"):
        transform(lambda z: smt.cross_entropy(z, TARGET), X)


def test_a_transformed_target_or_weight_is_as_torch():
    """Batched targets under vmap; the weight's and the probability target's gradients
    under torch.func.grad (PyTorch gives them for probability targets)."""
    targets = torch.stack([TARGET, TARGET.flip(0)])
    torch.testing.assert_close(torch.func.vmap(lambda t: smt.cross_entropy(X, t))(targets),
                               torch.func.vmap(lambda t: F.cross_entropy(X, t))(targets), rtol=1e-12, atol=0)
    probabilities = TARGETS["probabilities"]
    weight = torch.tensor([1.0, 2.0, 0.5], dtype=X.dtype)
    for argnums in (0, 1):
        expected = torch.func.grad(lambda t, w: F.cross_entropy(X, t, weight=w), argnums)(probabilities, weight)
        actual = torch.func.grad(lambda t, w: smt.cross_entropy(X, t, weight=w), argnums)(probabilities, weight)
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-14)


def dual_case(where):
    """cross_entropy's arguments with a forward-AD tangent on one of them (probability
    targets, so that the target and weight have PyTorch twins), and the tangents."""
    rng = np.random.default_rng(5)
    args = dict(input=X, target=TARGETS["probabilities"], weight=torch.tensor([1.0, 2.0, 0.5], dtype=X.dtype),
                sample_weight=None)
    key = {"input requiring grad": "input", "probability target": "target"}.get(where, where)
    if where == "input requiring grad":
        args["input"] = X.clone().requires_grad_(True)
    if where == "sample_weight":
        args["sample_weight"] = torch.ones(X.shape[0], dtype=X.dtype)
    tangent = torch.tensor(rng.standard_normal(tuple(args[key].shape)))
    args[key] = forward_ad.make_dual(args[key], tangent)
    return args


@torch_jvp_warning
@pytest.mark.parametrize("where", ["input", "input requiring grad", "probability target", "weight", "sample_weight"])
def test_forward_ad_tangents_are_torchs_not_dropped(where):
    """A dual tensor anywhere in the arguments: the loss's tangent is PyTorch's (for
    sample_weight, of ones, that of the loss times the weight), never None."""
    with forward_ad.dual_level():
        args = dual_case(where)
        actual = forward_ad.unpack_dual(smt.cross_entropy(**args, reduction="sum")).tangent
        sample_weight = args.pop("sample_weight")
        if sample_weight is None:
            expected = forward_ad.unpack_dual(F.cross_entropy(**args, reduction="sum")).tangent
        else:
            _, ds = forward_ad.unpack_dual(sample_weight)
            expected = (F.cross_entropy(**args, reduction="none") * ds).sum()
        assert actual is not None
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-14)


@torch_jvp_warning
@pytest.mark.parametrize("case", ["torch.func", "dual", "target requires grad"])
def test_inplace_grad_is_refused_where_it_cannot_be_honoured(case):
    """inplace_grad=True is eager, reverse-mode and first-order, for the logits only:
    under torch.func, with a dual tensor or a target that requires grad it is a
    RuntimeError saying so (inplace_grad=False works there)."""
    target = TARGETS["probabilities"]
    if case == "torch.func":
        with pytest.raises(RuntimeError, match="inplace_grad=True.*torch.func"):
            torch.func.grad(lambda z: smt.cross_entropy(z * 1, TARGET, inplace_grad=True))(X)
    elif case == "dual":
        with forward_ad.dual_level(), pytest.raises(RuntimeError, match="forward-AD.*inplace_grad=False"):
            smt.cross_entropy(forward_ad.make_dual(X, X), TARGET, inplace_grad=True)
    else:
        with pytest.raises(RuntimeError, match="target requires grad"):
            smt.cross_entropy(X.clone().requires_grad_() * 1, target.clone().requires_grad_(), inplace_grad=True)


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
    saved = [t.data_ptr() for t in loss.grad_fn.saved_tensors if t.shape == X.shape and t.data_ptr() != logits.data_ptr()]
    returned = []
    loss.grad_fn.register_hook(lambda grad_inputs, grad_outputs: returned.append(grad_inputs[0]))
    loss.backward()
    assert saved and returned[0].data_ptr() in saved

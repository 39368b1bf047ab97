"""softmaxloss.torch as a real PyTorch op (issue 15 item 1): torch.ops.softmaxloss.cross_entropy
under torch.compile(fullgraph=True), torch.library.opcheck, torch.func transforms, forward-mode
AD and double backward; the gradients with respect to probability targets, weights and sample
weights; F.cross_entropy's positional order; PyTorch's exception types; and PyTorch's own test
samples for the loss (the OpInfo of nn.functional.cross_entropy, the ModuleInfo of
nn.CrossEntropyLoss). Held to PyTorch where it has the same computation, else to `reference`
below (softmaxloss's formulas in differentiable torch ops). Skips without torch."""

import copy
import importlib
import itertools
import re
import warnings

import numpy as np
import pytest

import softmaxloss

torch = pytest.importorskip("torch")
smt = pytest.importorskip("softmaxloss.torch")
F = torch.nn.functional
forward_ad = torch.autograd.forward_ad

# torch compiles its forward-AD decompositions with torch.jit.script the first time a
# dual tensor is made (torch.func.jvp too), and inductor imports torch.jit.script_method
# users, which warn; pytest makes warnings errors.
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]

OP = torch.ops.softmaxloss.cross_entropy.default


def reference(x, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
              z_loss=0.0, sample_weight=None):
    """softmaxloss's loss (the SPEC's formulas) in torch ops, differentiable any number of
    times with respect to every float argument."""
    k = 1 if x.dim() >= 2 else 0
    n_classes = x.shape[k]
    logp = torch.log_softmax(x, k)
    lse = torch.logsumexp(x, k)
    w = torch.ones(n_classes, dtype=x.dtype) if weight is None else weight
    shape = [1] * x.dim()
    shape[k] = n_classes
    wb = w.reshape(shape)
    eps = label_smoothing
    s = torch.ones(lse.shape, dtype=x.dtype) if sample_weight is None else sample_weight
    if target.is_floating_point():
        y = (1 - eps) * target + eps / n_classes
        rows = s * (-(wb * y * logp).sum(k) + z_loss * lse**2)
        normaliser = s.sum() if sample_weight is not None else rows.numel()
    else:
        keep = target != ignore_index
        y = torch.where(keep, target, 0)
        picked = -logp.gather(k, y.unsqueeze(k)).squeeze(k)
        wy = w[y]
        rows = (1 - eps) * wy * picked + eps / n_classes * -(wb * logp).sum(k) + z_loss * lse**2
        rows = torch.where(keep, s * rows, 0)
        normaliser = torch.where(keep, s * wy, 0).sum()
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / normaliser


def make_inputs(rng, shape, kind, dtype=torch.float64, requires_grad=True, weighted=True, sample_weighted=False):
    """(logits, target, weight, sample_weight) for logits of `shape`, class dimension 1
    (0 for a 1-d shape); kind "index" (some ignored rows), "probabilities"."""
    k = 1 if len(shape) >= 2 else 0
    n_classes = shape[k]
    rows = shape[:k] + shape[k + 1:]
    x = torch.tensor(rng.standard_normal(shape) * 2, dtype=dtype, requires_grad=requires_grad)
    if kind == "probabilities":
        target = torch.tensor(rng.dirichlet(np.ones(n_classes), rows).astype(np.float64), dtype=dtype)
        target = target.movedim(-1, k).contiguous().requires_grad_(requires_grad)
    else:
        target = torch.tensor(rng.integers(0, n_classes, rows))
        if target.dim() and target.numel() > 2:
            target.view(-1)[1] = -100
    weight = torch.tensor(rng.uniform(0.5, 2.0, n_classes), dtype=dtype, requires_grad=requires_grad) if weighted else None
    s = torch.tensor(rng.uniform(0.5, 2.0, rows), dtype=dtype, requires_grad=requires_grad) if sample_weighted else None
    return x, target, weight, s


def close(actual, expected, dtype=torch.float64):
    rtol, atol = (1e-10, 1e-12) if dtype == torch.float64 else (2e-5, 2e-6)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True)


# ---- torch.compile(fullgraph=True): no graph break -----------------------------------

class Model(torch.nn.Module):
    def __init__(self, loss, **options):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
        self.loss, self.options = loss, options

    def forward(self, x, target, weight=None):
        return self.loss(self.net(x), target, weight, **self.options)


COMPILED_CASES = {
    "mean": dict(),
    "weight-smoothing-ignored": dict(label_smoothing=0.1, weighted=True),
    "sum": dict(reduction="sum"),
    "none": dict(reduction="none"),
    "probabilities": dict(probabilities=True, label_smoothing=0.2),
}


def compiled_case(name):
    options = dict(COMPILED_CASES[name])
    probabilities, weighted = options.pop("probabilities", False), options.pop("weighted", False)
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.standard_normal((12, 8)), dtype=torch.float32)
    if probabilities:
        target = torch.tensor(rng.dirichlet(np.ones(5), 12), dtype=torch.float32)
    else:
        target = torch.tensor(rng.integers(0, 5, 12))
        target[3] = -100
    weight = torch.tensor(rng.uniform(0.5, 2, 5), dtype=torch.float32) if weighted else None
    return options, x, target, weight


def graph_breaks(function, *args):
    explanation = torch._dynamo.explain(function)(*args)
    return explanation.graph_break_count, explanation.break_reasons


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("case", list(COMPILED_CASES), ids=list(COMPILED_CASES))
def test_compiles_with_fullgraph_and_no_graph_break(backend, case):
    """A small model whose loss is softmaxloss.torch.cross_entropy: torch.compile with
    fullgraph=True traces it (no graph break, torch._dynamo.explain agreeing), and the
    compiled model's loss and parameter gradients are PyTorch's loss's."""
    if backend == "inductor" and case not in ("weight-smoothing-ignored", "probabilities"):
        pytest.skip("inductor on two cases (it takes seconds per compilation)")
    options, x, target, weight = compiled_case(case)
    model, twin = Model(smt.cross_entropy, **options), Model(F.cross_entropy, **options)
    torch._dynamo.reset()
    assert graph_breaks(model, x, target, weight) == (0, [])
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    loss = compiled(x, target, weight)
    expected = twin(x, target, weight)
    close(loss, expected, torch.float32)
    cotangent = torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape)
    loss.backward(cotangent)
    expected.backward(cotangent)
    for p, q in zip(model.parameters(), twin.parameters()):
        close(p.grad, q.grad, torch.float32)
    with torch.no_grad():  # the loss-only path, compiled
        close(compiled(x, target, weight), expected.detach(), torch.float32)


def test_compiled_probability_target_gradient_and_threads():
    """The gradient with respect to a probability target computed in the graph, and the
    op's n_threads=0 reading torch.get_num_threads() when it runs."""
    def loss_of(z, t):
        return smt.cross_entropy(z * 2, t.softmax(1), reduction="none").sum()

    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    torch._dynamo.reset()
    actual = torch.autograd.grad(torch.compile(loss_of, backend="aot_eager", fullgraph=True)(z, t), (z, t))
    expected = torch.autograd.grad(F.cross_entropy(z * 2, t.softmax(1), reduction="none").sum(), (z, t))
    for a, e in zip(actual, expected):
        close(a, e)


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")  # dynamo's, resuming
def test_inplace_grad_is_eager_only_under_compile():
    """inplace_grad=True writes over the logits' storage: with fullgraph=True an error
    that says so, without it a graph break around an eager (and exact) loss."""
    target = torch.tensor([0, 1, 2, 0])

    def loss_of(z):
        return smt.cross_entropy(z * 2, target, inplace_grad=True)

    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="inplace_grad=True.*eagerly only"):
        torch.compile(loss_of, backend="aot_eager", fullgraph=True)(z)
    torch._dynamo.reset()
    loss = torch.compile(loss_of, backend="aot_eager")(z)
    close(loss, F.cross_entropy(z * 2, target))
    (grad,) = torch.autograd.grad(loss, z)
    close(grad, torch.autograd.grad(F.cross_entropy(z * 2, target), z)[0])


# ---- torch.library.opcheck -------------------------------------------------------------

def opcheck_samples():
    rng = np.random.default_rng(7)
    cases = [
        ((5, 4), "index", False, False, -100, "mean", 0.0, 0.0),
        ((5, 4), "index", True, False, 1, "mean", 0.2, 0.0),
        ((5, 4), "index", True, True, -100, "sum", 0.0, 0.05),
        ((3, 4, 2), "index", True, False, -100, "none", 0.1, 0.0),
        ((4,), "index", True, False, -100, "mean", 0.2, 0.0),
        ((5, 4), "probabilities", False, False, -100, "mean", 0.0, 0.0),
        ((5, 4), "probabilities", True, True, -100, "mean", 0.2, 0.05),
        ((3, 4, 2), "probabilities", True, False, -100, "none", 0.0, 0.0),
        ((4,), "probabilities", False, True, -100, "sum", 0.1, 0.0),
    ]
    cases = [(*case, None) for case in cases] + [  # softcap (issue 16 item 2)
        ((5, 4), "index", True, True, 1, "mean", 0.2, 0.05, 2.0),
        ((3, 4, 2), "probabilities", True, False, -100, "none", 0.1, 0.0, 0.5),
    ]
    for (shape, kind, weighted, sample_weighted, ignore_index, reduction, eps, z, cap), dtype, with_grad in \
            itertools.product(cases, [torch.float32, torch.float64], [True, False]):
        x, t, w, s = make_inputs(rng, shape, kind, dtype, weighted=weighted, sample_weighted=sample_weighted)
        if kind == "index" and ignore_index == 1:
            t = torch.where(t == -100, 1, t)
            t.view(-1)[0] = 0  # one ignored row at least, not all
            t.view(-1)[2] = 1
        yield pytest.param((x, t, w, s, ignore_index, reduction, eps, z, cap, 0, with_grad),
                           id=f"{shape}-{kind}-w{weighted:d}-s{sample_weighted:d}-ii{ignore_index}-{reduction}"
                              f"-eps{eps}-z{z}-cap{cap}-{str(dtype)[6:]}-grad{with_grad:d}")


@pytest.mark.parametrize("args", list(opcheck_samples()))
def test_opcheck(args):
    """PyTorch's own checks of a custom op: schema (no mutation, no aliasing), autograd
    registration, the fake kernel against the CPU kernel, and AOT dispatch with dynamic
    shapes (outputs and gradients, through both outputs), on index and probability
    targets, weights, sample weights, ignore_index, each reduction, smoothing, z-loss,
    float32/float64, with and without the gradient output."""
    result = torch.library.opcheck(OP, args)
    assert set(result.values()) == {"SUCCESS"}, result


def test_op_schema():
    schema = str(OP._schema)
    assert schema == (
        "softmaxloss::cross_entropy(Tensor input, Tensor target, Tensor? weight, Tensor? sample_weight, "
        "int? ignore_index, str reduction, float label_smoothing, float z_loss, float? softcap, "
        "int n_threads, bool with_grad) -> (Tensor loss, Tensor grad)"
    )


# ---- gradcheck, gradgradcheck, double backward --------------------------------------------

GRADCHECK_CASES = [  # (label_smoothing, z_loss): without, and both
    *[(shape, kind, reduction, (0.2, 0.05)) for shape, kind, reduction in itertools.product(
        [(4, 3), (2, 3, 2), (3,)], ["index", "probabilities"], ["mean", "sum", "none"])],
    ((4, 3), "index", "mean", (0.0, 0.0)),
    ((2, 3, 2), "probabilities", "none", (0.0, 0.0)),
]


@pytest.mark.parametrize("shape,kind,reduction,eps_z", GRADCHECK_CASES,
                         ids=[f"{s}-{k}-{r}-eps{e}-z{z}" for s, k, r, (e, z) in GRADCHECK_CASES])
def test_gradcheck_and_gradgradcheck_every_input(rng, shape, kind, reduction, eps_z):
    """float64, with respect to the logits, probability targets, weight and sample_weight
    at once: reverse mode, forward mode, batched gradients (vmap over the backward), and
    second order (reverse over reverse, forward over reverse, batched)."""
    eps, z = eps_z
    x, t, w, s = make_inputs(rng, shape, kind, sample_weighted=True)
    inputs = [x, w, s] + ([t] if kind == "probabilities" else [])

    def loss(x, w, s, t=t):
        return smt.cross_entropy(x, t, w, reduction=reduction, label_smoothing=eps, z_loss=z, sample_weight=s)

    assert torch.autograd.gradcheck(loss, inputs, check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True)
    assert torch.autograd.gradgradcheck(loss, inputs, check_fwd_over_rev=True, check_batched_grad=True)


@pytest.mark.parametrize("kind", ["index", "probabilities"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps_z", [(0.0, 0.0), (0.3, 0.02)], ids=["plain", "smoothing-zloss"])
def test_every_gradient_and_hessian_vector_product_is_the_references(rng, kind, reduction, eps_z):
    """The gradients (logits, probability target, weight, sample_weight) and the
    Hessian-vector products through double backward, against autograd of `reference`;
    the logits' and probability target's and (probability targets) the weight's against
    F.cross_entropy where it has no z-loss or sample weights."""
    eps, z = eps_z
    shape = (6, 5, 3)
    x, t, w, s = make_inputs(rng, shape, kind, sample_weighted=True)
    cotangent = torch.tensor(rng.uniform(0.5, 1.5, (6, 3) if reduction == "none" else ()))
    options = dict(reduction=reduction, label_smoothing=eps, z_loss=z, sample_weight=s)
    wrt = [x, w, s] + ([t] if kind == "probabilities" else [])
    ours = torch.autograd.grad(smt.cross_entropy(x, t, w, **options), wrt, cotangent, create_graph=True)
    theirs = torch.autograd.grad(reference(x, t, w, **options), wrt, cotangent, create_graph=True)
    for a, e in zip(ours, theirs):
        close(a, e)
    v = [torch.tensor(rng.standard_normal(tuple(a.shape))) for a in ours]
    ours2 = torch.autograd.grad(ours, wrt, v)
    theirs2 = torch.autograd.grad(theirs, wrt, v)
    for a, e in zip(ours2, theirs2):
        close(a, e)
    if z == 0:  # PyTorch's own loss: the logits' and target's gradients, and weight's for probabilities
        wrt = [x, w, t] if kind == "probabilities" else [x]
        if kind == "index":  # PyTorch refuses a weight that requires grad there
            w = w.detach()
        options = dict(reduction=reduction, label_smoothing=eps)
        ours = torch.autograd.grad(smt.cross_entropy(x, t, w, **options), wrt, cotangent, create_graph=True)
        theirs = torch.autograd.grad(F.cross_entropy(x, t, w, **options), wrt, cotangent, create_graph=True)
        for a, e in zip(ours, theirs):
            close(a, e)
        ours2 = torch.autograd.grad(ours[0], wrt, v[0])
        theirs2 = torch.autograd.grad(theirs[0], wrt, v[0])
        for a, e in zip(ours2, theirs2):
            close(a, e)


def test_hessian_vector_product_formula(rng):
    """The double backward of the unweighted mean is per row (diag(p) - p p^T) v / N."""
    x = torch.tensor(rng.standard_normal((7, 4)), requires_grad=True)
    target = torch.tensor(rng.integers(0, 4, 7))
    v = torch.tensor(rng.standard_normal((7, 4)))
    (g,) = torch.autograd.grad(smt.cross_entropy(x, target), x, create_graph=True)
    (hv,) = torch.autograd.grad(g, x, v)
    p = torch.softmax(x.detach(), 1)
    close(hv, (p * v - p * (p * v).sum(1, keepdim=True)) / 7)


def test_loss_backward_runs_the_kernel_once_and_no_pass_after(monkeypatch):
    """Forward: one fused kernel call (loss and gradient); loss.backward(): no further
    kernel call and the saved gradient handed over as the logits' gradient."""
    calls = []
    kernel = smt._np_cross_entropy_with_grad

    def counted(*args, **kwargs):
        calls.append(kwargs.get("out") is not None)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(smt, "_np_cross_entropy_with_grad", counted)
    monkeypatch.setattr(smt, "_np_cross_entropy", lambda *a, **k: pytest.fail("a loss-only call"))
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 4, -100])
    loss = smt.cross_entropy(x * 1, target)
    assert calls == [True]
    returned = []
    loss.grad_fn.register_hook(lambda grad_inputs, grad_outputs: returned.append(grad_inputs[0]))
    loss.backward()
    assert calls == [True]
    assert returned[0].shape == x.shape
    close(x.grad, torch.autograd.grad(F.cross_entropy(x, target), x)[0])


# ---- torch.func and forward-mode AD --------------------------------------------------------

FUNC_TRANSFORMS = {
    "grad": lambda f, x: torch.func.grad(lambda z: f(z).sum())(x),
    "vjp": lambda f, x: torch.func.vjp(f, x)[1](torch.ones_like(f(x)))[0],
    "jacrev": lambda f, x: torch.func.jacrev(f)(x),
    "jvp": lambda f, x: torch.func.jvp(f, (x,), (torch.cos(x),))[1],
    "jacfwd": lambda f, x: torch.func.jacfwd(f)(x),
    "hessian": lambda f, x: torch.func.hessian(lambda z: f(z).sum())(x),
    "vmap": lambda f, x: torch.func.vmap(f)(torch.stack([x, -x, 2 * x])),
    "vmap of jacrev": lambda f, x: torch.func.vmap(torch.func.jacrev(f))(torch.stack([x, -x])),
}


@pytest.mark.parametrize("transform", FUNC_TRANSFORMS.values(), ids=FUNC_TRANSFORMS.keys())
@pytest.mark.parametrize("kind", ["index", "probabilities"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_func_matches_torch(rng, transform, kind, reduction):
    """grad, vjp, jacrev, jvp, jacfwd, hessian, vmap (and vmap of jacrev) of the loss of
    (N, C, d) logits, with weights and smoothing: F.cross_entropy's values."""
    x, t, w, _ = make_inputs(rng, (4, 3, 2), kind, requires_grad=False)
    options = dict(weight=w, reduction=reduction, label_smoothing=0.1)
    expected = transform(lambda z: F.cross_entropy(z, t, **options), x)
    actual = transform(lambda z: smt.cross_entropy(z, t, **options), x)
    close(actual, expected)


def test_vmap_over_targets_weights_and_an_empty_batch(rng):
    """vmap over batched targets and weights (each or both), in_dims other than 0, and a
    batch of none: F.cross_entropy's values and shapes."""
    x, _, _, _ = make_inputs(rng, (5, 4), "index", requires_grad=False)
    targets = torch.tensor(rng.integers(0, 4, (3, 5)))
    weights = torch.tensor(rng.uniform(0.5, 2, (3, 4)))
    cases = [
        (lambda f: torch.func.vmap(lambda t: f(x, t))(targets)),
        (lambda f: torch.func.vmap(lambda t, w: f(x, t, w, reduction="none"))(targets, weights)),
        (lambda f: torch.func.vmap(lambda w: f(x, targets[0], w), in_dims=1)(weights.t())),
        (lambda f: torch.func.vmap(lambda z: f(z, targets[0]), in_dims=2)(torch.stack([x, x], 2))),
        (lambda f: torch.func.vmap(lambda z: f(z, targets[0], reduction="none"))(x.expand(0, 5, 4))),
    ]
    for case in cases:
        expected, actual = case(F.cross_entropy), case(smt.cross_entropy)
        assert actual.shape == expected.shape
        close(actual, expected)


@pytest.mark.parametrize("kind", ["index", "probabilities"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_forward_ad_tangents(rng, kind, reduction):
    """torch.autograd.forward_ad: the loss's tangent for tangents of the logits, the
    probability target and the weight, each and all at once, is F.cross_entropy's (but
    for the weight with class indices, whose tangent PyTorch drops: nll_loss has no
    forward derivative for it), else `reference`'s; torch.func.jvp with sample_weight
    and z_loss too (no PyTorch twin), `reference`'s."""
    x, t, w, s = make_inputs(rng, (5, 4, 2), kind, requires_grad=False, sample_weighted=True)
    primals = {"x": x, "w": w, **({"t": t} if kind == "probabilities" else {})}
    tangents = {k: torch.tensor(rng.standard_normal(tuple(v.shape))) for k, v in primals.items()}
    options = dict(reduction=reduction, label_smoothing=0.1)
    for subset in [[k] for k in primals] + [list(primals)]:
        twin = reference if kind == "index" and "w" in subset else F.cross_entropy
        results = []
        for loss_function in (twin, smt.cross_entropy):
            with forward_ad.dual_level():
                args = {k: forward_ad.make_dual(v, tangents[k]) if k in subset else v for k, v in primals.items()}
                out = loss_function(args["x"], args.get("t", t), args["w"], **options)
                results.append(forward_ad.unpack_dual(out).tangent)
        assert results[1] is not None
        close(results[1], results[0])

    def with_sample_weight(loss_function):
        def loss(x, w, t=t):
            return loss_function(x, t, w, sample_weight=s, z_loss=0.01, **options)
        return loss

    expected = torch.func.jvp(with_sample_weight(reference), tuple(primals.values()), tuple(tangents.values()))
    actual = torch.func.jvp(with_sample_weight(smt.cross_entropy), tuple(primals.values()), tuple(tangents.values()))
    close(actual[0], expected[0])
    close(actual[1], expected[1])


# ---- F.cross_entropy's positional order --------------------------------------------------

def test_positional_order_is_torchs_and_extras_are_keyword_only(rng):
    """cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction,
    label_smoothing) as torch's; z_loss and the other extras only by keyword."""
    x, t, w, _ = make_inputs(rng, (6, 4), "index", requires_grad=False)
    t[:2] = 2  # ignore_index 2 below
    args = (x, t, w, None, 2, None, "sum", 0.1)
    close(smt.cross_entropy(*args), F.cross_entropy(*args))
    with pytest.raises(TypeError):
        smt.cross_entropy(*args, 0.01)
    module_args = (w, None, 2, None, "none", 0.1)
    close(smt.CrossEntropyLoss(*module_args)(x, t), torch.nn.CrossEntropyLoss(*module_args)(x, t))
    with pytest.raises(TypeError):
        smt.CrossEntropyLoss(*module_args, 0.01)


@pytest.mark.parametrize("size_average,reduce", [(None, False), (False, None), (True, None), (False, True),
                                                  (True, False), (None, True)])
def test_legacy_size_average_and_reduce_follow_torchs_rule(rng, size_average, reduce):
    """The legacy arguments are mapped to a reduction by PyTorch's own rule, with its
    deprecation warning, overriding `reduction`, as in F.cross_entropy and the module."""
    x, t, _, _ = make_inputs(rng, (6, 4), "index", requires_grad=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        expected = F.cross_entropy(x, t, size_average=size_average, reduce=reduce, reduction="sum")
        actual = smt.cross_entropy(x, t, size_average=size_average, reduce=reduce, reduction="sum")
        module = smt.CrossEntropyLoss(size_average=size_average, reduce=reduce)
    assert len(caught) == 3 and all("deprecated" in str(w.message) for w in caught)
    close(actual, expected)
    close(module(x, t), expected)


# ---- exceptions: softmaxloss's ValueError and PyTorch's type ---------------------------------

X = torch.zeros(2, 3)
ERROR_CASES = {
    "class out of range": (lambda f: f(X, torch.tensor([0, 5])), IndexError, "Target 5 is out of bounds"),
    "negative class": (lambda f: f(X, torch.tensor([0, -3])), IndexError, "Target -3 is out of bounds"),
    "class out of range, 3d, none": (lambda f: f(torch.zeros(2, 3, 4), torch.full((2, 4), 7), reduction="none"),
                                     IndexError, "Target 7 is out of bounds"),
    "class out of range, unbatched": (lambda f: f(torch.zeros(3), torch.tensor(3)), IndexError,
                                      "Target 3 is out of bounds"),
    "batch size": (lambda f: f(X, torch.tensor([0, 1, 2])), ValueError,
                   r"Expected input batch_size \(2\) to match target batch_size \(3\)"),
    "spatial size": (lambda f: f(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long)), RuntimeError,
                     r"Expected target size \[2, 5\], got \[2, 4\]"),
    "class indices of the input's shape": (lambda f: f(X, torch.zeros(2, 3, dtype=torch.long)), RuntimeError,
                                           "Expected floating point type for target with class probabilities"),
    "probabilities of another shape": (lambda f: f(X, torch.zeros(2)), RuntimeError,
                                       "expected target dtype to be Long or Byte, but got Float"),
    "weight shape": (lambda f: f(X, torch.tensor([0, 1]), weight=torch.ones(2)), RuntimeError,
                     "weight tensor should be defined either for all 3 classes or no classes"),
    "ignore_index with probabilities": (lambda f: f(X, X.softmax(1), ignore_index=1), RuntimeError,
                                        "ignore_index is not supported for floating point target"),
    "label_smoothing": (lambda f: f(X, torch.tensor([0, 1]), label_smoothing=1.5), RuntimeError,
                        "label_smoothing must be between 0.0 and 1.0"),
    "reduction": (lambda f: f(X, torch.tensor([0, 1]), reduction="avg"), ValueError,
                  "avg is not a valid value for reduction"),
}


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("case", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_errors_are_softmaxlosss_and_torchs(case, requires_grad):
    """Where PyTorch raises for bad input, the same exception type (an IndexError for a
    class out of range, a RuntimeError for shapes and options) with PyTorch's message,
    and softmaxloss's ValueError with its own message, raised before any work."""
    call, torch_type, torch_message = case
    with pytest.raises(torch_type, match=torch_message):
        call(F.cross_entropy)
    with pytest.raises(torch_type, match=torch_message) as raised:
        call(lambda x, *args, **kwargs: smt.cross_entropy(x.requires_grad_(requires_grad), *args, **kwargs))
    assert isinstance(raised.value, ValueError)
    assert str(raised.value).index("[PyTorch: ") > 20  # softmaxloss's message first


def test_out_of_range_message_names_value_and_position_and_the_op_raises_it_too():
    with pytest.raises(IndexError, match=r"target value 7 at position \(1, 2\) is out of range for 3 classes.*"
                                         r"\[PyTorch: Target 7 is out of bounds.\]"):
        smt.cross_entropy(torch.zeros(2, 3, 4), torch.tensor([[0, 1, 2, 0], [1, 2, 7, 0]]))
    with pytest.raises(ValueError, match=r"expected 0 <= target < 3 \[PyTorch: Target -1 is out of bounds"):
        smt.cross_entropy(X, torch.tensor([0, -1]), ignore_index=2**70)  # no row can be ignored
    with pytest.raises(IndexError, match="Target 5 is out of bounds"):
        OP(X, torch.tensor([0, 5]), None, None, -100, "mean", 0.0, 0.0, None, 0, True)


def torch_test_internals(name):
    """PyTorch's own test module torch.testing._internal.`name` (its OpInfo/ModuleInfo
    samples), or None when it cannot be imported: it needs expecttest, which torch does not
    install (.ci/run does)."""
    try:
        return importlib.import_module(f"torch.testing._internal.{name}")
    except ImportError:
        return None


INTERNALS_MISSING = "PyTorch's test samples (torch.testing._internal) need expecttest"


def samples_or_skip(make_samples, arity):
    """The pytest params `make_samples()` builds from PyTorch's test internals, or one
    skipped param of `arity` arguments when those cannot be imported, so that collection
    never fails on a machine without expecttest."""
    if torch_test_internals("common_methods_invocations") is None or torch_test_internals("common_modules") is None:
        return [pytest.param(*[None] * arity, marks=pytest.mark.skip(reason=INTERNALS_MISSING))]
    return list(make_samples())


def module_db_entry():
    module_db = torch_test_internals("common_modules").module_db
    return next(m for m in module_db if m.module_cls is torch.nn.CrossEntropyLoss)


def op_db_entry():
    op_db = torch_test_internals("common_methods_invocations").op_db
    return next(o for o in op_db if o.name == "nn.functional.cross_entropy")


def test_module_error_inputs_of_pytorchs_module_info():
    """The ModuleInfo of nn.CrossEntropyLoss: its error inputs raise its expected type
    and message at forward; label_smoothing outside [0, 1] already at construction (as
    softmaxloss's module checks its options there), with PyTorch's type and message."""
    if torch_test_internals("common_modules") is None:
        pytest.skip(INTERNALS_MISSING)
    module_info = module_db_entry()
    for error_input in module_info.module_error_inputs_func(module_info, "cpu", torch.float32,
                                                            requires_grad=False, training=True):
        sample = error_input.module_error_input
        constructor = sample.constructor_input
        with pytest.raises(error_input.error_type, match=error_input.error_regex):
            module = smt.CrossEntropyLoss(*constructor.args, **constructor.kwargs)
            if "label_smoothing" in constructor.kwargs:
                pytest.fail("constructed")
            module(*sample.forward_input.args, **sample.forward_input.kwargs)


# ---- PyTorch's own samples: OpInfo and ModuleInfo --------------------------------------------

def clone_args(args):
    return [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args]


def assert_as_torch(ours, theirs, args, kwargs, dtype):
    """Loss and the gradients of every argument that requires grad, for a random upstream."""
    tolerance = {torch.float32: (2e-5, 5e-6), torch.float64: (1e-12, 1e-13), torch.float16: (1e-3, 2e-3)}[dtype]
    ours_args, theirs_args = clone_args(args), clone_args(args)
    loss, expected = ours(*ours_args, **kwargs), theirs(*theirs_args, **kwargs)
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(loss, expected, rtol=tolerance[0], atol=tolerance[1] * scale, equal_nan=True)
    upstream = torch.rand(expected.shape, dtype=dtype) + 0.5
    wrt = [a for a in ours_args if isinstance(a, torch.Tensor) and a.requires_grad]
    wrt_theirs = [a for a in theirs_args if isinstance(a, torch.Tensor) and a.requires_grad]
    for a, e in zip(torch.autograd.grad(loss, wrt, upstream), torch.autograd.grad(expected, wrt_theirs, upstream)):
        scale = max(1.0, float(e.abs().max())) if e.numel() else 1.0
        torch.testing.assert_close(a, e, rtol=tolerance[0], atol=tolerance[1] * scale, equal_nan=True)


def opinfo_samples():
    op = op_db_entry()
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        for i, sample in enumerate(op.sample_inputs_func(op, "cpu", dtype, requires_grad=True)):
            yield pytest.param(sample, dtype, id=f"{str(dtype)[6:]}-{i}")


@pytest.mark.parametrize("sample,dtype", samples_or_skip(opinfo_samples, 2))
def test_opinfo_samples_of_nn_functional_cross_entropy(sample, dtype):
    """Every sample of PyTorch's OpInfo for nn.functional.cross_entropy (requires_grad:
    the probability targets too; weights of either sign): PyTorch's loss and gradients;
    float64: gradcheck and gradgradcheck (with forward mode) of every differentiable input."""
    args = [sample.input, *sample.args]
    assert_as_torch(smt.cross_entropy, F.cross_entropy, args, sample.kwargs, dtype)
    if dtype == torch.float64:
        args = clone_args(args)
        wrt = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

        def loss(*differentiable):
            call = list(args)
            for i, a in zip(wrt, differentiable):
                call[i] = a
            return smt.cross_entropy(*call, **sample.kwargs)

        inputs = tuple(args[i] for i in wrt)
        assert torch.autograd.gradcheck(loss, inputs, check_forward_ad=True, check_batched_grad=True)
        assert torch.autograd.gradgradcheck(loss, inputs, check_fwd_over_rev=True)


def moduleinfo_samples():
    module_info = module_db_entry()
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.float16):
        for sample in module_info.module_inputs_func(module_info, "cpu", dtype, requires_grad=True, training=True):
            yield pytest.param(sample, dtype, id=f"{str(dtype)[6:]}-{sample.desc}")


@pytest.mark.parametrize("sample,dtype", samples_or_skip(moduleinfo_samples, 2))
def test_moduleinfo_samples_of_nn_cross_entropy_loss(sample, dtype):
    """Every sample of PyTorch's ModuleInfo for nn.CrossEntropyLoss: the module's loss
    and gradients are PyTorch's (float16: computed in float32, compared with PyTorch's
    loss of the float32 values, which its own float16 sums can miss by an ulp); float64:
    gradcheck and gradgradcheck (fast mode)."""
    constructor = sample.constructor_input
    args = list(sample.forward_input.args)
    ours = smt.CrossEntropyLoss(*constructor.args, **constructor.kwargs)
    theirs = torch.nn.CrossEntropyLoss(*constructor.args, **constructor.kwargs)
    if dtype == torch.float16:
        module = theirs

        def theirs(x, t):
            t32 = t.float() if t.is_floating_point() else t
            return module.float()(x.float(), t32).half()

    assert_as_torch(ours, theirs, args, {}, dtype)
    if dtype == torch.float64:
        args = clone_args(args)
        wrt = [i for i, a in enumerate(args) if a.requires_grad]

        def loss(*differentiable):
            call = list(args)
            for i, a in zip(wrt, differentiable):
                call[i] = a
            return ours(*call)

        inputs = tuple(args[i] for i in wrt)  # fast mode: the samples have up to 600 logits
        assert torch.autograd.gradcheck(loss, inputs, fast_mode=True)
        assert torch.autograd.gradgradcheck(loss, inputs, fast_mode=True)


# ---- PyTorch's OpInfo samples of softmax, log_softmax and logsumexp, against the NumPy API ----

NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
NUMPY_FUNCTIONS = {"softmax": softmaxloss.softmax, "log_softmax": softmaxloss.log_softmax,
                   "logsumexp": softmaxloss.logsumexp}


def numpy_api_samples():
    """Every sample of PyTorch's OpInfos for softmax (plain and with_dtype), log_softmax
    (both) and logsumexp, float32 and float64, as (op, sample, dtype)."""
    ops = [o for o in torch_test_internals("common_methods_invocations").op_db if o.name in NUMPY_FUNCTIONS]
    assert {o.name for o in ops} == set(NUMPY_FUNCTIONS)
    torch.manual_seed(0)
    samples = []
    for op in ops:
        for dtype in NUMPY_DTYPES:
            for i, sample in enumerate(op.sample_inputs_func(op, "cpu", dtype, requires_grad=False)):
                samples.append(pytest.param(op, sample, dtype,
                                            id=f"{op.name}-{op.variant_test_name or 'plain'}-{str(dtype)[6:]}-{i}"))
    return samples


def numpy_api_call(name, sample):
    """The NumPy API's keywords for a torch call `op(input, dim[, keepdim], dtype=...)`:
    dim is axis (an int or a tuple of them), keepdim keepdims, a torch dtype NumPy's."""
    args, kwargs = list(sample.args), dict(sample.kwargs)
    dim = args.pop(0) if args else kwargs.pop("dim")
    keywords = {"axis": tuple(dim) if isinstance(dim, (list, tuple)) else dim}
    if name == "logsumexp":
        keywords["keepdims"] = args.pop(0) if args else kwargs.pop("keepdim", False)
    if "dtype" in kwargs:
        keywords["dtype"] = NUMPY_DTYPES[kwargs.pop("dtype")]
    assert not args and not kwargs, f"a torch argument the mapping does not know: {args} {kwargs}"
    return keywords


@pytest.mark.parametrize("op,sample,dtype", samples_or_skip(numpy_api_samples, 3))
def test_opinfo_samples_of_softmax_log_softmax_logsumexp_on_the_numpy_api(op, sample, dtype):
    """softmaxloss.softmax/log_softmax/logsumexp called as torch's samples call torch
    (0-d inputs, empty axes, tuples of dims, keepdim, dtype=) give torch's shape and dtype,
    and torch's values computed in float64 to the input dtype's rounding."""
    expected = op.op(sample.input.double(), *sample.args, **sample.kwargs)
    expected_dtype = op.op(sample.input, *sample.args, **sample.kwargs).dtype
    got = NUMPY_FUNCTIONS[op.name](sample.input.numpy(), **numpy_api_call(op.name, sample))
    assert got.shape == tuple(expected.shape)
    assert got.dtype == NUMPY_DTYPES[expected_dtype]
    tolerance = 2e-6 if got.dtype == np.float32 else 1e-14
    np.testing.assert_allclose(got, expected.numpy(), rtol=tolerance, atol=tolerance)

"""softmaxloss.torch.linear_cross_entropy / LinearCrossEntropyLoss (issue 17 item 3): against
PyTorch's F.linear_cross_entropy and F.cross_entropy(h @ w.T + b) in float64 over every option
PyTorch has (reduction, weight, ignore_index, label_smoothing, probability targets, bias,
unbatched and K-dimensional), softmaxloss's extras (z_loss, sample_weight) against the unfused
softmaxloss.torch.cross_entropy, gradcheck, chunk sizes, the op under torch.compile(fullgraph)
and torch.library.opcheck, bf16/f16 (dW within one rounding of a float32 accumulation),
memory (no N x V logits), bad input (clear errors, nothing written). Skips without torch."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
smt = pytest.importorskip("softmaxloss.torch")
F = torch.nn.functional

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]

OP = torch.ops.softmaxloss.linear_cross_entropy.default
N, D, V = 23, 7, 13


def make(seed, n=N, d=D, v=V, dtype=torch.float64, bias=True, probabilities=False, unbatched=False):
    g = torch.Generator().manual_seed(seed)
    shape = () if unbatched else (n,)
    h = torch.randn(*shape, d, generator=g, dtype=dtype).requires_grad_()
    w = (torch.randn(v, d, generator=g, dtype=dtype) * 0.7).requires_grad_()
    b = (torch.randn(v, generator=g, dtype=dtype) * 0.5).requires_grad_() if bias else None
    if probabilities:
        t = torch.softmax(torch.randn(*shape, v, generator=g, dtype=dtype) * 2, -1)
    else:
        t = torch.randint(0, v, shape, generator=g)
        if not unbatched:
            t[::5] = -100
    return h, w, b, t


def grads(loss, tensors):
    total = loss.sum() if loss.dim() else loss
    return torch.autograd.grad(total, [t for t in tensors if t is not None])


def assert_close(actual, expected, rtol=1e-12, atol=1e-13):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


REDUCTIONS = ["mean", "sum", "none"]
TORCH_CASES = [
    dict(reduction=r, label_smoothing=ls, weighted=wt, bias=bias, chunk_size=cs)
    for r in REDUCTIONS for ls in [0.0, 0.3] for wt in [False, True] for bias in [False, True]
    for cs in [None, 1, 4, 100]
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_matches_pytorch_class_indices(case):
    h, w, b, t = make(1, bias=case["bias"])
    weight = torch.rand(V, dtype=torch.float64) + 0.2 if case["weighted"] else None
    kw = dict(linear_bias=b, weight=weight, reduction=case["reduction"], label_smoothing=case["label_smoothing"])
    ours = smt.linear_cross_entropy(h, w, t, chunk_size=case["chunk_size"], **kw)
    theirs = F.linear_cross_entropy(h, w, t, **kw)
    plain = F.cross_entropy(F.linear(h, w, b), t, weight=weight, reduction=case["reduction"],
                            label_smoothing=case["label_smoothing"])
    assert_close(ours, theirs)
    assert_close(ours, plain)
    for a, e in zip(grads(ours, (h, w, b)), grads(theirs, (h, w, b))):
        assert_close(a, e)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.25])
@pytest.mark.parametrize("unbatched", [False, True])
def test_matches_pytorch_probabilities_and_unbatched(reduction, label_smoothing, unbatched):
    for probabilities in [False, True]:
        h, w, b, t = make(2, probabilities=probabilities, unbatched=unbatched)
        weight = torch.rand(V, dtype=torch.float64) + 0.2
        kw = dict(linear_bias=b, weight=weight, reduction=reduction, label_smoothing=label_smoothing)
        ours = smt.linear_cross_entropy(h, w, t, chunk_size=3, **kw)
        theirs = F.linear_cross_entropy(h, w, t, **kw)
        assert ours.shape == theirs.shape
        assert_close(ours, theirs)
        for a, e in zip(grads(ours, (h, w, b)), grads(theirs, (h, w, b))):
            assert_close(a, e)


def test_ignore_index_other_value_and_all_ignored():
    h, w, b, t = make(3)
    t[:] = torch.randint(0, 3, (N,))
    for reduction in REDUCTIONS:
        ours = smt.linear_cross_entropy(h, w, t, ignore_index=1, reduction=reduction, chunk_size=4)
        theirs = F.linear_cross_entropy(h, w, t, ignore_index=1, reduction=reduction)
        assert_close(ours, theirs)
        for a, e in zip(grads(ours, (h, w)), grads(theirs, (h, w))):
            assert_close(a, e)
    everything = torch.full((N,), -100)
    ours = smt.linear_cross_entropy(h, w, everything)
    assert torch.isnan(ours) and torch.isnan(F.linear_cross_entropy(h, w, everything))


@pytest.mark.parametrize("out_features", [(3,), (2, 2)])
def test_k_dimensional_loss_as_pytorch(out_features):
    """linear_weight (C, d1, ..., dK, D): PyTorch's K-dimensional loss (computed unfused)."""
    g = torch.Generator().manual_seed(4)
    h = torch.randn(N, D, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, *out_features, D, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(V, *out_features, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, V, (N, *out_features), generator=g)
    for reduction in REDUCTIONS:
        ours = smt.linear_cross_entropy(h, w, t, linear_bias=b, reduction=reduction, label_smoothing=0.1)
        theirs = F.linear_cross_entropy(h, w, t, linear_bias=b, reduction=reduction, label_smoothing=0.1)
        assert_close(ours, theirs)
        for a, e in zip(grads(ours, (h, w, b)), grads(theirs, (h, w, b))):
            assert_close(a, e)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("probabilities", [False, True])
def test_extras_match_unfused_softmaxloss(reduction, probabilities):
    """z_loss and sample_weight (no PyTorch twin): the unfused smt.cross_entropy of F.linear."""
    h, w, b, t = make(5, probabilities=probabilities)
    s = torch.rand(N, dtype=torch.float64) + 0.1
    ours = smt.linear_cross_entropy(h, w, t, linear_bias=b, reduction=reduction, z_loss=0.01,
                                    sample_weight=s, label_smoothing=0.1, chunk_size=6)
    unfused = smt.cross_entropy(F.linear(h, w, b), t, reduction=reduction, z_loss=0.01, sample_weight=s,
                                label_smoothing=0.1)
    assert_close(ours, unfused)
    for a, e in zip(grads(ours, (h, w, b)), grads(unfused, (h, w, b))):
        assert_close(a, e)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(reduction):
    h, w, b, t = make(6, n=9, d=4, v=6)
    s = torch.rand(9, dtype=torch.float64) + 0.5

    def loss(h, w, b):
        return smt.linear_cross_entropy(h, w, t, linear_bias=b, reduction=reduction, z_loss=0.05,
                                        sample_weight=s, label_smoothing=0.2, chunk_size=2)

    assert torch.autograd.gradcheck(loss, (h, w, b))


def test_derivatives_the_op_lacks_take_the_unfused_path():
    """Gradients for probability targets, weight and sample_weight: as PyTorch's (unfused)."""
    h, w, b, t = make(7, probabilities=True)
    t = t.detach().requires_grad_()
    weight = (torch.rand(V, dtype=torch.float64) + 0.2).requires_grad_()
    ours = smt.linear_cross_entropy(h, w, t, weight=weight)
    theirs = F.linear_cross_entropy(h, w, t, weight=weight)
    for a, e in zip(grads(ours, (h, w, t, weight)), grads(theirs, (h, w, t, weight))):
        assert_close(a, e)


def test_only_the_wanted_gradients_and_no_grad():
    h, w, b, t = make(8)
    w.requires_grad_(False)
    ours = smt.linear_cross_entropy(h, w, t, linear_bias=b)
    (gh, gb) = torch.autograd.grad(ours, (h, b))
    eh, eb = torch.autograd.grad(F.linear_cross_entropy(h, w, t, linear_bias=b), (h, b))
    assert_close(gh, eh)
    assert_close(gb, eb)
    with torch.no_grad():
        loss = smt.linear_cross_entropy(h, w, t, linear_bias=b)
    assert loss.grad_fn is None
    assert_close(loss, F.linear_cross_entropy(h, w, t, linear_bias=b).detach())


def test_double_backward_refused():
    h, w, b, t = make(9)
    loss = smt.linear_cross_entropy(h, w, t)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(loss, h, create_graph=True)


def test_backward_hands_over_then_recomputes_when_retained():
    """The first backward hands the op's gradients over (scaled in place unless the upstream
    is 1); a later backward of a retained graph computes them again, with its own upstream."""
    h, w, b, t = make(14)
    expected = grads(F.linear_cross_entropy(h, w, t, linear_bias=b), (h, w, b))
    loss = smt.linear_cross_entropy(h, w, t, linear_bias=b, chunk_size=4)
    loss.backward(retain_graph=True)
    for tensor, e in zip((h, w, b), expected):
        assert_close(tensor.grad, e)
        tensor.grad = None
    (loss * 0.25).backward(retain_graph=True)
    for tensor, e in zip((h, w, b), expected):
        assert_close(tensor.grad, e * 0.25)
    loss.backward()  # accumulates into the existing .grad
    for tensor, e in zip((h, w, b), expected):
        assert_close(tensor.grad, e * 1.25)
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_module_as_pytorch():
    torch.manual_seed(0)
    ours = smt.LinearCrossEntropyLoss(D, V, bias=True, dtype=torch.float64, label_smoothing=0.1, chunk_size=5)
    theirs = torch.nn.LinearCrossEntropyLoss(D, V, bias=True, dtype=torch.float64, label_smoothing=0.1)
    theirs.load_state_dict(ours.state_dict())
    h, _, _, t = make(10)
    a, e = ours(h, t), theirs(h, t)
    assert_close(a, e)
    a.backward()
    e.backward()
    assert_close(ours.linear.weight.grad, theirs.linear.weight.grad)
    assert_close(ours.linear.bias.grad, theirs.linear.bias.grad)
    k = smt.LinearCrossEntropyLoss(D, V, out_features=(3,), dtype=torch.float64)
    assert k(h, torch.randint(0, V, (N, 3))).shape == ()


def test_options_accepted_and_batch_chunk_size_used(monkeypatch):
    import softmaxloss._linear as linear

    planned = []
    real = linear.plan_chunks
    monkeypatch.setattr(linear, "plan_chunks", lambda *a, **k: planned.append(k["chunk_size"]) or real(*a, **k))
    h, w, b, t = make(11)
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=4, chunking_method=None)
    assert_close(smt.linear_cross_entropy(h, w, t, options=options), F.linear_cross_entropy(h, w, t))
    assert planned == [4]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunks_fill_the_budget_with_the_backends_own_scratch(monkeypatch, dtype):
    """float32: the adapter needs no scratch (dH and dW straight into the gradients), so a
    chunk of logits has the whole budget (NumPy's backend keeps a quarter for dW's blocks);
    bf16: a float32 chunk of hidden and of dH besides, within the budget too."""
    plans = []
    real = smt._LinearGemms.__init__
    monkeypatch.setattr(smt._LinearGemms, "__init__", lambda self, *a: plans.append(a[-2]) or real(self, *a))
    n, d, v = 64, 8, 500
    h, w, _, t = make(21, n=n, d=d, v=v, dtype=dtype, bias=False)
    budget = 16 * v * 4 + 100
    loss = smt.linear_cross_entropy(h, w, t, memory_budget=budget)
    loss.backward()
    (plan,) = plans
    if dtype == torch.float32:
        assert plan.rows == 16 and plan.scratch_rows == 0
    else:
        assert plan.rows == int(budget // ((v + 2 * d) * 4)) and plan.working_bytes(v, d, 4) <= budget
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    expected = F.cross_entropy(h64 @ w64.T, t)
    expected.backward()
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(loss.detach().double(), expected.detach(), **tolerance)
    torch.testing.assert_close(h.grad.double(), h64.grad, **tolerance)
    torch.testing.assert_close(w.grad.double(), w64.grad, **tolerance)


# ---- the op: compile, opcheck -------------------------------------------------------------


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiles_with_fullgraph(backend, reduction):
    h, w, b, t = make(12, dtype=torch.float32)

    def loss_of(h, w, b, t):
        return smt.linear_cross_entropy(h, w, t, linear_bias=b, reduction=reduction, chunk_size=5)

    explained = torch._dynamo.explain(loss_of)(h, w, b, t)
    assert explained.graph_break_count == 0
    compiled = torch.compile(loss_of, backend=backend, fullgraph=True)
    actual, expected = compiled(h, w, b, t), loss_of(h, w, b, t)
    assert_close(actual, expected, rtol=0, atol=0)
    for a, e in zip(grads(actual, (h, w, b)), grads(expected, (h, w, b))):
        assert_close(a, e, rtol=0, atol=0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("probabilities", [False, True])
def test_opcheck(reduction, probabilities):
    h, w, b, t = make(13, probabilities=probabilities)
    want = reduction != "none"
    args = (h, w, t, b, torch.rand(V, dtype=torch.float64), None, -100, reduction, 0.1, 0.01, 5, 0.0, 0,
            want, want, want)
    torch.library.opcheck(OP, args)


# ---- bf16 / f16 ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_dw_within_one_rounding_of_float32_accumulation(dtype):
    """bf16/f16 inputs: float32 logits and dW accumulated in float32 over many chunks, then
    rounded once: within one rounding (plus float32 GEMM noise) of the float64 dW of the
    same half-precision inputs; accumulating in the weights' dtype over the chunks (what
    diverged Liger's and CCE's training) is not."""
    n, d, v = 512, 32, 300
    g = torch.Generator().manual_seed(14)
    h = torch.randn(n, d, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(v, d, generator=g) * 0.3).to(dtype).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    loss = smt.linear_cross_entropy(h, w, t, reduction="sum", chunk_size=4)  # 128 chunks
    loss.backward()
    assert loss.dtype == h.grad.dtype == w.grad.dtype == dtype
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    F.cross_entropy(h64 @ w64.T, t, reduction="sum").backward()
    u = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    scale = w64.grad.abs().max()
    error = (w.grad.double() - w64.grad).abs()
    assert bool((error <= u * w64.grad.abs() + 1e-5 * scale).all())
    # the same partial sums accumulated in the weights' dtype: far outside that bound
    logits = (h64 @ w64.T)
    gradient = torch.softmax(logits, -1) - F.one_hot(t, v)
    low = torch.zeros(v, d, dtype=dtype)
    for start in range(0, n, 4):
        low += (gradient[start:start + 4].T @ h64[start:start + 4]).to(dtype)
    low_error = (low.double() - w64.grad).abs()
    assert not bool((low_error <= u * w64.grad.abs() + 1e-5 * scale).all())
    torch.testing.assert_close(h.grad.double(), h64.grad, rtol=4 * u, atol=1e-3 * h64.grad.abs().max().item())
    assert abs(loss.double() - F.cross_entropy(h64 @ w64.T, t, reduction="sum")) <= 4 * u * abs(loss.double())


# ---- memory: no N x V logits -----------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    import softmaxloss.torch as smt
    torch.set_num_threads(1)
    method, n, d, v = sys.argv[1], *(int(x) for x in sys.argv[2:])
    h = torch.randn(n, d, requires_grad=True); w = (torch.randn(v, d) * 0.1).requires_grad_()
    t = torch.randint(0, v, (n,))
    def call():
        h.grad = w.grad = None
        if method == "unfused":
            loss = torch.nn.functional.cross_entropy(h @ w.T, t)
        else:
            loss = smt.linear_cross_entropy(h, w, t)
        (loss * 0.5 if method == "fused, scaled" else loss).backward()
    call()
    h.grad = w.grad = None
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096
    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    try:
        open("/proc/self/clear_refs", "w").write("5")
        start = rss()
    except OSError:
        start = hwm()
    call()
    print(json.dumps(dict(growth=hwm() - start, gradients=(h.numel() + w.numel()) * 4, logits=n * v * 4,
                          grad_weight=w.numel() * 4)))
""")


def peak_rss(method, n, d, v):
    run = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, method, str(n), str(d), str(v)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak RSS from /proc (Linux)")
@pytest.mark.parametrize("shape", [(2048, 32, 32000), (2048, 64, 16000), (1024, 128, 64128)],
                         ids=["wide", "full-size N:V", "LM-head N:V"])
def test_memory_no_full_logits(shape):
    """Peak RSS growth of a call beyond its gradients: within the default working memory
    (at most 1/8 of the logits) plus slack, where the unfused call holds the logits; also
    at the N : V of the benchmark's (4096, 1024, 32000) and LM head (2048, 2048, 128256)."""
    fused, unfused = peak_rss("fused", *shape), peak_rss("unfused", *shape)
    logits = fused["logits"]
    assert fused["growth"] - fused["gradients"] <= logits / 8 + 24 * 2**20
    assert unfused["growth"] - unfused["gradients"] >= logits  # the measurement sees the logits


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak RSS from /proc (Linux)")
@pytest.mark.parametrize("method", ["fused", "fused, scaled"])
def test_memory_no_second_grad_weight(method):
    """A dW as large as the logits (D = N) and 8x the working memory: the backward hands the
    op's gradients over (scaled in place when the upstream is not 1) rather than copying them
    while the op's are alive, which would add a whole dW to the peak."""
    result = peak_rss(method, 512, 512, 32000)
    assert result["grad_weight"] >= result["logits"] / 8 + 48 * 2**20  # a copy would break the bound below
    assert result["growth"] - result["gradients"] <= result["logits"] / 8 + 24 * 2**20, result


# ---- bad input: clear errors, before any work -------------------------------------------------


def bad_cases():
    h, w, b, t = make(15)
    return [
        (dict(input=h.float()), TypeError, "linear_weight has dtype"),
        (dict(input=h.int()), TypeError, "input has dtype"),
        (dict(linear_weight=w[:, :3]), ValueError, "n_features"),
        (dict(linear_weight=w[0]), RuntimeError, "dimensionality at least 2"),
        (dict(linear_bias=b[:4]), ValueError, "linear_bias must have one entry per class"),
        (dict(target=t[:5]), ValueError, "target of class indices has shape"),
        (dict(target=torch.full((N,), V)), IndexError, "out of range"),
        (dict(target=torch.rand(N)), RuntimeError, "target of probabilities has shape"),
        (dict(target=torch.softmax(torch.rand(N, V, dtype=torch.float64), 1), ignore_index=0), RuntimeError,
         "ignore_index cannot be specified"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(label_smoothing=1.5), RuntimeError, "label_smoothing"),
        (dict(weight=torch.ones(V + 1, dtype=torch.float64)), ValueError, "weight"),
        (dict(sample_weight=torch.ones(N + 1, dtype=torch.float64)), ValueError, "sample_weight"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(chunk_size=2, memory_budget=1e6), ValueError, "not both"),
        (dict(memory_budget=-1.0), ValueError, "memory_budget"),
        (dict(options="auto"), TypeError, "options"),
        (dict(target=[1, 2]), TypeError, "target must be a torch.Tensor"),
    ]


@pytest.mark.parametrize("index", range(len(bad_cases())))
def test_bad_input_clear_error_nothing_written(index):
    changes, error, message = bad_cases()[index]
    h, w, b, t = make(15)
    args = dict(input=h, linear_weight=w, target=t, linear_bias=b)
    args.update(changes)
    before = [x.detach().clone() for x in (h, w, b, t)]
    with pytest.raises(error, match=message):
        loss = smt.linear_cross_entropy(args.pop("input"), args.pop("linear_weight"), args.pop("target"), **args)
        loss.backward()
    for x, saved in zip((h, w, b, t), before):
        assert torch.equal(x.detach(), saved)
    assert h.grad is None and w.grad is None and b.grad is None

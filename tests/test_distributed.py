"""softmaxloss.distributed on real torch.distributed process groups: gloo on 127.0.0.1,
world sizes 1, 2 and 3, each rank a spawned process (tests/_distributed_worker.py) holding
an uneven block of the classes; the loss on every rank and the gathered gradients are
compared with the single-process softmaxloss.cross_entropy_with_grad (within 2 ulp-scale,
tests/test_class_blocks.py), for every option, and the collectives are counted: two
all-reduces (or one all-gather of the statistics) and one all-gather of the class ranges
in forward, none in backward. Also the cases where torch's loss_parallel fails (class
weights with an ignored row; label smoothing) and bad arguments on one rank or all.
vocab_parallel_linear_cross_entropy likewise (each rank an uneven block of the head's rows),
against the single-process linear_cross_entropy_with_grad and float64 PyTorch autograd,
in the same launches."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import softmaxloss as sml  # noqa: E402

from _helpers import F32, F64, assert_split_matches  # noqa: E402

WORKER = Path(__file__).with_name("_distributed_worker.py")
WORLD_SIZES = (1, 2, 3)
N, C = 40, 23


def uneven_blocks(n_classes):
    """Each world size's blocks of classes, by rank: uneven, one of width 1."""
    return {1: [(0, n_classes)], 2: [(0, 9), (9, n_classes)], 3: [(0, 1), (1, 12), (12, n_classes)]}


def reversed_blocks(n_classes):
    """Rank 0 holds the last classes: the blocks' order given by vocab_start, not the ranks'."""
    return {w: list(reversed([(n_classes - hi, n_classes - lo) for lo, hi in blocks]))
            for w, blocks in uneven_blocks(n_classes).items()}


def make_cases():
    rng = np.random.default_rng(18)
    x32 = (rng.standard_normal((N, C)) * 3).astype(np.float32)
    x64 = x32.astype(np.float64) + rng.standard_normal((N, C)) * 0.1
    target = rng.integers(0, C, N)
    target[::6] = -100
    w = rng.uniform(0.3, 2.5, C)
    s = rng.uniform(0.0, 2.0, N)
    probs = rng.dirichlet(np.full(C, 0.4), N)
    upstream = rng.standard_normal(N)
    upstream[0] = np.nan  # an ignored row (target[0] == -100): its gradient stays 0
    x3 = (rng.standard_normal((4, C, 5)) * 2).astype(np.float32)
    t3 = rng.integers(0, C, (4, 5))
    t3[0, 0] = -100
    cases = {
        "plain": dict(logits=x32, target=target),
        "weight+ignored (loss_parallel's backward fails)": dict(logits=x32, target=target, options=dict(weight=w)),
        "smoothing (loss_parallel refuses)": dict(logits=x64, target=target, options=dict(label_smoothing=0.1)),
        "smoothing+weight+ignored": dict(logits=x32, target=target, options=dict(label_smoothing=0.2, weight=w)),
        "everything, sum": dict(logits=x64, target=target, options=dict(
            weight=w, sample_weight=s, label_smoothing=0.3, z_loss=1e-3, reduction="sum")),
        "none, upstream": dict(logits=x32, target=target, upstream=upstream, options=dict(
            weight=w, label_smoothing=0.1, reduction="none")),
        "ignore_index=3": dict(logits=x32, target=np.where(target == -100, 3, target), options=dict(ignore_index=3, weight=w)),
        "probabilities+smoothing+weight": dict(logits=x64, target=probs, probabilities=True, options=dict(
            label_smoothing=0.2, weight=w)),
        "probabilities, none, z_loss, sample_weight": dict(logits=x32, target=probs, probabilities=True,
                                                           upstream=rng.standard_normal(N), options=dict(
            reduction="none", z_loss=1e-2, sample_weight=s)),
        "allgather, everything": dict(logits=x64, target=target, options=dict(
            weight=w, sample_weight=s, label_smoothing=0.3, z_loss=1e-3, exchange="allgather")),
        "allgather, probabilities": dict(logits=x32, target=probs, probabilities=True, options=dict(exchange="allgather")),
        "float16": dict(logits=x32, target=target, torch_dtype="float16", options=dict(weight=w)),
        "bfloat16": dict(logits=x32, target=target, torch_dtype="bfloat16", options=dict(label_smoothing=0.1)),
        "(N, C, d) with axis=1": dict(logits=x3, target=t3, axis=1, options=dict(weight=w, label_smoothing=0.1)),
        "vocab_start, blocks not in rank order": dict(logits=x32, target=target, blocks=reversed_blocks(C),
                                                       vocab_start={w_: [lo for lo, _ in b] for w_, b in reversed_blocks(C).items()},
                                                       options=dict(weight=w, label_smoothing=0.1)),
        "loss only (no grad)": dict(logits=x32, target=target, requires_grad=False, options=dict(weight=w)),
        "mean over no rows: NaN": dict(logits=x32, target=np.full(N, -100), options=dict(weight=w)),
        # errors
        "error: class out of range": dict(logits=x32, target=np.where(target == 5, C, target), error=True),
        "error: one rank's logits are integers": dict(logits=x32, target=target, bad_rank=1, error=True),
        "error: blocks leave a gap": dict(logits=x32, target=target, error=True,
                                          vocab_start={1: [1], 2: [0, 10], 3: [0, 1, 13]}),
        "error: bad label_smoothing": dict(logits=x32, target=target, options=dict(label_smoothing=-1.0), error=True),
        "error: one rank holds fewer rows": dict(logits=x32, target=target, short_rank=1, error=True),
    }
    for case in cases.values():
        case.setdefault("blocks", uneven_blocks(case["logits"].shape[case.get("axis", -1)]))
    return cases


CASES = make_cases()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


LAUNCH_TIMEOUT = 300  # seconds for one launch of every case at one world size


def launch(cases, folder):
    """Every case run once at each world size, each rank a spawned process: {world: [per
    rank: [per case: result]]}. A launch that outlives LAUNCH_TIMEOUT is killed and fails
    (each rank's gloo group also times out after 60 s), so no test waits forever."""
    cases_file = folder / "cases.pkl"
    with open(cases_file, "wb") as f:
        pickle.dump(cases, f)
    out = {}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for world in WORLD_SIZES:
        run = folder / f"world{world}"
        run.mkdir()
        port = free_port()
        procs = [subprocess.Popen([sys.executable, str(WORKER), str(cases_file), str(run), str(r), str(world), str(port)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for r in range(world)]
        try:
            logs = [p.communicate(timeout=LAUNCH_TIMEOUT)[0].decode(errors="replace") for p in procs]
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
                p.communicate()
            pytest.fail(f"world size {world}: the ranks did not finish within {LAUNCH_TIMEOUT} s")
        for r, (p, log) in enumerate(zip(procs, logs)):
            assert p.returncode == 0, f"rank {r} of {world} failed:\n{log}"
        out[world] = []
        for r in range(world):
            with open(run / f"rank{r}.pkl", "rb") as f:
                out[world].append(pickle.load(f))
    return out


@pytest.fixture(scope="module")
def all_results(tmp_path_factory):
    """The cross-entropy's cases, then the linear ones, in one launch per world size."""
    return launch(list(CASES.values()) + list(LINEAR_CASES.values()), tmp_path_factory.mktemp("distributed"))


@pytest.fixture(scope="module")
def results(all_results):
    return {world: [per_rank[: len(CASES)] for per_rank in ranks] for world, ranks in all_results.items()}


@pytest.fixture(scope="module")
def linear_results(all_results):
    return {world: [per_rank[len(CASES):] for per_rank in ranks] for world, ranks in all_results.items()}


def expected_of(case):
    options = {k: v for k, v in case.get("options", {}).items() if k != "exchange"}
    logits = case["logits"]
    loss, grad = sml.cross_entropy_with_grad(logits, case["target"], axis=case.get("axis", -1), **options)
    upstream = case.get("upstream")
    if upstream is not None:
        kept = np.ones(len(upstream), bool) if case.get("probabilities") else case["target"] != options.get("ignore_index", -100)
        grad = grad * np.where(kept, upstream, 0.0)[:, None].astype(grad.dtype)
    return loss, grad


def gathered_grad(case, ranks, index):
    axis = case.get("axis", -1)
    shape = case["logits"].shape
    grad = np.full(shape, np.nan, dtype=ranks[0][index]["grad"].dtype)
    for r, per_rank in enumerate(ranks):
        lo, hi = case["blocks"][len(ranks)][r]
        where = [slice(None)] * len(shape)
        where[axis] = slice(lo, hi)
        grad[tuple(where)] = per_rank[index]["grad"]
    return grad


NAMES = list(CASES)


@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("name", [n for n in NAMES if not CASES[n].get("error")])
def test_equals_single_process(results, world, name):
    index = NAMES.index(name)
    case = CASES[name]
    ranks = [per_rank[index] for per_rank in results[world]]
    for r, result in enumerate(ranks):
        assert "error" not in result, f"rank {r}: {result.get('error')}"
    expected = expected_of(case)
    n_classes = case["logits"].shape[case.get("axis", -1)]
    low_precision = case.get("torch_dtype") in ("float16", "bfloat16")
    for r, result in enumerate(ranks):
        loss = result["loss"]
        if low_precision:  # computed in float32, rounded once to the input's dtype
            np.testing.assert_allclose(loss.astype(np.float64), np.float64(expected[0]),
                                       rtol=2 * (2**-8 if case["torch_dtype"] == "bfloat16" else 2**-11))
        elif case.get("requires_grad", True):
            grad = gathered_grad(case, results[world], index)
            merge_mode = case.get("options", {}).get("exchange") == "allgather"
            assert_split_matches((np.asarray(loss)[()], grad), expected, expected[1].dtype, n_classes,
                                 f"{name}, world {world}, rank {r}", logits=case["logits"] if merge_mode else None)
        else:
            assert result["grad"] is None
            assert_split_matches((np.asarray(loss)[()], expected[1]), expected, expected[1].dtype, n_classes, name)
    # the loss is the same on every rank, bit for bit
    for result in ranks[1:]:
        np.testing.assert_array_equal(result["loss"], ranks[0]["loss"])
    if case.get("upstream") is not None and not case.get("probabilities"):
        grad = gathered_grad(case, results[world], index)
        assert np.all(grad[case["target"] == case.get("options", {}).get("ignore_index", -100)] == 0)


@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("name", [n for n in NAMES if not CASES[n].get("error")])
def test_communication(results, world, name):
    """Forward: one all-gather of the class ranges, then two all-reduces (maxima; packed
    sums) or one all-gather of the statistics; backward: nothing."""
    case = CASES[name]
    allgather = case.get("options", {}).get("exchange") == "allgather"
    for per_rank in results[world]:
        result = per_rank[NAMES.index(name)]
        assert result["forward_calls"] == ({"all_gather": 2} if allgather else {"all_gather": 1, "all_reduce": 2})
        assert result["backward_calls"] == {}


ERRORS = {
    "error: class out of range": lambda world, rank: ("ValueError", f"target value {C} at position"),
    "error: one rank's logits are integers": lambda world, rank: (
        ("TypeError", "local_logits has dtype torch.int64") if rank == 1
        else ("RefusedByAnotherRank", "rank(s) [1] of the group refused")) if world > 1 else ("TypeError", "int64"),
    "error: blocks leave a gap": lambda world, rank: ("ValueError", "must tile [0, C) without gaps"),
    "error: bad label_smoothing": lambda world, rank: ("ValueError", "label_smoothing must be in [0, 1]"),
    "error: one rank holds fewer rows": lambda world, rank: (
        ("ValueError", "every rank must hold the same rows") if world > 1 else None),
}


@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_arguments_raise_on_every_rank(results, world, name):
    """A bad argument on any rank: every rank raises (none waits forever), the rank at
    fault with the facade's message."""
    for rank, per_rank in enumerate(results[world]):
        result = per_rank[NAMES.index(name)]
        if ERRORS[name](world, rank) is None or name == "error: one rank's logits are integers" and world == 1:
            assert "error" not in result  # rank 1 does not exist: rank 0's logits are fine
            continue
        kind, message = ERRORS[name](world, rank)
        assert "error" in result, f"rank {rank} did not raise"
        assert result["error"][0] == kind and message in result["error"][1], result["error"]


def test_not_initialised_is_a_clear_error():
    import softmaxloss.distributed as smd

    if torch.distributed.is_initialized():
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        smd.vocab_parallel_cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64))


# ---- vocab_parallel_linear_cross_entropy ----------------------------------------------

LN, LD, LV = 37, 16, 23  # rows, features, classes of the head


def bf16(array):
    """float32 values that bfloat16 holds exactly (the references then see its inputs)."""
    return torch.from_numpy(array).bfloat16().float().numpy()


def make_linear_cases():
    rng = np.random.default_rng(1818)
    h32 = rng.standard_normal((LN, LD)).astype(np.float32)
    w32 = (rng.standard_normal((LV, LD)) * 0.7).astype(np.float32)
    b32 = rng.standard_normal(LV).astype(np.float32)
    h64, w64, b64 = (a.astype(np.float64) + rng.standard_normal(a.shape) * 0.05 for a in (h32, w32, b32))
    target = rng.integers(0, LV, LN)
    target[::5] = -100
    cw = rng.uniform(0.3, 2.5, LV)
    s = rng.uniform(0.0, 2.0, LN)
    probs = rng.dirichlet(np.full(LV, 0.4), LN)
    upstream = rng.standard_normal(LN)
    upstream[0] = np.nan  # an ignored row (target[0] == -100): no gradient from it
    t3 = rng.integers(0, LV, (4, 9))
    t3[1, 2] = -100
    cases = {
        "plain, chunks of 8": dict(hidden=h32, weight=w32, target=target, options=dict(chunk_size=8)),
        "bias, class weights + ignored, chunks of 5": dict(hidden=h64, weight=w64, bias=b64, target=target,
                                                           options=dict(weight=cw, chunk_size=5)),
        "smoothing + weights + ignored, memory_budget": dict(hidden=h32, weight=w32, bias=b32, target=target,
                                                             options=dict(weight=cw, label_smoothing=0.2,
                                                                          memory_budget=600)),
        "everything, sum": dict(hidden=h64, weight=w64, bias=b64, target=target, options=dict(
            weight=cw, sample_weight=s, label_smoothing=0.3, z_loss=1e-3, reduction="sum", chunk_size=11)),
        "none, upstream (NaN at an ignored row)": dict(hidden=h32, weight=w32, bias=b32, target=target,
                                                       upstream=upstream, options=dict(
            weight=cw, label_smoothing=0.1, reduction="none", chunk_size=7)),
        "none, upstream, everything, float64": dict(hidden=h64, weight=w64, target=target, upstream=np.nan_to_num(upstream),
                                                    options=dict(weight=cw, sample_weight=s, z_loss=1e-2,
                                                                 reduction="none", chunk_size=10)),
        "probabilities + smoothing + weights": dict(hidden=h64, weight=w64, bias=b64, target=probs, probabilities=True,
                                                    options=dict(label_smoothing=0.2, weight=cw, chunk_size=9)),
        "probabilities, z_loss, sample_weight, float32": dict(hidden=h32, weight=w32, target=probs.astype(np.float32),
                                                              probabilities=True, options=dict(
            z_loss=1e-2, sample_weight=s)),
        "allgather, everything": dict(hidden=h64, weight=w64, bias=b64, target=target, options=dict(
            weight=cw, sample_weight=s, label_smoothing=0.3, z_loss=1e-3, exchange="allgather", chunk_size=6)),
        "ignore_index=3, one chunk": dict(hidden=h32, weight=w32, target=np.where(target == -100, 3, target),
                                         options=dict(ignore_index=3, weight=cw)),
        "hidden (4, 9, D)": dict(hidden=h64[:36].reshape(4, 9, LD), weight=w64, bias=b64, target=t3,
                                 options=dict(label_smoothing=0.1, chunk_size=8)),
        "no grad for hidden (no all-reduce of it)": dict(hidden=h32, weight=w32, bias=b32, target=target,
                                                         grad_hidden=False, options=dict(chunk_size=16)),
        "hidden needs a gradient on rank 0 only": dict(hidden=h64, weight=w64, target=target, grad_hidden_rank=0,
                                                       options=dict(chunk_size=20)),
        "bfloat16": dict(hidden=bf16(h32), weight=bf16(w32), target=target, torch_dtype="bfloat16",
                         options=dict(chunk_size=12)),
        "mean over no rows: NaN": dict(hidden=h32, weight=w32, target=np.full(LN, -100), options=dict(weight=cw)),
        # errors
        "error: class out of range": dict(hidden=h32, weight=w32, target=np.where(target == 5, LV, target),
                                          options=dict(chunk_size=8), error=True),
        "error: one rank's weight is float64": dict(hidden=h32, weight=w32, target=target, bad_rank=1, error=True),
        "error: one rank holds fewer rows": dict(hidden=h32, weight=w32, target=target, short_rank=1, error=True),
        "error: bad label_smoothing": dict(hidden=h32, weight=w32, target=target, options=dict(label_smoothing=2.0),
                                           error=True),
        "error: bad class weights": dict(hidden=h32, weight=w32, target=target, options=dict(weight=cw[:-1]),
                                         error=True),
    }
    for case in cases.values():
        case["kind"] = "linear"
        case["blocks"] = uneven_blocks(LV)
    return cases


LINEAR_CASES = make_linear_cases()
LINEAR_NAMES = list(LINEAR_CASES)


def linear_expected(case):
    """(loss, d hidden, d weight, d bias or None) from the single-process
    softmaxloss.linear_cross_entropy_with_grad, weighted by the upstream for "none"."""
    options = {k: v for k, v in case.get("options", {}).items() if k != "exchange"}
    h, w, b, t = case["hidden"], case["weight"], case.get("bias"), case["target"]
    loss = sml.linear_cross_entropy(h, w, t, linear_bias=b, **options)
    upstream = case.get("upstream")
    if upstream is not None:  # the gradient of sum_n u_n loss_n: u as (more) sample weights, a sum
        kept = t != options.get("ignore_index", -100)
        u = np.where(kept, upstream, 0.0) * options.get("sample_weight", 1.0)
        options = dict(options, sample_weight=u, reduction="sum")
    _, *grads = sml.linear_cross_entropy_with_grad(h, w, t, linear_bias=b, **options)
    return loss, grads[0], grads[1], grads[2] if b is not None else None


def linear_torch_float64(case):
    """The same from PyTorch's float64 autograd of F.cross_entropy(hidden @ W.T + b) (with
    z_loss and sample weights written around its per-row losses)."""
    options = case.get("options", {})
    h = torch.tensor(case["hidden"], dtype=torch.float64, requires_grad=True)
    w = torch.tensor(case["weight"], dtype=torch.float64, requires_grad=True)
    b = None if case.get("bias") is None else torch.tensor(case["bias"], dtype=torch.float64, requires_grad=True)
    t = torch.from_numpy(case["target"])
    t = t.double() if case.get("probabilities") else t
    logits = torch.nn.functional.linear(h, w, b)
    cw = None if options.get("weight") is None else torch.from_numpy(options["weight"])
    ignore_index = options.get("ignore_index", -100)
    per_row = torch.nn.functional.cross_entropy(logits.reshape(-1, LV), t.reshape(-1, LV) if case.get("probabilities")
                                                else t.reshape(-1), weight=cw, ignore_index=ignore_index,
                                                reduction="none", label_smoothing=options.get("label_smoothing", 0.0))
    kept = torch.ones(per_row.shape, dtype=torch.bool) if case.get("probabilities") else t.reshape(-1) != ignore_index
    lse = torch.logsumexp(logits.reshape(-1, LV), -1)
    per_row = torch.where(kept, per_row + options.get("z_loss", 0.0) * lse * lse, 0.0)
    s = torch.ones(per_row.shape, dtype=torch.float64) if options.get("sample_weight") is None \
        else torch.from_numpy(options["sample_weight"])
    per_row = per_row * s
    reduction = options.get("reduction", "mean")
    if reduction == "mean":
        if case.get("probabilities"):
            normaliser = s.sum()
        else:
            w_y = torch.ones_like(s) if cw is None else cw[torch.where(kept, t.reshape(-1), 0)]
            normaliser = torch.where(kept, s * w_y, 0.0).sum()
        loss = per_row.sum() / normaliser
    elif reduction == "sum":
        loss = per_row.sum()
    else:
        loss = per_row.reshape(case["target"].shape[: h.ndim - 1])
    upstream = case.get("upstream")
    if upstream is None:
        loss.backward()
    else:
        loss.backward(torch.from_numpy(upstream))
    return (loss.detach().numpy(), h.grad.numpy(), w.grad.numpy(), None if b is None else b.grad.numpy())


def gathered_linear(case, ranks, index, key):
    blocks = case["blocks"][len(ranks)]
    return np.concatenate([ranks[r][index][key] for r in range(len(ranks))], axis=0) \
        if blocks == sorted(blocks) else None


def assert_close_scaled(actual, expected, rtol, what):
    """|actual - expected| <= rtol * max|expected| (NaN where NaN)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    assert np.array_equal(np.isnan(actual), np.isnan(expected)), f"{what}: NaN at other places"
    finite = ~np.isnan(expected)
    scale = np.max(np.abs(expected[finite]), initial=0.0)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=0, atol=rtol * scale + 1e-300, err_msg=what)


@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("name", [n for n in LINEAR_NAMES if not LINEAR_CASES[n].get("error")])
def test_linear_equals_single_process(linear_results, world, name):
    """The loss on every rank, hidden's gradient on every rank and the ranks' weight and
    bias gradients, gathered: the single-process fused call's and float64 PyTorch's."""
    index = LINEAR_NAMES.index(name)
    case = LINEAR_CASES[name]
    ranks = [per_rank[index] for per_rank in linear_results[world]]
    for r, result in enumerate(ranks):
        assert "error" not in result, f"rank {r}: {result.get('error')}"
    bf16 = case.get("torch_dtype") == "bfloat16"
    rtol = 2**-7 if bf16 else 1e-5 if case["hidden"].dtype == np.float32 else 1e-12
    keys = ("loss", "grad_hidden", "grad_weight", "grad_bias")
    actual = [ranks[0]["loss"], ranks[0]["grad_hidden"], gathered_linear(case, linear_results[world], index, "grad_weight"),
              None if case.get("bias") is None else gathered_linear(case, linear_results[world], index, "grad_bias")]
    if not case.get("grad_hidden", True):
        assert all(r["grad_hidden"] is None for r in ranks)
    if "grad_hidden_rank" in case:
        assert all((r["grad_hidden"] is None) == (rank != case["grad_hidden_rank"]) for rank, r in enumerate(ranks))
    for reference, tol in ((linear_expected(case), rtol), (linear_torch_float64(case), max(rtol, 1e-10))):
        for key, a, e in zip(keys, actual, reference):
            if e is None or (key == "grad_hidden" and not case.get("grad_hidden", True)):
                continue
            if key == "loss" and bf16:  # computed in float32, rounded once to bfloat16
                e = np.float64(np.asarray(e, np.float32).astype(np.float64))
            assert_close_scaled(a, e, tol, f"{name}, world {world}: {key}")
    for result in ranks[1:]:  # the same loss and hidden gradient on every rank, bit for bit
        np.testing.assert_array_equal(result["loss"], ranks[0]["loss"])
        if case.get("grad_hidden", True) and "grad_hidden_rank" not in case:
            np.testing.assert_array_equal(result["grad_hidden"], ranks[0]["grad_hidden"])


def linear_chunks(case, world):
    from softmaxloss._linear import plan_chunks

    options = case.get("options", {})
    n_rows = int(np.prod(case["hidden"].shape[:-1]))
    itemsize = 8 if case["hidden"].dtype == np.float64 else 4
    # scratch_row=0: the backend (softmaxloss.torch's GEMMs on float32/float64 hidden rows,
    # half ones upcast first) keeps no scratch per row, so the chunks get the whole budget
    rows = min(plan_chunks(n_rows, hi - lo, LD, itemsize, with_grad=True, chunk_size=options.get("chunk_size"),
                           memory_budget=options.get("memory_budget"), scratch_row=0).rows
               for lo, hi in case["blocks"][world])
    return -(-n_rows // rows)


@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("name", [n for n in LINEAR_NAMES if not LINEAR_CASES[n].get("error")])
def test_linear_communication(linear_results, world, name):
    """Forward: the class ranges' all-gather; per chunk two all-reduces (or one all-gather);
    one all-reduce of d hidden (in backward for "none"; none if hidden needs no gradient)."""
    case = LINEAR_CASES[name]
    chunks = linear_chunks(case, world)
    options = case.get("options", {})
    dh = int(case.get("grad_hidden", True))
    per_row = options.get("reduction") == "none"
    if options.get("exchange") == "allgather":
        forward = {"all_gather": 1 + chunks, "all_reduce": 0 if per_row else dh}
    else:
        forward = {"all_gather": 1, "all_reduce": 2 * chunks + (0 if per_row else dh)}
    backward = {"all_reduce": dh} if per_row else {}
    for per_rank in linear_results[world]:
        result = per_rank[LINEAR_NAMES.index(name)]
        assert {k: v for k, v in result["forward_calls"].items() if v} == {k: v for k, v in forward.items() if v}
        assert result["backward_calls"] == backward


LINEAR_ERRORS = {
    "error: class out of range": lambda world, rank: ("ValueError", f"target value {LV} at position"),
    "error: one rank's weight is float64": lambda world, rank: (
        ("TypeError", "must have one floating dtype") if rank == 1
        else ("RefusedByAnotherRank", "rank(s) [1] of the group refused")) if world > 1 else None,
    "error: one rank holds fewer rows": lambda world, rank: (
        ("ValueError", "every rank must hold the same rows") if world > 1 else None),
    "error: bad label_smoothing": lambda world, rank: ("ValueError", "label_smoothing must be in [0, 1]"),
    "error: bad class weights": lambda world, rank: ("ValueError", f"weight must have one entry per class, shape ({LV},)"),
}


@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("name", list(LINEAR_ERRORS))
def test_linear_bad_arguments_raise_on_every_rank(linear_results, world, name):
    for rank, per_rank in enumerate(linear_results[world]):
        result = per_rank[LINEAR_NAMES.index(name)]
        expected = LINEAR_ERRORS[name](world, rank)
        if expected is None:  # the rank at fault does not exist at this world size
            assert "error" not in result
            continue
        kind, message = expected
        assert "error" in result, f"rank {rank} did not raise"
        assert result["error"][0] == kind and message in result["error"][1], result["error"]

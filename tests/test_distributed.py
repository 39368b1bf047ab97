"""softmaxloss.distributed on real torch.distributed process groups: gloo on 127.0.0.1,
world sizes 1, 2 and 3, each rank a spawned process (tests/_distributed_worker.py) holding
an uneven block of the classes; the loss on every rank and the gathered gradients are
compared with the single-process softmaxloss.cross_entropy_with_grad (within 2 ulp-scale,
tests/test_class_blocks.py), for every option, and the collectives are counted: two
all-reduces (or one all-gather of the statistics) and one all-gather of the class ranges
in forward, none in backward. Also the cases where torch's loss_parallel fails (class
weights with an ignored row; label smoothing) and bad arguments on one rank or all."""

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
    }
    for case in cases.values():
        case.setdefault("blocks", uneven_blocks(case["logits"].shape[case.get("axis", -1)]))
    return cases


CASES = make_cases()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every case run once at each world size: {world: [per rank: [per case: result]]}."""
    folder = tmp_path_factory.mktemp("distributed")
    cases_file = folder / "cases.pkl"
    with open(cases_file, "wb") as f:
        pickle.dump(list(CASES.values()), f)
    out = {}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for world in WORLD_SIZES:
        run = folder / f"world{world}"
        run.mkdir()
        port = free_port()
        procs = [subprocess.Popen([sys.executable, str(WORKER), str(cases_file), str(run), str(r), str(world), str(port)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for r in range(world)]
        logs = [p.communicate(timeout=300)[0].decode(errors="replace") for p in procs]
        for r, (p, log) in enumerate(zip(procs, logs)):
            assert p.returncode == 0, f"rank {r} of {world} failed:\n{log}"
        out[world] = []
        for r in range(world):
            with open(run / f"rank{r}.pkl", "rb") as f:
                out[world].append(pickle.load(f))
    return out


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
}


@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_arguments_raise_on_every_rank(results, world, name):
    """A bad argument on any rank: every rank raises (none waits forever), the rank at
    fault with the facade's message."""
    for rank, per_rank in enumerate(results[world]):
        result = per_rank[NAMES.index(name)]
        if name == "error: one rank's logits are integers" and world == 1:
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

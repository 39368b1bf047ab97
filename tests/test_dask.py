"""softmaxloss.dask against the in-memory softmaxloss.cross_entropy(_with_grad), on the
threaded scheduler and on a real dask.distributed.LocalCluster of 2 worker processes:
chunks along the rows, the classes or both, uneven, every option (within 2 ulp-scale, as
tests/test_class_blocks.py's merge mode), N-D logits with the class axis anywhere, lazy
graphs, the gradient's chunks, no task result larger than a logits chunk, errors.

The 1e6 x 1000 float32 case of the issue is opt-in (SOFTMAXLOSS_SLOW_TESTS=1; about a
minute on 2 cores): 4 GB of logits generated chunk by chunk on the workers."""

from __future__ import annotations

import os

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import softmaxloss as sml  # noqa: E402
import softmaxloss.dask as smd  # noqa: E402

from _helpers import F32, F64, assert_split_matches  # noqa: E402

N, C = 301, 97
CHUNKINGS = {
    "one chunk": ((N,), (C,)),
    "rows": ((100, 150, 51), (C,)),
    "classes": ((N,), (10, 40, 1, 46)),
    "both": ((100, 150, 51), (30, 1, 20, 46)),
    "many classes": ((120, 181), (5,) * 19 + (2,)),
}

OPTIONS = {
    "plain": {},
    "weight+ignored": dict(weight="w"),
    "smoothing+weight+sample_weight": dict(weight="w", label_smoothing=0.2, sample_weight="s"),
    "z_loss, none": dict(z_loss=1e-2, reduction="none"),
    "smoothing=1, sum": dict(label_smoothing=1.0, reduction="sum", weight="w"),
    "ignore_index=4": dict(ignore_index=4, weight="w"),
}


def make(rng, dtype=F32, probabilities=False, options=None):
    x = (rng.standard_normal((N, C)) * 3).astype(dtype)
    keywords = dict(options or {})
    if probabilities:
        target = rng.dirichlet(np.full(C, 0.5), N)
    else:
        target = rng.integers(0, C, N)
        target[::7] = keywords.get("ignore_index", -100)
    if keywords.get("weight") == "w":
        keywords["weight"] = rng.uniform(0.3, 2.0, C)
    if keywords.get("sample_weight") == "s":
        keywords["sample_weight"] = rng.uniform(0.0, 2.0, N)
    return x, target, keywords


def check(x, target, keywords, chunks, scheduler="threads", split_every=None, target_chunks=50, axis=-1):
    X = da.from_array(x, chunks=chunks)
    T = da.from_array(target, chunks=chunks if target.shape == x.shape else target_chunks)
    lazy = dict(keywords)
    if "sample_weight" in lazy:
        lazy["sample_weight"] = da.from_array(lazy["sample_weight"], chunks=77)
    loss, grad = smd.cross_entropy_with_grad(X, T, split_every=split_every, axis=axis, **lazy)
    assert grad.chunks == X.chunks and grad.dtype == x.dtype
    loss_only = smd.cross_entropy(X, T, split_every=split_every, axis=axis, **lazy)
    value, gradient, value_only = dask.compute(loss, grad, loss_only, scheduler=scheduler)
    expected = sml.cross_entropy_with_grad(x, target, axis=axis, **keywords)
    n_classes = x.shape[axis]
    last = (lambda a: np.moveaxis(a, axis, -1))  # the helper wants the class axis last
    assert_split_matches((value[()] if np.ndim(value) == 0 else value, last(gradient)), (expected[0], last(expected[1])),
                         expected[1].dtype, n_classes, f"{keywords} {chunks}", logits=last(x))
    np.testing.assert_array_equal(value_only, value)


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_index_targets(rng, dtype, name, chunking):
    x, target, keywords = make(rng, dtype, False, OPTIONS[name])
    check(x, target, keywords, CHUNKINGS[chunking], split_every=3)


@pytest.mark.parametrize("chunking", ["rows", "both", "many classes"])
@pytest.mark.parametrize("options", [{}, dict(label_smoothing=0.3, weight="w", z_loss=1e-3),
                                     dict(reduction="none", sample_weight="s")], ids=["plain", "all", "none"])
def test_probability_targets(rng, options, chunking):
    x, target, keywords = make(rng, F64, True, options)
    check(x, target, keywords, CHUNKINGS[chunking])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_class_axis_anywhere(rng, axis):
    shape = [6, 7, 8]
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    target = rng.integers(0, shape[axis], [n for i, n in enumerate(shape) if i != axis])
    check(x, target, dict(label_smoothing=0.1), chunks=(4, 3, 5), target_chunks=3, axis=axis)


def test_float16_and_integer_logits(rng):
    x, target, keywords = make(rng, F32, False, dict(weight="w"))
    for dtype in (np.float16, np.int32):
        xs = (x * 10).astype(dtype) if dtype is np.int32 else x.astype(dtype)
        loss, grad = smd.cross_entropy_with_grad(da.from_array(xs, chunks=(100, 40)), target, **keywords)
        ref_loss, ref_grad = sml.cross_entropy_with_grad(xs, target, **keywords)
        assert loss.dtype == ref_loss.dtype and grad.dtype == ref_grad.dtype
        np.testing.assert_allclose(loss.compute(), ref_loss, rtol=2e-3)
        np.testing.assert_allclose(grad.compute(), ref_grad, rtol=2e-3, atol=1e-6)


def test_lazy_until_computed(rng):
    """Building the graph computes nothing: logits whose chunks raise when computed."""
    def explode(block):
        raise AssertionError("computed")
    x = da.zeros((20, 30), chunks=(10, 7), dtype=np.float32).map_blocks(explode, dtype=np.float32)
    t = da.zeros(20, chunks=10, dtype=np.int64)
    loss, grad = smd.cross_entropy_with_grad(x, t, label_smoothing=0.1)
    assert loss.shape == () and grad.shape == (20, 30)
    with pytest.raises(AssertionError, match="computed"):
        loss.compute(scheduler="sync")


def test_no_task_result_larger_than_a_logits_chunk(rng):
    """Every task's result (statistics, merges, coefficients, gradient chunks) is at most
    as large as the largest chunk of the logits; and the task count grows linearly."""
    from dask.callbacks import Callback

    x, target, keywords = make(rng, F32, False, dict(weight="w", label_smoothing=0.1))
    chunks = ((100, 150, 51), (30, 17, 20, 30))
    X = da.from_array(x, chunks=chunks)
    largest = max(a * b for a in chunks[0] for b in chunks[1]) * x.itemsize
    sizes = []

    class Sizes(Callback):
        def _posttask(self, key, result, dsk, state, id):
            name = key[0] if isinstance(key, tuple) else key
            # from_array's whole input, and compute()'s concatenation of the result: not the graph's
            if result is not x and result is not target and not str(name).startswith("finalize"):
                sizes.append(getattr(result, "nbytes", 0))

    loss, grad = smd.cross_entropy_with_grad(X, da.from_array(target, chunks=100), split_every=2, **keywords)
    with Sizes():
        dask.compute(loss, grad, scheduler="sync")
    assert max(sizes) <= largest, (max(sizes), largest)
    counts = []
    for n_class_chunks in (4, 8, 16):
        g = smd.cross_entropy_with_grad(da.from_array(x, chunks=(100, -(-C // n_class_chunks))), target)[1]
        counts.append(len(g.__dask_graph__()))
    assert counts[2] - counts[1] <= 2.2 * (counts[1] - counts[0]), counts


def test_bad_input_is_refused_when_the_graph_is_built(rng):
    x, target, _ = make(rng)
    X = da.from_array(x, chunks=(100, 40))
    with pytest.raises(ValueError, match=r"target value 97 at position \(3,\) is out of range for 97 classes"):
        smd.cross_entropy(X, np.where(np.arange(N) == 3, C, target))
    with pytest.raises(ValueError, match="target of class indices has shape"):
        smd.cross_entropy(X, target[:-1])
    with pytest.raises(ValueError, match="weight must have one entry per class"):
        smd.cross_entropy(X, target, weight=np.ones(3))
    with pytest.raises(ValueError, match="sample_weight has shape"):
        smd.cross_entropy(X, target, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="reduction must be one of"):
        smd.cross_entropy(X, target, reduction="avg")
    with pytest.raises(TypeError, match="complex"):
        smd.cross_entropy(X.astype(np.complex64), target)
    with pytest.raises(ValueError, match="split_every"):
        smd.cross_entropy(X, target, split_every=1)
    unknown = X[X[:, 0] > 0]
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        smd.cross_entropy(unknown, target)
    # a dask target's values are read by its tasks: the error comes at compute time
    lazy_bad = da.from_array(np.where(np.arange(N) == 3, C, target), chunks=100)
    loss = smd.cross_entropy(X, lazy_bad)
    with pytest.raises(ValueError, match="out of range for 97 classes"):
        loss.compute(scheduler="sync")


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  memory_limit="2GiB") as local_cluster, distributed.Client(local_cluster) as client:
        yield client


@pytest.mark.parametrize("name", ["plain", "smoothing+weight+sample_weight", "z_loss, none"])
def test_on_a_local_cluster(rng, cluster, name):
    """The same graphs on 2 worker processes (pickled tasks, results moved between them)."""
    x, target, keywords = make(rng, F32, False, OPTIONS[name])
    check(x, target, keywords, CHUNKINGS["both"], scheduler=cluster.get, split_every=2)
    assert len(cluster.scheduler_info()["workers"]) == 2


def test_probabilities_on_a_local_cluster(rng, cluster):
    x, target, keywords = make(rng, F64, True, dict(label_smoothing=0.1))
    check(x, target, keywords, CHUNKINGS["many classes"], scheduler=cluster.get)


@pytest.mark.skipif(os.environ.get("SOFTMAXLOSS_SLOW_TESTS") != "1", reason="opt-in: SOFTMAXLOSS_SLOW_TESTS=1")
def test_a_million_rows_of_a_thousand_classes(cluster):
    """1e6 x 1000 float32 (4 GB) in (65536, 250) chunks, generated on the workers (each
    holds a few chunks, 2 GiB at most): the mean loss and per-row-block sums of the
    gradient against the in-memory call, block of rows by block of rows."""
    rows, classes, chunks = 1_000_000, 1000, (65536, 250)
    x = da.random.default_rng(7).standard_normal((rows, classes), chunks=chunks, dtype=np.float32) * 3
    target = da.random.default_rng(8).integers(0, classes, rows, chunks=chunks[0])
    loss, grad = smd.cross_entropy_with_grad(x, target, label_smoothing=0.1)
    block_sums = grad.sum(axis=1)
    value, sums = dask.compute(loss, block_sums, scheduler=cluster.get)
    # the in-memory reference, a block of rows at a time (all its classes), in this process
    total, ref_sums = 0.0, []
    for start in range(0, rows, chunks[0]):
        xb, tb = dask.compute(x[start:start + chunks[0]], target[start:start + chunks[0]], scheduler=cluster.get)
        row_loss = sml.cross_entropy(xb, tb, label_smoothing=0.1, reduction="none")
        total += float(np.sum(row_loss, dtype=np.float64))
        _, g = sml.cross_entropy_with_grad(xb, tb, label_smoothing=0.1, reduction="sum")
        ref_sums.append(g.sum(axis=1) / rows)
    np.testing.assert_allclose(value, total / rows, rtol=1e-6)
    np.testing.assert_allclose(sums, np.concatenate(ref_sums), rtol=1e-4, atol=1e-12)

"""linear_cross_entropy(_with_grad): the fused linear + cross-entropy against its reference,
against the unfused call it stands for (`cross_entropy_with_grad(h @ W.T + b, ...)` and the
two GEMMs), against PyTorch's autograd and finite differences; independent of the chunk
size; no allocation beyond one chunk's working memory and the returned gradients; bad input
refused before any work."""

import inspect
import tracemalloc

import numpy as np
import pytest

import softmaxloss as sml
from softmaxloss import _linear
from softmaxloss import reference as ref
from softmaxloss._linear import plan_chunks

# A float32 GEMM rounds each of its sums of D (or N) products: tolerances a little wider
# than the cross-entropy's own (rtol, atol relative to the largest expected entry).
TOLERANCES = {np.dtype(np.float32): (3e-5, 3e-5), np.dtype(np.float64): (1e-11, 1e-11)}
DTYPES = [np.float32, np.float64]
N, D, V = 29, 6, 13


def assert_results_close(actual, expected, dtype, what=""):
    """Same number of results, each of the same type, dtype and shape, values within the
    tolerance of `dtype` (atol relative to the largest finite expected entry), NaN where NaN."""
    assert len(actual) == len(expected), what
    rtol, atol = TOLERANCES[np.dtype(dtype)]
    for i, (a, e) in enumerate(zip(actual, expected)):
        label = f"{what}[{i}]"
        assert type(a) is type(e), f"{label}: {type(a)} != {type(e)}"
        assert a.dtype == e.dtype == np.dtype(dtype), f"{label}: {a.dtype}, {e.dtype}"
        assert np.shape(a) == np.shape(e), f"{label}: {np.shape(a)} != {np.shape(e)}"
        finite = np.abs(np.asarray(e, np.float64))[np.isfinite(e)]
        scale = finite.max() if finite.size else 1.0
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=rtol,
                                   atol=atol * max(scale, 1e-300), equal_nan=True, err_msg=label)


def unfused(hidden, linear_weight, target, linear_bias=None, **options):
    """What linear_cross_entropy_with_grad stands for: the logits materialised, the fused
    cross-entropy kernel, then the two GEMMs (and the bias gradient), in hidden's dtype."""
    logits = hidden @ linear_weight.T
    if linear_bias is not None:
        logits = logits + linear_bias
    loss, grad = sml.cross_entropy_with_grad(logits, target, **options)
    n_rows = int(np.prod(hidden.shape[:-1]))
    g = grad.reshape(n_rows, linear_weight.shape[0])
    results = [loss, (g @ linear_weight).reshape(hidden.shape), g.T @ hidden.reshape(n_rows, hidden.shape[-1])]
    if linear_bias is not None:
        results.append(g.sum(axis=0))
    return tuple(results)


def problem(rng, dtype, kind="index", row_shape=(N,), n_features=D, n_classes=V, bias=True, n_ignored=3):
    """hidden, linear_weight, linear_bias (or None) and targets of `kind`: "index" (some
    rows ignore_index) or "probabilities"."""
    hidden = rng.standard_normal((*row_shape, n_features)).astype(dtype)
    linear_weight = (rng.standard_normal((n_classes, n_features)) / np.sqrt(max(n_features, 1))).astype(dtype)
    linear_bias = rng.standard_normal(n_classes).astype(dtype) if bias else None
    if kind == "index":
        target = rng.integers(0, n_classes, size=row_shape)
        flat = target.reshape(-1)
        if n_ignored:
            flat[rng.choice(flat.size, size=min(n_ignored, flat.size), replace=False)] = -100
    else:
        target = rng.dirichlet(np.full(n_classes, 0.5), size=row_shape).astype(dtype)
    return hidden, linear_weight, linear_bias, target


OPTION_SETS = {
    "plain": {},
    "class-weights": {"weight": "random"},
    "sample-weights": {"sample_weight": "random"},
    "smoothing": {"label_smoothing": 0.2},
    "z-loss": {"z_loss": 1e-2},
    "everything": {"weight": "random", "sample_weight": "random", "label_smoothing": 0.1, "z_loss": 1e-3},
}


def options_for(name, rng, row_shape, n_classes=V):
    options = dict(OPTION_SETS[name])
    if options.get("weight") == "random":
        options["weight"] = rng.uniform(0.2, 2.0, n_classes)
    if options.get("sample_weight") == "random":
        options["sample_weight"] = rng.uniform(0.0, 3.0, row_shape)
    return options


# ---- the API --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["linear_cross_entropy", "linear_cross_entropy_with_grad"])
def test_exported_with_the_reference_twins_signature(name):
    def parameters(function):
        return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]

    assert name in sml.__all__ and name in ref.__all__
    assert parameters(getattr(sml, name)) == parameters(getattr(ref, name))


def test_keywords_are_pytorchs_where_it_has_them():
    """PyTorch's names for what both have (torch's `input` is our `hidden`; torch's
    ignore_index default None means -100 for class indices, ours is -100)."""
    ours = set(inspect.signature(sml.linear_cross_entropy).parameters)
    shared = {"linear_weight", "target", "linear_bias", "weight", "reduction", "ignore_index", "label_smoothing"}
    assert shared <= ours
    torch = pytest.importorskip("torch")
    theirs = set(inspect.signature(torch.nn.functional.linear_cross_entropy).parameters)
    assert shared <= theirs


# ---- values and gradients ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["index", "probabilities"])
@pytest.mark.parametrize("option_set", sorted(OPTION_SETS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_the_reference_and_the_unfused_call(rng, dtype, kind, option_set, reduction, bias):
    hidden, linear_weight, linear_bias, target = problem(rng, dtype, kind, bias=bias)
    options = options_for(option_set, rng, (N,))
    options["reduction"] = reduction
    fused = sml.linear_cross_entropy_with_grad(hidden, linear_weight, target, linear_bias=linear_bias,
                                               chunk_size=4, **options)
    expected = ref.linear_cross_entropy_with_grad(hidden, linear_weight, target, linear_bias=linear_bias, **options)
    assert_results_close(fused, expected, dtype, "vs reference")
    assert_results_close(fused, unfused(hidden, linear_weight, target, linear_bias, **options), dtype, "vs unfused")
    loss_only = sml.linear_cross_entropy(hidden, linear_weight, target, linear_bias=linear_bias, chunk_size=4, **options)
    assert_results_close((loss_only,), fused[:1], dtype, "loss only")
    assert_results_close(
        (ref.linear_cross_entropy(hidden, linear_weight, target, linear_bias=linear_bias, **options),),
        expected[:1], dtype, "reference loss only",
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["index", "probabilities"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_results_do_not_depend_on_the_chunk_size(rng, dtype, kind, reduction):
    hidden, linear_weight, linear_bias, target = problem(rng, dtype, kind)
    options = options_for("everything", rng, (N,))
    whole = sml.linear_cross_entropy_with_grad(hidden, linear_weight, target, linear_bias=linear_bias,
                                               reduction=reduction, chunk_size=N, **options)
    for chunking in [dict(chunk_size=1), dict(chunk_size=3), dict(chunk_size=N + 7), {},
                     dict(memory_budget=1), dict(memory_budget=3 * V * np.dtype(dtype).itemsize),
                     dict(memory_budget=np.inf)]:
        chunked = sml.linear_cross_entropy_with_grad(hidden, linear_weight, target, linear_bias=linear_bias,
                                                     reduction=reduction, **chunking, **options)
        assert_results_close(chunked, whole, dtype, str(chunking))
        loss = sml.linear_cross_entropy(hidden, linear_weight, target, linear_bias=linear_bias,
                                        reduction=reduction, **chunking, **options)
        assert_results_close((loss,), whole[:1], dtype, f"loss only, {chunking}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_count_does_not_change_a_bit(rng, dtype):
    hidden, linear_weight, linear_bias, target = problem(rng, dtype, row_shape=(300,), n_classes=200)
    results = [sml.linear_cross_entropy_with_grad(hidden, linear_weight, target, linear_bias=linear_bias,
                                                  label_smoothing=0.1, chunk_size=64, n_threads=n)
               for n in (1, 2, 3)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["index", "probabilities"])
def test_n_dimensional_hidden(rng, dtype, kind):
    """hidden (..., D) with targets of hidden's shape without the last axis (or + (V,))."""
    hidden, linear_weight, linear_bias, target = problem(rng, dtype, kind, row_shape=(2, 3, 5))
    options = options_for("everything", rng, (2, 3, 5))
    for reduction in ("mean", "none"):
        fused = sml.linear_cross_entropy_with_grad(hidden, linear_weight, target, linear_bias=linear_bias,
                                                   reduction=reduction, chunk_size=4, **options)
        assert fused[1].shape == hidden.shape
        assert_results_close(fused, ref.linear_cross_entropy_with_grad(
            hidden, linear_weight, target, linear_bias=linear_bias, reduction=reduction, **options), dtype)
        assert_results_close(fused, unfused(hidden, linear_weight, target, linear_bias, reduction=reduction,
                                            **options), dtype, "vs unfused")


@pytest.mark.parametrize("dtype", DTYPES)
def test_unbatched_hidden_and_a_scalar_target(rng, dtype):
    """hidden (D,) and a 0-d target: one row, as torch's unbatched input."""
    hidden, linear_weight, linear_bias, _ = problem(rng, dtype, row_shape=())
    for target in (np.array(4), np.int64(4), rng.dirichlet(np.ones(V))):
        for reduction in ("mean", "none"):
            fused = sml.linear_cross_entropy_with_grad(hidden, linear_weight, target, linear_bias=linear_bias,
                                                       reduction=reduction)
            assert fused[1].shape == (D,)
            assert_results_close(fused, ref.linear_cross_entropy_with_grad(
                hidden, linear_weight, target, linear_bias=linear_bias, reduction=reduction), dtype)


def layouts(array):
    """`array` in memory layouts the function must read as they are: C, Fortran, strided
    (a slice of a larger array), read-only, non-native byte order."""
    yield "C", np.ascontiguousarray(array)
    yield "F", np.asfortranarray(array)
    wide = np.zeros((array.shape[0], 2 * array.shape[1]), array.dtype)
    wide[:, ::2] = array
    yield "strided", wide[:, ::2]
    read_only = array.copy()
    read_only.flags.writeable = False
    yield "read-only", read_only
    yield "byte-swapped", array.astype(array.dtype.newbyteorder())


@pytest.mark.parametrize("dtype", DTYPES)
def test_any_memory_layout_and_inputs_never_modified(rng, dtype):
    hidden, linear_weight, linear_bias, target = problem(rng, dtype)
    expected = ref.linear_cross_entropy_with_grad(hidden, linear_weight, target, linear_bias=linear_bias)
    for (h_name, h), (w_name, w) in zip(layouts(hidden), layouts(linear_weight)):
        copies = [h.copy(), w.copy(), linear_bias.copy(), target.copy()]
        fused = sml.linear_cross_entropy_with_grad(h, w, target, linear_bias=linear_bias, chunk_size=5)
        assert_results_close(fused, expected, dtype, f"hidden {h_name}, weight {w_name}")
        for before, after in zip(copies, [h, w, linear_bias, target]):
            np.testing.assert_array_equal(before, after)
    # batch axes that do not merge into one (rows gathered a chunk at a time)
    hidden3 = rng.standard_normal((5, 4, D)).astype(dtype).transpose(1, 0, 2)
    target3 = rng.integers(0, V, (4, 5))
    assert_results_close(
        sml.linear_cross_entropy_with_grad(hidden3, linear_weight, target3, chunk_size=3),
        ref.linear_cross_entropy_with_grad(hidden3, linear_weight, target3), dtype, "transposed N-D")
    probabilities3 = rng.dirichlet(np.ones(V), (5, 4)).transpose(1, 0, 2)
    assert_results_close(
        sml.linear_cross_entropy_with_grad(hidden3, linear_weight, probabilities3, chunk_size=3),
        ref.linear_cross_entropy_with_grad(hidden3, linear_weight, probabilities3), dtype, "transposed N-D probabilities")


def test_target_dtypes(rng):
    """Class indices of any integer dtype or floats holding whole numbers; a uint64
    ignore_index past int64; float16 probabilities."""
    hidden, linear_weight, linear_bias, target = problem(rng, np.float64, n_ignored=0)
    expected = sml.linear_cross_entropy_with_grad(hidden, linear_weight, target, linear_bias=linear_bias)
    for as_type in (np.int32, np.uint8, np.uint64, np.float64):
        fused = sml.linear_cross_entropy_with_grad(hidden, linear_weight, target.astype(as_type),
                                                   linear_bias=linear_bias, chunk_size=7)
        assert_results_close(fused, expected, np.float64, str(as_type))
    big = target.astype(np.uint64)
    big[[0, 5]] = 2**64 - 1
    assert_results_close(
        sml.linear_cross_entropy_with_grad(hidden, linear_weight, big, ignore_index=2**64 - 1, chunk_size=4),
        unfused(hidden, linear_weight, big, ignore_index=2**64 - 1), np.float64, "uint64 ignore_index")
    probabilities = rng.dirichlet(np.ones(V), N).astype(np.float16)
    assert_results_close(
        sml.linear_cross_entropy_with_grad(hidden, linear_weight, probabilities, chunk_size=4),
        ref.linear_cross_entropy_with_grad(hidden, linear_weight, probabilities), np.float64, "float16 probabilities")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["index", "probabilities"])
def test_gradients_match_finite_differences(rng, reduction, kind):
    """A 4th-order central difference of the (summed, for "none") loss with respect to every
    entry of hidden, linear_weight and linear_bias, float64."""
    hidden, linear_weight, linear_bias, target = problem(rng, np.float64, kind, row_shape=(5,), n_features=3,
                                                         n_classes=4, n_ignored=1)
    options = dict(weight=rng.uniform(0.5, 2, 4), sample_weight=rng.uniform(0.5, 2, 5), label_smoothing=0.1,
                   z_loss=0.05, reduction=reduction)

    def loss(h, w, b):
        return float(np.sum(sml.linear_cross_entropy(h, w, target, linear_bias=b, chunk_size=2, **options)))

    _, *grads = sml.linear_cross_entropy_with_grad(hidden, linear_weight, target, linear_bias=linear_bias,
                                                   chunk_size=2, **options)
    inputs = [hidden, linear_weight, linear_bias]
    step = 1e-3
    for which, grad in enumerate(grads):
        numeric = np.zeros_like(grad)
        for index in np.ndindex(grad.shape):
            values = []
            for k in (2, 1, -1, -2):
                shifted = [x.copy() for x in inputs]
                shifted[which][index] += k * step
                values.append(loss(*shifted))
            numeric[index] = (-values[0] + 8 * values[1] - 8 * values[2] + values[3]) / (12 * step)
        np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-9, err_msg=f"input {which}")


def torch_expected(torch, hidden, linear_weight, linear_bias, target, reduction, **options):
    """torch's F.cross_entropy(h @ w.T + b) and its autograd gradients (of the sum for
    "none"), float64."""
    h = torch.tensor(hidden, requires_grad=True)
    w = torch.tensor(linear_weight, requires_grad=True)
    b = torch.tensor(linear_bias, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(h @ w.T + b, torch.from_numpy(target), reduction=reduction, **options)
    (loss.sum() if reduction == "none" else loss).backward()
    linear = torch.nn.functional.linear_cross_entropy(h.detach(), w.detach(), torch.from_numpy(target),
                                                      linear_bias=b.detach(), reduction=reduction, **options)
    torch.testing.assert_close(linear, loss.detach(), rtol=1e-12, atol=1e-12)
    return (loss.detach().numpy()[()], h.grad.numpy(), w.grad.numpy(), b.grad.numpy())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["index", "probabilities"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
def test_matches_torch_autograd(rng, reduction, kind, weighted, smoothing):
    torch = pytest.importorskip("torch")
    hidden, linear_weight, linear_bias, target = problem(rng, np.float64, kind)
    weight = rng.uniform(0.2, 2.0, V) if weighted else None
    expected = torch_expected(torch, hidden, linear_weight, linear_bias, target, reduction, label_smoothing=smoothing,
                              weight=None if weight is None else torch.tensor(weight))
    fused = sml.linear_cross_entropy_with_grad(hidden, linear_weight, target, linear_bias=linear_bias, weight=weight,
                                               label_smoothing=smoothing, reduction=reduction, chunk_size=6)
    assert_results_close(fused, expected, np.float64)


# ---- edge cases -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_mean_over_no_rows_is_nan(rng, dtype):
    """All rows ignored: NaN, and zero gradients (ignored rows have none), as the unfused
    call; kept rows of weight 0 (W = 0): NaN, and NaN gradients from those rows."""
    hidden, linear_weight, linear_bias, _ = problem(rng, dtype)
    ignored = np.full(N, -100)
    for chunk_size in (1, 4, None):
        fused = sml.linear_cross_entropy_with_grad(hidden, linear_weight, ignored, linear_bias=linear_bias,
                                                   chunk_size=chunk_size)
        assert np.isnan(fused[0]) and all(not g.any() for g in fused[1:])
        assert_results_close(fused, unfused(hidden, linear_weight, ignored, linear_bias), dtype)
        assert np.isnan(sml.linear_cross_entropy(hidden, linear_weight, ignored, chunk_size=chunk_size))
    target = rng.integers(0, V, N)
    target[:5] = -100
    zero_weights = np.zeros(N)
    fused = sml.linear_cross_entropy_with_grad(hidden, linear_weight, target, linear_bias=linear_bias,
                                               sample_weight=zero_weights, chunk_size=4)
    expected = unfused(hidden, linear_weight, target, linear_bias, sample_weight=zero_weights)
    assert np.isnan(fused[0]) and np.isnan(fused[1][5:]).all() and not fused[1][:5].any()
    assert_results_close(fused, expected, dtype)
    assert_results_close(fused, ref.linear_cross_entropy_with_grad(
        hidden, linear_weight, target, linear_bias=linear_bias, sample_weight=zero_weights), dtype, "reference")


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_rows_and_zero_features(rng, dtype):
    hidden, linear_weight, linear_bias, _ = problem(rng, dtype, row_shape=(0,))
    for reduction, loss in (("mean", np.nan), ("sum", 0.0)):
        fused = sml.linear_cross_entropy_with_grad(hidden, linear_weight, np.zeros(0, int), linear_bias=linear_bias,
                                                   reduction=reduction)
        np.testing.assert_equal(fused[0], dtype(loss))
        assert fused[1].shape == (0, D) and not fused[2].any() and not fused[3].any()
        assert_results_close(fused, ref.linear_cross_entropy_with_grad(
            hidden, linear_weight, np.zeros(0, int), linear_bias=linear_bias, reduction=reduction), dtype)
    # no features: the logits are the bias
    hidden, linear_weight, linear_bias, target = problem(rng, dtype, n_features=0)
    fused = sml.linear_cross_entropy_with_grad(hidden, linear_weight, target, linear_bias=linear_bias, chunk_size=4)
    assert fused[1].shape == (N, 0) and fused[2].shape == (V, 0)
    assert_results_close(fused, unfused(hidden, linear_weight, target, linear_bias), dtype)


def test_reduction_none_gradient_is_that_of_the_sum(rng):
    hidden, linear_weight, linear_bias, target = problem(rng, np.float64)
    none = sml.linear_cross_entropy_with_grad(hidden, linear_weight, target, linear_bias=linear_bias,
                                              reduction="none", chunk_size=4)
    total = sml.linear_cross_entropy_with_grad(hidden, linear_weight, target, linear_bias=linear_bias,
                                               reduction="sum", chunk_size=4)
    assert none[0].shape == (N,) and not none[0][target == -100].any()
    np.testing.assert_allclose(none[0].sum(), total[0], rtol=1e-13)
    for a, b in zip(none[1:], total[1:]):
        np.testing.assert_array_equal(a, b)


def test_non_finite_hidden_rows_stay_in_their_rows(rng):
    """A NaN in a row of hidden makes that row's loss NaN, and the other rows' losses and
    grad_hidden rows are what they would be without it, as in the unfused call."""
    hidden, linear_weight, linear_bias, target = problem(rng, np.float64, n_ignored=0)
    hidden[4, 2] = np.nan
    fused = sml.linear_cross_entropy_with_grad(hidden, linear_weight, target, linear_bias=linear_bias,
                                               reduction="none", chunk_size=3)
    assert np.isnan(fused[0][4]) and np.isfinite(np.delete(fused[0], 4)).all()
    assert np.isfinite(np.delete(fused[1], 4, axis=0)).all()
    assert_results_close(fused, unfused(hidden, linear_weight, target, linear_bias, reduction="none"), np.float64)


# ---- memory -------------------------------------------------------------------------------------


def peak_allocation(call):
    """Bytes allocated at the peak of call() (tracemalloc sees NumPy's allocations), beyond
    what was allocated before it, and call()'s result."""
    call()  # warm up: first-call allocations (imports, caches) are not the call's
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - start, result


def small_vectors(n_rows, n_classes, n_features):
    """O(N + V + D): a few float64 vectors of one value per row, class or feature (per-row
    losses, targets, the rows' sample weights, the bias gradient's sums) and a constant."""
    return 64 * n_rows + 32 * (n_classes + n_features) + 256 * 1024


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunking", [{}, {"chunk_size": 250}, {"memory_budget": 2**22}])
def test_no_allocation_beyond_one_chunk_and_the_gradients(dtype, bias, chunking):
    rng = np.random.default_rng(0)
    n_rows, n_features, n_classes = 2000, 64, 3000
    hidden, linear_weight, linear_bias, target = problem(rng, dtype, row_shape=(n_rows,), n_features=n_features,
                                                         n_classes=n_classes, bias=bias, n_ignored=100)
    itemsize = np.dtype(dtype).itemsize
    plan = plan_chunks(n_rows, n_classes, n_features, itemsize, with_grad=True, **chunking)
    working = plan.working_bytes(n_classes, n_features, itemsize)
    logits = n_rows * n_classes * itemsize
    if not chunking:
        assert working <= logits / 8
    if "memory_budget" in chunking:
        assert working <= chunking["memory_budget"]
    peak, result = peak_allocation(lambda: sml.linear_cross_entropy_with_grad(
        hidden, linear_weight, target, linear_bias=linear_bias, label_smoothing=0.1, **chunking))
    gradients = sum(g.nbytes for g in result[1:])
    assert gradients <= peak <= gradients + working + small_vectors(n_rows, n_classes, n_features), (
        f"{peak} bytes allocated: gradients {gradients}, chunk working memory {working}, logits {logits}")
    loss_plan = plan_chunks(n_rows, n_classes, n_features, itemsize, with_grad=False, **chunking)
    peak, _ = peak_allocation(lambda: sml.linear_cross_entropy(
        hidden, linear_weight, target, linear_bias=linear_bias, label_smoothing=0.1, **chunking))
    assert peak <= loss_plan.working_bytes(n_classes, n_features, itemsize) + small_vectors(n_rows, n_classes, n_features)


# The two benchmark sizes' proportions (N : D : V), scaled down: (4096, 1024, 32000) and the
# LM head (2048, 2048, 128256), where dW is as large as the logits' N x V.
BENCHMARK_PROPORTIONS = [(512, 128, 4000), (256, 256, 16032)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BENCHMARK_PROPORTIONS)
def test_default_budget_memory_at_the_benchmark_proportions(dtype, shape):
    """The default call at the benchmark sizes' proportions: at most 1/8 of the logits of
    working memory (chunk + scratch) beyond the returned gradients, plus O(N + V + D)."""
    rng = np.random.default_rng(1)
    n_rows, n_features, n_classes = shape
    hidden, linear_weight, _, target = problem(rng, dtype, row_shape=(n_rows,), n_features=n_features,
                                               n_classes=n_classes, bias=False, n_ignored=10)
    itemsize = np.dtype(dtype).itemsize
    logits = n_rows * n_classes * itemsize
    working = plan_chunks(n_rows, n_classes, n_features, itemsize, with_grad=True).working_bytes(
        n_classes, n_features, itemsize)
    assert working <= logits / 8
    peak, result = peak_allocation(lambda: sml.linear_cross_entropy_with_grad(hidden, linear_weight, target))
    gradients = sum(g.nbytes for g in result[1:])
    assert gradients <= peak <= gradients + working + small_vectors(n_rows, n_classes, n_features), (
        f"{peak} bytes allocated: gradients {gradients}, working memory {working}, logits {logits}")


def test_a_backends_own_scratch_leaves_the_budget_to_the_chunk():
    """scratch_row (softmaxloss.torch's backends): the budget holds rows x (V + scratch_row);
    0 scratch (float32 through PyTorch) gives the logits the whole budget."""
    n, v, d = 4096, 32000, 1024
    budget = n * v * 4 / 8
    numpy_plan = plan_chunks(n, v, d, 4, with_grad=True)
    assert numpy_plan.rows == int(budget // ((v + v / 4) * 4))  # 409: the NumPy backend's dW blocks
    plain = plan_chunks(n, v, d, 4, with_grad=True, scratch_row=0)
    assert plain == _linear.ChunkPlan(rows=512, weight_block=0, scratch_rows=0)
    assert plain.working_bytes(v, d, 4) == budget
    half = plan_chunks(n, v, d, 4, with_grad=True, scratch_row=2 * d)
    assert half.rows == int(budget // ((v + 2 * d) * 4)) and half.scratch_rows == 2 * half.rows
    assert half.working_bytes(v, d, 4) <= budget
    assert plan_chunks(n, v, d, 4, with_grad=False, scratch_row=2 * d).rows == 512  # no gradient: no scratch
    lm = plan_chunks(2048, 128256, 2048, 4, with_grad=True, scratch_row=0)
    assert lm.rows == 256 > plan_chunks(2048, 128256, 2048, 4, with_grad=True).rows
    with pytest.raises(ValueError, match="dW blocks"):
        _linear.NumpyGemms(_linear._check(np.zeros((8, 2), np.float32), np.zeros((5, 2), np.float32), np.zeros(8, int),
                                          None, None, None, -100, "mean", 0.0, 0.0, 2, None, None),
                           plan_chunks(8, 5, 2, 4, with_grad=True, chunk_size=2, scratch_row=0), True)


def test_the_default_chunk():
    """At most 1/8 of the N x V logits and at most 256 MiB of working memory, at least one row."""
    assert plan_chunks(4096, 32000, 1024, 4, with_grad=True) == plan_chunks(
        4096, 32000, 1024, 4, with_grad=True, memory_budget=4096 * 32000 * 4 / 8)
    big = plan_chunks(10**6, 128256, 4096, 4, with_grad=True)
    assert big.working_bytes(128256, 4096, 4) <= 256 * 2**20
    assert plan_chunks(3, 10, 4, 8, with_grad=True).rows == 1
    assert plan_chunks(100, 10, 4, 8, with_grad=True, memory_budget=np.inf) == _linear.ChunkPlan(rows=100, weight_block=0, scratch_rows=100)
    assert plan_chunks(100, 10, 4, 8, with_grad=True, chunk_size=1000).rows == 100


# ---- bad input ----------------------------------------------------------------------------------

RNG = np.random.default_rng(1)
H = RNG.standard_normal((4, 3))
W = RNG.standard_normal((5, 3))
B = RNG.standard_normal(5)
T = np.array([0, 4, -100, 2])
P = np.full((4, 5), 0.2)

# (id, (hidden, linear_weight, target), keywords, exception, message fragment)
BAD_CALLS = [
    ("hidden-float16", (H.astype(np.float16), W, T), {}, TypeError, "got hidden float16 and linear_weight float64"),
    ("dtypes-differ", (H.astype(np.float32), W, T), {}, TypeError, "got hidden float32 and linear_weight float64"),
    ("hidden-int", (np.ones((4, 3), int), W, T), {}, TypeError, "must both be float32 or both float64"),
    ("hidden-complex", (H.astype(complex), W, T), {}, TypeError, "complex128"),
    ("hidden-scalar", (np.float64(1.0), W, T), {}, ValueError, "at least one dimension"),
    ("weight-1d", (H, W[0], T), {}, ValueError, "2-D; got shape (3,)"),
    ("features-differ", (H, W[:, :2], T), {}, ValueError, "n_features 2 must equal the last dimension of hidden, of shape (4, 3)"),
    ("zero-classes", (H, W[:0], T), {}, ValueError, "zero classes"),
    ("bias-shape", (H, W, T), {"linear_bias": B[:4]}, ValueError, "shape (5,); got shape (4,)"),
    ("bias-dtype", (H, W, T), {"linear_bias": B.astype(np.float32)}, TypeError, "linear_bias has dtype float32"),
    ("target-shape", (H, W, T[:3]), {}, ValueError, "target of class indices has shape (3,); hidden of shape (4, 3) needs shape (4,)"),
    ("probabilities-shape", (H, W, P[:, :4]), {}, ValueError, "must have shape (4, 5)"),
    ("target-bool", (H, W, T > 0), {}, TypeError, "got dtype bool"),
    ("target-too-big", (H, W, np.array([0, 1, 2, 5])), {}, ValueError, "target value 5 at position (3,) is out of range for 5 classes"),
    ("target-negative", (H, W, np.array([0, -1, 2, 3])), {}, ValueError, "target value -1 at position (1,)"),
    ("target-fraction", (H, W, np.array([0, 1.5, 2, 3])), {}, ValueError, "whole class numbers"),
    ("ignore-index-with-probabilities", (H, W, P), {"ignore_index": 1}, ValueError, "ignore_index applies"),
    ("class-weight-length", (H, W, T), {"weight": np.ones(4)}, ValueError, "shape (5,); got shape (4,)"),
    ("sample-weight-shape", (H, W, T), {"sample_weight": np.ones(3)}, ValueError, "hidden's shape without its last axis"),
    ("smoothing", (H, W, T), {"label_smoothing": 1.5}, ValueError, "label_smoothing"),
    ("z-loss", (H, W, T), {"z_loss": -1.0}, ValueError, "z_loss"),
    ("reduction", (H, W, T), {"reduction": "avg"}, ValueError, "'none', 'mean', 'sum'"),
    ("chunk-size-zero", (H, W, T), {"chunk_size": 0}, ValueError, "chunk_size"),
    ("chunk-size-float", (H, W, T), {"chunk_size": 2.0}, TypeError, "chunk_size"),
    ("chunk-size-bool", (H, W, T), {"chunk_size": True}, TypeError, "chunk_size"),
    ("budget-zero", (H, W, T), {"memory_budget": 0}, ValueError, "memory_budget"),
    ("budget-nan", (H, W, T), {"memory_budget": np.nan}, ValueError, "memory_budget"),
    ("budget-string", (H, W, T), {"memory_budget": "1GB"}, TypeError, "memory_budget"),
    ("chunk-size-and-budget", (H, W, T), {"chunk_size": 2, "memory_budget": 1e6}, ValueError, "not both"),
    ("n-threads", (H, W, T), {"n_threads": 0}, ValueError, "n_threads"),
]


@pytest.mark.parametrize("function", ["linear_cross_entropy", "linear_cross_entropy_with_grad"])
@pytest.mark.parametrize("args,kwargs,exception,fragment", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_before_any_work(monkeypatch, function, args, kwargs, exception, fragment):
    """The same exception and message from the fast function and the reference, before any
    chunk is computed, and the caller's arrays as they were."""
    def no_work(*_args, **_kwargs):
        raise AssertionError("a chunk was computed before the arguments were checked")

    monkeypatch.setattr(_linear, "_run", no_work)
    copies = [np.array(a, copy=True) for a in args] + [np.array(v, copy=True) for v in kwargs.values()]
    messages = []
    for implementation in (sml, ref):
        with pytest.raises(exception) as raised:
            getattr(implementation, function)(*args, **kwargs)
        messages.append(str(raised.value))
    assert fragment in messages[0], messages[0]
    assert messages[0] == messages[1]
    for before, after in zip(copies, [*args, *kwargs.values()]):
        np.testing.assert_array_equal(before, np.asarray(after))


def test_a_bad_class_in_the_last_chunk_raises_before_the_first(monkeypatch):
    computed = []
    original = np.matmul
    monkeypatch.setattr(_linear.np, "matmul", lambda *a, **k: computed.append(1) or original(*a, **k))
    target = np.zeros(1000, int)
    target[-1] = 7
    with pytest.raises(ValueError, match="target value 7 at position \\(999,\\)"):
        sml.linear_cross_entropy_with_grad(np.ones((1000, 3)), np.ones((5, 3)), target, chunk_size=1)
    assert not computed

"""Every public function, fast vs reference, on random inputs: every dtype, memory
layout, thread count, class axis and reduction, with every compiled kernel build.

One registry of calls (`CALLS`) drives the whole grid: each entry calls a function
of a module (`softmaxloss` or `softmaxloss.reference`, same signatures) on the
case's arrays, so a new function is one new entry.
"""

import numpy as np
import pytest
from _helpers import LAYOUTS, assert_close, random_probabilities, random_targets, with_layout

import softmaxloss as sml
from softmaxloss import reference as ref


CALLS = {
    "softmax": lambda m, c: m.softmax(c["x"], c["axis"], n_threads=c["threads"]),
    "log_softmax": lambda m, c: m.log_softmax(c["x"], c["axis"], n_threads=c["threads"]),
    "logsumexp": lambda m, c: m.logsumexp(c["x"], c["axis"], n_threads=c["threads"]),
    "logsumexp_keepdims": lambda m, c: m.logsumexp(
        c["x"], c["axis"], keepdims=True, n_threads=c["threads"]
    ),
    "cross_entropy_none": lambda m, c: m.cross_entropy(
        c["x"], c["target"], axis=c["axis"], reduction="none", n_threads=c["threads"]
    ),
    "cross_entropy_mean": lambda m, c: m.cross_entropy(
        c["x"], c["target"], axis=c["axis"], n_threads=c["threads"]
    ),
    "cross_entropy_sum": lambda m, c: m.cross_entropy(
        c["x"], c["target"], axis=c["axis"], reduction="sum", n_threads=c["threads"]
    ),
    "with_grad_none": lambda m, c: m.cross_entropy_with_grad(
        c["x"], c["target"], axis=c["axis"], reduction="none", n_threads=c["threads"]
    ),
    "with_grad_mean": lambda m, c: m.cross_entropy_with_grad(
        c["x"], c["target"], axis=c["axis"], n_threads=c["threads"]
    ),
    "with_grad_sum": lambda m, c: m.cross_entropy_with_grad(
        c["x"], c["target"], axis=c["axis"], reduction="sum", n_threads=c["threads"]
    ),
    "with_grad_probabilities": lambda m, c: m.cross_entropy_with_grad(
        c["x"], c["probabilities"], axis=c["axis"], n_threads=c["threads"]
    ),
    "with_grad_all_options": lambda m, c: m.cross_entropy_with_grad(
        c["x"], c["target"], axis=c["axis"], weight=c["weight"], sample_weight=c["sample_weight"],
        label_smoothing=0.1, z_loss=1e-3, n_threads=c["threads"],
    ),
    "gradient_hessian": lambda m, c: m.gradient_hessian(
        np.moveaxis(c["x"], c["axis"], -1).reshape(-1, c["x"].shape[c["axis"]]),
        np.asarray(c["target"]).reshape(-1) % c["x"].shape[c["axis"]],
        n_threads=c["threads"],
    ),
}

# (shape, axis, threads): N-D with the class axis anywhere (small: the kernel uses one
# thread whatever is asked, below 32768 logits per thread), and shapes large enough
# for 2 threads, with many classes (the row path) and with few (the block path).
SHAPES = [
    ((4, 5, 6), 0, 1),
    ((4, 5, 6), 1, 1),
    ((4, 5, 6), -1, 1),
    ((7,), 0, 1),
    ((300, 257), -1, 2),
    ((257, 300), 0, 2),
    ((9000, 11), -1, 2),
]


def make_case(rng, shape, axis, dtype, layout, threads):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    n_classes = shape[axis]
    target = random_targets(rng, shape, axis, n_ignored=2)
    return {
        "x": with_layout(x, layout),
        "axis": axis,
        "threads": threads,
        "target": target,
        "probabilities": with_layout(random_probabilities(rng, shape, axis).astype(dtype), layout),
        "weight": rng.uniform(0.5, 2.0, n_classes),
        "sample_weight": rng.uniform(0.0, 2.0, target.shape),
    }


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis,threads", SHAPES, ids=[f"{s}-axis{a}-threads{t}" for s, a, t in SHAPES])
def test_fast_matches_reference(kernel_build, rng, call, layout, dtype, shape, axis, threads):
    """Fast and reference agree in value, dtype and shape, and leave the inputs alone."""
    case = make_case(rng, shape, axis, dtype, layout, threads)
    before = {k: np.array(v, copy=True) for k, v in case.items() if isinstance(v, np.ndarray)}
    expected = CALLS[call](ref, case)
    actual = CALLS[call](sml, case)
    assert_close(actual, expected, dtype, f"{call} {shape} axis={axis} {layout}")
    for name, value in before.items():
        np.testing.assert_array_equal(case[name], value, err_msg=f"{call} modified {name}")


@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.int64, np.uint8, np.bool_])
@pytest.mark.parametrize("call", ["softmax", "log_softmax", "logsumexp", "with_grad_mean", "gradient_hessian"])
def test_converted_dtypes_match_reference(rng, dtype, call):
    """float16 is computed in float32 and returned as float16; ints and bools as float64."""
    case = make_case(rng, (6, 5), -1, np.float64, "C", 1)
    case["x"] = (case["x"] > 0) if dtype is np.bool_ else case["x"].clip(0, 100).astype(dtype)
    expected = CALLS[call](ref, case)
    actual = CALLS[call](sml, case)
    assert_close(actual, expected, np.float16 if dtype is np.float16 else np.float64, call)
    result = actual[0] if isinstance(actual, tuple) else actual
    assert result.dtype == (np.float16 if dtype is np.float16 else np.float64)


@pytest.mark.parametrize("layout", ["C", "strided"], ids=["tiles", "element-by-element"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_path_every_class_count_and_row_position(kernel_build, rng, dtype, layout):
    """The few-class block path moves a block between its rows and the transposed scratch
    in 8 x 8 (float) or 4 x 4 (double) tiles when the rows are contiguous (AVX2), the
    short last tile padded, else element by element: every class count (1..24, across
    the block threshold), 75 rows (a short last tile and block), an ignored row, with
    weights and smoothing, out of place and in place. Each row has the bits it has when
    computed alone: its place in its tile or block does not matter."""
    n_rows = 75
    for n_classes in range(1, 25):
        x = with_layout((rng.standard_normal((n_rows, n_classes)) * 4).astype(dtype), layout)
        target = rng.integers(0, n_classes, n_rows)
        target[5] = -100
        options = dict(reduction="none", weight=rng.uniform(0.5, 2, n_classes), label_smoothing=0.1)
        loss, grad = sml.cross_entropy_with_grad(x, target, **options)
        what = f"{n_classes} classes"
        assert_close((loss, grad), ref.cross_entropy_with_grad(x, target, **options), dtype, what)
        in_place = x.copy()
        sml.cross_entropy_with_grad(in_place, target, out=in_place, **options)
        assert in_place.tobytes() == grad.tobytes(), what
        for row in (0, 5, 7, 8, 63, 64, 74):
            alone = sml.cross_entropy_with_grad(x[row : row + 1], target[row : row + 1], **options)
            assert alone[0].tobytes() == loss[row : row + 1].tobytes(), f"{what}, row {row}"
            assert alone[1].tobytes() == grad[row : row + 1].tobytes(), f"{what}, row {row}"


@pytest.mark.parametrize("layout", ["C", "strided"], ids=["tiles", "element-by-element"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradient_hessian_blocks_every_class_count_and_row_position(kernel_build, rng, dtype, layout):
    """gradient_hessian's few-class block path (as cross-entropy's above): every class count
    1..24 (across the block threshold), 75 rows, sample weights, a row with +inf and one all
    -inf, out of place and in place (grad_out is the logits). Each row has the bits it has
    alone, and the results match the reference."""
    n_rows = 75
    for n_classes in range(1, 25):
        x = (rng.standard_normal((n_rows, n_classes)) * 4).astype(dtype)
        x[9, 0], x[10] = np.inf, -np.inf
        x = with_layout(x, layout)
        labels = rng.integers(0, n_classes, n_rows)
        weights = rng.uniform(0.5, 2, n_rows)
        grad, hess = sml.gradient_hessian(x, labels, sample_weight=weights)
        what = f"{n_classes} classes"
        finite = np.arange(n_rows) < 9
        expected = ref.gradient_hessian(x[finite], labels[finite], sample_weight=weights[finite])
        assert_close((grad[finite], hess[finite]), expected, dtype, what)
        assert np.isnan(grad[9:11]).all() and np.isnan(hess[9:11]).all(), what
        in_place = x.copy()
        in_place_hess = np.empty_like(hess)
        sml.gradient_hessian(in_place, labels, sample_weight=weights, out=(in_place, in_place_hess))
        assert in_place.tobytes() == grad.tobytes() and in_place_hess.tobytes() == hess.tobytes(), what
        for row in (0, 7, 8, 9, 63, 64, 74):
            alone = sml.gradient_hessian(x[row : row + 1], labels[row : row + 1],
                                         sample_weight=weights[row : row + 1])
            if row == 9:  # NaN (a NaN's sign is not a result): NaN in the same places
                np.testing.assert_array_equal(alone[0], grad[9:10], err_msg=what)
                np.testing.assert_array_equal(alone[1], hess[9:10], err_msg=what)
                continue
            assert alone[0].tobytes() == grad[row : row + 1].tobytes(), f"{what}, row {row}"
            assert alone[1].tobytes() == hess[row : row + 1].tobytes(), f"{what}, row {row}"


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("layout", ["C", "strided"], ids=["tiles", "element-by-element"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_blocks_every_class_count_and_row_position(kernel_build, rng, dtype, layout, op):
    """softmax's, log_softmax's and logsumexp's few-class block path (block_softmax,
    block_logsumexp): every class count 1..24, 75 rows with one +inf, one all -inf and one
    NaN, out of place and in place; each row has the bits it has alone; matches the
    reference."""
    n_rows = 75
    call = getattr(sml, op)
    for n_classes in range(1, 25):
        x = (rng.standard_normal((n_rows, n_classes)) * 4).astype(dtype)
        x[9, n_classes // 2], x[10], x[11, 0] = np.inf, -np.inf, np.nan
        x = with_layout(x, layout)
        p = call(x)
        what = f"{n_classes} classes"
        assert_close(p, getattr(ref, op)(x), dtype, what)
        if op != "logsumexp":
            in_place = x.copy()
            call(in_place, out=in_place)
            assert in_place.tobytes() == p.tobytes(), what
        for row in (0, 7, 8, 63, 64, 74):
            assert call(x[row : row + 1]).tobytes() == p[row : row + 1].tobytes(), f"{what}, row {row}"


def test_results_are_bitwise_identical_for_every_thread_count(kernel_build, rng):
    """No reduction crosses rows, so the thread count cannot change a single bit."""
    x = rng.standard_normal((700, 300)).astype(np.float32) * 5
    target = random_targets(rng, x.shape, -1, n_ignored=10)
    options = dict(weight=rng.uniform(0.1, 2, 300), label_smoothing=0.2, z_loss=1e-3)
    results = [sml.cross_entropy_with_grad(x, target, n_threads=n, **options) for n in (1, 2, 3, 4)]
    for loss, grad in results[1:]:
        assert loss.tobytes() == results[0][0].tobytes()
        assert grad.tobytes() == results[0][1].tobytes()
    softmaxes = [sml.softmax(x, n_threads=n) for n in (1, 2, 3)]
    assert all(s.tobytes() == softmaxes[0].tobytes() for s in softmaxes)


# ---- the common-case shortcut ----------------------------------------------------------


def _general_path_refused(*args, **kwargs):
    raise AssertionError("the common case took the general path")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n_rows,n_classes", [(1, 1), (70, 10), (5, 1000)])
def test_common_case_shortcut_gives_the_general_paths_bits(monkeypatch, dtype, reduction, n_rows, n_classes):
    """(N, C) C-contiguous logits, int64 labels, no options, no `out` or a plain one (or
    the logits, in place): answered without the general validation (check_cross_entropy_call is
    never called), with the very bits of the general path (taken here for an axis given
    as a NumPy integer)."""
    rng = np.random.default_rng(n_rows * n_classes)
    x = (rng.standard_normal((n_rows, n_classes)) * 5).astype(dtype)
    t = rng.integers(0, n_classes, n_rows)
    general_loss, general_grad = sml.cross_entropy_with_grad(x, t, reduction=reduction, axis=np.int64(1))
    general_loss_only = sml.cross_entropy(x, t, reduction=reduction, axis=np.int64(1))
    monkeypatch.setattr("softmaxloss._facade.check_cross_entropy_call", _general_path_refused)
    out = np.empty_like(x)
    in_place = x.copy()
    results = [
        sml.cross_entropy_with_grad(x, t, reduction=reduction),
        sml.cross_entropy_with_grad(x, t, reduction=reduction, out=out),
        sml.cross_entropy_with_grad(in_place, t, reduction=reduction, out=in_place, n_threads=1),
    ]
    assert results[1][1] is out and results[2][1] is in_place
    for loss, grad in results:
        assert type(loss) is np.dtype(dtype).type and loss.tobytes() == general_loss.tobytes()
        assert grad.dtype == dtype and grad.tobytes() == general_grad.tobytes()
    loss_only = sml.cross_entropy(x, t, reduction=reduction)
    assert type(loss_only) is np.dtype(dtype).type and loss_only.tobytes() == general_loss_only.tobytes()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_common_case_shortcut_rounds_a_float32_loss_beyond_its_range_as_the_general_path(monkeypatch, reduction):
    """A float32 loss whose float64 value is beyond float32's range: +inf, quietly (no
    overflow warning: warnings are errors here), as the general path rounds it."""
    x = np.array([[3e38, -3e38], [3e38, -3e38]], np.float32)
    t = np.array([1, 1])
    general = sml.cross_entropy(x, t, reduction=reduction, axis=np.int64(1))
    monkeypatch.setattr("softmaxloss._facade.check_cross_entropy_call", _general_path_refused)
    loss = sml.cross_entropy(x, t, reduction=reduction)
    assert type(loss) is np.float32 and loss == np.inf and loss.tobytes() == general.tobytes()


def test_common_case_shortcut_leaves_bad_labels_to_the_general_paths_message():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"target value 4 at position \(1,\) is out of range for 4 classes"):
        sml.cross_entropy_with_grad(x, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"target value -1 at position \(2,\)"):
        sml.cross_entropy(x, np.array([0, 1, -1]))
    x = np.zeros((3, 4))
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match=r"target value 9 at position \(0,\)"):
        sml.cross_entropy_with_grad(x, np.array([9, 0, 1]), out=out)
    np.testing.assert_array_equal(out, 7.0)

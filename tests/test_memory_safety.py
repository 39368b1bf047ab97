"""Memory safety: bad input is refused before any kernel runs, and the kernels themselves never
address memory with a bad label, whatever they are given.

- Every input a user can get wrong (`BAD_INPUTS`: out-of-range labels of every integer dtype
  and size, float labels that are not class numbers, wrong `out`, mismatched weights, bad
  options) raises the same exception with the same message from the fast function and the
  reference, before any kernel writes anything (a spy wraps the kernels: the one call
  allowed is cross_entropy_index's class-range check, which returns None having written
  nothing), with every array the caller passed left as it was.
- The kernel functions, called directly with bad labels, address no memory with them:
  cross_entropy_index returns None having written nothing, gradient_hessian writes NaN for
  those rows and computes the others as usual; nothing outside their arrays changes (guard
  values around every array; under AddressSanitizer, `.ci/sanitize`, any stray read or
  write aborts the run).

`python tests/test_memory_safety.py` prints `BAD_INPUTS` as the README's Markdown table, from
real calls.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.exceptions import AxisError

import softmaxloss as sml
from softmaxloss import _dispatch
from softmaxloss import reference as ref

INT64 = np.iinfo(np.int64)
UINT64_MAX = np.iinfo(np.uint64).max
X = np.random.default_rng(0).standard_normal((4, 3))  # 4 rows, 3 classes
T = np.array([0, 2, 1, 0])
P = np.full((4, 3), 1 / 3)


def _labels(bad, dtype=np.int64, position=2):
    labels = np.array([0, 1, 2, 1]).astype(dtype)
    labels[position] = bad
    return labels


def _unwritable_layout_out():
    """A (2, 3, 4, 5) out whose three row axes all step by 2: no two of them merge."""
    return np.zeros((4, 6, 8, 5))[::2, ::2, ::2]


def _unaligned(shape):
    """A C-ordered float64 array at an odd address."""
    size = int(np.prod(shape)) * 8
    return np.zeros(size + 1, np.uint8)[1:].view(np.float64).reshape(shape)


_SHARED = np.zeros((5, 3))  # the logits and an `out` that overlaps them by 3 rows


# (what the user got wrong, function, args, kwargs, exception). The message is whatever the
# call says: the test checks that fast and reference say the same, and prints the table.
BAD_INPUTS = [
    ("class index < 0", "cross_entropy", (X, _labels(-1)), {}, ValueError),
    ("class index -101 (next to ignore_index)", "cross_entropy", (X, _labels(-101)), {}, ValueError),
    ("class index == C", "cross_entropy", (X, _labels(3)), {}, ValueError),
    ("class index 2**40", "cross_entropy", (X, _labels(2**40)), {}, ValueError),
    ("class index int64 min", "cross_entropy", (X, _labels(INT64.min)), {}, ValueError),
    ("class index int64 max", "cross_entropy_with_grad", (X, _labels(INT64.max)), {}, ValueError),
    ("class index uint64 max", "cross_entropy_with_grad", (X, _labels(UINT64_MAX, np.uint64)), {}, ValueError),
    ("class index 255 as uint8", "cross_entropy_with_grad", (X, _labels(255, np.uint8)), {}, ValueError),
    ("class index -128 as int8", "cross_entropy_with_grad", (X, _labels(-128, np.int8)), {}, ValueError),
    ("class index >= C, N-D target", "cross_entropy", (X.reshape(2, 2, 3), np.array([[0, 1], [2, 5]])), {}, ValueError),
    ("class index >= C along axis=0", "cross_entropy", (X.T, _labels(3)), {"axis": 0}, ValueError),
    ("ignore_index itself out of range is fine, another value is not", "cross_entropy",
     (X, _labels(-7)), {"ignore_index": -8}, ValueError),
    ("bool target", "cross_entropy", (X, np.array([True, False, True, True])), {}, TypeError),
    ("object target", "cross_entropy", (X, T.astype(object)), {}, TypeError),
    ("complex probabilities", "cross_entropy", (X, P.astype(complex)), {}, TypeError),
    ("target shape (rows)", "cross_entropy", (X, np.zeros(5, int)), {}, ValueError),
    ("probabilities shape", "cross_entropy", (X, np.zeros((4, 4))), {}, ValueError),
    ("ignore_index with probabilities", "cross_entropy", (X, P), {"ignore_index": 0}, ValueError),
    ("ignore_index not an integer", "cross_entropy", (X, T), {"ignore_index": 1.5}, TypeError),
    ("weight length C - 1", "cross_entropy", (X, T), {"weight": np.ones(2)}, ValueError),
    ("weight length C + 1", "cross_entropy_with_grad", (X, T), {"weight": np.ones(4)}, ValueError),
    ("weight 2-D", "cross_entropy", (X, T), {"weight": np.ones((1, 3))}, ValueError),
    ("weight complex", "cross_entropy", (X, T), {"weight": np.ones(3, complex)}, TypeError),
    ("where not bool", "cross_entropy", (X, T), {"where": np.ones(X.shape, np.int8)}, TypeError),
    ("where of another shape", "cross_entropy_with_grad", (X, T), {"where": np.ones((X.shape[0], 2), bool)}, ValueError),
    ("where, a bad label on a row that keeps no class", "cross_entropy_with_grad", (X, _labels(3)),
     {"where": np.zeros(X.shape, bool)}, ValueError),
    ("sample_weight shape", "cross_entropy_with_grad", (X, T), {"sample_weight": np.ones(3)}, ValueError),
    ("sample_weight of the logits' shape", "cross_entropy", (X, T), {"sample_weight": np.ones((4, 3))}, ValueError),
    ("label_smoothing > 1", "cross_entropy", (X, T), {"label_smoothing": 1.5}, ValueError),
    ("label_smoothing NaN", "cross_entropy", (X, T), {"label_smoothing": np.nan}, ValueError),
    ("label_smoothing a list", "cross_entropy", (X, T), {"label_smoothing": [0.1]}, TypeError),
    ("z_loss < 0", "cross_entropy", (X, T), {"z_loss": -1e-4}, ValueError),
    ("z_loss None", "cross_entropy", (X, T), {"z_loss": None}, TypeError),
    ("softcap 0", "cross_entropy_with_grad", (X, T), {"softcap": 0.0}, ValueError),
    ("softcap a string", "log_softmax", (X,), {"softcap": "30"}, TypeError),
    ("unknown reduction", "cross_entropy", (X, T), {"reduction": "avg"}, ValueError),
    ("axis out of range", "cross_entropy", (X, T), {"axis": 2}, AxisError),
    ("axis not an integer", "softmax", (X,), {"axis": 1.0}, TypeError),
    ("zero classes", "cross_entropy", (np.zeros((4, 0)), T), {}, ValueError),
    ("scalar logits", "cross_entropy", (np.float64(1.0), 0), {}, ValueError),
    ("complex logits", "softmax", (X.astype(complex),), {}, TypeError),
    ("object logits", "log_softmax", (X.astype(object),), {}, TypeError),
    ("string logits", "logsumexp", (np.array(["1", "2"]),), {}, TypeError),
    ("float128 logits", "softmax", (X.astype(np.longdouble),), {}, TypeError),
    ("n_threads 0", "softmax", (X,), {"n_threads": 0}, ValueError),
    ("n_threads a float", "cross_entropy", (X, T), {"n_threads": 2.0}, TypeError),
    ("n_threads True", "logsumexp", (X,), {"n_threads": True}, TypeError),
    ("out of the wrong shape", "cross_entropy_with_grad", (X, T), {"out": np.empty((3, 4))}, ValueError),
    ("out of an integer dtype", "cross_entropy_with_grad", (X, T), {"out": np.empty((4, 3), np.int64)}, TypeError),
    ("out of non-native byte order", "softmax", (X,), {"out": np.empty((4, 3), ">f8")}, TypeError),
    ("out a list", "softmax", (X,), {"out": [[0.0] * 3] * 4}, TypeError),
    ("out read-only", "log_softmax", (X,), {"out": np.broadcast_to(np.zeros(3), (4, 3))}, ValueError),
    ("out overlapping the logits", "softmax", (_SHARED[:4],), {"out": _SHARED[1:]}, ValueError),
    ("out sharing memory with the target", "cross_entropy_with_grad", (X, P), {"out": P}, ValueError),
    ("out with rows no stride can address", "cross_entropy_with_grad",
     (np.zeros((2, 3, 4, 5)), np.zeros((2, 3, 4), int)), {"out": _unwritable_layout_out()}, ValueError),
    ("out unaligned", "softmax", (X,), {"out": _unaligned((4, 3))}, ValueError),
    ("gradient_hessian: label < 0", "gradient_hessian", (X, _labels(-1)), {}, ValueError),
    ("gradient_hessian: label == C", "gradient_hessian", (X, _labels(3)), {}, ValueError),
    ("gradient_hessian: label int64 min", "gradient_hessian", (X, _labels(INT64.min)), {}, ValueError),
    ("gradient_hessian: label uint64 max", "gradient_hessian", (X, _labels(UINT64_MAX, np.uint64)), {}, ValueError),
    ("gradient_hessian: float label 1e300", "gradient_hessian", (X, _labels(1e300, float)), {}, ValueError),
    ("gradient_hessian: float label 2.5", "gradient_hessian", (X, _labels(2.5, float)), {}, ValueError),
    ("gradient_hessian: float label NaN", "gradient_hessian", (X, _labels(np.nan, float)), {}, ValueError),
    ("gradient_hessian: float label inf", "gradient_hessian", (X, _labels(np.inf, float)), {}, ValueError),
    ("gradient_hessian: float label 3.0 (== C)", "gradient_hessian", (X, _labels(3.0, float)), {}, ValueError),
    ("gradient_hessian: labels shape", "gradient_hessian", (X, np.zeros(3, int)), {}, ValueError),
    ("gradient_hessian: 3-D logits", "gradient_hessian", (X.reshape(2, 2, 3), np.zeros(2, int)), {}, ValueError),
    ("gradient_hessian: out not a pair", "gradient_hessian", (X, T), {"out": np.empty((4, 3))}, TypeError),
    ("gradient_hessian: hess out is grad out", "gradient_hessian", (X, T),
     {"out": (np.empty((4, 3)),) * 2}, ValueError),
    ("gradient_hessian: sample_weight shape", "gradient_hessian", (X, T), {"sample_weight": np.ones(5)}, ValueError),
]


def _same_bits(a, b):
    return a.shape == b.shape and np.array(a, copy=True).tobytes() == b.tobytes()


ROW_LOSS = 8  # cross_entropy_index's argument that its range check uses as scratch


class KernelSpy:
    """Wraps the kernel module and records every call that wrote something: any call but
    cross_entropy_index's class-range refusal (it returns None when a class is out of range,
    having written nothing but its own row_loss scratch, as its docstring says) and
    cross_entropy_plain's (a row number, or None for an `out` that overlaps the inputs,
    having written nothing), or one that changed an array it was given."""

    def __init__(self, kernels):
        self._kernels = kernels
        self.writes = []

    def __getattr__(self, name):
        function = getattr(self._kernels, name)

        def call(*args):
            before = [np.array(a, copy=True) if isinstance(a, np.ndarray) else None for a in args]
            result = function(*args)
            changed = [i for i, (a, b) in enumerate(zip(args, before)) if b is not None and not _same_bits(a, b)]
            if name == "cross_entropy_index" and result is None:
                changed = [i for i in changed if i != ROW_LOSS]  # the facade's own scratch
            refused = (name == "cross_entropy_index" and result is None) or (
                name == "cross_entropy_plain" and not isinstance(result, tuple))
            if not refused or changed:
                self.writes.append((name, "returned" if result is not None else "", changed))
            return result

        return call


def _snapshot(value):
    if isinstance(value, tuple):
        return tuple(_snapshot(v) for v in value)
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, np.array(value, copy=True).tobytes())
    return repr(value)


def _raise(module, function, args, kwargs):
    try:
        getattr(module, function)(*args, **kwargs)
    except Exception as error:  # the result of the call
        return error
    return None


@pytest.mark.parametrize(
    "function,args,kwargs,exception",
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_refused_before_any_kernel_writes(monkeypatch, function, args, kwargs, exception):
    before = [_snapshot(a) for a in args] + [_snapshot(v) for v in kwargs.values()]
    spy = KernelSpy(_dispatch.kernels)
    monkeypatch.setattr(_dispatch, "kernels", spy)
    fast = _raise(sml, function, args, kwargs)
    monkeypatch.undo()
    assert spy.writes == [], f"a kernel wrote before the input was refused: {spy.writes}"
    assert type(fast) is exception, repr(fast)
    reference = _raise(ref, function, args, kwargs)
    assert type(reference) is exception and str(reference) == str(fast)
    after = [_snapshot(a) for a in args] + [_snapshot(v) for v in kwargs.values()]
    assert after == before, "an argument was modified"


def test_the_unwritable_out_is_refused_untouched():
    base = np.full((4, 6, 8, 5), 7.0)
    out = base[::2, ::2, ::2]
    with pytest.raises(ValueError, match="memory layout"):
        sml.cross_entropy_with_grad(np.zeros((2, 3, 4, 5)), np.zeros((2, 3, 4), int), out=out)
    np.testing.assert_array_equal(base, 7.0)


def test_huge_n_threads_is_accepted_as_by_the_reference_or_refused_before_work():
    x = np.arange(12).reshape(4, 3)
    out = np.full((4, 3), 7.0)
    reference = _raise(ref, "cross_entropy_with_grad", (x, T), {"n_threads": 2**31})
    fast = _raise(sml, "cross_entropy_with_grad", (x, T), {"out": out, "n_threads": 2**31})
    assert type(fast) is type(reference)
    if fast is not None:
        np.testing.assert_array_equal(out, 7.0)


# ---- the kernels themselves ------------------------------------------------------------------

GUARD = 64  # items of guard values before and after every array handed to a kernel


def guarded(array, fill):
    """(a copy of `array` inside a larger buffer of `fill` values, that buffer)."""
    array = np.asarray(array)
    buffer = np.full(array.size + 2 * GUARD, fill, array.dtype)
    inner = buffer[GUARD : GUARD + array.size].reshape(array.shape)
    inner[...] = array
    return inner, buffer


def assert_guards_intact(buffer, fill, what):
    head, tail = buffer[:GUARD], buffer[-GUARD:]
    ok = lambda part: np.all(part == fill) if not np.isnan(fill) else np.all(np.isnan(part))  # noqa: E731
    assert ok(head) and ok(tail), f"the kernel wrote outside {what}"


def bad_labels(n_classes):
    """Class indices out of range for n_classes (none of them -100, the ignore_index)."""
    return [-1, n_classes, n_classes + 1, 2**31, -(2**31), 2**40, INT64.min, INT64.max, -101]


BAD_LABELS = bad_labels(3)


@pytest.mark.parametrize("class_stride", [1, 2], ids=["contiguous", "strided"])
@pytest.mark.parametrize("with_grad", [True, False], ids=["loss-and-grad", "loss-only"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", [3, 8, 13, 40], ids=["block-path-3", "block-path-8", "block-path-13", "row-path"])
def test_kernel_cross_entropy_index_refuses_bad_labels_without_writing(
    kernel_build, n_classes, dtype, with_grad, class_stride
):
    """Called directly, each bad label alone (first row, last row) among good and ignored
    ones: the kernel returns None and has written nothing; every guard value around every
    array is untouched. With the bad label replaced by a good one the same call computes
    the reference's losses."""
    kernels = _dispatch.kernels
    n_rows = 6
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((n_rows, n_classes)).astype(dtype)
    weights = np.linspace(0.5, 1.5, n_classes)
    for bad in bad_labels(n_classes):
        for position in (0, n_rows - 1):
            labels = np.array([0, -100, n_classes - 1, 1, 0, 2 % n_classes], np.int64)
            labels[position] = bad
            x_flat, x_buffer = guarded(np.repeat(logits, class_stride, axis=1), np.nan)
            x_rows = x_flat.reshape(1, n_rows, n_classes * class_stride)[:, :, ::class_stride]
            target, t_buffer = guarded(labels.reshape(1, n_rows), -7)
            weight, w_buffer = guarded(weights, np.nan)
            sample_weight, s_buffer = guarded(np.ones((1, n_rows)), np.nan)
            row_loss, l_buffer = guarded(np.full((1, n_rows), -3.0), -3.0)
            grad = grad_buffer = None
            if with_grad:
                grad_flat, grad_buffer = guarded(np.full((n_rows, n_classes * class_stride), -5, dtype), -5)
                grad = grad_flat.reshape(1, n_rows, n_classes * class_stride)[:, :, ::class_stride]
            args = (x_rows, target, weight, sample_weight, -100, 0.1, 1e-3, True, row_loss, grad, 2)

            assert kernels.cross_entropy_index(*args) is None, f"label {bad} at row {position}"

            for buffer, fill, what in [(x_buffer, np.nan, "the logits"), (t_buffer, -7, "the target"),
                                       (w_buffer, np.nan, "the weights"), (s_buffer, np.nan, "the sample weights"),
                                       (l_buffer, -3.0, "the row losses"), (grad_buffer, -5, "the gradient")]:
                if buffer is not None:
                    assert_guards_intact(buffer, fill, what)
            if with_grad:
                assert np.all(grad_flat == -5), "gradient written before refusing"

    target[0, position] = 0  # the last call's bad label made good: it computes
    total, normaliser = kernels.cross_entropy_index(*args)
    kept = labels != -100
    labels[position] = 0
    expected = ref.cross_entropy(logits, labels, weight=weights, label_smoothing=0.1, z_loss=1e-3, reduction="none")
    np.testing.assert_allclose(row_loss[0], expected, rtol=1e-5)
    np.testing.assert_allclose(total, expected.sum(), rtol=1e-5)
    assert normaliser == pytest.approx(weights[labels[kept]].sum())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_gradient_hessian_makes_bad_label_rows_nan_and_stays_in_bounds(kernel_build, dtype):
    kernels = _dispatch.kernels
    n_rows, n_classes = len(BAD_LABELS) + 2, 3
    logits = np.random.default_rng(2).standard_normal((n_rows, n_classes)).astype(dtype)
    labels = np.array([0, 2] + BAD_LABELS, np.int64)
    x, x_buffer = guarded(logits.reshape(1, n_rows, n_classes), np.nan)
    y, y_buffer = guarded(labels.reshape(1, n_rows), -7)
    grad, g_buffer = guarded(np.zeros((1, n_rows, n_classes), dtype), -5)
    hess, h_buffer = guarded(np.zeros((1, n_rows, n_classes), dtype), -5)

    kernels.gradient_hessian(x, y, None, grad, hess, 2)

    for buffer, fill, what in [(x_buffer, np.nan, "the logits"), (y_buffer, -7, "the labels"),
                               (g_buffer, -5, "the gradient"), (h_buffer, -5, "the hessian")]:
        assert_guards_intact(buffer, fill, what)
    assert np.all(np.isnan(grad[0, 2:])) and np.all(np.isnan(hess[0, 2:]))
    expected_grad, expected_hess = ref.gradient_hessian(logits[:2], labels[:2])
    np.testing.assert_allclose(grad[0, :2], expected_grad, rtol=1e-6)
    np.testing.assert_allclose(hess[0, :2], expected_hess, rtol=1e-6)


@pytest.mark.parametrize("n_classes", [3, 8, 13, 40], ids=["block-path-3", "block-path-8", "block-path-13", "row-path"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_bad_labels_at_both_ends_of_exact_allocations(kernel_build, dtype, n_classes):
    """Label -1 in the first row and C in the last, arrays of exactly their size (over 1 KiB,
    so NumPy allocates them fresh): addressing a logit or gradient entry with either label
    would leave the allocation, which AddressSanitizer (`.ci/sanitize`) reports. Short rows
    and long rows take different kernel paths. cross_entropy_index refuses (None, nothing
    written); gradient_hessian makes those rows NaN."""
    kernels = _dispatch.kernels
    n_rows = 100
    x = np.random.default_rng(4).standard_normal((1, n_rows, n_classes)).astype(dtype)
    labels = np.zeros((1, n_rows), np.int64)
    labels[0, 0], labels[0, -1] = -1, n_classes
    row_loss = np.zeros((1, n_rows))
    grad = np.zeros_like(x)
    assert kernels.cross_entropy_index(x, labels, np.ones(n_classes), None, -100, 0.1, 0.0, True, row_loss, grad, 1) is None
    assert kernels.cross_entropy_index(x, labels, None, None, -100, 0.0, 0.0, False, row_loss, None, 1) is None
    assert not row_loss.any() and not grad.any()
    hess = np.empty_like(x)
    kernels.gradient_hessian(x, labels, None, grad, hess, 1)
    assert np.isnan(grad[0, [0, -1]]).all() and np.isnan(hess[0, [0, -1]]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_softmax_and_logsumexp_stay_in_bounds(kernel_build, dtype):
    kernels = _dispatch.kernels
    logits = np.random.default_rng(3).standard_normal((5, 7)).astype(dtype)
    x, x_buffer = guarded(logits.reshape(1, 5, 7), np.nan)
    out, o_buffer = guarded(np.zeros((1, 5, 7), dtype), -5)
    kernels.softmax(x, out, True, 3)
    lse, l_buffer = guarded(np.zeros((1, 5)), -5.0)
    kernels.logsumexp(x, lse, 3)
    for buffer, fill, what in [(x_buffer, np.nan, "x"), (o_buffer, -5, "out"), (l_buffer, -5.0, "lse")]:
        assert_guards_intact(buffer, fill, what)
    np.testing.assert_allclose(out[0], ref.log_softmax(logits), rtol=1e-6)
    np.testing.assert_allclose(lse[0], ref.logsumexp(logits), rtol=1e-6)


# The kernels trust the facade for the shapes of everything but the logits. A wrong shape that
# is too small would make them read or write out of bounds (not tried here: it would abort the
# AddressSanitizer run); one that is too large is accepted silently, which shows the same
# missing check without touching foreign memory.
_SHAPE_MISMATCHES = {
    "target-too-long": lambda k, x, t, rl, g: k.cross_entropy_index(
        x, np.zeros((1, 5), np.int64), None, None, -100, 0.0, 0.0, False, rl, g, 1),
    "weight-too-long": lambda k, x, t, rl, g: k.cross_entropy_index(
        x, t, np.ones(4), None, -100, 0.0, 0.0, False, rl, g, 1),
    "sample-weight-too-long": lambda k, x, t, rl, g: k.cross_entropy_index(
        x, t, None, np.ones((1, 5)), -100, 0.0, 0.0, False, rl, g, 1),
    "row-loss-too-long": lambda k, x, t, rl, g: k.cross_entropy_index(
        x, t, None, None, -100, 0.0, 0.0, False, np.zeros((1, 5)), g, 1),
    "grad-too-big": lambda k, x, t, rl, g: k.cross_entropy_index(
        x, t, None, None, -100, 0.0, 0.0, False, rl, np.zeros((1, 5, 3)), 1),
    "softmax-out-too-big": lambda k, x, t, rl, g: k.softmax(x, np.zeros((1, 4, 4)), False, 1),
    "logsumexp-out-too-big": lambda k, x, t, rl, g: k.logsumexp(x, np.zeros((2, 4)), 1),
}


@pytest.mark.parametrize("mismatch", sorted(_SHAPE_MISMATCHES))
def test_kernel_functions_refuse_arrays_of_the_wrong_shape(mismatch):
    x = np.zeros((1, 4, 3))
    with pytest.raises(ValueError):
        _SHAPE_MISMATCHES[mismatch](
            _dispatch.kernels, x, np.zeros((1, 4), np.int64), np.zeros((1, 4)), np.zeros((1, 4, 3)), 
        )


# ---- the README's table ----------------------------------------------------------------------


def bad_input_table():
    """BAD_INPUTS as a Markdown table, each message from a real call of the fast function."""
    lines = ["| input | function | exception | message |", "|---|---|---|---|"]
    for what, function, args, kwargs, _ in BAD_INPUTS:
        error = _raise(sml, function, args, kwargs)
        message = str(error).replace("|", "\\|")
        lines.append(f"| {what} | `{function}` | `{type(error).__name__}` | {message} |")
    return "\n".join(lines)


README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_bad_input_table_is_current():
    """README.md's table is this file's BAD_INPUTS with today's messages (regenerate it
    with `python tests/test_memory_safety.py` when a case or a message changes)."""
    if not README.is_file():
        pytest.skip("README.md is not beside tests/")
    assert bad_input_table() in README.read_text(encoding="utf-8")


if __name__ == "__main__":
    print(bad_input_table())
    sys.exit(0)

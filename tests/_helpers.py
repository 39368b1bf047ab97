"""Array layouts, tolerances and comparisons shared by the test modules."""

from __future__ import annotations

import math

import numpy as np

from softmaxloss import testing

# The memory layouts every kernel-backed function must accept with its values unchanged:
# softmaxloss.testing's, whose `with_layout` makes them ("unaligned" and "broadcast" are
# left to the hostile-input tests, which run them for every function).
LAYOUTS = tuple(layout for layout in testing.LAYOUTS if layout not in ("unaligned", "broadcast"))
with_layout = testing.with_layout

# (rtol, atol factor): atol is the factor times max|expected| over finite entries.
TOLERANCES = testing.TOLERANCES


def tolerance(dtype) -> tuple[float, float]:
    return TOLERANCES[np.dtype(dtype)]


def assert_close(actual, expected, dtype=None, what: str = "", scale=0.0) -> None:
    """Same kind of result (array or NumPy scalar), same dtype and shape, and values
    within the dtype's tolerance; NaN where NaN, infinities equal.

    atol is relative to the largest finite expected value, or to `scale` when larger:
    the size of the terms a result is a sum of, where they may cancel to ~0 (two
    correct implementations then agree only to rounding relative to the terms).
    `scale` may be a tuple, one per element of a tuple result."""
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), what
        scales = scale if isinstance(scale, tuple) else (scale,) * len(expected)
        for i, (a, e, s) in enumerate(zip(actual, expected, scales)):
            assert_close(a, e, dtype, f"{what}[{i}]", s)
        return
    assert type(actual) is type(expected), f"{what}: {type(actual)} != {type(expected)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert np.shape(actual) == np.shape(expected), f"{what}: shape {np.shape(actual)} != {np.shape(expected)}"
    rtol, atol_factor = tolerance(dtype if dtype is not None else expected.dtype)
    expected64 = np.asarray(expected, np.float64)
    finite = np.abs(expected64[np.isfinite(expected64)])
    # Below the smallest normal number only underflow is measured, not accuracy.
    largest = max(finite.max() if finite.size else 0.0, scale)
    largest = min(largest, float(np.finfo(np.float64).max))  # terms that overflow: any finite error
    atol = max(atol_factor * largest, float(np.finfo(expected.dtype).tiny))
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), expected64, rtol=rtol, atol=atol, equal_nan=True, err_msg=what
    )


def random_targets(rng, logits_shape, axis, n_ignored=0, ignore_index=-100):
    """Class indices for logits of `logits_shape`, `n_ignored` of them ignore_index."""
    axis = axis % len(logits_shape)
    n_classes = logits_shape[axis]
    row_shape = logits_shape[:axis] + logits_shape[axis + 1 :]
    target = rng.integers(0, n_classes, size=row_shape)
    if n_ignored and target.size:
        flat = target.reshape(-1)
        flat[rng.choice(flat.size, size=min(n_ignored, flat.size), replace=False)] = ignore_index
    return target


def random_probabilities(rng, shape, axis):
    """Rows of probabilities (summing to 1 along `axis`), some near one-hot."""
    axis = axis % len(shape)
    moved = rng.dirichlet(np.full(shape[axis], 0.5), size=shape[:axis] + shape[axis + 1 :])
    return np.moveaxis(moved, -1, axis)


# ---- sharded vs unsplit: "2 ulp-scale" (tests/test_class_blocks.py's docstring says why) -----

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)


def ulp_tolerance(dtype, n_classes):
    """2 ulp-scale in units of the result dtype's epsilon (see the module's docstring)."""
    dtype = np.dtype(dtype)
    ulps = 2.0 + (math.sqrt(n_classes) / 2 if dtype == F64 else 0.0)
    return ulps * float(np.finfo(dtype).eps)


def assert_split_matches(actual, expected, dtype, n_classes, what="", logits=None):
    """Loss and gradient within 2 ulp-scale of the unsplit ones, NaN where NaN, infinities
    equal; with `logits` (merge mode) also the gap allowance of the module's docstring."""
    loss, grad = actual
    ref_loss, ref_grad = expected
    assert np.asarray(loss).dtype == np.asarray(ref_loss).dtype and grad.dtype == ref_grad.dtype, what
    tol = ulp_tolerance(ref_grad.dtype, n_classes)
    for name, a, e, scale in [
        ("loss", np.asarray(loss, np.float64), np.asarray(ref_loss, np.float64), np.abs(np.asarray(ref_loss, np.float64))),
        ("grad", grad.astype(np.float64), ref_grad.astype(np.float64),
         np.nanmax(np.where(np.isfinite(ref_grad), np.abs(ref_grad.astype(np.float64)), 0), axis=-1, keepdims=True,
                   initial=0.0)),
    ]:
        assert np.array_equal(np.isnan(a), np.isnan(e)), f"{what} {name}: NaN at other places"
        infinite = np.isinf(e)
        assert np.array_equal(a[infinite], e[infinite]), f"{what} {name}: infinities differ"
        finite = np.isfinite(e)
        bound = tol * np.broadcast_to(scale, e.shape)
        if logits is not None:
            finite_x = np.isfinite(logits)
            x64 = logits.astype(np.float64)
            with np.errstate(invalid="ignore"):
                spread = (np.where(finite_x, x64, -np.inf).max(axis=-1) - np.where(finite_x, x64, np.inf).min(axis=-1))
            spread = np.where(finite_x.any(axis=-1), spread, 0.0)
            if name == "loss" and np.ndim(e) == 0:  # a mean or sum: the rows' allowances add up
                spread = np.array(spread.max())
            else:
                spread = spread[..., None] if name == "grad" else spread
            unit = float(np.finfo(compute_dtype(ref_grad.dtype)).eps) / 2
            bound = bound + 2 * spread * unit * np.abs(e)
        bound = bound[finite] + float(np.finfo(ref_grad.dtype).tiny)
        error = np.abs(a[finite] - e[finite])
        worst = np.max(error / bound, initial=0.0)
        assert worst <= 1.0, f"{what} {name}: {worst:.3g} x the tolerance ({tol / np.finfo(ref_grad.dtype).eps:.3g} ulp-scale)"


def compute_dtype(dtype):
    return F32 if np.dtype(dtype) == F16 else np.dtype(dtype)

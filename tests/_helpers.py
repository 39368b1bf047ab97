"""Array layouts, tolerances and comparisons shared by the test modules."""

from __future__ import annotations

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

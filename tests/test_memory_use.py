"""No N x C temporaries: tracemalloc (which sees NumPy's allocations) measures the
peak memory a call allocates. Loss only: O(N). With a gradient into `out=` (or in
place): O(N). With a new gradient: the gradient itself, plus O(N)."""

import tracemalloc

import numpy as np
import pytest

import softmaxloss as sml

N_ROWS, N_CLASSES = 2000, 600


def peak_allocation(call):
    """Bytes allocated at the peak of call(), beyond what was allocated before it."""
    call()  # warm up: first-call allocations (imports, caches) are not the call's
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - start


# O(N): a few float64 or int64 arrays of one value per row, and a constant.
def per_row_budget(n_rows):
    return 6 * 8 * n_rows + 64 * 1024


LAYOUTS = {
    "C (N, C)": lambda x: np.ascontiguousarray(x),
    "F (N, C)": lambda x: np.asfortranarray(x),
    "torch (N, C, d)": lambda x: np.ascontiguousarray(x.reshape(N_ROWS // 4, 4, N_CLASSES).transpose(0, 2, 1)),
}


def case(layout, dtype):
    rng = np.random.default_rng(0)
    x = LAYOUTS[layout](rng.standard_normal((N_ROWS, N_CLASSES)).astype(dtype))
    axis = 1 if x.ndim == 3 else -1
    n_classes = x.shape[axis]
    target = rng.integers(0, n_classes, x.shape[:axis] + x.shape[axis + 1 :] if axis != -1 else x.shape[:-1])
    return x, target, axis


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_loss_only_allocates_per_row_memory(dtype, layout):
    x, target, axis = case(layout, dtype)
    for reduction in ("mean", "none"):
        peak = peak_allocation(lambda: sml.cross_entropy(x, target, axis=axis, reduction=reduction))
        assert peak < per_row_budget(N_ROWS), f"{reduction}: {peak} bytes for {x.nbytes} bytes of logits"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_gradient_into_out_or_in_place_allocates_per_row_memory(dtype, layout):
    x, target, axis = case(layout, dtype)
    out = np.empty_like(x)
    options = dict(axis=axis, label_smoothing=0.1, weight=np.ones(N_CLASSES))
    peak = peak_allocation(lambda: sml.cross_entropy_with_grad(x, target, out=out, **options))
    assert peak < per_row_budget(N_ROWS), f"out=: {peak} bytes"
    logits = x.copy()
    peak = peak_allocation(lambda: sml.cross_entropy_with_grad(logits, target, out=logits, **options))
    assert peak < per_row_budget(N_ROWS), f"in place: {peak} bytes"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_new_gradient_is_the_only_large_allocation(dtype):
    x, target, axis = case("C (N, C)", dtype)
    peak = peak_allocation(lambda: sml.cross_entropy_with_grad(x, target))
    assert x.nbytes <= peak < x.nbytes + per_row_budget(N_ROWS)


def test_softmax_into_out_allocates_nothing_large():
    x, _, _ = case("C (N, C)", np.float32)
    out = np.empty_like(x)
    assert peak_allocation(lambda: sml.softmax(x, out=out)) < 64 * 1024
    assert peak_allocation(lambda: sml.logsumexp(x)) < per_row_budget(N_ROWS)

"""Edge cases of SPEC.md, checked against what SPEC says and against the reference:
one class, zero rows, huge logits, -inf, +inf and NaN entries, ignored rows."""

import numpy as np
import pytest
from _helpers import assert_close

import softmaxloss as sml
from softmaxloss import reference as ref

DTYPES = [np.float32, np.float64]


def both(name, *args, **kwargs):
    """(fast result, reference result) of the same call."""
    return getattr(sml, name)(*args, **kwargs), getattr(ref, name)(*args, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_class_has_probability_one_zero_loss_and_zero_gradient(kernel_build, dtype):
    x = np.array([[3.0], [-7.0], [0.0]], dtype)
    t = np.zeros(3, np.int64)
    np.testing.assert_array_equal(sml.softmax(x), np.ones_like(x))
    np.testing.assert_array_equal(sml.log_softmax(x), np.zeros_like(x))
    loss, grad = sml.cross_entropy_with_grad(x, t)
    assert loss == 0 and loss.dtype == dtype
    np.testing.assert_array_equal(grad, np.zeros_like(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction,expected", [("mean", np.nan), ("sum", 0.0)])
def test_zero_rows(kernel_build, dtype, reduction, expected):
    """No rows: empty softmax; the mean over no rows is NaN (as PyTorch), the sum 0."""
    x = np.zeros((0, 4), dtype)
    t = np.zeros(0, np.int64)
    assert sml.softmax(x).shape == (0, 4)
    assert sml.logsumexp(x).shape == (0,)
    loss, grad = sml.cross_entropy_with_grad(x, t, reduction=reduction)
    np.testing.assert_array_equal(loss, expected)
    assert grad.shape == (0, 4) and grad.dtype == dtype
    assert sml.cross_entropy(x, t, reduction="none").shape == (0,)


def test_empty_class_axis_softmax_is_empty_and_logsumexp_is_minus_inf():
    x = np.zeros((3, 0))
    assert sml.softmax(x).shape == (3, 0)
    np.testing.assert_array_equal(sml.logsumexp(x), np.full(3, -np.inf))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1e4, -1e4, 1e30])
def test_huge_logits_are_stable(kernel_build, dtype, scale):
    """Softmax subtracts the row max: huge logits neither overflow nor lose the answer."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((50, 9)) * 3 + scale).astype(dtype)
    t = rng.integers(0, 9, 50)
    for name in ("softmax", "log_softmax", "logsumexp"):
        fast, expected = both(name, x)
        assert np.all(np.isfinite(fast)), name
        assert_close(fast, expected, dtype, name)
    fast, expected = both("cross_entropy_with_grad", x, t)
    assert np.isfinite(fast[0]) and np.all(np.isfinite(fast[1]))
    assert_close(fast, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_minus_inf_entries_are_exact_zeros(kernel_build, dtype):
    x = np.array([[0.0, -np.inf, 1.0, -np.inf], [-np.inf, 2.0, -np.inf, -np.inf]], dtype)
    p = sml.softmax(x)
    assert p[0, 1] == 0 and p[0, 3] == 0 and p[1, 0] == 0
    assert p[1, 1] == 1
    assert np.all(np.isneginf(sml.log_softmax(x)[np.isneginf(x)]))
    loss, grad = sml.cross_entropy_with_grad(x, np.array([2, 1]))
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert_close((loss, grad), ref.cross_entropy_with_grad(x, np.array([2, 1])), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_label_at_minus_inf_gives_infinite_loss_and_finite_gradient(dtype):
    x = np.array([[0.0, -np.inf, 1.0]], dtype)
    loss, grad = sml.cross_entropy_with_grad(x, np.array([1]))
    assert loss == np.inf
    np.testing.assert_allclose(grad[0, 1], -1.0)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "bad_row",
    [
        [-np.inf, -np.inf, -np.inf, -np.inf],  # all -inf: NaN, as PyTorch
        [0.0, np.nan, 1.0, 2.0],
        [0.0, np.inf, 1.0, 2.0],
        [np.nan] * 4,
    ],
    ids=["all-minus-inf", "nan", "plus-inf", "all-nan"],
)
def test_non_finite_row_is_nan_and_other_rows_are_untouched(kernel_build, dtype, bad_row):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 4)).astype(dtype)
    x[2] = bad_row
    t = np.array([0, 1, 2, 3, 0])
    for name in ("softmax", "log_softmax"):
        fast, expected = both(name, x)
        assert np.all(np.isnan(fast[2])), name
        assert_close(fast, expected, dtype, name)
    losses, grad = sml.cross_entropy_with_grad(x, t, reduction="none")
    assert np.isnan(losses[2]) and np.all(np.isnan(grad[2]))
    keep = [0, 1, 3, 4]
    clean_losses, clean_grad = sml.cross_entropy_with_grad(x[keep], t[keep], reduction="none")
    np.testing.assert_array_equal(losses[keep], clean_losses)
    np.testing.assert_array_equal(grad[keep], clean_grad)
    assert np.isnan(sml.cross_entropy(x, t))
    assert_close(sml.logsumexp(x), ref.logsumexp(x), dtype)


def test_logsumexp_of_infinite_rows_follows_pytorch():
    x = np.array([[-np.inf, -np.inf], [np.inf, 1.0], [np.inf, -np.inf], [np.nan, 1.0]])
    result = sml.logsumexp(x)
    assert result[0] == -np.inf and result[1] == np.inf and result[2] == np.inf
    assert np.isnan(result[3])


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_rows_ignored(kernel_build, dtype):
    """Ignored rows contribute nothing: mean over no rows is NaN, sum 0, gradient 0."""
    x = np.random.default_rng(3).standard_normal((4, 3)).astype(dtype)
    t = np.full(4, -100)
    loss, grad = sml.cross_entropy_with_grad(x, t)
    assert np.isnan(loss)
    np.testing.assert_array_equal(grad, 0)
    loss, grad = sml.cross_entropy_with_grad(x, t, reduction="sum")
    assert loss == 0
    np.testing.assert_array_equal(grad, 0)
    np.testing.assert_array_equal(sml.cross_entropy(x, t, reduction="none"), 0)


def test_ignore_index_inside_the_class_range_ignores_that_class():
    x = np.random.default_rng(4).standard_normal((6, 3))
    t = np.array([0, 1, 2, 1, 0, 1])
    loss, grad = sml.cross_entropy_with_grad(x, t, ignore_index=1)
    kept = t != 1
    expected_loss, expected_grad = ref.cross_entropy_with_grad(x[kept], t[kept])
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-14)
    np.testing.assert_allclose(grad[kept], expected_grad * 1.0, rtol=1e-14)
    np.testing.assert_array_equal(grad[~kept], 0)


@pytest.mark.parametrize("shape,axis", [((5,), 0), ((2, 3, 4, 5), 2), ((1, 1, 1), 1)])
def test_any_number_of_leading_dimensions(shape, axis):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape)
    t = rng.integers(0, shape[axis], shape[:axis] + shape[axis + 1 :])
    for reduction in ("none", "mean", "sum"):
        fast = sml.cross_entropy_with_grad(x, t, axis=axis, reduction=reduction)
        assert_close(fast, ref.cross_entropy_with_grad(x, t, axis=axis, reduction=reduction), np.float64)


def test_one_dimensional_logits_give_numpy_scalars():
    x = np.array([1.0, 2.0, 3.0], np.float32)
    assert isinstance(sml.cross_entropy(x, np.int64(2)), np.float32)
    assert isinstance(sml.cross_entropy(x, 2, reduction="none"), np.float32)
    assert isinstance(sml.logsumexp(x), np.float32)

"""`out=`: results written into the caller's array (returned as the same object),
including the logits themselves (in place), for every function that takes it."""

import numpy as np
import pytest
from _helpers import assert_close, random_targets

import softmaxloss as sml
from softmaxloss import reference as ref

DTYPES = [np.float16, np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [0, -1])
def test_softmax_out_and_in_place(kernel_build, rng, dtype, name, axis):
    x = (rng.standard_normal((40, 30)) * 3).astype(dtype)
    expected = getattr(ref, name)(x, axis)
    out = np.empty_like(x)
    assert getattr(sml, name)(x, axis, out=out) is out
    assert_close(out, expected, dtype)
    logits = x.copy()
    assert getattr(sml, name)(logits, axis, out=logits) is logits
    assert_close(logits, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((50, 20), -1), ((50, 20), 0), ((4, 6, 5, 3), 1)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_cross_entropy_with_grad_out_and_in_place(kernel_build, rng, dtype, shape, axis, order):
    x = np.asarray((rng.standard_normal(shape) * 3).astype(dtype), order=order)
    target = random_targets(rng, shape, axis, n_ignored=2)
    options = dict(axis=axis, label_smoothing=0.1, weight=rng.uniform(0.5, 2, shape[axis]))
    expected = ref.cross_entropy_with_grad(x, target, **options)

    out = np.zeros_like(x, order=order)
    loss, grad = sml.cross_entropy_with_grad(x, target, out=out, **options)
    assert grad is out
    assert_close((loss, grad), expected, dtype)

    logits = x.copy(order=order)
    loss, grad = sml.cross_entropy_with_grad(logits, target, out=logits, **options)
    assert grad is logits
    assert_close((loss, grad), expected, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_reads_each_label_before_overwriting_its_row(kernel_build, dtype):
    """In place, the label's logit must be read before the row becomes the gradient;
    make it the row max so that a late read would change the loss."""
    x = np.array([[5.0, 1.0, 0.0], [0.0, 7.0, 1.0], [2.0, 2.0, 9.0]], dtype)
    target = np.array([0, 1, 2])
    expected = ref.cross_entropy_with_grad(x, target, label_smoothing=0.2, z_loss=0.1)
    logits = x.copy()
    actual = sml.cross_entropy_with_grad(logits, target, out=logits, label_smoothing=0.2, z_loss=0.1)
    assert_close(actual, expected, dtype)


def test_out_may_be_a_strided_view_when_the_kernel_can_address_it(rng):
    x = rng.standard_normal((10, 8))
    target = rng.integers(0, 8, 10)
    big = np.zeros((20, 16))
    out = big[::2, ::2]
    loss, grad = sml.cross_entropy_with_grad(x, target, out=out)
    assert grad is out
    assert_close((loss, grad), ref.cross_entropy_with_grad(x, target), np.float64)
    np.testing.assert_array_equal(big[1::2], 0)  # nothing written between the rows
    np.testing.assert_array_equal(big[:, 1::2], 0)


def test_gradient_hessian_out_and_in_place(kernel_build, rng):
    x = rng.standard_normal((30, 5))
    labels = rng.integers(0, 5, 30)
    expected = ref.gradient_hessian(x, labels, sample_weight=np.arange(30.0))
    grad_out, hess_out = np.empty_like(x), np.empty_like(x)
    grad, hess = sml.gradient_hessian(x, labels, sample_weight=np.arange(30.0), out=(grad_out, hess_out))
    assert grad is grad_out and hess is hess_out
    assert_close((grad, hess), expected, np.float64)
    logits = x.copy()
    grad, hess = sml.gradient_hessian(logits, labels, sample_weight=np.arange(30.0), out=(logits, hess_out))
    assert grad is logits
    assert_close((grad, hess), expected, np.float64)


def test_hessian_out_may_not_be_the_logits(rng):
    x = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match="shares memory with logits"):
        sml.gradient_hessian(x, np.zeros(4, int), out=(np.empty_like(x), x))

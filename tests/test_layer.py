"""`SoftmaxWithLoss`: forward/backward equal the fused function, and the layer
trains a real softmax-regression model."""

import numpy as np
import pytest
from _helpers import assert_close

import softmaxloss as sml


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_and_backward_equal_cross_entropy_with_grad(rng, reduction, dtype):
    x = rng.standard_normal((20, 6)).astype(dtype)
    t = rng.integers(0, 6, 20)
    options = dict(reduction=reduction, label_smoothing=0.1, weight=rng.uniform(0.5, 2, 6), z_loss=1e-3)
    layer = sml.SoftmaxWithLoss(**options)
    loss = layer.forward(x, t)
    expected_loss, expected_grad = sml.cross_entropy_with_grad(x, t, **options)
    assert loss == expected_loss
    np.testing.assert_array_equal(layer.backward(), expected_grad)
    dx = layer.backward(2.5)
    assert dx.dtype == dtype
    assert_close(dx, (expected_grad * 2.5).astype(dtype), dtype)
    np.testing.assert_array_equal(layer.backward(), expected_grad)  # backward twice: same answer


def test_backward_with_reduction_none_scales_each_row(rng):
    x = rng.standard_normal((5, 4))
    t = rng.integers(0, 4, 5)
    layer = sml.SoftmaxWithLoss(reduction="none")
    losses = layer.forward(x, t)
    assert losses.shape == (5,)
    dout = np.arange(5.0)
    _, grad = sml.cross_entropy_with_grad(x, t, reduction="none")
    np.testing.assert_allclose(layer.backward(dout), grad * dout[:, None])
    with pytest.raises(ValueError, match="one value per row"):
        layer.backward(np.ones(4))


def test_layer_passes_sample_weight_and_axis(rng):
    x = rng.standard_normal((4, 3, 5))
    t = rng.integers(0, 4, (3, 5))
    s = rng.uniform(0, 2, (3, 5))
    layer = sml.SoftmaxWithLoss(axis=0)
    loss = layer.forward(x, t, sample_weight=s)
    expected_loss, expected_grad = sml.cross_entropy_with_grad(x, t, axis=0, sample_weight=s)
    assert loss == expected_loss
    np.testing.assert_array_equal(layer.backward(), expected_grad)


def test_gradient_descent_with_the_layer_fits_softmax_regression():
    """A few hundred steps of plain gradient descent on a separable 3-class problem:
    the loss falls steadily and the model classifies the training data."""
    rng = np.random.default_rng(0)
    centers = np.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    labels = rng.integers(0, 3, 600)
    features = centers[labels] + 0.5 * rng.standard_normal((600, 2))
    weights = np.zeros((2, 3))
    bias = np.zeros(3)
    layer = sml.SoftmaxWithLoss()
    losses = []
    for _ in range(300):
        losses.append(float(layer.forward(features @ weights + bias, labels)))
        dlogits = layer.backward()
        weights -= 0.5 * features.T @ dlogits
        bias -= 0.5 * dlogits.sum(axis=0)
    assert losses[0] == pytest.approx(np.log(3))
    assert losses[-1] < 0.1 * losses[0]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(losses, losses[1:]))
    accuracy = np.mean(np.argmax(features @ weights + bias, axis=1) == labels)
    assert accuracy > 0.97

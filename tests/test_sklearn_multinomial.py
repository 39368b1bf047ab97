"""scikit-learn's own inputs for HalfMultinomialLoss (`sklearn/_loss/tests/test_loss.py`:
its specific values, and test_loss_dtype's grid of input and output dtypes, sample
weights, `out` arrays, read-only inputs and thread counts, on its random labels and raw
predictions) given to softmaxloss's cross_entropy / cross_entropy_with_grad /
gradient_hessian the way scikit-learn passes them (float class labels, an `out` of
another float dtype): the same per-sample losses, gradients and hessians."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

loss_module = pytest.importorskip("sklearn._loss.loss")
sklearn_tests = pytest.importorskip("sklearn._loss.tests.test_loss")
import softmaxloss as sml  # noqa: E402
from softmaxloss import reference as ref  # noqa: E402

SPECIFIC = [  # test_loss_on_specific_values' multinomial rows: (y_true, raw_prediction)
    (0.0, [0.2, 0.5, 0.3]), (1.0, [0.2, 0.5, 0.3]), (2.0, [0.2, 0.5, 0.3]), (2.0, [1e4, 0, 7e-7]),
]


@pytest.mark.parametrize("y_true,raw", SPECIFIC)
def test_specific_values(y_true, raw):
    loss = loss_module.HalfMultinomialLoss(n_classes=3)
    y, x = np.array([y_true]), np.array([raw])
    np.testing.assert_allclose(sml.cross_entropy(x, y, reduction="none"), loss.loss(y, x), rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(sml.cross_entropy_with_grad(x, y, reduction="none")[1], loss.gradient(y, x),
                               rtol=1e-15, atol=1e-15)
    for ours, theirs in zip(sml.gradient_hessian(x, y), loss.gradient_hessian(y, x)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-15, atol=1e-15)


GRID = list(itertools.product([np.float32, np.float64], [np.float32, np.float64], [None, 1], [None, 1],
                              [False, True], [1, 2]))


@pytest.mark.parametrize("dtype_in,dtype_out,sample_weight,out,readonly,n_threads", GRID)
def test_loss_dtype_grid(dtype_in, dtype_out, sample_weight, out, readonly, n_threads):
    loss = loss_module.HalfMultinomialLoss()
    y_true, raw = sklearn_tests.random_y_true_raw_prediction(
        loss=loss, n_samples=5, y_bound=(-100, 100), raw_bound=(-10, 10), seed=42)
    y_true, raw = y_true.astype(dtype_in), raw.astype(dtype_in)
    sw = None if sample_weight is None else np.full(5, 2.0, dtype_in)
    if readonly:
        for a in (y_true, raw) + (() if sw is None else (sw,)):
            a.flags.writeable = False
    tolerance = 2e-6 if dtype_in == np.float32 or dtype_out == np.float32 else 1e-13
    expected = loss.loss(y_true=y_true, raw_prediction=raw, sample_weight=sw, n_threads=n_threads)
    got = sml.cross_entropy(raw, y_true, sample_weight=sw, reduction="none", n_threads=n_threads)
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)
    assert got.dtype == dtype_in
    gradient_out = None if out is None else np.empty(raw.shape, dtype_out)
    expected = loss.gradient(y_true=y_true, raw_prediction=raw, sample_weight=sw, n_threads=n_threads)
    _, grad = sml.cross_entropy_with_grad(raw, y_true, sample_weight=sw, reduction="none", out=gradient_out,
                                          n_threads=n_threads)
    assert grad is gradient_out if out is not None else grad.dtype == dtype_in
    np.testing.assert_allclose(grad, expected, rtol=tolerance, atol=tolerance)
    outs = None if out is None else (np.empty(raw.shape, dtype_out), np.empty(raw.shape, dtype_out))
    expected = loss.gradient_hessian(y_true=y_true, raw_prediction=raw, sample_weight=sw, n_threads=n_threads)
    got = sml.gradient_hessian(raw, y_true, sample_weight=sw, out=outs, n_threads=n_threads)
    for ours, theirs in zip(got, expected):
        np.testing.assert_allclose(ours, theirs, rtol=tolerance, atol=tolerance)
    # no value further from the exact (float64 reference) result than scikit-learn's
    exact = ref.cross_entropy(raw.astype(np.float64), y_true.astype(np.float64), sample_weight=sw,
                              reduction="none")
    ours_error = np.abs(sml.cross_entropy(raw, y_true, sample_weight=sw, reduction="none") - exact)
    theirs_error = np.abs(loss.loss(y_true=y_true, raw_prediction=raw, sample_weight=sw) - exact)
    assert np.all(ours_error <= theirs_error + 4 * np.finfo(dtype_in).eps * np.abs(exact))


def test_labels_that_are_not_class_numbers_are_refused_as_sklearn_finds_them_out_of_range():
    """test_loss_boundary_y_true: 0.1 and 0.5 are not valid multinomial labels."""
    loss = loss_module.HalfMultinomialLoss(n_classes=3)
    x = np.zeros((1, 3))
    for bad in (0.1, 0.5):
        assert not loss.in_y_true_range(np.array([bad]))
        with pytest.raises(ValueError, match="whole class numbers"):
            sml.cross_entropy(x, np.array([bad]))

"""softmaxloss against other implementations: PyTorch (loss and autograd gradient),
SciPy's softmax family, scikit-learn's multinomial loss, and finite differences.
Each library's tests skip cleanly when it is not installed."""

import itertools

import numpy as np
import pytest
from _helpers import assert_close, random_probabilities, random_targets

import softmaxloss as sml

DTYPES = [np.float32, np.float64]


# ---- PyTorch -----------------------------------------------------------------------

TORCH_OPTIONS = list(
    itertools.product(
        ["index", "index-ignored", "probabilities"],
        [False, True],  # class weights
        [0.0, 0.2],  # label smoothing
        ["none", "mean", "sum"],
    )
)


def torch_loss_and_grad(torch, x, target, reduction, **options):
    """torch.nn.functional.cross_entropy and its autograd gradient (of the sum for 'none'),
    computed in float64 on the given inputs and returned in their dtype: torch's float32
    kernel forms p - 1 in float32 and is itself off by up to ~1e-5 where p -> 1."""
    logits = torch.tensor(x.astype(np.float64), requires_grad=True)
    if target.dtype.kind == "f":
        target = target.astype(np.float64)
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(target), reduction=reduction, **options)
    (loss.sum() if reduction == "none" else loss).backward()
    return loss.detach().numpy().astype(x.dtype), logits.grad.numpy().astype(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(37, 11), (3, 7, 4, 5)], ids=["2d", "4d-class-axis-1"])
@pytest.mark.parametrize("kind,weighted,smoothing,reduction", TORCH_OPTIONS)
def test_matches_torch_cross_entropy_and_autograd(kernel_build, rng, dtype, shape, kind, weighted, smoothing, reduction):
    """Every option torch has, on torch's (N, C, d1, ...) layout: our axis=1."""
    torch = pytest.importorskip("torch")
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    if kind == "probabilities":
        target = random_probabilities(rng, shape, 1).astype(dtype)
    else:
        target = random_targets(rng, shape, 1, n_ignored=3 if kind == "index-ignored" else 0)
    weight = rng.uniform(0.2, 3.0, shape[1]) if weighted else None
    expected_loss, expected_grad = torch_loss_and_grad(
        torch, x, target, reduction,
        weight=None if weight is None else torch.tensor(weight),
        label_smoothing=smoothing,
    )
    loss, grad = sml.cross_entropy_with_grad(
        x, target, axis=1, weight=weight, label_smoothing=smoothing, reduction=reduction
    )
    assert_close(np.asarray(loss), expected_loss, dtype, "loss")
    assert_close(grad, expected_grad, dtype, "grad")
    assert_close(
        np.asarray(sml.cross_entropy(x, target, axis=1, weight=weight, label_smoothing=smoothing, reduction=reduction)),
        expected_loss, dtype, "loss only",
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch_on_non_finite_rows(dtype):
    """NaN, +inf, all -inf and -inf-beside-finite rows give what torch gives."""
    torch = pytest.importorskip("torch")
    x = np.array(
        [[0.0, 1.0, 2.0], [np.nan, 1.0, 0.0], [np.inf, 0.0, 1.0], [-np.inf] * 3, [-np.inf, 0.0, 1.0], [1e4, -1e4, 0.0]],
        dtype,
    )
    target = np.array([0, 1, 2, 0, 2, 1])
    expected = torch_loss_and_grad(torch, x, target, "none")
    assert_close(sml.cross_entropy_with_grad(x, target, reduction="none"), expected, dtype)


def test_matches_torch_when_all_rows_are_ignored():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((3, 4))
    target = np.full(3, -100)
    expected_loss, expected_grad = torch_loss_and_grad(torch, x, target, "mean")
    loss, grad = sml.cross_entropy_with_grad(x, target)
    assert np.isnan(expected_loss) and np.isnan(loss)
    np.testing.assert_array_equal(grad, expected_grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_family_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    x = (np.random.default_rng(1).standard_normal((4, 5, 6)) * 10).astype(dtype)
    for axis in range(3):
        xt = torch.from_numpy(x.astype(np.float64))  # torch in float64, as above
        assert_close(sml.softmax(x, axis), torch.softmax(xt, axis).numpy().astype(dtype), dtype)
        assert_close(sml.log_softmax(x, axis), torch.log_softmax(xt, axis).numpy().astype(dtype), dtype)
        assert_close(sml.logsumexp(x, axis), torch.logsumexp(xt, axis).numpy().astype(dtype), dtype)


# ---- SciPy -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_softmax_family_matches_scipy(kernel_build, dtype, scale):
    special = pytest.importorskip("scipy.special")
    x = (np.random.default_rng(2).standard_normal((6, 7, 8)) * scale).astype(dtype)
    for axis in (0, 1, 2, -1):
        assert_close(sml.softmax(x, axis), special.softmax(x, axis).astype(dtype), dtype)
        assert_close(sml.log_softmax(x, axis), special.log_softmax(x, axis).astype(dtype), dtype)
        assert_close(sml.logsumexp(x, axis), special.logsumexp(x, axis).astype(dtype), dtype)
        assert_close(
            sml.logsumexp(x, axis, keepdims=True), special.logsumexp(x, axis, keepdims=True).astype(dtype), dtype
        )


# ---- scikit-learn -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_hessian_matches_scikit_learn(kernel_build, rng, dtype, weighted):
    loss_module = pytest.importorskip("sklearn._loss.loss")
    n_rows, n_classes = 500, 7
    x = (rng.standard_normal((n_rows, n_classes)) * 3).astype(dtype)
    labels = rng.integers(0, n_classes, n_rows)
    sample_weight = rng.uniform(0, 3, n_rows).astype(dtype) if weighted else None
    expected = loss_module.HalfMultinomialLoss(n_classes=n_classes).gradient_hessian(
        y_true=labels.astype(dtype), raw_prediction=x, sample_weight=sample_weight
    )
    actual = sml.gradient_hessian(x, labels.astype(dtype), sample_weight=sample_weight)
    # scikit-learn keeps float32 sums in float32: compare within float32's looser bound.
    tolerance_dtype = np.float64 if dtype == np.float64 else np.float16
    assert_close(actual, tuple(np.asarray(e, dtype) for e in expected), tolerance_dtype)


# ---- finite differences --------------------------------------------------------------

def central_difference(f, x, h=1e-3):
    """4th-order central difference of the scalar function f at every entry of x."""
    grad = np.empty_like(x)
    for index in np.ndindex(x.shape):
        values = []
        for step in (2, 1, -1, -2):
            shifted = x.copy()
            shifted[index] += step * h
            values.append(f(shifted))
        grad[index] = (-values[0] + 8 * values[1] - 8 * values[2] + values[3]) / (12 * h)
    return grad


FD_OPTIONS = {
    "plain": {},
    "weights": {"weight": np.array([0.5, 2.0, 1.0, 3.0])},
    "smoothing": {"label_smoothing": 0.3},
    "z-loss": {"z_loss": 0.1},
    "sample-weight": {"sample_weight": np.array([0.0, 1.0, 2.5])},
    "everything": {
        "weight": np.array([0.5, 2.0, 1.0, 3.0]),
        "sample_weight": np.array([0.3, 1.0, 2.5]),
        "label_smoothing": 0.3,
        "z_loss": 0.1,
    },
}


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("target_kind", ["index", "index-ignored", "probabilities"])
@pytest.mark.parametrize("options", sorted(FD_OPTIONS))
def test_gradient_matches_finite_differences(kernel_build, reduction, target_kind, options):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 4)) * 2
    if target_kind == "probabilities":
        target = rng.dirichlet(np.ones(4), 3)
    else:
        target = np.array([1, -100 if target_kind == "index-ignored" else 3, 0])
    kwargs = dict(FD_OPTIONS[options], reduction=reduction)

    def total_loss(logits):
        return float(np.sum(sml.cross_entropy(logits, target, **kwargs)))

    _, grad = sml.cross_entropy_with_grad(x, target, **kwargs)
    np.testing.assert_allclose(grad, central_difference(total_loss, x), rtol=1e-8, atol=1e-9)


def test_log_softmax_and_logsumexp_derivatives_match_finite_differences():
    """d logsumexp / dx = softmax: ties the softmax family together."""
    x = np.random.default_rng(8).standard_normal((2, 5)) * 3
    np.testing.assert_allclose(
        central_difference(lambda v: float(sml.logsumexp(v).sum()), x), sml.softmax(x), rtol=1e-8, atol=1e-10
    )

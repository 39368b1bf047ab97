"""A small program using softmaxloss's public API, type-checked with `mypy --strict`.

tests/test_typing.py checks it with mypy against the installed package (its hints, and the
`_kernels.pyi` stubs behind them) and also runs it, so it stays working code. Functions
declare what they return and return the library's results directly: under --strict
(`warn_return_any`) a public function whose result mypy sees as Any would be an error here.
Not collected by pytest (the name does not start with test_).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

import softmaxloss as sml
import softmaxloss.reference as ref
from softmaxloss import SoftmaxWithLoss

Floats = npt.NDArray[np.float32]
AnyFloats = npt.NDArray[np.floating[Any]]  # the type argument is optional from NumPy 2.2 on


def probabilities(logits: Floats) -> AnyFloats:
    return sml.softmax(logits, axis=-1, n_threads=1)


def log_probabilities_in_place(logits: Floats) -> AnyFloats:
    return sml.log_softmax(logits, out=logits)


def mean_loss(logits: Floats, labels: npt.NDArray[np.int64], weight: list[float] | None = None) -> float:
    # The loss is a NumPy scalar for "mean" and "sum", an array for "none": typed Any.
    return float(sml.cross_entropy(logits, labels, weight=weight, label_smoothing=0.1, reduction="mean"))


def loss_and_grad(logits: Floats, labels: npt.NDArray[np.int64]) -> tuple[float, AnyFloats]:
    loss, grad = sml.cross_entropy_with_grad(logits, labels, ignore_index=-100, z_loss=1e-4)
    return float(loss), grad


def sgd_step(logits: Floats, labels: npt.NDArray[np.int64], learning_rate: float) -> None:
    """The gradient written over a copy of the logits (out=), then applied."""
    grad_buffer = np.empty_like(logits)
    _, grad = sml.cross_entropy_with_grad(logits, labels, out=grad_buffer)
    assert grad is grad_buffer
    logits -= np.float32(learning_rate) * grad


def soft_target_loss(logits: Floats, target: Floats) -> AnyFloats:
    per_row = sml.cross_entropy(logits, target, reduction="none")
    return np.asarray(per_row, dtype=np.float64)


def boosting_objective(
    predictions: npt.NDArray[np.float64], labels: npt.NDArray[np.float64]
) -> tuple[AnyFloats, AnyFloats]:
    """A gradient-boosting custom multiclass objective: (grad, hess), labels as floats."""
    return sml.gradient_hessian(predictions, labels, sample_weight=None)


def log_normaliser(logits: Floats) -> npt.NDArray[np.float64]:
    return np.asarray(sml.logsumexp(logits, axis=1, keepdims=True), dtype=np.float64)


def train_layer(layer: SoftmaxWithLoss, logits: Floats, labels: npt.NDArray[np.int64]) -> AnyFloats:
    layer.forward(logits, labels)
    return layer.backward(dout=1.0)


def reference_agrees(logits: Floats, labels: npt.NDArray[np.int64]) -> bool:
    fast_loss, fast_grad = sml.cross_entropy_with_grad(logits, labels)
    ref_loss, ref_grad = ref.cross_entropy_with_grad(logits, labels)
    ref_hess: AnyFloats = ref.gradient_hessian(logits, labels.clip(0))[1]
    return (
        bool(np.allclose(fast_loss, ref_loss, rtol=1e-5))
        and bool(np.allclose(fast_grad, ref_grad, rtol=1e-4, atol=1e-7))
        and ref_hess.shape == logits.shape
    )


def main() -> None:
    rng = np.random.default_rng(0)
    logits: Floats = rng.standard_normal((8, 5)).astype(np.float32)
    labels = np.array([0, 4, 1, -100, 2, 2, 3, 0], dtype=np.int64)
    kept = labels.clip(0)

    version: str = sml.__version__
    assert version
    assert probabilities(logits).shape == (8, 5)
    assert np.isfinite(mean_loss(logits, labels, weight=[1.0, 2.0, 1.0, 1.0, 0.5]))
    loss, grad = loss_and_grad(logits, labels)
    assert np.isfinite(loss) and grad.dtype == np.float32
    assert soft_target_loss(logits, probabilities(logits).astype(np.float32)).shape == (8,)
    assert log_normaliser(logits).shape == (8, 1)
    grad, hess = boosting_objective(logits.astype(np.float64), kept.astype(np.float64))
    assert grad.shape == hess.shape == (8, 5)
    dx = train_layer(SoftmaxWithLoss(label_smoothing=0.1), logits, labels)
    assert dx.shape == logits.shape
    assert reference_agrees(logits, labels)
    trained = logits.copy()
    sgd_step(trained, kept, learning_rate=0.5)
    assert mean_loss(trained, kept) < mean_loss(logits, kept)
    assert log_probabilities_in_place(logits.copy()).max() <= 0
    print("typing example: ok")


if __name__ == "__main__":
    main()

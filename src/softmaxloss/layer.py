"""`SoftmaxWithLoss`: the Softmax-with-Loss layer of the textbooks, on the fused kernel."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from ._adapter import kept_rows, scaled_gradient
from ._facade import cross_entropy_with_grad
from ._validation import DEFAULT_IGNORE_INDEX, LossOptions


class SoftmaxWithLoss:
    """Softmax followed by cross-entropy, as a layer with forward and backward.

    `forward(x, t)` runs the fused kernel once: it returns the loss and keeps the
    gradient d(loss)/dx, the only thing `backward` needs. `backward(dout=1.0)` returns
    that gradient times `dout` (a scalar; for reduction="none" one value per row,
    broadcast along the class axis), ignored rows 0 whatever `dout`: the adapter
    contract of `softmaxloss._adapter`. The keywords are those of `cross_entropy` (with
    `softcap`, the loss of cap * tanh(x / cap) and its gradient with respect to x).
    """

    def __init__(
        self,
        *,
        axis: int = -1,
        weight: Any = None,
        ignore_index: int = DEFAULT_IGNORE_INDEX,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        n_threads: int | None = None,
    ) -> None:
        # Checked now rather than at the first forward (the arrays are checked there).
        self.loss_options = LossOptions.checked(reduction=reduction, label_smoothing=label_smoothing,
                                                z_loss=z_loss, ignore_index=ignore_index, softcap=softcap)
        self.axis = axis
        self.weight = weight
        self.n_threads = n_threads
        self.loss: Any = None
        self.grad: np.ndarray | None = None
        self._target: np.ndarray | None = None

    def forward(self, x: Any, t: Any, sample_weight: Any = None) -> Any:
        """The loss of logits `x` against targets `t`; keeps d(loss)/dx for backward."""
        self.loss, self.grad = cross_entropy_with_grad(
            x, t, axis=self.axis, weight=self.weight, sample_weight=sample_weight,
            n_threads=self.n_threads, **asdict(self.loss_options),
        )
        self._target = np.asarray(t)
        return self.loss

    __call__ = forward

    def backward(self, dout: Any = 1.0) -> np.ndarray:
        """d(loss)/dx times dout, as a new array of x's dtype."""
        if self.grad is None:
            raise RuntimeError("SoftmaxWithLoss.backward() called before forward()")
        scale = np.asarray(dout)
        reduction = self.loss_options.reduction
        if reduction == "none" and scale.ndim:
            row_shape = np.shape(self.loss)
            if scale.shape != row_shape:
                raise ValueError(
                    f"dout has shape {scale.shape}; reduction='none' needs one value per "
                    f"row, shape {row_shape}"
                )
            scale = np.expand_dims(scale, self.axis)
        elif scale.ndim:
            raise ValueError(f"dout must be a scalar for reduction={reduction!r}")
        with np.errstate(invalid="ignore", over="ignore"):  # 0 * inf, as the dout says
            scale = scale.astype(self.grad.dtype)  # a float64 dout may overflow float32
            # A finite dout needs no mask: an ignored row's kept gradient is already 0.
            kept = None if np.isfinite(scale).all() else kept_rows(np, self._target, self.loss_options.ignore_index)
            if kept is not None:
                kept = np.expand_dims(kept, self.axis)
            dx: np.ndarray = np.asarray(scaled_gradient(np, self.grad, scale, kept), self.grad.dtype)
        return dx

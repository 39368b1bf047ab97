"""softmaxloss as the cross-entropy of PyTorch models: a drop-in for
`torch.nn.functional.cross_entropy` and `torch.nn.CrossEntropyLoss` on CPU tensors.

    import softmaxloss.torch as smt
    loss = smt.cross_entropy(logits, target)         # was F.cross_entropy(logits, target)
    criterion = smt.CrossEntropyLoss()               # was nn.CrossEntropyLoss()

PyTorch's layout and semantics: class dimension 1 ((N, C) or (N, C, d1, ...), or an
unbatched (C,)), class-index targets (any integer dtype) or class-probability targets
(the input's shape), `weight`, `ignore_index`, `reduction`, `label_smoothing`; plus
softmaxloss's `z_loss` and `sample_weight`.

How it works: the forward pass calls the fused kernel once, on zero-copy NumPy views of
the tensors' memory, and keeps the gradient it computed alongside the loss; the backward
pass only multiplies that gradient by the incoming `grad_output` (per row, broadcast
along dim 1, for reduction="none"), and returns it unchanged when `grad_output` is 1, as
it is for `loss.backward()`. When the input does not require a gradient (evaluation,
`torch.no_grad()`) only the loss is computed.

Choices, where PyTorch has no twin to follow:
- CPU tensors only: a CUDA (or any non-CPU) tensor is a ValueError; use PyTorch's loss
  on the GPU.
- float32 and float64 are computed natively. float16 and bfloat16 inputs are upcast to
  float32 for the kernel (a copy) and the loss and gradient come back in the input's
  dtype, as PyTorch's own CPU kernels compute half precision in float32. Other dtypes
  are a TypeError.
- The target, weight and sample_weight are constants: if one of them requires a
  gradient (while grad mode is on) that is a ValueError, not a silently missing
  gradient. Detach it.
- Once differentiable: double backward (`create_graph=True` through this loss, e.g. for
  a gradient penalty or Hessian-vector products) is a RuntimeError saying so; use
  `torch.nn.functional.cross_entropy` there.
- `inplace_grad=True` lets the forward pass write the gradient over the logits' own
  storage (float32/float64 contiguous logits; otherwise it is a no-op), saving an
  N x C allocation: the logits tensor then holds the gradient, not the logits. Its
  version counter is bumped, so an autograd node that saved the logits (e.g. a
  preceding `exp` or `sigmoid`) raises PyTorch's "modified by an inplace operation"
  error instead of computing garbage; a leaf tensor that requires grad is refused.
- `n_threads=None` uses `torch.get_num_threads()` threads (so `torch.set_num_threads`
  governs both libraries); small inputs stay on one thread.
- Under `torch.compile` the loss is a graph break: it runs eagerly between the compiled
  parts (checked with the "eager" backend; `fullgraph=True` refuses it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ._facade import cross_entropy as _np_cross_entropy
from ._facade import cross_entropy_with_grad as _np_cross_entropy_with_grad
from ._validation import DEFAULT_IGNORE_INDEX, check_reduction

__all__ = ["CrossEntropyLoss", "cross_entropy"]

_NATIVE = (torch.float32, torch.float64)
_UPCAST = (torch.float16, torch.bfloat16)

_DOUBLE_BACKWARD = (
    "softmaxloss.torch.cross_entropy is differentiable once only: double backward "
    "(create_graph=True through this loss, for a gradient penalty or Hessian-vector "
    "products) is not supported; use torch.nn.functional.cross_entropy for that"
)


def _on_cpu(tensor: torch.Tensor, name: str) -> None:
    if tensor.device.type != "cpu":
        raise ValueError(
            f"softmaxloss.torch computes on the CPU; {name} is on device "
            f"'{tensor.device}'. Move it with .cpu(), or use "
            "torch.nn.functional.cross_entropy on that device"
        )


def _constant(tensor: torch.Tensor | None, name: str) -> None:
    if tensor is not None and tensor.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"softmaxloss.torch.cross_entropy computes no gradient with respect to "
            f"{name}, which requires grad; pass {name}.detach()"
        )


def _numpy(tensor: torch.Tensor, name: str) -> np.ndarray:
    """A NumPy view of `tensor`'s memory (a float32 copy for half precision)."""
    _on_cpu(tensor, name)
    t = tensor.detach()
    if t.dtype in _UPCAST:
        t = t.float()
    elif t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} has dtype {t.dtype}, which softmaxloss.torch does not accept")
    if t.is_neg():  # a lazily negated view (torch's neg bit): NumPy needs the values
        t = t.resolve_neg()
    array: np.ndarray = t.numpy()
    return array


def _input_numpy(input: torch.Tensor) -> np.ndarray:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    _on_cpu(input, "input")
    if input.dtype not in _NATIVE and input.dtype not in _UPCAST:
        raise TypeError(
            f"input has dtype {input.dtype}; softmaxloss.torch computes float32 and "
            "float64 natively and float16/bfloat16 in float32"
        )
    return _numpy(input, "input")


def _target_numpy(target: Any) -> np.ndarray:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype in (
        torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
    ):
        return _numpy(target, "target")
    raise TypeError(
        f"target has dtype {target.dtype}; expected integer class indices or floating "
        "point class probabilities"
    )


def _optional_numpy(tensor: Any, name: str) -> np.ndarray | None:
    if tensor is None:
        return None
    if not isinstance(tensor, torch.Tensor):
        return np.asarray(tensor)
    return _numpy(tensor, name)


def _class_axis(input: torch.Tensor) -> int:
    return 1 if input.dim() >= 2 else 0


class _CrossEntropy(torch.autograd.Function):  # type: ignore[misc, unused-ignore]
    """Forward: the fused kernel computes loss and gradient in one pass and the
    gradient is saved. Backward: that gradient times grad_output."""

    @staticmethod
    def forward(  # type: ignore[override, unused-ignore]
        ctx: Any,
        input: torch.Tensor,
        x: np.ndarray,
        target: np.ndarray,
        options: dict[str, Any],
        inplace: bool,
    ) -> torch.Tensor:
        out = None
        if inplace and input.dtype in _NATIVE and input.is_contiguous():
            out = x  # x is a view of input's storage: the gradient overwrites the logits
        loss, grad = _np_cross_entropy_with_grad(x, target, out=out, **options)
        if out is not None:
            # Autograd cannot see writes made through NumPy: tell it, so that a node
            # that saved these logits for its own backward fails loudly.
            torch.autograd.graph.increment_version(input)
        grad_tensor = torch.from_numpy(grad)
        if grad_tensor.dtype != input.dtype:
            grad_tensor = grad_tensor.to(input.dtype)
        ctx.save_for_backward(grad_tensor)
        ctx.per_row = options["reduction"] == "none" and input.dim() >= 2
        return torch.from_numpy(np.asarray(loss)).to(input.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override, unused-ignore]
        if torch.is_grad_enabled():
            raise RuntimeError(_DOUBLE_BACKWARD)
        (grad,) = ctx.saved_tensors
        if ctx.per_row:
            scaled = grad * grad_output.unsqueeze(1).to(grad.dtype)
        elif grad_output.dim() == 0 and grad_output.item() == 1.0:
            # loss.backward(): the saved gradient is the answer; no copy, no pass.
            scaled = grad
        else:
            scaled = grad * grad_output.to(grad.dtype)
        return scaled, None, None, None, None


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    sample_weight: torch.Tensor | None = None,
    inplace_grad: bool = False,
    n_threads: int | None = None,
) -> torch.Tensor:
    """`torch.nn.functional.cross_entropy`, computed by softmaxloss's fused kernel.

    input: (N, C), (N, C, d1, ...) or (C,) logits on the CPU (float32/float64; float16
    and bfloat16 computed in float32). target: class indices of shape (N,), (N, d1, ...)
    or (), or class probabilities of the input's shape. `weight` (C,), `ignore_index`,
    `reduction` ("mean", "sum" or "none") and `label_smoothing` as in PyTorch.
    Keyword-only extras: `z_loss` (adds z_loss * logsumexp**2 per row), `sample_weight`
    (one weight per row, the target's row shape), `inplace_grad` (the forward pass may
    overwrite the logits with the gradient: see the module docstring), `n_threads`
    (None: torch.get_num_threads()).

    Returns the loss as a tensor of the input's dtype: a scalar, or per-row losses for
    reduction="none". Differentiable once with respect to `input`.
    """
    x = _input_numpy(input)
    t = _target_numpy(target)
    for name, tensor in (("target", target), ("weight", weight), ("sample_weight", sample_weight)):
        if isinstance(tensor, torch.Tensor):
            _constant(tensor, name)
    if inplace_grad and input.requires_grad and input.is_leaf and torch.is_grad_enabled():
        raise ValueError(
            "inplace_grad=True would overwrite a leaf tensor that requires grad (e.g. a "
            "parameter) with the gradient; it is meant for logits computed by the model"
        )
    options: dict[str, Any] = dict(
        axis=_class_axis(input),
        weight=_optional_numpy(weight, "weight"),
        sample_weight=_optional_numpy(sample_weight, "sample_weight"),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        n_threads=torch.get_num_threads() if n_threads is None else n_threads,
    )
    if input.requires_grad and torch.is_grad_enabled():
        return _CrossEntropy.apply(input, x, t, options, bool(inplace_grad))
    loss = _np_cross_entropy(x, t, **options)
    return torch.from_numpy(np.asarray(loss)).to(input.dtype)


class CrossEntropyLoss(nn.Module):  # type: ignore[misc, unused-ignore]
    """`torch.nn.CrossEntropyLoss`, computed by softmaxloss's fused kernel.

    The arguments are those of `cross_entropy`; `weight` is registered as a buffer
    (it moves with `.to()` and is saved in the state dict), as in PyTorch.
    `forward(input, target, sample_weight=None)`.
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        ignore_index: int = DEFAULT_IGNORE_INDEX,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        inplace_grad: bool = False,
        n_threads: int | None = None,
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.inplace_grad = inplace_grad
        self.n_threads = n_threads

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        return cross_entropy(
            input, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing,
            z_loss=self.z_loss, sample_weight=sample_weight, inplace_grad=self.inplace_grad,
            n_threads=self.n_threads,
        )

    def extra_repr(self) -> str:
        parts = [f"reduction={self.reduction!r}"]
        if self.ignore_index != DEFAULT_IGNORE_INDEX:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.inplace_grad:
            parts.append("inplace_grad=True")
        return ", ".join(parts)

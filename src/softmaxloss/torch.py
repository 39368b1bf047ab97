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
`torch.no_grad()`) only the loss is computed. Ignored rows (class-index targets equal to
`ignore_index`) get a gradient of exactly 0 whatever the upstream gradient, as in
PyTorch: when `grad_output` holds a NaN or an infinity (checked only when it is not 1:
one number for a scalar loss, one per row for "none"), their upstream is taken as 0
instead of multiplying their saved 0 by it. The other rows get the saved gradient times
the upstream, NaN where PyTorch gives NaN; for an infinite upstream that product is an
infinity of the right sign where PyTorch's log_softmax backward forms -inf + inf = NaN.

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
- Not supported yet: forward-mode AD and torch.func transforms (grad, vjp, jacrev,
  jacfwd, jvp, hessian, vmap, functionalize). A dual tensor (one with a
  `torch.autograd.forward_ad` tangent) or a torch.func-wrapped tensor as input, target,
  weight or sample_weight is a NotImplementedError (a RuntimeError subclass) naming
  it, raised before any work, never a dropped tangent or a read of a wrapper's
  storage; use `torch.nn.functional.cross_entropy` there.
- `inplace_grad=True` lets the forward pass write the gradient over the logits' own
  storage (float32/float64 contiguous logits; otherwise nothing is written), saving an
  N x C allocation: the logits tensor then holds the gradient. To autograd it is an
  in-place op, held to PyTorch's rules before any work: a leaf that requires grad (a
  parameter), any view of one (`w[:]`, `w.view(...)`, views of views) and the views
  PyTorch never modifies in place (outputs of `split`/`chunk`/`unbind`, views made
  under `no_grad` or `inference_mode` or by a custom Function) are a RuntimeError
  quoting PyTorch's rule, whatever the dtype or layout. Logits computed by the model,
  or views of them, are overwritten and marked dirty as by a PyTorch in-place op: the
  version counter they share with their base is bumped (a node that saved them, e.g.
  a preceding `exp`, raises "modified by an inplace operation" at backward) and their
  history is rebased (a later differentiable use of them is a RuntimeError at
  backward, not the gradient of the old logits). With grad mode off, or an input that
  does not require grad, only the loss is computed and nothing is written.
- `n_threads=None` uses `torch.get_num_threads()` threads (so `torch.set_num_threads`
  governs both libraries); small inputs stay on one thread.
- Under `torch.compile` the loss is a graph break: it runs eagerly between the compiled
  parts (checked with the "eager" backend; `fullgraph=True` refuses it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd import forward_ad

from ._facade import cross_entropy as _np_cross_entropy
from ._facade import cross_entropy_with_grad as _np_cross_entropy_with_grad
from ._validation import DEFAULT_IGNORE_INDEX, LossOptions

__all__ = ["CrossEntropyLoss", "cross_entropy"]

_NATIVE = (torch.float32, torch.float64)
_UPCAST = (torch.float16, torch.bfloat16)

_DOUBLE_BACKWARD = (
    "softmaxloss.torch.cross_entropy is differentiable once only: double backward "
    "(create_graph=True through this loss, for a gradient penalty or Hessian-vector "
    "products) is not supported; use torch.nn.functional.cross_entropy for that"
)

_OVERWRITTEN = (
    "these logits were overwritten with the gradient by softmaxloss.torch.cross_entropy("
    "..., inplace_grad=True), so they cannot be differentiated as the logits any more; "
    "use them (or the tensor they view) only before that call, or pass inplace_grad=False"
)

# PyTorch's rules for a view modified in place (autograd's handle_view_on_rebase), by how
# the view was created; DEFAULT views follow the leaf rules in _check_inplace.
_VIEW_RULES = {
    "MULTI_OUTPUT_NODE": "input is a view and is being modified inplace. This view is the "
    "output of a function that returns multiple views (split, chunk, unbind, ...). Such "
    "functions do not allow the output views to be modified inplace.",
    "NO_GRAD_MODE": "input is a view created in no_grad mode and is being modified inplace "
    "with grad mode enabled. Given that this use case is ambiguous and error-prone, it is "
    "forbidden: create the view outside no_grad.",
    "INFERENCE_MODE": "input is a view created in inference mode and is being modified "
    "inplace in normal mode. Given that this use case is ambiguous and error-prone, it is "
    "forbidden: create the view outside inference_mode.",
    "IN_CUSTOM_FUNCTION": "input is a view created inside a custom Function (or because an "
    "input was returned as-is), and modifying it inplace would override that Function's "
    "backward. Clone it first.",
}


def _check_inplace(input: torch.Tensor) -> None:
    """Refuse to write over `input` where PyTorch refuses an in-place op (its
    check_inplace), before any work: a leaf that requires grad (a parameter), a view of a
    leaf (its writes reach the leaf), and views PyTorch cannot rebase (_VIEW_RULES).
    With grad mode off, or an input that needs no gradient, nothing is written."""
    if not (input.requires_grad and torch.is_grad_enabled()):
        return
    rule = None
    if input._is_view():
        # private, but what PyTorch's own check reads: how the view was created
        created = torch._C._autograd._get_creation_meta(input).name
        if created in _VIEW_RULES:
            rule = _VIEW_RULES[created]
        elif input._base.is_leaf:
            rule = "a view of a leaf Variable that requires grad is being used in an in-place operation."
    if rule is None and input.is_leaf:
        rule = "a leaf Variable that requires grad is being used in an in-place operation."
    if rule is not None:
        raise RuntimeError(
            "softmaxloss.torch.cross_entropy(..., inplace_grad=True) would write the gradient "
            f"over input, which PyTorch refuses for an in-place op: {rule} inplace_grad is "
            "meant for logits computed by the model; pass inplace_grad=False here"
        )


def _check_untransformed(tensor: Any, name: str) -> None:
    """Refuse tensors whose values or derivatives a NumPy view would lose: torch.func
    wrappers (no storage, or under functionalize storage that does not hold the values)
    and forward-AD dual tensors (the tangent would be dropped)."""
    if not isinstance(tensor, torch.Tensor):
        return
    if torch._C._functorch.is_functorch_wrapped_tensor(tensor) or torch._is_functional_tensor(tensor):
        raise NotImplementedError(
            f"{name} is a torch.func tensor (grad, vjp, jacrev, jacfwd, jvp, hessian, vmap or "
            "functionalize): softmaxloss.torch.cross_entropy under torch.func transforms is "
            "not supported yet; use torch.nn.functional.cross_entropy there"
        )
    if forward_ad.unpack_dual(tensor).tangent is not None:
        raise NotImplementedError(
            f"{name} is a dual tensor with a forward-AD tangent: softmaxloss.torch.cross_entropy "
            "does not support forward-mode AD (torch.autograd.forward_ad) yet and would drop "
            "the tangent; use torch.nn.functional.cross_entropy there"
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
        target: torch.Tensor,
        t: np.ndarray,
        options: dict[str, Any],
        inplace: bool,
    ) -> torch.Tensor:
        # inplace: x is a view of input's storage, and the gradient overwrites the logits
        loss, grad = _np_cross_entropy_with_grad(x, t, out=x if inplace else None, **options)
        grad_tensor = torch.from_numpy(grad)
        if grad_tensor.dtype != input.dtype:
            grad_tensor = grad_tensor.to(input.dtype)
        # Class indices are kept (not copied: autograd checks their version) for the
        # rare backward that must find the ignored rows.
        ctx.save_for_backward(grad_tensor, None if target.dtype.is_floating_point else target)
        ctx.ignore_index = options["ignore_index"]
        ctx.per_row = options["reduction"] == "none" and input.dim() >= 2
        return torch.from_numpy(np.asarray(loss)).to(input.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override, unused-ignore]
        if torch.is_grad_enabled():
            raise RuntimeError(_DOUBLE_BACKWARD)
        grad, index_target = ctx.saved_tensors
        none = (None,) * 5
        if ctx.per_row:
            finite = bool(torch.isfinite(grad_output).all())
        else:
            upstream = grad_output.item()
            if upstream == 1.0:
                # loss.backward(): the saved gradient is the answer; no copy, no pass.
                return (grad, *none)
            finite = math.isfinite(upstream)
        per_row = ctx.per_row
        if not finite and index_target is not None:
            # Ignored rows' saved gradient is 0, and 0 * NaN or 0 * inf is NaN; PyTorch
            # gives them 0 whatever the upstream, as if theirs were 0: make it so.
            ignored = (index_target == ctx.ignore_index if -(2**63) <= ctx.ignore_index < 2**63
                       else torch.zeros_like(index_target, dtype=torch.bool))  # no int64 equals it
            grad_output = torch.where(ignored, 0, grad_output)
            per_row = True
        if per_row:  # broadcast along the class axis
            grad_output = grad_output.unsqueeze(1 if grad.dim() >= 2 else 0)
        return (grad * grad_output.to(grad.dtype), *none)


class _Overwritten(torch.autograd.Function):  # type: ignore[misc, unused-ignore]
    """Tells autograd that the logits were overwritten with the gradient, as a PyTorch
    in-place op does (mark_dirty): their version counter, shared with their base and
    its views, is bumped, so a node that saved them (e.g. exp's output) fails loudly at
    backward; and their history is rebased onto this node, so a later use of them is
    refused at backward instead of being differentiated as the old logits."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor) -> torch.Tensor:  # type: ignore[override, unused-ignore]
        ctx.mark_dirty(input)
        return input

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override, unused-ignore]
        # A base used elsewhere sends zeros for the overwritten view's part: pass them on
        # (as zeros, not None, which would drop the rest of the base's gradient too).
        if grad.any():
            raise RuntimeError(_OVERWRITTEN)
        return grad


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
    overwrite the logits with the gradient; a RuntimeError where PyTorch refuses an
    in-place op on them: see the module docstring), `n_threads` (None:
    torch.get_num_threads()).

    Returns the loss as a tensor of the input's dtype: a scalar, or per-row losses for
    reduction="none". Differentiable once with respect to `input` (reverse mode; forward
    AD and torch.func transforms are a NotImplementedError, a RuntimeError subclass).
    """
    arguments = (("input", input), ("target", target), ("weight", weight), ("sample_weight", sample_weight))
    for name, tensor in arguments:
        _check_untransformed(tensor, name)
    if inplace_grad and isinstance(input, torch.Tensor):
        _check_inplace(input)
    x = _input_numpy(input)
    t = _target_numpy(target)
    for name, tensor in arguments[1:]:
        if isinstance(tensor, torch.Tensor):
            _constant(tensor, name)
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
        # In place only where x is input's own memory, as the kernel's output needs it.
        inplace = bool(inplace_grad) and input.dtype in _NATIVE and input.is_contiguous()
        loss: torch.Tensor = _CrossEntropy.apply(input, x, target, t, options, inplace)
        if inplace:
            _Overwritten.apply(input)
        return loss
    value = _np_cross_entropy(x, t, **options)
    return torch.from_numpy(np.asarray(value)).to(input.dtype)


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
        LossOptions.checked(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                            ignore_index=ignore_index)  # refuse bad options now, as PyTorch does
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

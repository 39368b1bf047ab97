"""softmaxloss as the cross-entropy of PyTorch models: a drop-in for
`torch.nn.functional.cross_entropy` and `torch.nn.CrossEntropyLoss` on CPU tensors.

    import softmaxloss.torch as smt
    loss = smt.cross_entropy(logits, target)         # was F.cross_entropy(logits, target)
    criterion = smt.CrossEntropyLoss()               # was nn.CrossEntropyLoss()

PyTorch's layout, semantics and positional order: class dimension 1 ((N, C) or
(N, C, d1, ...), or an unbatched (C,)), class-index targets (any integer dtype) or
class-probability targets (the input's shape), `weight`, `size_average`, `ignore_index`,
`reduce`, `reduction`, `label_smoothing`; plus softmaxloss's keyword-only `z_loss`,
`softcap`, `sample_weight`, `inplace_grad` and `n_threads`.

A real PyTorch op: `torch.ops.softmaxloss.cross_entropy`
    (Tensor input, Tensor target, Tensor? weight, Tensor? sample_weight, int? ignore_index,
     str reduction, float label_smoothing, float z_loss, float? softcap, int n_threads,
     bool with_grad)
    -> (Tensor loss, Tensor grad)
defined with `torch.library`: its CPU kernel runs the fused kernel once, on zero-copy
NumPy views of the tensors' memory, and returns the loss and, when `with_grad`, the
gradient it computed alongside (else an empty tensor); `ignore_index=None` ignores no row
(what an ignore_index outside int64 means), `n_threads=0` means torch.get_num_threads()
when the kernel runs. It has a fake (meta) kernel, which checks the shapes and options
as the CPU kernel does, a vmap rule (a loop over the batch, one kernel call per element)
and an autograd kernel, a `torch.autograd.Function` (which `cross_entropy` applies
itself under torch.func's grad and jvp transforms, as torch.func requires), so that:
- `torch.compile(model, fullgraph=True)` traces through it with no graph break
  (backends "aot_eager" and "inductor"); the kernel runs as one opaque node;
- `torch.func` transforms (grad, vjp, jacrev, jacfwd, jvp, hessian, vmap,
  functionalize, and their compositions but two: see below) and forward-mode AD
  (`torch.autograd.forward_ad`) work;
- it is differentiable, exactly, with respect to the logits, probability targets,
  `weight` and `sample_weight`: in reverse mode any number of times, in forward mode
  once (also over reverse mode). PyTorch gives gradients for the first two, and for
  `weight` with probability targets only; class-index targets have none.
- `torch.library.opcheck` passes.

How autograd works: the forward pass keeps the gradient the kernel computed (the op's
second output) and a reference to the logits (not a copy; as PyTorch's log_softmax keeps
its output). The backward pass multiplies that gradient by the incoming `grad_output`
(per row, broadcast along dim 1, for reduction="none") and returns it unchanged when
`grad_output` is 1, as for `loss.backward()`: no pass over N x C. Being an output of the
op, the saved gradient is itself differentiable: its backward is the Hessian-vector
product, per row s * ((sum_c w_c y'_c + 2 z lse) (diag(p) - p p^T) + 2 z p p^T) v over
the mean's normaliser, written in torch ops on the saved tensors (p = softmax of the
logits), so double backward (gradient penalties, Hessian-vector products, gradgradcheck)
works, and higher orders too. The gradients with respect to the targets and weights, and
the forward-mode tangents (the loss's: sum(grad * dlogits) plus the targets' and
weights' terms; the gradient's: the Hessian's), are torch-op formulas of the same saved
tensors, computed only for what is differentiated. When no gradient is needed
(evaluation, `torch.no_grad()`) only the loss is computed. Ignored rows (class-index
targets equal to `ignore_index`) get a gradient of exactly 0 whatever the upstream
gradient, as in PyTorch: their upstream is taken as 0 where it holds a NaN or an
infinity (checked, in eager mode, only when it is not 1). The other rows get the saved
gradient times the upstream, NaN where PyTorch gives NaN; for an infinite upstream that
product is an infinity of the right sign where PyTorch's log_softmax backward forms
-inf + inf = NaN.

Errors: the same checks and messages as `softmaxloss.cross_entropy`, raised before any
work. Where PyTorch raises another type for the same input, the exception is also of
PyTorch's type and its message ends with PyTorch's: a class index out of range is a
ValueError that is an IndexError ("... [PyTorch: Target 5 is out of bounds.]"); a
target or weight of the wrong shape or dtype, ignore_index with probability targets and
label_smoothing outside [0, 1] are ValueErrors that are RuntimeErrors; a batch-size
mismatch is PyTorch's ValueError. softmaxloss accepts what PyTorch refuses in two places
(any integer dtype for class indices; weights of another float dtype) and refuses
negative label_smoothing, which PyTorch accepts.

Choices, where PyTorch has no twin to follow:
- CPU tensors only: a CUDA (or any non-CPU) tensor is a ValueError; use PyTorch's loss
  on the GPU.
- float32 and float64 are computed natively. float16 and bfloat16 logits are read as
  stored, zero-copy (bfloat16 through `.view(torch.uint16)` as an `ml_dtypes.bfloat16`
  NumPy array; without ml_dtypes installed, a float32 copy as before), computed in
  float32 as PyTorch's own CPU kernels compute half precision, and the loss and the
  gradient (written straight into a tensor of the input's dtype) come back in the
  input's dtype, rounded once. Other dtypes are a TypeError.
- The legacy `size_average` and `reduce` arguments are mapped to `reduction` by
  PyTorch's own rule (torch.nn._reduction.legacy_get_string, with its deprecation
  warning), as `torch.nn.functional.cross_entropy` does.
- Under torch.func, nested forward mode (jacfwd of jacfwd, jvp of jvp) is a
  NotImplementedError: PyTorch (2.13) gives zeros for the second-order tangent of any
  autograd.Function with a jvp rule, and this refuses rather than return them.
  Forward-over-reverse (`torch.func.hessian`) and reverse-over-reverse work. So is
  functionalize composed with a derivative transform (PyTorch has no functionalize rule
  for an autograd.Function); functionalize alone works.
- `inplace_grad=True` lets the forward pass write the gradient over the logits' own
  storage (float32/float64 contiguous logits; otherwise nothing is written), saving an
  N x C allocation: the logits tensor then holds the gradient. It is eager-only and
  first-order only, with respect to the logits only: under torch.compile it is a graph
  break (an error with fullgraph=True, saying so), and under torch.func transforms or
  forward-mode AD, with a target, weight or sample_weight that requires grad, it is a
  RuntimeError; double backward through it is a RuntimeError. To autograd it is an
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
- `n_threads=None` uses `torch.get_num_threads()` threads when the kernel runs (so
  `torch.set_num_threads` governs both libraries, in compiled code too); small inputs
  stay on one thread.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.autograd import forward_ad

from ._adapter import FLOAT32_COMPUTED, kept_rows, scaled_gradient
from ._halfdtypes import bfloat16_dtype, is_bfloat16
from ._facade import cross_entropy as _np_cross_entropy
from ._facade import cross_entropy_with_grad as _np_cross_entropy_with_grad
from ._validation import DEFAULT_IGNORE_INDEX, LossOptions, check_loss_args, check_n_threads

__all__ = ["CrossEntropyLoss", "LinearCrossEntropyLoss", "cross_entropy", "linear_cross_entropy"]

_NATIVE = (torch.float32, torch.float64)
_UPCAST = tuple(getattr(torch, name) for name in sorted(FLOAT32_COMPUTED))  # computed in float32
_INDEX_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


# ---- errors: softmaxloss's ValueError, and PyTorch's type for the same input ------------

class _TorchIndexError(ValueError, IndexError):
    """softmaxloss's ValueError that is also the IndexError PyTorch raises for it."""


class _TorchRuntimeError(ValueError, RuntimeError):
    """softmaxloss's ValueError that is also the RuntimeError PyTorch raises for it."""


def _with_torch(error: ValueError, kind: type[ValueError], torch_message: str) -> ValueError:
    return kind(f"{error} [PyTorch: {torch_message}]")


_TYPE_NAMES = {
    torch.float16: "Half", torch.bfloat16: "BFloat16", torch.float32: "Float", torch.float64: "Double",
    torch.int8: "Char", torch.int16: "Short", torch.int32: "Int", torch.int64: "Long", torch.uint8: "Byte",
}


def _probabilities_only_as_floats(x: np.ndarray, t: np.ndarray) -> None:
    """PyTorch's rule: a floating-point target holds class probabilities (the NumPy API
    also takes whole-number floats of the rows' shape as class indices; torch does not)."""
    if t.dtype.kind == "f" and t.shape != x.shape:
        raise ValueError(f"target of probabilities has shape {t.shape}; it must have the logits' shape {x.shape}")


def _as_torch_error(error: ValueError, input: torch.Tensor, target: torch.Tensor,
                    weight: torch.Tensor | None, ignore_index: int | None) -> ValueError:
    """The facade's ValueError for these arguments (which check failed: its message) as
    the exception PyTorch raises for them, with PyTorch's message; others as they are."""
    message = str(error)
    x_shape, t_shape = list(input.shape), list(target.shape)
    name = _TYPE_NAMES.get(target.dtype, str(target.dtype))
    torch_error: tuple[type[ValueError], str] | None = None
    if message.startswith("label_smoothing"):
        torch_error = _TorchRuntimeError, "label_smoothing must be between 0.0 and 1.0."
    elif message.startswith("reduction"):
        torch_error = ValueError, "not a valid value for reduction"
    elif message.startswith("target of probabilities has shape"):
        # PyTorch takes a target of another shape than the input's for class indices
        torch_error = _TorchRuntimeError, f"expected target dtype to be Long or Byte, but got {name}"
    elif message.startswith("ignore_index applies to class-index targets only"):
        torch_error = _TorchRuntimeError, "ignore_index is not supported for floating point target"
    elif message.startswith("target of class indices has shape"):
        row_shape = x_shape[:1] + x_shape[2:] if input.dim() >= 2 else []
        if t_shape == x_shape:
            torch_error = _TorchRuntimeError, f"Expected floating point type for target with class probabilities, got {name}"
        elif input.dim() >= 2 and target.dim() >= 1 and t_shape[0] != x_shape[0]:
            torch_error = ValueError, f"Expected input batch_size ({x_shape[0]}) to match target batch_size ({t_shape[0]})."
        else:
            torch_error = _TorchRuntimeError, f"Expected target size {row_shape}, got {t_shape}"
    elif message.startswith("weight must have one entry per class") and weight is not None:
        torch_error = _TorchRuntimeError, (f"weight tensor should be defined either for all {x_shape[_class_axis(input)]} "
                                           f"classes or no classes but got weight tensor of shape: {list(weight.shape)}")
    return error if torch_error is None else _with_torch(error, *torch_error)


def _out_of_bounds(error: ValueError, target: torch.Tensor, n_classes: int, ignore_index: int | None) -> ValueError:
    """The kernel's ValueError for a class index out of range (the facade's message) as
    PyTorch's IndexError too; other errors as they are."""
    if target.dtype.is_floating_point:
        return error
    flat = target.reshape(-1).long()
    bad = (flat < 0) | (flat >= n_classes)
    if ignore_index is not None:
        bad &= flat != ignore_index
    if not bool(bad.any()):
        return error
    where = int(bad.nonzero()[0, 0])
    value = int(flat[where])
    if ignore_index is None:  # the facade was told an ignore_index no target can equal
        position = tuple(int(i) for i in np.unravel_index(where, tuple(target.shape)))
        error = ValueError(f"target value {value} at position {position} is out of range for "
                           f"{n_classes} classes: expected 0 <= target < {n_classes}")
    return _with_torch(error, _TorchIndexError, f"Target {value} is out of bounds.")


def _torch_error(error: ValueError, input: torch.Tensor, target: torch.Tensor,
                 weight: torch.Tensor | None, ignore_index: int | None) -> ValueError:
    """A ValueError of the facade's, for arguments or a class out of range, as PyTorch's type."""
    mapped = _as_torch_error(error, input, target, weight, ignore_index)
    if mapped is error:
        mapped = _out_of_bounds(error, target, input.shape[_class_axis(input)], ignore_index)
    return mapped


# ---- conversions ---------------------------------------------------------------------

def _class_axis(input: torch.Tensor) -> int:
    return 1 if input.dim() >= 2 else 0


def _on_cpu(tensor: torch.Tensor, name: str) -> None:
    if not tensor.is_cpu:
        raise ValueError(
            f"softmaxloss.torch computes on the CPU; {name} is on device "
            f"'{tensor.device}'. Move it with .cpu(), or use "
            "torch.nn.functional.cross_entropy on that device"
        )


@functools.cache
def _bfloat16() -> np.dtype[Any] | None:
    """ml_dtypes.bfloat16, or None when ml_dtypes is not installed."""
    try:
        return bfloat16_dtype()
    except ImportError:
        return None


def _zero_copy(dtype: torch.dtype) -> bool:
    """Whether tensors of `dtype` reach NumPy as views of their memory: all but bfloat16
    without ml_dtypes (torch refuses `.numpy()` for bfloat16; its uint16 bits are viewed)."""
    return dtype != torch.bfloat16 or _bfloat16() is not None


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A NumPy view of `tensor`'s memory (bfloat16 as ml_dtypes.bfloat16; a float32 copy
    without ml_dtypes)."""
    t = tensor.detach()
    if not _zero_copy(t.dtype):
        t = t.float()
    if t.is_neg():  # a lazily negated view (torch's neg bit): NumPy needs the values
        t = t.resolve_neg()
    if t.dtype == torch.bfloat16:
        bfloat16: np.ndarray = t.view(torch.uint16).numpy().view(_bfloat16())
        return bfloat16
    array: np.ndarray = t.numpy()
    return array


def _tensor(array: np.ndarray) -> torch.Tensor:
    """torch.from_numpy, also for an ml_dtypes.bfloat16 array (through its uint16 bits)."""
    if is_bfloat16(array.dtype):
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _check_tensors(input: Any, target: Any, weight: Any, sample_weight: Any) -> None:
    """Types, devices and dtypes, before anything else (TypeError / ValueError)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    _on_cpu(input, "input")
    if input.dtype not in _NATIVE and input.dtype not in _UPCAST:
        raise TypeError(
            f"input has dtype {input.dtype}; softmaxloss.torch computes float32 and "
            "float64 natively and float16/bfloat16 in float32"
        )
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    _on_cpu(target, "target")
    if not (target.dtype.is_floating_point or target.dtype in _INDEX_DTYPES):
        raise TypeError(
            f"target has dtype {target.dtype}; expected integer class indices or floating "
            "point class probabilities"
        )
    for name, tensor in (("weight", weight), ("sample_weight", sample_weight)):
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(tensor).__name__}")
        _on_cpu(tensor, name)
        if tensor.is_complex() or tensor.dtype == torch.bool:
            raise TypeError(f"{name} has dtype {tensor.dtype}, which softmaxloss.torch does not accept")


def _abstract(tensor: torch.Tensor | None) -> np.ndarray | None:
    """A zero-strided NumPy stand-in of the tensor's shape and kind of dtype, for the
    facade's checks: no memory, no values (indices 0 are valid classes)."""
    if tensor is None:
        return None
    dtype = np.float64 if tensor.dtype.is_floating_point else np.int64
    return np.broadcast_to(np.zeros((), dtype), tuple(int(n) for n in tensor.shape))


def _facade_ignore_index(ignore_index: int | None) -> int:
    # None: no row is ignored; the facade ignores none for a value no target can hold.
    return 2**63 if ignore_index is None else ignore_index


def _check_call(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                sample_weight: torch.Tensor | None, ignore_index: int | None, reduction: str,
                label_smoothing: float, z_loss: float, softcap: float | None = None) -> None:
    """The facade's checks of shapes and options (its messages, PyTorch's exception
    types), before any work; skipped for symbolic shapes (checked when the kernel runs)."""
    tensors = (input, target, weight, sample_weight)
    if not all(isinstance(n, int) for t in tensors if t is not None for n in t.shape):
        return
    try:
        check_loss_args(
            _abstract(input), _abstract(target),
            dict(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                 ignore_index=_facade_ignore_index(ignore_index), softcap=softcap),
            axis=_class_axis(input), weight=_abstract(weight), sample_weight=_abstract(sample_weight),
            check_range=False,
        )
    except ValueError as error:
        raise _as_torch_error(error, input, target, weight, ignore_index) from None


def _checked_options(reduction: Any, label_smoothing: Any, z_loss: Any, ignore_index: Any,
                     softcap: Any = None) -> LossOptions:
    try:
        return LossOptions.checked(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                                   ignore_index=ignore_index, softcap=softcap)
    except ValueError as error:
        if str(error).startswith("label_smoothing"):
            raise _with_torch(error, _TorchRuntimeError, "label_smoothing must be between 0.0 and 1.0. "
                              f"Got: {label_smoothing}") from None
        if str(error).startswith("reduction"):
            raise _with_torch(error, ValueError, f"{reduction} is not a valid value for reduction") from None
        raise


def _legacy_reduction(size_average: Any, reduce: Any, reduction: str) -> str:
    if size_average is None and reduce is None:
        return reduction
    result: str = torch.nn._reduction.legacy_get_string(size_average, reduce)  # warns, as PyTorch
    return result


# ---- the op ---------------------------------------------------------------------------

_LIBRARY = torch.library.Library("softmaxloss", "FRAGMENT")  # kept: deleting it unregisters
_LIBRARY.define(
    "cross_entropy(Tensor input, Tensor target, Tensor? weight, Tensor? sample_weight, "
    "int? ignore_index, str reduction, float label_smoothing, float z_loss, float? softcap, "
    "int n_threads, bool with_grad) -> (Tensor loss, Tensor grad)"
)
_OP = torch.ops.softmaxloss.cross_entropy.default


def _cpu_kernel(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                sample_weight: torch.Tensor | None, ignore_index: int | None, reduction: str,
                label_smoothing: float, z_loss: float, softcap: float | None, n_threads: int,
                with_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused kernel on zero-copy views: (loss, gradient or an empty tensor). The
    gradient is written into a new C-contiguous tensor (what the fake kernel promises).
    The facade checks every argument before any work; its ValueErrors are given
    PyTorch's types here."""
    keywords: dict[str, Any] = dict(
        axis=_class_axis(input),
        weight=None if weight is None else _numpy(weight),
        sample_weight=None if sample_weight is None else _numpy(sample_weight),
        ignore_index=_facade_ignore_index(ignore_index), reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        n_threads=n_threads if n_threads > 0 else torch.get_num_threads(),
    )
    x, t = _numpy(input), _numpy(target)
    try:
        _probabilities_only_as_floats(x, t)
        if with_grad:
            grad = torch.empty(input.shape, dtype=input.dtype if _zero_copy(input.dtype) else torch.float32)
            loss, _ = _np_cross_entropy_with_grad(x, t, out=_numpy(grad), **keywords)
            grad = grad.to(input.dtype)
        else:
            loss = _np_cross_entropy(x, t, **keywords)
            grad = input.new_empty((0,))
    except ValueError as error:
        raise _torch_error(error, input, target, weight, ignore_index) from None
    return _tensor(np.asarray(loss)).to(input.dtype).contiguous(), grad


_LIBRARY.impl("cross_entropy", _cpu_kernel, "CPU")


def _loss_shape(shape: Any, reduction: str) -> list[Any]:
    """The loss's shape for logits of shape `shape`: the row shape for "none"."""
    if reduction != "none" or len(shape) < 2:
        return []
    return [shape[0], *shape[2:]]


def _fake_kernel(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                 sample_weight: torch.Tensor | None, ignore_index: int | None, reduction: str,
                 label_smoothing: float, z_loss: float, softcap: float | None, n_threads: int,
                 with_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    _check_call(input, target, weight, sample_weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    grad = input.new_empty(input.shape) if with_grad else input.new_empty((0,))
    return input.new_empty(_loss_shape(input.shape, reduction)), grad


torch.library.register_fake("softmaxloss::cross_entropy", _fake_kernel, lib=_LIBRARY)


def _vmap_rule(info: Any, in_dims: tuple[Any, ...], input: torch.Tensor, target: torch.Tensor,
               weight: torch.Tensor | None, sample_weight: torch.Tensor | None,
               *options: Any) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[int, int]]:
    """One kernel call per batch element (as JAX's "sequential" callbacks)."""
    tensors = (input, target, weight, sample_weight)

    def element(b: int) -> list[Any]:
        return [t if t is None or d is None else t.select(d, b) for t, d in zip(tensors, in_dims)]

    if info.batch_size == 0:  # nothing to call the kernel on: the shapes of no results
        shape = list(input.shape)
        if in_dims[0] is not None:
            del shape[in_dims[0]]
        grad_shape = shape if options[-1] else [0]
        return (input.new_empty([0, *_loss_shape(shape, options[1])]), input.new_empty([0, *grad_shape])), (0, 0)
    results = [_OP(*element(b), *options) for b in range(info.batch_size)]
    return (torch.stack([r[0] for r in results]), torch.stack([r[1] for r in results])), (0, 0)


torch.library.register_vmap("softmaxloss::cross_entropy", _vmap_rule, lib=_LIBRARY)


# ---- derivatives, in torch ops --------------------------------------------------------

def _product(coefficient: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """coefficient * value, 0 where the coefficient is 0 (a term the loss does not have:
    no 0 * inf = NaN from the log-probability of a class that is not the target)."""
    return torch.where(coefficient == 0, 0, coefficient * value)


class _Terms:
    """The loss's pieces as torch ops of the saved tensors, class dimension last: each
    row n has p = softmax(x), lse = logsumexp(x), nl = -log_softmax(x), the smoothed
    target y' ((1-eps) y + eps/C; for class indices the smoothed one-hot, 0 in ignored
    rows), q = w * y', Q = sum_c q, sample weight s and the mean's normaliser D (1 for
    "sum" and "none"):
        loss_n = s_n (sum_c q_nc nl_nc + z lse_n^2) / D
        grad_n = s_n ((Q_n + 2 z lse_n) p - q_n) / D          (the kernel's gradient)
        H_n v  = a_n (p * v - p (p.v)) + b_n p (p.v),  a_n = s_n (Q_n + 2 z lse_n) / D,
                 b_n = 2 z s_n / D                           (its derivative, symmetric)
    (z: z_loss, 0 in ignored rows). D depends on the weights: for class indices
    D = sum of s_n w[y_n] over kept rows; for probabilities the number of rows or sum(s)."""

    def __init__(self, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                 sample_weight: torch.Tensor | None, ignore_index: int | None, reduction: str,
                 label_smoothing: float, z_loss: float) -> None:
        self.dtype = torch.float32 if x.dtype in _UPCAST else x.dtype
        self.axis = _class_axis(x)
        self.x = self.last(x)
        self.n_classes = n_classes = self.x.shape[-1]
        self.eps, self.reduction, self.mean = label_smoothing, reduction, reduction == "mean"
        self.w = None if weight is None else weight.to(self.dtype)
        self.s = None if sample_weight is None else sample_weight.to(self.dtype)
        self.probabilities = target.dtype.is_floating_point
        eps = label_smoothing
        self.keep: torch.Tensor | None = None
        if self.probabilities:
            y = self.last(target)
            self.ybar = y if eps == 0 else (1 - eps) * y + eps / n_classes
            self.zk: Any = z_loss
        else:
            keep = kept_rows(torch, target, ignore_index)
            self.keep = torch.ones(target.shape, dtype=torch.bool) if keep is None else keep
            self.y = torch.where(self.keep, target, 0).long()
            self.onehot = (self.y.unsqueeze(-1) == torch.arange(n_classes)).to(self.dtype)
            kept = self.keep.to(self.dtype)
            self.ybar = (self.onehot if eps == 0 else (1 - eps) * self.onehot + eps / n_classes) * kept.unsqueeze(-1)
            self.zk = z_loss * kept
        self.z = z_loss
        self.q = self.ybar if self.w is None else self.ybar * self.w
        self.Q = self.q.sum(-1)
        self.D: Any = 1.0
        if self.mean:
            if self.probabilities:
                self.D = self.x[..., 0].numel() if self.s is None else self.s.sum()
            else:
                self.D = self.row_weight().sum()
        self.sD: Any = (1.0 if self.s is None else self.s) / self.D

    def last(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.dtype).movedim(self.axis, -1)

    def back(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.movedim(-1, self.axis)

    def row_weight(self) -> torch.Tensor:
        """s_n w[y_n] for kept rows, 0 for ignored ones (class indices): D's terms."""
        assert self.keep is not None
        weight = self.keep.to(self.dtype)
        if self.s is not None:
            weight = weight * self.s
        if self.w is not None:
            weight = weight * self.weight_of_target()
        return weight

    def weight_of_target(self) -> torch.Tensor:
        """w[y_n] (index_select: a 0-d y is no Python index, under tracing too)."""
        assert self.w is not None
        return self.w.index_select(0, self.y.reshape(-1)).reshape(self.y.shape)

    @functools.cached_property
    def lse(self) -> torch.Tensor:
        return torch.logsumexp(self.x, -1)

    @functools.cached_property
    def p(self) -> torch.Tensor:
        return torch.softmax(self.x, -1)

    @functools.cached_property
    def nl(self) -> torch.Tensor:
        return self.lse.unsqueeze(-1) - self.x

    def qnl(self, q: torch.Tensor) -> torch.Tensor:
        return q * self.nl if self.probabilities else _product(q, self.nl)

    def scale(self) -> torch.Tensor:
        """Q + 2 z lse per row."""
        return self.Q if self.z == 0 else self.Q + 2 * self.zk * self.lse

    def row_loss(self) -> torch.Tensor:
        """sum_c q nl + z lse^2 per row (the loss without s / D)."""
        r = self.qnl(self.q).sum(-1)
        return r if self.z == 0 else r + self.zk * self.lse**2

    def gradient(self) -> torch.Tensor:
        """The kernel's gradient, in torch ops (when the kernel was not asked for it)."""
        g = self.sD_rows().unsqueeze(-1) * (self.scale().unsqueeze(-1) * self.p - self.q)
        return self.back(g)

    def sD_rows(self) -> torch.Tensor:
        sD = self.sD if isinstance(self.sD, torch.Tensor) else torch.tensor(self.sD, dtype=self.dtype)
        return sD * torch.ones(self.Q.shape, dtype=self.dtype)

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v, v of the logits' layout (class dimension last here)."""
        a = self.sD_rows() * self.scale()
        if self.keep is not None:  # an ignored row has no curvature (also when D is 0)
            a = torch.where(self.keep, a, 0)
        pv = (self.p * v).sum(-1, keepdim=True)
        h = a.unsqueeze(-1) * self.p * (v - pv)
        if self.z != 0:
            b = 2 * self.sD_rows() * self.zk
            if self.keep is not None:
                b = torch.where(self.keep, b, 0)
            h = h + b.unsqueeze(-1) * self.p * pv
        return h

    def normaliser_weight(self) -> torch.Tensor:
        """dD/dw_c (class indices, "mean"): the sum of s_n over kept rows of class c."""
        assert self.keep is not None
        s = self.keep.to(self.dtype) if self.s is None else torch.where(self.keep, self.s, 0)
        return (self.onehot * s.unsqueeze(-1)).reshape(-1, self.n_classes).sum(0)

    def normaliser_sample_weight(self) -> Any:
        """dD/ds_n ("mean"): w[y_n] over kept rows (class indices), 1 (probabilities)."""
        if self.probabilities:
            return 1.0
        assert self.keep is not None
        w = self.keep.to(self.dtype)
        return w if self.w is None else w * self.weight_of_target()

    def rows_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.reshape(-1, self.n_classes).sum(0)

    # reverse mode, first order: d(cotangent . loss) / d(target, weight, sample_weight)
    def loss_vjp(self, cotangent: torch.Tensor, loss: torch.Tensor,
                 want: tuple[bool, bool, bool]) -> tuple[torch.Tensor | None, ...]:
        g = cotangent.to(self.dtype)
        c = g / self.D if self.mean else g  # d(cotangent . loss) / d(row loss without D)
        u = c if self.s is None else c * self.s
        if self.keep is not None:
            u = torch.where(self.keep, u, 0)
        m = -g * loss.to(self.dtype) / self.D if self.mean else None  # d(...) / dD
        dt = dw = ds = None
        if want[0]:  # probability targets only
            dt = torch.zeros_like(self.x) if self.eps == 1 else \
                (1 - self.eps) * u.unsqueeze(-1) * (self.nl if self.w is None else self.w * self.nl)
            dt = self.back(dt)
        if want[1]:
            dw = self.rows_sum(u.unsqueeze(-1) * self.qnl(self.ybar))
            if m is not None and not self.probabilities:
                dw = dw + _product(self.normaliser_weight(), m)
        if want[2]:
            ds = c * self.row_loss()
            if m is not None:
                ds = ds + _product(torch.as_tensor(self.normaliser_sample_weight(), dtype=self.dtype), m)
            if self.keep is not None:
                ds = torch.where(self.keep, ds, 0)
        return dt, dw, ds

    # reverse mode, second order: d(v . grad) / d(logits, target, weight, sample_weight)
    def gradient_vjp(self, v: torch.Tensor, grad: torch.Tensor,
                     want: tuple[bool, bool, bool, bool]) -> tuple[torch.Tensor | None, ...]:
        v = self.last(v)
        dx = dt = dw = ds = None
        if want[0]:
            dx = self.back(self.hvp(v))
        if not any(want[1:]):
            return dx, dt, dw, ds
        pv = (self.p * v).sum(-1, keepdim=True)
        gv = (grad.to(self.dtype) * self.back(v)).sum() if self.mean else None  # sum(grad * v)
        sD = self.sD_rows().unsqueeze(-1)
        if want[1]:
            dt = self.back((1 - self.eps) * sD * (pv - v) * (1.0 if self.w is None else self.w))
        if want[2]:
            dw = self.rows_sum(sD * self.ybar * (pv - v))
            if gv is not None and not self.probabilities:
                dw = dw - _product(self.normaliser_weight(), gv / self.D)
        if want[3]:
            ds = (self.scale() * pv.squeeze(-1) - (self.q * v).sum(-1)) / self.D
            if gv is not None:
                ds = ds - _product(torch.as_tensor(self.normaliser_sample_weight(), dtype=self.dtype), gv / self.D)
            if self.keep is not None:
                ds = torch.where(self.keep, ds, 0)
        return dx, dt, dw, ds

    # forward mode: the tangents of (loss, grad)
    def tangents(self, dx: torch.Tensor | None, dt: torch.Tensor | None, dw: torch.Tensor | None,
                 ds: torch.Tensor | None, loss: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.last(grad)
        rows = torch.zeros(self.Q.shape, dtype=self.dtype)
        dgrad = torch.zeros_like(self.x)
        if dx is not None:
            dx = self.last(dx)
            rows = rows + (g * dx).sum(-1)
            dgrad = dgrad + self.hvp(dx)
        dq: Any = None
        if dt is not None and self.probabilities:
            dq = (1 - self.eps) * self.last(dt)
            if self.w is not None:
                dq = dq * self.w
        if dw is not None:
            dyw = self.ybar * dw.to(self.dtype)
            dq = dyw if dq is None else dq + dyw
        if dq is not None:
            rows = rows + self.sD_rows() * self.qnl(dq).sum(-1)
            dgrad = dgrad + self.sD_rows().unsqueeze(-1) * (dq.sum(-1, keepdim=True) * self.p - dq)
        if ds is not None:
            ds = ds.to(self.dtype)
            if self.keep is not None:
                ds = torch.where(self.keep, ds, 0)
            rows = rows + ds / self.D * self.row_loss()
            dgrad = dgrad + (ds / self.D).unsqueeze(-1) * (self.scale().unsqueeze(-1) * self.p - self.q)
        dloss = rows if self.reduction == "none" else rows.sum()
        if self.mean:  # the normaliser's tangent
            dD: Any = None
            if self.probabilities:
                dD = None if ds is None or self.s is None else ds.sum()
            else:
                parts = []
                if ds is not None:
                    parts.append((ds * self.normaliser_sample_weight()).sum())
                if dw is not None:
                    parts.append((self.normaliser_weight() * dw.to(self.dtype)).sum())
                dD = sum(parts) if parts else None
            if dD is not None:
                dloss = dloss - loss.to(self.dtype) * dD / self.D
                dgrad = dgrad - g * (dD / self.D)
        return dloss.reshape(loss.shape), self.back(dgrad)


class _CappedTerms:
    """_Terms with softcap=cap: those of the capped logits c = cap tanh(x / cap) (`base`),
    carried back to the logits x by the chain rule, with the slope c' = sech^2(x / cap)
    (formed as 4 t / (1 + t)^2, t = e^(-2|x / cap|), as the kernel does) and its derivative
    c'' = -(2 / cap) tanh(x / cap) c':
        grad_x = c' grad_c,    H_x v = c' H_c (c' v) + c'' grad_c v
    (torch ops, for the derivatives beyond the first: double backward, forward mode, the
    targets' and weights' gradients). The loss's derivatives with respect to the targets
    and weights are the capped problem's own."""

    def __init__(self, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                 sample_weight: torch.Tensor | None, ignore_index: int | None, reduction: str,
                 label_smoothing: float, z_loss: float, softcap: float) -> None:
        dtype = torch.float32 if x.dtype in _UPCAST else x.dtype
        u = x.to(dtype) / softcap
        t = torch.exp(-2 * u.abs())
        self.slope = 4 * t / (1 + t) ** 2
        self.curvature = (-2 / softcap) * torch.tanh(u) * self.slope
        self.base = _Terms(softcap * torch.tanh(u), target, weight, sample_weight, ignore_index, reduction,
                           label_smoothing, z_loss)

    def gradient(self) -> torch.Tensor:
        return self.base.gradient() * self.slope

    def loss_vjp(self, cotangent: torch.Tensor, loss: torch.Tensor,
                 want: tuple[bool, bool, bool]) -> tuple[torch.Tensor | None, ...]:
        return self.base.loss_vjp(cotangent, loss, want)

    def gradient_vjp(self, v: torch.Tensor, grad: torch.Tensor,
                     want: tuple[bool, bool, bool, bool]) -> tuple[torch.Tensor | None, ...]:
        v = v.to(self.slope.dtype)
        grad_c = self.base.gradient()
        dx, dt, dw, ds = self.base.gradient_vjp(v * self.slope, grad_c, want)
        if dx is not None:
            dx = dx * self.slope + v * grad_c * self.curvature
        return dx, dt, dw, ds

    def tangents(self, dx: torch.Tensor | None, dt: torch.Tensor | None, dw: torch.Tensor | None,
                 ds: torch.Tensor | None, loss: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grad_c = self.base.gradient()
        dxc = None if dx is None else dx.to(self.slope.dtype) * self.slope
        dloss, dgrad_c = self.base.tangents(dxc, dt, dw, ds, loss, grad_c)
        dgrad = dgrad_c * self.slope
        if dx is not None:
            dgrad = dgrad + grad_c * self.curvature * dx.to(self.slope.dtype)
        return dloss, dgrad


def _terms(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
           sample_weight: torch.Tensor | None, ignore_index: int | None, reduction: str,
           label_smoothing: float, z_loss: float, softcap: float | None) -> _Terms | _CappedTerms:
    if softcap is None:
        return _Terms(input, target, weight, sample_weight, ignore_index, reduction, label_smoothing, z_loss)
    return _CappedTerms(input, target, weight, sample_weight, ignore_index, reduction, label_smoothing,
                        z_loss, softcap)


def _eager(tensor: torch.Tensor) -> bool:
    """A plain tensor in plain eager mode: its value may be read (no tracing, no
    torch.func wrapper or legacy vmap batched tensor, no fake or functional tensor)."""
    return (
        type(tensor) is torch.Tensor
        and not torch._C._functorch.is_functorch_wrapped_tensor(tensor)
        and torch._C._dispatch_keys(tensor).has(torch._C.DispatchKey.CPU)
        and not torch.compiler.is_compiling()
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch.jit.is_tracing()
    )


def _scaled_gradient(grad: torch.Tensor, cotangent: torch.Tensor, target: torch.Tensor,
                     ignore_index: int | None, per_row: bool, plain: torch.Tensor | None = None) -> torch.Tensor:
    """The saved gradient times the upstream gradient (per row for "none"), with ignored
    rows' upstream taken as 0. In eager mode: the saved gradient itself for an upstream
    of 1 (loss.backward(): no copy, no pass; `plain`, the gradient as a tensor that is
    not the op's output, unless the result is to be differentiated), and no mask for a
    finite upstream."""
    axis = 1 if grad.dim() >= 2 else 0
    if _eager(cotangent):
        if per_row:
            finite = bool(torch.isfinite(cotangent).all())
        else:
            upstream = cotangent.item()
            if upstream == 1.0 and not torch.is_grad_enabled():
                return grad if plain is None else plain
            if upstream == 1.0 and not cotangent.requires_grad:
                return grad  # create_graph: differentiable (and never taken as a leaf's .grad)
            finite = math.isfinite(upstream)
        if finite:
            return grad * (cotangent.unsqueeze(axis) if per_row else cotangent).to(grad.dtype)
    keep = kept_rows(torch, target, ignore_index)
    if per_row:
        cotangent = cotangent.unsqueeze(axis)
    if keep is not None:
        keep = keep.unsqueeze(axis)
    return scaled_gradient(torch, grad, cotangent.to(grad.dtype), keep)


def _transforms() -> list[Any]:
    """The kinds of the active torch.func transforms (torch.func's own interpreter stack)."""
    return [i.key() for i in torch._functorch.pyfunctorch.retrieve_all_functorch_interpreters()]


_NESTED_FORWARD = (
    "softmaxloss.torch.cross_entropy under nested forward-mode torch.func transforms (jacfwd "
    "of jacfwd, jvp of jvp) is not supported: PyTorch gives zeros for the second-order "
    "tangent of an autograd.Function's jvp rule. Use torch.func.hessian (forward over "
    "reverse) or jacrev, or torch.nn.functional.cross_entropy there"
)


def _saved(ctx: Any, count: int) -> list[Any]:
    """The first `count` saved arguments, None where None was saved."""
    tensors = iter(ctx.saved_tensors)
    return [next(tensors) if present else None for present in ctx.present[:count]]


_FUNCTIONALIZED_DERIVATIVE = (
    "softmaxloss.torch.cross_entropy under torch.func.functionalize together with grad, vjp, "
    "jacrev, jacfwd, jvp or hessian is not supported: PyTorch has no functionalize rule for an "
    "autograd.Function's derivatives (functionalize alone, and each of the others without it, "
    "work); use torch.nn.functional.cross_entropy there"
)


class _CrossEntropyFunction(torch.autograd.Function):  # type: ignore[misc, unused-ignore]
    """The op's autograd: forward runs the op's kernel (loss, gradient); backward and jvp
    are torch ops of the saved tensors (see _Terms), themselves differentiable."""

    generate_vmap_rule = True  # vmap of forward is the op's vmap rule; of the rest, torch ops

    @staticmethod
    def forward(*args: Any) -> Any:  # type: ignore[override, unused-ignore]
        with torch._C._AutoDispatchBelowAutograd():
            return _OP(*args)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:  # type: ignore[override, unused-ignore]
        ctx.set_materialize_grads(False)
        input, target, weight, sample_weight, *options = inputs
        ctx.options = options  # ignore_index, reduction, label_smoothing, z_loss, softcap, n_threads, with_grad
        saved = (input, target, weight, sample_weight, *output)
        # In eager mode also the gradient as a tensor that is not an output: the one
        # loss.backward() returns (autograd would take an output's memory for a leaf's
        # .grad and then accumulate into it, over the saved gradient).
        plain = output[1].detach() if options[-1] and _eager(output[1]) else None
        # Only tensors are saved (torch.func's vmap of a Function does not take None).
        ctx.present = tuple(t is not None for t in (*saved, plain))
        ctx.save_for_backward(*(t for t in (*saved, plain) if t is not None))
        ctx.save_for_forward(*(t for t in saved if t is not None))

    @staticmethod
    def backward(ctx: Any, d_loss: torch.Tensor | None, d_grad: torch.Tensor | None) -> tuple[Any, ...]:  # type: ignore[override, unused-ignore]
        input, target, weight, sample_weight, loss, grad, plain = _saved(ctx, 7)
        ignore_index, reduction, label_smoothing, z_loss, softcap, n_threads, with_grad = ctx.options
        want = tuple(ctx.needs_input_grad[:4])
        terms: _Terms | _CappedTerms | None = None

        def pieces() -> _Terms | _CappedTerms:
            nonlocal terms
            if terms is None:
                terms = _terms(input, target, weight, sample_weight, ignore_index, reduction,
                               label_smoothing, z_loss, softcap)
            return terms

        if not with_grad:  # called for the loss only: `grad` is an empty placeholder
            d_grad = None
            if want[0] and d_loss is not None:
                grad = _OP(input, target, weight, sample_weight, ignore_index, reduction, label_smoothing,
                           z_loss, softcap, n_threads, True)[1]
        results: list[Any] = [None] * 4
        if d_loss is not None:
            if want[0]:
                per_row = reduction == "none" and input.dim() >= 2
                results[0] = _scaled_gradient(grad, d_loss, target, ignore_index, per_row, plain)
            if any(want[1:]):
                results[1:] = pieces().loss_vjp(d_loss, loss, (want[1], want[2], want[3]))
        if d_grad is not None and any(want):
            second = pieces().gradient_vjp(d_grad, grad, (want[0], want[1], want[2], want[3]))
            results = [a if b is None else b if a is None else a + b for a, b in zip(results, second)]
        for i, tensor in enumerate((input, target, weight, sample_weight)):
            if results[i] is not None:
                results[i] = results[i].to(tensor.dtype)
        return (*results, None, None, None, None, None, None, None)

    @staticmethod
    def jvp(ctx: Any, d_input: Any, d_target: Any, d_weight: Any, d_sample_weight: Any,  # type: ignore[override, unused-ignore]
            *_: Any) -> tuple[torch.Tensor, torch.Tensor]:
        input, target, weight, sample_weight, loss, grad = _saved(ctx, 6)
        ignore_index, reduction, label_smoothing, z_loss, softcap, n_threads, with_grad = ctx.options
        terms = _terms(input, target, weight, sample_weight, ignore_index, reduction, label_smoothing, z_loss,
                       softcap)
        full_grad = grad if with_grad else terms.gradient()
        d_target = d_target if target.dtype.is_floating_point else None
        d_loss, d_grad = terms.tangents(d_input, d_target, d_weight, d_sample_weight, loss, full_grad)
        if not with_grad:
            d_grad = torch.zeros_like(grad)
        return d_loss.to(loss.dtype), d_grad.to(grad.dtype)


# autograd.Function.apply without its per-call inspect.signature binding of the arguments
# (forward takes *args; no defaults to fill): what it calls when no torch.func transform
# is active.
_apply_function = super(torch.autograd.Function, _CrossEntropyFunction).apply


def _autograd_kernel(*args: Any) -> Any:
    tensors = [t for t in args[:4] if t is not None]
    if (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)) or (
        forward_ad._current_level >= 0 and any(forward_ad.unpack_dual(t).tangent is not None for t in tensors)
    ):
        if torch._C._are_functorch_transforms_active():
            return tuple(_CrossEntropyFunction.apply(*args))
        return tuple(_apply_function(*args))
    with torch._C._AutoDispatchBelowAutograd():
        return _OP(*args)


_LIBRARY.impl("cross_entropy", _autograd_kernel, "Autograd")


# ---- inplace_grad=True: eager only ----------------------------------------------------

_DOUBLE_BACKWARD = (
    "softmaxloss.torch.cross_entropy(..., inplace_grad=True) is differentiable once only: "
    "double backward (create_graph=True through this loss) is not supported with the "
    "gradient written in place; pass inplace_grad=False for that"
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


def _check_eager_first_order(tensors: dict[str, torch.Tensor | None]) -> None:
    """inplace_grad=True: no torch.func transform, no forward-AD tangent, no gradient
    wanted for anything but the logits."""
    if torch._C._are_functorch_transforms_active():
        raise RuntimeError(
            "softmaxloss.torch.cross_entropy(..., inplace_grad=True) writes the gradient over "
            "the logits' storage, which torch.func transforms (grad, vjp, jacrev, jvp, vmap, "
            "functionalize, ...) do not allow; pass inplace_grad=False there"
        )
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if forward_ad.unpack_dual(tensor).tangent is not None:
            raise RuntimeError(
                f"{name} is a dual tensor with a forward-AD tangent: softmaxloss.torch.cross_entropy"
                "(..., inplace_grad=True) is reverse mode only; pass inplace_grad=False for "
                "forward-mode AD"
            )
        if name != "input" and tensor.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                f"softmaxloss.torch.cross_entropy(..., inplace_grad=True) differentiates the "
                f"logits only, and {name} requires grad; pass inplace_grad=False for its "
                f"gradient, or {name}.detach()"
            )


class _InplaceCrossEntropy(torch.autograd.Function):  # type: ignore[misc, unused-ignore]
    """Forward: the fused kernel writes the gradient over the logits' memory, which is
    saved. Backward: that gradient times grad_output."""

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
        loss, grad = _np_cross_entropy_with_grad(x, t, out=x if inplace else None, **options)
        grad_tensor = _tensor(grad)
        if grad_tensor.dtype != input.dtype:
            grad_tensor = grad_tensor.to(input.dtype)
        ctx.save_for_backward(grad_tensor, target)
        ctx.ignore_index = options["ignore_index"]
        ctx.per_row = options["reduction"] == "none" and input.dim() >= 2
        return _tensor(np.asarray(loss)).to(input.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override, unused-ignore]
        if torch.is_grad_enabled():
            raise RuntimeError(_DOUBLE_BACKWARD)
        grad, target = ctx.saved_tensors
        ignore_index = None if ctx.ignore_index > _INT64_MAX or ctx.ignore_index < _INT64_MIN else ctx.ignore_index
        return (_scaled_gradient(grad, grad_output, target, ignore_index, ctx.per_row), None, None, None, None, None)


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


def _eager_inplace_cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                           sample_weight: torch.Tensor | None, options: LossOptions,
                           n_threads: int) -> torch.Tensor:
    _check_eager_first_order(dict(input=input, target=target, weight=weight, sample_weight=sample_weight))
    _check_inplace(input)
    ignore_index = options.ignore_index if _INT64_MIN <= options.ignore_index <= _INT64_MAX else None
    keywords: dict[str, Any] = dict(
        axis=_class_axis(input),
        weight=None if weight is None else _numpy(weight),
        sample_weight=None if sample_weight is None else _numpy(sample_weight),
        ignore_index=options.ignore_index, reduction=options.reduction,
        label_smoothing=options.label_smoothing, z_loss=options.z_loss, softcap=options.softcap,
        n_threads=n_threads if n_threads > 0 else torch.get_num_threads(),
    )
    x, t = _numpy(input), _numpy(target)
    try:
        _probabilities_only_as_floats(x, t)
        if input.requires_grad and torch.is_grad_enabled():
            # In place only where x is input's own memory, as the kernel's output needs it.
            inplace = input.dtype in _NATIVE and input.is_contiguous()
            loss: torch.Tensor = _InplaceCrossEntropy.apply(input, x, target, t, keywords, inplace)
            if inplace:
                _Overwritten.apply(input)
            return loss
        value = _np_cross_entropy(x, t, **keywords)
    except ValueError as error:
        raise _torch_error(error, input, target, weight, ignore_index) from None
    return _tensor(np.asarray(value)).to(input.dtype)


# Under torch.compile a graph break: with fullgraph=True an error giving this reason.
_inplace_cross_entropy: Callable[..., torch.Tensor] = torch.compiler.disable(
    _eager_inplace_cross_entropy,
    reason="softmaxloss.torch.cross_entropy(..., inplace_grad=True) writes the gradient over the "
    "logits' storage and runs eagerly only; pass inplace_grad=False under torch.compile(fullgraph=True)",
)


# ---- the public functions -------------------------------------------------------------

def _op_arguments(ignore_index: Any, n_threads: Any) -> tuple[int | None, int]:
    index = operator.index(ignore_index)
    threads = check_n_threads(n_threads)
    return (index if _INT64_MIN <= index <= _INT64_MAX else None), (0 if threads is None else threads)


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    sample_weight: torch.Tensor | None = None,
    inplace_grad: bool = False,
    n_threads: int | None = None,
    focal_gamma: float | None = None,
    return_lse: bool = False,
    return_entropy: bool = False,
    return_argmax: bool = False,
) -> Any:
    """`torch.nn.functional.cross_entropy`, computed by softmaxloss's fused kernel.

    input: (N, C), (N, C, d1, ...) or (C,) logits on the CPU (float32/float64; float16
    and bfloat16 computed in float32). target: class indices of shape (N,), (N, d1, ...)
    or (), or class probabilities of the input's shape. `weight` (C,), `size_average`
    and `reduce` (legacy, mapped to `reduction` as PyTorch maps them), `ignore_index`,
    `reduction` ("mean", "sum" or "none") and `label_smoothing` as in PyTorch, in its
    positional order. Keyword-only extras: `z_loss` (adds z_loss * logsumexp**2 per row),
    `softcap` (None, or a cap > 0: the loss of cap * tanh(input / cap), Gemma 2's
    soft-capped logits, formed inside the kernel's pass; its gradient exact),
    `sample_weight` (one weight per row, the target's row shape), `inplace_grad` (the
    forward pass may overwrite the logits with the gradient; eager, first order, logits
    only: see the module docstring), `n_threads` (None: torch.get_num_threads()).

    Returns the loss as a tensor of the input's dtype: a scalar, or per-row losses for
    reduction="none". Differentiable any number of times, in reverse and forward mode,
    under torch.func transforms and torch.compile, with respect to the input,
    probability targets, `weight` and `sample_weight`.

    `focal_gamma` (softmax focal loss) and `return_lse` / `return_entropy` /
    `return_argmax` (a `softmaxloss.CrossEntropyOutputs` of tensors: loss, grad=None, lse,
    entropy, argmax, n_correct), as in `softmaxloss.cross_entropy`: their own op
    (`_outputs_op`), differentiable once with respect to the input, through the loss and
    through lse and entropy; compiles with fullgraph=True. Not with `inplace_grad`.
    With `softcap`, all of them of the capped logits (their gradients times the slope).
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_tensors(input, target, weight, sample_weight)
    if (focal_gamma is not None or return_lse is not False or return_entropy is not False
            or return_argmax is not False):
        requested = check_return_flags(return_lse=return_lse, return_entropy=return_entropy,
                                       return_argmax=return_argmax)
        options = LossOptions.checked(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                                      ignore_index=ignore_index, softcap=softcap, focal_gamma=focal_gamma)
        if inplace_grad:
            raise ValueError("inplace_grad does not combine with focal_gamma or the return_* outputs")
        if options.focal_gamma is not None and target.dtype.is_floating_point:
            raise ValueError("focal_gamma applies to class-index targets only; got probability targets")
        return _cross_entropy_outputs(input, target, weight, sample_weight, options, requested, n_threads)
    if inplace_grad:
        options = _checked_options(reduction, label_smoothing, z_loss, ignore_index, softcap)
        return _inplace_cross_entropy(input, target, weight, sample_weight, options, _op_arguments(0, n_threads)[1])
    if not torch.compiler.is_compiling():  # compiled: the fake kernel checks them, once
        options = _checked_options(reduction, label_smoothing, z_loss, ignore_index, softcap)
        reduction, label_smoothing, z_loss = options.reduction, options.label_smoothing, options.z_loss
        softcap = options.softcap
    index, threads = _op_arguments(ignore_index, n_threads)
    args = (input, target, weight, sample_weight, index, reduction, float(label_smoothing), float(z_loss),
            None if softcap is None else float(softcap), threads)
    if torch._C._are_functorch_transforms_active():
        kinds = _transforms()
        jvp, grad = torch._C._functorch.TransformType.Jvp, torch._C._functorch.TransformType.Grad
        if kinds.count(jvp) > 1:
            raise NotImplementedError(_NESTED_FORWARD)
        if (jvp in kinds or grad in kinds) and torch._C._functorch.TransformType.Functionalize in kinds:
            raise NotImplementedError(_FUNCTIONALIZED_DERIVATIVE)
        if jvp in kinds or grad in kinds:
            # torch.func differentiates an autograd.Function called here (not from the
            # op's autograd kernel); vmap and functionalize alone take the op itself.
            loss: torch.Tensor = _CrossEntropyFunction.apply(*args, True)[0]
            return loss
    with_grad = bool(input.requires_grad) and torch.is_grad_enabled()
    result: torch.Tensor = torch.ops.softmaxloss.cross_entropy(*args, with_grad)[0]
    return result


class CrossEntropyLoss(nn.Module):  # type: ignore[misc, unused-ignore]
    """`torch.nn.CrossEntropyLoss`, computed by softmaxloss's fused kernel.

    The arguments are those of `cross_entropy`, in `torch.nn.CrossEntropyLoss`'s order
    (weight, size_average, ignore_index, reduce, reduction, label_smoothing); `weight`
    is registered as a buffer (it moves with `.to()` and is saved in the state dict), as
    in PyTorch. The options are checked here, at construction.
    `forward(input, target, sample_weight=None)`.
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = DEFAULT_IGNORE_INDEX,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        inplace_grad: bool = False,
        n_threads: int | None = None,
    ) -> None:
        super().__init__()
        reduction = _legacy_reduction(size_average, reduce, reduction)
        _checked_options(reduction, label_smoothing, z_loss, ignore_index, softcap)  # refuse bad options now
        check_n_threads(n_threads)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.inplace_grad = inplace_grad
        self.n_threads = n_threads

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        return cross_entropy(
            input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
            sample_weight=sample_weight, inplace_grad=self.inplace_grad, n_threads=self.n_threads,
        )

    def extra_repr(self) -> str:
        parts = [f"reduction={self.reduction!r}"]
        if self.ignore_index != DEFAULT_IGNORE_INDEX:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.softcap is not None:
            parts.append(f"softcap={self.softcap}")
        if self.inplace_grad:
            parts.append("inplace_grad=True")
        return ", ".join(parts)


# =========================================================================================
# linear_cross_entropy: the LM head's loss without its N x V logits (PyTorch's
# F.linear_cross_entropy). Its own op, torch.ops.softmaxloss.linear_cross_entropy; it
# shares with the cross-entropy above only the library, the conversions and the errors.
# =========================================================================================

from ._linear import _run as _linear_run  # noqa: E402
from ._validation import check_linear_cross_entropy_call  # noqa: E402
from torch.utils import _python_dispatch  # noqa: E402

_LINEAR_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class _LinearGemms:
    """The chunk loop's GEMMs in PyTorch (its BLAS: MKL on x86 builds), for
    softmaxloss._linear's loop, which runs the fused kernel on each chunk's logits in
    place, through a NumPy view of the logits buffer (zero-copy).

    float32 / float64 inputs are used as they are. bfloat16 / float16 ones are computed
    in float32: linear_weight converted once per call (a V x D float32 copy), each
    chunk of hidden as it is used; the logits are float32 (the kernel's dtype), dW is
    accumulated in float32 across the chunks (addmm_ into one V x D float32 buffer) and
    rounded to the weight's dtype once at the end, dH is rounded a chunk at a time.
    (PyTorch 2.13's CPU build has no bf16 x bf16 -> float32 GEMM, and its bf16 and f16
    GEMMs ran 2-20x slower than float32 ones on an AVX2 CPU without bf16 instructions,
    whatever the operands' layout: see benchmarks/RESULTS.md.)"""

    def __init__(self, hidden: torch.Tensor, linear_weight: torch.Tensor, linear_bias: torch.Tensor | None,
                 want: tuple[bool, bool, bool], args: Any, plan: Any, with_grad: bool) -> None:
        compute = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        n_rows, n_features, n_classes = args.n_rows, args.n_features, args.n_classes
        self.dtype, self.compute = hidden.dtype, compute
        self.hidden = hidden.detach().resolve_neg().reshape(n_rows, n_features)
        self.weight = linear_weight.detach().resolve_neg().to(compute)
        self.bias = None if linear_bias is None else linear_bias.detach().resolve_neg().to(compute)
        self.logits_buffer = torch.empty((plan.rows, n_classes), dtype=compute)
        self.buffer = self.logits_buffer.numpy()
        self.want = want if with_grad else (False, False, False)
        self.shapes = (hidden.shape, linear_weight.shape, None if linear_bias is None else linear_bias.shape)
        self.h: torch.Tensor | None = None
        self.grad_hidden = self.grad_weight = self.bias_total = self.scratch = None
        if self.want[0]:
            self.grad_hidden = torch.empty((n_rows, n_features), dtype=hidden.dtype)
            if hidden.dtype != compute:  # each chunk's dH in float32, then rounded into it
                self.scratch = torch.empty((plan.rows, n_features), dtype=compute)
        if self.want[1]:
            self.grad_weight = torch.empty((n_classes, n_features), dtype=compute)
        if self.want[2]:
            self.bias_total = torch.zeros(n_classes, dtype=torch.float64)

    def logits(self, start: int, stop: int, out: np.ndarray) -> None:
        h = self.hidden[start:stop]
        self.h = h = h if h.dtype == self.compute else h.to(self.compute)
        logits = self.logits_buffer[: stop - start]
        if self.bias is None:
            torch.mm(h, self.weight.T, out=logits)
        else:
            torch.addmm(self.bias, h, self.weight.T, out=logits)

    def backward(self, start: int, stop: int, grad: np.ndarray) -> None:
        g = self.logits_buffer[: stop - start]  # the kernel's gradient, over the logits
        assert self.h is not None
        if self.grad_hidden is not None:
            if self.scratch is None:
                torch.mm(g, self.weight, out=self.grad_hidden[start:stop])
            else:
                part = self.scratch[: stop - start]
                torch.mm(g, self.weight, out=part)
                self.grad_hidden[start:stop] = part
        if self.grad_weight is not None:
            if start == 0:
                torch.mm(g.T, self.h, out=self.grad_weight)
            else:
                self.grad_weight.addmm_(g.T, self.h)  # BLAS's beta = 1: no scratch, no addition
        if self.bias_total is not None:
            self.bias_total += g.sum(0, dtype=torch.float64) if self.compute == torch.float64 else g.sum(0).double()

    def gradients(self) -> tuple[torch.Tensor, ...]:
        hidden_shape, weight_shape, bias_shape = self.shapes
        del self.weight  # bf16/f16: its float32 copy freed before dW is rounded (the call ends here)
        self.h = None
        empty = torch.empty((0,), dtype=self.dtype)
        grad_hidden = empty if self.grad_hidden is None else self.grad_hidden.reshape(hidden_shape)
        grad_weight = empty if self.grad_weight is None else self.grad_weight.to(self.dtype).reshape(weight_shape)
        grad_bias = empty if self.bias_total is None else self.bias_total.to(self.dtype)
        return grad_hidden, grad_weight, grad_bias


def _linear_scratch_row(dtype: torch.dtype, want: tuple[bool, bool, bool], n_features: int) -> int:
    """The elements of scratch `_LinearGemms` uses per row of a chunk, for the chunk plan:
    in bf16/f16, D for the chunk's hidden in float32 and D more for its dH (float32, then
    rounded); in float32/float64 0 (hidden's rows are views, dH and dW go straight into
    the gradients, addmm_ accumulating dW): a float32 chunk has all the budget."""
    if dtype in (torch.float32, torch.float64):
        return 0
    return 2 * n_features if want[0] else n_features


def _stand_in(shape: Any, dtype: Any) -> np.ndarray:
    """A zero-strided array of `shape`: what the checks read of a tensor whose values they
    do not need."""
    return np.broadcast_to(np.zeros((), dtype), tuple(int(n) for n in shape))


def _linear_args(hidden: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor,
                 linear_bias: torch.Tensor | None, weight: torch.Tensor | None,
                 sample_weight: torch.Tensor | None, ignore_index: int, reduction: str,
                 label_smoothing: float, z_loss: float, chunk_size: int, memory_budget: float,
                 n_threads: int, values: bool) -> Any:
    """softmaxloss's checks of the call (the NumPy function's, in its order and with its
    messages), on stand-ins of hidden, the weights and the bias in the kernel's dtype;
    with `values`, on the targets' and weights' values too (class range: all of them,
    before any work), else on stand-ins of them (the fake kernel)."""
    kernel_dtype = np.float64 if hidden.dtype == torch.float64 else np.float32
    target_array = _numpy(target) if values else _abstract(target)
    try:
        return check_linear_cross_entropy_call(
            _stand_in(hidden.shape, kernel_dtype), _stand_in(linear_weight.shape, kernel_dtype), target_array,
            dict(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, ignore_index=ignore_index),
            linear_bias=None if linear_bias is None else _stand_in(linear_bias.shape, kernel_dtype),
            weight=None if weight is None else (_numpy(weight) if values else _abstract(weight)),
            sample_weight=None if sample_weight is None else (_numpy(sample_weight) if values else _abstract(sample_weight)),
            chunk_size=chunk_size or None, memory_budget=memory_budget or None,
            n_threads=n_threads if n_threads > 0 else torch.get_num_threads(),
        )
    except ValueError as error:
        raise _out_of_bounds(error, target, int(linear_weight.shape[0]), ignore_index) from None


_LIBRARY.define(
    "linear_cross_entropy(Tensor hidden, Tensor linear_weight, Tensor target, Tensor? linear_bias, "
    "Tensor? weight, Tensor? sample_weight, int ignore_index, str reduction, float label_smoothing, "
    "float z_loss, int chunk_size, float memory_budget, int n_threads, bool grad_hidden, "
    "bool grad_linear_weight, bool grad_linear_bias) -> (Tensor loss, Tensor grad_hidden, "
    "Tensor grad_linear_weight, Tensor grad_linear_bias)"
)
_LINEAR_OP = torch.ops.softmaxloss.linear_cross_entropy.default


def _linear_cpu_kernel(hidden: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor,
                       linear_bias: torch.Tensor | None, weight: torch.Tensor | None,
                       sample_weight: torch.Tensor | None, ignore_index: int, reduction: str,
                       label_smoothing: float, z_loss: float, chunk_size: int, memory_budget: float,
                       n_threads: int, grad_hidden: bool, grad_linear_weight: bool,
                       grad_linear_bias: bool) -> tuple[torch.Tensor, ...]:
    """The chunked loss (and the gradients asked for, else empty tensors): every check
    first, then PyTorch's GEMMs and softmaxloss's kernel a chunk of rows at a time."""
    args = _linear_args(hidden, linear_weight, target, linear_bias, weight, sample_weight, ignore_index,
                        reduction, label_smoothing, z_loss, chunk_size, memory_budget, n_threads, values=True)
    want = (grad_hidden, grad_linear_weight, grad_linear_bias and linear_bias is not None)
    backend = functools.partial(_LinearGemms, hidden, linear_weight, linear_bias, want)
    loss, grads = _linear_run(args, any(want), backend, _linear_scratch_row(hidden.dtype, want, args.n_features))
    if not any(want):
        empty = hidden.new_empty((0,))
        grads = (empty, empty.clone(), empty.clone())
    return (torch.from_numpy(np.asarray(loss)).to(hidden.dtype).contiguous(), *grads)


_LIBRARY.impl("linear_cross_entropy", _linear_cpu_kernel, "CPU")


def _linear_fake_kernel(hidden: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor,
                        linear_bias: torch.Tensor | None, weight: torch.Tensor | None,
                        sample_weight: torch.Tensor | None, ignore_index: int, reduction: str,
                        label_smoothing: float, z_loss: float, chunk_size: int, memory_budget: float,
                        n_threads: int, grad_hidden: bool, grad_linear_weight: bool,
                        grad_linear_bias: bool) -> tuple[torch.Tensor, ...]:
    tensors = (hidden, linear_weight, target, linear_bias, weight, sample_weight)
    if all(isinstance(n, int) for t in tensors if t is not None for n in t.shape):
        _linear_args(hidden, linear_weight, target, linear_bias, weight, sample_weight, ignore_index, reduction,
                     label_smoothing, z_loss, chunk_size, memory_budget, n_threads, values=False)
    loss_shape = list(hidden.shape[:-1]) if reduction == "none" else []

    def grad(wanted: bool, like: torch.Tensor | None) -> torch.Tensor:
        return like.new_empty(like.shape) if wanted and like is not None else hidden.new_empty((0,))

    return (hidden.new_empty(loss_shape), grad(grad_hidden, hidden), grad(grad_linear_weight, linear_weight),
            grad(grad_linear_bias, linear_bias))


torch.library.register_fake("softmaxloss::linear_cross_entropy", _linear_fake_kernel, lib=_LIBRARY)

_LINEAR_DOUBLE_BACKWARD = (
    "softmaxloss.torch.linear_cross_entropy is differentiable once (reverse mode, with "
    "respect to hidden, linear_weight and linear_bias): double backward (create_graph=True "
    "through this loss) is not supported; compute the logits with F.linear and use "
    "softmaxloss.torch.cross_entropy there"
)


def _held_by_the_op_alone(output: tuple[Any, ...]) -> bool:
    """Whether the op's gradient outputs are plain tensors of an eager call (no compile, no
    tracing mode, no tensor subclass), which nothing but its autograd context can reach:
    the user-facing function returns the loss only."""
    if torch.compiler.is_compiling() or _python_dispatch._get_current_dispatch_mode() is not None:
        return False
    return all(type(t) is torch.Tensor for t in output)


def _linear_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(*output[1:])  # the op's gradients: for its backward only
    hidden, linear_weight, target, linear_bias, weight, sample_weight, *options = inputs
    ctx.options = options
    ctx.has_bias, ctx.has_sample_weight = linear_bias is not None, sample_weight is not None
    ctx.has_weight = weight is not None
    saved = (hidden, linear_weight, target, *(t for t in (linear_bias, weight, sample_weight) if t is not None))
    # Eager: the gradients are kept on ctx (not saved tensors) and handed over by the first
    # backward, scaled in place: no second dW alive (125 MiB at (V, D) = (32000, 1024)).
    # Traced (torch.compile): saved, and scaled out of place, which the graph can express.
    ctx.eager = _held_by_the_op_alone(output)
    ctx.handover = list(output[1:]) if ctx.eager else None
    ctx.save_for_backward(*saved, *(() if ctx.eager else output[1:]))


def _linear_backward(ctx: Any, d_loss: torch.Tensor | None, *d_grads: torch.Tensor | None) -> tuple[Any, ...]:
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise NotImplementedError(_LINEAR_DOUBLE_BACKWARD)
    saved = list(ctx.saved_tensors)
    hidden, linear_weight, target = saved[:3]
    rest = iter(saved[3:])
    linear_bias = next(rest) if ctx.has_bias else None
    weight = next(rest) if ctx.has_weight else None
    sample_weight = next(rest) if ctx.has_sample_weight else None
    ignore_index, reduction, label_smoothing, z_loss, chunk_size, memory_budget, n_threads = ctx.options[:7]
    want = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[3])
    results: list[Any] = [None] * 3
    if d_loss is None:
        return (None, None, None, None, *([None] * 12))
    if reduction == "none":
        # The gradient of sum(d_loss * per-row losses): the sum's, with d_loss as sample weights
        # (computed again, a chunk at a time; ignored rows' d_loss taken as 0, as in PyTorch).
        cotangent = d_loss.to(torch.float64)
        if not target.dtype.is_floating_point:
            cotangent = torch.where(target == ignore_index, 0, cotangent)
        rows = cotangent if sample_weight is None else cotangent * sample_weight.to(torch.float64)
        _, *grads = _LINEAR_OP(hidden, linear_weight, target, linear_bias, weight, rows, ignore_index, "sum",
                               label_smoothing, z_loss, chunk_size, memory_budget, n_threads, *want)
        results = list(grads)
    elif not ctx.eager:
        for i, (wanted, grad) in enumerate(zip(want, rest)):
            if wanted:
                results[i] = grad * d_loss.to(grad.dtype)
    else:
        grads, ctx.handover = ctx.handover, None  # handed over: a later backward (retain_graph) recomputes
        if grads is None:
            _, *grads = _LINEAR_OP(hidden, linear_weight, target, linear_bias, weight, sample_weight, ignore_index,
                                   reduction, label_smoothing, z_loss, chunk_size, memory_budget, n_threads, *want)
        exactly_one = bool(d_loss == 1)
        for i, (wanted, grad) in enumerate(zip(want, grads)):
            if wanted:
                results[i] = grad if exactly_one else grad.mul_(d_loss.to(grad.dtype))
        del grads
    results = [r if w else None for r, w in zip(results, want)]
    return (results[0], results[1], None, results[2], *([None] * 12))


torch.library.register_autograd("softmaxloss::linear_cross_entropy", _linear_backward,
                                setup_context=_linear_setup_context, lib=_LIBRARY)


def _linear_unfused(input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor,
                    linear_bias: torch.Tensor | None, weight: torch.Tensor | None, reduction: str,
                    ignore_index: int, label_smoothing: float, z_loss: float,
                    sample_weight: torch.Tensor | None, n_threads: int | None) -> torch.Tensor:
    """PyTorch's reference path: F.linear's logits (all N x V of them), then softmaxloss's
    cross-entropy op, class dimension 1 ((N, C, d1, ..., dK) for a K-dimensional loss)."""
    n_classes, out_features, in_features = linear_weight.shape[0], linear_weight.shape[1:-1], linear_weight.shape[-1]
    flat = math.prod(out_features, start=n_classes)
    logits = torch.nn.functional.linear(
        input, linear_weight.reshape(flat, in_features), None if linear_bias is None else linear_bias.reshape(flat))
    logits = logits.reshape(*input.shape[:-1], n_classes, *out_features)
    return cross_entropy(logits, target, weight, ignore_index=ignore_index, reduction=reduction,
                         label_smoothing=label_smoothing, z_loss=z_loss, sample_weight=sample_weight,
                         n_threads=n_threads)


def _check_linear_tensors(input: Any, linear_weight: Any, target: Any, linear_bias: Any, weight: Any,
                          sample_weight: Any, options: Any) -> None:
    """Types, devices and dtypes, before anything else."""
    for name, tensor in (("input", input), ("linear_weight", linear_weight), ("target", target)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        _on_cpu(tensor, name)
    for name, tensor in (("linear_bias", linear_bias), ("weight", weight), ("sample_weight", sample_weight)):
        if tensor is not None:
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor or None, got {type(tensor).__name__}")
            _on_cpu(tensor, name)
    if input.dtype not in _LINEAR_DTYPES:
        raise TypeError(f"input has dtype {input.dtype}; softmaxloss.torch.linear_cross_entropy takes float32 "
                        "and float64 (computed natively) and bfloat16/float16 (logits and dW in float32)")
    for name, tensor in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
        if tensor is not None and tensor.dtype != input.dtype:
            raise TypeError(f"{name} has dtype {tensor.dtype}; it must have input's dtype {input.dtype} "
                            "(as F.linear requires)")
    if not (target.dtype.is_floating_point or target.dtype in _INDEX_DTYPES):
        raise TypeError(f"target has dtype {target.dtype}; expected integer class indices or floating "
                        "point class probabilities")
    for name, tensor in (("weight", weight), ("sample_weight", sample_weight)):
        if tensor is not None and not tensor.dtype.is_floating_point:
            raise TypeError(f"{name} has dtype {tensor.dtype}; it must be a floating-point tensor")
    if options is not None and not isinstance(options, torch.nn.LinearCrossEntropyOptions):
        raise TypeError(f"options must be None or a torch.nn.LinearCrossEntropyOptions, got {type(options).__name__}")


def _wants_unfused(tensors: tuple[torch.Tensor | None, ...], input: torch.Tensor,
                   others: tuple[torch.Tensor | None, ...]) -> bool:
    """What the fused op does not differentiate: a target, weight or sample_weight that
    requires grad, forward-mode tangents, torch.func transforms."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in others):
        return True
    if torch.compiler.is_compiling():
        return False
    if torch._C._are_functorch_transforms_active():
        return True
    return forward_ad._current_level >= 0 and any(
        t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options: Any = None,
    z_loss: float = 0.0,
    sample_weight: torch.Tensor | None = None,
    chunk_size: int | None = None,
    memory_budget: float | None = None,
    n_threads: int | None = None,
) -> torch.Tensor:
    """`torch.nn.functional.linear_cross_entropy`, chunked: the loss of the logits
    `input @ linear_weight.T + linear_bias` and its gradients, a chunk of rows at a time,
    without the N x V logits (PyTorch's matmul for the GEMMs, softmaxloss's kernel on each
    chunk's logits in place).

    PyTorch's arguments and semantics: input (in_features,) or (N, in_features) (also
    (..., in_features) here), linear_weight (C, in_features), linear_bias (C,), target
    class indices of input's shape without its last dimension or probabilities of that
    shape + (C,) (PyTorch's rule: probabilities when the target has the logits' shape),
    `weight` (C,), `reduction`, `ignore_index` (None: -100 for class indices; an error with
    probabilities), `label_smoothing`. `options` (a LinearCrossEntropyOptions, or None) is
    accepted: softmaxloss always chunks, and takes its batch_chunk_size (with
    chunking_method=None) as chunk_size. A K-dimensional loss (linear_weight
    (C, d1, ..., dK, in_features)) is computed unfused, as PyTorch's reference path.
    softmaxloss's keyword-only extras: `z_loss`, `sample_weight` (one per row),
    `chunk_size` (rows per chunk) or `memory_budget` (bytes of working memory; default
    at most 1/8 of the float32 logits and 256 MiB: in float32/float64 all of it one chunk's
    logits, in bf16/f16 that chunk's logits and a float32 copy of its rows of input and of
    their gradient), `n_threads` (the kernel's; None: torch.get_num_threads()).

    dtypes: float32 and float64 computed natively; bfloat16 and float16 with float32
    logits, a float32 copy of linear_weight and dW accumulated in float32 over the chunks
    (rounded to the weight's dtype once): those two V x in_features float32 buffers are
    beyond the working memory. Differentiable once, in reverse mode, with
    respect to input, linear_weight and linear_bias, under torch.compile(fullgraph=True)
    too (one opaque op). Gradients with respect to probability targets, `weight` or
    `sample_weight`, forward-mode AD and torch.func transforms take the unfused path
    (F.linear, then softmaxloss.torch.cross_entropy: the whole logits), which has them.
    """
    _check_linear_tensors(input, linear_weight, target, linear_bias, weight, sample_weight, options)
    if input.dim() == 0:
        raise ValueError("input must have at least one dimension (in_features); got a 0-d tensor")
    if linear_weight.dim() < 2:
        raise _TorchRuntimeError(
            f"linear_weight must have shape (n_classes, in_features); got shape {tuple(linear_weight.shape)} "
            f"[PyTorch: expected linear_weight with dimensionality at least 2, got {linear_weight.dim()}]")
    rows, n_classes = tuple(input.shape[:-1]), linear_weight.shape[0]
    logits_shape = (*rows[:1], n_classes, *linear_weight.shape[1:-1], *rows[1:])
    probabilities = tuple(target.shape) == logits_shape
    if probabilities and ignore_index is not None:
        raise _TorchRuntimeError(
            f"ignore_index applies to class-index targets only; got probability targets with "
            f"ignore_index={ignore_index} [PyTorch: ignore_index cannot be specified when target "
            "contains probabilities]")
    if target.dtype.is_floating_point and not probabilities:
        raise _TorchRuntimeError(
            f"target of probabilities has shape {tuple(target.shape)}; it must have the logits' shape "
            f"{logits_shape} [PyTorch: expected target dtype to be Long or Byte, but got "
            f"{_TYPE_NAMES.get(target.dtype, str(target.dtype))}]")
    index = DEFAULT_IGNORE_INDEX if ignore_index is None else operator.index(ignore_index)
    if chunk_size is None and options is not None and options.chunking_method is None:
        chunk_size = options.batch_chunk_size
    tensors = (input, linear_weight, target, linear_bias, weight, sample_weight)
    if linear_weight.dim() > 2 or _wants_unfused(tensors, input, (target, weight, sample_weight)):
        return _linear_unfused(input, linear_weight, target, linear_bias, weight, reduction, index,
                               label_smoothing, z_loss, sample_weight, n_threads)
    if not torch.compiler.is_compiling():  # compiled: the fake kernel checks them, once
        options_checked = _checked_options(reduction, label_smoothing, z_loss, index)
        reduction, label_smoothing, z_loss = options_checked.reduction, options_checked.label_smoothing, options_checked.z_loss
    if not _INT64_MIN <= index <= _INT64_MAX:
        index = _INT64_MAX if index > 0 else _INT64_MIN  # no int64 target equals it either
    rows_per_chunk = 0 if chunk_size is None else chunk_size
    budget = 0.0 if memory_budget is None else memory_budget
    if not torch.compiler.is_compiling():
        from ._validation import check_chunk_size, check_memory_budget
        check_chunk_size(chunk_size)
        check_memory_budget(memory_budget)
    threads = _op_arguments(0, n_threads)[1]
    grad = torch.is_grad_enabled() and reduction != "none"  # "none": computed in backward
    result: torch.Tensor = torch.ops.softmaxloss.linear_cross_entropy(
        input, linear_weight, target, linear_bias, weight, sample_weight, index, reduction,
        float(label_smoothing), float(z_loss), rows_per_chunk, float(budget), threads,
        grad and input.requires_grad, grad and linear_weight.requires_grad,
        grad and linear_bias is not None and linear_bias.requires_grad,
    )[0]
    return result


class LinearCrossEntropyLoss(nn.Module):  # type: ignore[misc, unused-ignore]
    """`torch.nn.LinearCrossEntropyLoss`, computed by softmaxloss's chunked
    `linear_cross_entropy`: a Linear(in_features, num_classes * prod(out_features)) head
    (`self.linear`, PyTorch's parameter layout) and the cross-entropy of its logits.

    PyTorch's arguments (in_features, num_classes, out_features, bias, device, dtype,
    reduction, weight (a buffer), ignore_index, label_smoothing, options), plus
    softmaxloss's keyword-only z_loss, chunk_size, memory_budget and n_threads.
    `forward(input, target, sample_weight=None)`.
    """

    weight: torch.Tensor | None

    def __init__(
        self, in_features: int, num_classes: int, *, out_features: tuple[int, ...] = (), bias: bool = False,
        device: Any = None, dtype: Any = None, reduction: str = "mean", weight: torch.Tensor | None = None,
        ignore_index: int | None = None, label_smoothing: float = 0.0, options: Any = None,
        z_loss: float = 0.0, chunk_size: int | None = None, memory_budget: float | None = None,
        n_threads: int | None = None,
    ) -> None:
        super().__init__()
        _checked_options(reduction, label_smoothing, z_loss, DEFAULT_IGNORE_INDEX if ignore_index is None else ignore_index)
        if weight is not None and tuple(weight.shape) != (num_classes,):
            raise ValueError(f"weight must have one entry per class, shape ({num_classes},); got {tuple(weight.shape)}")
        check_n_threads(n_threads)
        self.num_classes, self.out_features = num_classes, tuple(out_features)
        self.linear = nn.Linear(in_features, math.prod(self.out_features, start=num_classes), bias=bias,
                                device=device, dtype=dtype)
        self.register_buffer("weight", weight)
        self.reduction, self.ignore_index, self.label_smoothing, self.options = reduction, ignore_index, label_smoothing, options
        self.z_loss, self.chunk_size, self.memory_budget, self.n_threads = z_loss, chunk_size, memory_budget, n_threads

    def forward(self, input: torch.Tensor, target: torch.Tensor,
                sample_weight: torch.Tensor | None = None) -> torch.Tensor:
        linear_weight = self.linear.weight.reshape(self.num_classes, *self.out_features, self.linear.in_features)
        bias = None if self.linear.bias is None else self.linear.bias.reshape(self.num_classes, *self.out_features)
        return linear_cross_entropy(
            input, linear_weight, target, linear_bias=bias, weight=self.weight, reduction=self.reduction,
            ignore_index=self.ignore_index, label_smoothing=self.label_smoothing, options=self.options,
            z_loss=self.z_loss, sample_weight=sample_weight, chunk_size=self.chunk_size,
            memory_budget=self.memory_budget, n_threads=self.n_threads,
        )

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, out_features={self.out_features}, reduction={self.reduction!r}"


# =========================================================================================
# The focal loss and the extra outputs (issue 16 items 3-4): `cross_entropy(...,
# focal_gamma=..., return_lse=..., return_entropy=..., return_argmax=...)` takes an op of
# its own, torch.ops.softmaxloss.cross_entropy_outputs, whose CPU kernel is one call of
# the NumPy function (one fused pass: loss, gradient, log-sum-exp, entropy, argmax). Its
# autograd (first order, with respect to the input): the saved gradient times the loss's
# upstream, plus d_lse * p and d_entropy * -(p log p + p H) for the per-row log-sum-exp
# and entropy, which are differentiable outputs (so `lse**2` or an entropy bonus can be
# built on them); those two terms are formed from softmax(input) only when the op's
# outputs are differentiated through them.
# =========================================================================================

from ._outputs import CrossEntropyOutputs  # noqa: E402
from ._validation import check_return_flags  # noqa: E402


def _outputs_cpu(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                sample_weight: torch.Tensor | None, ignore_index: int | None, reduction: str,
                label_smoothing: float, z_loss: float, focal_gamma: float, want_lse: bool,
                want_entropy: bool, want_argmax: bool, n_threads: int, with_grad: bool,
                softcap: float | None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad, lse, entropy, argmax, n_correct): those not requested (and grad
    without with_grad) empty tensors; with `softcap`, of the capped logits."""
    keywords: dict[str, Any] = dict(
        axis=_class_axis(input),
        weight=None if weight is None else _numpy(weight),
        sample_weight=None if sample_weight is None else _numpy(sample_weight),
        ignore_index=_facade_ignore_index(ignore_index), reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z_loss,
        focal_gamma=focal_gamma if focal_gamma > 0 else None, softcap=softcap,
        return_lse=want_lse, return_entropy=want_entropy, return_argmax=want_argmax,
        n_threads=n_threads if n_threads > 0 else torch.get_num_threads(),
    )
    x, t = _numpy(input), _numpy(target)
    empty = input.new_empty((0,))
    try:
        _probabilities_only_as_floats(x, t)
        if with_grad:
            grad = torch.empty(input.shape, dtype=input.dtype if _zero_copy(input.dtype) else torch.float32)
            result = _np_cross_entropy_with_grad(x, t, out=_numpy(grad), **keywords)
            grad = grad.to(input.dtype)
        else:
            result = _np_cross_entropy(x, t, **keywords)
            grad = empty
    except ValueError as error:
        raise _torch_error(error, input, target, weight, ignore_index) from None
    if not isinstance(result, CrossEntropyOutputs):  # focal only
        result = CrossEntropyOutputs(result[0] if with_grad else result)

    def per_row(values: Any, dtype: torch.dtype) -> torch.Tensor:
        if values is None:
            return input.new_empty((0,), dtype=dtype)
        return _tensor(np.array(values)).to(dtype).contiguous()

    n_correct = (torch.tensor(result.n_correct, dtype=torch.int64) if result.n_correct is not None
                 else input.new_empty((0,), dtype=torch.int64))
    return (_tensor(np.asarray(result.loss)).to(input.dtype).contiguous(), grad,
            per_row(result.lse, input.dtype), per_row(result.entropy, input.dtype),
            per_row(result.argmax, torch.int64), n_correct)


_outputs_op = torch.library.custom_op("softmaxloss::cross_entropy_outputs", _outputs_cpu, mutates_args=())


def _outputs_fake(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                  sample_weight: torch.Tensor | None, ignore_index: int | None, reduction: str,
                  label_smoothing: float, z_loss: float, focal_gamma: float, want_lse: bool,
                  want_entropy: bool, want_argmax: bool, n_threads: int, with_grad: bool,
                  softcap: float | None,
                  ) -> tuple[torch.Tensor, ...]:
    _check_call(input, target, weight, sample_weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    rows = _loss_shape(input.shape, "none") if input.dim() >= 2 else []
    empty = input.new_empty((0,))
    return (input.new_empty(_loss_shape(input.shape, reduction)),
            input.new_empty(input.shape) if with_grad else empty,
            input.new_empty(rows) if want_lse else empty,
            input.new_empty(rows) if want_entropy else empty,
            input.new_empty(rows, dtype=torch.int64) if want_argmax else input.new_empty((0,), dtype=torch.int64),
            input.new_empty((), dtype=torch.int64) if want_argmax else input.new_empty((0,), dtype=torch.int64))


def _outputs_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    input, target = inputs[0], inputs[1]
    ctx.ignore_index, ctx.reduction = inputs[4], inputs[5]
    ctx.want = inputs[9], inputs[10]
    ctx.softcap = inputs[14]
    ctx.save_for_backward(input, target, output[1], output[3])


def _outputs_backward(ctx: Any, d_loss: torch.Tensor | None, d_grad: Any, d_lse: torch.Tensor | None,
                      d_entropy: torch.Tensor | None, d_argmax: Any, d_correct: Any) -> tuple[Any, ...]:
    if torch.is_grad_enabled():
        raise NotImplementedError(
            "softmaxloss.torch.cross_entropy with focal_gamma or extra outputs is differentiable once "
            "(first order, with respect to the input): no double backward")
    input, target, grad, entropy = ctx.saved_tensors
    axis = 1 if input.dim() >= 2 else 0
    d_input = None
    if d_loss is not None:
        d_input = _scaled_gradient(grad, d_loss, target, ctx.ignore_index, ctx.reduction == "none")
    want_lse, want_entropy = ctx.want
    if (want_lse and d_lse is not None) or (want_entropy and d_entropy is not None):
        compute = input.float() if input.dtype in _UPCAST else input
        slope = None
        if ctx.softcap is not None:  # of the capped logits, carried back by their slope
            u = compute / ctx.softcap
            t = torch.exp(-2 * u.abs())
            slope = 4 * t / (1 + t) ** 2  # as the kernel forms it (never 1 - tanh^2)
            compute = ctx.softcap * torch.tanh(u)
        log_p = torch.log_softmax(compute, axis)
        p = log_p.exp()
        extra = torch.zeros_like(p)
        if want_lse and d_lse is not None:
            extra = extra + d_lse.to(p.dtype).unsqueeze(axis) * p
        if want_entropy and d_entropy is not None:  # dH/dx = -(p log p + p H)
            h = entropy.to(p.dtype).unsqueeze(axis)
            extra = extra - d_entropy.to(p.dtype).unsqueeze(axis) * (torch.special.xlogy(p, p) + p * h)
        if slope is not None:
            extra = extra * slope
        extra = extra.to(input.dtype)
        d_input = extra if d_input is None else d_input + extra
    return (d_input,) + (None,) * 14


_outputs_op.register_fake(_outputs_fake)
_outputs_op.register_autograd(_outputs_backward, setup_context=_outputs_setup)


def _cross_entropy_outputs(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                           sample_weight: torch.Tensor | None, options: LossOptions,
                           requested: tuple[bool, bool, bool], n_threads: Any) -> Any:
    """`cross_entropy` with focal_gamma or extra outputs: the loss, or a CrossEntropyOutputs
    of tensors (grad None; n_correct a 0-d int64 tensor)."""
    for name, tensor in (("weight", weight), ("sample_weight", sample_weight), ("target", target)):
        if tensor is not None and tensor.requires_grad:
            raise NotImplementedError(
                f"softmaxloss.torch.cross_entropy with focal_gamma or extra outputs differentiates with "
                f"respect to the input only; {name} requires grad")
    index, threads = _op_arguments(options.ignore_index, n_threads)
    with_grad = bool(input.requires_grad) and torch.is_grad_enabled()
    loss, _, lse, entropy, argmax, n_correct = _outputs_op(
        input, target, weight, sample_weight, index, options.reduction, float(options.label_smoothing),
        float(options.z_loss), options.kernel_focal_gamma, *requested, threads, with_grad,
        None if options.softcap is None else float(options.softcap))
    if not any(requested):
        return loss
    return CrossEntropyOutputs(loss, None, lse if requested[0] else None, entropy if requested[1] else None,
                               argmax if requested[2] else None, n_correct if requested[2] else None)

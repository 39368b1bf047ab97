"""The adapter contract: what the NumPy layer (`softmaxloss.layer`), `softmaxloss.torch`
and `softmaxloss.jax` each do with the kernel, written once for all three.

1. Convert: the logits reach the kernel as a NumPy view of their memory when their
   dtype is float32 or float64, and also float16 and bfloat16 (an ml_dtypes.bfloat16
   array), which the kernel reads as stored and computes in float32
   (`computes_in_float32`); results are returned in the input dtype, rounded once.
2. Call once: a forward pass that will be differentiated runs the fused loss-and-gradient
   kernel once and keeps the gradient d(loss)/d(logits); nothing else is kept.
3. Keep and scale: the backward pass is the kept gradient times the upstream gradient
   (one value, or for reduction "none" one per row, broadcast along the class axis),
   with PyTorch's rule for ignored rows: their gradient is 0 whatever the upstream, NaN
   and inf included (`scaled_gradient`, `kept_rows`).
4. Refuse what it cannot do with a clear error naming the alternative, before any work
   (each adapter's own refusals: a device, a transform, a derivative order).

Each function takes `xp`, the array namespace of the adapter's arrays (numpy,
torch or jax.numpy): the three spell `where`, `isfinite` and `iinfo` alike.
"""

from __future__ import annotations

from typing import Any

# The dtypes, by name, that every adapter computes in float32 (the kernels' arithmetic is
# float32 and float64; half precision is a storage format around the float32 kernels).
FLOAT32_COMPUTED = frozenset({"float16", "bfloat16"})


def computes_in_float32(dtype: Any) -> bool:
    """Whether an adapter computes logits of `dtype` (a NumPy, torch or JAX dtype) in
    float32 and returns results in `dtype`: float16 and bfloat16."""
    return str(dtype).rsplit(".", 1)[-1] in FLOAT32_COMPUTED


def kept_rows(xp: Any, target: Any, ignore_index: int | None) -> Any:
    """target != ignore_index for class-index targets; None when no row is ignored: no
    ignore_index, probability (floating-point) targets, or an ignore_index outside the
    targets' integer range (which matches no target, where a comparison in the dtype
    would wrap it)."""
    if ignore_index is None or not _is_integer(xp, target.dtype):
        return None
    info = xp.iinfo(target.dtype)
    if not info.min <= ignore_index <= info.max:
        return None
    return target != ignore_index


def scaled_gradient(xp: Any, grad: Any, upstream: Any, kept: Any) -> Any:
    """grad * upstream, elementwise (upstream broadcast against grad, already in its
    dtype), with 0 in every row that is not kept (`kept`, broadcastable against grad, or
    None for all rows) whatever the upstream: an ignored row's gradient is 0, and 0 * NaN
    or 0 * inf would not be."""
    product = grad * upstream
    if kept is None:
        return product
    return xp.where(kept | xp.isfinite(upstream), product, 0)


def _is_integer(xp: Any, dtype: Any) -> bool:
    try:
        xp.iinfo(dtype)
    except (TypeError, ValueError):
        return False
    return True

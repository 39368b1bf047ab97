"""softmaxloss as the cross-entropy of JAX programs, usable inside `jax.jit`,
`jax.grad`, `jax.value_and_grad` and `jax.vmap` on the CPU.

    import softmaxloss.jax as smj
    loss = smj.cross_entropy(logits, labels)   # optax.softmax_cross_entropy_with_integer_labels(...).mean()

The semantics and keywords are softmaxloss's (`softmaxloss.cross_entropy`), with the
class axis last by default as in optax: integer class labels (the logits' shape without
the class axis) or class probabilities (the logits' shape), `weight`, `sample_weight`,
`ignore_index`, `reduction` ("mean" by default; "none" gives optax's per-example
losses), `label_smoothing`, `z_loss`.

How it works: the kernel runs on the host through `jax.pure_callback`, and the function
is a `jax.custom_vjp`: its forward pass computes loss and gradient in one fused call and
keeps the gradient as the residual; its backward pass only multiplies that gradient by
the cotangent (per row for reduction="none"). Without differentiation only the loss is
computed. The arguments are checked when the function is traced (shapes, dtypes,
options; the same messages as `softmaxloss.cross_entropy`); an out-of-range label can
only be found when the callback runs, and surfaces as JAX's callback error.

Choices:
- Differentiable with respect to the logits only: the target, `weight` and
  `sample_weight` are constants (`jax.lax.stop_gradient`); their gradients are zero.
- Once differentiable, in reverse mode: `jax.hessian`, a gradient of a gradient or
  forward mode (`jax.jvp`, `jax.jacfwd`) through this loss raise an error saying so
  (NotImplementedError; JAX's own TypeError for forward mode).
- float32 and float64 (with `jax_enable_x64`) are computed natively; float16 and
  bfloat16 logits in float32, the loss and gradient coming back in the logits' dtype.
- Under `jax.vmap` the callback runs once per batch element ("sequential").
- A host callback: CPU backends only, no `jax.export` serialisation.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._facade import cross_entropy as _np_cross_entropy
from ._facade import cross_entropy_with_grad as _np_cross_entropy_with_grad
from ._validation import DEFAULT_IGNORE_INDEX, check_loss_args, check_n_threads

__all__ = ["cross_entropy"]


class _Options(NamedTuple):
    """The static (hashable) arguments of one call."""

    axis: int
    ignore_index: int
    reduction: str
    label_smoothing: float
    z_loss: float
    n_threads: int | None


def _keywords(options: _Options, weight: Any, sample_weight: Any) -> dict[str, Any]:
    return dict(
        axis=options.axis, weight=weight, sample_weight=sample_weight,
        ignore_index=options.ignore_index, reduction=options.reduction,
        label_smoothing=options.label_smoothing, z_loss=options.z_loss,
        n_threads=options.n_threads,
    )


def _loss_shape(options: _Options, logits: Any) -> jax.ShapeDtypeStruct:
    shape = () if options.reduction != "none" else tuple(
        n for i, n in enumerate(logits.shape) if i != options.axis
    )
    return jax.ShapeDtypeStruct(shape, logits.dtype)


def _host_loss(options: _Options, logits: np.ndarray, target: np.ndarray, weight: np.ndarray | None,
               sample_weight: np.ndarray | None) -> np.ndarray:
    loss = _np_cross_entropy(logits, target, **_keywords(options, weight, sample_weight))
    return np.asarray(loss, dtype=logits.dtype)


def _host_loss_and_grad(options: _Options, logits: np.ndarray, target: np.ndarray, weight: np.ndarray | None,
                        sample_weight: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    loss, grad = _np_cross_entropy_with_grad(logits, target, **_keywords(options, weight, sample_weight))
    return np.asarray(loss, dtype=logits.dtype), grad


def _loss_only(options: _Options, logits: Any, target: Any, weight: Any, sample_weight: Any) -> Any:
    return jax.pure_callback(
        functools.partial(_host_loss, options), _loss_shape(options, logits),
        logits, target, weight, sample_weight, vmap_method="sequential",
    )


_SECOND_ORDER = (
    "softmaxloss.jax.cross_entropy is differentiable once only (reverse mode): its "
    "gradient comes from a host callback, which JAX cannot differentiate again, so "
    "jax.hessian, forward mode over it, or a gradient of its gradient is not supported; "
    "use a jax.numpy / optax loss for those"
)


def _loss_and_grad_callback(options: _Options, logits: Any, target: Any, weight: Any, sample_weight: Any) -> Any:
    result_shapes = (_loss_shape(options, logits), jax.ShapeDtypeStruct(logits.shape, logits.dtype))
    return jax.pure_callback(
        functools.partial(_host_loss_and_grad, options), result_shapes,
        logits, target, weight, sample_weight, vmap_method="sequential",
    )


def _no_derivative(options: _Options, primals: Any, tangents: Any) -> Any:
    raise NotImplementedError(_SECOND_ORDER)


# The fused call, its own derivative refused: reached only when differentiating twice.
_loss_and_grad = jax.custom_jvp(_loss_and_grad_callback, nondiff_argnums=(0,))
_loss_and_grad.defjvp(_no_derivative)


def _forward(options: _Options, logits: Any, target: Any, weight: Any, sample_weight: Any) -> Any:
    loss, grad = _loss_and_grad(options, logits, target, weight, sample_weight)
    return loss, grad


def _backward(options: _Options, grad: Any, cotangent: Any) -> Any:
    if options.reduction == "none":
        cotangent = jnp.expand_dims(cotangent, options.axis)
    return (grad * cotangent.astype(grad.dtype), None, None, None)


# Forward: loss and gradient in one call, the gradient kept; backward: scale it.
_cross_entropy = jax.custom_vjp(_loss_only, nondiff_argnums=(0,))
_cross_entropy.defvjp(_forward, _backward)


def _as_constant(array: Any, name: str) -> Any:
    if array is None:
        return None
    array = jnp.asarray(array)
    if array.dtype in (jnp.float16, jnp.bfloat16):
        array = array.astype(jnp.float32)
    return jax.lax.stop_gradient(array)


def _abstract(array: Any) -> np.ndarray | None:
    """A zero-strided stand-in of the array's shape and kind of dtype, for validation
    at trace time: no memory, no values read (indices 0 are valid labels), and floats
    as float64 so that no check converts (copies) them."""
    if array is None:
        return None
    dtype = np.dtype(array.dtype)
    if dtype.kind == "f":
        dtype = np.dtype(np.float64)
    return np.broadcast_to(np.zeros((), dtype), array.shape)


def cross_entropy(
    logits: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    sample_weight: Any = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    n_threads: int | None = None,
) -> jax.Array:
    """`softmaxloss.cross_entropy` for JAX arrays, differentiable with respect to
    `logits` (jax.grad, jax.value_and_grad, jax.vjp) and traceable (jax.jit, jax.vmap).

    Returns the loss as a JAX array of the logits' dtype: a scalar, or per-row losses
    for reduction="none". The keywords are static: changing them retraces.
    """
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(
            f"logits has dtype {logits.dtype}; softmaxloss.jax differentiates floating "
            "point logits (float32, float64; float16 and bfloat16 computed in float32)"
        )
    result_dtype = logits.dtype
    compute = logits.astype(jnp.float32) if logits.dtype in (jnp.float16, jnp.bfloat16) else logits
    target = _as_constant(target, "target")
    weight = _as_constant(weight, "weight")
    sample_weight = _as_constant(sample_weight, "sample_weight")
    # Everything but the values is checked now, while tracing, with softmaxloss's messages.
    args = check_loss_args(
        _abstract(compute), _abstract(target), axis=axis, weight=_abstract(weight),
        sample_weight=_abstract(sample_weight), ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z_loss,
    )
    options = _Options(args.axis, args.ignore_index, args.reduction, args.label_smoothing,
                       args.z_loss, check_n_threads(n_threads))
    loss = _cross_entropy(options, compute, target, weight, sample_weight)
    return loss.astype(result_dtype)

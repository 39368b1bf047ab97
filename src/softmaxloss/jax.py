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
computed. The gradients with respect to the other inputs are computed in the backward
pass only for those being differentiated (the forward pass is told which, custom_vjp's
`symbolic_zeros`): one more host pass, log_softmax, for the target's and weight's, and
one of per-row losses for sample_weight's. The arguments are checked when the function
is traced (shapes, dtypes, options; the same messages as `softmaxloss.cross_entropy`);
an out-of-range label can only be found when the callback runs, and surfaces as JAX's
callback error.

Choices:
- Differentiable with respect to the logits, probability targets, `weight` and
  `sample_weight`, exactly (each row's loss is linear in the last three), the mean's
  normaliser included (sum over kept rows of s_n w[y_n] for index targets, sum(s) for
  probabilities). Index targets have no gradient (float0). The target's is
  s_n (1-eps) w_c -l[n,c] over the normaliser: +inf at a -inf logit, as jax.grad of
  optax.softmax_cross_entropy gives, and exactly 0 at label_smoothing=1; products are
  the formula's (NaN for 0 * inf, e.g. a zero w_c or s_n at a -inf logit, as jax.grad of
  the formula in jax.numpy).
- Ignored rows get exactly 0 gradient (logits and sample_weight) whatever the upstream
  cotangent, NaN or inf included, as in PyTorch; other rows get the gradient times the
  cotangent (so +-inf where PyTorch's unfused backward may give NaN from inf - inf).
  jax.grad's cotangent 1 stays a pass-through of the fused gradient under jit.
- Once differentiable, in reverse mode: `jax.hessian`, a gradient of a gradient or
  forward mode (`jax.jvp`, `jax.jacfwd`) through this loss raise an error saying so
  (NotImplementedError; JAX's own TypeError for forward mode).
- float32 and float64 (with `jax_enable_x64`) are computed natively; float16 and
  bfloat16 logits in float32, the loss and gradient coming back in the logits' dtype.
- Under `jax.vmap` the callback runs once per batch element ("sequential").
- A host callback: CPU backends only, no `jax.export` serialisation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._facade import cross_entropy as _np_cross_entropy
from ._facade import cross_entropy_with_grad as _np_cross_entropy_with_grad
from ._facade import log_softmax as _np_log_softmax
from ._validation import DEFAULT_IGNORE_INDEX, LossOptions, check_loss_args, check_n_threads

__all__ = ["cross_entropy"]


class _Options(NamedTuple):
    """The static (hashable) arguments of one call."""

    axis: int
    loss: LossOptions
    n_threads: int | None
    probabilities: bool


def _keywords(options: _Options, weight: Any, sample_weight: Any) -> dict[str, Any]:
    return dict(axis=options.axis, weight=weight, sample_weight=sample_weight,
                n_threads=options.n_threads, **asdict(options.loss))


def _loss_shape(options: _Options, logits: Any) -> jax.ShapeDtypeStruct:
    shape = () if options.loss.reduction != "none" else tuple(
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


def _host_log_softmax(options: _Options, logits: np.ndarray) -> np.ndarray:
    return _np_log_softmax(logits, options.axis, n_threads=options.n_threads)


_SECOND_ORDER = (
    "softmaxloss.jax.cross_entropy is differentiable once only (reverse mode): its "
    "gradient comes from a host callback, which JAX cannot differentiate again, so "
    "jax.hessian, forward mode over it, or a gradient of its gradient is not supported; "
    "use a jax.numpy / optax loss for those"
)


def _callback(host: Callable[..., Any], result_shapes: Any, *args: Any) -> Any:
    return jax.pure_callback(host, result_shapes, *args, vmap_method="sequential")


def _no_derivative(host: Any, result_shapes: Any, primals: Any, tangents: Any) -> Any:
    raise NotImplementedError(_SECOND_ORDER)


# Every host callback, its own derivative refused: those of the forward pass are
# differentiated by the custom_vjp below, so this is reached only when differentiating twice.
_host = jax.custom_jvp(_callback, nondiff_argnums=(0, 1))
_host.defjvp(_no_derivative)


def _loss_only(options: _Options, logits: Any, target: Any, weight: Any, sample_weight: Any) -> Any:
    return _host(functools.partial(_host_loss, options), _loss_shape(options, logits),
                 logits, target, weight, sample_weight)


def _loss_and_grad(options: _Options, logits: Any, target: Any, weight: Any, sample_weight: Any) -> Any:
    result_shapes = (_loss_shape(options, logits), jax.ShapeDtypeStruct(logits.shape, logits.dtype))
    return _host(functools.partial(_host_loss_and_grad, options), result_shapes,
                 logits, target, weight, sample_weight)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["grad", "logits", "target", "weight", "sample_weight", "loss"],
                   meta_fields=["wants"])
@dataclasses.dataclass(frozen=True)
class _Residuals:
    """What the backward pass needs; None where it needs nothing. `wants` (static): which
    of logits, target, weight, sample_weight are differentiated."""

    grad: Any  # d loss / d logits from the fused pass, if the logits are differentiated
    logits: Any  # these four, and the inputs, for the other gradients
    target: Any  # also for the ignored rows of class-index targets
    weight: Any
    sample_weight: Any
    loss: Any
    wants: tuple[bool, ...]


def _forward(options: _Options, *primals: Any) -> tuple[Any, _Residuals]:
    # symbolic_zeros=True: each input comes as CustomVJPPrimal(value, perturbed), so that
    # only the gradients asked for are computed (outside jit nothing would drop the others).
    x, t, w, s = (None if p is None else p.value for p in primals)
    wants = tuple(p is not None and p.perturbed for p in primals)
    others = any(wants[1:])
    if wants[0]:
        loss, grad = _loss_and_grad(options, x, t, w, s)
    else:
        loss, grad = _loss_only(options, x, t, w, s), None
    keep_target = others or not options.probabilities
    return loss, _Residuals(grad, x if others else None, t if keep_target else None,
                            w if others else None, s if others else None, loss if others else None,
                            wants)


def _kept_rows(options: _Options, target: Any) -> Any:
    """target != ignore_index (an ignore_index outside the dtype's range matches nothing,
    where jnp's comparison would wrap it)."""
    info = jnp.iinfo(target.dtype)
    if not info.min <= options.loss.ignore_index <= info.max:
        return jnp.ones(target.shape, bool)
    return target != jnp.asarray(options.loss.ignore_index, target.dtype)


def _backward(options: _Options, res: _Residuals, cotangent: Any) -> tuple[Any, ...]:
    keep = None if options.probabilities else _kept_rows(options, res.target)
    if options.loss.reduction == "none" and keep is not None:
        # An ignored row's gradient is 0 whatever its cotangent (0 * NaN would be NaN): drop
        # its cotangent, N values, rather than mask the N x C product.
        cotangent = jnp.where(keep, cotangent, 0)
    dx = None
    if res.wants[0]:
        if options.loss.reduction == "none":
            dx = res.grad * jnp.expand_dims(cotangent, options.axis).astype(res.grad.dtype)
        else:
            dx = res.grad * cotangent.astype(res.grad.dtype)
            if keep is not None:  # the same for a NaN or inf scalar; for jax.grad's constant
                # cotangent 1 the select folds away under jit, else it is fused with the product
                dx = jnp.where(jnp.expand_dims(keep, options.axis) | jnp.isfinite(cotangent), dx, 0)
    others = _other_gradients(options, res, cotangent, keep) if any(res.wants[1:]) else (None,) * 3
    return (dx, *others)


def _other_gradients(options: _Options, res: _Residuals, cotangent: Any, keep: Any) -> tuple[Any, Any, Any]:
    """The gradients of cotangent . loss with respect to probability targets, weight and
    sample_weight, each only if wanted (else None); the loss is linear in each. Classes
    last, nl = -log_softmax (a host pass, for the first two), r_n = loss_n / s_n (the
    per-row losses without s, a host pass, for the last), c_n = d (cotangent . loss) /
    d loss_n (the cotangent, over the normaliser D for "mean"), u_n = c_n s_n:
        d/dy[n,c] = u_n (1-eps) w_c nl[n,c]
        d/dw_c = sum_n u_n y'[n,c] nl[n,c]                   probabilities
               = sum_n u_n ((1-eps) [y_n = c] + eps/C) nl[n,c]  index targets, kept rows
        d/ds_n = c_n r_n
    and for "mean" = T / D the normaliser's own share, -cotangent mean / D times
    dD/dw_c = sum of s_n over kept rows of class c (index targets; 0 for probabilities)
    and dD/ds_n = w[y_n] (index targets) or 1 (probabilities)."""
    _, want_t, want_w, want_s = res.wants
    x, t, w, s = res.logits, res.target, res.weight, res.sample_weight
    axis, eps, dtype = options.axis, options.loss.label_smoothing, x.dtype
    n_classes = x.shape[axis]
    w_ = jnp.ones(n_classes, dtype) if w is None else w.astype(dtype)
    s_ = jnp.ones(t.shape if keep is not None else x.shape[:axis] + x.shape[axis + 1:], dtype) \
        if s is None else s.astype(dtype)
    y: Any = None if keep is None else jnp.where(keep, t, 0)  # ignored rows get class 0, then are dropped

    if keep is None:
        normaliser = math.prod(s_.shape) if s is None else s_.sum()
    else:
        normaliser = jnp.where(keep, s_ * w_[y], 0).sum()
    mean = options.loss.reduction == "mean"
    c = cotangent / normaliser if mean else cotangent
    u = c * s_ if keep is None else jnp.where(keep, c * s_, 0)
    m = -cotangent * res.loss / normaliser if mean else 0.0  # d (cotangent . mean) / d D

    nl: Any = None
    if want_t or want_w:
        nl = -jnp.moveaxis(_host(functools.partial(_host_log_softmax, options),
                                 jax.ShapeDtypeStruct(x.shape, dtype), x), axis, -1)
    dt = dw = ds = None
    if want_t:  # d loss_n / d y[n, c] = s_n (1-eps) w_c nl[n, c]; none at eps = 1
        dt = jnp.zeros(t.shape, t.dtype) if eps == 1 else jnp.moveaxis(
            ((1 - eps) * u)[..., None] * (nl if w is None else w_ * nl), -1, axis).astype(t.dtype)
    if want_w:
        rows = tuple(range(nl.ndim - 1))
        if keep is None:
            yp = jnp.moveaxis(t, axis, -1).astype(dtype)
            yp = yp if eps == 0 else (1 - eps) * yp + eps / n_classes
            dw = (u[..., None] * yp * nl).sum(rows)
        else:  # a zero coefficient leaves its term out (picked may be inf: 0 * inf)
            picked = jnp.take_along_axis(nl, y[..., None], -1)[..., 0]
            per_row = jnp.where(keep, (0 if eps == 1 else (1 - eps) * u * picked) + m * s_, 0)
            dw = jnp.zeros(n_classes, dtype).at[y.ravel()].add(per_row.ravel())
            if eps != 0:  # where, not u * nl: ignored rows' nl may be inf
                dw = dw + (eps / n_classes) * jnp.where(keep[..., None], u[..., None] * nl, 0).sum(rows)
        dw = dw.astype(w.dtype)
    if want_s:
        row_options = options._replace(loss=dataclasses.replace(options.loss, reduction="none"))
        r = _host(functools.partial(_host_loss, row_options), _loss_shape(row_options, x), x, t, w, None)
        ds = c * r + m * (1.0 if keep is None else w_[y])
        ds = (ds if keep is None else jnp.where(keep, ds, 0)).astype(s.dtype)
    return dt, dw, ds


# Forward: loss and gradient in one call, the gradient kept; backward: scale it (and,
# only if asked for, the gradients with respect to the target and weights).
_cross_entropy = jax.custom_vjp(_loss_only, nondiff_argnums=(0,))
_cross_entropy.defvjp(_forward, _backward, symbolic_zeros=True)


def _as_input(array: Any) -> Any:
    if array is None:
        return None
    array = jnp.asarray(array)
    if array.dtype in (jnp.float16, jnp.bfloat16):
        array = array.astype(jnp.float32)
    return array


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
    `logits`, probability targets, `weight` and `sample_weight` (jax.grad,
    jax.value_and_grad, jax.vjp) and traceable (jax.jit, jax.vmap).

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
    target = _as_input(target)
    weight = _as_input(weight)
    sample_weight = _as_input(sample_weight)
    # Everything but the values is checked now, while tracing, with softmaxloss's messages.
    args = check_loss_args(
        _abstract(compute), _abstract(target),
        dict(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, ignore_index=ignore_index),
        axis=axis, weight=_abstract(weight), sample_weight=_abstract(sample_weight),
    )
    options = _Options(args.axis, args.options, check_n_threads(n_threads), args.probabilities)
    loss = _cross_entropy(options, compute, target, weight, sample_weight)
    return loss.astype(result_dtype)

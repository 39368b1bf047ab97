"""softmaxloss as the cross-entropy of JAX programs, usable inside `jax.jit`,
`jax.vmap` and JAX's derivatives, forward (`jax.jvp`, `jax.jacfwd`, `jax.linearize`)
and reverse (`jax.grad`, `jax.value_and_grad`, `jax.vjp`, `jax.jacrev`), on the CPU.

    import softmaxloss.jax as smj
    loss = smj.cross_entropy(logits, labels)   # optax.softmax_cross_entropy_with_integer_labels(...).mean()

The semantics and keywords are softmaxloss's (`softmaxloss.cross_entropy`), with the
class axis last by default as in optax: integer class labels (the logits' shape without
the class axis) or class probabilities (the logits' shape), `weight`, `sample_weight`,
`ignore_index`, `reduction` ("mean" by default; "none" gives optax's per-example
losses), `label_smoothing`, `z_loss`, `softcap` (the loss of cap * tanh(logits / cap),
formed inside the kernel's pass; its tangents are those of the capped logits times the
exact slope sech^2(logits / cap), which the kernel's gradient already carries).

How it works: the kernel runs on the host through `jax.pure_callback`, and the function
is a `jax.custom_jvp` with one rule for both modes. The rule computes the loss and the
gradient with respect to the logits in one fused call, and returns a tangent that is
linear in the input tangents: sum(grad * dlogits) (per row for reduction="none"), plus
the terms of the target's, weight's and sample_weight's tangents. Forward mode
evaluates it; reverse mode is JAX's transpose of it, so jax.grad multiplies the fused
gradient by the cotangent, which folds away for its cotangent 1 under jit (the gradient
is the callback's output). Without differentiation only the loss is computed. Inputs
without a tangent are symbolic zeros (`symbolic_zeros=True`) and cost nothing: the
logits' tangent takes the fused pass instead of the loss-only one; the target's and
weight's take one more host pass, log_softmax, and sample_weight's one of per-row
losses. The logits' term, grad * dlogits, is a linear map with its own transpose
(`lax.custom_linear_solve` with the identity as the matrix; `linear_call` would do
but has no vmap rule) so that ignored rows stay exactly 0 under a non-finite cotangent
without an N x C pass for the cotangent 1 (see `_scaled_by_grad`). The arguments are
checked when the function is traced (shapes, dtypes, options; the same messages as
`softmaxloss.cross_entropy`); an out-of-range label can only be found when the
callback runs, and surfaces as JAX's callback error.

Choices:
- Differentiable with respect to the logits, probability targets, `weight` and
  `sample_weight`, exactly (each row's loss is linear in the last three), the mean's
  normaliser included (sum over kept rows of s_n w[y_n] for index targets, sum(s) for
  probabilities). Index targets have no tangent (float0). The target's gradient is
  s_n (1-eps) w_c -l[n,c] over the normaliser: +inf at a -inf logit, as jax.grad of
  optax.softmax_cross_entropy gives, and exactly 0 at label_smoothing=1; products are
  the formula's (NaN for 0 * inf, e.g. a zero w_c or s_n at a -inf logit, as jax.grad of
  the formula in jax.numpy).
- Ignored rows get exactly 0 gradient (logits and sample_weight) whatever the upstream
  cotangent, NaN or inf included, as in PyTorch; other rows get the gradient times the
  cotangent (so +-inf where PyTorch's unfused backward may give NaN from inf - inf).
  Likewise in forward mode a NaN or inf tangent in an ignored row adds nothing.
- Once differentiable, in either mode: `jax.hessian`, or any derivative of a derivative
  (grad of grad, jvp of grad, jacfwd of jacrev, ...) raises NotImplementedError saying
  so; the callbacks' results are constants to JAX.
- float32 and float64 (with `jax_enable_x64`) are computed natively; float16 and
  bfloat16 logits in float32, the loss and gradient coming back in the logits' dtype:
  the host callbacks get the half-precision logits as they are (no float32 copy of
  them), and the kernel writes the gradient in their dtype, rounded once; the tangents
  are formed from it in float32.
- Under `jax.vmap` (also jacfwd's and jacrev's) the callback runs once per batch element
  ("sequential").
- A host callback: CPU backends only, no `jax.export` serialisation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
import functools
import math
import operator
from typing import Any, Callable, NamedTuple

import jax
from jax.custom_derivatives import SymbolicZero
import jax.numpy as jnp
import numpy as np

from ._adapter import computes_in_float32, kept_rows, scaled_gradient
from ._facade import cross_entropy as _np_cross_entropy
from ._facade import cross_entropy_with_grad as _np_cross_entropy_with_grad
from ._facade import log_softmax as _np_log_softmax
from ._outputs import CrossEntropyOutputs
from ._validation import DEFAULT_IGNORE_INDEX, LossOptions, check_axes, check_loss_args, check_n_threads
from ._validation import check_return_flags
from ._where import stand_in

__all__ = ["cross_entropy", "softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels"]


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
    return _np_log_softmax(logits, options.axis, n_threads=options.n_threads, softcap=options.loss.softcap)


_SECOND_ORDER = (
    "softmaxloss.jax.cross_entropy is differentiable once only (forward or reverse "
    "mode): its derivatives come from host callbacks, which JAX cannot differentiate "
    "again, so jax.hessian or a derivative of a derivative (grad of grad, jvp of grad, "
    "jacfwd of jacrev, ...) is not supported; use a jax.numpy / optax loss for those"
)


def _callback(host: Callable[..., Any], result_shapes: Any, *args: Any) -> Any:
    return jax.pure_callback(host, result_shapes, *args, vmap_method="sequential")


def _no_derivative(host: Any, result_shapes: Any, primals: Any, tangents: Any) -> Any:
    raise NotImplementedError(_SECOND_ORDER)


# Every host callback, its own derivative refused: the callbacks run on primal values
# only (the loss's jvp rule below uses their results as constants), so this is reached
# only when differentiating twice.
_host = jax.custom_jvp(_callback, nondiff_argnums=(0, 1))
_host.defjvp(_no_derivative)


def _loss_only(options: _Options, logits: Any, target: Any, weight: Any, sample_weight: Any) -> Any:
    return _host(functools.partial(_host_loss, options), _loss_shape(options, logits),
                 logits, target, weight, sample_weight)


def _loss_and_grad(options: _Options, logits: Any, target: Any, weight: Any, sample_weight: Any) -> Any:
    result_shapes = (_loss_shape(options, logits), jax.ShapeDtypeStruct(logits.shape, logits.dtype))
    return _host(functools.partial(_host_loss_and_grad, options), result_shapes,
                 logits, target, weight, sample_weight)


def _kept_rows(options: _Options, target: Any) -> Any:
    """target != ignore_index, every row where no target can equal it (the contract's
    `kept_rows`, as an array)."""
    kept = kept_rows(jnp, target, options.loss.ignore_index)
    return jnp.ones(target.shape, bool) if kept is None else kept


def _given(tangent: Any) -> Any:
    """The tangent, or None for an input not being differentiated (a symbolic zero,
    float0 for class indices, or None for an absent weight)."""
    if tangent is None or type(tangent) is SymbolicZero or tangent.dtype == jax.dtypes.float0:
        return None
    return tangent


def _scaled_by_grad(grad: Any, kept: Any, tangent: Any) -> Any:
    """grad * tangent, elementwise: a linear map of the tangent, its own transpose, in
    which an ignored row's entries (grad is 0 there) are 0 whatever they multiply, NaN
    or inf included, in forward and reverse mode alike. `kept` is None (probability
    targets: the plain product) or the rows' mask, broadcastable against grad.

    The mask has to live in the transpose: masking the tangent instead, as in
    where(kept, sum(grad * dx), 0), transposes to grad * where(kept, cotangent, 0), a
    select and a multiply over the N x C gradient that XLA cannot fold for jax.grad's
    cotangent 1. where(kept | isfinite(v), grad * v, 0) folds for any constant finite
    v, leaving the callback's gradient itself, but JAX cannot transpose isfinite, so
    the map is given its transpose: lax.custom_linear_solve with the identity as the
    matrix and `symmetric` (the map is diagonal), whose `solve` is the only function
    ever evaluated; nothing is differentiated through the identity.
    (jax.custom_derivatives.linear_call says this directly but has no vmap rule: vmap
    of a gradient, jax.jacrev and jax.jacfwd would fail.)"""
    if kept is None:
        return grad * tangent

    def masked_product(_: Any, v: Any) -> Any:
        return scaled_gradient(jnp, grad, v, kept)

    return jax.lax.custom_linear_solve(lambda v: v, tangent, masked_product, symmetric=True)


def _plus(a: Any, b: Any) -> Any:
    return b if a is None else a + b


def _jvp(options: _Options, primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> tuple[Any, Any]:
    """The loss and its tangent, linear in the input tangents (so that JAX transposes it
    for reverse mode). Inputs without a tangent (symbolic zeros) cost nothing: the
    logits' tangent takes the fused loss-and-gradient pass instead of the loss-only
    one, the target's and weight's a log_softmax pass, sample_weight's a pass of
    per-row losses."""
    x, t, w, s = primals
    dx, dt, dw, ds = map(_given, tangents)
    if dx is not None:
        loss, grad = _loss_and_grad(options, x, t, w, s)
    else:
        loss, grad = _loss_only(options, x, t, w, s), None
    keep = None if options.probabilities else _kept_rows(options, t)
    parts = []
    if dx is not None:  # d loss = sum_c grad * dx (per row for "none"): grad is the returned loss's
        kept = None if keep is None else jnp.expand_dims(keep, options.axis)
        if computes_in_float32(grad.dtype):  # a half-precision gradient: the tangent in float32
            grad = grad.astype(jnp.float32)
        product = _scaled_by_grad(grad, kept, dx.astype(grad.dtype))
        parts.append(product.sum(options.axis) if options.loss.reduction == "none" else product.sum())
    if dt is not None or dw is not None or ds is not None:
        part = _other_tangents(options, x, t, w, s, loss, keep, dt, dw, ds)
        if part is not None:
            parts.append(part)
    if not parts:  # e.g. only a float0 tangent, or the target's at label_smoothing=1
        return loss, jnp.zeros(loss.shape, loss.dtype)
    return loss, functools.reduce(operator.add, parts).astype(loss.dtype)


def _other_tangents(options: _Options, x: Any, t: Any, w: Any, s: Any, loss: Any, keep: Any,
                    dt: Any, dw: Any, ds: Any) -> Any:
    """The loss's tangent from those of probability targets, weight and sample_weight
    (each None if not differentiated); the loss is linear in each. Classes last,
    nl = -log_softmax (a host pass, for the first two), r_n = loss_n / s_n (the per-row
    losses without s, a host pass, for the last), y' = (1-eps) y + eps/C:
        d loss_n = s_n (1-eps) sum_c w_c nl[n,c] dy[n,c]
                 + s_n sum_c y'[n,c] nl[n,c] dw_c                          probabilities
                 + s_n ((1-eps) nl[n,y_n] dw[y_n] + eps/C sum_c nl[n,c] dw_c)  index targets
                 + r_n ds_n
    ("none" returns these, "sum" their sum), and for "mean" = T / D also the
    normaliser's own share, d mean = (dT - mean dD) / D with
    dD = sum over kept rows of (ds_n w[y_n] + s_n dw[y_n]) (index targets), sum(ds)
    (probabilities). With index targets each row's tangent is where(kept, ..., 0), and
    ignored rows' coefficients are 0 (their nl may be inf), so that the transpose gives
    ignored rows exactly 0 whatever the cotangent (the cotangent is masked first)."""
    if dw is not None and options.loss.focal_gamma is not None:
        raise NotImplementedError(
            "softmaxloss.jax.cross_entropy with focal_gamma differentiates with respect to the "
            "logits and sample_weight, not weight")
    if computes_in_float32(x.dtype):  # half-precision logits: these tangents in float32
        x = x.astype(jnp.float32)
    axis, eps, dtype = options.axis, options.loss.label_smoothing, x.dtype
    n_classes = x.shape[axis]
    w_ = jnp.ones(n_classes, dtype) if w is None else w.astype(dtype)
    s_ = jnp.ones(x.shape[:axis] + x.shape[axis + 1:], dtype) if s is None else s.astype(dtype)
    y: Any = None if keep is None else jnp.where(keep, t, 0)  # ignored rows get class 0, then are dropped

    nl: Any = None
    if dt is not None or dw is not None:
        nl = -jnp.moveaxis(_host(functools.partial(_host_log_softmax, options),
                                 jax.ShapeDtypeStruct(x.shape, dtype), x), axis, -1)
    row: Any = None  # the per-row tangent, the sum of the terms below
    if dt is not None and eps != 1:  # none at eps = 1 (nl may be inf: 0 * inf)
        dy = jnp.moveaxis(dt, axis, -1).astype(dtype)
        row = _plus(row, s_ * (1 - eps) * (dy * (nl if w is None else w_ * nl)).sum(-1))
    if dw is not None:
        dw_ = dw.astype(dtype)
        if keep is None:
            yp = jnp.moveaxis(t, axis, -1).astype(dtype)
            yp = yp if eps == 0 else (1 - eps) * yp + eps / n_classes
            row = _plus(row, s_ * (yp * nl * dw_).sum(-1))
        else:  # a zero coefficient leaves its term out (picked may be inf: 0 * inf)
            if eps != 1:
                picked = jnp.where(keep, jnp.take_along_axis(nl, y[..., None], -1)[..., 0], 0)
                row = _plus(row, s_ * (1 - eps) * picked * dw_[y])
            if eps != 0:  # where, not nl: ignored rows' nl may be inf
                row = _plus(row, s_ * (eps / n_classes) * (jnp.where(keep[..., None], nl, 0) * dw_).sum(-1))
    if ds is not None:
        row_options = options._replace(loss=dataclasses.replace(options.loss, reduction="none"))
        r = _host(functools.partial(_host_loss, row_options), _loss_shape(row_options, x), x, t, w, None)
        row = _plus(row, (r if keep is None else jnp.where(keep, r, 0)) * ds.astype(dtype))
    if row is None:  # only the target's tangent, at label_smoothing=1
        return None
    if keep is not None:
        row = jnp.where(keep, row, 0)
    if options.loss.reduction == "none":
        return row
    total = row.sum()
    if options.loss.reduction == "sum":
        return total
    d_rows: Any = None  # dD, per row
    if keep is None:
        normaliser: Any = math.prod(s_.shape) if s is None else s_.sum()
        if ds is not None:
            d_rows = ds.astype(dtype)
    else:
        normaliser = jnp.where(keep, s_ * w_[y], 0).sum()
        if ds is not None:
            d_rows = ds.astype(dtype) * w_[y]
        if dw is not None:
            d_rows = _plus(d_rows, s_ * dw.astype(dtype)[y])
        if d_rows is not None:
            d_rows = jnp.where(keep, d_rows, 0)
    if d_rows is None:  # no tangent moves D
        return total / normaliser
    return (total - loss * d_rows.sum()) / normaliser


# The loss, differentiable in forward mode (the jvp rule) and, by JAX's transpose of its
# linear tangent, in reverse mode.
_cross_entropy = jax.custom_jvp(_loss_only, nondiff_argnums=(0,))
_cross_entropy.defjvp(_jvp, symbolic_zeros=True)


def _as_input(array: Any) -> Any:
    if array is None:
        return None
    array = jnp.asarray(array)
    if computes_in_float32(array.dtype):
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
    softcap: float | None = None,
    n_threads: int | None = None,
    focal_gamma: float | None = None,
    return_lse: bool = False,
    return_entropy: bool = False,
    return_argmax: bool = False,
) -> Any:
    """`softmaxloss.cross_entropy` for JAX arrays, differentiable once, in forward
    (jax.jvp, jax.jacfwd, jax.linearize) and reverse mode (jax.grad,
    jax.value_and_grad, jax.vjp, jax.jacrev), with respect to `logits`, probability
    targets, `weight` and `sample_weight`, and traceable (jax.jit, jax.vmap).

    Returns the loss as a JAX array of the logits' dtype: a scalar, or per-row losses
    for reduction="none". The keywords are static: changing them retraces.
    `focal_gamma`: the softmax focal loss (differentiable with respect to the logits and
    sample_weight). `return_lse`, `return_entropy`, `return_argmax`: a
    `softmaxloss.CrossEntropyOutputs` of arrays (grad None) from the same host pass, the
    loss, lse and entropy differentiable with respect to the logits (`_outputs`).
    """
    requested = check_return_flags(return_lse=return_lse, return_entropy=return_entropy,
                                   return_argmax=return_argmax)
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(
            f"logits has dtype {logits.dtype}; softmaxloss.jax differentiates floating "
            "point logits (float32, float64; float16 and bfloat16 computed in float32)"
        )
    result_dtype = logits.dtype
    compute = logits  # half precision too: the kernel reads it as stored
    target = _as_input(target)
    weight = _as_input(weight)
    sample_weight = _as_input(sample_weight)
    # Everything but the values is checked now, while tracing, with softmaxloss's messages.
    args = check_loss_args(
        _abstract(compute), _abstract(target),
        dict(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, ignore_index=ignore_index,
             softcap=softcap, focal_gamma=focal_gamma),
        axis=axis, weight=_abstract(weight), sample_weight=_abstract(sample_weight),
    )
    if args.options.focal_gamma is not None and args.probabilities:
        raise ValueError("focal_gamma applies to class-index targets only; got probability targets")
    options = _Options(args.axis, args.options, check_n_threads(n_threads), args.probabilities)
    if any(requested):
        return _outputs(options, requested, compute, target, weight, sample_weight)
    loss = _cross_entropy(options, compute, target, weight, sample_weight)
    return loss.astype(result_dtype)


# ---- the extra outputs (issue 16 item 3) -------------------------------------------------


def _row_struct(options: _Options, logits: Any, dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(n for i, n in enumerate(logits.shape) if i != options.axis), dtype)


def _host_outputs(options: _Options, requested: tuple[bool, bool, bool], with_grad: bool, logits: np.ndarray,
                  target: np.ndarray, weight: np.ndarray | None, sample_weight: np.ndarray | None) -> tuple[Any, ...]:
    """One fused host call: (loss, lse, entropy, argmax, n_correct[, grad]); the outputs not
    requested as zeros of their shape."""
    keywords = dict(_keywords(options, weight, sample_weight), return_lse=requested[0],
                    return_entropy=requested[1], return_argmax=requested[2])
    call = _np_cross_entropy_with_grad if with_grad else _np_cross_entropy
    result = call(logits, target, **keywords)
    rows = tuple(n for i, n in enumerate(logits.shape) if i != options.axis)
    index = np.int64 if jax.config.jax_enable_x64 else np.int32
    values = (np.asarray(result.loss, dtype=logits.dtype),
              np.asarray(result.lse if result.lse is not None else np.zeros(rows), dtype=logits.dtype),
              np.asarray(result.entropy if result.entropy is not None else np.zeros(rows), dtype=logits.dtype),
              np.asarray(result.argmax if result.argmax is not None else np.zeros(rows), dtype=index),
              np.asarray(result.n_correct or 0, dtype=index))
    return values + ((result.grad,) if with_grad else ())


def _output_structs(options: _Options, logits: Any, with_grad: bool) -> tuple[Any, ...]:
    index = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
    structs = (_loss_shape(options, logits), _row_struct(options, logits, logits.dtype),
               _row_struct(options, logits, logits.dtype), _row_struct(options, logits, index),
               jax.ShapeDtypeStruct((), index))
    return structs + ((jax.ShapeDtypeStruct(logits.shape, logits.dtype),) if with_grad else ())


def _outputs_primal(options: _Options, requested: tuple[bool, bool, bool], logits: Any, target: Any,
                    weight: Any, sample_weight: Any) -> tuple[Any, ...]:
    outputs: tuple[Any, ...] = _host(functools.partial(_host_outputs, options, requested, False),
                                     _output_structs(options, logits, False), logits, target, weight,
                                     sample_weight)
    return outputs


def _outputs_jvp(options: _Options, requested: tuple[bool, bool, bool], primals: tuple[Any, ...],
                 tangents: tuple[Any, ...]) -> tuple[Any, Any]:
    """Tangents with respect to the logits: d loss = sum(grad * dx) (per row for "none"),
    d lse = sum_c p_c dx_c, d H = -sum_c (p_c log p_c + p_c H) dx_c; argmax and n_correct
    have none (float0). With a softcap, p of the capped logits and dx times their slope
    sech^2(x / cap) (formed as the kernel forms it: 4 t / (1 + t)^2, t = e^(-2|x / cap|))."""
    x, t, w, s = primals
    dx, dt, dw, ds = map(_given, tangents)
    if dt is not None or dw is not None or ds is not None:
        raise NotImplementedError(
            "softmaxloss.jax.cross_entropy with return_lse / return_entropy / return_argmax "
            "differentiates with respect to the logits only")
    if dx is None:
        out = _outputs_primal(options, requested, x, t, w, s)
        tangent_out = tuple(jnp.zeros(o.shape, o.dtype) for o in out[:3])
    else:
        *out, grad = _host(functools.partial(_host_outputs, options, requested, True),
                           _output_structs(options, x, True), x, t, w, s)
        compute = jnp.float32 if computes_in_float32(x.dtype) else x.dtype
        keep = None if options.probabilities else _kept_rows(options, t)
        kept = None if keep is None else jnp.expand_dims(keep, options.axis)
        d = dx.astype(compute)
        product = _scaled_by_grad(grad.astype(compute), kept, d)
        d_loss = product.sum(options.axis) if options.loss.reduction == "none" else product.sum()
        capped = x.astype(compute)
        cap = options.loss.softcap
        if cap is not None:
            u = capped / cap
            e = jnp.exp(-2 * jnp.abs(u))
            d = d * (4 * e / (1 + e) ** 2)
            capped = cap * jnp.tanh(u)
        log_p = jax.nn.log_softmax(capped, axis=options.axis)
        p = jnp.exp(log_p)
        d_lse = (p * d).sum(options.axis)
        h = jnp.expand_dims(out[2].astype(compute), options.axis)
        d_entropy = -((jax.scipy.special.xlogy(p, p) + p * h) * d).sum(options.axis)
        tangent_out = (d_loss.astype(x.dtype), d_lse.astype(x.dtype), d_entropy.astype(x.dtype))
    zeros_int = tuple(np.zeros(o.shape, jax.dtypes.float0) for o in out[3:5])
    return tuple(out), tangent_out + zeros_int


_outputs_fn = jax.custom_jvp(_outputs_primal, nondiff_argnums=(0, 1))
_outputs_fn.defjvp(_outputs_jvp, symbolic_zeros=True)


def _outputs(options: _Options, requested: tuple[bool, bool, bool], logits: Any, target: Any,
             weight: Any, sample_weight: Any) -> Any:
    loss, lse, entropy, argmax, n_correct = _outputs_fn(options, requested, logits, target, weight, sample_weight)
    return CrossEntropyOutputs(loss, None, lse if requested[0] else None, entropy if requested[1] else None,
                               argmax if requested[2] else None, n_correct if requested[2] else None)


# ---- optax's call forms: class axes as a tuple, where= masks ---------------------------------


def _classes_last(array: Any, axes: tuple[int, ...]) -> Any:
    """`array` with the class axes `axes` moved last, in their order, and merged into one
    (a class index is then a flat index into a slice of their shape, as optax's)."""
    batch = tuple(i for i in range(array.ndim) if i not in axes)
    moved = array.transpose(batch + axes)
    return moved.reshape(moved.shape[: len(batch)] + (math.prod(moved.shape[len(batch):]),))


def _class_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    """optax's `axis` (an int, a tuple of ints, or None: every axis) as a tuple of
    non-negative axes, with softmaxloss's errors (numpy's AxisError when out of range)."""
    axes = check_axes(tuple(range(ndim)) if axis is None else axis, ndim)
    return (axes,) if isinstance(axes, int) else axes


def _masked_logits(x: Any, where: Any) -> tuple[Any, Any]:
    """(x with its masked-out entries replaced by a value whose probability is exactly
    0, `softmaxloss._where.stand_in`, the index of each row's largest kept logit). The
    stand-in is constant to the derivatives: a masked entry gets gradient 0, and no
    0 * inf arises from a zero target there."""
    kept_only = jnp.where(where, x, -jnp.inf)
    kept_max_at = jnp.argmax(kept_only, axis=-1)
    kept_max = jax.lax.stop_gradient(jnp.take_along_axis(kept_only, kept_max_at[..., None], -1))
    value = stand_in(jnp, kept_max, where.any(-1, keepdims=True), x.dtype)
    return jnp.where(where, x, value), kept_max_at


def _mask_shaped(where: Any, logits: Any, axes: tuple[int, ...]) -> Any:
    """optax's rule: a `where` of fewer dimensions than the logits (one value per
    example) gets the class axes inserted, then is broadcast to the logits' shape."""
    where = jnp.asarray(where, bool)
    if where.ndim != logits.ndim:
        where = jnp.expand_dims(where, axes)
    return jnp.broadcast_to(where, logits.shape)


def softmax_cross_entropy(logits: Any, labels: Any, axis: Any = -1, where: Any = None) -> jax.Array:
    """optax.softmax_cross_entropy on softmaxloss's kernel: the per-example
    -sum_c labels_c log softmax(logits)_c over the class axis or axes (`axis`: an int, a
    tuple, or None for every axis), optax's shape rules; `where` (a boolean mask of the
    logits' shape, or of one value per example) leaves the masked-out classes out of the
    softmax and of the sum, and an example with no class left has loss 0. Differentiable
    as `cross_entropy` (logits and labels)."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    axes = _class_axes(axis, logits.ndim)
    x, y = _classes_last(logits, axes), _classes_last(jnp.broadcast_to(labels, logits.shape), axes)
    if where is None:
        return cross_entropy(x, y, reduction="none")
    kept = _classes_last(_mask_shaped(where, logits, axes), axes)
    masked, _ = _masked_logits(x.astype(jnp.float32) if computes_in_float32(x.dtype) else x, kept)
    loss = cross_entropy(masked, jnp.where(kept, y, 0), reduction="none")
    return jnp.where(kept.any(-1), loss, 0).astype(logits.dtype)


def softmax_cross_entropy_with_integer_labels(logits: Any, labels: Any, axis: Any = -1,
                                              where: Any = None) -> jax.Array:
    """optax.softmax_cross_entropy_with_integer_labels on softmaxloss's kernel: the
    per-example logsumexp(logits) - logits[label] over the class axis, or over a tuple
    of axes with the label a flat index into their slice (optax's rule); `where` (a
    boolean mask of the logits' shape, or one value per example) leaves the masked-out
    classes out of the log-sum-exp (not the label's logit, as optax), and an example with
    no class left has loss 0. Labels equal to -100 are ignored (loss 0), as in
    `cross_entropy`; other labels outside [0, C) are an error."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    axes = _class_axes(axis, logits.ndim)
    x = _classes_last(logits, axes)
    if where is None:
        return cross_entropy(x, labels, reduction="none")
    kept = _classes_last(_mask_shaped(where, logits, axes), axes)
    compute = x.astype(jnp.float32) if computes_in_float32(x.dtype) else x
    masked, kept_max_at = _masked_logits(compute, kept)
    # A label whose class is masked out: optax's value, logsumexp over the kept classes
    # minus the label's own logit, as the kernel's loss at the row's largest kept logit
    # (a small, exact term) plus that logit minus the label's.
    label_at = jnp.clip(labels, 0, x.shape[-1] - 1)  # ignored (-100) labels: any class
    label_kept = jnp.take_along_axis(kept, label_at[..., None], -1)[..., 0]
    label_kept = label_kept | (labels == DEFAULT_IGNORE_INDEX)
    target = jnp.where(label_kept, labels, kept_max_at)
    loss = cross_entropy(masked, target, reduction="none")
    at = jnp.take_along_axis(compute, jnp.stack([kept_max_at, label_at], -1), -1)
    loss = jnp.where(label_kept, loss, loss + (at[..., 0] - at[..., 1]))
    return jnp.where(kept.any(-1), loss, 0).astype(logits.dtype)

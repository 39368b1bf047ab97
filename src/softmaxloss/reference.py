"""Pure-NumPy twin of every public softmaxloss function: SPEC.md's formulas, written out.

Public and meant to be read: other projects may test their own implementations against it,
and the fused Cython kernel is tested against it. Every function

- validates its arguments with the same checks (`softmaxloss._validation`) as the fast
  function of the same name, before any work, so both raise the same errors;
- computes in float64 whatever the input dtype, and returns results in the logits' result
  dtype (float16 stays float16, bfloat16 bfloat16, float32 float32, integers and bools give
  float64), rounded once from float64 (`round_float64`: also for bfloat16, whose own
  float64 cast in ml_dtypes rounds twice);
- never modifies its inputs (it works on a float64 copy), unless one is passed as `out`;
- accepts `n_threads` (validated, otherwise unused) so the signatures equal the fast ones.

Notation (SPEC.md), with the class axis moved last: x logits (..., C); p = softmax(x);
l = log_softmax(x) (`log_p` in the code); lse = logsumexp(x), shape (...); y targets;
w class weights (C,), 1 if None; s sample weights (...), 1 if None; eps label smoothing;
z z-loss coefficient; cap the soft-cap (`softcap=`): every formula then reads the capped
logits cap * tanh(x / cap) for x, and the gradient is multiplied by their slope
sech^2(x / cap) (`softcapped`, `softcap_slope`).

A term whose coefficient is zero is left out, never multiplied by zero: -l is +inf at a -inf
logit, and 0 * inf would turn an exact result into NaN. Products inside a term stay as the
formula says (w_c * y'_c * -l[n,c] is NaN for y'_c == 0 at a -inf logit, as in PyTorch).

Return types: reductions "mean"/"sum" and 1-D logits give NumPy scalars of the result dtype
(e.g. `np.float32`); everything else an ndarray. `out=` arrays are filled and returned.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._halfdtypes import round_float64
from ._layout import MergedAxes
from . import _outputs
from ._outputs import n_correct, requested_outputs
from ._validation import (
    DEFAULT_IGNORE_INDEX,
    Dtypes,
    LossArgs,
    as_real_array,
    check_axes,
    check_cross_entropy_call,
    check_gradient_hessian_args,
    check_gradient_hessian_out,
    check_in_place,
    check_logsumexp_args,
    check_n_threads,
    check_out,
    check_softcap,
)

__all__ = [
    "softmax",
    "log_softmax",
    "logsumexp",
    "cross_entropy",
    "cross_entropy_with_grad",
    "gradient_hessian",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
]


def _quiet() -> np.errstate:
    """Silence NumPy's warnings about NaN and +-inf results.

    They are SPEC's semantics for non-finite input (inf - inf, log(0), 0/0 for a mean over
    no rows), not accidents.
    """
    return np.errstate(divide="ignore", invalid="ignore", over="ignore")


# -- the formulas, on float64 arrays with the class axis last ----------------------------------


def _float64_rows(x: np.ndarray, axis: int) -> np.ndarray:
    """A new C-ordered float64 copy of x with the class axis moved last, (..., C).

    A copy, so the input is never touched (and may be `out`); C order, so the sums run in the
    same order whatever the input's memory layout.
    """
    return np.array(np.moveaxis(x, axis, -1), dtype=np.float64, order="C", copy=True)


def _row_max(x: np.ndarray) -> np.ndarray:
    """max_c x[..., c], shape (..., 1); -inf for zero classes; NaN if the row has a NaN."""
    return np.max(x, axis=-1, keepdims=True, initial=-np.inf)


def _softmax(x: np.ndarray) -> np.ndarray:
    """p = exp(x - max) / sum_c exp(x - max); (..., C) -> (..., C).

    -inf entries next to finite ones give exact zeros; a row of all -inf or with a +inf gives
    x - max = inf - inf = NaN, so a NaN row (as PyTorch).
    """
    e = np.exp(x - _row_max(x))
    return e / np.sum(e, axis=-1, keepdims=True)


def _log_sum_exp_shifted(shifted: np.ndarray) -> np.ndarray:
    """log(sum_c exp(shifted_c)) for shifted = x - max (or x), shape (..., 1).

    Computed as log1p((ties - 1) + rest): each entry at the max adds exactly exp(0) = 1,
    and `rest` sums the others. For a confident row the sum is 1 + rest with rest tiny,
    and log1p keeps the digits of rest that rounding 1 + rest would lose: they are the
    whole of the loss of a confident, correct prediction.
    """
    at_max = shifted == 0
    ties = np.sum(at_max, axis=-1, keepdims=True)
    rest = np.sum(np.exp(shifted), axis=-1, keepdims=True, where=~at_max)
    return np.log1p((ties - 1.0) + rest)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """l = (x - max) - log(sum_c exp(x - max)); (..., C) -> (..., C).

    Same NaN rows as `_softmax`; -inf entries next to finite ones give -inf.
    """
    shifted = x - _row_max(x)
    return shifted - _log_sum_exp_shifted(shifted)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """lse = log(sum_c exp(x - m)) + m, m = row max (0 where infinite); (..., C) -> (...).

    As torch.logsumexp and scipy.special.logsumexp: a row holding +inf gives +inf, a row of all
    -inf (or no classes) gives -inf, a NaN gives NaN.
    """
    m = _row_max(x)
    m = np.where(np.isinf(m), 0.0, m)
    return (_log_sum_exp_shifted(x - m) + m)[..., 0]


def softcapped(x: Any, cap: float) -> np.ndarray:
    """The soft-capped logits cap * tanh(x / cap), in float64 (Gemma 2: cap 30)."""
    with _quiet():
        return cap * np.tanh(np.asarray(x, dtype=np.float64) / cap)


def softcap_slope(x: Any, cap: float) -> np.ndarray:
    """d(cap tanh(x / cap))/dx = sech^2(u), u = x / cap, in float64, as 4 t / (1 + t)^2 with
    t = e^(-2|u|): accurate to a few ulps for every u (1 - tanh(u)^2 would lose all of its
    digits as tanh(u) -> 1: a relative error of 6 % at u = 8 in float32); 0 at +-inf."""
    with _quiet():
        t = np.exp(-2.0 * np.abs(np.asarray(x, dtype=np.float64) / cap))
        return 4.0 * t / (1.0 + t) ** 2


def _softmax_complement(x: np.ndarray) -> np.ndarray:
    """1 - p, p = softmax(x); (..., C) -> (..., C).

    Where p is close to 1 (only ever at a unique max) 1 - p would cancel; there it is
    (S - exp(0)) / S, S - 1 being the sum of the other entries' exp(x - max) (and of the
    ties beyond the first): the digits of the gradient of a confident row.
    """
    shifted = x - _row_max(x)
    e = np.exp(shifted)
    total = np.sum(e, axis=-1, keepdims=True)
    at_max = shifted == 0
    excess = (np.sum(at_max, axis=-1, keepdims=True) - 1.0) + np.sum(e, axis=-1, keepdims=True, where=~at_max)
    return np.where(at_max, excess / total, 1 - e / total)


def _p_minus_onehot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p - onehot(y), p = softmax(x), with p_y - 1 = -(1 - p_y) from `_softmax_complement`;
    (..., C) and (...) -> (..., C)."""
    return np.where(_onehot(y, x.shape[-1]) == 1, -_softmax_complement(x), _softmax(x))


def _onehot(y: np.ndarray, n_classes: int) -> np.ndarray:
    """onehot[..., c] = 1.0 if c == y[...] else 0.0; (...) -> (..., C)."""
    return (np.arange(n_classes) == y[..., None]).astype(np.float64)


def _pick(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """a[..., y[...]]; (..., C) and (...) -> (...)."""
    return np.take_along_axis(a, y[..., None], axis=-1)[..., 0]


def _index_target_losses(
    log_p: np.ndarray,
    lse: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    s: np.ndarray,
    eps: float,
    z: float,
) -> np.ndarray:
    """loss_n = s_n ((1-eps) w[y_n] -l[n,y_n] + (eps/C) sum_c w_c -l[n,c] + z lse_n^2).

    Shapes: log_p (..., C), lse (...), y (...) valid class indices, w (C,), s (...) -> (...).
    """
    n_classes = log_p.shape[-1]
    loss = np.zeros(y.shape)
    if eps != 1:
        loss = loss + (1 - eps) * w[y] * -_pick(log_p, y)
    if eps != 0:
        loss = loss + (eps / n_classes) * np.sum(w * -log_p, axis=-1)
    if z != 0:
        loss = loss + z * lse**2
    return s * loss


def _index_target_grads(
    x: np.ndarray,
    lse: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    s: np.ndarray,
    eps: float,
    z: float,
) -> np.ndarray:
    """g_n = s_n ((1-eps) w[y_n] (p_n - onehot_n) + (eps/C)(sum(w) p_n - w) + 2 z lse_n p_n).

    Shapes: x logits (..., C), lse (...), y (...) valid class indices, w (C,), s (...)
    -> (..., C); p = softmax(x).
    """
    p = _softmax(x)
    n_classes = p.shape[-1]
    grad = np.zeros(p.shape)
    if eps != 1:
        grad = grad + (1 - eps) * w[y][..., None] * _p_minus_onehot(x, y)
    if eps != 0:
        grad = grad + (eps / n_classes) * (np.sum(w) * p - w)
    if z != 0:
        grad = grad + 2 * z * lse[..., None] * p
    return s[..., None] * grad


def _focal_terms(nll: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """(f(L), f'(L)) of the softmax focal loss, L = -log p_y the row's cross-entropy:
    f(L) = q^gamma L and f'(L) = gamma q^(gamma-1) p_y L + q^gamma
    = q^gamma (1 + gamma p_y L / q), q = 1 - p_y = -expm1(-L) (accurate as p_y -> 1).
    At q = 0 (L = 0) L / q is its limit 1; where p_y = 0 the term gamma p_y L / q is 0."""
    q = -np.expm1(-nll)
    p_y = np.exp(-nll)
    ratio = np.where(q != 0, nll / np.where(q != 0, q, 1.0), 1.0)
    q_gamma = q**gamma
    slope = q_gamma * (1 + np.where(p_y != 0, gamma * p_y * ratio, 0.0))
    return q_gamma * nll, slope


def _focal_losses(log_p: np.ndarray, lse: np.ndarray, y: np.ndarray, w: np.ndarray, s: np.ndarray,
                  gamma: float, z: float) -> np.ndarray:
    """loss_n = s_n (w[y_n] (1 - p_y)^gamma (-l[n, y_n]) + z lse_n^2)."""
    loss = w[y] * _focal_terms(-_pick(log_p, y), gamma)[0]
    if z != 0:
        loss = loss + z * lse**2
    return s * loss


def _focal_grads(x: np.ndarray, log_p: np.ndarray, lse: np.ndarray, y: np.ndarray, w: np.ndarray,
                 s: np.ndarray, gamma: float, z: float) -> np.ndarray:
    """g_n = s_n (w[y_n] f'(L_n) (p_n - onehot_n) + 2 z lse_n p_n), L_n = -l[n, y_n]."""
    slope = _focal_terms(-_pick(log_p, y), gamma)[1]
    grad = (w[y] * slope)[..., None] * _p_minus_onehot(x, y)
    if z != 0:
        grad = grad + 2 * z * lse[..., None] * _softmax(x)
    return s[..., None] * grad


def _entropy(x: np.ndarray) -> np.ndarray:
    """-sum_c p_c log p_c of p = softmax(x), as log S + sum_c p_c (m - x_c) (every term >= 0:
    no cancellation; p_c = 0 terms are 0); NaN for a row whose max is not finite (as
    torch.distributions.Categorical); (..., C) -> (...)."""
    m = _row_max(x)
    shifted = x - m
    p = _softmax(x)
    with _quiet():
        terms = np.where(p > 0, p * -shifted, 0.0)
    entropy = _log_sum_exp_shifted(shifted)[..., 0] + np.sum(terms, axis=-1)
    return np.where(np.isfinite(m[..., 0]), entropy, np.nan)


def _smoothed_probabilities(y: np.ndarray, eps: float) -> np.ndarray:
    """y' = (1-eps) y + eps/C; (..., C) -> (..., C)."""
    n_classes = y.shape[-1]
    smoothed = np.zeros(y.shape)
    if eps != 1:
        smoothed = smoothed + (1 - eps) * y
    if eps != 0:
        smoothed = smoothed + eps / n_classes
    return smoothed


def _probability_target_losses(
    log_p: np.ndarray, lse: np.ndarray, yp: np.ndarray, w: np.ndarray, s: np.ndarray, z: float
) -> np.ndarray:
    """loss_n = s_n (sum_c w_c y'_c -l[n,c] + z lse_n^2); log_p, yp (..., C) -> (...)."""
    loss = np.sum(w * yp * -log_p, axis=-1)
    if z != 0:
        loss = loss + z * lse**2
    return s * loss


def _probability_target_grads(
    p: np.ndarray, lse: np.ndarray, yp: np.ndarray, w: np.ndarray, s: np.ndarray, z: float
) -> np.ndarray:
    """g_n = s_n ((sum_c w_c y'_c) p_n - w y'_n + 2 z lse_n p_n); p, yp (..., C) -> (..., C).

    Exact for any target rows, also rows that do not sum to 1.
    """
    grad = np.sum(w * yp, axis=-1, keepdims=True) * p - w * yp
    if z != 0:
        grad = grad + 2 * z * lse[..., None] * p
    return s[..., None] * grad


def _cross_entropy(args: LossArgs, with_grad: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The reduced loss (shape () or row_shape) and, if asked, its gradient (..., C), in float64.

    Index targets: ignored rows (y_n == ignore_index) give 0 loss and 0 gradient and are left
    out of the mean's normaliser W = sum_n s_n w[y_n]. Probability targets: the mean divides
    by the number of rows, or by sum(s) when sample weights are given. A mean whose normaliser
    is 0 (no rows, or only rows of weight 0) is NaN, and so is the gradient of its kept rows
    (as PyTorch's 0/0); ignored rows' gradient stays 0 even then.
    """
    if args.where is not None:
        return _masked_cross_entropy(args, with_grad)
    x = _float64_rows(args.logits, args.axis)
    slope: float | np.ndarray = 1.0
    if args.options.softcap is not None:
        x, slope = softcapped(x, args.options.softcap), softcap_slope(x, args.options.softcap)
    n_classes = args.n_classes
    w = np.ones(n_classes) if args.weight is None else args.weight
    s = np.ones(args.row_shape) if args.sample_weight is None else args.sample_weight
    eps, z = args.options.label_smoothing, args.options.z_loss
    log_p, lse = _log_softmax(x), _logsumexp(x)
    grads: np.ndarray | None = None

    if args.probabilities:
        yp = _smoothed_probabilities(np.moveaxis(args.target, args.axis, -1), eps)
        kept = np.ones(args.row_shape, dtype=bool)
        losses = _probability_target_losses(log_p, lse, yp, w, s, z)
        if with_grad:
            grads = _probability_target_grads(_softmax(x), lse, yp, w, s, z) * slope
        normaliser = np.float64(kept.size) if args.sample_weight is None else np.sum(s)
    else:
        kept = args.target != args.target_ignore_index  # int64 targets: ignore_index as int64
        y = np.where(kept, args.target, 0)  # ignored rows get class 0, then are dropped
        gamma = args.options.focal_gamma
        if gamma:  # the focal loss (gamma 0: the cross-entropy)
            losses = np.where(kept, _focal_losses(log_p, lse, y, w, s, gamma, z), 0.0)
        else:
            losses = np.where(kept, _index_target_losses(log_p, lse, y, w, s, eps, z), 0.0)
        if with_grad:
            if gamma:
                grads = _focal_grads(x, log_p, lse, y, w, s, gamma, z) * slope
            else:
                grads = _index_target_grads(x, lse, y, w, s, eps, z) * slope
            grads = np.where(kept[..., None], grads, 0.0)
        normaliser = np.sum(s * w[y], where=kept)

    if args.options.reduction == "none":  # the gradient is that of sum(losses)
        return losses, grads
    total = np.sum(losses)
    if args.options.reduction == "sum":
        return total, grads
    if normaliser == 0:  # nothing to average over: the mean and its gradient are undefined
        normaliser = np.float64(np.nan)
    if grads is not None:
        grads = np.where(kept[..., None], grads / normaliser, 0.0)
    return total / normaliser, grads


def _masked_row_losses(
    x: np.ndarray, kept: np.ndarray, target: np.ndarray, probabilities: bool,
    w: np.ndarray, s: np.ndarray, eps: float, z: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row losses under a class mask, (losses, log_p, lse): x float64 (..., C), kept
    bool (..., C), each row keeping at least one class; target valid class indices (...)
    or probabilities (..., C). K the kept classes, lse = logsumexp over K,
    l_c = log_softmax over K for c in K and x_c - lse for a masked c (a label's own
    logit, as optax). Index targets:
        s ((1-eps) w[y] -l[y] + (eps/|K|) sum_K w_c -l_c + z lse^2);
    probabilities: s (sum_K w_c y'_c -l_c + z lse^2), y' = (1-eps) y + eps/|K|.
    Masked classes are left out of every sum (never multiplied by 0)."""
    xm = np.where(kept, x, -np.inf)
    lse = _logsumexp(xm)
    log_p = np.where(kept, _log_softmax(xm), x - lse[..., None])
    share = eps / np.sum(kept, axis=-1)  # eps/|K|
    loss = np.zeros(lse.shape)
    if probabilities:
        yp = np.zeros(x.shape)
        if eps != 1:
            yp = yp + (1 - eps) * target
        if eps != 0:
            yp = yp + share[..., None]
        loss = loss + np.sum(w * yp * -log_p, axis=-1, where=kept)
    else:
        if eps != 1:
            loss = loss + (1 - eps) * w[target] * -_pick(log_p, target)
        if eps != 0:
            loss = loss + share * np.sum(w * -log_p, axis=-1, where=kept)
    if z != 0:
        loss = loss + z * lse**2
    return s * loss, log_p, lse


def _masked_cross_entropy(args: LossArgs, with_grad: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """`_cross_entropy` under the class mask `args.where` (optax's semantics, SPEC's
    formulas over the kept classes K of each row; `_masked_row_losses`). A row that keeps
    no class, like an ignored row, has loss 0 and gradient 0 and is left out of the mean's
    normaliser (index targets: sum of s_n w[y_n] over the other rows; probabilities: their
    number, or sum of their s_n). Gradient, p = softmax over K (0 at masked classes):
    index g_n = s_n ((1-eps) w[y] (p - onehot(y)) + (eps/|K|)(sum_K w_c p - w 1_K)
    + 2 z lse p), so a label on a masked class has gradient -s_n (1-eps) w[y] there (its
    own logit is in the loss); probabilities g_n = s_n ((sum_K w y') p - w y' 1_K
    + 2 z lse p). Every other masked class has gradient exactly 0."""
    assert args.where is not None
    x = _float64_rows(args.logits, args.axis)
    slope: float | np.ndarray = 1.0
    if args.options.softcap is not None:
        x, slope = softcapped(x, args.options.softcap), softcap_slope(x, args.options.softcap)
    kept = np.moveaxis(args.where, args.axis, -1)
    n_classes = args.n_classes
    w = np.ones(n_classes) if args.weight is None else args.weight
    s = np.ones(args.row_shape) if args.sample_weight is None else args.sample_weight
    eps, z = args.options.label_smoothing, args.options.z_loss
    counted = np.asarray(kept.any(axis=-1))
    if args.probabilities:
        target = np.moveaxis(args.target, args.axis, -1)
    else:
        counted = counted & (args.target != args.target_ignore_index)
        target = np.where(counted, args.target, 0)  # the rows left out get class 0, then are dropped
    # The rows left out compute a row that keeps every class (then are dropped).
    row_kept = np.where(counted[..., None], kept, True)
    losses, log_p, lse = _masked_row_losses(x, row_kept, target, args.probabilities, w, s, eps, z)
    losses = np.where(counted, losses, 0.0)
    grads: np.ndarray | None = None
    if with_grad:
        p = np.where(row_kept, _softmax(np.where(row_kept, x, -np.inf)), 0.0)
        share = (eps / np.sum(row_kept, axis=-1))[..., None]
        if args.probabilities:
            yp = np.zeros(x.shape)
            if eps != 1:
                yp = yp + (1 - eps) * target
            if eps != 0:
                yp = yp + share
            yp = np.where(row_kept, yp, 0.0)
            grads = np.sum(w * yp, axis=-1, keepdims=True) * p - w * yp
        else:
            grads = np.zeros(x.shape)
            if eps != 1:
                onehot = _onehot(target, n_classes)
                minus = np.where(onehot == 1, -_softmax_complement(np.where(row_kept, x, -np.inf)), p)
                grads = grads + (1 - eps) * w[target][..., None] * minus
            if eps != 0:
                grads = grads + share * (np.sum(np.where(row_kept, w, 0.0), axis=-1, keepdims=True) * p - np.where(row_kept, w, 0.0))
        if z != 0:
            grads = grads + 2 * z * lse[..., None] * p
        # the chain rule through the cap; masked classes' exact zeros stay 0 (a NaN logit's slope)
        grads = np.where(grads != 0, grads * slope, grads)
        grads = np.where(counted[..., None], s[..., None] * grads, 0.0)
    if args.probabilities:
        normaliser = np.sum(s, where=counted) if args.sample_weight is not None else np.float64(np.sum(counted))
    else:
        normaliser = np.sum(s * w[target], where=counted)
    if args.options.reduction == "none":
        return losses, grads
    total = np.sum(losses)
    if args.options.reduction == "sum":
        return total, grads
    if normaliser == 0:
        normaliser = np.float64(np.nan)
    if grads is not None:
        grads = np.where(counted[..., None], grads / normaliser, 0.0)
    return total / normaliser, grads


# -- output handling ---------------------------------------------------------------------------


# Rounding to a narrower result dtype may overflow to +-inf (float16 holds up to 65504): that
# is the rounding, not an error, so the casts below run under `_quiet()`.


def _as_result(value: Any, dtypes: Dtypes) -> Any:
    """`value` in the result dtype; a 0-d result becomes a NumPy scalar."""
    with _quiet():
        return round_float64(value, dtypes.result)[()]


def _write(result: np.ndarray, dtypes: Dtypes, out: np.ndarray | None) -> np.ndarray:
    """`result` (already in the caller's axis order) as a new result-dtype array, or into `out`
    (rounded to the result dtype first, then cast to out's: an `out` of another float dtype
    gets the result's value, not more digits of it)."""
    with _quiet():
        if out is None:
            return round_float64(result, dtypes.result)
        out[...] = round_float64(result, dtypes.result)
    return out


# -- public functions --------------------------------------------------------------------------


def _over_axes(x: Any, axis: Any, out: np.ndarray | None, n_threads: Any, dtype: Any,
               formula: Any, softcap: Any = None) -> np.ndarray:
    """`formula` (softmax or log-softmax of float64 rows, class axis last) along `axis`:
    an int, None (all axes) or a tuple (the axes merged into one class axis); into `out`.
    With a `softcap`, of the capped rows."""
    array, dtypes = as_real_array(x, "x", dtype)
    axes = check_axes(axis, array.ndim)
    check_n_threads(n_threads)
    cap = check_softcap(softcap)
    if cap is not None:
        plain = formula

        def formula(rows: np.ndarray) -> np.ndarray:
            return plain(softcapped(rows, cap))
    merged = MergedAxes(array.shape, axes if isinstance(axes, tuple) else (axes,))
    if out is not None:
        check_out(out, array.shape, dtypes, None if isinstance(axes, tuple) else axes)
        if not isinstance(axes, tuple):
            check_in_place(out, array)
    with _quiet():
        result = merged.unmerge(formula(_float64_rows(merged.merge(array), -1)))
    written = _write(result, dtypes, out)
    return written[()] if out is None and array.ndim == 0 else written  # a 0-d input: a NumPy scalar


def softmax(
    x: Any, axis: Any = -1, *, out: np.ndarray | None = None, dtype: Any = None, softcap: Any = None,
    n_threads: Any = None,
) -> np.ndarray:
    """p = exp(x - max) / sum(exp(x - max)) along `axis`; x's shape, result dtype.

    `axis`: an int, None (all axes) or a tuple of axes (merged into one); a 0-d x is one
    element. -inf entries next to finite ones give exact zeros; a row with a NaN, a +inf,
    or only -inf gives a NaN row (as PyTorch). `out` (x's shape, a float dtype the result
    is cast to; may be x) is filled and returned. `dtype`: x is converted to it first.
    `softcap`: None, or cap > 0: the softmax of cap * tanh(x / cap).
    """
    return _over_axes(x, axis, out, n_threads, dtype, _softmax, softcap)


def log_softmax(
    x: Any, axis: Any = -1, *, out: np.ndarray | None = None, dtype: Any = None, softcap: Any = None,
    n_threads: Any = None,
) -> np.ndarray:
    """l = (x - max) - log(sum(exp(x - max))) along `axis`; x's shape, result dtype.

    As `softmax`: -inf entries next to finite ones give -inf; a row with a NaN, a +inf, or
    only -inf gives a NaN row (as PyTorch). `softcap`: of cap * tanh(x / cap).
    """
    return _over_axes(x, axis, out, n_threads, dtype, _log_softmax, softcap)


def logsumexp(
    x: Any, axis: Any = -1, *, b: Any = None, keepdims: bool = False, return_sign: bool = False,
    dtype: Any = None, softcap: Any = None, n_threads: Any = None,
) -> Any:
    """lse = log(sum(b exp(x - m))) + m along `axis` (m the max over the entries with b != 0,
    or 0 where it is infinite); b = 1 when None.

    `axis`: an int, None or a tuple (SciPy's forms). Shape: x's (broadcast with b's) without
    the reduced axes (kept with length 1 if `keepdims`); a NumPy scalar for a 0-d result.
    With `return_sign`, (log|sum|, sign(sum)); without it a negative sum gives NaN. As
    torch.logsumexp and scipy.special.logsumexp: +inf in a row gives +inf, a row of all -inf
    or a length-0 axis gives -inf (sign 0), a NaN gives NaN. `softcap`: None, or cap > 0:
    x is cap * tanh(x / cap) (before the weights b).
    """
    array, dtypes, weights = check_logsumexp_args(x, b, dtype)
    axes = check_axes(axis, array.ndim)
    check_n_threads(n_threads)
    cap = check_softcap(softcap)
    merged = MergedAxes(array.shape, axes if isinstance(axes, tuple) else (axes,))
    rows = _float64_rows(merged.merge(array), -1)
    if cap is not None:
        rows = softcapped(rows, cap)
    with _quiet():
        if weights is None:
            lse = _logsumexp(rows)
            sign = np.where(np.isnan(lse), np.nan, np.where(lse == -np.inf, 0.0, 1.0))
        else:
            w = _float64_rows(merged.merge(weights), -1)
            m = _row_max(np.where(w != 0, rows, -np.inf))
            m = np.where(np.isinf(m), 0.0, m)
            total = np.sum(np.where(w != 0, w * np.exp(rows - m), 0.0), axis=-1)
            lse = np.log(np.abs(total)) + m[..., 0]
            sign = np.sign(total)
            if not return_sign:
                lse = np.where(sign < 0, np.nan, lse)
    lse = merged.reduced(lse, keepdims)
    if not return_sign:
        return _as_result(lse, dtypes)
    return _as_result(lse, dtypes), _as_result(merged.reduced(sign, keepdims), dtypes)


def cross_entropy(
    logits: Any,
    target: Any,
    *,
    axis: Any = -1,
    weight: Any = None,
    sample_weight: Any = None,
    ignore_index: Any = DEFAULT_IGNORE_INDEX,
    reduction: Any = "mean",
    label_smoothing: Any = 0.0,
    z_loss: Any = 0.0,
    softcap: Any = None,
    focal_gamma: Any = None,
    return_lse: Any = False,
    return_entropy: Any = False,
    return_argmax: Any = False,
    where: Any = None,
    n_threads: Any = None,
) -> Any:
    """Cross-entropy of softmax(logits) along `axis` against `target` (SPEC.md's formulas).

    target: int class indices of the logits' shape without `axis`, or float probabilities of
    the logits' shape. Index targets: loss_n = s_n ((1-eps) w[y_n] -l[n,y_n]
    + (eps/C) sum_c w_c -l[n,c] + z lse_n^2); "mean" divides by sum over non-ignored rows of
    s_n w[y_n]. Probability targets: loss_n = s_n (sum_c w_c y'_c -l[n,c] + z lse_n^2) with
    y' = (1-eps) y + eps/C; "mean" divides by the number of rows (sum(s) if given).
    Returns a result-dtype scalar for "mean"/"sum", the per-row losses (shape of the rows,
    0 for ignored rows) for "none". `where`: a boolean class mask (`_masked_cross_entropy`).
    `softcap`: None, or cap > 0: every formula of cap * tanh(logits / cap), the focal
    loss's too (not yet with the `return_*` outputs: ValueError).
    `focal_gamma`: loss_n = s_n (w[y_n] (1 - p_y)^gamma (-l[n,y_n]) + z lse_n^2) (`_focal_terms`).
    `return_lse`, `return_entropy`, `return_argmax`: a CrossEntropyOutputs (`_extra_outputs`).
    """
    args = check_cross_entropy_call(
        logits, target,
        dict(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, ignore_index=ignore_index,
             softcap=softcap, focal_gamma=focal_gamma),
        axis=axis, weight=weight, sample_weight=sample_weight, n_threads=n_threads, where=where,
    )
    requested = requested_outputs(return_lse, return_entropy, return_argmax, where)
    with _quiet():
        loss, _ = _cross_entropy(args, with_grad=False)
    if requested is not None:
        return _extra_outputs(args, requested, _as_result(loss, args.dtypes), None)
    return _as_result(loss, args.dtypes)


def _extra_outputs(args: LossArgs, requested: tuple[bool, bool, bool], loss: Any,
                   grad: np.ndarray | None) -> _outputs.CrossEntropyOutputs:
    """The CrossEntropyOutputs of a call: each row's log-sum-exp (`_logsumexp`), entropy
    (`_entropy`) in float64 rounded once to the result dtype, np.argmax of the logits (as
    given: float64 holds every logit exactly) and the number of correct predictions. With
    a softcap, all of the capped logits (`softcapped`)."""
    x = _float64_rows(args.logits, args.axis)
    if args.options.softcap is not None:
        x = softcapped(x, args.options.softcap)
    with _quiet():
        lse = _as_result(_logsumexp(x), args.dtypes) if requested[0] else None
        entropy = _as_result(_entropy(x), args.dtypes) if requested[1] else None
    argmax = correct = None
    if requested[2]:
        argmax = np.argmax(x, axis=-1)[()]
        correct = n_correct(argmax, args.target, args.probabilities, args.axis, args.target_ignore_index)
    return _outputs.CrossEntropyOutputs(loss, grad, lse, entropy, argmax, correct)


def cross_entropy_with_grad(
    logits: Any,
    target: Any,
    *,
    axis: Any = -1,
    weight: Any = None,
    sample_weight: Any = None,
    ignore_index: Any = DEFAULT_IGNORE_INDEX,
    reduction: Any = "mean",
    label_smoothing: Any = 0.0,
    z_loss: Any = 0.0,
    softcap: Any = None,
    focal_gamma: Any = None,
    return_lse: Any = False,
    return_entropy: Any = False,
    return_argmax: Any = False,
    where: Any = None,
    out: np.ndarray | None = None,
    n_threads: Any = None,
) -> Any:
    """(loss, grad): `cross_entropy`'s loss and grad = d(loss)/d(logits), logits' shape.

    For reduction "none", grad is the gradient of the sum of the per-row losses. Index targets:
    g_n = s_n ((1-eps) w[y_n] (p_n - onehot_n) + (eps/C)(sum(w) p_n - w) + 2 z lse_n p_n),
    0 for ignored rows. Probability targets: g_n = s_n ((sum_c w_c y'_c) p_n - w y'_n
    + 2 z lse_n p_n). "mean" divides by the same normaliser as the loss. `out` (logits' shape,
    result dtype; may be the logits array itself, for an in-place update) receives grad.
    With `softcap`, grad is the capped logits' gradient times `softcap_slope(logits, cap)`.
    `focal_gamma`: g_n = s_n (w[y_n] f'(L_n) (p_n - onehot_n) + 2 z lse_n p_n) (`_focal_grads`).
    """
    args = check_cross_entropy_call(
        logits, target,
        dict(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, ignore_index=ignore_index,
             softcap=softcap, focal_gamma=focal_gamma),
        axis=axis, weight=weight, sample_weight=sample_weight, n_threads=n_threads, out=out,
        where=where,
    )
    requested = requested_outputs(return_lse, return_entropy, return_argmax, where)
    with _quiet():
        loss, grad = _cross_entropy(args, with_grad=True)
    assert grad is not None
    # Everything is computed (from a copy) before `out`, possibly the logits, is written.
    extras = None if requested is None else _extra_outputs(args, requested, None, None)
    grad = np.moveaxis(grad, -1, args.axis)
    result = _as_result(loss, args.dtypes), _write(grad, args.dtypes, out)
    if extras is not None:
        return extras._replace(loss=result[0], grad=result[1])
    return result


def gradient_hessian(
    logits: Any,
    labels: Any,
    *,
    sample_weight: Any = None,
    out: tuple[np.ndarray, np.ndarray] | None = None,
    n_threads: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(grad, hess) = (s_n (p - onehot), s_n p (1 - p)) per row, p = softmax(logits, axis=1).

    logits (N, C); labels (N,) class indices (integers, or floats holding whole numbers, as
    scikit-learn passes them); sample_weight (N,) or None. Both results (N, C), result dtype.
    `out` is None or a tuple (grad_out, hess_out) of such arrays, filled and returned;
    grad_out may be the logits array itself.
    """
    x, dtypes, y, s = check_gradient_hessian_args(logits, labels, sample_weight)
    check_n_threads(n_threads)
    check_gradient_hessian_out(out, x, dtypes, labels, s)
    with _quiet():
        p = _softmax(_float64_rows(x, 1))
        rows = _float64_rows(x, 1)
        grad = _p_minus_onehot(rows, y)
        hess = p * _softmax_complement(rows)
        if s is not None:
            grad = s[:, None] * grad
            hess = s[:, None] * hess
    if out is None:
        return _write(grad, dtypes, None), _write(hess, dtypes, None)
    return _write(grad, dtypes, out[0]), _write(hess, dtypes, out[1])


# -- linear + cross-entropy: the unfused formula -----------------------------------------------

from ._validation import LinearLossArgs, check_linear_cross_entropy_call  # noqa: E402


def _linear_cross_entropy(args: LinearLossArgs, with_grad: bool) -> tuple[Any, ...]:
    """logits = hidden @ W.T + b in float64, the whole N x V of them, then `cross_entropy`
    (or `cross_entropy_with_grad`) of them; with G its gradient: dH = G @ W, dW = G.T @ H,
    db = G summed over the rows. Results in hidden's dtype."""
    h = args.hidden.astype(np.float64).reshape(args.n_rows, args.n_features)
    w = args.linear_weight.astype(np.float64)
    logits = h @ w.T
    if args.linear_bias is not None:
        logits = logits + args.linear_bias.astype(np.float64)
    logits = logits.reshape(*args.row_shape, args.n_classes)
    options: dict[str, Any] = dict(
        weight=args.weight, sample_weight=args.sample_weight, ignore_index=args.options.ignore_index,
        reduction=args.options.reduction, label_smoothing=args.options.label_smoothing,
        z_loss=args.options.z_loss,
    )
    dtypes = Dtypes(args.dtype, args.dtype)
    if not with_grad:
        return (_as_result(cross_entropy(logits, args.target_given, **options), dtypes),)
    loss, grad = cross_entropy_with_grad(logits, args.target_given, **options)
    g = grad.reshape(args.n_rows, args.n_classes)
    grads = [(g @ w).reshape(args.hidden.shape), g.T @ h]
    if args.linear_bias is not None:
        grads.append(np.sum(g, axis=0))
    return (_as_result(loss, dtypes), *(_write(gi, dtypes, None) for gi in grads))


def linear_cross_entropy(
    hidden: Any,
    linear_weight: Any,
    target: Any,
    *,
    linear_bias: Any = None,
    weight: Any = None,
    sample_weight: Any = None,
    ignore_index: Any = DEFAULT_IGNORE_INDEX,
    reduction: Any = "mean",
    label_smoothing: Any = 0.0,
    z_loss: Any = 0.0,
    chunk_size: Any = None,
    memory_budget: Any = None,
    n_threads: Any = None,
) -> Any:
    """cross_entropy(hidden @ linear_weight.T + linear_bias, target, ...), the logits
    formed whole in float64. hidden (..., D), linear_weight (V, D), linear_bias (V,) or
    None, all float32 or all float64; target of hidden's shape without its last axis
    (class indices) or that + (V,) (probabilities). chunk_size, memory_budget and
    n_threads are validated, otherwise unused."""
    args = check_linear_cross_entropy_call(
        hidden, linear_weight, target,
        dict(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, ignore_index=ignore_index),
        linear_bias=linear_bias, weight=weight, sample_weight=sample_weight, chunk_size=chunk_size,
        memory_budget=memory_budget, n_threads=n_threads,
    )
    with _quiet():
        return _linear_cross_entropy(args, with_grad=False)[0]


def linear_cross_entropy_with_grad(
    hidden: Any,
    linear_weight: Any,
    target: Any,
    *,
    linear_bias: Any = None,
    weight: Any = None,
    sample_weight: Any = None,
    ignore_index: Any = DEFAULT_IGNORE_INDEX,
    reduction: Any = "mean",
    label_smoothing: Any = 0.0,
    z_loss: Any = 0.0,
    chunk_size: Any = None,
    memory_budget: Any = None,
    n_threads: Any = None,
) -> tuple[Any, ...]:
    """(loss, grad_hidden, grad_linear_weight[, grad_linear_bias]): `linear_cross_entropy`
    and, with G = d(loss)/d(logits) from `cross_entropy_with_grad` (for reduction="none"
    that of the sum of the per-row losses), G @ linear_weight (hidden's shape),
    G.T @ hidden (V, D) and, when linear_bias is given, G summed over the rows (V,)."""
    args = check_linear_cross_entropy_call(
        hidden, linear_weight, target,
        dict(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, ignore_index=ignore_index),
        linear_bias=linear_bias, weight=weight, sample_weight=sample_weight, chunk_size=chunk_size,
        memory_budget=memory_budget, n_threads=n_threads,
    )
    with _quiet():
        return _linear_cross_entropy(args, with_grad=True)

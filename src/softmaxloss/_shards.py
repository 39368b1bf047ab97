"""Cross-entropy of rows whose classes are split into blocks: the one implementation of
the block statistics, their merge and the loss and gradient from the merged statistics,
which `softmaxloss.distributed` (a vocabulary sharded over ranks) and `softmaxloss.dask`
(Dask arrays chunked along the classes) both use.

Every array here is 2-D, rows by classes (R, W), or per row (R,): the callers move the
class axis last and flatten the rest. A block holds the classes [c0, c0 + W) of all C.

The math, for one row with logits x_c, class index y (or probabilities y_c), class
weights w_c, sample weight s, eps = label_smoothing, z = z_loss, W the mean's normaliser:

1. Block statistics (`block_stats`, the kernels `class_block_stats_*`), with a shift m
   (the block's own max, or a given per-row shift: the row's max over all blocks):
       S_b   = sum_{c in b} exp(x_c - m)   stored as ties + rest: (1, S_b - 1) when S_b >= 1
               (the block then holds exp(0) = 1), else (0, S_b), so that S - 1 summed over
               blocks keeps its digits when S ~ 1 (a confident, correct prediction)
       G_b   = sum_{c in b} v_c (m - x_c)  with v_c = w_c (index targets; only when eps != 0)
               or v_c = w_c y'_c, y'_c = (1-eps) y_c + eps/C (probabilities)
       V_b   = sum_{c in b} v_c
       x_y   if y is in the block, else 0
2. Merge (`merge`, associative and commutative, so any tree of merges gives the same
   result up to rounding): M = max_b m_b and, for each block,
       S  += S_b                        if m_b == M (ties and rest added apart)
       S  += S_b exp(m_b - M)           otherwise (into rest)
       G  += G_b + (M - m_b) V_b        (no shift term for a block of all -inf logits)
       V  += V_b,  x_y += x_y,b         (one block holds y)
   When every block was shifted by the same M (the row's max, known before the sums:
   `softmaxloss.distributed` all-reduces the maxima first) the merge is a plain sum of the
   columns `packed_columns` names: what an all-reduce computes.
3. Row terms (`row_terms`), with log S = log1p(S - 1), lse = M + log S:
   index targets (ignored rows 0):
       loss   = s ((1-eps) w_y (log S + M - x_y) + (eps/C) (w_sum log S + G) + z lse^2)
       p_coef = (1-eps) w_y + (eps/C) w_sum + 2 z lse
   probabilities:
       loss   = s (V log S + G + z lse^2),   p_coef = V + 2 z lse
   and the gradient's coefficients p_scale = s p_coef / S / W, smooth_scale = s (eps/C) / W.
4. Block gradient (`block_grad`, the kernels `class_block_grad_*`), e_c = exp(x_c - M):
       index:  grad_c = p_scale e_c - smooth_scale w_c, and at the label
               s ((1-eps) w_y (p_y - 1) + (eps/C)(w_sum p_y - w_y) + 2 z lse p_y) / W
       probabilities: grad_c = p_scale e_c - s w_c y'_c / W
   the terms grouped and rounded as the whole-row kernel groups them, so that a split of
   the classes into blocks changes only the rounding of S (and of the merge's exp).

Terms whose coefficient is 0 are left out, as in the whole-row kernel (-l_c can be +inf).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _dispatch
from ._validation import (
    DEFAULT_IGNORE_INDEX,
    Dtypes,
    LossOptions,
    _check_whole_numbers,
    _target_ignore_index,
    as_real_array,
    check_index_target,
    check_n_threads,
    float_dtypes,
)

# Columns of a block's per-row statistics, and of the gradient's per-row coefficients (the
# kernels' STAT_* and COEF_* enums, in _kernels_classblock.pxi).
STATS = ("max", "ties", "rest", "gap", "weight_total", "label_logit")
MAX, TIES, REST, GAP, VSUM, LABEL = range(len(STATS))
COEFS = ("max", "p_scale", "smooth_scale", "s", "p_coef", "total", "excess", "lse", "w_y", "divide_last")
N_COEFS = len(COEFS)
_NO_IGNORED_ROW = -1
_DBL_MIN = float(np.finfo(np.float64).tiny)


@dataclass(frozen=True, slots=True)
class Spec:
    """What every block of one call shares: the checked options, the number of classes C
    of all blocks, the target kind, the class weights of all C (float64, or None), their
    sum, the int64 value that marks ignored rows, and the dtypes (the logits' compute
    dtype: float32 or float64; the result dtype)."""

    options: LossOptions
    n_classes: int
    probabilities: bool
    weight: np.ndarray | None
    w_sum: float
    target_ignore_index: int
    dtypes: Dtypes

    @property
    def eps(self) -> float:
        return self.options.label_smoothing

    def block_weight(self, c0: int, width: int) -> np.ndarray | None:
        return None if self.weight is None else np.ascontiguousarray(self.weight[c0 : c0 + width])


def make_spec(
    n_classes: int, dtype: np.dtype[Any], probabilities: bool, weight: Any, options: LossOptions | dict[str, Any],
    target_dtype: np.dtype[Any] | None = None,
) -> Spec:
    """The Spec of a call with C = n_classes; the weight and options checked with the
    messages of `softmaxloss.cross_entropy`."""
    if not isinstance(options, LossOptions):
        options = LossOptions.checked(**options)
    if probabilities and options.ignore_index != DEFAULT_IGNORE_INDEX:
        raise ValueError(
            "ignore_index applies to class-index targets only; got probability "
            f"targets with ignore_index={options.ignore_index}"
        )
    dtypes = float_dtypes(np.dtype(dtype))
    w = None
    if weight is not None:
        w, _ = as_real_array(weight, "weight")
        if w.shape != (n_classes,):
            raise ValueError(
                f"weight must have one entry per class, shape ({n_classes},); got shape {w.shape}"
            )
        w = np.ascontiguousarray(w, dtype=np.float64)
    marker = _target_ignore_index(options.ignore_index, np.dtype(target_dtype or np.int64))
    return Spec(
        options=options, n_classes=n_classes, probabilities=probabilities, weight=w,
        w_sum=float(n_classes) if w is None else float(math.fsum(w)),
        target_ignore_index=_NO_IGNORED_ROW if marker is None else marker, dtypes=dtypes,
    )


def index_target(target: Any, spec: Spec) -> np.ndarray:
    """Class indices (any integer dtype, or floats holding whole numbers) as int64, every
    one in [0, C) or ignore_index (marked as spec.target_ignore_index); ValueError naming
    the first bad one."""
    t = np.asarray(target)
    if t.dtype.kind == "f":
        t = _check_whole_numbers(t, "target")
    elif t.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class indices or float probabilities; got dtype {t.dtype}")
    ignore_index = spec.options.ignore_index
    check_index_target(t, spec.n_classes, ignore_index)
    if t.dtype.kind == "f" or t.dtype == np.uint64:
        return np.where(t == ignore_index, spec.target_ignore_index, t).astype(np.int64)
    return t.astype(np.int64, copy=False)


def sample_weights(sample_weight: Any, n_rows: int) -> np.ndarray | None:
    if sample_weight is None:
        return None
    array, _ = as_real_array(sample_weight, "sample_weight")
    if array.shape != (n_rows,):
        raise ValueError(f"sample_weight has shape {array.shape}; expected one weight per row, shape ({n_rows},)")
    return array.astype(np.float64, copy=False)


def threads(n_threads: Any) -> int:
    count = check_n_threads(n_threads)
    return 0 if count is None else min(count, 2**31 - 1)


def _rows(x: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """A 2-D array as the kernels' (R, 1, W) rows view, converted to `dtype` if needed."""
    if x.dtype != dtype or not x.flags.aligned:
        x = np.asarray(x, dtype=dtype)
        if not x.flags.aligned:
            x = x.copy()
    return x[:, None, :]


# ---- 1. block statistics -------------------------------------------------------------


def block_max(x: np.ndarray) -> np.ndarray:
    """Each row's max over the block (float64; a row with NaN gives NaN)."""
    if x.shape[0] == 0:
        return np.empty(0)
    top: np.ndarray = np.max(x, axis=1).astype(np.float64)
    return top


def block_stats(
    x: np.ndarray, target: np.ndarray, c0: int, spec: Spec, shift: np.ndarray | None = None,
    exp_out: np.ndarray | None = None, n_threads: int = 0,
) -> np.ndarray:
    """(R, len(STATS)) statistics of the block x (R, W) of classes [c0, c0 + W): shifted by
    each row's own max in the block, or by `shift` (R,) float64. target: (R,) int64 class
    indices, or the block's (R, W) probabilities. exp_out: (R, W) array of the compute
    dtype that receives exp(x - shift) (needs shift; may be x itself)."""
    dtype = spec.dtypes.compute
    xr = _rows(x, dtype)
    stats = np.empty((x.shape[0], 1, len(STATS)))
    h = None if shift is None else shift[:, None]
    e = None if exp_out is None else exp_out[:, None, :]
    w = spec.block_weight(c0, x.shape[1])
    if spec.probabilities:
        t = target if target.dtype in (np.float32, np.float64) and target.flags.aligned else target.astype(np.float64)
        _dispatch.specialised("class_block_stats_probs", dtype, t.dtype)(
            xr, t[:, None, :], w, spec.eps, spec.n_classes, h, stats, e, n_threads)
    else:
        _dispatch.specialised("class_block_stats_index", dtype)(
            xr, target[:, None], c0, w, spec.eps != 0.0, h, stats, e, n_threads)
    return stats[:, 0, :]


# ---- exact differences, as the kernels take them ----------------------------------------


def _sub_lo(a: np.ndarray, b: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The rounding error of hi = a - b (TwoSum: a - b = hi + lo exactly), 0 where hi is not
    finite: the kernels' sml_sub_lo."""
    back = hi - a
    lo = (a - (hi - back)) - (b + back)
    return np.where(np.abs(hi) <= np.finfo(np.float64).max, lo, 0.0)


def _sub_sub(x: np.ndarray, m: np.ndarray, log_total: np.ndarray) -> np.ndarray:
    """(x - m) - log S with x - m exact, rounded once: the kernels' sml_sub_sub (the same
    operations, so the same bits)."""
    d = x - m
    t = d - log_total
    exact: np.ndarray = np.where(np.abs(t) <= np.finfo(np.float64).max, t + (_sub_lo(d, log_total, t) + _sub_lo(x, m, d)), t)
    return exact


# ---- 2. the merge ----------------------------------------------------------------------


def merge(stats: np.ndarray) -> np.ndarray:
    """The statistics of the union of k blocks, from their stacked statistics (k, R, 6)
    (see the module's docstring, step 2); associative: merge([merge(a), merge(b)]) is
    merge(a + b) up to rounding."""
    m = stats[..., MAX]
    with np.errstate(invalid="ignore"):
        top = m.max(axis=0)
        at_max = m == top
        empty = m == -np.inf
        # exp(m_b - M) of the exact difference hi + lo: exp(hi) (1 + lo), as the kernels take
        # exp(x - m); and (M - m_b) V_b as (hi + lo) V_b
        gap = m - top
        gap_lo = _sub_lo(m, top, gap)
        e = np.exp(gap)
        scale = np.where(at_max, 1.0, e + e * gap_lo)
        total = stats[..., TIES] + stats[..., REST]
        merged = np.empty(stats.shape[1:])
        merged[:, MAX] = top
        merged[:, TIES] = np.where(at_max, stats[..., TIES], 0.0).sum(axis=0)
        merged[:, REST] = np.where(at_max, stats[..., REST], total * scale).sum(axis=0)
        shift_term = np.where(empty | at_max, 0.0, (top - m) * stats[..., VSUM] - gap_lo * stats[..., VSUM])
        merged[:, GAP] = (stats[..., GAP] + shift_term).sum(axis=0)
    merged[:, VSUM] = stats[..., VSUM].sum(axis=0)
    merged[:, LABEL] = stats[..., LABEL].sum(axis=0)
    return merged


def packed_columns(spec: Spec) -> list[int]:
    """The statistics a row's blocks must add up when all were shifted by the row's max:
    the columns `merge` sums when every m_b equals M (S's two parts; G when it is used;
    V for probabilities; the label's logit for class indices)."""
    if spec.probabilities:
        return [TIES, REST, GAP, VSUM]
    return [TIES, REST, LABEL] + ([GAP] if spec.eps != 0.0 else [])


def unpack(top: np.ndarray, summed: np.ndarray, spec: Spec) -> np.ndarray:
    """Merged statistics from the row maxima M and the summed `packed_columns`."""
    merged = np.zeros((top.shape[0], len(STATS)))
    merged[:, MAX] = top
    merged[:, packed_columns(spec)] = summed
    return merged


# ---- 3. row terms ----------------------------------------------------------------------


def row_weights(target: np.ndarray, sample_weight: np.ndarray | None, spec: Spec) -> np.ndarray:
    """Each row's share of the mean's normaliser W: s w[y] (0 for ignored rows) for class
    indices, s for probabilities (1 without sample weights)."""
    n_rows = target.shape[0]
    s = np.ones(n_rows) if sample_weight is None else sample_weight
    if spec.probabilities:
        return s.copy() if sample_weight is not None else s
    kept = target != spec.target_ignore_index
    w_y = np.ones(n_rows) if spec.weight is None else spec.weight[np.where(kept, target, 0)]
    return np.where(kept, s * w_y, 0.0)


def divisor(normaliser: float, reduction: str) -> float:
    """What each row's gradient is divided by: W for a mean (NaN when W is 0), else 1."""
    if reduction != "mean":
        return 1.0
    return normaliser if normaliser != 0.0 else math.nan


def row_terms(
    merged: np.ndarray, target: np.ndarray, sample_weight: np.ndarray | None, spec: Spec, divide_by: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(per-row losses (R,), the gradient's per-row coefficients (R, N_COEFS)) from the
    merged statistics (step 3 of the module's docstring)."""
    n_rows = merged.shape[0]
    eps, z, n = spec.eps, spec.options.z_loss, spec.n_classes
    smooth = eps / n
    top = merged[:, MAX]
    s = np.ones(n_rows) if sample_weight is None else sample_weight
    with np.errstate(all="ignore"):
        finite = np.isfinite(top)  # else a row with +inf or NaN, or all -inf: NaN
        total = np.where(finite, merged[:, TIES] + merged[:, REST], np.nan)
        excess = np.where(finite, (merged[:, TIES] - 1.0) + merged[:, REST], np.nan)
        log_total = np.log1p(excess)
        lse = top + log_total
        loss = np.zeros(n_rows)
        p_coef = np.zeros(n_rows)
        if spec.probabilities:
            kept = np.ones(n_rows, bool)
            w_y = np.ones(n_rows)
            loss = merged[:, VSUM] * log_total + merged[:, GAP]
            p_coef = merged[:, VSUM].copy()
        else:
            kept = target != spec.target_ignore_index
            w_y = np.ones(n_rows) if spec.weight is None else spec.weight[np.where(kept, target, 0)]
            if eps != 1.0:
                loss = (1.0 - eps) * w_y * -_sub_sub(merged[:, LABEL], top, log_total)
                p_coef = (1.0 - eps) * w_y
            if eps != 0.0:
                loss = loss + smooth * (spec.w_sum * log_total + merged[:, GAP])
                p_coef = p_coef + smooth * spec.w_sum
        if z != 0.0:
            loss = loss + z * lse * lse
            p_coef = p_coef + 2.0 * z * lse
        row_loss = np.where(kept, s * loss, 0.0)
        coefs = np.empty((n_rows, N_COEFS))
        coefs[:, 0] = top
        if spec.probabilities:
            p_scale = (s * p_coef / total) / divide_by
            smooth_scale = np.zeros(n_rows)
            divide = ~np.isfinite(p_scale)
        else:
            p_scale = (s * p_coef * (1.0 / total)) / divide_by
            smooth_scale = (s * smooth) / divide_by
            # As the whole-row kernel: scales that overflow (also in the logits' precision)
            # or a subnormal smooth_scale magnified by class weights: divided last.
            narrow = spec.dtypes.compute
            divide = ~(np.isfinite(p_scale) & np.isfinite(smooth_scale)
                       & np.isfinite(p_scale.astype(narrow)) & np.isfinite(smooth_scale.astype(narrow)))
            if spec.weight is not None and eps != 0.0:
                divide |= (s != 0.0) & (np.abs(smooth_scale) < _DBL_MIN)
        coefs[:, 1] = p_scale
        coefs[:, 2] = smooth_scale
        coefs[:, 3] = s
        coefs[:, 4] = p_coef
        coefs[:, 5] = total
        coefs[:, 6] = excess
        coefs[:, 7] = lse
        coefs[:, 8] = w_y
        coefs[:, 9] = divide
    return row_loss, coefs


# ---- 4. the block's gradient -----------------------------------------------------------


def block_grad(
    x: np.ndarray, target: np.ndarray, c0: int, coefs: np.ndarray, spec: Spec, divide_by: float,
    out: np.ndarray | None = None, from_exp: bool = False, n_threads: int = 0,
) -> np.ndarray:
    """The gradient (R, W) of the block x of classes [c0, c0 + W) (compute dtype), from the
    per-row coefficients; x may hold exp(x - M) already (from_exp: `block_stats`'s
    exp_out); out may be x itself (in place)."""
    dtype = spec.dtypes.compute
    xr = _rows(x, dtype)
    if out is None:
        out = np.empty(x.shape, dtype)
    w = spec.block_weight(c0, x.shape[1])
    k = np.ascontiguousarray(coefs)[:, None, :]
    if spec.probabilities:
        t = target if target.dtype in (np.float32, np.float64) and target.flags.aligned else target.astype(np.float64)
        _dispatch.specialised("class_block_grad_probs", dtype, t.dtype)(
            xr, t[:, None, :], w, k, from_exp, spec.eps, spec.n_classes, divide_by, out[:, None, :], n_threads)
    else:
        _dispatch.specialised("class_block_grad_index", dtype)(
            xr, target[:, None], c0, spec.target_ignore_index, w, k, from_exp, spec.eps, spec.n_classes,
            spec.w_sum, spec.options.z_loss, divide_by, out[:, None, :], n_threads)
    return out


def reduced(total: float, normaliser: float, reduction: str) -> float:
    """The sum of the per-row losses, or for "mean" that sum over W (NaN when W is 0)."""
    if reduction == "mean":
        return total / normaliser if normaliser != 0 else math.nan
    return total

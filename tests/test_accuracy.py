"""Accuracy against exact arithmetic: every function's float32 and float64 results compared
with the same math done in extended precision, and held to a stated budget.

The exact values come from `np.longdouble` where it is wider than double (x86-64 Linux: 64-bit
significand, 11 bits more than double, so the reference's own error is ~1/1000 ulp of a double;
exp(x - max) from the exact gap, `exp_of_gaps`) and from mpmath at 113 bits on a sample of rows
elsewhere (`EXACT`); issue 19's two-class rows from mpmath at 60 digits on every row (`MP60`,
`two_class_rows`). They are computed from the inputs as given (the float32 or float64
logits are exact numbers), with the same care the kernel takes: the row max subtracted,
log(S) as log1p of the terms other than the max, and 1 - p_y as the sum of the other terms,
never by cancellation.

Errors are in ULPs of the result dtype at the exact value (`ulps`), or relative where a
result is a sum (the mean loss); below the smallest normal number only the absolute error is
measured (one subnormal ulp is the best a correctly rounded result can do there).

Every budget is `A + kappa` (ULPs, or units of roundoff for the absolute and relative ones):
kappa (`Exact.results`) is the error that rounding x - max and exp's own rounding propagate
into the result, as a function of the gaps max - x_c; A is the rest. A is the measured worst
case of (error - kappa) over these inputs, gcc 12 on x86-64, both kernel builds (baseline SSE2
and AVX2+FMA) and both kernel paths (block, row), rounded up with a little headroom (a different
compiler may contract differently); `python tests/test_accuracy.py` prints the measurements.
"""

from __future__ import annotations

import functools
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import softmaxloss as sml
from softmaxloss import _dispatch

EXTENDED = np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant
DTYPES = [np.float32, np.float64]
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)

# The kernel's two paths for cross-entropy with class indices (`_kernels.pyx`): rows of at
# most this many classes go 64 at a time, transposed ("block"), wider rows one by one ("row").
# gradient_hessian takes the same two paths at the same limit (`block_grad_hess`; its results
# are noted over both: the suites' 2, 3, 5 and BLOCK_MAX_CLASSES classes are block rows, the wider
# ones row rows); so do softmax and log_softmax (`block_softmax`) and logsumexp (`block_logsumexp`).
BLOCK_MAX_CLASSES = {F32: 23, F64: 23}


def kernel_path(n_classes, dtype):
    return "block" if n_classes <= BLOCK_MAX_CLASSES[np.dtype(dtype)] else "row"


# ---- budgets -----------------------------------------------------------------------------------
# Measured (`python tests/test_accuracy.py`; gcc 12, x86-64; baseline and AVX2+FMA builds
# identical to 3 digits) in brackets, the worst of `logits_suite`, `gap_suite` and the mpmath
# rows of `test_largest_gaps_against_mpmath_at_60_digits`; budgets
# leave ~25% headroom.
#
# The kernels take x_c - m exactly, as hi + lo (TwoSum, or Fast2Sum of min/max), with lo folded
# into their exp's argument reduction (`_fastexp.h`, sml_exp*_sub; issue 19): the error of
# e_c = exp(x_c - m) is the exp's own, whatever the gap m - x_c. (Before, x_c - m was rounded
# first: a float64 probability 512 below the max was off by up to ~500 ulps, a float32 one
# 64 below by ~63, the loss of issue 19's two-class rows by 16.7; GAP_FACTOR = 1 in `_kappa`
# gives the budgets that took that into account.) In units of u (2^-24, 2^-53):
#   err_c = 2 * EXP_ULPS + sigma   the relative error of e_c off the max (the kernel exp's 0.8
#           ulp is at most 1.6 u; sigma = `summation_units`, the sums' rounding: 0 now that
#           float64 S is compensated, issue 19), 0 at the max (exp(0) = 1 exactly)
#   E     = sum_c p_c err_c        the relative error of S = sum_c e_c, and the absolute
#                                  error of log S: at most 1.6, whatever the gaps
# and the budgets' kappa (`Exact.results`):
#   softmax p_c, gradient entries p_c off the label          E
#   hessian p_c (1 - p_c) off the max                        2 E
#   log_softmax l_c, per-row loss -l_y                       E / |l|
#   logsumexp                                 (E + 1.35 |log S|) / |logsumexp|
#   1 - p_y at a labelled max, relative to itself            E / (1 - p_y)
#   absolute errors (gradient at the label, hessian at the max), in u:  E
#   mean loss, relative error in u:                          sum_n E_n / sum_n loss_n
# Every kappa but logsumexp's is bounded whatever the logits (|l| >= log S >= E-sized terms;
# 1 - p_y is made of the same terms as E), so each result also has a flat budget (`FLAT`,
# the worst raw error over every suite). logsumexp's is its condition: near lse = 0
# (m = -log S) an absolute error of u in log S is any number of its ulps.
GAP_FACTOR = 0
LOG1P_UNITS = 1.35  # sml_log1p's 0.661 ulp (_fastlog.h), in units of roundoff: at most 2 x 0.661

# The kernel's exp (`_fastexp.h`, which states 0.78 ulp for float and 0.79 for double from
# exhaustive / 1.2e8-point sweeps; subnormal results, rounded twice, are the worst).
EXP_ULPS = {F32: 0.80, F64: 0.80}  # [0.779, 0.770]
EXP_NORMAL_ULPS = {F32: 0.70, F64: 0.70}  # normal results [0.642, 0.644]

# A of every budget A + kappa, ULPs unless stated; the cross-entropy kernels' by path.
# [measured: float32, float64] = max(error - kappa), the worse of the two suites and builds.
BUDGETS = {
    # softmax p_c = e_c / S rounded once (float32: in float64; float64: 1/S as hi + lo, an fma)
    "softmax": {F32: 1.6, F64: 1.65},  # [1.271, 1.314]
    # log_softmax l_c = (x_c - m) - log S and logsumexp m + log S: formed in float64, rounded once
    "log_softmax": {F32: 0.65, F64: 1.05},  # [0.497, 0.818]
    "logsumexp": {F32: 0.6, F64: 0.6},  # [0.472, 0.469]
    # per-row loss log S + (m - x_y) (reduction="none")
    "row_loss/block": {F32: 0.6, F64: 0.65},  # [0.472, 0.500]
    "row_loss/row": {F32: 0.6, F64: 0.75},  # [0.453, 0.576] (float32: rounded once, up to 0.5)
    # mean loss, relative error in units of roundoff: float64 row losses, summed in float64,
    # rounded once
    "mean_loss/block": {F32: 0.75, F64: 1.05},  # [0.579, 0.837]
    "mean_loss/row": {F32: 0.9, F64: 1.75},  # [0.693, 1.372]
    # cross_entropy_with_grad (mean): the entries off the label p_c / N, as softmax; the
    # label's (p_y - 1) / N: its absolute error times N, in units of roundoff (relative to 1,
    # the size of the terms it is the difference of), and relative to itself at a labelled
    # max (the kernel forms 1 - p_y without cancellation)
    "grad_off_label/block": {F32: 1.55, F64: 2.3},  # [1.201, 1.805]
    "grad_off_label/row": {F32: 1.6, F64: 1.65},  # [1.271, 1.314]
    "grad_label_absolute/block": {F32: 1.25, F64: 2.85},  # [0.973, 2.240]
    "grad_label_absolute/row": {F32: 1.1, F64: 2.0},  # [0.875, 1.598]
    "grad_label_relative/block": {F32: 0.25, F64: 0.25},  # [-0.498, -0.109]
    "grad_label_relative/row": {F32: 0.25, F64: 0.25},  # [-1.039, 0.000]
    # gradient_hessian, per sample: grad p_c off the label, the label's -(1 - p_y) (absolutely
    # in units of roundoff; relative to itself at a labelled max), hess p_c (1 - p_c) off the
    # max, and the hess at the max (the same cancellation as the label's)
    "grad_hess_off_label": {F32: 1.6, F64: 1.65},  # [1.271, 1.314]
    "grad_hess_label_absolute": {F32: 0.65, F64: 1.7},  # [0.500, 1.356]
    "grad_hess_label_relative": {F32: 0.25, F64: 0.25},  # [-0.435, 0.000]
    "hess_off_max": {F32: 1.75, F64: 1.85},  # [1.366, 1.449]
    "hess_max_absolute": {F32: 0.25, F64: 0.25},  # [0.000, 0.016]
    "hess_max_relative": {F32: 0.25, F64: 0.25},  # [0.000, 0.000]
}
# The flat budgets: the worst raw error (ULPs; u for the absolute and mean ones) of every
# result but logsumexp (whose kappa is its condition, see above), over every suite, build and
# path, whatever the gaps; at most FLAT_ULPS (2) for the results in ULPs. [measured: float32,
# float64]. (Before issue 19's float64 work: up to 5.3 ULPs in float64, from the plain float64
# sum of S and the formula's own roundings, p = e (1/S), then / N, then the hessian's product.)
FLAT = {
    "softmax": {F32: 2.0, F64: 2.0},  # [1.629, 1.591]
    "log_softmax": {F32: 1.7, F64: 2.0},  # [1.339, 1.645]
    "row_loss/block": {F32: 1.7, F64: 1.95},  # [1.339, 1.543]
    "row_loss/row": {F32: 0.75, F64: 1.5},  # [0.612, 1.057]
    "mean_loss/block": {F32: 0.9, F64: 1.55},  # [0.708, 1.211]
    "mean_loss/row": {F32: 1.2, F64: 1.95},  # [0.943, 1.534]
    "grad_off_label/block": {F32: 1.75, F64: 2.0},  # [1.392, 1.805]
    "grad_off_label/row": {F32: 2.0, F64: 2.0},  # [1.629, 1.639]
    "grad_label_absolute/block": {F32: 1.25, F64: 2.85},  # [0.975, 2.240]
    "grad_label_absolute/row": {F32: 1.15, F64: 2.85},  # [0.975, 2.247] (uniform [-15, 15] rows: the mean's / N)
    "grad_label_relative/block": {F32: 1.4, F64: 1.9},  # [1.102, 1.491]
    "grad_label_relative/row": {F32: 0.75, F64: 2.0},  # [0.563, 1.059]
    "grad_hess_off_label": {F32: 2.0, F64: 2.0},  # [1.629, 1.591]
    "grad_hess_label_absolute": {F32: 0.85, F64: 1.75},  # [0.669, 1.378]
    "grad_hess_label_relative": {F32: 1.5, F64: 2.0},  # [1.165, 1.576]
    "hess_off_max": {F32: 2.0, F64: 2.0},  # [1.629, 1.604]
    "hess_max_absolute": {F32: 0.25, F64: 0.45},  # [0.192, 0.342]
    "hess_max_relative": {F32: 1.45, F64: 1.85},  # [1.150, 1.453]
}
# (0.25 where the measured value is at most 0.2: below 0 the kappa's allowances for exp's
# rounding and the sums', which the errors do not reach together, are the headroom.)

# Issue 19's flat budget: every result measured in ULPs of its own (all but logsumexp, whose
# kappa is its condition, and the absolute / mean errors above) within 2 ULPs of the exact
# value, whatever the gaps and however many terms S has, both dtypes, builds and paths, with
# the default options (label_smoothing = 0, z_loss = 0: with them the gradient's scale keeps
# its plain roundings). Asserted on every suite here (`ULP_RESULTS`, `FLAT_ULPS`).
FLAT_ULPS = 2.0
ULP_RESULTS = ("softmax", "log_softmax", "row_loss/block", "row_loss/row", "grad_off_label/block",
               "grad_off_label/row", "grad_label_relative/block", "grad_label_relative/row",
               "grad_hess_off_label", "grad_hess_label_relative", "hess_off_max", "hess_max_relative")

# Issue 4's targets at C = 128256 (float32): |grad error| * N and the loss's relative error.
LARGE_VOCAB_GRAD_ERROR_TIMES_N = 2e-7
LARGE_VOCAB_LOSS_RELATIVE = 1.2e-7


# ---- exact arithmetic -----------------------------------------------------------------------


class Exact:
    """The math of softmaxloss in extended precision on 2-D rows (class axis last).

    `to_exact` turns float inputs into the wide type (longdouble, or mpmath's mpf in object
    arrays, at `bits` of precision: mpmath's working precision is raised to the largest asked
    for, never lowered); `exp` and `log1p` work elementwise on it. The same code serves both."""

    def __init__(self, use_mpmath: bool, bits: int = 113):
        self.use_mpmath = use_mpmath
        if use_mpmath:
            import mpmath

            mpmath.mp.prec = max(mpmath.mp.prec, bits)
            self._mpf = np.frompyfunc(mpmath.mpf, 1, 1)
            self.exp = np.frompyfunc(mpmath.exp, 1, 1)
            self.log1p = np.frompyfunc(mpmath.log1p, 1, 1)
        else:
            self.exp, self.log1p = np.exp, np.log1p

    def to_exact(self, x):
        x = np.asarray(x, np.float64)
        return self._mpf(x) if self.use_mpmath else x.astype(np.longdouble)

    def parts(self, x):
        """(X, m, e, at_max, log S, S, rest, ties) of rows x: e = exp(X - m), S = sum e,
        rest = the sum of the terms off the max (e = 1 at the max and its ties), log S by log1p.
        (Only e needs X - m exactly; the results that hold X - m itself, such as l = (X - m)
        - log S, need it only to its own relative precision.)"""
        X = self.to_exact(x)
        m = X.max(axis=-1, keepdims=True)
        e = self.exp(X - m) if self.use_mpmath else exp_of_gaps(x)
        at_max = np.asarray(X == m, dtype=bool)
        rest = np.where(at_max, 0, e).sum(axis=-1, keepdims=True)
        ties = at_max.sum(axis=-1, keepdims=True)
        log_s = self.log1p(rest + (ties - 1))
        return X, m, e, at_max, log_s, rest + ties, rest, ties

    def results(self, x, y=None, dtype=None):
        """Every exact result of rows x (and labels y) from one evaluation, and with a dtype the
        budgets' kappa of its results (see the budgets): a SimpleNamespace of softmax,
        log_softmax, logsumexp, hessian, at_max, (row_losses, grad_sum, onehot) and kappa."""
        X, m, e, at_max, log_s, s, rest, ties = self.parts(x)
        r = SimpleNamespace(at_max=at_max, softmax=e / s, log_softmax=(X - m) - log_s)
        r.logsumexp = (m + log_s)[:, 0]
        r.log_total = log_s[:, 0]
        # p (1 - p), 1 - p as the sum of the other terms ((ties - 1) + rest at the max)
        r.max_complement = (((ties - 1) + rest) / s)[:, 0]  # 1 - p at the max
        r.hessian = r.softmax * (np.where(at_max, (ties - 1) + rest, s - e) / s)
        if y is not None:
            r.onehot = np.arange(x.shape[1]) == np.asarray(y)[:, None]
            x_y = np.take_along_axis(X, np.asarray(y)[:, None], axis=-1)
            r.row_losses = (log_s + (m - x_y))[:, 0]
            # d(sum of row losses)/dx = p - onehot, the label's entry as -(S - e_y)/S
            others = np.where(r.onehot, 0, e).sum(axis=-1, keepdims=True)
            r.grad_sum = np.where(r.onehot, -others / s, r.softmax)
        if dtype is not None:
            r.kappa = self._kappa(r, m - X, dtype)
        return r

    @staticmethod
    def _kappa(r, gaps, dtype):
        """The budgets' kappa of every result in r (float64; 0 where a result is exactly 0 or 1)."""
        dtype = np.dtype(dtype)
        g = np.asarray(gaps).astype(np.float64)
        p = np.asarray(r.softmax).astype(np.float64)
        # x - m is exact in the kernels (hi + lo, issue 19): no gap term; GAP_FACTOR is 0 (the
        # factor kept so that `main` can print what rounding x - m would cost, for comparison)
        gap = GAP_FACTOR * rounded_gap(g)
        err = np.where(r.at_max, 0.0, gap + 2 * EXP_ULPS[dtype] + summation_units(g.shape[-1], dtype))
        e_sum = np.sum(p * err, axis=-1, keepdims=True)
        k = SimpleNamespace(p=gap + e_sum, hess=gap + 2 * e_sum, absolute=e_sum[:, 0])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            size = np.abs(np.asarray(r.log_softmax).astype(np.float64))
            k.log = np.where(size > 0, e_sum / size, 0.0)
            size = np.abs(np.asarray(r.logsumexp).astype(np.float64))
            # and log S's own rounding (sml_log1p's 0.66 ulp: at most 1.35 u of |log S|), which
            # the sum m + log S magnifies as much near lse = 0
            log_total = np.abs(np.asarray(r.log_total).astype(np.float64))
            k.lse = np.where(size > 0, (e_sum[:, 0] + LOG1P_UNITS * log_total) / size, 0.0)
            complement = np.asarray(r.max_complement).astype(np.float64)
            k.hess_max = np.where(complement > 0, e_sum[:, 0] / complement, 0.0)
            if hasattr(r, "onehot"):
                k.loss = np.take_along_axis(k.log, np.argmax(r.onehot, axis=-1)[:, None], axis=-1)[:, 0]
                complement = -np.asarray(r.grad_sum[r.onehot]).astype(np.float64)
                k.label = np.where(complement > 0, e_sum[:, 0] / complement, 0.0)
                r.label_at_max = r.at_max[r.onehot]
                losses = np.asarray(r.row_losses).astype(np.float64)
                k.mean = float(np.sum(e_sum) / np.sum(losses)) if np.sum(losses) > 0 else 0.0
        return k

    def at_max(self, x):
        return self.parts(x)[3]

    def softmax(self, x):
        return self.results(x).softmax

    def log_softmax(self, x):
        return self.results(x).log_softmax

    def logsumexp(self, x):
        return self.results(x).logsumexp

    def hessian(self, x):
        return self.results(x).hessian

    def row_losses(self, x, y):
        return self.results(x, y).row_losses

    def grad_sum(self, x, y):
        return self.results(x, y).grad_sum


def rounded_gap(g):
    """g >= 0 rounded down to a power of two: the most that rounding x - m costs when
    m - x = g, in units of roundoff (half an ulp of g). 0 for g = 0 (the max) and for an
    infinite g (a -inf logit, whose exp is exactly 0)."""
    g = np.asarray(g, np.float64)
    finite = np.isfinite(g) & (g > 0)
    return np.where(finite, np.exp2(np.floor(np.log2(np.where(finite, g, 1.0)))), 0.0)


def exp_of_gaps(x):
    """exp(x - max) of rows x in long double, from the exact gap: x - max is hi + lo (TwoSum in
    float64), and exp(hi + lo) = expl(hi) (1 + lo) to ~2**-63. Long double's own x - max would
    be rounded where the two are more than 11 binades apart (x = -700, max = 1e-4), which would
    cost the reference up to |x - max| * 2**-64, a third of a double's ulp."""
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        hi = x - m
        back = hi - x
        lo = (x - (hi - back)) + (-m - back)
        lo = np.where(np.isfinite(hi), lo, 0.0)
    return np.exp(hi.astype(np.longdouble)) * (1 + lo.astype(np.longdouble))


def summation_units(n_classes, dtype):
    """The rounding error of the sum of the terms off the max, relative to it, in units of
    the result dtype: nothing. float32 terms are summed in float64 (~sqrt(C/8) u64, far below
    a float32 u); float64 ones in compensated lanes (Fast2Sum into a low part, issue 19: S to
    ~2^-104), where the plain float64 lanes cost ~sqrt(C/8) u (SUMS_COMPENSATED = False gives
    that term back, for comparison)."""
    if SUMS_COMPENSATED or np.dtype(dtype) == F32:
        return 0.0
    return np.sqrt(n_classes / 8) * 2.0**-53 / (np.finfo(dtype).eps / 2)


SUMS_COMPENSATED = True


EXACT = Exact(use_mpmath=not EXTENDED)
MP60 = Exact(use_mpmath=True, bits=203)  # 60 decimal digits
MPMATH_ROWS = 6  # rows sampled per input when EXACT uses mpmath (slow)


def sampled(n_rows, rows=MPMATH_ROWS):
    """The rows EXACT is evaluated on, as an index: None (all of them) with longdouble, a few
    evenly spaced ones with mpmath."""
    if EXTENDED or n_rows <= rows:
        return None
    return np.linspace(0, n_rows - 1, rows).astype(int)


def sample_rows(*arrays, rows=MPMATH_ROWS):
    """The `sampled` rows of each array."""
    index = sampled(arrays[0].shape[0], rows)
    return arrays if index is None else tuple(a[index] for a in arrays)


def compact(r, names):
    """The exact values `names` of results r as long double where it is wider than double (the
    mpmath number's hi + lo, scaled up first where it is below double's range: 64 bits, a
    reference good to ~1/1000 ulp of a double, and ulps of it much faster than of mpmath's
    numbers); as they are elsewhere."""
    if not EXTENDED:
        return r
    import mpmath

    ldexp = np.frompyfunc(mpmath.ldexp, 2, 1)
    for name in names:
        values = getattr(r, name)
        shift = np.where(np.abs(values.astype(np.float64)) < 2.0**-900, 1000, 0)
        v = ldexp(values, shift)
        hi = v.astype(np.float64)
        with np.errstate(invalid="ignore"):
            lo = np.where(np.isfinite(hi), (v - hi).astype(np.float64), 0.0)
        setattr(r, name, (hi.astype(np.longdouble) + lo) * np.exp2(-shift.astype(np.longdouble)))
    return r


def ulps(actual, exact, dtype):
    """|actual - exact| in units of the last place of `dtype` at the exact value (at least
    the smallest normal number's: subnormal results are measured absolutely). NaN where
    they disagree on being finite."""
    dtype = np.dtype(dtype)
    with np.errstate(over="ignore"):  # exact values beyond the dtype's range round to inf
        exact_rounded = np.asarray(exact).astype(np.float64).astype(dtype)
    unit = np.maximum(np.spacing(np.abs(exact_rounded)), np.spacing(np.finfo(dtype).smallest_normal))
    exact = np.asarray(exact)
    wide = object if exact.dtype == object else np.longdouble
    actual64 = np.asarray(actual).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        if wide is object:  # mpmath numbers: float64 inputs convert exactly
            difference = np.abs(np.frompyfunc(lambda a: a, 1, 1)(actual64) - exact)
            result = np.asarray((difference / unit.astype(np.float64)).astype(np.float64))
        else:
            difference = np.abs(actual64.astype(np.longdouble) - exact)
            result = np.asarray(difference / unit.astype(np.longdouble), dtype=np.float64)
        same = np.asarray(actual) == exact_rounded
    finite_both = np.isfinite(np.asarray(actual, np.float64)) & np.isfinite(exact_rounded)
    return np.where(same, 0.0, np.where(finite_both, result, np.nan))


def units(actual, exact, dtype):
    """|actual - exact| in units of roundoff of `dtype` (2**-24, 2**-53): absolute errors."""
    exact = np.asarray(exact)
    if exact.dtype == object:
        difference = np.abs(np.frompyfunc(lambda a: a, 1, 1)(np.asarray(actual).astype(np.float64)) - exact)
        difference = difference.astype(np.float64)
    else:
        difference = np.abs(np.asarray(actual).astype(np.longdouble) - exact).astype(np.float64)
    return difference / (np.finfo(dtype).eps / 2)


def worst(errors):
    """The largest error; NaN (infinite vs finite) counts as infinitely large."""
    errors = np.asarray(errors, np.float64)
    if np.isnan(errors).any():
        return np.inf
    return float(errors.max(initial=-np.inf))


def beyond(errors, kappa):
    """Errors less their kappa: what the budgets' A must cover."""
    return np.asarray(errors, np.float64) - np.asarray(kappa, np.float64)


# ---- inputs -----------------------------------------------------------------------------------


def logits_suite(dtype, rng):
    """(name, logits (N, C), labels (N,)): random rows of several widths and spreads,
    large magnitudes, near-one-hot rows labelled at their max, ties."""
    cases = []
    for n_classes, spread in [(5, 1.0), (11, 3.0), (100, 3.0), (1000, 10.0), (4099, 2.0)]:
        x = rng.standard_normal((32, n_classes)) * spread
        cases.append((f"random C={n_classes} sd={spread:g}", x))
    for center in (1e4, -1e4, 1e6, 1e30):
        noise = rng.standard_normal((16, 37)) * 3.0
        if abs(center) > 1e20:
            noise = noise * np.spacing(np.asarray(center, dtype)) * 4  # distinct after rounding
        cases.append((f"offset {center:g}", center + noise))
    gaps = (1, 3, 5, 10, 20, 30, 40, 60, 80) if dtype == np.float32 else (1, 5, 10, 20, 40, 80, 200, 600)
    x = rng.standard_normal((len(gaps), 64))
    labels = rng.integers(0, 64, len(gaps))
    x[np.arange(len(gaps)), labels] = np.asarray(gaps, np.float64)
    out = [(name, x.astype(dtype), rng.integers(0, x.shape[1], x.shape[0])) for name, x in cases]
    out.append(("near one-hot (labelled max)", x.astype(dtype), labels))
    ties = np.round(rng.standard_normal((8, 24)))
    out.append(("ties", ties.astype(dtype), rng.integers(0, 24, 8)))
    # S of a few terms near 1 among many small ones: the float64 sums' plain partial sums
    # (blocks of 8 terms a lane, before every add became a Fast2Sum) cost S up to 1.4 u, and
    # softmax 2.9 ulps on such rows (~1 row in 500)
    for n_classes, n_rows in ((64, 2000), (100, 1000)):
        uniform = rng.uniform(-15, 15, (n_rows, n_classes))
        out.append((f"uniform [-15, 15] C={n_classes}", uniform.astype(dtype),
                    rng.integers(0, n_classes, n_rows)))
    return out


def gap_rows(dtype, n_classes, n_rows, rng):
    """Rows chosen to maximise the error of rounding x - max: a max of random mantissa in
    [-2, 2] (so that x - max is rounded), the other logits below it by gaps up to where exp
    underflows (100 in float32, 740 in float64), most just above a power of two (where
    rounding the gap costs the most relative to it). A third of the rows have every other
    logit at one such gap (one-hot rows: the loss at the max is tiny, made of their
    exponentials), a third spread log-uniformly from 0.05, a third half near the max and half
    at one gap; 60% labelled at the max. Returns (logits, labels)."""
    top, k_top = (100.0, 6) if np.dtype(dtype) == F32 else (740.0, 9)
    m = rng.uniform(-2, 2, (n_rows, 1))
    level = 2.0 ** rng.integers(0, k_top + 1, (n_rows, 1)) * (1 + rng.uniform(0, 0.08, (n_rows, 1)))
    one_level = level * (1 + rng.uniform(0, 0.02, (n_rows, n_classes)))
    spread = np.exp(rng.uniform(np.log(0.05), np.log(top), (n_rows, n_classes)))
    half = np.where(rng.random((n_rows, n_classes)) < 0.5, rng.uniform(0, 1, (n_rows, n_classes)), one_level)
    kind = rng.integers(0, 3, (n_rows, 1))
    gaps = np.minimum(np.where(kind == 0, one_level, np.where(kind == 1, spread, half)), top)
    x = m - gaps
    at = rng.integers(0, n_classes, n_rows)
    x[np.arange(n_rows), at] = m[:, 0]
    labels = np.where(rng.random(n_rows) < 0.6, at, rng.integers(0, n_classes, n_rows))
    return x.astype(dtype), labels


def gap_suite(dtype, rng):
    """(name, logits, labels): `gap_rows` of 2 to 1000 classes, both kernel paths."""
    block = BLOCK_MAX_CLASSES[np.dtype(dtype)]
    shapes = [(2, 4000), (3, 2000), (5, 1200), (block, 320), (block + 1, 320), (64, 96), (1000, 12)]
    return [(f"gaps C={c}", *gap_rows(dtype, c, n, rng)) for c, n in shapes]


@functools.lru_cache(maxsize=None)
def gap_cases(dtype_name):
    """[(name, logits, labels, rows, exact results of those rows)] of `gap_suite` (EXACT:
    every row with long double, rows=None; a sample with mpmath), computed once per dtype."""
    dtype = np.dtype(dtype_name)
    cases = []
    for name, x, y in gap_suite(dtype, np.random.default_rng(12)):
        rows = sampled(x.shape[0])
        xs, ys = (x, y) if rows is None else (x[rows], y[rows])
        cases.append((name, x, y, rows, EXACT.results(xs, ys, dtype)))
    return cases


def two_class_rows(n_rows, rng):
    """Issue 19's rows: two float64 classes, the label (class 0) at the max, the other logit
    15-25 below it, both of random mantissa: the loss log1p(exp(x_1 - x_0)) ~ 1e-7..1e-11."""
    x_0 = rng.uniform(-10, 10, n_rows)
    return np.stack([x_0, x_0 - rng.uniform(15, 25, n_rows)], axis=1), np.zeros(n_rows, np.int64)


TWO_CLASS_ROWS = 5000


@functools.lru_cache(maxsize=None)
def two_class_case():
    x, y = two_class_rows(TWO_CLASS_ROWS, np.random.default_rng(19))
    return x, y, compact(MP60.results(x, y, F64), ("row_losses", "grad_sum"))


def large_vocabulary(dtype, rng, n_rows=4):
    """Rows of C = 128256 classes (a Llama-3-sized vocabulary): N(0, 2) logits with a few
    large ones, as a language model's output."""
    x = rng.standard_normal((n_rows, 128256)) * 2.0
    x[:, rng.integers(0, 128256, 20)] += 12.0
    return x.astype(dtype), rng.integers(0, 128256, n_rows)


# ---- measurements -----------------------------------------------------------------------------


def measure(found, x, y, r, dtype, rows=None):
    """Note in `found` {quantity: (worst error - kappa, worst error, worst error / kappa where
    kappa >= 8)} of every function on logits x and labels y with the active kernel build,
    against the exact results r of x[rows], y[rows] (all rows for rows=None; the mean loss
    only then)."""
    dtype = np.dtype(dtype)
    path = kernel_path(x.shape[1], dtype)
    pick = (lambda a: a) if rows is None else (lambda a: a[rows])
    n = x.shape[0]
    k = r.kappa

    def note(key, errors, kappa):
        errors, kappa = np.asarray(errors, np.float64), np.broadcast_to(kappa, np.shape(errors))
        large = kappa >= 8
        slope = worst(errors[large] / kappa[large])
        a, b, c = found.get(key, (-np.inf, -np.inf, -np.inf))
        found[key] = (max(a, worst(beyond(errors, kappa))), max(b, worst(errors)), max(c, slope))

    note("softmax", ulps(pick(sml.softmax(x)), r.softmax, dtype), k.p)
    note("log_softmax", ulps(pick(sml.log_softmax(x)), r.log_softmax, dtype), k.log)
    note("logsumexp", ulps(pick(sml.logsumexp(x)), r.logsumexp, dtype), k.lse)
    losses = sml.cross_entropy(x, y, reduction="none")
    note(f"row_loss/{path}", ulps(pick(losses), r.row_losses, dtype), k.loss)
    if rows is None:
        exact_mean = np.mean(r.row_losses)
        relative = float(abs(sml.cross_entropy(x, y) - exact_mean) / abs(exact_mean))
        note(f"mean_loss/{path}", relative / (np.finfo(dtype).eps / 2), k.mean)
    onehot, label_at_max = r.onehot, r.label_at_max
    _, grad = sml.cross_entropy_with_grad(x, y)
    grad, exact = pick(grad), r.grad_sum / n
    note(f"grad_off_label/{path}", ulps(grad[~onehot], exact[~onehot], dtype), k.p[~onehot])
    note(f"grad_label_absolute/{path}", units(grad[onehot], exact[onehot], dtype) * n, k.absolute)
    note(f"grad_label_relative/{path}", ulps(grad[onehot], exact[onehot], dtype)[label_at_max], k.label[label_at_max])
    g, h = (pick(a) for a in sml.gradient_hessian(x, y))
    exact = r.grad_sum
    note("grad_hess_off_label", ulps(g[~onehot], exact[~onehot], dtype), k.p[~onehot])
    note("grad_hess_label_absolute", units(g[onehot], exact[onehot], dtype), k.absolute)
    note("grad_hess_label_relative", ulps(g[onehot], exact[onehot], dtype)[label_at_max], k.label[label_at_max])
    at_max, max_row = r.at_max, np.nonzero(r.at_max)[0]
    note("hess_off_max", ulps(h[~at_max], r.hessian[~at_max], dtype), k.hess[~at_max])
    note("hess_max_absolute", units(h[at_max], r.hessian[at_max], dtype), k.absolute[max_row])
    note("hess_max_relative", ulps(h[at_max], r.hessian[at_max], dtype), k.hess_max[max_row])
    return found


def measure_functions(dtype, rng, found=None):
    """`measure` over `logits_suite` (EXACT; a sample of rows when that is mpmath)."""
    found = {} if found is None else found
    for _, x, y in logits_suite(dtype, rng):
        rows = sampled(x.shape[0])
        r = EXACT.results(*((x, y) if rows is None else (x[rows], y[rows])), dtype)
        measure(found, x, y, r, dtype, rows)
    return found


def measure_gaps(dtype, found=None):
    """`measure` over `gap_suite`."""
    found = {} if found is None else found
    for _, x, y, rows, r in gap_cases(np.dtype(dtype).name):
        measure(found, x, y, r, dtype, rows)
    return found


def exp_inputs(dtype, rng):
    """(name, inputs) covering the kernel's exp over its whole range: a dense grid from
    below underflow to above overflow (with the subnormal results), random bit patterns,
    every float around the overflow / subnormal / underflow thresholds, tiny |x|, specials."""
    info = np.finfo(dtype)
    if dtype == np.float32:
        low, high, n_grid, int_type = -104.0, 89.0, 1 << 21, np.uint32
    else:
        low, high, n_grid, int_type = -746.0, 710.0, 1 << 20, np.uint64
    grid = np.linspace(low, high, n_grid).astype(dtype)
    bits = rng.integers(0, np.iinfo(int_type).max, 1 << 18, dtype=int_type, endpoint=True).view(dtype)
    bits = bits[np.isfinite(bits) & (bits > low) & (bits < high)]
    thresholds = [
        np.log(float(info.max)), np.log(float(info.smallest_normal)), np.log(float(info.smallest_subnormal)), 0.0
    ]
    around = []
    for t in thresholds:
        center = np.asarray(t, dtype)
        steps = np.arange(-2000, 2001)
        around.append(np.nextafter(center, np.asarray(np.inf, dtype)) if t else center)
        walk = center.view(int_type).astype(np.int64) + steps
        around.append(walk[walk >= 0].astype(int_type).view(dtype))
    tiny = (np.float64(2.0) ** -np.arange(1, 160 if dtype == np.float32 else 1100)).astype(dtype)
    if dtype == np.float32:  # every float whose exp is subnormal or overflows; every 3rd in [0.5, 1]
        every = [_every_float32(-104.0, -87.0), _every_float32(88.0, 89.0), _every_float32(0.5, 1.0, step=3)]
    else:  # a dense grid over the subnormal results
        every = [np.linspace(-746.0, -708.0, 1 << 18)]
    return [
        ("dense grid", grid),
        ("every float of the edge ranges", np.concatenate(every)),
        ("random bits", bits),
        ("thresholds", np.concatenate([np.ravel(a) for a in around])),
        ("tiny |x|", np.concatenate([tiny, -tiny])),
    ]


def _every_float32(low, high, step=1):
    """Every `step`-th float32 in [low, high] (low < 0 < high allowed)."""
    def between(a, b):  # 0 <= a < b
        lo, hi = np.float32(a).view(np.uint32), np.float32(b).view(np.uint32)
        return np.arange(lo, hi + 1, step, dtype=np.uint32).view(np.float32)

    if low >= 0:
        return between(low, high)
    if high <= 0:
        return -between(-high, -low)
    return np.concatenate([-between(0.0, -low), between(0.0, high)])


def kernel_exp(module, x):
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    module.exp(x, out)
    return out


def measure_exp(module, dtype, rng):
    """(worst ulps overall, worst ulps of normal results) of a build's exp."""
    overall = normal = 0.0
    for _, x in exp_inputs(dtype, rng):
        exact = np.exp(EXACT.to_exact(x)) if EXTENDED else None
        if exact is None:  # mpmath: a sample
            x = x[:: max(1, x.size // 4000)]
            exact = EXACT.exp(EXACT.to_exact(x))
        errors = ulps(kernel_exp(module, x), exact, dtype)
        overall = max(overall, worst(errors))
        with np.errstate(over="ignore"):
            is_normal = np.abs(np.asarray(exact).astype(np.float64)) >= np.finfo(dtype).smallest_normal
        normal = max(normal, worst(errors[is_normal]))
    return overall, normal


# ---- tests ------------------------------------------------------------------------------------


def over_budget(found, dtype):
    """{quantity: (worst error - kappa, A)} for the quantities over their budget A + kappa,
    {quantity: (worst error, flat budget)} for those over their FLAT budget, and those of
    ULP_RESULTS over FLAT_ULPS."""
    dtype = np.dtype(dtype)
    over = {k: (v[0], BUDGETS[k][dtype]) for k, v in found.items() if not v[0] <= BUDGETS[k][dtype]}
    over.update({f"{k} (flat)": (v[1], FLAT[k][dtype]) for k, v in found.items()
                 if k in FLAT and not v[1] <= FLAT[k][dtype]})
    over.update({f"{k} (2 ulps)": (v[1], FLAT_ULPS) for k, v in found.items()
                 if k in ULP_RESULTS and not v[1] <= FLAT_ULPS})
    return over


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_function_is_within_its_budget(kernel_build, dtype):
    found = measure_functions(np.dtype(dtype), np.random.default_rng(5))
    over = over_budget(found, dtype)
    assert not over, f"{kernel_build} {np.dtype(dtype)}: (error - kappa, A) {over}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_function_is_within_its_budget_at_the_largest_gaps(kernel_build, dtype):
    """`gap_suite`: gaps up to the underflow limit, where rounding x - max costs hundreds of
    ULPs (float64), all within A + kappa."""
    found = measure_gaps(np.dtype(dtype))
    over = over_budget(found, dtype)
    assert not over, f"{kernel_build} {np.dtype(dtype)}: (error - kappa, A) {over}"
    # Rounding x - max would cost these rows up to 64 (float32) / 512 (float64) ulps: what the
    # kernels did before issue 19. Their exact x - max keeps the errors flat.
    assert found["softmax"][1] <= FLAT["softmax"][np.dtype(dtype)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_largest_gaps_against_mpmath_at_60_digits(kernel_build, dtype):
    """`gap_rows` (gaps up to the underflow limit) of 2, 5 and BLOCK_MAX_CLASSES + 1 classes
    (both cross-entropy paths) against mpmath at 60 digits, every row: every result within its
    FLAT budget (logsumexp: A + kappa)."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(60)
    found = {}
    for n_classes in (2, 5, BLOCK_MAX_CLASSES[dtype] + 1):
        x, y = gap_rows(dtype, n_classes, 60, rng)
        r = compact(MP60.results(x, y, dtype), ("softmax", "log_softmax", "logsumexp", "hessian",
                                                "row_losses", "grad_sum", "max_complement"))
        measure(found, x, y, r, dtype)
    over = over_budget(found, dtype)
    assert not over, f"{kernel_build} {dtype}: {over}"


def comparable_terms_rows(dtype, rng):
    """(name, logits, labels): rows where S is a sum of many terms of one size, so that its
    rounding, not the exponentials', would dominate a plain sum's error (the float64 sum of S
    is compensated: `_rowops_template.h`, issue 19): near-ties of 1000-20000 classes, every
    other logit at one gap (from 0.7 to beyond 36.7 = -log(2**-53), where each term is below
    an ulp of 1, up to where the terms become subnormal: a sum of many subnormal terms is
    off by about as many subnormal ulps as it has terms, each rounded absolutely), wide
    uniform rows; each also at 3-16 and 17-23 classes (both cross-entropy paths), and at and
    next to multiples of 64 and of the float64 sums' chunks (1024, SML_CHUNK in `_rowops.h`).
    Labels at the max for half the rows."""
    top = 85.0 if np.dtype(dtype) == F32 else 700.0
    out = []
    for n_classes, n_rows in ((3, 40), (9, 40), (16, 40), (23, 40), (63, 8), (64, 8), (128, 8), (1000, 6),
                              (1024, 4), (4099, 4), (20000, 2)):
        m = rng.uniform(-3, 3, (n_rows, 1))
        near = m - np.abs(rng.standard_normal((n_rows, n_classes))) * 1e-3
        gap = np.exp(rng.uniform(np.log(0.7), np.log(top), (n_rows, 1)))
        level = m - gap * (1 + rng.uniform(0, 1e-3, (n_rows, n_classes)))
        wide = m - rng.uniform(0, 8, (n_rows, n_classes))
        for kind, x in (("near-ties", near), ("one gap", level), ("uniform", wide)):
            at = rng.integers(0, n_classes, n_rows)
            x[np.arange(n_rows), at] = m[:, 0]
            y = np.where(np.arange(n_rows) % 2 == 0, at, rng.integers(0, n_classes, n_rows))
            out.append((f"{kind} C={n_classes}", x.astype(dtype), y))
    # a confident row of 20000 terms each below half an ulp of 1 (float64: 1e-18): S - 1 is
    # theirs alone, kept to their own precision (summed plainly over the whole row, as the
    # lanes' compensations once were, it was off by 6.4 ULPs)
    gap = 41.4 if np.dtype(dtype) == F64 else 18.0
    x = -gap * (1 + rng.uniform(0, 1e-3, (1, 20000)))
    x[0, 0] = 0.0
    out.append(("tiny terms C=20000", x.astype(dtype), np.zeros(1, np.int64)))
    return out


@functools.lru_cache(maxsize=None)
def comparable_cases(dtype_name):
    """[(name, logits, labels, exact results)] of `comparable_terms_rows`, MP60 on every row,
    computed once per dtype."""
    dtype = np.dtype(dtype_name)
    names = ("softmax", "log_softmax", "logsumexp", "hessian", "row_losses", "grad_sum", "max_complement")
    return [(name, x, y, compact(MP60.results(x, y, dtype), names))
            for name, x, y in comparable_terms_rows(dtype, np.random.default_rng(19))]


@pytest.mark.parametrize("dtype", DTYPES)
def test_sums_of_many_comparable_terms_against_mpmath_at_60_digits(kernel_build, dtype):
    """`comparable_terms_rows` against mpmath at 60 digits, every row: every result of
    ULP_RESULTS within FLAT_ULPS, the others within FLAT (logsumexp: A + kappa)."""
    dtype = np.dtype(dtype)
    found = {}
    for _, x, y, r in comparable_cases(dtype.name):
        measure(found, x, y, r, dtype)
    over = over_budget(found, dtype)
    assert not over, f"{kernel_build} {dtype}: {over}"


@pytest.mark.parametrize("path", ["block", "row"])
def test_two_class_loss_near_the_max_is_within_its_budget(kernel_build, path):
    """Issue 19: two float64 classes labelled at the max, the other logit 15-25 below it (5000
    rows against mpmath at 60 digits). The loss log1p(exp(x_1 - x_0)) was up to 16.7 ulps off,
    from the rounding of x_1 - x_0 (up to 16 units of roundoff for a gap in [16, 32)); with
    x_1 - x_0 exact it is within A + kappa, kappa = E / loss ~ 1.6, and 2 ulps. The row path gets the same rows padded with -inf
    logits (whose exp are exact zeros: the same exact results and kappa)."""
    x, y, r = two_class_case()
    if path == "row":
        x = np.concatenate([x, np.full((x.shape[0], BLOCK_MAX_CLASSES[F64] - 1), -np.inf)], axis=1)
    losses = sml.cross_entropy(x, y, reduction="none")
    errors = ulps(losses, r.row_losses, F64)
    assert worst(beyond(errors, r.kappa.loss)) <= BUDGETS[f"row_loss/{path}"][F64]
    # the regime of the issue: 16.7 ulps while x - max was rounded; now within 2 (measured 1.1)
    assert worst(errors) <= 2.0, worst(errors)
    _, grad = sml.cross_entropy_with_grad(x, y, reduction="sum")
    other = ulps(grad[:, 1], r.grad_sum[:, 1], F64)
    assert worst(beyond(other, r.kappa.p[:, 1])) <= BUDGETS[f"grad_off_label/{path}"][F64]
    label = ulps(grad[:, 0], r.grad_sum[:, 0], F64)
    assert worst(beyond(label, r.kappa.label)) <= BUDGETS[f"grad_label_relative/{path}"][F64]


# ---- the options: label smoothing, z-loss, probability targets -----------------------------------
# Issue 19, item 2: the float64 gradients with these options have p_scale = s p_coef / (S W) as
# hi + lo and each entry p_scale e_c - t_c rounded about once (`sml_fms_dd`; before: p_scale's
# plain roundings, up to 160 ULPs of an entry where the two terms nearly cancel), probability
# targets' T = sum_c w_c y'_c and gap sum compensated. An entry's error is then its rounding
# and the error of its terms: kappa_c = (1.6 |p_scale e_c| + OPTION_T_UNITS |t_c|) u / ulp (the
# exp's, and t_c's own roundings: y'_c = (1 - eps) y_c + eps / C, times s, / W), unbounded in
# ULPs where the terms cancel; p_coef's own roundings (a few u) are in OPTION_A. Rows of
# `gap_rows` (gaps up to the underflow limit), both the group path (contiguous rows of up to
# 1024 classes) and the row path (the same rows, strided), against mpmath at 60 digits.
# The per-row loss with label smoothing and class indices keeps its plain roundings ((1 - eps),
# eps / C and their products: index_row_terms and the groups' block_terms, which must agree
# bit for bit): up to 2.46 ULPs, over the flat 2; the others within 2.
OPTION_T_UNITS = 2.0
OPTION_LOSS_ULPS = {"label_smoothing": 3.0, "both": 3.0}  # [2.281, 2.461]; else FLAT_ULPS
OPTION_GRAD_A = 0.75  # [0.553] ULPs beyond kappa_c
OPTIONS = {"label_smoothing": {"label_smoothing": 0.1}, "z_loss": {"z_loss": 1e-4},
           "both": {"label_smoothing": 0.1, "z_loss": 1e-4}, "probabilities": {},
           "probabilities+smoothing": {"label_smoothing": 0.1}}


def exact_option_rows(x, y, probs, eps, z):
    """Per row (loss, gradient off the label, |p term|, |t term|) of cross-entropy with
    label smoothing eps and z-loss z, class indices y (probs None) or probabilities probs, at
    MP60's precision; 1 - p_y and log S from the terms off the max (no cancellation)."""
    import mpmath

    losses, grads, p_terms, t_terms = [], [], [], []
    for r in range(x.shape[0]):
        X = [mpmath.mpf(float(v)) for v in x[r]]
        n, m = len(X), max(X)
        e = [mpmath.exp(v - m) for v in X]
        ties = sum(1 for v in X if v == m)
        rest = mpmath.fsum(ec for v, ec in zip(X, e) if v != m)
        s_total, log_s = rest + ties, mpmath.log1p(rest + (ties - 1))
        lse, sm = m + log_s, mpmath.mpf(eps) / n
        minus_l = [log_s + (m - v) for v in X]
        if probs is None:
            t = [sm + ((1 - mpmath.mpf(eps)) if c == y[r] else 0) for c in range(n)]
        else:
            t = [(1 - mpmath.mpf(eps)) * mpmath.mpf(float(v)) + sm for v in probs[r]]
        coef = mpmath.fsum(t) + 2 * mpmath.mpf(z) * lse
        losses.append(mpmath.fsum(tc * lc for tc, lc in zip(t, minus_l)) + mpmath.mpf(z) * lse ** 2)
        grads.append([coef * ec / s_total - tc for ec, tc in zip(e, t)])
        p_terms.append([abs(coef * ec / s_total) for ec in e])
        t_terms.append([abs(tc) for tc in t])
    return losses, grads, p_terms, t_terms


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_options_against_mpmath_at_60_digits(kernel_build, option):
    """float64 gap rows of 100 classes (and 24: the group path's smallest) with label
    smoothing, z-loss, probability targets: per-row losses within 2 ULPs (OPTION_LOSS_ULPS),
    gradient entries off the label within OPTION_GRAD_A + kappa_c, on the group and the
    row path (measured: losses 0.70-1.10, with label smoothing 2.28-2.46; gradients 0-0.55
    beyond kappa_c, where main was up to 25 beyond it with probability targets)."""
    import mpmath

    mpmath.mp.prec = max(mpmath.mp.prec, 203)
    rng = np.random.default_rng(20)
    kwargs = OPTIONS[option]
    for n_classes, n_rows in ((24, 12), (100, 6)):
        x, y = gap_rows(F64, n_classes, n_rows, rng)
        probs = rng.dirichlet(np.full(n_classes, 0.3), n_rows) if option.startswith("prob") else None
        losses, grads, p_terms, t_terms = exact_option_rows(x, y, probs, kwargs.get("label_smoothing", 0.0),
                                                            kwargs.get("z_loss", 0.0))
        target = y if probs is None else probs
        exact_grad = np.array(grads, dtype=object)
        unit = np.spacing(np.abs(exact_grad.astype(np.float64)))
        kappa = ((1.6 * np.array(p_terms, dtype=object) + OPTION_T_UNITS * np.array(t_terms, dtype=object))
                 * 2.0**-53).astype(np.float64) / np.maximum(unit, np.spacing(np.finfo(F64).smallest_normal))
        off = np.ones(x.shape, bool) if probs is not None else np.arange(n_classes) != y[:, None]
        for layout in ("group", "row"):
            xs = x if layout == "group" else np.repeat(x, 2, axis=1)[:, ::2]  # strided: the row path
            loss = sml.cross_entropy(xs, target, reduction="none", **kwargs)
            _, grad = sml.cross_entropy_with_grad(xs, target, reduction="sum", **kwargs)
            loss_errors = ulps(loss, np.array(losses, dtype=object), F64)
            assert worst(loss_errors) <= OPTION_LOSS_ULPS.get(option, FLAT_ULPS), (layout, n_classes)
            errors = ulps(grad, exact_grad, F64)
            assert worst(beyond(errors[off], kappa[off])) <= OPTION_GRAD_A, (layout, n_classes)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_exp_over_its_whole_range(kernel_build, dtype):
    overall, normal = measure_exp(_dispatch.kernels, np.dtype(dtype), np.random.default_rng(6))
    assert overall <= EXP_ULPS[np.dtype(dtype)], (overall, normal)
    assert normal <= EXP_NORMAL_ULPS[np.dtype(dtype)], (overall, normal)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_exp_special_values(kernel_build, dtype):
    info = np.finfo(dtype)
    x = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, info.max, -info.max, 1000.0, -1000.0], dtype)
    out = kernel_exp(_dispatch.kernels, x)
    expected = np.array([0.0, np.inf, np.nan, 1.0, 1.0, np.inf, 0.0, np.inf, 0.0], dtype)
    np.testing.assert_array_equal(out, expected)
    assert not np.signbit(out[[0, 6, 8]]).any()  # exp underflows to +0, never -0


def test_large_vocabulary_float32_meets_issue_4_targets(kernel_build):
    """C = 128256: |grad error| * N <= 2e-7 and the loss's relative error <= 1.2e-7."""
    rng = np.random.default_rng(7)
    x, y = large_vocabulary(np.float32, rng)
    n = x.shape[0]
    loss, grad = sml.cross_entropy_with_grad(x, y)
    xs, ys = sample_rows(x, y, rows=2)
    gs = sample_rows(grad, rows=2)[0]
    r = EXACT.results(xs, ys, F32)
    exact_grad = r.grad_sum
    grad_error = worst(np.abs(gs.astype(np.float64) - np.asarray(exact_grad / n).astype(np.float64)) * n)
    assert grad_error <= LARGE_VOCAB_GRAD_ERROR_TIMES_N, grad_error
    exact_losses = r.row_losses
    if EXTENDED:
        exact_loss = np.mean(exact_losses)
        loss_error = float(abs(loss - exact_loss) / abs(exact_loss))
    else:  # per row, from the per-row losses
        losses = sample_rows(sml.cross_entropy(x, y, reduction="none"), rows=2)[0]
        loss_error = worst(np.abs(losses - exact_losses.astype(np.float64)) / np.abs(exact_losses.astype(np.float64)))
    assert loss_error <= LARGE_VOCAB_LOSS_RELATIVE, loss_error
    # and off the label, every gradient entry as accurate as the row path's
    off = ~r.onehot
    errors = ulps(gs[off], exact_grad[off] / n, np.float32)
    assert worst(beyond(errors, r.kappa.p[off])) <= BUDGETS["grad_off_label/row"][F32]


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_vocabulary_softmax_and_losses(kernel_build, dtype):
    rng = np.random.default_rng(8)
    x, y = large_vocabulary(dtype, rng, n_rows=2)
    xs, ys = sample_rows(x, y, rows=1)
    dtype = np.dtype(dtype)
    r = EXACT.results(xs, ys, dtype)
    p_errors = ulps(sample_rows(sml.softmax(x), rows=1)[0], r.softmax, dtype)
    assert worst(beyond(p_errors, r.kappa.p)) <= BUDGETS["softmax"][dtype]
    losses = sample_rows(sml.cross_entropy(x, y, reduction="none"), rows=1)[0]
    assert worst(beyond(ulps(losses, r.row_losses, dtype), r.kappa.loss)) <= BUDGETS["row_loss/row"][dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_confident_loss_keeps_its_digits(dtype):
    """p_y -> 1: the loss log1p(R) ~ R is kept to full relative precision (log(1 + R) would
    round it to 0), down to R ~ 1e-35 in float32 and 1e-260 in float64."""
    gaps = np.array([20.0, 40.0, 80.0] + ([] if dtype == np.float32 else [300.0, 600.0]))
    x = np.zeros((gaps.size, 16))
    x[:, 3] = gaps
    x = x.astype(dtype)
    y = np.full(gaps.size, 3)
    losses = sml.cross_entropy(x, y, reduction="none")
    r = EXACT.results(x, y, dtype)
    assert np.all(losses > 0)
    assert worst(beyond(ulps(losses, r.row_losses, dtype), r.kappa.loss)) <= BUDGETS["row_loss/block"][np.dtype(dtype)]


# 1 - p_y at a max with p_y -> 1, the gaps exact (integers, so x - m is not rounded): (S - 1) / S,
# S - 1 a sum of the other entries' exp(x - m), each within 0.78 ulp, then summed and divided:
# within 2 ulp relative to itself; the hessian p (1 - p) has two more roundings (p = e / S and
# the product): 3 ulp. (Rounded gaps: `BUDGETS["grad_label_relative/..."]` and kappa.)
COMPLEMENT_ULPS = {"cross_entropy_with_grad": 2.0, "gradient_hessian_grad": 2.0, "gradient_hessian_hess": 3.0}
# measured [1.57, 1.57, 2.53], at x_y - x_c = 40 and 30, C = 16


@pytest.mark.parametrize("quantity", ["cross_entropy_with_grad", "gradient_hessian_grad", "gradient_hessian_hess"])
def test_label_entries_are_accurate_relative_to_themselves_when_p_y_tends_to_one(quantity):
    x = np.zeros((3, 16))
    x[:, 3] = [20.0, 30.0, 40.0]
    y = np.full(3, 3)
    if quantity == "cross_entropy_with_grad":
        actual, exact = sml.cross_entropy_with_grad(x, y, reduction="sum")[1], EXACT.grad_sum(x, y)
    elif quantity == "gradient_hessian_grad":
        actual, exact = sml.gradient_hessian(x, y)[0], EXACT.grad_sum(x, y)
    else:
        actual, exact = sml.gradient_hessian(x, y)[1], EXACT.hessian(x)
    assert worst(ulps(actual[:, 3], exact[:, 3], np.float64)) <= COMPLEMENT_ULPS[quantity]


def test_a_loss_just_above_the_largest_value_rounds_to_it():
    x = np.array([[65504.0, -8.0]], np.float16)  # loss 65512 + log1p(e**-65512): 65504 in float16
    assert sml.cross_entropy(x, np.array([1])) == np.float16(65504)


def test_mpmath_and_longdouble_references_agree():
    """The mpmath fallback (other platforms) is the same math: checked where both exist, also
    on a row whose gaps span 20 binades (where long double's own x - max would be rounded:
    `exp_of_gaps`), as is `compact` (MP60's results as long double)."""
    if not EXTENDED:
        pytest.skip("np.longdouble is double here: only the mpmath reference exists")
    mp_exact = Exact(use_mpmath=True)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 9)) * 5
    x[0, 2] = 40.0
    x[3] = [1.2345678e-4, -700.1234567, -350.5, -1.1, -20.7, -0.3, -99.9, -512.01, -1e-3]
    y = np.array([2, 0, 8, 0])
    names = ("softmax", "log_softmax", "logsumexp", "hessian", "row_losses", "grad_sum")
    ld, mp = EXACT.results(x, y), mp_exact.results(x, y)
    compacted = compact(MP60.results(x, y), names)
    for name in names:
        a, b, c = getattr(ld, name), getattr(mp, name), getattr(compacted, name)
        assert worst(ulps(np.asarray(a, np.float64), b, np.float64)) <= 0.501, name  # 0.5: rounding to double
        unit = np.spacing(np.abs(np.asarray(c, np.float64)))  # two long doubles, in double ulps
        assert worst(np.asarray(np.abs(a - c) / unit, np.float64)) <= 0.01, name


# ---- the measurements, printed ------------------------------------------------------------------


def main():
    print(f"exact reference: {'longdouble' if EXTENDED else 'mpmath'} (two-class rows: mpmath, 60 digits)")
    print("columns: A (worst error - kappa) over logits_suite, over gap_suite; its budget; worst raw error")
    print("over logits_suite, over gap_suite; worst error / kappa where kappa >= 8 (gap_suite)")
    for build, module in _dispatch.available.items():
        with _dispatch.use(build):
            for dtype in (F32, F64):
                suite = measure_functions(dtype, np.random.default_rng(5))
                gaps = measure_gaps(dtype)
                for key in sorted(BUDGETS):
                    a, b = suite.get(key, (np.nan,) * 3), gaps.get(key, (np.nan,) * 3)
                    print(f"{build:9s} {dtype.name:8s} {key:27s} A {a[0]:7.3f} {b[0]:7.3f}  budget "
                          f"{BUDGETS[key][dtype]:5.2f}  raw {a[1]:9.4g} {b[1]:9.4g}  slope {b[2]:.3f}")
                overall, normal = measure_exp(module, dtype, np.random.default_rng(6))
                print(f"{build:9s} {dtype.name:8s} {'exp':27s} {overall:.4g} (normal results {normal:.4g})")
            x, y, r = two_class_case()
            for path in ("block", "row"):
                xp = x if path == "block" else np.concatenate([x, np.full((x.shape[0], 15), -np.inf)], axis=1)
                errors = ulps(sml.cross_entropy(xp, y, reduction="none"), r.row_losses, F64)
                print(f"{build:9s} float64  two classes, gaps 15-25, {path:5s} path: loss worst "
                      f"{worst(errors):.4g} ulps, A {worst(beyond(errors, r.kappa.loss)):.3f}, "
                      f"worst error / kappa {worst(errors / r.kappa.loss):.3f}")
            x, y = large_vocabulary(np.float32, np.random.default_rng(7))
            loss, grad = sml.cross_entropy_with_grad(x, y)
            error = np.abs(grad - np.asarray(EXACT.grad_sum(x, y) / x.shape[0], np.float64)) * x.shape[0]
            exact_loss = np.mean(EXACT.row_losses(x, y))
            print(f"{build:9s} float32  C=128256 |grad error| * N       {worst(error):.4g}")
            loss_error = float(abs(loss - exact_loss) / exact_loss)
            print(f"{build:9s} float32  C=128256 loss relative error    {loss_error:.4g}")


if __name__ == "__main__":
    sys.exit(main())

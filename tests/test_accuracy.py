"""Accuracy against exact arithmetic: every function's float32 and float64 results compared
with the same math done in extended precision, and held to a stated budget.

The exact values come from `np.longdouble` where it is wider than double (x86-64 Linux: 64-bit
significand, 11 bits more than double, so the reference's own error is ~1/1000 ulp of a double)
and from mpmath at 113 bits on a sample of rows elsewhere (`EXACT`). They are computed from the
inputs as given (the float32 or float64 logits are exact numbers), with the same care the
kernel takes: the row max subtracted, log(S) as log1p of the terms other than the max, and
1 - p_y as the sum of the other terms, never by cancellation.

Errors are in ULPs of the result dtype at the exact value (`ulps`), or relative where a
result is a sum (the mean loss); below the smallest normal number only the absolute error is
measured (one subnormal ulp is the best a correctly rounded result can do there).

The budgets (constants below) are the measured worst case over these inputs, gcc 12 on x86-64,
both kernel builds (baseline SSE2 and AVX2+FMA), rounded up with a little headroom (a different
compiler may contract differently); `python tests/test_accuracy.py` prints the measurements.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import softmaxloss as sml
from softmaxloss import _dispatch

EXTENDED = np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant
DTYPES = [np.float32, np.float64]
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)

# ---- budgets -----------------------------------------------------------------------------------
# Measured worst cases (`python tests/test_accuracy.py`; gcc 12, x86-64, baseline and AVX2+FMA
# builds identical to 3 digits) in brackets; budgets leave ~25% headroom.
#
# The kernel computes d = x_c - m in the input dtype, then exp(d). Rounding d costs a relative
# error of up to |x_c - m| * u in exp(d) (exp's condition number is |d|): a probability 65
# below the max is off by up to ~64 ulps in float32, 600 below by ~450 ulps in float64. That
# is the algorithm's (PyTorch's and JAX's too), not noise, so the budgets of results made
# from exp(x - m) are ULPs per unit of (1 + kappa), kappa = the condition number with respect
# to that rounding (`Exact.kappa_*`, which also count S's own rounding for float64 results:
# `summation_units`): a well-conditioned result (kappa ~ 0) is held to the figure itself.
# Raw worst cases: softmax 64 ulps (float32) / 448 (float64), log_softmax and per-row loss
# 15 / 15 (near one-hot rows, where the loss is the tiny sum R of the other probabilities and
# inherits their exp errors).

# The kernel's exp (`_fastexp.h`, which states 0.78 ulp for float and 0.79 for double from
# exhaustive / 1.2e8-point sweeps; subnormal results, rounded twice, are the worst).
EXP_ULPS = {F32: 0.80, F64: 0.80}  # [0.779, 0.770]
EXP_NORMAL_ULPS = {F32: 0.70, F64: 0.70}  # normal results [0.642, 0.644]
# softmax p_c = exp(x_c - m) * (1/S), in ULPs per (1 + kappa).
SOFTMAX_ULPS = {F32: 1.25, F64: 1.0}  # [0.964, 0.763]
# log_softmax l_c = (x_c - m) - log S and logsumexp m + log S: formed in float64, rounded once.
LOG_SOFTMAX_ULPS = {F32: 0.7, F64: 0.8}  # [0.535, 0.621]
LOGSUMEXP_ULPS = {F32: 0.6, F64: 0.8}  # [0.439, 0.632]
# Per-row loss log S + (m - x_y) (reduction="none"), ULPs per (1 + kappa).
ROW_LOSS_ULPS = {F32: 0.5, F64: 0.65}  # [0.388, 0.490]
# Mean loss, relative error: float64 row losses, summed in float64, rounded once (float32:
# 2**-24 = 5.96e-8 is the rounding itself).
MEAN_LOSS_RELATIVE = {F32: 6.1e-8, F64: 5.0e-16}  # [5.57e-8, 1.21e-16]
# cross_entropy_with_grad (mean): the entries off the label, p_c / N, as softmax.
GRAD_ULPS = {F32: 1.25, F64: 1.0}  # [0.964, 0.763]
# The label's entry (p_y - 1) / N: absolute error times N, i.e. relative to 1, the size of
# the terms it is the difference of (relative to itself too, as p_y -> 1: the kernel forms
# 1 - p_y without cancellation, tested below).
GRAD_LABEL_ABSOLUTE = {F32: 1.2e-7, F64: 4.4e-16}  # [3.36e-8, 1.16e-16]
# gradient_hessian, per sample: grad off the label p_c and hess p_c (1 - p_c) off the row max
# in ULPs per (1 + kappa); the label's grad -(1 - p_y) and the hess at the max absolutely
# (the same cancellation as above).
GRAD_HESS_ULPS = {F32: 1.25, F64: 1.0}  # [0.962, 0.763]
HESS_ULPS = {F32: 1.25, F64: 1.5}  # [0.962, 1.132]
GRAD_HESS_LABEL_ABSOLUTE = {F32: 1.2e-7, F64: 4.4e-16}  # [3.36e-8, 2.22e-16]
HESS_MAX_ABSOLUTE = {F32: 6.0e-8, F64: 4.4e-16}  # [8.89e-9, 1.11e-16]
# Issue 4's targets at C = 128256 (float32): |grad error| * N and the loss's relative error.
LARGE_VOCAB_GRAD_ERROR_TIMES_N = 2e-7
LARGE_VOCAB_LOSS_RELATIVE = 1.2e-7


# ---- exact arithmetic -----------------------------------------------------------------------


class Exact:
    """The math of softmaxloss in extended precision on 2-D rows (class axis last).

    `to_exact` turns float inputs into the wide type (longdouble, or mpmath's mpf in object
    arrays); `exp` and `log1p` work elementwise on it. The same code serves both."""

    def __init__(self, use_mpmath: bool):
        self.use_mpmath = use_mpmath
        if use_mpmath:
            import mpmath

            mpmath.mp.prec = 113
            self._mpf = np.frompyfunc(mpmath.mpf, 1, 1)
            self.exp = np.frompyfunc(mpmath.exp, 1, 1)
            self.log1p = np.frompyfunc(mpmath.log1p, 1, 1)
        else:
            self.exp, self.log1p = np.exp, np.log1p

    def to_exact(self, x):
        x = np.asarray(x, np.float64)
        return self._mpf(x) if self.use_mpmath else x.astype(np.longdouble)

    def parts(self, x):
        """(X, m, e, at_max, log S, S) of rows x: e = exp(X - m), S = sum e, log S by log1p."""
        X = self.to_exact(x)
        m = X.max(axis=-1, keepdims=True)
        e = self.exp(X - m)
        at_max = np.asarray(X == m, dtype=bool)
        rest = np.where(at_max, 0, e).sum(axis=-1, keepdims=True)
        ties = at_max.sum(axis=-1, keepdims=True)
        log_s = self.log1p(rest + (ties - 1))
        return X, m, e, at_max, log_s, rest + ties

    def at_max(self, x):
        return self.parts(x)[3]

    def kappa_softmax(self, x, dtype):
        """Condition number of p_c in the result dtype's units: |x_c - m| + sum_k p_k |x_k - m|
        (exp's amplification of the rounding of each x_k - m) plus `summation_units` (S's
        own rounding). Float64, 0 for entries at -inf."""
        X, m, e, _, _, s = self.parts(x)
        gap = np.asarray(m - X).astype(np.float64)
        p = np.asarray(e / s).astype(np.float64)
        with np.errstate(invalid="ignore"):
            gap = np.where(np.isfinite(gap), gap, 0.0)
        return gap + np.sum(p * gap, axis=-1, keepdims=True) + summation_units(x.shape[-1], dtype)

    def kappa_log_softmax(self, x, dtype):
        """Same, for l_c = (x_c - m) - log S, relative to |l_c| (0 where l_c = 0)."""
        l = np.abs(np.asarray(self.log_softmax(x)).astype(np.float64))
        k = self.kappa_softmax(x, dtype)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(l > 0, k / l, 0.0)

    def kappa_logsumexp(self, x, dtype):
        """(sum_k p_k |x_k - m| + summation_units) / |lse| (0 where lse = 0)."""
        X, m, e, _, _, s = self.parts(x)
        gap = np.asarray(m - X).astype(np.float64)
        p = np.asarray(e / s).astype(np.float64)
        lse = np.abs(np.asarray(self.logsumexp(x)).astype(np.float64))
        spread = np.sum(p * np.where(np.isfinite(gap), gap, 0.0), axis=-1) + summation_units(x.shape[-1], dtype)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(lse > 0, spread / lse, 0.0)

    def softmax(self, x):
        _, _, e, _, _, s = self.parts(x)
        return e / s

    def log_softmax(self, x):
        X, m, _, _, log_s, _ = self.parts(x)
        return (X - m) - log_s

    def logsumexp(self, x):
        _, m, _, _, log_s, _ = self.parts(x)
        return (m + log_s)[:, 0]

    def row_losses(self, x, y):
        X, m, _, _, log_s, _ = self.parts(x)
        x_y = np.take_along_axis(X, y[:, None], axis=-1)
        return (log_s + (m - x_y))[:, 0]

    def grad_sum(self, x, y):
        """d(sum of row losses)/dx = p - onehot, the label's entry as -(S - e_y)/S."""
        _, _, e, _, _, s = self.parts(x)
        g = e / s
        onehot = np.arange(x.shape[1]) == y[:, None]
        others = np.where(onehot, 0, e).sum(axis=-1, keepdims=True)
        return np.where(onehot, -others / s, g)

    def hessian(self, x):
        """p (1 - p), 1 - p as the sum of the other terms ((ties - 1) + rest at the max)."""
        X, m, e, at_max, _, s = self.parts(x)
        ties = at_max.sum(axis=-1, keepdims=True)
        rest = np.where(at_max, 0, e).sum(axis=-1, keepdims=True)
        others = np.where(at_max, (ties - 1) + rest, s - e)
        return (e / s) * (others / s)


def summation_units(n_classes, dtype):
    """The rounding error of S = sum_c exp(x_c - m), in units of the result dtype: the kernel
    sums in 8 running float64 sums of C/8 terms each, a random walk of C/8 roundings of up to
    u64 = 2**-53 each: ~sqrt(C/8) u64 (nothing for float32 results; pairwise or compensated
    sums would make it nothing for float64 too)."""
    return np.sqrt(n_classes / 8) * 2.0**-53 / (np.finfo(dtype).eps / 2)


EXACT = Exact(use_mpmath=not EXTENDED)
MPMATH_ROWS = 6  # rows sampled per input when EXACT uses mpmath (slow)


def sample_rows(*arrays, rows=MPMATH_ROWS):
    """All rows with longdouble; a few evenly spaced rows with mpmath."""
    n = arrays[0].shape[0]
    if EXTENDED or n <= rows:
        return arrays
    index = np.linspace(0, n - 1, rows).astype(int)
    return tuple(a[index] for a in arrays)


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


def worst(errors):
    """The largest error; NaN (infinite vs finite) counts as infinitely large."""
    errors = np.asarray(errors, np.float64)
    if np.isnan(errors).any():
        return np.inf
    return float(errors.max(initial=0.0))


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
    return out


def large_vocabulary(dtype, rng, n_rows=4):
    """Rows of C = 128256 classes (a Llama-3-sized vocabulary): N(0, 2) logits with a few
    large ones, as a language model's output."""
    x = rng.standard_normal((n_rows, 128256)) * 2.0
    x[:, rng.integers(0, 128256, 20)] += 12.0
    return x.astype(dtype), rng.integers(0, 128256, n_rows)


# ---- measurements -----------------------------------------------------------------------------


def conditioned(errors, kappa):
    """Errors in ULPs per unit of (1 + kappa), kappa the condition number of the result with
    respect to the rounding of x - m to the input dtype (see `Exact.kappa_*`)."""
    return np.asarray(errors, np.float64) / (1.0 + np.asarray(kappa, np.float64))


def measure_functions(dtype, rng, conditioned_errors=True):
    """{quantity: worst error} over `logits_suite` for the active kernel build; ULPs per unit
    of (1 + kappa) (or raw ULPs with conditioned_errors=False)."""
    found = {}
    scale = conditioned if conditioned_errors else (lambda errors, kappa: errors)

    def note(key, value):
        found[key] = max(found.get(key, 0.0), value)

    for name, x, y in logits_suite(dtype, rng):
        xs, ys = sample_rows(x, y)
        n = x.shape[0]
        k_p, k_log = EXACT.kappa_softmax(xs, dtype), EXACT.kappa_log_softmax(xs, dtype)
        note("softmax", worst(scale(ulps(sample_rows(sml.softmax(x))[0], EXACT.softmax(xs), dtype), k_p)))
        note("log_softmax", worst(scale(ulps(sample_rows(sml.log_softmax(x))[0], EXACT.log_softmax(xs), dtype), k_log)))
        lse_errors = ulps(sample_rows(sml.logsumexp(x))[0], EXACT.logsumexp(xs), dtype)
        note("logsumexp", worst(scale(lse_errors, EXACT.kappa_logsumexp(xs, dtype))))
        losses = sml.cross_entropy(x, y, reduction="none")
        k_loss = np.take_along_axis(k_log, ys[:, None], axis=-1)[:, 0]
        note("row_loss", worst(scale(ulps(sample_rows(losses)[0], EXACT.row_losses(xs, ys), dtype), k_loss)))
        if EXTENDED:
            exact_mean = np.mean(EXACT.row_losses(x, y))
            mean = sml.cross_entropy(x, y)
            note("mean_loss_relative", float(abs(mean - exact_mean) / abs(exact_mean)))
        _, grad = sml.cross_entropy_with_grad(x, y)
        exact_grad = EXACT.grad_sum(xs, ys) / n
        onehot = np.arange(x.shape[1]) == ys[:, None]
        grad_s = sample_rows(grad)[0]
        note("grad_off_label", worst(scale(ulps(grad_s[~onehot], exact_grad[~onehot], dtype), k_p[~onehot])))
        label_error = np.abs(grad_s[onehot].astype(np.float64) - exact_grad[onehot].astype(np.float64)) * n
        note("grad_label_absolute_times_n", worst(label_error))
        g, h = sml.gradient_hessian(x, y)
        g_s, h_s = sample_rows(g, h)
        exact_g, exact_h = EXACT.grad_sum(xs, ys), EXACT.hessian(xs)
        note("grad_hess_off_label", worst(scale(ulps(g_s[~onehot], exact_g[~onehot], dtype), k_p[~onehot])))
        note("grad_hess_label_absolute", worst(np.abs(g_s[onehot] - exact_g[onehot].astype(np.float64))))
        at_max = EXACT.at_max(xs)
        note("hess_off_max", worst(scale(ulps(h_s[~at_max], exact_h[~at_max], dtype), k_p[~at_max])))
        note("hess_max_absolute", worst(np.abs(h_s[at_max] - exact_h[at_max].astype(np.float64))))
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

BUDGETS = {
    "softmax": SOFTMAX_ULPS,
    "log_softmax": LOG_SOFTMAX_ULPS,
    "logsumexp": LOGSUMEXP_ULPS,
    "row_loss": ROW_LOSS_ULPS,
    "mean_loss_relative": MEAN_LOSS_RELATIVE,
    "grad_off_label": GRAD_ULPS,
    "grad_label_absolute_times_n": GRAD_LABEL_ABSOLUTE,
    "grad_hess_off_label": GRAD_HESS_ULPS,
    "grad_hess_label_absolute": GRAD_HESS_LABEL_ABSOLUTE,
    "hess_off_max": HESS_ULPS,
    "hess_max_absolute": HESS_MAX_ABSOLUTE,
}


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_function_is_within_its_budget(kernel_build, dtype):
    found = measure_functions(np.dtype(dtype), np.random.default_rng(5))
    over = {k: (v, BUDGETS[k][np.dtype(dtype)]) for k, v in found.items() if not v <= BUDGETS[k][np.dtype(dtype)]}
    assert not over, f"{kernel_build} {np.dtype(dtype)}: (measured, budget) {over}"


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
    exact_grad = EXACT.grad_sum(xs, ys)
    grad_error = worst(np.abs(gs.astype(np.float64) - np.asarray(exact_grad / n).astype(np.float64)) * n)
    assert grad_error <= LARGE_VOCAB_GRAD_ERROR_TIMES_N, grad_error
    exact_losses = EXACT.row_losses(xs, ys)
    if EXTENDED:
        exact_loss = np.mean(exact_losses)
        loss_error = float(abs(loss - exact_loss) / abs(exact_loss))
    else:  # per row, from the per-row losses
        losses = sample_rows(sml.cross_entropy(x, y, reduction="none"), rows=2)[0]
        loss_error = worst(np.abs(losses - exact_losses.astype(np.float64)) / np.abs(exact_losses.astype(np.float64)))
    assert loss_error <= LARGE_VOCAB_LOSS_RELATIVE, loss_error
    # and off the label, every gradient entry as accurate as softmax
    onehot = np.arange(x.shape[1]) == ys[:, None]
    kappa = EXACT.kappa_softmax(xs, np.float32)[~onehot]
    assert worst(conditioned(ulps(gs[~onehot], exact_grad[~onehot] / n, np.float32), kappa)) <= GRAD_ULPS[F32]


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_vocabulary_softmax_and_losses(kernel_build, dtype):
    rng = np.random.default_rng(8)
    x, y = large_vocabulary(dtype, rng, n_rows=2)
    xs, ys = sample_rows(x, y, rows=1)
    dtype = np.dtype(dtype)
    p_errors = ulps(sample_rows(sml.softmax(x), rows=1)[0], EXACT.softmax(xs), dtype)
    assert worst(conditioned(p_errors, EXACT.kappa_softmax(xs, dtype))) <= SOFTMAX_ULPS[dtype]
    losses = sample_rows(sml.cross_entropy(x, y, reduction="none"), rows=1)[0]
    kappa = np.take_along_axis(EXACT.kappa_log_softmax(xs, dtype), ys[:, None], axis=-1)[:, 0]
    assert worst(conditioned(ulps(losses, EXACT.row_losses(xs, ys), dtype), kappa)) <= ROW_LOSS_ULPS[dtype]


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
    exact = EXACT.row_losses(x, y)
    assert np.all(losses > 0)
    kappa = EXACT.kappa_log_softmax(x, dtype)[:, 3]
    assert worst(conditioned(ulps(losses, exact, dtype), kappa)) <= ROW_LOSS_ULPS[np.dtype(dtype)]


# 1 - p_y at a max with p_y -> 1: (S - 1) / S, S - 1 a sum of the other entries' exp(x - m),
# each within 0.78 ulp, then summed and divided: within 2 ulp relative to itself; the
# hessian p (1 - p) has two more roundings (p = e / S and the product): 3 ulp.
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
    """The mpmath fallback (other platforms) is the same math: checked where both exist."""
    if not EXTENDED:
        pytest.skip("np.longdouble is double here: only the mpmath reference exists")
    mp_exact = Exact(use_mpmath=True)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 9)) * 5
    x[0, 2] = 40.0
    y = np.array([2, 0, 8])
    for name in ("softmax", "log_softmax", "logsumexp", "hessian"):
        a, b = getattr(EXACT, name)(x), getattr(mp_exact, name)(x)
        assert worst(ulps(np.asarray(a, np.float64), b, np.float64)) <= 0.501, name  # 0.5: rounding to double
    for name in ("row_losses", "grad_sum"):
        a, b = getattr(EXACT, name)(x, y), getattr(mp_exact, name)(x, y)
        assert worst(ulps(np.asarray(a, np.float64), b, np.float64)) <= 0.501, name  # 0.5: rounding to double


# ---- the measurements, printed ------------------------------------------------------------------


def main():
    rng_seed = {"functions": 5, "exp": 6}
    print(f"exact reference: {'longdouble' if EXTENDED else 'mpmath'}")
    for build, module in _dispatch.available.items():
        with _dispatch.use(build):
            for dtype in (F32, F64):
                found = measure_functions(dtype, np.random.default_rng(rng_seed["functions"]))
                raw = measure_functions(dtype, np.random.default_rng(rng_seed["functions"]), False)
                raw_keys = ("softmax", "log_softmax", "row_loss")
                found.update({f"{k} (raw ulps)": v for k, v in raw.items() if k in raw_keys})
                overall, normal = measure_exp(module, dtype, np.random.default_rng(rng_seed["exp"]))
                found["exp"], found["exp_normal"] = overall, normal
                for key, value in sorted(found.items()):
                    print(f"{build:9s} {dtype.name:8s} {key:30s} {value:.4g}")
            x, y = large_vocabulary(np.float32, np.random.default_rng(7))
            loss, grad = sml.cross_entropy_with_grad(x, y)
            error = np.abs(grad - np.asarray(EXACT.grad_sum(x, y) / x.shape[0], np.float64)) * x.shape[0]
            exact_loss = np.mean(EXACT.row_losses(x, y))
            print(f"{build:9s} float32  C=128256 |grad error| * N       {worst(error):.4g}")
            loss_error = float(abs(loss - exact_loss) / exact_loss)
            print(f"{build:9s} float32  C=128256 loss relative error    {loss_error:.4g}")


if __name__ == "__main__":
    sys.exit(main())

/*
 * Row primitives of the softmaxloss kernels: the loops over one row of logits that
 * must vectorise.
 *
 * Why C and not Cython: these loops need `#pragma omp simd` (a max reduction that
 * gcc otherwise refuses to vectorise because of NaN semantics) and an explicit
 * load-all-then-store order that makes in-place use (out == x) safe to vectorise.
 * Everything else (the per-row math of the losses) lives in _kernels.pyx.
 *
 * Determinism: no floating-point reassociation is allowed here (no -ffast-math),
 * so every sum is evaluated in exactly the order the source states, whatever the
 * vector width, alignment or thread: a row gives the same bits wherever it runs.
 */
#ifndef SOFTMAXLOSS_ROWOPS_H
#define SOFTMAXLOSS_ROWOPS_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The platform facts (SML_OPENMP, SML_ISA, SML_COMPILER, sml_max_threads, the CPU tests
 * such as sml_cpu_has_avx2_fma) are _platform.h's, the vector types _vector.h's; both are
 * included here because _kernels.pyx declares them as this header's. */
#include "_platform.h"
#include "_vector.h"
#include "_fastexp.h"
#include "_fastlog.h"

/* ---- row primitives -------------------------------------------------------
 * Written once, in _rowops_template.h, and instantiated below for float (suffix
 * _f, exp sml_expf) and double (suffix _d, sml_exp). See that file for what each
 * function computes.
 */
#define SML_LANES 8
#define SML_CHUNK 1024 /* a multiple of SML_LANES; 4 or 8 KiB of stack */
#define SML_SUMBLOCK 64 /* a multiple of SML_LANES: the float64 compensations' blocks (sml_lanes_add) */
#define SML_VBLOCK 128 /* a multiple of SML_LANES: see sml_row_expsum */

/* The lanes' total, always in this order. */
#define SML_LANE_TOTAL(acc)                                                            \
    (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])))

/* ---- exact differences x - m ---------------------------------------------------
 * sml_sub_lo(a, b): the rounding error of a - b (a - b = fl(a - b) + sml_sub_lo(a, b)
 * exactly; TwoSum), 0 where fl(a - b) is not finite.
 * sml_sub_sub(x, m, L): (x - m) - L with x - m exact and one rounding at the end (a
 * TwoSum more): log_softmax's l_c = (x_c - m) - log S, and -l_y = log S + (m - x_y), the
 * loss. +-inf and NaN as the plain (x - m) - L gives them. Branch-free: they vectorise. */
static inline double sml_sub_lo(double a, double b)
{
    double hi, lo;
    SML__TWO_DIFF(double, a, b, hi, lo);
    return fabs(hi) <= DBL_MAX ? lo : 0.0;
}

static inline double sml_sub_sub(double x, double m, double L)
{
    double d, dl, t, tl;
    SML__TWO_DIFF(double, x, m, d, dl);
    SML__TWO_DIFF(double, d, L, t, tl);
    return fabs(t) <= DBL_MAX ? t + (tl + dl) : t;
}

/* ---- results of S in one rounding (float64 results; issue 19) -------------------------
 * SML__TWO_SUM(a, b, s, e): s + e = a + b exactly (Knuth's TwoSum). SML__TWO_PROD(a, b, p, e):
 * p + e = a * b exactly (fma where the target has FMA, else Dekker's product of Veltkamp
 * halves); valid without overflow or underflow of the partial products.
 * sml_quot_dd(num, s, s_lo, w, &lo): num / ((s + s_lo) w) as hi + lo, the pair within a few
 * units of 2^-104 of it (num, w > 0 normal; s + s_lo the sum S of sml_row_expsum_lo_d):
 * the factor that turns e_c into p_c (1 / S), a gradient's p_scale (s p_coef / (S W)).
 * sml_mul_dd(e, hi, lo): e (hi + lo), rounded once: with FMA one fma of e hi and e lo (the
 * latter's own rounding far below an ulp of the result), without it e hi exactly by
 * Dekker's product, then its sum with the correction. */
#define SML__TWO_SUM(a, b, s, e)                                                        \
    do {                                                                                \
        double bb_;                                                                     \
        (s) = (a) + (b);                                                                \
        bb_ = (s) - (a);                                                                \
        (e) = ((a) - ((s) - bb_)) + ((b) - bb_);                                        \
    } while (0)

#if defined(__FMA__) || (defined(_MSC_VER) && defined(__AVX2__))
#define SML__HAVE_FMA 1
#define SML__TWO_PROD(a, b, p, e)                                                       \
    do {                                                                                \
        (p) = (a) * (b);                                                                \
        (e) = fma((a), (b), -(p));                                                      \
    } while (0)
#else
#define SML__HAVE_FMA 0
static inline void sml__split(double a, double *hi, double *lo)
{
    double t = 134217729.0 * a; /* 2^27 + 1 */
    *hi = t - (t - a);
    *lo = a - *hi;
}
#define SML__TWO_PROD(a, b, p, e)                                                       \
    do {                                                                                \
        double ah_, al_, bh_, bl_;                                                      \
        (p) = (a) * (b);                                                                \
        sml__split((a), &ah_, &al_);                                                    \
        sml__split((b), &bh_, &bl_);                                                    \
        (e) = ((ah_ * bh_ - (p)) + ah_ * bl_ + al_ * bh_) + al_ * bl_;                  \
    } while (0)
#endif

/* sml_fmadd(a, b, c) = a b + c: one fma where the target has a fast one (FP_FAST_FMA),
 * else a * b + c (no fma instruction: never contracted). Written out where the same
 * formula runs in several paths (the row path, the groups, the blocks): gcc's
 * -ffp-contract=fast otherwise fuses a product into an addition in one path and not in
 * another (measured: 1-3 ulps between a row's group-path and row-path gradients), and
 * the bits of a row must not depend on the path its layout takes. */
static inline double sml_fmadd(double a, double b, double c)
{
#if defined(FP_FAST_FMA)
    return fma(a, b, c);
#else
    return a * b + c;
#endif
}

static inline float sml_fmaddf(float a, float b, float c)
{
#if defined(FP_FAST_FMAF)
    return fmaf(a, b, c);
#else
    return a * b + c;
#endif
}

static inline double sml_quot_dd(double num, double s, double s_lo, double w, double *lo)
{
    double d, d_lo, q, inv, p, p_lo, r;
    SML__TWO_PROD(s, w, d, d_lo);
    d_lo += s_lo * w;                 /* (s + s_lo) w = d + d_lo to ~2^-104 */
    q = num / d;
    inv = 1.0 / d;                    /* beside q, not after it: the lo's division */
    SML__TWO_PROD(q, d, p, p_lo);     /* num - q d exactly: (num - p) - p_lo */
    r = ((num - p) - p_lo) - q * d_lo;
    *lo = isfinite(q) ? r * inv : 0.0;
    return q;
}

/* sml_grad_hess_d(e, inv, inv_lo, c_max, c_max_lo, &p): p (1 - p) for p = e (inv + inv_lo)
 * (= e / S), and p rounded once into *p; 1 - p as c_max + c_max_lo (the row's excess / S)
 * at the max (e = 1), else as 1 - p exactly (p < 1/2 off the max: Sterbenz) less p's lo.
 * p and 1 - p as hi + lo, the product rounded once: within ~0.5 ulp of e (1 - e / S) / S
 * for the e given (issue 19). With FMA: p = fma(e, inv, e inv_lo), its lo by two fmas, and
 * the product as one fma of p (1 - p) and the correction (14 operations); without it by
 * Dekker's products (SML__TWO_PROD). */
static inline double sml_grad_hess_d(double e, double inv, double inv_lo, double c_max,
                                     double c_max_lo, double *p_out)
{
#if SML__HAVE_FMA
    double p = fma(e, inv, e * inv_lo);
    double p_lo = fma(e, inv_lo, fma(e, inv, -p)); /* e (inv + inv_lo) - p, to ~2^-104 p */
    double c = 1.0 - p;
    double c_lo = ((1.0 - c) - p) - p_lo; /* 1 - (p + p_lo) - c: (1 - c) - p is exact */
    c_lo = e == 1.0 ? c_max_lo : c_lo;
    c = e == 1.0 ? c_max : c;
    *p_out = p;
    return fma(p, c, fma(p, c_lo, p_lo * c));
#else
    double q, q_lo, t, p, p_lo, c, c_lo, h, h_lo;
    SML__TWO_PROD(e, inv, q, q_lo);
    t = q_lo + e * inv_lo;
    p = q + t;
    p_lo = t - (p - q);
    c = 1.0 - p;
    c_lo = ((1.0 - c) - p) - p_lo;
    c_lo = e == 1.0 ? c_max_lo : c_lo;
    c = e == 1.0 ? c_max : c;
    SML__TWO_PROD(p, c, h, h_lo);
    *p_out = p;
    h_lo += p * c_lo + p_lo * c;
    return isfinite(h) ? h + h_lo : h;
#endif
}

/* sml_label_grad_at_max(scale, excess, s, s_lo, w): -(scale excess) / ((s + s_lo) w) rounded
 * once, as hi + lo (sml_quot_dd): the gradient's entry at a label that is the row's max (e = 1),
 * -(1 - p_y) scale / W with 1 - p_y = excess / S. */
static inline double sml_label_grad_at_max(double scale, double excess, double s, double s_lo,
                                           double w)
{
    double lo, q = sml_quot_dd(scale * excess, s, s_lo, w, &lo);
    return -(q + lo);
}

/* sml_add_lo(a, b, b_lo, &lo): a + (b + b_lo) rounded once (TwoSum of a and b), and its
 * residual into lo: S = ties + rest and S - 1 of the block path's compensated rest. */
static inline double sml_add_lo(double a, double b, double b_lo, double *lo)
{
    double t, t_lo, s;
    SML__TWO_SUM(a, b, t, t_lo);
    t_lo += b_lo;
    s = t + t_lo;
    *lo = isfinite(s) ? t_lo - (s - t) : 0.0;
    return isfinite(t) ? s : t;
}

static inline double sml_mul_dd(double e, double hi, double lo)
{
#if SML__HAVE_FMA
    return fma(e, hi, e * lo);
#else /* e hi exactly (Dekker), then rounded once with the correction */
    double p, p_lo;
    SML__TWO_PROD(e, hi, p, p_lo);
    return isfinite(p) ? p + (p_lo + e * lo) : p;
#endif
}

/* sml_fms_dd(e, hi, lo, t): e (hi + lo) - t, rounded about once: with FMA
 * fma(e, hi, fma(e, lo, -t)) (the inner rounding ~2^-53 of t), else e hi exactly (Dekker's
 * product), its difference with t by a TwoSum, then the corrections. The gradient entries
 * p_scale e_c - t_c of label smoothing (t_c = smooth_scale w_c) and of probability targets
 * (t_c = s w_c y'_c / W), p_scale = hi + lo (sml_quot_dd); +-inf and NaN as the plain
 * formula gives them. */
static inline double sml_fms_dd(double e, double hi, double lo, double t)
{
#if SML__HAVE_FMA
    return fma(e, hi, fma(e, lo, -t));
#else
    double p, p_lo, d, d_lo;
    SML__TWO_PROD(e, hi, p, p_lo);
    SML__TWO_SUM(p, -t, d, d_lo);
    return isfinite(d) ? d + (d_lo + (p_lo + e * lo)) : d;
#endif
}

/* sml_sub_dd(x, k, k_lo): x - (k + k_lo) rounded once (to ~2^-60 of it), for x <= k: the
 * exact difference x - k as hi + lo by a Fast2Sum of min(x, -k) and max(x, -k) (which has
 * |a| >= |b| for x <= k whatever the signs), then hi + (lo - k_lo): log_softmax's
 * x_c - (m + log S) with m + log S = k + k_lo (a TwoSum once per row). Ten operations,
 * branch-free (it vectorises); x = -inf gives -inf, NaN NaN. */
static inline double sml_sub_dd(double x, double k, double k_lo)
{
    double nk = -k, d = x + nk;
    double a = x < nk ? x : nk, b = x < nk ? nk : x;
    double r = d + ((b - (d - a)) - k_lo);
    return fabs(d) <= DBL_MAX ? r : d;
}

/* sml_scale_f(v, n, k): v[c] = v[c] k rounded once to float (k a double whose float is
 * finite): with FMA as fmaf(v, k_hi, v k_lo), k = k_hi + k_lo to ~2^-48 (the product's
 * other rounding is ~2^-48 of it: below a float's ulp as the double product's; k below
 * float's normal range: within a subnormal ulp), else in double. softmax's normalisation
 * p_c = e_c / S (k = 1 / S) and the cross-entropy gradient's e_c p_scale (row and group
 * paths: the same bits); 8 floats a vector where the double product takes 4. */
static inline float sml_scale1_f(float v, double k) /* one entry of sml_scale_f */
{
#if SML__HAVE_FMA
    float k_hi = (float)k, k_lo = (float)(k - (double)k_hi);
    return fmaf(v, k_hi, v * k_lo);
#else
    return (float)((double)v * k);
#endif
}

static inline void sml_scale_f(float *v, ptrdiff_t n, double k)
{
    for (ptrdiff_t i = 0; i < n; i++) v[i] = sml_scale1_f(v[i], k); /* k's split: hoisted */
}

#define SML_JOIN2(name, suffix) name##_##suffix
#define SML_JOIN(name, suffix) SML_JOIN2(name, suffix)
#define SML_NAME(name) SML_JOIN(name, SML_SUFFIX)

#if SML_HAVE_VEXP
/* SML__VDIFF_F / _D(x, m, hi, lo): hi + lo = x - m exactly for a vector x and the row max m
 * (x <= m): with AVX, Fast2Sum of a = min(x, -m), b = max(x, -m), which has |a| >= |b|
 * whatever the signs (x <= m); else TwoSum. Both give the exact lo: the same bits. */
#if SML_TARGET_AVX
#define SML__VDIFF(TYPE, NATIVE, MIN, MAX, x, m, hi, lo)                                \
    do {                                                                                \
        TYPE mn_ = (TYPE){0} - (m), a_, b_;                                             \
        a_ = (TYPE)MIN((NATIVE)(x), (NATIVE)mn_);                                       \
        b_ = (TYPE)MAX((NATIVE)(x), (NATIVE)mn_);                                       \
        (hi) = (x) - (m);                                                               \
        (lo) = b_ - ((hi) - a_);                                                        \
    } while (0)
#define SML__VDIFF_F(x, m, hi, lo)                                                      \
    SML__VDIFF(sml_f32x8, __m256, _mm256_min_ps, _mm256_max_ps, x, m, hi, lo)
#define SML__VDIFF_D(x, m, hi, lo)                                                      \
    SML__VDIFF(sml_f64x4, __m256d, _mm256_min_pd, _mm256_max_pd, x, m, hi, lo)
#else
#define SML__VDIFF_F(x, m, hi, lo) SML__TWO_DIFF(sml_f32x8, x, (m), hi, lo)
#define SML__VDIFF_D(x, m, hi, lo) SML__TWO_DIFF(sml_f64x4, x, (m), hi, lo)
#endif
#endif

#if SML_HAVE_VEXP
#define SML_VGROUP_T_F sml_f32x8
#define SML_VGROUP_T_D sml_f64x4x2

/* SML_VEXP_GROUP_F / _D(xp, m, v, out): v = exp(xp[k] - m) for the SML_LANES (8) entries
 * of a group (SML_EXP*_X*_INRANGE_LO of the exact difference hi + lo, bitwise the scalar
 * sml_exp*_sub), and out flags those with |hi| out of that exp's range (or NaN).
 * SML_VSUM_GROUP_F / _D(ep, v, a, b, ones): ep[k] = v[k], the values other than exactly 1
 * in double into a (entries 0-3) and b (4-7), 0 in place of the ones, minus the count of
 * ones into the integer vector ones. Macros: gcc warns (-Wpsabi) about vector arguments. */
#define SML_VEXP_GROUP_F(xp, m, v, out)                                                 \
    do {                                                                                \
        sml_f32x8 x_, d_, l_;                                                           \
        memcpy(&x_, (xp), sizeof x_);                                                   \
        SML__VDIFF_F(x_, (m), d_, l_);                                                    \
        (out) = ~((sml_f32x8)((sml_u32x8)d_ & 0x7FFFFFFFu) <= SML_EXPF_INRANGE);        \
        SML_EXPF_X8_INRANGE_LO(d_, l_, v);                                              \
    } while (0)

#define SML_VSUM_GROUP_F(ep, v, a, b, ones)                                             \
    do {                                                                                \
        sml_f32x4 half_[2];                                                             \
        sml_i32x8 one_;                                                                 \
        memcpy((ep), &(v), sizeof(v));                                                  \
        one_ = (v) == 1.0f;                                                             \
        (ones) += one_;                                                                 \
        (v) = (sml_f32x8)((sml_i32x8)(v) & ~one_);                                      \
        memcpy(half_, &(v), sizeof(v));                                                 \
        (a) = SML_F32X4_TO_F64X4(half_[0]);                                             \
        (b) = SML_F32X4_TO_F64X4(half_[1]);                                             \
    } while (0)

#define SML_VEXP_GROUP_D(xp, m, v, out)                                                 \
    do {                                                                                \
        sml_f64x4 x0_, x1_, d0_, d1_, l0_, l1_;                                         \
        memcpy(&x0_, (xp), sizeof x0_);                                                 \
        memcpy(&x1_, (xp) + 4, sizeof x1_);                                             \
        SML__VDIFF_D(x0_, (m), d0_, l0_);                                               \
        SML__VDIFF_D(x1_, (m), d1_, l1_);                                               \
        (out) = ~((sml_f64x4)((sml_u64x4)d0_ & 0x7FFFFFFFFFFFFFFFu) <= SML_EXP_INRANGE)  \
              | ~((sml_f64x4)((sml_u64x4)d1_ & 0x7FFFFFFFFFFFFFFFu) <= SML_EXP_INRANGE); \
        SML_EXP_X4_INRANGE_LO(d0_, l0_, (v).v[0]);                                      \
        SML_EXP_X4_INRANGE_LO(d1_, l1_, (v).v[1]);                                      \
    } while (0)

/* SML__VMAX(a, b): the lanes' larger (a NaN lane: either). */
#if SML_TARGET_AVX
#define SML__VMAX(a, b) ((sml_f64x4)_mm256_max_pd((__m256d)(a), (__m256d)(b)))
#else
#define SML__VMAX(a, b) ((sml_f64x4)(((sml_i64x4)((a) > (b)) & (sml_i64x4)(a)) | (~(sml_i64x4)((a) > (b)) & (sml_i64x4)(b))))
#endif

/* SML__VLANE_ADD(acc, c, v): acc + c += v, a Fast2Sum (exact: acc >= 1 > v >= 0, the lanes
 * start at 1, see sml_lanes_add), its error into c: sml_lanes_add's on vectors (the same
 * bits). Vectors of doubles of any width (the ZMM loop's too: one summation for both). */
#define SML__VLANE_ADD(acc, c, v)                                                       \
    do {                                                                                \
        __typeof__(acc) s_ = (acc) + (v);                                               \
        (c) += (v) - (s_ - (acc));                                                      \
        (acc) = s_;                                                                     \
    } while (0)

/* SML__VTWO_SUM(acc, c, v): acc + c += v, a TwoSum (any signs and sizes), its error into c:
 * the row's merge of a block's compensations (sml__merge_comp) on vectors (the same bits),
 * of any width. */
#define SML__VTWO_SUM(acc, c, v)                                                        \
    do {                                                                                \
        __typeof__(acc) s_ = (acc) + (v), bb_ = s_ - (acc);                             \
        (c) += ((acc) - (s_ - bb_)) + ((v) - bb_);                                      \
        (acc) = s_;                                                                     \
    } while (0)

#define SML_VSUM_GROUP_D(ep, v, a, b, ones)                                             \
    do {                                                                                \
        sml_i64x4 one0_, one1_;                                                         \
        memcpy((ep), &(v).v[0], sizeof(v).v[0]);                                        \
        memcpy((ep) + 4, &(v).v[1], sizeof(v).v[1]);                                    \
        one0_ = (v).v[0] == 1.0;                                                        \
        one1_ = (v).v[1] == 1.0;                                                        \
        (ones) += one0_;                                                                \
        (ones) += one1_;                                                                \
        (a) = (sml_f64x4)((sml_i64x4)(v).v[0] & ~one0_);                                \
        (b) = (sml_f64x4)((sml_i64x4)(v).v[1] & ~one1_);                                \
    } while (0)
#endif

#if SML_TARGET_AVX512
/* sml__expsum_wide_f / _d(x, e, n, m, lanes, ties, pos, merge): the loop of
 * sml_expsum_inrange (_rowops_template.h) on ZMM vectors, run first by it (SML_VEXPSUM_WIDE):
 * 16 floats (two groups of SML_LANES) or 8 doubles (one group) per step. The same exp of each
 * entry (SML__EXP*_CORE_LO on wider vectors: the same expression, so the same roundings and
 * contractions), the same exact difference (SML__VDIFF on wider vectors),
 * and the same additions to the same lanes in the same order (lane k takes entry k of a group
 * before entry k of the next: the first 8 floats' conversion is added before the last 8's;
 * double: the same Fast2Sums into the lanes from 1, the same merges of the compensations):
 * the 32-byte groups' bits. Returns how many entries it did, a multiple of
 * SML_LANES, stopping before a vector with an entry out of range (or at n's last group of 8
 * floats): the 8-entry loop goes on from there.
 * SML__VEXP_WIDE(VT, UT, NATIVE, SFX, FULL, CORE, BIAS, SHIFT, xp, m, range, v, ok): v =
 * exp(xp[k] - m) for one ZMM vector of entries (VT float or double lanes, UT its unsigned
 * integers, NATIVE the intrinsics' type, SFX their suffix, FULL the all-lanes mask; CORE,
 * BIAS, SHIFT the exp's: SML_EXP*_X*_INRANGE_LO's), ok whether every |x - m| is within the
 * exp's range (else v is unspecified). */
#define SML__VEXP_WIDE(VT, UT, NATIVE, SFX, FULL, CORE, BIAS, SHIFT, xp, m, range, v, ok)  \
    do {                                                                                \
        VT xv_, d_, l_, t_, p_;                                                         \
        memcpy(&xv_, (xp), sizeof xv_);                                                 \
        SML__VDIFF(VT, NATIVE, _mm512_min##SFX, _mm512_max##SFX, xv_, (m), d_, l_);     \
        (ok) = _mm512_cmp##SFX##_mask(_mm512_abs##SFX((NATIVE)d_), (range), _CMP_LE_OQ)  \
               == (FULL);                                                               \
        CORE(VT, d_, l_, t_, p_);                                                       \
        (v) = p_ * (VT)(((UT)t_ + (BIAS)) << (SHIFT));                                  \
    } while (0)

static inline ptrdiff_t sml__expsum_wide_f(const float *x, float *e, ptrdiff_t n, float m,
                                           double *lanes, ptrdiff_t *ties, ptrdiff_t pos,
                                           int merge)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 range = _mm512_set1_ps(SML_EXPF_INRANGE);
    __m512d acc = _mm512_loadu_pd(lanes); /* lanes 0-7 */
    ptrdiff_t i = 0, count = 0;
    (void)pos; /* float: no merges */
    (void)merge;
    for (; i + 2 * SML_LANES <= n; i += 2 * SML_LANES) {
        sml_f32x16 v;
        int ok;
        SML__VEXP_WIDE(sml_f32x16, sml_u32x16, __m512, _ps, 0xFFFF, SML__EXPF_CORE_LO, 127u, 23,
                       x + i, m, range, v, ok);
        if (!ok) break;
        memcpy(e + i, &v, sizeof v);
        {
            __mmask16 k = _mm512_cmp_ps_mask((__m512)v, one, _CMP_EQ_OQ);
            __m512 r = _mm512_maskz_mov_ps((__mmask16)~k, (__m512)v);
            count += __builtin_popcount((unsigned)k);
            acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(r)));
            acc = _mm512_add_pd(acc, _mm512_cvtps_pd(
                (__m256)_mm512_extractf64x4_pd((__m512d)r, 1)));
        }
    }
    _mm512_storeu_pd(lanes, acc);
    *ties += count;
    return i;
}

static inline ptrdiff_t sml__expsum_wide_d(const double *x, double *e, ptrdiff_t n, double m,
                                           double *lanes, ptrdiff_t *ties, ptrdiff_t pos,
                                           int merge)
{
    const __m512d one = _mm512_set1_pd(1.0);
    const __m512d range = _mm512_set1_pd(SML_EXP_INRANGE);
    sml_f64x8 acc, comp, row, rowc; /* lanes 0-7 (from 1), their compensations 8-15, the
                                     * row's compensations 16-23 and their errors 24-31 */
    ptrdiff_t i = 0, count = 0;
    memcpy(&acc, lanes, sizeof acc);
    memcpy(&comp, lanes + 8, sizeof comp);
    memcpy(&row, lanes + 16, sizeof row);
    memcpy(&rowc, lanes + 24, sizeof rowc);
    for (; i + SML_LANES <= n; i += SML_LANES) {
        sml_f64x8 v;
        int ok;
        SML__VEXP_WIDE(sml_f64x8, sml_u64x8, __m512d, _pd, 0xFF, SML__EXP_CORE_LO, 1023u, 52,
                       x + i, m, range, v, ok);
        if (!ok) break;
        memcpy(e + i, &v, sizeof v);
        {
            __mmask8 k = _mm512_cmp_pd_mask((__m512d)v, one, _CMP_EQ_OQ);
            sml_f64x8 t = (sml_f64x8)_mm512_maskz_mov_pd((__mmask8)~k, (__m512d)v);
            count += __builtin_popcount((unsigned)k);
            SML__VLANE_ADD(acc, comp, t);
        }
        if (merge && (pos + i + SML_LANES) % SML_SUMBLOCK == 0) { /* sml__merge_comp */
            SML__VTWO_SUM(row, rowc, comp);
            comp = (sml_f64x8){0};
        }
    }
    memcpy(lanes, &acc, sizeof acc);
    memcpy(lanes + 8, &comp, sizeof comp);
    memcpy(lanes + 16, &row, sizeof row);
    memcpy(lanes + 24, &rowc, sizeof rowc);
    *ties += count;
    return i;
}
#endif

#define SML_T float
#define SML_EXACT_GAPS 0 /* m - (double)x[c] is exact */
#define SML_SUFFIX f
#define SML_EXP_SUB sml_expf_sub
#define SML_COUNT int32_t
#define SML_COMPENSATED 0 /* float terms summed in double: far below a float's ulp */
/* The vector path for float needs AVX: without it gcc 12 splits the 8-float compares into
 * scalar ones, and the path is 2x slower than the plain loops (SSE2 build, measured). */
#if SML_HAVE_VEXP && SML_TARGET_AVX
#define SML_VEXP_ON 1
#else
#define SML_VEXP_ON 0
#endif
#if SML_VEXP_ON
#define SML_VMASK sml_i32x8
#define SML_VGROUP_T SML_VGROUP_T_F
#define SML_VEXP_GROUP SML_VEXP_GROUP_F
#define SML_VSUM_GROUP SML_VSUM_GROUP_F
#endif
#if SML_VEXP_ON && SML_TARGET_AVX512
#define SML_VEXPSUM_WIDE sml__expsum_wide_f
#endif
#include "_rowops_template.h" /* which #undefs its parameters */

#define SML_T double
#define SML_SUFFIX d
#define SML_EXP_SUB sml_exp_sub
#define SML_EXACT_GAPS 1 /* m - x[c] rounds: its low part summed apart (sml_row_gapsum) */
#define SML_COUNT int64_t
#define SML_COMPENSATED 1 /* S's lanes compensated (a Fast2Sum per term): S to ~2^-104 */
#define SML_VEXP_ON SML_HAVE_VEXP
#if SML_VEXP_ON
#define SML_VMASK sml_i64x4
#define SML_VGROUP_T SML_VGROUP_T_D
#define SML_VEXP_GROUP SML_VEXP_GROUP_D
#define SML_VSUM_GROUP SML_VSUM_GROUP_D
#endif
#if SML_VEXP_ON && SML_TARGET_AVX512
#define SML_VEXPSUM_WIDE sml__expsum_wide_d
#endif
#include "_rowops_template.h" /* which #undefs its parameters */

#endif /* SOFTMAXLOSS_ROWOPS_H */

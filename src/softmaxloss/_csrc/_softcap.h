/*
 * _softcap.h -- the soft-capping row loops of _kernels_softcap.pxi, written in C so that
 * they vectorise (as gcc's vectoriser did not take them once inlined into the Cython
 * loops that call them; out of line, one call per row, they vectorise).
 *
 *   sml_softcap_row_f / _d(x, capped, slope, n, cap):
 *       capped[c] = cap * tanh(x[c] / cap) and, unless slope is NULL,
 *       slope[c] = sech^2(x[c] / cap), in double, each rounded once to the element type;
 *       capped may be x (each entry is read before it is written).
 *   sml_softcap_scale_f / _d(g, slope, out, n):   out[c] = g[c] * slope[c] (out may be g).
 *
 * With u = x / cap, a = |u| and t = e^(-2a) (one exp, sml_exp, shared by both):
 *     tanh(u) = sign(u) (1 - t) / (1 + t)        where a is not small (1 - t does not cancel)
 *     tanh(u) = u (1 - u^2/3 + 2u^4/15 - ...)    where it is (the Taylor series)
 *     sech^2(u) = 4 t / (1 + t)^2                everywhere: no cancellation, a few ulps
 *                                                (never 1 - tanh^2, which loses every digit
 *                                                as tanh -> 1)
 * double: "small" is a < 1/4, the series to u^21 (its next term is below 2^-58 of the sum),
 * so the capped value is within 2 ulps of the exact one. float: in float arithmetic (eight
 * lanes), t from the exact -2|u| (u as hi + lo), the series to u^11 below 1/4: the capped
 * value and the slope within a few float ulps.
 * NaN stays NaN; +-inf gives +-cap with slope 0 (sml_exp(-inf) = 0).
 * Branch-free (selects), so the loops vectorise (gcc with -fno-trapping-math, as
 * _fastexp.h says). No state: the same bits for every thread and chunking.
 */
#ifndef SOFTMAXLOSS_SOFTCAP_H
#define SOFTMAXLOSS_SOFTCAP_H

#include <math.h>
#include <stddef.h>

#include <string.h>

#include "_vector.h"
#include "_fastexp.h"

#if defined(_MSC_VER)
#define SML_SOFTCAP_OUT_OF_LINE __declspec(noinline)
#elif defined(__GNUC__) || defined(__clang__)
#define SML_SOFTCAP_OUT_OF_LINE __attribute__((noinline))
#else
#define SML_SOFTCAP_OUT_OF_LINE
#endif

/* tanh(a) for 0 <= a < 1/4, the Taylor series to a^21. */
static inline double sml_tanh_series(double a)
{
    double q = a * a;
    return a + a * q * (-0.3333333333333333 + q * (0.13333333333333333 + q * (
        -0.05396825396825397 + q * (0.021869488536155203 + q * (-0.008863235529902197 + q * (
        0.003592128036572481 + q * (-0.0014558343870513183 + q * (0.000590027440945586 + q * (
        -0.00023912911424355248 + q * 9.691537956929451e-05)))))))));
}

/* tanh(a) for 0 <= a < 1/128, to a^5 (for float results). */
static inline double sml_tanh_series_short(double a)
{
    double q = a * a;
    return a + a * q * (-0.3333333333333333 + q * 0.13333333333333333);
}

SML_SOFTCAP_OUT_OF_LINE static void sml_softcap_row_d(const double *x, double *capped,
                                                      double *slope, ptrdiff_t n, double cap)
{
    ptrdiff_t c;
    if (slope == NULL) {
        for (c = 0; c < n; c++) {
            double u = x[c] / cap, a = fabs(u);
            double t = sml_exp(-2.0 * a);
            double th = (1.0 - t) / (1.0 + t);
            th = a < 0.25 ? sml_tanh_series(a) : th;
            capped[c] = copysign(cap * th, u);
        }
        return;
    }
    for (c = 0; c < n; c++) {
        double u = x[c] / cap, a = fabs(u);
        double t = sml_exp(-2.0 * a);
        double d = 1.0 / (1.0 + t);
        double th = (1.0 - t) * d;
        th = a < 0.25 ? sml_tanh_series(a) : th;
        capped[c] = copysign(cap * th, u);
        slope[c] = (4.0 * t) * d * d;
    }
}

/* tanh(a) for 0 <= a < 1/4 in float, to a^11 (the next term is below 2^-31 of the sum). */
static inline float sml_tanh_series_f(float a)
{
    float q = a * a;
    return a + a * q * (-0.33333333f + q * (0.13333333f + q * (-0.053968254f + q * (
        0.021869489f + q * -0.0088632355f))));
}

/* One element of the float path for caps whose reciprocal is a normal float (the general
 * form, sml_softcap_row_f_wide, below): capped_out = cap tanh(x / cap); leaves t and
 * d = 1 / (1 + t) declared for the slope. lo is 0 where hi is infinite (u beyond float's
 * range), else inf - inf would make t NaN. */
#define SML_SOFTCAP_F_CORE(X, INV_CAP, CAP_F, CAPPED_OUT, t, d)                        \
    double u_ = (double)(X) * (INV_CAP);                                               \
    float hi_ = (float)u_;                                                             \
    float a_ = fabsf(hi_);                                                             \
    float lo_ = a_ <= 3.4028234663852886e38f ? (float)(u_ - (double)hi_) : 0.0f;      \
    float t = sml_expf_sub(-2.0f * a_, 2.0f * (hi_ < 0.0f ? -lo_ : lo_));              \
    float d = 1.0f / (1.0f + t);                                                       \
    float th_ = (1.0f - t) * d;                                                        \
    th_ = a_ < 0.25f ? sml_tanh_series_f(a_) : th_;                                    \
    (CAPPED_OUT) = copysignf((CAP_F) * th_, hi_);

/* sml_softcap_row_f for any cap (1 / cap through double). */
static void sml_softcap_row_f_wide(const float *x, float *capped, float *slope, ptrdiff_t n,
                                   double cap)
{
    ptrdiff_t c;
    double inv_cap = 1.0 / cap;
    float cap_f = (float)cap;
    if (slope == NULL) {
        for (c = 0; c < n; c++) {
            SML_SOFTCAP_F_CORE(x[c], inv_cap, cap_f, capped[c], t, d)
            (void)d;
        }
        return;
    }
    for (c = 0; c < n; c++) {
        SML_SOFTCAP_F_CORE(x[c], inv_cap, cap_f, capped[c], t, d)
        slope[c] = (4.0f * t) * d * d;
    }
}

/* ---- the float path for caps in [2^-60, 2^60] -------------------------------------------
 * 1 / cap = ich + icl (floats, icl below 2^-24 ich), u = x / cap = hi + lo with
 * hi = fl(x ich), lo = (x ich - hi) + x icl: x ich - hi is exact (an FMA, or the exact
 * double product less hi), so hi + lo is x / cap to ~2^-47 relatively. t = e^(-2|u|) is
 * exp(-2|hi| - 2 sign(hi) lo) with the lo folded into the argument reduction
 * (SML__EXPF_CORE_LO): 0.8 ulp whatever |u|. Then d = 1 / (1 + t), tanh |u| = (1 - t) d
 * (below 1/4 the series of |hi| plus sign(hi) lo: tanh'(|u|) = 1 - O(u^2) there), slope
 * 4 t d^2. The vector form (8 lanes, GNU vectors) does the
 * same operations in the same order on groups of 8 whose |hi| <= 43.5 (exp's argument
 * within SML_EXPF_INRANGE: 2^n one normal factor): the same bits as the scalar form,
 * which takes the groups with a lane beyond (or NaN), and the row's tail. */
#if defined(__FMA__) || (defined(_MSC_VER) && defined(__AVX2__))
#define SML_SOFTCAP_HAVE_FMA 1
#else
#define SML_SOFTCAP_HAVE_FMA 0
#endif

#define SML__TANH_SERIES_F(a, q)                                                       \
    ((a) + (a) * (q) * (-0.33333333f + (q) * (0.13333333f + (q) * (-0.053968254f + (q) * ( \
        0.021869489f + (q) * -0.0088632355f)))))

/* e^(x + lo) for x <= 0 (lo within an ulp of x), clamped as sml_expf: the same bits as
 * SML_EXPF_X8_INRANGE_LO for x >= -87. */
static inline float sml__softcap_expf_lo(float x, float lo)
{
    float xc = x < -104.0f ? -104.0f : x, t, p;
    lo = xc == x ? lo : 0.0f; /* clamped or NaN: no lo */
    SML__EXPF_CORE_LO(float, xc, lo, t, p);
    return sml__expf_scale(t, p);
}

/* One element: the capped value, and the slope into *slope unless NULL. */
static inline float sml__softcap_one_f(float x, float ich, float icl, float cap_f,
                                       float *slope)
{
    float hi = x * ich, a = fabsf(hi), lo, slo, t, d, th, q;
#if SML_SOFTCAP_HAVE_FMA
    lo = fmaf(x, ich, -hi);
#else
    lo = (float)((double)x * (double)ich - (double)hi);
#endif
    lo = lo + x * icl;
    lo = a <= 3.4028234663852886e38f ? lo : 0.0f;
    slo = hi < 0.0f ? -lo : lo;
    t = sml__softcap_expf_lo(-2.0f * a, -2.0f * slo);
    d = 1.0f / (1.0f + t);
    th = (1.0f - t) * d;
    q = a * a;
    th = a < 0.25f ? SML__TANH_SERIES_F(a, q) + slo : th;
    if (slope != NULL) *slope = (4.0f * t) * d * d;
    return copysignf(cap_f * th, hi);
}

#if SML_HAVE_VEXP
#define SML__F32X8_SELECT(mask, yes, no)                                               \
    ((sml_f32x8)(((sml_i32x8)(yes) & (mask)) | ((sml_i32x8)(no) & ~(mask))))

/* Eight elements x[0..8) into capped (and slope unless NULL); 0 (nothing written) if a
 * lane is beyond the vector exp's range or NaN. */
static inline int sml__softcap_x8_f(const float *x, float *capped, float *slope, float ich,
                                    float icl, float cap_f)
{
    sml_f32x8 xv, hi, a, lo, slo, t, d, th, q, series;
    sml_i32x8 small, neg, beyond;
    memcpy(&xv, x, sizeof xv);
    hi = xv * ich;
    a = (sml_f32x8)((sml_u32x8)hi & 0x7fffffffu);
    beyond = ~(a <= 43.5f);
    if (SML_VANY(beyond)) return 0;
#if SML_SOFTCAP_HAVE_FMA && SML_TARGET_AVX
    lo = (sml_f32x8)_mm256_fmadd_ps((__m256)xv, _mm256_set1_ps(ich), -(__m256)hi);
#else
    {
        sml_f32x4 xh[2], hh[2];
        sml_f64x4 e0, e1;
        memcpy(xh, &xv, sizeof xh);
        memcpy(hh, &hi, sizeof hh);
        e0 = SML_F32X4_TO_F64X4(xh[0]) * (double)ich - SML_F32X4_TO_F64X4(hh[0]);
        e1 = SML_F32X4_TO_F64X4(xh[1]) * (double)ich - SML_F32X4_TO_F64X4(hh[1]);
        xh[0] = __builtin_convertvector(e0, sml_f32x4);
        xh[1] = __builtin_convertvector(e1, sml_f32x4);
        memcpy(&lo, xh, sizeof lo);
    }
#endif
    lo = lo + xv * icl;
    neg = hi < 0.0f;
    slo = (sml_f32x8)((sml_i32x8)lo ^ (neg & (sml_i32x8)(sml_u32x8){0x80000000u, 0x80000000u,
        0x80000000u, 0x80000000u, 0x80000000u, 0x80000000u, 0x80000000u, 0x80000000u}));
    {
        sml_f32x8 ex = -2.0f * a, el = -2.0f * slo;
        SML_EXPF_X8_INRANGE_LO(ex, el, t);
    }
    d = 1.0f / (1.0f + t);
    th = (1.0f - t) * d;
    q = a * a;
    series = SML__TANH_SERIES_F(a, q) + slo;
    small = a < 0.25f;
    th = SML__F32X8_SELECT(small, series, th);
    th = (sml_f32x8)((sml_u32x8)(cap_f * th) | ((sml_u32x8)hi & 0x80000000u));
    memcpy(capped, &th, sizeof th);
    if (slope != NULL) {
        sml_f32x8 s = (4.0f * t) * d * d;
        memcpy(slope, &s, sizeof s);
    }
    return 1;
}
#endif

SML_SOFTCAP_OUT_OF_LINE static void sml_softcap_row_f(const float *x, float *capped,
                                                      float *slope, ptrdiff_t n, double cap)
{
    ptrdiff_t c = 0, k, groups = n / 8;
    double inv_cap = 1.0 / cap;
    float ich, icl, cap_f = (float)cap;
    if (!(cap >= 8.6736173798840355e-19 && cap <= 1.152921504606846976e18)) {
        sml_softcap_row_f_wide(x, capped, slope, n, cap); /* beyond [2^-60, 2^60] */
        return;
    }
    ich = (float)inv_cap;
    icl = (float)(inv_cap - (double)ich);
#if SML_HAVE_VEXP
    for (; c < 8 * groups; c += 8) {
        if (sml__softcap_x8_f(x + c, capped + c, slope != NULL ? slope + c : NULL, ich, icl,
                              cap_f))
            continue;
        for (k = c; k < c + 8; k++)
            capped[k] = sml__softcap_one_f(x[k], ich, icl, cap_f,
                                           slope != NULL ? slope + k : NULL);
    }
#else
    (void)groups;
#endif
    for (k = c; k < n; k++)
        capped[k] = sml__softcap_one_f(x[k], ich, icl, cap_f, slope != NULL ? slope + k : NULL);
}

SML_SOFTCAP_OUT_OF_LINE static void sml_softcap_scale_d(const double *g, const double *slope,
                                                        double *out, ptrdiff_t n)
{
    ptrdiff_t c;
    for (c = 0; c < n; c++) out[c] = g[c] * slope[c];
}

SML_SOFTCAP_OUT_OF_LINE static void sml_softcap_scale_f(const float *g, const float *slope,
                                                        float *out, ptrdiff_t n)
{
    ptrdiff_t c;
    for (c = 0; c < n; c++) out[c] = g[c] * slope[c];
}

#endif /* SOFTMAXLOSS_SOFTCAP_H */

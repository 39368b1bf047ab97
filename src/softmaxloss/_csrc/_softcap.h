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

/* One element of sml_softcap_row_f: capped_out = cap tanh(x / cap); leaves t and
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

SML_SOFTCAP_OUT_OF_LINE static void sml_softcap_row_f(const float *x, float *capped,
                                                      float *slope, ptrdiff_t n, double cap)
{
    /* In float, eight lanes: u = x / cap as hi + lo (the product with 1 / cap in double,
     * split), so that t = e^(-2|u|) comes from the exact -2|u| (sml_expf_sub takes the
     * difference -2|hi| - 2 sign(hi) lo exactly): 0.8 ulp whatever |u|, where a rounded u
     * would cost 2|u| ulps of the slope. */
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

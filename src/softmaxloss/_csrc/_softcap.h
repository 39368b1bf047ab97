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
 * so the capped value is within 2 ulps of the exact one. float: in float arithmetic, eight
 * lanes of GNU vectors, t from the exact -2|u| (|u| as a + lo: 1 / cap split in two floats,
 * one FMA), tanh |u| = 1 - 2t / (1 + t) and a fitted odd polynomial of degree 11 below 0.6,
 * times the cap as two floats (an FMA): the capped value within 2.24 float ulps, the slope
 * within 4.8 (measured against mpmath) where the slope is 4t d^2; below 0.6 the float slope is
 * 1 - th^2 of that polynomial tanh (sech^2 > 0.71 there: no cancellation; 2.2 ulps), so a
 * chunk whose every |u| is below (logits well inside the cap: the common case) takes one
 * pass without exp or division (sml__softcap_small_x8). The float row goes in chunks of SML_SOFTCAP_CHUNK in
 * two passes (t, then the rest) whose chains of dependent operations overlap better than
 * one pass's (2.7x faster than
 * the scalar-loop form this replaced, which gcc auto-vectorised: ~1.0 vs ~2.8 ns per
 * element in L2, gcc 12 -mavx2 -mfma, this machine); caps beyond [2^-60, 2^60], whose
 * reciprocal does not split into two normal floats, take that scalar-loop form
 * (sml_softcap_row_f_wide, x / cap through double).
 * NaN stays NaN; +-inf gives +-cap with slope 0 (sml_exp(-inf) = 0).
 * No state: an element's results depend on its value only (not its place in the row),
 * the same bits for every thread and chunking.
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
 * 1 / cap = ich + icl (floats, icl below 2^-24 ich), |u| = |x| / cap = a + lo with
 * a = fl(|x| ich), lo = (|x| ich - a) + |x| icl: |x| ich - a is exact (an FMA, or the exact
 * double product less a), so a + lo is |x| / cap to ~2^-47 relatively. t = e^(-2|u|) is
 * exp(-2a - 2lo) with the lo folded into the argument reduction (SML__EXPF_CORE_LO):
 * 0.8 ulp whatever |u|. Then d = 1 / (1 + t), tanh |u| = 1 - 2t d (below 0.6 a polynomial
 * in a, plus lo: tanh' = 1 - O(u^2) there), the sign x's, and the slope 4 t d^2. The vector form (8 lanes, GNU vectors) does the
 * same operations in the same order on groups of 8 whose |hi| <= 43.5 (exp's argument
 * within SML_EXPF_INRANGE: 2^n one normal factor): the same bits as the scalar form,
 * which takes the groups with a lane beyond (or NaN), and the row's tail. */
#if defined(__FMA__) || (defined(_MSC_VER) && defined(__AVX2__))
#define SML_SOFTCAP_HAVE_FMA 1
#else
#define SML_SOFTCAP_HAVE_FMA 0
#endif

/* tanh(a) for 0 <= a < 0.6 (q = a^2): a + a q P(q), P of degree 5 fitted (weighted least
 * squares on Chebyshev nodes of [0, 0.36], the coefficients rounded to float) for the
 * relative error of tanh: 3.3e-9 (0.06 ulp) before the float roundings. Below 0.6, where
 * (1 - t) / (1 + t) would lose up to ~1.2 ulp to the cancellation in 1 - t (the former
 * series stopped at 1/4: 3.3 ulps at |u| ~ 0.26-0.6, measured). */
#define SML_SOFTCAP_SERIES_BELOW 0.6f
#define SML__TANH_SERIES_F(a, q)                                                       \
    ((a) + (a) * (q) * (-0.33333331f + (q) * (0.13333252f + (q) * (-0.053952955f + (q) * ( \
        0.021737201f + (q) * (-0.0082742348f + (q) * 0.0022378974f))))))

/* sech^2(a) = 1 - tanh^2(a) for 0 <= a < 0.6 from the polynomial tanh above (th <= 0.537:
 * th^2 <= 0.29, so 1 - th^2 >= 0.71 does not cancel, and th's relative error enters
 * the slope times 2 th^2 / (1 - th^2) <= 0.81): within 2.2 float ulps of sech^2, measured
 * against mpmath (4t / (1 + t)^2 in float: 4.2). Where 1 - tanh^2 does fail (th -> 1) the
 * slope stays 4t / (1 + t)^2. Below 0.6 the float path so needs neither the exp nor the
 * division, and skips both for a chunk all below (sml__softcap_small_x8). A chunk with an
 * entry beyond takes the two passes for all its entries (t of every one, the formula of each
 * lane chosen by its value: the same bits as in the one pass); a check per group of 8
 * instead cost the mixed chunks more than it saved (callgrind: +29 % vs +10 % instructions
 * over the form before this polynomial slope, on |x / cap| uniform in [0, 1.5]). */
#define SML__SECH2_FROM_TANH_F(th) (1.0f - (th) * (th))

/* e^(x + lo) for x <= 0 (lo within an ulp of x), clamped as sml_expf: the same bits as
 * SML_EXPF_X8_INRANGE_LO for x >= -87. */
static inline float sml__softcap_expf_lo(float x, float lo)
{
    float xc = x < -104.0f ? -104.0f : x, t, p;
    lo = xc == x ? lo : 0.0f; /* clamped or NaN: no lo */
    SML__EXPF_CORE_LO(float, xc, lo, t, p);
    return sml__expf_scale(t, p);
}

/* cap th with cap = cap_f + cap_lo (floats): th cap_f + th cap_lo rounded once (an FMA), or
 * the exact product in double rounded once (no FMA): not cap_f's own rounding again. */
#if SML_SOFTCAP_HAVE_FMA
#define SML__SOFTCAP_TIMES_CAP(th, cap_f, cap_lo) fmaf((th), (cap_f), (th) * (cap_lo))
#else
#define SML__SOFTCAP_TIMES_CAP(th, cap_f, cap_lo) ((float)((double)(th) * ((double)(cap_f) + (double)(cap_lo))))
#endif

/* |x| / cap = a + lo (a = fl(|x| ich), lo its error plus |x| icl). */
static inline float sml__softcap_split_f(float x, float ich, float icl, float *lo)
{
    float ax = fabsf(x), a = ax * ich;
#if SML_SOFTCAP_HAVE_FMA
    *lo = fmaf(ax, ich, -a) + ax * icl;
#else
    *lo = (float)((double)ax * (double)ich - (double)a) + ax * icl;
#endif
    return a;
}

/* t = e^(-2|x / cap|): the first pass of an element, from -2 / cap = ich2 + icl2 (-2 ich,
 * -2 icl: -2a + -2lo is sml__softcap_split_f's times -2, exactly, so that no product
 * feeds the exp's additions, which FMA contraction could then fuse differently in the
 * scalar and the vector code); lo 0 where -2a is infinite. */
static inline float sml__softcap_t_f(float x, float ich2, float icl2)
{
    float lo, e = sml__softcap_split_f(x, ich2, icl2, &lo);
    lo = e >= -3.4028234663852886e38f ? lo : 0.0f;
    return sml__softcap_expf_lo(e, lo);
}

/* sml__softcap_t_f kept scalar (out of line: gcc would vectorise the loops that call it,
 * and its vectorised clamps and two-factor scale contract differently, by a last bit). */
SML_SOFTCAP_OUT_OF_LINE static float sml__softcap_t_scalar_f(float x, float ich2, float icl2)
{
    return sml__softcap_t_f(x, ich2, icl2);
}

/* The second pass of an element, from its t: the capped value, and the slope into *slope
 * unless NULL (lo enters the polynomial only, where a < 0.6 is finite). */
static inline float sml__softcap_finish_f(float x, float t, float ich, float icl, float cap_f,
                                          float cap_lo, float *slope)
{
    float lo, a = sml__softcap_split_f(x, ich, icl, &lo), d, th, q;
    d = 1.0f / (1.0f + t);
    th = 1.0f - (2.0f * t) * d;
    q = a * a;
    th = a < SML_SOFTCAP_SERIES_BELOW ? SML__TANH_SERIES_F(a, q) + lo : th;
    if (slope != NULL)
        *slope = a < SML_SOFTCAP_SERIES_BELOW ? SML__SECH2_FROM_TANH_F(th) : (4.0f * t) * d * d;
    return copysignf(SML__SOFTCAP_TIMES_CAP(th, cap_f, cap_lo), x);
}

#if SML_HAVE_VEXP
#define SML__F32X8_SELECT(mask, yes, no)                                               \
    ((sml_f32x8)(((sml_i32x8)(yes) & (mask)) | ((sml_i32x8)(no) & ~(mask))))

/* sml__softcap_split_f of eight lanes: ax = |x|, a, lo. */
#if SML_SOFTCAP_HAVE_FMA && SML_TARGET_AVX
#define SML__SOFTCAP_SPLIT_X8(xv, ich, icl, ax, a, lo)                                  \
    do {                                                                               \
        (ax) = (sml_f32x8)((sml_u32x8)(xv) & 0x7fffffffu);                             \
        (a) = (ax) * (ich);                                                            \
        (lo) = (sml_f32x8)_mm256_fmadd_ps((__m256)(ax), _mm256_set1_ps(ich), -(__m256)(a)); \
        (lo) = (lo) + (ax) * (icl);                                                    \
    } while (0)
#else
#define SML__SOFTCAP_SPLIT_X8(xv, ich, icl, ax, a, lo)                                  \
    do {                                                                               \
        sml_f32x4 xh_[2], hh_[2];                                                      \
        sml_f64x4 e0_, e1_;                                                            \
        (ax) = (sml_f32x8)((sml_u32x8)(xv) & 0x7fffffffu);                             \
        (a) = (ax) * (ich);                                                            \
        memcpy(xh_, &(ax), sizeof xh_);                                                \
        memcpy(hh_, &(a), sizeof hh_);                                                 \
        e0_ = SML_F32X4_TO_F64X4(xh_[0]) * (double)(ich) - SML_F32X4_TO_F64X4(hh_[0]);  \
        e1_ = SML_F32X4_TO_F64X4(xh_[1]) * (double)(ich) - SML_F32X4_TO_F64X4(hh_[1]);  \
        xh_[0] = __builtin_convertvector(e0_, sml_f32x4);                              \
        xh_[1] = __builtin_convertvector(e1_, sml_f32x4);                              \
        memcpy(&(lo), xh_, sizeof(lo));                                                \
        (lo) = (lo) + (ax) * (icl);                                                    \
    } while (0)
#endif

/* The first pass of eight lanes (ich2, icl2 as sml__softcap_t_f's): t into tb, by the
 * vector exp where -2a >= -87 (its range), by sml__softcap_t_scalar_f in the lanes beyond
 * (or NaN). An element's t so depends on its value only, not on its place in the row (the
 * two exps may differ by a last bit where both are in range: FMA contraction). */
static inline void sml__softcap_t_x8(const float *x, float *tb, float ich2, float icl2)
{
    sml_f32x8 xv, ax, e, lo, t;
    sml_i32x8 beyond;
    memcpy(&xv, x, sizeof xv);
    SML__SOFTCAP_SPLIT_X8(xv, ich2, icl2, ax, e, lo);
    beyond = ~(e >= -87.0f);
    SML_EXPF_X8_INRANGE_LO(e, lo, t); /* unspecified in the lanes beyond: replaced below */
    memcpy(tb, &t, sizeof t);
    if (SML_VANY(beyond)) {
        int j;
        for (j = 0; j < 8; j++)
            if (beyond[j]) tb[j] = sml__softcap_t_scalar_f(x[j], ich2, icl2);
    }
}

/* SML__SOFTCAP_TIMES_CAP of eight lanes, into th. */
#if SML_SOFTCAP_HAVE_FMA && SML_TARGET_AVX
#define SML__SOFTCAP_TIMES_CAP_X8(th, cap_f, cap_lo)                                    \
    ((th) = (sml_f32x8)_mm256_fmadd_ps((__m256)(th), _mm256_set1_ps(cap_f),             \
                                       (__m256)((th) * (cap_lo))))
#else
#define SML__SOFTCAP_TIMES_CAP_X8(th, cap_f, cap_lo)                                    \
    do {                                                                               \
        sml_f32x4 h_[2];                                                               \
        double c_ = (double)(cap_f) + (double)(cap_lo);                                \
        memcpy(h_, &(th), sizeof h_);                                                  \
        h_[0] = __builtin_convertvector(SML_F32X4_TO_F64X4(h_[0]) * c_, sml_f32x4);     \
        h_[1] = __builtin_convertvector(SML_F32X4_TO_F64X4(h_[1]) * c_, sml_f32x4);     \
        memcpy(&(th), h_, sizeof h_);                                                  \
    } while (0)
#endif

/* The second pass of eight lanes (any values: no exp here). */
static inline void sml__softcap_finish_x8(const float *x, const float *tb, float *capped,
                                          float *slope, float ich, float icl, float cap_f,
                                          float cap_lo)
{
    sml_f32x8 xv, ax, a, lo, t, d, th, q, series;
    sml_i32x8 small;
    memcpy(&xv, x, sizeof xv);
    memcpy(&t, tb, sizeof t);
    SML__SOFTCAP_SPLIT_X8(xv, ich, icl, ax, a, lo);
    q = a * a;
    series = SML__TANH_SERIES_F(a, q) + lo;
    small = a < SML_SOFTCAP_SERIES_BELOW;
    d = 1.0f / (1.0f + t);
    th = 1.0f - (2.0f * t) * d;
    th = SML__F32X8_SELECT(small, series, th);
    if (slope != NULL) {
        sml_f32x8 s = (4.0f * t) * d * d;
        s = SML__F32X8_SELECT(small, SML__SECH2_FROM_TANH_F(series), s);
        memcpy(slope, &s, sizeof s);
    }
    SML__SOFTCAP_TIMES_CAP_X8(th, cap_f, cap_lo);
    th = (sml_f32x8)((sml_u32x8)th | ((sml_u32x8)xv & 0x80000000u));
    memcpy(capped, &th, sizeof th);
}
#endif

#if SML_HAVE_VEXP
/* Whether every x[0..n) has a = fl(|x| ich) < SML_SOFTCAP_SERIES_BELOW (NaN: no): from the
 * largest |x| as bits (an integer max: a NaN's bits exceed every number's), fl(|x| ich)
 * being monotone in |x|. */
static inline int sml__softcap_below_series_f(const float *x, ptrdiff_t n, float ich)
{
    uint32_t top = 0, bits;
    float largest;
    for (ptrdiff_t k = 0; k < n; k++) {
        memcpy(&bits, x + k, sizeof bits);
        bits &= 0x7fffffffu;
        top = bits > top ? bits : top;
    }
    memcpy(&largest, &top, sizeof largest);
    return largest * ich < SML_SOFTCAP_SERIES_BELOW;
}

/* sml__softcap_finish_x8 of eight lanes all below SML_SOFTCAP_SERIES_BELOW, without their t:
 * the same operations on them (the polynomials), the same bits. */
static inline void sml__softcap_small_x8(const float *x, float *capped, float *slope, float ich,
                                         float icl, float cap_f, float cap_lo)
{
    sml_f32x8 xv, ax, a, lo, q, th;
    memcpy(&xv, x, sizeof xv);
    SML__SOFTCAP_SPLIT_X8(xv, ich, icl, ax, a, lo);
    q = a * a;
    th = SML__TANH_SERIES_F(a, q) + lo;
    if (slope != NULL) {
        sml_f32x8 s = SML__SECH2_FROM_TANH_F(th);
        memcpy(slope, &s, sizeof s);
    }
    SML__SOFTCAP_TIMES_CAP_X8(th, cap_f, cap_lo);
    th = (sml_f32x8)((sml_u32x8)th | ((sml_u32x8)xv & 0x80000000u));
    memcpy(capped, &th, sizeof th);
}
#endif

/* Elements per chunk of the two passes (t of a chunk in a stack buffer, in L1): each pass's
 * chain of dependent operations is about half the whole one's, so that more elements
 * overlap in the out-of-order window (measured: ~1.4x over one pass). */
#define SML_SOFTCAP_CHUNK 256

SML_SOFTCAP_OUT_OF_LINE static void sml_softcap_row_f(const float *x, float *capped,
                                                      float *slope, ptrdiff_t n, double cap)
{
    ptrdiff_t start, k;
    double inv_cap = 1.0 / cap;
    float ich, icl, ich2, icl2, cap_f = (float)cap, cap_lo = (float)(cap - (double)cap_f);
    float tb[SML_SOFTCAP_CHUNK];
    if (!(cap >= 8.6736173798840355e-19 && cap <= 1.152921504606846976e18)) {
        sml_softcap_row_f_wide(x, capped, slope, n, cap); /* beyond [2^-60, 2^60] */
        return;
    }
    ich = (float)inv_cap;
    icl = (float)(inv_cap - (double)ich);
    ich2 = -2.0f * ich;
    icl2 = -2.0f * icl;
    for (start = 0; start < n; start += SML_SOFTCAP_CHUNK) {
        ptrdiff_t len = n - start < SML_SOFTCAP_CHUNK ? n - start : SML_SOFTCAP_CHUNK;
        const float *xc = x + start;
        float *cc = capped + start, *sc = slope != NULL ? slope + start : NULL;
#if SML_HAVE_VEXP
        ptrdiff_t full = len - len % 8;
        if (sml__softcap_below_series_f(xc, full, ich)) { /* one pass, no exp, no division */
            if (sc != NULL) /* (two loops: no test of sc inside) */
                for (k = 0; k < full; k += 8)
                    sml__softcap_small_x8(xc + k, cc + k, sc + k, ich, icl, cap_f, cap_lo);
            else
                for (k = 0; k < full; k += 8)
                    sml__softcap_small_x8(xc + k, cc + k, NULL, ich, icl, cap_f, cap_lo);
        } else {
            for (k = 0; k < full; k += 8) /* t (capped may be x: nothing written yet) */
                sml__softcap_t_x8(xc + k, tb + k, ich2, icl2);
            for (k = 0; k < full; k += 8)
                sml__softcap_finish_x8(xc + k, tb + k, cc + k, sc != NULL ? sc + k : NULL, ich,
                                       icl, cap_f, cap_lo);
        }
        if (full < len) { /* the row's last len % 8, as eight lanes (the same operations) */
            float xp[8] = {0}, cp[8], sp[8];
            memcpy(xp, xc + full, (size_t)(len - full) * sizeof(float));
            sml__softcap_t_x8(xp, tb, ich2, icl2);
            sml__softcap_finish_x8(xp, tb, cp, sp, ich, icl, cap_f, cap_lo);
            memcpy(cc + full, cp, (size_t)(len - full) * sizeof(float));
            if (sc != NULL) memcpy(sc + full, sp, (size_t)(len - full) * sizeof(float));
        }
#else
        for (k = 0; k < len; k++) {
            float t = sml__softcap_t_scalar_f(xc[k], ich2, icl2);
            cc[k] = sml__softcap_finish_f(xc[k], t, ich, icl, cap_f, cap_lo,
                                          sc != NULL ? sc + k : NULL);
        }
#endif
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

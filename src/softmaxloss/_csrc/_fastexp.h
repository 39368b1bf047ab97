/*
 * _fastexp.h -- branch-free, auto-vectorisable exp() for float and double.
 *
 *   static inline float  sml_expf(float x);
 *   static inline double sml_exp(double x);
 *   static inline float  sml_expf_sub(float x, float m);    exp(x - m), x - m exact
 *   static inline double sml_exp_sub(double x, double m);
 *
 * Measured max error (reference: libm exp() in double for float, 80-bit
 * expl() for double), gcc 12 -O3, without / with -mavx2 -mfma:
 *   sml_expf: 0.78 / 0.78 ulp overall, 0.67 / 0.65 ulp for normal results
 *   sml_exp : 0.79 / 0.79 ulp overall, 0.69 / 0.67 ulp for normal results
 * (not correctly rounded: 0.1% of all 2^32 floats, 1.8% of the double tests)
 * (float: exhaustive over all 2^32 inputs; double: ~1.2e8 inputs from dense
 * and random sweeps of [-750, 712], random bit patterns, the subnormal
 * result range, +-1e6 ulps around the over/underflow thresholds, tiny |x|
 * and x near (k+1/2)*ln2.)  The larger figure is for subnormal results: they
 * are rounded twice (p, then the last multiply), so up to ~0.8 ulp there.
 * exp(NaN) = NaN, exp(-inf) = +0, exp(+inf) = +inf, exp(+-0) = 1,
 * overflow -> +inf, underflow -> +0, gradual underflow in between.
 *
 * Method:
 *   x is clamped to [lo, hi], a range outside which the result is already
 *     +inf or +0 (so the clamp changes no result and bounds n; there is no
 *     float->int conversion at all, and all integer work is unsigned);
 *   n = round(x / ln2)                 (via the 1.5*2^p "magic" add)
 *   r = x - n*ln2_hi - n*ln2_lo        (Cody-Waite, |r| <= ln2/2; the
 *                                       rounding error of r is kept too)
 *   exp(r) ~ 1 + r + r^2*Q(r)          (minimax for the relative error;
 *                                       1 + r is summed exactly, Q by Estrin)
 *   exp(x) = (exp(r) * 2^n1) * 2^n2    (n1 + n2 = n, each 2^ni normal)
 * 2^n is split into two factors built by integer ops on the exponent bits,
 * so 2^n itself never has to be representable: subnormal results come out
 * of the last multiply with gradual underflow, and overflow gives +inf there.
 *
 * No branches on the data: the clamps are compare+select (max/min or blends
 * after vectorisation), the rest is straight-line arithmetic; bit casts go
 * through memcpy, which compilers turn into register moves and gcc
 * vectorises.  Valid C99/C11 (and C89 given <stdint.h>) and C++98..C++20:
 * no hex float literals, no builtins, no global state (the result depends
 * only on x).
 *
 * Build requirements / caveats:
 * - Round-to-nearest mode (the default).  Never -ffast-math / -Ofast /
 *   -funsafe-math-optimizations / -ffinite-math-only / -fassociative-math:
 *   they would fold (t + C) - C and the error-free sums, or drop NaNs.
 * - gcc 12 vectorises the calling loop only with -fno-trapping-math
 *   (4 floats / 2 doubles with SSE2, 8 / 4 with AVX2); under the default
 *   -ftrapping-math it keeps the clamp as control flow and does not
 *   vectorise (correct, just scalar).  clang vectorises at plain -O2/-O3.
 * - FMA contraction (gcc's default -ffp-contract=fast once -mfma or
 *   -march=haswell+ is on; clang contracts within expressions) changes the
 *   rounding of intermediate steps: a result may differ in the last bit
 *   between an FMA and a non-FMA build (or between compilers).  Within one
 *   build, vector and scalar (loop-remainder) code give identical bits.
 */
#ifndef SOFTMAXLOSS_FASTEXP_H
#define SOFTMAXLOSS_FASTEXP_H

#include <stdint.h>
#include <string.h>

#include "_vector.h" /* the vector types of the x8 / x4 forms below */

#if defined(__cplusplus) || \
    (defined(__STDC_VERSION__) && __STDC_VERSION__ >= 199901L)
#  define SML_INLINE inline
#elif defined(_MSC_VER)
#  define SML_INLINE __inline
#elif defined(__GNUC__)
#  define SML_INLINE __inline__
#else
#  define SML_INLINE
#endif

/* Bit casts.  memcpy is the portable, strict-aliasing-safe way (unions are UB
 * in C++), and gcc/clang/MSVC compile it to a register move. */
static SML_INLINE uint32_t sml__f32_bits(float f)
{ uint32_t u; memcpy(&u, &f, sizeof u); return u; }
static SML_INLINE float sml__f32_from_bits(uint32_t u)
{ float f; memcpy(&f, &u, sizeof f); return f; }
static SML_INLINE uint64_t sml__f64_bits(double d)
{ uint64_t u; memcpy(&u, &d, sizeof u); return u; }
static SML_INLINE double sml__f64_from_bits(uint64_t u)
{ double d; memcpy(&d, &u, sizeof d); return d; }

/* ------------------------------------------------------------------------ */
/* the steps shared by float and double                                      */
/* ------------------------------------------------------------------------ */
/* Cody-Waite reduction: t = x*log2e + magic (magic = 1.5*2^p: t holds
 * n = round(x/ln2) in its low mantissa bits), and x - n*ln2 as r plus its
 * rounding error re: n*ln2_hi is exact and x - n*ln2_hi too (Sterbenz); re is
 * from Fast2Sum, exact when |rh| >= |nl|, and when not, r is so small that re
 * does not matter. */
#define SML__EXP_REDUCE(TYPE, x, t, r, re, magic, log2e, ln2_hi, ln2_lo)      \
    do {                                                                       \
        TYPE n__, rh__, nl__;                                                  \
        (t) = (x) * (log2e) + (magic);                                         \
        n__ = (t) - (magic);                        /* exact */                \
        rh__ = (x) - n__ * (ln2_hi);                /* exact */                \
        nl__ = n__ * (ln2_lo);                                                 \
        (r) = rh__ - nl__;                                                     \
        (re) = (rh__ - (r)) - nl__;                                            \
    } while (0)

/* The same reduction of x + lo (|lo| <= ulp(x)/2; n from x alone): x + lo - n ln2 =
 * rh - (n ln2_lo - lo), and n ln2_lo - lo is far below 1 (|n ln2_lo| < 2^-12 in float,
 * 2^-22 in double), so its rounding is far below an ulp of the result: r and re are
 * then formed as above, r exp's argument to within the rounding re of r itself. lo
 * costs one subtraction. */
#define SML__EXP_REDUCE_LO(TYPE, x, lo, t, r, re, magic, log2e, ln2_hi, ln2_lo) \
    do {                                                                       \
        TYPE n__, rh__, nl__;                                                  \
        (t) = (x) * (log2e) + (magic);                                         \
        n__ = (t) - (magic);                        /* exact */                \
        rh__ = (x) - n__ * (ln2_hi);                /* exact */                \
        nl__ = n__ * (ln2_lo) - (lo);                                          \
        (r) = rh__ - nl__;                                                     \
        (re) = (rh__ - (r)) - nl__;                                            \
    } while (0)

/* p = exp(r) ~ 1 + r + r^2 q, with 1 + r as an exact sum s + e (Fast2Sum,
 * |r| < 1), so that the only large rounding left is the final add (max error
 * 0.67 / 0.69 ulp instead of 0.99, measured, for the plain 1 + (r + r^2 q));
 * re*s is the first-order effect of the rounding error of r.  p is in
 * [0.70, 1.42]. */
#define SML__EXP_RECONSTRUCT(TYPE, one, r, re, r2, q, p)                       \
    do {                                                                       \
        TYPE s__ = (one) + (r);                                                \
        TYPE e__ = ((one) - s__) + (r);             /* exact */                \
        (p) = s__ + ((e__ + (re) * s__) + (r2) * (q));                         \
    } while (0)

/* hi + lo = a - b exactly (Knuth's TwoSum, no condition on the sizes): hi = fl(a - b),
 * lo the rounding error, itself a number of the type. Six additions, no product (so no
 * FMA contraction can change it). Valid when a - b does not overflow; callers zero lo
 * where hi is not finite (inf - inf would make it NaN). */
#define SML__TWO_DIFF(TYPE, a, b, hi, lo)                                       \
    do {                                                                       \
        TYPE bb__;                                                             \
        (hi) = (a) - (b);                                                      \
        bb__ = (hi) - (a);                                                     \
        (lo) = ((a) - ((hi) - bb__)) - ((b) + bb__);                           \
    } while (0)

/* The plain reduction under the core macros' signature (lo unused). */
#define SML__EXP_REDUCE_NOLO(TYPE, x, lo, t, r, re, magic, log2e, ln2_hi, ln2_lo) \
    SML__EXP_REDUCE(TYPE, x, t, r, re, magic, log2e, ln2_hi, ln2_lo)

/* ------------------------------------------------------------------------ */
/* float                                                                     */
/* ------------------------------------------------------------------------ */
/* The reduction and the polynomial, from x (already in [lo, hi]) to t (the
 * magic constant plus n, n = round(x/ln2)) and p = exp(x - n*ln2) in
 * [0.70, 1.42].  A macro, shared by sml_expf and by the vector version below
 * (TYPE float or a GNU vector of floats; a scalar operand is broadcast), so
 * that every version is the same expression: the same roundings and the same
 * FMA contractions, hence the same bits. */
#define SML__EXPF_CORE_GEN(TYPE, x, t, p, REDUCE, lo)                          \
    do {                                                                       \
        /* 1.5*2^23: adding it pushes the fraction bits out, leaving          \
         * round-to-nearest(x*log2e) as an integer in the low mantissa bits   \
         * of t (valid for |x*log2e| < 2^22). */                               \
        const float magic_ = 12582912.0f;                                      \
        const float log2e_ = 1.44269502f;           /* 0x1.715476p+0 */        \
        /* ln2 = ln2_hi + ln2_lo.  ln2_hi = 0x1.62e4p-1 has 16 significant    \
         * bits, so n*ln2_hi is exact for |n| < 2^8 and x - n*ln2_hi is exact \
         * (Sterbenz); ln2_lo is ln2 - ln2_hi rounded to float. */             \
        const float ln2_hi_ = 0.693145751953125f;                              \
        const float ln2_lo_ = 1.42860677e-06f;      /* 0x1.7f7d1cp-20 */       \
        /* exp(r) ~ 1 + r + r^2*(c2 + c3 r + ... + c6 r^4): degree-6 minimax  \
         * for the relative error on |r| <= 1.0001*ln2/2 (Remez, with 1 and r \
         * fixed exactly, coefficients rounded to float and refitted one by   \
         * one): 2^-28.2, i.e. < 0.05 ulp. */                                  \
        const float c2_ = 0.49999994f;              /* 0x1.fffffcp-2  */       \
        const float c3_ = 0.166665167f;             /* 0x1.55548cp-3  */       \
        const float c4_ = 0.0416681021f;            /* 0x1.555858p-5  */       \
        const float c5_ = 0.00836919248f;           /* 0x1.123de0p-7  */       \
        const float c6_ = 0.00138389028f;           /* 0x1.6ac74ep-10 */       \
        TYPE r_, re_, r2_, q_;                                                 \
        REDUCE(TYPE, x, lo, t, r_, re_, magic_, log2e_, ln2_hi_, ln2_lo_);     \
        /* Estrin's scheme: shorter dependency chain than Horner, which lets  \
         * more loop iterations overlap */                                     \
        r2_ = r_ * r_;                                                         \
        q_ = (c2_ + r_ * c3_) + r2_ * ((c4_ + r_ * c5_) + r2_ * c6_);          \
        SML__EXP_RECONSTRUCT(TYPE, 1.0f, r_, re_, r2_, q_, p);                 \
    } while (0)

/* SML__EXPF_CORE(TYPE, x, t, p): exp of x; SML__EXPF_CORE_LO(TYPE, x, lo, t, p): of
 * x + lo, |lo| <= ulp(x)/2 (SML__EXP_REDUCE_LO). */
#define SML__EXPF_CORE(TYPE, x, t, p)                                          \
    SML__EXPF_CORE_GEN(TYPE, x, t, p, SML__EXP_REDUCE_NOLO, 0)
#define SML__EXPF_CORE_LO(TYPE, x, lo, t, p)                                   \
    SML__EXPF_CORE_GEN(TYPE, x, t, p, SML__EXP_REDUCE_LO, lo)

/* exp(x) = p 2^n from t (whose low mantissa bits hold n) and p = exp(x - n ln2). */
static SML_INLINE float sml__expf_scale(float t, float p)
{
    float s1, s2;
    uint32_t m, m1;

    /* m = n + 150 in [0, 278], read straight from the bits of t (the low
     * mantissa bits of t hold n in two's complement).  Split as n = n1 + n2
     * with n1 = m/2 - 75, n2 = n - n1, both in [-75, 64]: 2^n1 and 2^n2 are
     * normal floats, built as (n_i + 127) << 23.  Unsigned arithmetic: no UB
     * even for the garbage bits a NaN input produces (the result is NaN
     * anyway, since p is NaN). */
    m = sml__f32_bits(t) - (0x4B400000u - 150u);
    m1 = m >> 1;
    s1 = sml__f32_from_bits((m1 + 52u) << 23);     /* 2^(m1 - 75)           */
    s2 = sml__f32_from_bits((m - m1 + 52u) << 23); /* 2^(m - m1 - 75)       */
    /* p*s1 is exact (normal range); the second multiply does the only
     * rounding for subnormal results and produces +inf on overflow. */
    return (p * s1) * s2;
}

static SML_INLINE float sml_expf(float x)
{
    /* Clamp bounds: exp(x) overflows for x > 88.7228 and rounds to +0 for
     * x < -103.972 (below half the smallest subnormal 2^-149); 89 and -104
     * still give +inf and +0, so clamping does not change any result, and
     * bounds n to [-150, 128].  A NaN compares false in both tests and
     * passes through unchanged (then p, and the result, are NaN). */
    const float lo = -104.0f;
    const float hi = 89.0f;
    float t, p;

    x = x < lo ? lo : x;
    x = x > hi ? hi : x;

    SML__EXPF_CORE(float, x, t, p);

    return sml__expf_scale(t, p);
}

/* ------------------------------------------------------------------------ */
/* double                                                                    */
/* ------------------------------------------------------------------------ */
/* As SML__EXPF_CORE, for double (TYPE double or a GNU vector of doubles). */
#define SML__EXP_CORE_GEN(TYPE, x, t, p, REDUCE, lo)                           \
    do {                                                                       \
        const double magic_ = 6755399441055744.0;   /* 1.5*2^52 */             \
        const double log2e_ = 1.4426950408889634;   /* 0x1.71547652b82fep+0 */ \
        /* fdlibm's split: ln2_hi = 0x1.62e42feep-1 has 32 significant bits,  \
         * so n*ln2_hi is exact for |n| < 2^21; ln2_lo = ln2 - ln2_hi         \
         * rounded. */                                                         \
        const double ln2_hi_ = 0.69314718036912381649;                         \
        const double ln2_lo_ = 1.9082149292705877e-10; /* 0x1.a39ef35793c76p-33 */ \
        /* exp(r) ~ 1 + r + r^2*(c2 + c3 r + ... + c11 r^9): degree-11        \
         * minimax for the relative error on |r| <= 1.0001*ln2/2 (Remez, 1    \
         * and r fixed, c2..c4 rounded to double one by one with the rest     \
         * refitted): 2^-57.9.  Degree 10 would only reach 2^-51.6. */         \
        const double c2_  = 0.5000000000000011;                                \
        const double c3_  = 0.16666666666666438;                               \
        const double c4_  = 0.041666666666525805;                              \
        const double c5_  = 0.00833333333347377;                               \
        const double c6_  = 0.0013888888944851715;                             \
        const double c7_  = 0.00019841269560196123;                            \
        const double c8_  = 2.4801491768616096e-05;                            \
        const double c9_  = 2.7557531081565415e-06;                            \
        const double c10_ = 2.7630740643776153e-07;                            \
        const double c11_ = 2.5019735724878723e-08;                            \
        TYPE r_, re_, r2_, r4_, q_;                                            \
        REDUCE(TYPE, x, lo, t, r_, re_, magic_, log2e_, ln2_hi_, ln2_lo_);     \
        r2_ = r_ * r_;                              /* Estrin */               \
        r4_ = r2_ * r2_;                                                       \
        q_ = ((c2_ + r_ * c3_) + r2_ * (c4_ + r_ * c5_))                       \
           + r4_ * (((c6_ + r_ * c7_) + r2_ * (c8_ + r_ * c9_))                \
                    + r4_ * (c10_ + r_ * c11_));                               \
        SML__EXP_RECONSTRUCT(TYPE, 1.0, r_, re_, r2_, q_, p);                  \
    } while (0)

#define SML__EXP_CORE(TYPE, x, t, p)                                           \
    SML__EXP_CORE_GEN(TYPE, x, t, p, SML__EXP_REDUCE_NOLO, 0)
#define SML__EXP_CORE_LO(TYPE, x, lo, t, p)                                    \
    SML__EXP_CORE_GEN(TYPE, x, t, p, SML__EXP_REDUCE_LO, lo)

/* As sml__expf_scale, for double. */
static SML_INLINE double sml__exp_scale(double t, double p)
{
    double s1, s2;
    uint64_t m, m1;

    /* m = n + 1076 in [0, 2100]; n1 = m/2 - 538, n2 = n - n1, both in
     * [-538, 512], so 2^n1, 2^n2 are normal doubles: (n_i + 1023) << 52.
     * Unsigned 64-bit ops only (logical shifts: AVX2 has no 64-bit
     * arithmetic right shift). */
    m = sml__f64_bits(t) - ((((uint64_t)0x43380000u) << 32) - 1076u);
    m1 = m >> 1;
    s1 = sml__f64_from_bits((m1 + 485u) << 52);     /* 2^(m1 - 538)          */
    s2 = sml__f64_from_bits((m - m1 + 485u) << 52); /* 2^(m - m1 - 538)      */
    return (p * s1) * s2;
}

static SML_INLINE double sml_exp(double x)
{
    /* exp(x) overflows for x > 709.7827 and rounds to +0 for
     * x < -745.1332 (below 2^-1075); clamping to [-746, 710] keeps those
     * results and bounds n to [-1076, 1024].  NaN passes through. */
    const double lo = -746.0;
    const double hi = 710.0;
    double t, p;

    x = x < lo ? lo : x;
    x = x > hi ? hi : x;

    SML__EXP_CORE(double, x, t, p);

    return sml__exp_scale(t, p);
}

/* ------------------------------------------------------------------------ */
/* exp(x - m) from the exact difference                                      */
/* ------------------------------------------------------------------------ */
/* sml_expf_sub(x, m) = exp(x - m), sml_exp_sub(x, m) likewise for double, with x - m
 * taken exactly, as hi + lo (SML__TWO_DIFF), and lo folded into the argument reduction
 * (SML__EXP_REDUCE_LO: one subtraction, or none where it contracts into the FMA that forms
 * n ln2_lo): the error bounds above hold for
 * exp(x - m) itself, however large |x - m| (rounding x - m first would cost up to
 * |x - m| / 2 ulps more: 2^k ulps for |x - m| in [2^k, 2^(k+1))). lo is used only where
 * hi is within the clamps (elsewhere the result is +0, +inf or NaN whatever lo is, and
 * lo may be NaN: inf - inf). exp(m - m) = 1 exactly. Where x - m is exact (lo = 0) the
 * same bits as sml_expf(x - m) in a build without FMA contraction; with it, n ln2_lo - lo
 * contracts into one FMA where sml_expf contracts n ln2_lo into the next subtraction, so
 * the last bit may differ (as between an FMA and a non-FMA build, see above). */
static SML_INLINE float sml_expf_sub(float x, float m)
{
    float d, lo, t, p;
    SML__TWO_DIFF(float, x, m, d, lo);
    x = d < -104.0f ? -104.0f : d;          /* sml_expf's clamps */
    x = x > 89.0f ? 89.0f : x;
    lo = x == d ? lo : 0.0f;                /* clamped or NaN: no lo */
    SML__EXPF_CORE_LO(float, x, lo, t, p);
    return sml__expf_scale(t, p);
}

static SML_INLINE double sml_exp_sub(double x, double m)
{
    double d, lo, t, p;
    SML__TWO_DIFF(double, x, m, d, lo);
    x = d < -746.0 ? -746.0 : d;            /* sml_exp's clamps */
    x = x > 710.0 ? 710.0 : x;
    lo = x == d ? lo : 0.0;                 /* clamped or NaN: no lo */
    SML__EXP_CORE_LO(double, x, lo, t, p);
    return sml__exp_scale(t, p);
}

/* ------------------------------------------------------------------------ */
/* vectors of 8, for arguments in the normal-result range (gcc, clang)      */
/* ------------------------------------------------------------------------ */
/* SML_EXPF_X8_INRANGE(x, y): y = exp(x) for a vector x of 8 floats, each
 * |x| <= SML_EXPF_INRANGE (87); SML_EXP_X4_INRANGE(x, y) for 4 doubles, each
 * |x| <= SML_EXP_INRANGE (708).  Bitwise the same as sml_expf / sml_exp of
 * each element (the same SML__EXP*_CORE), without the clamps and with 2^n as
 * one factor: there n = round(x/ln2) is within [-126, 126] ([-1021, 1021]),
 * so 2^n is a normal number, and p * 2^n is the exact product rounded once,
 * exactly what (p * 2^n1) * 2^n2 gives (p * 2^n1 is exact).  Outside that
 * range the result is unspecified: callers test the range.  GNU vector
 * extensions (gcc, clang; the types and SML_HAVE_VEXP, which says whether
 * they are used, are _vector.h's): the compiler maps them onto what the
 * target has (one AVX register, two SSE2 ones).  Macros, not functions: gcc
 * warns (-Wpsabi) about passing 32/64-byte vectors by value without
 * AVX/AVX-512. */
#define SML_EXPF_INRANGE 87.0f
#define SML_EXP_INRANGE 708.0
#if SML_HAVE_VEXP

/* t's bits are 0x4B400000 + n, so (bits + 127) << 23 is 2^n */
#define SML_EXPF_X8_INRANGE(x, y)                                              \
    do {                                                                       \
        sml_f32x8 t_x8_, p_x8_;                                                \
        SML__EXPF_CORE(sml_f32x8, x, t_x8_, p_x8_);                            \
        (y) = p_x8_ * (sml_f32x8)(((sml_u32x8)t_x8_ + 127u) << 23);            \
    } while (0)

/* SML_EXPF_X8_INRANGE_LO(x, lo, y): y = exp(x + lo) (|lo| <= ulp(x)/2), bitwise
 * sml_expf_sub's for x + lo the exact x - m; SML_EXP_X4_INRANGE_LO likewise. */
#define SML_EXPF_X8_INRANGE_LO(x, lo, y)                                       \
    do {                                                                       \
        sml_f32x8 t_x8_, p_x8_;                                                \
        SML__EXPF_CORE_LO(sml_f32x8, x, lo, t_x8_, p_x8_);                     \
        (y) = p_x8_ * (sml_f32x8)(((sml_u32x8)t_x8_ + 127u) << 23);            \
    } while (0)

#define SML_EXP_X4_INRANGE_LO(x, lo, y)                                        \
    do {                                                                       \
        sml_f64x4 t_x4_, p_x4_;                                                \
        SML__EXP_CORE_LO(sml_f64x4, x, lo, t_x4_, p_x4_);                      \
        (y) = p_x4_ * (sml_f64x4)(((sml_u64x4)t_x4_ + 1023u) << 52);           \
    } while (0)

/* t's bits are 0x4338000000000000 + n, so (bits + 1023) << 52 is 2^n */
#define SML_EXP_X4_INRANGE(x, y)                                               \
    do {                                                                       \
        sml_f64x4 t_x4_, p_x4_;                                                \
        SML__EXP_CORE(sml_f64x4, x, t_x4_, p_x4_);                             \
        (y) = p_x4_ * (sml_f64x4)(((sml_u64x4)t_x4_ + 1023u) << 52);           \
    } while (0)
#endif

#endif /* SOFTMAXLOSS_FASTEXP_H */

/*
 * _fastlog.h -- branch-free, auto-vectorisable log1p() for double.
 *
 *   static inline double sml_log1p(double r);
 *
 * Measured max error (gcc 12 -O3 -fno-math-errno -fno-trapping-math; same
 * figures from clang 14), without / with -mavx2 -mfma:
 *   0.661 / 0.660 ulp over all r >= -1, against log1pl() (x87 80-bit) and,
 *   at the worst points and ~75k samples, mpmath at 200 bits.  About 0.24%
 *   of results are not correctly rounded; none is off by 1 ulp or more.
 * (4.3e8 inputs per build: dense and log-uniform sweeps of [2^-1074, 2^1024),
 * tiny and subnormal r of both signs, [-1e-10, 1e-10], (-1, 0),
 * -1 + 2^-60..2^-1, +-1e5 ulps around each u = 2^j*sqrt(2)/2, r where 1 + r
 * rounds, integers + small rests, random bit patterns.)  Worst cases:
 * r ~ +-1.8e-16 (where c below is a third of the result) and f near
 * sqrt(2)^+-1.  The vectorised loop and its scalar remainder agree bitwise.
 * Special values: log1p(-1) = -inf, log1p(r < -1) = NaN (r = -inf too),
 * log1p(+inf) = +inf, log1p(NaN) = NaN (a quiet NaN; the payload is not
 * kept), log1p(+-0) = +-0, and r subnormal or |r| < 2^-54 gives r itself.
 *
 * Speed, ns/element, min / median of 3 x 301 interleaved samples, loop
 * `out[i] = sml_log1p(in[i])`, r log-uniform in [1e-12, 1e6], 2-core shared
 * (loaded) AMD EPYC Zen 3 VM, glibc 2.36 log1p for comparison:
 *                                   SSE2 (x86-64 base)   -mavx2 -mfma
 *   blocks of 1024, fresh data  sml   5.0 / 5.6-6.1       1.8 / 2.4-2.5
 *                               libm 11.9 / 15-16        12.1 / 17-18
 *   one 8 MB array (2^20)       sml   5.3 / 6.4-14        2.0 / 6.0-6.6
 *                               libm 13.0 / 18-37        24.1 / 31-44
 * (libm gets faster, ~6 ns min, when the same 1024 inputs are repeated and
 * its branches are learnt; sml_log1p does not branch.)
 *
 * Method (fdlibm's log1p/log, rearranged to have no data-dependent branch):
 *   u = 1 + r,  err = r - (u - 1)      err is exactly (1 + r) - u whenever
 *                                      u <= 2^53 (u - 1 is then exact, and
 *                                      r - (u - 1) by Sterbenz); above that
 *                                      c is far below the last bit anyway
 *   c = err / u                        log1p(r) = log(u) + c + O(c^2)
 *   u = 2^k * f, f in [sqrt(2)/2, sqrt(2))  (integer ops on the bit pattern,
 *                                      k turned into a double by the 2^52
 *                                      "magic" trick: no float<->int
 *                                      conversion; u never is subnormal, as
 *                                      u >= 2^-53 for every r > -1)
 *   f1 = f - 1 (exact), s = f1 / (f + 1), z = s^2
 *   log(f) = f1 - f1^2/2 + s*(f1^2/2 + z*P(z))       (fdlibm's Lg1..Lg7:
 *                                      |z*P(z) - R(z)| < 2^-58.45 for
 *                                      |s| < 0.1716; P by Estrin)
 *   log1p(r) = k*ln2_hi + f1 - f1^2/2 + [tail]
 *     with the leading sum kept exact as a double-double (ln2_hi has 32
 *     significant bits, so k*ln2_hi is exact; two Fast2Sums; f1^2/2 is
 *     split as hi + lo exactly: with FMA by fma(), otherwise by cutting f1
 *     into 26 + 27 bits), and
 *     tail = rounding errors + s*f1^2/2 + k*ln2_lo + c + s*z*P(z).
 *   The result is then min(y, r) (log1p(r) <= r, so this never hurts): it
 *   returns r itself for r = +-0 (sign kept) and +inf, where y is +0 / NaN.
 *   r <= -1 and NaN are blended to NaN / -inf at the end.
 *
 * No branches on the data: the special cases are compare + select (min and
 * blends after vectorisation), the rest is straight-line arithmetic (two
 * divisions, which vectorise as divpd); integer work is unsigned 64-bit add,
 * and, shift (all in SSE2); bit casts go through memcpy.  Valid C99/C11
 * (and C89 given <stdint.h>), C++98..C++20 and MSVC: no hex float literals,
 * no 64-bit integer literals, no builtins, no global state.
 *
 * Build requirements / caveats (as for _fastexp.h):
 * - Round-to-nearest mode, double arithmetic in double (FLT_EVAL_METHOD 0,
 *   as on x86-64 / SSE2; not x87).  Never -ffast-math / -Ofast /
 *   -funsafe-math-optimizations / -ffinite-math-only / -fassociative-math:
 *   they would fold the error-free sums (u - 1, (a - s) + b) and drop the
 *   NaN/inf handling.
 * - gcc 12 vectorises the calling loop at -O3 (2 doubles per vector with
 *   SSE2, 4 with AVX2, 8 with AVX-512), with or without -fno-math-errno
 *   -fno-trapping-math; not at plain -O2 (its "very cheap" cost model), but
 *   with -O2 -ftree-vectorize -fvect-cost-model=dynamic.  clang vectorises
 *   at -O2/-O3.
 * - With __FMA__ defined (-mfma, -march=haswell+) fma() from <math.h> is
 *   used, which gcc and clang inline; never define __FMA__ by hand for a
 *   target without FMA (fma() would become a slow library call).  FMA
 *   contraction changes intermediate roundings, so an FMA and a non-FMA
 *   build may differ in the last bit; within one build the vectorised loop
 *   and its scalar remainder give identical bits.
 */
#ifndef SOFTMAXLOSS_FASTLOG_H
#define SOFTMAXLOSS_FASTLOG_H

#include <stdint.h>
#include <string.h>
/* fma() is used only where the target has FMA and <math.h> declares it */
#if defined(__FMA__) && (defined(__cplusplus) || \
    (defined(__STDC_VERSION__) && __STDC_VERSION__ >= 199901L))
#  define SML__LOG_USE_FMA 1
#  include <math.h>
#endif

#if defined(__cplusplus) || \
    (defined(__STDC_VERSION__) && __STDC_VERSION__ >= 199901L)
#  define SML__LOG_INLINE inline
#elif defined(_MSC_VER)
#  define SML__LOG_INLINE __inline
#elif defined(__GNUC__)
#  define SML__LOG_INLINE __inline__
#else
#  define SML__LOG_INLINE
#endif

/* 64-bit constants from two 32-bit halves (no long long literals). */
#define SML__LOG_U64(hi, lo) ((((uint64_t)(hi##u)) << 32) | (uint64_t)(lo##u))

static SML__LOG_INLINE uint64_t sml__log_bits(double d)
{ uint64_t u; memcpy(&u, &d, sizeof u); return u; }
static SML__LOG_INLINE double sml__log_from_bits(uint64_t u)
{ double d; memcpy(&d, &u, sizeof d); return d; }

static SML__LOG_INLINE double sml_log1p(double r)
{
    /* ln2 = ln2_hi + ln2_lo (fdlibm): ln2_hi = 0x1.62e42feep-1 has 32
     * significant bits, so k*ln2_hi is exact for |k| < 2^21. */
    const double ln2_hi = 6.93147180369123816490e-01;
    const double ln2_lo = 1.90821492927058770002e-10;  /* 0x1.a39ef35793c76p-33 */
    /* fdlibm's e_log.c coefficients: log(f) = f1 - hfsq + s*(hfsq + R),
     * R = z*(Lg1 + z*Lg2 + ... + z^6*Lg7), z = s^2, error < 2^-58.45. */
    const double Lg1 = 6.666666666666735130e-01;       /* 0x1.5555555555593p-1 */
    const double Lg2 = 3.999999999940941908e-01;       /* 0x1.999999997fa04p-2 */
    const double Lg3 = 2.857142874366239149e-01;       /* 0x1.2492494229359p-2 */
    const double Lg4 = 2.222219843214978396e-01;       /* 0x1.c71c51d8e78afp-3 */
    const double Lg5 = 1.818357216161805012e-01;       /* 0x1.7466496cb03dep-3 */
    const double Lg6 = 1.531383769920937332e-01;       /* 0x1.39a09d078c69fp-3 */
    const double Lg7 = 1.479819860511658591e-01;       /* 0x1.2f112df3e5244p-3 */
    /* bit patterns */
    const uint64_t sqrt_half = SML__LOG_U64(0x3fe6a09e, 0x667f3bcd);  /* sqrt(2)/2 */
    const uint64_t bias      = SML__LOG_U64(0x3ff00000, 0x00000000);  /* 1023 << 52 */
    const uint64_t mant      = SML__LOG_U64(0x000fffff, 0xffffffff);
    const uint64_t magic     = SML__LOG_U64(0x43300000, 0x00000000);  /* 2^52 */
    const double   magic_k   = 4503599627370496.0 + 1023.0;          /* 2^52 + 1023 */
    const double   pos_inf   = sml__log_from_bits(SML__LOG_U64(0x7ff00000, 0x00000000));
    const double   quiet_nan = sml__log_from_bits(SML__LOG_U64(0x7ff80000, 0x00000000));
    double u, err, c, f, f1, kd, s, z, w, P, A, hi, lo1, hi2, lo2;
    double hfsq, hfsq_lo, hfsq_full, Q, y;
    uint64_t t;

    /* u = 1 + r rounded, err its rounding error (exact for u <= 2^53; see
     * the header comment), c = err/u its first-order effect on the log. */
    u = 1.0 + r;
    err = r - (u - 1.0);
    c = err / u;

    /* u = 2^k * f with f in [sqrt(2)/2, sqrt(2)): t = bits(u) - bits(sqrt(2)/2)
     * + (1023 << 52) has k + 1023 in its top 12 bits (in [970, 2047] for all
     * finite u >= 2^-53, so no wrap-around) and f's fraction, relative to
     * sqrt(2)/2, in the low 52.  Unsigned: garbage but no UB for u <= 0,
     * inf or NaN, which are replaced at the end. */
    t = sml__log_bits(u) - sqrt_half + bias;
    f = sml__log_from_bits((t & mant) + sqrt_half);
    kd = sml__log_from_bits(magic | (t >> 52)) - magic_k;     /* k, exact */

    f1 = f - 1.0;                                  /* exact */
    s = f1 / (f + 1.0);                            /* |s| < 0.1716 */
    z = s * s;
    w = z * z;
    P = ((Lg1 + z * Lg2) + w * (Lg3 + z * Lg4))
      + (w * w) * ((Lg5 + z * Lg6) + w * Lg7);

    /* f1^2/2 = hfsq + hfsq_lo exactly (0.5*f1 is exact: f1 is 0 or
     * >= 2^-53 in magnitude) */
#if defined(SML__LOG_USE_FMA)
    /* hfsq must stay one rounded product in all its uses; its multiply use
     * (s * hfsq_full) also keeps gcc from fusing it into hi2 / lo2 */
    hfsq = (0.5 * f1) * f1;
    hfsq_lo = fma(0.5 * f1, f1, -hfsq);
    hfsq_full = hfsq;
#else
    {   /* f1 = fh + fl, fh = f1 cut to 26 significant bits: fh*fh is exact */
        double fh = sml__log_from_bits(sml__log_bits(f1) &
                                       SML__LOG_U64(0xffffffff, 0xf8000000));
        double fl = f1 - fh;                       /* exact */
        hfsq = 0.5 * fh * fh;                      /* exact */
        hfsq_lo = 0.5 * fl * (f1 + fh);            /* f1^2/2 - hfsq */
        hfsq_full = 0.5 * f1 * f1;
    }
#endif

    /* k*ln2_hi + f1 - hfsq as hi2 + (lo1 + lo2), by two Fast2Sums (valid:
     * |k*ln2_hi| >= |f1| unless k = 0, and |hi| > |hfsq|) */
    A = kd * ln2_hi;                               /* exact */
    hi = A + f1;
    lo1 = (A - hi) + f1;
    hi2 = hi - hfsq;
    lo2 = (hi - hi2) - hfsq;
    Q = ((lo1 + lo2) - hfsq_lo) + (s * hfsq_full + (kd * ln2_lo + c));
    y = hi2 + (Q + (s * z) * P);

    /* log1p(r) <= r for every r > -1, so min(y, r) costs no accuracy; as
     * written (a NaN y compares false) it gives y = r for r = +-0 (keeping
     * -0) and r = +inf (where y is NaN). */
    y = (y < r) ? y : r;
    y = (r > -1.0) ? y : -pos_inf;                 /* r = -1 (and below) */
    y = (r >= -1.0) ? y : quiet_nan;               /* r < -1, -inf, NaN */
    return y;
}

#endif /* SOFTMAXLOSS_FASTLOG_H */

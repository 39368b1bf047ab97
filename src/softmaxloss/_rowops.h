/*
 * Row primitives of the softmaxloss kernels: the loops over one row of logits that
 * must vectorise, plus what the kernels need to know about the platform.
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

#include <math.h>
#include <stddef.h>

#include "_fastexp.h"

/* ---- platform ------------------------------------------------------------ */

#if defined(_OPENMP)
#include <omp.h>
#define SML_OPENMP 1
static inline int sml_max_threads(void) { return omp_get_max_threads(); }
#else
#define SML_OPENMP 0
static inline int sml_max_threads(void) { return 1; }
#endif

/* `#pragma omp simd` needs -fopenmp or -fopenmp-simd (gcc, clang); MSVC's OpenMP 2.0
 * has no simd construct, so there the loops are left to the auto-vectoriser. */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(_MSC_VER)
#define SML_PRAGMA(text) _Pragma(#text)
#define SML_SIMD_MAX(var) SML_PRAGMA(omp simd reduction(max : var))
#else
#define SML_SIMD_MAX(var)
#endif

/* The instruction set this translation unit was compiled for. */
#if defined(__AVX512F__)
#define SML_ISA "avx512f"
#elif defined(__AVX2__) && (defined(__FMA__) || defined(_MSC_VER))
#define SML_ISA "avx2+fma"
#elif defined(__AVX2__)
#define SML_ISA "avx2"
#elif defined(__aarch64__) || defined(_M_ARM64)
#define SML_ISA "neon (aarch64 baseline)"
#elif defined(__x86_64__) || defined(_M_X64)
#define SML_ISA "sse2 (x86-64 baseline)"
#else
#define SML_ISA "generic"
#endif

#if defined(__clang__)
#define SML_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define SML_COMPILER "gcc " __VERSION__
#elif defined(_MSC_VER)
#define SML_STR2(x) #x
#define SML_STR(x) SML_STR2(x)
#define SML_COMPILER "msvc " SML_STR(_MSC_FULL_VER)
#else
#define SML_COMPILER "unknown"
#endif

#if defined(__x86_64__) || defined(_M_X64)
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#include <immintrin.h>
#endif
#endif

/* 1 when this CPU (and its OS, which must save the YMM registers) runs AVX2 and FMA. */
static inline int sml_cpu_has_avx2_fma(void)
{
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();  /* libgcc's checks include OSXSAVE/XCR0 */
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#elif defined(_M_X64) && defined(_MSC_VER)
    int info[4];
    __cpuid(info, 0);
    if (info[0] < 7) return 0;
    __cpuid(info, 1);
    int fma = (info[2] >> 12) & 1, osxsave = (info[2] >> 27) & 1, avx = (info[2] >> 28) & 1;
    if (!(fma && osxsave && avx)) return 0;
    if ((_xgetbv(0) & 6) != 6) return 0; /* the OS saves XMM and YMM state */
    __cpuidex(info, 7, 0);
    return (info[1] >> 5) & 1;
#else
    return 0;
#endif
}

/* ---- row primitives -------------------------------------------------------
 * Written once for float (suffix _f, exp sml_expf) and double (_d, sml_exp).
 *
 * sml_row_max_*(x, n):           max_c x[c] (n >= 1). With a NaN in the row the
 *                                result is unspecified, but the exp-sum that
 *                                follows is NaN either way, so the row is NaN.
 * sml_row_expsum_*(x, e, n, m, log_total):
 *                                S = sum_c exp(x[c] - m) in double, m the row max;
 *                                with e != NULL also e[c] = exp(x[c] - m) (e may be x);
 *                                with log_total != NULL also log(S), accurately even
 *                                when S ~ 1: the entries equal to m add exactly 1 each
 *                                and are counted apart from the rest R, so that
 *                                log(S) = log1p((ties - 1) + R) keeps R's digits (the
 *                                loss of a confident, correct prediction is ~R).
 *                                An infinite or NaN m (a row with +inf or NaN, or all
 *                                -inf) gives NaN.
 * sml_row_gapsum_*(x, w, n, m):  sum_c w[c] * (m - x[c]) in double, w NULL = 1:
 *                                the label-smoothing term, a sum of non-negative
 *                                terms (no cancellation) when m is the row max.
 * Sums use 8 partial accumulators so that they vectorise without reassociation.
 */
#define SML_LANES 8

#define SML_DEFINE_ROWOPS(T, SUF, EXP)                                                 \
    static inline T sml_row_max_##SUF(const T *x, ptrdiff_t n)                         \
    {                                                                                  \
        T m = x[0];                                                                    \
        SML_SIMD_MAX(m)                                                                \
        for (ptrdiff_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;                     \
        return m;                                                                      \
    }                                                                                  \
                                                                                       \
    static inline double sml_row_expsum_##SUF(const T *x, T *e, ptrdiff_t n, T m,       \
                                              double *log_total)                       \
    {                                                                                  \
        double rest[SML_LANES] = {0, 0, 0, 0, 0, 0, 0, 0};                             \
        double ties[SML_LANES] = {0, 0, 0, 0, 0, 0, 0, 0};                             \
        double rest_tail = 0, ties_tail = 0;                                           \
        ptrdiff_t i = 0;                                                               \
        for (; i + SML_LANES <= n; i += SML_LANES) {                                   \
            T xs[SML_LANES], v[SML_LANES]; /* all loads before any store: e may be x */ \
            for (int k = 0; k < SML_LANES; k++) xs[k] = x[i + k];                      \
            for (int k = 0; k < SML_LANES; k++) v[k] = EXP(xs[k] - m);                 \
            if (e != NULL)                                                             \
                for (int k = 0; k < SML_LANES; k++) e[i + k] = v[k];                   \
            for (int k = 0; k < SML_LANES; k++) {                                      \
                int top = xs[k] == m;                                                  \
                rest[k] += top ? 0.0 : (double)v[k];                                   \
                ties[k] += top ? 1.0 : 0.0;                                            \
            }                                                                          \
        }                                                                              \
        for (; i < n; i++) {                                                           \
            T xi = x[i];                                                               \
            T v = EXP(xi - m);                                                         \
            if (e != NULL) e[i] = v;                                                   \
            rest_tail += xi == m ? 0.0 : (double)v;                                    \
            ties_tail += xi == m ? 1.0 : 0.0;                                          \
        }                                                                              \
        double rest_sum = (((rest[0] + rest[4]) + (rest[1] + rest[5])) +               \
                           ((rest[2] + rest[6]) + (rest[3] + rest[7]))) + rest_tail;    \
        double tie_count = (((ties[0] + ties[4]) + (ties[1] + ties[5])) +              \
                            ((ties[2] + ties[6]) + (ties[3] + ties[7]))) + ties_tail;   \
        if (!isfinite(m)) { /* a row with +inf or NaN, or all -inf: inf - inf = NaN */  \
            if (log_total != NULL) *log_total = NAN;                                   \
            return NAN;                                                                \
        }                                                                              \
        if (log_total != NULL) *log_total = log1p((tie_count - 1.0) + rest_sum);       \
        return tie_count + rest_sum;                                                   \
    }                                                                                  \
                                                                                       \
    static inline double sml_row_gapsum_##SUF(const T *x, const double *w, ptrdiff_t n, \
                                              double m)                                \
    {                                                                                  \
        double acc[SML_LANES] = {0, 0, 0, 0, 0, 0, 0, 0};                              \
        double tail = 0;                                                               \
        ptrdiff_t i = 0;                                                               \
        if (w != NULL) {                                                               \
            for (; i + SML_LANES <= n; i += SML_LANES)                                 \
                for (int k = 0; k < SML_LANES; k++)                                    \
                    acc[k] += w[i + k] * (m - (double)x[i + k]);                       \
            for (; i < n; i++) tail += w[i] * (m - (double)x[i]);                      \
        } else {                                                                       \
            for (; i + SML_LANES <= n; i += SML_LANES)                                 \
                for (int k = 0; k < SML_LANES; k++) acc[k] += m - (double)x[i + k];    \
            for (; i < n; i++) tail += m - (double)x[i];                               \
        }                                                                              \
        return (((acc[0] + acc[4]) + (acc[1] + acc[5])) +                              \
                ((acc[2] + acc[6]) + (acc[3] + acc[7]))) + tail;                       \
    }

SML_DEFINE_ROWOPS(float, f, sml_expf)
SML_DEFINE_ROWOPS(double, d, sml_exp)

#endif /* SOFTMAXLOSS_ROWOPS_H */

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
#include <stdint.h>
#include <string.h>

#include "_fastexp.h"
#include "_fastlog.h"

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
 * Written once, in _rowops_template.h, and instantiated below for float (suffix
 * _f, exp sml_expf) and double (suffix _d, sml_exp). See that file for what each
 * function computes.
 */
#define SML_LANES 8
#define SML_CHUNK 1024 /* a multiple of SML_LANES; 4 or 8 KiB of stack */
#define SML_VBLOCK 128 /* a multiple of SML_LANES: see sml_row_expsum */

/* The lanes' total, always in this order. */
#define SML_LANE_TOTAL(acc)                                                            \
    (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])))

#define SML_JOIN2(name, suffix) name##_##suffix
#define SML_JOIN(name, suffix) SML_JOIN2(name, suffix)
#define SML_NAME(name) SML_JOIN(name, SML_SUFFIX)

#if SML_HAVE_VEXP
/* 4 floats to 4 doubles: gcc 12 makes two 2-wide conversions and a shuffle of
 * __builtin_convertvector here, so with AVX the instruction is named. */
#if defined(__AVX__)
#include <immintrin.h>
#define SML_F32X4_TO_F64X4(v) ((sml_f64x4)_mm256_cvtps_pd((__m128)(v)))
#else
#define SML_F32X4_TO_F64X4(v) __builtin_convertvector(v, sml_f64x4)
#endif
/* Whether any bit of a 32-byte mask is set (vptest with AVX). */
#if defined(__AVX__)
#define SML_VANY(mask) (!_mm256_testz_si256((__m256i)(mask), (__m256i)(mask)))
#else
static inline int sml_vany(const void *mask)
{
    uint64_t words[4];
    memcpy(words, mask, sizeof words);
    return ((words[0] | words[1]) | (words[2] | words[3])) != 0;
}
#define SML_VANY(mask) sml_vany(&(mask))
#endif
#define SML_VGROUP_T_F sml_f32x8
#define SML_VGROUP_T_D sml_f64x4x2

/* SML_VEXP_GROUP_F / _D(xp, m, v, out): v = exp(xp[k] - m) for the SML_LANES (8) entries
 * of a group (SML_EXP*_X*_INRANGE), and out flags those with |xp[k] - m| out of that exp's
 * range (or NaN). SML_VSUM_GROUP_F / _D(ep, v, lo, hi, ones): ep[k] = v[k], the values
 * other than exactly 1 added to the lanes lo (0-3) and hi (4-7) in double, minus the
 * count of ones into the integer vector ones. Macros: gcc warns (-Wpsabi) about vector
 * arguments. */
#define SML_VEXP_GROUP_F(xp, m, v, out)                                                 \
    do {                                                                                \
        sml_f32x8 d_;                                                                   \
        memcpy(&d_, (xp), sizeof d_);                                                   \
        d_ = d_ - (m);                                                                  \
        (out) = ~((sml_f32x8)((sml_u32x8)d_ & 0x7FFFFFFFu) <= SML_EXPF_INRANGE);        \
        SML_EXPF_X8_INRANGE(d_, v);                                                     \
    } while (0)

#define SML_VSUM_GROUP_F(ep, v, lo, hi, ones)                                           \
    do {                                                                                \
        sml_f32x4 half_[2];                                                             \
        sml_i32x8 one_;                                                                 \
        memcpy((ep), &(v), sizeof(v));                                                  \
        one_ = (v) == 1.0f;                                                             \
        (ones) += one_;                                                                 \
        (v) = (sml_f32x8)((sml_i32x8)(v) & ~one_);                                      \
        memcpy(half_, &(v), sizeof(v));                                                 \
        (lo) += SML_F32X4_TO_F64X4(half_[0]);                                           \
        (hi) += SML_F32X4_TO_F64X4(half_[1]);                                           \
    } while (0)

typedef struct { sml_f64x4 v[2]; } sml_f64x4x2;

#define SML_VEXP_GROUP_D(xp, m, v, out)                                                 \
    do {                                                                                \
        sml_f64x4 d0_, d1_;                                                             \
        memcpy(&d0_, (xp), sizeof d0_);                                                 \
        memcpy(&d1_, (xp) + 4, sizeof d1_);                                             \
        d0_ = d0_ - (m);                                                                \
        d1_ = d1_ - (m);                                                                \
        (out) = ~((sml_f64x4)((sml_u64x4)d0_ & 0x7FFFFFFFFFFFFFFFu) <= SML_EXP_INRANGE)  \
              | ~((sml_f64x4)((sml_u64x4)d1_ & 0x7FFFFFFFFFFFFFFFu) <= SML_EXP_INRANGE); \
        SML_EXP_X4_INRANGE(d0_, (v).v[0]);                                              \
        SML_EXP_X4_INRANGE(d1_, (v).v[1]);                                              \
    } while (0)

#define SML_VSUM_GROUP_D(ep, v, lo, hi, ones)                                           \
    do {                                                                                \
        sml_i64x4 one0_, one1_;                                                         \
        memcpy((ep), &(v).v[0], sizeof(v).v[0]);                                        \
        memcpy((ep) + 4, &(v).v[1], sizeof(v).v[1]);                                    \
        one0_ = (v).v[0] == 1.0;                                                        \
        one1_ = (v).v[1] == 1.0;                                                        \
        (ones) += one0_;                                                                \
        (ones) += one1_;                                                                \
        (lo) += (sml_f64x4)((sml_i64x4)(v).v[0] & ~one0_);                              \
        (hi) += (sml_f64x4)((sml_i64x4)(v).v[1] & ~one1_);                              \
    } while (0)
#endif

#define SML_T float
#define SML_SUFFIX f
#define SML_EXP sml_expf
#define SML_COUNT int32_t
/* The vector path for float needs AVX: without it gcc 12 splits the 8-float compares into
 * scalar ones, and the path is 2x slower than the plain loops (SSE2 build, measured). */
#if SML_HAVE_VEXP && defined(__AVX__)
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
#include "_rowops_template.h" /* which #undefs its parameters */

#define SML_T double
#define SML_SUFFIX d
#define SML_EXP sml_exp
#define SML_COUNT int64_t
#define SML_VEXP_ON SML_HAVE_VEXP
#if SML_VEXP_ON
#define SML_VMASK sml_i64x4
#define SML_VGROUP_T SML_VGROUP_T_D
#define SML_VEXP_GROUP SML_VEXP_GROUP_D
#define SML_VSUM_GROUP SML_VSUM_GROUP_D
#endif
#include "_rowops_template.h" /* which #undefs its parameters */

#endif /* SOFTMAXLOSS_ROWOPS_H */

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

/* The lanes' total, always in this order. */
#define SML_LANE_TOTAL(acc)                                                            \
    (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])))

#define SML_JOIN2(name, suffix) name##_##suffix
#define SML_JOIN(name, suffix) SML_JOIN2(name, suffix)
#define SML_NAME(name) SML_JOIN(name, SML_SUFFIX)

#define SML_T float
#define SML_SUFFIX f
#define SML_EXP sml_expf
#define SML_COUNT int32_t
#include "_rowops_template.h"
#undef SML_T
#undef SML_SUFFIX
#undef SML_EXP
#undef SML_COUNT

#define SML_T double
#define SML_SUFFIX d
#define SML_EXP sml_exp
#define SML_COUNT int64_t
#include "_rowops_template.h"
#undef SML_T
#undef SML_SUFFIX
#undef SML_EXP
#undef SML_COUNT

#endif /* SOFTMAXLOSS_ROWOPS_H */

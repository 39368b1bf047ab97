/*
 * Vector types and macros of the softmaxloss kernels' C: the GNU vector-extension types
 * the vectorised exp (_fastexp.h) and the fused exp-and-sum of _rowops.h compute on, the
 * few operations on them that are named by instruction where the generic form compiles
 * badly, and the `omp simd` hint. Each type is 32 bytes whatever the target: the compiler
 * maps it onto what the target has (one AVX register, two SSE2 ones), so results do not
 * depend on the vector width (AVX-512 builds add 64-byte types, for code that gives the
 * 32-byte code's bits). Which instruction set a translation unit targets is _platform.h's
 * (SML_TARGET_*).
 */
#ifndef SOFTMAXLOSS_VECTOR_H
#define SOFTMAXLOSS_VECTOR_H

#include <stdint.h>
#include <string.h>

#include "_platform.h"

/* `#pragma omp simd` needs -fopenmp or -fopenmp-simd (gcc, clang); MSVC's OpenMP 2.0
 * has no simd construct, so there the loops are left to the auto-vectoriser. */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(_MSC_VER)
#define SML_PRAGMA(text) _Pragma(#text)
#define SML_SIMD_MAX(var) SML_PRAGMA(omp simd reduction(max : var))
#else
#define SML_SIMD_MAX(var)
#endif

/* GNU vector extensions (gcc, clang): SML_HAVE_VEXP says whether they are used (define
 * SML_NO_VECTOR_EXTENSIONS to do without them: the plain loops then). Vectors are passed
 * to macros, not functions: gcc warns (-Wpsabi) about passing 32-byte vectors by value
 * without AVX. */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(SML_NO_VECTOR_EXTENSIONS)
#define SML_HAVE_VEXP 1
typedef float sml_f32x8 __attribute__((vector_size(32)));
typedef int32_t sml_i32x8 __attribute__((vector_size(32)));
typedef uint32_t sml_u32x8 __attribute__((vector_size(32)));
typedef float sml_f32x4 __attribute__((vector_size(16)));
typedef double sml_f64x4 __attribute__((vector_size(32)));
typedef int64_t sml_i64x4 __attribute__((vector_size(32)));
typedef uint64_t sml_u64x4 __attribute__((vector_size(32)));

/* 8 doubles, as two vectors (the double counterpart of one sml_f32x8). */
typedef struct { sml_f64x4 v[2]; } sml_f64x4x2;

/* 64-byte vectors, for AVX-512 only (one ZMM register each): the fused exp-and-sum's wider
 * loop (_rowops.h, under SML_TARGET_AVX512), which gives the 32-byte code's bits. */
#if SML_TARGET_AVX512
typedef float sml_f32x16 __attribute__((vector_size(64)));
typedef uint32_t sml_u32x16 __attribute__((vector_size(64)));
typedef double sml_f64x8 __attribute__((vector_size(64)));
typedef uint64_t sml_u64x8 __attribute__((vector_size(64)));
#endif

/* 4 floats to 4 doubles: gcc 12 makes two 2-wide conversions and a shuffle of
 * __builtin_convertvector here, so with AVX the instruction is named. */
#if SML_TARGET_AVX
#include <immintrin.h>
#define SML_F32X4_TO_F64X4(v) ((sml_f64x4)_mm256_cvtps_pd((__m128)(v)))
#else
#define SML_F32X4_TO_F64X4(v) __builtin_convertvector(v, sml_f64x4)
#endif

/* Whether any bit of a 32-byte mask is set (vptest with AVX). */
#if SML_TARGET_AVX
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
#else
#define SML_HAVE_VEXP 0
#endif

#endif /* SOFTMAXLOSS_VECTOR_H */

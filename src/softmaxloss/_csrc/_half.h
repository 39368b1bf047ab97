/*
 * Half-precision storage of the softmaxloss kernels: bfloat16 and float16 rows converted to
 * float32 scratch and back (the arithmetic is the float32 kernels'; see _kernels_half.pxi).
 *
 * Storage is uint16_t: the kernels never see a half type, only its bits. Every conversion is
 * plain integer and float32 code, branch-free (selects, so that gcc vectorises the loops)
 * and the same on every build and platform: no F16C, AVX512_BF16 or _Float16, whose
 * availability differs between builds. Half -> float32 is exact. Float32 -> half rounds
 * once, to nearest with ties to even, as IEEE 754's default rounding (and PyTorch's,
 * NumPy's and ml_dtypes' own conversions); a NaN stays a NaN of the same sign (made quiet),
 * +-inf stays +-inf, and a finite value beyond the half range rounds to +-inf as IEEE 754
 * says (bfloat16 max 3.39e38, float16 max 65504).
 *
 * Kinds: SML_HALF_BF16 (0) and SML_HALF_F16 (1), chosen once per call, outside the loops.
 */
#ifndef SOFTMAXLOSS_HALF_H
#define SOFTMAXLOSS_HALF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define SML_HALF_BF16 0
#define SML_HALF_F16 1

static inline uint32_t sml_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float sml_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- bfloat16: the top 16 bits of a float32 ------------------------------------------ */

static inline float sml_bf16_to_f32(uint16_t h)
{
    return sml_bits_f32((uint32_t)h << 16);
}

static inline uint16_t sml_f32_to_bf16(float f)
{
    uint32_t u = sml_f32_bits(f);
    /* round to nearest even: add 0x7fff plus the lowest kept bit, then truncate; a carry
     * into the exponent is the right result (up to the next binade, or to inf) */
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t quiet_nan = (u >> 16) | 0x0040u; /* keeps the sign and the payload's top bits */
    int is_nan = (u & 0x7fffffffu) > 0x7f800000u;
    return (uint16_t)(is_nan ? quiet_nan : rounded);
}

/* ---- float16 (IEEE binary16): 5 exponent bits, 10 fraction bits ---------------------- */

static inline float sml_f16_to_f32(uint16_t h)
{
    /* exact: the exponent rebiased; a subnormal made normal by one float32 subtraction
     * (exact), inf / NaN given float32's all-ones exponent */
    uint32_t magnitude = ((uint32_t)h & 0x7fffu) << 13;
    uint32_t exponent = magnitude & 0x0f800000u; /* 0x7c00 << 13 */
    uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    uint32_t normal = magnitude + ((uint32_t)(127 - 15) << 23);
    uint32_t special = normal + ((uint32_t)(128 - 16) << 23);           /* inf, NaN */
    float subnormal = sml_bits_f32(normal + (1u << 23)) - sml_bits_f32(113u << 23);
    uint32_t bits = exponent == 0x0f800000u ? special
                  : exponent == 0 ? sml_f32_bits(subnormal) : normal;
    return sml_bits_f32(bits | sign);
}

static inline uint16_t sml_f32_to_f16(float f)
{
    uint32_t u = sml_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    /* normal results: rebias, then round to nearest even on the 13 dropped bits (a carry
     * into the exponent is right, up to 0x7c00 = inf) */
    uint32_t normal = (a + ((uint32_t)(15 - 127) << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
    /* subnormal results (|f| < 2^-14): adding 0.5 puts the 10 fraction bits of the result
     * at the bottom of a float32, rounded to nearest even by the addition itself (the
     * float32 default rounding, never changed by this package) */
    uint32_t subnormal = sml_f32_bits(sml_bits_f32(a) + 0.5f) - 0x3f000000u;
    uint32_t nan = 0x7e00u | ((a >> 13) & 0x03ffu);
    uint32_t result = a > 0x7f800000u ? nan                        /* NaN: quiet NaN */
                    : a >= 0x47800000u ? 0x7c00u                   /* >= 2^16: inf */
                    : a < 0x38800000u ? subnormal                  /* < 2^-14 */
                    : normal;
    return (uint16_t)(result | sign);
}

/* ---- rows ---------------------------------------------------------------------------
 * One row of n values between half storage (element c at src + c * step bytes) and a
 * contiguous float32 row. The contiguous case is its own loop (vectorised). */

static inline void sml_half_load(int kind, const char *src, ptrdiff_t step, ptrdiff_t n,
                                 float *dst)
{
    ptrdiff_t c;
    if (step == (ptrdiff_t)sizeof(uint16_t)) {
        const uint16_t *h = (const uint16_t *)src;
        if (kind == SML_HALF_BF16) {
            for (c = 0; c < n; c++)
                dst[c] = sml_bf16_to_f32(h[c]);
        } else {
            for (c = 0; c < n; c++)
                dst[c] = sml_f16_to_f32(h[c]);
        }
        return;
    }
    for (c = 0; c < n; c++) {
        uint16_t h;
        memcpy(&h, src + c * step, sizeof h);
        dst[c] = kind == SML_HALF_BF16 ? sml_bf16_to_f32(h) : sml_f16_to_f32(h);
    }
}

static inline void sml_half_store(int kind, const float *src, ptrdiff_t n, char *dst,
                                  ptrdiff_t step)
{
    ptrdiff_t c;
    if (step == (ptrdiff_t)sizeof(uint16_t)) {
        uint16_t *h = (uint16_t *)dst;
        if (kind == SML_HALF_BF16) {
            for (c = 0; c < n; c++)
                h[c] = sml_f32_to_bf16(src[c]);
        } else {
            for (c = 0; c < n; c++)
                h[c] = sml_f32_to_f16(src[c]);
        }
        return;
    }
    for (c = 0; c < n; c++) {
        uint16_t h = kind == SML_HALF_BF16 ? sml_f32_to_bf16(src[c]) : sml_f32_to_f16(src[c]);
        memcpy(dst + c * step, &h, sizeof h);
    }
}

#endif /* SOFTMAXLOSS_HALF_H */

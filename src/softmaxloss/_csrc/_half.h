/*
 * Half-precision storage of the softmaxloss kernels: bfloat16 and float16 rows converted to
 * float32 scratch and back (the arithmetic is the float32 kernels'; see _kernels_half.pxi).
 *
 * Storage is uint16_t: the kernels never see a half type, only its bits. Every conversion is
 * plain integer and float32 code, branch-free (selects, so that gcc vectorises the loops)
 * and the same on every build and platform: no F16C, AVX512_BF16 or _Float16, whose
 * availability differs between builds (but AVX-512 F's float16 conversions in the avx512
 * build, where they were checked to give the same bits: below). Half -> float32 is exact. Float32 -> half rounds
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

/* AVX2 builds convert 8 values at a time in vector registers (sml__*8 below): the same
 * integer operations and float32 additions as the scalar conversions, lane by lane, so the
 * same bits; every other build takes the scalar loops. AVX-512 builds (F, BW, DQ, VL) convert
 * 16 at a time (sml__*16): bfloat16 by the same integer operations on ZMM registers, float16
 * by AVX-512 F's own conversions (vcvtph2ps; vcvtps2ph with round-to-nearest-even as its
 * immediate), which give the scalar conversions' bits on every input but one kind: checked
 * on all 2^32 float32 values (float32 -> float16: the same bits) and all 2^16 float16 values
 * (float16 -> float32: the same but for signalling NaNs, which vcvtph2ps makes quiet: a
 * group of 16 with a NaN takes the integer conversion). */
#if defined(__AVX2__)
#define SML_HALF_AVX2 1
#include <immintrin.h>
#else
#define SML_HALF_AVX2 0
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define SML_HALF_AVX512 1
#else
#define SML_HALF_AVX512 0
#endif

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

/* ---- 8 values in AVX2 registers ------------------------------------------------------
 * The scalar conversions above, each operation on 8 lanes (the selects as blends): bitwise
 * the same results. Values as 32-bit lanes; sml__half_store8 narrows them (all <= 0xffff). */
#if SML_HALF_AVX2
static inline __m256 sml__bf16_to_f32_8(const uint16_t *h)
{
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)h));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

static inline __m256 sml__f16_to_f32_8(const uint16_t *h)
{
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)h));
    __m256i magnitude = _mm256_slli_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fff)), 13);
    __m256i exponent = _mm256_and_si256(magnitude, _mm256_set1_epi32(0x0f800000));
    __m256i sign = _mm256_slli_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x8000)), 16);
    __m256i normal = _mm256_add_epi32(magnitude, _mm256_set1_epi32((127 - 15) << 23));
    __m256i special = _mm256_add_epi32(normal, _mm256_set1_epi32((128 - 16) << 23));
    __m256 subnormal = _mm256_sub_ps(
        _mm256_castsi256_ps(_mm256_add_epi32(normal, _mm256_set1_epi32(1 << 23))),
        _mm256_castsi256_ps(_mm256_set1_epi32(113 << 23)));
    __m256i is_special = _mm256_cmpeq_epi32(exponent, _mm256_set1_epi32(0x0f800000));
    __m256i is_zero = _mm256_cmpeq_epi32(exponent, _mm256_setzero_si256());
    __m256i bits = _mm256_blendv_epi8(normal, _mm256_castps_si256(subnormal), is_zero);
    bits = _mm256_blendv_epi8(bits, special, is_special);
    return _mm256_castsi256_ps(_mm256_or_si256(bits, sign));
}

static inline __m256i sml__f32_to_bf16_8(__m256 f)
{
    __m256i u = _mm256_castps_si256(f);
    __m256i one = _mm256_set1_epi32(1);
    __m256i rounded = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)),
                         _mm256_and_si256(_mm256_srli_epi32(u, 16), one)), 16);
    __m256i quiet_nan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x0040));
    /* |u| and 0x7f800000 are non-negative as int32: the signed compare is the unsigned one */
    __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                        _mm256_set1_epi32(0x7f800000));
    return _mm256_blendv_epi8(rounded, quiet_nan, is_nan);
}

static inline __m256i sml__f32_to_f16_8(__m256 f)
{
    __m256i u = _mm256_castps_si256(f);
    __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x8000));
    __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
    __m256i normal = _mm256_srli_epi32(
        _mm256_add_epi32(
            _mm256_add_epi32(a, _mm256_set1_epi32((int32_t)(((uint32_t)(15 - 127) << 23) + 0xfffu))),
            _mm256_and_si256(_mm256_srli_epi32(a, 13), _mm256_set1_epi32(1))), 13);
    __m256i subnormal = _mm256_sub_epi32(
        _mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(a), _mm256_set1_ps(0.5f))),
        _mm256_set1_epi32(0x3f000000));
    __m256i nan = _mm256_or_si256(
        _mm256_set1_epi32(0x7e00),
        _mm256_and_si256(_mm256_srli_epi32(a, 13), _mm256_set1_epi32(0x03ff)));
    /* a <= 0x7fffffff: signed compares are the unsigned ones */
    __m256i is_small = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x38800000), a);
    __m256i is_big = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x47800000 - 1));
    __m256i is_nan = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7f800000));
    __m256i result = _mm256_blendv_epi8(normal, subnormal, is_small);
    result = _mm256_blendv_epi8(result, _mm256_set1_epi32(0x7c00), is_big);
    result = _mm256_blendv_epi8(result, nan, is_nan);
    return _mm256_or_si256(result, sign);
}

static inline void sml__half_store8(uint16_t *dst, __m256i v)
{
    __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storeu_si128((__m128i *)dst, packed);
}

/* (float)((double)e[k] * scale) for 8 entries: each product in double, rounded once to
 * float32 (vcvtpd2ps rounds to nearest, as the C conversion) */
static inline __m256 sml__scale8(const float *e, __m256d scale)
{
    __m256d lo = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(e)), scale);
    __m256d hi = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(e + 4)), scale);
    return _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
}

/* 16 values (two vectors of 32-bit lanes, all <= 0xffff) narrowed and stored in order */
static inline void sml__half_store16(uint16_t *dst, __m256i a, __m256i b)
{
    __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
    _mm256_storeu_si256((__m256i *)dst, packed);
}
#endif

/* ---- 16 values in AVX-512 registers (see SML_HALF_AVX512 above) ---------------------- */
#if SML_HALF_AVX512
#define SML__F16_ROUNDING (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

static inline void sml__bf16_load16(const uint16_t *h, float *dst)
{
    __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)h));
    _mm512_storeu_ps(dst, _mm512_castsi512_ps(_mm512_slli_epi32(u, 16)));
}

static inline void sml__f16_load16(const uint16_t *h, float *dst)
{
    __m256i v = _mm256_loadu_si256((const __m256i *)h);
    __mmask16 nan = _mm256_cmpgt_epu16_mask(_mm256_and_si256(v, _mm256_set1_epi16(0x7fff)),
                                           _mm256_set1_epi16(0x7c00));
    if (nan) { /* signalling NaNs stay signalling, as the scalar conversion keeps them */
        _mm256_storeu_ps(dst, sml__f16_to_f32_8(h));
        _mm256_storeu_ps(dst + 8, sml__f16_to_f32_8(h + 8));
    } else {
        _mm512_storeu_ps(dst, _mm512_cvtph_ps(v));
    }
}

/* sml__f32_to_bf16_8's operations on 16 lanes, narrowed (all <= 0xffff) */
static inline __m256i sml__f32_to_bf16_16(__m512 f)
{
    __m512i u = _mm512_castps_si512(f);
    __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                         _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))), 16);
    __m512i quiet_nan = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x0040));
    __mmask16 is_nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                               _mm512_set1_epi32(0x7f800000));
    return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(is_nan, rounded, quiet_nan));
}

static inline __m256i sml__f32_to_half16(int kind, __m512 f)
{
    return kind == SML_HALF_BF16 ? sml__f32_to_bf16_16(f) : _mm512_cvtps_ph(f, SML__F16_ROUNDING);
}

/* sml__scale8's products for 16 entries */
static inline __m512 sml__scale16(const float *e, __m512d scale)
{
    __m256 lo = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtps_pd(_mm256_loadu_ps(e)), scale));
    __m256 hi = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtps_pd(_mm256_loadu_ps(e + 8)), scale));
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}
#endif

/* ---- rows ---------------------------------------------------------------------------
 * One row of n values between half storage (element c at src + c * step bytes) and a
 * contiguous float32 row. The contiguous case is its own loop (vectorised). */

static inline void sml_half_load(int kind, const char *src, ptrdiff_t step, ptrdiff_t n,
                                 float *dst)
{
    ptrdiff_t c = 0;
    if (step == (ptrdiff_t)sizeof(uint16_t)) {
        const uint16_t *h = (const uint16_t *)src;
        if (kind == SML_HALF_BF16) {
#if SML_HALF_AVX512
            for (; c + 16 <= n; c += 16) sml__bf16_load16(h + c, dst + c);
#endif
#if SML_HALF_AVX2
            for (; c + 8 <= n; c += 8) _mm256_storeu_ps(dst + c, sml__bf16_to_f32_8(h + c));
#endif
            for (; c < n; c++)
                dst[c] = sml_bf16_to_f32(h[c]);
        } else {
#if SML_HALF_AVX512
            for (; c + 16 <= n; c += 16) sml__f16_load16(h + c, dst + c);
#endif
#if SML_HALF_AVX2
            for (; c + 8 <= n; c += 8) _mm256_storeu_ps(dst + c, sml__f16_to_f32_8(h + c));
#endif
            for (; c < n; c++)
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
    ptrdiff_t c = 0;
    if (step == (ptrdiff_t)sizeof(uint16_t)) {
        uint16_t *h = (uint16_t *)dst;
#if SML_HALF_AVX512
        for (; c + 16 <= n; c += 16)
            _mm256_storeu_si256((__m256i *)(h + c), sml__f32_to_half16(kind, _mm512_loadu_ps(src + c)));
#endif
        if (kind == SML_HALF_BF16) {
#if SML_HALF_AVX2
            for (; c + 16 <= n; c += 16)
                sml__half_store16(h + c, sml__f32_to_bf16_8(_mm256_loadu_ps(src + c)),
                                  sml__f32_to_bf16_8(_mm256_loadu_ps(src + c + 8)));
            for (; c + 8 <= n; c += 8)
                sml__half_store8(h + c, sml__f32_to_bf16_8(_mm256_loadu_ps(src + c)));
#endif
            for (; c < n; c++)
                h[c] = sml_f32_to_bf16(src[c]);
        } else {
#if SML_HALF_AVX2
            for (; c + 16 <= n; c += 16)
                sml__half_store16(h + c, sml__f32_to_f16_8(_mm256_loadu_ps(src + c)),
                                  sml__f32_to_f16_8(_mm256_loadu_ps(src + c + 8)));
            for (; c + 8 <= n; c += 8)
                sml__half_store8(h + c, sml__f32_to_f16_8(_mm256_loadu_ps(src + c)));
#endif
            for (; c < n; c++)
                h[c] = sml_f32_to_f16(src[c]);
        }
        return;
    }
    for (c = 0; c < n; c++) {
        uint16_t h = kind == SML_HALF_BF16 ? sml_f32_to_bf16(src[c]) : sml_f32_to_f16(src[c]);
        memcpy(dst + c * step, &h, sizeof h);
    }
}

/* dst[c] = (float)((double)e[c] * scale) rounded once to half, for a contiguous half row:
 * the plain cross-entropy gradient's last pass (row_loss_grad_index's e_c p_scale in
 * double, rounded to float32) and sml_half_store in one loop, without a float32 row between. */
static inline void sml_half_scaled_store(int kind, const float *e, ptrdiff_t n, double scale,
                                         uint16_t *dst)
{
    ptrdiff_t c = 0;
#if SML_HALF_AVX512
    __m512d s16 = _mm512_set1_pd(scale);
    if (kind == SML_HALF_BF16) {
        for (; c + 16 <= n; c += 16)
            _mm256_storeu_si256((__m256i *)(dst + c), sml__f32_to_bf16_16(sml__scale16(e + c, s16)));
    } else {
        for (; c + 16 <= n; c += 16)
            _mm256_storeu_si256((__m256i *)(dst + c),
                                _mm512_cvtps_ph(sml__scale16(e + c, s16), SML__F16_ROUNDING));
    }
#endif
#if SML_HALF_AVX2
    __m256d s = _mm256_set1_pd(scale);
    if (kind == SML_HALF_BF16) {
        for (; c + 16 <= n; c += 16)
            sml__half_store16(dst + c, sml__f32_to_bf16_8(sml__scale8(e + c, s)),
                              sml__f32_to_bf16_8(sml__scale8(e + c + 8, s)));
    } else {
        for (; c + 16 <= n; c += 16)
            sml__half_store16(dst + c, sml__f32_to_f16_8(sml__scale8(e + c, s)),
                              sml__f32_to_f16_8(sml__scale8(e + c + 8, s)));
    }
#endif
    if (kind == SML_HALF_BF16) {
        for (; c < n; c++) dst[c] = sml_f32_to_bf16((float)((double)e[c] * scale));
    } else {
        for (; c < n; c++) dst[c] = sml_f32_to_f16((float)((double)e[c] * scale));
    }
}

#endif /* SOFTMAXLOSS_HALF_H */

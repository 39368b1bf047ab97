/*
 * Block primitives of the softmaxloss kernels: moving a block of rows with few classes
 * between its memory layout (rows of n classes) and the transposed scratch the block
 * path computes on (n lines of rows, line c holding class c of every row, `ld` apart).
 *
 *   sml_block_load_*(rows, step, count, n, xt, ld):
 *       xt[c * ld + i] = element c of rows[i]   (i < count, c < n; elements `step`
 *       bytes apart), and xt[c * ld + i] = 0 for count <= i < count rounded up to
 *       the tile height (8 floats, 4 doubles; ld must be a multiple of 8).
 *   sml_block_store_grad_*(rows, step, count, n, et, ld, p_scale, [p_lo,] smooth_scale, w):
 *       element c of rows[i] = (T)(p_scale[i] * et[c * ld + i] - smooth_scale[i] * w[c])
 *       in double (w NULL: all ones), for i < count, c < n: the gradient off the label;
 *       the double one with p_scale[i] + p_lo[i] as the scale, its product with et and
 *       the sum rounded once (one fma; issue 19).
 *
 * Why C: with AVX2 and contiguous rows both run on 8 x 8 (float; 8 x 4 for at most
 * 4 classes) or 4 x 4 (double) tiles transposed in registers, the rows loaded and
 * stored whole (a row's end by a masked load and narrower plain stores: nothing outside
 * a row is read or written), instead of one scalar load and store per element: 1.1-1.2x
 * for the whole block path at 4-16 classes (interleaved A/B). Every
 * row of a block goes through the same vector arithmetic (a short last tile is padded
 * with zeros, not finished by scalar code), so a row's bits do not depend on where it
 * lies in its block. Elsewhere (other layouts, instruction sets without tiles) the plain
 * loops.
 */
#ifndef SOFTMAXLOSS_BLOCKOPS_H
#define SOFTMAXLOSS_BLOCKOPS_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "_platform.h"
#include "_rowops.h" /* SML__TWO_PROD */

/* The tiles of an instruction set go under its SML_TARGET_* (_platform.h): the AVX2 ones
 * also serve the AVX-512 build, which has no tiles of its own (AVX-512's mask registers
 * would finish a row's end in one masked load or store: not written, as no machine here
 * can run it). */
#if SML_TARGET_AVX2_FMA
#include <immintrin.h>
#define SML_BLOCK_SIMD 1
#else
#define SML_BLOCK_SIMD 0
#endif

/* The plain loads pad each line of xt with zeros up to a multiple of this many rows
 * (the tallest tile), so that a tiled store may follow them. */
#define SML_BLOCK_PAD 8

/* ---- the block's float64 scales (issue 19), from one division per row -----------
 * sml_block_quot_pair(num, num2, s, s_lo, w, &lo, &q2, &lo2): num / ((s + s_lo) w) as
 * q + lo, and num2 / ((s + s_lo) w) as q2 + lo2 (the return value is q), each pair within
 * a few units of 2^-104 of its quotient as sml_quot_dd's: d + d_lo = (s + s_lo) w, then
 * 1/d once, each q its numerator times 1/d (within ~1.5 ulps of the quotient), the
 * residual num - q d exact (SML__TWO_PROD; Sterbenz) less q d_lo, and lo the residual
 * times 1/d, whose own rounding is ~2^-106 of q. One division where sml_quot_dd twice
 * takes four, and no branch: the block's loop over its rows vectorises. Valid where
 * sml_block_quot_ok(s, w) (d and 1/d normal); the caller takes sml_quot_dd elsewhere. */
static inline double sml_block_quot_pair(double num, double num2, double s, double s_lo,
                                         double w, double *lo, double *q2, double *lo2)
{
    double d, d_lo, inv, q, t, p, p_lo, r;
    SML__TWO_PROD(s, w, d, d_lo);
    d_lo += s_lo * w;
    inv = 1.0 / d;
    q = num * inv;
    SML__TWO_PROD(q, d, p, p_lo);
    r = ((num - p) - p_lo) - q * d_lo;
    *lo = isfinite(q) ? r * inv : 0.0;
    t = num2 * inv;
    SML__TWO_PROD(t, d, p, p_lo);
    r = ((num2 - p) - p_lo) - t * d_lo;
    *lo2 = isfinite(t) ? r * inv : 0.0;
    *q2 = t;
    return q;
}

static inline int sml_block_quot_ok(double s, double w)
{
    double d = fabs(s * w);
    return d >= 1e-300 && d <= 1e300;
}

/* sml_block_p_lo(count, s, w_y, excess, total, total_lo, label, e_y, w, p_scale, p_lo,
 * label_grad): block_p_lo's loop (_kernels_block.pxi) along a block's rows, in C so that
 * it has no branch (Cython's `and` branches) and vectorises: for each row kept (label >= 0,
 * p_scale finite) whose S W is in sml_block_quot_ok's range, p_scale = s w_y / (S W) as
 * p_scale + p_lo, and where e_y = 1 the label's entry -(s w_y excess) / (S W); elsewhere
 * p_lo = 0 and p_scale, label_grad unchanged. Returns the number of kept rows out of range
 * (the caller does them by sml_quot_dd). */
#if defined(__GNUC__) || defined(_MSC_VER)
#define SML__BLOCK_RESTRICT __restrict
#else
#define SML__BLOCK_RESTRICT
#endif
static inline ptrdiff_t sml_block_p_lo(ptrdiff_t count, const double *SML__BLOCK_RESTRICT s,
                                       const double *SML__BLOCK_RESTRICT w_y, const double *SML__BLOCK_RESTRICT excess,
                                       const double *SML__BLOCK_RESTRICT total,
                                       const double *SML__BLOCK_RESTRICT total_lo,
                                       const ptrdiff_t *SML__BLOCK_RESTRICT label,
                                       const double *SML__BLOCK_RESTRICT e_y, double w,
                                       double *SML__BLOCK_RESTRICT p_scale, double *SML__BLOCK_RESTRICT p_lo,
                                       double *SML__BLOCK_RESTRICT label_grad)
{
    ptrdiff_t redo = 0;
    for (ptrdiff_t i = 0; i < count; i++) {
        double num = s[i] * w_y[i], lo, q2, lo2;
        double q = sml_block_quot_pair(num, num * excess[i], total[i], total_lo[i], w, &lo, &q2,
                                       &lo2);
        int kept = (label[i] >= 0) & (fabs(p_scale[i]) <= DBL_MAX);
        int ok = sml_block_quot_ok(total[i], w);
        int use = kept & ok;
        redo += kept & !ok;
        p_scale[i] = use ? q : p_scale[i];
        p_lo[i] = use ? lo : 0.0;
        label_grad[i] = (use & (e_y[i] == 1.0)) ? -(q2 + lo2) : label_grad[i];
    }
    return redo;
}

/* ---- the block's exponentials in range -------------------------------------
 * sml_block_in_range_f/_d(xt, ld, count, n, m): whether every x - m of a block
 * (xt[c * ld + i] - m[i], i < count, c < n; m[i] row i's max) rounds into
 * [-SML_EXPF_INRANGE, 0] ([-SML_EXP_INRANGE, 0]), where exp(x - m) is a normal number; a
 * NaN or infinite difference (a row with NaN, +inf or -inf) is not. There
 * sml_block_exp_sub_f/_d(x, m) is sml_expf_sub / sml_exp_sub(x, m) bitwise (the same
 * exact difference and SML__EXP*_CORE_LO; no clamps, and 2^n as one factor: p 2^n is the
 * exact product rounded once, what (p 2^n1) 2^n2 gives for a normal result), the scalar
 * form of SML_EXPF_X8_INRANGE_LO / SML_EXP_X4_INRANGE_LO for the block's loops along the
 * rows (vectorised by gcc: the clamps' compares and blends are most of the clamped
 * form's cost there). One pass with no branch; an integer as wide as the element, so
 * that it vectorises. */
#define SML__BLOCK_IN_RANGE(NAME, T, COUNT_T, RANGE)                                   \
    static inline int NAME(const T *xt, ptrdiff_t ld, ptrdiff_t count, ptrdiff_t n,    \
                           const T *m)                                                  \
    {                                                                                  \
        COUNT_T out = 0;                                                               \
        for (ptrdiff_t c = 0; c < n; c++)                                              \
            for (ptrdiff_t i = 0; i < count; i++)                                      \
                out |= !(xt[c * ld + i] - m[i] >= -(RANGE));                           \
        return out == 0;                                                               \
    }
SML__BLOCK_IN_RANGE(sml_block_in_range_f, float, int32_t, SML_EXPF_INRANGE)
SML__BLOCK_IN_RANGE(sml_block_in_range_d, double, int64_t, SML_EXP_INRANGE)

static inline float sml_block_exp_sub_f(float x, float m)
{
    float d, lo, t, p;
    SML__TWO_DIFF(float, x, m, d, lo);
    SML__EXPF_CORE_LO(float, d, lo, t, p);
    return p * sml__f32_from_bits((sml__f32_bits(t) + 127u) << 23);
}

static inline double sml_block_exp_sub_d(double x, double m)
{
    double d, lo, t, p;
    SML__TWO_DIFF(double, x, m, d, lo);
    SML__EXP_CORE_LO(double, d, lo, t, p);
    return p * sml__f64_from_bits((sml__f64_bits(t) + 1023u) << 52);
}

/* ---- plain loops: any layout, any instruction set -------------------------- */

#define SML_BLOCK_LOAD_LOOP(T)                                                         \
    for (ptrdiff_t c = 0; c < n; c++) {                                                \
        for (ptrdiff_t i = 0; i < count; i++)                                          \
            xt[c * ld + i] = *(const T *)(rows[i] + c * step);                         \
        for (ptrdiff_t i = count; i < ld && i % SML_BLOCK_PAD != 0; i++)               \
            xt[c * ld + i] = 0;                                                        \
    }

#define SML_BLOCK_STORE_LOOP(T)                                                        \
    for (ptrdiff_t i = 0; i < count; i++)                                              \
        for (ptrdiff_t c = 0; c < n; c++)                                              \
            *(T *)(rows[i] + c * step) =                                               \
                (T)(p_scale[i] * (double)et[c * ld + i]                                \
                    - smooth_scale[i] * (w != NULL ? w[c] : 1.0));

/* The same with p_scale as hi + lo (p_lo): p_scale e + (p_lo e - smooth_scale w), the first
 * product and the sum by one fma where the target has it; p_lo e is 0 where p_lo is (a row
 * whose gradient is already in et, p_scale = 1: e may be inf, and 0 * inf = NaN). */
#if defined(__FMA__)
#define SML__BLOCK_FMA(a, b, c) fma((a), (b), (c))
#else
#define SML__BLOCK_FMA(a, b, c) ((a) * (b) + (c))
#endif
#define SML_BLOCK_STORE_LOOP_LO(T)                                                     \
    for (ptrdiff_t i = 0; i < count; i++)                                              \
        for (ptrdiff_t c = 0; c < n; c++)                                              \
            *(T *)(rows[i] + c * step) = (T)SML__BLOCK_FMA(                            \
                p_scale[i], (double)et[c * ld + i],                                    \
                (p_lo[i] != 0.0 ? p_lo[i] * (double)et[c * ld + i] : 0.0)              \
                    - smooth_scale[i] * (w != NULL ? w[c] : 1.0));

#if SML_BLOCK_SIMD

/* ---- AVX2 tiles -------------------------------------------------------------- */

/* Lanes [0, k) set: the mask of a load or store of the first k elements. */
static inline __m256i sml__first_lanes32(ptrdiff_t k)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline __m256i sml__first_lanes64(ptrdiff_t k)
{
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x((long long)k), _mm256_setr_epi64x(0, 1, 2, 3));
}

/* r[k][j] <-> r[j][k] for an 8 x 8 tile of floats. */
static inline void sml__transpose8_ps(__m256 r[8])
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* The same for an 8 x 4 tile (at most 4 classes) held as r[k] = (row k, row k + 4),
 * k < 4: a 4 x 4 transpose within each 128-bit half gives r[c] = class c of rows 0..7,
 * and the inverse is the same operation. A third of the full tile's shuffles. */
static inline void sml__transpose8x4_ps(__m256 r[4])
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    r[0] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    r[1] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    r[2] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    r[3] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
}

/* Stores of the first k < 4 (float) or k < 2 (double) lanes of a 128-bit vector, by
 * plain narrower stores: masked stores are microcoded and slow on AMD CPUs. */
static inline void sml__store_first_ps128(float *dst, __m128 v, ptrdiff_t k)
{
    if (k >= 2) {
        _mm_storel_pi((__m64 *)dst, v);
        v = _mm_movehl_ps(v, v);
        dst += 2;
        k -= 2;
    }
    if (k >= 1) _mm_store_ss(dst, v);
}

static inline void sml__store_first_ps(float *dst, __m256 v, ptrdiff_t k)
{
    __m128 part = _mm256_castps256_ps128(v);
    if (k >= 4) {
        _mm_storeu_ps(dst, part);
        part = _mm256_extractf128_ps(v, 1);
        dst += 4;
        k -= 4;
    }
    sml__store_first_ps128(dst, part, k);
}

static inline void sml__store_first_pd(double *dst, __m256d v, ptrdiff_t k)
{
    __m128d part = _mm256_castpd256_pd128(v);
    if (k >= 2) {
        _mm_storeu_pd(dst, part);
        part = _mm256_extractf128_pd(v, 1);
        dst += 2;
        k -= 2;
    }
    if (k >= 1) _mm_store_sd(dst, part);
}

/* r[k][j] <-> r[j][k] for a 4 x 4 tile of doubles. */
static inline void sml__transpose4_pd(__m256d r[4])
{
    __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

/* The first `width` doubles of v, the rest 0 (the coefficients of a short last tile:
 * never read past the caller's arrays). */
static inline __m256d sml__load_first_pd(const double *v, ptrdiff_t width)
{
    return width >= 4 ? _mm256_loadu_pd(v) : _mm256_maskload_pd(v, sml__first_lanes64(width));
}

static inline void sml__block_load_tiles_f(const char *const *rows, ptrdiff_t count, ptrdiff_t n,
                                           float *xt, ptrdiff_t ld)
{
    for (ptrdiff_t i0 = 0; i0 < count; i0 += 8) {
        for (ptrdiff_t c0 = 0; c0 < n; c0 += 8) {
            ptrdiff_t cols = n - c0 < 8 ? n - c0 : 8;
            if (cols <= 4) {
                __m128i mask = _mm256_castsi256_si128(sml__first_lanes32(cols));
                __m128 half[8];
                __m256 r[4];
                for (int k = 0; k < 8; k++) {
                    const float *src = (const float *)rows[i0 + k < count ? i0 + k : 0] + c0;
                    half[k] = i0 + k >= count ? _mm_setzero_ps()
                            : cols == 4       ? _mm_loadu_ps(src)
                                              : _mm_maskload_ps(src, mask);
                }
                for (int k = 0; k < 4; k++) r[k] = _mm256_set_m128(half[k + 4], half[k]);
                sml__transpose8x4_ps(r);
                for (ptrdiff_t c = 0; c < cols; c++) _mm256_storeu_ps(xt + (c0 + c) * ld + i0, r[c]);
                continue;
            }
            __m256i mask = sml__first_lanes32(cols);
            __m256 r[8];
            for (int k = 0; k < 8; k++) {
                const float *src = (const float *)rows[i0 + k < count ? i0 + k : 0] + c0;
                r[k] = i0 + k >= count ? _mm256_setzero_ps()
                     : cols == 8       ? _mm256_loadu_ps(src)
                                       : _mm256_maskload_ps(src, mask);
            }
            sml__transpose8_ps(r);
            for (ptrdiff_t c = 0; c < cols; c++) _mm256_storeu_ps(xt + (c0 + c) * ld + i0, r[c]);
        }
    }
}

static inline void sml__block_load_tiles_d(const char *const *rows, ptrdiff_t count, ptrdiff_t n,
                                           double *xt, ptrdiff_t ld)
{
    for (ptrdiff_t i0 = 0; i0 < count; i0 += 4) {
        for (ptrdiff_t c0 = 0; c0 < n; c0 += 4) {
            ptrdiff_t cols = n - c0 < 4 ? n - c0 : 4;
            __m256i mask = sml__first_lanes64(cols);
            __m256d r[4];
            for (int k = 0; k < 4; k++) {
                const double *src = (const double *)rows[i0 + k < count ? i0 + k : 0] + c0;
                r[k] = i0 + k >= count ? _mm256_setzero_pd()
                     : cols == 4       ? _mm256_loadu_pd(src)
                                       : _mm256_maskload_pd(src, mask);
            }
            sml__transpose4_pd(r);
            for (ptrdiff_t c = 0; c < cols; c++) _mm256_storeu_pd(xt + (c0 + c) * ld + i0, r[c]);
        }
    }
}

/* An 8 x 8 (float) or 4 x 4 (double) tile r[c] (class c0 + c, lanes the rows), transposed
 * into its rows' classes c0 .. c0 + cols - 1 (rows[0 .. tile_rows)). */
static inline void sml__tile_out_f(char *const *rows, ptrdiff_t tile_rows, ptrdiff_t c0,
                                   ptrdiff_t cols, __m256 r[8])
{
    if (cols <= 4) {
        sml__transpose8x4_ps(r);
        for (ptrdiff_t k = 0; k < tile_rows; k++) {
            __m128 part = k < 4 ? _mm256_castps256_ps128(r[k]) : _mm256_extractf128_ps(r[k - 4], 1);
            float *dst = (float *)rows[k] + c0;
            if (cols == 4) _mm_storeu_ps(dst, part);
            else sml__store_first_ps128(dst, part, cols);
        }
        return;
    }
    sml__transpose8_ps(r);
    for (ptrdiff_t k = 0; k < tile_rows; k++) {
        float *dst = (float *)rows[k] + c0;
        if (cols == 8) _mm256_storeu_ps(dst, r[k]);
        else sml__store_first_ps(dst, r[k], cols);
    }
}

static inline void sml__tile_out_d(char *const *rows, ptrdiff_t tile_rows, ptrdiff_t c0,
                                   ptrdiff_t cols, __m256d r[4])
{
    sml__transpose4_pd(r);
    for (ptrdiff_t k = 0; k < tile_rows; k++) {
        double *dst = (double *)rows[k] + c0;
        if (cols == 4) _mm256_storeu_pd(dst, r[k]);
        else sml__store_first_pd(dst, r[k], cols);
    }
}

static inline void sml__block_store_tiles_f(char *const *rows, ptrdiff_t count, ptrdiff_t n,
                                            const float *et, ptrdiff_t ld, const double *p_scale,
                                            const double *smooth_scale, const double *w)
{
    for (ptrdiff_t i0 = 0; i0 < count; i0 += 8) {
        ptrdiff_t tile_rows = count - i0 < 8 ? count - i0 : 8;
        __m256d p_lo = sml__load_first_pd(p_scale + i0, tile_rows);
        __m256d p_hi = sml__load_first_pd(p_scale + i0 + 4, tile_rows - 4);
        __m256d s_lo = sml__load_first_pd(smooth_scale + i0, tile_rows);
        __m256d s_hi = sml__load_first_pd(smooth_scale + i0 + 4, tile_rows - 4);
        for (ptrdiff_t c0 = 0; c0 < n; c0 += 8) {
            ptrdiff_t cols = n - c0 < 8 ? n - c0 : 8;
            __m256 r[8];
            for (ptrdiff_t c = 0; c < 8; c++) {
                if (c >= cols) {
                    r[c] = _mm256_setzero_ps();
                    continue;
                }
                __m256 e = _mm256_loadu_ps(et + (c0 + c) * ld + i0);
                __m256d w_c = _mm256_set1_pd(w != NULL ? w[c0 + c] : 1.0);
                __m256d g_lo = _mm256_fmsub_pd(p_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)),
                                               _mm256_mul_pd(s_lo, w_c));
                __m256d g_hi = _mm256_fmsub_pd(p_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)),
                                               _mm256_mul_pd(s_hi, w_c));
                r[c] = _mm256_set_m128(_mm256_cvtpd_ps(g_hi), _mm256_cvtpd_ps(g_lo));
            }
            sml__tile_out_f(rows + i0, tile_rows, c0, cols, r);
        }
    }
}

static inline void sml__block_store_tiles_d(char *const *rows, ptrdiff_t count, ptrdiff_t n,
                                            const double *et, ptrdiff_t ld, const double *p_scale,
                                            const double *p_lo, const double *smooth_scale,
                                            const double *w)
{
    for (ptrdiff_t i0 = 0; i0 < count; i0 += 4) {
        ptrdiff_t tile_rows = count - i0 < 4 ? count - i0 : 4;
        __m256d p = sml__load_first_pd(p_scale + i0, tile_rows);
        __m256d pl = sml__load_first_pd(p_lo + i0, tile_rows);
        __m256d pl_on = _mm256_cmp_pd(pl, _mm256_setzero_pd(), _CMP_NEQ_OQ); /* see the loop */
        __m256d s = sml__load_first_pd(smooth_scale + i0, tile_rows);
        for (ptrdiff_t c0 = 0; c0 < n; c0 += 4) {
            ptrdiff_t cols = n - c0 < 4 ? n - c0 : 4;
            __m256d r[4];
            for (ptrdiff_t c = 0; c < 4; c++) {
                if (c >= cols) {
                    r[c] = _mm256_setzero_pd();
                    continue;
                }
                __m256d w_c = _mm256_set1_pd(w != NULL ? w[c0 + c] : 1.0);
                __m256d e = _mm256_loadu_pd(et + (c0 + c) * ld + i0);
                /* p e + (p_lo e - s w): SML_BLOCK_STORE_LOOP_LO's fma */
                r[c] = _mm256_fmadd_pd(p, e, _mm256_fmsub_pd(pl, _mm256_and_pd(e, pl_on),
                                                             _mm256_mul_pd(s, w_c)));
            }
            sml__tile_out_d(rows + i0, tile_rows, c0, cols, r);
        }
    }
}


/* The block et (classes, rows) transposed back to rows as it is: et's values, no arithmetic
 * (sml_block_store_f / _d, contiguous rows). */
static inline void sml__block_copy_tiles_f(char *const *rows, ptrdiff_t count, ptrdiff_t n,
                                           const float *et, ptrdiff_t ld)
{
    for (ptrdiff_t i0 = 0; i0 < count; i0 += 8) {
        ptrdiff_t tile_rows = count - i0 < 8 ? count - i0 : 8;
        for (ptrdiff_t c0 = 0; c0 < n; c0 += 8) {
            ptrdiff_t cols = n - c0 < 8 ? n - c0 : 8;
            __m256 r[8];
            for (ptrdiff_t c = 0; c < 8; c++)
                r[c] = c < cols ? _mm256_loadu_ps(et + (c0 + c) * ld + i0) : _mm256_setzero_ps();
            sml__tile_out_f(rows + i0, tile_rows, c0, cols, r);
        }
    }
}

static inline void sml__block_copy_tiles_d(char *const *rows, ptrdiff_t count, ptrdiff_t n,
                                           const double *et, ptrdiff_t ld)
{
    for (ptrdiff_t i0 = 0; i0 < count; i0 += 4) {
        ptrdiff_t tile_rows = count - i0 < 4 ? count - i0 : 4;
        for (ptrdiff_t c0 = 0; c0 < n; c0 += 4) {
            ptrdiff_t cols = n - c0 < 4 ? n - c0 : 4;
            __m256d r[4];
            for (ptrdiff_t c = 0; c < 4; c++)
                r[c] = c < cols ? _mm256_loadu_pd(et + (c0 + c) * ld + i0) : _mm256_setzero_pd();
            sml__tile_out_d(rows + i0, tile_rows, c0, cols, r);
        }
    }
}

#endif /* SML_BLOCK_SIMD */

/* ---- the primitives: tiles where they apply, else the plain loops ----------------- */

#if SML_BLOCK_SIMD
#define SML_BLOCK_TILES_IF_CONTIGUOUS(T, call)                                         \
    if (step == (ptrdiff_t)sizeof(T)) {                                                \
        call;                                                                          \
        return;                                                                        \
    }
#else
#define SML_BLOCK_TILES_IF_CONTIGUOUS(T, call)
#endif

static inline void sml_block_load_f(const char *const *rows, ptrdiff_t step, ptrdiff_t count,
                                    ptrdiff_t n, float *xt, ptrdiff_t ld)
{
    SML_BLOCK_TILES_IF_CONTIGUOUS(float, sml__block_load_tiles_f(rows, count, n, xt, ld))
    SML_BLOCK_LOAD_LOOP(float)
}

static inline void sml_block_load_d(const char *const *rows, ptrdiff_t step, ptrdiff_t count,
                                    ptrdiff_t n, double *xt, ptrdiff_t ld)
{
    SML_BLOCK_TILES_IF_CONTIGUOUS(double, sml__block_load_tiles_d(rows, count, n, xt, ld))
    SML_BLOCK_LOAD_LOOP(double)
}

static inline void sml_block_store_grad_f(char *const *rows, ptrdiff_t step, ptrdiff_t count,
                                          ptrdiff_t n, const float *et, ptrdiff_t ld,
                                          const double *p_scale, const double *smooth_scale,
                                          const double *w)
{
    SML_BLOCK_TILES_IF_CONTIGUOUS(
        float, sml__block_store_tiles_f(rows, count, n, et, ld, p_scale, smooth_scale, w))
    SML_BLOCK_STORE_LOOP(float)
}

static inline void sml_block_store_grad_d(char *const *rows, ptrdiff_t step, ptrdiff_t count,
                                          ptrdiff_t n, const double *et, ptrdiff_t ld,
                                          const double *p_scale, const double *p_lo,
                                          const double *smooth_scale, const double *w)
{
    SML_BLOCK_TILES_IF_CONTIGUOUS(
        double, sml__block_store_tiles_d(rows, count, n, et, ld, p_scale, p_lo, smooth_scale, w))
    SML_BLOCK_STORE_LOOP_LO(double)
}

/* rows[i][c] = et[c * ld + i] (element c at rows[i] + c * step bytes): a block formed in
 * place in et, transposed back unchanged (gradient_hessian's gradient and hessian). */
#define SML_BLOCK_COPY_LOOP(T)                                                         \
    for (ptrdiff_t i = 0; i < count; i++)                                              \
        for (ptrdiff_t c = 0; c < n; c++)                                              \
            *(T *)(rows[i] + c * step) = et[c * ld + i];

static inline void sml_block_store_f(char *const *rows, ptrdiff_t step, ptrdiff_t count,
                                     ptrdiff_t n, const float *et, ptrdiff_t ld)
{
    SML_BLOCK_TILES_IF_CONTIGUOUS(float, sml__block_copy_tiles_f(rows, count, n, et, ld))
    SML_BLOCK_COPY_LOOP(float)
}

static inline void sml_block_store_d(char *const *rows, ptrdiff_t step, ptrdiff_t count,
                                     ptrdiff_t n, const double *et, ptrdiff_t ld)
{
    SML_BLOCK_TILES_IF_CONTIGUOUS(double, sml__block_copy_tiles_d(rows, count, n, et, ld))
    SML_BLOCK_COPY_LOOP(double)
}

#endif /* SOFTMAXLOSS_BLOCKOPS_H */

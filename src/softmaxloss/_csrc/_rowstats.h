/*
 * Row statistics beyond the loss, for the opt-in extra outputs of the cross-entropy
 * kernels (issue 16 item 3): the entropy's sum and the argmax of one contiguous row.
 * Loops written once for float and double (a macro instantiated twice), vectorisable
 * without reassociation: 2 SML_LANES partial sums, lane k taking the indices = k mod
 * 2 SML_LANES, folded and added up in the one order of SML_LANE_TOTAL, so the same bits
 * for any thread, chunking or alignment.
 *
 * sml_row_entsum_*(x, e, n, m): sum_c e[c] * (m - x[c]) in double, e[c] = exp(x[c] - m)
 *     as the exp-sum wrote it, m the row max: every term >= 0 (no cancellation). A term
 *     whose e[c] is 0 is 0: the gap m - x[c] is taken at most DBL_MAX (x[c] = -inf beside
 *     finite values: 0 * DBL_MAX, not 0 * inf; a NaN gap has a NaN e[c]). Then
 *     H = log S + entsum / S is the entropy -sum_c p_c log p_c of softmax(x).
 * sml_row_find_*(x, n, m): the first c with x[c] == m (n if none), early exit: with m the
 *     row max, np.argmax of a row without NaN; a row with one is told by its exp-sum being
 *     NaN, and its argmax is then sml_row_first_nan_* (see row_stats in _kernels_rows.pxi).
 */
#ifndef SOFTMAXLOSS_ROWSTATS_H
#define SOFTMAXLOSS_ROWSTATS_H

#include "_rowops.h"

/* sml_row_find_*'s vector part: i advanced by blocks of 4 vectors (128 bytes) until the
 * block holding the first x[c] == m (or the last whole block). */
#if SML_HAVE_VEXP
#define SML__FIND_VECTORS(T)                                                             \
    {                                                                                    \
        typedef T sml_find_v_ __attribute__((vector_size(32)));                          \
        const ptrdiff_t w_ = (ptrdiff_t)(32 / sizeof(T));                                 \
        sml_find_v_ mv_ = (sml_find_v_){0} + m;                                          \
        for (; i + 4 * w_ <= n; i += 4 * w_) {                                           \
            sml_find_v_ a_, b_, c_, d_;                                                  \
            memcpy(&a_, x + i, 32);                                                      \
            memcpy(&b_, x + i + w_, 32);                                                 \
            memcpy(&c_, x + i + 2 * w_, 32);                                             \
            memcpy(&d_, x + i + 3 * w_, 32);                                             \
            __typeof__(a_ == mv_) hit_ = ((a_ == mv_) | (b_ == mv_)) | ((c_ == mv_) | (d_ == mv_)); \
            if (SML_VANY(hit_)) break;                                                   \
        }                                                                                \
    }
#else
#define SML__FIND_VECTORS(T)
#endif

/* sml_row_entsum_*'s vector part with AVX and FMA: the loop below on four vectors of four
 * doubles (acc[4j .. 4j+3] in vector j: the same lanes), gap < max ? gap : max as vminps /
 * vminpd (the same operands: a NaN gap gives the cap, its term NaN by e). float: each term
 * e (m - x) formed in float (the gap and the product each rounded once: the term within
 * ~2 float ulps, as e itself is within one of exp(x - m)) and added in double; the
 * gap capped at FLT_MAX (where m - x overflows, e is 0). double: as the loop below, acc +=
 * e gap one FMA. Half the instructions of the compiler's form of the loop below (which
 * converts through extracts and blends). */
#if SML_HAVE_VEXP && SML_TARGET_AVX && defined(__FMA__)
#define SML__ENTSUM_VECTORS(T)                                                           \
    if (n >= 2 * SML_LANES) {                                                            \
        __m256d a_[4];                                                                   \
        for (int j_ = 0; j_ < 4; j_++) a_[j_] = _mm256_setzero_pd();                     \
        if (sizeof(T) == sizeof(float)) {                                                \
            const float *xf_ = (const float *)x, *ef_ = (const float *)e;                \
            __m256 mf_ = _mm256_set1_ps((float)m), capf_ = _mm256_set1_ps(FLT_MAX);      \
            for (; i + 2 * SML_LANES <= n; i += 2 * SML_LANES)                           \
                for (int j_ = 0; j_ < 2; j_++) {                                         \
                    __m256 gap_ = _mm256_sub_ps(mf_, _mm256_loadu_ps(xf_ + i + 8 * j_));  \
                    __m256 t_ = _mm256_mul_ps(_mm256_loadu_ps(ef_ + i + 8 * j_),         \
                                              _mm256_min_ps(gap_, capf_));               \
                    a_[2 * j_] = _mm256_add_pd(a_[2 * j_],                               \
                                               _mm256_cvtps_pd(_mm256_castps256_ps128(t_))); \
                    a_[2 * j_ + 1] = _mm256_add_pd(a_[2 * j_ + 1],                       \
                                                   _mm256_cvtps_pd(_mm256_extractf128_ps(t_, 1))); \
                }                                                                        \
        } else {                                                                         \
            const double *xd_ = (const double *)x, *ed_ = (const double *)e;             \
            __m256d mv_ = _mm256_set1_pd(m), big_ = _mm256_set1_pd(DBL_MAX);             \
            for (; i + 2 * SML_LANES <= n; i += 2 * SML_LANES)                           \
                for (int j_ = 0; j_ < 4; j_++) {                                         \
                    __m256d gap_ = _mm256_sub_pd(mv_, _mm256_loadu_pd(xd_ + i + 4 * j_)); \
                    a_[j_] = _mm256_fmadd_pd(_mm256_loadu_pd(ed_ + i + 4 * j_),          \
                                             _mm256_min_pd(gap_, big_), a_[j_]);         \
                }                                                                        \
        }                                                                                \
        for (int j_ = 0; j_ < 4; j_++) _mm256_storeu_pd(acc + 4 * j_, a_[j_]);           \
    }
#else
#define SML__ENTSUM_VECTORS(T)
#endif

#define SML__ROWSTATS(T, SUFFIX)                                                         \
    static inline double sml_row_entsum_##SUFFIX(const T *x, const T *e, ptrdiff_t n,     \
                                                 double m)                               \
    {                                                                                    \
        /* 2 SML_LANES partial sums: two independent chains per vector (the FMA's latency), \
         * lane k + SML_LANES folded into lane k before the lanes' total */              \
        double acc[2 * SML_LANES] = {0};                                                 \
        double tail = 0;                                                                 \
        ptrdiff_t i = 0;                                                                 \
        SML__ENTSUM_VECTORS(T)                                                           \
        for (; i + 2 * SML_LANES <= n; i += 2 * SML_LANES)                               \
            for (int k = 0; k < 2 * SML_LANES; k++) {                                    \
                double gap = m - (double)x[i + k];                                       \
                acc[k] += (double)e[i + k] * (gap < DBL_MAX ? gap : DBL_MAX);            \
            }                                                                            \
        for (int k = 0; k < SML_LANES; k++) acc[k] += acc[k + SML_LANES];                \
        for (; i < n; i++) {                                                             \
            double gap = m - (double)x[i];                                               \
            tail += (double)e[i] * (gap < DBL_MAX ? gap : DBL_MAX);                      \
        }                                                                                \
        return SML_LANE_TOTAL(acc) + tail;                                               \
    }                                                                                    \
                                                                                         \
    /* the first c with x[c] == m, n if none: blocks of SML_LANES compared at once (with \
     * vector extensions first blocks of four 32-byte vectors, one test each) */         \
    static inline ptrdiff_t sml_row_find_##SUFFIX(const T *x, ptrdiff_t n, T m)           \
    {                                                                                    \
        ptrdiff_t i = 0;                                                                 \
        SML__FIND_VECTORS(T)                                                             \
        for (; i + SML_LANES <= n; i += SML_LANES) {                                     \
            int hit = 0;                                                                 \
            for (int k = 0; k < SML_LANES; k++) hit |= x[i + k] == m;                    \
            if (hit) break;                                                              \
        }                                                                                \
        for (; i < n; i++)                                                               \
            if (x[i] == m) return i;                                                     \
        return n;                                                                        \
    }                                                                                    \
                                                                                         \
    /* the first NaN of x[0..n), n if none */                                            \
    static inline ptrdiff_t sml_row_first_nan_##SUFFIX(const T *x, ptrdiff_t n)           \
    {                                                                                    \
        for (ptrdiff_t c = 0; c < n; c++)                                                \
            if (x[c] != x[c]) return c;                                                  \
        return n;                                                                        \
    }

SML__ROWSTATS(float, f)
SML__ROWSTATS(double, d)

#undef SML__ROWSTATS
#undef SML__FIND_VECTORS
#undef SML__ENTSUM_VECTORS

#endif /* SOFTMAXLOSS_ROWSTATS_H */

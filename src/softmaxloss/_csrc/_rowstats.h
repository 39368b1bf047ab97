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

#define SML__ROWSTATS(T, SUFFIX)                                                         \
    static inline double sml_row_entsum_##SUFFIX(const T *x, const T *e, ptrdiff_t n,     \
                                                 double m)                               \
    {                                                                                    \
        /* 2 SML_LANES partial sums: two independent chains per vector (the FMA's latency), \
         * lane k + SML_LANES folded into lane k before the lanes' total */              \
        double acc[2 * SML_LANES] = {0};                                                 \
        double tail = 0;                                                                 \
        ptrdiff_t i = 0;                                                                 \
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
    /* the first c with x[c] == m, n if none: blocks of SML_LANES compared at once */    \
    static inline ptrdiff_t sml_row_find_##SUFFIX(const T *x, ptrdiff_t n, T m)           \
    {                                                                                    \
        ptrdiff_t i = 0;                                                                 \
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

#endif /* SOFTMAXLOSS_ROWSTATS_H */

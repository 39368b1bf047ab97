/*
 * Row primitives for one element type, included twice by _rowops.h with
 * SML_T (float or double), SML_SUFFIX (f or d), SML_EXP_SUB (sml_expf_sub or sml_exp_sub:
 * exp(x - m) of the exact difference), SML_EXACT_GAPS (whether m - x rounds) and
 * SML_COUNT (an integer as wide as SML_T, for counts inside vector loops) and SML_VEXP_ON
 * (with SML_VMASK, SML_VGROUP_T, SML_VEXP_GROUP, SML_VSUM_GROUP when 1: the fused vector
 * path of sml_row_expsum) defined; SML_NAME(name) gives name_f or name_d. No include
 * guard on purpose; the parameters are #undef'd at the end.
 *
 * sml_row_max_*(x, n):           max_c x[c] (n >= 1). With a NaN in the row the
 *                                result is unspecified, but the exp-sum that
 *                                follows is NaN either way, so the row is NaN.
 * sml_row_exp_*(x, e, n, m):     e[c] = exp(x[c] - m); e may be x. A plain
 *                                elementwise loop: the one the vectoriser takes.
 *                                Every exp(x[c] - m) here is of the exact difference
 *                                (SML_EXP_SUB: sml_expf_sub / sml_exp_sub, and their
 *                                vector form), so its error does not grow with the gap.
 * sml_row_expsum_*(x, e, n, m, excess):
 *                                S = sum_c exp(x[c] - m) in double, m the row max;
 *                                with e != NULL also e[c] = exp(x[c] - m) (e may be x);
 *                                with excess != NULL also S - 1, accurately even when
 *                                S ~ 1 (see sml_exp_split): log(S) = log1p(excess),
 *                                and 1 - p at the max is excess / S.
 *                                An infinite or NaN m (a row with +inf or NaN, or all
 *                                -inf) gives NaN.
 *                                The row goes in chunks of SML_CHUNK: exp into e (or a
 *                                stack buffer), then the sum of the chunk while it is
 *                                in L1.
 * sml_row_gapsum_*(x, w, n, m):  sum_c w[c] * (m - x[c]) in double, w NULL = 1:
 *                                the label-smoothing term, a sum of non-negative
 *                                terms (no cancellation) when m is the row max; for
 *                                double each m - x[c] as hi + lo (sml_sub_lo).
 *
 * Sums use SML_LANES partial sums, lane k taking the indices = k mod SML_LANES:
 * they vectorise without reassociation and give the same bits for any chunking,
 * alignment or thread.
 */

static inline SML_T SML_NAME(sml_row_max)(const SML_T *x, ptrdiff_t n)
{
    SML_T m = x[0];
    SML_SIMD_MAX(m)
    for (ptrdiff_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

static inline void SML_NAME(sml_row_exp)(const SML_T *x, SML_T *e, ptrdiff_t n, SML_T m)
{
    for (ptrdiff_t i = 0; i < n; i++) e[i] = SML_EXP_SUB(x[i], m);
}

/* e[c] = exp(x[c] - m) (e may be x), and the same values split for an accurate sum:
 * those equal to 1 (exp(0): the max and its ties) are counted and returned, the others
 * copied to rest[c] (0 in place of the ones). S = ties + sum(rest), and
 * log(S) = log1p((ties - 1) + sum(rest)) keeps the digits of a tiny sum(rest) that
 * 1 + sum(rest) would round away: the loss of a confident, correct prediction is
 * about sum(rest). One elementwise loop with an integer count: it vectorises. */
static inline ptrdiff_t SML_NAME(sml_exp_split)(const SML_T *x, SML_T *e, SML_T *rest,
                                                ptrdiff_t n, SML_T m)
{
    SML_COUNT ties = 0; /* an integer as wide as SML_T: SSE2 vectorises that count */
    for (ptrdiff_t i = 0; i < n; i++) {
        SML_T v = SML_EXP_SUB(x[i], m);
        e[i] = v;
        rest[i] = v == (SML_T)1 ? (SML_T)0 : v;
        ties += v == (SML_T)1;
    }
    return ties;
}

/* Add v[0..n) to the lanes (n a multiple of SML_LANES unless it ends the row; pos, the row
 * index of v[0], a multiple of SML_LANES; the entries of v are the terms off the max:
 * 0 <= v < 1). Plain sums, the row's last n % SML_LANES into tail[0]; SML_COMPENSATED:
 * lanes[0..8) start at 1 (so that each lane is >= 1 > v), and every add is a Fast2Sum of the
 * lane and v, exact in that order, its error (all of v where v is below ulp(lane) / 2) into
 * the lane's compensation lanes[8..16), and at every multiple of SML_SUMBLOCK of the row
 * those (each a plain sum of SML_SUMBLOCK / SML_LANES terms) are added by TwoSums into the
 * row's compensations lanes[16..24), their errors into lanes[24..32) (sml__merge_comp): S
 * exact but for the blocks' plain sums of their compensations, which are ~2^-53 of S's
 * terms where they come from the lanes' roundings, and a few u of the block's small terms
 * where those are below ulp(1) / 2 (a confident row's S - 1, kept to that relative
 * accuracy). The row's last n % SML_LANES by TwoSums into tail[0] + tail[1] (a separate
 * scalar, not lanes 0, 1, ...: a scalar store into the lanes that the finish reads as a
 * vector stalls the store forwarding). */
#if SML_COMPENSATED
#define SML__LANE_ADD(acc, c, v)                                                       \
    do {                                                                               \
        double s_ = (acc) + (v);                                                       \
        (c) += (v) - (s_ - (acc));                                                     \
        (acc) = s_;                                                                    \
    } while (0)

static inline void SML_NAME(sml__merge_comp)(double *lanes)
{
    for (int k = 0; k < SML_LANES; k++) {
        double t, t_lo;
        SML__TWO_SUM(lanes[2 * SML_LANES + k], lanes[SML_LANES + k], t, t_lo);
        lanes[2 * SML_LANES + k] = t;
        lanes[3 * SML_LANES + k] += t_lo;
        lanes[SML_LANES + k] = 0.0;
    }
}
#endif

static inline void SML_NAME(sml_lanes_add)(const SML_T *v, ptrdiff_t n, double *lanes,
                                           double *tail, ptrdiff_t pos)
{
    ptrdiff_t i = 0;
#if SML_COMPENSATED
    for (; i + SML_LANES <= n; i += SML_LANES) {
        for (int k = 0; k < SML_LANES; k++)
            SML__LANE_ADD(lanes[k], lanes[SML_LANES + k], (double)v[i + k]);
        if ((pos + i + SML_LANES) % SML_SUMBLOCK == 0) SML_NAME(sml__merge_comp)(lanes);
    }
    for (; i < n; i++) { /* tail[0] + tail[1]: a TwoSum each (at most SML_LANES - 1) */
        double t, t_lo;
        SML__TWO_SUM(tail[0], (double)v[i], t, t_lo);
        tail[0] = t;
        tail[1] += t_lo;
    }
#else
    (void)pos;
    for (; i + SML_LANES <= n; i += SML_LANES)
        for (int k = 0; k < SML_LANES; k++) lanes[k] += (double)v[i + k];
    for (; i < n; i++) *tail += (double)v[i];
#endif
}

#if SML_COMPENSATED
/* The row's sum of the terms off the max: the lanes less their start (lanes[0..8) - 1,
 * exact), the block's compensations (lanes[8..16)), the row's (lanes[16..24)) and theirs
 * (lanes[24..32)), and the tail (tail[0] + tail[1], sml_lanes_add), as hi + *lo, without a
 * tree of TwoSums (their latency was most of a short row's cost): the first three and the
 * tail split against one power of two M = 2^(e + 6), 2^e <= the largest magnitude < 2^(e+1)
 * (Rump's extraction; `all` = 0: a row of fewer than SML_SUMBLOCK, whose row
 * compensations are 0, without them: the same bits), v = H + L with H = (v + M) - M, a multiple of ulp(M) / 2, and
 * L = v - H, both exact (|L| <= ulp(M) / 2 = 2^-47 2^e). hi = the sum of the (25) H, exact
 * in any order (below 25 2^(e+1) < M); *lo = the L and the last compensations summed plainly, whose
 * rounding is ~2^-95 of hi. On vectors where the target has them (the same code in the
 * vector and the general path: one finish per row). A NaN lane gives hi NaN. */
static inline double SML_NAME(sml__lanes_total_c)(const double *lanes, const double *tail,
                                                   int all, double *lo)
{
#if SML_HAVE_VEXP /* on vectors: the lanes 0-3 and 4-7 of each part */
    sml_f64x4 v[6], d, mx, big, t, l;
    const sml_u64x4 abs_mask = {0x7FFFFFFFFFFFFFFFu, 0x7FFFFFFFFFFFFFFFu,
                                0x7FFFFFFFFFFFFFFFu, 0x7FFFFFFFFFFFFFFFu};
    const int parts = all ? 6 : 4; /* a row of fewer than SML_SUMBLOCK: no row's parts */
    memcpy(v, lanes, sizeof v);
    memcpy(&d, lanes + 24, sizeof d);
    v[0] -= 1.0; /* exact: the lanes are >= 1 */
    v[1] -= 1.0;
    mx = (sml_f64x4){0} + fabs(tail[0]);
    for (int k = 0; k < parts; k++) mx = SML__VMAX(mx, (sml_f64x4)((sml_u64x4)v[k] & abs_mask));
    mx = SML__VMAX(mx, __builtin_shuffle(mx, (sml_i64x4){2, 3, 0, 1}));
    mx = SML__VMAX(mx, __builtin_shuffle(mx, (sml_i64x4){1, 0, 3, 2})); /* in every lane */
    big = (sml_f64x4)(((sml_u64x4)mx & 0x7FF0000000000000u) + (UINT64_C(6) << 52));
    t = (sml_f64x4){0};
    l = (sml_f64x4){0};
    if (all) {
        l = d;
        memcpy(&d, lanes + 28, sizeof d);
        l += d;
    }
    for (int k = 0; k < parts; k++) { /* H and L of each part, in this order */
        sml_f64x4 h = (v[k] + big) - big;
        t += h;
        l += v[k] - h;
    }
    {
        double h = (tail[0] + big[0]) - big[0];
        *lo = ((l[0] + l[1]) + (l[2] + l[3])) + ((tail[0] - h) + tail[1]);
        return ((t[0] + t[1]) + (t[2] + t[3])) + h;
    }
#else
    uint64_t bits;
    double mx = fabs(tail[0]), big, h, v[6 * 4], t[4] = {0, 0, 0, 0}, l[4] = {0, 0, 0, 0};
    const int parts = all ? 6 : 4; /* a row of fewer than SML_SUMBLOCK: no row's parts */
    for (int k = 0; k < 4 * parts; k++) {
        v[k] = k < SML_LANES ? lanes[k] - 1.0 : lanes[k];
        mx = fabs(v[k]) > mx ? fabs(v[k]) : mx;
    }
    memcpy(&bits, &mx, sizeof bits);
    bits = (bits & 0x7FF0000000000000u) + (UINT64_C(6) << 52); /* 2^(exponent + 6) */
    memcpy(&big, &bits, sizeof big);
    if (all)
        for (int k = 0; k < 4; k++) l[k] = lanes[24 + k] + lanes[28 + k];
    for (int j = 0; j < parts; j++) /* as the vector code: part j's lanes 4j .. 4j + 3 */
        for (int k = 0; k < 4; k++) {
            double hk = (v[4 * j + k] + big) - big;
            t[k] += hk;
            l[k] += v[4 * j + k] - hk;
        }
    h = (tail[0] + big) - big;
    *lo = ((l[0] + l[1]) + (l[2] + l[3])) + ((tail[0] - h) + tail[1]);
    return ((t[0] + t[1]) + (t[2] + t[3])) + h;
#endif
}
#undef SML__LANE_ADD
#endif

#if SML_VEXP_ON
/* sml_exp_split and sml_lanes_add of x[0..n) (n a multiple of SML_LANES) in one pass, on
 * vectors, with the exp of normal results (SML_VEXP_GROUP, from _rowops.h): the same values
 * e[c], the same additions to the same lanes in the same order, so the same bits. Stops at
 * the first group of SML_LANES entries with an x[c] - m out of the range of that exp (or
 * NaN), before writing anything of it (e may be x), and returns how many entries it did: the
 * caller takes the general path from there. */
static inline ptrdiff_t SML_NAME(sml_expsum_inrange)(const SML_T *x, SML_T *e, ptrdiff_t n,
                                                     SML_T m, double *lanes, ptrdiff_t *ties,
                                                     ptrdiff_t pos, int merge)
{
    sml_f64x4 lo, hi; /* lanes 0-3, 4-7 */
    SML_VMASK ones = {0};
    ptrdiff_t i = 0;
#ifdef SML_VEXPSUM_WIDE /* AVX-512: _rowops.h's wider form of this loop first (the same bits) */
    i = SML_VEXPSUM_WIDE(x, e, n, m, lanes, ties, pos, merge);
#endif
    memcpy(&lo, lanes, sizeof lo);
    memcpy(&hi, lanes + 4, sizeof hi);
#if SML_COMPENSATED
    sml_f64x4 clo, chi, rlo, rhi, qlo, qhi; /* the compensations: lanes 8-15, 16-23, 24-31 */
    memcpy(&clo, lanes + 8, sizeof clo);
    memcpy(&chi, lanes + 12, sizeof chi);
    memcpy(&rlo, lanes + 16, sizeof rlo);
    memcpy(&rhi, lanes + 20, sizeof rhi);
    memcpy(&qlo, lanes + 24, sizeof qlo);
    memcpy(&qhi, lanes + 28, sizeof qhi);
#else
    (void)pos;
    (void)merge;
#endif
    for (; i < n; i += SML_LANES) {
        SML_VGROUP_T v;
        SML_VMASK out;
        sml_f64x4 a, b;
        SML_VEXP_GROUP(x + i, m, v, out);
        if (SML_VANY(out)) break;
        SML_VSUM_GROUP(e + i, v, a, b, ones);
#if SML_COMPENSATED
        SML__VLANE_ADD(lo, clo, a);
        SML__VLANE_ADD(hi, chi, b);
        if (merge && (pos + i + SML_LANES) % SML_SUMBLOCK == 0) { /* sml__merge_comp */
            SML__VTWO_SUM(rlo, qlo, clo);
            SML__VTWO_SUM(rhi, qhi, chi);
            clo = (sml_f64x4){0};
            chi = (sml_f64x4){0};
        }
#else
        lo += a;
        hi += b;
#endif
    }
    memcpy(lanes, &lo, sizeof lo);
    memcpy(lanes + 4, &hi, sizeof hi);
#if SML_COMPENSATED
    memcpy(lanes + 8, &clo, sizeof clo);
    memcpy(lanes + 12, &chi, sizeof chi);
    memcpy(lanes + 16, &rlo, sizeof rlo);
    memcpy(lanes + 20, &rhi, sizeof rhi);
    memcpy(lanes + 24, &qlo, sizeof qlo);
    memcpy(lanes + 28, &qhi, sizeof qhi);
#endif
    for (int k = 0; k < (int)(sizeof ones / sizeof ones[0]); k++) *ties -= ones[k];
    return i;
}
#endif

static inline double SML_NAME(sml_row_expsum_lo)(const SML_T *x, SML_T *e, ptrdiff_t n,
                                                 SML_T m, double *excess, double *total_lo)
{
    SML_T exps[SML_CHUNK], rest[SML_CHUNK];
#if SML_COMPENSATED /* the lanes, from 1, and the compensations (sml_lanes_add) */
    double lanes[4 * SML_LANES];
    for (int k = 0; k < 4 * SML_LANES; k += 4) { /* not memset: gcc makes a slow rep stos */
        double start = k < SML_LANES ? 1.0 : 0.0;
        lanes[k] = start;
        lanes[k + 1] = start;
        lanes[k + 2] = start;
        lanes[k + 3] = start;
    }
#else
    double lanes[SML_LANES] = {0, 0, 0, 0, 0, 0, 0, 0};
#endif
    double tail[2] = {0.0, 0.0}; /* the row's last n % SML_LANES: sum (and its error) */
    ptrdiff_t ties = 0;
#if SML_VEXP_ON
    ptrdiff_t run = SML_VBLOCK;
#endif
    for (ptrdiff_t start = 0; start < n; start += SML_CHUNK) {
        ptrdiff_t len = n - start < SML_CHUNK ? n - start : SML_CHUNK;
        SML_T *ec = e != NULL ? e + start : exps;
        ptrdiff_t done = 0;
#if SML_VEXP_ON
        ptrdiff_t full = len - len % SML_LANES;
        while (done < full) {
#if SML_COMPENSATED /* a row within one block never merges: that loop without the test */
            ptrdiff_t did = n >= SML_SUMBLOCK
                ? SML_NAME(sml_expsum_inrange)(x + start + done, ec + done, full - done, m,
                                               lanes, &ties, start + done, 1)
                : SML_NAME(sml_expsum_inrange)(x + start + done, ec + done, full - done, m,
                                               lanes, &ties, start + done, 0);
#else
            ptrdiff_t did = SML_NAME(sml_expsum_inrange)(x + start + done, ec + done,
                                                         full - done, m, lanes, &ties,
                                                         start + done, 0);
#endif
            done += did;
            /* out of range at done: the next `run` entries take the general path (a
             * multiple of SML_LANES, so the lanes stay in step); run doubles while the
             * vector path fails straight away (most entries out of range), up to
             * SML_CHUNK, so that its attempts cost little */
            run = did > 0 ? SML_VBLOCK : run < SML_CHUNK ? 2 * run : SML_CHUNK;
            ptrdiff_t stop = full - done > run ? done + run : full;
            ties += SML_NAME(sml_exp_split)(x + start + done, ec + done, rest, stop - done, m);
            SML_NAME(sml_lanes_add)(rest, stop - done, lanes, tail, start + done);
            done = stop;
        }
#endif
        if (done < len) { /* the rest; tail takes the row's last len % SML_LANES */
            ties += SML_NAME(sml_exp_split)(x + start + done, ec + done, rest, len - done, m);
            SML_NAME(sml_lanes_add)(rest, len - done, lanes, tail, start + done);
        }
    }
    if (!isfinite(m)) { /* a row with +inf or NaN, or all -inf: inf - inf = NaN */
        if (excess != NULL) *excess = NAN;
        if (total_lo != NULL) *total_lo = 0.0;
        return NAN;
    }
#if SML_COMPENSATED
    /* rest = rest_hi + rest_lo to ~2^-104; S = ties + rest and S - 1 each by a TwoSum of
     * the integer and rest_hi, rounded once (beyond the range, or NaN: the plain sums) */
    double rest_lo, rest_hi = n >= SML_SUMBLOCK
        ? SML_NAME(sml__lanes_total_c)(lanes, tail, 1, &rest_lo)
        : SML_NAME(sml__lanes_total_c)(lanes, tail, 0, &rest_lo);
    double t, t_lo;
    if (!(fabs(rest_hi) <= DBL_MAX)) {
        /* the lanes' plain total: +inf for a +inf term (logsumexp's m = 0 for a row with +inf,
         * whose Fast2Sum error inf - inf made the compensations NaN), else NaN */
        rest_hi = (SML_LANE_TOTAL(lanes) - (double)SML_LANES) + tail[0];
        if (excess != NULL) *excess = ((double)ties - 1.0) + rest_hi;
        if (total_lo != NULL) *total_lo = 0.0;
        return (double)ties + rest_hi;
    }
    if (excess != NULL && ties == 1) { /* the TwoSum's below with (0, rest_hi): the same */
        *excess = rest_hi + rest_lo;
    } else if (excess != NULL) {
        SML__TWO_SUM((double)ties - 1.0, rest_hi, t, t_lo);
        *excess = t + (t_lo + rest_lo);
    }
    SML__TWO_SUM((double)ties, rest_hi, t, t_lo);
    t_lo += rest_lo;
    if (total_lo != NULL) { /* S - fl(S), to ~2^-104 S */
        double s = t + t_lo;
        *total_lo = t_lo - (s - t);
        return s;
    }
    return t + t_lo;
#else
    double rest_sum = SML_LANE_TOTAL(lanes) + tail[0];
    if (excess != NULL) *excess = ((double)ties - 1.0) + rest_sum;
    if (total_lo != NULL) *total_lo = 0.0;
    return (double)ties + rest_sum;
#endif
}

static inline double SML_NAME(sml_row_expsum)(const SML_T *x, SML_T *e, ptrdiff_t n, SML_T m,
                                              double *excess)
{
    return SML_NAME(sml_row_expsum_lo)(x, e, n, m, excess, NULL);
}

static inline double SML_NAME(sml_row_gapsum)(const SML_T *x, const double *w, ptrdiff_t n,
                                              double m)
{
    double acc[SML_LANES] = {0, 0, 0, 0, 0, 0, 0, 0};
    double tail = 0;
    ptrdiff_t i = 0;
#if SML_EXACT_GAPS
    /* m - x[c] = hi + lo exactly: the lo (times w) summed in lanes of their own */
    double acc_lo[SML_LANES] = {0, 0, 0, 0, 0, 0, 0, 0};
    double tail_lo = 0;
    if (w != NULL) {
        for (; i + SML_LANES <= n; i += SML_LANES)
            for (int k = 0; k < SML_LANES; k++) {
                double wk = w[i + k];
                acc[k] += wk * (m - (double)x[i + k]);
                acc_lo[k] += wk * sml_sub_lo(m, (double)x[i + k]);
            }
        for (; i < n; i++) {
            tail += w[i] * (m - (double)x[i]);
            tail_lo += w[i] * sml_sub_lo(m, (double)x[i]);
        }
    } else {
        for (; i + SML_LANES <= n; i += SML_LANES)
            for (int k = 0; k < SML_LANES; k++) {
                acc[k] += m - (double)x[i + k];
                acc_lo[k] += sml_sub_lo(m, (double)x[i + k]);
            }
        for (; i < n; i++) {
            tail += m - (double)x[i];
            tail_lo += sml_sub_lo(m, (double)x[i]);
        }
    }
    return (SML_LANE_TOTAL(acc) + tail) + (SML_LANE_TOTAL(acc_lo) + tail_lo);
#else
    if (w != NULL) {
        for (; i + SML_LANES <= n; i += SML_LANES)
            for (int k = 0; k < SML_LANES; k++) acc[k] += w[i + k] * (m - (double)x[i + k]);
        for (; i < n; i++) tail += w[i] * (m - (double)x[i]);
    } else {
        for (; i + SML_LANES <= n; i += SML_LANES)
            for (int k = 0; k < SML_LANES; k++) acc[k] += m - (double)x[i + k];
        for (; i < n; i++) tail += m - (double)x[i];
    }
    return SML_LANE_TOTAL(acc) + tail;
#endif
}

/* The parameters, undefined for the next instantiation. */
#undef SML_T
#undef SML_SUFFIX
#undef SML_EXP_SUB
#undef SML_EXACT_GAPS
#undef SML_COUNT
#undef SML_COMPENSATED
#undef SML_VEXP_ON
#if SML_HAVE_VEXP
#undef SML_VMASK
#undef SML_VGROUP_T
#undef SML_VEXP_GROUP
#undef SML_VSUM_GROUP
#endif
#undef SML_VEXPSUM_WIDE

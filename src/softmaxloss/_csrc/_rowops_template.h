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

/* Add v[0..n) to the lanes (n a multiple of SML_LANES unless it ends the row; pos, the
 * row index of v[0], a multiple of SML_LANES). Plain sums, the row's last n % SML_LANES
 * into tail[0]; SML_COMPENSATED: those by TwoSums into tail[0] + tail[1] (a separate
 * scalar, not lanes 0, 1, ...: a scalar store into the lanes that the finish reads as a
 * vector stalls the store forwarding), and at every multiple of SML_SUMBLOCK of the row
 * the lanes' sums (each of SML_SUMBLOCK / SML_LANES terms) merged into the row's
 * compensated lanes (sml__merge_lanes). */
#if SML_COMPENSATED
#define SML__LANE_ADD(acc, c, v)                                                       \
    do {                                                                               \
        double a_ = (acc) > (v) ? (acc) : (v), b_ = (acc) > (v) ? (v) : (acc);         \
        double s_ = a_ + b_;                                                           \
        (c) += b_ - (s_ - a_);                                                         \
        (acc) = s_;                                                                    \
    } while (0)
/* lanes[0..8): the block's plain sums, [8..16): the row's, [16..24): their compensations.
 * Each row lane's add is a Fast2Sum of the larger and the smaller (both >= 0), its exact
 * error into the compensation: S to ~2^-104 but for the blocks' own roundings (16 terms
 * each, a few u of the block's sum at most, which average out over the blocks). */
static inline void SML_NAME(sml__merge_lanes)(double *lanes)
{
    for (int k = 0; k < SML_LANES; k++) {
        SML__LANE_ADD(lanes[SML_LANES + k], lanes[2 * SML_LANES + k], lanes[k]);
        lanes[k] = 0.0;
    }
}
#endif

static inline void SML_NAME(sml_lanes_add)(const SML_T *v, ptrdiff_t n, double *lanes,
                                           double *tail, ptrdiff_t pos)
{
    ptrdiff_t i = 0;
#if SML_COMPENSATED
    for (; i + SML_LANES <= n; i += SML_LANES) {
        for (int k = 0; k < SML_LANES; k++) lanes[k] += (double)v[i + k];
        if ((pos + i + SML_LANES) % SML_SUMBLOCK == 0) SML_NAME(sml__merge_lanes)(lanes);
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
/* The row's sum after its last block: the block's plain lanes (lanes[0..8)), with all (the
 * row has SML_SUMBLOCK classes or more) the row's compensated lanes and their compensations
 * (lanes[8..24)), and the tail (tail[0] + tail[1], sml_lanes_add), as hi + *lo, without a
 * last merge or a tree of Fast2Sums (their latency was most of a short row's cost): every
 * value (all >= 0) split against one power of two M = 2^(e + 5), 2^e <= the largest < 2^(e+1)
 * (Rump's extraction), v = H + L with H = (v + M) - M, a multiple of ulp(M), and L = v - H,
 * both exact (|L| <= ulp(M) / 2 = 2^-48 2^e). hi = the sum of the (at most 17) H, exact in
 * any order (multiples of ulp(M) below 2 M); *lo = the L and the compensations summed
 * plainly, whose rounding is ~2^-95 of hi. On vectors where the target has them (the same
 * code in the vector and the general path: one finish per row). A NaN lane gives hi NaN. */
static inline double SML_NAME(sml__lanes_total_c)(const double *lanes, const double *tail,
                                                   int all, double *lo)
{
#if SML_HAVE_VEXP /* on vectors: a, b the block's lanes 0-3, 4-7; r, q the row's; c, d theirs */
    sml_f64x4 a, b, r, q, c, d, mx, big, t;
    memcpy(&a, lanes, sizeof a);
    memcpy(&b, lanes + 4, sizeof b);
    mx = SML__VMAX(a, b);
    if (all) {
        memcpy(&r, lanes + 8, sizeof r);
        memcpy(&q, lanes + 12, sizeof q);
        mx = SML__VMAX(mx, SML__VMAX(r, q));
    }
    mx = SML__VMAX(mx, ((sml_f64x4){0} + tail[0]));
    mx = SML__VMAX(mx, __builtin_shuffle(mx, (sml_i64x4){2, 3, 0, 1}));
    mx = SML__VMAX(mx, __builtin_shuffle(mx, (sml_i64x4){1, 0, 3, 2})); /* in every lane */
    big = (sml_f64x4)(((sml_u64x4)mx & 0x7FF0000000000000u) + (UINT64_C(5) << 52));
    t = (a + big) - big; /* H and L of a, b */
    a -= t;
    c = (b + big) - big;
    b -= c;
    t += c; /* the H of lanes k and k + 4: exact */
    a += b; /* the L */
    if (all) {
        memcpy(&c, lanes + 16, sizeof c);
        memcpy(&d, lanes + 20, sizeof d);
        b = (r + big) - big;
        r -= b;
        t += b;
        b = (q + big) - big;
        q -= b;
        t += b;
        a += (r + q) + (c + d);
    }
    {
        double h = (tail[0] + big[0]) - big[0];
        *lo = ((a[0] + a[1]) + (a[2] + a[3])) + ((tail[0] - h) + tail[1]);
        return ((t[0] + t[1]) + (t[2] + t[3])) + h;
    }
#else
    uint64_t bits;
    double mx = tail[0], big, hi = 0.0, h, l[SML_LANES] = {0, 0, 0, 0, 0, 0, 0, 0};
    int width = all ? 2 * SML_LANES : SML_LANES;
    for (int k = 0; k < width; k++) mx = lanes[k] > mx ? lanes[k] : mx;
    memcpy(&bits, &mx, sizeof bits);
    bits = (bits & 0x7FF0000000000000u) + (UINT64_C(5) << 52); /* 2^(exponent + 5) */
    memcpy(&big, &bits, sizeof big);
    for (int k = 0; k < width; k++) {
        h = (lanes[k] + big) - big;
        hi += h;
        l[k % SML_LANES] += lanes[k] - h;
    }
    if (all)
        for (int k = 0; k < SML_LANES; k++) l[k] += lanes[2 * SML_LANES + k];
    h = (tail[0] + big) - big;
    *lo = SML_LANE_TOTAL(l) + ((tail[0] - h) + tail[1]);
    return hi + h;
#endif
}
#undef SML__LANE_ADD
#endif

#if SML_VEXP_ON
/* sml_exp_split and sml_lanes_add of x[0..n) (n a multiple of SML_LANES; pos the row index
 * of x[0]) in one pass, on vectors, with the exp of normal results (SML_VEXP_GROUP, from
 * _rowops.h): the same values e[c], the same additions to the same lanes in the same
 * order (and the same merges), so the same bits. Stops at the first group of SML_LANES
 * entries with an x[c] - m out of the range of that exp (or NaN), before writing anything
 * of it (e may be x), and returns how many entries it did: the caller takes the general
 * path from there. */
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
    sml_f64x4 rlo, rhi, clo, chi; /* the row's lanes 8-11, 12-15, compensations 16-23 */
    memcpy(&rlo, lanes + 8, sizeof rlo);
    memcpy(&rhi, lanes + 12, sizeof rhi);
    memcpy(&clo, lanes + 16, sizeof clo);
    memcpy(&chi, lanes + 20, sizeof chi);
#else
    (void)pos;
    (void)merge;
#endif
    for (; i < n; i += SML_LANES) {
        SML_VGROUP_T v;
        SML_VMASK out;
        SML_VEXP_GROUP(x + i, m, v, out);
        if (SML_VANY(out)) break;
        SML_VSUM_GROUP(e + i, v, lo, hi, ones);
#if SML_COMPENSATED
        if (merge && (pos + i + SML_LANES) % SML_SUMBLOCK == 0) {
            SML__VLANE_ADD(rlo, clo, lo);
            SML__VLANE_ADD(rhi, chi, hi);
            lo = (sml_f64x4){0};
            hi = (sml_f64x4){0};
        }
#endif
    }
    memcpy(lanes, &lo, sizeof lo);
    memcpy(lanes + 4, &hi, sizeof hi);
#if SML_COMPENSATED
    memcpy(lanes + 8, &rlo, sizeof rlo);
    memcpy(lanes + 12, &rhi, sizeof rhi);
    memcpy(lanes + 16, &clo, sizeof clo);
    memcpy(lanes + 20, &chi, sizeof chi);
#endif
    for (int k = 0; k < (int)(sizeof ones / sizeof ones[0]); k++) *ties -= ones[k];
    return i;
}
#endif

static inline double SML_NAME(sml_row_expsum_lo)(const SML_T *x, SML_T *e, ptrdiff_t n,
                                                 SML_T m, double *excess, double *total_lo)
{
    SML_T exps[SML_CHUNK], rest[SML_CHUNK];
#if SML_COMPENSATED /* the block's lanes, the row's, their compensations (sml_lanes_add) */
    double lanes[3 * SML_LANES];
    for (int k = 0; k < 3 * SML_LANES; k += 4) { /* not memset: gcc makes a slow rep stos */
        lanes[k] = 0.0;
        lanes[k + 1] = 0.0;
        lanes[k + 2] = 0.0;
        lanes[k + 3] = 0.0;
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

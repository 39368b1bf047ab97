# Layer 2 of _kernels.pyx (see its docstring), a block of rows at a time: the cross-entropy
# of BLOCK_ROWS rows of few classes with class-index targets, transposed to (classes, rows)
# so that every step is vectorised across the rows. The same formula as the row path
# (index_row_terms, in _kernels_rows.pxi). Four steps (statistics, labels, formula, store),
# each a function below, inlined into block_loss_grad_index: their arrays are its locals.
# Included by _kernels.pyx; not compiled on its own.


cdef struct Block:
    # One block's rows i = 0 .. count - 1 (rows first + i of the call): the statistics of
    # index_row_terms along them, and what the formula makes of them. Arrays of their
    # own: the row max m and the tie count, in the logits' precision (a struct cannot hold
    # a fused type), and the rows' addresses, which go to the C tile code (a struct whose
    # address escapes so could alias the loads through them: gcc would no longer
    # vectorise block_labels).
    double rest[BLOCK_ROWS]        # the sum of the e_c that are not 1 (see sml_exp_split)
    double gap[BLOCK_ROWS]         # sum_c w_c (m - x_c), when eps != 0
    double excess[BLOCK_ROWS]      # S - 1
    double log_total[BLOCK_ROWS]   # log(S)
    double total[BLOCK_ROWS]       # S
    double total_lo[BLOCK_ROWS]    # S - fl(S) (float64: S's sum compensated; float32: 0)
    double p_lo[BLOCK_ROWS]        # p_scale's low part (float64, eps = z = 0; else 0)
    Py_ssize_t label[BLOCK_ROWS]   # the row's class, -1 for a row left out (see left_out)
    double fill[BLOCK_ROWS]        # a left-out row's loss and gradient entries
    double x_y[BLOCK_ROWS]
    double e_y[BLOCK_ROWS]
    double w_y[BLOCK_ROWS]
    double s[BLOCK_ROWS]           # the sample weight
    double loss[BLOCK_ROWS]
    double p_scale[BLOCK_ROWS]
    double smooth_scale[BLOCK_ROWS]
    double label_grad[BLOCK_ROWS]


cdef inline void block_loss_grad_index(
    Rows x,                    # IN  logits
    Rows g,                    # OUT gradient (base NULL: the loss only); may be x's memory
    Rows target,               # IN  int64 class indices or ignore_index
    Rows sample_weight,        # IN  double (base NULL: all ones)
    double *row_loss,          # OUT per-row losses, contiguous in row order
    Py_ssize_t first,          # the block: rows first .. first + count - 1
    Py_ssize_t count,          # <= BLOCK_ROWS
    Py_ssize_t n,              # classes, <= BLOCK_MAX_CLASSES_FLOAT / _DOUBLE
    LossOptions o,
    floating *xt,              # scratch, n * BLOCK_ROWS: the block transposed
) noexcept nogil:
    """Rows first .. first+count-1, few classes each: the statistics of index_row_terms
    for all of them at once, on the block transposed to (classes, rows), so that the
    max, exp and sums run along the rows (vectorised), not along short rows; the
    gradient is formed as it is transposed back (one pass fewer: 1.2x in float32)."""
    cdef Block b
    cdef floating m[BLOCK_ROWS]
    cdef floating ties[BLOCK_ROWS]   # a count (<= 23): exact in either precision
    cdef const char *x_rows[BLOCK_ROWS]
    cdef char *g_rows[BLOCK_ROWS]
    cdef Py_ssize_t i
    cdef double entsum[BLOCK_ROWS]
    for i in range(count):
        x_rows[i] = row_at(x, first + i)
    block_statistics(&b, m, ties, x_rows, x.step, count, n, o, xt,
                     entsum if o.entropy_out != NULL else NULL,
                     o.argmax_out + first if o.argmax_out != NULL else NULL)
    # Row i's logits are still intact here, also in place: the gradient is written only
    # after the formula.
    block_labels(&b, m, ties, x_rows, x.step, target, sample_weight, first, count, n, o, xt)
    if o.lse_out != NULL or o.entropy_out != NULL:
        block_stats(&b, m, entsum, x_rows, x.step, first, count, n, o)
    block_formula(&b, m, row_loss + first, g.base != NULL, count, n, o, xt)
    if g.base == NULL:
        return
    for i in range(count):
        g_rows[i] = row_at(g, first + i)
    block_store(&b, g_rows, g.step, count, n, o, xt)


cdef inline void add_rest(Block *b, double *rest_lo, Py_ssize_t i, floating v) noexcept nogil:
    """rest += v unless v is 1 (a tie, counted apart); for double as rest + rest_lo by
    TwoSum (issue 19: S to ~2^-104), float32's terms summed plainly in double."""
    cdef double term = 0.0 if v == 1 else <double>v
    cdef double total, back
    if floating is float:
        b.rest[i] += term
    else:
        total = b.rest[i] + term
        back = total - b.rest[i]
        rest_lo[i] += (b.rest[i] - (total - back)) + (term - back)
        b.rest[i] = total


cdef inline void block_statistics(Block *b, floating *m, floating *ties,
                                  const char *const *x_rows, Py_ssize_t step,
                                  Py_ssize_t count, Py_ssize_t n, LossOptions o,
                                  floating *xt, double *entsum,
                                  int64_t *argmax) noexcept nogil:
    """Step 1: the block transposed into xt (xt[c, i] = x[i, c]); each row's max m, gap
    sum, e_c = exp(x_c - m) over xt, and S = ties + rest split as in sml_exp_split
    (excess = S - 1 and log S). Extra outputs when not NULL: each row's argmax, and the
    entropy's sum_c e_c (m - x_c) (see row_stats)."""
    cdef const double *w = o.w
    cdef Py_ssize_t i, c
    cdef floating v
    cdef double w_c
    if floating is float:
        sml_block_load_f(x_rows, step, count, n, xt, BLOCK_ROWS)
    else:
        sml_block_load_d(x_rows, step, count, n, xt, BLOCK_ROWS)
    for i in range(count):
        m[i] = xt[i]
    for c in range(1, n):
        for i in range(count):
            v = xt[c * BLOCK_ROWS + i]
            m[i] = v if v > m[i] else m[i]
    cdef double rest_lo[BLOCK_ROWS]
    cdef double sum_  # the discarded low part of excess
    for i in range(count):
        b.gap[i] = 0.0
        b.rest[i] = 0.0
        rest_lo[i] = 0.0
        ties[i] = 0.0
    cdef double gap_lo[BLOCK_ROWS]
    if o.eps != 0.0:  # before the exponentials overwrite xt
        for c in range(n):
            w_c = w[c] if w != NULL else 1.0
            for i in range(count):
                b.gap[i] += w_c * (<double>m[i] - <double>xt[c * BLOCK_ROWS + i])
        if floating is double:  # m - x_c as hi + lo: the lo summed apart, as sml_row_gapsum
            for i in range(count):
                gap_lo[i] = 0.0
            for c in range(n):
                w_c = w[c] if w != NULL else 1.0
                for i in range(count):
                    gap_lo[i] += w_c * sml_sub_lo(m[i], xt[c * BLOCK_ROWS + i])
            for i in range(count):
                b.gap[i] = b.gap[i] + gap_lo[i]
    if argmax != NULL:
        block_argmax(m, count, n, xt, argmax)
    cdef bint in_range
    if floating is float:
        in_range = sml_block_in_range_f(xt, BLOCK_ROWS, count, n, m)
    else:
        in_range = sml_block_in_range_d(xt, BLOCK_ROWS, count, n, m)
    if in_range:  # each a loop of its own (a constant in_range after inlining)
        block_exps(b, rest_lo, m, ties, count, n, xt, entsum, True)
    else:
        block_exps(b, rest_lo, m, ties, count, n, xt, entsum, False)
    for i in range(count):  # vectorised along the rows
        b.excess[i] = sml_add_lo(<double>ties[i] - 1.0, b.rest[i], rest_lo[i], &sum_)
        b.log_total[i] = sml_log1p(b.excess[i])
        b.total[i] = sml_add_lo(<double>ties[i], b.rest[i], rest_lo[i], &b.total_lo[i])


cdef inline void block_exps(Block *b, double *rest_lo, const floating *m, floating *ties,
                            Py_ssize_t count, Py_ssize_t n, floating *xt, double *entsum,
                            bint in_range) noexcept nogil:
    """block_statistics' exponentials: e_c = exp(x_c - m) of the exact difference in xt,
    S's parts (add_rest, ties) and, when entsum is not NULL, the entropy's sum. in_range
    (sml_block_in_range_*: every x_c - m of the block in the normal-result range): the
    exp without its clamps (sml_block_exp_sub_*), bitwise sml_exp*_sub's."""
    cdef Py_ssize_t i, c
    cdef floating u, v
    if entsum != NULL:  # the loop below, with the entropy's sum
        for i in range(count):
            entsum[i] = 0.0
        for c in range(n):
            for i in range(count):
                u = xt[c * BLOCK_ROWS + i]
                v = block_exp_sub(u, m[i], in_range)
                xt[c * BLOCK_ROWS + i] = v
                add_rest(b, rest_lo, i, v)
                ties[i] += 1 if v == 1 else 0
                entsum[i] += 0.0 if v == 0 else <double>v * (<double>m[i] - <double>u)
    else:
        for c in range(n):  # exp of the exact x_c - m (sml_exp*_sub)
            for i in range(count):
                v = block_exp_sub(xt[c * BLOCK_ROWS + i], m[i], in_range)
                xt[c * BLOCK_ROWS + i] = v
                add_rest(b, rest_lo, i, v)
                ties[i] += 1 if v == 1 else 0


cdef inline floating block_exp_sub(floating x, floating m, bint in_range) noexcept nogil:
    if floating is float:
        return sml_block_exp_sub_f(x, m) if in_range else sml_expf_sub(x, m)
    else:
        return sml_block_exp_sub_d(x, m) if in_range else sml_exp_sub(x, m)


cdef inline void block_argmax(const floating *m, Py_ssize_t count, Py_ssize_t n,
                              const floating *xt, int64_t *argmax) noexcept nogil:
    """Each row's np.argmax from the transposed block (before its exponentials): the
    first NaN, else the first entry equal to its max."""
    cdef Py_ssize_t first_max[BLOCK_ROWS]
    cdef Py_ssize_t first_nan[BLOCK_ROWS]
    cdef Py_ssize_t i, c
    cdef floating v
    for i in range(count):
        first_max[i] = n
        first_nan[i] = n
    for c in range(n - 1, -1, -1):  # backwards: the last write is the first index
        for i in range(count):
            v = xt[c * BLOCK_ROWS + i]
            first_max[i] = c if v == m[i] else first_max[i]
            first_nan[i] = c if v != v else first_nan[i]
    for i in range(count):
        argmax[i] = first_nan[i] if first_nan[i] < n else (first_max[i] if first_max[i] < n else 0)


cdef inline void block_stats(Block *b, const floating *m, const double *entsum,
                             const char *const *x_rows, Py_ssize_t step, Py_ssize_t first,
                             Py_ssize_t count, Py_ssize_t n, LossOptions o) noexcept nogil:
    """The block's lse and entropy (row_stats' formulas), every row's, ignored ones too."""
    cdef Py_ssize_t i
    for i in range(count):
        if isfinite(m[i]):
            if o.lse_out != NULL:
                o.lse_out[first + i] = <double>m[i] + b.log_total[i]
            if o.entropy_out != NULL:
                o.entropy_out[first + i] = b.log_total[i] + entsum[i] / b.total[i]
        else:
            if o.lse_out != NULL:
                o.lse_out[first + i] = nonfinite_row_lse(x_rows[i], step, n, m[i])
            if o.entropy_out != NULL:
                o.entropy_out[first + i] = NAN


cdef inline void block_labels(Block *b, const floating *m, const floating *ties,
                              const char *const *x_rows, Py_ssize_t step, Rows target,
                              Rows sample_weight, Py_ssize_t first, Py_ssize_t count,
                              Py_ssize_t n, LossOptions o, const floating *xt) noexcept nogil:
    """Step 2: each row's class, and the inputs of the formula that depend on it. A row
    left out (left_out) gets class 0 as a stand-in, whose result is then dropped."""
    cdef const double *w = o.w
    cdef Py_ssize_t i, y
    for i in range(count):
        y = (<const int64_t *>row_at(target, first + i))[0]
        if left_out(y, n, o):
            b.fill[i] = left_out_value(y, o)
            b.label[i] = -1
            y = 0
        else:
            b.label[i] = y
        b.x_y[i] = (<const floating *>(x_rows[i] + y * step))[0]
        b.e_y[i] = xt[y * BLOCK_ROWS + i]
        b.w_y[i] = w[y] if w != NULL else 1.0
        if not isfinite(m[i]):  # a row with +inf or NaN, or all -inf: inf - inf = NaN
            b.excess[i] = NAN
            b.log_total[i] = NAN
            b.total[i] = NAN
    block_sample_weights(b.s, sample_weight, first, count)


cdef inline void block_sample_weights(double *s, Rows sample_weight, Py_ssize_t first,
                                      Py_ssize_t count) noexcept nogil:
    """s[i] = row first + i's sample weight (1 without weights): whether there are any
    tested once, not per row (without weights the fill vectorises)."""
    cdef Py_ssize_t i
    if sample_weight.base == NULL:
        for i in range(count):
            s[i] = 1.0
    else:
        for i in range(count):
            s[i] = (<const double *>row_at(sample_weight, first + i))[0]


cdef inline void block_formula(Block *b, const floating *m, double *row_loss, bint with_grad,
                               Py_ssize_t count, Py_ssize_t n, LossOptions o,
                               floating *xt) noexcept nogil:
    """Step 3: index_row_terms along the rows (block_terms), then what its vector loop
    cannot do: the losses (left-out rows filled), and the gradient of a row whose scales
    overflow formed in xt now, divided last (see grad_divided), kept by block_store."""
    cdef LossOptions constant = o
    cdef IndexRowTerms terms
    cdef Py_ssize_t i
    if o.focal_gamma != 0.0:
        block_focal_terms(b, m, count, o)
    elif o.eps == 0.0 and o.z == 0.0:  # options known zero at compile time: vectorised
        constant.eps = 0.0
        constant.z = 0.0
        block_terms(b, m, count, n, constant)
    else:
        block_terms(b, m, count, n, o)
    if floating is double:  # float32 gradients are formed in double from p_scale: no lo
        block_p_lo(b, count, o)
    else:
        for i in range(count):
            b.p_lo[i] = 0.0
    cdef Py_ssize_t divided = 0
    cdef bint kept
    for i in range(count):  # branch-free: vectorised along the rows
        kept = b.label[i] >= 0
        row_loss[i] = b.loss[i] if kept else b.fill[i]
        divided += kept and divide_last(b.p_scale[i], b.smooth_scale[i], b.s[i], o)
    if with_grad and divided != 0:  # rare: a tiny W, huge weights (see divide_last)
        for i in range(count):
            if b.label[i] >= 0 and divide_last(b.p_scale[i], b.smooth_scale[i], b.s[i], o):
                terms = any_row_terms(m[i], b.x_y[i], b.gap[i], b.total[i], b.excess[i],
                                        b.log_total[i], b.e_y[i], n, b.w_y[i], b.s[i], o)
                grad_divided(&xt[i], BLOCK_ROWS, n, terms, o)
                b.p_scale[i] = 1.0
                b.smooth_scale[i] = 0.0
    for i in range(count):  # a left-out row's gradient is block_store's fill
        kept = b.label[i] >= 0
        b.p_scale[i] = b.p_scale[i] if kept else 0.0
        b.smooth_scale[i] = b.smooth_scale[i] if kept else 0.0


cdef inline void block_p_lo(Block *b, Py_ssize_t count, LossOptions o) noexcept nogil:
    """float64 rows, eps = z = 0: p_scale = s w_y / (S W) again, as hi + lo from S's own lo,
    for the gradient e_c p_scale rounded once (issue 19), and at a labelled max (e_y = 1)
    the label's entry -(1 - p_y) s w_y / W = -(s w_y excess) / (S W) rounded once; else
    p_lo = 0. Both quotients from one division (sml_block_quot_pair), branch-free
    (vectorised along the rows); a row whose S W is outside its range (a tiny or huge W)
    is done again by sml_quot_dd after the loop."""
    cdef Py_ssize_t i, redo
    cdef double num
    if not (o.eps == 0.0 and o.z == 0.0 and o.focal_gamma == 0.0):  # the focal loss: not yet
        for i in range(count):
            b.p_lo[i] = 0.0
        return
    redo = sml_block_p_lo(count, b.s, b.w_y, b.excess, b.total, b.total_lo, b.label, b.e_y,
                          o.divisor, b.p_scale, b.p_lo, b.label_grad)
    if redo == 0:
        return
    for i in range(count):  # S W beyond sml_block_quot_pair's range: two divisions each
        if (b.label[i] >= 0 and isfinite(b.p_scale[i])
                and not sml_block_quot_ok(b.total[i], o.divisor)):
            num = b.s[i] * b.w_y[i]
            b.p_scale[i] = sml_quot_dd(num, b.total[i], b.total_lo[i], o.divisor, &b.p_lo[i])
            if b.e_y[i] == 1.0:
                b.label_grad[i] = sml_label_grad_at_max(num, b.excess[i], b.total[i],
                                                        b.total_lo[i], o.divisor)


cdef inline void block_terms(Block *b, const floating *m, Py_ssize_t count, Py_ssize_t n,
                             LossOptions o) noexcept nogil:
    """index_row_terms of every row of the block. gcc 12 vectorises the loop only when
    o.eps and o.z are compile-time constants (its branches on them are then gone): the
    caller passes literal zeros for the common case."""
    cdef Py_ssize_t i
    cdef IndexRowTerms terms
    for i in range(count):
        terms = index_row_terms(m[i], b.x_y[i], b.gap[i], b.total[i], b.excess[i],
                                b.log_total[i], b.e_y[i], n, b.w_y[i], b.s[i], o)
        b.loss[i] = terms.loss
        b.p_scale[i] = terms.p_scale
        b.smooth_scale[i] = terms.smooth_scale
        b.label_grad[i] = terms.label_grad


cdef inline void block_focal_terms(Block *b, const floating *m, Py_ssize_t count,
                                   LossOptions o) noexcept nogil:
    """block_terms of the focal loss (focal_row_terms), its own loop (see any_row_terms)."""
    cdef Py_ssize_t i
    cdef IndexRowTerms terms
    for i in range(count):
        terms = focal_row_terms(m[i], b.x_y[i], b.total[i], b.log_total[i], b.w_y[i], b.s[i], o)
        b.loss[i] = terms.loss
        b.p_scale[i] = terms.p_scale
        b.smooth_scale[i] = terms.smooth_scale
        b.label_grad[i] = terms.label_grad


cdef inline void block_store(Block *b, char *const *g_rows, Py_ssize_t step,
                             Py_ssize_t count, Py_ssize_t n, LossOptions o,
                             const floating *xt) noexcept nogil:
    """Step 4: the gradient, transposed out of xt as it is formed (grad_c = p_scale e_c -
    smooth_scale w_c), then the label's entry, or the whole row if it is left out."""
    cdef Py_ssize_t i, c
    if floating is float:
        sml_block_store_grad_f(g_rows, step, count, n, xt, BLOCK_ROWS, b.p_scale,
                               b.smooth_scale, o.w)
    else:
        sml_block_store_grad_d(g_rows, step, count, n, xt, BLOCK_ROWS, b.p_scale, b.p_lo,
                               b.smooth_scale, o.w)
    for i in range(count):
        if b.label[i] < 0:
            for c in range(n):
                (<floating *>(g_rows[i] + c * step))[0] = <floating>b.fill[i]
        else:
            (<floating *>(g_rows[i] + b.label[i] * step))[0] = <floating>b.label_grad[i]


# ---- groups of rows along their classes ------------------------------------------------
# The row path (row_loss_grad_index) for rows of more classes than a block takes, a group
# of up to BLOCK_ROWS rows at a time: each row's max and exponentials go along its classes
# as there, but the formula of the whole group runs in one loop along the rows
# (block_terms: vectorised, log1p and the divisions included) instead of once per row in
# scalar code, whose latency (two log1p divisions, 1/S, p_scale / W) a row of a few dozen
# classes cannot hide. The same operations on the same values as row_loss_grad_index: the
# same bits.


cdef inline Py_ssize_t group_rows(Py_ssize_t n, size_t itemsize) noexcept nogil:
    """Rows per group for rows of n classes (0: the row path, one row at a time): as many
    as keep the group's gradient within GROUP_BYTES (they are read again by its last
    step), at most BLOCK_ROWS; none where the per-row formula is a small part of a row."""
    cdef Py_ssize_t rows = GROUP_BYTES // (n * <Py_ssize_t>itemsize)
    if n > GROUP_MAX_CLASSES:
        return 0
    return BLOCK_ROWS if rows > BLOCK_ROWS else (rows if rows >= 4 else 4)


cdef inline void group_loss_grad_index(
    Rows x,                    # IN  logits, classes contiguous
    Rows g,                    # OUT gradient, classes contiguous (base NULL: the loss only)
    Rows target,               # IN  int64 class indices or ignore_index
    Rows sample_weight,        # IN  double (base NULL: all ones)
    double *row_loss,          # OUT per-row losses, contiguous in row order
    Py_ssize_t first,          # the group: rows first .. first + count - 1
    Py_ssize_t count,          # <= BLOCK_ROWS
    Py_ssize_t n,
    LossOptions o,
    floating *m,               # scratch, BLOCK_ROWS: the rows' max
    floating *stats,           # scratch (n) for the entropy (stats_exps), or NULL
) noexcept nogil:
    """Rows first .. first+count-1 of cross_entropy_index's row path, as row_loss_grad_index
    computes them (see the section's comment): statistics row by row, the formula along
    the rows, the gradient row by row."""
    cdef Block b
    cdef const double *w = o.w
    cdef const floating *xi
    cdef floating *gi
    cdef Py_ssize_t i, y
    cdef double excess
    cdef bint with_grad = g.base != NULL
    cdef bint want_stats = wants_stats(o)
    cdef floating *e
    for i in range(count):
        y = (<const int64_t *>row_at(target, first + i))[0]
        if left_out(y, n, o):
            if want_stats:
                row_stats_alone(<const floating *>row_at(x, first + i), n, o, first + i, stats)
            b.fill[i] = left_out_value(y, o)
            b.label[i] = -1
            m[i] = 0  # stand-in statistics of a row whose result is dropped
            b.x_y[i] = 0.0
            b.gap[i] = 0.0
            b.total[i] = 1.0
            b.total_lo[i] = 0.0
            b.excess[i] = 0.0
            b.e_y[i] = 1.0
            b.w_y[i] = 1.0
            b.s[i] = 0.0
            continue
        b.label[i] = y
        xi = <const floating *>row_at(x, first + i)
        gi = <floating *>row_at(g, first + i) if with_grad else NULL
        m[i] = row_max(xi, n)
        if want_stats:
            row_stats_first(xi, n, m[i], o, first + i)
        b.x_y[i] = xi[y]  # read before gi overwrites xi
        b.gap[i] = row_gapsum(xi, w, n, m[i]) if o.eps != 0.0 else 0.0
        e = stats_exps(xi, gi, o, stats) if want_stats else gi
        b.total[i] = row_expsum_lo(xi, e, n, m[i], &excess, &b.total_lo[i])
        b.excess[i] = excess
        b.e_y[i] = e[y] if e != NULL else 0.0
        if want_stats:  # before the gradient overwrites xi (in place)
            row_stats(xi, e, gi, n, m[i], b.total[i], sml_log1p(excess), o, first + i)
        b.w_y[i] = w[y] if w != NULL else 1.0
        b.s[i] = sample_weight_at(sample_weight, first + i)
    for i in range(count):  # vectorised along the rows
        b.log_total[i] = sml_log1p(b.excess[i])
    cdef LossOptions constant = o
    if o.focal_gamma != 0.0:
        block_focal_terms(&b, m, count, o)
    elif o.eps == 0.0 and o.z == 0.0:  # options known zero at compile time: vectorised
        constant.eps = 0.0
        constant.z = 0.0
        block_terms(&b, m, count, n, constant)
    else:
        block_terms(&b, m, count, n, o)
    for i in range(count):
        if b.label[i] < 0:
            row_loss[first + i] = b.fill[i]
            if with_grad:
                row_fill(g, first + i, n, <floating>b.fill[i])
            continue
        row_loss[first + i] = b.loss[i]
        if with_grad:
            group_row_grad(<floating *>row_at(g, first + i), n, b.label[i], &b, i, m[i], o)


cdef inline void group_row_grad(floating *g, Py_ssize_t n, Py_ssize_t y, Block *b,
                                Py_ssize_t i, floating m, LossOptions o) noexcept nogil:
    """Row i's gradient over its e_c in g, as row_loss_grad_index forms it."""
    cdef const double *w = o.w
    cdef floating p_scale = <floating>b.p_scale[i]
    cdef floating smooth_scale = <floating>b.smooth_scale[i]
    cdef IndexRowTerms terms
    cdef Py_ssize_t c
    cdef double k_hi, k_lo
    if (not (isfinite(p_scale) and isfinite(smooth_scale))
            or divide_last(b.p_scale[i], b.smooth_scale[i], b.s[i], o)):
        terms = any_row_terms(m, b.x_y[i], b.gap[i], b.total[i], b.excess[i],
                                b.log_total[i], b.e_y[i], n, b.w_y[i], b.s[i], o)
        grad_divided(g, 1, n, terms, o)
    elif o.eps == 0.0 and o.z == 0.0 and o.focal_gamma == 0.0:
        # e_c p_scale rounded once (issue 19), as row_loss_grad_index
        if floating is float:
            sml_scale_f(g, n, b.p_scale[i])
        else:
            k_hi = sml_quot_dd(b.s[i] * b.w_y[i], b.total[i], b.total_lo[i], o.divisor, &k_lo)
            for c in range(n):
                g[c] = sml_mul_dd(g[c], k_hi, k_lo)
    elif floating is double and o.focal_gamma == 0.0:  # as row_loss_grad_index
        terms = any_row_terms(m, b.x_y[i], b.gap[i], b.total[i], b.excess[i],
                              b.log_total[i], b.e_y[i], n, b.w_y[i], b.s[i], o)
        smoothed_grad_d(g, n, terms, b.total[i], b.total_lo[i], o)
    elif o.eps == 0.0:
        for c in range(n):
            g[c] = g[c] * p_scale
    elif w == NULL:
        for c in range(n):
            g[c] = fused(g[c], p_scale, -smooth_scale)  # explicit: the same bits on every path
    else:
        for c in range(n):
            g[c] = fused(g[c], p_scale, -<floating>(b.smooth_scale[i] * w[c]))
    g[y] = <floating>b.label_grad[i]
    if floating is double:
        if (o.eps == 0.0 and o.z == 0.0 and o.focal_gamma == 0.0 and b.e_y[i] == 1.0
                and isfinite(b.p_scale[i])):
            # as row_loss_grad_index (issue 19)
            g[y] = sml_label_grad_at_max(b.s[i] * b.w_y[i], b.excess[i], b.total[i],
                                         b.total_lo[i], o.divisor)


# ---- gradient_hessian in blocks ---------------------------------------------------------
# row_grad_hess for BLOCK_ROWS rows of few classes at a time, on the block transposed as
# cross-entropy's (block_statistics: the same max, exponentials and S = ties + rest), the
# per-row quotients and the per-entry formula then along the rows (vectorised), the
# gradient and hessian transposed back unchanged (sml_block_store_*). The formula is
# row_grad_hess's, operation for operation; S is summed in class order (the row path: in
# SML_LANES lanes), so a row's bits can differ from the row path's in the last place of S
# (C > 8), never between threads or block positions.


cdef inline void block_grad_hess(
    const floating *kind,      # only selects the precision (the logits' first entry)
    Rows x,                    # IN  logits
    Rows g,                    # OUT s (p - onehot); may be x's memory
    Rows h,                    # OUT s p (1 - p)
    Rows labels,               # IN  int64 classes (the facade has checked 0 <= y < n)
    Rows sample_weight,        # IN  double (base NULL: all ones)
    Py_ssize_t first,          # the block: rows first .. first + count - 1
    Py_ssize_t count,          # <= BLOCK_ROWS
    Py_ssize_t n,              # classes, <= BLOCK_MAX_CLASSES_FLOAT / _DOUBLE
    LossOptions o,             # loss_options without weights (block_statistics reads w, eps)
) noexcept nogil:
    """Rows first .. first+count-1 of gradient_hessian (see the section's comment); a row
    whose class is out of range gets NaN, as in the row loop."""
    cdef Block b
    cdef floating xt[BLOCK_MAX_CLASSES_FLOAT * BLOCK_ROWS]  # e, then the gradient
    cdef floating ht[BLOCK_MAX_CLASSES_FLOAT * BLOCK_ROWS]  # the hessian
    cdef floating m[BLOCK_ROWS]
    cdef floating ties[BLOCK_ROWS]
    cdef const char *x_rows[BLOCK_ROWS]
    cdef char *out_rows[BLOCK_ROWS]
    cdef double inv[BLOCK_ROWS]
    cdef double inv_lo[BLOCK_ROWS]
    cdef double c_max[BLOCK_ROWS]
    cdef double c_max_lo[BLOCK_ROWS]
    cdef Py_ssize_t i, c, y, bad = 0
    cdef double e, s, p, lo
    for i in range(count):
        x_rows[i] = row_at(x, first + i)
    block_statistics(&b, m, ties, x_rows, x.step, count, n, o, xt, NULL, NULL)
    for i in range(count):
        y = (<const int64_t *>row_at(labels, first + i))[0]
        if out_of_range(y, n):  # refused by the facade; never used as an address
            bad += 1
            y = 0
        b.label[i] = y
        b.e_y[i] = xt[y * BLOCK_ROWS + i]
        if not isfinite(m[i]):  # as sml_row_expsum_lo: a row with +inf or NaN, or all -inf
            b.excess[i] = NAN
            b.total[i] = NAN
            b.total_lo[i] = 0.0
    block_sample_weights(b.s, sample_weight, first, count)
    for i in range(count):
        inv[i] = sml_quot_dd(1.0, b.total[i], b.total_lo[i], 1.0, &inv_lo[i])
    if floating is float:
        for c in range(n):
            for i in range(count):
                e = xt[c * BLOCK_ROWS + i]
                ht[c * BLOCK_ROWS + i] = <floating>(
                    b.s[i] * (e * inv[i]) * complement(e, b.total[i], b.excess[i]))
                xt[c * BLOCK_ROWS + i] = <floating>(b.s[i] * e * inv[i])
        for i in range(count):
            xt[b.label[i] * BLOCK_ROWS + i] = <floating>(
                -b.s[i] * complement(b.e_y[i], b.total[i], b.excess[i]))
    else:
        for i in range(count):
            lo = 0.0
            if b.excess[i] > 0.0:
                c_max[i] = sml_quot_dd(b.excess[i], b.total[i], b.total_lo[i], 1.0, &lo)
            else:  # 0, or NaN (a row with NaN): as complement gives it
                c_max[i] = b.excess[i] / b.total[i]
            c_max_lo[i] = lo
        for c in range(n):
            for i in range(count):
                s = b.s[i]
                ht[c * BLOCK_ROWS + i] = s * sml_grad_hess_d(
                    xt[c * BLOCK_ROWS + i], inv[i], inv_lo[i], c_max[i], c_max_lo[i], &p)
                xt[c * BLOCK_ROWS + i] = s * p
        for i in range(count):
            if b.e_y[i] == 1.0:  # -(1 - p_y) s = -s excess / S, rounded once
                xt[b.label[i] * BLOCK_ROWS + i] = -b.s[i] * (c_max[i] + c_max_lo[i])
            else:
                xt[b.label[i] * BLOCK_ROWS + i] = -b.s[i] * complement(
                    b.e_y[i], b.total[i], b.excess[i])
    for i in range(count):
        out_rows[i] = row_at(g, first + i)
    if floating is float:
        sml_block_store_f(out_rows, g.step, count, n, xt, BLOCK_ROWS)
    else:
        sml_block_store_d(out_rows, g.step, count, n, xt, BLOCK_ROWS)
    for i in range(count):
        out_rows[i] = row_at(h, first + i)
    if floating is float:
        sml_block_store_f(out_rows, h.step, count, n, ht, BLOCK_ROWS)
    else:
        sml_block_store_d(out_rows, h.step, count, n, ht, BLOCK_ROWS)
    if bad == 0:
        return
    for i in range(count):
        y = (<const int64_t *>row_at(labels, first + i))[0]
        if out_of_range(y, n):
            row_fill(g, first + i, n, <floating>NAN)
            row_fill(h, first + i, n, <floating>NAN)


cdef inline void block_softmax(
    const floating *kind,      # only selects the precision (the logits' first entry)
    Rows x,                    # IN  logits
    Rows out,                  # OUT softmax or log_softmax; may be x's memory
    Py_ssize_t first,          # the block: rows first .. first + count - 1
    Py_ssize_t count,          # <= BLOCK_ROWS
    Py_ssize_t n,              # classes, <= BLOCK_MAX_CLASSES_FLOAT / _DOUBLE
    bint log_output,
    LossOptions o,             # loss_options without weights (block_statistics reads w, eps)
) noexcept nogil:
    """row_softmax of rows first .. first+count-1, as block_grad_hess: the block's
    statistics, then row_softmax's formula along the rows, transposed back: p_c = e_c / S
    rounded once (1/S as hi + lo from S's own lo), or (log_output) x_c - m - log S as
    row_softmax forms it, on the logits loaded again (xt holds the e_c by then)."""
    cdef Block b
    cdef floating xt[BLOCK_MAX_CLASSES_FLOAT * BLOCK_ROWS]
    cdef floating m[BLOCK_ROWS]
    cdef floating ties[BLOCK_ROWS]
    cdef const char *x_rows[BLOCK_ROWS]
    cdef char *out_rows[BLOCK_ROWS]
    cdef double inv[BLOCK_ROWS]
    cdef double inv_lo[BLOCK_ROWS]
    cdef Py_ssize_t i, c
    for i in range(count):
        x_rows[i] = row_at(x, first + i)
    block_statistics(&b, m, ties, x_rows, x.step, count, n, o, xt, NULL, NULL)
    if log_output:
        block_log_softmax(&b, m, x_rows, x.step, count, n, xt)
    else:
        for i in range(count):
            if not isfinite(m[i]):  # as sml_row_expsum_lo: a row with +inf or NaN, or all -inf
                b.total[i] = NAN
                b.total_lo[i] = 0.0
            inv[i] = sml_quot_dd(1.0, b.total[i], b.total_lo[i], 1.0, &inv_lo[i])
        for c in range(n):
            for i in range(count):
                if floating is float:
                    xt[c * BLOCK_ROWS + i] = sml_scale1_f(xt[c * BLOCK_ROWS + i], inv[i])
                else:
                    xt[c * BLOCK_ROWS + i] = sml_mul_dd(xt[c * BLOCK_ROWS + i], inv[i], inv_lo[i])
    for i in range(count):
        out_rows[i] = row_at(out, first + i)
    if floating is float:
        sml_block_store_f(out_rows, out.step, count, n, xt, BLOCK_ROWS)
    else:
        sml_block_store_d(out_rows, out.step, count, n, xt, BLOCK_ROWS)


cdef inline void block_log_softmax(Block *b, const floating *m, const char *const *x_rows,
                                   Py_ssize_t step, Py_ssize_t count, Py_ssize_t n,
                                   floating *xt) noexcept nogil:
    """log_softmax of the block into xt, after block_statistics: the logits loaded into xt
    again, then row_softmax's x_c - (m + log S) along the rows (float32: (x_c - m) - log S
    in double, rounded once; float64: sml_sub_dd of m + log S as k_hi + k_lo)."""
    cdef double k_hi[BLOCK_ROWS]
    cdef double k_lo[BLOCK_ROWS]
    cdef Py_ssize_t i, c
    for i in range(count):  # as sml_row_expsum_lo: a row with +inf or NaN, or all -inf
        b.log_total[i] = b.log_total[i] if isfinite(m[i]) else NAN
    if floating is float:
        sml_block_load_f(x_rows, step, count, n, xt, BLOCK_ROWS)
        for c in range(n):
            for i in range(count):
                xt[c * BLOCK_ROWS + i] = <floating>(
                    (<double>xt[c * BLOCK_ROWS + i] - <double>m[i]) - b.log_total[i])
    else:
        sml_block_load_d(x_rows, step, count, n, xt, BLOCK_ROWS)
        for i in range(count):
            k_hi[i] = sml_add_lo(m[i], b.log_total[i], 0.0, &k_lo[i])
        for c in range(n):
            for i in range(count):
                xt[c * BLOCK_ROWS + i] = sml_sub_dd(xt[c * BLOCK_ROWS + i], k_hi[i], k_lo[i])


cdef inline void block_logsumexp(
    const floating *kind,      # only selects the precision (the logits' first entry)
    Rows x,                    # IN  logits
    Py_ssize_t first,          # the block: rows first .. first + count - 1
    Py_ssize_t count,          # <= BLOCK_ROWS
    Py_ssize_t n,              # classes, <= BLOCK_MAX_CLASSES_FLOAT / _DOUBLE
    LossOptions o,             # loss_options without weights, lse_out the results (row r at [r])
) noexcept nogil:
    """row_logsumexp of rows first .. first+count-1 into o.lse_out: the block's statistics,
    m + log S (block_stats: the cross-entropy's lse output, a row with +inf, NaN or all -inf
    as row_logsumexp gives it); nothing is transposed back."""
    cdef Block b
    cdef floating xt[BLOCK_MAX_CLASSES_FLOAT * BLOCK_ROWS]
    cdef floating m[BLOCK_ROWS]
    cdef floating ties[BLOCK_ROWS]
    cdef const char *x_rows[BLOCK_ROWS]
    cdef Py_ssize_t i
    for i in range(count):
        x_rows[i] = row_at(x, first + i)
    block_statistics(&b, m, ties, x_rows, x.step, count, n, o, xt, NULL, NULL)
    block_stats(&b, m, NULL, x_rows, x.step, first, count, n, o)

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
    for i in range(count):
        x_rows[i] = row_at(x, first + i)
    block_statistics(&b, m, ties, x_rows, x.step, count, n, o, xt)
    # Row i's logits are still intact here, also in place: the gradient is written only
    # after the formula.
    block_labels(&b, m, ties, x_rows, x.step, target, sample_weight, first, count, n, o, xt)
    block_formula(&b, m, row_loss + first, g.base != NULL, count, n, o, xt)
    if g.base == NULL:
        return
    for i in range(count):
        g_rows[i] = row_at(g, first + i)
    block_store(&b, g_rows, g.step, count, n, o, xt)


cdef inline void block_statistics(Block *b, floating *m, floating *ties,
                                  const char *const *x_rows, Py_ssize_t step,
                                  Py_ssize_t count, Py_ssize_t n, LossOptions o,
                                  floating *xt) noexcept nogil:
    """Step 1: the block transposed into xt (xt[c, i] = x[i, c]); each row's max m, gap
    sum, e_c = exp(x_c - m) over xt, and S = ties + rest split as in sml_exp_split
    (excess = S - 1 and log S)."""
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
    for i in range(count):
        b.gap[i] = 0.0
        b.rest[i] = 0.0
        ties[i] = 0.0
    if o.eps != 0.0:  # before the exponentials overwrite xt
        for c in range(n):
            w_c = w[c] if w != NULL else 1.0
            for i in range(count):
                b.gap[i] += w_c * (<double>m[i] - <double>xt[c * BLOCK_ROWS + i])
    for c in range(n):
        for i in range(count):
            if floating is float:
                v = sml_expf(xt[c * BLOCK_ROWS + i] - m[i])
            else:
                v = sml_exp(xt[c * BLOCK_ROWS + i] - m[i])
            xt[c * BLOCK_ROWS + i] = v
            b.rest[i] += 0.0 if v == 1 else <double>v
            ties[i] += 1 if v == 1 else 0
    for i in range(count):  # vectorised along the rows
        b.excess[i] = (<double>ties[i] - 1.0) + b.rest[i]
        b.log_total[i] = sml_log1p(b.excess[i])


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
        b.s[i] = sample_weight_at(sample_weight, first + i)
        b.total[i] = <double>ties[i] + b.rest[i]
        if not isfinite(m[i]):  # a row with +inf or NaN, or all -inf: inf - inf = NaN
            b.excess[i] = NAN
            b.log_total[i] = NAN
            b.total[i] = NAN


cdef inline void block_formula(Block *b, const floating *m, double *row_loss, bint with_grad,
                               Py_ssize_t count, Py_ssize_t n, LossOptions o,
                               floating *xt) noexcept nogil:
    """Step 3: index_row_terms along the rows (block_terms), then what its vector loop
    cannot do: the losses (left-out rows filled), and the gradient of a row whose scales
    overflow formed in xt now, divided last (see grad_divided), kept by block_store."""
    cdef LossOptions constant = o
    cdef IndexRowTerms terms
    cdef Py_ssize_t i
    if o.eps == 0.0 and o.z == 0.0:  # options known zero at compile time: vectorised
        constant.eps = 0.0
        constant.z = 0.0
        block_terms(b, m, count, n, constant)
    else:
        block_terms(b, m, count, n, o)
    for i in range(count):
        if b.label[i] < 0:
            row_loss[i] = b.fill[i]
            b.p_scale[i] = 0.0
            b.smooth_scale[i] = 0.0
            continue
        row_loss[i] = b.loss[i]
        if with_grad and divide_last(b.p_scale[i], b.smooth_scale[i], b.s[i], o):
            terms = index_row_terms(m[i], b.x_y[i], b.gap[i], b.total[i], b.excess[i],
                                    b.log_total[i], b.e_y[i], n, b.w_y[i], b.s[i], o)
            grad_divided(&xt[i], BLOCK_ROWS, n, terms, o)
            b.p_scale[i] = 1.0
            b.smooth_scale[i] = 0.0


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
        sml_block_store_grad_d(g_rows, step, count, n, xt, BLOCK_ROWS, b.p_scale,
                               b.smooth_scale, o.w)
    for i in range(count):
        if b.label[i] < 0:
            for c in range(n):
                (<floating *>(g_rows[i] + c * step))[0] = <floating>b.fill[i]
        else:
            (<floating *>(g_rows[i] + b.label[i] * step))[0] = <floating>b.label_grad[i]

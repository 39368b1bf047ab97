"""Fused softmax, log-softmax, logsumexp and cross-entropy kernels.

Design, bottom up (each layer calls only the one below it):

1. Row primitives in C (`_rowops.h`, `_rowops_template.h`, `_fastexp.h`): max,
   exp-and-sum, gap-sum of one contiguous row; the loops that must vectorise.
2. Row kernels, `cdef inline ... noexcept nogil`, written once for float32 and float64
   (the fused type `floating`): one row's softmax, or one row's loss and gradient in
   one pass over its logits. The cross-entropy of a class-index row is split in two:
   the row's statistics (max, sum of exponentials, ...) and `index_row_terms`, the
   formula that turns them into the loss and the gradient's coefficients. The
   formula is written once; two ways of gathering the statistics use it:
   `row_loss_grad_index` (one row, vectorised along the classes) and
   `block_loss_grad_index` (a block of BLOCK_ROWS rows with few classes, transposed
   so that every step is vectorised across the rows).
3. Array loops (the `def` functions): every array arrives as a "rows view" of shape
   (A, B, C): the class axis last, rows indexed by r = a * B + b, any strides (a
   `Rows`). The loops run `prange` over rows or blocks of rows; a row whose class
   axis is not contiguous is gathered into a per-thread scratch row, computed there,
   and scattered back. Every row is computed by the same code whatever the thread
   count, and no loop reduces across rows, so results are bitwise identical for
   every `n_threads`.
4. The Python facade (`softmaxloss._facade`) validates, builds the rows views, reduces
   (the kernels return the per-row losses, their total and the mean's normaliser W)
   and documents.

Arguments are marked IN (read only, `const`: read-only arrays work) or OUT.
An OUT array may be the same memory as the logits (in place): each row kernel reads
everything it needs from a logit before it writes the gradient over it.
"""

import os as _os

from cython.parallel cimport parallel, prange
from libc.float cimport DBL_MIN
from libc.math cimport INFINITY, NAN, fabs, isfinite
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc


cdef extern from "_rowops.h" nogil:
    const int SML_OPENMP
    const char *SML_ISA
    const char *SML_COMPILER
    int sml_max_threads()
    int sml_cpu_has_avx2_fma()
    float sml_expf(float x)
    double sml_exp(double x)
    double sml_log1p(double x)
    float sml_row_max_f(const float *x, Py_ssize_t n)
    double sml_row_max_d(const double *x, Py_ssize_t n)
    double sml_row_expsum_f(const float *x, float *e, Py_ssize_t n, float m, double *excess)
    double sml_row_expsum_d(const double *x, double *e, Py_ssize_t n, double m, double *excess)
    double sml_row_gapsum_f(const float *x, const double *w, Py_ssize_t n, double m)
    double sml_row_gapsum_d(const double *x, const double *w, Py_ssize_t n, double m)


cdef extern from "_blockops.h" nogil:
    void sml_block_load_f(const char *const *rows, Py_ssize_t step, Py_ssize_t count,
                          Py_ssize_t n, float *xt, Py_ssize_t ld)
    void sml_block_load_d(const char *const *rows, Py_ssize_t step, Py_ssize_t count,
                          Py_ssize_t n, double *xt, Py_ssize_t ld)
    void sml_block_store_grad_f(char *const *rows, Py_ssize_t step, Py_ssize_t count,
                                Py_ssize_t n, const float *et, Py_ssize_t ld,
                                const double *p_scale, const double *smooth_scale,
                                const double *w)
    void sml_block_store_grad_d(char *const *rows, Py_ssize_t step, Py_ssize_t count,
                                Py_ssize_t n, const double *et, Py_ssize_t ld,
                                const double *p_scale, const double *smooth_scale,
                                const double *w)


ctypedef fused floating:
    float
    double

# Probability targets may come in either precision, independently of the logits.
ctypedef fused target_floating:
    float
    double

cdef enum:
    # Below this many logits per thread, starting threads costs more than it saves.
    MIN_ELEMENTS_PER_THREAD = 32768
    # Rows of few classes go BLOCK_ROWS at a time (block_loss_grad_index): for short
    # rows the per-row overhead of the row path (loop remainders, reductions) dominates.
    # Up to 23 float32 / 16 float64 classes: where interleaved A/B timings of the two
    # paths (AVX2 build, 65536 rows) put the crossover; the row path wins from three
    # float32 / four float64 vectors of classes. 64 rows beat 32 and 128.
    BLOCK_ROWS = 64
    BLOCK_MAX_CLASSES_FLOAT = 23
    BLOCK_MAX_CLASSES_DOUBLE = 16


cdef struct Rows:
    # An (A, B, C) array as the kernels address it: row r is (a, b) = divmod(r, n_b),
    # at base + a * stride_a + b * stride_b; its classes `step` bytes apart.
    char *base
    Py_ssize_t n_b
    Py_ssize_t stride_a
    Py_ssize_t stride_b
    Py_ssize_t step


cdef inline char *row_at(Rows v, Py_ssize_t r) noexcept nogil:
    if v.n_b == 1:  # (N, 1, C), the common case: no integer division (~40 cycles)
        return v.base + r * v.stride_a
    cdef Py_ssize_t a = r // v.n_b
    return v.base + a * v.stride_a + (r - a * v.n_b) * v.stride_b


cdef inline Rows make_rows(const void *base, Py_ssize_t n_b, Py_ssize_t stride_a,
                           Py_ssize_t stride_b, Py_ssize_t step) noexcept nogil:
    cdef Rows v
    v.base = <char *>base
    v.n_b = n_b if n_b > 0 else 1
    v.stride_a = stride_a
    v.stride_b = stride_b
    v.step = step
    return v


# ---- layer 2a: fused-type dispatch to the C primitives ---------------------------

cdef inline floating row_max(const floating *x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return sml_row_max_f(x, n)
    else:
        return sml_row_max_d(x, n)


cdef inline double row_expsum(const floating *x, floating *e, Py_ssize_t n, floating m,
                              double *excess) noexcept nogil:
    """S = sum_c exp(x_c - m) in double (m the row max); e_c = exp(x_c - m) unless e is
    NULL; S - 1, accurate also for S ~ 1, into excess unless it is NULL."""
    if floating is float:
        return sml_row_expsum_f(x, e, n, m, excess)
    else:
        return sml_row_expsum_d(x, e, n, m, excess)


cdef inline double complement(double e, double total, double excess) noexcept nogil:
    """1 - p = (S - e) / S for an entry e = exp(x - m), without cancellation: p > 1/2
    only at the max, whose e is exactly 1, and there S - e = excess exactly."""
    return (excess if e == 1.0 else total - e) / total


cdef inline double row_gapsum(const floating *x, const double *w, Py_ssize_t n,
                              double m) noexcept nogil:
    """sum_c w_c (m - x_c) in double (w NULL: all ones)."""
    if floating is float:
        return sml_row_gapsum_f(x, w, n, m)
    else:
        return sml_row_gapsum_d(x, w, n, m)


# ---- layer 2b: row kernels -----------------------------------------------------------

cdef inline void row_softmax(const floating *x, floating *out, Py_ssize_t n,
                             bint log_output) noexcept nogil:
    """out = softmax(x) = exp(x - max) / sum, or log_softmax(x) = x - max - log(sum)."""
    cdef floating m = row_max(x, n)
    cdef double total
    cdef double log_total
    cdef floating inv_total
    cdef Py_ssize_t c
    cdef double excess
    if log_output:
        row_expsum(x, <floating *>NULL, n, m, &excess)
        log_total = sml_log1p(excess)
        # (x_c - m) first: m + log(total) would round log(total) away for huge m.
        for c in range(n):
            out[c] = <floating>((<double>x[c] - <double>m) - log_total)
    else:
        total = row_expsum(x, out, n, m, NULL)
        inv_total = <floating>(1.0 / total)
        for c in range(n):
            out[c] = out[c] * inv_total


cdef inline double row_logsumexp(const floating *x, Py_ssize_t n) noexcept nogil:
    """log(sum_c exp(x_c)) = max + log(sum_c exp(x_c - max))."""
    cdef floating m = row_max(x, n)
    if m == INFINITY or m == -INFINITY:
        m = 0  # as PyTorch and SciPy: +inf for a row with +inf, -inf for all -inf
    cdef double excess
    row_expsum(x, <floating *>NULL, n, m, &excess)
    return <double>m + sml_log1p(excess)


cdef struct IndexRowTerms:
    double loss           # loss_n
    double p_scale        # grad_c = p_scale * e_c - smooth_scale * w_c   (c != y)
    double smooth_scale   # s (eps/n) / W
    double label_grad     # grad_y
    # The factors of p_scale and smooth_scale, for the rows where those overflow:
    double s              # the sample weight
    double p_coef         # (1-eps) w_y + (eps/n) w_sum + 2 z lse
    double inv_total      # 1 / S
    double smooth         # eps / n


cdef inline IndexRowTerms index_row_terms(
    double m,             # the row max
    double x_y,           # the label's logit
    double gap_sum,       # sum_c w_c (m - x_c), needed when eps != 0
    double total,         # S = sum_c e_c, e_c = exp(x_c - m)
    double excess,        # S - 1, accurate for S ~ 1
    double log_total,     # log(S) = log1p(excess)
    double e_y,           # the label's e_y (for the gradient)
    Py_ssize_t n,
    double w_y,           # the label's class weight
    double w_sum,         # sum_c w_c
    double s,             # the row's sample weight
    double eps,           # label smoothing
    double z,             # z-loss coefficient
    double divisor,       # W for reduction="mean" (NaN if W is 0), else 1
) noexcept nogil:
    """The cross-entropy of one row with class index y, from its statistics.

    With l = log_softmax(x) = x - m - log(S), lse = m + log(S), p = e / S:
        loss_n = s ((1-eps) w_y (-l_y) + (eps/n) sum_c w_c (-l_c) + z lse^2)
               = s ((1-eps) w_y (log S + m - x_y)
                    + (eps/n) (w_sum log S + sum_c w_c (m - x_c)) + z lse^2)
        grad_c = (s / W) (p_c ((1-eps) w_y + (eps/n) w_sum + 2 z lse)
                          - (1-eps) w_y [c == y] - (eps/n) w_c)        (W = 1 unless "mean")
    Terms whose coefficient is zero are skipped, not multiplied by 0: -l_c can be +inf.
    The label's entry is grouped as the formula, in double, with p_y - 1 = -(1 - p_y)
    from `complement`: it cancels when p_y is close to 1 (exactly 0 for one class).
    """
    cdef IndexRowTerms terms
    cdef double smooth = eps / <double>n
    cdef double lse = m + log_total
    cdef double inv_total = 1.0 / total
    cdef double p_y = e_y * inv_total
    cdef double loss = 0.0, p_coef = 0.0, label_grad = 0.0
    if eps != 1.0:
        loss = (1.0 - eps) * w_y * (log_total + (m - x_y))
        p_coef = (1.0 - eps) * w_y
        label_grad = -(1.0 - eps) * w_y * complement(e_y, total, excess)
    if eps != 0.0:
        loss += smooth * (w_sum * log_total + gap_sum)
        p_coef += smooth * w_sum
        label_grad += smooth * (w_sum * p_y - w_y)
    if z != 0.0:
        loss += z * lse * lse
        p_coef += 2.0 * z * lse
        label_grad += 2.0 * z * lse * p_y
    # Each coefficient times s, then divided by W: as the formula groups it, so that a
    # tiny W (whose 1/W would overflow) still gives a finite gradient.
    terms.loss = s * loss
    terms.p_scale = (s * p_coef * inv_total) / divisor
    terms.smooth_scale = (s * smooth) / divisor
    terms.label_grad = (s * label_grad) / divisor
    terms.s = s
    terms.p_coef = p_coef
    terms.inv_total = inv_total
    terms.smooth = smooth
    return terms


cdef inline bint divide_last(double p_scale, double smooth_scale, double s, double eps,
                             const double *w) noexcept nogil:
    """Whether a row's gradient must be formed as grad_divided does: p_scale or
    smooth_scale overflowed (a tiny W, whose 1/W overflows; huge weights or z lse),
    where e_c = 0 would give 0 * inf = NaN; or smooth_scale fell below the normal range
    (a subnormal s) while class weights, which may be huge, multiply it and would
    magnify its lost digits."""
    return (not (isfinite(p_scale) and isfinite(smooth_scale))
            or (w != NULL and eps != 0.0 and s != 0.0 and fabs(smooth_scale) < DBL_MIN))


cdef inline void grad_divided(
    floating *g,               # IN e_c, OUT grad_c, element c at g[c * step]
    Py_ssize_t step,
    Py_ssize_t n,
    IndexRowTerms terms,
    const double *w,           # IN  (n,) class weights, or NULL for all ones
    double divisor,
) noexcept nogil:
    """grad_c = s (p_coef p_c - (eps/n) w_c) / W, p_c = e_c / S, grouped as the formula
    (and the reference) and divided last: for a row whose p_scale or smooth_scale
    overflows (a tiny W, whose 1/W overflows; huge weights or z lse), where e_c = 0
    would give 0 * inf = NaN. Each entry is then what the formula gives: 0 where p_c
    and eps are 0, +-inf only where the entry itself overflows. The label's entry is
    left to the caller."""
    cdef Py_ssize_t c
    cdef double smooth_term
    for c in range(n):
        smooth_term = terms.smooth * (w[c] if w != NULL else 1.0)
        g[c * step] = <floating>((terms.s * (terms.p_coef * (<double>g[c * step] * terms.inv_total)
                                             - smooth_term)) / divisor)


cdef inline double row_loss_grad_index(
    const floating *x,         # IN  (n,) logits of the row
    floating *g,               # OUT (n,) gradient, or NULL for the loss only; may be x
    Py_ssize_t n,
    Py_ssize_t y,              # the row's class, 0 <= y < n
    const double *w,           # IN  (n,) class weights, or NULL for all ones
    double w_sum,
    double s,
    double eps,
    double z,
    double divisor,            # W for reduction="mean", else 1
) noexcept nogil:
    """One row with a class-index target, vectorised along its classes: returns loss_n
    and writes d(loss)/dx into g (see index_row_terms)."""
    cdef floating m = row_max(x, n)
    cdef double x_y = x[y]  # read before g overwrites x
    cdef double gap_sum = row_gapsum(x, w, n, m) if eps != 0.0 else 0.0
    cdef double excess
    cdef double total = row_expsum(x, g, n, m, &excess)
    cdef double e_y = g[y] if g != NULL else 0.0
    cdef IndexRowTerms terms = index_row_terms(
        m, x_y, gap_sum, total, excess, sml_log1p(excess), e_y, n, w[y] if w != NULL else 1.0, w_sum, s,
        eps, z, divisor)
    if g == NULL:
        return terms.loss
    cdef floating p_scale = <floating>terms.p_scale
    cdef floating smooth_scale = <floating>terms.smooth_scale
    cdef Py_ssize_t c
    if (not (isfinite(p_scale) and isfinite(smooth_scale))
            or divide_last(terms.p_scale, terms.smooth_scale, s, eps, w)):
        # Overflow checked in the logits' precision too, as the loops below compute: a
        # float32 scale may overflow where its double does not (inf - inf = NaN, not inf).
        grad_divided(g, 1, n, terms, w, divisor)
    elif eps == 0.0:
        for c in range(n):
            g[c] = g[c] * p_scale
    elif w == NULL:
        for c in range(n):
            g[c] = g[c] * p_scale - smooth_scale
    else:
        for c in range(n):
            g[c] = g[c] * p_scale - <floating>(terms.smooth_scale * w[c])
    g[y] = <floating>terms.label_grad
    return terms.loss


cdef inline void block_terms(
    Py_ssize_t count, const floating *m, const double *x_y, const double *gap,
    const double *total, const double *excess, const double *log_total, const double *e_y,
    Py_ssize_t n, const double *w_y, double w_sum, const double *s, double eps, double z,
    double divisor, double *loss, double *p_scale, double *smooth_scale, double *label_grad,
) noexcept nogil:
    """index_row_terms of `count` rows, their inputs and outputs in arrays. gcc 12
    vectorises the loop only when eps and z are compile-time constants (its branches on
    them are then gone): the caller passes literal zeros for the common case."""
    cdef Py_ssize_t i
    cdef IndexRowTerms terms
    for i in range(count):
        terms = index_row_terms(m[i], x_y[i], gap[i], total[i], excess[i], log_total[i],
                                e_y[i], n, w_y[i], w_sum, s[i], eps, z, divisor)
        loss[i] = terms.loss
        p_scale[i] = terms.p_scale
        smooth_scale[i] = terms.smooth_scale
        label_grad[i] = terms.label_grad


cdef inline void block_loss_grad_index(
    Rows x,                    # IN  logits
    Rows g,                    # OUT gradient (base NULL: the loss only); may be x's memory
    Rows target,               # IN  int64 class indices or ignore_index
    Rows sample_weight,        # IN  double (base NULL: all ones)
    double *row_loss,          # OUT per-row losses, contiguous in row order
    Py_ssize_t first,          # the block: rows first .. first + count - 1
    Py_ssize_t count,          # <= BLOCK_ROWS
    Py_ssize_t n,              # classes, <= BLOCK_MAX_CLASSES_FLOAT / _DOUBLE
    const double *w,
    double w_sum,
    int64_t ignore_index,
    double eps,
    double z,
    double divisor,            # W for reduction="mean", else 1
    floating *xt,              # scratch, n * BLOCK_ROWS: the block transposed
) noexcept nogil:
    """Rows first .. first+count-1, few classes each: the statistics of index_row_terms
    for all of them at once, on the block transposed to (classes, rows), so that the
    max, exp and sums run along the rows (vectorised), not along short rows; the
    gradient is formed as it is transposed back (one pass fewer: 1.2x in float32)."""
    cdef const char *x_rows[BLOCK_ROWS]
    cdef char *g_rows[BLOCK_ROWS]
    cdef floating m[BLOCK_ROWS]
    cdef double rest[BLOCK_ROWS]
    cdef floating ties[BLOCK_ROWS]   # a count (<= 23): exact in either precision
    cdef double gap[BLOCK_ROWS]
    cdef double excess[BLOCK_ROWS]
    cdef double log_total[BLOCK_ROWS]
    cdef Py_ssize_t label[BLOCK_ROWS]   # the row's class, -1 for a row filled with `fill`
    cdef double fill[BLOCK_ROWS]
    cdef double p_scale[BLOCK_ROWS]
    cdef double smooth_scale[BLOCK_ROWS]
    cdef double label_grad[BLOCK_ROWS]
    cdef double x_y[BLOCK_ROWS]
    cdef double e_y[BLOCK_ROWS]
    cdef double w_y[BLOCK_ROWS]
    cdef double s_row[BLOCK_ROWS]
    cdef double loss[BLOCK_ROWS]
    cdef double total[BLOCK_ROWS]
    cdef Py_ssize_t i, c, y
    cdef floating v
    cdef double w_c
    cdef IndexRowTerms terms

    for i in range(count):
        x_rows[i] = row_at(x, first + i)
    if floating is float:  # transpose in: xt[c, i] = x[i, c]
        sml_block_load_f(x_rows, x.step, count, n, xt, BLOCK_ROWS)
    else:
        sml_block_load_d(x_rows, x.step, count, n, xt, BLOCK_ROWS)
    for i in range(count):
        m[i] = xt[i]
    for c in range(1, n):
        for i in range(count):
            v = xt[c * BLOCK_ROWS + i]
            m[i] = v if v > m[i] else m[i]
    for i in range(count):
        gap[i] = 0.0
        rest[i] = 0.0
        ties[i] = 0.0
    if eps != 0.0:  # before the exponentials overwrite xt
        for c in range(n):
            w_c = w[c] if w != NULL else 1.0
            for i in range(count):
                gap[i] += w_c * (<double>m[i] - <double>xt[c * BLOCK_ROWS + i])
    for c in range(n):  # e = exp(x - m), split as in sml_exp_split: S = ties + rest
        for i in range(count):
            if floating is float:
                v = sml_expf(xt[c * BLOCK_ROWS + i] - m[i])
            else:
                v = sml_exp(xt[c * BLOCK_ROWS + i] - m[i])
            xt[c * BLOCK_ROWS + i] = v
            rest[i] += 0.0 if v == 1 else <double>v
            ties[i] += 1 if v == 1 else 0
    for i in range(count):  # vectorised along the rows
        excess[i] = (<double>ties[i] - 1.0) + rest[i]
        log_total[i] = sml_log1p(excess[i])

    for i in range(count):  # each row's class, and the formula's inputs that depend on it
        y = (<const int64_t *>row_at(target, first + i))[0]
        if y == ignore_index or y < 0 or y >= n:
            # Ignored rows contribute nothing. An index the facade should have refused
            # is never used to address memory: its row becomes NaN. Class 0 stands in
            # for the formula below, whose result for the row is then dropped.
            fill[i] = 0.0 if y == ignore_index else NAN
            label[i] = -1
            y = 0
        else:
            label[i] = y
        # Row i's logits are still intact here, also in place: the gradient is
        # written only after the formula.
        x_y[i] = (<const floating *>(x_rows[i] + y * x.step))[0]
        e_y[i] = xt[y * BLOCK_ROWS + i]
        w_y[i] = w[y] if w != NULL else 1.0
        s_row[i] = (<const double *>row_at(sample_weight, first + i))[0] if sample_weight.base != NULL else 1.0
        total[i] = <double>ties[i] + rest[i]
        if not isfinite(m[i]):  # a row with +inf or NaN, or all -inf: inf - inf = NaN
            excess[i] = NAN
            log_total[i] = NAN
            total[i] = NAN
    if eps == 0.0 and z == 0.0:  # the formula along the rows; constant options vectorise
        block_terms(count, m, x_y, gap, total, excess, log_total, e_y, n, w_y, w_sum,
                    s_row, 0.0, 0.0, divisor, loss, p_scale, smooth_scale, label_grad)
    else:
        block_terms(count, m, x_y, gap, total, excess, log_total, e_y, n, w_y, w_sum,
                    s_row, eps, z, divisor, loss, p_scale, smooth_scale, label_grad)
    for i in range(count):  # then what the vector loop cannot do
        if label[i] < 0:
            row_loss[first + i] = fill[i]
            p_scale[i] = 0.0
            smooth_scale[i] = 0.0
            continue
        row_loss[first + i] = loss[i]
        if g.base != NULL and divide_last(p_scale[i], smooth_scale[i], s_row[i], eps, w):
            # Its gradient now, divided last (see grad_divided); the store below keeps it.
            terms = index_row_terms(
                m[i], x_y[i], gap[i], total[i], excess[i], log_total[i], e_y[i], n,
                w_y[i], w_sum, s_row[i], eps, z, divisor)
            grad_divided(&xt[i], BLOCK_ROWS, n, terms, w, divisor)
            p_scale[i] = 1.0
            smooth_scale[i] = 0.0
    if g.base == NULL:
        return

    for i in range(count):
        g_rows[i] = row_at(g, first + i)
    if floating is float:  # the gradient, transposed out as it is formed
        sml_block_store_grad_f(g_rows, g.step, count, n, xt, BLOCK_ROWS, p_scale, smooth_scale, w)
    else:
        sml_block_store_grad_d(g_rows, g.step, count, n, xt, BLOCK_ROWS, p_scale, smooth_scale, w)
    for i in range(count):  # then the label's entry, or the whole row if it is left out
        if label[i] < 0:
            for c in range(n):
                (<floating *>(g_rows[i] + c * g.step))[0] = <floating>fill[i]
        else:
            (<floating *>(g_rows[i] + label[i] * g.step))[0] = <floating>label_grad[i]


cdef inline double smoothed_target(target_floating t, double eps, double smooth) noexcept nogil:
    """y' = (1-eps) y + eps/n, leaving out a term whose coefficient is 0."""
    if eps == 1.0:
        return smooth
    return (1.0 - eps) * <double>t + smooth


cdef inline double row_loss_grad_probs(
    const floating *x,                # IN  (n,) logits of the row
    floating *g,                      # OUT (n,) gradient, or NULL; may be x
    Py_ssize_t n,
    const target_floating *t,         # IN  target probabilities, element c at t[c * t_step]
    Py_ssize_t t_step,
    const double *w,                  # IN  (n,) class weights, or NULL for all ones
    double s,
    double eps,
    double z,
    double divisor,                   # W for reduction="mean", else 1
) noexcept nogil:
    """One row with probability targets: returns loss_n and writes d(loss)/dx into g.

    With y'_c = (1-eps) y_c + eps/n, T = sum_c w_c y'_c:
        loss_n = s * (sum_c w_c y'_c (-l_c) + z lse^2)
               = s * (T log S + sum_c w_c y'_c (m - x_c) + z lse^2)
        grad_c = (s / W) ((T + 2 z lse) p_c - w_c y'_c)     (W = 1 unless "mean")
    exact for any target row, also one that does not sum to 1.
    """
    cdef floating m = row_max(x, n)
    cdef double smooth = eps / <double>n
    cdef double weight_total = 0.0, gap_sum = 0.0, wy
    cdef Py_ssize_t c
    for c in range(n):  # before g overwrites x
        wy = smoothed_target(t[c * t_step], eps, smooth)
        if w != NULL:
            wy = wy * w[c]
        weight_total += wy
        gap_sum += wy * (<double>m - <double>x[c])

    cdef double excess
    cdef double total = row_expsum(x, g, n, m, &excess)
    cdef double log_total = sml_log1p(excess)
    cdef double lse = <double>m + log_total
    cdef double loss = weight_total * log_total + gap_sum
    cdef double p_coef = weight_total
    if z != 0.0:
        loss += z * lse * lse
        p_coef += 2.0 * z * lse
    if g == NULL:
        return s * loss

    # Times s, then divided by W, as in index_row_terms; where that overflows, grouped
    # as the formula and divided last (as in grad_divided): e_c = 0 gives 0, not 0 * inf.
    cdef double p_scale = (s * p_coef / total) / divisor
    cdef bint divide_last = not isfinite(p_scale)
    for c in range(n):
        wy = smoothed_target(t[c * t_step], eps, smooth)
        if w != NULL:
            wy = wy * w[c]
        if divide_last:
            g[c] = <floating>((s * (p_coef * (<double>g[c] / total) - wy)) / divisor)
        else:
            g[c] = <floating>(<double>g[c] * p_scale - (s * wy) / divisor)
    return s * loss


cdef inline void row_grad_hess(
    const floating *x,   # IN  (n,) logits of the row
    floating *g,         # OUT (n,) s (p - onehot); may be x
    char *h,             # OUT hessian diagonal s p (1 - p), element c at h + c * h_step bytes
    Py_ssize_t h_step,
    Py_ssize_t n,
    Py_ssize_t y,        # the row's class, 0 <= y < n
    double s,            # the row's sample weight
) noexcept nogil:
    """Gradient s (p - onehot) and hessian diagonal s p (1 - p) of one row.

    With e_c = exp(x_c - m) and S = sum_c e_c, 1 - p_c comes from `complement`, without
    cancellation also at a max with p close to 1.
    """
    cdef floating m = row_max(x, n)
    cdef double excess
    cdef double total = row_expsum(x, g, n, m, &excess)
    cdef double inv_total = 1.0 / total
    cdef double e_y = g[y]
    cdef double e
    cdef Py_ssize_t c
    for c in range(n):
        e = g[c]
        (<floating *>(h + c * h_step))[0] = <floating>(
            s * (e * inv_total) * complement(e, total, excess))
        g[c] = <floating>(s * e * inv_total)
    g[y] = <floating>(-s * complement(e_y, total, excess))


# ---- layer 3: array loops over rows views -------------------------------------------

# OpenMP runtimes are not fork-safe (libgomp's worker threads are not copied into a
# forked child, and its next parallel region waits for them forever; PyTorch's CPU ops
# hang alike). A forked child therefore runs every kernel on its own thread only, which
# never starts a parallel team: correct results, never a hang, whatever n_threads.
cdef bint in_forked_child = False


def _mark_forked_child():
    """os.register_at_fork's after_in_child hook: from now on, one thread."""
    global in_forked_child
    in_forked_child = True


if hasattr(_os, "register_at_fork"):  # POSIX; Windows has no fork
    _os.register_at_fork(after_in_child=_mark_forked_child)


def runs_single_threaded_after_fork():
    """Whether this process is a forked child, in which every kernel runs on one thread."""
    return bool(in_forked_child)


cdef inline int thread_count(int n_threads, Py_ssize_t n_rows, Py_ssize_t n_classes) noexcept nogil:
    """Threads to use: n_threads (0: OpenMP's default), fewer for small inputs, one in
    a forked child (see in_forked_child)."""
    if in_forked_child:
        return 1
    cdef int requested = n_threads if n_threads > 0 else sml_max_threads()
    cdef Py_ssize_t useful = (n_rows * n_classes) // MIN_ELEMENTS_PER_THREAD
    if useful > n_rows:
        useful = n_rows
    if useful < 1:
        useful = 1
    return <int>(requested if requested < useful else useful)


cdef inline const floating *row_in(Rows v, Py_ssize_t r, Py_ssize_t n,
                                   floating *scratch) noexcept nogil:
    """Row r as a contiguous pointer: its own memory when its classes are contiguous,
    else a copy gathered into scratch."""
    cdef const char *row = row_at(v, r)
    cdef Py_ssize_t c
    if v.step == sizeof(floating):
        return <const floating *>row
    for c in range(n):
        scratch[c] = (<const floating *>(row + c * v.step))[0]
    return scratch


cdef inline floating *row_work(Rows v, Py_ssize_t r, floating *scratch) noexcept nogil:
    """Where a row kernel writes row r: the row itself when contiguous, else scratch
    (NULL when there is no output)."""
    if v.base == NULL:
        return NULL
    if v.step == sizeof(floating):
        return <floating *>row_at(v, r)
    return scratch


cdef inline void row_out(Rows v, Py_ssize_t r, Py_ssize_t n, const floating *work) noexcept nogil:
    """Scatter a row computed in scratch to row r (nothing to do when written in place)."""
    cdef char *row = row_at(v, r)
    cdef Py_ssize_t c
    if v.base == NULL or <const char *>work == row:
        return
    for c in range(n):
        (<floating *>(row + c * v.step))[0] = work[c]


cdef inline void row_fill(Rows v, Py_ssize_t r, Py_ssize_t n, floating value) noexcept nogil:
    cdef char *row = row_at(v, r)
    cdef Py_ssize_t c
    if v.base == NULL:
        return
    for c in range(n):
        (<floating *>(row + c * v.step))[0] = value


cdef inline bint needs_scratch(Rows x, Rows out, Py_ssize_t itemsize) noexcept nogil:
    """Whether a row must be gathered or scattered (classes not contiguous)."""
    return x.step != itemsize or (out.base != NULL and out.step != itemsize)


cdef Rows logits_rows(const floating[:, :, :] a):
    return make_rows(&a[0, 0, 0], a.shape[1], a.strides[0], a.strides[1], a.strides[2])


cdef Rows output_rows(floating[:, :, :] a):
    """Rows of an output (A, B, C) array; base NULL for None (no output)."""
    if a is None:
        return make_rows(NULL, 1, 0, 0, sizeof(floating))
    return make_rows(&a[0, 0, 0], a.shape[1], a.strides[0], a.strides[1], a.strides[2])


cdef Rows per_row(const char *base, Py_ssize_t n_b, Py_ssize_t stride_a, Py_ssize_t stride_b):
    return make_rows(base, n_b, stride_a, stride_b, 0)


cdef inline int allocation_failed() except -1:
    raise MemoryError("softmaxloss: could not allocate a scratch row")


cdef double sum_in_order(const double *values, Py_ssize_t count) noexcept nogil:
    """sum(values) in index order with Neumaier's compensation: deterministic, and
    accurate to about one rounding whatever the count (NaN and inf propagate)."""
    cdef double total = 0.0, compensation = 0.0, t
    cdef Py_ssize_t i
    for i in range(count):
        t = total + values[i]
        if fabs(total) >= fabs(values[i]):
            compensation += (total - t) + values[i]
        else:
            compensation += (values[i] - t) + total
        total = t
    return total + compensation if isfinite(total) else total


cdef inline bint bad_class(int64_t y, Py_ssize_t n, int64_t ignore_index) noexcept nogil:
    """A class out of [0, n) that is not ignore_index (the unsigned compare covers y < 0)."""
    return (y != ignore_index) & (<uint64_t>y >= <uint64_t>n)


cdef double kept_row_count(Rows target, Py_ssize_t n_rows, Py_ssize_t n, int64_t ignore_index,
                           Py_ssize_t *invalid_row) noexcept nogil:
    """row_weight_total without weights: the number of rows whose class is not
    ignore_index, an integer (exact in double up to 2^53 rows), counted in a loop without
    branches (vectorised); a second pass finds the first invalid class only when there
    is one."""
    cdef Py_ssize_t r, kept = 0, invalid = 0
    cdef int64_t y
    for r in range(n_rows):
        y = (<const int64_t *>row_at(target, r))[0]
        kept += y != ignore_index
        invalid += bad_class(y, n, ignore_index)
    if invalid == 0:
        return <double>kept
    for r in range(n_rows):
        if bad_class((<const int64_t *>row_at(target, r))[0], n, ignore_index):
            invalid_row[0] = r
            break
    return NAN


cdef double row_weight_total(Rows target, Rows sample_weight, const double *w,
                             Py_ssize_t n_rows, Py_ssize_t n, bint index_target,
                             int64_t ignore_index, double *scratch,
                             Py_ssize_t *invalid_row) noexcept nogil:
    """W of reduction="mean": the sum over kept rows of s_n * w[y_n] (class indices) or
    of s_n (probabilities; the number of rows without sample weights). `scratch` holds
    n_rows doubles. The first row whose class is out of range and not ignore_index
    goes to invalid_row (-1 if none): the caller stops before writing anything."""
    cdef Py_ssize_t r, y
    cdef double weight
    invalid_row[0] = -1
    if not index_target and sample_weight.base == NULL:
        return <double>n_rows
    if sample_weight.base == NULL and w == NULL:
        return kept_row_count(target, n_rows, n, ignore_index, invalid_row)
    for r in range(n_rows):
        weight = (<const double *>row_at(sample_weight, r))[0] if sample_weight.base != NULL else 1.0
        if index_target:
            y = (<const int64_t *>row_at(target, r))[0]
            if y == ignore_index:
                weight = 0.0
            elif y < 0 or y >= n:
                invalid_row[0] = r
                return NAN
            elif w != NULL:
                weight = weight * w[y]
        scratch[r] = weight
    return sum_in_order(scratch, n_rows)


cdef inline double gradient_divisor(bint mean, double normaliser) noexcept nogil:
    """What every row's gradient is divided by: W for a mean (NaN when W is 0: the
    mean of nothing and its gradient are undefined), else 1."""
    if not mean:
        return 1.0
    return normaliser if normaliser != 0.0 else NAN


cdef int check_shape(str name, const Py_ssize_t *actual, const Py_ssize_t *expected,
                     int ndim) except -1:
    """The facade sends consistent shapes; a direct caller that does not gets this error,
    before any memory is touched, instead of reads and writes past the end of an array."""
    cdef int i
    for i in range(ndim):
        if actual[i] != expected[i]:
            raise ValueError(
                f"softmaxloss kernels: {name} has shape {[actual[i] for i in range(ndim)]}, "
                f"expected {[expected[i] for i in range(ndim)]}")
    return 0


cdef int check_loss_shapes(const Py_ssize_t *x_shape, const double[:, ::1] row_loss,
                           const double[::1] weight, const double[:, :] sample_weight) except -1:
    """check_shape for the arrays both cross-entropy kernels take beside the logits."""
    check_shape("row_loss", row_loss.shape, x_shape, 2)
    if weight is not None:
        check_shape("weight", weight.shape, &x_shape[2], 1)
    if sample_weight is not None:
        check_shape("sample_weight", sample_weight.shape, x_shape, 2)
    return 0


cdef Rows sample_weight_rows(const double[:, :] sample_weight) noexcept:
    """(A, B) sample weights, already checked and not empty, as per-row values; base
    NULL (all ones) for None."""
    if sample_weight is None:
        return per_row(NULL, 1, 0, 0)
    return per_row(<const char *>&sample_weight[0, 0], sample_weight.shape[1],
                   sample_weight.strides[0], sample_weight.strides[1])


def softmax(const floating[:, :, :] x not None,   # IN  (A, B, C)
            floating[:, :, :] out not None,       # OUT (A, B, C), may be x's memory
            bint log_output,
            int n_threads):
    """out = softmax(x) (log_output False) or log_softmax(x), over the last axis."""
    cdef Py_ssize_t n = x.shape[2], n_rows = x.shape[0] * x.shape[1], r
    check_shape("out", out.shape, x.shape, 3)
    if n_rows == 0 or n == 0:
        return
    cdef Rows xv = logits_rows(x), ov = output_rows(out)
    cdef bint scratch_needed = needs_scratch(xv, ov, sizeof(floating))
    cdef int failed = 0
    cdef int *failed_flag = &failed
    cdef floating *scratch = NULL
    cdef floating *work
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        scratch = <floating *>malloc(n * sizeof(floating)) if scratch_needed else NULL
        for r in prange(n_rows, schedule="static"):
            if scratch_needed and scratch == NULL:
                failed_flag[0] = 1
                continue
            work = row_work(ov, r, scratch)
            row_softmax(row_in(xv, r, n, scratch), work, n, log_output)
            row_out(ov, r, n, work)
        free(scratch)
    if failed:
        allocation_failed()


def logsumexp(const floating[:, :, :] x not None,   # IN  (A, B, C)
              double[:, ::1] out not None,          # OUT (A, B)
              int n_threads):
    """out[a, b] = log(sum_c exp(x[a, b, c]))."""
    cdef Py_ssize_t n = x.shape[2], n_rows = x.shape[0] * x.shape[1], r
    check_shape("out", out.shape, x.shape, 2)
    if n_rows == 0 or n == 0:
        return
    cdef Rows xv = logits_rows(x)
    cdef double *values = &out[0, 0]
    cdef bint scratch_needed = xv.step != sizeof(floating)
    cdef int failed = 0
    cdef int *failed_flag = &failed
    cdef floating *scratch = NULL
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        scratch = <floating *>malloc(n * sizeof(floating)) if scratch_needed else NULL
        for r in prange(n_rows, schedule="static"):
            if scratch_needed and scratch == NULL:
                failed_flag[0] = 1
                continue
            values[r] = row_logsumexp(row_in(xv, r, n, scratch), n)
        free(scratch)
    if failed:
        allocation_failed()


def cross_entropy_index(
    const floating[:, :, :] x not None, # IN  (A, B, C) logits
    const int64_t[:, :] target not None,  # IN  (A, B) class indices or ignore_index
    const double[::1] weight,           # IN  (C,) class weights, or None
    const double[:, :] sample_weight,   # IN  (A, B), or None
    int64_t ignore_index,
    double label_smoothing,
    double z_loss,
    bint mean,                          # reduction="mean": the gradient is divided by W
    double[:, ::1] row_loss not None,   # OUT (A, B) per-row losses (0 where ignored)
    floating[:, :, :] grad,             # OUT (A, B, C) gradient, or None; may be x's memory
    int n_threads,
):
    """Per-row cross-entropy losses of class-index targets, and their gradient.

    Returns (sum of the per-row losses, W = sum over kept rows of s * w[y]), or None
    when a class is out of range (and not ignore_index), having written nothing but
    row_loss (its first pass uses it as scratch)."""
    cdef Py_ssize_t n = x.shape[2], n_b = x.shape[1], n_rows = x.shape[0] * x.shape[1]
    cdef Py_ssize_t r, y, block, n_blocks
    check_shape("target", target.shape, x.shape, 2)
    check_loss_shapes(x.shape, row_loss, weight, sample_weight)
    if grad is not None:
        check_shape("grad", grad.shape, x.shape, 3)
    if n_rows == 0 or n == 0:
        return 0.0, 0.0
    cdef Rows xv = logits_rows(x), gv = output_rows(grad)
    cdef Rows tv = per_row(<const char *>&target[0, 0], n_b, target.strides[0], target.strides[1])
    cdef Rows sv = sample_weight_rows(sample_weight)
    cdef double *losses = &row_loss[0, 0]
    cdef const double *w = &weight[0] if weight is not None else NULL
    cdef double w_sum = <double>n
    cdef Py_ssize_t c
    if w != NULL:
        w_sum = 0.0
        for c in range(n):
            w_sum += w[c]
    cdef double normaliser
    cdef Py_ssize_t invalid_row
    with nogil:
        normaliser = row_weight_total(tv, sv, w, n_rows, n, True, ignore_index, losses,
                                      &invalid_row)
    if invalid_row >= 0:
        return None
    cdef double divisor = gradient_divisor(mean, normaliser)
    cdef int threads = thread_count(n_threads, n_rows, n)
    cdef bint scratch_needed = needs_scratch(xv, gv, sizeof(floating))
    cdef int failed = 0
    cdef int *failed_flag = &failed
    cdef floating *scratch = NULL
    cdef floating *work
    cdef double s

    cdef Py_ssize_t block_max_classes = BLOCK_MAX_CLASSES_DOUBLE
    if floating is float:
        block_max_classes = BLOCK_MAX_CLASSES_FLOAT
    if n <= block_max_classes:
        n_blocks = (n_rows + BLOCK_ROWS - 1) // BLOCK_ROWS
        with nogil, parallel(num_threads=threads):
            scratch = <floating *>malloc(n * BLOCK_ROWS * sizeof(floating))
            for block in prange(n_blocks, schedule="static"):
                if scratch == NULL:
                    failed_flag[0] = 1
                    continue
                block_loss_grad_index(
                    xv, gv, tv, sv, losses, block * BLOCK_ROWS,
                    min(<Py_ssize_t>BLOCK_ROWS, n_rows - block * BLOCK_ROWS), n, w, w_sum,
                    ignore_index, label_smoothing, z_loss, divisor, scratch)
            free(scratch)
    else:
        with nogil, parallel(num_threads=threads):
            scratch = <floating *>malloc(n * sizeof(floating)) if scratch_needed else NULL
            for r in prange(n_rows, schedule="static"):
                if scratch_needed and scratch == NULL:
                    failed_flag[0] = 1
                    continue
                y = (<const int64_t *>row_at(tv, r))[0]
                if y == ignore_index or y < 0 or y >= n:
                    # Ignored rows contribute nothing. An index the facade should have
                    # refused is never used to address memory: its row becomes NaN.
                    losses[r] = 0.0 if y == ignore_index else NAN
                    row_fill(gv, r, n, <floating>(0.0 if y == ignore_index else NAN))
                    continue
                s = (<const double *>row_at(sv, r))[0] if sv.base != NULL else 1.0
                work = row_work(gv, r, scratch)
                losses[r] = row_loss_grad_index(row_in(xv, r, n, scratch), work, n, y, w,
                                                w_sum, s, label_smoothing, z_loss, divisor)
                if work != NULL:
                    row_out(gv, r, n, work)
            free(scratch)
    if failed:
        allocation_failed()
    return sum_in_order(losses, n_rows), normaliser


def cross_entropy_probs(
    const floating[:, :, :] x not None,      # IN  (A, B, C) logits
    const target_floating[:, :, :] target not None,  # IN  (A, B, C) probabilities
    const double[::1] weight,                # IN  (C,) class weights, or None
    const double[:, :] sample_weight,        # IN  (A, B), or None
    double label_smoothing,
    double z_loss,
    bint mean,                               # reduction="mean": the gradient is divided by W
    double[:, ::1] row_loss not None,        # OUT (A, B) per-row losses
    floating[:, :, :] grad,                  # OUT (A, B, C) gradient, or None; may be x's memory
    int n_threads,
):
    """Per-row cross-entropy losses of probability targets, and their gradient.

    Returns (sum of the per-row losses, W = the number of rows, or sum(s))."""
    cdef Py_ssize_t n = x.shape[2], n_b = x.shape[1], n_rows = x.shape[0] * x.shape[1], r
    check_shape("target", target.shape, x.shape, 3)
    check_loss_shapes(x.shape, row_loss, weight, sample_weight)
    if grad is not None:
        check_shape("grad", grad.shape, x.shape, 3)
    if n_rows == 0 or n == 0:
        return 0.0, 0.0
    cdef Rows xv = logits_rows(x), gv = output_rows(grad)
    cdef Rows tv = make_rows(&target[0, 0, 0], n_b, target.strides[0], target.strides[1],
                             target.strides[2])
    cdef Py_ssize_t t_step = target.strides[2] // sizeof(target_floating)
    cdef Rows sv = sample_weight_rows(sample_weight)
    cdef double *losses = &row_loss[0, 0]
    cdef const double *w = &weight[0] if weight is not None else NULL
    cdef double normaliser
    cdef Py_ssize_t invalid_row
    with nogil:
        normaliser = row_weight_total(sv, sv, w, n_rows, n, False, 0, losses, &invalid_row)
    cdef double divisor = gradient_divisor(mean, normaliser)
    cdef bint scratch_needed = needs_scratch(xv, gv, sizeof(floating))
    cdef int failed = 0
    cdef int *failed_flag = &failed
    cdef floating *scratch = NULL
    cdef floating *work
    cdef double s
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        scratch = <floating *>malloc(n * sizeof(floating)) if scratch_needed else NULL
        for r in prange(n_rows, schedule="static"):
            if scratch_needed and scratch == NULL:
                failed_flag[0] = 1
                continue
            s = (<const double *>row_at(sv, r))[0] if sv.base != NULL else 1.0
            work = row_work(gv, r, scratch)
            losses[r] = row_loss_grad_probs(
                row_in(xv, r, n, scratch), work, n, <const target_floating *>row_at(tv, r),
                t_step, w, s, label_smoothing, z_loss, divisor)
            if work != NULL:
                row_out(gv, r, n, work)
        free(scratch)
    if failed:
        allocation_failed()
    return sum_in_order(losses, n_rows), normaliser


def gradient_hessian(
    const floating[:, :, :] x not None, # IN  (A, B, C) logits
    const int64_t[:, :] labels not None,  # IN  (A, B) classes, 0 <= label < C
    const double[:, :] sample_weight,   # IN  (A, B), or None
    floating[:, :, :] grad not None,    # OUT (A, B, C) s (p - onehot); may be x's memory
    floating[:, :, :] hess not None,    # OUT (A, B, C) s p (1 - p)
    int n_threads,
):
    """Per-row gradient p - onehot and diagonal hessian p (1 - p) of the multinomial loss."""
    cdef Py_ssize_t n = x.shape[2], n_b = x.shape[1], n_rows = x.shape[0] * x.shape[1], r, y
    check_shape("labels", labels.shape, x.shape, 2)
    if sample_weight is not None:
        check_shape("sample_weight", sample_weight.shape, x.shape, 2)
    check_shape("grad", grad.shape, x.shape, 3)
    check_shape("hess", hess.shape, x.shape, 3)
    if n_rows == 0 or n == 0:
        return
    cdef Rows xv = logits_rows(x), gv = output_rows(grad), hv = output_rows(hess)
    cdef Rows lv = per_row(<const char *>&labels[0, 0], n_b, labels.strides[0], labels.strides[1])
    cdef Rows sv = sample_weight_rows(sample_weight)
    cdef bint scratch_needed = needs_scratch(xv, gv, sizeof(floating))
    cdef int failed = 0
    cdef int *failed_flag = &failed
    cdef floating *scratch = NULL
    cdef floating *work
    cdef double s
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        scratch = <floating *>malloc(n * sizeof(floating)) if scratch_needed else NULL
        for r in prange(n_rows, schedule="static"):
            if scratch_needed and scratch == NULL:
                failed_flag[0] = 1
                continue
            y = (<const int64_t *>row_at(lv, r))[0]
            if y < 0 or y >= n:  # refused by the facade; never used as an address
                row_fill(gv, r, n, <floating>NAN)
                row_fill(hv, r, n, <floating>NAN)
                continue
            s = (<const double *>row_at(sv, r))[0] if sv.base != NULL else 1.0
            work = row_work(gv, r, scratch)
            row_grad_hess(row_in(xv, r, n, scratch), work, row_at(hv, r), hv.step, n, y, s)
            row_out(gv, r, n, work)
        free(scratch)
    if failed:
        allocation_failed()


# ---- test hooks and build facts -------------------------------------------------------

def exp(const floating[::1] x not None, floating[::1] out not None):
    """out = exp(x) with the kernels' own vectorised exp (for accuracy tests)."""
    cdef Py_ssize_t i, n = x.shape[0]
    check_shape("out", out.shape, x.shape, 1)
    with nogil:
        for i in range(n):
            if floating is float:
                out[i] = sml_expf(x[i])
            else:
                out[i] = sml_exp(x[i])


def cpu_has_avx2_fma():
    """Whether this CPU and OS run AVX2 + FMA code."""
    return bool(sml_cpu_has_avx2_fma())


def build_info():
    """How this module was compiled: instruction set, compiler, OpenMP, max threads."""
    return {
        "isa": SML_ISA.decode(),
        "compiler": SML_COMPILER.decode(),
        "openmp": bool(SML_OPENMP),
        "max_threads": sml_max_threads(),
    }


include "_kernels_classblock.pxi"

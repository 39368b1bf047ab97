# Class-block kernels: the cross-entropy of rows whose classes are split into blocks.
#
# Included at the end of _kernels.pyx. A block holds the classes [c0, c0 + W) of every row
# (a shard of a vocabulary on one rank, a chunk of a Dask array). Two entry points per
# target kind, called by `softmaxloss._shards` (which merges the blocks' statistics, turns
# the merged statistics into the per-row loss and the gradient's coefficients, and
# documents the formulas):
#
#   class_block_stats_*   the partial statistics of each row of the block (STAT_* below),
#                         the exponentials shifted by the block's own max, or by a given
#                         per-row shift (the row's max over all blocks, known beforehand);
#                         optionally also writes e_c = exp(x_c - shift) (the gradient's
#                         first step, kept for class_block_grad_*).
#   class_block_grad_*    the block's gradient from the per-row coefficients (COEF_*),
#                         computed from the logits or from the e_c written above; in place
#                         allowed.
#
# Only the C row primitives (_rowops.h, through their fused-type dispatchers row_max,
# row_expsum, row_gapsum) and the Rows helpers of _kernels.pyx are used. As
# there, everything is accumulated in double, a row gives the same bits whatever the thread
# count, and each row reads what it needs from its logits before it writes over them.

cdef enum:
    # Columns of a block's per-row statistics (softmaxloss._shards.STATS names them).
    STAT_MAX = 0      # m: the shift of the exponentials (block max, or the given shift)
    STAT_TIES = 1     # 1 if the block's S >= 1 (it then holds exp(0) = 1: the max), else 0
    STAT_REST = 2     # S - ties, accurate also when S ~ 1: S = ties + rest
    STAT_GAP = 3      # sum_c v_c (m - x_c); v_c = w_c (index targets), w_c y'_c (probabilities)
    STAT_VSUM = 4     # sum_c v_c
    STAT_LABEL = 5    # x_y if the row's class y is in the block, else 0
    N_STATS = 6
    # Columns of the per-row coefficients of the gradient (softmaxloss._shards.COEFS).
    COEF_MAX = 0      # M: the row's max over all classes
    COEF_P_SCALE = 1  # grad_c = p_scale e_c - smooth_scale v_c   (e_c = exp(x_c - M))
    COEF_SMOOTH = 2   # smooth_scale
    COEF_S = 3        # the sample weight s
    COEF_P_COEF = 4   # p_coef, the factor of p_c: p_scale = s p_coef / S / W
    COEF_TOTAL = 5    # S
    COEF_EXCESS = 6   # S - 1, accurate
    COEF_LSE = 7      # log-sum-exp, M + log S
    COEF_W_Y = 8      # the class weight of the row's class
    COEF_DIVIDE = 9   # 1: form the row's gradient divided last (p_scale or smooth_scale overflow)
    N_COEFS = 10


cdef inline int check_stats_shape(const Py_ssize_t *x_shape, const double[:, :, ::1] stats) except -1:
    cdef Py_ssize_t expected[3]
    expected[0] = x_shape[0]
    expected[1] = x_shape[1]
    expected[2] = N_STATS
    return check_shape("stats", stats.shape, expected, 3)


cdef inline void block_exp_row(const floating *x, floating *e, Py_ssize_t n,
                               floating m) noexcept nogil:
    """e_c = exp(x_c - m), the bits of the whole-row kernels, by row_expsum's vectorised exp
    (its sum is not needed): sml_row_exp_*'s plain loop of the scalar exp made this pass
    the slow one (exchange="allgather", world size 1, (4096, 32000) float32: 849 ms per
    forward + backward with it, 494 ms with row_expsum; benchmarks/sharded.py)."""
    row_expsum(x, e, n, m, NULL)


cdef inline void block_exp_stats(const floating *x, floating *e, Py_ssize_t n, floating m,
                                 bint own_max, double *stats) noexcept nogil:
    """STAT_MAX, STAT_TIES, STAT_REST of one row of a block, e_c written into e unless NULL.

    With S = sum_c exp(x_c - m) and `excess` = S - 1 from row_expsum (which counts the
    exponentials equal to 1 apart, so that S - 1 keeps its digits when S ~ 1): a block with
    S < 1 holds no exponential equal to 1, and its S is its rest exactly; a block with
    S >= 1 is stored as 1 + (S - 1). Summed over the blocks, ties - 1 + rest is then S - 1
    accurate to the rounding of S itself: when one block holds the max it is that block's
    excess plus the others' S; when two blocks have S >= 1, S >= 2 and S - 1 >= 1.
    A block of the row's own max -inf (all its logits -inf, own_max) adds nothing."""
    cdef double excess, total
    cdef Py_ssize_t c
    stats[STAT_MAX] = m
    if own_max and m == -INFINITY:
        stats[STAT_TIES] = 0.0
        stats[STAT_REST] = 0.0
        if e != NULL:
            for c in range(n):
                e[c] = 0.0
        return
    total = row_expsum(x, e, n, m, &excess)
    if total >= 1.0:
        stats[STAT_TIES] = 1.0
        stats[STAT_REST] = excess
    else:  # also NaN: propagates through rest
        stats[STAT_TIES] = 0.0
        stats[STAT_REST] = total


def class_block_stats_index(
    const floating[:, :, :] x,           # IN  (A, B, W) the block: classes c0 .. c0 + W - 1
    const int64_t[:, :] target,          # IN  (A, B) class indices among all classes
    Py_ssize_t c0,
    const double[::1] weight,            # IN  (W,) the block's class weights, or None (all 1)
    bint with_gap,                       # STAT_GAP wanted (label_smoothing != 0)
    const double[:, :] shift,            # IN  (A, B) each row's shift, or None: the block's max
    double[:, :, ::1] stats,             # OUT (A, B, N_STATS)
    floating[:, :, :] exp_out,           # OUT (A, B, W) exp(x - shift), or None; may be x's memory
    int n_threads,
):
    """Per-row partial statistics of a block of classes with class-index targets.

    STAT_GAP = sum_c w_c (m - x_c) when with_gap (else 0), STAT_VSUM = sum_c w_c, STAT_LABEL
    = x_y for the rows whose class y is in [c0, c0 + W) (an index outside it, ignore_index
    included, is never used as an address). exp_out needs a shift: it is the gradient's
    first step, and the gradient's exponentials are shifted by the row's max."""
    cdef Py_ssize_t n = x.shape[2], n_b = x.shape[1], n_rows = x.shape[0] * x.shape[1], r, c
    check_shape("target", target.shape, x.shape, 2)
    check_stats_shape(x.shape, stats)
    if weight is not None:
        check_shape("weight", weight.shape, &x.shape[2], 1)
    if shift is not None:
        check_shape("shift", shift.shape, x.shape, 2)
    if exp_out is not None:
        if shift is None:
            raise ValueError("softmaxloss kernels: exp_out needs a shift")
        check_shape("exp_out", exp_out.shape, x.shape, 3)
    if n_rows == 0 or n == 0:
        return
    cdef Rows xv = logits_rows(x), ev = output_rows(exp_out)
    cdef Rows tv = per_row(<const char *>&target[0, 0], n_b, target.strides[0], target.strides[1])
    cdef Rows hv = per_row(NULL, 1, 0, 0)
    if shift is not None:
        hv = per_row(<const char *>&shift[0, 0], n_b, shift.strides[0], shift.strides[1])
    cdef const double *w = &weight[0] if weight is not None else NULL
    cdef double w_sum = <double>n
    if w != NULL:
        w_sum = 0.0
        for c in range(n):
            w_sum += w[c]
    cdef double *out = &stats[0, 0, 0]
    cdef int failed = 0
    cdef ThreadScratch thread_buffers = row_scratch(xv, ev, sizeof(floating), &failed)
    cdef floating *scratch = NULL
    cdef const floating *row
    cdef floating *work
    cdef floating m
    cdef int64_t y
    cdef double *s
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        scratch = <floating *>scratch_alloc(thread_buffers, n * sizeof(floating))
        for r in prange(n_rows, schedule="static"):
            if scratch_missing(thread_buffers, scratch):
                continue
            s = out + r * N_STATS
            row = row_in(xv, r, n, scratch)
            m = <floating>(<const double *>row_at(hv, r))[0] if hv.base != NULL else row_max(row, n)
            y = (<const int64_t *>row_at(tv, r))[0]
            # What the exponentials overwrite (in place) is read first.
            s[STAT_LABEL] = <double>row[y - c0] if c0 <= y < c0 + n else 0.0
            s[STAT_VSUM] = w_sum
            s[STAT_GAP] = 0.0
            if with_gap:
                # An all -inf block shifted by its own max: sum_c w_c (0 - x_c), the same
                # terms w_c * inf as the row's (finite) max gives them; the merge adds no
                # shift term for it.
                s[STAT_GAP] = row_gapsum(row, w, n, 0.0 if m == -INFINITY and hv.base == NULL else <double>m)
            work = row_work(ev, r, scratch)
            block_exp_stats(row, work, n, m, hv.base == NULL, s)
            if work != NULL:
                row_out(ev, r, n, work)
        free(scratch)
    scratch_raise(thread_buffers)


def class_block_stats_probs(
    const floating[:, :, :] x,                   # IN  (A, B, W) the block: classes c0 .. c0 + W - 1
    const target_floating[:, :, :] target,       # IN  (A, B, W) the block's target probabilities
    const double[::1] weight,                    # IN  (W,) the block's class weights, or None
    double label_smoothing,
    Py_ssize_t n_classes,                        # C, all blocks' classes (for eps / C)
    const double[:, :] shift,                    # IN  (A, B) each row's shift, or None
    double[:, :, ::1] stats,                     # OUT (A, B, N_STATS)
    floating[:, :, :] exp_out,                   # OUT (A, B, W) exp(x - shift), or None; may be x's memory
    int n_threads,
):
    """Per-row partial statistics of a block of classes with probability targets:
    with v_c = w_c y'_c, y'_c = (1-eps) y_c + eps/C: STAT_GAP = sum_c v_c (m - x_c),
    STAT_VSUM = sum_c v_c (STAT_LABEL 0)."""
    cdef Py_ssize_t n = x.shape[2], n_b = x.shape[1], n_rows = x.shape[0] * x.shape[1], r, c
    check_shape("target", target.shape, x.shape, 3)
    check_stats_shape(x.shape, stats)
    if weight is not None:
        check_shape("weight", weight.shape, &x.shape[2], 1)
    if shift is not None:
        check_shape("shift", shift.shape, x.shape, 2)
    if exp_out is not None:
        if shift is None:
            raise ValueError("softmaxloss kernels: exp_out needs a shift")
        check_shape("exp_out", exp_out.shape, x.shape, 3)
    if n_rows == 0 or n == 0:
        return
    cdef Rows xv = logits_rows(x), ev = output_rows(exp_out)
    cdef Rows tv = make_rows(&target[0, 0, 0], n_b, target.strides[0], target.strides[1],
                             target.strides[2])
    cdef Py_ssize_t t_step = target.strides[2] // sizeof(target_floating)
    cdef Rows hv = per_row(NULL, 1, 0, 0)
    if shift is not None:
        hv = per_row(<const char *>&shift[0, 0], n_b, shift.strides[0], shift.strides[1])
    cdef const double *w = &weight[0] if weight is not None else NULL
    cdef double eps = label_smoothing
    cdef double smooth = eps / <double>n_classes
    cdef double *out = &stats[0, 0, 0]
    cdef int failed = 0
    cdef ThreadScratch thread_buffers = row_scratch(xv, ev, sizeof(floating), &failed)
    cdef floating *scratch = NULL
    cdef const floating *row
    cdef const target_floating *t
    cdef floating *work
    cdef floating m
    cdef double *s
    cdef double v, v_sum, gap, gap_lo, reference
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        scratch = <floating *>scratch_alloc(thread_buffers, n * sizeof(floating))
        for r in prange(n_rows, schedule="static"):
            if scratch_missing(thread_buffers, scratch):
                continue
            s = out + r * N_STATS
            row = row_in(xv, r, n, scratch)
            m = <floating>(<const double *>row_at(hv, r))[0] if hv.base != NULL else row_max(row, n)
            reference = 0.0 if m == -INFINITY and hv.base == NULL else <double>m
            t = <const target_floating *>row_at(tv, r)
            v_sum = 0.0
            gap = 0.0
            gap_lo = 0.0
            for c in range(n):  # as the whole-row kernel: y' leaving out a zero coefficient
                v = smooth if eps == 1.0 else (1.0 - eps) * <double>t[c * t_step] + smooth
                if w != NULL:
                    v = v * w[c]
                v_sum = v_sum + v
                gap = gap + v * (reference - <double>row[c])
                if floating is double:  # as the whole-row kernel: the lo of m - x_c apart
                    gap_lo = gap_lo + v * sml_sub_lo(reference, row[c])
            gap = gap + gap_lo
            s[STAT_LABEL] = 0.0
            s[STAT_VSUM] = v_sum
            s[STAT_GAP] = gap
            work = row_work(ev, r, scratch)
            block_exp_stats(row, work, n, m, hv.base == NULL, s)
            if work != NULL:
                row_out(ev, r, n, work)
        free(scratch)
    scratch_raise(thread_buffers)


cdef inline int check_coefs(const floating[:, :, :] x, const double[:, :, ::1] coefs,
                            floating[:, :, :] grad, const double[::1] weight) except -1:
    cdef Py_ssize_t expected[3]
    expected[0] = x.shape[0]
    expected[1] = x.shape[1]
    expected[2] = N_COEFS
    check_shape("coefs", coefs.shape, expected, 3)
    check_shape("grad", grad.shape, x.shape, 3)
    if weight is not None:
        check_shape("weight", weight.shape, &x.shape[2], 1)
    return 0


cdef inline void block_grad_scale(floating *g, Py_ssize_t n, const double *k,
                                  const double *w, double eps, double smooth,
                                  double divisor) noexcept nogil:
    """g_c = p_scale e_c - smooth_scale w_c over e_c in g, as the whole-row kernel forms
    it (the scales rounded to the logits' precision), or, for a row whose scales overflow
    (COEF_DIVIDE), s (p_coef p_c - (eps/C) w_c) / W grouped as the formula, divided last."""
    cdef floating p_scale = <floating>k[COEF_P_SCALE]
    cdef floating smooth_scale = <floating>k[COEF_SMOOTH]
    cdef double inv_total
    cdef Py_ssize_t c
    if k[COEF_DIVIDE] != 0.0:
        inv_total = 1.0 / k[COEF_TOTAL]
        for c in range(n):
            g[c] = <floating>((k[COEF_S] * (k[COEF_P_COEF] * (<double>g[c] * inv_total)
                                            - smooth * (w[c] if w != NULL else 1.0))) / divisor)
    elif eps == 0.0:
        for c in range(n):
            g[c] = g[c] * p_scale
    elif w == NULL:
        for c in range(n):
            g[c] = g[c] * p_scale - smooth_scale
    else:
        for c in range(n):
            g[c] = g[c] * p_scale - <floating>(k[COEF_SMOOTH] * w[c])


cdef inline double block_label_grad(double e_y, const double *k, double eps, double smooth,
                                     double w_sum, double z, double divisor) noexcept nogil:
    """The label's entry, s ((1-eps) w_y (p_y - 1) + (eps/C)(w_sum p_y - w_y) + 2 z lse p_y) / W,
    with 1 - p_y = (S - e_y) / S, or (S - 1) / S at the max (e_y = 1), without cancellation."""
    cdef double total = k[COEF_TOTAL]
    cdef double p_y = e_y * (1.0 / total)
    cdef double w_y = k[COEF_W_Y]
    cdef double label = 0.0
    if eps != 1.0:
        label = -(1.0 - eps) * w_y * ((k[COEF_EXCESS] if e_y == 1.0 else total - e_y) / total)
    if eps != 0.0:
        label += smooth * (w_sum * p_y - w_y)
    if z != 0.0:
        label += 2.0 * z * k[COEF_LSE] * p_y
    return (k[COEF_S] * label) / divisor


def class_block_grad_index(
    const floating[:, :, :] x,          # IN  (A, B, W) logits, or e_c = exp(x_c - M) (from_exp)
    const int64_t[:, :] target,         # IN  (A, B) class indices among all classes
    Py_ssize_t c0,
    int64_t ignore_index,
    const double[::1] weight,           # IN  (W,) the block's class weights, or None
    const double[:, :, ::1] coefs,      # IN  (A, B, N_COEFS) per-row coefficients
    bint from_exp,
    double label_smoothing,
    Py_ssize_t n_classes,
    double w_sum,                       # sum of all C class weights
    double z_loss,
    double divisor,                     # W for reduction="mean" (NaN if 0), else 1
    floating[:, :, :] grad,             # OUT (A, B, W); may be x's memory
    int n_threads,
):
    """The gradient of a block of classes with class-index targets (ignored rows 0)."""
    cdef Py_ssize_t n = x.shape[2], n_b = x.shape[1], n_rows = x.shape[0] * x.shape[1], r, c
    check_shape("target", target.shape, x.shape, 2)
    check_coefs(x, coefs, grad, weight)
    if n_rows == 0 or n == 0:
        return
    cdef Rows xv = logits_rows(x), gv = output_rows(grad)
    cdef Rows tv = per_row(<const char *>&target[0, 0], n_b, target.strides[0], target.strides[1])
    cdef const double *w = &weight[0] if weight is not None else NULL
    cdef const double *k0 = &coefs[0, 0, 0]
    cdef const double *k
    cdef double eps = label_smoothing, smooth = label_smoothing / <double>n_classes
    cdef int failed = 0
    cdef ThreadScratch thread_buffers = row_scratch(xv, gv, sizeof(floating), &failed)
    cdef floating *scratch = NULL
    cdef const floating *row
    cdef floating *work
    cdef int64_t y
    cdef double e_y
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        scratch = <floating *>scratch_alloc(thread_buffers, n * sizeof(floating))
        for r in prange(n_rows, schedule="static"):
            if scratch_missing(thread_buffers, scratch):
                continue
            y = (<const int64_t *>row_at(tv, r))[0]
            if y == ignore_index:
                row_fill(gv, r, n, <floating>0.0)
                continue
            k = k0 + r * N_COEFS
            row = row_in(xv, r, n, scratch)
            work = row_work(gv, r, scratch)
            if not from_exp:
                block_exp_row(row, work, n, <floating>k[COEF_MAX])
            elif <const floating *>work != row:
                for c in range(n):
                    work[c] = row[c]
            e_y = <double>work[y - c0] if c0 <= y < c0 + n else 0.0
            block_grad_scale(work, n, k, w, eps, smooth, divisor)
            if c0 <= y < c0 + n:
                work[y - c0] = <floating>block_label_grad(e_y, k, eps, smooth, w_sum, z_loss, divisor)
            row_out(gv, r, n, work)
        free(scratch)
    scratch_raise(thread_buffers)


def class_block_grad_probs(
    const floating[:, :, :] x,                   # IN  (A, B, W) logits, or exp(x - M) (from_exp)
    const target_floating[:, :, :] target,       # IN  (A, B, W) the block's target probabilities
    const double[::1] weight,                    # IN  (W,) the block's class weights, or None
    const double[:, :, ::1] coefs,               # IN  (A, B, N_COEFS) per-row coefficients
    bint from_exp,
    double label_smoothing,
    Py_ssize_t n_classes,
    double divisor,                              # W for reduction="mean", else 1
    floating[:, :, :] grad,                      # OUT (A, B, W); may be x's memory
    int n_threads,
):
    """The gradient of a block of classes with probability targets:
    grad_c = s ((T + 2 z lse) p_c - w_c y'_c) / W, as p_scale e_c - s w_c y'_c / W, or
    grouped as the formula and divided last where p_scale overflows (COEF_DIVIDE)."""
    cdef Py_ssize_t n = x.shape[2], n_b = x.shape[1], n_rows = x.shape[0] * x.shape[1], r, c
    check_shape("target", target.shape, x.shape, 3)
    check_coefs(x, coefs, grad, weight)
    if n_rows == 0 or n == 0:
        return
    cdef Rows xv = logits_rows(x), gv = output_rows(grad)
    cdef Rows tv = make_rows(&target[0, 0, 0], n_b, target.strides[0], target.strides[1],
                             target.strides[2])
    cdef Py_ssize_t t_step = target.strides[2] // sizeof(target_floating)
    cdef const double *w = &weight[0] if weight is not None else NULL
    cdef const double *k0 = &coefs[0, 0, 0]
    cdef const double *k
    cdef double eps = label_smoothing, smooth = label_smoothing / <double>n_classes
    cdef int failed = 0
    cdef ThreadScratch thread_buffers = row_scratch(xv, gv, sizeof(floating), &failed)
    cdef floating *scratch = NULL
    cdef const floating *row
    cdef const target_floating *t
    cdef floating *work
    cdef double v, s, p_scale, total
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        scratch = <floating *>scratch_alloc(thread_buffers, n * sizeof(floating))
        for r in prange(n_rows, schedule="static"):
            if scratch_missing(thread_buffers, scratch):
                continue
            k = k0 + r * N_COEFS
            row = row_in(xv, r, n, scratch)
            work = row_work(gv, r, scratch)
            if not from_exp:
                block_exp_row(row, work, n, <floating>k[COEF_MAX])
            elif <const floating *>work != row:
                for c in range(n):
                    work[c] = row[c]
            t = <const target_floating *>row_at(tv, r)
            s = k[COEF_S]
            p_scale = k[COEF_P_SCALE]
            total = k[COEF_TOTAL]
            for c in range(n):
                v = smooth if eps == 1.0 else (1.0 - eps) * <double>t[c * t_step] + smooth
                if w != NULL:
                    v = v * w[c]
                if k[COEF_DIVIDE] != 0.0:
                    work[c] = <floating>((s * (k[COEF_P_COEF] * (<double>work[c] / total) - v)) / divisor)
                else:
                    work[c] = <floating>(<double>work[c] * p_scale - (s * v) / divisor)
            row_out(gv, r, n, work)
        free(scratch)
    scratch_raise(thread_buffers)

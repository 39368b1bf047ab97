# Layer 3 of _kernels.pyx (see its docstring): what the array loops (its `def` functions)
# share: the rows views of their arguments, the per-thread scratch and the gather / scatter
# of rows through it, a call's LossOptions, the mean's normaliser W, in-order sums and the
# shape checks. Included by _kernels.pyx; not compiled on its own.

# ---- per-thread scratch ---------------------------------------------------------------

cdef struct ThreadScratch:
    # The per-thread scratch of one `with nogil, parallel()` loop. Every loop follows
    # the one pattern:
    #     cdef int failed = 0
    #     cdef ThreadScratch scratch = thread_scratch(needed, &failed)  # or row_scratch
    #     with nogil, parallel(num_threads=...):
    #         buffer = <floating *>scratch_alloc(scratch, size)  # one per thread
    #         for r in prange(..., schedule="static"):
    #             if scratch_missing(scratch, buffer):
    #                 continue
    #             ... (buffer: this thread's scratch, NULL when none is needed)
    #         free(buffer)
    #     scratch_raise(scratch)                    # MemoryError if a thread had none
    bint needed    # whether the loop needs scratch at all
    int *failed    # set to 1 by a thread that could not allocate it (and skipped its rows)


cdef inline ThreadScratch thread_scratch(bint needed, int *failed) noexcept nogil:
    cdef ThreadScratch scratch
    scratch.needed = needed
    scratch.failed = failed
    return scratch


cdef inline ThreadScratch row_scratch(Rows x, Rows out, Py_ssize_t itemsize,
                                      int *failed) noexcept nogil:
    """Scratch for rows that must be gathered or scattered (row_in, row_work): classes
    not contiguous in x, or in out (base NULL: no output)."""
    return thread_scratch(x.step != itemsize or (out.base != NULL and out.step != itemsize),
                          failed)


cdef inline void *scratch_alloc(ThreadScratch scratch, size_t size) noexcept nogil:
    """This thread's scratch of `size` bytes; NULL when the loop needs none (or when
    malloc fails)."""
    return malloc(size) if scratch.needed else NULL


cdef inline bint scratch_missing(ThreadScratch scratch, const void *buffer) noexcept nogil:
    """Before each iteration: whether this thread lacks the scratch the loop needs, and
    must skip it (recorded for scratch_raise)."""
    if scratch.needed and buffer == NULL:
        scratch.failed[0] = 1
        return True
    return False


cdef inline int scratch_raise(ThreadScratch scratch) except -1:
    """After the loop: MemoryError when a thread could not allocate its scratch."""
    if scratch.failed[0]:
        raise MemoryError("softmaxloss: could not allocate a scratch row")
    return 0


# ---- rows views and the gather / scatter of a row -----------------------------------

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


cdef Rows logits_rows(const floating[:, :, :] a):
    return make_rows(&a[0, 0, 0], a.shape[1], a.strides[0], a.strides[1], a.strides[2])


cdef Rows output_rows(floating[:, :, :] a):
    """Rows of an output (A, B, C) array; base NULL for None (no output)."""
    if a is None:
        return make_rows(NULL, 1, 0, 0, sizeof(floating))
    return make_rows(&a[0, 0, 0], a.shape[1], a.strides[0], a.strides[1], a.strides[2])


cdef Rows per_row(const char *base, Py_ssize_t n_b, Py_ssize_t stride_a, Py_ssize_t stride_b):
    return make_rows(base, n_b, stride_a, stride_b, 0)


cdef Rows class_rows(const int64_t[:, :] classes):
    """(A, B) class indices, already checked and not empty, as per-row values."""
    return per_row(<const char *>&classes[0, 0], classes.shape[1], classes.strides[0],
                   classes.strides[1])


cdef Rows sample_weight_rows(const double[:, :] sample_weight) noexcept:
    """(A, B) sample weights, already checked and not empty, as per-row values; base
    NULL (all ones) for None."""
    if sample_weight is None:
        return per_row(NULL, 1, 0, 0)
    return per_row(<const char *>&sample_weight[0, 0], sample_weight.shape[1],
                   sample_weight.strides[0], sample_weight.strides[1])


# ---- cross-entropy: a call's options, the loop over rows, W -------------------------

cdef LossOptions loss_options(const double[::1] weight, Py_ssize_t n, double eps, double z,
                              int64_t ignore_index) noexcept:
    """A cross-entropy call's LossOptions; divisor 1 until the caller knows W (and sets
    it from gradient_divisor)."""
    cdef LossOptions o
    cdef const double *w = &weight[0] if weight is not None else NULL
    cdef double w_sum = <double>n
    cdef Py_ssize_t c
    if w != NULL:
        w_sum = 0.0
        for c in range(n):
            w_sum += w[c]
    o.w = w
    o.w_sum = w_sum
    o.eps = eps
    o.z = z
    o.divisor = 1.0
    o.ignore_index = ignore_index
    o.focal_gamma = 0.0
    o.lse_out = NULL
    o.entropy_out = NULL
    o.argmax_out = NULL
    return o


cdef int request_stats(LossOptions *o, const Py_ssize_t *x_shape, double[:, ::1] lse,
                       double[:, ::1] entropy, int64_t[:, ::1] argmax,
                       double focal_gamma) except -1:
    """The extra outputs a call asks for (None: not requested; each (A, B), C-contiguous)
    and its focal gamma, into its options."""
    if lse is not None:
        check_shape("lse", lse.shape, x_shape, 2)
        o.lse_out = &lse[0, 0]
    if entropy is not None:
        check_shape("entropy", entropy.shape, x_shape, 2)
        o.entropy_out = &entropy[0, 0]
    if argmax is not None:
        check_shape("argmax", argmax.shape, x_shape, 2)
        o.argmax_out = &argmax[0, 0]
    if not (focal_gamma >= 0.0 and isfinite(focal_gamma)):
        raise ValueError(f"softmaxloss kernels: focal_gamma must be finite and >= 0, got {focal_gamma}")
    if focal_gamma != 0.0 and o.eps != 0.0:
        raise ValueError("softmaxloss kernels: focal_gamma does not combine with label smoothing")
    o.focal_gamma = focal_gamma
    return 0


cdef inline Py_ssize_t stats_size(LossOptions o, Py_ssize_t n) noexcept nogil:
    """The per-thread stats scratch a loop adds to its own (in elements): n logits when the
    entropy is requested, where the exponentials go when the entropy needs them beside
    logits that the gradient overwrites (in place, or no gradient); else none. A pointer
    of its own, passed to the row kernels, not a field of the thread's options: writing
    that copy in the loop changes how gcc compiles the row (FMA contractions, measured)."""
    return n if o.entropy_out != NULL else 0


cdef inline double gradient_divisor(bint mean, double normaliser) noexcept nogil:
    """What every row's gradient is divided by: W for a mean (NaN when W is 0: the
    mean of nothing and its gradient are undefined), else 1."""
    if not mean:
        return 1.0
    return normaliser if normaliser != 0.0 else NAN


cdef inline bint in_blocks(Py_ssize_t n, size_t itemsize) noexcept nogil:
    """Whether cross_entropy_index takes its rows BLOCK_ROWS at a time (few classes)."""
    return n <= (BLOCK_MAX_CLASSES_FLOAT if itemsize == sizeof(float) else BLOCK_MAX_CLASSES_DOUBLE)


cdef inline void index_row(Rows x, Rows g, Rows target, Rows sample_weight, double *row_loss,
                           Py_ssize_t r, Py_ssize_t n, LossOptions o,
                           floating *scratch, floating *stats) noexcept nogil:
    """Row r of cross_entropy_index's row loop: left out (left_out), or gathered,
    computed by row_loss_grad_index and scattered back."""
    cdef Py_ssize_t y = (<const int64_t *>row_at(target, r))[0]
    if left_out(y, n, o):
        if wants_stats(o):
            row_stats_alone(row_in(x, r, n, scratch), n, o, r, stats)
        row_loss[r] = left_out_value(y, o)
        row_fill(g, r, n, <floating>left_out_value(y, o))
        return
    cdef double s = sample_weight_at(sample_weight, r)
    cdef floating *work = row_work(g, r, scratch)
    row_loss[r] = row_loss_grad_index(row_in(x, r, n, scratch), work, n, y, s, o, r, stats)
    if work != NULL:
        row_out(g, r, n, work)


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
        invalid += invalid_class(y, n, ignore_index)
    if invalid == 0:
        return <double>kept
    for r in range(n_rows):
        if invalid_class((<const int64_t *>row_at(target, r))[0], n, ignore_index):
            invalid_row[0] = r
            break
    return NAN


cdef double row_weight_total(Rows target, Rows sample_weight, LossOptions o,
                             Py_ssize_t n_rows, Py_ssize_t n, bint index_target,
                             double *scratch, Py_ssize_t *invalid_row) noexcept nogil:
    """W of reduction="mean": the sum over kept rows of s_n * w[y_n] (class indices) or
    of s_n (probabilities; the number of rows without sample weights). `scratch` holds
    n_rows doubles. The first row whose class is out of range and not ignore_index
    goes to invalid_row (-1 if none): the caller stops before writing anything."""
    cdef const double *w = o.w
    cdef int64_t ignore_index = o.ignore_index
    cdef Py_ssize_t r, y
    cdef double weight
    invalid_row[0] = -1
    if not index_target and sample_weight.base == NULL:
        return <double>n_rows
    if sample_weight.base == NULL and w == NULL:
        return kept_row_count(target, n_rows, n, ignore_index, invalid_row)
    for r in range(n_rows):
        weight = sample_weight_at(sample_weight, r)
        if index_target:
            y = (<const int64_t *>row_at(target, r))[0]
            if invalid_class(y, n, ignore_index):
                invalid_row[0] = r
                return NAN
            if y == ignore_index:
                weight = 0.0
            elif w != NULL:
                weight = weight * w[y]
        scratch[r] = weight
    return sum_in_order(scratch, n_rows)


# ---- shape checks ---------------------------------------------------------------------

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
                           const double[::1] weight, const double[:, :] sample_weight,
                           const Py_ssize_t *grad_shape) except -1:
    """check_shape for the arrays both cross-entropy kernels take beside the logits and
    the target (grad_shape NULL: no gradient)."""
    check_shape("row_loss", row_loss.shape, x_shape, 2)
    if weight is not None:
        check_shape("weight", weight.shape, &x_shape[2], 1)
    if sample_weight is not None:
        check_shape("sample_weight", sample_weight.shape, x_shape, 2)
    if grad_shape != NULL:
        check_shape("grad", grad_shape, x_shape, 3)
    return 0


cdef int index_first_pass(const Py_ssize_t *x_shape, const int64_t[:, :] target,
                          const double[::1] weight, const double[:, :] sample_weight,
                          int64_t ignore_index, double label_smoothing, double z_loss, bint mean,
                          double[:, ::1] row_loss, const Py_ssize_t *grad_shape,
                          bint report_invalid_row, LossOptions *o, Rows *tv, Rows *sv,
                          double *normaliser) except -2:
    """What a class-index cross-entropy call does before its loops, whatever the logits'
    storage (cross_entropy_index and cross_entropy_index_half): the shape checks, the
    options, the target's and sample weights' rows, and W with every class checked
    (row_loss as scratch). Returns 0 for an empty call (nothing to do), -1 when a class
    is out of range (its row number into row_loss[0, 0] with report_invalid_row; nothing
    else written), 1 with o (divisor set), tv, sv and the normaliser W ready for the loops."""
    check_shape("target", target.shape, x_shape, 2)
    check_loss_shapes(x_shape, row_loss, weight, sample_weight, grad_shape)
    cdef Py_ssize_t n = x_shape[2], n_rows = x_shape[0] * x_shape[1]
    if n_rows == 0 or n == 0:
        return 0
    tv[0] = class_rows(target)
    sv[0] = sample_weight_rows(sample_weight)
    o[0] = loss_options(weight, n, label_smoothing, z_loss, ignore_index)
    cdef double *losses = &row_loss[0, 0]
    cdef Py_ssize_t invalid_row
    with nogil:
        normaliser[0] = row_weight_total(tv[0], sv[0], o[0], n_rows, n, True, losses, &invalid_row)
    if invalid_row >= 0:
        if report_invalid_row:
            losses[0] = <double>invalid_row
        return -1
    o.divisor = gradient_divisor(mean, normaliser[0])
    return 1

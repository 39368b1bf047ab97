# Half-precision storage (bfloat16, float16) around the float32 kernels: the `def` entry points
# `softmax_half`, `logsumexp_half`, `cross_entropy_index_half` and `cross_entropy_probs_half`.
# Logits are read as stored (uint16_t bits, any strides): a row, or a group of rows, is
# converted into per-thread float32 scratch (_csrc/_half.h, exact), computed there by the
# float32 row, group or block kernel that a contiguous float32 call of the same shape
# would use (the same code, so the same float32 values), and the gradient or the softmax
# written back rounded once, to nearest with ties to even. No other arithmetic: a half
# result is exactly the float32 kernel's result on the same (exactly converted) logits,
# rounded once. In place works as in float32: a row is read whole before it is written.
# The plain cross-entropy of rows the float32 call takes one at a time (plain_half_row) runs
# row_loss_grad_index's steps itself, so that its last pass writes the half gradient directly.
# Included by _kernels.pyx; not compiled on its own.

cdef extern from "_half.h" nogil:
    const int SML_HALF_BF16
    const int SML_HALF_F16
    float sml_bf16_to_f32(uint16_t h)
    uint16_t sml_f32_to_bf16(float f)
    float sml_f16_to_f32(uint16_t h)
    uint16_t sml_f32_to_f16(float f)
    void sml_half_load(int kind, const char *src, Py_ssize_t step, Py_ssize_t n, float *dst)
    void sml_half_store(int kind, const float *src, Py_ssize_t n, char *dst, Py_ssize_t step)
    void sml_half_scaled_store(int kind, const float *e, Py_ssize_t n, double scale,
                               uint16_t *dst)


cdef enum:
    # Which float32 path cross_entropy_index_half runs on its converted rows.
    HALF_BLOCKS = 0  # block_loss_grad_index, BLOCK_ROWS rows of few classes
    HALF_GROUPS = 1  # group_loss_grad_index, group_rows(n) rows of up to GROUP_MAX_CLASSES
    HALF_ROWS = 2    # index_row, one row at a time
    HALF_PLAIN = 3   # plain_half_index, one row at a time (the plain cross-entropy)


cdef int check_half_kind(int kind) except -1:
    if kind != SML_HALF_BF16 and kind != SML_HALF_F16:
        raise ValueError(f"softmaxloss kernels: kind must be {SML_HALF_BF16} (bfloat16) or "
                         f"{SML_HALF_F16} (float16), got {kind}")
    return 0


cdef Rows half_rows(const uint16_t[:, :, :] a):
    """Rows of an (A, B, C) half array; base NULL for None (no output)."""
    if a is None:
        return make_rows(NULL, 1, 0, 0, sizeof(uint16_t))
    return make_rows(&a[0, 0, 0], a.shape[1], a.strides[0], a.strides[1], a.strides[2])


cdef inline void half_load(Rows v, Py_ssize_t r, Py_ssize_t n, int kind, float *dst) noexcept nogil:
    """Row r of half storage into dst (n float32), exactly."""
    sml_half_load(kind, row_at(v, r), v.step, n, dst)


cdef inline void half_store(Rows v, Py_ssize_t r, Py_ssize_t n, int kind,
                            const float *src) noexcept nogil:
    """src (n float32) into row r of half storage, each rounded once (nothing without v)."""
    if v.base != NULL:
        sml_half_store(kind, src, n, row_at(v, r), v.step)


def softmax_half(const uint16_t[:, :, :] x not None,   # IN  (A, B, C) half bits
                 uint16_t[:, :, :] out not None,       # OUT (A, B, C) half bits, may be x's memory
                 bint log_output,
                 int kind,                             # 0 bfloat16, 1 float16
                 int n_threads):
    """softmax (or log_softmax) of half logits: row_softmax in float32, rounded once."""
    cdef Py_ssize_t n = x.shape[2], n_rows = x.shape[0] * x.shape[1], r
    check_half_kind(kind)
    check_shape("out", out.shape, x.shape, 3)
    if n_rows == 0 or n == 0:
        return
    cdef Rows xv = half_rows(x), ov = half_rows(out)
    cdef int failed = 0
    cdef ThreadScratch scratch = thread_scratch(True, &failed)
    cdef float *buffer = NULL
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        buffer = <float *>scratch_alloc(scratch, n * sizeof(float))
        for r in prange(n_rows, schedule="static"):
            if scratch_missing(scratch, buffer):
                continue
            half_load(xv, r, n, kind, buffer)
            row_softmax(<const float *>buffer, buffer, n, log_output)
            half_store(ov, r, n, kind, buffer)
        free(buffer)
    scratch_raise(scratch)


def logsumexp_half(const uint16_t[:, :, :] x not None,   # IN  (A, B, C) half bits
                   double[:, ::1] out not None,          # OUT (A, B)
                   int kind,
                   int n_threads):
    """out[a, b] = log(sum_c exp(x[a, b, c])): row_logsumexp of the float32 row."""
    cdef Py_ssize_t n = x.shape[2], n_rows = x.shape[0] * x.shape[1], r
    check_half_kind(kind)
    check_shape("out", out.shape, x.shape, 2)
    if n_rows == 0 or n == 0:
        return
    cdef Rows xv = half_rows(x)
    cdef double *values = &out[0, 0]
    cdef int failed = 0
    cdef ThreadScratch scratch = thread_scratch(True, &failed)
    cdef float *buffer = NULL
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        buffer = <float *>scratch_alloc(scratch, n * sizeof(float))
        for r in prange(n_rows, schedule="static"):
            if scratch_missing(scratch, buffer):
                continue
            half_load(xv, r, n, kind, buffer)
            values[r] = row_logsumexp(<const float *>buffer, n)
        free(buffer)
    scratch_raise(scratch)


cdef inline void half_index_chunk(
    Rows x,                    # IN  half logits
    Rows g,                    # OUT half gradient (base NULL: the loss only); may be x's memory
    Rows target,               # IN  int64 class indices or ignore_index
    Rows sample_weight,        # IN  double (base NULL: all ones)
    double *row_loss,          # OUT per-row losses, contiguous in row order
    Py_ssize_t first,          # the chunk: rows first .. first + count - 1
    Py_ssize_t count,          # <= BLOCK_ROWS (1 for HALF_ROWS)
    Py_ssize_t n,
    int kind,
    int path,                  # HALF_BLOCKS, HALF_GROUPS or HALF_ROWS
    LossOptions o,
    float *rows,               # scratch, count * n: the rows in float32, then their gradient
    float *work,               # the float32 path's own scratch (HALF_ROWS: none)
    float *stats,              # scratch (n) for the entropy, or NULL (see stats_size)
) noexcept nogil:
    """Rows first .. first+count-1 of cross_entropy_index_half: converted into `rows`,
    computed there in place by the float32 path, their gradient rounded back into g."""
    cdef int64_t labels[BLOCK_ROWS]
    cdef double weights[BLOCK_ROWS]
    cdef double losses[BLOCK_ROWS]
    cdef Py_ssize_t i
    for i in range(count):
        labels[i] = (<const int64_t *>row_at(target, first + i))[0]
        weights[i] = sample_weight_at(sample_weight, first + i)
        half_load(x, first + i, n, kind, rows + i * n)
    cdef Rows xs = make_rows(rows, 1, n * sizeof(float), 0, sizeof(float))
    cdef Rows gs = make_rows(rows if g.base != NULL else NULL, 1, n * sizeof(float), 0,
                             sizeof(float))
    cdef Rows ts = make_rows(labels, 1, sizeof(int64_t), 0, 0)
    cdef Rows ss = make_rows(weights, 1, sizeof(double), 0, 0)
    cdef LossOptions local = o  # the extra outputs of this chunk's rows 0 .. count - 1
    if o.lse_out != NULL:
        local.lse_out = o.lse_out + first
    if o.entropy_out != NULL:
        local.entropy_out = o.entropy_out + first
    if o.argmax_out != NULL:
        local.argmax_out = o.argmax_out + first
    if path == HALF_BLOCKS:
        block_loss_grad_index(xs, gs, ts, ss, losses, 0, count, n, local, work)
    elif path == HALF_GROUPS:
        group_loss_grad_index(xs, gs, ts, ss, losses, 0, count, n, local, work, stats)
    else:
        index_row(xs, gs, ts, ss, losses, 0, n, local, <float *>NULL, stats)
    for i in range(count):
        row_loss[first + i] = losses[i]
        half_store(g, first + i, n, kind, rows + i * n)


cdef inline uint16_t half_round(int kind, float value) noexcept nogil:
    return sml_f32_to_bf16(value) if kind == SML_HALF_BF16 else sml_f32_to_f16(value)


cdef inline bint plain_half_call(const uint16_t[:, :, :] x, const uint16_t[:, :, :] grad,
                                 LossOptions o) noexcept:
    """Whether cross_entropy_index_half can take plain_half_row for its rows: the plain
    cross-entropy (no label smoothing, z-loss, focal loss or extra outputs; class weights
    and sample weights are fine) with a gradient, classes contiguous in x and grad, rows
    that the float32 call takes one at a time (more than GROUP_MAX_CLASSES classes: the
    blocks and groups form their formula along the rows, vectorised, which one row at a
    time would give up)."""
    return (grad is not None and o.eps == 0.0 and o.z == 0.0 and o.focal_gamma == 0.0
            and not wants_stats(o) and not in_blocks(x.shape[2], sizeof(float))
            and group_rows(x.shape[2], sizeof(float)) == 0
            and x.strides[2] == sizeof(uint16_t) and grad.strides[2] == sizeof(uint16_t))


cdef inline double plain_half_row(
    const uint16_t *h,         # IN  (n,) half logits of the row, contiguous
    uint16_t *gh,              # OUT (n,) half gradient, contiguous; may be h
    Py_ssize_t n,
    Py_ssize_t y,              # the row's class, 0 <= y < n
    double s,                  # the row's sample weight
    LossOptions o,             # eps = z = focal_gamma = 0, no extra outputs (plain_half_call)
    int kind,
    float *e,                  # scratch (n): the row in float32, then its e_c
) noexcept nogil:
    """row_loss_grad_index of the float32 row (the same steps on the same values: the same
    float32 gradient and loss) with its last pass fused into the rounding to half: the
    gradient e_c p_scale goes from the float32 e_c straight into gh, rounded once, without
    a float32 gradient row and a pass more to round it. Rows whose scales overflow take
    row_loss_grad_index's grad_divided, then the plain rounding."""
    sml_half_load(kind, <const char *>h, sizeof(uint16_t), n, e)
    cdef const double *w = o.w
    cdef float m = row_max(<const float *>e, n)
    cdef double x_y = e[y]
    cdef double excess, total_lo
    cdef double total = row_expsum_lo(<const float *>e, e, n, m, &excess, &total_lo)
    cdef double e_y = e[y]
    cdef double log_total = sml_log1p(excess)
    cdef IndexRowTerms terms = any_row_terms(
        m, x_y, 0.0, total, excess, log_total, e_y, n, w[y] if w != NULL else 1.0, s, o)
    cdef float p_scale = <float>terms.p_scale
    cdef float smooth_scale = <float>terms.smooth_scale
    if (not (isfinite(p_scale) and isfinite(smooth_scale))
            or divide_last(terms.p_scale, terms.smooth_scale, s, o)):
        grad_divided(e, 1, n, terms, o)
        e[y] = <float>terms.label_grad
        sml_half_store(kind, e, n, <char *>gh, sizeof(uint16_t))
    else:
        sml_half_scaled_store(kind, e, n, terms.p_scale, gh)
        gh[y] = half_round(kind, <float>terms.label_grad)
    return terms.loss


cdef inline void plain_half_index(
    Rows x, Rows g, Rows target, Rows sample_weight, double *row_loss, Py_ssize_t r,
    Py_ssize_t n, int kind, LossOptions o, float *e,  # e: scratch (n)
) noexcept nogil:
    """Row r of cross_entropy_index_half when plain_half_call: plain_half_row, or a row
    left out (ignore_index) as index_row leaves it."""
    cdef Py_ssize_t y = (<const int64_t *>row_at(target, r))[0]
    if left_out(y, n, o):
        half_index_chunk(x, g, target, sample_weight, row_loss, r, 1, n, kind, HALF_ROWS, o,
                         e, <float *>NULL, <float *>NULL)
        return
    row_loss[r] = plain_half_row(<const uint16_t *>row_at(x, r), <uint16_t *>row_at(g, r), n,
                                 y, sample_weight_at(sample_weight, r), o, kind, e)


def cross_entropy_index_half(
    const uint16_t[:, :, :] x not None, # IN  (A, B, C) half logits
    const int64_t[:, :] target not None,  # IN  (A, B) class indices or ignore_index
    const double[::1] weight,           # IN  (C,) class weights, or None
    const double[:, :] sample_weight,   # IN  (A, B), or None
    int64_t ignore_index,
    double label_smoothing,
    double z_loss,
    bint mean,                          # reduction="mean": the gradient is divided by W
    double[:, ::1] row_loss not None,   # OUT (A, B) per-row losses (0 where ignored)
    uint16_t[:, :, :] grad,             # OUT (A, B, C) half gradient, or None; may be x's memory
    int kind,                           # 0 bfloat16, 1 float16
    int n_threads,
    bint report_invalid_row=False,
    double[:, ::1] lse=None,            # OUT (A, B) extra outputs, as cross_entropy_index's
    double[:, ::1] entropy=None,
    int64_t[:, ::1] argmax=None,
    double focal_gamma=0.0,
):
    """cross_entropy_index for half logits (the same arguments, and `kind`; the same
    returns): each chunk of rows computed in float32 as a contiguous float32 call would
    compute it, the gradient rounded once into `grad`."""
    cdef Py_ssize_t n = x.shape[2], n_rows = x.shape[0] * x.shape[1], block
    check_half_kind(kind)
    cdef LossOptions o
    cdef Rows tv, sv
    cdef double normaliser
    cdef int ready = index_first_pass(x.shape, target, weight, sample_weight, ignore_index,
                                      label_smoothing, z_loss, mean, row_loss,
                                      grad.shape if grad is not None else NULL,
                                      report_invalid_row, &o, &tv, &sv, &normaliser)
    if ready <= 0:
        return (0.0, 0.0) if ready == 0 else None
    request_stats(&o, x.shape, lse, entropy, argmax, focal_gamma)
    cdef Rows xv = half_rows(x), gv = half_rows(grad)
    cdef double *losses = &row_loss[0, 0]
    # The float32 path of a contiguous float32 call (index_loops), its chunk of rows and
    # its own scratch, in floats.
    cdef int path = HALF_ROWS
    cdef Py_ssize_t chunk = 1, work_size = 0
    if plain_half_call(x, grad, o):
        path = HALF_PLAIN
    elif in_blocks(n, sizeof(float)):
        path, chunk, work_size = HALF_BLOCKS, BLOCK_ROWS, n * BLOCK_ROWS
    elif group_rows(n, sizeof(float)) > 0:
        path, chunk, work_size = HALF_GROUPS, group_rows(n, sizeof(float)), BLOCK_ROWS
    cdef int failed = 0
    cdef ThreadScratch scratch = thread_scratch(True, &failed)
    cdef float *buffer = NULL
    cdef Py_ssize_t extra = stats_size(o, n)  # the entropy's scratch, after the chunk's own
    cdef float *stats = NULL
    cdef LossOptions mine  # each thread's copy of o (see LossOptions)
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        buffer = <float *>scratch_alloc(scratch, (chunk * n + work_size + extra) * sizeof(float))
        mine = o
        stats = buffer + chunk * n + work_size if extra > 0 else NULL
        for block in prange((n_rows + chunk - 1) // chunk, schedule="static"):
            if scratch_missing(scratch, buffer):
                continue
            if path == HALF_PLAIN:
                plain_half_index(xv, gv, tv, sv, losses, block, n, kind, mine, buffer)
            else:
                half_index_chunk(xv, gv, tv, sv, losses, block * chunk,
                                 min(chunk, n_rows - block * chunk), n, kind, path, mine,
                                 buffer, buffer + chunk * n, stats)
        free(buffer)
    scratch_raise(scratch)
    return sum_in_order(losses, n_rows), normaliser


def cross_entropy_probs_half(
    const uint16_t[:, :, :] x not None,      # IN  (A, B, C) half logits
    const target_floating[:, :, :] target not None,  # IN  (A, B, C) probabilities
    const double[::1] weight,                # IN  (C,) class weights, or None
    const double[:, :] sample_weight,        # IN  (A, B), or None
    double label_smoothing,
    double z_loss,
    bint mean,                               # reduction="mean": the gradient is divided by W
    double[:, ::1] row_loss not None,        # OUT (A, B) per-row losses
    uint16_t[:, :, :] grad,                  # OUT (A, B, C) half gradient, or None; may be x's memory
    int kind,                                # 0 bfloat16, 1 float16
    int n_threads,
    double[:, ::1] lse=None,                 # OUT (A, B) extra outputs, as cross_entropy_index's
    double[:, ::1] entropy=None,
    int64_t[:, ::1] argmax=None,
):
    """cross_entropy_probs for half logits: row_loss_grad_probs on each float32 row, the
    gradient rounded once into `grad`."""
    cdef Py_ssize_t n = x.shape[2], n_b = x.shape[1], n_rows = x.shape[0] * x.shape[1], r
    check_half_kind(kind)
    check_shape("target", target.shape, x.shape, 3)
    check_loss_shapes(x.shape, row_loss, weight, sample_weight,
                      grad.shape if grad is not None else NULL)
    if n_rows == 0 or n == 0:
        return 0.0, 0.0
    cdef Rows xv = half_rows(x), gv = half_rows(grad)
    cdef Rows tv = make_rows(&target[0, 0, 0], n_b, target.strides[0], target.strides[1],
                             target.strides[2])
    cdef Py_ssize_t t_step = target.strides[2] // sizeof(target_floating)
    cdef Rows sv = sample_weight_rows(sample_weight)
    cdef double *losses = &row_loss[0, 0]
    cdef LossOptions o = loss_options(weight, n, label_smoothing, z_loss, 0)
    request_stats(&o, x.shape, lse, entropy, argmax, 0.0)
    cdef double normaliser
    cdef Py_ssize_t invalid_row
    with nogil:
        normaliser = row_weight_total(sv, sv, o, n_rows, n, False, losses, &invalid_row)
    o.divisor = gradient_divisor(mean, normaliser)
    cdef int failed = 0
    cdef ThreadScratch scratch = thread_scratch(True, &failed)
    cdef float *buffer = NULL
    cdef Py_ssize_t extra = stats_size(o, n)  # the entropy's scratch, after the row's own
    cdef float *stats = NULL
    cdef LossOptions mine  # each thread's copy of o (see LossOptions)
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        buffer = <float *>scratch_alloc(scratch, (n + extra) * sizeof(float))
        mine = o
        stats = buffer + n if extra > 0 else NULL
        for r in prange(n_rows, schedule="static"):
            if scratch_missing(scratch, buffer):
                continue
            half_load(xv, r, n, kind, buffer)
            losses[r] = row_loss_grad_probs(
                <const float *>buffer, buffer if gv.base != NULL else <float *>NULL, n,
                <const target_floating *>row_at(tv, r), t_step, sample_weight_at(sv, r), mine, r, stats)
            half_store(gv, r, n, kind, buffer)
        free(buffer)
    scratch_raise(scratch)
    return sum_in_order(losses, n_rows), normaliser


def half_from_float32(const float[::1] x not None, uint16_t[::1] out not None, int kind):
    """out = x rounded once to bfloat16 (kind 0) or float16 (kind 1) bits, by the kernels'
    own conversion (for tests)."""
    check_half_kind(kind)
    check_shape("out", out.shape, x.shape, 1)
    if x.shape[0]:
        with nogil:
            sml_half_store(kind, &x[0], x.shape[0], <char *>&out[0], sizeof(uint16_t))


def half_to_float32(const uint16_t[::1] x not None, float[::1] out not None, int kind):
    """out = the bfloat16 (kind 0) or float16 (kind 1) bits x as float32, exactly, by the
    kernels' own conversion (for tests)."""
    check_half_kind(kind)
    check_shape("out", out.shape, x.shape, 1)
    if x.shape[0]:
        with nogil:
            sml_half_load(kind, <const char *>&x[0], sizeof(uint16_t), x.shape[0], &out[0])

# Soft-capping (`softcap=`, Gemma 2's final-logit cap) around the unchanged kernels: the `def`
# entry points `softmax_softcap`, `logsumexp_softcap`, `cross_entropy_index_softcap` and
# `cross_entropy_probs_softcap`, for float32, float64 and half (bfloat16 / float16 bits)
# logits alike (the fused type `stored`).
#
# A row, or a chunk of rows, is read into per-thread scratch as its capped logits
# cap * tanh(x / cap) (capped_load: float64 arithmetic rounded once for float64; float32 in
# float arithmetic, eight lanes, within 2.5 float32 ulps, `_csrc/_softcap.h`),
# with, when a gradient is asked for, the slope sech^2(x / cap) of each entry beside it;
# the row, group or block kernel a contiguous call of that compute type would use runs
# on the scratch unchanged; the gradient is multiplied by the slope (the chain rule) and
# stored (rounded once into half storage). The capped logits never leave the scratch.
#
# With u = x / cap, a = |u| and t = e^(-2a) (one exp, shared by both; the loops in C,
# `_csrc/_softcap.h`, where they vectorise):
#     tanh(u) = sign(u) (1 - t) / (1 + t)          (a >= small: 1 - t does not cancel;
#                                                   float32: 1 - 2t / (1 + t))
#     tanh(u) = u (1 - u^2/3 + 2u^4/15 - ...)      (a < small: the series, to the last bit;
#                                                   float32: a fitted polynomial below 0.6)
#     sech^2(u) = 4 t / (1 + t)^2                  (no cancellation anywhere: never 1 - tanh^2,
#                                                   whose relative error is ~t^-1 ulps;
#                                                   float32 below 0.6: 1 - tanh^2 of the
#                                                   polynomial, tanh^2 <= 0.29 there, so no
#                                                   exp for a chunk all below)
# NaN stays NaN; +-inf gives +-cap with slope 0 (so a row with +inf is finite once capped).
# In place works as everywhere: a row is read whole into the scratch before it is written.
# Included by _kernels.pyx after _kernels_half.pxi (whose half conversions and chunk-path
# names it uses); not compiled on its own.

from libc.string cimport memcpy

ctypedef fused stored:
    float
    double
    uint16_t

cdef enum:
    NATIVE_STORAGE = -1  # `kind` of float32 / float64 logits (else a half kind, _half.h)


cdef extern from "_softcap.h" nogil:
    void sml_softcap_row_f(const float *x, float *capped, float *slope, Py_ssize_t n, double cap)
    void sml_softcap_row_d(const double *x, double *capped, double *slope, Py_ssize_t n, double cap)
    void sml_softcap_scale_f(const float *g, const float *slope, float *out, Py_ssize_t n)
    void sml_softcap_scale_d(const double *g, const double *slope, double *out, Py_ssize_t n)


cdef inline void cap_row(const floating *x, floating *capped, floating *slope, Py_ssize_t n,
                         double cap) noexcept nogil:
    """capped_c = cap tanh(x_c / cap) and, unless slope is NULL, slope_c = sech^2(x_c / cap)
    (`_csrc/_softcap.h`: in double, each rounded once); capped may be x."""
    if floating is float:
        sml_softcap_row_f(x, capped, slope, n, cap)
    else:
        sml_softcap_row_d(x, capped, slope, n, cap)


cdef inline void scale_row(const floating *g, const floating *slope, floating *out,
                           Py_ssize_t n) noexcept nogil:
    """out_c = g_c * slope_c (out may be g)."""
    if floating is float:
        sml_softcap_scale_f(g, slope, out, n)
    else:
        sml_softcap_scale_d(g, slope, out, n)


cdef inline void capped_load(Rows v, Py_ssize_t r, Py_ssize_t n, int kind, double cap,
                             floating *capped, floating *slope) noexcept nogil:
    """Row r of the logits (any strides; half bits when kind >= 0, then floating is float)
    into `capped` as its capped logits, and its slopes into `slope` unless NULL."""
    cdef const char *row = row_at(v, r)
    cdef Py_ssize_t c
    if kind != NATIVE_STORAGE:
        if floating is float:
            sml_half_load(kind, row, v.step, n, capped)
        cap_row(<const floating *>capped, capped, slope, n, cap)
    elif v.step == sizeof(floating):
        cap_row(<const floating *>row, capped, slope, n, cap)
    else:
        for c in range(n):
            capped[c] = (<const floating *>(row + c * v.step))[0]
        cap_row(<const floating *>capped, capped, slope, n, cap)


cdef inline void sloped_store(Rows v, Py_ssize_t r, Py_ssize_t n, int kind, floating *g,
                              const floating *slope) noexcept nogil:
    """The gradient g of the capped logits times their slopes (in g), into row r of v
    (rounded once into half storage when kind >= 0); slope NULL: g as it is (softmax)."""
    cdef char *row = row_at(v, r)
    cdef floating *out = <floating *>row
    cdef Py_ssize_t c
    if kind != NATIVE_STORAGE:
        if slope != NULL:
            scale_row(<const floating *>g, slope, g, n)
        if floating is float:
            sml_half_store(kind, g, n, row, v.step)
    elif v.step == sizeof(floating):  # one pass (g may be the row itself: in place)
        if slope != NULL:
            scale_row(<const floating *>g, slope, out, n)
        elif out != g:
            memcpy(row, g, n * sizeof(floating))
    elif slope != NULL:
        for c in range(n):
            (<floating *>(row + c * v.step))[0] = g[c] * slope[c]
    else:
        for c in range(n):
            (<floating *>(row + c * v.step))[0] = g[c]


cdef Rows stored_rows(const stored[:, :, :] a):
    """Rows of an (A, B, C) array of logits or of an output; base NULL for None."""
    if a is None:
        return make_rows(NULL, 1, 0, 0, sizeof(stored))
    return make_rows(&a[0, 0, 0], a.shape[1], a.strides[0], a.strides[1], a.strides[2])


cdef int storage_kind(const stored *which, int kind) except -2:
    """NATIVE_STORAGE for float32 / float64 logits; the half kind (checked) for uint16 bits."""
    if stored is uint16_t:
        check_half_kind(kind)
        return kind
    return NATIVE_STORAGE


cdef int check_cap(double cap) except -1:
    if not (isfinite(cap) and cap > 0.0):
        raise ValueError(f"softmaxloss kernels: softcap must be finite and > 0, got {cap!r}")
    return 0


# ---- softmax, log_softmax, logsumexp --------------------------------------------------------

cdef int softcap_softmax_loops(const floating *which, Rows xv, Rows ov, Py_ssize_t n_rows,
                               Py_ssize_t n, bint log_output, double cap, int kind,
                               int n_threads) except -1:
    cdef Py_ssize_t r
    cdef int failed = 0
    cdef ThreadScratch scratch = thread_scratch(True, &failed)
    cdef floating *buffer = NULL
    cdef floating *work
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        buffer = <floating *>scratch_alloc(scratch, n * sizeof(floating))
        for r in prange(n_rows, schedule="static"):
            if scratch_missing(scratch, buffer):
                continue
            work = buffer
            if kind == NATIVE_STORAGE and ov.step == sizeof(floating):
                work = <floating *>row_at(ov, r)  # computed in the output row itself
            capped_load(xv, r, n, kind, cap, work, <floating *>NULL)
            row_softmax(<const floating *>work, work, n, log_output)
            sloped_store(ov, r, n, kind, work, <const floating *>NULL)
        free(buffer)
    scratch_raise(scratch)
    return 0


def softmax_softcap(const stored[:, :, :] x not None,   # IN  (A, B, C) logits (uint16: half bits)
                    stored[:, :, :] out not None,       # OUT (A, B, C), may be x's memory
                    bint log_output,
                    double softcap,                     # cap > 0
                    int kind,                           # half bits: 0 bfloat16, 1 float16
                    int n_threads):
    """softmax (or log_softmax) of cap * tanh(x / cap), over the last axis."""
    cdef Py_ssize_t n = x.shape[2], n_rows = x.shape[0] * x.shape[1]
    kind = storage_kind(<const stored *>NULL, kind)
    check_cap(softcap)
    check_shape("out", out.shape, x.shape, 3)
    if n_rows == 0 or n == 0:
        return
    cdef Rows xv = stored_rows(x), ov = stored_rows(out)
    if stored is double:
        softcap_softmax_loops(<const double *>NULL, xv, ov, n_rows, n, log_output, softcap, kind,
                              n_threads)
    else:
        softcap_softmax_loops(<const float *>NULL, xv, ov, n_rows, n, log_output, softcap, kind,
                              n_threads)


cdef int softcap_logsumexp_loops(const floating *which, Rows xv, double *values,
                                 Py_ssize_t n_rows, Py_ssize_t n, double cap, int kind,
                                 int n_threads) except -1:
    cdef Py_ssize_t r
    cdef int failed = 0
    cdef ThreadScratch scratch = thread_scratch(True, &failed)
    cdef floating *buffer = NULL
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        buffer = <floating *>scratch_alloc(scratch, n * sizeof(floating))
        for r in prange(n_rows, schedule="static"):
            if scratch_missing(scratch, buffer):
                continue
            capped_load(xv, r, n, kind, cap, buffer, <floating *>NULL)
            values[r] = row_logsumexp(<const floating *>buffer, n)
        free(buffer)
    scratch_raise(scratch)
    return 0


def logsumexp_softcap(const stored[:, :, :] x not None,   # IN  (A, B, C) logits (uint16: half bits)
                      double[:, ::1] out not None,        # OUT (A, B)
                      double softcap,
                      int kind,
                      int n_threads):
    """out[a, b] = log(sum_c exp(cap * tanh(x[a, b, c] / cap)))."""
    cdef Py_ssize_t n = x.shape[2], n_rows = x.shape[0] * x.shape[1]
    kind = storage_kind(<const stored *>NULL, kind)
    check_cap(softcap)
    check_shape("out", out.shape, x.shape, 2)
    if n_rows == 0 or n == 0:
        return
    cdef Rows xv = stored_rows(x)
    if stored is double:
        softcap_logsumexp_loops(<const double *>NULL, xv, &out[0, 0], n_rows, n, softcap, kind,
                                n_threads)
    else:
        softcap_logsumexp_loops(<const float *>NULL, xv, &out[0, 0], n_rows, n, softcap, kind,
                                n_threads)


# ---- cross-entropy --------------------------------------------------------------------------

cdef inline void softcap_index_chunk(
    Rows x,                    # IN  logits (half bits when kind >= 0)
    Rows g,                    # OUT gradient (base NULL: the loss only); may be x's memory
    Rows target,               # IN  int64 class indices or ignore_index
    Rows sample_weight,        # IN  double (base NULL: all ones)
    double *row_loss,          # OUT per-row losses, contiguous in row order
    Py_ssize_t first,          # the chunk: rows first .. first + count - 1
    Py_ssize_t count,          # <= BLOCK_ROWS (1 for HALF_ROWS)
    Py_ssize_t n,
    int kind,
    int path,                  # HALF_BLOCKS, HALF_GROUPS or HALF_ROWS (_kernels_half.pxi)
    double cap,
    LossOptions o,
    floating *rows,            # scratch, count * n: the capped rows, then their gradient
    floating *slope,           # scratch, count * n: the slopes (unused without g)
    floating *work,            # the path's own scratch (HALF_ROWS: none)
    floating *stats,           # scratch (n) for the entropy, or NULL (see stats_size)
) noexcept nogil:
    """Rows first .. first+count-1 of cross_entropy_index_softcap: capped into `rows`,
    computed there in place by the path, their gradient times the slopes into g."""
    cdef int64_t labels[BLOCK_ROWS]
    cdef double weights[BLOCK_ROWS]
    cdef double losses[BLOCK_ROWS]
    cdef Py_ssize_t i
    cdef bint with_grad = g.base != NULL
    if (path == HALF_ROWS and with_grad and kind == NATIVE_STORAGE
            and g.step == sizeof(floating)):
        rows = <floating *>row_at(g, first)  # one long row: computed in the gradient row itself
    for i in range(count):
        labels[i] = (<const int64_t *>row_at(target, first + i))[0]
        weights[i] = sample_weight_at(sample_weight, first + i)
        capped_load(x, first + i, n, kind, cap, rows + i * n, slope + i * n if with_grad else NULL)
    cdef Rows xs = make_rows(rows, 1, n * sizeof(floating), 0, sizeof(floating))
    cdef Rows gs = make_rows(rows if with_grad else NULL, 1, n * sizeof(floating), 0,
                             sizeof(floating))
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
        index_row(xs, gs, ts, ss, losses, 0, n, local, <floating *>NULL, stats)
    for i in range(count):
        row_loss[first + i] = losses[i]
        if with_grad:
            # A row left out keeps its gradient (0 when ignored) whatever its slopes (NaN
            # for NaN logits).
            sloped_store(g, first + i, n, kind, rows + i * n,
                         <const floating *>NULL if left_out(labels[i], n, o) else slope + i * n)


cdef int softcap_index_loops(const floating *which, Rows xv, Rows gv, Rows tv, Rows sv,
                             double *losses, Py_ssize_t n_rows, Py_ssize_t n, LossOptions o,
                             double cap, int kind, int n_threads) except -1:
    """The loops of cross_entropy_index_softcap: chunks of rows on the path a contiguous
    call of the compute type would take (index_loops)."""
    cdef Py_ssize_t block
    cdef int path = HALF_ROWS
    cdef Py_ssize_t chunk = 1, work_size = 0
    if in_blocks(n, sizeof(floating)):
        path, chunk, work_size = HALF_BLOCKS, BLOCK_ROWS, n * BLOCK_ROWS
    elif group_rows(n, sizeof(floating)) > 0:
        path, chunk, work_size = HALF_GROUPS, group_rows(n, sizeof(floating)), BLOCK_ROWS
    cdef Py_ssize_t slope_size = chunk * n if gv.base != NULL else 0
    cdef Py_ssize_t extra = stats_size(o, n)  # the entropy's scratch, after the rest
    cdef int failed = 0
    cdef ThreadScratch scratch = thread_scratch(True, &failed)
    cdef floating *buffer = NULL
    cdef floating *stats = NULL
    cdef LossOptions mine  # each thread's copy of o (see LossOptions)
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        buffer = <floating *>scratch_alloc(
            scratch, (chunk * n + slope_size + work_size + extra) * sizeof(floating))
        mine = o
        stats = buffer + chunk * n + slope_size + work_size if extra > 0 else NULL
        for block in prange((n_rows + chunk - 1) // chunk, schedule="static"):
            if scratch_missing(scratch, buffer):
                continue
            softcap_index_chunk(xv, gv, tv, sv, losses, block * chunk,
                                min(chunk, n_rows - block * chunk), n, kind, path, cap, mine,
                                buffer, buffer + chunk * n, buffer + chunk * n + slope_size, stats)
        free(buffer)
    scratch_raise(scratch)
    return 0


def cross_entropy_index_softcap(
    const stored[:, :, :] x not None,   # IN  (A, B, C) logits (uint16: half bits)
    const int64_t[:, :] target not None,  # IN  (A, B) class indices or ignore_index
    const double[::1] weight,           # IN  (C,) class weights, or None
    const double[:, :] sample_weight,   # IN  (A, B), or None
    int64_t ignore_index,
    double label_smoothing,
    double z_loss,
    bint mean,                          # reduction="mean": the gradient is divided by W
    double[:, ::1] row_loss not None,   # OUT (A, B) per-row losses (0 where ignored)
    stored[:, :, :] grad,               # OUT (A, B, C) gradient, or None; may be x's memory
    double softcap,                     # cap > 0
    int kind,                           # half bits: 0 bfloat16, 1 float16
    int n_threads,
    bint report_invalid_row=False,
    double[:, ::1] lse=None,            # OUT (A, B) extra outputs, as cross_entropy_index's,
    double[:, ::1] entropy=None,        # of the capped logits
    int64_t[:, ::1] argmax=None,
    double focal_gamma=0.0,             # softmax focal loss's gamma (0: cross-entropy)
):
    """cross_entropy_index of the capped logits cap * tanh(x / cap) (the same arguments,
    and softcap and kind; the same returns), the gradient that of the logits x. The focal
    loss of the capped logits too (focal_gamma), and the extra outputs of the capped
    logits (their log-sum-exp, entropy and argmax: ties, such as logits saturated to the
    same capped value, go to the first)."""
    cdef Py_ssize_t n = x.shape[2], n_rows = x.shape[0] * x.shape[1]
    kind = storage_kind(<const stored *>NULL, kind)
    check_cap(softcap)
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
    cdef Rows xv = stored_rows(x), gv = stored_rows(grad)
    cdef double *losses = &row_loss[0, 0]
    if stored is double:
        softcap_index_loops(<const double *>NULL, xv, gv, tv, sv, losses, n_rows, n, o, softcap,
                            kind, n_threads)
    else:
        softcap_index_loops(<const float *>NULL, xv, gv, tv, sv, losses, n_rows, n, o, softcap,
                            kind, n_threads)
    return sum_in_order(losses, n_rows), normaliser


cdef int softcap_probs_loops(const floating *which, Rows xv, Rows gv, Rows tv,
                             const target_floating *t_kind, Py_ssize_t t_step, Rows sv,
                             double *losses, Py_ssize_t n_rows, Py_ssize_t n, LossOptions o,
                             double cap, int kind, int n_threads) except -1:
    cdef Py_ssize_t r
    cdef bint with_grad = gv.base != NULL
    cdef int failed = 0
    cdef ThreadScratch scratch = thread_scratch(True, &failed)
    cdef floating *buffer = NULL
    cdef Py_ssize_t extra = stats_size(o, n)  # the entropy's scratch, after the row's own
    cdef floating *stats = NULL
    cdef LossOptions mine  # each thread's copy of o (see LossOptions)
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        buffer = <floating *>scratch_alloc(scratch, (2 * n + extra) * sizeof(floating))
        mine = o
        stats = buffer + 2 * n if extra > 0 else NULL
        for r in prange(n_rows, schedule="static"):
            if scratch_missing(scratch, buffer):
                continue
            capped_load(xv, r, n, kind, cap, buffer, buffer + n if with_grad else NULL)
            losses[r] = row_loss_grad_probs(
                <const floating *>buffer, buffer if with_grad else <floating *>NULL, n,
                <const target_floating *>row_at(tv, r), t_step, sample_weight_at(sv, r), mine, r,
                stats)
            if with_grad:
                sloped_store(gv, r, n, kind, buffer, buffer + n)
        free(buffer)
    scratch_raise(scratch)
    return 0


def cross_entropy_probs_softcap(
    const stored[:, :, :] x not None,        # IN  (A, B, C) logits (uint16: half bits)
    const target_floating[:, :, :] target not None,  # IN  (A, B, C) probabilities
    const double[::1] weight,                # IN  (C,) class weights, or None
    const double[:, :] sample_weight,        # IN  (A, B), or None
    double label_smoothing,
    double z_loss,
    bint mean,                               # reduction="mean": the gradient is divided by W
    double[:, ::1] row_loss not None,        # OUT (A, B) per-row losses
    stored[:, :, :] grad,                    # OUT (A, B, C) gradient, or None; may be x's memory
    double softcap,                          # cap > 0
    int kind,                                # half bits: 0 bfloat16, 1 float16
    int n_threads,
    double[:, ::1] lse=None,                 # OUT (A, B) extra outputs of the capped logits,
    double[:, ::1] entropy=None,             # as cross_entropy_index_softcap's
    int64_t[:, ::1] argmax=None,
):
    """cross_entropy_probs of the capped logits cap * tanh(x / cap), the gradient that of x
    (and the extra outputs of the capped logits)."""
    cdef Py_ssize_t n = x.shape[2], n_b = x.shape[1], n_rows = x.shape[0] * x.shape[1]
    kind = storage_kind(<const stored *>NULL, kind)
    check_cap(softcap)
    check_shape("target", target.shape, x.shape, 3)
    check_loss_shapes(x.shape, row_loss, weight, sample_weight,
                      grad.shape if grad is not None else NULL)
    if n_rows == 0 or n == 0:
        return 0.0, 0.0
    cdef Rows xv = stored_rows(x), gv = stored_rows(grad)
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
    if stored is double:
        softcap_probs_loops(<const double *>NULL, xv, gv, tv, <const target_floating *>NULL,
                            t_step, sv, losses, n_rows, n, o, softcap, kind, n_threads)
    else:
        softcap_probs_loops(<const float *>NULL, xv, gv, tv, <const target_floating *>NULL,
                            t_step, sv, losses, n_rows, n, o, softcap, kind, n_threads)
    return sum_in_order(losses, n_rows), normaliser


def softcap_slope(const floating[::1] x not None, double softcap, floating[::1] capped not None,
                  floating[::1] slope not None):
    """capped = cap * tanh(x / cap), slope = sech^2(x / cap) by the kernels' own code for
    x's dtype (for accuracy tests)."""
    check_cap(softcap)
    check_shape("capped", capped.shape, x.shape, 1)
    check_shape("slope", slope.shape, x.shape, 1)
    if x.shape[0]:
        with nogil:
            cap_row(&x[0], &capped[0], &slope[0], x.shape[0], softcap)

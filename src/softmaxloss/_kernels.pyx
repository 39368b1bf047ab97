"""Fused softmax, log-softmax, logsumexp and cross-entropy kernels.

Design, bottom up (each layer calls only the one below it):

1. Row primitives in C (`_rowops.h`, `_rowops_template.h`, `_fastexp.h`): max,
   exp-and-sum, gap-sum of one contiguous row; the loops that must vectorise. Every
   exp(x - m), here and in the block path, is of the exact difference (hi + lo, folded
   into the exp: `sml_exp*_sub`), and the results made of x - m itself (log-softmax, the
   loss's log S + (m - x_y), the gap sums) take it as hi + lo too (`sml_sub_sub`,
   `sml_sub_lo`): no error grows with the gap m - x (issue 19).
2. Row kernels, `cdef inline ... noexcept nogil`, written once for float32 and float64
   (the fused type `floating`): one row's softmax, or one row's loss and gradient in
   one pass over its logits (`_kernels_rows.pxi`). The cross-entropy of a class-index
   row is split in two: the row's statistics (max, sum of exponentials, ...) and
   `index_row_terms`, the formula that turns them into the loss and the gradient's
   coefficients. The formula is written once; two ways of gathering the statistics
   use it: `row_loss_grad_index` (one row, vectorised along the classes) and
   `block_loss_grad_index` (`_kernels_block.pxi`: a block of BLOCK_ROWS rows with few
   classes, transposed so that every step is vectorised across the rows). A call's
   options (class weights, label smoothing, z-loss, the divisor W, ignore_index) reach
   them as one `LossOptions`, and one rule (`kept_class`) leaves out the ignored rows
   and those with a class out of range. The options also carry the focal loss's gamma
   (a per-row factor inside `index_row_terms`) and where the opt-in extra outputs go
   (per-row log-sum-exp, entropy, argmax: `row_stats`, from the same statistics).
3. Array loops (the `def` functions, in this file, and what they share, in
   `_kernels_loops.pxi`): every array arrives as a "rows view" of shape
   (A, B, C): the class axis last, rows indexed by r = a * B + b, any strides (a
   `Rows`). The loops run `prange` over rows or blocks of rows; a row whose class
   axis is not contiguous is gathered into a per-thread scratch row (one pattern,
   `ThreadScratch`), computed there, and scattered back. Every row is computed by the
   same code whatever the thread count, and no loop reduces across rows, so results
   are bitwise identical for every `n_threads`. The cross-entropy loops' first pass
   (`row_weight_total`, the mean's W) also finds the first row whose class is out of
   range (`invalid_class`): the call is then refused before anything is written, and
   that row reported to the facade, which raises its error.
4. Half-precision storage (`_kernels_half.pxi`, `_csrc/_half.h`): bfloat16 and float16
   logits are read as stored (their uint16 bits), a row or a group of rows at a time
   converted exactly into per-thread float32 scratch, computed there by the float32
   kernels above, unchanged, and the gradient or softmax rounded back once, to nearest
   with ties to even, by a portable conversion (every build, the same bits from the
   same float32 values).
   Soft-capping (`_kernels_softcap.pxi`) is a layer of the same kind: a row's capped
   logits cap * tanh(x / cap) and their slopes sech^2(x / cap) formed in per-thread
   scratch, the same kernels run on them unchanged, the gradient times the slopes.
5. The Python facade (`softmaxloss._facade`) validates, builds the rows views, reduces
   (the kernels return the per-row losses, their total and the mean's normaliser W)
   and documents.

Arguments are marked IN (read only, `const`: read-only arrays work) or OUT.
An OUT array may be the same memory as the logits (in place): each row kernel reads
everything it needs from a logit before it writes the gradient over it.
"""

import os as _os

from cython.parallel cimport parallel, prange
from libc.float cimport DBL_MIN
from libc.math cimport INFINITY, NAN, expm1, fabs, isfinite, isnan, pow
from libc.math cimport exp as libc_exp
from libc.string cimport memcpy
from libc.stdint cimport int64_t, uint16_t, uint64_t, uintptr_t
from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdlib cimport free, malloc


cdef extern from "_rowops.h" nogil:
    double sml_fmadd(double a, double b, double c)
    float sml_fmaddf(float a, float b, float c)
    const int SML_OPENMP
    const char *SML_ISA
    const char *SML_COMPILER
    int sml_max_threads()
    int sml_cpu_has_avx2_fma()
    float sml_expf(float x)
    double sml_exp(double x)
    float sml_expf_sub(float x, float m)
    double sml_exp_sub(double x, double m)
    double sml_sub_lo(double a, double b)
    double sml_sub_sub(double x, double m, double L)
    double sml_sub_dd(double x, double k, double k_lo)
    void sml_scale_f(float *v, Py_ssize_t n, double k)
    float sml_scale1_f(float v, double k)
    double sml_log1p(double x)
    float sml_row_max_f(const float *x, Py_ssize_t n)
    double sml_row_max_d(const double *x, Py_ssize_t n)
    double sml_row_expsum_f(const float *x, float *e, Py_ssize_t n, float m, double *excess)
    double sml_row_expsum_d(const double *x, double *e, Py_ssize_t n, double m, double *excess)
    double sml_row_expsum_lo_f(const float *x, float *e, Py_ssize_t n, float m, double *excess,
                               double *total_lo)
    double sml_row_expsum_lo_d(const double *x, double *e, Py_ssize_t n, double m, double *excess,
                               double *total_lo)
    double sml_quot_dd(double num, double s, double s_lo, double w, double *lo)
    double sml_mul_dd(double e, double hi, double lo)
    double sml_fms_dd(double e, double hi, double lo, double t)
    double sml_add_lo(double a, double b, double b_lo, double *lo)
    double sml_label_grad_at_max(double scale, double excess, double s, double s_lo, double w)
    double sml_grad_hess_d(double e, double inv, double inv_lo, double c_max, double c_max_lo,
                           double *p_out)
    double sml_row_gapsum_f(const float *x, const double *w, Py_ssize_t n, double m)
    double sml_row_gapsum_d(const double *x, const double *w, Py_ssize_t n, double m)


cdef extern from "_rowstats.h" nogil:
    double sml_row_entsum_f(const float *x, const float *e, Py_ssize_t n, double m)
    double sml_row_entsum_d(const double *x, const double *e, Py_ssize_t n, double m)
    Py_ssize_t sml_row_find_f(const float *x, Py_ssize_t n, float m)
    Py_ssize_t sml_row_find_d(const double *x, Py_ssize_t n, double m)
    Py_ssize_t sml_row_first_nan_f(const float *x, Py_ssize_t n)
    Py_ssize_t sml_row_first_nan_d(const double *x, Py_ssize_t n)


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
                                const double *p_scale, const double *p_lo,
                                const double *smooth_scale, const double *w)
    void sml_block_store_f(char *const *rows, Py_ssize_t step, Py_ssize_t count,
                           Py_ssize_t n, const float *et, Py_ssize_t ld)
    void sml_block_store_d(char *const *rows, Py_ssize_t step, Py_ssize_t count,
                           Py_ssize_t n, const double *et, Py_ssize_t ld)
    bint sml_block_quot_ok(double s, double w)
    bint sml_block_in_range_f(const float *xt, Py_ssize_t ld, Py_ssize_t count, Py_ssize_t n,
                              const float *m)
    bint sml_block_in_range_d(const double *xt, Py_ssize_t ld, Py_ssize_t count, Py_ssize_t n,
                              const double *m)
    float sml_block_exp_sub_f(float x, float m)
    double sml_block_exp_sub_d(double x, double m)
    Py_ssize_t sml_block_p_lo(Py_ssize_t count, const double *s, const double *w_y,
                              const double *excess, const double *total, const double *total_lo,
                              const Py_ssize_t *label, const double *e_y, double w,
                              double *p_scale, double *p_lo, double *label_grad)


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
    # Up to 23 float32 / 23 float64 classes: where interleaved A/B timings of the two
    # paths (AVX2 build, 65536 rows) put the crossover; the row path wins from three
    # float32 vectors of classes. float64 17-23 classes were the group path's until issue
    # 19's compensated sums made its per-row finish dearer: the block path then took 28-32 %
    # fewer instructions there and timed 1.1-1.4x faster (interleaved A/B, issue 14's
    # note). 64 rows beat 32 and 128.
    BLOCK_ROWS = 64
    BLOCK_MAX_CLASSES_FLOAT = 23
    BLOCK_MAX_CLASSES_DOUBLE = 23
    # Contiguous rows of more classes go in groups (group_loss_grad_index) of up to
    # BLOCK_ROWS rows whose gradient fits in GROUP_BYTES, for rows of at most
    # GROUP_MAX_CLASSES classes.
    GROUP_BYTES = 16384
    GROUP_MAX_CLASSES = 1024


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


cdef inline double sample_weight_at(Rows v, Py_ssize_t r) noexcept nogil:
    """Row r's sample weight: a double per row, or 1 when base is NULL (no weights)."""
    return (<const double *>row_at(v, r))[0] if v.base != NULL else 1.0


cdef struct LossOptions:
    # What every row of a cross-entropy call shares, built once per call by its def
    # function (loss_options) and passed to the row and block kernels as one argument,
    # by value (inlined, its fields are scalars again). Each thread takes its own copy
    # before its loop: gcc then keeps the fields in registers across the rows, as it did
    # the scalars they replace (a shared struct is reached through a pointer whose double
    # fields the gradient's stores may alias: they would be reloaded for every row, and
    # the code around them, FMA contractions included, would change).
    const double *w       # (n,) class weights, or NULL for all ones
    double w_sum          # sum_c w_c (n without class weights)
    double eps            # label smoothing
    double z              # z-loss coefficient
    double divisor        # W for reduction="mean" (NaN when W is 0), else 1
    int64_t ignore_index  # class-index targets: the rows left out
    # Softmax focal loss (issue 16 item 4): the row's -log p_y term becomes
    # (1 - p_y)^gamma (-log p_y), its gradient rescaled (index_row_terms); 0: plain.
    double focal_gamma
    # The opt-in extra outputs (issue 16 item 3), row r at [r], NULL when not requested
    # (row_stats_first, row_stats): the row's log-sum-exp, entropy, argmax.
    double *lse_out
    double *entropy_out
    int64_t *argmax_out


include "_kernels_rows.pxi"
include "_kernels_block.pxi"
include "_kernels_loops.pxi"


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
    cdef LossOptions o
    cdef Py_ssize_t block, n_blocks = (n_rows + BLOCK_ROWS - 1) // BLOCK_ROWS
    cdef int threads = thread_count(n_threads, n_rows, n)
    if in_blocks(n, sizeof(floating)):  # few classes: block_softmax
        o = loss_options(None, n, 0.0, 0.0, -100)
        if threads == 1:  # no parallel region (its start is most of a small call)
            with nogil:
                for block in range(n_blocks):
                    block_softmax(&x[0, 0, 0], xv, ov, block * BLOCK_ROWS,
                                  min(<Py_ssize_t>BLOCK_ROWS, n_rows - block * BLOCK_ROWS), n,
                                  log_output, o)
            return
        with nogil, parallel(num_threads=threads):
            for block in prange(n_blocks, schedule="static"):
                block_softmax(&x[0, 0, 0], xv, ov, block * BLOCK_ROWS,
                              min(<Py_ssize_t>BLOCK_ROWS, n_rows - block * BLOCK_ROWS), n,
                              log_output, o)
        return
    cdef int failed = 0
    cdef ThreadScratch scratch = row_scratch(xv, ov, sizeof(floating), &failed)
    cdef floating *buffer = NULL
    cdef floating *work
    with nogil, parallel(num_threads=threads):
        buffer = <floating *>scratch_alloc(scratch, n * sizeof(floating))
        for r in prange(n_rows, schedule="static"):
            if scratch_missing(scratch, buffer):
                continue
            work = row_work(ov, r, buffer)
            row_softmax(row_in(xv, r, n, buffer), work, n, log_output)
            row_out(ov, r, n, work)
        free(buffer)
    scratch_raise(scratch)


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
    cdef LossOptions o
    cdef Py_ssize_t block, n_blocks = (n_rows + BLOCK_ROWS - 1) // BLOCK_ROWS
    cdef int threads = thread_count(n_threads, n_rows, n)
    if in_blocks(n, sizeof(floating)):  # few classes: block_logsumexp, any layout
        o = loss_options(None, n, 0.0, 0.0, -100)
        o.lse_out = values
        if threads == 1:  # no parallel region (its start is most of a small call)
            with nogil:
                for block in range(n_blocks):
                    block_logsumexp(&x[0, 0, 0], xv, block * BLOCK_ROWS,
                                    min(<Py_ssize_t>BLOCK_ROWS, n_rows - block * BLOCK_ROWS), n, o)
            return
        with nogil, parallel(num_threads=threads):
            for block in prange(n_blocks, schedule="static"):
                block_logsumexp(&x[0, 0, 0], xv, block * BLOCK_ROWS,
                                min(<Py_ssize_t>BLOCK_ROWS, n_rows - block * BLOCK_ROWS), n, o)
        return
    cdef int failed = 0
    cdef ThreadScratch scratch = row_scratch(xv, make_rows(NULL, 1, 0, 0, 0), sizeof(floating),
                                             &failed)
    cdef floating *buffer = NULL
    if not scratch.needed:  # contiguous rows: BLOCK_ROWS at a time (group_logsumexp)
        scratch = thread_scratch(True, &failed)
        with nogil, parallel(num_threads=threads):
            buffer = <floating *>scratch_alloc(scratch, BLOCK_ROWS * sizeof(floating))
            for block in prange(n_blocks, schedule="static"):
                if scratch_missing(scratch, buffer):
                    continue
                group_logsumexp(xv, values, block * BLOCK_ROWS,
                                min(<Py_ssize_t>BLOCK_ROWS, n_rows - block * BLOCK_ROWS), n, buffer)
            free(buffer)
        scratch_raise(scratch)
        return
    with nogil, parallel(num_threads=threads):
        buffer = <floating *>scratch_alloc(scratch, n * sizeof(floating))
        for r in prange(n_rows, schedule="static"):
            if scratch_missing(scratch, buffer):
                continue
            values[r] = row_logsumexp(row_in(xv, r, n, buffer), n)
        free(buffer)
    scratch_raise(scratch)


cdef int index_loops(const floating *kind, Rows xv, Rows gv, Rows tv, Rows sv, double *losses,
                     Py_ssize_t n_rows, Py_ssize_t n, LossOptions o, int n_threads) except -1:
    """cross_entropy_index's loops over the rows, once its checks are done and o is
    complete: blocks (few classes), groups (contiguous rows of up to GROUP_MAX_CLASSES)
    or single rows. `kind` (the logits' first element) only selects the precision."""
    cdef Py_ssize_t r, block
    cdef int threads = thread_count(n_threads, n_rows, n)
    cdef int failed = 0
    cdef ThreadScratch scratch
    cdef floating *buffer = NULL
    cdef LossOptions mine  # each thread's copy of o (see LossOptions)
    cdef Py_ssize_t group = group_rows(n, sizeof(floating))
    cdef Py_ssize_t extra = stats_size(o, n)  # the entropy's scratch, after the loop's own
    cdef floating *stats = NULL
    if in_blocks(n, sizeof(floating)):
        scratch = thread_scratch(True, &failed)
        with nogil, parallel(num_threads=threads):
            buffer = <floating *>scratch_alloc(scratch, n * BLOCK_ROWS * sizeof(floating))
            mine = o
            for block in prange((n_rows + BLOCK_ROWS - 1) // BLOCK_ROWS, schedule="static"):
                if scratch_missing(scratch, buffer):
                    continue
                block_loss_grad_index(
                    xv, gv, tv, sv, losses, block * BLOCK_ROWS,
                    min(<Py_ssize_t>BLOCK_ROWS, n_rows - block * BLOCK_ROWS), n, mine, buffer)
            free(buffer)
    elif group > 0 and not row_scratch(xv, gv, sizeof(floating), &failed).needed:
        scratch = thread_scratch(True, &failed)
        with nogil, parallel(num_threads=threads):
            buffer = <floating *>scratch_alloc(scratch, (BLOCK_ROWS + extra) * sizeof(floating))
            mine = o
            stats = buffer + BLOCK_ROWS if extra > 0 else NULL
            for block in prange((n_rows + group - 1) // group, schedule="static"):
                if scratch_missing(scratch, buffer):
                    continue
                group_loss_grad_index(xv, gv, tv, sv, losses, block * group,
                                      min(group, n_rows - block * group), n, mine, buffer, stats)
            free(buffer)
    else:
        scratch = row_scratch(xv, gv, sizeof(floating), &failed)
        scratch.needed = scratch.needed or extra > 0
        with nogil, parallel(num_threads=threads):
            buffer = <floating *>scratch_alloc(scratch, (n + extra) * sizeof(floating))
            mine = o
            stats = buffer + n if extra > 0 else NULL
            for r in prange(n_rows, schedule="static"):
                if scratch_missing(scratch, buffer):
                    continue
                index_row(xv, gv, tv, sv, losses, r, n, mine, buffer, stats)
            free(buffer)
    scratch_raise(scratch)
    return 0


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
    bint report_invalid_row=False,
    double[:, ::1] lse=None,            # OUT (A, B) per-row log-sum-exp, or None
    double[:, ::1] entropy=None,        # OUT (A, B) per-row entropy of softmax, or None
    int64_t[:, ::1] argmax=None,        # OUT (A, B) per-row argmax (np.argmax's), or None
    double focal_gamma=0.0,             # softmax focal loss's gamma (0: cross-entropy)
):
    """Per-row cross-entropy losses of class-index targets, and their gradient.

    Returns (sum of the per-row losses, W = sum over kept rows of s * w[y]), or None
    when a class is out of range (and not ignore_index), having written nothing but
    row_loss (its first pass uses it as scratch), and with report_invalid_row the
    number r = a * B + b of the first such row into row_loss[0, 0]. The extra outputs
    (lse, entropy, argmax) are every row's, ignored rows' too (see row_stats)."""
    cdef Py_ssize_t n = x.shape[2], n_rows = x.shape[0] * x.shape[1]
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
    cdef Rows xv = logits_rows(x), gv = output_rows(grad)
    cdef double *losses = &row_loss[0, 0]
    index_loops(&x[0, 0, 0], xv, gv, tv, sv, losses, n_rows, n, o, n_threads)
    return sum_in_order(losses, n_rows), normaliser


def cross_entropy_plain(x, target, grad, bint mean, int n_threads):
    """cross_entropy_index for the most common call, with the least conversion (most of a
    small call's time): the arrays taken through the buffer protocol alone, no typed
    memoryviews (their format checks and objects cost more than the kernel on 640 logits);
    no class or sample weights, ignore_index -100, no label smoothing or z-loss, the
    per-row losses in scratch of its own. x (N, C) float32 or float64 logits, target (N,)
    int64 class indices or -100, grad (N, C) of x's dtype, or None: the caller has checked
    the dtypes (the buffers carry only their item sizes, which are checked).

    Returns (sum of the per-row losses, W); or the number of the first row whose class is
    out of range (not -100), having written nothing; or None, having written nothing, for
    anything else the common case does not take: an array that is not a C-contiguous
    buffer (grad: writable), shapes other than (N, C), (N,) and x's with N, C > 0, item
    sizes other than 4 or 8, misaligned data, or grad sharing memory with target, or with
    x without being x: the caller then takes the general path (and its error messages)."""
    cdef Py_buffer xb, tb, gb
    cdef bint have_x = False, have_t = False, have_g = False
    try:
        try:
            PyObject_GetBuffer(x, &xb, PyBUF_C_CONTIGUOUS)
            have_x = True
            PyObject_GetBuffer(target, &tb, PyBUF_C_CONTIGUOUS)
            have_t = True
            if grad is not None:
                PyObject_GetBuffer(grad, &gb, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
                have_g = True
        except Exception:  # not a C-contiguous (writable) buffer: the general path says why
            return None
        if xb.itemsize == sizeof(float):
            return plain_totals(<const float *>NULL, &xb, &tb, &gb if have_g else NULL, mean,
                                n_threads)
        if xb.itemsize == sizeof(double):
            return plain_totals(<const double *>NULL, &xb, &tb, &gb if have_g else NULL, mean,
                                n_threads)
        return None
    finally:
        if have_g:
            PyBuffer_Release(&gb)
        if have_t:
            PyBuffer_Release(&tb)
        if have_x:
            PyBuffer_Release(&xb)


cdef enum:
    # cross_entropy_plain's per-row losses of at most this many rows live on the stack.
    PLAIN_STACK_ROWS = 256


cdef inline bint misaligned(const void *p, size_t itemsize) noexcept nogil:
    return (<uintptr_t>p) % itemsize != 0


cdef object plain_totals(const floating *kind, Py_buffer *xb, Py_buffer *tb, Py_buffer *gb,
                         bint mean, int n_threads):
    """cross_entropy_plain once its buffers are held (gb NULL: the loss only); `kind` only
    selects the precision. A call that one thread computes (thread_count) and that goes
    in blocks runs them here, without a parallel region and with its scratch on the
    stack: the same block_loss_grad_index on the same rows, so the same bits."""
    if xb.ndim != 2 or tb.ndim != 1 or tb.itemsize != sizeof(int64_t):
        return None
    cdef Py_ssize_t n_rows = xb.shape[0], n = xb.shape[1]
    if n_rows == 0 or n == 0 or tb.shape[0] != n_rows:
        return None
    if gb != NULL and (gb.ndim != 2 or gb.shape[0] != n_rows or gb.shape[1] != n
                       or gb.itemsize != sizeof(floating)):
        return None
    cdef const char *x_start = <const char *>xb.buf
    cdef const char *t_start = <const char *>tb.buf
    cdef char *g_start = <char *>gb.buf if gb != NULL else NULL
    if (misaligned(x_start, sizeof(floating)) or misaligned(t_start, sizeof(int64_t))
            or (g_start != NULL and misaligned(g_start, sizeof(floating)))):
        return None
    if g_start != NULL:
        if (overlaps(g_start, n_rows * n * sizeof(floating), t_start, n_rows * sizeof(int64_t))
                or (g_start != x_start
                    and overlaps(g_start, n_rows * n * sizeof(floating), x_start,
                                 n_rows * n * sizeof(floating)))):
            return None
    cdef Rows xv = make_rows(x_start, 1, n * sizeof(floating), 0, sizeof(floating))
    cdef Rows gv = make_rows(g_start, 1, n * sizeof(floating), 0, sizeof(floating))
    cdef Rows tv = per_row(t_start, 1, sizeof(int64_t), 0)
    cdef Rows sv = per_row(NULL, 1, 0, 0)
    cdef LossOptions o = loss_options(None, n, 0.0, 0.0, -100)
    cdef Py_ssize_t invalid_row = -1, block
    cdef double normaliser
    cdef double small_losses[PLAIN_STACK_ROWS]
    cdef floating xt[BLOCK_MAX_CLASSES_FLOAT * BLOCK_ROWS]  # a block's scratch (in_blocks)
    with nogil:
        normaliser = kept_row_count(tv, n_rows, n, o.ignore_index, &invalid_row)
    if invalid_row >= 0:
        return invalid_row
    o.divisor = gradient_divisor(mean, normaliser)
    cdef double *losses = small_losses
    if n_rows > PLAIN_STACK_ROWS:
        losses = <double *>malloc(n_rows * sizeof(double))
        if losses == NULL:
            raise MemoryError("softmaxloss: could not allocate the per-row losses")
    try:
        if (thread_count(n_threads, n_rows, n) == 1 and in_blocks(n, sizeof(floating))
                and n <= BLOCK_MAX_CLASSES_FLOAT):  # xt's size, whatever the limits become
            with nogil:
                for block in range((n_rows + BLOCK_ROWS - 1) // BLOCK_ROWS):
                    block_loss_grad_index(
                        xv, gv, tv, sv, losses, block * BLOCK_ROWS,
                        min(<Py_ssize_t>BLOCK_ROWS, n_rows - block * BLOCK_ROWS), n, o, xt)
        else:
            index_loops(kind, xv, gv, tv, sv, losses, n_rows, n, o, n_threads)
        return sum_in_order(losses, n_rows), normaliser
    finally:
        if losses != small_losses:
            free(losses)


cdef inline bint overlaps(const char *a, size_t a_size, const char *b, size_t b_size) noexcept nogil:
    """Whether the byte ranges [a, a + a_size) and [b, b + b_size) overlap."""
    return a < b + b_size and b < a + a_size


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
    double[:, ::1] lse=None,                 # OUT (A, B) extra outputs, as cross_entropy_index's
    double[:, ::1] entropy=None,
    int64_t[:, ::1] argmax=None,
):
    """Per-row cross-entropy losses of probability targets, and their gradient.

    Returns (sum of the per-row losses, W = the number of rows, or sum(s))."""
    cdef Py_ssize_t n = x.shape[2], n_b = x.shape[1], n_rows = x.shape[0] * x.shape[1], r
    check_shape("target", target.shape, x.shape, 3)
    check_loss_shapes(x.shape, row_loss, weight, sample_weight,
                      grad.shape if grad is not None else NULL)
    if n_rows == 0 or n == 0:
        return 0.0, 0.0
    cdef Rows xv = logits_rows(x), gv = output_rows(grad)
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
    cdef ThreadScratch scratch = row_scratch(xv, gv, sizeof(floating), &failed)
    cdef Py_ssize_t extra = stats_size(o, n)  # the entropy's scratch, after the row's own
    scratch.needed = scratch.needed or extra > 0
    cdef floating *buffer = NULL
    cdef floating *stats = NULL
    cdef floating *work
    cdef LossOptions mine  # each thread's copy of o (see LossOptions)
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        buffer = <floating *>scratch_alloc(scratch, (n + extra) * sizeof(floating))
        mine = o
        stats = buffer + n if extra > 0 else NULL
        for r in prange(n_rows, schedule="static"):
            if scratch_missing(scratch, buffer):
                continue
            work = row_work(gv, r, buffer)
            losses[r] = row_loss_grad_probs(
                row_in(xv, r, n, buffer), work, n, <const target_floating *>row_at(tv, r),
                t_step, sample_weight_at(sv, r), mine, r, stats)
            if work != NULL:
                row_out(gv, r, n, work)
        free(buffer)
    scratch_raise(scratch)
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
    cdef Py_ssize_t n = x.shape[2], n_rows = x.shape[0] * x.shape[1], r, y
    check_shape("labels", labels.shape, x.shape, 2)
    if sample_weight is not None:
        check_shape("sample_weight", sample_weight.shape, x.shape, 2)
    check_shape("grad", grad.shape, x.shape, 3)
    check_shape("hess", hess.shape, x.shape, 3)
    if n_rows == 0 or n == 0:
        return
    cdef Rows xv = logits_rows(x), gv = output_rows(grad), hv = output_rows(hess)
    cdef Rows lv = class_rows(labels), sv = sample_weight_rows(sample_weight)
    cdef LossOptions o
    cdef Py_ssize_t block, n_blocks = (n_rows + BLOCK_ROWS - 1) // BLOCK_ROWS
    cdef int threads = thread_count(n_threads, n_rows, n)
    if in_blocks(n, sizeof(floating)):  # few classes: BLOCK_ROWS at a time, any layout
        o = loss_options(None, n, 0.0, 0.0, -100)
        if threads == 1:  # no parallel region (its start is most of a small call)
            with nogil:
                for block in range(n_blocks):
                    block_grad_hess(&x[0, 0, 0], xv, gv, hv, lv, sv, block * BLOCK_ROWS,
                                    min(<Py_ssize_t>BLOCK_ROWS, n_rows - block * BLOCK_ROWS),
                                    n, o)
            return
        with nogil, parallel(num_threads=threads):
            for block in prange(n_blocks, schedule="static"):
                block_grad_hess(&x[0, 0, 0], xv, gv, hv, lv, sv, block * BLOCK_ROWS,
                                min(<Py_ssize_t>BLOCK_ROWS, n_rows - block * BLOCK_ROWS), n, o)
        return
    cdef int failed = 0
    cdef ThreadScratch scratch = row_scratch(xv, gv, sizeof(floating), &failed)
    cdef floating *buffer = NULL
    cdef floating *work
    with nogil, parallel(num_threads=threads):
        buffer = <floating *>scratch_alloc(scratch, n * sizeof(floating))
        for r in prange(n_rows, schedule="static"):
            if scratch_missing(scratch, buffer):
                continue
            y = (<const int64_t *>row_at(lv, r))[0]
            if out_of_range(y, n):  # refused by the facade; never used as an address
                row_fill(gv, r, n, <floating>NAN)
                row_fill(hv, r, n, <floating>NAN)
                continue
            work = row_work(gv, r, buffer)
            row_grad_hess(row_in(xv, r, n, buffer), work, row_at(hv, r), hv.step, n, y,
                          sample_weight_at(sv, r))
            row_out(gv, r, n, work)
        free(buffer)
    scratch_raise(scratch)


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
include "_kernels_half.pxi"
include "_kernels_softcap.pxi"

"""Fused softmax, log-softmax, logsumexp and cross-entropy kernels.

Design, bottom up (each layer calls only the one below it):

1. Row primitives in C (`_rowops.h`, `_fastexp.h`): max, exp-and-sum, gap-sum of one
   contiguous row; the loops that must vectorise.
2. Row kernels, `cdef inline ... noexcept nogil`, written once for float32 and float64
   (the fused type `floating`): one row's softmax, or one row's loss and gradient
   in one pass over its logits (`row_loss_grad_index`, `row_loss_grad_probs`).
3. Array loops (the `def` functions): every array arrives as a "rows view" of shape
   (A, B, C): the class axis last, rows indexed by (a, b), any strides. The loops
   run `prange` over the A*B rows; a row whose class axis is not contiguous is
   gathered into a per-thread scratch row, computed there, and scattered back.
   Every row is computed by the same code whatever the thread count, and no loop
   reduces across rows, so results are bitwise identical for every `n_threads`.
4. The Python facade (`softmaxloss._facade`) validates, builds the rows views,
   computes the normaliser of `mean`, reduces the per-row losses and documents.

Arguments are marked IN (read only, `const`: read-only arrays work) or OUT.
An OUT array may be the same memory as the logits (in place): each row kernel reads
everything it needs from a logit before it writes the gradient over it.
"""

from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY, NAN
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset


cdef extern from "_rowops.h" nogil:
    const int SML_OPENMP
    const char *SML_ISA
    const char *SML_COMPILER
    int sml_max_threads()
    int sml_cpu_has_avx2_fma()
    float sml_expf(float x)
    double sml_exp(double x)
    float sml_row_max_f(const float *x, Py_ssize_t n)
    double sml_row_max_d(const double *x, Py_ssize_t n)
    double sml_row_expsum_f(const float *x, float *e, Py_ssize_t n, float m, double *log_total)
    double sml_row_expsum_d(const double *x, double *e, Py_ssize_t n, double m, double *log_total)
    double sml_row_gapsum_f(const float *x, const double *w, Py_ssize_t n, double m)
    double sml_row_gapsum_d(const double *x, const double *w, Py_ssize_t n, double m)


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


# ---- layer 2a: fused-type dispatch to the C primitives ---------------------------

cdef inline floating row_max(const floating *x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return sml_row_max_f(x, n)
    else:
        return sml_row_max_d(x, n)


cdef inline double row_expsum(const floating *x, floating *e, Py_ssize_t n, floating m,
                              double *log_total) noexcept nogil:
    """S = sum_c exp(x_c - m) in double (m the row max); e_c = exp(x_c - m) unless e is
    NULL; log(S), accurate also for S ~ 1, into log_total unless it is NULL."""
    if floating is float:
        return sml_row_expsum_f(x, e, n, m, log_total)
    else:
        return sml_row_expsum_d(x, e, n, m, log_total)


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
    if log_output:
        row_expsum(x, <floating *>NULL, n, m, &log_total)
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
    cdef double log_total
    row_expsum(x, <floating *>NULL, n, m, &log_total)
    return <double>m + log_total


cdef inline double row_loss_grad_index(
    const floating *x,         # IN  (n,) logits of the row
    floating *g,               # OUT (n,) gradient, or NULL for the loss only; may be x
    Py_ssize_t n,
    Py_ssize_t y,              # the row's class, 0 <= y < n
    const double *w,           # IN  (n,) class weights, or NULL for all ones
    double w_sum,              # sum_c w_c
    double s,                  # the row's sample weight
    double eps,                # label smoothing
    double z,                  # z-loss coefficient
    double grad_scale,         # 1/W for reduction="mean", else 1
) noexcept nogil:
    """One row with a class-index target: returns loss_n and writes d(loss)/dx into g.

    With l = log_softmax(x) = x - m - log(S), S = sum_c exp(x_c - m), lse = m + log(S):
        loss_n = s * ((1-eps) w_y (-l_y) + (eps/n) sum_c w_c (-l_c) + z lse^2)
               = s * ((1-eps) w_y (log S + m - x_y)
                      + (eps/n) (w_sum log S + sum_c w_c (m - x_c)) + z lse^2)
        grad_c = grad_scale * s * (p_c ((1-eps) w_y + (eps/n) w_sum + 2 z lse)
                                   - (1-eps) w_y [c == y] - (eps/n) w_c)
    Terms whose coefficient is zero are skipped, not multiplied by 0: -l_c can be +inf.
    """
    cdef floating m = row_max(x, n)
    cdef double gap_y = <double>m - <double>x[y]  # read before g overwrites x
    cdef double w_y = w[y] if w != NULL else 1.0
    cdef double smooth = eps / <double>n
    cdef double gap_sum = 0.0
    if eps != 0.0:
        gap_sum = row_gapsum(x, w, n, m)  # also before g overwrites x

    cdef double log_total
    cdef double total = row_expsum(x, g, n, m, &log_total)
    cdef double lse = <double>m + log_total
    cdef double loss = 0.0, p_coef = 0.0
    if eps != 1.0:
        loss = (1.0 - eps) * w_y * (log_total + gap_y)
        p_coef = (1.0 - eps) * w_y
    if eps != 0.0:
        loss += smooth * (w_sum * log_total + gap_sum)
        p_coef += smooth * w_sum
    if z != 0.0:
        loss += z * lse * lse
        p_coef += 2.0 * z * lse
    if g == NULL:
        return s * loss

    cdef double row_scale = grad_scale * s
    cdef floating p_scale = <floating>(row_scale * p_coef / total)
    cdef floating smooth_scale = <floating>(row_scale * smooth)
    cdef Py_ssize_t c
    # The label's entry in double and grouped as the formula: p_y - 1 cancels when
    # p_y is close to 1 (and is exactly 0 for one class).
    cdef double p_y = <double>g[y] / total
    if eps == 0.0:
        for c in range(n):
            g[c] = g[c] * p_scale
    elif w == NULL:
        for c in range(n):
            g[c] = g[c] * p_scale - smooth_scale
    else:
        for c in range(n):
            g[c] = g[c] * p_scale - <floating>(row_scale * smooth * w[c])
    cdef double label_grad = 0.0
    if eps != 1.0:
        label_grad = (1.0 - eps) * w_y * (p_y - 1.0)
    if eps != 0.0:
        label_grad += smooth * (w_sum * p_y - w_y)
    if z != 0.0:
        label_grad += 2.0 * z * lse * p_y
    g[y] = <floating>(row_scale * label_grad)
    return s * loss


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
    double grad_scale,
) noexcept nogil:
    """One row with probability targets: returns loss_n and writes d(loss)/dx into g.

    With y'_c = (1-eps) y_c + eps/n, T = sum_c w_c y'_c:
        loss_n = s * (sum_c w_c y'_c (-l_c) + z lse^2)
               = s * (T log S + sum_c w_c y'_c (m - x_c) + z lse^2)
        grad_c = grad_scale * s * ((T + 2 z lse) p_c - w_c y'_c)
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

    cdef double log_total
    cdef double total = row_expsum(x, g, n, m, &log_total)
    cdef double lse = <double>m + log_total
    cdef double loss = weight_total * log_total + gap_sum
    cdef double p_coef = weight_total
    if z != 0.0:
        loss += z * lse * lse
        p_coef += 2.0 * z * lse
    if g == NULL:
        return s * loss

    cdef double row_scale = grad_scale * s
    cdef double p_scale = row_scale * p_coef / total
    for c in range(n):
        wy = smoothed_target(t[c * t_step], eps, smooth)
        if w != NULL:
            wy = wy * w[c]
        g[c] = <floating>(<double>g[c] * p_scale - row_scale * wy)
    return s * loss


cdef inline void row_grad_hess(
    const floating *x,   # IN  (n,) logits of the row
    floating *g,         # OUT (n,) s (p - onehot); may be x
    floating *h,         # OUT hessian diagonal s p (1 - p), element c at h + c * h_step bytes
    Py_ssize_t h_step,
    Py_ssize_t n,
    Py_ssize_t y,        # the row's class, 0 <= y < n
    double s,            # the row's sample weight
) noexcept nogil:
    """Gradient s (p - onehot) and hessian diagonal s p (1 - p) of one row.

    With e_c = exp(x_c - m) and S = sum_c e_c, 1 - p_c is computed as (S - e_c) / S in
    double: it does not cancel, since p_c > 1/2 only for the max, whose e_c is exactly 1.
    """
    cdef floating m = row_max(x, n)
    cdef double total = row_expsum(x, g, n, m, NULL)
    cdef double inv_total = 1.0 / total
    cdef double e_y = g[y]
    cdef double e
    cdef Py_ssize_t c
    for c in range(n):
        e = g[c]
        (<floating *>(<char *>h + c * h_step))[0] = <floating>(
            s * (e * inv_total) * ((total - e) * inv_total))
        g[c] = <floating>(s * e * inv_total)
    g[y] = <floating>(-s * ((total - e_y) * inv_total))


# ---- layer 3: array loops over rows views -------------------------------------------

cdef inline int thread_count(int n_threads, Py_ssize_t n_rows, Py_ssize_t n_classes) noexcept nogil:
    """Threads to use: n_threads (0: OpenMP's default), fewer for small inputs."""
    cdef int requested = n_threads if n_threads > 0 else sml_max_threads()
    cdef Py_ssize_t useful = (n_rows * n_classes) // MIN_ELEMENTS_PER_THREAD
    if useful > n_rows:
        useful = n_rows
    if useful < 1:
        useful = 1
    return <int>(requested if requested < useful else useful)


cdef inline const floating *row_in(const char *base, Py_ssize_t offset, Py_ssize_t step,
                                   Py_ssize_t n, floating *scratch) noexcept nogil:
    """The row at base + offset as a contiguous pointer: its own memory when the class
    stride `step` (bytes) is the item size, else a copy gathered into scratch."""
    cdef Py_ssize_t c
    if step == sizeof(floating):
        return <const floating *>(base + offset)
    for c in range(n):
        scratch[c] = (<const floating *>(base + offset + c * step))[0]
    return scratch


cdef inline void row_out(char *base, Py_ssize_t offset, Py_ssize_t step, Py_ssize_t n,
                         const floating *row) noexcept nogil:
    """Scatter a contiguous row to base + offset with class stride `step` (bytes),
    unless it already is that memory."""
    cdef Py_ssize_t c
    if <const char *>row == base + offset and step == sizeof(floating):
        return
    for c in range(n):
        (<floating *>(base + offset + c * step))[0] = row[c]


cdef inline void row_fill(char *base, Py_ssize_t offset, Py_ssize_t step, Py_ssize_t n,
                          floating value) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(n):
        (<floating *>(base + offset + c * step))[0] = value


cdef inline floating *row_work(char *base, Py_ssize_t offset, Py_ssize_t step,
                               floating *scratch) noexcept nogil:
    """Where a row kernel writes: the output row itself when contiguous, else scratch."""
    if step == sizeof(floating):
        return <floating *>(base + offset)
    return scratch


def softmax(const floating[:, :, :] x,   # IN  (A, B, C)
            floating[:, :, :] out,       # OUT (A, B, C), may be x's memory
            bint log_output,
            int n_threads):
    """out = softmax(x) (log_output False) or log_softmax(x), over the last axis."""
    cdef Py_ssize_t n_a = x.shape[0], n_b = x.shape[1], n = x.shape[2]
    cdef Py_ssize_t n_rows = n_a * n_b, r, a, b
    if n_rows == 0 or n == 0:
        return
    cdef const char *x_base = <const char *>&x[0, 0, 0]
    cdef char *out_base = <char *>&out[0, 0, 0]
    cdef Py_ssize_t xs0 = x.strides[0], xs1 = x.strides[1], x_step = x.strides[2]
    cdef Py_ssize_t os0 = out.strides[0], os1 = out.strides[1], o_step = out.strides[2]
    cdef bint need_scratch = x_step != sizeof(floating) or o_step != sizeof(floating)
    cdef int failed = 0
    cdef int *failed_flag = &failed
    cdef floating *scratch = NULL
    cdef const floating *row
    cdef floating *work
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        scratch = <floating *>malloc(n * sizeof(floating)) if need_scratch else NULL
        for r in prange(n_rows, schedule="static"):
            if need_scratch and scratch == NULL:
                failed_flag[0] = 1
            else:
                a = r // n_b
                b = r - a * n_b
                row = row_in(x_base, a * xs0 + b * xs1, x_step, n, scratch)
                work = row_work(out_base, a * os0 + b * os1, o_step, scratch)
                row_softmax(row, work, n, log_output)
                row_out(out_base, a * os0 + b * os1, o_step, n, work)
        free(scratch)
    if failed:
        raise MemoryError("softmaxloss: could not allocate a scratch row")


def logsumexp(const floating[:, :, :] x,   # IN  (A, B, C)
              double[:, ::1] out,          # OUT (A, B)
              int n_threads):
    """out[a, b] = log(sum_c exp(x[a, b, c]))."""
    cdef Py_ssize_t n_a = x.shape[0], n_b = x.shape[1], n = x.shape[2]
    cdef Py_ssize_t n_rows = n_a * n_b, r, a, b
    if n_rows == 0 or n == 0:
        return
    cdef const char *x_base = <const char *>&x[0, 0, 0]
    cdef Py_ssize_t xs0 = x.strides[0], xs1 = x.strides[1], x_step = x.strides[2]
    cdef bint need_scratch = x_step != sizeof(floating)
    cdef int failed = 0
    cdef int *failed_flag = &failed
    cdef floating *scratch = NULL
    cdef const floating *row
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        scratch = <floating *>malloc(n * sizeof(floating)) if need_scratch else NULL
        for r in prange(n_rows, schedule="static"):
            if need_scratch and scratch == NULL:
                failed_flag[0] = 1
            else:
                a = r // n_b
                b = r - a * n_b
                row = row_in(x_base, a * xs0 + b * xs1, x_step, n, scratch)
                out[a, b] = row_logsumexp(row, n)
        free(scratch)
    if failed:
        raise MemoryError("softmaxloss: could not allocate a scratch row")


def cross_entropy_index(
    const floating[:, :, :] x,          # IN  (A, B, C) logits
    const int64_t[:, :] target,         # IN  (A, B) class indices or ignore_index
    const double[::1] weight,           # IN  (C,) class weights, or None
    const double[:, :] sample_weight,   # IN  (A, B), or None
    int64_t ignore_index,
    double label_smoothing,
    double z_loss,
    double grad_scale,                  # 1/W for reduction="mean", else 1
    double[:, ::1] row_loss,            # OUT (A, B) per-row losses (0 where ignored)
    floating[:, :, :] grad,             # OUT (A, B, C) gradient, or None; may be x's memory
    int n_threads,
):
    """Per-row cross-entropy losses of class-index targets, and their gradient."""
    cdef Py_ssize_t n_a = x.shape[0], n_b = x.shape[1], n = x.shape[2]
    cdef Py_ssize_t n_rows = n_a * n_b, r, a, b, y
    if n_rows == 0 or n == 0:
        return
    cdef const char *x_base = <const char *>&x[0, 0, 0]
    cdef Py_ssize_t xs0 = x.strides[0], xs1 = x.strides[1], x_step = x.strides[2]
    cdef bint with_grad = grad is not None
    cdef char *g_base = <char *>&grad[0, 0, 0] if with_grad else NULL
    cdef Py_ssize_t gs0 = grad.strides[0] if with_grad else 0
    cdef Py_ssize_t gs1 = grad.strides[1] if with_grad else 0
    cdef Py_ssize_t g_step = grad.strides[2] if with_grad else sizeof(floating)
    cdef const double *w = &weight[0] if weight is not None else NULL
    cdef double w_sum = 0.0
    cdef Py_ssize_t c
    if w != NULL:
        for c in range(n):
            w_sum += w[c]
    else:
        w_sum = <double>n
    cdef bint has_sample_weight = sample_weight is not None
    cdef bint need_scratch = x_step != sizeof(floating) or g_step != sizeof(floating)
    cdef int failed = 0
    cdef int *failed_flag = &failed
    cdef floating *scratch = NULL
    cdef const floating *row
    cdef floating *work
    cdef double s
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        scratch = <floating *>malloc(n * sizeof(floating)) if need_scratch else NULL
        for r in prange(n_rows, schedule="static"):
            if need_scratch and scratch == NULL:
                failed_flag[0] = 1
                continue
            a = r // n_b
            b = r - a * n_b
            y = target[a, b]
            if y == ignore_index or y < 0 or y >= n:
                # Ignored rows contribute nothing. An index the facade should have
                # refused is never used to address memory: its row becomes NaN.
                row_loss[a, b] = 0.0 if y == ignore_index else NAN
                if with_grad:
                    row_fill(g_base, a * gs0 + b * gs1, g_step, n,
                             <floating>(0.0 if y == ignore_index else NAN))
                continue
            s = sample_weight[a, b] if has_sample_weight else 1.0
            row = row_in(x_base, a * xs0 + b * xs1, x_step, n, scratch)
            if with_grad:
                work = row_work(g_base, a * gs0 + b * gs1, g_step, scratch)
            else:
                work = NULL
            row_loss[a, b] = row_loss_grad_index(row, work, n, y, w, w_sum, s,
                                                 label_smoothing, z_loss, grad_scale)
            if with_grad:
                row_out(g_base, a * gs0 + b * gs1, g_step, n, work)
        free(scratch)
    if failed:
        raise MemoryError("softmaxloss: could not allocate a scratch row")


def cross_entropy_probs(
    const floating[:, :, :] x,               # IN  (A, B, C) logits
    const target_floating[:, :, :] target,   # IN  (A, B, C) probabilities
    const double[::1] weight,                # IN  (C,) class weights, or None
    const double[:, :] sample_weight,        # IN  (A, B), or None
    double label_smoothing,
    double z_loss,
    double grad_scale,                       # 1/N or 1/sum(s) for "mean", else 1
    double[:, ::1] row_loss,                 # OUT (A, B) per-row losses
    floating[:, :, :] grad,                  # OUT (A, B, C) gradient, or None; may be x's memory
    int n_threads,
):
    """Per-row cross-entropy losses of probability targets, and their gradient."""
    cdef Py_ssize_t n_a = x.shape[0], n_b = x.shape[1], n = x.shape[2]
    cdef Py_ssize_t n_rows = n_a * n_b, r, a, b
    if n_rows == 0 or n == 0:
        return
    cdef const char *x_base = <const char *>&x[0, 0, 0]
    cdef Py_ssize_t xs0 = x.strides[0], xs1 = x.strides[1], x_step = x.strides[2]
    cdef bint with_grad = grad is not None
    cdef char *g_base = <char *>&grad[0, 0, 0] if with_grad else NULL
    cdef Py_ssize_t gs0 = grad.strides[0] if with_grad else 0
    cdef Py_ssize_t gs1 = grad.strides[1] if with_grad else 0
    cdef Py_ssize_t g_step = grad.strides[2] if with_grad else sizeof(floating)
    cdef Py_ssize_t t_step = target.strides[2] // sizeof(target_floating)
    cdef const double *w = &weight[0] if weight is not None else NULL
    cdef bint has_sample_weight = sample_weight is not None
    cdef bint need_scratch = x_step != sizeof(floating) or g_step != sizeof(floating)
    cdef int failed = 0
    cdef int *failed_flag = &failed
    cdef floating *scratch = NULL
    cdef const floating *row
    cdef floating *work
    cdef double s
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        scratch = <floating *>malloc(n * sizeof(floating)) if need_scratch else NULL
        for r in prange(n_rows, schedule="static"):
            if need_scratch and scratch == NULL:
                failed_flag[0] = 1
                continue
            a = r // n_b
            b = r - a * n_b
            s = sample_weight[a, b] if has_sample_weight else 1.0
            row = row_in(x_base, a * xs0 + b * xs1, x_step, n, scratch)
            if with_grad:
                work = row_work(g_base, a * gs0 + b * gs1, g_step, scratch)
            else:
                work = NULL
            row_loss[a, b] = row_loss_grad_probs(row, work, n, &target[a, b, 0], t_step, w, s,
                                                 label_smoothing, z_loss, grad_scale)
            if with_grad:
                row_out(g_base, a * gs0 + b * gs1, g_step, n, work)
        free(scratch)
    if failed:
        raise MemoryError("softmaxloss: could not allocate a scratch row")


def gradient_hessian(
    const floating[:, :, :] x,          # IN  (A, B, C) logits
    const int64_t[:, :] labels,         # IN  (A, B) classes, 0 <= label < C
    const double[:, :] sample_weight,   # IN  (A, B), or None
    floating[:, :, :] grad,             # OUT (A, B, C) s (p - onehot); may be x's memory
    floating[:, :, :] hess,             # OUT (A, B, C) s p (1 - p)
    int n_threads,
):
    """Per-row gradient p - onehot and diagonal hessian p (1 - p) of the multinomial loss."""
    cdef Py_ssize_t n_a = x.shape[0], n_b = x.shape[1], n = x.shape[2]
    cdef Py_ssize_t n_rows = n_a * n_b, r, a, b, y
    if n_rows == 0 or n == 0:
        return
    cdef const char *x_base = <const char *>&x[0, 0, 0]
    cdef Py_ssize_t xs0 = x.strides[0], xs1 = x.strides[1], x_step = x.strides[2]
    cdef char *g_base = <char *>&grad[0, 0, 0]
    cdef Py_ssize_t gs0 = grad.strides[0], gs1 = grad.strides[1], g_step = grad.strides[2]
    cdef char *h_base = <char *>&hess[0, 0, 0]
    cdef Py_ssize_t hs0 = hess.strides[0], hs1 = hess.strides[1], h_step = hess.strides[2]
    cdef bint has_sample_weight = sample_weight is not None
    cdef bint need_scratch = x_step != sizeof(floating) or g_step != sizeof(floating)
    cdef int failed = 0
    cdef int *failed_flag = &failed
    cdef floating *scratch = NULL
    cdef const floating *row
    cdef floating *work
    cdef double s
    with nogil, parallel(num_threads=thread_count(n_threads, n_rows, n)):
        scratch = <floating *>malloc(n * sizeof(floating)) if need_scratch else NULL
        for r in prange(n_rows, schedule="static"):
            if need_scratch and scratch == NULL:
                failed_flag[0] = 1
                continue
            a = r // n_b
            b = r - a * n_b
            y = labels[a, b]
            if y < 0 or y >= n:  # refused by the facade; never used as an address
                row_fill(g_base, a * gs0 + b * gs1, g_step, n, <floating>NAN)
                row_fill(h_base, a * hs0 + b * hs1, h_step, n, <floating>NAN)
                continue
            s = sample_weight[a, b] if has_sample_weight else 1.0
            row = row_in(x_base, a * xs0 + b * xs1, x_step, n, scratch)
            work = row_work(g_base, a * gs0 + b * gs1, g_step, scratch)
            row_grad_hess(row, work, <floating *>(h_base + a * hs0 + b * hs1), h_step,
                          n, y, s)
            row_out(g_base, a * gs0 + b * gs1, g_step, n, work)
        free(scratch)
    if failed:
        raise MemoryError("softmaxloss: could not allocate a scratch row")


# ---- test hooks and build facts -------------------------------------------------------

def exp(const floating[::1] x, floating[::1] out):
    """out = exp(x) with the kernels' own vectorised exp (for accuracy tests)."""
    cdef Py_ssize_t i, n = x.shape[0]
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

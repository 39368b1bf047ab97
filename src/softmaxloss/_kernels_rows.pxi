# Layer 2 of _kernels.pyx (see its docstring), one row at a time: the fused-type dispatch to
# the C row primitives (2a), then the row kernels (2b). Included by _kernels.pyx, whose
# declarations (fused types, LossOptions) it uses; not compiled on its own.

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


cdef inline double row_expsum_lo(const floating *x, floating *e, Py_ssize_t n, floating m,
                                 double *excess, double *total_lo) noexcept nogil:
    """row_expsum, and S - fl(S) into total_lo (float64 logits: S's lanes compensated, to
    ~2^-104 S; float32: 0)."""
    if floating is float:
        return sml_row_expsum_lo_f(x, e, n, m, excess, total_lo)
    else:
        return sml_row_expsum_lo_d(x, e, n, m, excess, total_lo)


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


cdef inline double row_entsum(const floating *x, const floating *e, Py_ssize_t n,
                              double m) noexcept nogil:
    """sum_c e_c (m - x_c) in double, every term >= 0 (e_c = 0: 0): the entropy's sum."""
    if floating is float:
        return sml_row_entsum_f(x, e, n, m)
    else:
        return sml_row_entsum_d(x, e, n, m)


cdef inline Py_ssize_t row_find(const floating *x, Py_ssize_t n, floating m) noexcept nogil:
    """The first c with x_c == m, n if none (early exit, vectorised blocks)."""
    if floating is float:
        return sml_row_find_f(x, n, m)
    else:
        return sml_row_find_d(x, n, m)


cdef inline Py_ssize_t row_first_nan(const floating *x, Py_ssize_t n) noexcept nogil:
    """The first NaN of the row, n if none."""
    if floating is float:
        return sml_row_first_nan_f(x, n)
    else:
        return sml_row_first_nan_d(x, n)


cdef inline Py_ssize_t row_argmax_slow(const floating *x, Py_ssize_t n, floating m) noexcept nogil:
    """np.argmax of any row (m its row_max, unspecified with a NaN): the first NaN, else
    the first max."""
    cdef Py_ssize_t c = row_first_nan(x, n)
    if c < n:
        return c
    c = row_find(x, n, m)
    return c if c < n else 0


# ---- the opt-in extra outputs of a cross-entropy row (issue 16 item 3) -----------------
# Row r's log-sum-exp, entropy H = -sum_c p_c log p_c and argmax, into the arrays the
# options point to (LossOptions.lse_out, entropy_out, argmax_out; each NULL when not
# requested), from the statistics the loss computes anyway: lse = m + log S and
# H = log S + (1/S) sum_c e_c (m - x_c), both sums of non-negative terms (no
# cancellation), e_c = exp(x_c - m) as the exp-sum wrote it. Every row gets them, also
# an ignored one (as torch.logsumexp / Categorical(logits=...).entropy() of the row).
# A row whose max is not finite: lse as torch.logsumexp (NaN with a NaN, else +inf with
# +inf, -inf for all -inf), entropy NaN (as Categorical's).

cdef inline bint wants_stats(LossOptions o) noexcept nogil:
    return o.lse_out != NULL or o.entropy_out != NULL or o.argmax_out != NULL


cdef inline double nonfinite_row_lse(const char *row, Py_ssize_t step, Py_ssize_t n,
                                     floating kind) noexcept nogil:
    """torch.logsumexp of a row whose max is not finite (`kind` selects the precision)."""
    cdef Py_ssize_t c
    cdef floating v
    cdef bint has_inf = False
    for c in range(n):
        v = (<const floating *>(row + c * step))[0]
        if isnan(v):
            return NAN
        has_inf = has_inf or v == INFINITY
    return INFINITY if has_inf else -INFINITY


cdef inline void row_stats_first(const floating *x, Py_ssize_t n, floating m, LossOptions o,
                                 Py_ssize_t r) noexcept nogil:
    """Before the exponentials (which may overwrite x): the argmax (the first x_c == m, an
    early exit; a row with a NaN is corrected in row_stats, a row whose max is not finite
    takes np.argmax's rule here), and the lse of a row whose max is not finite."""
    if o.argmax_out != NULL:
        if isfinite(m):
            o.argmax_out[r] = row_find(x, n, m)
        else:
            o.argmax_out[r] = row_argmax_slow(x, n, m)
    if o.lse_out != NULL and not isfinite(m):
        o.lse_out[r] = nonfinite_row_lse(<const char *>x, sizeof(floating), n, m)


cdef inline floating *stats_exps(const floating *x, floating *g, LossOptions o,
                                 floating *stats) noexcept nogil:
    """Where a row's exponentials go: g (NULL: nowhere), or this thread's stats scratch
    when the entropy needs them beside the logits and g would overwrite those (in place)
    or is missing."""
    if o.entropy_out != NULL and (g == NULL or <const floating *>g == x):
        return stats
    return g


cdef inline void row_stats(const floating *x, floating *e, floating *g, Py_ssize_t n,
                           floating m, double total, double log_total, LossOptions o,
                           Py_ssize_t r) noexcept nogil:
    """After the exp-sum into e (stats_exps), x still intact: the lse and entropy; then the
    exponentials moved to g if they went to the scratch (g is x: in place). A NaN sum with
    a finite max means a NaN in the row: its argmax is the first, and e_c = exp(x_c - m)
    is NaN exactly where x_c is (e is x's only when it is NULL: x is then intact)."""
    if o.argmax_out != NULL and isfinite(m) and isnan(total):
        o.argmax_out[r] = row_first_nan(e if e != NULL else x, n)
    if o.argmax_out != NULL and o.argmax_out[r] >= n:  # (not reached: m is an entry)
        o.argmax_out[r] = 0
    if isfinite(m):
        if o.lse_out != NULL:
            o.lse_out[r] = <double>m + log_total
        if o.entropy_out != NULL:
            o.entropy_out[r] = log_total + row_entsum(x, e, n, <double>m) / total
    elif o.entropy_out != NULL:
        o.entropy_out[r] = NAN
    if g != NULL and e != g:
        memcpy(g, e, n * sizeof(floating))


cdef inline void row_stats_alone(const floating *x, Py_ssize_t n, LossOptions o,
                                 Py_ssize_t r, floating *stats) noexcept nogil:
    """The extra outputs of a row the loss leaves out (ignored): its statistics for them
    only, x unchanged."""
    cdef floating m = row_max(x, n)
    cdef double excess, total
    row_stats_first(x, n, m, o, r)
    total = row_expsum(x, stats, n, m, &excess)
    row_stats(x, stats, <floating *>NULL, n, m, total, sml_log1p(excess), o, r)


cdef inline floating fused(floating a, floating b, floating c) noexcept nogil:
    """a b + c, one fma where the target has it (sml_fmadd): a formula that several paths
    run gives the same bits in each."""
    if floating is float:
        return sml_fmaddf(a, b, c)
    else:
        return sml_fmadd(a, b, c)


# ---- layer 2b: row kernels -----------------------------------------------------------

cdef inline void row_softmax(const floating *x, floating *out, Py_ssize_t n,
                             bint log_output) noexcept nogil:
    """out = softmax(x) = exp(x - max) / sum, or log_softmax(x) = x - max - log(sum)."""
    cdef floating m = row_max(x, n)
    cdef double total
    cdef double log_total
    cdef double total_lo, inv_hi, inv_lo, k_hi, k_lo
    cdef Py_ssize_t c
    cdef double excess
    if log_output:
        row_expsum(x, <floating *>NULL, n, m, &excess)
        log_total = sml_log1p(excess)
        # (x_c - m) first: m + log(total) would round log(total) away for huge m. Exact in
        # double for float32 logits; for float64 x_c - (m + log S) with m + log S as
        # k_hi + k_lo (a TwoSum once per row) and the difference exact, rounded once
        # (sml_sub_dd: 10 operations; sml_sub_sub's two TwoSums per entry cost 1.1-1.2x)
        if floating is float:
            for c in range(n):
                out[c] = <floating>((<double>x[c] - <double>m) - log_total)
        else:
            k_hi = sml_add_lo(m, log_total, 0.0, &k_lo)
            for c in range(n):
                out[c] = sml_sub_dd(x[c], k_hi, k_lo)
    else:
        # p_c = e_c / S rounded once (issue 19): float32 by sml_scale_f (an fma of 1/S as
        # float hi + lo where the target has FMA, else in double); float64 as e_c (1/S as
        # hi + lo, with S's own lo), one fma
        total = row_expsum_lo(x, out, n, m, NULL, &total_lo)
        inv_hi = sml_quot_dd(1.0, total, total_lo, 1.0, &inv_lo)
        if floating is float:
            sml_scale_f(out, n, inv_hi)
        else:
            for c in range(n):
                out[c] = sml_mul_dd(out[c], inv_hi, inv_lo)


cdef inline double row_logsumexp(const floating *x, Py_ssize_t n) noexcept nogil:
    """log(sum_c exp(x_c)) = max + log(sum_c exp(x_c - max))."""
    cdef floating m = row_max(x, n)
    if m == INFINITY or m == -INFINITY:
        m = 0  # as PyTorch and SciPy: +inf for a row with +inf, -inf for all -inf
    cdef double excess
    row_expsum(x, <floating *>NULL, n, m, &excess)
    return <double>m + sml_log1p(excess)


cdef inline void group_logsumexp(Rows x, double *values, Py_ssize_t first, Py_ssize_t count,
                                 Py_ssize_t n, floating *m) noexcept nogil:
    """row_logsumexp of the contiguous rows first .. first+count-1 (count <= BLOCK_ROWS)
    into values[first + i]: the max and exp-sum row by row, the log1p of all of them in
    one loop along the rows (vectorised; the same bits as row by row), which a short row
    cannot hide the latency of. m: scratch of BLOCK_ROWS."""
    cdef double excess[BLOCK_ROWS]
    cdef const floating *xi
    cdef Py_ssize_t i
    for i in range(count):
        xi = <const floating *>row_at(x, first + i)
        m[i] = row_max(xi, n)
        if m[i] == INFINITY or m[i] == -INFINITY:
            m[i] = 0  # as row_logsumexp
        row_expsum(xi, <floating *>NULL, n, m[i], &excess[i])
    for i in range(count):
        values[first + i] = <double>m[i] + sml_log1p(excess[i])


# ---- the rule for class-index rows ----------------------------------------------------

cdef inline bint out_of_range(int64_t y, Py_ssize_t n) noexcept nogil:
    """A class index outside [0, n) (the unsigned compare covers y < 0): one the facade
    refuses, and that is never used to address memory."""
    return <uint64_t>y >= <uint64_t>n


cdef inline bint invalid_class(int64_t y, Py_ssize_t n, int64_t ignore_index) noexcept nogil:
    """A class out of range that is not ignore_index: the call is refused (the first such
    row is reported, see row_weight_total) before anything is written."""
    return (y != ignore_index) & out_of_range(y, n)


cdef inline bint left_out(int64_t y, Py_ssize_t n, LossOptions o) noexcept nogil:
    """Whether a row whose class-index target is y is left out of the formula: ignored
    (y == ignore_index: it contributes nothing) or out of range. Its loss and every entry
    of its gradient are then left_out_value(y, o)."""
    return y == o.ignore_index or out_of_range(y, n)


cdef inline double left_out_value(int64_t y, LossOptions o) noexcept nogil:
    """The loss and gradient entries of a row left out: 0 if ignored, else NaN (a class
    out of range gets here only if the targets changed after the call checked them)."""
    return 0.0 if y == o.ignore_index else NAN


cdef inline (double, double) focal_terms(double L, double gamma) noexcept nogil:
    """Softmax focal loss of a row whose cross-entropy is L = -log p_y (>= 0, accurate):
    (f(L), f'(L)) with f(L) = q^gamma L, q = 1 - p_y = -expm1(-L) (accurate as p_y -> 1),
        f'(L) = gamma q^(gamma-1) p_y L + q^gamma = q^gamma (1 + gamma p_y (L / q)),
    the factor of the row's cross-entropy gradient p - onehot. Finite for every gamma > 0:
    as q -> 0, L / q -> 1 (L = q = 0: f' = 0^gamma = 0, the limit also for gamma < 1,
    where q^(gamma-1) alone diverges); L = inf (p_y = 0): f = inf, f' = 1."""
    cdef double q = -expm1(-L)
    cdef double p_y = libc_exp(-L)
    cdef double q_gamma = pow(q, gamma)
    cdef double ratio = L / q if q != 0.0 else 1.0
    cdef double focal_scale = q_gamma
    if p_y != 0.0:  # else gamma p_y L / q -> 0 (also for L = inf: not 0 * inf)
        focal_scale = q_gamma * (1.0 + gamma * p_y * ratio)
    return q_gamma * L, focal_scale


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


cdef inline IndexRowTerms finished_terms(double loss, double p_coef, double label_grad,
                                        double s, double inv_total, double smooth,
                                        double divisor) noexcept nogil:
    """An IndexRowTerms from the formula's coefficients: each times s, then divided by W."""
    cdef IndexRowTerms terms
    terms.loss = s * loss
    terms.p_scale = (s * p_coef * inv_total) / divisor
    terms.smooth_scale = (s * smooth) / divisor
    terms.label_grad = (s * label_grad) / divisor
    terms.s = s
    terms.p_coef = p_coef
    terms.inv_total = inv_total
    terms.smooth = smooth
    return terms


cdef inline IndexRowTerms focal_row_terms(double m, double x_y, double total, double log_total,
                                          double w_y, double s, LossOptions o) noexcept nogil:
    """index_row_terms of the softmax focal loss (o.focal_gamma > 0, no label smoothing):
        loss_n = s (w_y f(L) + z lse^2),  L = -log p_y = log S + (m - x_y)
        grad_c = (s / W) ((w_y f'(L) + 2 z lse) p_c - w_y f'(L) [c == y])
    with f, f' from focal_terms; 1 - p_y = -expm1(-L) (accurate as p_y -> 1)."""
    cdef double neg_L = sml_sub_sub(x_y, m, log_total)  # -L, rounded once
    cdef double loss, slope
    loss, slope = focal_terms(-neg_L, o.focal_gamma)
    loss = w_y * loss
    cdef double p_coef = w_y * slope
    cdef double inv_total = 1.0 / total
    cdef double label_grad = -w_y * slope * -expm1(neg_L)
    cdef double lse = m + log_total
    if o.z != 0.0:
        loss += o.z * lse * lse
        p_coef += 2.0 * o.z * lse
        label_grad += 2.0 * o.z * lse * libc_exp(neg_L)  # 2 z lse p_y
    return finished_terms(loss, p_coef, label_grad, s, inv_total, 0.0, o.divisor)


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
    double s,             # the row's sample weight
    LossOptions o,        # eps, z, w_sum and the divisor W (reduction="mean", else 1)
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
    cdef double eps = o.eps, z = o.z, w_sum = o.w_sum, divisor = o.divisor
    cdef double smooth = eps / <double>n
    cdef double lse = m + log_total
    cdef double inv_total = 1.0 / total
    cdef double p_y = e_y * inv_total
    cdef double loss = 0.0, p_coef = 0.0, label_grad = 0.0
    if eps != 1.0:
        # log S + (m - x_y) with m - x_y exact, rounded once: -sml_sub_sub(x_y, m, log S)
        loss = (1.0 - eps) * w_y * -sml_sub_sub(x_y, m, log_total)
        p_coef = (1.0 - eps) * w_y
        label_grad = -(1.0 - eps) * w_y * complement(e_y, total, excess)
    # The products and sums as explicit fmas (sml_fmadd): this runs in the row path and,
    # vectorised along the rows, in the groups and blocks, where gcc would otherwise fuse
    # them differently (different bits for the same row).
    if eps != 0.0:
        loss = sml_fmadd(smooth, sml_fmadd(w_sum, log_total, gap_sum), loss)
        p_coef = sml_fmadd(smooth, w_sum, p_coef)
        label_grad = sml_fmadd(smooth, sml_fmadd(w_sum, p_y, -w_y), label_grad)
    if z != 0.0:
        loss = sml_fmadd(z * lse, lse, loss)
        p_coef = sml_fmadd(2.0 * z, lse, p_coef)
        label_grad = sml_fmadd(2.0 * z * lse, p_y, label_grad)
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


cdef inline IndexRowTerms any_row_terms(
    double m, double x_y, double gap_sum, double total, double excess, double log_total,
    double e_y, Py_ssize_t n, double w_y, double s, LossOptions o,
) noexcept nogil:
    """The row's terms, focal (focal_row_terms) or not (index_row_terms): the
    cross-entropy's always computed, then replaced for the focal loss. Not a branch
    around it (nor inside index_row_terms): gcc then contracts the cross-entropy's
    arithmetic into FMAs differently in the row path than in the group path (different
    bits for the same row, measured with the AVX2 build)."""
    cdef IndexRowTerms terms = index_row_terms(m, x_y, gap_sum, total, excess, log_total, e_y,
                                               n, w_y, s, o)
    if o.focal_gamma != 0.0:
        terms = focal_row_terms(m, x_y, total, log_total, w_y, s, o)
    return terms


cdef inline bint divide_last(double p_scale, double smooth_scale, double s,
                             LossOptions o) noexcept nogil:
    """Whether a row's gradient must be formed as grad_divided does: p_scale or
    smooth_scale overflowed (a tiny W, whose 1/W overflows; huge weights or z lse),
    where e_c = 0 would give 0 * inf = NaN; or smooth_scale fell below the normal range
    (a subnormal s) while class weights, which may be huge, multiply it and would
    magnify its lost digits."""
    return (not (isfinite(p_scale) and isfinite(smooth_scale))
            or (o.w != NULL and o.eps != 0.0 and s != 0.0 and fabs(smooth_scale) < DBL_MIN))


cdef inline void grad_divided(
    floating *g,               # IN e_c, OUT grad_c, element c at g[c * step]
    Py_ssize_t step,
    Py_ssize_t n,
    IndexRowTerms terms,
    LossOptions o,             # the class weights w and the divisor W
) noexcept nogil:
    """grad_c = s (p_coef p_c - (eps/n) w_c) / W, p_c = e_c / S, grouped as the formula
    (and the reference) and divided last: for a row whose p_scale or smooth_scale
    overflows (a tiny W, whose 1/W overflows; huge weights or z lse), where e_c = 0
    would give 0 * inf = NaN. Each entry is then what the formula gives: 0 where p_c
    and eps are 0, +-inf only where the entry itself overflows. The label's entry is
    left to the caller."""
    cdef const double *w = o.w
    cdef double divisor = o.divisor
    cdef Py_ssize_t c
    cdef double smooth_term
    for c in range(n):
        smooth_term = terms.smooth * (w[c] if w != NULL else 1.0)
        g[c * step] = <floating>((terms.s * (terms.p_coef * (<double>g[c * step] * terms.inv_total)
                                             - smooth_term)) / divisor)


cdef inline bint quot_in_range(double num, double d, double k_hi, double k_lo) noexcept nogil:
    """Whether sml_quot_dd's num / d = k_hi + k_lo is good to ~2^-104: num and d = S W far
    enough from the ends of the range that its exact products do not underflow or
    overflow (a subnormal W or weight: the options' plain scale instead)."""
    return ((num == 0.0 or 1e-290 <= fabs(num) <= 1e300) and 1e-290 <= fabs(d) <= 1e300
            and isfinite(k_hi) and isfinite(k_lo))


cdef inline void smoothed_grad_d(floating *g, Py_ssize_t n, IndexRowTerms terms, double total,
                                 double total_lo, LossOptions o) noexcept nogil:
    """The float64 gradient over e_c in g with label smoothing or z_loss (not focal), the
    label's entry left to the caller: p_scale = s p_coef / (S W) as hi + lo (sml_quot_dd, S
    with its own lo), each entry e_c p_scale - smooth_scale w_c rounded about once
    (sml_fms_dd; z alone: e_c p_scale, sml_mul_dd): issue 19. The row and the group path
    (group_row_grad) both call it: the same bits. p_coef keeps its own roundings. Called for
    float64 only (float32: in double, rounded once to float already)."""
    cdef const double *w = o.w
    cdef double k_lo, k_hi = sml_quot_dd(terms.s * terms.p_coef, total, total_lo, o.divisor,
                                         &k_lo)
    cdef Py_ssize_t c
    if not quot_in_range(terms.s * terms.p_coef, total * o.divisor, k_hi, k_lo):
        k_hi = terms.p_scale  # the plain scale, as before issue 19
        k_lo = 0.0
    if o.eps == 0.0:
        for c in range(n):
            g[c] = <floating>sml_mul_dd(g[c], k_hi, k_lo)
    elif w == NULL:
        for c in range(n):
            g[c] = <floating>sml_fms_dd(g[c], k_hi, k_lo, terms.smooth_scale)
    else:
        for c in range(n):
            g[c] = <floating>sml_fms_dd(g[c], k_hi, k_lo, terms.smooth_scale * w[c])


cdef inline double row_loss_grad_index(
    const floating *x,         # IN  (n,) logits of the row
    floating *g,               # OUT (n,) gradient, or NULL for the loss only; may be x
    Py_ssize_t n,
    Py_ssize_t y,              # the row's class, 0 <= y < n
    double s,                  # the row's sample weight
    LossOptions o,
    Py_ssize_t r,              # the row's number (where its extra outputs go)
    floating *stats,           # scratch (n) for the entropy's exponentials (stats_exps), or NULL
) noexcept nogil:
    """One row with a class-index target, vectorised along its classes: returns loss_n
    and writes d(loss)/dx into g (see index_row_terms), and the row's extra outputs when
    the options ask for them (row_stats)."""
    cdef const double *w = o.w
    cdef floating m = row_max(x, n)
    cdef bint want_stats = wants_stats(o)
    if want_stats:
        row_stats_first(x, n, m, o, r)
    cdef double x_y = x[y]  # read before g overwrites x
    cdef double gap_sum = row_gapsum(x, w, n, m) if o.eps != 0.0 else 0.0
    cdef double excess, total_lo, k_hi, k_lo
    cdef floating *e = stats_exps(x, g, o, stats) if want_stats else g
    cdef double total = row_expsum_lo(x, e, n, m, &excess, &total_lo)
    cdef double e_y = e[y] if e != NULL else 0.0
    cdef double log_total = sml_log1p(excess)
    if want_stats:
        row_stats(x, e, g, n, m, total, log_total, o, r)
    cdef IndexRowTerms terms = any_row_terms(
        m, x_y, gap_sum, total, excess, log_total, e_y, n, w[y] if w != NULL else 1.0, s, o)
    if g == NULL:
        return terms.loss
    cdef floating p_scale = <floating>terms.p_scale
    cdef floating smooth_scale = <floating>terms.smooth_scale
    cdef Py_ssize_t c
    if (not (isfinite(p_scale) and isfinite(smooth_scale))
            or divide_last(terms.p_scale, terms.smooth_scale, s, o)):
        # Overflow checked in the logits' precision too, as the loops below compute: a
        # float32 scale may overflow where its double does not (inf - inf = NaN, not inf).
        grad_divided(g, 1, n, terms, o)
    elif o.eps == 0.0 and o.z == 0.0 and o.focal_gamma == 0.0:
        # p_scale e_c rounded once (issue 19): float32 by sml_scale_f (with FMA an fmaf of
        # p_scale as float hi + lo: full-width float vectors, not the double product's
        # half-width ones); float64 with p_scale = s p_coef / (S W) as hi + lo, one fma
        # (the focal loss: not yet, in no path, so that its rows have the same bits on
        # every path)
        if floating is float:
            sml_scale_f(g, n, terms.p_scale)
        else:
            k_hi = sml_quot_dd(s * terms.p_coef, total, total_lo, o.divisor, &k_lo)
            for c in range(n):
                g[c] = sml_mul_dd(g[c], k_hi, k_lo)
    elif floating is double and o.focal_gamma == 0.0:
        smoothed_grad_d(g, n, terms, total, total_lo, o)
    elif o.eps == 0.0:
        for c in range(n):
            g[c] = g[c] * p_scale
    elif w == NULL:
        for c in range(n):
            g[c] = fused(g[c], p_scale, -smooth_scale)  # explicit: the same bits on every path
    else:
        for c in range(n):
            g[c] = fused(g[c], p_scale, -<floating>(terms.smooth_scale * w[c]))
    g[y] = <floating>terms.label_grad
    if floating is double:
        if o.eps == 0.0 and o.z == 0.0 and o.focal_gamma == 0.0 and e_y == 1.0 and isfinite(terms.p_scale):
            # -(1 - p_y) s w_y / W at a labelled max, rounded once (issue 19)
            g[y] = sml_label_grad_at_max(s * terms.p_coef, excess, total, total_lo, o.divisor)
    return terms.loss


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
    double s,                         # the row's sample weight
    LossOptions o,                    # w, eps, z and the divisor (w_sum unused)
    Py_ssize_t r,                     # the row's number (where its extra outputs go)
    floating *stats,                  # scratch (n) for the entropy (stats_exps), or NULL
) noexcept nogil:
    """One row with probability targets: returns loss_n and writes d(loss)/dx into g.

    With y'_c = (1-eps) y_c + eps/n, T = sum_c w_c y'_c:
        loss_n = s * (sum_c w_c y'_c (-l_c) + z lse^2)
               = s * (T log S + sum_c w_c y'_c (m - x_c) + z lse^2)
        grad_c = (s / W) ((T + 2 z lse) p_c - w_c y'_c)     (W = 1 unless "mean")
    exact for any target row, also one that does not sum to 1.
    """
    cdef const double *w = o.w
    cdef double eps = o.eps, z = o.z, divisor = o.divisor
    cdef floating m = row_max(x, n)
    cdef bint want_stats = wants_stats(o)
    if want_stats:
        row_stats_first(x, n, m, o, r)
    cdef double smooth = eps / <double>n
    cdef double weight_total = 0.0, gap_sum = 0.0, gap_lo = 0.0, wy, wt_lo = 0.0, lo
    cdef Py_ssize_t c
    for c in range(n):  # before g overwrites x
        wy = smoothed_target(t[c * t_step], eps, smooth)
        if w != NULL:
            wy = wy * w[c]
        if floating is double:
            # T and the gap sum compensated (TwoSums: their terms' own roundings remain),
            # m - x_c as hi + lo (issue 19: float64 results rounded about once)
            weight_total = sml_add_lo(weight_total, wy, 0.0, &lo)
            wt_lo += lo
            gap_sum = sml_add_lo(gap_sum, wy * (<double>m - <double>x[c]),
                                 wy * sml_sub_lo(m, x[c]), &lo)
            gap_lo += lo
        else:  # float64 sums of float32 terms: far below a float's ulp
            weight_total += wy
            gap_sum += wy * (<double>m - <double>x[c])
    gap_sum = gap_sum + gap_lo

    cdef double excess, total_lo, k_hi, k_lo
    cdef floating *e = stats_exps(x, g, o, stats) if want_stats else g
    cdef double total = row_expsum_lo(x, e, n, m, &excess, &total_lo)
    cdef double log_total = sml_log1p(excess)
    if want_stats:
        row_stats(x, e, g, n, m, total, log_total, o, r)
    cdef double lse = <double>m + log_total
    cdef double loss = sml_fmadd(weight_total, log_total, sml_fmadd(wt_lo, log_total, gap_sum))
    cdef double p_coef = weight_total + wt_lo
    if z != 0.0:
        loss += z * lse * lse
        p_coef = sml_add_lo(2.0 * z * lse, weight_total, wt_lo, &lo)
    if g == NULL:
        return s * loss

    # Times s, then divided by W, as in index_row_terms; where that overflows, grouped
    # as the formula and divided last (as in grad_divided): e_c = 0 gives 0, not 0 * inf.
    # float64: s p_coef / (S W) as hi + lo and p_scale e_c - s w_c y'_c / W rounded about
    # once (sml_fms_dd; issue 19)
    cdef double p_scale = (s * p_coef / total) / divisor
    cdef bint divide_last = not isfinite(p_scale)
    if floating is double:
        k_hi = sml_quot_dd(s * p_coef, total, total_lo, divisor, &k_lo)
        if not quot_in_range(s * p_coef, total * divisor, k_hi, k_lo):
            k_hi = p_scale  # the plain scale, as before issue 19
            k_lo = 0.0
    for c in range(n):
        wy = smoothed_target(t[c * t_step], eps, smooth)
        if w != NULL:
            wy = wy * w[c]
        if divide_last:
            g[c] = <floating>((s * (p_coef * (<double>g[c] / total) - wy)) / divisor)
        elif floating is double:
            g[c] = sml_fms_dd(g[c], k_hi, k_lo, (s * wy) / divisor)
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
    cdef double excess, total_lo, inv_lo, p, c_max, c_max_lo
    cdef double total = row_expsum_lo(x, g, n, m, &excess, &total_lo)
    cdef double inv_total = sml_quot_dd(1.0, total, total_lo, 1.0, &inv_lo)
    cdef double e_y = g[y]
    cdef double e
    cdef Py_ssize_t c
    if floating is float:
        for c in range(n):
            e = g[c]
            (<floating *>(h + c * h_step))[0] = <floating>(
                s * (e * inv_total) * complement(e, total, excess))
            g[c] = <floating>(s * e * inv_total)
    else:  # p and p (1 - p) each rounded once (issue 19): sml_grad_hess_d
        c_max_lo = 0.0
        if excess > 0.0:
            c_max = sml_quot_dd(excess, total, total_lo, 1.0, &c_max_lo)
        else:  # 0, or NaN (a row with NaN): as complement gives it
            c_max = excess / total
        for c in range(n):
            (<floating *>(h + c * h_step))[0] = s * sml_grad_hess_d(
                g[c], inv_total, inv_lo, c_max, c_max_lo, &p)
            g[c] = s * p
        if e_y == 1.0:  # -(1 - p_y) s = -s excess / S, rounded once
            g[y] = -s * (c_max + c_max_lo)
            return
    g[y] = <floating>(-s * complement(e_y, total, excess))

"""The public functions: validate, lay the arrays out for the kernel, call it, reduce.

Every function here has a pure-NumPy twin of the same signature in
`softmaxloss.reference`; both validate through `_validation`, so they accept and
refuse the same inputs with the same messages, before any work is done.

The kernels see every array as a "rows view" of shape (A, B, C): the class axis
moved last, the axes before it merged into A and the axes after it into B. For a
C- or F-contiguous (N, C) array and for PyTorch's (N, C, d1, ...) layout that view
shares the array's memory. Only an input that cannot be viewed so (or that needs a
dtype conversion) is copied: into the gradient buffer when there is one, so that
`cross_entropy_with_grad` never allocates an N x C temporary besides its result.
float16 and bfloat16 arrays are read and written as stored, by the kernels' half entry
points (`_storage`); their results are rounded once from float64 (`round_float64`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from . import _dispatch
from ._halfdtypes import half_kind, is_bfloat16, round_float64
from ._layout import KERNEL_DTYPES, MergedAxes, RowsLayout
from ._where import stand_in
from ._outputs import CrossEntropyOutputs, n_correct, requested_outputs
from ._validation import (
    DEFAULT_IGNORE_INDEX,
    Dtypes,
    LossArgs,
    LossOptions,
    as_real_array,
    check_axes,
    check_cross_entropy_call,
    check_gradient_hessian_args,
    check_gradient_hessian_out,
    check_in_place,
    check_index_target,
    class_out_of_range,
    check_logsumexp_args,
    check_n_threads,
    check_out,
    check_softcap,
)

_LARGEST = {np.dtype(t): float(np.finfo(t).max) for t in (np.float16, np.float32, np.float64)}
_BITS = np.dtype(np.uint16)  # how the kernels take half-precision arrays

__all__ = [
    "softmax",
    "log_softmax",
    "logsumexp",
    "cross_entropy",
    "cross_entropy_with_grad",
    "gradient_hessian",
]

# ---- helpers -------------------------------------------------------------------


def _result(buffer: np.ndarray, out: np.ndarray | None, dtypes: Dtypes) -> np.ndarray:
    """The kernel's result in the result dtype, written into `out` when given."""
    if out is not None:
        if out is not buffer:
            np.copyto(out, buffer, casting="unsafe")
        return out
    if buffer.dtype != dtypes.result:
        with np.errstate(over="ignore"):
            return buffer.astype(dtypes.result)
    return buffer


def _storage(dtypes: Dtypes) -> np.dtype[Any]:
    """The dtype the kernels read and write for `dtypes`: float16 and bfloat16 as stored
    (the half entry points, computing in float32), else the compute dtype."""
    return dtypes.result if half_kind(dtypes.result) is not None else dtypes.compute


def _output(layout: RowsLayout, out: np.ndarray | None, storage: np.dtype[Any]) -> tuple[np.ndarray, np.ndarray]:
    """layout.output; a half-precision `out` the kernels cannot address (unaligned, or rows
    no rows view reaches) is filled from a new buffer instead, as any `out` of a dtype
    other than the kernels' is (check_out does not hold it to their layout)."""
    if out is not None and out.dtype == storage and half_kind(storage) is not None and layout.view(out) is None:
        return layout.empty(storage)
    return layout.output(out, storage)


def _bits(rows: np.ndarray) -> np.ndarray:
    """Rows as the kernels take them: half-precision ones as their uint16 bits."""
    return rows.view(_BITS) if half_kind(rows.dtype) is not None else rows


def _threads(n_threads: Any) -> int:
    """The kernels' thread argument (a C int): 0 means OpenMP's default. More threads
    than a C int holds are as many as it holds (the work is split by rows anyway)."""
    count = check_n_threads(n_threads)
    return 0 if count is None else min(count, 2**31 - 1)


# ---- softmax family -----------------------------------------------------------------


def _softmax(x: Any, axis: Any, out: np.ndarray | None, n_threads: Any, log_output: bool,
             dtype: Any = None, softcap: Any = None) -> np.ndarray:
    array, dtypes = as_real_array(x, "x", dtype)
    axes = check_axes(axis, array.ndim)
    threads = _threads(n_threads)
    cap = check_softcap(softcap)
    if isinstance(axes, tuple):  # several axes, or a 0-d array: as one merged class axis
        if out is not None:
            check_out(out, array.shape, dtypes, None)
        merged = MergedAxes(array.shape, axes)
        result = merged.unmerge(_softmax(merged.merge(array), -1, None, threads or None, log_output,
                                         softcap=cap))
        if out is None:
            return result[()] if array.ndim == 0 else result  # a 0-d input: a NumPy scalar, as SciPy's
        np.copyto(out, result, casting="unsafe")
        return out
    if out is not None:
        check_out(out, array.shape, dtypes, axes)
        check_in_place(out, array)
    layout = RowsLayout.of(array if out is None else out, axes)
    storage = _storage(dtypes)
    buffer, result_rows = _output(layout, out, storage)
    x_rows = layout.input(array, storage, into=buffer)
    kind = half_kind(storage)
    if cap is not None:
        x_bits = _bits(x_rows)
        _dispatch.specialised("softmax_softcap", x_bits.dtype)(
            x_bits, _bits(result_rows), log_output, cap, kind or 0, threads)
    elif kind is None:
        _dispatch.specialised("softmax", storage)(x_rows, result_rows, log_output, threads)
    else:
        _dispatch.kernels.softmax_half(x_rows.view(_BITS), result_rows.view(_BITS), log_output, kind, threads)
    return _result(buffer, out, dtypes)


def softmax(x: Any, axis: Any = -1, *, out: np.ndarray | None = None, dtype: Any = None,
            softcap: float | None = None, n_threads: int | None = None) -> np.ndarray:
    """Softmax along `axis`: exp(x_c - max(x)) / sum_k exp(x_k - max(x)).

    `axis` may also be None (all axes) or a tuple of axes, as in SciPy; a 0-d x is one
    element (softmax 1, a NumPy scalar as SciPy's). A row with NaN or +inf, or of all
    -inf, gives NaN; -inf beside finite values gives an exact 0. `out` may be `x` itself
    (in place), or an array of another float dtype (the result is cast to it). `dtype`: x is cast to it first (as
    torch.softmax's). Returns an array of x's dtype (float16 computed in float32,
    integers and bools in float64). `softcap`: None, or a cap > 0: the softmax of
    cap * tanh(x / cap) (Gemma 2's soft-capped logits), formed inside the pass.
    """
    return _softmax(x, axis, out, n_threads, False, dtype, softcap)


def log_softmax(x: Any, axis: Any = -1, *, out: np.ndarray | None = None, dtype: Any = None,
                softcap: float | None = None, n_threads: int | None = None) -> np.ndarray:
    """Log-softmax along `axis`: x_c - max(x) - log(sum_k exp(x_k - max(x))).

    Same conventions as `softmax` (-inf beside finite values stays -inf; with `softcap`
    the log-softmax of cap * tanh(x / cap)).
    """
    return _softmax(x, axis, out, n_threads, True, dtype, softcap)


def _row_logsumexp(rows: np.ndarray, dtypes: Dtypes, threads: int, cap: float | None = None) -> np.ndarray:
    """log(sum_c exp(x_c)) of each row of `rows` (class axis last), in float64; with a
    cap, of x_c = cap * tanh(rows_c / cap)."""
    layout = RowsLayout.of(rows, rows.ndim - 1)
    n_a, n_b, n_classes = layout.rows_shape
    row_values = np.full((n_a, n_b), -np.inf)
    kind = half_kind(rows.dtype) if rows.dtype == dtypes.result else None
    if n_classes and cap is not None:
        storage = rows.dtype if kind is not None else dtypes.compute
        x_bits = _bits(layout.input(rows, storage))
        _dispatch.specialised("logsumexp_softcap", x_bits.dtype)(x_bits, row_values, cap, kind or 0, threads)
    elif n_classes and kind is not None:  # half-precision rows as stored
        _dispatch.kernels.logsumexp_half(layout.input(rows, rows.dtype).view(_BITS), row_values, kind, threads)
    elif n_classes:
        _dispatch.specialised("logsumexp", dtypes.compute)(
            layout.input(rows, dtypes.compute), row_values, threads)
    per_row: np.ndarray = layout.per_row(row_values)
    return per_row


def _signed_log_difference(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log|P - N|, sign(P - N)) from log P and log N: the larger minus the smaller, as
    larger + log1p(-exp(smaller - larger)); -inf with sign 0 where they are equal."""
    larger = np.maximum(positive, negative)
    smaller = np.minimum(positive, negative)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        gap = np.where(larger == -np.inf, 0.0, smaller - larger)  # both -inf: an empty sum
        lse = np.where(positive == negative, -np.inf, larger + np.log1p(-np.exp(gap)))
    sign = np.where(positive > negative, 1.0, np.where(positive < negative, -1.0, 0.0))
    both_infinite = (positive == np.inf) & (negative == np.inf)  # inf - inf
    return np.where(both_infinite, np.nan, lse), np.where(both_infinite, np.nan, sign)


def logsumexp(x: Any, axis: Any = -1, *, b: Any = None, keepdims: bool = False,
              return_sign: bool = False, dtype: Any = None, softcap: float | None = None,
              n_threads: int | None = None) -> Any:
    """log(sum_c b_c exp(x_c)) along `axis`, computed as max + log(sum_c exp(x_c - max)).

    SciPy's call forms: `axis` None (all axes), an int or a tuple; `b` weights broadcast
    against x (the result then has their promoted dtype); `return_sign=True` returns
    (log|sum|, sign of the sum: 1, -1, or 0 for a zero sum), else a negative sum gives
    NaN. Weights are folded in as x + log|b| (b = 0 leaves an entry out, also at +inf).
    As in PyTorch and SciPy: an empty axis or a row of all -inf gives -inf, a row with
    +inf gives +inf, a row with NaN gives NaN. `dtype`: x is cast to it first.
    `softcap`: None, or a cap > 0: x_c is cap * tanh(x_c / cap) (inside the pass; with
    `b`, the capped logits are formed first, in float64).
    """
    array, dtypes, weights = check_logsumexp_args(x, b, dtype)
    axes = check_axes(axis, array.ndim)
    threads = _threads(n_threads)
    cap = check_softcap(softcap)
    merged = MergedAxes(array.shape, axes if isinstance(axes, tuple) else (axes,))
    rows = merged.merge(array)
    if weights is None:
        lse = _row_logsumexp(rows, dtypes, threads, cap)
        sign = None if not return_sign else np.where(lse == -np.inf, 0.0, np.where(np.isnan(lse), np.nan, 1.0))
    else:
        w = merged.merge(weights)
        if cap is not None:
            from .reference import softcapped
            rows = softcapped(rows, cap)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_w = np.log(np.abs(w))
            # each sign's part, the other entries (and b = 0) left out as -inf
            positive = _row_logsumexp(np.where(w > 0, rows + log_w, -np.inf), dtypes, threads)
            negative = _row_logsumexp(np.where(w < 0, rows + log_w, -np.inf), dtypes, threads)
            lse, sign = _signed_log_difference(positive, negative)
            lse = np.where(np.isnan(w).any(axis=-1), np.nan, lse)
            sign = np.where(np.isnan(lse), np.nan, sign)
            if not return_sign:
                lse = np.where(sign < 0, np.nan, lse)
    with np.errstate(over="ignore"):
        result = round_float64(merged.reduced(lse, keepdims), dtypes.result)[()]
        if not return_sign:
            return result
        return result, round_float64(merged.reduced(np.asarray(sign), keepdims), dtypes.result)[()]


# ---- cross-entropy ------------------------------------------------------------------


def _as_result(value: float, dtype: np.dtype[Any]) -> Any:
    """A Python float as a NumPy scalar of `dtype`, rounded as NumPy rounds (to +-inf
    beyond the range: the rounding, not an error, so without a warning); bfloat16
    rounded once (`round_float64`)."""
    if is_bfloat16(dtype):
        return round_float64(value, dtype)[()]
    if abs(value) > _LARGEST[dtype] and math.isfinite(value):
        with np.errstate(over="ignore"):
            return dtype.type(value)
    return dtype.type(value)


def _reduced_total(total: float, normaliser: float, reduction: str, dtype: np.dtype[Any]) -> Any:
    """The sum of the per-row losses (computed by the kernel in row order with
    compensation), or for "mean" that sum divided by W (NaN when W is 0)."""
    if reduction == "mean":
        total = total / normaliser if normaliser != 0 else math.nan
    return _as_result(total, dtype)


def _reduce(total: float, normaliser: float, row_loss: np.ndarray, layout: RowsLayout, args: LossArgs) -> Any:
    """The returned loss: per-row losses ("none"), else `_reduced_total`."""
    if args.options.reduction == "none":
        with np.errstate(over="ignore"):
            return round_float64(layout.per_row(row_loss), args.dtypes.result)[()]
    return _reduced_total(total, normaliser, args.options.reduction, args.dtypes.result)


def _kernel_totals(
    x_rows: np.ndarray, target_rows: np.ndarray, weight: np.ndarray | None,
    sample_weight: np.ndarray | None, target_ignore_index: int, probabilities: bool,
    options: LossOptions, row_loss: np.ndarray, grad_rows: np.ndarray | None, threads: int,
    stats: _RowStats | None = None,
) -> tuple[float, float] | int:
    """Run the cross-entropy kernel, the one place that does but for `_common_case`'s
    `cross_entropy_plain`, on rows views laid out by the caller: (sum of the per-row losses,
    the mean's W); or, when a class index is out of range and not ignored, the number
    r = a * B + b of the first such row of the rows views, which the kernel finds and
    reports before it writes anything. The entry point by storage: float32/float64 rows as
    they are; half-precision ones (logits and gradient) as their uint16 bits with their
    kind; with `options.softcap`, the soft-capping layer (any of them, the cap and kind
    after the gradient). `stats`: the extra outputs requested (their arrays, filled by the
    kernel; with softcap, the capped logits'); the focal gamma goes with the options."""
    mean = options.reduction == "mean"
    kind = half_kind(x_rows.dtype)
    extra: dict[str, Any] = {} if stats is None else stats.kernel_arrays()
    if options.focal_gamma:
        extra["focal_gamma"] = options.focal_gamma
    x, grad = _bits(x_rows), None if grad_rows is None else _bits(grad_rows)
    # the entry point's name, its fused dtypes before the target's, and the storage
    # layer's arguments after the gradient
    by_dtype: tuple[np.dtype[Any], ...]
    layer: tuple[Any, ...]
    if options.softcap is not None:
        name, by_dtype, layer = "cross_entropy_{}_softcap", (x.dtype,), (options.softcap, kind or 0)
    elif kind is not None:
        name, by_dtype, layer = "cross_entropy_{}_half", (), (kind,)
    else:
        name, by_dtype, layer = "cross_entropy_{}", (x.dtype,), ()
    if probabilities:
        totals: tuple[float, float] = _dispatch.specialised(name.format("probs"), *by_dtype, target_rows.dtype)(
            x, target_rows, weight, sample_weight, options.label_smoothing, options.z_loss,
            mean, row_loss, grad, *layer, threads, **extra,
        )
        return totals
    index_totals: tuple[float, float] | None = _dispatch.specialised(name.format("index"), *by_dtype)(
        x, target_rows, weight, sample_weight, target_ignore_index, options.label_smoothing,
        options.z_loss, mean, row_loss, grad, *layer, threads, True, **extra,
    )
    if index_totals is None:  # the kernel reported the row in row_loss
        return int(row_loss[0, 0])
    return index_totals


class _RowStats:
    """The extra outputs a call requested (issue 16 item 3): the kernel's per-row arrays
    for them (the rows view's (A, B) shape), and what the call returns of them."""

    def __init__(self, requested: tuple[bool, bool, bool], rows_shape: tuple[int, ...]) -> None:
        self.lse, self.entropy, self.argmax = (
            np.empty(rows_shape, dtype) if wanted else None
            for wanted, dtype in zip(requested, (np.float64, np.float64, np.int64))
        )

    def kernel_arrays(self) -> dict[str, np.ndarray]:
        """The kernel's keywords of the requested outputs."""
        return {name: array for name, array in
                (("lse", self.lse), ("entropy", self.entropy), ("argmax", self.argmax))
                if array is not None}

    def results(self, loss: Any, grad: np.ndarray | None, layout: RowsLayout,
                args: LossArgs) -> CrossEntropyOutputs:
        """The call's CrossEntropyOutputs: lse and entropy in the result dtype (rounded once
        from float64), argmax int64, all of the rows' shape; the number correct."""
        def per_row(values: np.ndarray | None) -> Any:
            if values is None:
                return None
            with np.errstate(over="ignore"):
                return round_float64(layout.per_row(values), args.dtypes.result)[()]
        argmax = None
        correct = None
        if self.argmax is not None:
            argmax = np.array(layout.per_row(self.argmax))[()]
            correct = n_correct(argmax, args.target, args.probabilities, args.axis, args.target_ignore_index)
        return CrossEntropyOutputs(loss, grad, per_row(self.lse), per_row(self.entropy), argmax, correct)


_INT64 = np.dtype(np.int64)
_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)
_LARGEST_FLOAT32 = float(np.finfo(np.float32).max)
# A common-case call (below): its reductions (whether it is the mean), its scalar types.
_PLAIN_REDUCTIONS = {"mean": True, "sum": False}
_PLAIN_SCALARS = (float, int)


def _common_case(
    logits: Any, target: Any, axis: Any, weight: Any, sample_weight: Any, ignore_index: Any,
    reduction: Any, label_smoothing: Any, z_loss: Any, n_threads: Any, with_grad: bool,
    out: Any = None,
) -> tuple[Any, np.ndarray | None] | None:
    """A plan for the most common call, without the general validation and layout
    machinery (a small call's cost is mostly Python): (N, C) C-contiguous float32/float64 logits,
    int64 class indices of shape (N,), class axis last, no weights, the default
    ignore_index, no smoothing or z-loss, reduction "mean" or "sum", and no `out` or one
    that is the logits or a C-contiguous array of their shape and dtype sharing no memory
    with the inputs. Such a call is valid exactly when its classes are in range, which
    the kernel checks before it writes anything: the kernel's `cross_entropy_plain` takes
    the arrays as they are (a class out of range raises the general path's error; it
    tests the memory `out` shares, and an `out` that overlaps the inputs takes the general
    path). Returns (loss, grad or None), or None for any other call, which then takes the
    general path and its error messages.

    The tests are ordered and written for speed (this is most of a small call's time):
    the keywords first (identity and exact-type tests), then the dtypes (an equal but not
    identical dtype object, e.g. a byte-swapped one, just takes the general path); the
    shapes, the layouts and the memory `out` shares are the kernel's tests, in C (it
    reads the arrays through the buffer protocol and returns None where one fails)."""
    if (
        weight is not None or sample_weight is not None
        or type(logits) is not np.ndarray or type(target) is not np.ndarray
        or type(axis) is not int or (axis != -1 and axis != 1)
        or type(ignore_index) is not int or ignore_index != DEFAULT_IGNORE_INDEX
        or type(reduction) is not str
        or type(label_smoothing) not in _PLAIN_SCALARS or label_smoothing != 0
        or type(z_loss) not in _PLAIN_SCALARS or z_loss != 0
    ):
        return None
    mean = _PLAIN_REDUCTIONS.get(reduction)
    dtype = logits.dtype
    if mean is None or target.dtype is not _INT64 or (dtype is not _FLOAT32 and dtype is not _FLOAT64):
        return None
    if out is not None:
        if type(out) is not np.ndarray or out.dtype is not dtype:
            return None
        grad: np.ndarray | None = out
    else:
        grad = np.empty(logits.shape, dtype) if with_grad else None
    threads = 0 if n_threads is None else _threads(n_threads)
    # The kernel checks the rest (shapes, C-contiguity, alignment, a writable `out` that
    # shares no memory with the inputs) and returns None where any fails.
    totals: tuple[float, float] | int | None = _dispatch.kernels.cross_entropy_plain(
        logits, target, grad, mean, threads)
    if totals is None:  # not the common case after all (see the kernel's checks)
        return None
    if isinstance(totals, int):
        raise class_out_of_range(target, totals, logits.shape[1], DEFAULT_IGNORE_INDEX)
    total, normaliser = totals
    if mean:
        total = total / normaliser if normaliser != 0 else math.nan
    if dtype is _FLOAT64 or abs(total) <= _LARGEST_FLOAT32 or not math.isfinite(total):
        return dtype.type(total), grad
    return _as_result(total, dtype), grad  # beyond float32's range: rounds to +-inf quietly


def _cross_entropy(args: LossArgs, threads: int, out: np.ndarray | None, with_grad: bool,
                   requested: tuple[bool, bool, bool] | None = None) -> Any:
    """(loss, grad or None); with `requested` (which of lse, entropy, argmax) a
    CrossEntropyOutputs, the extra outputs computed by the same kernel pass."""
    x = args.logits
    layout = RowsLayout.of(x if out is None else out, args.axis)
    storage = _storage(args.dtypes)
    buffer = grad_rows = None
    if with_grad:
        buffer, grad_rows = _output(layout, out, storage)
    x_rows = layout.readable(x, storage)
    if not (args.probabilities or args.values_checked) and (
        not layout.rows_in_order or (x_rows is None and out is not None)
    ):
        # The kernel reports the first bad class in its order of the rows: check them here
        # when that is not the target's own order, and when the logits are about to be
        # copied into `out` before the kernel runs (`out` must be left as it was).
        check_index_target(args.target, args.n_classes, args.options.ignore_index)
    if x_rows is None:
        x_rows = layout.input(x, storage, into=buffer)
    weight = None if args.weight is None else np.ascontiguousarray(args.weight)
    sample_weight = None if args.sample_weight is None else layout.rows(args.sample_weight)
    row_loss = np.empty(layout.rows_shape[:2])
    if args.probabilities:
        target_dtype = args.target.dtype if args.target.dtype in KERNEL_DTYPES else np.dtype(np.float64)
        target_rows = layout.input(args.target, target_dtype)
    else:
        target_rows = layout.rows(args.target)
    stats = None if requested is None else _RowStats(requested, layout.rows_shape[:2])
    totals = _kernel_totals(x_rows, target_rows, weight, sample_weight, args.target_ignore_index,
                            args.probabilities, args.options, row_loss, grad_rows, threads, stats)
    if isinstance(totals, int):  # a class out of range, in row `totals`: nothing was written
        raise class_out_of_range(args.target, totals, args.n_classes, args.options.ignore_index)
    loss = _reduce(totals[0], totals[1], row_loss, layout, args)
    grad = None if buffer is None else _result(buffer, out, args.dtypes)
    if stats is not None:
        return stats.results(loss, grad, layout, args)
    return loss, grad


def _masked_cross_entropy(args: LossArgs, threads: int, out: np.ndarray | None,
                          with_grad: bool) -> tuple[Any, np.ndarray | None]:
    """`_cross_entropy` under the class mask `args.where`, on the unchanged kernel (the
    math: `reference._masked_cross_entropy`). The logits are copied (into the gradient
    buffer when there is one) with the masked entries replaced by `_where.stand_in`, so
    the kernel's softmax, log-sum-exp and z-loss are the kept classes'. Index targets
    without smoothing keep the index kernel, the rows that keep no class marked ignored;
    otherwise the targets become probabilities over the kept classes (label smoothing
    eps/|K|), 0 at masked classes. Each row's weight is s_n, 0 for a row left out, over
    the mean's normaliser for "mean" (so the kernel sums). A label on a masked class
    keeps its own logit (optax): the kernel's gradient is exact there (-s (1-eps) w[y]),
    its loss is recomputed in float64 from the row (those rows only)."""
    x, kept, axis = args.logits, args.where, args.axis
    assert kept is not None
    slope = None
    if args.options.softcap is not None:  # the capped logits formed first (float64), then as always
        from .reference import softcap_slope, softcapped
        x, slope = softcapped(x, args.options.softcap), softcap_slope(x, args.options.softcap)
    compute = args.dtypes.compute
    eps = args.options.label_smoothing
    any_kept = kept.any(axis=axis)
    counted = any_kept
    label_masked = None
    if not args.probabilities:
        labelled = args.target != args.target_ignore_index
        y = np.where(labelled, args.target, 0)
        label_kept = np.take_along_axis(kept, np.expand_dims(y, axis), axis).squeeze(axis)
        counted = any_kept & labelled
        label_masked = counted & ~label_kept
    row_weight = np.ones(args.row_shape) if args.sample_weight is None else args.sample_weight
    if args.probabilities:
        normaliser = float(np.sum(row_weight, where=counted))
    else:
        class_weight = np.ones(args.n_classes) if args.weight is None else args.weight
        normaliser = float(np.sum(row_weight * class_weight[y], where=counted))
    scale = 1.0
    if args.options.reduction == "mean":
        scale = 1.0 / normaliser if normaliser != 0 else math.nan
    row_weight = np.where(counted, row_weight * scale, 0.0)
    apart = None
    if label_masked is not None and label_masked.any():
        apart = (np.moveaxis(x, axis, -1)[label_masked].astype(np.float64),
                 np.moveaxis(kept, axis, -1)[label_masked], y[label_masked], row_weight[label_masked])

    layout = RowsLayout.of(x if out is None else out, axis)
    if with_grad:
        buffer, x_rows = layout.output(out, compute)
    else:
        buffer, x_rows = layout.empty(compute)
    if not (buffer is x or (np.may_share_memory(buffer, x) and check_in_place(buffer, x))):
        np.copyto(buffer, x, casting="unsafe")
    with np.errstate(invalid="ignore"):
        kept_max = np.max(buffer, axis=axis, where=kept, initial=-np.inf, keepdims=True)
    np.copyto(buffer, stand_in(np, kept_max, np.expand_dims(any_kept, axis), compute), where=~kept)
    options = dataclasses.replace(args.options, reduction="sum", label_smoothing=0.0, softcap=None)
    if args.probabilities or eps != 0:
        np.copyto(buffer, 0, where=~np.expand_dims(counted, axis))  # rows left out: finite, weight 0
        share = eps / np.maximum(kept.sum(axis=axis, keepdims=True), 1)  # eps/|K|
        if args.probabilities:
            target = np.zeros(x.shape) if eps == 1 else (1 - eps) * args.target
            target = np.where(kept, target + share if eps != 0 else target, 0.0)
        else:
            target = np.where(kept, share, 0.0)
            y_at = np.expand_dims(y, axis)
            np.put_along_axis(target, y_at, np.take_along_axis(target, y_at, axis) + (1 - eps), axis)
        target_rows = layout.input(target, np.dtype(np.float64))
        probabilities = True
    else:
        target_rows = layout.rows(np.where(counted, args.target, args.target_ignore_index))
        probabilities = False
    weight = None if args.weight is None else np.ascontiguousarray(args.weight)
    row_loss = np.empty(layout.rows_shape[:2])
    totals = _kernel_totals(x_rows, target_rows, weight, layout.rows(row_weight), args.target_ignore_index,
                            probabilities, options, row_loss, None if not with_grad else x_rows, threads)
    assert not isinstance(totals, int)  # every class index was checked
    total = totals[0]
    losses = layout.per_row(row_loss)
    if apart is not None:
        from .reference import _masked_row_losses, _quiet
        with _quiet():
            exact, _, _ = _masked_row_losses(*apart[:3], False, class_weight, apart[3],
                                             eps, args.options.z_loss)
        losses = np.array(losses)
        losses[label_masked] = exact
        total = math.fsum(losses.ravel()) if np.isfinite(losses).all() else float(np.sum(losses))
    if slope is not None and with_grad:  # the chain rule; entries exactly 0 (masked, left out) stay 0
        with np.errstate(invalid="ignore", over="ignore"):
            np.multiply(buffer, slope, out=buffer, where=buffer != 0, casting="unsafe")
    if args.options.reduction == "mean" and normaliser == 0:
        total = math.nan  # a mean over nothing
    if args.options.reduction == "none":
        with np.errstate(over="ignore"):
            loss = np.asarray(losses).astype(args.dtypes.result)[()]
    else:
        loss = _as_result(total, args.dtypes.result)
    grad = None if not with_grad else _result(buffer, out, args.dtypes)
    return loss, grad


def cross_entropy(
    logits: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    sample_weight: Any = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    focal_gamma: float | None = None,
    return_lse: bool = False,
    return_entropy: bool = False,
    return_argmax: bool = False,
    where: Any = None,
    n_threads: int | None = None,
) -> Any:
    """Cross-entropy of softmax(logits) against `target`, PyTorch's semantics.

    `target`: integer class indices (logits' shape without `axis`) or float
    probabilities (logits' shape). With l = log_softmax(logits), eps = label_smoothing,
    w = weight (class weights), s = sample_weight, z = z_loss, per row:
    index targets: s (( 1-eps) w[y] (-l[y]) + (eps/C) sum_c w_c (-l_c) + z lse^2);
    probabilities: s (sum_c w_c y'_c (-l_c) + z lse^2), y' = (1-eps) y + eps/C.
    reduction "mean" divides by sum of s*w[y] over non-ignored rows (probabilities:
    by the number of rows, or sum(s)); "sum" adds; "none" returns per-row losses.
    Returns a NumPy scalar (mean/sum) or array (none) of the logits' dtype.

    `where`: a boolean mask of the logits' shape (or broadcastable to it), or of one
    value per example (the logits' shape without `axis`), as optax's: masked-out classes
    leave the softmax, the normaliser and the target sum (probability 0, gradient 0); a
    class-index label on a masked class keeps its own logit (loss lse_kept - x[y], as
    optax); label smoothing spreads eps over the kept classes (eps/|K|); an example that
    keeps no class has loss 0 and gradient 0 and, like an ignored row, is left out of
    the mean.

    `softcap`: None, or a cap > 0: the loss of the soft-capped logits cap * tanh(logits / cap)
    (Gemma 2: 30), formed inside the kernel's pass (never stored), also of the focal
    loss and of the `return_*` outputs (the capped logits' log-sum-exp, entropy and
    argmax; logits saturated to the same capped value tie, the first wins).
    `focal_gamma` (None, or gamma >= 0; class-index targets, no label smoothing or
    `where`): the softmax focal loss, per row s w[y] (1 - p_y)^gamma (-log p_y) (+ the
    z-loss term), "mean" dividing by the same W; gamma 0 is the cross-entropy.
    `return_lse`, `return_entropy`, `return_argmax`: also return, from the same pass, each
    row's log-sum-exp, entropy of softmax(logits), argmax and the number of correct
    predictions: the result is then a `CrossEntropyOutputs` (loss, grad=None, lse,
    entropy, argmax, n_correct; None where not requested).
    """
    if (where is None and softcap is None and focal_gamma is None and return_lse is False
            and return_entropy is False and return_argmax is False):
        common = _common_case(logits, target, axis, weight, sample_weight, ignore_index, reduction,
                              label_smoothing, z_loss, n_threads, with_grad=False)
        if common is not None:
            return common[0]
    args = check_cross_entropy_call(
        logits, target,
        dict(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, ignore_index=ignore_index,
             softcap=softcap, focal_gamma=focal_gamma),
        axis=axis, weight=weight, sample_weight=sample_weight, n_threads=n_threads, check_range=False,
        where=where,
    )
    requested = requested_outputs(return_lse, return_entropy, return_argmax, where)
    if requested is not None:
        return _cross_entropy(args, _threads(n_threads), None, False, requested)
    compute = _masked_cross_entropy if args.where is not None else _cross_entropy
    loss, _ = compute(args, _threads(n_threads), None, with_grad=False)
    return loss


def cross_entropy_with_grad(
    logits: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    sample_weight: Any = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    focal_gamma: float | None = None,
    return_lse: bool = False,
    return_entropy: bool = False,
    return_argmax: bool = False,
    where: Any = None,
    out: np.ndarray | None = None,
    n_threads: int | None = None,
) -> Any:
    """`cross_entropy` and its gradient with respect to the logits, in one pass.

    grad has the logits' shape and dtype and is d(returned loss)/d(logits); for
    reduction="none" it is the gradient of the sum of the per-row losses. Unweighted
    mean: (softmax(logits) - (1-eps) onehot - eps/C) / (number of non-ignored rows).
    `out` may be a preallocated array or `logits` itself (in place). `where`: as in
    `cross_entropy`; masked classes get gradient exactly 0 (but a label's own masked
    class: -s (1-eps) w[y] / W, its logit being in the loss). With `softcap`, grad is the
    capped logits' gradient times sech^2(logits / cap) (u = logits / cap), the slope formed
    as 4 e^(-2|u|) / (1 + e^(-2|u|))^2, so without the cancellation of 1 - tanh^2 at large
    |u| (float32 below |u| = 0.6, where tanh^2 <= 0.29 cancels nothing: as 1 - tanh^2 of the
    kernel's tanh). `focal_gamma` and the
    `return_*` keywords as in `cross_entropy` (the focal gradient is the cross-entropy's
    p - onehot rescaled per row by f'(L), L = -log p_y, f(L) = (1 - e^-L)^gamma L); with
    extra outputs the result is a `CrossEntropyOutputs` (loss, grad, lse, ...).
    """
    if (where is None and softcap is None and focal_gamma is None and return_lse is False
            and return_entropy is False and return_argmax is False):
        common = _common_case(logits, target, axis, weight, sample_weight, ignore_index, reduction,
                              label_smoothing, z_loss, n_threads, with_grad=True, out=out)
        if common is not None and common[1] is not None:
            return common[0], common[1]
    args = check_cross_entropy_call(
        logits, target,
        dict(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, ignore_index=ignore_index,
             softcap=softcap, focal_gamma=focal_gamma),
        axis=axis, weight=weight, sample_weight=sample_weight, n_threads=n_threads, out=out, check_range=False,
        where=where,
    )
    requested = requested_outputs(return_lse, return_entropy, return_argmax, where)
    if requested is not None:
        return _cross_entropy(args, _threads(n_threads), out, True, requested)
    compute = _masked_cross_entropy if args.where is not None else _cross_entropy
    loss, grad = compute(args, _threads(n_threads), out, with_grad=True)
    assert grad is not None
    return loss, grad


def gradient_hessian(
    logits: Any,
    labels: Any,
    *,
    sample_weight: Any = None,
    out: tuple[np.ndarray, np.ndarray] | None = None,
    n_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample gradient s (p - onehot) and diagonal hessian s p (1 - p), p = softmax.

    logits: (n_samples, n_classes); labels: (n_samples,) class indices (integers, or
    floats holding whole numbers as scikit-learn passes them). What a gradient-boosting
    multiclass objective needs. `out`: None or a pair (grad_out, hess_out); grad_out
    may be `logits` itself.
    """
    x, dtypes, labels_checked, sample_weights = check_gradient_hessian_args(logits, labels, sample_weight)
    threads = _threads(n_threads)
    grad_out, hess_out = check_gradient_hessian_out(out, x, dtypes, labels, sample_weights)
    layout = RowsLayout.of(x if grad_out is None else grad_out, 1)
    grad_buffer, grad_rows = layout.output(grad_out, dtypes.compute, "out[0]")
    hess_buffer, hess_rows = layout.output(hess_out, dtypes.compute, "out[1]")
    x_rows = layout.input(x, dtypes.compute, into=grad_buffer)
    if sample_weights is not None:
        sample_weights = layout.rows(sample_weights)
    _dispatch.specialised("gradient_hessian", dtypes.compute)(
        x_rows, layout.rows(labels_checked), sample_weights, grad_rows, hess_rows, threads
    )
    return _result(grad_buffer, grad_out, dtypes), _result(hess_buffer, hess_out, dtypes)

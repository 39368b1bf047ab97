"""Fused linear + cross-entropy: the loss of an LM head, and its gradients, without the
N x V logits.

`linear_cross_entropy(hidden, linear_weight, target, ...)` is
`cross_entropy(hidden @ linear_weight.T + linear_bias, target, ...)` (PyTorch's
`F.linear_cross_entropy`), computed a chunk of rows at a time:

    for each chunk H_c of rows of hidden (c x D):
        L = H_c @ W.T (+ b)             BLAS, into one (c, V) buffer reused by every chunk
        G = the cross-entropy kernel    on L, in place: the gradient overwrites the logits
        dH[chunk] = G @ W               BLAS, straight into the returned gradient
        dW += G.T @ H_c                 BLAS (the first chunk writes dW, later ones add to it)
        db += the sum of G's rows

Why it is built so:
- The mean's normaliser W (the sum over kept rows of s_n w[y_n]; for probability targets
  the number of rows, or sum(s)) is a property of all the rows, which no chunk sees. It
  is computed first, from the targets and weights alone, and every row's sample weight is
  divided by it: the chunks then run as sums of s_n / W times their rows' losses, and the
  kernel forms the mean's gradient inside its own pass, as the unfused call does (no
  extra pass over G, and no overflow of a float32 gradient that only the division would
  have kept in range). A mean whose W is 0 is NaN, with a NaN gradient for its kept rows
  (s_n / W is NaN there) and 0 for the ignored ones, as the unfused call gives.
- The loss is the sum of all the per-row losses, in float64, exactly rounded
  (`math.fsum`): the same number, to rounding, as the unfused kernel's compensated sum,
  whatever the chunk size.
- NumPy's matmul cannot add into its output (no BLAS beta = 1). The first chunk writes
  dW directly; each later chunk's G.T @ H_c goes into a block of rows of dW at a time
  through a scratch block (about a quarter of the chunk's logits) that is then added.
- A chunk's dH is computed transposed, dH[chunk].T = W.T @ G.T, into that scratch and
  copied out: OpenBLAS runs G @ W (few rows, a long V) 2-2.5x slower than the same
  product with the chunk's rows as its columns (measured at 400-500 rows, V = 32000).
- All the targets are range-checked before the first chunk, so a bad class anywhere
  raises before any work.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ._facade import _as_result, _kernel_totals, _threads
from ._layout import KERNEL_DTYPES
from ._validation import DEFAULT_IGNORE_INDEX, LinearLossArgs, check_linear_cross_entropy_call, class_out_of_range

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad", "plan_chunks"]

# The default working memory: at most this many bytes, and at most 1/8 of the logits.
DEFAULT_MAX_BUDGET = 256 * 2**20
DEFAULT_LOGITS_FRACTION = 8
# The scratch block for dW's accumulation holds at most this fraction of a chunk's logits.
WEIGHT_BLOCK_FRACTION = 4


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkPlan:
    """How a call is cut up: `rows` of hidden per chunk (the logits buffer is rows x V)
    and, with a gradient, a scratch buffer of `scratch_rows` x D through which each
    chunk's dH (transposed) and, `weight_block` rows at a time, each later chunk's share
    of dW pass (0 without a gradient; no blocks with a single chunk)."""

    rows: int
    weight_block: int
    scratch_rows: int

    def working_bytes(self, n_classes: int, n_features: int, itemsize: int) -> int:
        """The bytes of the logits buffer and the scratch buffer."""
        return (self.rows * n_classes + self.scratch_rows * n_features) * itemsize


def plan_chunks(
    n_rows: int, n_classes: int, n_features: int, itemsize: int, *, with_grad: bool,
    chunk_size: int | None = None, memory_budget: float | None = None, scratch_row: float | None = None,
) -> ChunkPlan:
    """The chunking of a call, from `chunk_size` (rows) or `memory_budget` (bytes).

    Default budget: min(N V itemsize / 8, 256 MiB). The budget holds the logits buffer
    and, with a gradient, the backend's scratch buffer. `scratch_row`: the elements of
    scratch the backend needs per row of the chunk (softmaxloss.torch: 0 in float32 and
    float64, whose dH and dW go straight into the gradients; D in bf16/f16, whose dH is
    rounded from a float32 chunk); None for NumPy's backend (`NumpyGemms`): D per row for
    a single chunk, max(V / 4, D) per row for several (dH transposed and dW's blocks pass
    through it). So a NumPy chunk has budget / ((V + max(V / 4, D)) itemsize) rows, a
    float32 torch chunk budget / (V itemsize) (as the loss alone); at least one, at most N.
    """
    row_bytes = n_classes * itemsize
    if scratch_row is not None:
        single_scratch = several_scratch = scratch_row * itemsize if with_grad else 0
    else:
        single_scratch = n_features * itemsize if with_grad else 0
        several_scratch = max(n_classes / WEIGHT_BLOCK_FRACTION, n_features) * itemsize if with_grad else 0
    if chunk_size is not None:
        rows = chunk_size
    else:
        if memory_budget is None:
            memory_budget = min(n_rows * row_bytes / DEFAULT_LOGITS_FRACTION, DEFAULT_MAX_BUDGET)
        if memory_budget >= n_rows * (row_bytes + single_scratch):  # one chunk (also for inf)
            rows = n_rows
        else:
            rows = int(memory_budget // (row_bytes + several_scratch))
    rows = max(1, min(rows, n_rows))
    if not with_grad or n_features == 0:
        return ChunkPlan(rows=rows, weight_block=0, scratch_rows=0)
    if scratch_row is not None:  # the backend's own scratch, in rows of D (no dW blocks)
        return ChunkPlan(rows=rows, weight_block=0, scratch_rows=math.ceil(rows * scratch_row / n_features))
    if rows >= n_rows:
        return ChunkPlan(rows=rows, weight_block=0, scratch_rows=rows)
    block = max(1, min(n_classes, rows * n_classes // (WEIGHT_BLOCK_FRACTION * n_features)))
    return ChunkPlan(rows=rows, weight_block=block, scratch_rows=max(block, rows))


# ---- the arrays, as BLAS and the kernel read them ---------------------------------------


def _native(array: np.ndarray) -> np.ndarray:
    """`array` in native byte order (a copy only when it is not)."""
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _blas_ready(array: np.ndarray) -> np.ndarray:
    """A 2-D array BLAS reads in place (one unit stride, aligned), else a C-ordered copy:
    NumPy's matmul would otherwise copy it on every call."""
    itemsize = array.itemsize
    rows, cols = array.shape
    s0, s1 = array.strides
    readable = array.flags.aligned and (
        (s1 == itemsize and s0 % itemsize == 0 and s0 >= max(cols, 1) * itemsize)
        or (s0 == itemsize and s1 % itemsize == 0 and s1 >= max(rows, 1) * itemsize)
        or array.flags.c_contiguous or array.flags.f_contiguous
    )
    return array if readable else np.ascontiguousarray(array)


def _merged(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """`array` reshaped to `shape` as a view, or None when that needs a copy."""
    try:
        return np.reshape(array, shape, copy=False)
    except ValueError:
        return None
    except TypeError:  # NumPy < 2.1: no copy= keyword
        view = array.view()
        try:
            view.shape = shape
        except AttributeError:
            return None
        return view


def _rows_of(array: np.ndarray, n_rows: int, width: int) -> Callable[[int, int], np.ndarray]:
    """A function (start, stop) -> rows start:stop of `array` seen as (n_rows, width): a
    view when its leading axes merge without a copy (any C- or F-ordered array of at most
    2 dimensions, a C-ordered N-D one), else a gathered copy of those rows only."""
    merged = _merged(array, (n_rows, width))
    if merged is not None:
        rows = merged
        return lambda start, stop: rows[start:stop]
    row_shape = array.shape[:-1]
    return lambda start, stop: array[np.unravel_index(np.arange(start, stop), row_shape)]


def _total(values: np.ndarray) -> float:
    """The sum of float64 values, exactly rounded when they are finite (math.fsum),
    else as IEEE arithmetic has it (inf, NaN)."""
    if np.isfinite(values).all():
        try:
            return math.fsum(values.tolist())
        except OverflowError:  # finite terms whose sum overflows
            pass
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.sum(values))


def _row_scale(args: LinearLossArgs, kept: np.ndarray) -> tuple[np.ndarray | None, float]:
    """The sample weights the chunks run with, (N,) float64 or None, and the mean's W
    (1 for "sum" and "none"): s_n / W for a mean (NaN when W is 0), s_n otherwise."""
    s = None if args.sample_weight is None else args.sample_weight.reshape(args.n_rows)
    if args.options.reduction != "mean":
        return s, 1.0
    if args.probabilities:
        normaliser = float(args.n_rows) if s is None else _total(s)
    elif s is None and args.weight is None:
        normaliser = float(np.count_nonzero(kept))
    else:
        per_row = np.ones(args.n_rows) if s is None else s.copy()
        if args.weight is not None:
            per_row *= args.weight[np.where(kept, args.target.reshape(args.n_rows), 0)]
        normaliser = _total(per_row[kept])
    divided = np.ones(args.n_rows) if s is None else s
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scaled = divided / normaliser if normaliser != 0 else np.full(args.n_rows, np.nan)
    return scaled, normaliser


# ---- the GEMMs of the loop ----------------------------------------------------------------


class NumpyGemms:
    """The chunk loop's BLAS work through NumPy's matmul (its BLAS), on the validated arrays.

    A backend of the loop (`_run`) provides: `buffer` (the reused (rows, V) logits buffer, a
    NumPy array of the kernel's dtype), `logits(start, stop, out)` (H_c @ W.T + b into out),
    `backward(start, stop, grad)` (dH[chunk], dW and db from the chunk's gradient G, which
    it may overwrite) and `gradients()` (the returned tuple: dH, dW[, db]).
    softmaxloss.torch has another (PyTorch's matmul, addmm_ into dW, bf16/f16 weights)."""

    def __init__(self, args: LinearLossArgs, plan: ChunkPlan, with_grad: bool) -> None:
        n_rows, n_classes, n_features, dtype = args.n_rows, args.n_classes, args.n_features, args.dtype
        self.plan, self.n_rows, self.n_features, self.n_classes = plan, n_rows, n_features, n_classes
        if with_grad and n_features and plan.rows < n_rows and not plan.weight_block:
            raise ValueError("NumpyGemms needs a plan with dW blocks (plan_chunks' scratch_row=None)")
        self.hidden_rows = _rows_of(_native(args.hidden), n_rows, n_features)
        self.weight = _blas_ready(_native(args.linear_weight))
        self.bias = None if args.linear_bias is None else _native(args.linear_bias)
        self.buffer = np.empty((plan.rows, n_classes), dtype)
        self.grad_hidden = self.grad_weight = self.scratch = self.ones = self.bias_total = None
        self.h: np.ndarray | None = None
        if with_grad:
            self.grad_hidden = np.empty((*args.row_shape, n_features), dtype)
            self.grad_weight = np.zeros((n_classes, n_features), dtype)
            if plan.scratch_rows:
                self.scratch = np.empty(plan.scratch_rows * n_features, dtype)
            if self.bias is not None:
                self.bias_total = np.zeros(n_classes)
                self.ones = np.ones(plan.rows, dtype)

    def logits(self, start: int, stop: int, out: np.ndarray) -> None:
        self.h = h = _blas_ready(self.hidden_rows(start, stop))
        np.matmul(h, self.weight.T, out=out)
        if self.bias is not None:
            np.add(out, self.bias, out=out)

    def backward(self, start: int, stop: int, grad: np.ndarray) -> None:
        assert self.grad_hidden is not None and self.grad_weight is not None and self.h is not None
        h, weight, scratch, plan, n_features = self.h, self.weight, self.scratch, self.plan, self.n_features
        grad_hidden_rows = self.grad_hidden.reshape(self.n_rows, n_features)
        if scratch is None:  # no features: nothing to compute
            np.matmul(grad, weight, out=grad_hidden_rows[start:stop])
        else:
            transposed = scratch[: n_features * (stop - start)].reshape(n_features, stop - start)
            np.matmul(weight.T, grad.T, out=transposed)
            grad_hidden_rows[start:stop] = transposed.T
        grad_weight = self.grad_weight
        if start == 0:
            np.matmul(grad.T, h, out=grad_weight)
        elif scratch is not None and plan.weight_block:
            block = scratch[: plan.weight_block * n_features].reshape(plan.weight_block, n_features)
            for first in range(0, self.n_classes, plan.weight_block):
                last = min(self.n_classes, first + plan.weight_block)
                part = block[: last - first]
                np.matmul(grad[:, first:last].T, h, out=part)
                np.add(grad_weight[first:last], part, out=grad_weight[first:last])
        if self.bias_total is not None and self.ones is not None:
            self.bias_total += np.matmul(self.ones[: stop - start], grad)

    def gradients(self) -> tuple[np.ndarray, ...]:
        assert self.grad_hidden is not None and self.grad_weight is not None
        grads = [self.grad_hidden, self.grad_weight]
        if self.bias_total is not None:
            grads.append(self.bias_total.astype(self.buffer.dtype))
        return tuple(grads)


Backend = Callable[[LinearLossArgs, ChunkPlan, bool], Any]


# ---- the loop over chunks -----------------------------------------------------------------


def _run(args: LinearLossArgs, with_grad: bool, backend: Backend = NumpyGemms,
         scratch_row: float | None = None) -> tuple[Any, tuple[Any, ...]]:
    """The loss (as `_loss` returns it) and, with_grad, the backend's gradients.
    scratch_row: the backend's scratch per row of a chunk (see `plan_chunks`; None: NumPy's)."""
    n_rows, n_classes, n_features = args.n_rows, args.n_classes, args.n_features
    plan = plan_chunks(n_rows, n_classes, n_features, args.dtype.itemsize, with_grad=with_grad,
                       chunk_size=args.chunk_size, memory_budget=args.memory_budget, scratch_row=scratch_row)
    threads = _threads(args.n_threads)
    # Each chunk's kernel call sums its rows; the mean's 1/W is in the sample weights.
    kernel_options = dataclasses.replace(args.options, reduction="sum")

    if args.probabilities:
        kept = np.ones(n_rows, dtype=bool)
        target_dtype = args.target.dtype if args.target.dtype in KERNEL_DTYPES else np.dtype(np.float64)
        probability_rows = _rows_of(args.target, n_rows, n_classes)

        def target_rows(start: int, stop: int) -> np.ndarray:
            return probability_rows(start, stop).astype(target_dtype, copy=False)[:, None, :]
    else:
        indices = args.target.reshape(n_rows)
        kept = indices != args.target_ignore_index

        def target_rows(start: int, stop: int) -> np.ndarray:
            return indices[start:stop, None]

    sample_weight, normaliser = _row_scale(args, kept)
    class_weight = None if args.weight is None else np.ascontiguousarray(args.weight)
    row_loss = np.empty((n_rows, 1))
    gemms = backend(args, plan, with_grad)
    buffer = gemms.buffer

    for start in range(0, n_rows, plan.rows):
        stop = min(n_rows, start + plan.rows)
        logits = buffer[: stop - start]
        gemms.logits(start, stop, logits)
        totals = _kernel_totals(
            logits[:, None, :], target_rows(start, stop), class_weight,
            None if sample_weight is None else sample_weight[start:stop, None],
            args.target_ignore_index, args.probabilities, kernel_options, row_loss[start:stop],
            logits[:, None, :] if with_grad else None, threads,
        )
        if isinstance(totals, int):  # every class was checked up front: they changed since
            raise class_out_of_range(args.target, start + totals, n_classes, args.options.ignore_index)
        if with_grad:
            gemms.backward(start, stop, logits)

    loss = _loss(row_loss[:, 0], normaliser, args)
    return loss, (gemms.gradients() if with_grad else ())


def _loss(row_loss: np.ndarray, normaliser: float, args: LinearLossArgs) -> Any:
    """The returned loss from the per-row losses (those of a mean already divided by W)."""
    reduction = args.options.reduction
    if reduction == "none":
        with np.errstate(over="ignore"):
            return row_loss.reshape(args.row_shape).astype(args.dtype)[()]
    if reduction == "mean" and normaliser == 0:  # a mean over nothing (no rows, all ignored)
        return args.dtype.type(math.nan)
    return _as_result(_total(row_loss), args.dtype)


def _check(
    hidden: Any, linear_weight: Any, target: Any, linear_bias: Any, weight: Any, sample_weight: Any,
    ignore_index: Any, reduction: Any, label_smoothing: Any, z_loss: Any, chunk_size: Any,
    memory_budget: Any, n_threads: Any,
) -> LinearLossArgs:
    return check_linear_cross_entropy_call(
        hidden, linear_weight, target,
        dict(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, ignore_index=ignore_index),
        linear_bias=linear_bias, weight=weight, sample_weight=sample_weight, chunk_size=chunk_size,
        memory_budget=memory_budget, n_threads=n_threads,
    )


def linear_cross_entropy(
    hidden: Any,
    linear_weight: Any,
    target: Any,
    *,
    linear_bias: Any = None,
    weight: Any = None,
    sample_weight: Any = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    chunk_size: int | None = None,
    memory_budget: float | None = None,
    n_threads: int | None = None,
) -> Any:
    """`cross_entropy(hidden @ linear_weight.T + linear_bias, target, ...)` without the
    N x V logits: computed `chunk_size` rows at a time (PyTorch's F.linear_cross_entropy).

    hidden (..., D) and linear_weight (V, D): both float32 or both float64; linear_bias
    None or (V,) of their dtype. target: class indices of hidden's shape without its last
    axis, or probabilities of that shape + (V,). weight, sample_weight, ignore_index,
    reduction, label_smoothing, z_loss: as `cross_entropy`. chunk_size: rows per chunk;
    or (not both) memory_budget: the bytes of working memory the chunks may use (default:
    at most 1/8 of the N x V logits and at most 256 MiB; at least one row per chunk).
    n_threads: the cross-entropy kernel's threads (BLAS uses NumPy's own: set them with
    OPENBLAS_NUM_THREADS or threadpoolctl). A linear_weight in non-native byte order or a
    layout BLAS cannot read is copied once. Returns a NumPy scalar (mean/sum) or the
    per-row losses (none), in hidden's dtype.
    """
    args = _check(hidden, linear_weight, target, linear_bias, weight, sample_weight, ignore_index,
                  reduction, label_smoothing, z_loss, chunk_size, memory_budget, n_threads)
    loss, _ = _run(args, with_grad=False)
    return loss


def linear_cross_entropy_with_grad(
    hidden: Any,
    linear_weight: Any,
    target: Any,
    *,
    linear_bias: Any = None,
    weight: Any = None,
    sample_weight: Any = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    chunk_size: int | None = None,
    memory_budget: float | None = None,
    n_threads: int | None = None,
) -> tuple[Any, ...]:
    """`linear_cross_entropy` and its gradients: (loss, grad_hidden, grad_linear_weight),
    and grad_linear_bias last when linear_bias is given.

    With G = d(loss)/d(logits) (as `cross_entropy_with_grad`'s; for reduction="none" the
    gradient of the sum of the per-row losses): grad_hidden = G @ linear_weight (hidden's
    shape), grad_linear_weight = G.T @ hidden (V, D), grad_linear_bias = G summed over the
    rows (V,), all in hidden's dtype. The gradients are the only large allocations beyond
    the working memory: a chunk of logits, overwritten in place by its gradient, and a
    scratch buffer (about a quarter of that; at least the chunk's rows x D) through which
    each chunk's part of grad_hidden and grad_linear_weight passes, together within
    memory_budget (see `linear_cross_entropy`).
    """
    args = _check(hidden, linear_weight, target, linear_bias, weight, sample_weight, ignore_index,
                  reduction, label_smoothing, z_loss, chunk_size, memory_budget, n_threads)
    loss, grads = _run(args, with_grad=True)
    return (loss, *grads)

"""Cross-entropy of Dask arrays chunked along the rows, the classes, or both.

    import softmaxloss.dask as smd
    loss = smd.cross_entropy(logits, target)                 # a 0-d dask array, lazy
    loss, grad = smd.cross_entropy_with_grad(logits, target) # grad: the logits' chunks
    loss.compute(), grad.sum().compute()

`softmaxloss.cross_entropy`'s arguments and semantics (every option: class weights,
ignore_index, label smoothing, z-loss, sample weights, probability targets, the three
reductions), for logits that need not fit in one machine's memory: `logits` a dask array
(anything else is wrapped as one chunk) with its class axis `axis` in any number of
chunks; `target` and `sample_weight` dask or NumPy arrays, rechunked to the logits' rows
(probability targets to the logits' chunks); `weight` a NumPy array of all C classes.

The graph (`softmaxloss._shards` has the math):
1. per chunk, the kernel's partial statistics of its rows over its classes (six float64
   per row: max, the two parts of sum exp(x - max), the smoothing gap, the weights' total,
   the label's logit), shifted by the chunk's own max;
2. per block of rows, a tree reduction over the class chunks of the online-softmax merge
   (`split_every` chunks' statistics at a time), giving each row's max and sum;
3. per block of rows, the per-row losses and the gradient's coefficients from the merged
   statistics and the mean's normaliser W (a sum over all rows of the targets' weights);
4. the loss: the per-row losses, or their sum (over W for "mean");
5. with the gradient, per chunk again: exp(x - max) and the coefficients, written into a
   chunk of the logits' chunk shape and dtype.
So the logits are read twice (steps 1 and 5), every task holds at most one chunk of the
logits and one of the gradient, and the per-row intermediates are O(rows) float64 (six or
eleven per row; those of `split_every` class chunks at a time in the tree). The graph has
about (row blocks) x (2 x class chunks + class chunks / (split_every - 1) + 2) tasks.

Lazy: nothing is computed until the result is. Shapes, dtypes and options are checked
when the graph is built; the class indices' values too when `target` is a NumPy array
(a dask target's are checked in its tasks: a bad class raises at compute time).
`n_threads` is the kernels' threads per task (None: 1, as the scheduler runs tasks in
parallel; a dask worker sets OMP_NUM_THREADS=1 too).
"""

from __future__ import annotations

import math
from typing import Any

import dask.array as da
import numpy as np

from . import _shards
from ._validation import DEFAULT_IGNORE_INDEX, float_dtypes, normalize_axis

__all__ = ["cross_entropy", "cross_entropy_with_grad"]

_ROWS = "abcdefghijklmnopqrstuvwxy"  # the row axes' indices in blockwise; "z": the classes


def _flat(block: np.ndarray, width: int | None = None) -> np.ndarray:
    return block.reshape(-1) if width is None else block.reshape(-1, width)


def _as_index(block: np.ndarray, spec: _shards.Spec) -> np.ndarray:
    """A block of class indices as the kernels' int64, ignored rows marked (values checked
    by `_row_weights_task`)."""
    t = np.asarray(block)
    ignore_index = spec.options.ignore_index
    if t.dtype.kind == "f" or t.dtype == np.uint64 or not (-(2**63) <= ignore_index < 2**63):
        with np.errstate(invalid="ignore"):
            return np.where(t == ignore_index, spec.target_ignore_index, np.where(np.isfinite(t), t, -1) if t.dtype.kind == "f" else t).astype(np.int64)
    return t.astype(np.int64, copy=False)


def _stats_task(x: np.ndarray, t: np.ndarray, classes: np.ndarray, spec: _shards.Spec, threads: int) -> np.ndarray:
    width = x.shape[-1]
    target = _flat(t, width).astype(np.float64, copy=False) if spec.probabilities else _as_index(_flat(t), spec)
    stats = _shards.block_stats(_flat(x, width), target, int(classes[0]), spec, n_threads=threads)
    return stats.reshape(x.shape[:-1] + (len(_shards.STATS),))


def _merge_task(block: np.ndarray) -> np.ndarray:
    n = len(_shards.STATS)
    k = block.shape[-1] // n
    stacked = np.moveaxis(block.reshape(-1, k, n), 1, 0)
    return _shards.merge(stacked).reshape(block.shape[:-1] + (n,))


def _row_weights_task(t: np.ndarray, s: np.ndarray | None, spec: _shards.Spec) -> np.ndarray:
    """The rows' shares of W (class indices; the values checked here, where they are read)."""
    target = _shards.index_target(_flat(t), spec)  # raises for a class out of range
    weights = _shards.row_weights(target, None if s is None else _flat(s).astype(np.float64), spec)
    return weights.reshape(t.shape)


def _terms_task(merged: np.ndarray, t: np.ndarray | None, s: np.ndarray | None, normaliser: np.ndarray,
                spec: _shards.Spec) -> np.ndarray:
    n = len(_shards.STATS)
    shape = merged.shape[:-1]
    target = np.empty(0) if t is None else _as_index(_flat(t), spec)
    divide_by = _shards.divisor(float(normaliser), spec.options.reduction)
    row_loss, coefs = _shards.row_terms(merged.reshape(-1, n), target,
                                        None if s is None else _flat(s).astype(np.float64), spec, divide_by)
    return np.concatenate([row_loss[:, None], coefs], axis=1).reshape(shape + (1 + _shards.N_COEFS,))


def _grad_task(x: np.ndarray, terms: np.ndarray, t: np.ndarray, classes: np.ndarray, normaliser: np.ndarray,
               spec: _shards.Spec, threads: int) -> np.ndarray:
    width = x.shape[-1]
    target = _flat(t, width) if spec.probabilities else _as_index(_flat(t), spec)
    coefs = terms.reshape(-1, 1 + _shards.N_COEFS)[:, 1:]
    divide_by = _shards.divisor(float(normaliser), spec.options.reduction)
    grad = _shards.block_grad(_flat(x, width), target, int(classes[0]), coefs, spec, divide_by, n_threads=threads)
    with np.errstate(over="ignore"):
        return grad.reshape(x.shape).astype(spec.dtypes.result, copy=False)


def _row_loss_task(terms: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    with np.errstate(over="ignore"):
        return terms[..., 0].astype(dtype)


def _reduce_task(total: np.ndarray, normaliser: np.ndarray, reduction: str, result: np.dtype[Any]) -> np.ndarray:
    value = _shards.reduced(float(total), float(normaliser), reduction)
    with np.errstate(over="ignore"):
        return np.asarray(value, dtype=result)


def _dask_array(value: Any, name: str) -> Any:
    array = value if isinstance(value, da.Array) else da.asarray(np.asarray(value))
    if any(math.isnan(n) for n in array.shape):
        raise ValueError(f"{name} has unknown chunk sizes (shape {array.shape}); call compute_chunk_sizes() first")
    return array


def _graph(logits: Any, target: Any, axis: Any, weight: Any, sample_weight: Any, options: dict[str, Any],
           split_every: Any, n_threads: Any, with_grad: bool) -> tuple[Any, Any]:
    x = _dask_array(logits, "logits")
    dtypes = float_dtypes(np.dtype(x.dtype))
    if x.ndim == 0:
        raise ValueError("logits must have at least one dimension (the class axis); got a scalar")
    if x.ndim > len(_ROWS):
        raise ValueError(f"logits has {x.ndim} dimensions; at most {len(_ROWS)} are supported")
    axis = normalize_axis(axis, x.ndim)
    n_classes = x.shape[axis]
    if n_classes == 0:
        raise ValueError(f"logits has zero classes (shape {x.shape}, class axis {axis})")
    if split_every is None:
        split_every = 8
    if isinstance(split_every, bool) or not isinstance(split_every, int) or split_every < 2:
        raise ValueError(f"split_every must be an integer >= 2 (class chunks merged at a time); got {split_every!r}")
    threads = _shards.threads(1 if n_threads is None else n_threads)
    t = _dask_array(target, "target")
    row_shape = x.shape[:axis] + x.shape[axis + 1:]
    probabilities = t.dtype.kind == "f" and t.shape == x.shape
    if not probabilities and t.shape != row_shape:
        kind = "of probabilities" if t.dtype.kind == "f" and t.ndim == x.ndim else "of class indices"
        expected = x.shape if kind == "of probabilities" else row_shape
        raise ValueError(f"target {kind} has shape {t.shape}; logits of shape {x.shape} with class axis {axis} "
                         f"need shape {expected}")
    if t.dtype.kind not in "iuf":
        raise TypeError(f"target must hold integer class indices or float probabilities; got dtype {t.dtype}")
    spec = _shards.make_spec(n_classes, dtypes.compute, probabilities, weight, options, np.dtype(t.dtype))
    if not probabilities and not isinstance(target, da.Array):
        _shards.index_target(np.asarray(target), spec)  # a bad class: now, before any work
    s = None
    if sample_weight is not None:
        s = _dask_array(sample_weight, "sample_weight")
        if s.shape != row_shape:
            raise ValueError(f"sample_weight has shape {s.shape}; expected one weight per row, shape {row_shape}")
        float_dtypes(np.dtype(s.dtype), "sample_weight")

    xm = da.moveaxis(x, axis, -1)
    n_rows = xm.ndim - 1
    rows = _ROWS[:n_rows]
    class_chunks = xm.chunks[-1]
    if probabilities:
        t = da.moveaxis(t, axis, -1).rechunk(xm.chunks)
        t_index = rows + "z"
    else:
        t = t.rechunk(xm.chunks[:-1])
        t_index = rows
    if s is not None:
        s = s.rechunk(xm.chunks[:-1])
    classes = da.arange(n_classes, chunks=(class_chunks,))
    n_stats = len(_shards.STATS)

    # 1. each chunk's statistics; 2. their tree merge along the classes
    stats = da.blockwise(_stats_task, rows + "z", xm, rows + "z", t, t_index, classes, "z",
                         spec=spec, threads=threads, adjust_chunks={"z": n_stats}, dtype=np.float64,
                         meta=np.empty((0,) * xm.ndim))
    while stats.numblocks[-1] > 1:
        blocks = stats.numblocks[-1]
        groups = [min(split_every, blocks - i) * n_stats for i in range(0, blocks, split_every)]
        stats = stats.rechunk({n_rows: tuple(groups)}).map_blocks(
            _merge_task, chunks=stats.chunks[:-1] + ((n_stats,) * len(groups),), dtype=np.float64)
    # 3. the normaliser, the per-row losses and the gradient's coefficients
    if probabilities:  # W: the number of rows, or the sum of the sample weights
        normaliser = da.asarray(float(math.prod(row_shape))) if s is None else s.astype(np.float64).sum(split_every=split_every)
        t_rows: tuple[Any, Any] = (None, None)
    else:
        row_weights = da.blockwise(_row_weights_task, rows, t, rows, s, None if s is None else rows,
                                   spec=spec, dtype=np.float64, meta=np.empty((0,) * n_rows))
        normaliser = row_weights.sum(split_every=split_every)
        t_rows = (t, rows)
    terms = da.blockwise(_terms_task, rows + "k", stats, rows + "k", *t_rows, s, None if s is None else rows,
                         normaliser, "", spec=spec, adjust_chunks={"k": 1 + _shards.N_COEFS},
                         dtype=np.float64, concatenate=True, meta=np.empty((0,) * xm.ndim))
    # 4. the loss
    reduction = spec.options.reduction
    row_loss = terms.map_blocks(_row_loss_task, dtypes.result, drop_axis=n_rows, dtype=dtypes.result)
    if reduction == "none":
        loss = row_loss
    else:
        total = terms[..., 0].sum(split_every=split_every)
        loss = da.blockwise(_reduce_task, "", total, "", normaliser, "", reduction=reduction, result=dtypes.result,
                            dtype=dtypes.result, meta=np.empty((), dtypes.result))
    if not with_grad:
        return loss, None
    # 5. the gradient, chunk by chunk
    grad = da.blockwise(_grad_task, rows + "z", xm, rows + "z", terms, rows + "k", t, t_index, classes, "z",
                        normaliser, "", spec=spec, threads=threads, dtype=dtypes.result, concatenate=True,
                        meta=np.empty((0,) * xm.ndim, dtypes.result))
    return loss, da.moveaxis(grad, -1, axis)


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
    split_every: int | None = None,
    n_threads: int | None = None,
) -> Any:
    """`softmaxloss.cross_entropy` of dask arrays, lazily: a 0-d dask array (mean, sum)
    or per-row losses chunked as the logits' rows (none), of the logits' dtype. One pass
    over the logits. split_every: class chunks merged at a time in the tree (default 8)."""
    options = dict(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, ignore_index=ignore_index)
    loss, _ = _graph(logits, target, axis, weight, sample_weight, options, split_every, n_threads, False)
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
    split_every: int | None = None,
    n_threads: int | None = None,
) -> tuple[Any, Any]:
    """`cross_entropy` and its gradient with respect to the logits, both lazy: the
    gradient a dask array with the logits' shape, chunks and dtype (for reduction="none",
    the gradient of the sum of the per-row losses). Two passes over the logits."""
    options = dict(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, ignore_index=ignore_index)
    return _graph(logits, target, axis, weight, sample_weight, options, split_every, n_threads, True)

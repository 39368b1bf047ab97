"""Vocabulary-parallel cross-entropy over `torch.distributed`: the loss of logits whose
classes are split across ranks (tensor parallelism), equal to the single-process loss.

    import softmaxloss.distributed as smd
    # rank r holds the classes [start_r, start_r + W_r) of every row, W_r may differ
    loss = smd.vocab_parallel_cross_entropy(local_logits, target, group=None)
    loss.backward()                        # local_logits.grad: the gradient of its classes

Every rank passes its own block of the logits (rows x its classes; class axis `axis`, last
by default) and the same replicated arguments: `target` (class indices among all C
classes, the rows' shape; or, for probability targets, the rank's block of the target
probabilities, the local logits' shape), `weight` (all C class weights), `sample_weight`
and the options of `softmaxloss.cross_entropy`, all of which work: class weights,
`ignore_index` (also with class weights), exact label smoothing (eps/C over all C
classes, not each rank's own), z-loss, sample weights, probability targets, and the three
reductions with `mean` normalised over all rows (the loss is the same on every rank).

Communication (`softmaxloss._shards` has the math): per call one all-gather of each rank's
class range (two int64 and a flag, for the checks: the ranks' blocks must tile [0, C) and
every rank's arguments must be valid, else every rank raises); then per row one all-reduce
(MAX) of the row maxima, in the logits' dtype, and one all-reduce (SUM) of the packed
float64 sums (index targets: the two parts of sum exp(x - max), the label's logit, and the
smoothing term when label_smoothing != 0; probabilities: the two parts, the smoothing-
weighted gap and the targets' total). exchange="allgather" instead all-gathers each
rank's six per-row statistics once (one round, world_size times the data) and merges them
locally (online softmax). The backward pass communicates nothing: the forward pass
computes this rank's gradient (the exponentials written once, then scaled in place) and
backward scales it by the upstream gradient. Ignored rows get exactly 0 gradient.

The collectives run on the logits' device and nothing is backend-specific (gloo on CPU;
NCCL would serve CUDA tensors), but the kernels are CPU kernels: the logits must be CPU
tensors. Differentiable with respect to the logits only. float16 and bfloat16 are
computed in float32. Every rank must call with the same replicated arguments: a rank
whose target differs gives a wrong loss, which is not checked (it would cost a
collective of the targets).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from . import _shards
from ._validation import DEFAULT_IGNORE_INDEX, LossOptions

__all__ = ["RefusedByAnotherRank", "vocab_parallel_cross_entropy"]

_NATIVE = (torch.float32, torch.float64)
_UPCAST = (torch.float16, torch.bfloat16)
_EXCHANGES = ("allreduce", "allgather")


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    array: np.ndarray = tensor.detach().resolve_conj().resolve_neg().numpy()
    return array


class RefusedByAnotherRank(RuntimeError):
    """Raised on the ranks whose own arguments are fine when another rank of the group
    refused its arguments (that rank raises its own TypeError or ValueError)."""


def _local_checks(local_logits: Any, target: Any, weight: Any, sample_weight: Any, axis: Any,
                  options: dict[str, Any], exchange: Any) -> tuple[LossOptions, int]:
    """What each rank can check alone, before any collective (TypeError / ValueError)."""
    if not isinstance(local_logits, torch.Tensor):
        raise TypeError(f"local_logits must be a torch.Tensor, got {type(local_logits).__name__}")
    if local_logits.dtype not in _NATIVE + _UPCAST:
        raise TypeError(
            f"local_logits has dtype {local_logits.dtype}; expected float32 or float64 "
            "(float16 and bfloat16 are computed in float32)")
    for name, tensor in (("local_logits", local_logits), ("target", target), ("weight", weight),
                         ("sample_weight", sample_weight)):
        if tensor is not None and not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(tensor).__name__}")
        if tensor is not None and tensor.device.type != "cpu":
            raise ValueError(
                f"{name} is on {tensor.device}: softmaxloss's kernels run on CPU tensors only")
    if local_logits.ndim == 0:
        raise ValueError("local_logits must have at least one dimension (the class axis); got a scalar")
    if exchange not in _EXCHANGES:
        raise ValueError(f"exchange must be one of {', '.join(map(repr, _EXCHANGES))}; got {exchange!r}")
    checked = LossOptions.checked(**options)
    if isinstance(axis, bool) or not isinstance(axis, int) or not -local_logits.ndim <= axis < local_logits.ndim:
        raise ValueError(f"axis {axis!r} is out of range for local_logits of {local_logits.ndim} dimensions")
    axis %= local_logits.ndim
    row_shape = tuple(local_logits.shape[:axis] + local_logits.shape[axis + 1:])
    if target.dtype.is_floating_point and tuple(target.shape) == tuple(local_logits.shape):
        if checked.ignore_index != DEFAULT_IGNORE_INDEX:
            raise ValueError(
                "ignore_index applies to class-index targets only; got probability "
                f"targets with ignore_index={checked.ignore_index}")
    elif tuple(target.shape) != row_shape:
        raise ValueError(
            f"target has shape {tuple(target.shape)}; local_logits of shape {tuple(local_logits.shape)} "
            f"with class axis {axis} need class indices of shape {row_shape}, or this rank's "
            "probabilities of the local logits' shape")
    if sample_weight is not None and tuple(sample_weight.shape) != row_shape:
        raise ValueError(
            f"sample_weight has shape {tuple(sample_weight.shape)}; expected one weight per row, "
            f"shape {row_shape}")
    return checked, axis


def _extents(width: int, vocab_start: Any, error: Exception | None, group: Any,
             device: torch.device) -> tuple[int, int]:
    """(this rank's first class, C) from every rank's (start, width, refused flag): one
    all-gather. Each rank's block must be [start, start + width), tiling [0, C). A rank
    with an `error` (its own bad arguments) raises it, the others RefusedByAnotherRank."""
    if error is None and vocab_start is not None and (
            isinstance(vocab_start, bool) or not isinstance(vocab_start, int) or vocab_start < 0):
        error = ValueError(f"vocab_start must be None or a non-negative integer; got {vocab_start!r}")
    start = -1 if vocab_start is None or error is not None else vocab_start
    mine = torch.tensor([start, width, int(error is not None)], dtype=torch.int64, device=device)
    size = dist.get_world_size(group)
    everyone = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(everyone, mine, group=group)
    table = torch.stack(everyone).cpu().tolist()
    if error is not None:
        raise error
    failed = [rank for rank, (_, _, flag) in enumerate(table) if flag]
    if failed:
        raise RefusedByAnotherRank(f"rank(s) {failed} of the group refused their arguments")
    given = [s >= 0 for s, _, _ in table]
    if any(given) and not all(given):
        raise ValueError("vocab_start must be given on every rank of the group or on none")
    if not any(given):  # the ranks' blocks in rank order
        starts = np.cumsum([0] + [w for _, w, _ in table[:-1]]).tolist()
        table = [[s, w, 0] for s, (_, w, _) in zip(starts, table)]
    end = 0
    for lo, hi in sorted((s, s + w) for s, w, _ in table):
        if lo != end:
            raise ValueError(
                f"the ranks' class blocks [vocab_start, vocab_start + width) must tile [0, C) "
                f"without gaps or overlaps; got {[(s, s + w) for s, w, _ in table]} (by rank)")
        end = hi
    if end == 0:
        raise ValueError("the ranks' class blocks hold zero classes in all")
    return int(table[dist.get_rank(group)][0]), end


class _VocabParallelCrossEntropy(torch.autograd.Function):  # type: ignore[misc, unused-ignore]
    @staticmethod
    def forward(ctx: Any, local_logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                sample_weight: torch.Tensor | None, call: dict[str, Any]) -> torch.Tensor:  # type: ignore[override, unused-ignore]
        group, options, axis = call["group"], call["options"], call["axis"]
        device = local_logits.device
        moved = local_logits.movedim(axis, -1)
        width = moved.shape[-1]
        row_shape = tuple(moved.shape[:-1])
        x_torch = moved.reshape(-1, width)
        if x_torch.dtype in _UPCAST:
            x_torch = x_torch.float()
        x = _numpy(x_torch)
        probabilities = target.dtype.is_floating_point and tuple(target.shape) == tuple(local_logits.shape)
        c0, n_classes = _extents(width, call["vocab_start"], None, group, device)

        # Checks that need C: on replicated arguments, so every rank raises alike; a flag in
        # the max all-reduce makes every rank raise if one does.
        error: Exception | None = None
        try:
            spec = _shards.make_spec(n_classes, x.dtype, probabilities,
                                     None if weight is None else _numpy(weight), options,
                                     _numpy(target).dtype)
            if probabilities:
                t = _numpy((target.float() if target.dtype in _UPCAST else target).movedim(axis, -1).reshape(-1, width))
            else:
                t = _shards.index_target(_numpy(target).reshape(-1), spec)
            s = _shards.sample_weights(None if sample_weight is None else _numpy(sample_weight).reshape(-1), x.shape[0])
            n_threads = _shards.threads(call["n_threads"])
        except (TypeError, ValueError) as e:
            error = e
        want_grad = ctx.needs_input_grad[0]
        if call["exchange"] == "allreduce":
            top = np.zeros(x.shape[0] + 1, x.dtype)
            if error is None:
                top[:-1] = _shards.block_max(x)
            top[-1] = 1.0 if error is not None else 0.0
            top_t = torch.from_numpy(top).to(device)
            dist.all_reduce(top_t, op=dist.ReduceOp.MAX, group=group)
            top = top_t.cpu().numpy()
            if top[-1] != 0.0:
                if error is not None:
                    raise error
                raise RefusedByAnotherRank("another rank of the group refused its arguments")
            assert error is None
            row_max = top[:-1].astype(np.float64)
            grad = np.empty(x.shape, x.dtype) if want_grad else None
            stats = _shards.block_stats(x, t, c0, spec, shift=row_max, exp_out=grad, n_threads=n_threads)
            packed = torch.from_numpy(np.ascontiguousarray(stats[:, _shards.packed_columns(spec)])).to(device)
            dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
            merged = _shards.unpack(row_max, packed.cpu().numpy(), spec)
        else:
            stats = np.zeros((x.shape[0] + 1, len(_shards.STATS)))
            if error is None:
                stats[:-1] = _shards.block_stats(x, t, c0, spec, n_threads=n_threads)
            stats[-1, 0] = 1.0 if error is not None else 0.0
            mine = torch.from_numpy(stats).to(device)
            everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
            dist.all_gather(everyone, mine, group=group)
            gathered = torch.stack(everyone).cpu().numpy()
            if gathered[:, -1, 0].any():
                if error is not None:
                    raise error
                raise RefusedByAnotherRank("another rank of the group refused its arguments")
            merged = _shards.merge(gathered[:, :-1])
            grad = None

        normaliser = float(_shards.row_weights(t, s, spec).sum())
        divide_by = _shards.divisor(normaliser, spec.options.reduction)
        row_loss, coefs = _shards.row_terms(merged, t, s, spec, divide_by)
        if want_grad:
            if grad is None:
                grad = _shards.block_grad(x, t, c0, coefs, spec, divide_by, n_threads=n_threads)
            else:
                _shards.block_grad(grad, t, c0, coefs, spec, divide_by, out=grad, from_exp=True,
                                   n_threads=n_threads)
            g = torch.from_numpy(grad).reshape(*row_shape, width).movedim(-1, axis).to(local_logits.dtype)
            kept = None if probabilities else torch.from_numpy(t != spec.target_ignore_index).reshape(row_shape)
            ctx.save_for_backward(g)
            ctx.kept = kept
            ctx.axis = axis
            ctx.per_row = spec.options.reduction == "none"
        reduction = spec.options.reduction
        if reduction == "none":
            loss = torch.from_numpy(row_loss.reshape(row_shape))
        else:
            loss = torch.tensor(_shards.reduced(float(row_loss.sum()), normaliser, reduction), dtype=torch.float64)
        return loss.to(local_logits.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override, unused-ignore]
        (g,) = ctx.saved_tensors
        if ctx.per_row:
            upstream = grad_output.unsqueeze(ctx.axis)
        else:
            upstream = grad_output
            if not torch.is_grad_enabled() and bool((grad_output == 1).all()):
                return g, None, None, None, None
        result = g * upstream
        if ctx.kept is not None:  # ignored rows: exactly 0, also under a NaN or inf upstream
            result = result.masked_fill(~ctx.kept.unsqueeze(ctx.axis), 0)
        return result, None, None, None, None


def vocab_parallel_cross_entropy(
    local_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    group: Any = None,
    vocab_start: int | None = None,
    axis: int = -1,
    weight: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    exchange: str = "allreduce",
    n_threads: int | None = None,
) -> torch.Tensor:
    """The cross-entropy of logits whose classes are split across the ranks of `group`
    (the default process group if None), equal on every rank to
    `softmaxloss.cross_entropy` of the whole logits.

    local_logits: this rank's classes [vocab_start, vocab_start + W) of every row, class
    axis `axis`; vocab_start None: the ranks' blocks in rank order (rank 0 first). target:
    class indices among all C classes (replicated), or this rank's block of probability
    targets. weight: all C class weights (replicated). The other keywords as
    `softmaxloss.cross_entropy`; exchange "allreduce" (two all-reduces per call) or
    "allgather" (one all-gather of six float64 per row and rank). Returns the loss as a
    tensor of the logits' dtype (per row for reduction="none"), differentiable with respect
    to local_logits; backward communicates nothing.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised: call torch.distributed.init_process_group first")
    options = dict(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, ignore_index=ignore_index)
    device = local_logits.device if isinstance(local_logits, torch.Tensor) else torch.device("cpu")
    try:
        _, axis_checked = _local_checks(local_logits, target, weight, sample_weight, axis, options, exchange)
    except (TypeError, ValueError) as error:
        # Every rank must take part in the all-gather, or the others wait forever.
        _extents(0, None, error, group, device)
        raise
    call = dict(group=group, options=options, axis=axis_checked, vocab_start=vocab_start,
                exchange=exchange, n_threads=n_threads)
    loss: torch.Tensor = _VocabParallelCrossEntropy.apply(local_logits, target, weight, sample_weight, call)
    return loss

"""Vocabulary-parallel cross-entropy over `torch.distributed`: the loss of logits whose
classes are split across ranks (tensor parallelism), equal to the single-process loss;
and the same for an LM head whose weight rows are split (`vocab_parallel_linear_cross_entropy`,
at the end of this module: the logits are never whole, not even a rank's block of them).

    import softmaxloss.distributed as smd
    # rank r holds the classes [start_r, start_r + W_r) of every row, W_r may differ
    loss = smd.vocab_parallel_cross_entropy(local_logits, target, group=None)
    loss.backward()                        # local_logits.grad: the gradient of its classes
    # rank r holds the rows [start_r, start_r + V_r) of the head's weight (V, D)
    loss = smd.vocab_parallel_linear_cross_entropy(hidden, local_weight, target)
    loss.backward()                        # hidden.grad: the whole one; local_weight.grad: its rows'

Every rank passes its own block of the logits (rows x its classes; class axis `axis`, last
by default) and the same replicated arguments: `target` (class indices among all C
classes, the rows' shape; or, for probability targets, the rank's block of the target
probabilities, the local logits' shape), `weight` (all C class weights), `sample_weight`
and the options of `softmaxloss.cross_entropy`, all of which work: class weights,
`ignore_index` (also with class weights), exact label smoothing (eps/C over all C
classes, not each rank's own), z-loss, sample weights, probability targets, and the three
reductions with `mean` normalised over all rows (the loss is the same on every rank).

Communication (`softmaxloss._shards` has the math): per call one all-gather of each rank's
class range (six int64: its start and width, its number of rows and flags, for the checks:
the ranks' blocks must tile [0, C), every rank must hold the same rows and every rank's
arguments must be valid, else every rank raises); then per row one all-reduce
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

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from . import _shards
from ._linear import ChunkPlan, plan_chunks
from ._validation import DEFAULT_IGNORE_INDEX, LinearLossArgs, LossOptions, check_linear_cross_entropy_call

__all__ = ["RefusedByAnotherRank", "vocab_parallel_cross_entropy", "vocab_parallel_linear_cross_entropy"]

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


def _extents(width: int, vocab_start: Any, error: Exception | None, group: Any, device: torch.device,
             n_rows: int = 0, chunk_rows: int = 0, flag: bool = False) -> tuple[int, int, int, bool]:
    """(this rank's first class, C, the least `chunk_rows` of the ranks, whether any rank
    raised `flag`) from every rank's (start, width, refused flag, n_rows, chunk_rows,
    flag): one all-gather of six int64. Each
    rank's block must be [start, start + width), tiling [0, C), and every rank must hold
    the same number of rows (else the per-row collectives would not match). A rank with
    an `error` (its own bad arguments) raises it, the others RefusedByAnotherRank."""
    if error is None and vocab_start is not None and (
            isinstance(vocab_start, bool) or not isinstance(vocab_start, int) or vocab_start < 0):
        error = ValueError(f"vocab_start must be None or a non-negative integer; got {vocab_start!r}")
    start = -1 if vocab_start is None or error is not None else vocab_start
    mine = torch.tensor([start, width, int(error is not None), n_rows, chunk_rows, int(flag)], dtype=torch.int64,
                        device=device)
    size = dist.get_world_size(group)
    everyone = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(everyone, mine, group=group)
    table = torch.stack(everyone).cpu().tolist()
    if error is not None:
        raise error
    failed = [rank for rank, row in enumerate(table) if row[2]]
    if failed:
        raise RefusedByAnotherRank(f"rank(s) {failed} of the group refused their arguments")
    rows = [row[3] for row in table]
    if len(set(rows)) != 1:
        raise ValueError(f"every rank must hold the same rows; got these numbers of rows, by rank: {rows}")
    given = [row[0] >= 0 for row in table]
    if any(given) and not all(given):
        raise ValueError("vocab_start must be given on every rank of the group or on none")
    starts = [row[0] for row in table]
    if not any(given):  # the ranks' blocks in rank order
        starts = np.cumsum([0] + [row[1] for row in table[:-1]]).tolist()
    blocks = [(s, s + row[1]) for s, row in zip(starts, table)]
    end = 0
    for lo, hi in sorted(blocks):
        if lo != end:
            raise ValueError(
                f"the ranks' class blocks [vocab_start, vocab_start + width) must tile [0, C) "
                f"without gaps or overlaps; got {blocks} (by rank)")
        end = hi
    if end == 0:
        raise ValueError("the ranks' class blocks hold zero classes in all")
    return int(starts[dist.get_rank(group)]), end, min(row[4] for row in table), any(row[5] for row in table)


def _refused(error: Exception | None) -> Exception:
    return error if error is not None else RefusedByAnotherRank("another rank of the group refused its arguments")


def _merge_across_ranks(x: np.ndarray, t: np.ndarray | None, c0: int, spec: _shards.Spec | None,
                        error: Exception | None, group: Any, device: torch.device, exchange: str,
                        exp_out: np.ndarray | None, n_threads: int) -> tuple[np.ndarray, bool]:
    """The merged statistics (R, 6) of all C classes of the rows of this rank's block x
    (R, W) of classes [c0, c0 + W), and whether exp_out (which may be x) now holds
    exp(x - M). "allreduce": a MAX all-reduce of the row maxima (x's dtype) with one
    more element, the refused flag, then a SUM all-reduce of the packed float64 sums,
    shifted by the row maxima (the exponentials written to exp_out on the way);
    "allgather": one all-gather of the six statistics per row (and the flag), merged
    here. Every rank of the group calls it for the same rows; a rank with an `error`
    (t and spec are then unused) raises it, and the others RefusedByAnotherRank."""
    n_rows = x.shape[0]
    if exchange == "allreduce":
        top = np.zeros(n_rows + 1, x.dtype)
        if error is None:
            top[:-1] = _shards.block_max(x)
        top[-1] = 1.0 if error is not None else 0.0
        top_t = torch.from_numpy(top).to(device)
        dist.all_reduce(top_t, op=dist.ReduceOp.MAX, group=group)
        top = top_t.cpu().numpy()
        if top[-1] != 0.0:
            raise _refused(error)
        assert error is None and spec is not None and t is not None
        row_max = top[:-1].astype(np.float64)
        stats = _shards.block_stats(x, t, c0, spec, shift=row_max, exp_out=exp_out, n_threads=n_threads)
        packed = torch.from_numpy(np.ascontiguousarray(stats[:, _shards.packed_columns(spec)])).to(device)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        return _shards.unpack(row_max, packed.cpu().numpy(), spec), exp_out is not None
    stats = np.zeros((n_rows + 1, len(_shards.STATS)))
    if error is None:
        assert spec is not None and t is not None
        stats[:-1] = _shards.block_stats(x, t, c0, spec, n_threads=n_threads)
    stats[-1, 0] = 1.0 if error is not None else 0.0
    mine = torch.from_numpy(stats).to(device)
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(everyone, mine, group=group)
    gathered = torch.stack(everyone).cpu().numpy()
    if gathered[:, -1, 0].any():
        raise _refused(error)
    return _shards.merge(gathered[:, :-1]), False


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
        c0, n_classes, _, _ = _extents(width, call["vocab_start"], None, group, device, n_rows=x.shape[0])

        # Checks that need C: on replicated arguments, so every rank raises alike; a flag in
        # the max all-reduce makes every rank raise if one does.
        error: Exception | None = None
        spec: _shards.Spec | None = None
        t: np.ndarray | None = None
        n_threads = 0
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
        grad = np.empty(x.shape, x.dtype) if want_grad and error is None else None
        merged, from_exp = _merge_across_ranks(x, t, c0, spec, error, group, device, call["exchange"], grad,
                                               n_threads)
        assert spec is not None and t is not None
        if not from_exp:
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


# =========================================================================================
# vocab_parallel_linear_cross_entropy: the LM head's loss when each rank holds a block of
# rows of its weight; softmaxloss._linear's chunking and PyTorch's GEMMs (softmaxloss.torch's
# backend of that loop), the merge across ranks of each chunk as above.
# =========================================================================================


def _stand_in(shape: Any, dtype: Any) -> np.ndarray:
    """A zero-strided array of `shape`: what the local checks read of a tensor whose
    values they do not need."""
    return np.broadcast_to(np.zeros((), dtype), tuple(int(n) for n in shape))


def _linear_local_checks(hidden: Any, local_weight: Any, target: Any, local_bias: Any, weight: Any,
                         sample_weight: Any, options: dict[str, Any], exchange: Any, chunk_size: Any,
                         memory_budget: Any, n_threads: Any) -> LinearLossArgs:
    """What each rank can check alone, before any collective: the tensors, and
    `softmaxloss.linear_cross_entropy`'s checks of the local problem (this rank's V_r
    classes; the class indices' values and the class weights need C and come later)."""
    for name, tensor in (("hidden", hidden), ("local_weight", local_weight)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    for name, tensor in (("local_bias", local_bias), ("target", target), ("weight", weight),
                         ("sample_weight", sample_weight)):
        if tensor is not None and not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(tensor).__name__}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    for name, tensor in (("hidden", hidden), ("local_weight", local_weight), ("local_bias", local_bias),
                         ("target", target), ("weight", weight), ("sample_weight", sample_weight)):
        if tensor is not None and tensor.device.type != "cpu":
            raise ValueError(f"{name} is on {tensor.device}: softmaxloss's kernels run on CPU tensors only")
    if hidden.dtype not in _NATIVE + _UPCAST or any(
            t is not None and t.dtype != hidden.dtype for t in (local_weight, local_bias)):
        raise TypeError(
            f"hidden, local_weight and local_bias must have one floating dtype (float32, float64; "
            f"float16 and bfloat16 are computed in float32); got hidden {hidden.dtype}, local_weight "
            f"{local_weight.dtype}" + ("" if local_bias is None else f", local_bias {local_bias.dtype}"))
    if exchange not in _EXCHANGES:
        raise ValueError(f"exchange must be one of {', '.join(map(repr, _EXCHANGES))}; got {exchange!r}")
    compute = np.float64 if hidden.dtype == torch.float64 else np.float32
    target_dtype = np.float32 if target.dtype in _UPCAST else _numpy(target[:0].reshape(0)).dtype
    return check_linear_cross_entropy_call(
        _stand_in(hidden.shape, compute), _stand_in(local_weight.shape, compute),
        _stand_in(target.shape, target_dtype), options,
        linear_bias=None if local_bias is None else _stand_in(local_bias.shape, compute), weight=None,
        sample_weight=None if sample_weight is None else _numpy(sample_weight),
        chunk_size=chunk_size, memory_budget=memory_budget, n_threads=n_threads)


class _LinearCall:
    """One call's state, shared by its forward pass and (reduction="none") its backward
    pass: the local problem, the chunking, the checked targets and weights."""

    def __init__(self, args: LinearLossArgs, plan: ChunkPlan, spec: _shards.Spec, t: np.ndarray,
                 s: np.ndarray | None, c0: int, normaliser: float, group: Any, device: torch.device,
                 exchange: str, n_threads: int) -> None:
        self.args, self.plan, self.spec, self.t, self.s, self.c0 = args, plan, spec, t, s, c0
        self.normaliser, self.group, self.device, self.exchange, self.n_threads = (
            normaliser, group, device, exchange, n_threads)


def _linear_pass(hidden: torch.Tensor, local_weight: torch.Tensor, local_bias: torch.Tensor | None,
                 want: tuple[bool, bool, bool], call: _LinearCall, divide_by: float,
                 sample_weight: np.ndarray | None, merged: np.ndarray | None = None,
                 error: Exception | None = None) -> tuple[np.ndarray, np.ndarray, tuple[torch.Tensor, ...] | None]:
    """One pass over the chunks of rows: (per-row losses, the merged statistics of every
    row, the gradients (dH summed over the ranks, this rank's dW and db) when any is
    wanted). Per chunk: its local logits by BLAS into the reused buffer, the merge of its
    statistics across the ranks (or the given `merged`, with no communication), the
    block gradient in place, then dH's part, dW += G^T H and db. One SUM all-reduce of
    dH at the end. A rank with an `error` raises it at the first chunk's exchange (the
    others RefusedByAnotherRank); then call.t and call.spec are unused."""
    from .torch import _LinearGemms  # PyTorch's matmul (MKL), addmm_ into dW

    args, plan, spec, t = call.args, call.plan, call.spec, call.t
    with_grad = any(want)
    backend = _LinearGemms(hidden, local_weight, local_bias, want, args, plan, with_grad)
    n_rows = args.n_rows
    row_loss = np.zeros(n_rows)
    computed = np.empty((n_rows, len(_shards.STATS))) if merged is None else merged
    for start in range(0, n_rows, plan.rows) if n_rows else [0]:
        stop = min(n_rows, start + plan.rows)
        x = backend.buffer[: stop - start]
        backend.logits(start, stop, x)
        tc = None if t is None else t[start:stop]
        if merged is None:
            stats, from_exp = _merge_across_ranks(
                x, tc, call.c0, spec, error if start == 0 else None, call.group, call.device, call.exchange,
                x if with_grad else None, call.n_threads)
            computed[start:stop] = stats
        else:
            stats, from_exp = merged[start:stop], False
        assert tc is not None
        sc = None if sample_weight is None else sample_weight[start:stop]
        row_loss[start:stop], coefs = _shards.row_terms(stats, tc, sc, spec, divide_by)
        if with_grad:
            _shards.block_grad(x, tc, call.c0, coefs, spec, divide_by, out=x, from_exp=from_exp,
                               n_threads=call.n_threads)
            backend.backward(start, stop, x)
    if not with_grad:
        return row_loss, computed, None
    grads = backend.gradients()
    if want[0]:  # once per call: a chunk at a time, asynchronously, was slower (benchmarks/RESULTS.md)
        dist.all_reduce(grads[0], op=dist.ReduceOp.SUM, group=call.group)
    return row_loss, computed, grads


class _VocabParallelLinearCrossEntropy(torch.autograd.Function):  # type: ignore[misc, unused-ignore]
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, local_weight: torch.Tensor, local_bias: torch.Tensor | None,
                target: torch.Tensor, weight: torch.Tensor | None, sample_weight: torch.Tensor | None,
                given: dict[str, Any]) -> torch.Tensor:  # type: ignore[override, unused-ignore]
        args: LinearLossArgs = given["args"]
        group, device = given["group"], hidden.device
        dtype = hidden.dtype
        if dtype in _UPCAST:  # computed in float32: the gradients summed and rounded once
            hidden, local_weight = hidden.float(), local_weight.float()
            local_bias = None if local_bias is None else local_bias.float()
        want = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], local_bias is not None and ctx.needs_input_grad[2])
        itemsize = 8 if hidden.dtype == torch.float64 else 4
        # the backend's own scratch per row (0: hidden is float32/float64 by now), so the
        # chunks get the budget as softmaxloss.torch's do
        from .torch import _linear_scratch_row
        scratch_row = _linear_scratch_row(hidden.dtype, want, args.n_features)
        plan = plan_chunks(args.n_rows, args.n_classes, args.n_features, itemsize, with_grad=any(want),
                           chunk_size=args.chunk_size, memory_budget=args.memory_budget,
                           scratch_row=scratch_row)
        c0, n_classes, rows, grad_hidden = _extents(args.n_classes, given["vocab_start"], None, group, device,
                                                    n_rows=args.n_rows, chunk_rows=plan.rows, flag=want[0])
        # d hidden's all-reduce needs every rank: a rank whose hidden needs no gradient sends its part too
        want = (grad_hidden, want[1], want[2])
        if rows != plan.rows:  # every rank's chunks must be the same rows: the least of theirs
            plan = plan_chunks(args.n_rows, args.n_classes, args.n_features, itemsize, with_grad=any(want),
                               chunk_size=rows, scratch_row=scratch_row)

        # Checks that need C (on replicated arguments): raised at the first chunk's exchange.
        error: Exception | None = None
        spec: _shards.Spec | None = None
        t: np.ndarray | None = None
        s: np.ndarray | None = None
        n_threads, normaliser = 0, math.nan
        try:
            spec = _shards.make_spec(n_classes, np.dtype(np.float64 if itemsize == 8 else np.float32),
                                     args.probabilities, None if weight is None else _numpy(weight),
                                     args.options, _numpy(target[:0].reshape(0)).dtype
                                     if target.dtype not in _UPCAST else np.dtype(np.float32))
            if args.probabilities:
                t = _numpy(target.float() if target.dtype in _UPCAST else target).reshape(args.n_rows, args.n_classes)
            else:
                t = _shards.index_target(_numpy(target).reshape(-1), spec)
            s = args.sample_weight if args.sample_weight is None else args.sample_weight.reshape(-1)
            n_threads = _shards.threads(args.n_threads)
            normaliser = float(_shards.row_weights(t, s, spec).sum())
        except (TypeError, ValueError) as e:
            error = e
        call = _LinearCall(args, plan, spec, t, s, c0, normaliser, group, device, given["exchange"], n_threads)  # type: ignore[arg-type]
        reduction = args.options.reduction
        per_row = reduction == "none"
        divide_by = _shards.divisor(normaliser, reduction)
        row_loss, merged, grads = _linear_pass(hidden, local_weight, local_bias,
                                               (False, False, False) if per_row else want, call, divide_by, s,
                                               error=error)
        ctx.dtype, ctx.per_row, ctx.want, ctx.returned = dtype, per_row, want, ctx.needs_input_grad[:3]
        if per_row:  # backward recomputes the logits, its gradients weighted by the upstream
            ctx.call, ctx.merged = call, merged
            ctx.save_for_backward(hidden, local_weight, local_bias)
        elif grads is not None:
            ctx.save_for_backward(*[g if w else None for g, w in zip(grads, want)])
        if per_row:
            loss = torch.from_numpy(row_loss.reshape(args.row_shape))
        else:
            loss = torch.tensor(_shards.reduced(float(row_loss.sum()), normaliser, reduction), dtype=torch.float64)
        return loss.to(dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override, unused-ignore]
        want = ctx.want
        if ctx.per_row:
            hidden, local_weight, local_bias = ctx.saved_tensors
            call: _LinearCall = ctx.call
            upstream = grad_output.detach().to(torch.float64).reshape(-1).numpy()
            s = upstream if call.s is None else call.s * upstream
            if not call.spec.probabilities:  # ignored rows: 0, also under a NaN or inf upstream
                s = np.where(call.t != call.spec.target_ignore_index, s, 0.0)
            _, _, grads = _linear_pass(hidden, local_weight, local_bias, want, call, 1.0, s, merged=ctx.merged)
            assert grads is not None
        else:
            grads = ctx.saved_tensors
            if not (not torch.is_grad_enabled() and bool((grad_output == 1).all())):
                grads = tuple(None if g is None else g * grad_output.to(g.dtype) for g in grads)
        out = [None if not w or g is None else g.to(ctx.dtype) for g, w in zip(grads, ctx.returned)]
        return out[0], out[1], out[2], None, None, None, None


def vocab_parallel_linear_cross_entropy(
    hidden: torch.Tensor,
    local_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    local_bias: torch.Tensor | None = None,
    group: Any = None,
    vocab_start: int | None = None,
    weight: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    exchange: str = "allreduce",
    chunk_size: int | None = None,
    memory_budget: float | None = None,
    n_threads: int | None = None,
) -> torch.Tensor:
    """`cross_entropy(hidden @ W.T + b, target)` of an LM head whose weight W (V, D) and
    bias b are split by rows across the ranks of `group` (the default process group if
    None), without the N x V logits, equal on every rank to
    `softmaxloss.linear_cross_entropy` of the whole head.

    hidden (..., D): replicated (the same on every rank). local_weight (V_r, D) and
    local_bias (V_r,) or None: this rank's rows [vocab_start, vocab_start + V_r) of W and
    b; vocab_start None: the ranks' blocks in rank order. target: class indices among
    all V (replicated), or this rank's block of probability targets, shape (..., V_r).
    weight: all V class weights (replicated). The other loss keywords as
    `softmaxloss.cross_entropy`, `exchange` as `vocab_parallel_cross_entropy`, and
    chunk_size / memory_budget / n_threads as `softmaxloss.linear_cross_entropy` (each
    rank plans its chunks from its own V_r; they use the least rows of all the ranks').

    Per chunk of rows: its local logits (BLAS, into one reused buffer), the statistics'
    merge across the ranks (`vocab_parallel_cross_entropy`'s collectives), the block's
    gradient in place, then BLAS adds the chunk's G^T H into d local_weight and its
    G W_r into this rank's partial d hidden; one SUM all-reduce of d hidden per call
    (N x D values), so that hidden.grad is the whole gradient on every rank (do not
    all-reduce it again). The gradients are computed in forward (backward scales them
    by the upstream; no communication), except for reduction="none", whose backward
    recomputes the logits with the upstream as sample weights (no statistics sent
    again: the forward pass's merged ones are kept, O(N); one all-reduce of d hidden).
    Differentiable with respect to hidden, local_weight and local_bias; float16 and
    bfloat16 computed in float32.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised: call torch.distributed.init_process_group first")
    options = dict(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, ignore_index=ignore_index)
    device = hidden.device if isinstance(hidden, torch.Tensor) else torch.device("cpu")
    try:
        args = _linear_local_checks(hidden, local_weight, target, local_bias, weight, sample_weight, options,
                                    exchange, chunk_size, memory_budget, n_threads)
    except (TypeError, ValueError) as error:
        _extents(0, None, error, group, device)  # every rank takes part, or the others wait forever
        raise
    given = dict(args=args, group=group, vocab_start=vocab_start, exchange=exchange)
    loss: torch.Tensor = _VocabParallelLinearCrossEntropy.apply(hidden, local_weight, local_bias, target, weight,
                                                                sample_weight, given)
    return loss

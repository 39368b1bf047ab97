"""One rank of the torch.distributed tests (tests/test_distributed.py), run as a process:

    python _distributed_worker.py CASES.pkl OUT_DIR RANK WORLD_SIZE PORT

Joins a gloo group on 127.0.0.1:PORT, runs every case of CASES.pkl (a list of dicts) on
this rank's block of classes (vocab_parallel_cross_entropy; for cases of kind "linear",
vocab_parallel_linear_cross_entropy on this rank's rows of the head's weight), and writes
OUT_DIR/rank{RANK}.pkl: per case the loss, this rank's gradients, the collective calls
made in forward and in backward, or the error raised (its type name and message)."""

import pickle
import sys
from collections import Counter
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

import softmaxloss.distributed as smd


def counting(calls):
    """Wrap the collectives softmaxloss.distributed uses, counting their calls."""
    for name in ("all_reduce", "all_gather", "broadcast", "all_gather_object", "reduce_scatter", "all_to_all"):
        original = getattr(dist, name)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        setattr(dist, name, wrapper)


def run_case(case, rank, world, calls):
    lo, hi = case["blocks"][world][rank]
    axis = case.get("axis", -1)
    logits = torch.from_numpy(case["logits"])
    dtype = getattr(torch, case.get("torch_dtype", str(logits.dtype).split(".")[1]))
    if rank == case.get("bad_rank"):
        dtype = torch.int64
    local = logits.narrow(axis, lo, hi - lo).clone().to(dtype)
    target = torch.from_numpy(case["target"])
    if rank == case.get("short_rank"):
        local, target = local[1:], target[1:]
    local.requires_grad_(case.get("requires_grad", True) and local.is_floating_point())
    if case.get("probabilities"):
        target = target.narrow(axis, lo, hi - lo).clone()
    kwargs = dict(case.get("options", {}))
    for name in ("weight", "sample_weight"):
        if kwargs.get(name) is not None:
            kwargs[name] = torch.from_numpy(kwargs[name])
    if case.get("vocab_start") is not None:
        kwargs["vocab_start"] = case["vocab_start"][world][rank]
    calls.clear()
    try:
        loss = smd.vocab_parallel_cross_entropy(local, target, axis=axis, **kwargs)
    except Exception as error:  # reported to the test, which checks type and message
        return dict(error=(type(error).__name__, str(error)))
    forward_calls = dict(calls)
    calls.clear()
    grad = None
    if local.requires_grad:
        upstream = case.get("upstream")
        if upstream is None:
            loss.sum().backward() if loss.ndim else loss.backward()
        else:
            loss.backward(torch.from_numpy(upstream).to(loss.dtype))
        grad = local.grad.to(torch.float64).numpy() if local.dtype in (torch.float16, torch.bfloat16) else local.grad.numpy()
    return dict(loss=loss.detach().to(torch.float64).numpy() if loss.dtype == torch.bfloat16 else loss.detach().numpy(),
                loss_dtype=str(loss.dtype), grad=grad, forward_calls=forward_calls, backward_calls=dict(calls))


def run_linear_case(case, rank, world, calls):
    """vocab_parallel_linear_cross_entropy on this rank's rows [lo, hi) of the head's weight
    (and bias): the loss, hidden's gradient (the whole one, on every rank), this rank's
    weight and bias gradients, the collective calls in forward and in backward."""
    lo, hi = case["blocks"][world][rank]
    dtype = getattr(torch, case.get("torch_dtype", str(case["hidden"].dtype)))
    hidden = torch.from_numpy(case["hidden"]).to(dtype)
    if rank == case.get("short_rank"):
        hidden = hidden[1:]
    hidden.requires_grad_(case.get("grad_hidden", True) if "grad_hidden_rank" not in case
                          else rank == case["grad_hidden_rank"])
    local_weight = torch.from_numpy(case["weight"][lo:hi]).to(torch.float64 if rank == case.get("bad_rank") else dtype)
    local_weight.requires_grad_(True)
    local_bias = None
    if case.get("bias") is not None:
        local_bias = torch.from_numpy(case["bias"][lo:hi]).to(dtype).requires_grad_(True)
    target = torch.from_numpy(case["target"])
    if case.get("probabilities"):
        target = target[..., lo:hi].clone()
    kwargs = dict(case.get("options", {}))
    for name in ("weight", "sample_weight"):
        if kwargs.get(name) is not None:
            kwargs[name] = torch.from_numpy(kwargs[name])
    if rank == case.get("short_rank") and kwargs.get("sample_weight") is not None:
        kwargs["sample_weight"] = kwargs["sample_weight"][1:]
    calls.clear()
    try:
        loss = smd.vocab_parallel_linear_cross_entropy(hidden, local_weight, target if rank != case.get("short_rank")
                                                       else target[1:], local_bias=local_bias, **kwargs)
    except Exception as error:
        return dict(error=(type(error).__name__, str(error)))
    forward_calls = dict(calls)
    calls.clear()
    upstream = case.get("upstream")
    if upstream is None:
        loss.sum().backward() if loss.ndim else loss.backward()
    else:
        loss.backward(torch.from_numpy(upstream).to(loss.dtype))

    def plain(tensor):
        return None if tensor is None or tensor.grad is None else tensor.grad.to(torch.float64).numpy() \
            if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.grad.numpy()

    return dict(loss=loss.detach().to(torch.float64).numpy(), loss_dtype=str(loss.dtype),
                grad_hidden=plain(hidden), grad_weight=plain(local_weight), grad_bias=plain(local_bias),
                forward_calls=forward_calls, backward_calls=dict(calls))


def main():
    cases_path, out_dir, rank, world, port = sys.argv[1:]
    rank, world = int(rank), int(world)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    with open(cases_path, "rb") as f:
        cases = pickle.load(f)
    calls = Counter()
    counting(calls)
    results = [(run_linear_case if case.get("kind") == "linear" else run_case)(case, rank, world, calls)
               for case in cases]
    dist.barrier()
    dist.destroy_process_group()
    with open(f"{out_dir}/rank{rank}.pkl", "wb") as f:
        pickle.dump(results, f)


if __name__ == "__main__":
    main()

"""Benchmarks of the cross-entropy of class-sharded logits (issue 18).

1. Vocabulary-parallel forward + backward (`softmaxloss.distributed`) at world sizes 1 and
   2 (gloo on 127.0.0.1, one process per rank, `--threads` threads each), against torch's
   `torch.distributed.tensor.parallel.loss_parallel` (a DTensor sharded on the classes, the
   same shards) and against the unsharded call in one process (`softmaxloss.torch` and
   `torch.nn.functional.cross_entropy`, at 1 thread per rank's worth and at all threads).
   Each figure is the median over `--repeats` of the mean time per call of a short loop,
   the methods interleaved; rank 0's times. Bytes per row: the payload each rank hands to
   the collectives per row of logits (measured by wrapping torch.distributed's functions
   for softmaxloss; for loss_parallel, its three all-reduces of N values in the logits'
   dtype, from its source), excluding the per-call all-gather of the class ranges.
2. Vocabulary-parallel linear + cross-entropy (`--only linear`): an LM head of
   (`--classes`, `--features`) float32 split by rows over the ranks, forward + backward of
   `vocab_parallel_linear_cross_entropy` at world sizes 1 and 2 (exchange "allreduce" or
   "allgather"), against the unsharded fused call in one process
   (`softmaxloss.torch.linear_cross_entropy` and the NumPy `linear_cross_entropy_with_grad`,
   same threads per rank and twice as many; PyTorch's `F.linear_cross_entropy`), and against
   `softmaxloss.torch.linear_cross_entropy` on rank 0 timed in the ranks' own run,
   interleaved with them (the other ranks wait at a barrier): the fair ratio on a shared
   machine. Bytes per row: the statistics' payload and d hidden's.
3. Dask: `softmaxloss.dask` of a (2^20, 1024) float32 array in (65536, 256) chunks on the
   threaded scheduler (`--threads` workers, one kernel thread each) against the in-memory
   call (`--threads` OpenMP threads) on the same data: the loss alone, and the loss with
   the gradient stored into a preallocated array (da.store / out=).

    flock /tmp/softmaxloss-bench.lock python benchmarks/sharded.py [--rows N] [--classes C]
"""

from __future__ import annotations

import argparse
import os
import pickle
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta

import numpy as np


# The per-call all-gather of each rank's class range, rows and flags: six int64.
EXTENTS_BYTES = 6 * 8


def timed(function, repeats: int, seconds: float, barrier=None, agree=None) -> list[float]:
    """Per repeat, the mean seconds per call of a loop lasting about `seconds` (the loop
    length fixed by the first call; on ranks, `agree` makes it every rank's largest, and
    each loop starts after a barrier)."""
    function()
    function()
    start = time.perf_counter()
    function()
    once = max(time.perf_counter() - start, 1e-6)
    loops = max(1, round(seconds / once))
    if agree is not None:
        loops = agree(loops)
    out = []
    for _ in range(repeats):
        if barrier:
            barrier()
        start = time.perf_counter()
        for _ in range(loops):
            function()
        out.append((time.perf_counter() - start) / loops)
    return out


# ---- 1. torch.distributed ---------------------------------------------------------------

def rank_main(rank: int, world: int, port: int, rows: int, classes: int, threads: int, repeats: int,
              seconds: float, out: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor.parallel import loss_parallel

    import softmaxloss.distributed as smd

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))
    mesh = init_device_mesh("cpu", (world,))
    gen = torch.Generator().manual_seed(0)
    full = torch.randn(rows, classes, generator=gen) * 3
    target = torch.randint(0, classes, (rows,), generator=gen)
    width = classes // world
    local = full[:, rank * width:(rank + 1) * width].contiguous().requires_grad_()

    def ours(exchange):
        def step():
            local.grad = None
            smd.vocab_parallel_cross_entropy(local, target, exchange=exchange).backward()
        return step

    dlocal = local.detach().clone().requires_grad_()

    def theirs():
        dlocal.grad = None
        logits = DTensor.from_local(dlocal, mesh, [Shard(1)])
        with loss_parallel():
            F.cross_entropy(logits, target).backward()

    # bytes per row handed to the collectives by softmaxloss
    payload = Counter()
    originals = {name: getattr(dist, name) for name in ("all_reduce", "all_gather")}

    def wrap(name):
        def wrapper(tensor_or_list, *args, **kwargs):
            tensor = args[0] if name == "all_gather" else tensor_or_list
            payload[name] += tensor.numel() * tensor.element_size()
            return originals[name](tensor_or_list, *args, **kwargs)
        return wrapper

    per_row = {}
    for exchange in ("allreduce", "allgather"):
        payload.clear()
        for name in originals:
            setattr(dist, name, wrap(name))
        ours(exchange)()
        for name, original in originals.items():
            setattr(dist, name, original)
        per_row[exchange] = (sum(payload.values()) - EXTENTS_BYTES) / rows  # less the class ranges' all-gather

    barrier = dist.barrier

    def agree(loops: int) -> int:
        count = torch.tensor([loops])
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return int(count.item())

    results = {}
    methods = {"softmaxloss allreduce": ours("allreduce"), "softmaxloss allgather": ours("allgather"),
               "loss_parallel": theirs}
    samples = {name: [] for name in methods}
    for r in range(repeats):
        for name in (list(methods) if r % 2 == 0 else list(reversed(methods))):
            samples[name] += timed(methods[name], 1, seconds, barrier, agree)
    results = {name: statistics.median(times) for name, times in samples.items()}
    # agreement with the unsharded loss (rank 0 checks)
    import softmaxloss.torch as smt
    loss_ours = smd.vocab_parallel_cross_entropy(local, target).item()
    with loss_parallel():
        loss_theirs = F.cross_entropy(DTensor.from_local(dlocal, mesh, [Shard(1)]), target).full_tensor().item()
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        with open(out, "wb") as f:
            pickle.dump(dict(times=results, per_row=per_row,
                             loss=(loss_ours, loss_theirs, smt.cross_entropy(full, target).item())), f)


def unsharded(rows: int, classes: int, threads: int, repeats: int, seconds: float) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    import softmaxloss as sml
    import softmaxloss.torch as smt

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    full = (torch.randn(rows, classes, generator=gen) * 3).requires_grad_()
    target = torch.randint(0, classes, (rows,), generator=gen)
    x, t = full.detach().numpy(), target.numpy()

    def with_loss(loss):
        def step():
            full.grad = None
            loss(full, target).backward()
        return step

    methods = {"softmaxloss.torch": with_loss(smt.cross_entropy), "F.cross_entropy": with_loss(F.cross_entropy),
               # the NumPy call on the same memory, a new gradient array each call (as autograd's)
               "softmaxloss (NumPy) cross_entropy_with_grad": lambda: sml.cross_entropy_with_grad(x, t, n_threads=threads)}
    samples = {name: [] for name in methods}
    for r in range(repeats):
        for name in (list(methods) if r % 2 == 0 else list(reversed(methods))):
            samples[name] += timed(methods[name], 1, seconds)
    return {name: statistics.median(times) for name, times in samples.items()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(world: int, threads: int, argv: list[str]) -> dict:
    """This script once per rank (`argv` its arguments), `threads` threads each: rank 0's result."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "rank0.pkl")
        port = free_port()
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        procs = [subprocess.Popen([sys.executable, __file__, *argv, "--rank", str(r), "--world", str(world), "--port",
                                   str(port), "--out", out, "--threads", str(threads)], env=env)
                 for r in range(world)]
        for p in procs:
            if p.wait() != 0:
                raise SystemExit(f"a rank of world size {world} failed")
        with open(out, "rb") as f:
            result: dict = pickle.load(f)
    return result


def torch_part(args) -> None:
    print(f"## Vocabulary-parallel forward + backward, ({args.rows}, {args.classes}) float32, "
          f"mean over all rows, {args.threads} thread(s) per rank; medians of {args.repeats}\n")
    print("| world size | method | ms per call | vs unsharded softmaxloss (same threads per rank) | bytes per row per rank |")
    print("|---|---|---|---|---|")
    base = unsharded(args.rows, args.classes, args.threads, args.repeats, args.seconds)
    all_threads = unsharded(args.rows, args.classes, 2 * args.threads, args.repeats, args.seconds)
    for name, t in base.items():
        print(f"| 1 (unsharded) | {name}, {args.threads} thread(s) | {t * 1e3:.1f} | {base['softmaxloss.torch'] / t:.2f}x | 0 |")
    for name, t in all_threads.items():
        print(f"| 1 (unsharded) | {name}, {2 * args.threads} threads | {t * 1e3:.1f} | {base['softmaxloss.torch'] / t:.2f}x | 0 |")
    for world in (1, 2):
        result = run_ranks(world, args.threads, ["--rank-of", "torch", "--rows", str(args.rows), "--classes",
                                                 str(args.classes), "--repeats", str(args.repeats), "--seconds",
                                                 str(args.seconds)])
        item = np.dtype(np.float32).itemsize
        for name, t in result["times"].items():
            if name == "loss_parallel":
                per_row = 3 * item
            else:
                per_row = result["per_row"][name.split()[1]]
            print(f"| {world} | {name} | {t * 1e3:.1f} | {base['softmaxloss.torch'] / t:.2f}x | {per_row:.0f} |")
        ours, theirs, reference = result["loss"]
        print(f"\n(world size {world}: loss {ours!r} (softmaxloss.distributed), {theirs!r} (loss_parallel), "
              f"{reference!r} (unsharded softmaxloss.torch))\n")


# ---- 2. the linear head ------------------------------------------------------------------

def head(rows: int, classes: int, features: int):
    import torch

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, features, generator=gen)
    weight = torch.randn(classes, features, generator=gen) * features**-0.5 * 3
    target = torch.randint(0, classes, (rows,), generator=gen)
    return hidden, weight, target


UNSHARDED_IN_RANKS = "unsharded softmaxloss.torch.linear_cross_entropy on rank 0 (interleaved with the above)"


def linear_rank_main(rank: int, world: int, port: int, rows: int, classes: int, features: int, threads: int,
                     repeats: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    import softmaxloss.distributed as smd

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))
    hidden, weight, target = head(rows, classes, features)
    width = classes // world
    local = weight[rank * width:(rank + 1) * width].contiguous().requires_grad_()
    hidden.requires_grad_()

    def ours(exchange):
        def step():
            hidden.grad = local.grad = None
            smd.vocab_parallel_linear_cross_entropy(hidden, local, target, exchange=exchange).backward()
        return step

    import softmaxloss.torch as smt

    full_weight = weight.clone().requires_grad_()

    def unsharded():  # rank 0 alone, the others wait at the barrier: the same cores, interleaved
        if rank == 0:
            hidden.grad = full_weight.grad = None
            smt.linear_cross_entropy(hidden, full_weight, target).backward()

    methods = {"allreduce": ours("allreduce"), "allgather": ours("allgather")}
    payload = Counter()
    originals = {name: getattr(dist, name) for name in ("all_reduce", "all_gather")}

    def wrap(name):
        def wrapper(tensor_or_list, *args, **kwargs):
            tensor = args[0] if name == "all_gather" else tensor_or_list
            kind = "d hidden" if tensor.ndim == 2 and tensor.shape[1] == features and tensor.dtype == torch.float32 \
                else "statistics"
            payload[kind] += tensor.numel() * tensor.element_size()
            return originals[name](tensor_or_list, *args, **kwargs)
        return wrapper

    per_row = {}
    for name, method in methods.items():
        payload.clear()
        for op in originals:
            setattr(dist, op, wrap(op))
        method()
        for op, original in originals.items():
            setattr(dist, op, original)
        per_row[name] = ((payload["statistics"] - EXTENTS_BYTES) / rows, payload["d hidden"] / rows)

    def agree(loops: int) -> int:
        count = torch.tensor([loops])
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return int(count.item())

    methods[UNSHARDED_IN_RANKS] = unsharded
    samples = {name: [] for name in methods}
    for r in range(repeats):
        for name in (list(methods) if r % 2 == 0 else list(reversed(methods))):
            samples[name] += timed(methods[name], 1, 0.0, dist.barrier, agree)
    loss = smd.vocab_parallel_linear_cross_entropy(hidden, local, target).item()
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        with open(out, "wb") as f:
            pickle.dump(dict(times={k: statistics.median(v) for k, v in samples.items()}, per_row=per_row, loss=loss), f)


def linear_unsharded(rows: int, classes: int, features: int, threads: int, repeats: int) -> tuple[dict, float]:
    import torch
    import torch.nn.functional as F
    from threadpoolctl import threadpool_limits

    import softmaxloss as sml
    import softmaxloss.torch as smt

    torch.set_num_threads(threads)
    hidden, weight, target = head(rows, classes, features)
    hidden.requires_grad_()
    weight.requires_grad_()
    h, w, t = hidden.detach().numpy(), weight.detach().numpy(), target.numpy()

    def with_loss(loss):
        def step():
            hidden.grad = weight.grad = None
            loss(hidden, weight, target).backward()
        return step

    methods = {"softmaxloss.torch.linear_cross_entropy": with_loss(smt.linear_cross_entropy),
               "softmaxloss (NumPy) linear_cross_entropy_with_grad":
                   lambda: sml.linear_cross_entropy_with_grad(h, w, t, n_threads=threads),
               "F.linear_cross_entropy": with_loss(F.linear_cross_entropy)}
    samples = {name: [] for name in methods}
    with threadpool_limits(threads):
        for r in range(repeats):
            for name in (list(methods) if r % 2 == 0 else list(reversed(methods))):
                samples[name] += timed(methods[name], 1, 0.0)
    return {name: statistics.median(v) for name, v in samples.items()}, smt.linear_cross_entropy(hidden, weight, target).item()


def linear_part(args) -> None:
    rows, classes, features = args.rows, args.classes, args.features
    print(f"## Vocabulary-parallel linear + cross-entropy, forward + backward: hidden ({rows}, {features}), "
          f"head ({classes}, {features}) float32, mean; {args.threads} thread(s) per rank; medians of {args.repeats}\n")
    print("| world size | method | ms per call | vs unsharded softmaxloss.torch (same threads per rank) "
          "| vs the same, timed in the ranks' run | bytes per row per rank: statistics + d hidden |")
    print("|---|---|---|---|---|---|")
    base, reference = linear_unsharded(rows, classes, features, args.threads, args.repeats)
    both, _ = linear_unsharded(rows, classes, features, 2 * args.threads, args.repeats)
    first = base["softmaxloss.torch.linear_cross_entropy"]
    for threads, times in ((args.threads, base), (2 * args.threads, both)):
        for name, t in times.items():
            print(f"| 1 (unsharded) | {name}, {threads} thread(s) | {t * 1e3:.0f} | {first / t:.2f}x | | 0 |")
    for world in (1, 2):
        result = run_ranks(world, args.threads, ["--rank-of", "linear", "--rows", str(rows), "--classes", str(classes),
                                                 "--features", str(features), "--repeats", str(args.repeats)])
        alone = result["times"][UNSHARDED_IN_RANKS]
        for name, t in result["times"].items():
            if name == UNSHARDED_IN_RANKS:
                print(f"| {world} | {name} | {t * 1e3:.0f} | {first / t:.2f}x | 1.00x | 0 |")
                continue
            stats, dh = result["per_row"][name]
            print(f"| {world} | vocab_parallel_linear_cross_entropy, {name} | {t * 1e3:.0f} | {first / t:.2f}x "
                  f"| {alone / t:.2f}x | {stats:.0f} + {dh:.0f} |")
        print(f"\n(world size {world}: loss {result['loss']!r}; unsharded softmaxloss.torch {reference!r})\n")


# ---- 3. dask --------------------------------------------------------------------------------

def dask_part(args) -> None:
    import dask
    import dask.array as da

    import softmaxloss as sml
    import softmaxloss.dask as smd

    rows, classes, chunks = 2**20, 1024, (65536, 256)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, classes), dtype=np.float32)
    x *= 3
    target = rng.integers(0, classes, rows)
    grad = np.empty_like(x)
    X = da.from_array(x, chunks=chunks)
    T = da.from_array(target, chunks=chunks[0])
    with dask.config.set(scheduler="threads", num_workers=args.threads):
        loss_graph = smd.cross_entropy(X, T)
        def dask_loss():
            return loss_graph.compute()
        def dask_with_grad_one_graph():
            loss, g = smd.cross_entropy_with_grad(X, T)
            stored = da.store([g], [grad], compute=False, lock=False)
            return dask.compute(loss, stored)
        methods = {
            "in memory, loss": lambda: sml.cross_entropy(x, target, n_threads=args.threads),
            "dask, loss": dask_loss,
            "in memory, loss + grad (out=)": lambda: sml.cross_entropy_with_grad(x, target, out=grad, n_threads=args.threads),
            "dask, loss + grad (store)": dask_with_grad_one_graph,
        }
        samples = {name: [] for name in methods}
        for r in range(args.repeats):
            for name in (list(methods) if r % 2 == 0 else list(reversed(methods))):
                samples[name] += timed(methods[name], 1, 0.0)
        times = {name: statistics.median(t) for name, t in samples.items()}
        value = float(loss_graph.compute())
    n_tasks_loss = len(loss_graph.__dask_graph__())
    n_tasks_grad = len(smd.cross_entropy_with_grad(X, T)[1].__dask_graph__())
    print(f"## Dask: ({rows}, {classes}) float32 in {chunks} chunks ({X.numblocks[0]} x {X.numblocks[1]} chunks), "
          f"threaded scheduler, {args.threads} threads; medians of {args.repeats}\n")
    print("| call | s | vs in memory |")
    print("|---|---|---|")
    for kind in ("loss", "loss + grad"):
        mem = next(v for k, v in times.items() if k.startswith("in memory, " + kind) and (kind != "loss" or "grad" not in k))
        for name, t in times.items():
            if name.split(", ", 1)[1].startswith(kind) and (kind != "loss" or "grad" not in name):
                print(f"| {name} | {t:.3f} | {mem / t:.2f}x |")
    print(f"\n(loss {value!r}, in memory {float(sml.cross_entropy(x, target))!r}; graph: {n_tasks_loss} tasks "
          f"for the loss, {n_tasks_grad} for the gradient)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=32000)
    parser.add_argument("--threads", type=int, default=1, help="threads per rank (dask: scheduler threads)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each timed loop")
    parser.add_argument("--features", type=int, default=256, help="hidden size of the linear head (--only linear)")
    parser.add_argument("--only", choices=["torch", "linear", "dask"])
    parser.add_argument("--rank", type=int)
    parser.add_argument("--rank-of", choices=["torch", "linear"], help="(internal) which benchmark a rank runs")
    parser.add_argument("--world", type=int)
    parser.add_argument("--port", type=int)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.rank is not None and args.rank_of == "torch":
        rank_main(args.rank, args.world, args.port, args.rows, args.classes, args.threads, args.repeats,
                  args.seconds, args.out)
        return
    if args.rank is not None and args.rank_of == "linear":
        linear_rank_main(args.rank, args.world, args.port, args.rows, args.classes, args.features,
                         args.threads, args.repeats, args.out)
        return
    if args.only in (None, "torch"):
        torch_part(args)
    if args.only in (None, "linear"):
        linear_part(args)
    if args.only in (None, "dask"):
        dask_part(argparse.Namespace(**{**vars(args), "threads": 2 if args.threads == 1 else args.threads}))


if __name__ == "__main__":
    main()

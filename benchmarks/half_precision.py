"""Benchmark of bfloat16 / float16 logits read as stored (issue 16, item 1; its targets).

Per shape, interleaved in one run (each figure the median over `--repeats` rounds of one
call each, after a warm-up): `cross_entropy_with_grad` into a preallocated `out=` for float32,
bfloat16 (ml_dtypes) and float16 logits of the same values; `np.copyto` of the bfloat16 logits
(the cost of touching them once, read and write); and forward + backward of
`torch.nn.functional.cross_entropy` on a bfloat16 tensor against `softmaxloss.torch.cross_entropy`
on the same tensor. Targets: half loss + gradient <= 0.6x float32 and <= 1.3x the bf16 copyto;
softmaxloss.torch bf16 >= 4x PyTorch's bf16 CPU cross-entropy.

    flock /tmp/softmaxloss-bench.lock python benchmarks/half_precision.py [--repeats R]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import ml_dtypes
import numpy as np
import torch

import softmaxloss as sml
import softmaxloss.torch as st

SHAPES = [(256, 32000), (4096, 1000), (1024, 8000)]


def once(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def calls(n: int, c: int, rng: np.random.Generator) -> dict[str, Callable[[], object]]:
    x32 = (rng.standard_normal((n, c)) * 3).astype(np.float32)
    xb, xh = x32.astype(ml_dtypes.bfloat16), x32.astype(np.float16)
    y = rng.integers(0, c, n)
    g32, gb, gh, copy = np.empty_like(x32), np.empty_like(xb), np.empty_like(xh), np.empty_like(xb)
    tx, ty = torch.from_numpy(x32).to(torch.bfloat16).requires_grad_(), torch.from_numpy(y)

    def torch_ce() -> None:
        tx.grad = None
        torch.nn.functional.cross_entropy(tx, ty).backward()

    def sml_torch() -> None:
        tx.grad = None
        st.cross_entropy(tx, ty).backward()

    return {
        "float32": lambda: sml.cross_entropy_with_grad(x32, y, out=g32),
        "bfloat16": lambda: sml.cross_entropy_with_grad(xb, y, out=gb),
        "float16": lambda: sml.cross_entropy_with_grad(xh, y, out=gh),
        "bf16 copyto": lambda: np.copyto(copy, xb),
        "torch bf16 CE": torch_ce,
        "sml.torch bf16": sml_torch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    from softmaxloss import _dispatch

    print(f"kernels: {_dispatch.active_name()}, torch threads: {torch.get_num_threads()}")
    for n, c in SHAPES:
        methods = calls(n, c, rng)
        for call in methods.values():
            call()
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, call in methods.items():
                times[name].append(once(call))
        median = {name: statistics.median(t) for name, t in times.items()}
        print(f"N={n} C={c} (medians of {args.repeats}, interleaved)")
        for name, value in median.items():
            print(f"  {name:15s} {value * 1e3:8.2f} ms   {value / median['float32']:5.2f}x float32"
                  f"   {value / median['bf16 copyto']:5.2f}x bf16 copyto")
        print(f"  PyTorch bf16 CE / softmaxloss.torch bf16: {median['torch bf16 CE'] / median['sml.torch bf16']:.2f}x")


if __name__ == "__main__":
    main()

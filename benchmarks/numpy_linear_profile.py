"""Where softmaxloss.linear_cross_entropy_with_grad (NumPy) spends its time against NumPy's three
GEMMs, at (4096, 1024, 32000) float32 by default: each variant below timed in one process,
interleaved with the others, median of the repeats (the machine is shared: only same-run ratios
mean anything).

- gemms: the three unchunked GEMMs (H @ W.T, L @ W, L.T @ H): the floor;
- fused c=<rows>: the function itself, chunk_size rows (409 is the default budget's);
- loop c=<rows>: the chunk loop's GEMMs alone, no kernel (the logits, dH transposed, dW's
  blocks and additions) and the same with dH as G @ W, and with dW's share through one
  (V, D) scratch (no blocks: more memory, fewer calls);
- gemm <shape>: a chunk's single GEMMs, each the chunk count times.

    OPENBLAS_NUM_THREADS=2 python benchmarks/numpy_linear_profile.py [--repeats 3] [--size 4096,1024,32000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

import softmaxloss as sml
from softmaxloss._linear import plan_chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", default="4096,1024,32000")
    parser.add_argument("--threads", type=int, default=2, help="the kernel's n_threads")
    parser.add_argument("--only", default="", help="comma-separated variant name prefixes")
    args = parser.parse_args()
    n, d, v = (int(x) for x in args.size.split(","))
    rng = np.random.default_rng(0)
    h = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((v, d), dtype=np.float32)
    w *= np.float32(1 / np.sqrt(d))
    t = rng.integers(0, v, n)
    default_rows = plan_chunks(n, v, d, 4, with_grad=True).rows

    def gemms() -> None:
        logits = h @ w.T
        logits @ w
        logits.T @ h

    def fused(rows: int) -> Callable[[], None]:
        return lambda: sml.linear_cross_entropy_with_grad(h, w, t, chunk_size=rows, n_threads=args.threads)

    def loop(rows: int, dh: str, dw: str) -> Callable[[], None]:
        plan = plan_chunks(n, v, d, 4, with_grad=True, chunk_size=rows)
        buffer = np.empty((rows, v), np.float32)
        grad_h = np.empty((n, d), np.float32)
        grad_w = np.empty((v, d), np.float32)
        scratch = np.empty(max(plan.scratch_rows, 1) * d, np.float32)
        big = np.empty((v, d), np.float32) if dw == "one scratch" else None

        def call() -> None:
            for start in range(0, n, rows):
                stop = min(n, start + rows)
                hc, g = h[start:stop], buffer[: stop - start]
                np.matmul(hc, w.T, out=g)
                if dh == "transposed":
                    tr = scratch[: d * (stop - start)].reshape(d, stop - start)
                    np.matmul(w.T, g.T, out=tr)
                    grad_h[start:stop] = tr.T
                else:
                    np.matmul(g, w, out=grad_h[start:stop])
                if start == 0:
                    np.matmul(g.T, hc, out=grad_w)
                elif big is not None:
                    np.matmul(g.T, hc, out=big)
                    np.add(grad_w, big, out=grad_w)
                else:
                    block = scratch[: plan.weight_block * d].reshape(plan.weight_block, d)
                    for first in range(0, v, plan.weight_block):
                        last = min(v, first + plan.weight_block)
                        np.matmul(g[:, first:last].T, hc, out=block[: last - first])
                        np.add(grad_w[first:last], block[: last - first], out=grad_w[first:last])
        return call

    def single(rows: int, which: str) -> Callable[[], None]:
        chunks = -(-n // rows)
        g = np.ascontiguousarray(rng.standard_normal((rows, v), dtype=np.float32))
        hc = h[:rows]
        out_l = np.empty((rows, v), np.float32)
        out_t = np.empty((d, rows), np.float32)
        out_h = np.empty((rows, d), np.float32)
        out_w = np.empty((v, d), np.float32)

        def call() -> None:
            for _ in range(chunks):
                if which == "logits":
                    np.matmul(hc, w.T, out=out_l)
                elif which == "dH transposed":
                    np.matmul(w.T, g.T, out=out_t)
                elif which == "dH G@W":
                    np.matmul(g, w, out=out_h)
                elif which == "dW whole":
                    np.matmul(g.T, hc, out=out_w)
                elif which == "add dW":
                    np.add(out_w, out_w, out=out_w)
        return call

    variants: dict[str, Callable[[], None]] = {"gemms": gemms}
    for rows in sorted({default_rows, 1024, 2048}):
        variants[f"fused c={rows}"] = fused(rows)
    variants[f"loop c={default_rows} (as the function)"] = loop(default_rows, "transposed", "blocks")
    variants[f"loop c={default_rows}, dH as G@W"] = loop(default_rows, "direct", "blocks")
    variants[f"loop c={default_rows}, dW via one (V, D) scratch"] = loop(default_rows, "transposed", "one scratch")
    for which in ("logits", "dH transposed", "dH G@W", "dW whole", "add dW"):
        variants[f"gemm c={default_rows} {which} x chunks"] = single(default_rows, which)
    if args.only:
        prefixes = args.only.split(",")
        variants = {k: f for k, f in variants.items() if k == "gemms" or any(k.startswith(p) for p in prefixes)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for f in variants.values():  # warm-up: thread pools, first-touch of the buffers
        f()
    for _ in range(args.repeats):
        for name, f in variants.items():
            c0, s = time.process_time(), time.perf_counter()
            f()
            times[name].append(time.perf_counter() - s)
            cpu[name].append(time.process_time() - c0)
    base = statistics.median(times["gemms"])
    print(f"N={n} D={d} V={v}, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, kernel threads "
          f"{args.threads}, default chunk {default_rows} rows, load average {os.getloadavg()[0]:.1f}, "
          f"median of {args.repeats}\n")
    print("| variant | median s (runs) | / gemms | CPU s |\n|---|---|---|---|")
    for name in variants:
        m = statistics.median(times[name])
        runs = ", ".join(f"{x:.2f}" for x in times[name])
        print(f"| {name} | {m:.2f} ({runs}) | {m / base:.2f}x | {statistics.median(cpu[name]):.2f} |")


if __name__ == "__main__":
    main()

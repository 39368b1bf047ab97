"""Where the torch adapter's time goes (float32, 2 threads): per-phase seconds of one
`softmaxloss.torch.linear_cross_entropy(...).backward()` at several chunk sizes, interleaved
with the three GEMMs alone (PyTorch's), median of the repeats; and the unfused step
(F.cross_entropy(h @ w.T, t).backward()) and F.cross_entropy on given logits (the unfused
step's non-GEMM part), so that the ratios of one run can be compared.

    python benchmarks/torch_linear_chunks.py [--repeats 3] [--size 4096,1024,32000] [--chunks 256,512,1024]

"default" is the default budget's chunk (1/8 of the logits)."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import softmaxloss._linear as linear
import softmaxloss.torch as smt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", default="4096,1024,32000")
    parser.add_argument("--chunks", default="256,default,1024,2048", help="comma-separated rows, or 'default'")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-unfused", action="store_true", help="skip the unfused step and the logits-only loss")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, d, v = (int(x) for x in args.size.split(","))
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=g).requires_grad_()
    w = (torch.randn(v, d, generator=g) / d**0.5).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    default_rows = linear.plan_chunks(n, v, d, 4, with_grad=True, scratch_row=0).rows

    phases: dict[str, float] = {}
    original = (smt._LinearGemms.logits, smt._LinearGemms.backward, linear._kernel_totals)

    def timed(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            s = time.perf_counter()
            r = f(*a, **k)
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - s
            return r
        return wrapper

    smt._LinearGemms.logits = timed("logits GEMM", original[0])  # type: ignore[method-assign]
    smt._LinearGemms.backward = timed("dH + dW GEMMs", original[1])  # type: ignore[method-assign]
    linear._kernel_totals = timed("kernel", original[2])

    def gemms() -> None:
        hd, wd = h.detach(), w.detach()
        logits = hd @ wd.T
        logits @ wd
        logits.T @ hd

    def fused(rows: int) -> Callable[[], None]:
        def call() -> None:
            h.grad = w.grad = None
            smt.linear_cross_entropy(h, w, t, chunk_size=rows).backward()
        return call

    def unfused() -> None:
        h.grad = w.grad = None
        torch.nn.functional.cross_entropy(h @ w.T, t).backward()

    given = (h.detach() @ w.detach().T).requires_grad_()

    def on_logits() -> None:
        given.grad = None
        torch.nn.functional.cross_entropy(given, t).backward()

    configs: dict[str, Callable[[], None]] = {"gemms": gemms}
    for c in args.chunks.split(","):
        rows = default_rows if c == "default" else int(c)
        configs[f"fused c={rows}" + (" (default)" if rows == default_rows else "")] = fused(rows)
    if not args.no_unfused:
        configs["torch unfused"] = unfused
        configs["F.cross_entropy on given logits"] = on_logits
    results: dict[str, list[tuple[float, float, dict[str, float]]]] = {k: [] for k in configs}
    for _ in range(args.repeats):
        for name, f in configs.items():
            phases.clear()
            c0, s = time.process_time(), time.perf_counter()
            f()
            results[name].append((time.perf_counter() - s, time.process_time() - c0, dict(phases)))
    base = statistics.median(e for e, _, _ in results["gemms"])
    print(f"N={n} D={d} V={v}, {args.threads} threads, default chunk {default_rows} rows, load average "
          f"{os.getloadavg()[0]:.1f}, median of {args.repeats}\n")
    print("| variant | median s (runs) | / torch's 3 GEMMs | CPU s | logits GEMM s | kernel s | dH + dW GEMMs s |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        ordered = sorted(runs, key=lambda r: r[0])
        e, cpu, ph = ordered[len(ordered) // 2]
        cells = " | ".join(f"{ph[k]:.2f}" if k in ph else "" for k in ("logits GEMM", "kernel", "dH + dW GEMMs"))
        print(f"| {name} | {e:.2f} ({', '.join(f'{r[0]:.2f}' for r in runs)}) | {e / base:.3f}x | {cpu:.2f} | {cells} |")


if __name__ == "__main__":
    main()

"""Time and memory of the LM head's loss + gradients: fused (softmaxloss.linear_cross_entropy_with_grad)
against its floor (the three GEMMs alone) and the unfused paths (NumPy, PyTorch).

Every method computes, for hidden H (N, D), weight W (V, D) and class targets t (N,), float32,
the mean cross-entropy of H @ W.T and its gradients with respect to H and W:

- gemms: the three GEMMs alone, NumPy: L = H @ W.T, L @ W, L.T @ H (the floor: no loss at all);
- softmaxloss: softmaxloss.linear_cross_entropy_with_grad (chunks of rows, default budget);
- numpy unfused: L = H @ W.T materialised, softmaxloss.cross_entropy_with_grad(L, t, out=L),
  then G @ W and G.T @ H;
- torch cross_entropy on logits: F.cross_entropy(logits, t).backward() on logits = H @ W.T made
  before the call (an input: the loss part alone, gradient with respect to the logits);
- torch unfused: F.cross_entropy(h @ w.T, t).backward();
- torch linear_cross_entropy: F.linear_cross_entropy(h, w, t).backward() (options=None: its
  reference path), and with options=LinearCrossEntropyOptions(chunking_method="auto").

Each method runs in a fresh process (`--worker`), with OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and
MKL_NUM_THREADS set to the thread count and torch.set_num_threads: after one call on a tiny
problem (imports, thread pools), `--repeats` timed calls; the median wall time is reported (and
the median CPU time of the process, all threads: less sensitive to a shared machine's load,
though it counts BLAS threads that spin while they wait). Memory: the
growth of the process's peak RSS over its RSS once the inputs exist (VmHWM, reset through
/proc/self/clear_refs where Linux allows it, else ru_maxrss), and the peak of NumPy's allocations
during a call (tracemalloc; blind to torch's allocator), both also net of the returned gradients.
For softmaxloss the worker also times each phase of the call (the GEMMs by role, the kernel, the
additions) by wrapping numpy.matmul, numpy.add and the kernel call: where the time goes.

    python benchmarks/linear_cross_entropy.py [--sizes quick,full] [--threads 2] [--repeats 3]

A long table can be measured a method at a time (so that no single run holds the benchmark lock
for long) and printed from the collected reports:

    python benchmarks/linear_cross_entropy.py --sizes full --methods gemms --jsonl runs.jsonl
    python benchmarks/linear_cross_entropy.py --sizes full --methods softmaxloss --jsonl runs.jsonl
    python benchmarks/linear_cross_entropy.py --table runs.jsonl    # one table per size
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

SIZES = {"smoke": (256, 64, 1000), "quick": (1024, 512, 8000), "full": (4096, 1024, 32000),
         "lm": (2048, 2048, 128256)}  # (N, D, V)
METHODS = ["gemms", "softmaxloss", "numpy unfused", "torch gemms", "softmaxloss.torch", "torch cross_entropy on logits",
           "torch unfused", "torch linear_cross_entropy", "torch linear_cross_entropy auto"]
# Through the torch adapter in bfloat16 (hidden and weight; the GEMMs' floor in two forms: torch's
# bf16 matmul, and the float32 GEMMs of upcast operands that softmaxloss.torch runs).
BF16_METHODS = ["torch gemms bf16", "torch gemms bf16 as float32", "softmaxloss.torch bf16",
                "torch cross_entropy on logits bf16", "torch unfused bf16", "torch linear_cross_entropy bf16",
                "torch linear_cross_entropy auto bf16"]
MiB = 2**20


# ---- the worker: one method in its own process ---------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def inputs(n: int, d: int, v: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((n, d), dtype=np.float32)
    weight = rng.standard_normal((v, d), dtype=np.float32)
    weight *= np.float32(1 / np.sqrt(d))  # in place: no float64 temporary of the weight's size
    target = rng.integers(0, v, n)
    return hidden, weight, target


def make_method(name: str, hidden: np.ndarray, weight: np.ndarray, target: np.ndarray,
                threads: int) -> Callable[[], tuple[Any, ...]]:
    """A call returning (loss or None, grad_hidden, grad_weight)."""
    import softmaxloss as sml

    if name == "gemms":
        def gemms() -> tuple[Any, ...]:
            logits = hidden @ weight.T
            return None, logits @ weight, logits.T @ hidden
        return gemms
    if name == "softmaxloss":
        return lambda: sml.linear_cross_entropy_with_grad(hidden, weight, target, n_threads=threads)
    if name == "numpy unfused":
        def numpy_unfused() -> tuple[Any, ...]:
            logits = hidden @ weight.T
            loss, grad = sml.cross_entropy_with_grad(logits, target, out=logits, n_threads=threads)
            return loss, grad @ weight, grad.T @ hidden
        return numpy_unfused

    import torch
    import torch.nn.functional as F

    import softmaxloss.torch as smt

    torch.set_num_threads(threads)
    bf16 = name.endswith(" bf16") or name.endswith(" bf16 as float32")
    dtype = torch.bfloat16 if bf16 else torch.float32
    h = torch.from_numpy(hidden).to(dtype).requires_grad_()
    w = torch.from_numpy(weight).to(dtype).requires_grad_()
    t = torch.from_numpy(target)
    name = name.replace(" bf16", "")

    if name in ("torch gemms", "torch gemms as float32"):
        hd, wd = h.detach(), w.detach()

        def torch_gemms() -> tuple[Any, ...]:
            a, b = (hd.float(), wd.float()) if name.endswith("as float32") else (hd, wd)
            logits = a @ b.T
            return None, logits @ b, logits.T @ a  # in their dtype: gradient_bytes counts what exists
        return torch_gemms

    def run(loss_function: Callable[[], Any]) -> Callable[[], tuple[Any, ...]]:
        def call() -> tuple[Any, ...]:
            h.grad = w.grad = None
            loss = loss_function()
            loss.backward()
            assert h.grad is not None and w.grad is not None
            return float(loss), h.grad, w.grad  # not converted: a float32 copy would count as memory
        return call

    if name == "softmaxloss.torch":
        return run(lambda: smt.linear_cross_entropy(h, w, t))
    if name == "torch cross_entropy on logits":
        with torch.no_grad():  # float32 GEMM, then rounded (bf16): an input, not timed
            logits = (h.detach().float() @ w.detach().float().T).to(dtype).requires_grad_()

        def on_logits() -> tuple[Any, ...]:
            logits.grad = None
            loss = F.cross_entropy(logits, t)
            loss.backward()
            assert logits.grad is not None
            return float(loss), logits.grad
        return on_logits
    if name == "torch unfused":
        return run(lambda: F.cross_entropy(h @ w.T, t))
    if name == "torch linear_cross_entropy":
        return run(lambda: F.linear_cross_entropy(h, w, t))
    if name == "torch linear_cross_entropy auto":
        options = torch.nn.LinearCrossEntropyOptions(chunking_method="auto")
        return run(lambda: F.linear_cross_entropy(h, w, t, options=options))
    raise ValueError(f"unknown method {name!r}")


class PhaseTimer:
    """Seconds spent in numpy.matmul (by the role its output's shape tells), numpy.add and the
    cross-entropy kernel during softmaxloss's call: the wrappers add ~1 us per call."""

    def __init__(self, n: int, d: int, v: int) -> None:
        import softmaxloss._linear as linear

        self.linear, self.n, self.d, self.v = linear, n, d, v
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.matmul, self.add, self.kernel = np.matmul, np.add, linear._kernel_totals

        def role(out: Any, kind: str) -> str:
            shape = getattr(out, "shape", None)
            if shape is None or len(shape) != 2:
                return f"{kind} (other)"
            if shape[1] == v:
                return f"{kind}: logits (H_c @ W.T)" if kind == "matmul" else f"{kind}: bias"
            if shape == (v, d):
                return f"{kind}: dW first chunk (G.T @ H_c)"
            if shape == (d, self.current_rows):
                return f"{kind}: dH, transposed (W.T @ G.T)"
            if shape == (self.current_rows, d):
                return f"{kind}: dH (G @ W)"
            return f"{kind}: dW blocks" if kind == "matmul" else f"{kind}: dW accumulate"

        self.current_rows = -1

        def timed(function: Callable[..., Any], kind: str) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                result = function(*args, **kwargs)
                elapsed = time.perf_counter() - start
                if kind == "matmul" and getattr(kwargs.get("out"), "shape", (0, 0))[1:] == (v,):
                    self.current_rows = kwargs["out"].shape[0]
                name = role(kwargs.get("out"), kind) if kind != "kernel" else "cross-entropy kernel (in place)"
                self.seconds[name] += elapsed
                self.calls[name] += 1
                return result
            return wrapper

        self.wrapped = (timed(self.matmul, "matmul"), timed(self.add, "add"), timed(self.kernel, "kernel"))

    def __enter__(self) -> PhaseTimer:
        self.seconds.clear()
        self.calls.clear()
        np.matmul, np.add, self.linear._kernel_totals = self.wrapped  # type: ignore[misc]
        return self

    def __exit__(self, *exc: object) -> None:
        np.matmul, np.add, self.linear._kernel_totals = self.matmul, self.add, self.kernel  # type: ignore[misc]


def worker(name: str, n: int, d: int, v: int, threads: int, repeats: int) -> dict[str, Any]:
    tiny = inputs(64, 32, 256)
    make_method(name, *tiny, threads)()  # imports, thread pools, first-call caches
    del tiny
    hidden, weight, target = inputs(n, d, v)
    call = make_method(name, hidden, weight, target, threads)
    timer = PhaseTimer(n, d, v) if name == "softmaxloss" else None
    baseline = rss_bytes()
    hwm_reset = reset_peak_rss()
    if not hwm_reset:
        baseline = peak_rss_bytes()  # the inputs' peak, which a call must exceed to show
    times, cpu_times, traced, phases = [], [], [], []
    loss = None
    gradient_bytes = 0
    for _ in range(repeats):
        tracemalloc.start()
        tracemalloc.reset_peak()
        start_traced, _ = tracemalloc.get_traced_memory()
        cpu_start = time.process_time()
        if timer is not None:
            with timer:
                start = time.perf_counter()
                result = call()
                elapsed = time.perf_counter() - start
            phases.append((elapsed, dict(timer.seconds), dict(timer.calls)))
        else:
            start = time.perf_counter()
            result = call()
            elapsed = time.perf_counter() - start
        cpu_times.append(time.process_time() - cpu_start)
        _, peak_traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        times.append(elapsed)
        traced.append(peak_traced - start_traced)
        loss = None if result[0] is None else float(result[0])
        gradient_bytes = sum(g.nbytes for g in result[1:])  # numpy arrays and tensors
        del result
    report: dict[str, Any] = {
        "method": name, "n": n, "d": d, "v": v, "threads": threads, "times": times,
        "median": statistics.median(times), "cpu_median": statistics.median(cpu_times), "loss": loss, "gradient_bytes": gradient_bytes,
        "rss_growth": peak_rss_bytes() - baseline, "hwm_reset": hwm_reset,
        "traced_peak": max(traced), "logits_bytes": n * v * 4,
    }
    if name == "softmaxloss":
        from softmaxloss._linear import plan_chunks

        plan = plan_chunks(n, v, d, 4, with_grad=True)
        report["chunk_rows"], report["weight_block"] = plan.rows, plan.weight_block
        report["working_bytes"] = plan.working_bytes(v, d, 4)
        report["phases"] = sorted(phases)[len(phases) // 2]  # the median run's
    if name.startswith("softmaxloss.torch"):
        import torch

        from softmaxloss._linear import plan_chunks

        try:
            from softmaxloss.torch import _linear_scratch_row
        except ImportError:  # a softmaxloss before backends declared their scratch: NumPy's plan
            plan = plan_chunks(n, v, d, 4, with_grad=True)
        else:
            half = name.endswith("bf16")
            scratch_row = _linear_scratch_row(torch.bfloat16 if half else torch.float32, (True, True, False), d)
            plan = plan_chunks(n, v, d, 4, with_grad=True, scratch_row=scratch_row)
        report["chunk_rows"], report["working_bytes"] = plan.rows, plan.working_bytes(v, d, 4)
    return report


# ---- the driver -------------------------------------------------------------------------------


def run_worker(name: str, size: tuple[int, int, int], threads: int, repeats: int) -> dict[str, Any] | None:
    env = dict(os.environ)
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[variable] = str(threads)
    n, d, v = size
    command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--size", f"{n},{d},{v}",
               "--threads", str(threads), "--repeats", str(repeats)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if result.returncode != 0:
        print(f"  {name}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def floor_of(method: str) -> str:
    """The three GEMMs a method is measured against: NumPy's for the NumPy methods, PyTorch's
    float32 ones for the torch methods, those of bf16 operands upcast to float32 for bf16."""
    if method.endswith("bf16") or method.endswith("as float32"):
        return "torch gemms bf16 as float32"
    return "torch gemms" if "torch" in method else "gemms"


def table(reports: list[dict[str, Any]]) -> str:
    lines = [
        "| method | median s (runs) | / its 3 GEMMs | CPU s (/ its 3 GEMMs) | loss | peak RSS growth MiB "
        "| beyond gradients MiB | NumPy peak (tracemalloc) beyond gradients MiB | load average |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        base = next((f for f in reports if f["method"] == floor_of(r["method"])), None)
        floor = None if base is None else base["median"]
        cpu_floor = None if base is None else base["cpu_median"]
        runs = ", ".join(f"{t:.2f}" for t in r["times"])
        ratio = f"{r['median'] / floor:.3f}x" if floor else "-"
        cpu = f"{r['cpu_median']:.2f} ({r['cpu_median'] / cpu_floor:.2f}x)" if cpu_floor else f"{r['cpu_median']:.2f}"
        loss = "-" if r["loss"] is None else f"{r['loss']:.6f}"
        grads = r["gradient_bytes"]
        traced = "n/a (torch allocator)" if "torch" in r["method"] else f"{(r['traced_peak'] - grads) / MiB:.1f}"
        lines.append(
            f"| {r['method']} | {r['median']:.3f} ({runs}) | {ratio} | {cpu} | {loss} | {r['rss_growth'] / MiB:.1f} "
            f"| {(r['rss_growth'] - grads) / MiB:.1f} | {traced} | {r.get('load_average', float('nan')):.1f} |"
        )
    return "\n".join(lines)


def phase_table(report: dict[str, Any]) -> str:
    elapsed, seconds, calls = report["phases"]
    lines = ["| phase | calls | seconds | share of the call |", "|---|---|---|---|"]
    for name in sorted(seconds, key=seconds.get, reverse=True):
        lines.append(f"| {name} | {calls[name]} | {seconds[name]:.3f} | {seconds[name] / elapsed:.1%} |")
    rest = elapsed - sum(seconds.values())
    lines.append(f"| everything else (Python, W, the loss sum) | | {rest:.3f} | {rest / elapsed:.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="quick,full", help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--bf16", action="store_true", help="also the bfloat16 methods: " + ", ".join(BF16_METHODS))
    parser.add_argument("--jsonl", help="append each method's report to this file (JSON lines)")
    parser.add_argument("--table", help="print the tables of the reports in this JSON-lines file, and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        n, d, v = (int(x) for x in args.size.split(","))
        print(json.dumps(worker(args.worker, n, d, v, args.threads, args.repeats)))
        return
    if args.table:
        print_tables(args.table)
        return

    import softmaxloss

    print(f"python {platform.python_version()}, numpy {np.__version__}, softmaxloss {softmaxloss.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {args.threads} threads, "
          f"median of {args.repeats}")
    for size_name in args.sizes.split(","):
        size = SIZES[size_name]
        n, d, v = size
        print(f"\n### N={n}, D={d}, V={v}, float32 ({size_name}; the logits would be {n * v * 4 / MiB:.0f} MiB)\n",
              flush=True)
        reports = []
        methods = args.methods.split(",") + (BF16_METHODS if args.bf16 else [])
        for method in methods:
            report = run_worker(method, size, args.threads, args.repeats)
            if report is not None:
                report["load_average"] = os.getloadavg()[0]
                reports.append(report)
                if args.jsonl:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(report) + "\n")
        print_reports(reports)


def print_reports(reports: list[dict[str, Any]]) -> None:
    print(table(reports))
    for r in reports:
        if r["method"].startswith("softmaxloss.torch") and "chunk_rows" in r:
            print(f"\n{r['method']}: chunks of {r['chunk_rows']} rows: working memory "
                  f"{r['working_bytes'] / MiB:.1f} MiB (one chunk of logits: {r['chunk_rows'] * r['v'] * 4 / MiB:.1f} MiB)")
    fused = next((r for r in reports if r["method"] == "softmaxloss"), None)
    if fused is not None:
        v = fused["v"]
        print(f"\nsoftmaxloss: chunks of {fused['chunk_rows']} rows, dW blocks of {fused['weight_block']} rows: "
              f"working memory {fused['working_bytes'] / MiB:.1f} MiB (one chunk of logits: "
              f"{fused['chunk_rows'] * v * 4 / MiB:.1f} MiB); peak RSS resets: {fused['hwm_reset']}\n")
        print(phase_table(fused))
    print(flush=True)


def print_tables(path: str) -> None:
    """One table per size from a JSON-lines file of reports, methods in the order first seen
    (a method measured again replaces its earlier report)."""
    by_size: dict[tuple[int, int, int], dict[str, dict[str, Any]]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                report = json.loads(line)
                by_size.setdefault((report["n"], report["d"], report["v"]), {})[report["method"]] = report
    for (n, d, v), reports in by_size.items():
        loads = [r["load_average"] for r in reports.values() if "load_average" in r]
        load = f"; load average {min(loads):.1f}-{max(loads):.1f}" if loads else ""
        print(f"\n### N={n}, D={d}, V={v} (the logits would be {n * v * 4 / MiB:.0f} MiB in float32{load})\n")
        print_reports(list(reports.values()))


if __name__ == "__main__":
    main()

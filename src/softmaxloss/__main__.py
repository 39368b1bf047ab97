"""`python -m softmaxloss`: the fused kernel against the NumPy reference (and PyTorch
when installed) on built-in data; `python -m softmaxloss bench` for the benchmark
sweep over class counts; `python -m softmaxloss config` for the build facts."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import numpy as np

from . import _benchmark, _facade, reference
from ._config import show_config

DEMO_SHAPES = ((4096, 10), (1024, 1000), (128, 32000))
TOLERANCE = {"float32": 1e-6, "float64": 1e-12}


def _agree(problem: _benchmark.Problem) -> float:
    """Largest error of the fused kernel against the reference, relative to the
    reference's largest magnitude, over the loss and every gradient entry."""
    loss, grad = _facade.cross_entropy_with_grad(problem.logits, problem.target)
    ref_loss, ref_grad = reference.cross_entropy_with_grad(problem.logits, problem.target)
    loss_error = abs(float(loss) - float(ref_loss)) / abs(float(ref_loss))
    grad_error = float(np.max(np.abs(grad - ref_grad)) / np.max(np.abs(ref_grad)))
    return max(loss_error, grad_error)


def demo(threads: int) -> int:
    """Check the kernel against the reference and time both (and PyTorch)."""
    print(f"softmaxloss.cross_entropy_with_grad on random logits, {threads} thread(s); "
          "median ms per call (speed-up of softmaxloss)")
    print(f"{'N x C':>14} {'dtype':<8} {'max rel. error':>14} {'softmaxloss':>12} {'numpy':>16} {'torch':>16}")
    failures = 0
    for n_rows, n_classes in DEMO_SHAPES:
        for dtype in ("float32", "float64"):
            problem = _benchmark.Problem.random(n_rows, n_classes, dtype)
            error = _agree(problem)
            ok = error <= TOLERANCE[dtype]
            failures += not ok
            cells = []
            contenders = _benchmark.LOCAL["cross_entropy"]
            fast = _benchmark.median_time(contenders["softmaxloss"](problem, threads), repeats=5)
            for name in ("numpy", "torch"):
                try:
                    call = contenders[name](problem, threads)
                except _benchmark.Unavailable:
                    cells.append(f"{'not installed':>16}")
                    continue
                seconds = _benchmark.median_time(call, repeats=5)
                cells.append(f"{seconds * 1e3:8.3f} ({seconds / fast:4.1f}x)")
            print(f"{n_rows:>6} x {n_classes:<6} {dtype:<8} {error:>10.1e} {'ok' if ok else 'BAD':<3}"
                  f"{fast * 1e3:>12.3f} " + " ".join(cells))
    if failures:
        print(f"{failures} result(s) disagree with the reference beyond tolerance")
    return 1 if failures else 0


def _shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        n_rows, n_classes = item.lower().split("x")
        shapes.append((int(n_rows), int(n_classes)))
    return shapes


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _integers(text: str) -> list[int]:
    return [int(item) for item in _list(text)]


def _ops(text: str) -> list[str]:
    return list(_benchmark.OPS) if text.strip() == "all" else _list(text)


def bench(args: argparse.Namespace) -> int:
    """The sweep: progress and skipped contenders on stderr, the tables (or the JSON
    with `--json -`) on stdout."""
    quick = args.quick
    classes = args.classes or (_benchmark.QUICK_CLASSES if quick else _benchmark.DEFAULT_CLASSES)
    logits = args.logits or (_benchmark.QUICK_LOGITS if quick else _benchmark.DEFAULT_LOGITS)
    shapes = args.shapes or [(_benchmark.rows_for(c, logits), c) for c in classes]
    repeats = args.repeats or (_benchmark.QUICK_REPEATS if quick else _benchmark.DEFAULT_REPEATS)
    start = time.perf_counter()
    result = _benchmark.run(
        shapes=shapes, ops=args.ops, dtypes=args.dtypes, threads=args.threads, contenders=args.contenders,
        repeats=repeats, progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    if "cross_entropy" in args.ops:
        result.overhead = _benchmark.per_call_overhead([*args.threads, None], repeats=repeats + 2)
    command = ["python", "-m", "softmaxloss", *sys.argv[1:]] if args.argv is None else args.argv
    print(f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    if args.json:
        text = json.dumps(_benchmark.as_json_ready(result, command), indent=1)
        if args.json == "-":
            print(text)
            return 0
        with open(args.json, "w") as handle:
            handle.write(text + "\n")
    print(f"`{' '.join(command)}` ({_benchmark.cpu_count()} CPUs; medians of {repeats} samples, "
          "contenders timed in alternation; ratios above 1: softmaxloss is faster)")
    print()
    for name, reason in result.skipped.items():
        print(f"- skipped {name}: {reason}")
    if result.skipped:
        print()
    print(_benchmark.markdown_tables(result))
    if result.overhead:
        print()
        print(_benchmark.overhead_table(result.overhead))
    return 0


BENCH_HELP = """Times softmaxloss against np.copyto (the memory floor) and its peers, over class counts:
about --logits logits per case, every op x dtype x thread count, each case's contenders
timed in alternation. Prints a Markdown table per op, dtype and thread count (softmaxloss's
ns per row, its time over copyto's, each peer's time over softmaxloss's) and the per-call
overhead at (64, 10) float32. JAX runs in a worker process per thread count."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m softmaxloss", description=__doc__)
    parser.add_argument("--threads", type=int, default=_benchmark.cpu_count(),
                        help="threads for the demo (default: all CPUs)")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("config", help="print the build and runtime configuration")
    bench_parser = commands.add_parser("bench", help="the benchmark sweep, as ratios to np.copyto and to the peers",
                                       description=BENCH_HELP)
    bench_parser.add_argument("--classes", type=_integers, default=None,
                              help=f"comma-separated class counts (default: {','.join(map(str, _benchmark.DEFAULT_CLASSES))})")
    bench_parser.add_argument("--logits", type=int, default=None,
                              help=f"logits per case: rows = logits / C (default: {_benchmark.DEFAULT_LOGITS})")
    bench_parser.add_argument("--shapes", type=_shapes, default=None,
                              help="comma-separated NxC, instead of --classes and --logits")
    bench_parser.add_argument("--ops", type=_ops, default=["cross_entropy"],
                              help=f"comma-separated subset of {','.join(_benchmark.OPS)}, or all (default: cross_entropy)")
    bench_parser.add_argument("--dtypes", type=_list, default=["float32", "float64"])
    bench_parser.add_argument("--threads", type=_integers, default=[1, 2])
    bench_parser.add_argument("--repeats", type=int, default=None,
                              help=f"samples per median (default: {_benchmark.DEFAULT_REPEATS}, --quick {_benchmark.QUICK_REPEATS})")
    bench_parser.add_argument("--contenders", type=_list, default=list(_benchmark.DEFAULT_CONTENDERS),
                              help=f"subset of {','.join(_benchmark.CONTENDERS)} (default: all but numpy, the slow "
                                   "reference); softmaxloss is always timed")
    bench_parser.add_argument("--quick", action="store_true",
                              help=f"a smoke run: C in {','.join(map(str, _benchmark.QUICK_CLASSES))}, "
                                   f"{_benchmark.QUICK_LOGITS} logits, {_benchmark.QUICK_REPEATS} samples")
    bench_parser.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-': JSON on stdout only)")
    bench_parser.add_argument("--markdown", action="store_true", help="(the tables are always printed; kept for old commands)")
    args = parser.parse_args(argv)
    if args.command == "config":
        show_config()
        return 0
    if args.command == "bench":
        args.argv = None if argv is None else ["python", "-m", "softmaxloss", *argv]
        for option, given, known in (("contenders", args.contenders, _benchmark.CONTENDERS),
                                     ("ops", args.ops, _benchmark.OPS),
                                     ("dtypes", args.dtypes, ("float32", "float64"))):
            unknown = sorted(set(given) - set(known))
            if unknown:
                parser.error(f"unknown {option} {unknown}; choose from {list(known)}")
        if any(count < 1 for count in args.threads) or (args.repeats is not None and args.repeats < 1):
            parser.error("--threads and --repeats must be positive")
        if args.classes is not None and any(c < 1 for c in args.classes):
            parser.error("--classes must be positive")
        return bench(args)
    return demo(args.threads)


if __name__ == "__main__":
    sys.exit(main())

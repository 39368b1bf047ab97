"""`python -m softmaxloss`: the fused kernel against the NumPy reference (and PyTorch
when installed) on built-in data; `python -m softmaxloss bench` for the full
benchmark; `python -m softmaxloss config` for the build facts."""

from __future__ import annotations

import argparse
import json
import sys
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
            fast = _benchmark.median_time(_benchmark._softmaxloss(problem, threads), repeats=5)
            for name in ("numpy", "torch"):
                call = _benchmark.CONTENDERS[name](problem, threads)
                if call is None:
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


def bench(args: argparse.Namespace) -> int:
    names = [name for name in _benchmark.CONTENDERS if name in args.contenders]
    if not args.json or args.json != "-":
        print(_benchmark.header(names))
    rows = _benchmark.run(
        shapes=args.shapes, dtypes=args.dtypes, threads=args.threads, contenders=names,
        repeats=args.repeats,
        progress=None if args.json == "-" else lambda row: print(_benchmark.format_row(row, names), flush=True),
    )
    if args.markdown:
        print()
        print(_benchmark.markdown_table(rows))
    if args.json:
        text = json.dumps(_benchmark.as_json_ready(rows), indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as handle:
                handle.write(text + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m softmaxloss", description=__doc__)
    parser.add_argument("--threads", type=int, default=_benchmark.cpu_count(),
                        help="threads for the demo (default: all CPUs)")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("config", help="print the build and runtime configuration")
    bench_parser = commands.add_parser("bench", help="the full benchmark, as ratios to np.copyto")
    bench_parser.add_argument("--shapes", type=_shapes, default=list(_benchmark.DEFAULT_SHAPES),
                              help="comma-separated NxC (default: %(default)s)")
    bench_parser.add_argument("--dtypes", type=_list, default=["float32", "float64"])
    bench_parser.add_argument("--threads", type=lambda t: [int(x) for x in _list(t)], default=[1, 2])
    bench_parser.add_argument("--repeats", type=int, default=7, help="samples per median")
    bench_parser.add_argument("--contenders", type=_list, default=list(_benchmark.CONTENDERS),
                              help=f"subset of {','.join(_benchmark.CONTENDERS)}")
    bench_parser.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-': stdout only)")
    bench_parser.add_argument("--markdown", action="store_true", help="also print a Markdown table of ratios")
    args = parser.parse_args(argv)
    if args.command == "config":
        show_config()
        return 0
    if args.command == "bench":
        unknown = set(args.contenders) - set(_benchmark.CONTENDERS)
        if unknown:
            parser.error(f"unknown contenders {sorted(unknown)}; choose from {list(_benchmark.CONTENDERS)}")
        return bench(args)
    return demo(args.threads)


if __name__ == "__main__":
    sys.exit(main())

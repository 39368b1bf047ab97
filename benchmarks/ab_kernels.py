"""Interleaved A/B timing of two builds of the cross-entropy kernel, in one process.

On a shared, noisy machine two benchmark runs minutes apart can differ by 1.5x; two
builds timed call by call in alternation see the same load. An A/A run (the same
build twice) agrees to about 1% here, so a few percent between builds is real.

Build each variant's extension modules into a directory of its own (e.g. `pip install
--no-deps --target DIR .`, or a build_ext --inplace of a modified copy of src/), then:

    python benchmarks/ab_kernels.py DIR_A/softmaxloss DIR_B/softmaxloss \\
        [--classes 4,10,16] [--rows 65536] [--repeats 15] [--kernels avx2] [--kernels-b NAME]

`--kernels` names the row of `softmaxloss._builds` whose module is timed (baseline, avx2,
avx512, ...); `--kernels-b` another row for B (default: the same), e.g. whether the avx512
build beats avx2 on this CPU, one install twice:

    python benchmarks/ab_kernels.py DIR/softmaxloss DIR/softmaxloss --kernels avx2 --kernels-b avx512

Prints ns per row of each build, and A's time over B's (above 1: B is faster), for
`cross_entropy_index` with its gradient (and, with `--ops`, `softmax`, `log_softmax`,
`logsumexp`, `gradient_hessian`), float32 and float64, on each of `--threads` (default 1).
`--logits N` sizes every case at about N logits (rows = N / C) instead of `--rows`.
`--dtypes` adds bfloat16 (needs ml_dtypes) and float16 logits (cross_entropy and softmax:
the half kernels, `*_half`).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import statistics
import time
from pathlib import Path
from types import ModuleType

import numpy as np


def load(directory: str, module: str) -> ModuleType:
    """The compiled `module` (e.g. _kernels_avx2) found in `directory`, under its own name."""
    paths = glob.glob(str(Path(directory) / f"{module}.*.so")) + glob.glob(str(Path(directory) / f"{module}.*.pyd"))
    if len(paths) != 1:
        raise SystemExit(f"expected one {module} extension in {directory}, found {paths}")
    spec = importlib.util.spec_from_file_location(f"softmaxloss.{module}", paths[0])
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def module_of(build: str) -> str:
    """The module of a row of `_builds.BUILDS` (the table's naming: `_kernels` for the
    baseline, `_kernels_<name>` for the others)."""
    return "_kernels" if build == "baseline" else f"_kernels_{build}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="directory holding build A's compiled kernels")
    parser.add_argument("b", help="directory holding build B's compiled kernels")
    parser.add_argument("--classes", default="4,10,16", help="comma-separated class counts")
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=15, help="calls of each build (median taken)")
    parser.add_argument("--kernels", default="avx2", help="the build timed (a row of softmaxloss._builds)")
    parser.add_argument("--kernels-b", help="the build timed for B, if not the same")
    parser.add_argument("--ops", default="cross_entropy", help=f"comma-separated subset of {','.join(OPS)}")
    parser.add_argument("--threads", default="1", help="comma-separated thread counts")
    parser.add_argument("--logits", type=int, help="logits per case (rows = logits / C), instead of --rows")
    parser.add_argument("--dtypes", default="float32,float64",
                        help=f"comma-separated subset of {','.join(DTYPES)} (half: cross_entropy and softmax only)")
    args = parser.parse_args()
    builds = {"A": load(args.a, module_of(args.kernels)), "B": load(args.b, module_of(args.kernels_b or args.kernels))}
    rng = np.random.default_rng(0)
    for op in args.ops.split(","):
        for n_threads in (int(t) for t in args.threads.split(",")):
            for dtype_name in args.dtypes.split(","):
                signature = DTYPES[dtype_name]
                half = signature in HALF_KINDS
                if half and op not in HALF_OPS:
                    continue
                for n_classes in (int(c) for c in args.classes.split(",")):
                    rows = max(1, args.logits // n_classes) if args.logits else args.rows
                    x = rng.standard_normal((rows, 1, n_classes)) * 3
                    if half:  # the half kernels take the bits (uint16) and the kind
                        x = half_bits(x, signature)
                        call = HALF_OPS[op](x, rng.integers(0, n_classes, (rows, 1)), n_threads, HALF_KINDS[signature])
                    else:
                        x = x.astype(dtype_name)
                        call = OPS[op](x, rng.integers(0, n_classes, (rows, 1)), n_threads)
                    seconds: dict[str, list[float]] = {"A": [], "B": []}
                    for _ in range(args.repeats):
                        for name, kernels in builds.items():  # alternate, call by call
                            kernel = getattr(kernels, KERNEL_OF[op] + "_half") if half else \
                                getattr(kernels, KERNEL_OF[op]).__signatures__[signature]
                            start = time.perf_counter()
                            call(kernel)
                            seconds[name].append(time.perf_counter() - start)
                    a, b = (statistics.median(seconds[name]) for name in ("A", "B"))
                    print(
                        f"{op} {n_threads} thread(s) {dtype_name} C={n_classes:6d}: "
                        f"A {a / rows * 1e9:9.1f} ns/row  B {b / rows * 1e9:9.1f} ns/row  A/B {a / b:.3f}x",
                        flush=True,
                    )


def _cross_entropy(x, target, n_threads):
    row_loss, grad = np.empty(x.shape[:2]), np.empty_like(x)
    return lambda kernel: kernel(x, target, None, None, -100, 0.0, 0.0, True, row_loss, grad, n_threads)


def _softmax(log_output):
    def make(x, target, n_threads):
        out = np.empty_like(x)
        return lambda kernel: kernel(x, out, log_output, n_threads)
    return make


def _logsumexp(x, target, n_threads):
    out = np.empty(x.shape[:2])
    return lambda kernel: kernel(x, out, n_threads)


def _gradient_hessian(x, target, n_threads):
    grad, hess = np.empty_like(x), np.empty_like(x)
    return lambda kernel: kernel(x, target, None, grad, hess, n_threads)


def half_bits(x, kind_name):
    """x rounded to float16 or bfloat16 (ml_dtypes, needed for it), as its uint16 bits."""
    if kind_name == "float16":
        return x.astype(np.float16).view(np.uint16)
    import ml_dtypes

    return x.astype(ml_dtypes.bfloat16).view(np.uint16)


def _cross_entropy_half(x, target, n_threads, kind):
    row_loss, grad = np.empty(x.shape[:2]), np.empty_like(x)
    return lambda kernel: kernel(x, target, None, None, -100, 0.0, 0.0, True, row_loss, grad, kind, n_threads)


def _softmax_half(x, target, n_threads, kind):
    out = np.empty_like(x)
    return lambda kernel: kernel(x, out, False, kind, n_threads)


# dtype name: the fused-type signature of the float kernels, or the half kind's name
DTYPES = {"float32": "float", "float64": "double", "bfloat16": "bfloat16", "float16": "float16"}
HALF_KINDS = {"bfloat16": 0, "float16": 1}  # the half kernels' `kind`
HALF_OPS = {"cross_entropy": _cross_entropy_half, "softmax": _softmax_half}
# op: how to call its kernel on (x, target, n_threads); KERNEL_OF: the kernel's name
OPS = {"cross_entropy": _cross_entropy, "softmax": _softmax(False), "log_softmax": _softmax(True),
       "logsumexp": _logsumexp, "gradient_hessian": _gradient_hessian}
KERNEL_OF = {"cross_entropy": "cross_entropy_index", "softmax": "softmax", "log_softmax": "softmax",
             "logsumexp": "logsumexp", "gradient_hessian": "gradient_hessian"}


if __name__ == "__main__":
    main()

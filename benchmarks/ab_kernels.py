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
`cross_entropy_index` with its gradient, float32 and float64, one thread.
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
    args = parser.parse_args()
    builds = {"A": load(args.a, module_of(args.kernels)), "B": load(args.b, module_of(args.kernels_b or args.kernels))}
    rng = np.random.default_rng(0)
    for dtype, signature in ((np.float32, "float"), (np.float64, "double")):
        for n_classes in (int(c) for c in args.classes.split(",")):
            x = (rng.standard_normal((args.rows, 1, n_classes)) * 3).astype(dtype)
            target = rng.integers(0, n_classes, (args.rows, 1))
            row_loss = np.empty((args.rows, 1))
            grad = np.empty_like(x)
            seconds: dict[str, list[float]] = {"A": [], "B": []}
            for _ in range(args.repeats):
                for name, kernels in builds.items():  # alternate, call by call
                    kernel = kernels.cross_entropy_index.__signatures__[signature]
                    start = time.perf_counter()
                    kernel(x, target, None, None, -100, 0.0, 0.0, True, row_loss, grad, 1)
                    seconds[name].append(time.perf_counter() - start)
            a, b = (statistics.median(seconds[name]) for name in ("A", "B"))
            print(
                f"{np.dtype(dtype).name} C={n_classes:4d}: A {a / args.rows * 1e9:7.1f} ns/row  "
                f"B {b / args.rows * 1e9:7.1f} ns/row  A/B {a / b:.2f}x"
            )


if __name__ == "__main__":
    main()

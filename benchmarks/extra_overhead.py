"""What each option of issue 16 adds to the plain cross-entropy call, in one process.

For each build directory given (e.g. `pip install --no-deps --target DIR .`), each class
count and each option, the plain `cross_entropy_index` call (loss + gradient, float32
unless --dtype) and the call with the option are timed in alternation, call by call, and
the median of the per-pair ratios (option / plain) is printed as the overhead. The option
`plain` times the plain call against itself: the A/A noise floor of the same run.

    flock /tmp/softmaxloss-bench.lock python benchmarks/extra_overhead.py DIR/softmaxloss \
        [DIR2/softmaxloss ...] --classes 1000,32000,128256 --logits 131072 --repeats 61 \
        --options plain,lse,entropy,argmax,softcap,focal

Builds are interleaved too (the pairs of build 1, then of build 2, ..., repeated), so two
builds' overheads see the same load.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from ab_kernels import load  # benchmarks/ab_kernels.py: a build directory's kernel module


def calls(kernels, signature, x, target, n_threads, cap):
    """name -> a call of the kernel (the plain one under "plain")."""
    rows = x.shape[:2]
    row_loss, grad = np.empty(rows), np.empty_like(x)
    lse, entropy, argmax = np.empty(rows), np.empty(rows), np.empty(rows, dtype=np.int64)
    index = kernels.cross_entropy_index.__signatures__[signature]
    softcap = kernels.cross_entropy_index_softcap.__signatures__[signature]
    args = (x, target, None, None, -100, 0.0, 0.0, True, row_loss, grad)
    return {
        "plain": lambda: index(*args, n_threads),
        "lse": lambda: index(*args, n_threads, False, lse),
        "entropy": lambda: index(*args, n_threads, False, None, entropy),
        "argmax": lambda: index(*args, n_threads, False, None, None, argmax),
        "all3": lambda: index(*args, n_threads, False, lse, entropy, argmax),
        "focal": lambda: index(*args, n_threads, False, None, None, None, 2.0),
        "softcap": lambda: softcap(*args, cap, 0, n_threads),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("builds", nargs="+", help="directories holding compiled kernels")
    parser.add_argument("--classes", default="1000,32000,128256")
    parser.add_argument("--logits", type=int, default=131072, help="logits per case (rows = logits / C)")
    parser.add_argument("--repeats", type=int, default=61)
    parser.add_argument("--options", default="plain,lse,entropy,argmax,softcap,focal")
    parser.add_argument("--kernels", default="_kernels_avx2", help="module timed in each build")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cap", type=float, default=30.0)
    args = parser.parse_args()
    mods = [load(b, args.kernels) for b in args.builds]
    dtype = np.dtype(args.dtype)
    signature = "float" if dtype == np.float32 else "double"
    rng = np.random.default_rng(0)
    for n_classes in (int(c) for c in args.classes.split(",")):
        rows = max(1, args.logits // n_classes)
        x = (rng.standard_normal((rows, 1, n_classes)) * 3).astype(dtype)
        target = rng.integers(0, n_classes, (rows, 1))
        made = [calls(m, signature, x, target, args.threads, args.cap) for m in mods]
        for option in args.options.split(","):
            plain_t = [[] for _ in mods]
            ratios = [[] for _ in mods]
            for _ in range(args.repeats):
                for i, c in enumerate(made):
                    t0 = time.perf_counter()
                    c["plain"]()
                    t1 = time.perf_counter()
                    c[option]()
                    t2 = time.perf_counter()
                    plain_t[i].append(t1 - t0)
                    ratios[i].append((t2 - t1) / (t1 - t0))
            cells = "  ".join(
                f"[{i}] plain {statistics.median(p) / rows * 1e9:8.1f} ns/row  +{(statistics.median(r) - 1) * 100:6.1f} %"
                for i, (p, r) in enumerate(zip(plain_t, ratios)))
            print(f"{dtype.name} C={n_classes:6d} {option:8s} {cells}", flush=True)


if __name__ == "__main__":
    main()

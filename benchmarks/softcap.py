"""The cost of softcap= (issue 16 item 2): cross_entropy_with_grad with softcap=30 against the
plain call, same logits, same `out`, interleaved rounds in one process, medians.

    flock /tmp/softmaxloss-bench.lock python benchmarks/softcap.py --repeats 15

Also, for scale: the capped logits formed by NumPy first (cap * np.tanh(x / cap), an N x C
temporary) and then the plain call, the gradient times the slope (what a caller without the
keyword would do), and np.copyto of the logits (the memory floor).
"""

import argparse
import statistics
import time

import numpy as np

import softmaxloss as sml
from softmaxloss import _dispatch

CAP = 30.0


def _timed(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"kernels: {_dispatch.active_name()}, dtype {args.dtype}, cap {CAP}, medians of {args.repeats} rounds")
    print("| N x C | threads | plain | softcap=30 | ratio | NumPy tanh + plain + slope | copyto |")
    print("|---|---|---|---|---|---|---|")
    for n_rows, n_classes in ((4096, 1000), (256, 32000)):
        x = (rng.standard_normal((n_rows, n_classes)) * 10).astype(args.dtype)
        t = rng.integers(0, n_classes, n_rows)
        out = np.empty_like(x)
        floor = np.empty_like(x)
        for threads in args.threads:
            def numpy_tanh():
                capped = (CAP * np.tanh(x / CAP)).astype(x.dtype)
                _, grad = sml.cross_entropy_with_grad(capped, t, out=out, n_threads=threads)
                e = np.exp(-2 * np.abs(x / CAP))
                grad *= 4 * e / (1 + e) ** 2

            calls = {
                "plain": lambda: sml.cross_entropy_with_grad(x, t, out=out, n_threads=threads),
                "softcap": lambda: sml.cross_entropy_with_grad(x, t, out=out, softcap=CAP, n_threads=threads),
                "numpy": numpy_tanh,
                "copyto": lambda: np.copyto(floor, x),
            }
            times = {name: [] for name in calls}
            for call in calls.values():
                call()
            for _ in range(args.repeats):
                for name, call in calls.items():
                    times[name].append(_timed(call))
            m = {name: statistics.median(v) * 1e3 for name, v in times.items()}
            print(f"| {n_rows} x {n_classes} | {threads} | {m['plain']:.2f} ms | {m['softcap']:.2f} ms | "
                  f"{m['softcap'] / m['plain']:.3f} | {m['numpy']:.2f} ms | {m['copyto']:.2f} ms |", flush=True)


if __name__ == "__main__":
    main()

"""The cost of softcap= (issue 16 item 2): cross_entropy_with_grad with softcap=30 against the
plain call, same logits, same `out`, interleaved rounds in one process, medians.

    flock /tmp/softmaxloss-bench.lock python benchmarks/softcap.py --repeats 15

Also, for scale: the capped logits formed by NumPy first (cap * np.tanh(x / cap), an N x C
temporary) and then the plain call, the gradient times the slope (what a caller without the
keyword would do), and np.copyto of the logits (the memory floor).

    flock /tmp/softmaxloss-bench.lock python benchmarks/softcap.py --ab DIR_A/softmaxloss DIR_B/softmaxloss

times two builds side by side instead (each installed with `pip install --no-deps --target`):
their `_kernels_avx2` kernels `cross_entropy_index` and `cross_entropy_index_softcap` with a
gradient, called directly, interleaved, medians (before / after a change of the capping).
"""

import argparse
import glob
import importlib.util
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


def _load(directory):
    """A build's _kernels_avx2 module, loaded from its directory under the usual name."""
    path = glob.glob(f"{directory}/_kernels_avx2.*.so")[0]
    spec = importlib.util.spec_from_file_location("softmaxloss._kernels_avx2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ab(dir_a, dir_b, repeats, thread_counts, dtype):
    a, b = _load(dir_a), _load(dir_b)
    rng = np.random.default_rng(0)
    print(f"A = {dir_a}, B = {dir_b}, dtype {dtype}, cap {CAP}, medians of {repeats} rounds")
    print("| N x C | threads | plain A | plain B | softcap A | softcap B | A ratio | B ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for n_rows, n_classes in ((4096, 1000), (256, 32000)):
        x = (rng.standard_normal((1, n_rows, n_classes)) * 10).astype(dtype)
        t = rng.integers(0, n_classes, (1, n_rows))
        grad, row_loss = np.empty_like(x), np.empty((1, n_rows))
        for threads in thread_counts:
            def plain(k):
                return lambda: k.cross_entropy_index(x, t, None, None, -100, 0.0, 0.0, True, row_loss, grad, threads)

            def capped(k):
                return lambda: k.cross_entropy_index_softcap(x, t, None, None, -100, 0.0, 0.0, True, row_loss,
                                                             grad, CAP, 0, threads)

            calls = {"pa": plain(a), "pb": plain(b), "sa": capped(a), "sb": capped(b)}
            times = {name: [] for name in calls}
            for call in calls.values():
                call()
            for _ in range(repeats):
                for name, call in calls.items():
                    times[name].append(_timed(call))
            m = {name: statistics.median(v) * 1e3 for name, v in times.items()}
            print(f"| {n_rows} x {n_classes} | {threads} | {m['pa']:.2f} ms | {m['pb']:.2f} ms | {m['sa']:.2f} ms | "
                  f"{m['sb']:.2f} ms | {m['sa'] / m['pa']:.2f} | {m['sb'] / m['pb']:.2f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--ab", nargs=2, metavar=("DIR_A", "DIR_B"), help="two builds' package directories")
    args = parser.parse_args()
    if args.ab:
        ab(*args.ab, args.repeats, args.threads, args.dtype)
        return
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

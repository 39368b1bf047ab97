"""Cost of the extra outputs and of the focal loss (issue 16 items 3-4) over the plain call.

For each class count, dtype float32, thread count and call (loss only, loss + gradient),
the median time of the plain call and of the same call with return_lse, return_entropy,
return_argmax, all three, and focal_gamma=2, measured interleaved in the same run
(round-robin over the variants, `--repeats` rounds): each ratio is to the plain call's
median of the same run. Run it under the lock:

    flock /tmp/softmaxloss-bench.lock python benchmarks/extra_outputs.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import softmaxloss as sml

VARIANTS = {
    "plain": {},
    "lse": {"return_lse": True},
    "entropy": {"return_entropy": True},
    "argmax": {"return_argmax": True},
    "all three": {"return_lse": True, "return_entropy": True, "return_argmax": True},
    "focal 2": {"focal_gamma": 2.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 4096, 32000])
    parser.add_argument("--elements", type=float, default=8e6, help="logits per call (rows = elements / C)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"softmaxloss {sml.__version__}, float32, {args.elements:.0f} logits per call, "
          f"median of {args.repeats} interleaved rounds; ratio to the plain call of the same run")
    print(f"{'C':>6} {'rows':>6} {'thr':>3} {'call':<10} " + " ".join(f"{name:>18}" for name in VARIANTS))
    for n_classes in args.classes:
        n_rows = max(1, int(args.elements // n_classes))
        x = rng.standard_normal((n_rows, n_classes)).astype(np.float32) * 2
        target = rng.integers(0, n_classes, n_rows)
        out = np.empty_like(x)
        for threads in args.threads:
            for call in ("loss", "loss+grad"):
                def run(keywords: dict, call: str = call, threads: int = threads) -> None:
                    if call == "loss":
                        sml.cross_entropy(x, target, n_threads=threads, **keywords)
                    else:
                        sml.cross_entropy_with_grad(x, target, out=out, n_threads=threads, **keywords)
                times: dict[str, list[float]] = {name: [] for name in VARIANTS}
                for keywords in VARIANTS.values():
                    run(keywords)  # warm up
                for _ in range(args.repeats):
                    for name, keywords in VARIANTS.items():
                        start = time.perf_counter()
                        run(keywords)
                        times[name].append(time.perf_counter() - start)
                medians = {name: float(np.median(t)) for name, t in times.items()}
                cells = [f"{medians[name] * 1e3:8.2f} ms {medians[name] / medians['plain']:5.3f}x"
                         for name in VARIANTS]
                print(f"{n_classes:>6} {n_rows:>6} {threads:>3} {call:<10} " + " ".join(f"{c:>18}" for c in cells),
                      flush=True)


if __name__ == "__main__":
    main()

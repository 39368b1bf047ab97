"""Time of one PyTorch training step with torch's cross-entropy and with softmaxloss's.

A step is what a training loop does per batch: zero_grad, the model's forward pass, the
loss, backward, an SGD update. The two losses run in the same process, with the same
thread count (softmaxloss.torch uses torch.get_num_threads()), on the same model and
batch, interleaved sample by sample so that a change in machine load hits both alike.
Each figure is the median over `--repeats` samples of the mean step time of a loop of
steps lasting about `--seconds`; the ratio is torch's time over softmaxloss's (above 1:
softmaxloss's step is faster). "loss only" times the loss's forward + backward alone on
fixed logits (no model), the part of the step the loss owns.

    python benchmarks/training_step.py [--threads N] [--repeats R] [--markdown]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

import softmaxloss
import softmaxloss.torch as smt

# (name, batch rows, input features, hidden width, classes)
CONFIGS = [
    ("MLP, 10 classes", 4096, 64, 256, 10),
    ("MLP, 1000 classes", 1024, 256, 512, 1000),
    ("LM head, 32k vocabulary", 2048, 256, 256, 32000),
]


def sample(step: Callable[[], object], seconds: float) -> float:
    """Mean seconds per call over a loop lasting about `seconds`."""
    start = time.perf_counter()
    step()
    once = max(time.perf_counter() - start, 1e-6)
    loops = max(1, round(seconds / once))
    start = time.perf_counter()
    for _ in range(loops):
        step()
    return (time.perf_counter() - start) / loops


def compare(steps: dict[str, Callable[[], object]], repeats: int, seconds: float) -> dict[str, float]:
    """Median seconds per step of each contender, sampled in alternation."""
    for step in steps.values():  # warm up: allocator, thread pool, first-touch pages
        step()
        step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(repeats):
        names = list(steps) if r % 2 == 0 else list(reversed(steps))
        for name in names:
            samples[name].append(sample(steps[name], seconds))
    return {name: statistics.median(times) for name, times in samples.items()}


def training_steps(rows: int, features: int, hidden: int, classes: int) -> dict[str, Callable[[], object]]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, features, generator=generator)
    y = torch.randint(0, classes, (rows,), generator=generator)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step_with(loss_function: Callable[..., torch.Tensor]) -> Callable[[], object]:
        def step() -> object:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(model(x), y)
            loss.backward()
            optimizer.step()
            return loss

        return step

    return {
        "torch": step_with(torch.nn.functional.cross_entropy),
        "softmaxloss": step_with(smt.cross_entropy),
        "softmaxloss inplace_grad": step_with(lambda z, t: smt.cross_entropy(z, t, inplace_grad=True)),
    }


def loss_only(rows: int, classes: int) -> dict[str, Callable[[], object]]:
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(rows, classes, generator=generator) * 4).requires_grad_(True)
    y = torch.randint(0, classes, (rows,), generator=generator)

    def with_(loss_function: Callable[..., torch.Tensor]) -> Callable[[], object]:
        def step() -> object:
            logits.grad = None
            loss = loss_function(logits, y)
            loss.backward()
            return loss

        return step

    return {"torch": with_(torch.nn.functional.cross_entropy), "softmaxloss": with_(smt.cross_entropy)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=7, help="samples per contender (median taken)")
    parser.add_argument("--seconds", type=float, default=0.3, help="length of one sample's loop")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, softmaxloss {softmaxloss.__version__}, {threads} thread(s), "
          f"{platform.machine()}, median of {args.repeats}")

    header = ["workload (float32)", "torch step", "softmaxloss step", "speed-up",
              "with inplace_grad", "speed-up", "loss only: torch", "softmaxloss", "speed-up"]
    rows = []
    for name, batch, features, hidden, classes in CONFIGS:
        step = compare(training_steps(batch, features, hidden, classes), args.repeats, args.seconds)
        loss = compare(loss_only(batch, classes), args.repeats, args.seconds)
        ms = lambda s: f"{s * 1e3:.2f} ms"  # noqa: E731
        rows.append([
            f"{name}: {batch} x {features} -> {hidden} -> {classes}",
            ms(step["torch"]), ms(step["softmaxloss"]), f"{step['torch'] / step['softmaxloss']:.2f}x",
            ms(step["softmaxloss inplace_grad"]), f"{step['torch'] / step['softmaxloss inplace_grad']:.2f}x",
            ms(loss["torch"]), ms(loss["softmaxloss"]), f"{loss['torch'] / loss['softmaxloss']:.2f}x",
        ])
        if not args.markdown:
            print("  ".join(rows[-1]), flush=True)
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

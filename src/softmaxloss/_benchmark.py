"""Timing of the fused loss + gradient against the memory floor and other libraries.

Every figure is a median over repeated calls, and every ratio is taken against
a baseline measured in the same run on the same arrays: these machines are shared
and noisy, so an absolute time means little and a ratio a lot.

The floor is one `np.copyto(grad, logits)`: a fused loss + gradient must read the
logits once and write the gradient once, which is exactly what a copy does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import _facade, reference

Call = Callable[[], Any]

DEFAULT_SHAPES = ((65536, 10), (8192, 1000), (2048, 32000), (256, 128256))


def median_time(call: Call, repeats: int, min_seconds: float = 0.02, max_seconds: float = 2.0) -> float:
    """Median seconds per call over `repeats` samples; each sample loops the call
    enough times to last about `min_seconds`, so that tiny calls are measurable. A call
    so slow that `repeats` samples would take over `max_seconds` gets fewer, at least 3
    (the NumPy reference takes seconds per call at the large shapes)."""
    start = time.perf_counter()
    call()  # warm up (first-touch page faults, JIT compilation, thread start-up) and estimate
    once = max(time.perf_counter() - start, 1e-7)
    loops = max(1, int(min_seconds / once))
    if once * repeats > max_seconds:
        repeats = max(3, int(max_seconds / once))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            call()
        samples.append((time.perf_counter() - start) / loops)
    return float(np.median(samples))


@dataclass
class Problem:
    """One benchmark input: logits, class-index targets and a gradient buffer."""

    n_rows: int
    n_classes: int
    dtype: str
    logits: np.ndarray = field(repr=False)
    target: np.ndarray = field(repr=False)
    grad: np.ndarray = field(repr=False)

    @classmethod
    def random(cls, n_rows: int, n_classes: int, dtype: str, seed: int = 0) -> Problem:
        rng = np.random.default_rng(seed)
        logits = (rng.standard_normal((n_rows, n_classes), np.float32) * 4).astype(dtype)
        target = rng.integers(0, n_classes, n_rows)
        grad = np.ones_like(logits)  # touched: no first-write page faults in the timings
        return cls(n_rows, n_classes, dtype, logits, target, grad)


# ---- contenders: each returns a zero-argument call computing loss + gradient, or None


def _copyto(problem: Problem, threads: int) -> Call:
    return lambda: np.copyto(problem.grad, problem.logits)


def _softmaxloss(problem: Problem, threads: int) -> Call:
    return lambda: _facade.cross_entropy_with_grad(
        problem.logits, problem.target, out=problem.grad, n_threads=threads
    )


def _reference(problem: Problem, threads: int) -> Call:
    return lambda: reference.cross_entropy_with_grad(problem.logits, problem.target)


def _torch(problem: Problem, threads: int) -> Call | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    logits = torch.from_numpy(problem.logits).requires_grad_()
    target = torch.from_numpy(problem.target)

    def call() -> Any:
        logits.grad = None
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        return loss

    return call


def _jax(problem: Problem, threads: int) -> Call | None:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    if problem.dtype == "float64" and not jax.config.read("jax_enable_x64"):
        return None

    def loss(logits: Any, target: Any) -> Any:
        log_p = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(log_p, target[:, None], axis=-1))

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    logits = jax.device_put(problem.logits)
    target = jax.device_put(problem.target.astype(np.int32))
    return lambda: jax.block_until_ready(value_and_grad(logits, target))


def _sklearn(problem: Problem, threads: int) -> Call | None:
    try:
        from sklearn._loss.loss import HalfMultinomialLoss
    except ImportError:
        return None
    loss = HalfMultinomialLoss(n_classes=problem.n_classes)
    y_true = problem.target.astype(problem.dtype)
    loss_out = np.empty(problem.n_rows, problem.dtype)
    return lambda: loss.loss_gradient(
        y_true=y_true, raw_prediction=problem.logits, loss_out=loss_out,
        gradient_out=problem.grad, n_threads=threads,
    )


# Contenders that use one thread whatever the thread count: timed once per problem.
SINGLE_THREADED = frozenset({"numpy"})

CONTENDERS: dict[str, Callable[[Problem, int], Call | None]] = {
    "copyto": _copyto,
    "softmaxloss": _softmaxloss,
    "numpy": _reference,
    "torch": _torch,
    "jax": _jax,
    "sklearn": _sklearn,
}


@dataclass
class Row:
    """Median seconds per call of each contender on one problem and thread count."""

    n_rows: int
    n_classes: int
    dtype: str
    threads: int
    seconds: dict[str, float]

    def ratio(self, name: str, baseline: str = "copyto") -> float:
        return self.seconds[name] / self.seconds[baseline]


def run(
    shapes: Iterable[Sequence[int]] = DEFAULT_SHAPES,
    dtypes: Iterable[str] = ("float32", "float64"),
    threads: Iterable[int] = (1, 2),
    contenders: Iterable[str] = tuple(CONTENDERS),
    repeats: int = 7,
    progress: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Time every contender on every shape x dtype x thread count."""
    rows = []
    for n_rows, n_classes in shapes:
        for dtype in dtypes:
            problem = Problem.random(n_rows, n_classes, dtype)
            single_threaded: dict[str, float] = {}
            for thread_count in threads:
                seconds = {}
                for name in contenders:
                    if name in single_threaded:
                        seconds[name] = single_threaded[name]
                        continue
                    call = CONTENDERS[name](problem, thread_count)
                    if call is not None:
                        seconds[name] = median_time(call, repeats)
                        if name in SINGLE_THREADED:
                            single_threaded[name] = seconds[name]
                row = Row(n_rows, n_classes, dtype, thread_count, seconds)
                rows.append(row)
                if progress is not None:
                    progress(row)
    return rows


def format_row(row: Row, names: Sequence[str]) -> str:
    """One table line: the shape, then each contender as time and ratio to copyto."""
    cells = [f"{row.n_rows:>6} x {row.n_classes:<6} {row.dtype:<7} {row.threads:>2}"]
    for name in names:
        if name not in row.seconds:
            cells.append(f"{'-':>18}")
        elif "copyto" in row.seconds and name != "copyto":
            cells.append(f"{row.seconds[name] * 1e3:9.3f} ({row.ratio(name):5.2f}x)")
        else:
            cells.append(f"{row.seconds[name] * 1e3:9.3f}         ")
    return " | ".join(cells)


def header(names: Sequence[str]) -> str:
    title = f"{'N':>6} x {'C':<6} {'dtype':<7} {'th':>2}"
    return " | ".join([title] + [f"{name + ' ms (/copyto)':>18}" for name in names])


def markdown_table(rows: Sequence[Row]) -> str:
    """The results as a Markdown table: every contender's median time as a ratio to
    copyto's in the same run, and softmaxloss's speed-up over PyTorch and JAX."""
    names = [n for n in CONTENDERS if n != "copyto" and any(n in r.seconds for r in rows)]
    others = [n for n in ("torch", "jax", "numpy") if n in names]
    head = ["N x C", "dtype", "threads", "copyto ms"] + [f"{n} / copyto" for n in names]
    head += [f"speed-up vs {n}" for n in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"{row.n_rows} x {row.n_classes}", row.dtype, str(row.threads), f"{row.seconds['copyto'] * 1e3:.3f}"]
        cells += [f"{row.ratio(n):.2f}" if n in row.seconds else "-" for n in names]
        cells += [
            f"{row.seconds[n] / row.seconds['softmaxloss']:.1f}x" if n in row.seconds else "-" for n in others
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def as_json_ready(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [asdict(row) | {"ratios_to_copyto": {n: row.ratio(n) for n in row.seconds if "copyto" in row.seconds}} for row in rows]


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

"""Timing of softmaxloss against the memory floor and its peers, over class counts.

Every figure is a median of repeated samples, and every ratio is taken between
contenders timed in the same run on the same arrays, in alternation: for each case
(operation x class count x dtype x thread count) every contender takes one sample in
turn, round after round, so that they all see the same load. These machines are
shared and noisy: an absolute time means little and a ratio a lot.

The floor is one `np.copyto(grad, logits)`: a fused loss + gradient must read the
logits once and write the gradient once, which is exactly what a copy does.

JAX reads its thread count once, when its CPU backend starts, so its contender runs in
one worker process per thread count (pinned to that many CPUs, and with
`--xla_cpu_multi_thread_eigen=false` for one thread), driven sample by sample from here.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from . import _facade, reference

Call = Callable[[], Any]

# About 2M logits per case, from 2 classes to 2^17, powers of two and others (the block
# path ends at 23 classes, hence 23 and 24).
DEFAULT_CLASSES = (2, 3, 4, 5, 8, 10, 16, 23, 24, 32, 64, 100, 256, 1000, 2048, 10000, 32000, 131072)
DEFAULT_LOGITS = 2**21
QUICK_CLASSES = (10, 1000)
QUICK_LOGITS = 2**16
QUICK_REPEATS = 3
DEFAULT_REPEATS = 7

OPS = ("cross_entropy", "gradient_hessian", "softmax", "log_softmax", "logsumexp")
OP_TITLES = {
    "cross_entropy": "cross-entropy loss + gradient (mean over rows, class-index targets)",
    "gradient_hessian": "gradient_hessian (per-sample p - onehot and p (1 - p))",
    "softmax": "softmax over the last axis",
    "log_softmax": "log_softmax over the last axis",
    "logsumexp": "logsumexp over the last axis",
}
# Contenders in column order; softmaxloss is the base of every ratio and always timed.
CONTENDERS = ("copyto", "softmaxloss", "torch", "torch.compile", "jax", "scipy", "sklearn", "numpy")
DEFAULT_CONTENDERS = tuple(name for name in CONTENDERS if name != "numpy")  # the reference: slow, opt in
PEERS = tuple(name for name in CONTENDERS if name not in ("copyto", "softmaxloss"))


class Unavailable(Exception):
    """A contender that cannot run here (library missing, compiler missing, ...)."""


def _import(module: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as error:
        raise Unavailable(f"{module.split('.')[0]} is not installed ({error})") from None


# ---- timing -------------------------------------------------------------------------


class Timer(Protocol):
    def warm(self) -> float:
        """Run the call until it is warm (compiled, pages touched); seconds of one call."""

    def sample(self, loops: int) -> float:
        """Seconds per call, over `loops` back-to-back calls."""


class LocalTimer:
    """A zero-argument call made in this process."""

    def __init__(self, call: Call) -> None:
        self.call = call

    def warm(self) -> float:
        self.call()  # first-touch page faults, JIT compilation, thread start-up
        return self.sample(1)

    def sample(self, loops: int) -> float:
        call = self.call
        start = time.perf_counter()
        for _ in range(loops):
            call()
        return (time.perf_counter() - start) / loops


def interleaved_medians(timers: dict[str, Timer], repeats: int, min_seconds: float = 0.02,
                        max_seconds: float = 2.0) -> dict[str, float]:
    """Median seconds per call of each timer over `repeats` samples, taken in
    alternation (one sample of each per round, the order rotated every round). A sample
    loops the call enough times to last about `min_seconds`, so that tiny calls are
    measurable; a call so slow that `repeats` samples would take over `max_seconds`
    gets fewer, at least 3."""
    plans = {}
    for name, timer in timers.items():
        once = max(timer.warm(), 1e-7)
        loops = max(1, int(min_seconds / once))
        count = repeats if once * loops * repeats <= max_seconds else max(3, int(max_seconds / (once * loops)))
        plans[name] = (loops, min(count, repeats))
    names = list(timers)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(max((count for _, count in plans.values()), default=0)):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            loops, count = plans[name]
            if len(samples[name]) < count:
                samples[name].append(timers[name].sample(loops))
    return {name: float(np.median(values)) for name, values in samples.items()}


def median_time(call: Call, repeats: int, min_seconds: float = 0.02, max_seconds: float = 2.0) -> float:
    """Median seconds per call of one call on its own (see `interleaved_medians`)."""
    return interleaved_medians({"call": LocalTimer(call)}, repeats, min_seconds, max_seconds)["call"]


# ---- the inputs ---------------------------------------------------------------------


@dataclass
class Problem:
    """One benchmark input: logits, class-index targets and output buffers. The same
    (shape, dtype, seed) gives the same arrays in every process (the JAX workers)."""

    n_rows: int
    n_classes: int
    dtype: str
    logits: np.ndarray = field(repr=False)
    target: np.ndarray = field(repr=False)
    grad: np.ndarray = field(repr=False)
    hess: np.ndarray = field(repr=False)
    cache: dict[str, Any] = field(default_factory=dict, repr=False)  # e.g. a compiled peer

    @classmethod
    def random(cls, n_rows: int, n_classes: int, dtype: str, seed: int = 0) -> Problem:
        rng = np.random.default_rng(seed)
        logits = (rng.standard_normal((n_rows, n_classes), np.float32) * 4).astype(dtype)
        target = rng.integers(0, n_classes, n_rows)
        grad = np.ones_like(logits)  # touched: no first-write page faults in the timings
        hess = np.ones_like(logits)
        return cls(n_rows, n_classes, dtype, logits, target, grad, hess)


def rows_for(n_classes: int, n_logits: int) -> int:
    """Rows of a case with about `n_logits` logits."""
    return max(1, round(n_logits / n_classes))


# ---- contenders: (problem, threads) -> a zero-argument call, or Unavailable ---------


def _copyto(problem: Problem, threads: int) -> Call:
    return lambda: np.copyto(problem.grad, problem.logits)


def _sml_cross_entropy(problem: Problem, threads: int) -> Call:
    return lambda: _facade.cross_entropy_with_grad(problem.logits, problem.target, out=problem.grad, n_threads=threads)


def _sml_gradient_hessian(problem: Problem, threads: int) -> Call:
    out = (problem.grad, problem.hess)
    return lambda: _facade.gradient_hessian(problem.logits, problem.target, out=out, n_threads=threads)


def _sml_softmax(problem: Problem, threads: int) -> Call:
    return lambda: _facade.softmax(problem.logits, out=problem.grad, n_threads=threads)


def _sml_log_softmax(problem: Problem, threads: int) -> Call:
    return lambda: _facade.log_softmax(problem.logits, out=problem.grad, n_threads=threads)


def _sml_logsumexp(problem: Problem, threads: int) -> Call:
    return lambda: _facade.logsumexp(problem.logits, n_threads=threads)


def _numpy(function: str) -> Callable[[Problem, int], Call]:
    def make(problem: Problem, threads: int) -> Call:
        if function == "cross_entropy":
            return lambda: reference.cross_entropy_with_grad(problem.logits, problem.target)
        if function == "gradient_hessian":
            return lambda: reference.gradient_hessian(problem.logits, problem.target)
        return lambda: getattr(reference, function)(problem.logits)
    return make


def _torch_module(threads: int) -> Any:
    torch = _import("torch")
    torch.set_num_threads(threads)
    return torch


def _torch_backward(problem: Problem, loss_function: Callable[..., Any]) -> Call:
    """A call of `loss_function(logits, target)` and its backward, as a training step makes."""
    torch = sys.modules["torch"]
    logits = torch.from_numpy(problem.logits).requires_grad_()
    target = torch.from_numpy(problem.target)

    def call() -> Any:
        logits.grad = None
        loss = loss_function(logits, target)
        loss.backward()
        return loss

    return call


def _torch_cross_entropy(problem: Problem, threads: int) -> Call:
    return _torch_backward(problem, _torch_module(threads).nn.functional.cross_entropy)


def _torch_compile_cross_entropy(problem: Problem, threads: int) -> Call:
    """The eager contender's forward under `torch.compile` (inductor, static shapes),
    compiled once per problem; its backward is the compiled backward graph."""
    torch = _torch_module(threads)
    compiled = problem.cache.get("torch.compile")
    if compiled is None:
        torch._dynamo.reset()  # one problem at a time: no recompilation limit to reach
        compiled = torch.compile(torch.nn.functional.cross_entropy, fullgraph=True, dynamic=False)
        problem.cache["torch.compile"] = compiled
    return _torch_backward(problem, compiled)


def _torch_gradient_hessian(problem: Problem, threads: int) -> Call:
    torch = _torch_module(threads)
    logits = torch.from_numpy(problem.logits)
    target = torch.from_numpy(problem.target)
    rows = torch.arange(problem.n_rows)
    minus_one = torch.tensor(-1.0, dtype=logits.dtype)

    def call() -> Any:
        p = torch.softmax(logits, -1)
        hess = p * (1 - p)
        grad = p.index_put_((rows, target), minus_one, accumulate=True)  # p - onehot
        return grad, hess

    return call


def _torch_elementwise(function: str) -> Callable[[Problem, int], Call]:
    def make(problem: Problem, threads: int) -> Call:
        torch = _torch_module(threads)
        logits = torch.from_numpy(problem.logits)
        op = getattr(torch, function)
        return lambda: op(logits, -1)
    return make


def _scipy(function: str) -> Callable[[Problem, int], Call]:
    def make(problem: Problem, threads: int) -> Call:
        op = getattr(_import("scipy.special"), function)
        return lambda: op(problem.logits, axis=-1)
    return make


def _sklearn_loss(problem: Problem) -> Any:
    loss_module = _import("sklearn._loss.loss")
    return loss_module.HalfMultinomialLoss(n_classes=problem.n_classes)


def _sklearn_cross_entropy(problem: Problem, threads: int) -> Call:
    loss = _sklearn_loss(problem)
    y_true = problem.target.astype(problem.dtype)
    loss_out = np.empty(problem.n_rows, problem.dtype)
    return lambda: loss.loss_gradient(
        y_true=y_true, raw_prediction=problem.logits, loss_out=loss_out,
        gradient_out=problem.grad, n_threads=threads,
    )


def _sklearn_gradient_hessian(problem: Problem, threads: int) -> Call:
    loss = _sklearn_loss(problem)
    y_true = problem.target.astype(problem.dtype)
    return lambda: loss.gradient_hessian(
        y_true=y_true, raw_prediction=problem.logits, gradient_out=problem.grad,
        hessian_out=problem.hess, n_threads=threads,
    )


# The local contenders of each operation; "jax" runs in the workers (JAX_FUNCTIONS).
LOCAL: dict[str, dict[str, Callable[[Problem, int], Call]]] = {
    "cross_entropy": {
        "softmaxloss": _sml_cross_entropy, "torch": _torch_cross_entropy,
        "torch.compile": _torch_compile_cross_entropy, "sklearn": _sklearn_cross_entropy,
        "numpy": _numpy("cross_entropy"),
    },
    "gradient_hessian": {
        "softmaxloss": _sml_gradient_hessian, "torch": _torch_gradient_hessian,
        "sklearn": _sklearn_gradient_hessian, "numpy": _numpy("gradient_hessian"),
    },
    "softmax": {"softmaxloss": _sml_softmax, "torch": _torch_elementwise("softmax"),
                "scipy": _scipy("softmax"), "numpy": _numpy("softmax")},
    "log_softmax": {"softmaxloss": _sml_log_softmax, "torch": _torch_elementwise("log_softmax"),
                    "scipy": _scipy("log_softmax"), "numpy": _numpy("log_softmax")},
    "logsumexp": {"softmaxloss": _sml_logsumexp, "torch": _torch_elementwise("logsumexp"),
                  "scipy": _scipy("logsumexp"), "numpy": _numpy("logsumexp")},
}
for _functions in LOCAL.values():
    _functions["copyto"] = _copyto


def contenders_of(op: str) -> tuple[str, ...]:
    """The contenders that `op` has, in column order."""
    return tuple(name for name in CONTENDERS if name in LOCAL[op] or name == "jax")


# ---- JAX, in one worker process per thread count ------------------------------------


def _jax_function(op: str, problem: Problem) -> Call:
    """A warm-able zero-argument call of `jit` of the JAX twin of `op`; the labels are an
    argument of the jitted function (closed over, XLA would constant-fold the one-hot)."""
    import jax
    import jax.numpy as jnp

    logits = jax.device_put(problem.logits)
    target = jax.device_put(problem.target.astype(np.int32))
    if op == "cross_entropy":
        def loss(x: Any, t: Any) -> Any:
            log_p = jax.nn.log_softmax(x, axis=-1)
            return -jnp.mean(jnp.take_along_axis(log_p, t[:, None], axis=-1))
        function = jax.jit(jax.value_and_grad(loss))
        return lambda: jax.block_until_ready(function(logits, target))
    if op == "gradient_hessian":
        def gradient_hessian(x: Any, t: Any) -> Any:
            p = jax.nn.softmax(x, axis=-1)
            return p - jax.nn.one_hot(t, x.shape[-1], dtype=x.dtype), p * (1 - p)
        function = jax.jit(gradient_hessian)
        return lambda: jax.block_until_ready(function(logits, target))
    row_function = {"softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax, "logsumexp": jax.nn.logsumexp}[op]
    function = jax.jit(lambda x: row_function(x, axis=-1))
    return lambda: jax.block_until_ready(function(logits))


def jax_worker(cpus_json: str) -> None:
    """The worker's loop: one JSON request per line on stdin, one reply per line on stdout.
    Requests: {"prepare": {op, n_rows, n_classes, dtype}} -> {"once": seconds} and
    {"sample": loops} -> {"seconds": seconds per call}."""
    replies = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the pipe
    cpus = json.loads(cpus_json)
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)  # before JAX starts: its thread pool is this size

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    try:
        import jax
    except ImportError as error:
        reply({"error": f"jax is not installed ({error})"})
        return
    jax.config.update("jax_enable_x64", True)  # float64 as float64; float32 stays float32
    reply({"ready": jax.__version__, "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None})
    timers: dict[str, LocalTimer] = {}  # the current problem's jitted calls, by op
    key: tuple[Any, ...] | None = None
    problem: Problem | None = None
    timer: LocalTimer | None = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if "prepare" in request:
                spec = request["prepare"]
                if key != (spec["n_rows"], spec["n_classes"], spec["dtype"]):
                    key, problem, timers = None, None, {}  # the previous arrays freed first
                    problem = Problem.random(spec["n_rows"], spec["n_classes"], spec["dtype"])
                    key = (spec["n_rows"], spec["n_classes"], spec["dtype"])
                assert problem is not None
                if spec["op"] not in timers:
                    timers[spec["op"]] = LocalTimer(_jax_function(spec["op"], problem))
                timer = timers[spec["op"]]
                reply({"once": timer.warm()})
            elif "sample" in request:
                assert timer is not None, "sample before prepare"
                reply({"seconds": timer.sample(int(request["sample"]))})
            else:
                return
        except Exception as error:  # reported to the driver, which skips the column for this op
            reply({"error": f"{type(error).__name__}: {error}", "failed": "call"})


class JaxWorker:
    """A worker process that times the JAX contender with `threads` CPUs."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.version: str | None = None
        cpus: list[int] = []
        if hasattr(os, "sched_getaffinity"):
            cpus = sorted(os.sched_getaffinity(0))[:threads]
        env = dict(os.environ)
        env.setdefault("JAX_PLATFORMS", "cpu")
        if threads == 1:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from softmaxloss._benchmark import jax_worker; jax_worker(sys.argv[2])")
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, package_parent, json.dumps(cpus)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env,
        )
        self._ready: dict[str, Any] | None = None

    def _request(self, message: dict[str, Any] | None) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        if message is not None:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            self.log.seek(0)
            tail = self.log.read()[-2000:]
            raise Unavailable(f"the JAX worker ({self.threads} thread(s)) exited: {tail.strip()}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:  # JAX missing (Unavailable) or one call failing
            raise (RuntimeError if answer.get("failed") == "call" else Unavailable)(answer["error"])
        return answer

    def ready(self) -> None:
        if self._ready is None:
            self._ready = self._request(None)
            self.version = self._ready["ready"]

    def timer(self, op: str, problem: Problem) -> Timer:
        self.ready()
        return _RemoteTimer(self, {"op": op, "n_rows": problem.n_rows, "n_classes": problem.n_classes,
                                   "dtype": problem.dtype})

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(json.dumps({"quit": True}) + "\n")
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.log.close()


class _RemoteTimer:
    def __init__(self, worker: JaxWorker, spec: dict[str, Any]) -> None:
        self.worker = worker
        self.spec = spec

    def warm(self) -> float:
        return float(self.worker._request({"prepare": self.spec})["once"])

    def sample(self, loops: int) -> float:
        return float(self.worker._request({"sample": loops})["seconds"])


# ---- the run ------------------------------------------------------------------------


@dataclass
class Row:
    """Median seconds per call of each contender on one case."""

    op: str
    n_rows: int
    n_classes: int
    dtype: str
    threads: int
    seconds: dict[str, float]

    def ratio(self, name: str, baseline: str = "copyto") -> float:
        return self.seconds[name] / self.seconds[baseline]

    def ns_per_row(self, name: str) -> float:
        return self.seconds[name] / self.n_rows * 1e9

    def as_json_ready(self) -> dict[str, Any]:
        return {
            "op": self.op, "n_rows": self.n_rows, "n_classes": self.n_classes, "dtype": self.dtype,
            "threads": self.threads, "seconds": self.seconds,
            "ns_per_row": {name: self.ns_per_row(name) for name in self.seconds},
            "ratios_to_copyto": {n: self.ratio(n) for n in self.seconds if "copyto" in self.seconds},
            "ratios_to_softmaxloss": {n: self.ratio(n, "softmaxloss") for n in self.seconds},
        }


@dataclass
class Run:
    """Every case's row, the contenders that were skipped and why, and the per-call
    overhead figures."""

    rows: list[Row] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # "jax" or "jax (logsumexp)" -> reason
    overhead: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)


def run(
    shapes: Iterable[Sequence[int]],
    ops: Sequence[str] = ("cross_entropy",),
    dtypes: Sequence[str] = ("float32", "float64"),
    threads: Sequence[int] = (1, 2),
    contenders: Iterable[str] = DEFAULT_CONTENDERS,
    repeats: int = DEFAULT_REPEATS,
    progress: Callable[[str], None] | None = None,
) -> Run:
    """Time every chosen contender of every op on every shape x dtype x thread count, each
    case's contenders in alternation. Contenders that cannot run are skipped (`Run.skipped`
    says why); a problem's arrays are shared by its ops and thread counts."""
    wanted = set(contenders) | {"softmaxloss"}
    result = Run()
    say = progress or (lambda message: None)
    workers: dict[int, JaxWorker] = {}
    if "jax" in wanted:
        workers = {count: JaxWorker(count) for count in threads}
    try:
        for dtype in dtypes:
            for n_rows, n_classes in shapes:
                problem = Problem.random(n_rows, n_classes, dtype)
                for op in ops:
                    for thread_count in threads:
                        started = time.perf_counter()
                        row = _time_case(op, problem, thread_count, wanted, workers, repeats, result, say)
                        result.rows.append(row)
                        say(f"{format_progress(row)} [{time.perf_counter() - started:.1f} s]")
    finally:
        for worker in workers.values():
            if worker.version:
                result.versions["jax"] = worker.version
            worker.close()
    return result


def _time_case(op: str, problem: Problem, threads: int, wanted: set[str], workers: dict[int, JaxWorker],
               repeats: int, result: Run, say: Callable[[str], None]) -> Row:
    """One case: build and warm each contender, then time them all in alternation. A
    contender that cannot run is skipped for the rest of the run (a missing library) or
    for this op (a failure of its call), with the reason in `result.skipped`."""
    timers: dict[str, Timer] = {}
    for name in contenders_of(op):
        if name not in wanted or name in result.skipped or f"{name} ({op})" in result.skipped:
            continue
        try:
            if name == "jax":
                timer = workers[threads].timer(op, problem)
            else:
                timer = LocalTimer(LOCAL[op][name](problem, threads))
            if name not in ("softmaxloss", "copyto"):
                timer.warm()  # a peer that fails here (no compiler, ...) is skipped, not fatal
            timers[name] = timer
        except Unavailable as error:
            result.skipped[name] = str(error)
            say(f"skipped {name}: {error}")
        except Exception as error:
            result.skipped[f"{name} ({op})"] = f"{type(error).__name__}: {error}"
            say(f"skipped {name} for {op}: {type(error).__name__}: {error}")
    if "torch" in sys.modules:  # the thread count of every torch contender's calls
        sys.modules["torch"].set_num_threads(threads)
    seconds = interleaved_medians(timers, repeats)
    return Row(op, problem.n_rows, problem.n_classes, problem.dtype, threads, seconds)


def per_call_overhead(threads: Sequence[int | None], repeats: int = 9) -> list[dict[str, Any]]:
    """Microseconds per `cross_entropy_with_grad` call on a (64, 10) float32 batch, with
    `out=` and without (a new gradient array each call), timed in alternation."""
    problem = Problem.random(64, 10, "float32")
    figures = []
    for count in threads:
        call = functools.partial(_facade.cross_entropy_with_grad, problem.logits, problem.target, n_threads=count)
        timers: dict[str, Timer] = {
            "out=": LocalTimer(functools.partial(call, out=problem.grad)),
            "no out=": LocalTimer(call),
        }
        seconds = interleaved_medians(timers, repeats, min_seconds=0.05)
        figures.append({"threads": count, "us_with_out": seconds["out="] * 1e6,
                        "us_without_out": seconds["no out="] * 1e6})
    return figures


# ---- output -------------------------------------------------------------------------


def format_progress(row: Row) -> str:
    """One line per case as it finishes: softmaxloss's time, and each contender's ratio."""
    cells = [f"{row.op:<16} {row.dtype:<7} {row.threads} th {row.n_rows:>7} x {row.n_classes:<6}",
             f"softmaxloss {row.seconds['softmaxloss'] * 1e3:8.3f} ms"]
    if "copyto" in row.seconds:
        cells.append(f"{row.ratio('softmaxloss'):5.2f}x copyto")
    cells += [f"{name} {row.ratio(name, 'softmaxloss'):5.2f}x" for name in PEERS if name in row.seconds]
    return " | ".join(cells)


def _number(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def markdown_tables(result: Run) -> str:
    """One Markdown table per op x dtype x thread count: a line per class count with
    softmaxloss's ns per row, its time over copyto's and each peer's time over its."""
    sections = []
    for op in OPS:
        for dtype in dict.fromkeys(row.dtype for row in result.rows):
            for threads in dict.fromkeys(row.threads for row in result.rows):
                rows = [r for r in result.rows if (r.op, r.dtype, r.threads) == (op, dtype, threads)]
                if not rows:
                    continue
                peers = [name for name in PEERS if any(name in row.seconds for row in rows)]
                head = ["C", "N", "softmaxloss ns/row", "softmaxloss / copyto"] + [f"{name} / softmaxloss" for name in peers]
                lines = [f"### {OP_TITLES[op]}: {dtype}, {threads} thread{'s' * (threads != 1)}", "",
                         "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                for row in rows:
                    cells = [str(row.n_classes), str(row.n_rows), _number(row.ns_per_row("softmaxloss")),
                             f"{row.ratio('softmaxloss'):.2f}" if "copyto" in row.seconds else "-"]
                    cells += [f"{row.ratio(name, 'softmaxloss'):.2f}" if name in row.seconds else "-" for name in peers]
                    lines.append("| " + " | ".join(cells) + " |")
                sections.append("\n".join(lines))
    return "\n\n".join(sections)


def overhead_table(figures: Sequence[dict[str, Any]]) -> str:
    head = ["(64, 10) float32, us per call"] + [
        "default threads" if f["threads"] is None else f"n_threads={f['threads']}" for f in figures]
    lines = ["### per-call overhead: cross_entropy_with_grad", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, key in (("with out=", "us_with_out"), ("without out=", "us_without_out")):
        lines.append("| " + " | ".join([label] + [f"{f[key]:.1f}" for f in figures]) + " |")
    return "\n".join(lines)


def as_json_ready(result: Run, command: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "command": list(command),
        "versions": versions() | result.versions,
        "cpus": cpu_count(),
        "skipped": result.skipped,
        "rows": [row.as_json_ready() for row in result.rows],
        "overhead": result.overhead,
    }


def versions() -> dict[str, str]:
    """Versions of this package and of every peer library this process has imported."""
    from . import __version__

    found = {"softmaxloss": __version__, "numpy": np.__version__}
    for module in ("torch", "scipy", "sklearn"):
        if module in sys.modules:
            found[module] = str(getattr(sys.modules[module], "__version__", "?"))
    return found


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

"""Threads: OpenMP thread counts, concurrent Python threads, the GIL, threadpoolctl.

- Every function gives bitwise-identical results for n_threads = 1..8 on inputs large enough
  that the kernel really starts that many OpenMP threads (it uses one per 32768 logits), in
  contiguous and strided (per-thread scratch row) layouts; the thread counts themselves are
  observed in a fresh process through /proc (Linux).
- 8 Python threads calling the kernels at once on shared read-only inputs all get the
  single-threaded answer, bit for bit.
- The kernels release the GIL: another Python thread runs while a long call is in flight.
- `threadpoolctl.threadpool_limits(1)` and OMP_NUM_THREADS limit the kernels' OpenMP threads.

No test measures time: concurrency is proved by ordering (events, counters), not by speed.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import softmaxloss as sml
from softmaxloss import _dispatch

LOGITS_PER_THREAD = 32768  # the kernel's MIN_ELEMENTS_PER_THREAD


def _problem(dtype, layout="C", seed=0):
    """(x, target, probabilities, options): 2048 x 160 logits, enough for 10 threads."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((2048, 160)) * 4).astype(dtype)
    x[5, 7] = np.nan
    x[9] = -np.inf
    x[11, :3] = np.inf
    target = rng.integers(0, 160, 2048)
    target[::17] = -100
    probabilities = rng.dirichlet(np.full(160, 0.3), 2048).astype(dtype)
    options = dict(weight=rng.uniform(0.1, 2, 160), sample_weight=rng.uniform(0, 2, 2048),
                   label_smoothing=0.1, z_loss=1e-4)
    if layout == "strided":  # a class stride of 2 items: every row goes through scratch
        big = np.zeros((2048, 320), dtype)
        big[:, ::2] = x
        x = big[:, ::2]
    elif layout == "nchw":  # (N, C, d): class axis 1, rows view (8, 256, 160)
        x = np.ascontiguousarray(x.reshape(8, 256, 160).transpose(0, 2, 1))
        target = target.reshape(8, 256)
        probabilities = np.ascontiguousarray(probabilities.reshape(8, 256, 160).transpose(0, 2, 1))
        options["sample_weight"] = options["sample_weight"].reshape(8, 256)
    return x, target, probabilities, options


def _axis(x):
    return 1 if x.ndim == 3 else -1


CALLS = {
    "softmax": lambda x, t, p, o, n: sml.softmax(x, _axis(x), n_threads=n),
    "log_softmax": lambda x, t, p, o, n: sml.log_softmax(x, _axis(x), n_threads=n),
    "logsumexp": lambda x, t, p, o, n: sml.logsumexp(x, _axis(x), n_threads=n),
    "cross_entropy_none": lambda x, t, p, o, n: sml.cross_entropy(
        x, t, axis=_axis(x), reduction="none", n_threads=n
    ),
    "with_grad_all_options": lambda x, t, p, o, n: sml.cross_entropy_with_grad(
        x, t, axis=_axis(x), n_threads=n, **o
    ),
    "with_grad_probabilities": lambda x, t, p, o, n: sml.cross_entropy_with_grad(
        x, p, axis=_axis(x), n_threads=n, z_loss=1e-3
    ),
    "gradient_hessian": lambda x, t, p, o, n: sml.gradient_hessian(*_as_samples(x, t), n_threads=n),
}


def _as_samples(x, t):
    """(N, C) logits (x itself when 2-D, all 2048 rows of the N-D one) and labels in range."""
    if x.ndim == 3:
        x = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    return x, np.clip(t.reshape(-1), 0, None)


def _bits(result):
    """Every byte of a result (a tuple's elements in order)."""
    if isinstance(result, tuple):
        return b"".join(_bits(r) for r in result)
    return np.ascontiguousarray(result).tobytes() + str(np.asarray(result).dtype).encode()


@pytest.mark.parametrize("layout", ["C", "strided", "nchw"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_thread_count_gives_the_same_bits(kernel_build, dtype, layout):
    x, t, p, o = _problem(dtype, layout)
    assert x.size // LOGITS_PER_THREAD >= 8  # the kernel starts all 8 threads
    for name, call in CALLS.items():
        expected = _bits(call(x, t, p, o, 1))
        for n_threads in range(2, 9):
            assert _bits(call(x, t, p, o, n_threads)) == expected, f"{name}: n_threads={n_threads}"
        assert _bits(call(x, t, p, o, None)) == expected, f"{name}: n_threads=None"


def _in_fresh_process(script, env=None):
    """Run `script` in a new interpreter (a fresh OpenMP runtime); its last line is JSON."""
    environment = dict(os.environ, **(env or {}))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=environment, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


OS_THREADS = """
    import json, os
    import numpy as np
    import softmaxloss as sml
    from softmaxloss import _dispatch

    def os_threads():
        return len(os.listdir("/proc/self/task"))

    def grow(n_logits, n_threads):
        x = np.ones((n_logits // 64, 64))
        sml.cross_entropy_with_grad(x, np.zeros(x.shape[0], int), n_threads=n_threads)
        return os_threads()
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts OS threads through /proc")
def test_the_kernel_starts_one_thread_per_32768_logits_up_to_n_threads():
    """OpenMP keeps the worker threads of its last team alive after a call (libgomp resizes
    its pool to each team, LLVM's libomp only grows it: the calls below come in increasing
    team size, where both agree): the process's thread count after a call shows how many
    threads the call used (the caller's own thread is one of them)."""
    if not _dispatch.kernels.build_info()["openmp"]:
        pytest.skip("built without OpenMP")
    counts = _in_fresh_process(OS_THREADS + """
    before = os_threads()
    print(json.dumps([
        before,
        grow(LOGITS - 64, 8),       # under 1 thread's worth: the calling thread alone
        grow(3 * LOGITS, 2),        # 3 threads' worth, n_threads=2: 1 worker
        grow(3 * LOGITS, 8),        # 3 threads' worth: 2 workers
        grow(100 * LOGITS, 8),      # 100 threads' worth, n_threads=8: 7 workers
    ]))
    """.replace("LOGITS", str(LOGITS_PER_THREAD)))
    before, small, capped, three, eight = counts
    assert (small, capped, three, eight) == (before, before + 1, before + 2, before + 7)


def test_eight_python_threads_at_once_get_the_single_threaded_bits(kernel_build):
    """Shared read-only inputs, 8 threads started together by a barrier, each running every
    call several times with different n_threads: every result equals the serial one."""
    problems = {dtype: _problem(dtype, seed=1) for dtype in (np.float32, np.float64)}
    for x, t, p, o in problems.values():
        for array in (x, t, p, o["weight"], o["sample_weight"]):
            array.flags.writeable = False
    expected = {(d, name): _bits(call(*problems[d], 1)) for d in problems for name, call in CALLS.items()}
    barrier = threading.Barrier(8)
    failures = []

    def work(worker):
        try:
            barrier.wait()
            for repeat in range(3):
                for (dtype, name), bits in expected.items():
                    n_threads = (None, 1, 2)[(worker + repeat) % 3]
                    if _bits(CALLS[name](*problems[dtype], n_threads)) != bits:
                        failures.append((worker, repeat, name, np.dtype(dtype).name, n_threads))
        except Exception as error:  # reported below with the thread that raised it
            failures.append((worker, repr(error)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:10]


class _Spinner:
    """A thread that counts as fast as it can. With a huge switch interval (set by the test)
    it only runs when the thread holding the GIL lets go of it voluntarily: a blocking call,
    or C code that releases the GIL. It yields every 1024 counts so that a thread waiting
    for the GIL gets it back, and sets `progressed` once it has counted after `expect()`."""

    def __init__(self):
        self.count = 0
        self.stop = False
        self.started = threading.Event()
        self.progressed = threading.Event()
        self.target = None
        self.thread = threading.Thread(target=self.run)

    def run(self):
        import time

        self.started.set()
        while not self.stop:
            self.count += 1
            if self.target is not None and self.count >= self.target:
                self.target = None
                self.progressed.set()
            if self.count % 1024 == 0:
                time.sleep(0)  # releases the GIL

    def expect(self):
        """Ask for `progressed` once the count has moved on from now."""
        self.progressed.clear()
        self.target = self.count + 1

    def __enter__(self):
        self.thread.start()
        self.started.wait()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()


@pytest.fixture
def no_preemption():
    """Python threads switch only when one releases the GIL itself (no timed preemption
    within the test's lifetime)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


# While a call releases the GIL the other thread may run, but the OS decides whether it is
# scheduled in that window: a call is repeated until the other thread is seen running during
# one (at most this many times). A call that kept the GIL would show 0 every time.
ATTEMPTS = 50


def _counts_during(spinner, call):
    """How far the spinner counted during `call()`, over up to ATTEMPTS calls (0 if never)."""
    for _ in range(ATTEMPTS):
        before = spinner.count
        call()
        if spinner.count != before:
            return spinner.count - before
    return 0


def test_the_spinner_sees_a_call_that_holds_the_gil(no_preemption):
    """The control: a long C call that keeps the GIL (the builtin sum over a range) lets the
    spinner count nothing, every time; waiting on an event only the spinner sets (which
    releases the GIL) lets it count."""
    with _Spinner() as spinner:
        holding = [spinner.count]
        for _ in range(5):
            sum(range(1_000_000))
            holding.append(spinner.count)
        spinner.expect()
        before = spinner.count
        assert spinner.progressed.wait(timeout=60)
        releasing = spinner.count - before
    assert len(set(holding)) == 1 and releasing > 0


def _long_problem(dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4096, 1024)).astype(dtype)
    return x, rng.integers(0, 1024, 4096)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_kernel_lets_other_python_threads_run(kernel_build, dtype, no_preemption):
    """Called directly (no NumPy work around it), so only the kernel can let the spinner run."""
    x, y = _long_problem(dtype)
    kernels = _dispatch.kernels
    rows = x.reshape(1, *x.shape)
    target = y.reshape(1, -1).astype(np.int64)
    row_loss = np.empty((1, x.shape[0]))
    grad = np.empty_like(rows)
    with _Spinner() as spinner:
        during_loss_grad = _counts_during(spinner, lambda: kernels.cross_entropy_index(
            rows, target, None, None, -100, 0.0, 0.0, False, row_loss, grad, 1))
        during_softmax = _counts_during(spinner, lambda: kernels.softmax(rows, grad, False, 1))
        during_logsumexp = _counts_during(spinner, lambda: kernels.logsumexp(rows, row_loss, 1))
    assert during_loss_grad > 0 and during_softmax > 0 and during_logsumexp > 0


def test_a_long_public_call_does_not_block_other_threads(kernel_build, no_preemption):
    """The public function on a large array, from a worker thread: the main thread runs
    Python code while the call is in progress (between the worker's `in_call` marks)."""
    import time

    x, y = _long_problem(np.float32)
    expected = sml.cross_entropy_with_grad(x, y, n_threads=1)
    state = {"in_call": False, "finished": False, "results": []}

    def worker():
        for _ in range(ATTEMPTS):
            state["in_call"] = True
            state["results"].append(sml.cross_entropy_with_grad(x, y, n_threads=1))
            state["in_call"] = False
            if state.get("seen"):
                break
        state["finished"] = True

    thread = threading.Thread(target=worker)
    thread.start()
    counted = 0
    while not state["finished"]:  # runs only when the worker lets go of the GIL
        if state["in_call"]:
            state["seen"] = True
        counted += 1
        if counted % 1024 == 0:
            time.sleep(0)
    thread.join()
    assert state.get("seen"), "the main thread never ran while the call was in progress"
    for loss, grad in state["results"]:
        assert loss == expected[0]
        np.testing.assert_array_equal(grad, expected[1])


def test_threadpool_limits_caps_the_kernel_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    kernels = _dispatch.kernels
    if not kernels.build_info()["openmp"]:
        pytest.skip("built without OpenMP")
    info = threadpoolctl.threadpool_info()
    assert any(entry["user_api"] == "openmp" for entry in info), info
    with threadpoolctl.threadpool_limits(1):
        assert kernels.build_info()["max_threads"] == 1
        with threadpoolctl.threadpool_limits(3, user_api="openmp"):
            assert kernels.build_info()["max_threads"] == 3
    with threadpoolctl.threadpool_limits(2, user_api="openmp"):
        for module in _dispatch.available.values():  # one OpenMP runtime for both builds
            assert module.build_info()["max_threads"] == 2


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts OS threads through /proc")
def test_threadpool_limits_and_omp_num_threads_limit_threads_really_started():
    pytest.importorskip("threadpoolctl")
    if not _dispatch.kernels.build_info()["openmp"]:
        pytest.skip("built without OpenMP")
    big = 100 * LOGITS_PER_THREAD
    # user_api="openmp": a bare threadpool_limits(n) also resizes OpenBLAS's thread pool,
    # which would change the process's thread count too.
    counts = _in_fresh_process(OS_THREADS + f"""
    from threadpoolctl import threadpool_limits
    before = os_threads()
    default = _dispatch.kernels.build_info()["max_threads"]
    with threadpool_limits(1, user_api="openmp"):
        limited = grow({big}, None)
    with threadpool_limits(3, user_api="openmp"):
        three = grow({big}, None)
    print(json.dumps([before, limited, three, default]))
    """, env={"OMP_NUM_THREADS": "5"})
    before, limited, three, default = counts
    assert default == 5  # OMP_NUM_THREADS sets the default
    assert limited == before  # one thread: the caller's
    assert three == before + 2

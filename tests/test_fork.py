"""A forked child gets correct results, never a hang, whatever n_threads it passes.

OpenMP runtimes do not survive fork: libgomp's worker threads are not copied into the
child, and its next parallel region waits for them forever. So after a fork every
kernel runs on the calling thread alone. These tests fork real children (`os.fork`,
and a `multiprocessing` Pool with the 'fork' start method, as PyTorch DataLoader
workers do) after the parent has used two OpenMP threads, each scenario in a fresh
interpreter under a time limit: a hang fails the test instead of hanging the suite.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from softmaxloss import _dispatch

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")

TIME_LIMIT = 120  # seconds for a whole scenario; each takes ~2-5 s when nothing hangs

# Shared by the scenarios: calls large enough that the kernels use 2 threads (>= 2 x 32768
# logits), on the row path (1000 classes) and the few-classes block path (10 classes),
# returning their results; `same` compares bitwise (results do not depend on n_threads).
COMMON = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import softmaxloss as sml
    from softmaxloss import _dispatch

    def problems():
        rng = np.random.default_rng(0)
        for shape in [(200, 1000), (20000, 10)]:
            x = rng.standard_normal(shape).astype(np.float32)
            t = rng.integers(0, shape[1], shape[0])
            yield x, t

    def results(n_threads):
        out = []
        for x, t in problems():
            out.append(sml.cross_entropy_with_grad(x, t, label_smoothing=0.1, n_threads=n_threads))
            out.append(sml.cross_entropy(x, t, n_threads=n_threads))
            out.append(sml.softmax(x, n_threads=n_threads))
            out.append(sml.log_softmax(x, n_threads=n_threads))
            out.append(sml.logsumexp(x, n_threads=n_threads))
            out.append(sml.gradient_hessian(x, t, n_threads=n_threads))
        return out

    def flat(values):
        for v in values:
            if isinstance(v, tuple):
                yield from flat(v)
            else:
                yield np.asarray(v)

    def same(a, b):
        return all(np.array_equal(u, v, equal_nan=True) for u, v in zip(flat(a), flat(b)))

    def child_task(n_threads):
        return n_threads, _dispatch.kernels.runs_single_threaded_after_fork(), results(n_threads)

    THREADS = [None, 1, 2, 8]

    def wait_for(pid, seconds=60):
        # The forked child's exit code, or a message when it has not exited in time.
        import time
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(pid, 9)
        return "the forked child hung"
    """
)

OS_FORK = COMMON + textwrap.dedent(
    """
    expected = results(2)                      # the parent uses its 2 OpenMP threads
    assert not _dispatch.kernels.runs_single_threaded_after_fork()
    pid = os.fork()
    if pid == 0:
        ok = _dispatch.kernels.runs_single_threaded_after_fork()
        ok = ok and all(same(results(n), expected) for n in THREADS)
        os._exit(0 if ok else 1)
    sys.exit(wait_for(pid))
    """
)

POOL = COMMON + textwrap.dedent(
    """
    import multiprocessing

    if __name__ == "__main__":
        method = sys.argv[1]
        expected = results(2)
        with multiprocessing.get_context(method).Pool(2) as pool:
            answers = pool.map_async(child_task, THREADS * 2).get(timeout=60)
        for n_threads, single, values in answers:
            assert same(values, expected), f"wrong results in a {method} worker, n_threads={n_threads}"
            # Only a forked worker is confined to one thread; a spawned one starts afresh.
            assert single == (method == "fork"), (method, single)
        print("ok")
    """
)

TORCH = COMMON + textwrap.dedent(
    """
    import torch
    import softmaxloss.torch as smt
    torch.set_num_threads(2)

    def torch_results():
        rng = np.random.default_rng(1)
        x = torch.from_numpy(rng.standard_normal((400, 1000)).astype(np.float32)).requires_grad_()
        t = torch.from_numpy(rng.integers(0, 1000, 400))
        loss = smt.cross_entropy(x, t)
        loss.backward()
        return loss.detach().numpy(), x.grad.numpy()

    expected = torch_results()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if same(torch_results(), expected) else 1)
    sys.exit(wait_for(pid))
    """
)


def run_scenario(tmp_path, source, build, *args):
    """Run `source` as a script in a fresh interpreter with kernel build `build`."""
    script = tmp_path / "scenario.py"
    script.write_text(source)
    env = {**os.environ, "SOFTMAXLOSS_KERNELS": build, "OMP_NUM_THREADS": "2"}
    try:
        done = subprocess.run([sys.executable, str(script), *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=TIME_LIMIT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the scenario hung (no exit within {TIME_LIMIT} s)")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("build", sorted(_dispatch.available))
def test_os_fork_child_after_threaded_parent_is_correct_and_does_not_hang(tmp_path, build):
    run_scenario(tmp_path, OS_FORK, build)


@pytest.mark.parametrize("build", sorted(_dispatch.available))
def test_fork_pool_workers_after_threaded_parent_are_correct_and_do_not_hang(tmp_path, build):
    run_scenario(tmp_path, POOL, build, "fork")


def test_spawned_pool_workers_keep_their_threads(tmp_path):
    """The contrast: a spawned worker is a fresh process, not confined to one thread."""
    run_scenario(tmp_path, POOL, list(_dispatch.available)[-1], "spawn")


def test_torch_adapter_in_a_forked_child(tmp_path):
    pytest.importorskip("torch")
    run_scenario(tmp_path, TORCH, list(_dispatch.available)[-1])

"""SciPy's own tests of logsumexp / softmax / log_softmax
(`scipy/special/tests/test_logsumexp.py`, shipped in SciPy's wheels), run against
softmaxloss's functions (`_scipy_special_plugin.py` replaces SciPy's in that module) in
a pytest subprocess (SciPy's conftest provides its `xp` fixtures). Every item passes but
those with complex input: refused (TypeError), a deliberate choice, softmaxloss being for
real logits (README)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

special = pytest.importorskip("scipy.special")
import softmaxloss as sml  # noqa: E402

TESTS = Path(__file__).parent


def scipy_test_file() -> Path:
    spec = importlib.util.find_spec("scipy.special.tests.test_logsumexp")
    if spec is None or spec.origin is None:
        pytest.skip("this SciPy does not ship scipy/special/tests/test_logsumexp.py")
    return Path(spec.origin)


def is_complex_item(nodeid: str) -> bool:
    """An item whose input is complex: a complex dtype or value in its parameters, or one
    of the tests written for complex input only."""
    params = nodeid.partition("[")[2]
    return ("complex" in params or re.search(r"\dj|infj|nanj", params) is not None
            or "small_imaginary" in nodeid or "complex_sign" in nodeid)


def test_scipy_own_logsumexp_tests_pass_but_complex_input():
    path = scipy_test_file()
    scipy_root = path.parents[2]  # .../site-packages/scipy: its conftest.py
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(path), "-q", "-rf", "-p", "no:cacheprovider",
         "-p", "_scipy_special_plugin", "--rootdir", str(scipy_root), "--confcutdir", str(scipy_root.parent)],
        capture_output=True, text=True, env=env, cwd=str(TESTS), timeout=900,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    failed = [line.split()[1] for line in run.stdout.splitlines() if line.startswith("FAILED ")]
    passed = int(re.search(r"(\d+) passed", summary).group(1)) if "passed" in summary else 0
    assert "error" not in summary, run.stdout[-3000:] + run.stderr[-3000:]
    not_complex = [nodeid for nodeid in failed if not is_complex_item(nodeid)]
    assert not not_complex, "\n".join(not_complex) + "\n" + run.stdout[-5000:]
    assert passed >= 50, summary  # 60 of 407 with SciPy 1.17.1, the other 347 complex
    print(f"SciPy test_logsumexp.py on softmaxloss: {summary}")


def test_default_axis_is_the_last_not_scipys_none():
    """The one call-form difference left: softmaxloss's axis defaults to -1 (PyTorch's and
    optax's default), SciPy's to None (every axis); SciPy's result needs axis=None."""
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(sml.logsumexp(x, axis=None), special.logsumexp(x), rtol=1e-15)
    np.testing.assert_allclose(sml.logsumexp(x), special.logsumexp(x, axis=-1), rtol=1e-15)
    np.testing.assert_allclose(sml.softmax(x, axis=None), special.softmax(x), rtol=1e-15)


def test_complex_input_is_refused_clearly():
    for name in ("logsumexp", "softmax", "log_softmax"):
        with pytest.raises(TypeError, match="complex"):
            getattr(sml, name)(np.array([1 + 1j, 2.0]))

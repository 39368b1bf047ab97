"""The worked examples in examples/ run to the end (each checks its own results with
asserts and must finish in under a minute). Each is skipped when a library it needs
is not installed, and all are when examples/ is not beside tests/ (a copied test tree)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# example file -> (modules it needs, a line its output must contain)
CASES = {
    "numpy_two_layer_net.py": (["sklearn"], "test accuracy"),
    "torch_adapter.py": (["torch", "sklearn"], "largest difference between the loss curves"),
    "lightgbm_adapter.py": (["lightgbm", "sklearn"], "largest difference between the raw scores"),
}


def test_every_example_is_tested():
    if not EXAMPLES.is_dir():
        pytest.skip("examples/ is not beside tests/")
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs(name):
    if not EXAMPLES.is_dir():
        pytest.skip("examples/ is not beside tests/")
    modules, expected = CASES[name]
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{name} needs {module}")
    # Each takes seconds; the generous timeout is for a heavily loaded machine.
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], cwd=EXAMPLES, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    assert expected in result.stdout, result.stdout

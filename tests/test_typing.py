"""The typed API, checked against the installed package: the `_kernels.pyi` stubs match the
compiled modules (mypy.stubtest), a small program using the public API passes
`mypy --strict`, and so does the package itself.

mypy is in the `test` extra; without it these tests skip. Each check is one mypy run in a
subprocess from a temporary directory (so `softmaxloss` resolves to the installed copy, as
for a user), 5 to 20 seconds each.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import softmaxloss
from softmaxloss import _dispatch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None, reason="mypy is not installed (pip install '.[test]')"
)

PACKAGE_DIR = pathlib.Path(softmaxloss.__file__).resolve().parent
EXAMPLE = pathlib.Path(__file__).resolve().parent / "typing_example.py"

# `mypy --strict -p softmaxloss`: every module, new ones included, with these exceptions:
# - NumPy's stubs type many array expressions (reductions with keepdims, arithmetic on arrays
#   of unknown dtype) as Any; the reference is written as SPEC's formulas read, and returning
#   those expressions is not an error there. Parameters and return types are still checked.
# - torch, JAX, scikit-learn and Dask are optional imports: treated as Any, so the check does not
#   depend on which of them are installed (and does not spend a minute analysing torch).
# - Modules not yet typed for --strict (remove a name once its module passes).
PACKAGE_MYPY_CONFIG = textwrap.dedent(
    """\
    [mypy]
    strict = True

    [mypy-softmaxloss.reference]
    warn_return_any = False

    [mypy-torch.*,jax.*,sklearn.*,dask.*]
    follow_imports = skip
    ignore_missing_imports = True

    [mypy-softmaxloss.testing]
    ignore_errors = True
    """
)


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory):
    """One cache for the module's mypy runs: the second reuses the first's analysis of NumPy."""
    return tmp_path_factory.mktemp("mypy_cache")


def run_python(*args, cwd):
    """`python *args` with this interpreter (so mypy sees this environment's softmaxloss)."""
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    env["MYPY_FORCE_COLOR"] = "0"
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env
    )


def kernel_modules():
    """The compiled kernel modules this machine can import (an AVX2 build is not imported on
    a CPU without AVX2: its module initialisation may already use AVX instructions), and the
    CPU tests' module."""
    return [module.__name__ for module in _dispatch.available.values()] + ["softmaxloss._cpu"]


def test_stubs_and_py_typed_are_installed_next_to_the_compiled_modules():
    """stubtest passes silently for a private module without stubs: check they shipped, one
    for every compiled module installed (also builds this CPU does not run)."""
    compiled = sorted({path.name.split(".")[0] for path in PACKAGE_DIR.iterdir() if path.suffix in (".so", ".pyd")})
    assert "_kernels" in compiled and "_cpu" in compiled, compiled
    missing = [
        name
        for name in ["py.typed"] + [f"{module}.pyi" for module in compiled]
        if not (PACKAGE_DIR / name).is_file()
    ]
    assert not missing, (
        f"{missing} missing from the installed package in {PACKAGE_DIR}: "
        "pyproject.toml's [tool.setuptools.package-data] must list *.pyi and py.typed, and "
        "setup.py writes the stub of each kernel build but the baseline"
    )


def test_kernel_stubs_match_the_compiled_modules(tmp_path):
    modules = kernel_modules()
    result = run_python("-m", "mypy.stubtest", *modules, cwd=tmp_path)
    assert result.returncode == 0, (
        f"src/softmaxloss/_kernels.pyi (or _cpu.pyi) no longer matches the compiled "
        f"{', '.join(modules)}: a def function in _kernels.pyx was added, removed or renamed, "
        "or its parameters changed. Update its stub in _kernels.pyi (parameters, types, "
        "docstring); the other builds' stubs (written by setup.py, BUILD_STUB) re-export "
        "_kernels.pyi and need no change unless a module-level name starts with "
        f"'_'. mypy.stubtest says:\n{result.stdout}{result.stderr}"
    )


def test_an_example_using_the_public_api_passes_mypy_strict(tmp_path, mypy_cache):
    result = run_python("-m", "mypy", "--strict", "--cache-dir", str(mypy_cache), str(EXAMPLE), cwd=tmp_path)
    assert result.returncode == 0, (
        "mypy --strict finds errors in tests/typing_example.py, which uses the public API: fix "
        "the type hints of the public functions (or the example, if the API changed on purpose)."
        f"\n{result.stdout}{result.stderr}"
    )


def test_the_typing_example_runs(tmp_path):
    result = run_python(str(EXAMPLE), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "typing example: ok" in result.stdout


@pytest.mark.skipif(
    np.lib.NumpyVersion(np.__version__) < "2.3.0",
    reason="the package writes `np.ndarray` for an array of any shape and dtype, which --strict "
    "accepts from NumPy 2.3 (its stubs give ndarray's type parameters defaults); NumPy 2.2, "
    "the last for Python 3.10, reports each as a missing type argument",
)
def test_the_package_passes_mypy_strict(tmp_path, mypy_cache):
    config = tmp_path / "mypy.ini"
    config.write_text(PACKAGE_MYPY_CONFIG)
    result = run_python(
        "-m", "mypy", "--config-file", str(config), "--cache-dir", str(mypy_cache), "-p", "softmaxloss", cwd=tmp_path,
    )
    assert result.returncode == 0, (
        f"mypy --strict finds errors in the installed softmaxloss ({PACKAGE_DIR}); the options "
        f"are tests/test_typing.py's PACKAGE_MYPY_CONFIG.\n{result.stdout}{result.stderr}"
    )

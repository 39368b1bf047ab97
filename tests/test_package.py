"""The installed package: imported from site-packages (never the source tree), its
public API, configuration report and command line."""

import os
import pathlib
import platform
import subprocess
import sys
import sysconfig

import pytest

import softmaxloss as sml
from softmaxloss import _builds, _cpu, _dispatch, reference

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
PUBLIC_FUNCTIONS = ["softmax", "log_softmax", "logsumexp", "cross_entropy", "cross_entropy_with_grad", "gradient_hessian"]


def test_tests_run_against_the_installed_package_not_the_source_tree():
    package_dir = pathlib.Path(sml.__file__).resolve().parent
    assert REPOSITORY / "src" not in package_dir.parents, (
        f"softmaxloss was imported from {package_dir}: install it (pip install .) and do not put src/ on sys.path"
    )
    assert sml.__version__ != "0+unknown"


@pytest.mark.parametrize("name", PUBLIC_FUNCTIONS)
def test_every_public_function_has_a_reference_twin_with_the_same_signature(name):
    import inspect

    def parameters(function):
        return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]

    assert name in sml.__all__
    assert parameters(getattr(sml, name)) == parameters(getattr(reference, name))


def test_every_kernel_build_reports_its_instruction_set():
    for name, module in _dispatch.available.items():
        info = module.build_info()
        assert info["openmp"] in (True, False) and info["max_threads"] >= 1
        assert ("avx2" in info["isa"]) == (name == "avx2")
        assert ("avx512" in info["isa"]) == (name == "avx512")


def machine_architecture():
    machine = platform.machine().lower()
    return "x86_64" if machine in ("x86_64", "amd64") else machine


def test_the_table_of_builds_is_what_is_installed_and_dispatched():
    """Every row of `_builds.BUILDS` for this architecture is an installed module; the
    available builds are the rows whose CPU test passes, in the table's order; the one in use
    is the last available row marked default (a build not shown faster is never chosen
    unasked); every other row says why it is not available."""
    package_dir = pathlib.Path(sml.__file__).resolve().parent
    installed = {path.name.split(".")[0] for path in package_dir.iterdir() if path.suffix in (".so", ".pyd")}
    rows = [build for build in _builds.BUILDS if build.architectures is None or machine_architecture() in build.architectures]
    assert {build.module for build in rows} | {"_cpu"} == installed
    assert list(_dispatch.available) == [b.name for b in _builds.BUILDS if b.name in _dispatch.available]
    for build in _builds.BUILDS:
        runs = build.cpu is None or _cpu.supports(build.cpu)
        assert (build.name in _dispatch.available) == (runs and build in rows), build.name
        assert (build.name in _dispatch.unavailable) == (build.name not in _dispatch.available), build.name
        if build.name in _dispatch.available:
            assert _dispatch.available[build.name].__name__ == f"softmaxloss.{build.module}"
    assert _builds.BUILDS[0].cpu is None, "the first row is the baseline, which every CPU runs"
    if not os.environ.get(_dispatch.ENVIRONMENT_VARIABLE, "").strip():
        defaults = [b.name for b in _builds.BUILDS if b.default and b.name in _dispatch.available]
        assert _dispatch.active_name() == defaults[-1]


@pytest.mark.skipif(not {"avx2", "avx512"} <= set(_dispatch.available), reason="this CPU has no AVX-512")
@pytest.mark.parametrize("n_classes", [63, 1037])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_avx512_build_gives_the_avx2_builds_bits(dtype, n_classes):
    """The avx512 build's ZMM exp-and-sum (16 floats / 8 doubles a step) and its AVX2-width
    auto-vectorisation (-mprefer-vector-width=256) give the avx2 build's bits: rows with a
    remainder past the wide loop, entries out of the vector exp's range (the general path in
    between), ties of the max, and the in-order sums (weights, smoothing, entropy) whose
    remainders differed under 512-bit auto-vectorisation."""
    import numpy as np

    rng = np.random.default_rng(n_classes)
    x = (rng.standard_normal((24, n_classes)) * 3).astype(dtype)
    x[3, 10:40] = -np.inf
    x[5, 17] = -1000.0  # beyond the vector exp's range for float32 and float64
    x[7, ::5] = x[7].max()
    y = rng.integers(0, n_classes, 24)
    w = rng.uniform(0.0, 2.0, n_classes)
    results = {}
    for build in ("avx2", "avx512"):
        with _dispatch.use(build):
            ce = sml.cross_entropy_with_grad(x, y, weight=w, label_smoothing=0.1, reduction="none",
                                             return_lse=True, return_entropy=True)
            results[build] = [ce.loss, ce.grad, ce.lse, ce.entropy, *sml.cross_entropy_with_grad(x, y),
                              sml.softmax(x), sml.log_softmax(x), sml.logsumexp(x), *sml.gradient_hessian(x, y)]
    for k, (a, b) in enumerate(zip(results["avx2"], results["avx512"])):
        a, b = np.atleast_1d(a), np.atleast_1d(b)
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=f"result {k}")


@pytest.mark.skipif(not {"avx2", "avx512"} <= set(_dispatch.available), reason="this CPU has no AVX-512")
@pytest.mark.parametrize("kind", [0, 1], ids=["bfloat16", "float16"])
def test_the_avx512_build_converts_half_values_as_the_avx2_build(kind):
    """The avx512 build's half conversions (16 a step; float16 by vcvtph2ps / vcvtps2ph) give
    the avx2 build's bits: every half value to float32 (signalling NaNs too), and float32
    values of every exponent, NaNs with payloads, ties and subnormals back to half."""
    import numpy as np

    every = np.arange(2**16, dtype=np.uint16)
    rng = np.random.default_rng(16)
    patterns = np.concatenate([rng.integers(0, 2**32, 1 << 16, dtype=np.uint64).astype(np.uint32),
                               np.arange(0x7F800000, 0x7F800000 + 4096, dtype=np.uint32),  # inf, NaNs
                               np.arange(0, 4096, dtype=np.uint32) << 13 | np.uint32(0x1000)])  # float16 ties
    floats = np.concatenate([patterns, patterns | np.uint32(0x80000000)]).view(np.float32)
    results = {}
    for build in ("avx2", "avx512"):
        kernels = _dispatch.available[build]
        to_float = np.empty(every.shape, np.float32)
        kernels.half_to_float32(every, to_float, kind)
        to_half = np.empty(floats.shape, np.uint16)
        kernels.half_from_float32(floats, to_half, kind)
        results[build] = (to_float.view(np.uint32), to_half)
    for a, b in zip(results["avx2"], results["avx512"]):
        np.testing.assert_array_equal(a, b)


def test_the_cpu_tests():
    from softmaxloss import _kernels

    assert _cpu.supports("avx2+fma") == _kernels.cpu_has_avx2_fma()
    for build in _builds.BUILDS:
        if build.cpu is not None:
            assert _cpu.supports(build.cpu) in (True, False)
    with pytest.raises(ValueError, match="unknown CPU test 'sse9'"):
        _cpu.supports("sse9")


@pytest.mark.parametrize("build", [b.name for b in _builds.BUILDS])
def test_the_environment_variable_forces_a_build_or_says_it_is_unavailable(build):
    program = "from softmaxloss import _dispatch; print(_dispatch.active_name())"
    env = {**os.environ, _dispatch.ENVIRONMENT_VARIABLE: build}
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, env=env)
    if build in _dispatch.available:
        assert result.returncode == 0 and result.stdout.split() == [build], result.stderr
    else:
        assert result.returncode != 0
        assert f"RuntimeError: SOFTMAXLOSS_KERNELS={build!r} is not available on this machine" in result.stderr


def test_forcing_an_unavailable_kernel_build_is_a_clear_error():
    with pytest.raises(RuntimeError, match="not available"):
        with _dispatch.use("no-such-build"):
            pass


def test_show_config_names_the_build(capsys):
    sml.show_config()
    printed = capsys.readouterr().out
    for fact in ("python:", "numpy:", "compiler:", "openmp:", "instruction_set:", _dispatch.active_name()):
        assert fact in printed
    for build in _builds.BUILDS:  # every row, with what this machine does with it
        assert f"{build.name}: " in printed


def run_module(*args):
    return subprocess.run(
        [sys.executable, "-m", "softmaxloss", *args], capture_output=True, text=True, timeout=600, cwd=REPOSITORY.parent
    )


def test_command_line_bench_runs_chosen_shapes_and_reports_ratios(tmp_path):
    result = run_module(
        "bench", "--shapes", "64x10,32x100", "--dtypes", "float32", "--threads", "1",
        "--repeats", "2", "--contenders", "copyto,softmaxloss,numpy", "--json", str(tmp_path / "r.json"),
    )
    assert result.returncode == 0, result.stderr
    assert "softmaxloss" in result.stdout and "numpy / softmaxloss" in result.stdout
    import json

    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [(r["op"], r["n_rows"], r["n_classes"]) for r in rows] == [("cross_entropy", 64, 10), ("cross_entropy", 32, 100)]
    assert all(r["ratios_to_copyto"]["softmaxloss"] > 0 and r["ratios_to_softmaxloss"]["numpy"] > 0 for r in rows)


def _markdown_tables(text):
    """{title: (header cells, [row cells])} of every '### title' + Markdown table in text."""
    tables, title = {}, None
    for line in text.splitlines():
        if line.startswith("### "):
            title = line[4:]
            tables[title] = (None, [])
        elif line.startswith("|") and title is not None:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            head, rows = tables[title]
            if head is None:
                tables[title] = (cells, rows)
            elif set(line) - set("|-"):
                rows.append(cells)
            else:
                assert len(cells) == len(head), line  # the separator line
    return tables


def test_command_line_bench_quick_prints_a_well_formed_table_per_dtype_and_thread_count(tmp_path):
    """The smoke run: one table per dtype x thread count, one line per class count, every
    cell a positive number (or '-'), the per-call overhead, and the same figures as JSON."""
    from softmaxloss import _benchmark

    json_path = tmp_path / "quick.json"
    result = run_module("bench", "--quick", "--json", str(json_path))
    assert result.returncode == 0, result.stderr
    tables = _markdown_tables(result.stdout)
    expected = {f"{_benchmark.OP_TITLES['cross_entropy']}: {dtype}, {threads} thread{'s' * (threads != 1)}"
                for dtype in ("float32", "float64") for threads in (1, 2)}
    assert expected <= set(tables), sorted(tables)
    for title in expected:
        head, rows = tables[title]
        assert head[:4] == ["C", "N", "softmaxloss ns/row", "softmaxloss / copyto"]
        assert all(cell.endswith(" / softmaxloss") for cell in head[4:])
        assert [int(row[0]) for row in rows] == list(_benchmark.QUICK_CLASSES)
        for row in rows:
            assert len(row) == len(head)
            assert int(row[1]) == _benchmark.rows_for(int(row[0]), _benchmark.QUICK_LOGITS)
            assert all(cell == "-" or float(cell) > 0 for cell in row[2:]), row
            assert row[2] != "-" and row[3] != "-"
    # every peer either has its column or is named as skipped, with the reason
    for peer in ("torch", "torch.compile", "jax", "sklearn"):
        in_table = all(f"{peer} / softmaxloss" in tables[title][0] for title in expected)
        assert in_table or f"skipped {peer}: " in result.stdout, peer
    overhead_head, overhead_rows = tables["per-call overhead: cross_entropy_with_grad"]
    assert overhead_head == ["(64, 10) float32, us per call", "n_threads=1", "n_threads=2", "default threads"]
    assert [row[0] for row in overhead_rows] == ["with out=", "without out="]
    assert all(float(cell) > 0 for row in overhead_rows for cell in row[1:])
    import json

    report = json.loads(json_path.read_text())
    assert len(report["rows"]) == 2 * 2 * len(_benchmark.QUICK_CLASSES)
    for row in report["rows"]:
        assert row["op"] == "cross_entropy" and row["seconds"]["softmaxloss"] > 0
        assert row["ratios_to_softmaxloss"]["softmaxloss"] == 1.0
    assert [f["threads"] for f in report["overhead"]] == [1, 2, None]
    assert report["command"][-3:] == ["--quick", "--json", str(json_path)]


def test_command_line_bench_rejects_unknown_names():
    for option, value in (("--contenders", "copyto,tensorflow"), ("--ops", "softmax,argmax"), ("--dtypes", "float16")):
        result = run_module("bench", option, value)
        assert result.returncode == 2 and "unknown" in result.stderr and value.split(",")[-1] in result.stderr


def test_bench_markdown_tables_skip_missing_peers_by_column():
    """A peer missing from a case's timings is '-' in its row; a peer missing from every
    row of a table has no column (the message naming it comes from the run)."""
    from softmaxloss import _benchmark

    rows = [
        _benchmark.Row("softmax", 1000, 10, "float32", 1, {"copyto": 1e-4, "softmaxloss": 2e-4, "torch": 6e-4}),
        _benchmark.Row("softmax", 100, 100, "float32", 1, {"copyto": 1e-4, "softmaxloss": 4e-4}),
    ]
    tables = _markdown_tables(_benchmark.markdown_tables(_benchmark.Run(rows=rows)))
    head, cells = tables[f"{_benchmark.OP_TITLES['softmax']}: float32, 1 thread"]
    assert head == ["C", "N", "softmaxloss ns/row", "softmaxloss / copyto", "torch / softmaxloss"]
    assert cells == [["10", "1000", "200", "2.00", "3.00"], ["100", "100", "4000", "4.00", "-"]]


def test_bench_interleaved_medians_alternate_the_contenders():
    from softmaxloss import _benchmark

    calls = []
    timers = {name: _benchmark.LocalTimer(lambda name=name: calls.append(name)) for name in "abc"}
    seconds = _benchmark.interleaved_medians(timers, repeats=3, min_seconds=0.0)
    assert set(seconds) == set("abc") and all(value > 0 for value in seconds.values())
    timed = calls[6:]  # after each one's two warm-up calls
    assert timed == list("abc" "bca" "cab")


def test_command_line_config():
    result = run_module("config")
    assert result.returncode == 0 and "instruction_set:" in result.stdout


def test_a_wheel_that_must_have_openmp_has_it():
    """CI and cibuildwheel set SOFTMAXLOSS_REQUIRE_OPENMP=1: a single-threaded build fails."""
    if os.environ.get("SOFTMAXLOSS_REQUIRE_OPENMP") != "1":
        pytest.skip("SOFTMAXLOSS_REQUIRE_OPENMP is not set")
    for module in _dispatch.available.values():
        assert module.build_info()["openmp"], f"{module.__name__} was built without OpenMP"


# ---- no fast-math: IEEE semantics, and no flush-to-zero for the whole process ----------

FAST_MATH_FLAGS = {
    "-ffast-math", "-Ofast", "-funsafe-math-optimizations", "-ffinite-math-only",
    "-fassociative-math", "-freciprocal-math", "-fno-signed-zeros", "/fp:fast",
}


def test_setup_py_compiles_without_fast_math_flags():
    """The flag lists of setup.py (read, not run): none of the fast-math family (wrong
    NaN/inf results; linked into a shared object, -ffast-math sets flush-to-zero for the
    whole process), and the two flags that let gcc vectorise the exp without them."""
    import ast

    setup_py = pathlib.Path(__file__).resolve().parent.parent / "setup.py"
    if not setup_py.is_file():
        pytest.skip("setup.py is not beside tests/")
    flag_lists = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(setup_py.read_text(encoding="utf-8")).body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id.endswith(("_OPTIMIZE", "_DEBUG", "_NO_DEBUG_INFO"))
    }
    assert {"UNIX_OPTIMIZE", "MSVC_OPTIMIZE"} <= set(flag_lists)
    for name, flags in flag_lists.items():
        assert not FAST_MATH_FLAGS & set(flags), f"{name} = {flags}"
    assert {"-fno-math-errno", "-fno-trapping-math"} <= set(flag_lists["UNIX_OPTIMIZE"])


def test_loading_the_kernels_keeps_subnormals_in_the_whole_process():
    """In a fresh process, after every kernel build is loaded and run: NumPy's own
    arithmetic still produces subnormals (no flush-to-zero / denormals-are-zero), and
    so do the kernels (exp(-740) in float64, exp(-100) in float32)."""
    program = (
        "import numpy as np, softmaxloss as sml\n"
        "from softmaxloss import _dispatch\n"
        "for name in _dispatch.available:\n"
        "    with _dispatch.use(name):\n"
        "        assert sml.softmax(np.array([0.0, -740.0]))[1] > 0, name\n"
        "        assert sml.softmax(np.array([0.0, -100.0], np.float32))[1] > 0, name\n"
        "tiny = np.finfo(np.float64).tiny\n"
        "assert (np.array([tiny]) / 4)[0] > 0\n"
        "assert (np.array([np.finfo(np.float32).tiny], np.float32) / np.float32(4))[0] > 0\n"
        "assert np.array([tiny / 4]) * 1.0 != 0  # a subnormal input is not read as 0\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not hasattr(sys, "_is_gil_enabled") or sysconfig.get_config_var("Py_GIL_DISABLED") != 1,
                    reason="not a free-threaded CPython")
def test_free_threaded_python_keeps_its_gil_off_with_the_kernels_imported():
    """Every extension module is declared freethreading_compatible: importing one that is
    not would turn the GIL back on (with a RuntimeWarning) in a free-threaded interpreter."""
    code = ("import sys, softmaxloss, softmaxloss._cpu\n"
            "from softmaxloss import _dispatch\n"
            "assert list(_dispatch.available)\n"
            "sys.exit(1 if sys._is_gil_enabled() else 0)\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHON_GIL"}
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr or "the GIL was enabled by importing softmaxloss"

"""Build the softmaxloss extension modules.

Metadata lives in pyproject.toml; this file only declares the Cython extensions and picks
per-compiler flags. The kernels are built once per row of the table of builds,
``src/softmaxloss/_builds.py`` (read here by path, without importing the package): the same
source, ``_kernels.pyx``, compiled into ``softmaxloss.<module>`` with the row's flags, for the
target architectures the row names (``softmaxloss._kernels``, the baseline, everywhere;
``_kernels_avx2`` and ``_kernels_avx512`` on x86-64). ``softmaxloss._cpu`` (the CPU tests,
built for the baseline) tells the package at import which of them this CPU runs. Each build
but the baseline gets a stub, ``<module>.pyi``, written beside it (it re-exports
``_kernels.pyi``). The C headers are in ``src/softmaxloss/_csrc/``: build inputs, in the sdist
and not in the wheel.

Environment switches (all optional):

* ``SOFTMAXLOSS_OPENMP=1`` requires OpenMP (the build fails without it), ``=0`` builds
  single-threaded; unset: use OpenMP when a test program compiles and links with it.
* ``SOFTMAXLOSS_OPENMP_PREFIX=/path``: where an OpenMP runtime lives (``include/omp.h``,
  ``lib/libomp.*``), e.g. a conda-forge ``llvm-openmp`` for Apple clang.
* ``SOFTMAXLOSS_DEBUG=1``: bounds/wraparound/initialization checks on, ``-O0 -g``, asserts on.
* ``SOFTMAXLOSS_SANITIZE=address`` (any ``-fsanitize=`` value): sanitizer build (gcc/clang).

The kernel reports OpenMP from the compiler's own ``_OPENMP`` macro (``build_info()["openmp"]``)
and its instruction set from the compiler's ISA macros (``SML_ISA`` in ``_csrc/_platform.h``),
so it states what was compiled in, not what was asked for.
"""

import os
import runpy
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, LinkError

PACKAGE_DIR = os.path.join("src", "softmaxloss")
CSRC_DIR = os.path.join(PACKAGE_DIR, "_csrc")
BUILDS = runpy.run_path(os.path.join(PACKAGE_DIR, "_builds.py"))["BUILDS"]
BUILD_OF_EXTENSION = {f"softmaxloss.{build.module}": build for build in BUILDS}

# The stub of each build but the baseline (whose _kernels.pyi is in the source tree).
BUILD_STUB = '''\
"""Stubs for `softmaxloss.{module}`: `_kernels.pyx` compiled for the "{name}" row of
`softmaxloss._builds`, so the same functions as `softmaxloss._kernels`. Written by setup.py:
edit `_kernels.pyi`, not this file.
"""

from ._kernels import *

# A star import leaves out names that start with "_".
__test__: dict[str, str]
'''


def env_flag(name):
    """'1'/'0' -> True/False, unset or empty -> None; anything else is an error."""
    value = os.environ.get(name, "").strip()
    if value == "":
        return None
    if value in ("1", "0"):
        return value == "1"
    raise SystemExit(f"error: {name} must be 0 or 1, not {value!r}")


DEBUG = bool(env_flag("SOFTMAXLOSS_DEBUG"))
SANITIZE = os.environ.get("SOFTMAXLOSS_SANITIZE", "").strip()

CYTHON_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    # Safe without the GIL: the kernels run nogil on the caller's arrays and hold no mutable
    # module state but the fork flag, set once in a forked child before any other thread
    # exists. Free-threaded CPython keeps its GIL off with the module imported.
    "freethreading_compatible": True,
}

# Flags that keep IEEE semantics (NaN, inf, signed zeros, rounding): the kernel's NaN/-inf
# handling depends on them. Only errno and trap side effects of libm calls are given up.
UNIX_OPTIMIZE = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
# Python's CFLAGS often carry -g, which makes each module several times larger; keep symbols
# only where they are read (debug and sanitizer builds).
UNIX_NO_DEBUG_INFO = ["-g0"]
UNIX_DEBUG = ["-O0", "-g", "-UNDEBUG"]
MSVC_OPTIMIZE = ["/O2"]
MSVC_DEBUG = ["/Od", "/Zi", "/UNDEBUG"]

OPENMP_TEST_PROGRAM = textwrap.dedent(
    """\
    #include <omp.h>
    #include <stdio.h>

    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+ : n)
        n += 1;
        printf("%d threads of %d\\n", n, omp_get_max_threads());
        return n > 0 ? 0 : 1;
    }
    """
)


def target_architecture():
    """The architecture of the wheel being built, as `_builds.py` names them: "x86_64"
    (also for Windows' amd64), else the platform tag's last part ("aarch64", "arm64", ...);
    "multiple" for a macOS build for several (e.g. ARCHFLAGS="-arch arm64 -arch x86_64"),
    which gets the builds for every architecture only. Honours cross-compilation settings."""
    platform_tag = sysconfig.get_platform().lower()
    if platform_tag.startswith("macosx"):
        archflags = os.environ.get("ARCHFLAGS", "").split()
        if "-arch" in archflags:
            return archflags[1] if len(archflags) == 2 and archflags[0] == "-arch" else "multiple"
    if platform_tag.endswith(("x86_64", "amd64")):
        return "x86_64"
    return platform_tag.rsplit("-", 1)[-1]


def openmp_prefixes():
    """Directories that may hold an OpenMP runtime (include/omp.h, lib/libomp.*), best first."""
    candidates = [os.environ.get("SOFTMAXLOSS_OPENMP_PREFIX", "")]
    if sys.platform == "darwin":
        candidates += [
            os.environ.get("CONDA_PREFIX", ""),
            "/opt/homebrew/opt/libomp",  # Homebrew, Apple silicon (local builds only)
            "/usr/local/opt/libomp",  # Homebrew, Intel (local builds only)
        ]
    return [p for p in candidates if p and os.path.isfile(os.path.join(p, "include", "omp.h"))]


class OpenMP:
    """Compile and link flags for one way of enabling OpenMP."""

    def __init__(self, description, compile_args, link_args=(), include_dirs=(), library_dirs=()):
        self.description = description
        self.compile_args = list(compile_args)
        self.link_args = list(link_args)
        self.include_dirs = list(include_dirs)
        self.library_dirs = list(library_dirs)


def openmp_candidates(compiler_type):
    """The ways to enable OpenMP worth trying with this compiler, in order of preference."""
    if compiler_type == "msvc":
        return [OpenMP("MSVC /openmp", ["/openmp"])]
    candidates = []
    if sys.platform == "darwin":
        # Apple clang has no -fopenmp driver flag: preprocess with it and link libomp.
        for prefix in openmp_prefixes():
            lib = os.path.join(prefix, "lib")
            candidates.append(
                OpenMP(
                    f"-Xpreprocessor -fopenmp -lomp from {prefix}",
                    ["-Xpreprocessor", "-fopenmp"],
                    ["-lomp", f"-Wl,-rpath,{lib}"],
                    [os.path.join(prefix, "include")],
                    [lib],
                )
            )
        candidates.append(OpenMP("-Xpreprocessor -fopenmp -lomp", ["-Xpreprocessor", "-fopenmp"], ["-lomp"]))
    candidates.append(OpenMP("-fopenmp", ["-fopenmp"], ["-fopenmp"]))
    return candidates


class BuildExt(build_ext):
    """Cythonize, then add optimization, ISA and OpenMP flags for the compiler in use."""

    def finalize_options(self):
        super().finalize_options()
        # Flags depend on environment switches, which the up-to-date check does not see:
        # always recompile (a few small modules) rather than reuse a stale object.
        self.force = True

    def run(self):
        from Cython.Build import cythonize

        # Generated C goes under build/ (never into src/), one tree per directive set and
        # module: every kernel build is `_kernels.pyx` compiled under its own module name.
        # The Extension objects setuptools already finalized get the C sources in place.
        for ext in self.extensions:
            (c_ext,) = cythonize(
                [ext],
                compiler_directives=CYTHON_DIRECTIVES,
                build_dir=os.path.join("build", "cython-debug" if DEBUG else "cython", ext.name),
                quiet=True,
            )
            ext.sources = c_ext.sources
            ext.depends = c_ext.depends
        super().run()
        for build, stub in self.build_stubs():
            with open(stub, "w", encoding="utf-8") as f:
                f.write(BUILD_STUB.format(module=build.module, name=build.name))

    def build_stubs(self):
        """(row of the table, path of its .pyi beside the built module) for each kernel
        build but the baseline, `_kernels`, whose stub is in the source tree."""
        return [
            (build, os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), f"{build.module}.pyi"))
            for ext in self.extensions
            for build in [BUILD_OF_EXTENSION.get(ext.name)]
            if build is not None and build.module != "_kernels"
        ]

    def get_outputs(self):
        return super().get_outputs() + [stub for _, stub in self.build_stubs()]

    def build_extensions(self):
        compiler_type = self.compiler.compiler_type
        msvc = compiler_type == "msvc"
        if msvc:
            compile_args = MSVC_DEBUG if DEBUG else MSVC_OPTIMIZE
            link_args = ["/DEBUG"] if DEBUG else []
        elif DEBUG:
            compile_args, link_args = UNIX_DEBUG, []
        else:
            compile_args = UNIX_OPTIMIZE + (["-g"] if SANITIZE else UNIX_NO_DEBUG_INFO)
            link_args = []
        compile_args, link_args = list(compile_args), list(link_args)

        if SANITIZE:
            if msvc:
                raise SystemExit("error: SOFTMAXLOSS_SANITIZE is supported with gcc/clang only")
            sanitize = [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer"]
            compile_args += sanitize
            link_args += sanitize

        openmp = self.find_openmp(compiler_type)
        if openmp is None and not msvc and self.compiles_with(["-fopenmp-simd"]):
            # No threads, but keep the kernel's `#pragma omp simd` hints.
            compile_args.append("-fopenmp-simd")

        for ext in self.extensions:
            ext.extra_compile_args = list(compile_args)
            ext.extra_link_args = list(link_args)
            build = BUILD_OF_EXTENSION.get(ext.name)
            if build is None:  # softmaxloss._cpu: the baseline, no threads
                continue
            ext.extra_compile_args += build.msvc_flags if msvc else build.unix_flags
            if openmp:
                ext.extra_compile_args += openmp.compile_args
                ext.extra_link_args += openmp.link_args
                ext.include_dirs += openmp.include_dirs
                ext.library_dirs += openmp.library_dirs
        super().build_extensions()

    def find_openmp(self, compiler_type):
        """The first OpenMP configuration a test program builds with, or None."""
        wanted = env_flag("SOFTMAXLOSS_OPENMP")
        if wanted is False:
            print("softmaxloss: SOFTMAXLOSS_OPENMP=0: building without OpenMP (single-threaded)")
            return None
        for candidate in openmp_candidates(compiler_type):
            if self.compiles_with(
                candidate.compile_args,
                candidate.link_args,
                candidate.include_dirs,
                candidate.library_dirs,
                OPENMP_TEST_PROGRAM,
            ):
                print(f"softmaxloss: building with OpenMP ({candidate.description})")
                return candidate
        message = (
            f"the {compiler_type} compiler cannot build an OpenMP program (tried: "
            + "; ".join(c.description for c in openmp_candidates(compiler_type))
            + "). On macOS install llvm-openmp (conda-forge) and set SOFTMAXLOSS_OPENMP_PREFIX "
            "to its prefix."
        )
        if wanted:
            raise SystemExit(f"error: SOFTMAXLOSS_OPENMP=1 but {message}")
        bar = "*" * 78
        print(
            f"\n{bar}\nWARNING: softmaxloss is built WITHOUT OpenMP: every call runs on one "
            f"thread.\n{message}\n{bar}\n",
            file=sys.stderr,
        )
        return None

    def compiles_with(self, compile_args, link_args=(), include_dirs=(), library_dirs=(), source=None):
        """Whether a small C program compiles and links with these flags."""
        if source is None:
            source = "int main(void) { return 0; }\n"
        tmp = tempfile.mkdtemp(prefix="softmaxloss-")
        try:
            path = os.path.join(tmp, "check.c")
            with open(path, "w") as f:
                f.write(source)
            objects = self.compiler.compile(
                [path], output_dir=tmp, include_dirs=list(include_dirs), extra_postargs=list(compile_args)
            )
            self.compiler.link_executable(
                objects,
                "check",
                output_dir=tmp,
                library_dirs=list(library_dirs),
                extra_postargs=list(link_args),
            )
            return True
        except (CCompilerError, CompileError, LinkError, subprocess.CalledProcessError, OSError):
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def extension(module, source):
    return Extension(
        f"softmaxloss.{module}",
        sources=[os.path.join(PACKAGE_DIR, source)],
        include_dirs=[CSRC_DIR],
    )


architecture = target_architecture()
extensions = [extension("_cpu", "_cpu.pyx")] + [
    extension(build.module, "_kernels.pyx")
    for build in BUILDS
    if build.architectures is None or architecture in build.architectures
]

setup(ext_modules=extensions, cmdclass={"build_ext": BuildExt})

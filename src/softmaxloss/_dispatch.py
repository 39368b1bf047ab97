"""Choose the compiled kernels for this CPU, once, at import.

The same Cython source is compiled once per row of the table of builds (`_builds.py`):
`_kernels` for the platform's baseline instruction set (x86-64 SSE2, aarch64 NEON, ...)
and, on x86-64, `_kernels_avx2` (AVX2 + FMA) and `_kernels_avx512` (AVX-512 F/BW/DQ/VL).
A build is available when its CPU test (`_cpu.supports`, run before its module is
imported) passes and its module was built; the one used is the last available row of the
table marked `default` (AVX-512 where the CPU has it, else AVX2, else the baseline). The
environment variable SOFTMAXLOSS_KERNELS=name forces a build (an unavailable one is an error
rather than a crash on an illegal instruction).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from . import _cpu
from ._builds import BUILDS

ENVIRONMENT_VARIABLE = "SOFTMAXLOSS_KERNELS"

unavailable: dict[str, str] = {}
"""The builds of the table this machine does not run, and why."""


def _find_builds() -> dict[str, ModuleType]:
    """The compiled kernel modules this machine can run, in the table's order (best last)."""
    builds = {}
    for build in BUILDS:
        if build.cpu is None:  # the baseline: always built, always runs
            builds[build.name] = importlib.import_module(f".{build.module}", __package__)
            continue
        if not _cpu.supports(build.cpu):
            unavailable[build.name] = f"this CPU (or OS) lacks {build.cpu}"
            continue
        try:
            builds[build.name] = importlib.import_module(f".{build.module}", __package__)
        except ImportError:  # not built for this platform
            unavailable[build.name] = "not built for this platform"
    return builds


available: dict[str, ModuleType] = _find_builds()
_defaults = [build.name for build in BUILDS if build.default and build.name in available]


def _choose(name: str | None) -> ModuleType:
    if not name:
        return available[_defaults[-1]]
    if name not in available:
        raise RuntimeError(
            f"{ENVIRONMENT_VARIABLE}={name!r} is not available on this machine; "
            f"choose one of {sorted(available)}"
        )
    return available[name]


kernels: ModuleType = _choose(os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower())


_SIGNATURE_NAMES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
                    np.dtype(np.uint16): "uint16_t"}  # half-precision bits (the softcap entry points)
_specialised: dict[tuple[object, str, tuple[np.dtype[Any], ...]], Any] = {}


def specialised(name: str, *dtypes: np.dtype[Any]) -> Any:
    """The kernel function `name` of the build in use, specialised for `dtypes` (one per
    fused type of its signature, in order). Calling the specialisation directly skips
    Cython's run-time matching of the arguments to a signature: several microseconds
    per call for the cross-entropy kernels, most of a small call's kernel time."""
    key = (kernels, name, dtypes)
    function = _specialised.get(key)
    if function is None:
        function = getattr(kernels, name)
        signatures = getattr(function, "__signatures__", None)
        if signatures is not None:  # not for a stand-in (tests replace `kernels`)
            function = signatures["|".join(_SIGNATURE_NAMES[dtype] for dtype in key[2])]
            _specialised[key] = function
    return function


def active_name() -> str:
    """The name of the kernel build in use (a row of `_builds.BUILDS`: 'baseline', 'avx2', ...)."""
    return next(name for name, module in available.items() if module is kernels)


@contextlib.contextmanager
def use(name: str) -> Iterator[ModuleType]:
    """Run the enclosed calls with the named kernel build (for tests and benchmarks)."""
    global kernels
    previous = kernels
    kernels = _choose(name)
    try:
        yield kernels
    finally:
        kernels = previous

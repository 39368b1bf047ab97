"""Choose the compiled kernels for this CPU, once, at import.

The same Cython source is compiled twice: `_kernels` for the platform's baseline
instruction set (x86-64 SSE2, aarch64 NEON, ...) and, on x86-64, `_kernels_avx2`
with AVX2 + FMA. The AVX2 build is used when the CPU (and OS) support it. The
environment variable SOFTMAXLOSS_KERNELS=baseline|avx2 forces a choice (an
unsupported choice is an error rather than a crash on an illegal instruction).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from . import _kernels as _baseline

ENVIRONMENT_VARIABLE = "SOFTMAXLOSS_KERNELS"


def _find_builds() -> dict[str, ModuleType]:
    """The compiled kernel modules this machine can run, best last."""
    builds = {"baseline": _baseline}
    if _baseline.cpu_has_avx2_fma():
        try:
            from . import _kernels_avx2
        except ImportError:  # not built for this platform
            pass
        else:
            builds["avx2"] = _kernels_avx2
    return builds


available: dict[str, ModuleType] = _find_builds()


def _choose(name: str | None) -> ModuleType:
    if not name:
        return list(available.values())[-1]
    if name not in available:
        raise RuntimeError(
            f"{ENVIRONMENT_VARIABLE}={name!r} is not available on this machine; "
            f"choose one of {sorted(available)}"
        )
    return available[name]


kernels: ModuleType = _choose(os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower())


_SIGNATURE_NAMES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
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
    """The name of the kernel build in use ('baseline' or 'avx2')."""
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

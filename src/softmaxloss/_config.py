"""`show_config()`: what this installation of softmaxloss runs on."""

from __future__ import annotations

import platform
import sys
from typing import Any

import numpy as np

from . import _dispatch


def config() -> dict[str, Any]:
    """The facts `show_config` prints, as a dict."""
    from . import __version__

    info = _dispatch.kernels.build_info()
    return {
        "softmaxloss": __version__,
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.platform})",
        "numpy": np.__version__,
        "machine": platform.machine(),
        "compiler": info["compiler"],
        "openmp": info["openmp"],
        "max_threads": info["max_threads"],
        "kernels": _dispatch.active_name(),
        "instruction_set": info["isa"],
        "available_kernels": {name: module.build_info()["isa"] for name, module in _dispatch.available.items()},
    }


def show_config() -> None:
    """Print the Python, NumPy, compiler, OpenMP (on/off, threads) and the
    instruction set of the kernels in use."""
    for key, value in config().items():
        if key == "available_kernels":
            value = ", ".join(f"{name} ({isa})" for name, isa in value.items())
        elif key == "openmp":
            value = "on" if value else "off (single-threaded build)"
        print(f"{key + ':':<19}{value}")

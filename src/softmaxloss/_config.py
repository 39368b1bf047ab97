"""`show_config()`: what this installation of softmaxloss runs on."""

from __future__ import annotations

import platform
import sys
from typing import Any

import numpy as np

from . import _builds, _dispatch


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
        "builds": builds(),
    }


def builds() -> dict[str, str]:
    """Every row of the table of builds (`_builds.py`) and what this machine does with it."""
    active = _dispatch.active_name()
    status = {}
    for build in _builds.BUILDS:
        if build.name == active:
            status[build.name] = "in use"
        elif build.name in _dispatch.available:
            status[build.name] = (
                "available"
                if build.default
                else f"available with {_dispatch.ENVIRONMENT_VARIABLE}={build.name} (never the default)"
            )
        else:
            status[build.name] = _dispatch.unavailable.get(build.name, "unavailable")
    return status


def show_config() -> None:
    """Print the Python, NumPy, compiler, OpenMP (on/off, threads), the instruction set
    of the kernels in use, and every build of the table with what this machine does with it."""
    for key, value in config().items():
        if key == "available_kernels":
            value = ", ".join(f"{name} ({isa})" for name, isa in value.items())
        elif key == "builds":
            value = "; ".join(f"{name}: {status}" for name, status in value.items())
        elif key == "openmp":
            value = "on" if value else "off (single-threaded build)"
        print(f"{key + ':':<19}{value}")

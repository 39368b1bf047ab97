"""The table of kernel builds: every instruction set softmaxloss compiles its kernels for.

The same Cython source, `_kernels.pyx`, is compiled once per row below into the module
`softmaxloss.<module>`, with the row's flags added to the common ones. Read by setup.py
(which modules to build, with which flags; it runs this file by path, without importing the
package, so this module imports nothing but the standard library) and by `_dispatch` at
import (which modules this CPU runs, and which one is used).

Rows are in order of preference, best last: `_dispatch` uses the last row with
`default=True` whose CPU test passes and whose module was built. A row with
`default=False` is built and tested (on CPUs that run it) but used only when
SOFTMAXLOSS_KERNELS names it: a build becomes a default only where an interleaved A/B
(benchmarks/ab_kernels.py) shows it faster than the row before it.

Adding an instruction set: one row here (its `cpu` test named in `_csrc/_platform.h`'s
`sml_cpu_supports`, with a new test function there if none fits), plus, optionally, tile
code under its `SML_TARGET_*` in `_csrc/_blockops.h`.
"""

from __future__ import annotations

from typing import NamedTuple


class Build(NamedTuple):
    name: str
    """What SOFTMAXLOSS_KERNELS, `_dispatch.use()` and show_config() call it."""
    module: str
    """The extension module, `softmaxloss.<module>`."""
    architectures: tuple[str, ...] | None
    """Target architectures it is built for (setup.py's names: "x86_64", "aarch64",
    "arm64", ...); None: every one."""
    unix_flags: tuple[str, ...]
    """Compile flags added for gcc and clang."""
    msvc_flags: tuple[str, ...]
    """Compile flags added for MSVC."""
    cpu: str | None
    """The run-time CPU (and OS) test that must pass before the module is imported:
    `softmaxloss._cpu.supports(cpu)`, from `_csrc/_platform.h`. None: always runs."""
    default: bool
    """Whether `_dispatch` may choose it without SOFTMAXLOSS_KERNELS."""


X86_64 = ("x86_64",)

BUILDS: tuple[Build, ...] = (
    # The platform's baseline instruction set (x86-64: SSE2; aarch64: NEON).
    Build("baseline", "_kernels", None, (), (), None, default=True),
    # x86-64-v3's vector part (AVX2 + FMA): the default on the CPUs that have it.
    Build("avx2", "_kernels_avx2", X86_64, ("-mavx2", "-mfma"), ("/arch:AVX2",), "avx2+fma", default=True),
    # x86-64-v4's AVX-512 (F, BW, DQ, VL) with FMA: the default on the CPUs that have it
    # (an interleaved A/B on a Sapphire Rapids Xeon: benchmarks/RESULTS.md, "The AVX-512
    # build"). -mprefer-vector-width=256: the auto-vectoriser picks AVX2's widths, so the
    # build gives the avx2 build's bits (with 512-bit auto-vectorisation some in-order sums'
    # remainders fused different terms: 1-2 ulp differences); the fused exp-and-sum of the
    # row path runs on 64-byte vectors (_csrc/_rowops.h, SML_TARGET_AVX512), with the same bits.
    Build(
        "avx512",
        "_kernels_avx512",
        X86_64,
        ("-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-mprefer-vector-width=256"),
        ("/arch:AVX512",),
        "avx512",
        default=True,
    ),
)

"""Stubs for `softmaxloss._kernels_avx2`: the same Cython source as `softmaxloss._kernels`
(`_kernels_avx2.pyx` includes `_kernels.pyx`), compiled for AVX2 + FMA on x86-64, so the same
functions. Edit `_kernels.pyi`, not this file.
"""

from ._kernels import *

# A star import leaves out names that start with "_".
__test__: dict[str, str]

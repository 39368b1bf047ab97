"""The half-precision dtypes: float16 (NumPy's) and bfloat16 (`ml_dtypes.bfloat16`, an
optional dependency), stored by the kernels as their uint16 bits (`_kernels_half.pxi`).

`ml_dtypes.bfloat16` is a NumPy dtype of kind 'V' (not a subtype of np.floating), which a
typed memoryview refuses (buffer format 'E'); its arrays reach the kernels as
`array.view(np.uint16)`, which shares their memory. ml_dtypes is imported only when a
caller names bfloat16 (a NumPy bfloat16 array means it is imported already).

Rounding to a half dtype from float64 is done once (`round_float64`), whatever the
ml_dtypes version: its own float64 -> bfloat16 cast rounded to float32 first (twice) before
0.7.0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

KINDS = {"bfloat16": 0, "float16": 1}
"""The kernels' `kind` argument of each half dtype (SML_HALF_BF16, SML_HALF_F16)."""

_FLOAT16 = np.dtype(np.float16)


def bfloat16_dtype() -> np.dtype[Any]:
    """`ml_dtypes.bfloat16` as a NumPy dtype; ImportError naming ml_dtypes when it is missing."""
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError(
            "bfloat16 arrays need the optional dependency ml_dtypes (pip install ml_dtypes)"
        ) from None
    dtype: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return dtype


def is_bfloat16(dtype: np.dtype[Any]) -> bool:
    """Whether `dtype` (a NumPy dtype) is ml_dtypes.bfloat16, without importing ml_dtypes."""
    return bool(dtype.kind == "V" and dtype.itemsize == 2 and dtype.name == "bfloat16")


def half_kind(dtype: np.dtype[Any]) -> int | None:
    """The kernels' kind of a half dtype stored natively (native float16, bfloat16), else None."""
    if dtype == _FLOAT16:
        return KINDS["float16"]
    if is_bfloat16(dtype):
        return KINDS["bfloat16"]
    return None


def named_dtype(dtype: Any) -> np.dtype[Any]:
    """np.dtype(dtype), where the name "bfloat16" imports ml_dtypes (ImportError naming it)."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        return bfloat16_dtype()
    named: np.dtype[Any] = np.dtype(dtype)
    return named


def round_float64(values: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """float64 `values` rounded once to `dtype`, to nearest with ties to even (as
    `astype`, which does so for every dtype but bfloat16). bfloat16: rounded to float32
    to odd first (truncated, the lowest bit set when inexact), which a second rounding
    to nearest turns into the correctly rounded bfloat16, as 24 bits > 8 + 1."""
    array = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if not is_bfloat16(dtype):
            return array.astype(dtype)
        narrow = array.astype(np.float32)
        wide = narrow.astype(np.float64)
        inexact = (wide != array) & ~np.isnan(array)
        bits = np.array(narrow, copy=True).view(np.uint32)
        bits -= (inexact & (np.abs(wide) > np.abs(array))).astype(np.uint32)  # toward zero
        bits |= inexact.astype(np.uint32)
        return bits.view(np.float32).astype(dtype)

"""How the kernels see arrays: as "rows views" of shape (A, B, C).

A kernel walks rows of C logits. An array of any shape, with its class axis
anywhere, is presented to it as an (A, B, C) view: the class axis last, and the
other axes, in some order, merged into two groups A and B (so that any C- or
F-ordered array, and PyTorch's (N, C, d1, ...) layout, can be viewed without a
copy: one group for the axes before the class axis, one for those after it).
Every array of one call (logits, gradient, targets, weights, per-row losses) is
enumerated in the same row order, given by one `RowsLayout`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._halfdtypes import half_kind

KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def unaddressable_message(out: np.ndarray, name: str) -> str:
    """The error for an output array no rows view can address."""
    return (
        f"{name} has a memory layout the kernel cannot write: the axes other than the class "
        "axis must form at most two groups that each step with one stride (any C- or "
        f"F-ordered array does); got strides {out.strides} for shape {out.shape}"
    )


def _merges(shape: Sequence[int], strides: Sequence[int], axes: Sequence[int]) -> bool:
    """Whether `axes`, in this order, can be addressed as one axis with one stride."""
    dims = [(shape[i], strides[i]) for i in axes if shape[i] != 1]
    return all(outer == inner_len * inner for (_, outer), (inner_len, inner) in zip(dims, dims[1:]))


def _inverse(permutation: Sequence[int]) -> tuple[int, ...]:
    """The permutation that undoes `permutation` (as np.argsort, without an array)."""
    return tuple(sorted(range(len(permutation)), key=permutation.__getitem__))


class RowsLayout:
    """The row order of one call: the non-class axes `row_axes`, the first `split`
    of them merged into A and the rest into B, for arrays of `shape`."""

    __slots__ = ("shape", "axis", "row_axes", "rows_shape", "rows_in_order", "_row_order")

    def __init__(self, shape: tuple[int, ...], axis: int, row_axes: tuple[int, ...], split: int) -> None:
        self.shape = shape
        self.axis = axis
        self.row_axes = row_axes
        self.rows_shape = (
            math.prod(shape[i] for i in row_axes[:split]),
            math.prod(shape[i] for i in row_axes[split:]),
            shape[axis],
        )
        # The row axes numbered as in a per-row array (the shape without the class axis).
        self._row_order = tuple(i if i < axis else i - 1 for i in row_axes)
        # Whether row r = a * B + b is entry r of a per-row array in C order (the row
        # axes in their own order): then so is the first row a kernel reports.
        self.rows_in_order = self._row_order == tuple(sorted(self._row_order))

    @classmethod
    def of(cls, array: np.ndarray, axis: int) -> RowsLayout:
        """A layout in which `array` itself is a rows view when any is: the natural
        order (axes before the class axis into A, after it into B) when that works,
        else the row axes ordered by decreasing stride."""
        if array.ndim <= 2:  # one row axis at most: any layout is a view (the common case)
            return cls(array.shape, axis, (1 - axis,) if array.ndim == 2 else (), axis)
        shape, strides = array.shape, array.strides
        natural = tuple(i for i in range(array.ndim) if i != axis)
        candidates = [(natural, axis)]
        if array.ndim > 2:
            by_stride = tuple(sorted(natural, key=lambda i: -abs(strides[i])))
            candidates += [(by_stride, split) for split in range(len(by_stride) + 1)]
        for row_axes, split in candidates:
            if _merges(shape, strides, row_axes[:split]) and _merges(shape, strides, row_axes[split:]):
                return cls(shape, axis, row_axes, split)
        return cls(shape, axis, natural, axis)

    def view(self, array: np.ndarray) -> np.ndarray | None:
        """`array` (of this layout's shape) as an (A, B, C) view the kernels can use,
        or None when that needs a copy (or another dtype, or aligned memory). The
        kernels' dtypes are float32, float64 and, as stored, float16 and bfloat16."""
        if (array.dtype not in KERNEL_DTYPES and half_kind(array.dtype) is None) or not array.flags.aligned:
            return None
        if array.ndim <= 2:  # one row axis at most: always a view (the fast, common case)
            return array.reshape(1, 1, -1) if array.ndim == 1 else (array[:, None, :] if self.axis else array.T[None])
        view = array.transpose(self.row_axes + (self.axis,)).reshape(self.rows_shape)
        if array.size == 0 or np.may_share_memory(view, array):
            return view
        return None

    def empty(self, dtype: np.dtype[Any]) -> tuple[np.ndarray, np.ndarray]:
        """A new array of this layout's shape and its (A, B, C) view, laid out in
        memory in the row order (so for a C- or F-ordered input, in the same order)."""
        if len(self.shape) <= 2 and self.axis == len(self.shape) - 1:  # class axis last
            buffer = np.empty(self.shape, dtype)
            return buffer, buffer.reshape(self.rows_shape)
        order = self.row_axes + (self.axis,)
        buffer = np.empty(tuple(self.shape[i] for i in order), dtype)
        return buffer.transpose(_inverse(order)), buffer.reshape(self.rows_shape)

    def readable(self, array: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray | None:
        """`array`'s own memory as an (A, B, C) view in `dtype`, or None when a kernel
        can only read a converted copy of it."""
        return self.view(array) if array.dtype == dtype else None

    def input(self, array: np.ndarray, dtype: np.dtype[Any], into: np.ndarray | None = None) -> np.ndarray:
        """(A, B, C) view of `array` in `dtype` for a kernel to read: the array's own
        memory when possible, else a converted copy written into `into` (an array the
        kernel then updates in place, e.g. the gradient) or into a new array."""
        view = self.readable(array, dtype)
        if view is not None:
            return view
        if into is None:
            into, view = self.empty(dtype)
        else:
            view = self.view(into)
            assert view is not None, "`into` must be a rows view of this layout"
        np.copyto(into, array, casting="unsafe")
        return view

    def output(self, out: np.ndarray | None, dtype: np.dtype[Any], name: str = "out") -> tuple[np.ndarray, np.ndarray]:
        """(array a kernel writes, its (A, B, C) view): `out` itself when it has the
        compute dtype, else a new buffer. ValueError when `out` cannot be addressed."""
        if out is not None and out.dtype == dtype:
            view = self.view(out)
            if view is None:
                raise ValueError(unaddressable_message(out, name))
            return out, view
        return self.empty(dtype)

    def rows(self, per_row: np.ndarray) -> np.ndarray:
        """A per-row array (this shape without the class axis) as (A, B), same order."""
        return per_row.transpose(self._row_order).reshape(self.rows_shape[:2])

    def per_row(self, rows: np.ndarray) -> np.ndarray:
        """The inverse of `rows`: an (A, B) array as a per-row array."""
        permuted = rows.reshape(tuple(self.shape[i] for i in self.row_axes))
        return permuted.transpose(_inverse(self._row_order))


class MergedAxes:
    """A softmax or log-sum-exp over several axes (SciPy's `axis=None` or a tuple) or of a
    0-d array, as one over a single class axis: the reduced axes moved last and merged
    into one (a copy where they cannot be viewed so), the kept axes in their order before
    it. `merge` presents an array so; `unmerge` undoes it for a result of the merged
    shape; `reduced` gives a per-row result (the merged shape without the class axis)
    the shape of the input without the reduced axes (with them as 1 for `keepdims`)."""

    __slots__ = ("shape", "axes", "_moved_shape")

    def __init__(self, shape: tuple[int, ...], axes: tuple[int, ...]) -> None:
        self.shape = shape
        self.axes = axes
        kept = tuple(n for i, n in enumerate(shape) if i not in axes)
        self._moved_shape = kept + tuple(shape[i] for i in axes)

    def merge(self, array: np.ndarray) -> np.ndarray:
        """`array` (of `shape`) with the reduced axes as its last, single axis."""
        n_kept = array.ndim - len(self.axes)
        moved = np.moveaxis(array, self.axes, range(n_kept, array.ndim))
        return moved.reshape(self._moved_shape[:n_kept] + (math.prod(self._moved_shape[n_kept:]),))

    def unmerge(self, merged: np.ndarray) -> np.ndarray:
        """The inverse of `merge`."""
        ndim = len(self.shape)
        moved = merged.reshape(self._moved_shape)
        return np.moveaxis(moved, range(ndim - len(self.axes), ndim), self.axes)

    def reduced(self, per_row: np.ndarray, keepdims: bool) -> np.ndarray:
        """A per-row result in the input's shape without the reduced axes (kept as 1)."""
        if keepdims:
            return per_row.reshape(tuple(1 if i in self.axes else n for i, n in enumerate(self.shape)))
        return per_row

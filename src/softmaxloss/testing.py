"""Test utilities: hostile inputs for softmax / cross-entropy, and a checker against the reference.

Any implementation of softmax, log-softmax, logsumexp, cross-entropy (with or without its
gradient) or the gradient/hessian pair can be held to `softmaxloss.reference`, the pure-NumPy
statement of the math, over inputs chosen to break implementations: NaN and +-inf, a row of all
-inf, huge and subnormal magnitudes, ties, one class, no rows, no classes, every memory layout
(Fortran order, strided, negative strides, read-only, non-native byte order, unaligned,
broadcast) and every input dtype (float16/32/64, integers, bools). In the style of bottleneck's
test utilities: one generator of arrays, one comparison.

    import numpy as np
    from softmaxloss.testing import assert_matches_reference, hostile_cases

    def my_log_softmax(x, axis=-1):
        x = np.asarray(x, dtype=np.float64)
        shifted = x - x.max(axis=axis, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))

    # AssertionError listing the cases where my_log_softmax and
    # softmaxloss.reference.log_softmax disagree: here the arrays with no rows or no
    # classes (x.max raises) and float32 rows spanning +-3.4e38 (the reference's float32
    # result is -inf, this float64 one is finite).
    assert_matches_reference(my_log_softmax, "log_softmax", check_dtype=False)

    # Only the inputs an implementation claims to support, and its own call convention
    # (`call(f, case)` is applied to the implementation and to the reference alike):
    def my_cross_entropy(logits, labels):        # (N, C) float32, mean over rows
        ...

    assert_matches_reference(
        my_cross_entropy,
        "cross_entropy",
        call=lambda f, case: f(case.x, case.target.astype(np.int64)),
        cases=hostile_cases(dtypes=[np.float32], layouts=["C"], shapes=["rows"],
                            patterns=["random", "1e4", "confident"]),
    )

What `assert_matches_reference` requires of each case, for the implementation and the
reference called the same way:

- both raise an exception of the same type, or neither raises (`same_error_type=False`:
  only that both raise or neither does);
- results have the same structure (tuples of the same length), the same kind (ndarray or
  NumPy scalar), shape and dtype (`check_dtype`);
- values agree: NaN exactly where the reference has NaN, the same infinities, finite values
  within `rtol` (relative) or `atol` (absolute, by default a multiple of the largest finite
  reference value of that result, and never below the dtype's smallest normal number: below
  it only underflow is measured);
- no input is modified (values, bits, writeability) and no result shares memory with an input.

Nothing here imports pytest: the functions raise AssertionError and work under any runner.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DTYPES",
    "LAYOUTS",
    "TOLERANCES",
    "PATTERNS",
    "SHAPES",
    "HostileCase",
    "assert_matches_reference",
    "check_case",
    "compare_results",
    "hostile_cases",
    "result_dtype",
    "with_layout",
]

#: Input dtypes of the logits: computed natively (float32/64), in float32 (float16), or
#: converted to float64 (integers, bools).
DTYPES: tuple[np.dtype[Any], ...] = tuple(
    np.dtype(t) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8, np.bool_)
)

#: Memory layouts every input is offered in (see `with_layout`).
LAYOUTS: tuple[str, ...] = (
    "C", "F", "strided", "negative-strides", "readonly", "byteswapped", "unaligned", "broadcast",
)

#: How a case's 2-D (rows, classes) values are shaped, and where the class axis goes:
#: "rows" (R, C) axis -1; "columns" (C, R) axis 0; "nchw" (2, C, R/2) axis 1 (PyTorch's
#: layout); "vector" (C,) axis 0 (the first row; results are NumPy scalars); "scalar" a 0-d
#: array with axis -1 (every function must refuse it), made from the "random" pattern only.
SHAPES: tuple[str, ...] = ("rows", "columns", "nchw", "vector", "scalar")

#: Default tolerances by result dtype: (rtol, atol as a multiple of the largest finite
#: reference value of the result). A float16 result is rounded from float32 by one
# implementation and from float64 by the other: up to one float16 ulp (2**-10) apart.
TOLERANCES: dict[np.dtype[Any], tuple[float, float]] = {
    np.dtype(np.float16): (2e-3, 2e-3),
    np.dtype(np.float32): (1e-6, 1e-6),
    np.dtype(np.float64): (1e-12, 1e-12),
}

_IGNORE_INDEX = -100  # softmaxloss's (and PyTorch's) default


def result_dtype(dtype: Any) -> np.dtype[Any]:
    """The dtype softmaxloss returns for logits of `dtype`: float16/32/64 in native byte
    order; integers and bools float64."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        native: np.dtype[Any] = dtype.newbyteorder("=")
        return native
    return np.dtype(np.float64)


# ---- layouts -------------------------------------------------------------------------


def with_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """A new array with `array`'s values (and dtype), laid out in memory as `layout` says.

    "C", "F": contiguous in that order. "strided": every axis steps by 2 inside a larger
    buffer. "negative-strides": every axis reversed in memory (a view with negative strides).
    "readonly": a C-ordered copy that cannot be written. "byteswapped": the non-native byte
    order (a no-op for one-byte dtypes). "unaligned": C order at an address that is not a
    multiple of the item size (a no-op for one-byte dtypes). "broadcast": a read-only view
    whose first axis has stride 0, so the values along axis 0 are all those at index 0
    (the only layout that changes values).
    """
    array = np.asarray(array)
    if layout == "C":
        return np.array(array, order="C", copy=True)
    if layout == "F":
        return np.array(array, order="F", copy=True)
    if layout == "strided":
        big = np.zeros(tuple(2 * n + 1 for n in array.shape), array.dtype)
        view = big[tuple(slice(1, None, 2) for _ in array.shape) + (Ellipsis,)]
        view[...] = array
        return view
    if layout == "negative-strides":
        flip = tuple(slice(None, None, -1) for _ in array.shape) + (Ellipsis,)
        return np.array(array[flip], order="C", copy=True)[flip]
    if layout == "readonly":
        copy = np.array(array, order="C", copy=True)
        copy.flags.writeable = False
        return copy
    if layout == "byteswapped":
        return array.astype(array.dtype.newbyteorder("S"))
    if layout == "unaligned":
        itemsize = array.dtype.itemsize
        buffer = np.zeros(array.nbytes + itemsize + 1, np.uint8)
        offset = 1 if itemsize > 1 else 0
        view = buffer[offset : offset + array.nbytes].view(array.dtype).reshape(array.shape)
        view[...] = array
        return view
    if layout == "broadcast":
        if array.ndim == 0 or array.shape[0] == 0:
            return np.broadcast_to(array, array.shape)
        return np.broadcast_to(array[:1], array.shape)
    raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")


# ---- value patterns --------------------------------------------------------------------
# Each pattern makes the 2-D (rows, classes) values of a case for one dtype, or returns None
# when it has no meaning for that dtype (NaN for integers). Labels (`_Values.labels`) say
# which class each row's index target points at: a pattern puts some on the special entry.

N_ROWS = 4
N_CLASSES = 11  # one 8-wide vector block and a remainder: both code paths of a row loop


@dataclass
class _Values:
    values: np.ndarray  # (R, C), in the case's dtype
    labels: np.ndarray  # (R,) int, 0 <= label < C (unused when C == 0)


def _float_info(dtype: np.dtype[Any]) -> np.finfo[Any]:
    return np.finfo(dtype)


def _random_labels(rng: np.random.Generator, n_rows: int, n_classes: int) -> np.ndarray:
    return rng.integers(0, max(n_classes, 1), n_rows)


_Make = Callable[[np.dtype[Any], np.random.Generator], tuple[np.ndarray, "np.ndarray | None"]]
_Pattern = Callable[[np.dtype[Any], np.random.Generator], "_Values | None"]


def _floats(make: _Make) -> _Pattern:
    """A float-only pattern from `make(dtype, rng) -> (float64 values, labels or None)`."""

    def pattern(dtype: np.dtype[Any], rng: np.random.Generator) -> _Values | None:
        if dtype.kind != "f":
            return None
        values, labels = make(dtype, rng)
        if labels is None:
            labels = _random_labels(rng, *values.shape)
        with np.errstate(over="ignore"):  # 1e30 is +inf in float16: that is the test
            return _Values(values.astype(dtype), np.asarray(labels))

    pattern.__doc__ = make.__doc__
    return pattern


def _normal(rng: np.random.Generator, shape: tuple[int, int] = (N_ROWS, N_CLASSES), scale: float = 3.0) -> np.ndarray:
    return rng.standard_normal(shape) * scale


@_floats
def _nan(dtype: np.dtype[Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """One NaN in row 1 (the label of row 1 points at it), NaNs in every entry of row 3."""
    x = _normal(rng)
    x[1, 2] = np.nan
    x[3] = np.nan
    labels = _random_labels(rng, N_ROWS, N_CLASSES)
    labels[1] = 2
    return x, labels


@_floats
def _plus_inf(dtype: np.dtype[Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """One +inf in row 1 (labelled), a row of all +inf, a row with +inf and -inf."""
    x = _normal(rng)
    x[1, 9] = np.inf
    x[2] = np.inf
    x[3, ::2] = -np.inf
    x[3, 5] = np.inf
    labels = _random_labels(rng, N_ROWS, N_CLASSES)
    labels[1] = 9
    return x, labels


@_floats
def _minus_inf(dtype: np.dtype[Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """-inf beside finite values (exact zeros in softmax): row 0 labelled at a -inf entry
    (infinite loss, finite gradient), row 1 with a single finite entry, row 2 all -inf."""
    x = _normal(rng)
    x[0, [1, 3, 8]] = -np.inf
    x[1, :] = -np.inf
    x[1, 10] = 0.5
    x[2, :] = -np.inf
    labels = _random_labels(rng, N_ROWS, N_CLASSES)
    labels[0] = 3
    labels[1] = 10
    return x, labels


def _offset(center: float) -> _Pattern:
    def make(dtype: np.dtype[Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        return center + _normal(rng), None

    make.__doc__ = f"Logits {center:g} + N(0, 3): the row max must be subtracted (in float16 "
    make.__doc__ += "these overflow to +-inf)." if abs(center) > 6e4 else "float16 keeps them)."
    return _floats(make)


@_floats
def _huge(dtype: np.dtype[Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """+-1e30 magnitudes: rows of 1e30 (1 + tiny noise), -1e30 likewise, a row mixing 1e30,
    -1e30 and 0, and a row spanning the dtype's whole range (max, -max, 0)."""
    x = np.empty((N_ROWS, N_CLASSES))
    x[0] = 1e30 * (1 + 1e-6 * rng.standard_normal(N_CLASSES))
    x[1] = -1e30 * (1 + 1e-6 * rng.standard_normal(N_CLASSES))
    x[2] = rng.choice([1e30, -1e30, 0.0], N_CLASSES)
    info = _float_info(dtype)
    x[3] = rng.choice([float(info.max), -float(info.max), 0.0], N_CLASSES)
    x[3, 0] = float(info.max)
    return x, None


@_floats
def _subnormal(dtype: np.dtype[Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Subnormal logits (rows 0, 1), and logits whose probabilities are subnormal in the
    dtype (rows 2, 3: gaps just below log of the smallest normal number)."""
    info = _float_info(dtype)
    tiny_sub = float(info.smallest_subnormal)
    x = np.empty((N_ROWS, N_CLASSES))
    x[0] = tiny_sub * rng.integers(-3, 4, N_CLASSES)
    x[1] = float(info.smallest_normal) * rng.uniform(-1, 1, N_CLASSES)
    edge = np.log(float(info.smallest_normal))  # exp(edge) is the smallest normal
    x[2] = np.concatenate([[0.0], edge - rng.uniform(0.0, 4.0, N_CLASSES - 1)])
    x[3] = np.concatenate([[1.0, 1.0], edge + rng.uniform(-1.0, 1.0, N_CLASSES - 2)])
    labels = np.array([0, 0, 4, 5])  # rows 2 and 3 labelled at a subnormal probability
    return x, labels


@_floats
def _ties(dtype: np.dtype[Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Ties: a row of equal values, a row tied at the max, a row of zeros, integral values."""
    x = np.empty((N_ROWS, N_CLASSES))
    x[0] = 2.5
    x[1] = rng.integers(-3, 3, N_CLASSES)
    x[1, [2, 5, 7]] = 7.0
    x[2] = 0.0
    x[3] = rng.integers(-2, 2, N_CLASSES)
    return x, np.array([0, 5, 3, 1])


@_floats
def _confident(dtype: np.dtype[Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Near one-hot rows labelled at their max (p_y -> 1: the loss is the tiny sum of the
    other probabilities, lost if log(S) is taken as log(1 + R) instead of log1p(R))."""
    x = rng.standard_normal((N_ROWS, N_CLASSES))
    labels = rng.integers(0, N_CLASSES, N_ROWS)
    for row, gap in enumerate((10.0, 20.0, 40.0, 80.0)):
        x[row, labels[row]] = gap
    return x, labels


def _many_rows(dtype: np.dtype[Any], rng: np.random.Generator) -> _Values:
    """66 rows of 7 classes (a kernel may take short rows many at a time: here a full block
    of 64 and a remainder), every special value of this dtype's kind mixed in."""
    n_rows, n_classes = 66, 7
    labels = _random_labels(rng, n_rows, n_classes)
    if dtype.kind == "b":
        return _Values(rng.integers(0, 2, (n_rows, n_classes)).astype(bool), labels)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = rng.integers(max(info.min, -50), min(info.max, 50), (n_rows, n_classes), endpoint=True)
        values[5] = info.max
        values[6, 0] = info.min
        return _Values(values.astype(dtype), labels)
    x = _normal(rng, (n_rows, n_classes))
    x[3, 2] = np.nan
    x[10] = -np.inf
    x[20, [0, 4]] = -np.inf
    x[30, 1] = np.inf
    x[40] = 2.0  # ties
    x[50, labels[50]] = 60.0  # confident, labelled
    x[63] = 1e4 + x[63]
    x[64] = -1e30
    x[65, labels[65]] = -np.inf  # labelled at -inf
    with np.errstate(over="ignore"):
        return _Values(x.astype(dtype), labels)


def _any_dtype_shape(shape: tuple[int, int], doc: str) -> _Pattern:
    """A pattern of the given shape for every dtype (random values of the dtype's kind)."""

    def pattern(dtype: np.dtype[Any], rng: np.random.Generator) -> _Values:
        if dtype.kind == "b":
            values = rng.integers(0, 2, shape).astype(bool)
        elif dtype.kind in "iu":
            low = 0 if dtype.kind == "u" else -5
            values = rng.integers(low, low + 10, shape).astype(dtype)
        else:
            values = _normal(rng, shape).astype(dtype)
        return _Values(values, _random_labels(rng, shape[0], shape[1]))

    pattern.__doc__ = doc
    return pattern


def _integer_extremes(dtype: np.dtype[Any], rng: np.random.Generator) -> _Values | None:
    """The integer dtype's min and max beside 0 and +-1 (huge once converted to float64)."""
    if dtype.kind not in "iu":
        return None
    info = np.iinfo(dtype)
    values = rng.choice(np.array([info.min, info.max, 0, 1, info.max - 1], dtype=dtype), (N_ROWS, N_CLASSES))
    values[0] = info.max
    values[1, 0] = info.min
    return _Values(values.astype(dtype), _random_labels(rng, N_ROWS, N_CLASSES))


def _bools(dtype: np.dtype[Any], rng: np.random.Generator) -> _Values | None:
    """Bool logits: a row of all True, one of all False, random rows."""
    if dtype.kind != "b":
        return None
    values = rng.integers(0, 2, (N_ROWS, N_CLASSES)).astype(bool)
    values[0] = True
    values[1] = False
    return _Values(values, _random_labels(rng, N_ROWS, N_CLASSES))


#: name -> pattern(dtype, rng) -> values or None (not applicable to that dtype).
PATTERNS: dict[str, Callable[[np.dtype[Any], np.random.Generator], _Values | None]] = {
    "random": _any_dtype_shape((N_ROWS, N_CLASSES), "Random values of the dtype's kind."),
    "nan": _nan,
    "plus-inf": _plus_inf,
    "minus-inf": _minus_inf,
    "1e4": _offset(1e4),
    "-1e4": _offset(-1e4),
    "1e30": _huge,
    "subnormal": _subnormal,
    "ties": _ties,
    "confident": _confident,
    "integer-extremes": _integer_extremes,
    "bool": _bools,
    "one-class": _any_dtype_shape((N_ROWS, 1), "One class: p = 1, loss 0, gradient 0."),
    "zero-rows": _any_dtype_shape((0, N_CLASSES), "No rows: empty results; the mean is NaN."),
    "zero-classes": _any_dtype_shape(
        (N_ROWS, 0), "No classes: empty softmax, logsumexp -inf; every loss refuses it."
    ),
    "wide": _any_dtype_shape((2, 67), "67 classes: several vector blocks and a remainder."),
    "many-rows": _many_rows,
}


# ---- cases -----------------------------------------------------------------------------


@dataclass
class HostileCase:
    """One hostile input and everything a call on it needs.

    x: the logits, in `layout`, with the class axis `axis`. target: class indices of x's
    shape without the class axis (an integer dtype that varies between cases, some rows
    `ignore_index` = -100 when the dtype holds it). probabilities: float targets of x's
    shape (some exact zeros, one row not summing to 1), in the same layout. labels: class
    indices (N,) for an (N, C) function such as `gradient_hessian` (class axis 1), in range
    whenever x is 2-D with at least one class. weight (C,) and sample_weight (x's row shape):
    non-negative float64, with some exact zeros.
    """

    pattern: str
    shape_kind: str
    layout: str
    x: np.ndarray
    axis: int
    target: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray
    weight: np.ndarray
    sample_weight: np.ndarray
    _base: np.ndarray = field(repr=False)  # x's values, C-ordered, before the layout

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.x.dtype

    @property
    def result_dtype(self) -> np.dtype[Any]:
        """The dtype results come back in (softmaxloss's rule)."""
        return result_dtype(self.x.dtype)

    @property
    def n_classes(self) -> int:
        return self.x.shape[self.axis] if self.x.ndim else 0

    def new_x(self) -> np.ndarray:
        """A fresh array equal to x in values, dtype and layout (for in-place calls)."""
        return with_layout(self._base, self.layout)

    def new_out(self, fill: float = 7.0) -> np.ndarray:
        """A fresh writable C-ordered array of x's shape in the result dtype, filled with
        `fill` (a value no correct result leaves behind by accident)."""
        return np.full(self.x.shape, fill, self.result_dtype)

    def arrays(self) -> dict[str, np.ndarray]:
        """The case's input arrays by name (for the inputs-unchanged check)."""
        return {
            "x": self.x,
            "target": self.target,
            "probabilities": self.probabilities,
            "labels": self.labels,
            "weight": self.weight,
            "sample_weight": self.sample_weight,
        }

    @property
    def name(self) -> str:
        return f"{self.pattern}-{self.shape_kind}-{self.x.dtype.str}-{self.layout}"

    def describe(self) -> str:
        """Pattern, dtype, shape, axis, layout (strides, flags) and the input values."""
        with np.printoptions(threshold=200, linewidth=100, precision=8):
            return (
                f"pattern={self.pattern!r} dtype={self.x.dtype.str} ({self.x.dtype}) "
                f"shape={self.x.shape} axis={self.axis} layout={self.layout!r} "
                f"strides={self.x.strides} writeable={self.x.flags.writeable} "
                f"aligned={self.x.flags.aligned}\n"
                f"x =\n{np.array2string(np.asarray(self.x))}\n"
                f"target ({self.target.dtype.str}) = {np.array2string(np.asarray(self.target))}"
            )


_TARGET_DTYPES = tuple(
    np.dtype(t) for t in (np.int64, np.int32, np.uint8, ">i8", "<i8", np.int16, np.uint64, np.intp)
)


def _targets_for(labels_2d: np.ndarray, n_classes: int, target_dtype: np.dtype[Any]) -> np.ndarray:
    """The rows' labels in `target_dtype`, row 2 set to ignore_index when it fits."""
    target = labels_2d.copy()
    if target.size > 2 and target_dtype.kind == "i":
        target[2] = _IGNORE_INDEX
    if n_classes == 0:
        target[...] = 0
    return target.astype(target_dtype)


def _probabilities_for(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    n_rows, n_classes = shape
    p = rng.dirichlet(np.full(max(n_classes, 1), 0.5), size=n_rows)[:, :n_classes]
    if n_classes > 2 and n_rows > 0:
        p[0, 1] = 0.0  # exact zeros (y_c = 0 at a -inf logit: 0 * inf)
        p[0] /= p[0].sum()
    if n_rows > 1 and n_classes:
        p[-1] *= 0.5  # a row that does not sum to 1 (the gradient stays exact)
    return p


def _shaped(values: np.ndarray, shape_kind: str) -> tuple[np.ndarray, int] | None:
    """(R, C) -> the `shape_kind` array and its class axis; None when it does not apply."""
    n_rows, n_classes = values.shape
    if shape_kind == "rows":
        return values, 1
    if shape_kind == "columns":
        return values.T, 0
    if shape_kind == "nchw":
        if n_rows % 2:
            return None
        return np.moveaxis(values.reshape(2, n_rows // 2, n_classes), -1, 1), 1
    if shape_kind == "vector":
        if n_rows == 0:
            return None
        return values[0], 0
    if shape_kind == "scalar":
        return None  # made separately
    raise ValueError(f"unknown shape kind {shape_kind!r}; choose from {SHAPES}")


def _row_shaped(values: np.ndarray, shape_kind: str) -> np.ndarray:
    """(R, C) -> the `shape_kind` array (which must apply)."""
    shaped = _shaped(values, shape_kind)
    assert shaped is not None
    return shaped[0]


def _row_array(per_row_2d: np.ndarray, shape_kind: str) -> np.ndarray:
    """(R,) per-row values -> the row shape of the `shape_kind` array."""
    if shape_kind in ("rows", "columns"):
        return per_row_2d
    if shape_kind == "nchw":
        return per_row_2d.reshape(2, -1)
    return np.asarray(per_row_2d[0])  # vector: a 0-d array


def _seed(*parts: object) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def hostile_cases(
    dtypes: Iterable[Any] = DTYPES,
    layouts: Iterable[str] = LAYOUTS,
    patterns: Iterable[str] | None = None,
    shapes: Iterable[str] = SHAPES,
    seed: int = 0,
) -> Iterator[HostileCase]:
    """Every combination of value pattern (`PATTERNS`), shape (`SHAPES`), dtype and layout
    (`LAYOUTS`) that applies, as `HostileCase`s; deterministic for a given `seed`.

    Narrow it to what an implementation claims to support, e.g.
    `hostile_cases(dtypes=[np.float32], layouts=["C"], shapes=["rows"])`.
    """
    dtypes = [np.dtype(d) for d in dtypes]
    layouts = list(layouts)
    shapes = list(shapes)
    names = list(PATTERNS) if patterns is None else list(patterns)
    for unknown in set(names) - set(PATTERNS):
        raise ValueError(f"unknown pattern {unknown!r}; choose from {sorted(PATTERNS)}")
    for unknown in set(layouts) - set(LAYOUTS):
        raise ValueError(f"unknown layout {unknown!r}; choose from {LAYOUTS}")
    for unknown in set(shapes) - set(SHAPES):
        raise ValueError(f"unknown shape kind {unknown!r}; choose from {SHAPES}")
    counter = 0
    for name in names:
        for dtype in dtypes:
            rng = np.random.default_rng(_seed(seed, name, dtype.str))
            made = PATTERNS[name](dtype, rng)
            if made is None:
                continue
            n_rows, n_classes = made.values.shape
            probabilities = _probabilities_for(rng, (n_rows, n_classes))
            prob_dtype = np.dtype(np.float32 if dtype == np.float32 else np.float64)
            weight: np.ndarray = np.asarray(rng.uniform(0.0, 2.0, n_classes))
            weight[: min(1, n_classes)] = 0.0
            sample_weight: np.ndarray = np.asarray(rng.uniform(0.0, 2.0, n_rows))
            sample_weight[1:2] = 0.0
            gh_labels = made.labels if n_classes else np.zeros(n_rows, np.int64)
            for shape_kind in shapes:
                if shape_kind == "scalar":
                    if name != "random":
                        continue
                    base = np.asarray(made.values.reshape(-1)[0])
                    axis = -1
                    target = np.asarray(0)
                    probs = base.astype(prob_dtype)
                    rows_sample_weight = np.asarray(1.0)
                else:
                    shaped = _shaped(made.values, shape_kind)
                    if shaped is None:
                        continue
                    base, axis = shaped
                    target_dtype = _TARGET_DTYPES[counter % len(_TARGET_DTYPES)]
                    target = _row_array(_targets_for(made.labels, n_classes, target_dtype), shape_kind)
                    probs = _row_shaped(probabilities.astype(prob_dtype), shape_kind)
                    rows_sample_weight = _row_array(sample_weight, shape_kind)
                base = np.ascontiguousarray(base)
                labels = np.asarray(gh_labels, np.int64)
                if base.ndim != 2 or shape_kind != "rows":
                    labels = np.zeros(base.shape[0] if base.ndim else 1, np.int64)
                for layout in layouts:
                    counter += 1
                    yield HostileCase(
                        pattern=name,
                        shape_kind=shape_kind,
                        layout=layout,
                        x=with_layout(base, layout),
                        axis=axis,
                        target=np.array(target, copy=True),
                        probabilities=with_layout(probs, layout) if layout != "broadcast" else np.array(probs),
                        labels=labels.copy(),
                        weight=weight.copy(),
                        sample_weight=np.array(rows_sample_weight, copy=True),
                        _base=base,
                    )


# ---- comparison ------------------------------------------------------------------------


def _tolerance(dtype: np.dtype[Any], rtol: float | None, atol_factor: float | None) -> tuple[float, float]:
    default = TOLERANCES.get(np.dtype(dtype).newbyteorder("="), (1e-12, 1e-12))
    return (default[0] if rtol is None else rtol, default[1] if atol_factor is None else atol_factor)


def compare_results(
    actual: Any,
    expected: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    check_dtype: bool = True,
    scale: float | tuple[float, ...] = 0.0,
    what: str = "result",
) -> list[str]:
    """The differences between two results (ndarrays, NumPy scalars, or tuples of them),
    as messages; empty when they match.

    NaN must be where NaN is, infinities equal, finite values within
    rtol * |expected| + atol, atol being `atol` times the larger of the largest finite
    |expected| of that result and `scale`, and at least the dtype's smallest normal number.
    `scale` (one per element of a tuple result, or one for all) is the size of the terms a
    result is a sum of, where they may cancel (a gradient p - 1 with p -> 1): there two
    correct implementations agree only to rounding relative to the terms. Default
    tolerances by dtype: float16 2e-3, float32 1e-6, float64 1e-12 (rtol and atol's factor).
    """
    if isinstance(expected, tuple) or isinstance(actual, tuple):
        if not (isinstance(expected, tuple) and isinstance(actual, tuple)) or len(actual) != len(expected):
            return [f"{what}: structure {_kind(actual)} != {_kind(expected)}"]
        scales = scale if isinstance(scale, tuple) else (scale,) * len(expected)
        problems: list[str] = []
        for i, (a, e, sc) in enumerate(zip(actual, expected, scales)):
            problems += compare_results(
                a, e, rtol=rtol, atol=atol, check_dtype=check_dtype, scale=sc, what=f"{what}[{i}]"
            )
        return problems
    a, e = np.asarray(actual), np.asarray(expected)
    problems = []
    if check_dtype:
        if _kind(actual) != _kind(expected):
            problems.append(f"{what}: type {_kind(actual)} != {_kind(expected)}")
        if a.dtype != e.dtype:
            problems.append(f"{what}: dtype {a.dtype} != {e.dtype}")
    if a.shape != e.shape:
        return problems + [f"{what}: shape {a.shape} != {e.shape}"]
    if a.dtype.kind not in "fiub" or e.dtype.kind not in "fiub":
        return problems + [f"{what}: not real numbers ({a.dtype}, {e.dtype})"]
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    r, atol_factor = _tolerance(e.dtype if e.dtype.kind == "f" else np.dtype(np.float64), rtol, atol)
    finite = np.isfinite(e64)
    assert not isinstance(scale, tuple), "a tuple of scales is for a tuple result"
    largest = max(float(np.max(np.abs(e64[finite]), initial=0.0)), float(scale))
    floor = float(np.finfo(e.dtype if e.dtype.kind == "f" else np.float64).smallest_normal)
    absolute = max(atol_factor * largest, floor)
    with np.errstate(invalid="ignore", over="ignore"):
        bad = np.isnan(a64) != np.isnan(e64)
        both_inf = np.isinf(e64) | np.isinf(a64)
        bad |= both_inf & ~np.isnan(e64) & (a64 != e64)
        close = np.abs(a64 - e64) <= absolute + r * np.abs(e64)
        bad |= finite & np.isfinite(a64) & ~close
    if bad.any():
        where = [tuple(int(i) for i in idx) for idx in np.argwhere(bad)[:5]] if a.ndim else [()]
        detail = ", ".join(f"{w}: {a64[w]!r} vs {e64[w]!r}" for w in where)
        problems.append(
            f"{what}: {int(bad.sum())} of {bad.size} values differ (rtol={r:g}, "
            f"atol={absolute:g}); actual vs expected at {detail}"
        )
    return problems


def _kind(value: Any) -> str:
    if isinstance(value, tuple):
        return f"tuple of {len(value)}"
    if isinstance(value, np.ndarray):
        return "ndarray"
    return type(value).__name__


def _snapshot(array: Any) -> tuple[Any, ...]:
    if not isinstance(array, np.ndarray):
        return (repr(array),)
    return (array.dtype.str, array.shape, array.strides, array.flags.writeable, np.array(array, copy=True).tobytes())


def _results_arrays(result: Any) -> list[np.ndarray]:
    if isinstance(result, tuple):
        return [a for item in result for a in _results_arrays(item)]
    return [result] if isinstance(result, np.ndarray) else []


def _run(call: Callable[[Any, HostileCase], Any], func: Any, case: HostileCase) -> tuple[Any, BaseException | None]:
    with np.errstate(all="ignore"):
        try:
            return call(func, case), None
        except Exception as error:  # noqa: BLE001 - the exception is the result here
            return None, error


_CONVENTIONS: dict[str, Callable[..., Any]] = {
    "x": lambda f, c, kw: f(c.x, axis=c.axis, **kw),
    "logits, target": lambda f, c, kw: f(c.x, c.target, axis=c.axis, **kw),
    "logits, probabilities": lambda f, c, kw: f(c.x, c.probabilities, axis=c.axis, **kw),
    "logits, labels": lambda f, c, kw: f(c.x, c.labels, **kw),
}

_DEFAULT_CONVENTION = {
    "softmax": "x",
    "log_softmax": "x",
    "logsumexp": "x",
    "cross_entropy": "logits, target",
    "cross_entropy_with_grad": "logits, target",
    "gradient_hessian": "logits, labels",
}


def assert_matches_reference(
    func: Any,
    reference: Any = None,
    *,
    call: str | Callable[[Any, HostileCase], Any] | None = None,
    cases: Iterable[HostileCase] | None = None,
    name: str | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    scale: Callable[[HostileCase], float | tuple[float, ...]] | None = None,
    check_dtype: bool = True,
    same_error_type: bool = True,
    max_reported: int = 5,
    **kwargs: Any,
) -> int:
    """Run `func` and the reference the same way on every hostile case; AssertionError
    describing the first `max_reported` failing cases (and how many failed) if any differ.

    func: the implementation under test. reference: a function name in
    `softmaxloss.reference` ("softmax", "log_softmax", "logsumexp", "cross_entropy",
    "cross_entropy_with_grad", "gradient_hessian"); default: func's own `__name__`. Or, with
    a callable `call`, any object `call` knows how to use (a function, a module, ...).
    call: how to call either one on a case: a callable `call(f, case) -> result`, or one of
    the conventions "x" (`f(case.x, axis=case.axis, **kwargs)`), "logits, target",
    "logits, probabilities" (`f(case.x, case.<...>, axis=case.axis, **kwargs)`) and
    "logits, labels" (`f(case.x, case.labels, **kwargs)`); default: the reference
    function's own convention. cases: default `hostile_cases()`. name: what the messages call
    the function under test. rtol, atol: see `compare_results`; scale: `scale(case)` gives
    `compare_results` the size of the terms the results are sums of. check_dtype: results must
    also agree in dtype and kind (ndarray or NumPy scalar). same_error_type: where the
    reference raises, func must raise the same exception type (False: any exception).
    Returns the number of cases checked.
    """
    from . import reference as reference_module

    if reference is None:
        reference = getattr(func, "__name__", None)
        if reference is None:
            raise TypeError("pass `reference`: func has no __name__ to find its reference by")
    if isinstance(reference, str):
        reference_name = reference
        if reference_name not in _DEFAULT_CONVENTION:
            raise ValueError(
                f"no reference function {reference_name!r}; choose from {sorted(_DEFAULT_CONVENTION)}"
            )
        reference_func = getattr(reference_module, reference_name)
        if call is None:
            call = _DEFAULT_CONVENTION[reference_name]
    else:
        reference_func = reference
        reference_name = getattr(reference, "__name__", repr(reference))
        if call is None:
            raise TypeError("a reference given as an object needs a callable `call`")
    if isinstance(call, str):
        if call not in _CONVENTIONS:
            raise ValueError(f"unknown call convention {call!r}; choose from {sorted(_CONVENTIONS)}")
        convention = _CONVENTIONS[call]

        def conventional_call(f: Any, c: HostileCase) -> Any:
            return convention(f, c, kwargs)

        call_func: Callable[[Any, HostileCase], Any] = conventional_call
    else:
        if kwargs:
            raise TypeError("keyword arguments go into `call` when call is a callable")
        call_func = call
    if name is None:
        name = getattr(func, "__qualname__", None) or repr(func)

    failures: list[str] = []
    n_failed = n_cases = 0
    for case in hostile_cases() if cases is None else cases:
        n_cases += 1
        problems = check_case(
            func, reference_func, call_func, case, rtol=rtol, atol=atol,
            scale=0.0 if scale is None else scale(case), check_dtype=check_dtype,
            same_error_type=same_error_type,
        )
        if problems:
            n_failed += 1
            if len(failures) < max_reported:
                failures.append(
                    f"--- {name} vs reference {reference_name} on case {case.name}\n"
                    + "\n".join(f"  {p}" for p in problems)
                    + "\n"
                    + case.describe()
                )
    if n_failed:
        raise AssertionError(
            f"{name} differs from the reference {reference_name} on {n_failed} of {n_cases} hostile "
            f"cases; the first {len(failures)}:\n" + "\n".join(failures)
        )
    return n_cases


def check_case(
    func: Any,
    reference_func: Any,
    call: Callable[[Any, HostileCase], Any],
    case: HostileCase,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    scale: float | tuple[float, ...] = 0.0,
    check_dtype: bool = True,
    same_error_type: bool = True,
) -> list[str]:
    """The problems (messages) of `func` against `reference_func` on one case: see
    `assert_matches_reference`. Empty when they agree."""
    inputs = case.arrays()
    before = {k: _snapshot(v) for k, v in inputs.items()}
    problems: list[str] = []
    expected, expected_error = _run(call, reference_func, case)
    for k, v in inputs.items():
        if _snapshot(v) != before[k]:
            problems.append(f"the reference modified input {k} (pass `out` arrays made inside `call`)")
    actual, actual_error = _run(call, func, case)
    for k, v in inputs.items():
        if _snapshot(v) != before[k]:
            problems.append(f"modified input {k}")
    if expected_error is not None or actual_error is not None:
        if expected_error is None:
            problems.append(f"raised {type(actual_error).__name__}: {actual_error} (the reference did not)")
        elif actual_error is None:
            problems.append(
                f"did not raise; the reference raised {type(expected_error).__name__}: {expected_error}"
            )
        elif same_error_type and type(actual_error) is not type(expected_error):
            problems.append(
                f"raised {type(actual_error).__name__}: {actual_error}; the reference raised "
                f"{type(expected_error).__name__}: {expected_error}"
            )
        return problems
    problems += compare_results(actual, expected, rtol=rtol, atol=atol, check_dtype=check_dtype, scale=scale)
    for result in _results_arrays(actual):
        for k, v in inputs.items():
            if isinstance(v, np.ndarray) and v.size and result.size and np.shares_memory(result, v):
                problems.append(f"a result shares memory with input {k}")
    return problems


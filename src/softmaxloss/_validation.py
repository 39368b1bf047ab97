"""Argument checks shared by the fast functions and `softmaxloss.reference`.

Both implementations call these before doing any work, so they accept and refuse
exactly the same inputs with exactly the same messages. Nothing here modifies an
argument; conversions return new arrays (or the argument itself when no change is
needed).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.exceptions import AxisError

from ._halfdtypes import is_bfloat16, named_dtype
from ._layout import KERNEL_DTYPES, RowsLayout, unaddressable_message

REDUCTIONS = ("none", "mean", "sum")
DEFAULT_IGNORE_INDEX = -100

# float16 and bfloat16 (ml_dtypes') are computed in float32 (as PyTorch does on CPU; the
# kernels read and write them as stored, `_kernels_half.pxi`); everything else that is real
# and numeric is computed in float64. Results come back in `result` dtype.
_FLOAT16 = np.dtype(np.float16)
_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)


@dataclass(frozen=True, slots=True)
class Dtypes:
    """The dtype a computation runs in and the dtype its results come back in."""

    compute: np.dtype[Any]
    result: np.dtype[Any]


_FIXED_DTYPES = {
    # native float32/float64 compute in themselves; float16 in float32 (as PyTorch on
    # CPU); integers and bools in float64. One object per dtype: no per-call allocation.
    **{np.dtype(t): Dtypes(np.dtype(t), np.dtype(t)) for t in (np.float32, np.float64)},
    **{np.dtype(t).newbyteorder(): Dtypes(np.dtype(t), np.dtype(t)) for t in (np.float32, np.float64)},
    _FLOAT16: Dtypes(_FLOAT32, _FLOAT16),
    _FLOAT16.newbyteorder(): Dtypes(_FLOAT32, _FLOAT16),
}
_FROM_INTEGERS = Dtypes(_FLOAT64, _FLOAT64)


def float_dtypes(dtype: np.dtype[Any], name: str = "logits") -> Dtypes:
    """Compute/result dtypes for an input of `dtype`; TypeError for non-real input."""
    fixed = _FIXED_DTYPES.get(dtype)
    if fixed is not None:
        return fixed
    if is_bfloat16(dtype):  # kind 'V', not a NumPy floating type: its own case
        _FIXED_DTYPES[dtype] = Dtypes(_FLOAT32, dtype)
        return _FIXED_DTYPES[dtype]
    if dtype.kind in "biu":
        return _FROM_INTEGERS
    if dtype.kind == "f":
        raise TypeError(
            f"{name} has dtype {dtype}, which softmaxloss does not compute in; "
            "convert it to float64 (or float32) first"
        )
    raise TypeError(
        f"{name} must be a real numeric array (float16/32/64, bfloat16, integer or bool); "
        f"got dtype {dtype}"
    )


def as_real_array(x: Any, name: str = "logits", dtype: Any = None) -> tuple[np.ndarray, Dtypes]:
    """`np.asarray(x)` (no copy) and its dtypes; TypeError for complex/object/str.
    `dtype` (float16/32/64, bfloat16): x converted to it first, as torch.softmax's dtype=
    (bfloat16, or the name "bfloat16", needs ml_dtypes: ImportError naming it)."""
    arr = np.asarray(x)
    float_dtypes(arr.dtype, name)
    if dtype is not None:
        target = named_dtype(dtype)
        if target not in _OUT_DTYPES and not is_bfloat16(target):
            raise TypeError(f"dtype must be float16, float32, float64 or bfloat16; got {dtype!r}")
        arr = arr.astype(target, copy=False)
    return arr, float_dtypes(arr.dtype, name)


def check_logsumexp_args(x: Any, b: Any, dtype: Any) -> tuple[np.ndarray, Dtypes, np.ndarray | None]:
    """`logsumexp`'s x (converted to `dtype` if given) and weights `b`, broadcast against
    each other (ValueError naming both shapes), in the dtypes of their promotion (SciPy's:
    integers give float64, a Python scalar b keeps x's dtype)."""
    array, dtypes = as_real_array(x, "x", dtype)
    if b is None:
        return array, dtypes, None
    weights, _ = as_real_array(b, "b")
    try:
        array, weights = np.broadcast_arrays(array, weights)
    except ValueError:
        raise ValueError(f"b has shape {weights.shape}, which does not broadcast with x's {array.shape}") from None
    promoted = float_dtypes(np.result_type(array.dtype, b if np.isscalar(b) else weights.dtype), "x")
    return array.astype(promoted.result, copy=False), promoted, weights.astype(np.float64, copy=False)


def normalize_axis(axis: Any, ndim: int) -> int:
    """`axis` as a non-negative int; numpy's AxisError when out of range."""
    if isinstance(axis, (bool, np.bool_)):
        raise TypeError(f"axis must be an integer, got {axis!r}")
    try:
        index = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be an integer, got {axis!r}") from None
    if not -ndim <= index < ndim:
        raise AxisError(index, ndim)
    return index % ndim


def check_axes(axis: Any, ndim: int) -> int | tuple[int, ...]:
    """`axis` of a softmax or log-sum-exp: a non-negative int, or for SciPy's call forms
    (None: every axis; a tuple of axes; a 0-d array, which has one element and so is its
    own row: axis None, 0 or -1, alone or in a tuple, as SciPy and torch take it) the tuple
    of axes to reduce over. numpy's AxisError when out of range, ValueError for a repeated
    axis."""
    if ndim == 0 and axis is not None:
        given = axis if isinstance(axis, tuple) else (axis,)
        if len(given) > 1:
            raise ValueError(f"axis {axis} repeats an axis")
        for a in given:  # 0 or -1: the 0-d array's one element
            try:
                normalize_axis(a, 1)
            except AxisError:
                raise AxisError(a, 0) from None
    if ndim == 0:
        return ()
    if axis is None:
        return tuple(range(ndim))
    if not isinstance(axis, tuple):
        return normalize_axis(axis, ndim)
    axes = tuple(normalize_axis(a, ndim) for a in axis)
    if len(set(axes)) != len(axes):
        raise ValueError(f"axis {axis} repeats an axis")
    return axes


def check_reduction(reduction: Any) -> str:
    """The reduction name, or ValueError naming the choices."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        choices = ", ".join(repr(r) for r in REDUCTIONS)
        raise ValueError(f"reduction must be one of {choices}; got {reduction!r}")
    return reduction


def _optional_positive_int(value: Any, name: str, meaning: str = "") -> int | None:
    """None, or `value` as a positive int (not a bool); TypeError/ValueError naming
    `name` ("must be None or a positive integer" + `meaning`) otherwise."""
    if value is None:
        return None
    if type(value) is int and value >= 1:  # the common case, before any message is built
        return value
    rule = f"{name} must be None or a positive integer{meaning}"
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{rule}, got {value!r}")
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError(f"{rule}, got {value!r}") from None
    if count < 1:
        raise ValueError(f"{rule}, got {count}")
    return count


def check_n_threads(n_threads: Any) -> int | None:
    """None (OpenMP's default) or a positive int."""
    return _optional_positive_int(n_threads, "n_threads")


def _check_float_scalar(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, (str, bytes)):  # float("0.1") would accept a string
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not low <= number <= high:  # also refuses NaN
        upper = "]" if high != np.inf else ")"
        raise ValueError(f"{name} must be in [{low:g}, {high:g}{upper}; got {value!r}")
    return number


def check_softcap(softcap: Any) -> float | None:
    """None (no soft-capping) or the cap of `cap * tanh(x / cap)` as a float: a finite
    real number > 0 (not a bool or a string; a 0-d array or NumPy scalar is fine)."""
    if softcap is None:
        return None
    if isinstance(softcap, (bool, np.bool_, str, bytes)):
        raise TypeError(f"softcap must be None or a real number > 0, got {softcap!r}")
    try:
        cap = float(softcap)
    except (TypeError, ValueError):
        raise TypeError(f"softcap must be None or a real number > 0, got {softcap!r}") from None
    if not (math.isfinite(cap) and cap > 0.0):  # also refuses NaN
        raise ValueError(f"softcap must be a finite number > 0 (or None); got {softcap!r}")
    return cap


_OUT_DTYPES = (_FLOAT16, _FLOAT32, _FLOAT64)


def check_out(
    out: Any, shape: tuple[int, ...], dtypes: Dtypes, axis: int | None, name: str = "out"
) -> np.ndarray:
    """`out` must be a writable ndarray of exactly `shape` and a float dtype (float16, 32
    or 64, native byte order: the result is cast to it, as NumPy's `out=` casts). One of
    the compute dtype is written by the kernels directly and must have a layout they can
    address (`check_out_layout`; class axis `axis`, None when a temporary is written)."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{name} has shape {out.shape}, expected {shape}")
    if (out.dtype not in _OUT_DTYPES or not out.dtype.isnative) and not is_bfloat16(out.dtype):
        raise TypeError(
            f"{name} has dtype {out.dtype}, expected {dtypes.result} (or float16, float32 "
            "or float64 in native byte order, or bfloat16: the result is cast to it)"
        )
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if axis is not None and out.dtype == dtypes.compute:
        check_out_layout(out, axis, name)
    return out


def check_out_layout(out: np.ndarray, axis: int, name: str = "out") -> None:
    """An `out` the kernels write directly (float32/float64) must be aligned and have rows
    they can address: the axes other than the class axis in at most two groups that
    each step with one stride (any C- or F-ordered array qualifies). Others (float16)
    are filled from a temporary, whatever their layout."""
    if out.dtype not in KERNEL_DTYPES:
        return
    if not out.flags.aligned:
        raise ValueError(
            f"{name} is not aligned to its item size ({out.dtype.itemsize} bytes); "
            "pass an aligned array (any array NumPy allocates is)"
        )
    if RowsLayout.of(out, axis).view(out) is None:
        raise ValueError(unaddressable_message(out, name))


def check_no_overlap(out: np.ndarray, name: str, **inputs: np.ndarray | None) -> None:
    """`out` may not share memory with any input (the logits are checked apart)."""
    for input_name, array in inputs.items():
        if array is not None and np.may_share_memory(out, array):
            raise ValueError(f"{name} shares memory with {input_name}")


def check_in_place(out: np.ndarray, logits: np.ndarray, name: str = "out") -> bool:
    """True when `out` is the logits' own memory (in place); ValueError on partial overlap."""
    if not np.may_share_memory(out, logits):
        return False
    same_view = (
        out.__array_interface__["data"][0] == logits.__array_interface__["data"][0]
        and out.strides == logits.strides
    )
    if not same_view:
        raise ValueError(
            f"{name} overlaps the logits without being the same array; pass the logits "
            "array itself for an in-place update, or a separate array"
        )
    return True


def _check_ignore_index(ignore_index: Any) -> int:
    if isinstance(ignore_index, (bool, np.bool_)):
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}")
    try:
        return operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}") from None


@dataclass(frozen=True, slots=True)
class LossOptions:
    """The scalar options of a cross-entropy, checked once and then carried as one
    hashable value (a JAX static argument, the layer's settings) to the kernel call.

    A new option is one field here (its check in `checked`, in the order of the fields),
    its term in the formulas (the kernel and `reference`), and one keyword in each public
    signature, passed on to `LossOptions.checked`.
    """

    reduction: str = "mean"
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    ignore_index: int = DEFAULT_IGNORE_INDEX
    softcap: float | None = None
    focal_gamma: float | None = None

    @classmethod
    def checked(
        cls,
        reduction: Any = "mean",
        label_smoothing: Any = 0.0,
        z_loss: Any = 0.0,
        ignore_index: Any = DEFAULT_IGNORE_INDEX,
        softcap: Any = None,
        focal_gamma: Any = None,
    ) -> LossOptions:
        """The options from a public call's keywords; TypeError/ValueError naming the
        first bad one."""
        options = cls(
            reduction=check_reduction(reduction),
            label_smoothing=_check_float_scalar(label_smoothing, "label_smoothing", 0.0, 1.0),
            z_loss=_check_float_scalar(z_loss, "z_loss", 0.0, np.inf),
            ignore_index=_check_ignore_index(ignore_index),
            softcap=check_softcap(softcap),
            focal_gamma=check_focal_gamma(focal_gamma),
        )
        if options.focal_gamma is not None and options.label_smoothing != 0:
            raise ValueError(
                "focal_gamma does not combine with label_smoothing (the focal loss of a "
                f"smoothed target is not defined here); got label_smoothing={label_smoothing!r}"
            )
        return options

    @property
    def kernel_focal_gamma(self) -> float:
        """focal_gamma as the kernels take it: 0 for the plain cross-entropy."""
        return 0.0 if self.focal_gamma is None else self.focal_gamma


def check_focal_gamma(focal_gamma: Any) -> float | None:
    """`focal_gamma`: None (the cross-entropy) or a finite real number >= 0 (0 gives the
    cross-entropy's values)."""
    if focal_gamma is None:
        return None
    if isinstance(focal_gamma, (bool, np.bool_)):
        raise TypeError(f"focal_gamma must be None or a real number >= 0, got {focal_gamma!r}")
    if isinstance(focal_gamma, (str, bytes)):
        raise TypeError(f"focal_gamma must be None or a real number >= 0, got {focal_gamma!r}")
    try:
        gamma = float(focal_gamma)
    except (TypeError, ValueError):
        raise TypeError(f"focal_gamma must be None or a real number >= 0, got {focal_gamma!r}") from None
    if not (gamma >= 0 and math.isfinite(gamma)):
        raise ValueError(f"focal_gamma must be a finite number >= 0 (or None); got {focal_gamma!r}")
    return gamma


def check_return_flags(return_lse: Any, return_entropy: Any, return_argmax: Any) -> tuple[bool, bool, bool]:
    """The `return_*` keywords of a cross-entropy call: each a bool (TypeError otherwise),
    returned in their order."""
    flags = {"return_lse": return_lse, "return_entropy": return_entropy, "return_argmax": return_argmax}
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(return_lse), bool(return_entropy), bool(return_argmax)


@dataclass(slots=True)
class LossArgs:
    """The validated arguments of a cross-entropy call, as both implementations need them.

    `target` holds int64 class indices (`probabilities` False, shape `row_shape`) or
    float64 probabilities (`probabilities` True, the logits' shape). `target_ignore_index`
    is the int64 value that marks the ignored rows among those indices (`ignore_index`
    itself, or its wrapped value for a uint64 target; a value no index can equal when no
    target can equal `ignore_index`). `values_checked` says whether every index has been
    checked to be in range or ignored (else the kernel checks them before it writes and
    reports the first bad one, which the caller raises as `class_out_of_range`; `target`
    is then a signed integer array and `target_ignore_index` is `ignore_index`). `weight` is None or
    float64 of shape (C,); `sample_weight` None or float64 of shape `row_shape`.
    `options`: the checked scalar options. `where`: None, or the class mask (bool, the
    logits' shape; a read-only broadcast view of the caller's mask, `check_where`).
    """

    logits: np.ndarray
    dtypes: Dtypes
    axis: int
    n_classes: int
    row_shape: tuple[int, ...]
    target: np.ndarray
    probabilities: bool
    weight: np.ndarray | None
    sample_weight: np.ndarray | None
    options: LossOptions
    target_ignore_index: int
    values_checked: bool
    where: np.ndarray | None = None


def _row_shape(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return shape[:axis] + shape[axis + 1 :]


def check_index_target(
    target: np.ndarray, n_classes: int, ignore_index: int | None, name: str = "target"
) -> np.ndarray:
    """int64 class indices; ValueError naming the first out-of-range value and position.

    Values are compared in the target's own dtype with the exact `ignore_index` (a huge
    uint64 must not wrap into range; an ignore_index no value can hold matches none)."""
    if target.size == 0 or (target.min() >= 0 and target.max() < n_classes):
        return target.astype(np.int64, copy=False)  # the common case, in two reductions
    bad = ~((target >= 0) & (target < n_classes))
    if ignore_index is not None:
        bad &= target != ignore_index
    if bad.any():
        raise class_out_of_range(target, int(np.flatnonzero(bad)[0]), n_classes, ignore_index, name)
    # Every value is now in [0, n_classes) or equal to ignore_index; int64 holds the
    # former, and a uint64 ignore_index past int64 wraps to `target_ignore_index`'s value.
    return target.astype(np.int64, copy=False)


def class_out_of_range(
    target: np.ndarray, flat: int, n_classes: int, ignore_index: int | None, name: str = "target"
) -> ValueError:
    """The error for the class index at C-order position `flat` of `target`, out of range
    and not `ignore_index`: found by `check_index_target`, or reported by the kernel."""
    position = tuple(int(p) for p in np.unravel_index(flat, target.shape))
    allowed = f"0 <= {name} < {n_classes}"
    if ignore_index is not None:
        allowed += f" or {name} == ignore_index ({ignore_index})"
    return ValueError(
        f"{name} value {target[position]} at position {position} is out of range "
        f"for {n_classes} classes: expected {allowed}"
    )


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# What the kernels compare int64 indices with when no row can be ignored: negative, so
# that no index in range equals it (and then every index has been checked in range).
_NO_IGNORED_ROW = -1


def _target_ignore_index(ignore_index: int, target_dtype: np.dtype[Any]) -> int | None:
    """The int64 value that marks the rows whose target equals `ignore_index` once the
    target is converted to int64, or None when no int64 value does: `ignore_index` outside
    the int64 range can only be held by a uint64 target (2**63 <= ignore_index < 2**64,
    which wraps to ignore_index - 2**64), and otherwise ignores nothing."""
    if _INT64_MIN <= ignore_index <= _INT64_MAX:
        return ignore_index
    if target_dtype == np.uint64 and 0 <= ignore_index < 2**64:
        return ignore_index - 2**64
    return None


def _check_whole_numbers(labels: np.ndarray, name: str) -> np.ndarray:
    """Class indices given as floats (scikit-learn passes labels so): exact whole numbers
    only. No cast here: check_index_target range-checks in float first, so 1e300 is
    reported as itself instead of as an invalid cast's garbage."""
    if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
        raise ValueError(f"{name} given as floats must hold whole class numbers")
    return labels


def _check_weight(weight: Any, n_classes: int) -> np.ndarray | None:
    if weight is None:
        return None
    array, _ = as_real_array(weight, "weight")
    if array.shape != (n_classes,):
        raise ValueError(
            f"weight must have one entry per class, shape ({n_classes},); got shape {array.shape}"
        )
    return array.astype(np.float64, copy=False)


def _check_sample_weight(sample_weight: Any, row_shape: tuple[int, ...]) -> np.ndarray | None:
    if sample_weight is None:
        return None
    array, _ = as_real_array(sample_weight, "sample_weight")
    if array.shape != row_shape:
        raise ValueError(
            f"sample_weight has shape {array.shape}; expected one weight per row, "
            f"shape {row_shape} (the logits' shape without the class axis)"
        )
    return array.astype(np.float64, copy=False)


# What a call passes as its options: checked ones, or its option keywords as given.
OptionsGiven = LossOptions | dict[str, Any]


def _check_loss_arguments(
    logits: Any, target: Any, axis: Any, weight: Any, sample_weight: Any, options: OptionsGiven,
) -> LossArgs:
    """Every argument of a cross-entropy call but the values of its class indices: the
    returned `target` is the caller's array as given (unconverted, unchecked). Option
    keywords are checked after the logits and axis, as LossOptions.checked."""
    x, dtypes = as_real_array(logits, "logits")
    if x.ndim == 0:
        raise ValueError("logits must have at least one dimension (the class axis); got a scalar")
    axis = normalize_axis(axis, x.ndim)
    n_classes = x.shape[axis]
    if n_classes == 0:
        raise ValueError(f"logits has zero classes (shape {x.shape}, class axis {axis})")
    if not isinstance(options, LossOptions):
        options = LossOptions.checked(**options)
    ignore_index = options.ignore_index

    row_shape = _row_shape(x.shape, axis)
    t = np.asarray(target)
    float_indices = t.dtype.kind == "f" and t.shape == row_shape
    if float_indices:
        # Class indices given as floats (scikit-learn's labels), as gradient_hessian takes them.
        t = _check_whole_numbers(t, "target")
    if t.dtype.kind in "iu" or float_indices:
        if t.shape != row_shape:
            raise ValueError(
                f"target of class indices has shape {t.shape}; logits of shape {x.shape} "
                f"with class axis {axis} need shape {row_shape}"
            )
        probabilities = False
    elif t.dtype.kind == "f":  # not of the rows' shape: probabilities
        if t.shape != x.shape:
            raise ValueError(
                f"target of probabilities has shape {t.shape}; it must have the logits' "
                f"shape {x.shape}"
            )
        if ignore_index != DEFAULT_IGNORE_INDEX:
            raise ValueError(
                "ignore_index applies to class-index targets only; got probability "
                f"targets (dtype {t.dtype}) with ignore_index={ignore_index}"
            )
        probabilities = True
    else:
        raise TypeError(
            "target must hold integer class indices or float probabilities; "
            f"got dtype {t.dtype}"
        )
    target_ignore_index = _target_ignore_index(ignore_index, t.dtype)
    return LossArgs(
        logits=x,
        dtypes=dtypes,
        axis=axis,
        n_classes=n_classes,
        row_shape=row_shape,
        target=t,
        probabilities=probabilities,
        weight=_check_weight(weight, n_classes),
        sample_weight=_check_sample_weight(sample_weight, row_shape),
        options=options,
        target_ignore_index=_NO_IGNORED_ROW if target_ignore_index is None else target_ignore_index,
        values_checked=False,
    )


def _check_target_values(args: LossArgs, check_range: bool) -> None:
    """Convert `args.target` for the kernels (int64 indices, float64 probabilities),
    checking the indices' range first when asked, and always where int64 would not
    compare them exactly (unsigned targets, an ignore_index outside int64)."""
    t = args.target
    if args.probabilities:
        args.target = t.astype(np.float64, copy=False)
        return
    ignore_index = args.options.ignore_index
    exact_in_int64 = t.dtype.kind == "i" and _INT64_MIN <= ignore_index <= _INT64_MAX
    if t.dtype.kind == "f":  # whole numbers: checked, the ignored ones marked in int64
        check_index_target(t, args.n_classes, ignore_index)
        args.target = np.where(t == ignore_index, args.target_ignore_index, t).astype(np.int64)
        args.values_checked = True
    elif check_range or not exact_in_int64:
        args.target = check_index_target(t, args.n_classes, ignore_index)
        args.values_checked = True
    else:
        args.target = t.astype(np.int64, copy=False)


def check_loss_args(
    logits: Any,
    target: Any,
    options: OptionsGiven,
    *,
    axis: Any = -1,
    weight: Any = None,
    sample_weight: Any = None,
    check_range: bool = True,
) -> LossArgs:
    """Validate every argument of `cross_entropy` but n_threads; raise before any work.

    check_range=False leaves the range of signed integer class indices to the caller
    (the kernel checks them in its first pass over the targets, before writing
    anything, and reports the first bad one: the caller raises `class_out_of_range`)."""
    args = _check_loss_arguments(logits, target, axis, weight, sample_weight, options)
    _check_target_values(args, check_range)
    return args


def check_where(where: Any, shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """A `where=` class mask as a boolean view of the logits' `shape` (no copy), or None.
    optax's rule: a mask of the logits' number of dimensions broadcasts against them; one
    of a dimension fewer holds one value per example (the class axis `axis` is inserted).
    TypeError unless its dtype is bool; ValueError naming both shapes otherwise."""
    if where is None:
        return None
    mask = np.asarray(where)
    if mask.dtype != np.bool_:
        raise TypeError(f"where must be a boolean mask (dtype bool); got dtype {mask.dtype}")
    given = mask.shape
    if mask.ndim == len(shape) - 1:  # one value per example
        mask = np.expand_dims(mask, axis)
    if mask.ndim == len(shape):
        try:
            return np.broadcast_to(mask, shape)
        except ValueError:
            pass
    rows = _row_shape(shape, axis)
    raise ValueError(
        f"where has shape {given}; it must broadcast to the logits' shape {shape} (a mask "
        f"over the classes) or to {rows} (one value per example)"
    )


def check_cross_entropy_call(
    logits: Any, target: Any, options: OptionsGiven, *, axis: Any, weight: Any,
    sample_weight: Any, n_threads: Any, out: Any = None, check_range: bool = True, where: Any = None,
) -> LossArgs:
    """All the checks of a `cross_entropy` / `cross_entropy_with_grad` call, in the one
    order both implementations raise them: the arguments, `where`, `n_threads`, `out`,
    and last the values of the class indices (check_range=False: signed indices are left
    to the kernel, which checks them before writing anything, so the first error is the
    same; with a mask every index is checked here)."""
    args = _check_loss_arguments(logits, target, axis, weight, sample_weight, options)
    if args.options.focal_gamma is not None and args.probabilities:
        raise ValueError(
            "focal_gamma applies to class-index targets only; got probability targets "
            f"(dtype {args.target.dtype})"
        )
    args.where = check_where(where, args.logits.shape, args.axis)
    if args.where is not None and args.options.focal_gamma is not None:
        raise ValueError("focal_gamma does not combine with where= (a class mask)")
    check_n_threads(n_threads)
    if out is not None:
        check_out(out, args.logits.shape, args.dtypes, args.axis)
        check_in_place(out, args.logits)
        check_no_overlap(out, "out", target=args.target, weight=args.weight,
                         sample_weight=args.sample_weight, where=args.where)
    _check_target_values(args, check_range or args.where is not None)
    return args


def check_gradient_hessian_out(
    out: Any, x: np.ndarray, dtypes: Dtypes, labels: Any, sample_weight: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """`gradient_hessian`'s `out`: None, or a pair of arrays it can write, neither sharing
    memory with an input or the other (the first may be the logits: in place)."""
    if out is None:
        return None, None
    if not isinstance(out, tuple) or len(out) != 2:
        raise TypeError("out must be None or a tuple (grad_out, hess_out)")
    grad_out, hess_out = out
    check_out(grad_out, x.shape, dtypes, 1, "out[0]")
    check_out(hess_out, x.shape, dtypes, 1, "out[1]")
    check_in_place(grad_out, x, "out[0]")
    check_no_overlap(hess_out, "out[1]", logits=x, grad=grad_out)
    for name, array in (("out[0]", grad_out), ("out[1]", hess_out)):
        check_no_overlap(array, name, labels=np.asarray(labels), sample_weight=sample_weight)
    return grad_out, hess_out


def check_gradient_hessian_args(
    logits: Any, labels: Any, sample_weight: Any
) -> tuple[np.ndarray, Dtypes, np.ndarray, np.ndarray | None]:
    """Validate `gradient_hessian`'s (N, C) logits, (N,) labels and sample weights."""
    x, dtypes = as_real_array(logits, "logits")
    if x.ndim != 2:
        raise ValueError(f"logits must be 2-D (n_samples, n_classes); got shape {x.shape}")
    n_rows, n_classes = x.shape
    if n_classes == 0:
        raise ValueError(f"logits has zero classes (shape {x.shape})")
    y = np.asarray(labels)
    if y.dtype.kind not in "iuf":
        raise TypeError(f"labels must be integer class indices; got dtype {y.dtype}")
    if y.shape != (n_rows,):
        raise ValueError(
            f"labels has shape {y.shape}; logits of shape {x.shape} need shape ({n_rows},)"
        )
    if y.dtype.kind == "f":
        y = _check_whole_numbers(y, "labels")
    labels_checked = check_index_target(y, n_classes, ignore_index=None, name="labels")
    return x, dtypes, labels_checked, _check_sample_weight(sample_weight, (n_rows,))



# ---- linear_cross_entropy: the LM head's loss, hidden @ linear_weight.T (+ bias) -------


@dataclass(slots=True)
class LinearLossArgs:
    """The validated arguments of a `linear_cross_entropy` call.

    `hidden` (..., D) and `linear_weight` (V, D) are float32 or float64 arrays of the same
    type, as given (byte order included); `linear_bias` None or (V,) of their type.
    `row_shape` is hidden's shape without its last axis; `n_rows` its size. `target` holds
    int64 class indices of `row_shape`, every one in range or equal to
    `target_ignore_index` (checked up front, so no chunk is computed for a call that fails),
    or the probabilities as given (`probabilities` True, `row_shape + (V,)`; never converted
    here: the fast path reads them a chunk at a time). `target_given` and `ignore_index`
    are the caller's, for the reference's unfused call. `weight` None or float64 (V,);
    `sample_weight` None or float64 of `row_shape`. `chunk_size` and `memory_budget` are
    None or checked values.
    """

    hidden: np.ndarray
    linear_weight: np.ndarray
    linear_bias: np.ndarray | None
    dtype: np.dtype[Any]
    row_shape: tuple[int, ...]
    n_rows: int
    n_classes: int
    n_features: int
    target: np.ndarray
    target_given: np.ndarray
    probabilities: bool
    weight: np.ndarray | None
    sample_weight: np.ndarray | None
    options: LossOptions
    target_ignore_index: int
    chunk_size: int | None
    memory_budget: float | None
    n_threads: int | None


def _is_float32_or_64(dtype: np.dtype[Any]) -> bool:
    return dtype.kind == "f" and dtype.itemsize in (4, 8)


def _check_linear_arrays(
    hidden: Any, linear_weight: Any, linear_bias: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """hidden (..., D) and linear_weight (V, D), both float32 or both float64, and
    linear_bias None or (V,) of their dtype. BLAS computes the logits in that dtype: no
    other dtype is converted silently."""
    h = np.asarray(hidden)
    w = np.asarray(linear_weight)
    if not (_is_float32_or_64(h.dtype) and _is_float32_or_64(w.dtype) and h.dtype.itemsize == w.dtype.itemsize):
        raise TypeError(
            "hidden and linear_weight must both be float32 or both float64 (the logits are "
            f"computed in their dtype); got hidden {h.dtype} and linear_weight {w.dtype}"
        )
    if h.ndim == 0:
        raise ValueError("hidden must have at least one dimension (the features); got a scalar")
    if w.ndim != 2:
        raise ValueError(
            f"linear_weight must have shape (n_classes, n_features), 2-D; got shape {w.shape}"
        )
    if w.shape[1] != h.shape[-1]:
        raise ValueError(
            f"linear_weight has shape {w.shape}: its n_features {w.shape[1]} must equal the "
            f"last dimension of hidden, of shape {h.shape}"
        )
    if w.shape[0] == 0:
        raise ValueError(f"linear_weight has zero classes (shape {w.shape})")
    if linear_bias is None:
        return h, w, None
    b = np.asarray(linear_bias)
    if not (_is_float32_or_64(b.dtype) and b.dtype.itemsize == h.dtype.itemsize):
        raise TypeError(
            f"linear_bias has dtype {b.dtype}; it must have the dtype of hidden and "
            f"linear_weight ({h.dtype})"
        )
    if b.shape != (w.shape[0],):
        raise ValueError(
            f"linear_bias must have one entry per class, shape ({w.shape[0]},); got shape {b.shape}"
        )
    return h, w, b


def _check_linear_target(
    target: Any, row_shape: tuple[int, ...], n_classes: int, hidden_shape: tuple[int, ...],
    options: LossOptions,
) -> tuple[np.ndarray, bool]:
    """The target as given and whether it holds probabilities: class indices (integers,
    or floats holding whole numbers) of `row_shape`, or float probabilities of
    `row_shape + (V,)`."""
    t = np.asarray(target)
    float_indices = t.dtype.kind == "f" and t.shape == row_shape
    if t.dtype.kind in "iu" or float_indices:
        if t.shape != row_shape:
            raise ValueError(
                f"target of class indices has shape {t.shape}; hidden of shape {hidden_shape} "
                f"needs shape {row_shape} (hidden's shape without its last axis)"
            )
        return t, False
    if t.dtype.kind == "f":
        expected = (*row_shape, n_classes)
        if t.shape != expected:
            raise ValueError(
                f"target of probabilities has shape {t.shape}; it must have shape {expected}: "
                f"hidden's shape without its last axis, then the {n_classes} classes of linear_weight"
            )
        if options.ignore_index != DEFAULT_IGNORE_INDEX:
            raise ValueError(
                "ignore_index applies to class-index targets only; got probability "
                f"targets (dtype {t.dtype}) with ignore_index={options.ignore_index}"
            )
        return t, True
    raise TypeError(
        f"target must hold integer class indices or float probabilities; got dtype {t.dtype}"
    )


def _check_linear_sample_weight(sample_weight: Any, row_shape: tuple[int, ...]) -> np.ndarray | None:
    if sample_weight is None:
        return None
    array, _ = as_real_array(sample_weight, "sample_weight")
    if array.shape != row_shape:
        raise ValueError(
            f"sample_weight has shape {array.shape}; expected one weight per row, "
            f"shape {row_shape} (hidden's shape without its last axis)"
        )
    return array.astype(np.float64, copy=False)


def check_chunk_size(chunk_size: Any) -> int | None:
    """None (chosen from the memory budget) or a positive int: rows per chunk."""
    return _optional_positive_int(chunk_size, "chunk_size", " (rows per chunk)")


def check_memory_budget(memory_budget: Any) -> float | None:
    """None (the default budget) or a positive number of bytes (inf: no limit)."""
    if memory_budget is None:
        return None
    message = f"memory_budget must be None or a positive number of bytes, got {memory_budget!r}"
    if isinstance(memory_budget, (bool, np.bool_, str, bytes)):
        raise TypeError(message)
    try:
        budget = float(memory_budget)
    except (TypeError, ValueError):
        raise TypeError(message) from None
    if not budget > 0:  # also refuses NaN
        raise ValueError(message)
    return budget


def check_linear_cross_entropy_call(
    hidden: Any, linear_weight: Any, target: Any, options: OptionsGiven, *, linear_bias: Any,
    weight: Any, sample_weight: Any, chunk_size: Any, memory_budget: Any, n_threads: Any,
) -> LinearLossArgs:
    """All the checks of a `linear_cross_entropy` / `..._with_grad` call, in the one order
    both implementations raise them: hidden, linear_weight and linear_bias, the loss
    options, the target's kind and shape, the class and sample weights, chunk_size,
    memory_budget, n_threads, and last the values of the class indices (all of them, so
    that a bad class anywhere raises before any chunk of logits is computed)."""
    h, w, b = _check_linear_arrays(hidden, linear_weight, linear_bias)
    if not isinstance(options, LossOptions):
        options = LossOptions.checked(**options)
    n_classes, n_features = w.shape
    row_shape = h.shape[:-1]
    t, probabilities = _check_linear_target(target, row_shape, n_classes, h.shape, options)
    class_weight = _check_weight(weight, n_classes)
    sample_weights = _check_linear_sample_weight(sample_weight, row_shape)
    rows_per_chunk = check_chunk_size(chunk_size)
    budget = check_memory_budget(memory_budget)
    if rows_per_chunk is not None and budget is not None:
        raise ValueError(
            "give chunk_size (rows per chunk) or memory_budget (bytes), not both; "
            f"got chunk_size={rows_per_chunk} and memory_budget={memory_budget!r}"
        )
    threads = check_n_threads(n_threads)
    ignore_index = options.ignore_index
    target_ignore_index = _target_ignore_index(ignore_index, t.dtype)
    marker = _NO_IGNORED_ROW if target_ignore_index is None else target_ignore_index
    indices = t
    if not probabilities:
        if t.dtype.kind == "f":  # whole numbers: checked, the ignored ones marked in int64
            check_index_target(_check_whole_numbers(t, "target"), n_classes, ignore_index)
            indices = np.where(t == ignore_index, marker, t).astype(np.int64)
        else:
            indices = check_index_target(t, n_classes, ignore_index)
    return LinearLossArgs(
        hidden=h, linear_weight=w, linear_bias=b, dtype=np.dtype(h.dtype.type),
        row_shape=row_shape, n_rows=int(np.prod(row_shape)), n_classes=n_classes,
        n_features=n_features, target=indices, target_given=t, probabilities=probabilities,
        weight=class_weight, sample_weight=sample_weights, options=options,
        target_ignore_index=marker, chunk_size=rows_per_chunk, memory_budget=budget,
        n_threads=threads,
    )

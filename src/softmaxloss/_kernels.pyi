"""Stubs for the compiled kernels `softmaxloss._kernels` (and the other builds of `_builds.py`,
`_kernels_avx2`, ...: the same source compiled for another instruction set, whose stubs,
written by setup.py, re-export this one).

Checked against the built module by `mypy.stubtest` (tests/test_typing.py): when a `def`
function in `_kernels.pyx` is added, removed or changes its parameters, update this file.

The kernels are private: `softmaxloss._facade` validates every argument and calls them. Every
array arrives as a "rows view" of shape (A, B, C): the class axis last, rows indexed by (a, b),
any strides unless the type says `[::1]`. The Cython fused types map to constrained type
variables: `_F` (`floating`) is the logits' dtype, and every array typed `_F` in one call must
have that same dtype (float32 or float64); `_T` (`target_floating`) is the dtype of
probability targets, independent of `_F`. At run time any object with the buffer protocol and
the right item type is accepted: other dtypes are a `TypeError` ("No matching signature
found"), mixed ones a `ValueError` ("Buffer dtype mismatch"), and read-only arrays are accepted
for the IN arguments only (`ValueError` for OUT). The shapes below are the contract:
the facade checks every argument before the call, so call the kernels only as it does.
"""

from typing import Any, TypedDict, TypeVar, type_check_only

import numpy as np
import numpy.typing as npt

_F = TypeVar("_F", np.float32, np.float64)
_T = TypeVar("_T", np.float32, np.float64)
_S = TypeVar("_S", np.float32, np.float64, np.uint16)  # `stored`: logits as stored (uint16: half bits)

@type_check_only
class _BuildInfo(TypedDict):
    isa: str
    compiler: str
    openmp: bool
    max_threads: int

# Cython's doctest dictionary (the `autotestdict` directive), empty: no docstring has doctests.
__test__: dict[str, str]

def softmax(x: npt.NDArray[_F], out: npt.NDArray[_F], log_output: bool, n_threads: int) -> None:
    """out = softmax(x) (log_output False) or log_softmax(x), over the last axis.

    x (A, B, C) IN; out (A, B, C) OUT, may be x's memory (in place). n_threads: 0 for
    OpenMP's default; small inputs use fewer threads.
    """

def logsumexp(x: npt.NDArray[_F], out: npt.NDArray[np.float64], n_threads: int) -> None:
    """out[a, b] = log(sum_c exp(x[a, b, c])).

    x (A, B, C) IN; out (A, B) float64, C-contiguous, OUT. An empty class axis leaves out
    untouched (the facade fills it with -inf).
    """

def cross_entropy_index(
    x: npt.NDArray[_F],
    target: npt.NDArray[np.int64],
    weight: npt.NDArray[np.float64] | None,
    sample_weight: npt.NDArray[np.float64] | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    mean: bool,
    row_loss: npt.NDArray[np.float64],
    grad: npt.NDArray[_F] | None,
    n_threads: int,
    report_invalid_row: bool = False,
    lse: npt.NDArray[np.float64] | None = None,
    entropy: npt.NDArray[np.float64] | None = None,
    argmax: npt.NDArray[np.int64] | None = None,
    focal_gamma: float = 0.0,
) -> tuple[float, float] | None:
    """Per-row cross-entropy losses of class-index targets, and their gradient.

    x (A, B, C) logits; target (A, B) int64 class indices or ignore_index; weight (C,)
    contiguous class weights or None (all 1); sample_weight (A, B) or None (all 1); mean:
    reduction="mean", so the gradient is divided by W. OUT: row_loss (A, B), C-contiguous
    (0 where ignored); grad (A, B, C) the gradient, or None for the loss only; grad may be
    x's memory.

    Returns (sum of the per-row losses, W = sum over kept rows of s * w[y]); (0.0, 0.0)
    for no rows or no classes; None, having written nothing but row_loss (its scratch),
    when a class is out of range and not ignore_index: with report_invalid_row, the
    first such row's number r = a * B + b is then in row_loss[0, 0] (the facade reports
    it). Extra outputs, each (A, B) C-contiguous or None (not computed): lse, entropy
    (of softmax) and argmax (np.argmax's) of every row, ignored rows' too, from the same
    pass. focal_gamma > 0: the softmax focal loss instead (no label smoothing).
    """

def cross_entropy_plain(
    x: npt.NDArray[np.floating[Any]],
    target: npt.NDArray[np.int64],
    grad: npt.NDArray[np.floating[Any]] | None,
    mean: bool,
    n_threads: int,
) -> tuple[float, float] | int | None:
    """cross_entropy_index for the most common call: (N, C) C-contiguous float32 or float64
    logits, (N,) contiguous int64 class indices or -100 (ignored), no class or sample
    weights, no label smoothing or z-loss; grad (N, C) C-contiguous of x's dtype, or None
    for the loss only, may be x itself. mean: reduction="mean" (else "sum"). The caller
    checks the dtypes; the kernel checks the rest, through the buffer protocol.

    Returns (sum of the per-row losses, W); or the number of the first row whose class is
    out of range and not -100, having written nothing; or None, having written nothing,
    for any other layout, shape or item size (N or C 0 included), misaligned data, or
    grad sharing memory with target, or with x without being x.
    """

def cross_entropy_probs(
    x: npt.NDArray[_F],
    target: npt.NDArray[_T],
    weight: npt.NDArray[np.float64] | None,
    sample_weight: npt.NDArray[np.float64] | None,
    label_smoothing: float,
    z_loss: float,
    mean: bool,
    row_loss: npt.NDArray[np.float64],
    grad: npt.NDArray[_F] | None,
    n_threads: int,
    lse: npt.NDArray[np.float64] | None = None,
    entropy: npt.NDArray[np.float64] | None = None,
    argmax: npt.NDArray[np.int64] | None = None,
) -> tuple[float, float]:
    """Per-row cross-entropy losses of probability targets, and their gradient.

    x (A, B, C) logits; target (A, B, C) probabilities, float32 or float64 whatever x's
    dtype; weight (C,) contiguous or None; sample_weight (A, B) or None; mean:
    reduction="mean", so the gradient is divided by W. OUT: row_loss (A, B), C-contiguous;
    grad (A, B, C) or None; grad may be x's memory.

    Returns (sum of the per-row losses, W = the number of rows, or sum(s)); (0.0, 0.0) for
    no rows or no classes.
    """

def gradient_hessian(
    x: npt.NDArray[_F],
    labels: npt.NDArray[np.int64],
    sample_weight: npt.NDArray[np.float64] | None,
    grad: npt.NDArray[_F],
    hess: npt.NDArray[_F],
    n_threads: int,
) -> None:
    """Per-row gradient s (p - onehot) and diagonal hessian s p (1 - p), p = softmax(x).

    x (A, B, C) logits; labels (A, B) int64, 0 <= label < C (a label out of range gives a
    NaN row, which the facade refuses first); sample_weight (A, B) or None. OUT: grad and
    hess (A, B, C); grad may be x's memory, hess may not.
    """

def class_block_stats_index(
    x: npt.NDArray[_F],
    target: npt.NDArray[np.int64],
    c0: int,
    weight: npt.NDArray[np.float64] | None,
    with_gap: bool,
    shift: npt.NDArray[np.float64] | None,
    stats: npt.NDArray[np.float64],
    exp_out: npt.NDArray[_F] | None,
    n_threads: int,
) -> None:
    """Per-row partial statistics of a block of classes [c0, c0 + W) with class-index targets
    (`_kernels_classblock.pxi`; softmaxloss._shards.STATS names the columns).

    x (A, B, W) the block's logits; target (A, B) int64 class indices among all classes;
    weight (W,) contiguous, the block's class weights, or None; with_gap: compute the
    smoothing term; shift (A, B) each row's shift (its max over all blocks), or None for the
    block's own max. OUT: stats (A, B, 6) C-contiguous; exp_out (A, B, W) exp(x - shift), or
    None (needs shift; may be x's memory).
    """

def class_block_stats_probs(
    x: npt.NDArray[_F],
    target: npt.NDArray[_T],
    weight: npt.NDArray[np.float64] | None,
    label_smoothing: float,
    n_classes: int,
    shift: npt.NDArray[np.float64] | None,
    stats: npt.NDArray[np.float64],
    exp_out: npt.NDArray[_F] | None,
    n_threads: int,
) -> None:
    """Per-row partial statistics of a block of classes with probability targets: target
    (A, B, W) the block's probabilities; n_classes: C of all blocks (for eps / C). As
    class_block_stats_index otherwise.
    """

def class_block_grad_index(
    x: npt.NDArray[_F],
    target: npt.NDArray[np.int64],
    c0: int,
    ignore_index: int,
    weight: npt.NDArray[np.float64] | None,
    coefs: npt.NDArray[np.float64],
    from_exp: bool,
    label_smoothing: float,
    n_classes: int,
    w_sum: float,
    z_loss: float,
    divisor: float,
    grad: npt.NDArray[_F],
    n_threads: int,
) -> None:
    """The gradient of a block of classes [c0, c0 + W) with class-index targets, from the
    per-row coefficients (softmaxloss._shards.COEFS; coefs (A, B, 10) C-contiguous).

    x (A, B, W) the logits, or exp(x - max) already (from_exp); w_sum: the sum of all C class
    weights; divisor: W of reduction="mean" (NaN when 0), else 1. OUT: grad (A, B, W), may be
    x's memory; ignored rows 0.
    """

def class_block_grad_probs(
    x: npt.NDArray[_F],
    target: npt.NDArray[_T],
    weight: npt.NDArray[np.float64] | None,
    coefs: npt.NDArray[np.float64],
    from_exp: bool,
    label_smoothing: float,
    n_classes: int,
    divisor: float,
    grad: npt.NDArray[_F],
    n_threads: int,
) -> None:
    """The gradient of a block of classes with probability targets (target (A, B, W) the
    block's probabilities), as class_block_grad_index otherwise.
    """

def exp(x: npt.NDArray[_F], out: npt.NDArray[_F]) -> None:
    """out = exp(x) with the kernels' own vectorised exp (a test hook for accuracy tests).

    x and out: 1-D, contiguous, the same length.
    """

def cpu_has_avx2_fma() -> bool:
    """Whether this CPU and OS run AVX2 + FMA code."""

def build_info() -> _BuildInfo:
    """How this module was compiled: {"isa": instruction set, "compiler": compiler and
    version, "openmp": whether OpenMP was compiled in (the compiler defined _OPENMP),
    "max_threads": OpenMP's default thread count (1 without OpenMP)}."""

def runs_single_threaded_after_fork() -> bool:
    """Whether this process is a forked child, in which every kernel runs on one thread."""

# ---- half-precision storage (_kernels_half.pxi) ------------------------------------------
# bfloat16 and float16 logits (and gradient, softmax) as their bits, uint16 arrays (a
# bfloat16 array's `.view(np.uint16)`); `kind` 0 for bfloat16, 1 for float16 (another kind
# is a ValueError). Computed by the float32 kernels on each row converted exactly to float32,
# the results rounded once to nearest-even.

def softmax_half(
    x: npt.NDArray[np.uint16], out: npt.NDArray[np.uint16], log_output: bool, kind: int, n_threads: int
) -> None:
    """softmax (log_output False) or log_softmax of x (A, B, C) into out (A, B, C), which
    may be x's memory."""

def logsumexp_half(x: npt.NDArray[np.uint16], out: npt.NDArray[np.float64], kind: int, n_threads: int) -> None:
    """out[a, b] = log(sum_c exp(x[a, b, c])); out (A, B) float64, C-contiguous."""

def cross_entropy_index_half(
    x: npt.NDArray[np.uint16],
    target: npt.NDArray[np.int64],
    weight: npt.NDArray[np.float64] | None,
    sample_weight: npt.NDArray[np.float64] | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    mean: bool,
    row_loss: npt.NDArray[np.float64],
    grad: npt.NDArray[np.uint16] | None,
    kind: int,
    n_threads: int,
    report_invalid_row: bool = False,
    lse: npt.NDArray[np.float64] | None = None,
    entropy: npt.NDArray[np.float64] | None = None,
    argmax: npt.NDArray[np.int64] | None = None,
    focal_gamma: float = 0.0,
) -> tuple[float, float] | None:
    """cross_entropy_index of half logits (the same arguments and returns, and `kind`); the
    gradient, if any, in the logits' half dtype."""

def cross_entropy_probs_half(
    x: npt.NDArray[np.uint16],
    target: npt.NDArray[_T],
    weight: npt.NDArray[np.float64] | None,
    sample_weight: npt.NDArray[np.float64] | None,
    label_smoothing: float,
    z_loss: float,
    mean: bool,
    row_loss: npt.NDArray[np.float64],
    grad: npt.NDArray[np.uint16] | None,
    kind: int,
    n_threads: int,
    lse: npt.NDArray[np.float64] | None = None,
    entropy: npt.NDArray[np.float64] | None = None,
    argmax: npt.NDArray[np.int64] | None = None,
) -> tuple[float, float]:
    """cross_entropy_probs of half logits (the same arguments and returns, and `kind`)."""

def half_from_float32(x: npt.NDArray[np.float32], out: npt.NDArray[np.uint16], kind: int) -> None:
    """out = x rounded once to bfloat16 / float16 bits by the kernels' conversion (a test
    hook); 1-D, contiguous, the same length."""

def half_to_float32(x: npt.NDArray[np.uint16], out: npt.NDArray[np.float32], kind: int) -> None:
    """out = the half bits x as float32, exactly, by the kernels' conversion (a test hook)."""

# ---- soft-capping (_kernels_softcap.pxi) ---------------------------------------------------
# The functions above of the capped logits cap * tanh(x / cap) (`softcap` a finite cap > 0,
# else a ValueError), the gradient that of x: `_S` (`stored`) is the logits' storage, float32,
# float64 or uint16 (half bits, then `kind` 0 bfloat16 / 1 float16; ignored for the others).

def softmax_softcap(
    x: npt.NDArray[_S], out: npt.NDArray[_S], log_output: bool, softcap: float, kind: int, n_threads: int
) -> None:
    """softmax (log_output False) or log_softmax of cap * tanh(x / cap) into out (may be x's memory)."""

def logsumexp_softcap(
    x: npt.NDArray[_S], out: npt.NDArray[np.float64], softcap: float, kind: int, n_threads: int
) -> None:
    """out[a, b] = log(sum_c exp(cap * tanh(x[a, b, c] / cap)))."""

def cross_entropy_index_softcap(
    x: npt.NDArray[_S],
    target: npt.NDArray[np.int64],
    weight: npt.NDArray[np.float64] | None,
    sample_weight: npt.NDArray[np.float64] | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    mean: bool,
    row_loss: npt.NDArray[np.float64],
    grad: npt.NDArray[_S] | None,
    softcap: float,
    kind: int,
    n_threads: int,
    report_invalid_row: bool = False,
    lse: npt.NDArray[np.float64] | None = None,
    entropy: npt.NDArray[np.float64] | None = None,
    argmax: npt.NDArray[np.int64] | None = None,
    focal_gamma: float = 0.0,
) -> tuple[float, float] | None:
    """cross_entropy_index of the capped logits (the same arguments and returns, and
    `softcap`, `kind`; the focal loss with `focal_gamma`; the extra outputs those of the
    capped logits); the gradient with respect to x, in x's storage."""

def cross_entropy_probs_softcap(
    x: npt.NDArray[_S],
    target: npt.NDArray[_T],
    weight: npt.NDArray[np.float64] | None,
    sample_weight: npt.NDArray[np.float64] | None,
    label_smoothing: float,
    z_loss: float,
    mean: bool,
    row_loss: npt.NDArray[np.float64],
    grad: npt.NDArray[_S] | None,
    softcap: float,
    kind: int,
    n_threads: int,
    lse: npt.NDArray[np.float64] | None = None,
    entropy: npt.NDArray[np.float64] | None = None,
    argmax: npt.NDArray[np.int64] | None = None,
) -> tuple[float, float]:
    """cross_entropy_probs of the capped logits (the same arguments and returns, and
    `softcap`, `kind`; the extra outputs those of the capped logits)."""

def softcap_slope(x: npt.NDArray[_F], softcap: float, capped: npt.NDArray[_F], slope: npt.NDArray[_F]) -> None:
    """capped = cap * tanh(x / cap), slope = sech^2(x / cap) by the kernels' code for x's dtype
    (a test hook); 1-D, contiguous, the same length."""

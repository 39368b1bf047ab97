"""Every public function, fast vs reference, over every hostile case of `softmaxloss.testing`
(NaN, +-inf, all -inf rows, +-1e4 / +-1e30 / dtype-max magnitudes, subnormals, ties, one
class, no rows, no classes, N-D class axes, 0-d input; C, F, strided, negative-stride,
read-only, byte-swapped, unaligned and broadcast memory; float16/32/64, integer and bool
logits), with every compiled kernel build: both raise the same exception type or neither,
values agree (NaN where NaN), dtypes agree, inputs are unchanged, and no result aliases an
input. A failure prints the call, the case's dtype, shape, axis, layout and the input.

One registry (`CALLS`) of how each function is called on a case: a new function or option is
one new entry. The plain call of each public function runs over every case; the variants
(reductions, options, `out=`, in place) over `SAMPLED_CASES`: every value pattern in two
layouts and every layout with a few patterns (the full product costs twice the time and
finds nothing more: options do not touch memory layouts, and layouts do not touch values).
"""

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

import softmaxloss as sml
from softmaxloss import reference as ref
from softmaxloss import testing

CASES = list(testing.hostile_cases())
SAMPLED_CASES = [
    c for c in CASES
    if c.layout in ("C", "negative-strides") or c.pattern in ("random", "minus-inf", "zero-rows", "one-class")
]


def _with_grad_in_place(f, c, **kwargs):
    """The gradient written over a fresh copy of the logits (same layout): out=logits."""
    x = c.new_x()
    return f(x, c.target, axis=c.axis, out=x, **kwargs)


def gradient_scale(c, *, weight=None, sample_weight=None, eps=0.0, z=0.0, reduction="mean", probabilities=False):
    """(0, size of the terms a gradient entry is a sum of): SPEC's per-row gradient with
    every term made non-negative (p and the one-hot or smoothed target each at most the
    largest class weight, 2 z |lse| p), times the largest sample weight, divided by the
    mean's normaliser. Entries such as p_y - 1 with p_y -> 1 are only determined to rounding
    relative to these terms (the reference forms them by cancellation)."""
    if c.x.ndim == 0 or c.n_classes == 0:
        return (0.0, 0.0)
    w = np.ones(c.n_classes) if weight is None else weight
    s = np.ones(np.shape(c.target)) if sample_weight is None else np.asarray(sample_weight)
    with np.errstate(all="ignore"):
        lse = np.abs(np.asarray(ref.logsumexp(c.x, c.axis), np.float64))
    lse_max = float(np.max(lse[np.isfinite(lse)], initial=0.0))
    term = float(np.max(s, initial=0.0)) * (2 * float(np.max(w)) * (1 + eps) + 2 * z * lse_max)
    if reduction == "mean":
        if probabilities:
            normaliser = float(np.sum(s)) if sample_weight is not None else float(np.size(s))
        else:
            target = np.asarray(c.target).astype(np.int64)
            kept = target != -100
            normaliser = float(np.sum(s * w[np.where(kept, target, 0)], where=kept))
        term = term / normaliser if normaliser > 0 else 0.0
    return (0.0, term)


def _as_linear(c):
    """A case as a linear + cross-entropy: its logits as hidden (the class axis last, as the
    features) and an identity linear_weight (float32 for float32 logits, else float64), so
    that hidden @ linear_weight.T is the case's logits wherever they are finite."""
    if c.x.ndim == 0:
        return c.x, np.eye(1)
    dtype = np.float32 if c.x.dtype.kind == "f" and c.x.dtype.itemsize == 4 else np.float64
    return np.moveaxis(c.x, c.axis, -1), np.eye(c.x.shape[c.axis], dtype=dtype)


def _linear_scale(c):
    """(loss, grad_hidden, grad_linear_weight): grad_hidden is the logits' gradient;
    grad_linear_weight's entries are sums over the rows of it times hidden."""
    _, term = gradient_scale(c, eps=0.1)
    hidden = np.abs(np.asarray(c.x, np.float64))
    largest = float(np.max(hidden[np.isfinite(hidden)], initial=0.0))
    return (0.0, term, min(term * largest * max(np.size(c.target), 1), float(np.finfo(np.float64).max)))


def _extra_outputs(result):
    """(lse, entropy, argmax) of a CrossEntropyOutputs (None passed on: the registry's recorder)."""
    return None if result is None else (result.lse, result.entropy, result.argmax)


@dataclass(frozen=True)
class Call:
    """How to call a function of a module (softmaxloss or its reference) on a case."""

    run: Callable[[Any, Any], Any]
    scale: Callable[[Any], Any] | None = None  # see gradient_scale
    every_case: bool = False  # over CASES, else SAMPLED_CASES


CALLS = {
    "softmax": Call(lambda f, c: f.softmax(c.x, c.axis), every_case=True),
    "log_softmax": Call(lambda f, c: f.log_softmax(c.x, c.axis), every_case=True),
    "softmax_out": Call(lambda f, c: f.softmax(c.x, c.axis, out=c.new_out())),
    "log_softmax_in_place": Call(lambda f, c: (lambda x: f.log_softmax(x, c.axis, out=x))(c.new_x())),
    "logsumexp": Call(lambda f, c: f.logsumexp(c.x, c.axis), every_case=True),
    "logsumexp_keepdims": Call(lambda f, c: f.logsumexp(c.x, c.axis, keepdims=True)),
    "cross_entropy_mean": Call(lambda f, c: f.cross_entropy(c.x, c.target, axis=c.axis), every_case=True),
    "cross_entropy_sum": Call(lambda f, c: f.cross_entropy(c.x, c.target, axis=c.axis, reduction="sum")),
    "cross_entropy_none": Call(lambda f, c: f.cross_entropy(c.x, c.target, axis=c.axis, reduction="none")),
    "cross_entropy_probabilities": Call(lambda f, c: f.cross_entropy(c.x, c.probabilities, axis=c.axis)),
    "with_grad_mean": Call(
        lambda f, c: f.cross_entropy_with_grad(c.x, c.target, axis=c.axis),
        lambda c: gradient_scale(c),
        every_case=True,
    ),
    "with_grad_none": Call(
        lambda f, c: f.cross_entropy_with_grad(c.x, c.target, axis=c.axis, reduction="none"),
        lambda c: gradient_scale(c, reduction="none"),
    ),
    "with_grad_probabilities": Call(
        lambda f, c: f.cross_entropy_with_grad(
            c.x, c.probabilities, axis=c.axis, reduction="sum", label_smoothing=0.1
        ),
        lambda c: gradient_scale(c, eps=0.1, reduction="sum", probabilities=True),
    ),
    "with_grad_all_options": Call(
        lambda f, c: f.cross_entropy_with_grad(
            c.x, c.target, axis=c.axis, weight=c.weight, sample_weight=c.sample_weight,
            label_smoothing=0.25, z_loss=1e-3,
        ),
        lambda c: gradient_scale(c, weight=c.weight, sample_weight=c.sample_weight, eps=0.25, z=1e-3),
    ),
    "with_grad_full_smoothing": Call(
        lambda f, c: f.cross_entropy_with_grad(c.x, c.target, axis=c.axis, reduction="sum", label_smoothing=1.0),
        lambda c: gradient_scale(c, eps=1.0, reduction="sum"),
    ),
    "with_grad_out": Call(
        lambda f, c: f.cross_entropy_with_grad(c.x, c.target, axis=c.axis, out=c.new_out()),
        lambda c: gradient_scale(c),
    ),
    "with_grad_in_place": Call(
        lambda f, c: _with_grad_in_place(f.cross_entropy_with_grad, c, reduction="sum"),
        lambda c: gradient_scale(c, reduction="sum"),
    ),
    "with_grad_focal": Call(  # f'(L) <= 1 + gamma: at most 3 times the cross-entropy's scale
        lambda f, c: f.cross_entropy_with_grad(
            c.x, c.target, axis=c.axis, weight=c.weight, sample_weight=c.sample_weight, focal_gamma=2.0,
        ),
        lambda c: tuple(3 * v for v in gradient_scale(c, weight=c.weight, sample_weight=c.sample_weight)),
    ),
    "extra_outputs": Call(  # lse, entropy, argmax (issue 16 item 3)
        lambda f, c: _extra_outputs(f.cross_entropy(c.x, c.target, axis=c.axis, reduction="none",
                                                    return_lse=True, return_entropy=True, return_argmax=True)),
        every_case=True,
    ),
    "extra_outputs_softcap": Call(  # of the capped logits (issue 16 items 2-3)
        lambda f, c: _extra_outputs(f.cross_entropy(c.x, c.target, axis=c.axis, reduction="none", softcap=3.0,
                                                    return_lse=True, return_entropy=True, return_argmax=True)),
    ),
    "linear_cross_entropy": Call(
        lambda f, c: f.linear_cross_entropy(*_as_linear(c), c.target, chunk_size=2), every_case=True
    ),
    "linear_with_grad": Call(
        lambda f, c: f.linear_cross_entropy_with_grad(*_as_linear(c), c.target, chunk_size=2, label_smoothing=0.1),
        _linear_scale,
    ),
    "softmax_softcap": Call(lambda f, c: f.softmax(c.x, c.axis, softcap=3.0)),
    "log_softmax_softcap_in_place": Call(lambda f, c: (lambda x: f.log_softmax(x, c.axis, out=x, softcap=3.0))(c.new_x())),
    "logsumexp_softcap": Call(lambda f, c: f.logsumexp(c.x, c.axis, softcap=3.0)),
    "with_grad_softcap_all_options": Call(
        lambda f, c: f.cross_entropy_with_grad(
            c.x, c.target, axis=c.axis, weight=c.weight, sample_weight=c.sample_weight,
            label_smoothing=0.25, z_loss=1e-3, softcap=3.0,
        ),
        lambda c: gradient_scale(c, weight=c.weight, sample_weight=c.sample_weight, eps=0.25, z=1e-3),
    ),
    "with_grad_softcap_probabilities_out": Call(
        lambda f, c: f.cross_entropy_with_grad(c.x, c.probabilities, axis=c.axis, reduction="sum",
                                               softcap=3.0, out=c.new_out()),
        lambda c: gradient_scale(c, reduction="sum", probabilities=True),
    ),
    "gradient_hessian": Call(lambda f, c: f.gradient_hessian(c.x, c.labels), lambda c: (1.0, 1.0), every_case=True),
    "gradient_hessian_weighted_out": Call(
        lambda f, c: f.gradient_hessian(
            c.x, c.labels, sample_weight=np.linspace(0, 2, c.labels.size),
            out=(c.new_out(), c.new_out(-3.0)),
        ),
        lambda c: (2.0, 2.0),
    ),
}


class _Recorder:
    """Stands in for a module and records which of its functions a call uses."""

    def __init__(self):
        self.used = set()

    def __getattr__(self, name):
        self.used.add(name)
        return lambda *args, **kwargs: None


def test_the_registry_covers_every_public_function_and_every_case_kind():
    recorder = _Recorder()
    for call in CALLS.values():
        call.run(recorder, CASES[0])
    public = {name for name in sml.__all__ if callable(getattr(ref, name, None))}
    assert recorder.used == public
    assert {c.pattern for c in CASES} == set(testing.PATTERNS)
    assert {c.layout for c in CASES} == set(testing.LAYOUTS)
    assert {c.shape_kind for c in CASES} == set(testing.SHAPES)
    assert {c.dtype.str for c in CASES} >= {"<f8", ">f8", "<f4", ">f4", "<f2", "<i8", "<i4", "|u1", "|b1"}
    for cases in (CASES, SAMPLED_CASES):
        for kind in ("pattern", "layout", "shape_kind"):
            assert {getattr(c, kind) for c in cases} == {getattr(c, kind) for c in CASES}


# The reference's results do not depend on the kernel build: computed once per (call, case)
# and reused for every build (exceptions included), which halves the run time.
_REFERENCE_CACHE = {}
_SCALE_CACHE = {}


def _check(call, cases, label):
    call_case, scale = CALLS[call].run, CALLS[call].scale

    def run(module, case):
        if module is not ref:
            return call_case(module, case)
        key = (call, id(case))
        if key not in _REFERENCE_CACHE:
            try:
                _REFERENCE_CACHE[key] = (call_case(ref, case), None)
            except Exception as error:  # replayed below, as the reference raised it
                _REFERENCE_CACHE[key] = (None, error)
        result, error = _REFERENCE_CACHE[key]
        if error is not None:
            raise error
        return result

    def cached_scale(case):
        key = (call, id(case))
        if key not in _SCALE_CACHE:
            _SCALE_CACHE[key] = scale(case)
        return _SCALE_CACHE[key]

    return testing.assert_matches_reference(
        sml, ref, call=run, scale=None if scale is None else cached_scale, cases=cases,
        name=f"softmaxloss {call} ({label})",
    )


@pytest.mark.parametrize("call", sorted(CALLS))
def test_fast_matches_reference_on_every_hostile_case(kernel_build, call):
    """Through `assert_matches_reference`: its message names the call, and for each
    failing case the pattern, dtype, shape, axis, layout and input."""
    every = CASES if CALLS[call].every_case else SAMPLED_CASES
    assert _check(call, every, f"{kernel_build} kernels") == len(every)


# ---- the checker itself catches what it must -------------------------------------------


def _naive_log_softmax(x, axis=-1):
    """Without the max shift: overflows for large logits; float64 for every dtype."""
    x = np.asarray(x, dtype=np.float64)
    return x - np.log(np.sum(np.exp(x), axis=axis, keepdims=True))


def _softmax_that_writes_its_input(x, axis=-1):
    result = sml.softmax(x, axis)
    if x.flags.writeable and x.size:
        x[(0,) * x.ndim] += 1
    return result


def _softmax_returning_its_input(x, axis=-1):
    result = sml.softmax(x, axis)
    if isinstance(x, np.ndarray) and x.dtype == result.dtype and x.size:
        return x  # wrong values, and an alias of the input
    return result


def _logsumexp_raising_typeerror_for_empty(x, axis=-1):
    if np.asarray(x).size == 0:
        raise TypeError("empty")
    return sml.logsumexp(x, axis)


@pytest.mark.parametrize(
    "func,reference,kwargs,message",
    [
        (_naive_log_softmax, "log_softmax", {"check_dtype": False}, "values differ"),
        (_naive_log_softmax, "log_softmax", {"check_dtype": True}, "dtype float64 != float32"),
        (_softmax_that_writes_its_input, "softmax", {}, "modified input x"),
        (_softmax_returning_its_input, "softmax", {}, "shares memory with input x"),
        (_logsumexp_raising_typeerror_for_empty, "logsumexp", {}, "raised TypeError: empty"),
    ],
    ids=["values", "dtype", "modifies-input", "aliases-input", "extra-error"],
)
def test_assert_matches_reference_catches_broken_implementations(func, reference, kwargs, message):
    cases = testing.hostile_cases(layouts=["C", "readonly"])
    with pytest.raises(AssertionError) as error:
        testing.assert_matches_reference(func, reference, cases=cases, **kwargs)
    text = str(error.value)
    assert message in text
    for detail in ("pattern=", "dtype=", "shape=", "axis=", "layout=", "x ="):
        assert detail in text


def test_assert_matches_reference_accepts_an_exact_twin_and_narrowed_cases():
    """The documented use by another project: a subset of cases, a custom call."""
    def per_row_losses(logits, labels):  # another project's (N, C) float32 function
        return sml.cross_entropy(logits, labels, reduction="none")

    cases = testing.hostile_cases(dtypes=[np.float32], layouts=["C", "F"], shapes=["rows"])
    n = testing.assert_matches_reference(
        per_row_losses,
        "cross_entropy",
        call=lambda f, c: f(c.x, c.target.astype(np.int64), **({} if f is per_row_losses else {"reduction": "none"})),
        cases=cases,
    )
    assert n == 2 * (len(testing.PATTERNS) - 2)  # every pattern but the integer and bool ones
    assert testing.assert_matches_reference(sml.softmax) == len(CASES)  # found by name

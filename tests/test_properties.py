"""Property tests (hypothesis): over shapes (N-D, class axis anywhere, empty axes),
dtypes, reductions and every combination of options, the fast functions equal the
reference, and equal PyTorch for every combination PyTorch has."""

import numpy as np
import pytest
from _helpers import assert_close, tolerance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import softmaxloss as sml
from softmaxloss import reference as ref

# Examples per test come from the profile (tests/conftest.py): 60, or 2000 with
# HYPOTHESIS_PROFILE=thorough.
SETTINGS = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Weights of any magnitude, tiny (even subnormal) ones included: the kernel divides by
# the mean's normaliser W last, as the formula does, so a tiny W is no overflow.
# Tiny and subnormal weights too: the gradient divides by their sum last, so it stays finite.
WEIGHTS = st.one_of(st.just(0.0), st.floats(0, 4), st.floats(0, 1e-300))
# torch's kernel divides by a tiny normaliser first and overflows; compare only ordinary weights.
TORCH_WEIGHTS = st.one_of(st.just(0.0), st.floats(1e-3, 4))


@st.composite
def loss_problems(draw, torch_compatible=False):
    """(logits, target, keyword arguments) of a random cross-entropy call."""
    ndim = draw(st.integers(1, 4))
    shape = list(draw(hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=0, max_side=6)))
    axis = draw(st.integers(0, ndim - 1))
    if torch_compatible:  # torch: (C,), (N, C) or (N, C, d1, ...): class axis 1 when ndim > 1
        axis = 0 if ndim == 1 else 1
    shape[axis] = max(shape[axis], 1)
    shape = tuple(shape)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    logits = draw(hnp.arrays(dtype, shape, elements=st.floats(-30, 30, width=32)))
    n_classes = shape[axis]
    row_shape = shape[:axis] + shape[axis + 1 :]
    probabilities = draw(st.booleans())
    kwargs = {"axis": axis, "reduction": draw(st.sampled_from(["none", "mean", "sum"]))}
    if probabilities:
        target = draw(hnp.arrays(dtype, shape, elements=st.floats(0, 1, width=32)))
    else:
        ignore_index = draw(st.sampled_from([-100, -1, 0]))
        target = draw(hnp.arrays(np.int64, row_shape, elements=st.integers(-1, n_classes - 1)))
        target[target == -1] = ignore_index
        if ignore_index != -100:
            kwargs["ignore_index"] = ignore_index
    if draw(st.booleans()):
        weights = TORCH_WEIGHTS if torch_compatible else WEIGHTS
        kwargs["weight"] = draw(hnp.arrays(np.float64, (n_classes,), elements=weights))
    if draw(st.booleans()):
        kwargs["label_smoothing"] = draw(st.floats(0, 1))
    if not torch_compatible:
        if draw(st.booleans()):
            kwargs["sample_weight"] = draw(hnp.arrays(np.float64, row_shape, elements=WEIGHTS))
        if draw(st.booleans()):
            kwargs["z_loss"] = draw(st.floats(0, 0.1))
    return logits, target, kwargs


def gradient_term_scale(logits, target, kwargs):
    """The largest term the gradient entries are sums of (SPEC's per-row gradient with
    every term made non-negative, times the reduction's factor): results that cancel
    to ~0 are only determined to rounding relative to this."""
    axis = kwargs["axis"]
    n_classes = logits.shape[axis]
    x = np.moveaxis(logits.astype(np.float64), axis, -1)
    weight = np.abs(kwargs.get("weight", np.ones(n_classes)))
    eps, z = kwargs.get("label_smoothing", 0.0), kwargs.get("z_loss", 0.0)
    lse = np.abs(ref.logsumexp(x, -1)) if x.size else np.zeros(x.shape[:-1])
    if target.dtype.kind == "f":
        smoothed = np.abs((1 - eps) * np.moveaxis(target.astype(np.float64), axis, -1) + eps / n_classes)
        per_row = (smoothed * weight).sum(-1) + (smoothed * weight).max(-1, initial=0) + 2 * z * lse
    else:
        label_weight = weight[np.clip(target, 0, n_classes - 1)]
        per_row = label_weight + eps * (weight.sum() / n_classes + weight.max()) + 2 * z * lse
    per_row = per_row * np.abs(kwargs.get("sample_weight", 1.0))
    scale = float(per_row.max(initial=0.0))
    if kwargs["reduction"] == "mean":  # W of SPEC.md
        if target.dtype.kind == "f":
            normaliser = float(np.sum(kwargs.get("sample_weight", np.ones(target.shape[:axis] + target.shape[axis + 1 :]))))
        else:
            kept = target != kwargs.get("ignore_index", -100)
            row_weight = weight[np.where(kept, target, 0)] * kwargs.get("sample_weight", 1.0)
            normaliser = float(np.sum(row_weight, where=kept))
        # A weight product below the smallest normal number is rounded to an absolute
        # 2**-1074, whatever its size: divided by a subnormal W, that is an error that is
        # not relative to anything above; one such rounding per class and per weight.
        subnormal_rounding = (n_classes + 2) * 2.0**-1074 / tolerance(logits.dtype)[1]
        scale = (scale + subnormal_rounding) / abs(normaliser) if normaliser else 0.0
    return scale


@SETTINGS
@given(problem=loss_problems(), threads=st.sampled_from([1, 2]))
def test_fast_equals_reference_for_every_option_combination(problem, threads):
    logits, target, kwargs = problem
    expected = ref.cross_entropy_with_grad(logits, target, **kwargs)
    assert_close(
        sml.cross_entropy_with_grad(logits, target, n_threads=threads, **kwargs), expected, logits.dtype,
        scale=(0.0, gradient_term_scale(logits, target, kwargs)),
    )
    assert_close(sml.cross_entropy(logits, target, n_threads=threads, **kwargs), expected[0], logits.dtype)


@SETTINGS
@given(problem=loss_problems(torch_compatible=True))
def test_fast_equals_torch_for_every_option_torch_has(problem):
    torch = pytest.importorskip("torch")
    logits, target, kwargs = problem
    torch_kwargs = {k: v for k, v in kwargs.items() if k != "axis"}
    if "weight" in torch_kwargs:
        torch_kwargs["weight"] = torch.tensor(torch_kwargs["weight"])
    # torch in float64 on the same inputs: its float32 kernel forms p - 1 in float32 and
    # is itself off by up to ~1e-5 where p -> 1, beyond the float32 tolerance we meet.
    x = torch.tensor(logits.astype(np.float64), requires_grad=True)
    loss = torch.nn.functional.cross_entropy(x, torch.from_numpy(target.astype(np.float64) if target.dtype.kind == "f" else target), **torch_kwargs)
    (loss.sum() if kwargs["reduction"] == "none" else loss).backward()
    actual_loss, actual_grad = sml.cross_entropy_with_grad(logits, target, **kwargs)
    # torch rounds log(1 + R) where softmaxloss keeps log1p(R): losses of confident rows
    # agree to rounding relative to the row's weights, not to the tiny loss itself.
    scale = gradient_term_scale(logits, target, kwargs)
    assert_close(np.asarray(actual_loss), loss.detach().numpy().astype(logits.dtype), logits.dtype, "loss", scale)
    assert_close(actual_grad, x.grad.numpy().astype(logits.dtype), logits.dtype, "grad", scale)


@SETTINGS
@given(
    x=hnp.arrays(
        st.sampled_from([np.float32, np.float64]),
        hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=7),
        elements=st.floats(-1e3, 1e3, width=32),
    ),
    data=st.data(),
)
def test_softmax_family_equals_reference(x, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    for name in ("softmax", "log_softmax", "logsumexp"):
        assert_close(getattr(sml, name)(x, axis), getattr(ref, name)(x, axis), x.dtype, name)


@SETTINGS
@given(problem=loss_problems())
def test_loss_is_linear_in_sample_weight(problem):
    """sum reduction with sample weights s == sum of s_n * unweighted per-row losses."""
    logits, target, kwargs = problem
    kwargs = {k: v for k, v in kwargs.items() if k not in ("sample_weight", "reduction")}
    row_shape = np.shape(sml.cross_entropy(logits, target, reduction="none", **kwargs))
    s = np.linspace(0, 2, int(np.prod(row_shape))).reshape(row_shape)
    per_row = sml.cross_entropy(logits, target, reduction="none", **kwargs).astype(np.float64)
    weighted = sml.cross_entropy(logits, target, reduction="sum", sample_weight=s, **kwargs)
    rtol, _ = {np.float32: (1e-5, 0), np.float64: (1e-12, 0)}[logits.dtype.type]
    # Per-row losses below the normal range are rounded to an absolute subnormal step each.
    subnormal = np.finfo(logits.dtype).smallest_subnormal * 2 * (per_row.size + 1) * max(float(np.max(s, initial=0)), 1.0)
    np.testing.assert_allclose(weighted, np.sum(s * per_row), rtol=rtol,
                               atol=rtol * np.sum(np.abs(s * per_row)) + subnormal)

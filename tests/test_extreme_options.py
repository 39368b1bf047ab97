"""Options at their extremes give what the reference gives, never a silent wrong answer:
an ignore_index outside the int64 range, z-loss with a tiny mean normaliser, non-finite
upstream gradients in the layer's backward, and calls with several problems at once
(the same first error from the fast functions and the reference)."""

import numpy as np
import pytest
from _helpers import assert_close, tolerance
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from test_properties import gradient_term_scale

import softmaxloss as sml
from softmaxloss import reference as ref

SETTINGS = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def both(function, *args, **kwargs):
    """The fast and the reference result of one call."""
    return getattr(sml, function)(*args, **kwargs), getattr(ref, function)(*args, **kwargs)


def same_error(function, *args, **kwargs):
    """The exception the fast function raises, checked to be the reference's (type and
    message)."""
    with pytest.raises(Exception) as fast:
        getattr(sml, function)(*args, **kwargs)
    with pytest.raises(Exception) as reference:
        getattr(ref, function)(*args, **kwargs)
    assert type(fast.value) is type(reference.value), (fast.value, reference.value)
    assert str(fast.value) == str(reference.value)
    return fast.value


# ---- ignore_index outside the int64 range -------------------------------------------------
# The rule: an ignore_index no int64 target can equal ignores nothing (every class index is
# then checked to be in range); a uint64 target is compared with it exactly.

X = np.random.default_rng(0).standard_normal((5, 3))
T = np.array([0, 2, 1, 1, 0])


@pytest.mark.parametrize("ignore_index", [2**63, 2**64 - 1, 2**64, 2**70, INT64_MIN - 1, -(2**70)])
@pytest.mark.parametrize("function", ["cross_entropy", "cross_entropy_with_grad"])
@pytest.mark.parametrize("target_dtype", [np.int64, np.int32, np.uint8])
def test_an_ignore_index_no_target_can_equal_ignores_nothing(ignore_index, function, target_dtype):
    target = T.astype(target_dtype)
    expected = getattr(sml, function)(X, T, reduction="none")
    fast, reference = both(function, X, target, ignore_index=ignore_index, reduction="none")
    assert_close(fast, expected, X.dtype)
    assert_close(reference, expected, X.dtype)


@pytest.mark.parametrize("ignore_index", [2**63, 2**70, INT64_MIN - 1])
def test_an_ignore_index_no_target_can_equal_leaves_every_index_checked(ignore_index):
    """-1 is refused as out of range, not taken for an ignored row (nor for the uint64
    value 2**64 - 1 it would wrap from)."""
    error = same_error("cross_entropy", X, np.array([0, 1, -1, 2, INT64_MIN]), ignore_index=ignore_index)
    assert isinstance(error, ValueError)
    assert "target value -1 at position (2,)" in str(error)
    assert f"ignore_index ({ignore_index})" in str(error)


@pytest.mark.parametrize("ignore_index", [2**63, 2**64 - 1, 2**63 + 5])
@pytest.mark.parametrize("function", ["cross_entropy", "cross_entropy_with_grad"])
def test_uint64_targets_compare_exactly_with_an_ignore_index_past_int64(ignore_index, function):
    target = np.array([0, ignore_index, 1, ignore_index, 2], dtype=np.uint64)
    expected = getattr(sml, function)(X, np.array([0, -100, 1, -100, 2]))
    for result in both(function, X, target, ignore_index=ignore_index):
        assert_close(result, expected, X.dtype)
    # The int64 value the ignored uint64 wraps to is a bad index, not an ignored row.
    wrapped = np.array([0, ignore_index - 2**64, 1, 1, 2], dtype=np.int64)
    error = same_error(function, X, wrapped, ignore_index=ignore_index)
    assert f"target value {ignore_index - 2**64} at position (1,)" in str(error)
    # A uint64 value next to the ignore_index is out of range.
    other = np.array([0, ignore_index - 1, 1, 1, 2], dtype=np.uint64)
    error = same_error(function, X, other, ignore_index=ignore_index)
    assert f"target value {ignore_index - 1} at position (1,)" in str(error)


def test_torch_and_jax_adapters_take_an_ignore_index_past_int64():
    """The adapters pass it on: ignoring nothing, no OverflowError."""
    expected = sml.cross_entropy(X, T)
    torch = pytest.importorskip("torch")
    import softmaxloss.torch as smt

    loss = smt.cross_entropy(torch.from_numpy(X), torch.from_numpy(T), ignore_index=2**70)
    assert_close(loss.numpy()[()], expected, X.dtype)
    assert_close(smt.CrossEntropyLoss(ignore_index=-(2**70))(torch.from_numpy(X), torch.from_numpy(T)).numpy()[()],
                 expected, X.dtype)


def test_jax_adapter_takes_an_ignore_index_past_int64():
    jax = pytest.importorskip("jax")
    import softmaxloss.jax as smj

    with jax.enable_x64(True):
        loss = smj.cross_entropy(jax.numpy.asarray(X), jax.numpy.asarray(T), ignore_index=2**70)
        assert_close(np.asarray(loss)[()], sml.cross_entropy(X, T), X.dtype)


# ---- z-loss with a tiny mean normaliser ---------------------------------------------------


@pytest.mark.parametrize("n_classes", [2, 10, 40, 300])  # the block path (few classes) and the row path
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_z_loss_with_a_tiny_normaliser_gives_zero_where_p_is_zero(n_classes, dtype, label_smoothing):
    """Weights ~1e-306, logits +-1000: s * 2 z lse / W overflows, but p = 0 off the max,
    and the gradient there is 0 (it was 0 * inf = NaN)."""
    x = np.full((4, n_classes), -1000.0)
    x[np.arange(4), [1, 0, 1, n_classes - 1]] = 1000.0
    x = x.astype(dtype)
    t = np.array([1, 1, 0, n_classes - 1])
    weight = np.full(n_classes, 1e-306)
    for kwargs in [dict(weight=weight), dict(sample_weight=np.full(4, 1e-306))]:
        fast, reference = both("cross_entropy_with_grad", x, t, z_loss=1.0, label_smoothing=label_smoothing, **kwargs)
        assert_close(fast, reference, dtype)
        off_max = x < 0
        assert np.all(np.isfinite(fast[1][off_max]))


@pytest.mark.parametrize("n_classes", [3, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_probability_targets_with_a_tiny_normaliser_give_zero_where_p_is_zero(n_classes, dtype):
    x = np.full((3, n_classes), -1000.0)
    x[:, 0] = 1000.0
    x = x.astype(dtype)
    p = np.zeros((3, n_classes))
    p[:, 0] = 1.0
    fast, reference = both("cross_entropy_with_grad", x, p, z_loss=1.0, sample_weight=np.full(3, 1e-306))
    assert_close(fast, reference, dtype)
    assert np.all(np.isfinite(fast[1][:, 1:]))


EXTREME_WEIGHTS = st.sampled_from([0.0, 5e-324, 1e-306, 1e-300, 1e-150, 1.0, 3.0, 1e150, 1e300])


@st.composite
def extreme_problems(draw):
    """A cross-entropy call with weights, sample weights and logits near the extremes of
    float64 (the products and the normaliser W may over- or underflow)."""
    n_rows = draw(st.integers(1, 6))
    n_classes = draw(st.sampled_from([1, 2, 3, 10, 30]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    # Gaps to the row max either small or past the exponential's underflow: the error
    # that grows with the gap (README's accuracy table) is another test's business.
    elements = st.one_of(st.sampled_from([-1000.0, 0.0, 1000.0, -1e4, 1e4]), st.floats(-4, 4))
    logits = draw(hnp.arrays(dtype, (n_rows, n_classes), elements=elements))
    kwargs = {"axis": -1, "reduction": draw(st.sampled_from(["none", "mean", "sum"]))}
    if draw(st.booleans()):
        target = draw(hnp.arrays(np.float64, (n_rows, n_classes), elements=st.sampled_from([0.0, 0.5, 1.0])))
    else:
        # ignore_index anywhere, also where no int64 (or no value of the target's dtype)
        # can equal it; the rows drawn as -1 hold it when the dtype can.
        ignore_index = draw(st.sampled_from([-100, 0, INT64_MIN, INT64_MAX, 2**63, 2**64 - 1, 2**70]))
        dtype = draw(st.sampled_from([np.int64, np.uint64, np.int32]))
        target = draw(hnp.arrays(np.int64, (n_rows,), elements=st.integers(-1, n_classes - 1)))
        info = np.iinfo(dtype)
        ignored = target == -1
        target = np.where(ignored, 0, target).astype(dtype)
        if info.min <= ignore_index <= info.max:
            target[ignored] = ignore_index
        if ignore_index != -100:
            kwargs["ignore_index"] = ignore_index
    if draw(st.booleans()):
        kwargs["weight"] = draw(hnp.arrays(np.float64, (n_classes,), elements=EXTREME_WEIGHTS))
    if draw(st.booleans()):
        kwargs["sample_weight"] = draw(hnp.arrays(np.float64, (n_rows,), elements=EXTREME_WEIGHTS))
    if draw(st.booleans()):
        kwargs["label_smoothing"] = draw(st.sampled_from([0.0, 1e-300, 0.1, 1.0]))
    if draw(st.booleans()):
        kwargs["z_loss"] = draw(st.sampled_from([1e-300, 1e-4, 1.0, 1e10]))
    return logits, target, kwargs


def mean_normaliser(target, n_classes, kwargs):
    """W of SPEC.md for a 2-D call: the sum of s_n w[y_n] over kept rows (index targets),
    or of s_n (probabilities; the number of rows without sample weights)."""
    s = np.broadcast_to(kwargs.get("sample_weight", 1.0), target.shape[:1])
    if target.dtype.kind == "f":
        return float(np.sum(s))
    weight = kwargs.get("weight", np.ones(n_classes))
    kept = target != kwargs.get("ignore_index", -100)
    return float(np.sum(s * weight[np.where(kept, target, 0).astype(np.int64)], where=kept))


def assert_same_special_values(fast, reference):
    """Where the reference is NaN or +-inf, so is the fast result, and the other way round."""
    fast, reference = np.asarray(fast, np.float64), np.asarray(reference, np.float64)
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(reference))
    np.testing.assert_array_equal(np.where(np.isinf(fast), fast, 0), np.where(np.isinf(reference), reference, 0))


@SETTINGS
@given(problem=extreme_problems())
def test_extreme_weights_and_logits_give_the_references_results(problem):
    """Weights, sample weights, smoothing and z-loss near the ends of float64: the fast
    result is the reference's (NaN and infinities where it has them, values within
    rounding of the terms they are sums of) wherever those terms fit the dtype. Beyond
    that, a result that cancels to ~0 is rounding noise of terms the dtype cannot hold,
    and may be anything from 0 to +-inf in either implementation; even there the fast
    result is never NaN where the reference is a number."""
    logits, target, kwargs = problem
    fast, reference = both("cross_entropy_with_grad", logits, target, **kwargs)
    with np.errstate(over="ignore", invalid="ignore"):  # a scale past float64 is inf
        term_scale = gradient_term_scale(logits, target, kwargs)
        # A product of weights below the smallest normal number is rounded to an absolute
        # 2**-1074 (where the reference rounds w_c p_c before multiplying by s, the
        # kernel after): times a huge sample weight, an error relative to nothing above.
        largest_s = float(np.max(kwargs.get("sample_weight", 1.0), initial=1.0))
        rounding = largest_s * (logits.shape[-1] + 2) * 2.0**-1074 / tolerance(logits.dtype)[1]
        if kwargs["reduction"] == "mean":
            rounding = rounding / normaliser if (normaliser := mean_normaliser(target, logits.shape[-1], kwargs)) else 0.0
        term_scale += rounding
    if term_scale < 1e-3 * float(np.finfo(logits.dtype).max):
        assert_same_special_values(fast[1], reference[1])
        assert_close(fast, reference, logits.dtype, scale=(0.0, term_scale))
    else:
        assert not np.any(np.isnan(fast[1]) & ~np.isnan(reference[1]))
    assert_same_special_values(fast[0], reference[0])
    loss = sml.cross_entropy(logits, target, **kwargs)
    np.testing.assert_array_equal(np.asarray(loss), np.asarray(fast[0]))


# ---- several problems at once: the same first error ---------------------------------------

def test_in_place_on_unaligned_logits_with_a_bad_label_raises_what_the_reference_raises():
    """The issue's example: two problems; both implementations name the same one."""
    buffer = np.zeros(4 * 3 * 8 + 1, dtype=np.uint8)
    unaligned = buffer[1:].view(np.float64).reshape(4, 3)
    unaligned[...] = np.random.default_rng(2).standard_normal((4, 3))
    assert not unaligned.flags.aligned
    before = buffer.copy()
    error = same_error("cross_entropy_with_grad", unaligned, np.array([0, 1, 5, 0]), out=unaligned)
    assert "not aligned" in str(error)
    np.testing.assert_array_equal(buffer, before)


# Problems a call can have, each a change to (args, kwargs) of a valid call.
PROBLEMS = {
    "label out of range": lambda a, k: ((a[0], np.where(np.arange(a[1].size) == 1, 99, a[1])), k),
    "n_threads 0": lambda a, k: (a, {**k, "n_threads": 0}),
    "n_threads float": lambda a, k: (a, {**k, "n_threads": 2.0}),
    "out dtype": lambda a, k: (a, {**k, "out": np.empty(a[0].shape, np.int32)}),
    "out shape": lambda a, k: (a, {**k, "out": np.empty(a[0].shape[::-1])}),
    "out read-only": lambda a, k: (a, {**k, "out": np.broadcast_to(np.zeros((), a[0].dtype), a[0].shape)}),
    "label_smoothing": lambda a, k: (a, {**k, "label_smoothing": 2.0}),
    "z_loss": lambda a, k: (a, {**k, "z_loss": -1.0}),
    "reduction": lambda a, k: (a, {**k, "reduction": "avg"}),
    "weight length": lambda a, k: (a, {**k, "weight": np.ones(a[0].shape[-1] + 1)}),
    "sample_weight shape": lambda a, k: (a, {**k, "sample_weight": np.ones(a[0].shape[0] + 1)}),
    "ignore_index type": lambda a, k: (a, {**k, "ignore_index": 1.5}),
    "axis": lambda a, k: (a, {**k, "axis": 5}),
    "target dtype": lambda a, k: ((a[0], a[1].astype(bool)), k),
}


@SETTINGS
@given(
    problems=st.lists(st.sampled_from(sorted(PROBLEMS)), min_size=2, max_size=5, unique=True),
    with_grad=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    n_classes=st.sampled_from([3, 40]),
)
def test_a_call_with_several_problems_raises_the_references_error(problems, with_grad, dtype, n_classes):
    rng = np.random.default_rng(n_classes)
    args = (rng.standard_normal((6, n_classes)).astype(dtype), rng.integers(0, n_classes, 6))
    kwargs = {}
    if not with_grad:  # cross_entropy has no out
        problems = [name for name in problems if not name.startswith("out")]
        assume(problems)
    for name in problems:
        args, kwargs = PROBLEMS[name](args, kwargs)
    same_error("cross_entropy_with_grad" if with_grad else "cross_entropy", *args, **kwargs)


# ---- the layer's backward with a non-finite dout -------------------------------------------


@pytest.mark.parametrize("dout", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_layer_backward_keeps_ignored_rows_zero_whatever_dout(dout, reduction):
    """PyTorch's rule: an ignored row's gradient is 0 whatever the upstream gradient."""
    x = np.random.default_rng(1).standard_normal((4, 3, 2))
    t = np.array([[0, -100], [2, 1], [-100, -100], [1, 0]])
    layer = sml.SoftmaxWithLoss(axis=1, reduction=reduction, weight=np.array([1.0, 0.0, 2.0]))
    layer.forward(x, t)
    upstream = np.full(t.shape, 1.0) if reduction == "none" else dout
    if reduction == "none":
        upstream[0, 0] = upstream[2, 0] = dout  # one ignored row and one kept row get it
    dx = layer.backward(upstream)
    ignored = np.broadcast_to((t == -100)[:, None, :], x.shape)
    np.testing.assert_array_equal(dx[ignored], 0.0)
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(x).requires_grad_()
    loss = torch.nn.functional.cross_entropy(xt, torch.from_numpy(t), weight=torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64), reduction=reduction)
    loss.backward(torch.as_tensor(upstream, dtype=torch.float64))
    expected = xt.grad.numpy()
    np.testing.assert_array_equal(expected[ignored], 0.0)
    # Where torch's own arithmetic does not make NaN of an infinite upstream (its label
    # entry is -inf - p (-inf) = NaN; here it is (p - 1) inf = -inf), the same values.
    defined = ~np.isnan(expected) | np.isnan(dout)
    np.testing.assert_allclose(dx[defined], expected[defined], rtol=1e-12, atol=1e-15, equal_nan=True)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_layer_backward_of_float32_keeps_ignored_rows_zero_when_dout_overflows_float32(reduction):
    """A float64 dout that is finite but overflows float32 (the gradient's dtype) is inf
    once cast: ignored rows stay 0, not 0 * inf = NaN."""
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    t = np.array([0, -100, 2])
    layer = sml.SoftmaxWithLoss(reduction=reduction)
    layer.forward(x, t)
    dout = np.full(3, 1e300) if reduction == "none" else 1e300
    dx = layer.backward(dout)
    assert dx.dtype == np.float32
    np.testing.assert_array_equal(dx[1], 0.0)
    assert np.isinf(dx[[0, 2]]).all()


def test_torch_backward_under_a_nan_upstream_with_an_ignore_index_past_int64():
    """No row is ignored, so no row is masked: every row's gradient is NaN, as the upstream."""
    torch = pytest.importorskip("torch")
    import softmaxloss.torch as smt

    x = torch.from_numpy(X.copy()).requires_grad_()
    smt.cross_entropy(x, torch.from_numpy(T), ignore_index=2**70).backward(torch.tensor(np.nan, dtype=torch.float64))
    assert torch.isnan(x.grad).all()

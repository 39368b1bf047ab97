"""Tests of `softmaxloss.reference` itself: that the pure-NumPy twin is right.

The fast kernel is tested against the reference elsewhere; here the reference is checked
against independent implementations: PyTorch (loss and autograd gradient), SciPy, scikit-learn,
a row-by-row evaluation of SPEC.md's formulas in 40-digit decimal arithmetic, and finite
differences. Optional libraries are skipped cleanly when missing.
"""

from __future__ import annotations

import decimal
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.exceptions import AxisError

from softmaxloss import reference as ref

RTOL = 1e-12
INF = np.inf
NAN = np.nan


@pytest.fixture(scope="module")
def torch() -> Any:
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def scipy_special() -> Any:
    return pytest.importorskip("scipy.special")


def assert_close(actual: Any, desired: Any, rtol: float = RTOL, scale: float = 0.0) -> None:
    """Equal within rtol, with atol = rtol * max(max|desired| (finite part), scale); NaN and
    +-inf must match exactly.

    `scale` is the size of the terms the values are computed from: a confidently right row has
    loss and gradient ~1e-13 obtained by cancellation of O(1) terms, where one ulp of a
    different exp/log (torch's, another platform's libm) is a large relative error.
    """
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    finite = desired[np.isfinite(desired)]
    scale = max(scale, float(np.max(np.abs(finite))) if finite.size else 0.0)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale, equal_nan=True)


def term_scale(
    x: np.ndarray,
    target: np.ndarray,
    axis: int = -1,
    weight: np.ndarray | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    **_: Any,
) -> float:
    """max(1, max|x|) * max(w) / normaliser: the size of one row's terms after reduction."""
    w = 1.0 if weight is None else float(np.max(weight))
    size = w * max(1.0, float(np.max(np.abs(x), initial=0.0)))
    if reduction != "mean":
        return size
    if target.dtype.kind == "f":
        normaliser = float(target.size // x.shape[axis])
    else:
        kept = target[target != ignore_index]
        normaliser = float(kept.size if weight is None else np.sum(weight[kept]))
    return size / normaliser if normaliser else 0.0


def random_logits(
    rng: np.random.Generator, shape: tuple[int, ...], scale: float = 3.0
) -> np.ndarray:
    return rng.normal(scale=scale, size=shape)


def random_probabilities(rng: np.random.Generator, shape: tuple[int, ...], axis: int) -> np.ndarray:
    y = rng.random(shape)
    return y / np.sum(y, axis=axis, keepdims=True)


def row_shape(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    axis %= len(shape)
    return shape[:axis] + shape[axis + 1 :]


# -- PyTorch: the semantics SPEC.md copies --------------------------------------------------


def torch_cross_entropy(
    torch: Any, x: np.ndarray, target: np.ndarray, axis: int = -1, weight: Any = None, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """torch.nn.functional.cross_entropy (float64) and its autograd gradient, with our axis.

    torch's class dimension is 1 (0 for 1-D input); the other axes keep their order, so the
    target of indices has the same shape in both. For reduction "none" the gradient is that of
    the sum of the per-row losses.
    """
    axis %= x.ndim
    torch_axis = min(1, x.ndim - 1)
    xt = torch.tensor(np.moveaxis(x, axis, torch_axis), dtype=torch.float64, requires_grad=True)
    if target.dtype.kind == "f":
        tt = torch.tensor(np.moveaxis(target, axis, torch_axis), dtype=torch.float64)
    else:
        tt = torch.tensor(target, dtype=torch.int64)
    wt = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    loss = torch.nn.functional.cross_entropy(xt, tt, weight=wt, **kwargs)
    loss.sum().backward()
    grad = np.moveaxis(xt.grad.numpy(), torch_axis, axis)
    return loss.detach().numpy(), grad


# (shape, our class axis): class axis last, torch's layout (axis 1), and elsewhere.
TORCH_LAYOUTS = [
    ((7, 5), -1),
    ((5,), 0),
    ((4, 5, 3), 1),
    ((2, 3, 4, 5), 1),
    ((4, 3, 6), 0),
    ((3, 2, 6), 2),
]
TARGET_KINDS = ["index", "index_some_ignored", "index_all_ignored", "probabilities"]


def make_target(
    rng: np.random.Generator, kind: str, shape: tuple[int, ...], axis: int
) -> np.ndarray:
    """Index targets (all valid, some ignored, all ignored) or probabilities (rows sum to 1)."""
    n_classes = shape[axis]
    rows = row_shape(shape, axis)
    if kind == "probabilities":
        return random_probabilities(rng, shape, axis)
    target = rng.integers(0, n_classes, size=rows)
    if kind == "index_some_ignored":
        target[rng.random(rows) < 0.4] = -100
        target.flat[0] = -100
    elif kind == "index_all_ignored":
        target[...] = -100
    return target


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("kind", TARGET_KINDS)
@pytest.mark.parametrize(("shape", "axis"), TORCH_LAYOUTS)
def test_cross_entropy_and_grad_equal_torch(
    torch: Any,
    shape: tuple[int, ...],
    axis: int,
    kind: str,
    weighted: bool,
    label_smoothing: float,
    reduction: str,
) -> None:
    """Loss and gradient equal torch's cross_entropy + autograd for every option torch has."""
    rng = np.random.default_rng([len(shape), axis % len(shape), TARGET_KINDS.index(kind)])
    x = random_logits(rng, shape)
    target = make_target(rng, kind, shape, axis)
    weight = rng.uniform(0.2, 2.0, size=shape[axis]) if weighted else None
    options = dict(weight=weight, reduction=reduction, label_smoothing=label_smoothing)
    expected_loss, expected_grad = torch_cross_entropy(torch, x, target, axis, **options)
    loss = ref.cross_entropy(x, target, axis=axis, **options)
    loss2, grad = ref.cross_entropy_with_grad(x, target, axis=axis, **options)
    scale = term_scale(x, target, axis, **options)
    assert_close(loss, expected_loss, scale=scale)
    assert_close(loss2, expected_loss, scale=scale)
    assert_close(grad, expected_grad, scale=scale)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("ignore_index", [0, 2, -1, 7])
def test_custom_ignore_index_equals_torch(torch: Any, ignore_index: int, reduction: str) -> None:
    """Any ignore_index (a real class, a negative number) drops exactly those rows, as torch."""
    rng = np.random.default_rng(5)
    x = random_logits(rng, (9, 4))
    target = rng.integers(0, 4, size=9)
    target[[1, 4]] = ignore_index
    weight = rng.uniform(0.5, 2.0, size=4)
    options = dict(
        weight=weight, reduction=reduction, label_smoothing=0.2, ignore_index=ignore_index
    )
    expected_loss, expected_grad = torch_cross_entropy(torch, x, target, **options)
    loss, grad = ref.cross_entropy_with_grad(x, target, **options)
    scale = term_scale(x, target, **options)
    assert_close(loss, expected_loss, scale=scale)
    assert_close(grad, expected_grad, scale=scale)
    assert np.all(grad[target == ignore_index] == 0)


def test_all_rows_ignored_gives_nan_mean_zero_sum_and_zero_gradient(torch: Any) -> None:
    """All rows ignored: mean NaN, sum 0, none all 0; gradient exactly 0 (torch's too)."""
    x = random_logits(np.random.default_rng(1), (4, 3))
    target = np.full(4, -100)
    for reduction, expected in [("mean", NAN), ("sum", 0.0), ("none", np.zeros(4))]:
        loss, grad = ref.cross_entropy_with_grad(
            x, target, reduction=reduction, label_smoothing=0.1
        )
        assert_close(loss, expected)
        assert np.array_equal(grad, np.zeros_like(x))
        torch_loss, torch_grad = torch_cross_entropy(
            torch, x, target, reduction=reduction, label_smoothing=0.1
        )
        assert_close(loss, torch_loss)
        assert np.array_equal(grad, torch_grad)


def test_zero_weight_sum_gives_nan_mean_as_torch(torch: Any) -> None:
    """W = sum s_n w[y_n] = 0 over kept rows: mean and kept rows' gradient are 0/0 = NaN as in
    torch, while ignored rows' gradient stays exactly 0."""
    x = random_logits(np.random.default_rng(2), (3, 4))
    target = np.array([1, -100, 1])
    weight = np.array([1.0, 0.0, 1.0, 1.0])
    loss, grad = ref.cross_entropy_with_grad(x, target, weight=weight)
    torch_loss, torch_grad = torch_cross_entropy(torch, x, target, weight=weight)
    assert np.isnan(loss) and np.isnan(torch_loss)
    assert_close(grad, torch_grad)
    assert np.all(np.isnan(grad[[0, 2]]))
    assert np.array_equal(grad[1], np.zeros(4))


# Rows with non-finite or extreme logits; row 1 is always an ordinary row that must stay exact.
SPECIAL_ROWS = {
    "-inf entry": [-INF, 1.0, 2.0, 0.5],
    "-inf at target": [1.0, -INF, 2.0, 0.5],
    "all -inf": [-INF, -INF, -INF, -INF],
    "nan": [0.0, NAN, 1.0, 2.0],
    "+inf": [INF, 1.0, -INF, 0.0],
    "+-1e4": [1e4, -1e4, 0.0, 3.0],
    "all 1e4": [1e4, 1e4, 1e4 - 1, 1e4 + 2],
    "+-1e200": [1e200, 0.0, -1e200, 5.0],  # lse**2 overflows: z = 0 must skip that term
}


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(("label_smoothing", "weighted"), [(0.0, False), (0.1, True)])
@pytest.mark.parametrize("kind", ["index", "probabilities"])
@pytest.mark.parametrize("row", list(SPECIAL_ROWS))
def test_non_finite_and_extreme_logits_equal_torch(
    torch: Any, row: str, kind: str, label_smoothing: float, weighted: bool, reduction: str
) -> None:
    """-inf entries, all--inf rows, NaN, +inf and +-1e4 logits: loss and gradient as torch."""
    x = np.array([SPECIAL_ROWS[row], [0.3, -1.2, 2.2, 0.1], [1.0, 2.0, 3.0, 4.0]])
    if kind == "index":
        target: np.ndarray = np.array([1, 2, 0])
    else:
        target = np.array([[0.0, 0.5, 0.5, 0.0], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    weight = np.array([0.5, 1.0, 2.0, 1.5]) if weighted else None
    options = dict(weight=weight, reduction=reduction, label_smoothing=label_smoothing)
    expected_loss, expected_grad = torch_cross_entropy(torch, x, target, **options)
    loss, grad = ref.cross_entropy_with_grad(x, target, **options)
    assert_close(loss, expected_loss)
    assert_close(grad, expected_grad)
    assert np.all(np.isfinite(grad[1:]))


@given(data=st.data())
@settings(max_examples=50, deadline=None)
def test_random_options_equal_torch(torch: Any, data: st.DataObject) -> None:
    """Hypothesis over shapes (class axis anywhere), targets and every option torch has."""
    ndim = data.draw(st.integers(1, 4), label="ndim")
    sizes = st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)
    shape = tuple(data.draw(sizes, label="shape"))
    axis = data.draw(st.integers(-ndim, ndim - 1), label="axis")
    kind = data.draw(st.sampled_from(TARGET_KINDS), label="kind")
    reduction = data.draw(st.sampled_from(["none", "mean", "sum"]), label="reduction")
    eps = data.draw(st.sampled_from([0.0, 0.05, 0.5, 1.0]), label="label_smoothing")
    weighted = data.draw(st.booleans(), label="weighted")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    x = random_logits(rng, shape, scale=data.draw(st.sampled_from([0.1, 3.0, 30.0]), label="scale"))
    target = make_target(rng, kind, shape, axis % ndim)
    weight = rng.uniform(0.1, 3.0, size=shape[axis]) if weighted else None
    options = dict(weight=weight, reduction=reduction, label_smoothing=eps)
    expected_loss, expected_grad = torch_cross_entropy(torch, x, target, axis, **options)
    loss, grad = ref.cross_entropy_with_grad(x, target, axis=axis, **options)
    scale = term_scale(x, target, axis, **options)
    assert_close(loss, expected_loss, scale=scale)
    assert_close(grad, expected_grad, scale=scale)


def test_nan_in_ignored_row_gives_zero_not_nan_deliberately_unlike_torch(torch: Any) -> None:
    """SPEC: ignored rows contribute nothing, so NaN logits there leave loss and gradient exact.

    torch agrees on the loss but its log_softmax backward gives the ignored row a NaN gradient
    (0 * exp(NaN)); softmaxloss deliberately gives 0.
    """
    x = np.array([[NAN, 1.0, 2.0], [0.0, 1.0, 2.0]])
    target = np.array([-100, 1])
    loss, grad = ref.cross_entropy_with_grad(x, target, reduction="sum", label_smoothing=0.1)
    torch_loss, torch_grad = torch_cross_entropy(
        torch, x, target, reduction="sum", label_smoothing=0.1
    )
    assert_close(loss, torch_loss)
    assert np.array_equal(grad[0], np.zeros(3))
    assert_close(grad[1], torch_grad[1])
    assert np.all(np.isnan(torch_grad[0]))  # if torch changes this, the note can go


# -- the zero-coefficient rule ---------------------------------------------------------------


def test_terms_with_zero_coefficient_are_skipped_not_multiplied_by_zero() -> None:
    """-l = +inf at a -inf logit must not leak into a term whose coefficient is 0 (0*inf=NaN)."""
    x = np.array([[-INF, 1.0, 2.0]])
    # eps = 0: the smoothing sum (which holds +inf) is not computed; z = 0: no lse term.
    loss, grad = ref.cross_entropy_with_grad(x, np.array([1]), label_smoothing=0.0)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert grad[0, 0] == 0.0
    # eps = 1: the (1-eps) * w[y] * -l[y] term (+inf at a -inf target) is not computed; the
    # smoothing sum is +inf, so the loss is +inf rather than 0 * inf = NaN (torch gives NaN here).
    loss, grad = ref.cross_entropy_with_grad(x, np.array([0]), label_smoothing=1.0)
    assert loss == INF
    assert_close(grad, (ref.softmax(x) - 1 / 3))
    # z = 0: the z * lse**2 term is not added (lse = 1e200 finite, lse**2 = inf, 0 * inf = NaN).
    loss, grad = ref.cross_entropy_with_grad(np.array([[1e200, 0.0]]), np.array([0]), z_loss=0.0)
    assert loss == 0.0 and np.array_equal(grad, np.zeros((1, 2)))
    # Products inside a term stay as the formula says: w[y] = 0 at a -inf target is 0 * inf.
    loss = ref.cross_entropy(x, np.array([0]), weight=np.array([0.0, 1.0, 1.0]), reduction="sum")
    assert np.isnan(loss)


def test_probability_target_zero_at_minus_inf_logit_is_nan_loss_finite_grad(torch: Any) -> None:
    """y'_c = 0 at a -inf logit: w_c y'_c (-l_c) = 0 * inf = NaN loss, finite gradient (torch)."""
    x = np.array([[-INF, 1.0, 2.0]])
    y = np.array([[0.0, 0.4, 0.6]])
    loss, grad = ref.cross_entropy_with_grad(x, y, reduction="sum")
    torch_loss, torch_grad = torch_cross_entropy(torch, x, y, reduction="sum")
    assert np.isnan(loss) and np.isnan(torch_loss)
    assert np.all(np.isfinite(grad))
    assert_close(grad, torch_grad)


# -- SciPy: softmax, log_softmax, logsumexp --------------------------------------------------


EXTREME_ROWS = [
    [1e4, -1e4, 0.0],
    [-1e4, -1e4, -1e4],
    [1e308, 1e308, -1e308],
    [-1e308, -1e308, 5.0],
    [-INF, 0.0, 1.0],
    [-INF, -INF, 3.0],
    [0.0, 0.0, 0.0],
    [1e-300, -1e-300, 0.0],
]


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize(("shape", "axis"), [((6,), 0), ((5, 4), -1), ((5, 4), 0), ((2, 3, 4), 1)])
def test_random_equal_scipy(
    scipy_special: Any, name: str, shape: tuple[int, ...], axis: int
) -> None:
    """softmax/log_softmax/logsumexp equal scipy.special's on random input, any axis."""
    x = random_logits(np.random.default_rng(3), shape, scale=10.0)
    expected = getattr(scipy_special, name)(x, axis=axis)
    assert_close(getattr(ref, name)(x, axis), expected, scale=float(np.max(np.abs(x))))


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_extreme_rows_equal_scipy(scipy_special: Any, name: str) -> None:
    """+-1e4, +-1e308, tiny values and -inf entries: as scipy.special (no +inf; see below)."""
    x = np.array(EXTREME_ROWS)
    with np.errstate(over="ignore", invalid="ignore"):  # scipy warns on -1e308 - 1e308
        expected = getattr(scipy_special, name)(x, axis=-1)
    assert_close(getattr(ref, name)(x), expected)


def test_logsumexp_keepdims_equals_scipy(scipy_special: Any) -> None:
    """keepdims keeps the class axis with length 1."""
    x = random_logits(np.random.default_rng(4), (3, 4, 5))
    result = ref.logsumexp(x, 1, keepdims=True)
    assert result.shape == (3, 1, 5)
    assert_close(result, scipy_special.logsumexp(x, axis=1, keepdims=True))


@given(data=st.data())
@settings(max_examples=50, deadline=None)
def test_random_arrays_equal_scipy(scipy_special: Any, data: st.DataObject) -> None:
    """Hypothesis over shapes, axes and magnitudes: all three functions equal scipy's."""
    ndim = data.draw(st.integers(1, 3))
    shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    axis = data.draw(st.integers(-ndim, ndim - 1))
    scale = data.draw(st.sampled_from([1e-3, 1.0, 50.0, 1e4]))
    x = random_logits(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))), shape, scale)
    for name in ["softmax", "log_softmax", "logsumexp"]:
        expected = getattr(scipy_special, name)(x, axis=axis)
        assert_close(getattr(ref, name)(x, axis), expected, scale=float(np.max(np.abs(x))))


# -- SPEC's non-finite semantics, stated directly (and checked against torch) -------------------


def test_softmax_minus_inf_entries_are_exact_zeros() -> None:
    """-inf next to finite entries: probability exactly 0, log-probability exactly -inf."""
    x = np.array([[-INF, 0.0, 1.0, -INF]])
    p, log_p = ref.softmax(x), ref.log_softmax(x)
    assert p[0, 0] == 0.0 and p[0, 3] == 0.0
    assert log_p[0, 0] == -INF and log_p[0, 3] == -INF
    assert_close(p[0, 1:3], np.exp([0.0, 1.0]) / np.sum(np.exp([0.0, 1.0])))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize(
    "row", [[-INF, -INF, -INF], [NAN, 0.0, 1.0], [INF, 0.0, 1.0], [INF, INF, -INF]]
)
def test_softmax_bad_rows_are_nan_rows_others_untouched(
    torch: Any, name: str, row: list[float]
) -> None:
    """All -inf, any NaN, any +inf: a NaN row (as torch), the other rows exact."""
    x = np.array([row, [0.5, 1.5, -2.0]])
    result = getattr(ref, name)(x)
    assert np.all(np.isnan(result[0]))
    assert_close(result, getattr(torch, name)(torch.tensor(x), -1).numpy())
    assert_close(result[1], getattr(ref, name)(x[1]))


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ([INF, 1.0], INF),
        ([INF, INF], INF),
        ([INF, -INF], INF),
        ([-INF, -INF], -INF),
        ([-INF, 1.0], 1.0),
        ([NAN, 1.0], NAN),
        ([INF, NAN], NAN),
    ],
)
def test_logsumexp_non_finite_rows_as_torch(torch: Any, row: list[float], expected: float) -> None:
    """+inf in a row gives +inf, all -inf gives -inf, NaN gives NaN: torch.logsumexp's answers."""
    result = ref.logsumexp(np.array(row))
    assert_close(result, expected)
    assert_close(result, torch.logsumexp(torch.tensor(row, dtype=torch.float64), -1).numpy())


def test_empty_class_axis_gives_empty_softmax_and_minus_inf_logsumexp() -> None:
    """A length-0 class axis: empty softmax/log_softmax, logsumexp -inf (as scipy and torch)."""
    x = np.zeros((2, 0))
    assert ref.softmax(x).shape == (2, 0)
    assert ref.log_softmax(x).shape == (2, 0)
    assert np.array_equal(ref.logsumexp(x), [-INF, -INF])
    assert ref.softmax(np.zeros((0, 3))).shape == (0, 3)
    assert ref.logsumexp(np.zeros((0, 3))).shape == (0,)


def test_loss_nan_rows_stay_in_their_row() -> None:
    """NaN, +inf and all--inf rows give NaN loss and gradient for that row only."""
    x = np.array([[NAN, 1.0, 2.0], [0.0, 1.0, 2.0], [INF, 0.0, 0.0], [-INF, -INF, -INF]])
    target = np.array([0, 1, 2, 0])
    loss, grad = ref.cross_entropy_with_grad(x, target, reduction="none", z_loss=0.1)
    assert np.all(np.isnan(loss[[0, 2, 3]])) and np.all(np.isnan(grad[[0, 2, 3]]))
    expected_loss, expected_grad = ref.cross_entropy_with_grad(
        x[1:2], target[1:2], reduction="none", z_loss=0.1
    )
    assert_close(loss[1], expected_loss[0])
    assert_close(grad[1], expected_grad[0])


# -- SPEC's formulas row by row in 40-digit arithmetic (options torch does not have) ---------


def exact_cross_entropy(
    x: np.ndarray,
    target: np.ndarray,
    *,
    axis: int = -1,
    weight: np.ndarray | None = None,
    sample_weight: np.ndarray | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """SPEC.md's loss and gradient, one row at a time, in 40-digit decimal arithmetic.

    An independent oracle: no max shift, no vectorisation, correctly rounded exp and ln (the
    standard library's decimal module), finite logits only.
    """
    with decimal.localcontext() as context:
        context.prec = 40
        D = decimal.Decimal
        axis %= x.ndim
        n_classes = x.shape[axis]
        classes = range(n_classes)
        probabilities = target.dtype.kind == "f"
        rows = row_shape(x.shape, axis)
        xs = np.moveaxis(x, axis, -1).reshape(-1, n_classes)
        if probabilities:
            ys = np.moveaxis(target, axis, -1).reshape(-1, n_classes)
        else:
            ys = target.reshape(-1)
        w = [D(1)] * n_classes if weight is None else [D(float(v)) for v in weight]
        ss = np.ones(len(xs)) if sample_weight is None else sample_weight.reshape(-1)
        eps, z = D(label_smoothing), D(z_loss)
        losses, grads, normaliser = [], [], D(0)
        for n in range(len(xs)):
            s = D(float(ss[n]))
            lse = sum(D(float(v)).exp() for v in xs[n]).ln()
            log_p = [D(float(v)) - lse for v in xs[n]]
            p = [v.exp() for v in log_p]
            if probabilities:
                yp = [(1 - eps) * D(float(v)) + eps / n_classes for v in ys[n]]
                sum_wy = sum(w[c] * yp[c] for c in classes)
                loss = s * (sum(-w[c] * yp[c] * log_p[c] for c in classes) + z * lse**2)
                grad = [s * (sum_wy * p[c] - w[c] * yp[c] + 2 * z * lse * p[c]) for c in classes]
                normaliser += s
            elif ys[n] == ignore_index:
                loss, grad = D(0), [D(0)] * n_classes
            else:
                y = int(ys[n])
                smooth = sum(-w[c] * log_p[c] for c in classes)
                loss = s * ((1 - eps) * w[y] * -log_p[y] + eps / n_classes * smooth + z * lse**2)
                grad = [
                    s
                    * (
                        (1 - eps) * w[y] * (p[c] - (1 if c == y else 0))
                        + eps / n_classes * (sum(w) * p[c] - w[c])
                        + 2 * z * lse * p[c]
                    )
                    for c in classes
                ]
                normaliser += s * w[y]
            losses.append(loss)
            grads.append(grad)
        if reduction == "mean":
            total = sum(losses) / normaliser
            losses = [total]
            grads = [[g / normaliser for g in row] for row in grads]
        elif reduction == "sum":
            losses = [sum(losses)]
    loss_array = np.array([float(v) for v in losses])
    loss_array = loss_array.reshape(rows) if reduction == "none" else loss_array.reshape(())
    grad_array = np.array([[float(g) for g in row] for row in grads]).reshape(rows + (n_classes,))
    return loss_array, np.moveaxis(grad_array, -1, axis)


ALL_OPTIONS = [
    dict(),
    dict(sample_weight=True),
    dict(z_loss=0.01),
    dict(z_loss=0.3, sample_weight=True),
    dict(weight=True, sample_weight=True, label_smoothing=0.2, z_loss=0.05),
    dict(weight=True, sample_weight=True, label_smoothing=1.0, z_loss=0.05),
]


def resolve_options(
    rng: np.random.Generator, options: dict[str, Any], shape: tuple[int, ...], axis: int
) -> dict[str, Any]:
    """Replace weight=True / sample_weight=True by random arrays of the right shape."""
    resolved = dict(options)
    if resolved.get("weight") is True:
        resolved["weight"] = rng.uniform(0.2, 2.0, size=shape[axis])
    if resolved.get("sample_weight") is True:
        resolved["sample_weight"] = rng.uniform(0.0, 3.0, size=row_shape(shape, axis))
    return resolved


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("kind", ["index", "index_some_ignored", "probabilities"])
@pytest.mark.parametrize("options", ALL_OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize(("shape", "axis"), [((6, 4), -1), ((3, 4, 2), 1)])
def test_every_option_equals_spec_formulas_in_exact_arithmetic(
    shape: tuple[int, ...], axis: int, options: dict[str, Any], kind: str, reduction: str
) -> None:
    """sample_weight, z_loss, class weights and smoothing together: SPEC's formulas evaluated
    row by row in 40-digit arithmetic give the same loss and gradient."""
    rng = np.random.default_rng(6)
    x = random_logits(rng, shape)
    target = make_target(rng, kind, shape, axis % len(shape))
    kwargs = resolve_options(rng, options, shape, axis % len(shape))
    kwargs.update(axis=axis, reduction=reduction)
    expected_loss, expected_grad = exact_cross_entropy(x, target, **kwargs)
    loss, grad = ref.cross_entropy_with_grad(x, target, **kwargs)
    assert_close(loss, expected_loss)
    assert_close(grad, expected_grad)
    assert_close(ref.cross_entropy(x, target, **kwargs), expected_loss)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("kind", ["index_some_ignored", "probabilities"])
def test_z_loss_adds_z_lse_squared_and_2_z_lse_p(reduction: str, kind: str) -> None:
    """z_loss adds s_n z lse_n^2 to each row's loss and s_n 2 z lse_n p_n to its gradient,
    lse and p computed directly (np.log(np.sum(np.exp(x)))), normalised like the rest."""
    rng = np.random.default_rng(7)
    x = random_logits(rng, (8, 5))
    target = make_target(rng, kind, (8, 5), 1)
    s = rng.uniform(0.5, 2.0, size=8)
    z = 0.25
    lse = np.log(np.sum(np.exp(x), axis=1))
    p = np.exp(x) / np.sum(np.exp(x), axis=1, keepdims=True)
    kept = np.ones(8, bool) if kind == "probabilities" else target != -100
    extra_loss = np.where(kept, s * z * lse**2, 0.0)
    extra_grad = np.where(kept[:, None], s[:, None] * 2 * z * lse[:, None] * p, 0.0)
    if reduction == "mean":
        normaliser = np.sum(s) if kind == "probabilities" else np.sum(s[kept])
        extra_loss, extra_grad = extra_loss.sum() / normaliser, extra_grad / normaliser
    elif reduction == "sum":
        extra_loss = extra_loss.sum()
    options = dict(sample_weight=s, reduction=reduction, label_smoothing=0.1)
    loss0, grad0 = ref.cross_entropy_with_grad(x, target, **options)
    loss, grad = ref.cross_entropy_with_grad(x, target, z_loss=z, **options)
    assert_close(loss, loss0 + extra_loss)
    assert_close(grad, grad0 + extra_grad)


@pytest.mark.parametrize("kind", ["index_some_ignored", "probabilities"])
def test_sample_weight_is_linear_in_the_per_row_losses(kind: str) -> None:
    """Loss with s equals sum_n s_n loss_n(none); gradient rows scale by s_n; the mean divides
    by sum s_n w[y_n] over kept rows (index targets) or by sum s_n (probability targets)."""
    rng = np.random.default_rng(8)
    x = random_logits(rng, (4, 5, 3))
    target = make_target(rng, kind, (4, 5, 3), 1)
    w = rng.uniform(0.5, 2.0, size=5)
    s = rng.uniform(0.0, 3.0, size=(4, 3))
    s[0, 0] = 0.0
    options = dict(axis=1, weight=w, label_smoothing=0.3, z_loss=0.02)
    rows, row_grads = ref.cross_entropy_with_grad(x, target, reduction="none", **options)
    weighted_rows, weighted_grads = ref.cross_entropy_with_grad(
        x, target, reduction="none", sample_weight=s, **options
    )
    assert_close(weighted_rows, s * rows)
    assert_close(weighted_grads, s[:, None, :] * row_grads)
    options["sample_weight"] = s
    total, grad = ref.cross_entropy_with_grad(x, target, reduction="sum", **options)
    assert_close(total, np.sum(s * rows))
    assert_close(grad, s[:, None, :] * row_grads)
    if kind == "probabilities":
        normaliser = np.sum(s)
    else:
        kept = target != -100
        normaliser = np.sum(s[kept] * w[target[kept]])
    mean, mean_grad = ref.cross_entropy_with_grad(x, target, reduction="mean", **options)
    assert_close(mean, np.sum(s * rows) / normaliser)
    assert_close(mean_grad, s[:, None, :] * row_grads / normaliser)


def test_probability_gradient_exact_for_rows_not_summing_to_one() -> None:
    """Probability targets need not sum to 1: gradient s ((sum_c w_c y'_c) p - w y'), checked
    by finite differences on unnormalised targets."""
    rng = np.random.default_rng(9)
    x = random_logits(rng, (3, 4))
    y = rng.uniform(0.0, 2.0, size=(3, 4))
    options = dict(weight=rng.uniform(0.5, 2.0, 4), label_smoothing=0.2, reduction="sum")
    _, grad = ref.cross_entropy_with_grad(x, y, **options)
    expected = finite_difference(lambda v: ref.cross_entropy(v, y, **options), x)
    assert_close(grad, expected, rtol=1e-8)


# -- finite differences ----------------------------------------------------------------------


def finite_difference(f: Any, x: np.ndarray, h: float = 1e-3) -> np.ndarray:
    """4th-order central difference of the scalar f at x, element by element."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        values = []
        for step in (2, 1, -1, -2):
            shifted = x.copy()
            shifted[index] += step * h
            values.append(float(f(shifted)))
        grad[index] = (-values[0] + 8 * values[1] - 8 * values[2] + values[3]) / (12 * h)
    return grad


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("kind", ["index", "index_some_ignored", "probabilities"])
@pytest.mark.parametrize("options", [ALL_OPTIONS[0], ALL_OPTIONS[4]], ids=["plain", "all_options"])
def test_gradient_equals_finite_differences(
    options: dict[str, Any], kind: str, reduction: str
) -> None:
    """grad of cross_entropy_with_grad is d(loss)/d(logits) (for "none": of sum of the rows),
    by a 4th-order central difference, class axis in the middle."""
    shape, axis = (3, 4, 2), 1
    rng = np.random.default_rng(10)
    x = random_logits(rng, shape, scale=1.5)
    target = make_target(rng, kind, shape, axis)
    kwargs = resolve_options(rng, options, shape, axis)
    _, grad = ref.cross_entropy_with_grad(x, target, axis=axis, reduction=reduction, **kwargs)

    def total_loss(v: np.ndarray) -> float:
        return float(np.sum(ref.cross_entropy(v, target, axis=axis, reduction=reduction, **kwargs)))

    assert_close(grad, finite_difference(total_loss, x), rtol=1e-8)


# -- scikit-learn: gradient_hessian -----------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("n_classes", [2, 3, 7])
def test_gradient_hessian_equals_sklearn(n_classes: int, weighted: bool) -> None:
    """(p - onehot, p (1 - p)) times sample_weight, as sklearn's HalfMultinomialLoss."""
    loss_module = pytest.importorskip("sklearn._loss.loss")
    rng = np.random.default_rng(11)
    x = random_logits(rng, (40, n_classes))
    labels = rng.integers(0, n_classes, size=40)
    s = rng.uniform(0.0, 3.0, size=40) if weighted else None
    sklearn_loss = loss_module.HalfMultinomialLoss(n_classes=n_classes)
    expected_grad, expected_hess = sklearn_loss.gradient_hessian(
        y_true=labels.astype(np.float64), raw_prediction=x, sample_weight=s
    )
    for y in (labels, labels.astype(np.float64)):  # sklearn passes labels as floats
        grad, hess = ref.gradient_hessian(x, y, sample_weight=s)
        assert_close(grad, expected_grad)
        assert_close(hess, expected_hess)


def test_gradient_hessian_out_and_in_place() -> None:
    """out=(grad_out, hess_out) is filled and returned; grad_out may be the logits itself."""
    rng = np.random.default_rng(12)
    x = random_logits(rng, (6, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=6)
    grad, hess = ref.gradient_hessian(x, labels)
    assert grad.dtype == hess.dtype == np.float32
    outs = (np.empty_like(x), np.empty_like(x))
    result = ref.gradient_hessian(x, labels, out=outs)
    assert result[0] is outs[0] and result[1] is outs[1]
    assert np.array_equal(outs[0], grad) and np.array_equal(outs[1], hess)
    hess_out = np.empty_like(x)
    result = ref.gradient_hessian(x, labels, out=(x, hess_out))
    assert result[0] is x
    assert np.array_equal(x, grad) and np.array_equal(hess_out, hess)


# -- dtypes, return types, layouts, inputs untouched, out= --------------------------------------


def all_functions(x: np.ndarray) -> dict[str, Any]:
    """Every public function called on 2-D logits x (class axis 1); values to compare."""
    target = np.arange(x.shape[0]) % x.shape[1]
    return {
        "softmax": ref.softmax(x),
        "log_softmax": ref.log_softmax(x),
        "logsumexp": ref.logsumexp(x),
        "cross_entropy": ref.cross_entropy(x, target),
        "cross_entropy none": ref.cross_entropy(x, target, reduction="none"),
        "cross_entropy_with_grad": ref.cross_entropy_with_grad(x, target, label_smoothing=0.1),
        "gradient_hessian": ref.gradient_hessian(x, target),
    }


def flat_results(results: dict[str, Any]) -> list[tuple[str, Any]]:
    flat = []
    for name, value in results.items():
        if isinstance(value, tuple):
            flat += [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        else:
            flat.append((name, value))
    return flat


@pytest.mark.parametrize(
    ("dtype", "result_dtype"),
    [
        (np.float16, np.float16),
        (np.float32, np.float32),
        (np.float64, np.float64),
        (">f4", np.float32),
        (">f8", np.float64),
        (np.int32, np.float64),
        (np.uint8, np.float64),
        (np.bool_, np.float64),
    ],
)
def test_results_come_back_in_the_result_dtype(dtype: Any, result_dtype: Any) -> None:
    """float16/32/64 in -> same dtype out (native byte order); ints and bools -> float64. The
    values are the float64 computation rounded once to that dtype."""
    x64 = np.array([[1.0, 0.0, 3.0], [2.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    x = x64.astype(dtype)
    exact = dict(flat_results(all_functions(x.astype(np.float64))))
    for name, value in flat_results(all_functions(x)):
        assert value.dtype == np.dtype(result_dtype), name
        assert value.dtype.isnative, name
        assert np.array_equal(value, np.asarray(exact[name]).astype(result_dtype)), name


def test_float16_results_round_once_and_overflow_to_inf_quietly() -> None:
    """float16 logits: computed in float64, rounded once; values beyond float16's range become
    +-inf in the result without a warning (warnings are errors in this suite)."""
    x = np.array([[60000.0, -60000.0, 0.0]], dtype=np.float16)
    log_p = ref.log_softmax(x)
    assert log_p.dtype == np.float16 and log_p[0, 1] == -INF and log_p[0, 0] == 0.0
    out = np.empty_like(x)
    assert ref.log_softmax(x, out=out)[0, 1] == -INF
    loss = ref.cross_entropy(x, np.array([1]))
    assert type(loss) is np.float16 and loss == INF
    assert ref.cross_entropy(x, np.array([0]), z_loss=1.0) == INF
    assert ref.logsumexp(x)[()] == np.float16(60000.0)


def test_reductions_return_numpy_scalars_and_none_returns_arrays() -> None:
    """mean/sum (and 1-D logits) give a NumPy scalar of the result dtype; none an ndarray."""
    x = np.zeros((3, 4), dtype=np.float32)
    target = np.array([0, 1, 2])
    for reduction in ("mean", "sum"):
        assert type(ref.cross_entropy(x, target, reduction=reduction)) is np.float32
        assert type(ref.cross_entropy_with_grad(x, target, reduction=reduction)[0]) is np.float32
    rows = ref.cross_entropy(x, target, reduction="none")
    assert type(rows) is np.ndarray and rows.shape == (3,) and rows.dtype == np.float32
    assert type(ref.cross_entropy(x[0], np.array(1), reduction="none")) is np.float32
    assert type(ref.logsumexp(x[0])) is np.float32
    assert type(ref.logsumexp(x)) is np.ndarray


@pytest.mark.parametrize("dtype", [np.complex128, object, "U3", np.dtype("datetime64[s]")])
def test_non_real_logits_are_refused_with_type_error(dtype: Any) -> None:
    """Complex, object, string and datetime logits: TypeError naming the dtype, every function."""
    x = np.ones((2, 3)).astype(dtype)
    target = np.array([0, 1])
    calls = [
        lambda: ref.softmax(x),
        lambda: ref.log_softmax(x),
        lambda: ref.logsumexp(x),
        lambda: ref.cross_entropy(x, target),
        lambda: ref.cross_entropy_with_grad(x, target),
        lambda: ref.gradient_hessian(x, target),
    ]
    for call in calls:
        with pytest.raises(TypeError, match=re.escape(str(np.dtype(dtype)))):
            call()


def layouts(x: np.ndarray) -> dict[str, np.ndarray]:
    """x in C order, Fortran order, as a strided view, read-only and byte-swapped."""
    strided = np.zeros((x.shape[0], 2 * x.shape[1] + 1))[:, 1::2]
    strided[...] = x
    readonly = x.copy()
    readonly.flags.writeable = False
    swapped = x.astype(x.dtype.newbyteorder(">" if x.dtype.byteorder in "=<" else "<"))
    return {
        "C": np.ascontiguousarray(x),
        "F": np.asfortranarray(x),
        "strided": strided,
        "readonly": readonly,
        "byteswapped": swapped,
    }


@pytest.mark.parametrize("layout", ["C", "F", "strided", "readonly", "byteswapped"])
def test_any_memory_layout_gives_the_same_results_and_leaves_inputs_unchanged(layout: str) -> None:
    """Fortran, strided, read-only and non-native byte order inputs: same results as C order,
    and no input array is modified."""
    rng = np.random.default_rng(13)
    x = random_logits(rng, (5, 4))
    target = rng.integers(0, 4, size=5)
    y = random_probabilities(rng, (5, 4), 1)
    w, s = rng.uniform(0.5, 2, 4), rng.uniform(0.5, 2, 5)
    xl, yl, wl, sl = (layouts(a)[layout] for a in (x, y, w[None], s[None]))
    wl, sl = wl[0], sl[0]
    before = [a.copy() for a in (xl, yl, wl, sl)]
    expected = dict(flat_results(all_functions(x)))
    for name, value in flat_results(all_functions(xl)):
        assert np.array_equal(value, expected[name]), name
    for tgt, tgt_layout in ((target, target), (y, yl)):
        full = dict(weight=w, sample_weight=s, label_smoothing=0.1, z_loss=0.1)
        full_layout = dict(weight=wl, sample_weight=sl, label_smoothing=0.1, z_loss=0.1)
        expected = ref.cross_entropy_with_grad(x, tgt, **full)
        actual = ref.cross_entropy_with_grad(xl, tgt_layout, **full_layout)
        assert expected[0] == actual[0]
        assert np.array_equal(expected[1], actual[1])
    assert ref.gradient_hessian(xl, target, sample_weight=sl)[1].tolist() == (
        ref.gradient_hessian(x, target, sample_weight=s)[1].tolist()
    )
    for original, after in zip(before, (xl, yl, wl, sl)):
        assert np.array_equal(original, after)
        assert original.dtype == after.dtype


def test_out_is_filled_and_returned() -> None:
    """out= returns the very same object, holding what the call without out returns."""
    rng = np.random.default_rng(14)
    x = random_logits(rng, (4, 3)).astype(np.float32)
    target = rng.integers(0, 3, size=4)
    for name in ("softmax", "log_softmax"):
        out = np.full_like(x, NAN)
        assert getattr(ref, name)(x, out=out) is out
        assert np.array_equal(out, getattr(ref, name)(x))
    out = np.full_like(x, NAN)
    loss, grad = ref.cross_entropy_with_grad(x, target, out=out)
    assert grad is out
    expected_loss, expected_grad = ref.cross_entropy_with_grad(x, target)
    assert loss == expected_loss and np.array_equal(grad, expected_grad)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "cross_entropy_with_grad"])
def test_out_may_be_the_logits_for_an_in_place_update(name: str) -> None:
    """out=logits overwrites the logits with exactly the out-of-place result."""
    rng = np.random.default_rng(15)
    x = random_logits(rng, (3, 5, 4))
    target = rng.integers(0, 5, size=(3, 4))
    if name == "cross_entropy_with_grad":
        options = dict(axis=1, weight=rng.uniform(0.5, 2, 5), label_smoothing=0.2, z_loss=0.1)
        expected_loss, expected = ref.cross_entropy_with_grad(x, target, **options)
        loss, result = ref.cross_entropy_with_grad(x, target, out=x, **options)
        assert loss == expected_loss
    else:
        expected = getattr(ref, name)(x, 1)
        result = getattr(ref, name)(x, 1, out=x)
    assert result is x
    assert np.array_equal(x, expected)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_one_class_gives_zero_loss_and_gradient(reduction: str) -> None:
    """C = 1: p = 1, loss 0 and gradient 0 for any logit value."""
    x = np.array([[3.0], [-7.0], [1e4]])
    loss, grad = ref.cross_entropy_with_grad(x, np.zeros(3, dtype=int), reduction=reduction)
    assert np.all(loss == 0.0) and np.all(grad == 0.0)
    assert np.all(ref.softmax(x) == 1.0)


@pytest.mark.parametrize("kind", ["index", "probabilities"])
def test_zero_rows_mean_nan_sum_zero_none_empty(kind: str) -> None:
    """No rows: mean NaN (0/0, as torch), sum 0, none empty; gradient empty of logits' shape."""
    x = np.zeros((0, 3))
    target = np.zeros((0, 3)) if kind == "probabilities" else np.zeros(0, dtype=np.int64)
    loss, grad = ref.cross_entropy_with_grad(x, target)
    assert np.isnan(loss) and grad.shape == (0, 3)
    assert ref.cross_entropy(x, target, reduction="sum") == 0.0
    assert ref.cross_entropy(x, target, reduction="none").shape == (0,)


# -- validation: every bad input gets a clear error, raised before any work --------------------


X = np.zeros((3, 5))
T = np.array([0, 1, 2])
Y = np.full((3, 5), 0.2)


def readonly_zeros(shape: tuple[int, ...]) -> np.ndarray:
    array = np.zeros(shape)
    array.flags.writeable = False
    return array


def bad(id: str, call: Any, error: type[Exception], message: str) -> Any:
    return pytest.param(call, error, message, id=id)


BAD_LOSS_ARGUMENTS = [
    bad("index target shape", lambda: ref.cross_entropy(X, np.array([0, 1])), ValueError,
        r"shape \(2,\); logits of shape \(3, 5\) with class axis 1 need shape \(3,\)"),
    bad("probability target shape", lambda: ref.cross_entropy(X, np.zeros((3, 4))), ValueError,
        r"shape \(3, 4\); it must have the logits' shape \(3, 5\)"),
    bad("weight length", lambda: ref.cross_entropy(X, T, weight=np.ones(4)), ValueError,
        r"one entry per class, shape \(5,\); got shape \(4,\)"),
    bad("sample_weight shape", lambda: ref.cross_entropy(X, T, sample_weight=np.ones(4)),
        ValueError, r"sample_weight has shape \(4,\); .* shape \(3,\)"),
    bad("label_smoothing < 0", lambda: ref.cross_entropy(X, T, label_smoothing=-0.1),
        ValueError, r"label_smoothing must be in \[0, 1\]; got -0.1"),
    bad("label_smoothing > 1", lambda: ref.cross_entropy(X, T, label_smoothing=1.5),
        ValueError, r"label_smoothing must be in \[0, 1\]; got 1.5"),
    bad("label_smoothing nan", lambda: ref.cross_entropy(X, T, label_smoothing=NAN),
        ValueError, r"label_smoothing must be in \[0, 1\]"),
    bad("label_smoothing str", lambda: ref.cross_entropy(X, T, label_smoothing="a"),
        TypeError, r"label_smoothing must be a real number"),
    bad("negative z_loss", lambda: ref.cross_entropy(X, T, z_loss=-1.0), ValueError,
        r"z_loss must be in \[0, inf\); got -1.0"),
    bad("unknown reduction", lambda: ref.cross_entropy(X, T, reduction="avg"), ValueError,
        r"reduction must be one of 'none', 'mean', 'sum'; got 'avg'"),
    bad("reduction None", lambda: ref.cross_entropy_with_grad(X, T, reduction=None),
        ValueError, r"reduction must be one of 'none', 'mean', 'sum'; got None"),
    bad("zero classes", lambda: ref.cross_entropy(np.zeros((3, 0)), T), ValueError,
        r"zero classes \(shape \(3, 0\), class axis 1\)"),
    bad("scalar logits", lambda: ref.cross_entropy(np.float64(1.0), np.array(0)), ValueError,
        r"at least one dimension"),
    bad("label too large", lambda: ref.cross_entropy(X, np.array([0, 5, 1])), ValueError,
        r"target value 5 at position \(1,\) is out of range for 5 classes"),
    bad("negative label", lambda: ref.cross_entropy(X, np.array([0, 1, -1])), ValueError,
        r"target value -1 at position \(2,\) .* or target == ignore_index \(-100\)"),
    bad("N-D label position",
        lambda: ref.cross_entropy(np.zeros((2, 3, 4)), np.array([[0, 1, 2, 0], [0, 0, 9, 0]]),
                                  axis=1),
        ValueError, r"target value 9 at position \(1, 2\)"),
    bad("huge uint64 label",
        lambda: ref.cross_entropy(X, np.array([0, 2**64 - 1, 1], dtype=np.uint64)),
        ValueError, r"target value 18446744073709551615 at position \(1,\)"),
    bad("ignore_index with probabilities", lambda: ref.cross_entropy(X, Y, ignore_index=0),
        ValueError, r"ignore_index applies to class-index targets only"),
    bad("ignore_index not an int", lambda: ref.cross_entropy(X, T, ignore_index=1.5),
        TypeError, r"ignore_index must be an integer"),
    bad("bool target", lambda: ref.cross_entropy(X, np.array([True, False, True])), TypeError,
        r"target must hold integer class indices or float probabilities; got dtype bool"),
    bad("complex weight", lambda: ref.cross_entropy(X, T, weight=np.ones(5, complex)),
        TypeError, r"weight must be a real numeric array"),
]

BAD_AXES_AND_THREADS = [
    bad("axis out of range", lambda: ref.cross_entropy(X, T, axis=2), AxisError,
        r"axis 2 is out of bounds for array of dimension 2"),
    bad("axis -3", lambda: ref.cross_entropy_with_grad(X, T, axis=-3), AxisError,
        r"axis -3 is out of bounds"),
    bad("softmax axis", lambda: ref.softmax(X, 2), AxisError, r"out of bounds"),
    bad("log_softmax axis", lambda: ref.log_softmax(X, -3), AxisError, r"out of bounds"),
    bad("logsumexp axis", lambda: ref.logsumexp(X, 5), AxisError, r"out of bounds"),
    bad("softmax of a scalar along axis 1", lambda: ref.softmax(np.float64(1.0), 1), AxisError,
        r"out of bounds"),
    bad("logsumexp repeated axis", lambda: ref.logsumexp(X, (0, -2)), ValueError, r"repeats an axis"),
    bad("logsumexp b shape", lambda: ref.logsumexp(X, b=np.ones(4)), ValueError, r"does not broadcast"),
    bad("softmax dtype", lambda: ref.softmax(X, dtype=np.int64), TypeError, r"dtype must be float16"),
    bad("axis float", lambda: ref.softmax(X, 1.0), TypeError, r"axis must be an integer"),
    bad("axis bool", lambda: ref.logsumexp(X, True), TypeError, r"axis must be an integer"),
    bad("n_threads 0", lambda: ref.cross_entropy(X, T, n_threads=0), ValueError,
        r"n_threads must be None or a positive integer, got 0"),
    bad("n_threads float", lambda: ref.softmax(X, n_threads=1.5), TypeError,
        r"n_threads must be None or a positive integer"),
    bad("n_threads bool", lambda: ref.logsumexp(X, n_threads=True), TypeError, r"n_threads"),
    bad("n_threads negative", lambda: ref.gradient_hessian(X, T, n_threads=-1), ValueError,
        r"n_threads"),
]

BAD_OUT = [
    bad("out shape", lambda: ref.cross_entropy_with_grad(X, T, out=np.zeros((5, 3))),
        ValueError, r"out has shape \(5, 3\), expected \(3, 5\)"),
    bad("out dtype",
        lambda: ref.cross_entropy_with_grad(X, T, out=np.zeros((3, 5), np.int64)),
        TypeError, r"out has dtype int64, expected float64 \(or float16, float32 or float64"),
    bad("out read-only", lambda: ref.cross_entropy_with_grad(X, T, out=readonly_zeros((3, 5))),
        ValueError, r"out is read-only"),
    bad("out a list", lambda: ref.cross_entropy_with_grad(X, T, out=[[0.0] * 5] * 3),
        TypeError, r"out must be a numpy.ndarray, got list"),
    bad("out is the target", lambda: ref.cross_entropy_with_grad(X, Y, out=Y), ValueError,
        r"out shares memory with target"),
    bad("out overlaps logits", lambda: ref.cross_entropy_with_grad(Y[:, ::-1], T, out=Y),
        ValueError, r"out overlaps the logits without being the same array"),
    bad("softmax out shape", lambda: ref.softmax(X, out=np.zeros(5)), ValueError,
        r"out has shape \(5,\), expected \(3, 5\)"),
    bad("log_softmax out dtype", lambda: ref.log_softmax(X, out=np.zeros((3, 5), np.complex128)),
        TypeError, r"out has dtype complex128, expected float64"),
    bad("softmax out read-only", lambda: ref.softmax(X, out=readonly_zeros((3, 5))),
        ValueError, r"out is read-only"),
    bad("softmax out overlaps x", lambda: ref.softmax(Y[::-1], out=Y), ValueError,
        r"out overlaps the logits without being the same array"),
]

BAD_GRADIENT_HESSIAN = [
    bad("3-D logits", lambda: ref.gradient_hessian(np.zeros((2, 3, 4)), T), ValueError,
        r"logits must be 2-D \(n_samples, n_classes\); got shape \(2, 3, 4\)"),
    bad("labels shape", lambda: ref.gradient_hessian(X, np.array([0, 1])), ValueError,
        r"labels has shape \(2,\); logits of shape \(3, 5\) need shape \(3,\)"),
    bad("fractional labels", lambda: ref.gradient_hessian(X, np.array([0.0, 1.5, 2.0])),
        ValueError, r"labels given as floats must hold whole class numbers"),
    bad("huge float label", lambda: ref.gradient_hessian(X, np.array([0.0, 1e300, 2.0])),
        ValueError, r"labels value 1e\+300 at position \(1,\)"),
    bad("label out of range", lambda: ref.gradient_hessian(X, np.array([0, 5, 2])),
        ValueError, r"labels value 5 at position \(1,\) is out of range for 5 classes"),
    bad("bool labels", lambda: ref.gradient_hessian(X, np.array([True, False, True])),
        TypeError, r"labels must be integer class indices; got dtype bool"),
    bad("sample_weight shape", lambda: ref.gradient_hessian(X, T, sample_weight=np.ones(2)),
        ValueError, r"sample_weight has shape \(2,\)"),
    bad("zero classes", lambda: ref.gradient_hessian(np.zeros((3, 0)), T), ValueError,
        r"zero classes"),
    bad("out not a tuple", lambda: ref.gradient_hessian(X, T, out=np.zeros((3, 5))), TypeError,
        r"out must be None or a tuple \(grad_out, hess_out\)"),
    bad("out[1] dtype",
        lambda: ref.gradient_hessian(X, T, out=(np.zeros((3, 5)), np.zeros((3, 5), np.int32))),
        TypeError, r"out\[1\] has dtype int32, expected float64"),
    bad("hess_out is the logits", lambda: ref.gradient_hessian(Y, T, out=(np.zeros((3, 5)), Y)),
        ValueError, r"out\[1\] shares memory with logits"),
    bad("hess_out is grad_out", lambda: ref.gradient_hessian(X, T, out=(Y, Y)), ValueError,
        r"out\[1\] shares memory with grad"),
]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    BAD_LOSS_ARGUMENTS + BAD_AXES_AND_THREADS + BAD_OUT + BAD_GRADIENT_HESSIAN,
)
def test_bad_input_raises_a_clear_error(call: Any, error: type[Exception], message: str) -> None:
    """Each bad input: the documented exception type, with a message naming what is wrong
    (both shapes, the allowed choices or range, the bad value and its position)."""
    y_before = Y.copy()
    with pytest.raises(error, match=message):
        call()
    assert np.all(X == 0) and np.array_equal(Y, y_before)


def test_errors_are_raised_before_any_work_and_leave_arrays_untouched() -> None:
    """A bad argument anywhere: nothing is written to out (or to in-place logits)."""
    rng = np.random.default_rng(16)
    x = random_logits(rng, (4, 3))
    x_before = x.copy()
    out = np.full_like(x, 7.0)
    target = np.array([0, 1, 2, 3])  # 3 is out of range
    with pytest.raises(ValueError):
        ref.cross_entropy_with_grad(x, target, out=out)
    with pytest.raises(ValueError):
        ref.cross_entropy_with_grad(x, target, out=x)
    with pytest.raises(ValueError):
        ref.cross_entropy_with_grad(x, np.array([0, 1, 2, 0]), reduction="bad", out=x)
    with pytest.raises(ValueError):
        ref.gradient_hessian(x, target, out=(x, out))
    with pytest.raises(AxisError):
        ref.softmax(x, 3, out=x)
    assert np.array_equal(x, x_before)
    assert np.all(out == 7.0)

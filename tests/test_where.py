"""`where=` class masks in the NumPy API's cross_entropy / cross_entropy_with_grad:
optax's semantics (checked against optax itself), the compositions with weight,
ignore_index, label_smoothing, z_loss, sample_weight and probability targets (fast vs
`softmaxloss.reference`, and the reference vs the unmasked loss of the kept classes
alone), layouts, out=, hostile values, and the validation of the mask."""

from __future__ import annotations

import numpy as np
import pytest

import softmaxloss as sml
from softmaxloss import reference as ref
from softmaxloss.testing import compare_results, hostile_cases

RNG = np.random.default_rng(15)
REDUCTIONS = ["mean", "sum", "none"]


def masked_case(rng, n_rows=7, n_classes=6, dtype=np.float64):
    """Logits, a mask with an empty row (0), a row keeping one class (1) and labels that
    fall on masked classes, index targets with an ignored row (2), probabilities."""
    x = (rng.standard_normal((n_rows, n_classes)) * 3).astype(dtype)
    mask = rng.random((n_rows, n_classes)) < 0.6
    mask[0] = False
    mask[1] = False
    mask[1, 2] = True
    labels = rng.integers(0, n_classes, n_rows)
    labels[2] = -100
    labels[3] = np.flatnonzero(~mask[3])[0] if (~mask[3]).any() else labels[3]
    probs = rng.dirichlet(np.ones(n_classes), n_rows)
    return x, mask, labels, probs


def both(name, *args, **kwargs):
    return getattr(sml, name)(*args, **kwargs), getattr(ref, name)(*args, **kwargs)


def assert_match(fast, slow, dtype):
    problems = compare_results(fast, slow, rtol=1e-5 if dtype == np.float32 else 1e-12)
    assert not problems, problems


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "probabilities"])
@pytest.mark.parametrize("options", [
    {}, {"label_smoothing": 0.3}, {"z_loss": 0.2}, {"label_smoothing": 1.0},
    {"weight": "w", "sample_weight": "s", "label_smoothing": 0.1, "z_loss": 0.05},
], ids=["plain", "smoothing", "z-loss", "smoothing-1", "all"])
def test_fast_matches_reference(dtype, reduction, probabilities, options):
    rng = np.random.default_rng(1)
    x, mask, labels, probs = masked_case(rng, dtype=dtype)
    kwargs = dict(options, where=mask, reduction=reduction)
    if kwargs.get("weight") == "w":
        kwargs["weight"] = rng.uniform(0.0, 2.0, x.shape[1])
        kwargs["sample_weight"] = rng.uniform(0.0, 2.0, x.shape[0])
    target = probs if probabilities else labels
    fast, slow = both("cross_entropy_with_grad", x, target, **kwargs)
    assert_match(fast, slow, dtype)
    assert_match(sml.cross_entropy(x, target, **kwargs), slow[0], dtype)


def test_reference_is_the_loss_of_the_kept_classes_alone():
    """A row keeping K classes has the unmasked loss of those K classes (label smoothing
    eps/|K|, class weights of those classes, z-loss of their log-sum-exp)."""
    rng = np.random.default_rng(2)
    x, mask, labels, probs = masked_case(rng)
    w, s = rng.uniform(0.5, 2.0, x.shape[1]), rng.uniform(0.5, 2.0, x.shape[0])
    opts = dict(label_smoothing=0.2, z_loss=0.1)
    for probabilities in (False, True):
        losses = sml.cross_entropy(x, probs if probabilities else labels, where=mask, weight=w,
                                   sample_weight=s, reduction="none", **opts)
        for n in range(x.shape[0]):
            keep = mask[n]
            if not keep.any() or (not probabilities and labels[n] == -100):
                assert losses[n] == 0
                continue
            if not probabilities and not keep[labels[n]]:
                continue  # a label on a masked class: checked against optax below
            if probabilities:
                target = probs[n, keep][None]
            else:
                target = np.array([np.flatnonzero(keep).tolist().index(labels[n])])
            alone = ref.cross_entropy(x[n, keep][None], target, weight=w[keep], sample_weight=s[n:n + 1],
                                      reduction="sum", **opts)
            np.testing.assert_allclose(losses[n], alone, rtol=1e-13)


def test_masked_classes_get_probability_and_gradient_zero_and_empty_rows_nothing():
    x, mask, labels, probs = masked_case(np.random.default_rng(3))
    for target in (labels, probs):
        for reduction in REDUCTIONS:
            loss, grad = sml.cross_entropy_with_grad(x, target, where=mask, reduction=reduction, label_smoothing=0.1)
            own = np.zeros_like(mask)
            if target is labels:
                rows = np.flatnonzero(labels >= 0)
                own[rows, labels[rows]] = True
            assert np.all(grad[~mask & ~own] == 0)
            assert np.all(grad[0] == 0)
            if reduction == "none":
                assert loss[0] == 0
    # a label on a masked class: its own logit is in the loss, so its gradient is -1 (sum)
    _, grad = sml.cross_entropy_with_grad(x, labels, where=mask, reduction="sum")
    assert not mask[3, labels[3]] and grad[3, labels[3]] == -1.0


def test_mean_leaves_out_the_rows_that_keep_no_class_as_ignored_rows():
    """"mean" divides by the rows that keep a class (and are not ignored): the same value
    as the sum over the kept rows divided by their count (by sum s w[y], weighted)."""
    x, mask, labels, probs = masked_case(np.random.default_rng(4))
    w = np.linspace(0.5, 1.5, x.shape[1])
    counted = mask.any(1) & (labels != -100)
    total = sml.cross_entropy(x, labels, where=mask, weight=w, reduction="sum")
    mean = sml.cross_entropy(x, labels, where=mask, weight=w)
    np.testing.assert_allclose(mean, total / w[labels[counted]].sum(), rtol=1e-12)
    total = sml.cross_entropy(x, probs, where=mask, reduction="sum")
    np.testing.assert_allclose(sml.cross_entropy(x, probs, where=mask), total / mask.any(1).sum(), rtol=1e-14)
    # a per-example mask is ignore_index for its False rows
    row_mask = np.array([True, False, True, True, False, True, True])
    ignored = np.where(row_mask, labels, -100)
    for reduction in REDUCTIONS:
        got = sml.cross_entropy_with_grad(x, labels, where=row_mask, reduction=reduction)
        expected = sml.cross_entropy_with_grad(x, ignored, reduction=reduction)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-14)
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-14, atol=1e-17)
    # no row left: NaN, as a mean over no rows
    loss, grad = sml.cross_entropy_with_grad(x, labels, where=np.zeros(x.shape[0], bool))
    assert np.isnan(loss) and np.all(grad == 0)


def test_an_all_true_mask_is_no_mask():
    x, _, labels, probs = masked_case(np.random.default_rng(5))
    for target in (labels, probs):
        for options in ({}, {"label_smoothing": 0.25, "z_loss": 0.1}):
            got = sml.cross_entropy_with_grad(x, target, where=np.ones(x.shape, bool), **options)
            expected = sml.cross_entropy_with_grad(x, target, **options)
            np.testing.assert_allclose(got[0], expected[0], rtol=1e-14)
            np.testing.assert_allclose(got[1], expected[1], rtol=1e-13, atol=1e-17)


@pytest.mark.parametrize("layout", ["axis0", "nchw", "fortran", "out", "in-place", "float16", "int-logits",
                                    "float16-out", "broadcast-mask"])
def test_layouts_and_out(layout):
    rng = np.random.default_rng(6)
    x, mask, labels, probs = masked_case(rng)
    kwargs, target = {}, labels
    if layout == "axis0":
        x, mask, kwargs = x.T.copy(), mask.T.copy(), {"axis": 0}
    elif layout == "nchw":
        x = rng.standard_normal((2, 5, 3, 4))
        mask = rng.random(x.shape) < 0.5
        mask[0, :, 0, 0] = False
        target, kwargs = rng.integers(0, 5, (2, 3, 4)), {"axis": 1}
    elif layout == "fortran":
        x, mask = np.asfortranarray(x), np.asfortranarray(mask)
    elif layout == "float16":
        x = x.astype(np.float16)
    elif layout == "int-logits":
        x = np.round(x).astype(np.int32)
    elif layout == "broadcast-mask":
        mask = mask[3:4]  # one mask for every row
    fast_x = x.copy() if layout == "in-place" else x
    if layout in ("out", "in-place", "float16-out"):
        kwargs["out"] = fast_x if layout == "in-place" else np.full(x.shape, 7.0, np.float16 if layout == "float16-out" else x.dtype)
    given = [np.array(a, copy=True) for a in (x, mask, target)]
    fast = sml.cross_entropy_with_grad(fast_x, target, where=mask, label_smoothing=0.1, **kwargs)
    if "out" in kwargs:
        kwargs["out"] = np.full(x.shape, 7.0, kwargs["out"].dtype)
    slow = ref.cross_entropy_with_grad(x, target, where=mask, label_smoothing=0.1, **kwargs)
    tolerance = 2e-3 if np.float16 in (x.dtype, kwargs.get("out", x).dtype) else 1e-12
    assert not compare_results(fast, slow, rtol=tolerance), compare_results(fast, slow, rtol=tolerance)
    for original, now in zip(given, (x, mask, target)):
        np.testing.assert_array_equal(original, now)  # the caller's arrays are untouched


def hostile_mask(case):
    rng = np.random.default_rng(case.x.size)
    mask = rng.random(case.x.shape) < 0.7
    if mask.ndim >= 2 and mask.shape[0]:
        mask[0] = False  # an example with no class left (a slice along the first axis)
    return mask


@pytest.mark.parametrize("case", list(hostile_cases(layouts=["C", "F"], shapes=["rows", "nchw", "vector"])),
                         ids=lambda c: c.name)
def test_hostile_values_fast_matches_reference(case):
    mask = hostile_mask(case)
    kwargs = dict(axis=case.axis, where=mask, reduction="sum", weight=case.weight, z_loss=0.01)
    for target in (case.target, case.probabilities):
        try:
            slow = ref.cross_entropy_with_grad(case.x, target, **kwargs)
        except ValueError as error:
            with pytest.raises(ValueError, match="zero classes|out of range"):
                sml.cross_entropy_with_grad(case.x, target, **kwargs)
            assert "zero classes" in str(error) or "out of range" in str(error)
            continue
        fast = sml.cross_entropy_with_grad(case.x, target, **kwargs)
        tolerance = dict(rtol=2e-3) if case.result_dtype == np.float16 else {}
        problems = compare_results(fast, slow, check_dtype=True, scale=(0.0, 1.0), **tolerance)
        assert not problems, problems + [case.describe()]


def test_extreme_float32_logits_keep_masked_classes_at_zero():
    """The stand-in lies below the largest kept logit by at least the gap however large
    it is (1e10 in float32: kept_max - 256 would round to kept_max itself)."""
    x = np.array([[1e10, 1e10 - 3e3, 5.0], [-3e38, -2.9e38, 0.0], [3e38, 1.0, 2.0]], np.float32)
    mask = np.array([[True, True, False], [True, True, False], [True, True, False]])
    y = np.array([0, 1, 0])
    loss, grad = sml.cross_entropy_with_grad(x, y, where=mask, reduction="none")
    np.testing.assert_array_equal(loss, np.zeros(3, np.float32))  # the label is each row's max by far
    assert np.all(grad[:, 2] == 0) and np.all(np.isfinite(grad))
    probs = np.array([[0.5, 0.5, 0.0]] * 3, np.float32)
    loss, grad = sml.cross_entropy_with_grad(x, probs, where=mask, reduction="none")
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(loss, [0.5 * (x64[0, 0] - x64[0, 1]), 0.5 * (x64[1, 1] - x64[1, 0]),
                                      0.5 * (x64[2, 0] - x64[2, 1])], rtol=1e-6)
    assert np.all(grad[:, 2] == 0)


def test_non_finite_kept_logits_as_without_a_mask():
    x = np.array([[np.nan, 1.0, 0.0], [np.inf, 1.0, 0.0], [-np.inf, -np.inf, 0.0], [-np.inf, 1.0, 0.0]])
    mask = np.array([[True, True, False]] * 4)
    unmasked = sml.cross_entropy(x[:, :2], np.array([1, 1, 1, 1]), reduction="none")
    masked = sml.cross_entropy(x, np.array([1, 1, 1, 1]), where=mask, reduction="none")
    np.testing.assert_array_equal(masked, unmasked)  # NaN, NaN, NaN (all -inf), finite


# ---- against optax -------------------------------------------------------------------


def optax_losses():
    pytest.importorskip("jax")
    return pytest.importorskip("optax")


@pytest.mark.parametrize("probabilities", [False, True], ids=["integer-labels", "probabilities"])
@pytest.mark.parametrize("per_example", [False, True], ids=["class-mask", "example-mask"])
def test_matches_optax_values_and_gradients(probabilities, per_example):
    optax = optax_losses()
    import jax
    import jax.numpy as jnp

    x, mask, labels, probs = masked_case(np.random.default_rng(7))
    labels[2] = 0  # optax has no ignore_index
    if per_example:
        mask = mask.any(1)
    jax.config.update("jax_enable_x64", True)
    try:
        if probabilities:
            def theirs(z):
                return optax.softmax_cross_entropy(z, jnp.asarray(probs), where=jnp.asarray(mask))
        else:
            def theirs(z):
                return optax.softmax_cross_entropy_with_integer_labels(z, jnp.asarray(labels), where=jnp.asarray(mask))
        expected = np.asarray(theirs(jnp.asarray(x)))
        expected_grad = np.asarray(jax.grad(lambda z: theirs(z).sum())(jnp.asarray(x)))
    finally:
        jax.config.update("jax_enable_x64", False)
    target = probs if probabilities else labels
    losses = sml.cross_entropy(x, target, where=mask, reduction="none")
    _, grad = sml.cross_entropy_with_grad(x, target, where=mask, reduction="sum")
    np.testing.assert_allclose(losses, expected, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-13, atol=1e-15)


# ---- validation ----------------------------------------------------------------------


def test_the_mask_is_checked_before_any_work():
    x, mask, labels, _ = masked_case(np.random.default_rng(8))
    out = np.full(x.shape, 7.0)
    with pytest.raises(ValueError, match="out of range"):  # a bad label on a row that keeps nothing
        sml.cross_entropy_with_grad(x, np.where(np.arange(7) == 0, 9, labels), where=mask, out=out)
    assert np.all(out == 7.0)
    # an `out` sharing memory with the mask
    buffer = np.zeros(mask.size * 8, np.uint8)
    shared_mask = buffer[: mask.size].view(bool).reshape(mask.shape)
    shared_mask[...] = mask
    for f in (sml, ref):
        with pytest.raises(ValueError, match="out shares memory with where"):
            f.cross_entropy_with_grad(x, labels, where=shared_mask, out=buffer.view(np.float64).reshape(mask.shape))
    np.testing.assert_array_equal(shared_mask, mask)


def test_jax_drop_ins_share_the_stand_in_and_its_gap_at_large_logits():
    """The optax drop-ins use the same stand-in: at float32 logits of 1e10 a stand-in of
    kept_max - 256 would round to kept_max and the masked class would take a share."""
    optax = optax_losses()
    import jax.numpy as jnp

    import softmaxloss.jax as smj

    x = jnp.asarray(np.array([[1e10, 1e10, 5.0], [-1e10, -1e10, 5.0]], np.float32))
    where = jnp.asarray([[True, True, False]] * 2)
    y = jnp.asarray(np.array([[0.5, 0.5, 0.0]] * 2, np.float32))
    got = np.asarray(smj.softmax_cross_entropy(x, y, where=where))
    np.testing.assert_allclose(got, np.asarray(optax.softmax_cross_entropy(x, y, where=where)), rtol=1e-6)
    np.testing.assert_allclose(got, [np.log(2)] * 2, rtol=1e-6)
    labels = jnp.asarray([1, 0])
    np.testing.assert_allclose(np.asarray(smj.softmax_cross_entropy_with_integer_labels(x, labels, where=where)),
                               [np.log(2)] * 2, rtol=1e-6)
    np.testing.assert_allclose(sml.cross_entropy(np.asarray(x), np.asarray(labels), where=np.asarray(where),
                                                 reduction="none"), [np.log(2)] * 2, rtol=1e-6)

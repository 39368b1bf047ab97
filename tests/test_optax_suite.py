"""optax's own tests of its softmax cross-entropies, run against softmaxloss.jax's drop-ins
(`softmax_cross_entropy`, `softmax_cross_entropy_with_integer_labels`: class axes as a
tuple, `where=` masks), and those drop-ins against optax's originals on random masks,
masked labels and rows with no class left, values and gradients."""

from __future__ import annotations

import unittest

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax_losses = pytest.importorskip("optax.losses")
optax_tests = pytest.importorskip("optax.losses._classification_test")
import jax.numpy as jnp  # noqa: E402
from optax.losses import _classification  # noqa: E402

import softmaxloss.jax as smj  # noqa: E402

ORIGINALS = {
    "softmax_cross_entropy": _classification.softmax_cross_entropy,
    "softmax_cross_entropy_with_integer_labels": _classification.softmax_cross_entropy_with_integer_labels,
}
OPTAX_TEST_CASES = ["SoftmaxCrossEntropyTest", "SoftmaxCrossEntropyWithIntegerLabelsTest"]


@pytest.fixture
def optax_calls_softmaxloss(monkeypatch):
    """optax's module functions replaced by softmaxloss's for the test's duration."""
    for name in ORIGINALS:
        monkeypatch.setattr(_classification, name, getattr(smj, name))


def optax_test_names():
    names = []
    for case in OPTAX_TEST_CASES:
        for test in unittest.defaultTestLoader.loadTestsFromTestCase(getattr(optax_tests, case)):
            names.append(pytest.param(case, test._testMethodName, id=f"{case}.{test._testMethodName}"))
    return names


@pytest.mark.parametrize("case,method", optax_test_names())
def test_optax_own_test_passes_on_softmaxloss(optax_calls_softmaxloss, case, method):
    result = unittest.TestResult()
    getattr(optax_tests, case)(method).run(result)
    assert result.testsRun == 1
    problems = result.failures + result.errors
    assert not problems, problems[0][1]


def random_case(rng, shape, axis, integer):
    logits = rng.standard_normal(shape) * 3
    where = rng.random(shape) < 0.6
    where[0] = False  # an example with no class left (along the first axis's first slice)
    if integer:
        classes = shape[axis] if isinstance(axis, int) else int(np.prod([shape[a] for a in axis]))
        row_shape = tuple(n for i, n in enumerate(shape) if i not in ((axis % len(shape),) if isinstance(axis, int) else tuple(a % len(shape) for a in axis)))
        labels = rng.integers(0, classes, row_shape)
    else:
        labels = rng.dirichlet(np.ones(shape[-1]), shape[:-1]) if axis == -1 else rng.random(shape)
    return jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(where)


@pytest.mark.parametrize("integer", [False, True], ids=["probabilities", "integer-labels"])
@pytest.mark.parametrize("shape,axis", [((6, 5), -1), ((3, 4, 5), 1), ((2, 3, 4, 5), (1, 3)), ((2, 3, 4), (-1, 0))])
def test_where_and_axes_match_optax_values_and_gradients(integer, shape, axis):
    """Random masks (labels that fall on masked classes included, and an example with
    no class left): optax's losses and gradients with respect to the logits."""
    jax.config.update("jax_enable_x64", True)
    try:
        name = "softmax_cross_entropy_with_integer_labels" if integer else "softmax_cross_entropy"
        logits, labels, where = random_case(np.random.default_rng(len(shape)), shape, axis, integer)
        ours, theirs = getattr(smj, name), ORIGINALS[name]
        got, expected = ours(logits, labels, axis, where), theirs(logits, labels, axis, where)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)

        def total(f):
            return lambda x: (f(x, labels, axis, where) * jnp.arange(1, got.size + 1).reshape(got.shape)).sum()

        np.testing.assert_allclose(jax.grad(total(ours))(logits), jax.grad(total(theirs))(logits), rtol=1e-12, atol=1e-13)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_where_keeps_float32_exact_next_to_extreme_logits():
    """The masked classes' stand-in lies below the kept logits by more than exp can
    resolve, so masked classes have probability exactly 0 also when the kept logits are
    near the dtype's extremes (no overflow to -inf, no 0 * inf)."""
    big = np.float32(3e38)
    logits = jnp.asarray(np.array([[-big, -big + 1e32, 1.0], [2.0, 1.0, big]], np.float32))
    where = jnp.asarray(np.array([[True, True, False], [True, True, False]]))
    labels = jnp.asarray(np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]], np.float32))
    got = smj.softmax_cross_entropy(logits, labels, where=where)
    expected = _classification.softmax_cross_entropy(logits, labels, where=where)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    grad = jax.grad(lambda x: smj.softmax_cross_entropy(x, labels, where=where).sum())(logits)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[:, 2] == 0)

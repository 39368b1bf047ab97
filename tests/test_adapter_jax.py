"""softmaxloss.jax against optax and a jax.numpy formula: values and jax.grad under
jax.jit, vmap, dtypes (float64 with jax_enable_x64), errors. Skips without jax."""

import itertools

import numpy as np
import pytest
from _helpers import random_probabilities, random_targets

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
smj = pytest.importorskip("softmaxloss.jax")


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """float32 (JAX's default) and float64, with jax_enable_x64 on for the test and
    restored afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", request.param == "float64")
    try:
        yield jnp.dtype(request.param)
    finally:
        jax.config.update("jax_enable_x64", previous)


def tolerance(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == jnp.float32 else dict(rtol=1e-11, atol=1e-12)


def jnp_cross_entropy(logits, target, *, axis=-1, weight=None, ignore_index=-100, reduction="mean",
                      label_smoothing=0.0):
    """The specification's formula in jax.numpy (PyTorch's semantics), for jax.grad."""
    logp = jax.nn.log_softmax(logits, axis=axis)
    logp = jnp.moveaxis(logp, axis, -1)
    n_classes = logp.shape[-1]
    w = jnp.ones(n_classes, logp.dtype) if weight is None else jnp.asarray(weight, logp.dtype)
    eps = label_smoothing
    if jnp.issubdtype(target.dtype, jnp.floating):
        y = (1 - eps) * jnp.moveaxis(target, axis, -1) + eps / n_classes
        rows = -(y * w * logp).sum(-1)
        normaliser = rows.size
    else:
        keep = target != ignore_index
        safe = jnp.where(keep, target, 0)
        picked = jnp.take_along_axis(logp, safe[..., None], -1)[..., 0]
        rows = (1 - eps) * w[safe] * -picked + (eps / n_classes) * -(w * logp).sum(-1)
        rows = jnp.where(keep, rows, 0.0)
        normaliser = jnp.where(keep, w[safe], 0.0).sum()
    if reduction == "none":
        return rows
    return rows.sum() / (normaliser if reduction == "mean" else 1)


def test_matches_optax_under_jit(rng, dtype):
    """Integer labels and probabilities against optax's losses: per-example losses,
    their mean, and jax.grad of a random weighting of the per-example losses and of the
    mean, all in one jitted function each."""
    optax = pytest.importorskip("optax")
    logits = jnp.asarray(rng.standard_normal((33, 7)) * 3, dtype)
    labels = jnp.asarray(rng.integers(0, 7, 33))
    probs = jnp.asarray(random_probabilities(rng, (33, 7), -1), dtype)
    cotangent = jnp.asarray(rng.uniform(-1, 1, 33), dtype)

    def everything(per_example, mean):
        def f(x, t):
            weighted_grad = jax.grad(lambda x: (per_example(x, t) * cotangent).sum())(x)
            return per_example(x, t), mean(x, t), weighted_grad, jax.grad(mean)(x, t)
        return jax.jit(f)

    ours = everything(lambda x, t: smj.cross_entropy(x, t, reduction="none"), smj.cross_entropy)
    for target, optax_loss in [(labels, optax.softmax_cross_entropy_with_integer_labels),
                               (probs, optax.softmax_cross_entropy)]:
        theirs = everything(optax_loss, lambda x, t, f=optax_loss: f(x, t).mean())
        for actual, expected, what in zip(ours(logits, target), theirs(logits, target),
                                          ["per-example", "mean", "grad of weighted", "grad of mean"]):
            assert actual.dtype == dtype, what
            np.testing.assert_allclose(actual, expected, **tolerance(dtype), err_msg=what)


@pytest.mark.parametrize("kind,reduction", list(itertools.product(
    ["index", "index-ignored", "probabilities"], ["none", "mean", "sum"])))
def test_matches_the_jax_numpy_formula_with_every_option(rng, kind, reduction):
    """Class weights, ignore_index, label smoothing, reductions, on an (N, C, d) array
    with the class axis 1: values and jax.value_and_grad under jit (float32), without
    and with class weights and label smoothing."""
    shape, axis = (5, 6, 4), 1
    logits = jnp.asarray(rng.standard_normal(shape) * 3, jnp.float32)
    if kind == "probabilities":
        target = jnp.asarray(random_probabilities(rng, shape, axis), jnp.float32)
    else:
        target = jnp.asarray(random_targets(rng, shape, axis, n_ignored=4 if kind == "index-ignored" else 0))
    weight = jnp.asarray(rng.uniform(0.2, 3, shape[axis]), jnp.float32)
    option_sets = [dict(), dict(weight=weight), dict(label_smoothing=0.2), dict(weight=weight, label_smoothing=0.3)]
    row_weights = jnp.asarray(rng.uniform(-1, 1, (5, 4)), jnp.float32)

    def all_options(f):
        def scalar(x, options):
            return (f(x, target, axis=axis, reduction=reduction, **options)
                    * (row_weights if reduction == "none" else 1)).sum()
        return jax.jit(lambda x: [jax.value_and_grad(scalar)(x, options) for options in option_sets])

    for (value, grad), (expected_value, expected_grad) in zip(
        all_options(smj.cross_entropy)(logits), all_options(jnp_cross_entropy)(logits)
    ):
        np.testing.assert_allclose(value, expected_value, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(grad, expected_grad, rtol=2e-5, atol=2e-6)


def test_extras_match_the_numpy_facade(rng, dtype):
    """z_loss and sample_weight: the facade's values exactly (same kernel)."""
    import softmaxloss as sml

    x = rng.standard_normal((8, 5)).astype(dtype)
    target = random_targets(rng, x.shape, -1, n_ignored=2)
    sample_weight = rng.uniform(0, 2, 8).astype(dtype)
    options = dict(z_loss=0.01, label_smoothing=0.1, sample_weight=sample_weight)
    expected_loss, expected_grad = sml.cross_entropy_with_grad(x, target, **options)
    loss, grad = jax.jit(jax.value_and_grad(lambda x: smj.cross_entropy(x, target, **options)))(jnp.asarray(x))
    np.testing.assert_array_equal(loss, expected_loss)
    np.testing.assert_array_equal(grad, expected_grad)


def test_vmap_and_grad_with_respect_to_the_logits_only(rng):
    logits = jnp.asarray(rng.standard_normal((3, 10, 4)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 4, (3, 10)))
    both = lambda f: jax.jit(jax.vmap(jax.value_and_grad(f)))(logits, labels)  # noqa: E731
    for actual, expected in zip(both(smj.cross_entropy), both(jnp_cross_entropy)):
        np.testing.assert_allclose(actual, expected, rtol=2e-5, atol=2e-6)
    # probability targets are constants: zero gradient, by design
    probs = jnp.asarray(random_probabilities(rng, (10, 4), -1), jnp.float32)
    g_target = jax.grad(lambda t: smj.cross_entropy(logits[0], t))(probs)
    assert not np.any(g_target)


def test_half_precision_is_computed_in_float32(rng):
    """float16 and bfloat16 logits: computed in float32, results in their dtype."""
    labels = jnp.asarray(rng.integers(0, 6, 16))
    x = rng.standard_normal((16, 6))
    expected_loss, expected_grad = jax.value_and_grad(jnp_cross_entropy)(jnp.asarray(x, jnp.float32), labels)
    for half in (jnp.float16, jnp.bfloat16):
        logits = jnp.asarray(x, half)
        loss, grad = jax.jit(jax.value_and_grad(smj.cross_entropy))(logits, labels)
        assert loss.dtype == grad.dtype == half
        np.testing.assert_allclose(np.float32(loss), expected_loss, rtol=1e-2)
        np.testing.assert_allclose(grad.astype(jnp.float32), expected_grad, rtol=3e-2, atol=3e-3)


def test_training_with_optax_follows_the_same_loss_curve(rng):
    """A softmax regression trained 100 steps with optax.sgd, with either loss."""
    optax = pytest.importorskip("optax")
    x = jnp.asarray(rng.standard_normal((200, 12)), jnp.float32)
    y = jnp.argmax(x @ jnp.asarray(rng.standard_normal((12, 5)), jnp.float32), axis=1)  # learnable
    params = {"w": jnp.zeros((12, 5)), "b": jnp.zeros(5)}

    def curve(loss_function):
        optimizer = optax.sgd(0.5, momentum=0.9)

        @jax.jit
        def step(params, state):
            loss, grads = jax.value_and_grad(lambda p: loss_function(x @ p["w"] + p["b"], y))(params)
            updates, state = optimizer.update(grads, state)
            return optax.apply_updates(params, updates), state, loss

        p, state, losses = params, optimizer.init(params), []
        for _ in range(100):
            p, state, loss = step(p, state)
            losses.append(float(loss))
        return np.array(losses)

    expected = curve(lambda z, t: optax.softmax_cross_entropy_with_integer_labels(z, t).mean())
    actual = curve(smj.cross_entropy)
    assert expected[-1] < 0.5 * expected[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def test_errors():
    x = jnp.zeros((3, 4))
    f = lambda x: smj.cross_entropy(x, jnp.array([0, 1, 3]))  # noqa: E731
    with pytest.raises(NotImplementedError, match="differentiable once only"):
        jax.hessian(f)(x)
    with pytest.raises(NotImplementedError, match="differentiable once only"):
        jax.grad(lambda x: jax.grad(f)(x).sum())(x)
    # checked while tracing, with softmaxloss's messages
    with pytest.raises(ValueError, match=r"target of class indices has shape \(2,\)"):
        jax.jit(lambda x: smj.cross_entropy(x, jnp.array([0, 1])))(x)
    with pytest.raises(ValueError, match="reduction must be one of"):
        smj.cross_entropy(x, jnp.array([0, 1, 2]), reduction="avg")
    with pytest.raises(TypeError, match="floating point logits"):
        smj.cross_entropy(jnp.zeros((3, 4), jnp.int32), jnp.array([0, 1, 2]))
    # label values are only seen when the callback runs
    with pytest.raises(Exception, match="out of range for 4 classes"):
        jax.jit(lambda x: smj.cross_entropy(x, jnp.array([0, 1, 9])))(x).block_until_ready()

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


def jnp_cross_entropy(logits, target, *, axis=-1, weight=None, sample_weight=None, ignore_index=-100,
                      reduction="mean", label_smoothing=0.0, z_loss=0.0):
    """The specification's formula in jax.numpy (PyTorch's semantics), for jax.grad with
    respect to any of logits, probability targets, weight and sample_weight (the mean's
    normaliser depends on the last two)."""
    logp = jax.nn.log_softmax(logits, axis=axis)
    lse = jax.nn.logsumexp(logits, axis=axis)
    logp = jnp.moveaxis(logp, axis, -1)
    n_classes = logp.shape[-1]
    w = jnp.ones(n_classes, logp.dtype) if weight is None else jnp.asarray(weight, logp.dtype)
    s = 1.0 if sample_weight is None else sample_weight
    eps = label_smoothing
    if jnp.issubdtype(target.dtype, jnp.floating):
        y = (1 - eps) * jnp.moveaxis(target, axis, -1) + eps / n_classes
        rows = s * (-(y * w * logp).sum(-1) + z_loss * lse**2)
        normaliser = rows.size if sample_weight is None else sample_weight.sum()
    else:
        keep = target != ignore_index
        safe = jnp.where(keep, target, 0)
        picked = jnp.take_along_axis(logp, safe[..., None], -1)[..., 0]
        rows = s * ((1 - eps) * w[safe] * -picked + (eps / n_classes) * -(w * logp).sum(-1) + z_loss * lse**2)
        rows = jnp.where(keep, rows, 0.0)
        normaliser = jnp.where(keep, s * w[safe], 0.0).sum()
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


@pytest.mark.parametrize("kind,reduction", list(itertools.product(
    ["index-ignored", "probabilities"], ["none", "mean", "sum"])))
def test_gradients_with_respect_to_target_weight_and_sample_weight(rng, kind, reduction):
    """jax.grad with respect to everything differentiable (logits, probability targets,
    weight, sample_weight) against the jax.numpy formula's, under jit, for each of weight
    and sample_weight alone and together (the mean's normaliser depends on both), without
    and with label smoothing and z_loss."""
    shape, axis = (5, 6, 4), 1
    logits = jnp.asarray(rng.standard_normal(shape) * 3, jnp.float32)
    if kind == "probabilities":
        target = jnp.asarray(random_probabilities(rng, shape, axis), jnp.float32)
    else:
        target = jnp.asarray(random_targets(rng, shape, axis, n_ignored=4))
    weight = jnp.asarray(rng.uniform(0.2, 3, shape[axis]), jnp.float32)
    sample_weight = jnp.asarray(rng.uniform(0, 2, (5, 4)), jnp.float32)
    row_weights = jnp.asarray(rng.uniform(-1, 1, (5, 4)), jnp.float32)
    smoothed = dict(label_smoothing=0.2, z_loss=0.01)
    cases = [(weight, None, {}), (None, sample_weight, smoothed), (weight, sample_weight, {}),
             (weight, sample_weight, smoothed)]

    def all_grads(f):
        def scalar(x, t, w, s, options):
            return (f(x, t, axis=axis, weight=w, sample_weight=s, reduction=reduction, **options)
                    * (row_weights if reduction == "none" else 1)).sum()

        def grads(x, t, w, s, options):  # {name: gradient} for the differentiable arguments given
            names = [name for name, a in zip(["logits", "target", "weight", "sample_weight"], (x, t, w, s))
                     if a is not None and jnp.issubdtype(a.dtype, jnp.floating)]
            values = jax.grad(lambda *a: scalar(*a, options), argnums=tuple(
                ["logits", "target", "weight", "sample_weight"].index(n) for n in names))(x, t, w, s)
            return dict(zip(names, values))
        return jax.jit(lambda x, t: [grads(x, t, w, s, options) for w, s, options in cases])

    for (_, _, options), actual, expected in zip(cases, all_grads(smj.cross_entropy)(logits, target),
                                                 all_grads(jnp_cross_entropy)(logits, target)):
        assert actual.keys() == expected.keys()
        for name in expected:
            assert actual[name].dtype == expected[name].dtype
            np.testing.assert_allclose(actual[name], expected[name], rtol=2e-5, atol=2e-6,
                                       err_msg=f"d/d {name}, {sorted(actual)}, {options}")


def test_probability_target_gradient_as_optax_also_at_minus_inf_logits(rng):
    """d mean / d y = (1-eps) w_c -l[n,c] / N, as jax.grad of optax.softmax_cross_entropy:
    +inf at a -inf logit (the loss grows without bound there), whatever the target entry.
    label_smoothing=1 makes the loss independent of the target: exactly 0."""
    optax = pytest.importorskip("optax")
    logits = rng.standard_normal((6, 5)).astype(np.float32)
    logits[1, 2] = logits[4, 0] = -np.inf
    logits = jnp.asarray(logits)
    probs = jnp.asarray(random_probabilities(rng, (6, 5), -1), jnp.float32).at[1, 2].set(0.0)
    expected = jax.grad(lambda t: optax.softmax_cross_entropy(logits, t).mean())(probs)
    assert np.isinf(expected[1, 2]) and np.isinf(expected[4, 0])
    for f in (jax.grad, lambda f: jax.jit(jax.grad(f))):
        actual = f(lambda t: smj.cross_entropy(logits, t))(probs)
        np.testing.assert_allclose(actual, expected, rtol=2e-6, atol=1e-7)
    assert not np.any(jax.grad(lambda t: smj.cross_entropy(logits, t, label_smoothing=1.0))(probs))


def test_extra_gradients_are_computed_only_when_asked_for(rng):
    """Host callbacks in the traced program: the fused loss-and-gradient pass alone for
    jax.grad with respect to the logits; the target's gradient adds a log_softmax pass,
    sample_weight's a pass of per-row losses: what runs outside jit. Under jit a
    callback whose result is unused is dead code as well."""
    x = jnp.asarray(rng.standard_normal((8, 5)), jnp.float32)
    t = jnp.asarray(random_probabilities(rng, (8, 5), -1), jnp.float32)
    w, s = jnp.ones(5), jnp.ones(8)
    f = lambda x, t, w, s: smj.cross_entropy(x, t, weight=w, sample_weight=s)  # noqa: E731

    def callbacks(argnums):
        return str(jax.make_jaxpr(jax.grad(f, argnums))(x, t, w, s)).count("pure_callback")

    assert callbacks(0) == 1
    assert callbacks(1) == 2
    assert callbacks(3) == 2
    assert callbacks((0, 1, 2, 3)) == 3
    # under jit an unused gradient's callback is dead code
    first = jax.jit(lambda *a: jax.grad(f, (0, 1))(*a)[0]).lower(x, t, w, s).compile().as_text()
    assert first.count("custom-call(") == 1


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_a_nonfinite_cotangent_leaves_ignored_rows_at_zero(rng, reduction):
    """An upstream cotangent of NaN or +-inf: ignored rows' gradient is exactly 0 (as
    PyTorch's), other rows' the saved gradient times the cotangent, under jax.vjp and
    jit; likewise sample_weight's gradient of ignored rows. Against PyTorch's backward
    where torch is installed: the same NaN rows and zero rows; with an infinite
    cotangent both are non-finite in kept rows (PyTorch's unfused backward has NaN from
    inf - inf at the target entry where grad * inf is -inf)."""
    import softmaxloss as sml

    x = rng.standard_normal((6, 5)).astype(np.float32)
    target = np.array([0, -100, 3, -100, 1, 2])
    ignored = target == -100
    _, grad = sml.cross_entropy_with_grad(x, target, reduction=reduction)
    nan, inf = np.float32(np.nan), np.float32(np.inf)
    if reduction == "none":
        cotangents = [np.array([nan, nan, inf, -inf, 1.5, 2.0], np.float32),
                      np.array([1.0, inf, 2.0, nan, -1.0, 0.5], np.float32)]
    else:
        cotangents = [nan, inf, -inf]

    def pullback(x, ct):
        f = lambda x, s: smj.cross_entropy(x, jnp.asarray(target), sample_weight=s, reduction=reduction)  # noqa: E731
        return jax.vjp(f, x, jnp.ones(6))[1](ct)

    for ct in cotangents:
        with np.errstate(invalid="ignore"):  # 0 * inf
            expected = grad * (ct[:, None] if reduction == "none" else ct)
        expected[ignored] = 0.0
        for run in (pullback, jax.jit(pullback)):
            dx, ds = run(jnp.asarray(x), jnp.asarray(ct))
            np.testing.assert_array_equal(dx, expected)
            np.testing.assert_array_equal(ds[ignored], 0.0)
        try:
            import torch
        except ImportError:
            continue
        logits = torch.tensor(x, requires_grad=True)
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(target), reduction=reduction)
        loss.backward(torch.tensor(ct))
        theirs = logits.grad.numpy()
        np.testing.assert_array_equal(theirs[ignored], 0.0)
        finite = np.broadcast_to(np.isfinite(ct), ignored.shape)
        np.testing.assert_allclose(dx[finite], theirs[finite], rtol=1e-5, atol=1e-6)
        nonfinite = ~finite & ~ignored
        assert not np.any(np.isfinite(dx[nonfinite])) and not np.any(np.isfinite(theirs[nonfinite]))
        nan_rows = np.broadcast_to(np.isnan(ct), ignored.shape) & ~ignored
        assert np.all(np.isnan(dx[nan_rows])) and np.all(np.isnan(theirs[nan_rows]))


def test_vmap_and_grad(rng):
    logits = jnp.asarray(rng.standard_normal((3, 10, 4)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 4, (3, 10)))
    both = lambda f: jax.jit(jax.vmap(jax.value_and_grad(f)))(logits, labels)  # noqa: E731
    for actual, expected in zip(both(smj.cross_entropy), both(jnp_cross_entropy)):
        np.testing.assert_allclose(actual, expected, rtol=2e-5, atol=2e-6)
    # and with respect to probability targets, batched
    probs = jnp.asarray(random_probabilities(rng, (3, 10, 4), -1), jnp.float32)
    both = lambda f: jax.jit(jax.vmap(jax.grad(f, argnums=(0, 1))))(logits, probs)  # noqa: E731
    for actual, expected in zip(both(smj.cross_entropy), both(jnp_cross_entropy)):
        np.testing.assert_allclose(actual, expected, rtol=2e-5, atol=2e-6)


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

"""softmaxloss.jax against optax and a jax.numpy formula: values and jax.grad under
jax.jit, vmap, dtypes (float64 with jax_enable_x64), errors. Skips without jax."""

import itertools
import re

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


def _inputs(rng, kind, dtype, shape=(5, 6, 4), axis=1):
    """logits, target (index, index with 4 ignored rows, or probabilities), class
    weights and sample weights, on an (N, C, d) array with the class axis 1."""
    logits = jnp.asarray(rng.standard_normal(shape) * 3, dtype)
    rows = shape[:axis] + shape[axis + 1:]
    if kind == "probabilities":
        target = jnp.asarray(random_probabilities(rng, shape, axis), dtype)
    else:
        target = jnp.asarray(random_targets(rng, shape, axis, n_ignored=4 if kind == "index-ignored" else 0))
    weight = jnp.asarray(rng.uniform(0.2, 3, shape[axis]), dtype)
    sample_weight = jnp.asarray(rng.uniform(0, 2, rows), dtype)
    return logits, target, weight, sample_weight


@pytest.mark.parametrize("kind", ["index", "index-ignored", "probabilities"])
def test_forward_and_reverse_mode_match_the_jax_numpy_formula(rng, dtype, kind):
    """One custom_jvp rule for both modes, all under one jit, against the jax.numpy
    formula's Jacobian (jax.jacrev under jit; the expected jvp and vjp are its
    contractions), float32 and float64, every reduction, class axis 1: jax.jvp with
    tangents of every differentiable input and jax.vjp (the rule's transpose), without
    options and with class weights, sample weights, label smoothing and z_loss
    together; with all of them also jax.jvp along each input alone (the others'
    tangents symbolic zeros), jax.jacfwd, jax.linearize and jax.jacrev."""
    axis = 1
    logits, target, weight, sample_weight = _inputs(rng, kind, dtype)
    float_target = kind == "probabilities"
    cases = list(itertools.product(["none", "mean", "sum"], [dict(), dict(label_smoothing=0.2, z_loss=0.01)]))
    tangents = dict(zip("xtws", (jnp.asarray(rng.standard_normal(a.shape), dtype)
                                 for a in (logits, target, weight, sample_weight))))
    row_cotangent = jnp.asarray(rng.standard_normal((5, 4)), dtype)

    def setup(f, x, t, w, s, reduction, options):
        """The loss as a function of its differentiable inputs, named, and their values."""
        primals = dict(x=x, t=t, w=w if options else None, s=s if options else None)
        names = [n for n, p in primals.items() if p is not None and (n != "t" or float_target)]

        def loss(*values):
            args = {**primals, **dict(zip(names, values))}
            return f(args["x"], args["t"], axis=axis, weight=args["w"], sample_weight=args["s"],
                     reduction=reduction, **options)
        return loss, names, [primals[n] for n in names]

    @jax.jit
    def ours(x, t, w, s, dx, dt, dw, ds, ct):
        d = dict(x=dx, t=dt, w=dw, s=ds)
        out = []
        for reduction, options in cases:
            loss, names, p = setup(smj.cross_entropy, x, t, w, s, reduction, options)
            value, pullback = jax.vjp(loss, *p)
            out.append(dict(jvp=jax.jvp(loss, p, [d[n] for n in names]),
                            vjp=(value, pullback(ct if reduction == "none" else ct.sum()))))
            if options:  # (the rest only with every option, for compile time)
                argnums = tuple(range(len(names)))
                value, linear = jax.linearize(lambda x: loss(x, *p[1:]), x)
                out[-1].update(
                    alone=[jax.jvp(lambda v, i=i: loss(*p[:i], v, *p[i + 1:]), (p[i],), (d[n],))[1]
                           for i, n in enumerate(names)],
                    jacfwd=jax.jacfwd(loss, argnums)(*p), linearize=(value, linear(dx), linear(2 * dx)),
                    jacrev=jax.jacrev(loss, argnums)(*p))
        return out

    @jax.jit
    def formula(x, t, w, s):
        out = []
        for reduction, options in cases:
            loss, names, p = setup(jnp_cross_entropy, x, t, w, s, reduction, options)
            out.append((loss(*p), jax.jacrev(loss, tuple(range(len(names))))(*p)))
        return out

    def contract(jacobian, tangent, loss_ndim):  # J . v over the input's axes
        return np.tensordot(jacobian, tangent, axes=tangent.ndim) if tangent.ndim else jacobian * tangent

    args = (logits, target, weight, sample_weight)
    for (reduction, options), actual, (value, jacobian) in zip(
            cases, ours(*args, *tangents.values(), row_cotangent), formula(*args)):
        names = setup(None, *args, reduction, options)[1]
        ct = row_cotangent if reduction == "none" else row_cotangent.sum()
        along = [contract(np.asarray(j, np.float64), np.asarray(tangents[n], np.float64), value.ndim)
                 for j, n in zip(jacobian, names)]
        expected = dict(
            jvp=(value, sum(along)), alone=along, jacfwd=jacobian,
            linearize=(value, along[0], 2 * along[0]),
            vjp=(value, [np.tensordot(np.asarray(ct, np.float64), np.asarray(j, np.float64), axes=ct.ndim)
                         for j in jacobian]),
            jacrev=jacobian)
        assert actual.keys() == ({"jvp", "vjp"} if not options else expected.keys())
        for key in actual:
            flat_actual, flat_expected = jax.tree.leaves(actual[key]), jax.tree.leaves(expected[key])
            assert len(flat_actual) == len(flat_expected), key
            for a, e in zip(flat_actual, flat_expected):
                assert a.dtype == dtype and a.shape == np.shape(e), key
                np.testing.assert_allclose(a, e, **tolerance(dtype), err_msg=f"{key} {names}, {reduction}, {options}")


def test_forward_mode_matches_optax(rng, dtype):
    """jax.jvp and jax.jacfwd against optax's losses: per-example and mean, with
    respect to the logits (integer labels and probabilities) and the probabilities."""
    optax = pytest.importorskip("optax")
    logits = jnp.asarray(rng.standard_normal((33, 7)) * 3, dtype)
    labels = jnp.asarray(rng.integers(0, 7, 33))
    probs = jnp.asarray(random_probabilities(rng, (33, 7), -1), dtype)
    dx, dp = (jnp.asarray(rng.standard_normal((33, 7)), dtype) for _ in range(2))

    def forward(per_example, with_target):
        def f(x, t):
            mean = lambda x, t: per_example(x, t).mean()  # noqa: E731
            out = [jax.jvp(per_example, (x, t) if with_target else (x,),
                           (dx, dp) if with_target else (dx,)) if with_target
                   else jax.jvp(lambda x: per_example(x, t), (x,), (dx,)),
                   jax.jvp(lambda x: mean(x, t), (x,), (dx,)), jax.jacfwd(mean)(x, t)]
            if with_target:
                out += [jax.jvp(lambda t: mean(x, t), (t,), (dp,)), jax.jacfwd(mean, 1)(x, t)]
            return out
        return jax.jit(f)

    ours = lambda x, t: smj.cross_entropy(x, t, reduction="none")  # noqa: E731
    for target, optax_loss, with_target in [(labels, optax.softmax_cross_entropy_with_integer_labels, False),
                                            (probs, optax.softmax_cross_entropy, True)]:
        actual, expected = forward(ours, with_target)(logits, target), forward(optax_loss, with_target)(logits, target)
        for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
            assert a.dtype == dtype
            np.testing.assert_allclose(a, e, **tolerance(dtype))


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
    jax.grad or jax.jvp with respect to the logits (else the loss-only pass); the
    target's gradient or tangent adds a log_softmax pass, sample_weight's a pass of
    per-row losses: what runs outside jit. Under jit a callback whose result is unused
    is dead code as well."""
    x = jnp.asarray(rng.standard_normal((8, 5)), jnp.float32)
    t = jnp.asarray(random_probabilities(rng, (8, 5), -1), jnp.float32)
    w, s = jnp.ones(5), jnp.ones(8)
    f = lambda x, t, w, s: smj.cross_entropy(x, t, weight=w, sample_weight=s)  # noqa: E731

    def callbacks(argnums):
        return str(jax.make_jaxpr(jax.grad(f, argnums))(x, t, w, s)).count("pure_callback")

    def forward_callbacks(argnums):  # jax.jvp with tangents for these inputs only
        def along(*values):
            args = [x, t, w, s]
            for i, v in zip(argnums, values):
                args[i] = v
            return f(*args)
        primals = [(x, t, w, s)[i] for i in argnums]
        return str(jax.make_jaxpr(lambda *p: jax.jvp(along, p, p))(*primals)).count("pure_callback")

    for count in (callbacks, forward_callbacks):
        assert count((0,)) == 1
        assert count((1,)) == 2
        assert count((3,)) == 2
        assert count((0, 1, 2, 3)) == 3
    # under jit an unused gradient's callback is dead code
    first = jax.jit(lambda *a: jax.grad(f, (0, 1))(*a)[0]).lower(x, t, w, s).compile().as_text()
    assert first.count("custom-call(") == 1


@pytest.mark.parametrize("kind", ["index-ignored", "probabilities"])
def test_jit_grad_returns_the_callbacks_gradient_itself(rng, kind):
    """jax.grad (cotangent 1) of the mean or sum under jit: no N x C operation after
    the fused pass (no multiply by the cotangent, no mask for ignored rows, no copy):
    the gradient in the optimized HLO is the callback's output. With a cotangent that
    is not a constant it is one fused select-multiply."""
    shape = (40, 7)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    if kind == "probabilities":
        t = jnp.asarray(random_probabilities(rng, shape, -1), jnp.float32)
    else:
        t = jnp.asarray(random_targets(rng, shape, -1, n_ignored=5))
    n_by_c = re.compile(r"= f32\[40,7\]\{[^}]*\} ([\w-]+)\(")

    def entry_ops(f, *args):
        hlo = jax.jit(f).lower(*args).compile().as_text()
        return n_by_c.findall(hlo.split("\nENTRY ")[1])

    for options in (dict(), dict(label_smoothing=0.1, z_loss=1e-3, weight=jnp.ones(7))):
        for reduction in ("mean", "sum"):
            loss = lambda x, t: smj.cross_entropy(x, t, reduction=reduction, **options)  # noqa: E731
            for f in (jax.grad(loss), lambda x, t: jax.value_and_grad(loss)(x, t)[1]):
                assert sorted(set(entry_ops(f, x, t))) == ["get-tuple-element", "parameter"], (options, reduction)
            scaled = entry_ops(lambda x, t, c: jax.vjp(lambda x: loss(x, t), x)[1](c)[0], x, t, jnp.float32(2))
            assert "fusion" in scaled


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


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_a_nonfinite_tangent_in_ignored_rows_is_ignored(rng, reduction):
    """jax.jvp with NaN and inf tangents of the logits and sample_weight in ignored
    rows: those rows contribute exactly nothing (the loss does not depend on them);
    kept rows' tangents are the fused gradient's (grad . dx), a NaN there giving NaN."""
    import softmaxloss as sml

    x = rng.standard_normal((6, 5)).astype(np.float32)
    target = np.array([0, -100, 3, -100, 1, 2])
    ignored = target == -100
    _, grad = sml.cross_entropy_with_grad(x, target, reduction=reduction)
    dx = rng.standard_normal((6, 5)).astype(np.float32)
    dx[1, 2], dx[3] = np.nan, np.inf
    ds = np.array([0.5, np.nan, -1.0, np.inf, 2.0, 1.0], np.float32)
    f = lambda x, s: smj.cross_entropy(x, jnp.asarray(target), sample_weight=s, reduction=reduction)  # noqa: E731
    s = jnp.ones(6, jnp.float32)
    for run in (jax.jvp, jax.jit(jax.jvp, static_argnums=0)):
        _, t_x = run(lambda x: f(x, s), (jnp.asarray(x),), (jnp.asarray(dx),))
        per_row = np.where(ignored, 0, (grad * np.where(ignored[:, None], 0, dx)).sum(-1))
        np.testing.assert_allclose(t_x, per_row if reduction == "none" else per_row.sum(), rtol=1e-5, atol=1e-6)
        _, t_s = run(lambda s: f(jnp.asarray(x), s), (s,), (jnp.asarray(ds),))
        assert np.all(np.isfinite(t_s))
        if reduction == "none":
            np.testing.assert_array_equal(np.asarray(t_s)[ignored], 0.0)
        dx_kept = dx.copy()
        dx_kept[0, 0] = np.nan
        _, t_nan = run(lambda x: f(x, s), (jnp.asarray(x),), (jnp.asarray(dx_kept),))
        assert np.isnan(t_nan[0] if reduction == "none" else t_nan)


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
    # forward mode, batched: jax.vmap of jax.jvp (logits and probabilities), and of jax.jacfwd
    tangents = jnp.asarray(rng.standard_normal((2, 3, 10, 4)), jnp.float32)
    both = lambda f: jax.jit(jax.vmap(lambda x, t, dx, dt: (  # noqa: E731
        jax.jvp(f, (x, t), (dx, dt)), jax.jacfwd(f)(x, t))))(logits, probs, *tangents)
    for actual, expected in zip(jax.tree.leaves(both(smj.cross_entropy)), jax.tree.leaves(both(jnp_cross_entropy))):
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
    v = jnp.ones((3, 4))
    second_derivatives = [
        lambda: jax.hessian(f)(x),
        lambda: jax.jacfwd(jax.jacrev(f))(x),
        lambda: jax.jacrev(jax.jacfwd(f))(x),
        lambda: jax.grad(lambda x: jax.grad(f)(x).sum())(x),
        lambda: jax.jvp(jax.grad(f), (x,), (v,)),
        lambda: jax.jvp(lambda x: jax.jvp(f, (x,), (v,))[1], (x,), (v,)),
        lambda: jax.grad(lambda x: jax.jvp(f, (x,), (v,))[1])(x),
        lambda: jax.jit(jax.hessian(lambda x: smj.cross_entropy(x, jnp.ones((3, 4)) / 4)))(x),
    ]
    for second_derivative in second_derivatives:
        with pytest.raises(NotImplementedError, match="differentiable once only"):
            second_derivative()
    # a derivative with respect to the tangent only is a first derivative: the gradient
    np.testing.assert_allclose(jax.grad(lambda v: jax.jvp(f, (x,), (v,))[1])(v), jax.grad(f)(x), rtol=1e-6)
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

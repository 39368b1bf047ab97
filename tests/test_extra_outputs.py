"""The opt-in extra outputs of a cross-entropy call (issue 16 item 3): per-row log-sum-exp,
entropy and argmax, and the number of correct predictions, from the same kernel pass.

Against the reference (float64, rounded once) on every kernel path (row blocks C <= 23,
row groups up to 1024 classes, single rows beyond, half storage), layouts and thread
counts; against SciPy / PyTorch / np.argmax; the loss and gradient unchanged by the
request (bitwise); hostile inputs; no N x C temporaries."""

import numpy as np
import pytest

import softmaxloss as sml
from softmaxloss import reference as ref
from softmaxloss import testing

from _helpers import TOLERANCES
from _helpers import assert_close as _assert_close


def assert_close(actual, expected, dtype, what="", scale=0.0):
    """_helpers.assert_close; half dtypes (computed in float32, rounded once): within two
    of their ulps relative, or of the largest value (scale) absolute."""
    if np.dtype(dtype) in TOLERANCES:
        return _assert_close(actual, expected, dtype, what, scale)
    assert np.asarray(actual).dtype == np.asarray(expected).dtype, what
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    eps = float(np.finfo(np.float16).eps) if np.dtype(dtype) == np.float16 else 2.0**-7
    finite = np.abs(e[np.isfinite(e)])
    largest = max(finite.max() if finite.size else 0.0, scale)
    np.testing.assert_allclose(a, e, rtol=2 * eps, atol=2 * eps * largest + 1e-30, equal_nan=True, err_msg=what)

ALL = dict(return_lse=True, return_entropy=True, return_argmax=True)
CLASS_COUNTS = [2, 5, 23, 24, 100, 1024, 1025, 5000]


def half_dtypes():
    dtypes = [np.float16]
    try:
        import ml_dtypes
    except ImportError:
        return dtypes
    return dtypes + [ml_dtypes.bfloat16]


DTYPES = [np.float32, np.float64] + half_dtypes()


def _case(dtype, n_classes, n_rows=None, seed=0, n_ignored=3):
    rng = np.random.default_rng(seed + n_classes)
    n_rows = n_rows or (5 if n_classes >= 5000 else 70)  # 70: a partial block of 64 rows
    x = (rng.standard_normal((n_rows, n_classes)) * 3).astype(dtype)
    target = rng.integers(0, n_classes, n_rows)
    target[rng.choice(n_rows, min(n_ignored, n_rows - 1), replace=False)] = -100
    return x, target


def _compare_extras(fast, expected, dtype, what=""):
    assert isinstance(fast, sml.CrossEntropyOutputs), what
    for name in ("lse", "entropy"):
        a, e = getattr(fast, name), getattr(expected, name)
        if e is None:
            assert a is None, (what, name)
            continue
        assert a.dtype == e.dtype and a.shape == e.shape, (what, name)
        # a sum of non-negative terms (entropy) or a log of one: relative to its value, with
        # an absolute floor of the dtype's tolerance relative to the log of the class count
        scale = np.log(max(2, fast_classes(fast, e))) if name == "entropy" else 0.0
        assert_close(a, e, dtype, f"{what} {name}", scale)
    if expected.argmax is not None:
        np.testing.assert_array_equal(fast.argmax, expected.argmax, err_msg=what)
        assert fast.argmax.dtype == np.int64
        assert fast.n_correct == expected.n_correct, what
        assert type(fast.n_correct) is int


def fast_classes(result, values):
    return 2 if values.ndim == 0 else 2 + values.size


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
@pytest.mark.parametrize("with_grad", [False, True])
def test_every_path_matches_the_reference_and_leaves_loss_and_gradient_alone(dtype, n_classes, with_grad):
    x, target = _case(dtype, n_classes)
    sample_weight = np.linspace(0.5, 1.5, x.shape[0])
    kw = dict(sample_weight=sample_weight, reduction="sum")
    if with_grad:
        fast = sml.cross_entropy_with_grad(x, target, **kw, **ALL)
        expected = ref.cross_entropy_with_grad(x, target, **kw, **ALL)
        plain_loss, plain_grad = sml.cross_entropy_with_grad(x, target, **kw)
        assert fast.grad.tobytes() == plain_grad.tobytes()
    else:
        fast = sml.cross_entropy(x, target, **kw, **ALL)
        expected = ref.cross_entropy(x, target, **kw, **ALL)
        plain_loss = sml.cross_entropy(x, target, **kw)
        assert fast.grad is None and expected.grad is None
    assert fast.loss.tobytes() == plain_loss.tobytes()
    _compare_extras(fast, expected, dtype, f"C={n_classes}")


@pytest.mark.parametrize("n_classes", [5, 100, 1025])
@pytest.mark.parametrize("requested", ["return_lse", "return_entropy", "return_argmax"])
def test_each_output_alone(n_classes, requested):
    x, target = _case(np.float32, n_classes)
    fast = sml.cross_entropy_with_grad(x, target, **{requested: True})
    expected = ref.cross_entropy_with_grad(x, target, **{requested: True})
    names = {"return_lse": ["lse"], "return_entropy": ["entropy"], "return_argmax": ["argmax", "n_correct"]}
    for field in sml.CrossEntropyOutputs._fields[2:]:
        assert (getattr(fast, field) is None) == (field not in names[requested]), field
    _compare_extras(fast, expected, np.float32, requested)


@pytest.mark.parametrize("n_classes", [5, 24, 1025])
@pytest.mark.parametrize("layout", ["F", "strided", "torch", "in place"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=lambda d: np.dtype(d).name)
def test_layouts_and_in_place(n_classes, layout, dtype):
    x, target = _case(dtype, n_classes, n_rows=68)
    axis = -1
    if layout == "F":
        x = np.asfortranarray(x)
    elif layout == "strided":
        x = testing.with_layout(x, "strided")
    elif layout == "torch":  # (N, C, d): the class axis in the middle
        x = np.ascontiguousarray(x.reshape(17, 4, n_classes).transpose(0, 2, 1))
        target = target.reshape(17, 4)
        axis = 1
    expected = ref.cross_entropy_with_grad(x, target, axis=axis, **ALL)
    if layout == "in place":
        work = x.copy()
        fast = sml.cross_entropy_with_grad(work, target, axis=axis, out=work, **ALL)
        assert fast.grad is work
    else:
        before = x.copy()
        fast = sml.cross_entropy_with_grad(x, target, axis=axis, **ALL)
        np.testing.assert_array_equal(x, before)
    assert_close(fast.grad, expected.grad, dtype, "grad")
    _compare_extras(fast, expected, dtype, layout)
    loss_only = sml.cross_entropy(x if layout != "in place" else x.copy(), target, axis=axis, **ALL)
    for name in ("lse", "entropy", "argmax"):
        np.testing.assert_array_equal(getattr(loss_only, name), getattr(fast, name))


@pytest.mark.parametrize("n_classes", [5, 100, 1025])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=lambda d: np.dtype(d).name)
def test_probability_targets_count_the_target_rows_argmax(n_classes, dtype):
    rng = np.random.default_rng(n_classes)
    x = rng.standard_normal((40, n_classes)).astype(dtype)
    p = rng.dirichlet(np.ones(n_classes), 40)
    p[:20] = np.eye(n_classes)[np.argmax(x[:20], axis=1)]  # half of the rows right
    fast = sml.cross_entropy_with_grad(x, p, z_loss=1e-3, **ALL)
    expected = ref.cross_entropy_with_grad(x, p, z_loss=1e-3, **ALL)
    _compare_extras(fast, expected, dtype, "probabilities")
    assert fast.n_correct == int(np.count_nonzero(np.argmax(p, 1) == np.argmax(x.astype(np.float64), 1)))
    assert fast.n_correct >= 20
    plain = sml.cross_entropy_with_grad(x, p, z_loss=1e-3)
    assert fast.loss == plain[0]
    np.testing.assert_array_equal(fast.grad, plain[1])


def test_ignored_rows_get_their_statistics_and_are_not_counted():
    x, target = _case(np.float64, 7, n_rows=10, n_ignored=0)
    target[:] = np.argmax(x, axis=1)  # every row right
    target[[2, 5]] = -100
    fast = sml.cross_entropy(x, target, **ALL)
    assert fast.n_correct == 8
    np.testing.assert_array_equal(fast.argmax, np.argmax(x, axis=1))
    from scipy.special import logsumexp
    np.testing.assert_allclose(fast.lse, logsumexp(x, axis=1), rtol=1e-14)


@pytest.mark.parametrize("n_classes", [3, 23, 200, 1025])
def test_against_scipy_and_numpy(n_classes):
    stats = pytest.importorskip("scipy.stats")
    special = pytest.importorskip("scipy.special")
    x, target = _case(np.float64, n_classes, n_rows=30)
    fast = sml.cross_entropy(x, target, **ALL)
    np.testing.assert_allclose(fast.entropy, stats.entropy(special.softmax(x, axis=1), axis=1), rtol=1e-12)
    np.testing.assert_allclose(fast.lse, special.logsumexp(x, axis=1), rtol=1e-14)
    np.testing.assert_array_equal(fast.argmax, np.argmax(x, axis=1))


@pytest.mark.parametrize("n_classes", [4, 64, 3000])
def test_against_torch(n_classes):
    torch = pytest.importorskip("torch")
    x, target = _case(np.float32, n_classes, n_rows=20)
    fast = sml.cross_entropy_with_grad(x, target, **ALL)
    t = torch.from_numpy(x.astype(np.float64))
    expected = torch.distributions.Categorical(logits=t).entropy().numpy()
    np.testing.assert_allclose(fast.entropy, expected, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(fast.lse, torch.logsumexp(t, 1).numpy(), rtol=1e-6)


def test_ties_and_confident_rows():
    n_classes = 37
    x = np.zeros((6, n_classes), np.float32)
    x[0, [3, 9]] = 5.0  # a tie: the first
    x[1] = 2.0  # all equal: index 0, entropy log C
    x[2, 30] = 200.0  # confident: entropy tiny but positive, computed without cancellation
    x[3, -1] = 1.0
    x[4, [0, 36]] = np.float32(3.0)
    x[5, :] = -np.inf
    x[5, 7] = 1.0  # -inf entries beside a finite one: entropy 0, lse 1
    target = np.array([3, 0, 30, 36, 36, 7])
    for n_rows_case in (x, np.repeat(x, 20, axis=0)):  # blocks and beyond
        t = np.resize(target, n_rows_case.shape[0])
        fast = sml.cross_entropy(n_rows_case, t, **ALL)
        expected = ref.cross_entropy(n_rows_case, t, **ALL)
        _compare_extras(fast, expected, np.float32, "ties")
    fast = sml.cross_entropy(x, target, **ALL)
    np.testing.assert_array_equal(fast.argmax, [3, 0, 30, 36, 0, 7])
    assert fast.n_correct == 5
    np.testing.assert_allclose(fast.entropy[1], np.log(n_classes), rtol=1e-6)
    assert 0 < fast.entropy[2] < 1e-80 or fast.entropy[2] == 0.0
    assert fast.entropy[5] == 0.0 and fast.lse[5] == 1.0
    x64 = np.zeros((1, 2))
    x64[0, 1] = 40.0  # p_0 = e^-40: H = e^-40 (41 + ...), far below 1 ulp of log 2
    h = sml.cross_entropy(x64, np.array([1]), return_entropy=True).entropy[0]
    exact = np.exp(-40) * 41  # -p0 log p0 - p1 log p1 ~ e^-40 (40 + 1)
    assert abs(h - exact) < 1e-6 * exact


@pytest.mark.parametrize("n_classes", [5, 100, 1025])
def test_non_finite_rows(n_classes):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, n_classes))
    x[0, 2] = np.nan
    x[1, 3] = np.inf
    x[2] = -np.inf
    x[3, [1, 4]] = np.inf
    x[4, 1] = np.nan
    x[4, 3] = np.inf
    x[5, 0] = -np.inf
    target = np.zeros(8, np.int64)
    for dtype in (np.float32, np.float64):
        fast = sml.cross_entropy(x.astype(dtype), target, reduction="none", **ALL)
        expected = ref.cross_entropy(x.astype(dtype), target, reduction="none", **ALL)
        _compare_extras(fast, expected, dtype, "non-finite")
        np.testing.assert_array_equal(fast.argmax, np.argmax(x, axis=1))
        assert np.isnan(fast.lse[[0, 4]]).all() and fast.lse[1] == np.inf and fast.lse[2] == -np.inf
        assert np.isnan(fast.entropy[:5]).all() and np.isfinite(fast.entropy[5:]).all()


@pytest.mark.parametrize("n_classes", [5, 300, 1500])
def test_bitwise_across_thread_counts(n_classes):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40000 // n_classes * 4 + 7, n_classes)).astype(np.float32)
    target = rng.integers(0, n_classes, x.shape[0])
    results = [sml.cross_entropy_with_grad(x, target, n_threads=t, **ALL) for t in (1, 2, 3)]
    for other in results[1:]:
        for name in ("loss", "grad", "lse", "entropy", "argmax", "n_correct"):
            assert np.asarray(getattr(other, name)).tobytes() == np.asarray(getattr(results[0], name)).tobytes(), name


def test_hostile_inputs_match_the_reference():
    for case in testing.hostile_cases(dtypes=[np.float32, np.float64], layouts=["C", "F", "strided"],
                                      shapes=["rows"]):
        if case.x.shape[-1] == 0 or case.x.size == 0:
            continue
        target = np.asarray(case.target)
        if target.dtype.kind not in "iu":
            continue
        fast = sml.cross_entropy(case.x, target, axis=case.axis, reduction="none", **ALL)
        expected = ref.cross_entropy(case.x, target, axis=case.axis, reduction="none", **ALL)
        what = f"{case.pattern}/{case.layout}/{case.x.dtype}"
        np.testing.assert_array_equal(fast.argmax, expected.argmax, err_msg=what)
        assert fast.n_correct == expected.n_correct, what
        for name in ("lse", "entropy"):
            a, e = getattr(fast, name), getattr(expected, name)
            np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=f"{what} {name}")
            finite = np.isfinite(e)
            np.testing.assert_array_equal(a[~finite & ~np.isnan(e)], e[~finite & ~np.isnan(e)], err_msg=what)
            rtol = 1e-5 if case.x.dtype == np.float32 else 1e-12
            np.testing.assert_allclose(a[finite], e[finite], rtol=rtol, atol=rtol * np.log(case.x.shape[-1] + 1),
                                       err_msg=f"{what} {name}")


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_scalar_row_shapes(reduction):
    x = np.array([1.0, 3.0, 2.0], np.float32)
    fast = sml.cross_entropy(x, np.array(1), reduction=reduction, **ALL)
    expected = ref.cross_entropy(x, np.array(1), reduction=reduction, **ALL)
    assert type(fast.lse) is type(expected.lse) and np.shape(fast.lse) == ()
    _compare_extras(fast, expected, np.float32, "scalar")
    assert fast.argmax == 1 and fast.n_correct == 1


def test_no_n_by_c_temporaries():
    from test_memory_use import peak_allocation, per_row_budget
    rng = np.random.default_rng(0)
    n_rows, n_classes = 2000, 600
    x = rng.standard_normal((n_rows, n_classes)).astype(np.float32)
    target = rng.integers(0, n_classes, n_rows)
    out = np.empty_like(x)
    peak = peak_allocation(lambda: sml.cross_entropy(x, target, **ALL))
    assert peak < per_row_budget(n_rows) + 4 * 8 * n_rows, peak
    peak = peak_allocation(lambda: sml.cross_entropy_with_grad(x, target, out=out, **ALL))
    assert peak < per_row_budget(n_rows) + 4 * 8 * n_rows, peak
    peak = peak_allocation(lambda: sml.cross_entropy_with_grad(x, target, **ALL))
    assert peak < x.nbytes + per_row_budget(n_rows) + 4 * 8 * n_rows, peak


def test_results_are_a_named_tuple_with_none_for_what_was_not_asked():
    x, target = _case(np.float64, 4, n_rows=6)
    result = sml.cross_entropy_with_grad(x, target, return_lse=True)
    loss, grad, lse, entropy, argmax, n_correct = result
    assert entropy is None and argmax is None and n_correct is None
    assert result._fields == ("loss", "grad", "lse", "entropy", "argmax", "n_correct")
    assert sml.cross_entropy(x, target, return_lse=False) == sml.cross_entropy(x, target)


# ---- the PyTorch adapter ---------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("n_classes", [5, 100, 1025])
def test_torch_outputs_match_the_numpy_api(n_classes):
    torch = _torch()
    import softmaxloss.torch as smt
    x, target = _case(np.float32, n_classes, n_rows=20)
    result = smt.cross_entropy(torch.from_numpy(x), torch.from_numpy(target), **ALL)
    expected = sml.cross_entropy(x, target, **ALL)
    assert isinstance(result, sml.CrossEntropyOutputs) and result.grad is None
    np.testing.assert_array_equal(result.loss.numpy(), expected.loss)
    np.testing.assert_array_equal(result.lse.numpy(), expected.lse)
    np.testing.assert_array_equal(result.entropy.numpy(), expected.entropy)
    np.testing.assert_array_equal(result.argmax.numpy(), expected.argmax)
    assert int(result.n_correct) == expected.n_correct


def test_torch_lse_and_entropy_are_differentiable_gradcheck():
    torch = _torch()
    import softmaxloss.torch as smt
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.standard_normal((6, 5)), requires_grad=True)
    target = torch.tensor([0, 1, -100, 3, 4, 2])

    def combined(logits):
        r = smt.cross_entropy(logits, target, return_lse=True, return_entropy=True)
        return r.loss + 0.3 * (r.lse**2).sum() - 0.7 * r.entropy.sum()

    assert torch.autograd.gradcheck(combined, (x,))

    def per_row(logits):
        r = smt.cross_entropy(logits, target, reduction="none", return_lse=True, return_entropy=True)
        return r.loss, r.lse, r.entropy

    assert torch.autograd.gradcheck(per_row, (x,))
    # against torch's own functions
    y = x.detach().clone().requires_grad_(True)
    expected = (torch.nn.functional.cross_entropy(y, target) + 0.3 * (torch.logsumexp(y, 1) ** 2).sum()
                - 0.7 * torch.distributions.Categorical(logits=y).entropy().sum())
    expected.backward()
    value = combined(x)
    value.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(x.grad, y.grad)


def test_torch_compile_fullgraph():
    torch = _torch()
    import softmaxloss.torch as smt

    def step(logits, target):
        r = smt.cross_entropy(logits, target, return_lse=True, return_entropy=True, return_argmax=True)
        return r.loss + 1e-3 * (r.lse**2).mean() - 1e-2 * r.entropy.mean(), r.n_correct

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    rng = np.random.default_rng(4)
    x = torch.tensor(rng.standard_normal((16, 300)).astype(np.float32), requires_grad=True)
    target = torch.tensor(rng.integers(0, 300, 16))
    value, correct = compiled(x, target)
    value.backward()
    y = x.detach().clone().requires_grad_(True)
    expected, expected_correct = step(y, target)
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(x.grad, y.grad)
    assert int(correct) == int(expected_correct)


def test_torch_bfloat16_outputs():
    torch = _torch()
    import softmaxloss.torch as smt
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.standard_normal((8, 64)).astype(np.float32)).to(torch.bfloat16).requires_grad_(True)
    target = torch.tensor(rng.integers(0, 64, 8))
    r = smt.cross_entropy(x, target, return_lse=True, return_entropy=True)
    assert r.lse.dtype == torch.bfloat16 and r.entropy.dtype == torch.bfloat16
    (r.loss + r.lse.float().sum()).backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


def test_torch_refuses_second_order_and_weight_gradients():
    torch = _torch()
    import softmaxloss.torch as smt
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1, 2, 0])
    r = smt.cross_entropy(x, target, return_lse=True)
    (g,) = torch.autograd.grad(r.loss, x)  # first order works
    with pytest.raises(NotImplementedError, match="differentiable once"):
        torch.autograd.grad(smt.cross_entropy(x, target, return_lse=True).loss, x, create_graph=True)
    with pytest.raises(NotImplementedError, match="weight requires grad"):
        smt.cross_entropy(x, target, weight=torch.ones(3, dtype=torch.float64, requires_grad=True), return_lse=True)
    with pytest.raises(TypeError, match="return_lse"):
        smt.cross_entropy(x, target, return_lse="yes")


# ---- the JAX adapter -------------------------------------------------------------------


@pytest.mark.parametrize("n_classes", [5, 300])
def test_jax_outputs_and_their_gradients(n_classes):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    import softmaxloss.jax as smj
    rng = np.random.default_rng(7)
    x = rng.standard_normal((10, n_classes)).astype(np.float32)
    target = rng.integers(0, n_classes, 10)
    target[1] = -100
    result = smj.cross_entropy(jnp.asarray(x), jnp.asarray(target), **ALL)
    expected = sml.cross_entropy(x, target, **ALL)
    np.testing.assert_array_equal(np.asarray(result.loss), expected.loss)
    np.testing.assert_array_equal(np.asarray(result.lse), expected.lse)
    np.testing.assert_array_equal(np.asarray(result.entropy), expected.entropy)
    np.testing.assert_array_equal(np.asarray(result.argmax), expected.argmax)
    assert int(result.n_correct) == expected.n_correct

    def objective(logits):
        r = smj.cross_entropy(logits, jnp.asarray(target), return_lse=True, return_entropy=True)
        return r.loss + 0.3 * (r.lse**2).mean() - 0.5 * r.entropy.mean()

    def formula(logits):
        log_p = jax.nn.log_softmax(logits, axis=-1)
        kept = jnp.asarray(target != -100)
        y = jnp.where(kept, jnp.asarray(target), 0)
        nll = -jnp.take_along_axis(log_p, y[:, None], -1)[:, 0]
        ce = jnp.where(kept, nll, 0).sum() / kept.sum()
        lse = jax.scipy.special.logsumexp(logits, axis=-1)
        entropy = -(jnp.exp(log_p) * log_p).sum(-1)
        return ce + 0.3 * (lse**2).mean() - 0.5 * entropy.mean()

    value, grad = jax.jit(jax.value_and_grad(objective))(jnp.asarray(x))
    expected_value, expected_grad = jax.value_and_grad(formula)(jnp.asarray(x))
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-6)
    tangent = jnp.asarray(rng.standard_normal(x.shape).astype(np.float32))
    primal_out, tangent_out = jax.jvp(objective, (jnp.asarray(x),), (tangent,))
    np.testing.assert_allclose(tangent_out, jax.jvp(formula, (jnp.asarray(x),), (tangent,))[1], rtol=1e-4, atol=1e-5)

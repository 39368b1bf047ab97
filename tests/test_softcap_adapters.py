"""softcap= through the adapters: the SoftmaxWithLoss layer, the PyTorch op (autograd,
gradcheck and gradgradcheck in float64, forward AD, torch.func, torch.compile with
fullgraph=True, opcheck) and the JAX function (grad and jvp against jax.nn in float64).
The torch and JAX parts skip without them."""

import numpy as np
import pytest

import softmaxloss as sml
from softmaxloss import reference as ref
from softmaxloss.layer import SoftmaxWithLoss

# torch compiles its forward-AD decompositions with torch.jit.script the first time a dual
# tensor is made, and inductor imports torch.jit.script_method: their deprecation warnings
# are PyTorch's own (as in tests/test_torch_op.py).
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]


def _inputs(n_rows=6, n_classes=5, seed=0, scale=8.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, n_classes)) * scale
    t = rng.integers(0, n_classes, n_rows)
    t[0] = -100
    return x, t


def test_layer_forward_backward():
    x, t = _inputs()
    layer = SoftmaxWithLoss(softcap=3.0, label_smoothing=0.1)
    loss = layer.forward(x, t)
    loss_r, grad_r = ref.cross_entropy_with_grad(x, t, softcap=3.0, label_smoothing=0.1)
    np.testing.assert_allclose(loss, loss_r, rtol=1e-12)
    np.testing.assert_allclose(layer.backward(2.0), 2.0 * grad_r, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="softcap"):
        SoftmaxWithLoss(softcap=0.0)


# ---- PyTorch -----------------------------------------------------------------------------

def _torch():
    return pytest.importorskip("torch")


def _torch_inputs(torch, kind="index", dtype=None, n_classes=5):
    dtype = dtype or torch.float64
    x, t = _inputs(n_classes=n_classes)
    x = torch.tensor(x, dtype=dtype, requires_grad=True)
    if kind == "index":
        return x, torch.tensor(t)
    rng = np.random.default_rng(3)
    p = rng.random((6, n_classes))
    return x, torch.tensor(p / p.sum(1, keepdims=True), dtype=dtype, requires_grad=True)


def _liger(torch, x, t, cap, **kw):
    """The formula: cap * tanh(x / cap), then PyTorch's cross-entropy."""
    return torch.nn.functional.cross_entropy(cap * torch.tanh(x / cap), t, **kw)


@pytest.mark.parametrize("kind", ["index", "probabilities"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_matches_the_formula_and_gradchecks(kind, reduction):
    torch = _torch()
    import softmaxloss.torch as smt
    x, t = _torch_inputs(torch, kind)
    w = torch.rand(5, dtype=torch.float64) + 0.5
    kw = dict(weight=w, reduction=reduction, label_smoothing=0.1)
    loss = smt.cross_entropy(x, t, softcap=4.0, **kw)
    expected = _liger(torch, x, t, 4.0, **kw)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)
    cot = torch.rand(loss.shape, dtype=torch.float64)
    (g,) = torch.autograd.grad((loss * cot).sum(), x)
    (g_r,) = torch.autograd.grad((expected * cot).sum(), x)
    torch.testing.assert_close(g, g_r, rtol=1e-10, atol=1e-14)
    inputs = (x, t) if kind == "index" else (x, t)
    f = lambda x_, t_: smt.cross_entropy(x_, t_, softcap=4.0, z_loss=0.01, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_torch_weights_and_sample_weights_differentiate():
    torch = _torch()
    import softmaxloss.torch as smt
    x, t = _torch_inputs(torch, "probabilities")
    w = (torch.rand(5, dtype=torch.float64) + 0.5).requires_grad_()
    s = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()
    f = lambda x_, t_, w_, s_: smt.cross_entropy(x_, t_, w_, softcap=2.0, sample_weight=s_)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, t, w, s))
    assert torch.autograd.gradgradcheck(f, (x, t, w, s))


def test_torch_forward_ad_and_torch_func():
    torch = _torch()
    import torch.autograd.forward_ad as fwAD
    import softmaxloss.torch as smt
    x, t = _torch_inputs(torch)
    v = torch.randn_like(x)
    with fwAD.dual_level():
        loss = smt.cross_entropy(fwAD.make_dual(x.detach(), v), t, softcap=3.0, label_smoothing=0.2)
        tangent = fwAD.unpack_dual(loss).tangent
    (g,) = torch.autograd.grad(_liger(torch, x, t, 3.0, label_smoothing=0.2), x)
    torch.testing.assert_close(tangent, (g * v).sum(), rtol=1e-10, atol=1e-14)
    f = lambda x_: smt.cross_entropy(x_, t, softcap=3.0, z_loss=0.01)  # noqa: E731
    f_r = lambda x_: _liger(torch, x_, t, 3.0) + 0.01 * (torch.logsumexp(3.0 * torch.tanh(x_[1:] / 3.0), 1) ** 2).sum() / 5  # noqa: E731
    xd = x.detach()
    torch.testing.assert_close(torch.func.grad(f)(xd), torch.func.grad(f_r)(xd), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(torch.func.hessian(f)(xd), torch.func.hessian(f_r)(xd), rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(torch.func.jacfwd(f)(xd), torch.func.grad(f_r)(xd), rtol=1e-10, atol=1e-14)


def test_torch_compile_fullgraph_and_in_place():
    torch = _torch()
    import softmaxloss.torch as smt
    x, t = _torch_inputs(torch, dtype=torch.float32, n_classes=50)

    def step(x_, t_):
        return smt.cross_entropy(x_ * 2, t_, softcap=30.0)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    loss = compiled(x, t)
    (g,) = torch.autograd.grad(loss, x)
    (g_r,) = torch.autograd.grad(_liger(torch, x * 2, t, 30.0), x)
    torch.testing.assert_close(loss, _liger(torch, x * 2, t, 30.0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, g_r, rtol=1e-4, atol=1e-7)
    # inplace_grad: the gradient written over the (non-leaf) logits
    y = x * 1.0
    loss = smt.cross_entropy(y, t, softcap=30.0, inplace_grad=True)
    loss.backward()
    (g_r,) = torch.autograd.grad(_liger(torch, x, t, 30.0), x)
    torch.testing.assert_close(x.grad, g_r, rtol=1e-4, atol=1e-7)
    crit = smt.CrossEntropyLoss(softcap=30.0)
    assert "softcap=30.0" in repr(crit)
    torch.testing.assert_close(crit(x, t), _liger(torch, x, t, 30.0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="softcap"):
        smt.cross_entropy(x, t, softcap=-1.0)


def test_torch_bfloat16_logits():
    torch = _torch()
    import softmaxloss.torch as smt
    x, t = _torch_inputs(torch, dtype=torch.float32, n_classes=300)
    xb = x.detach().to(torch.bfloat16).requires_grad_()
    loss = smt.cross_entropy(xb, t, softcap=30.0)
    (g,) = torch.autograd.grad(loss, xb)
    assert g.dtype == torch.bfloat16
    x32 = xb.detach().float().requires_grad_()
    (g32,) = torch.autograd.grad(smt.cross_entropy(x32, t, softcap=30.0), x32)
    assert torch.equal(g, g32.to(torch.bfloat16))


def test_torch_opcheck_with_a_cap():
    torch = _torch()
    import softmaxloss.torch  # noqa: F401 (registers the op)
    x, t = _torch_inputs(torch)
    op = torch.ops.softmaxloss.cross_entropy.default
    for with_grad in (True, False):
        result = torch.library.opcheck(op, (x, t, None, None, -100, "mean", 0.1, 0.0, 2.5, 0, with_grad))
        assert set(result.values()) == {"SUCCESS"}, result


# ---- JAX -----------------------------------------------------------------------------------

@pytest.fixture
def x64():
    jax = pytest.importorskip("jax")
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield jax
    finally:
        jax.config.update("jax_enable_x64", previous)


def test_jax_grad_and_jvp_match_jax_nn(x64):
    jax = x64
    jnp = pytest.importorskip("jax.numpy")
    smj = pytest.importorskip("softmaxloss.jax")
    x, t = _inputs(n_classes=7)
    x = jnp.asarray(x)
    keep = t != -100
    tj = jnp.asarray(t)
    w = jnp.linspace(0.5, 1.5, 7)

    def formula(x_, w_):
        capped = 3.0 * jnp.tanh(x_ / 3.0)
        logp = jax.nn.log_softmax(capped, axis=-1)
        picked = -jnp.take_along_axis(logp, jnp.where(keep, tj, 0)[:, None], -1)[:, 0] * w_[jnp.where(keep, tj, 0)]
        smooth = -(logp * w_).sum(-1) / 7
        rows = jnp.where(keep, 0.9 * picked + 0.1 * smooth, 0.0)
        return rows.sum() / jnp.where(keep, w_[jnp.where(keep, tj, 0)], 0.0).sum()

    def ours(x_, w_):
        return smj.cross_entropy(x_, tj, weight=w_, label_smoothing=0.1, softcap=3.0)

    np.testing.assert_allclose(ours(x, w), formula(x, w), rtol=1e-12)
    for argnums in (0, 1):
        np.testing.assert_allclose(jax.grad(ours, argnums)(x, w), jax.grad(formula, argnums)(x, w),
                                   rtol=1e-10, atol=1e-14)
    v = jnp.asarray(np.random.default_rng(5).standard_normal(x.shape))
    _, tangent = jax.jvp(lambda x_: ours(x_, w), (x,), (v,))
    _, tangent_r = jax.jvp(lambda x_: formula(x_, w), (x,), (v,))
    np.testing.assert_allclose(tangent, tangent_r, rtol=1e-10)
    np.testing.assert_allclose(jax.jit(jax.grad(ours))(x, w), jax.grad(formula)(x, w), rtol=1e-10, atol=1e-14)


def test_jax_probability_targets(x64):
    jax = x64
    jnp = pytest.importorskip("jax.numpy")
    smj = pytest.importorskip("softmaxloss.jax")
    x, _ = _inputs(n_classes=7)
    p = np.random.default_rng(2).random(x.shape)
    x, p = jnp.asarray(x), jnp.asarray(p)

    def formula(x_, p_):
        return -(p_ * jax.nn.log_softmax(2.0 * jnp.tanh(x_ / 2.0), -1)).sum(-1).mean()

    def ours(x_, p_):
        return smj.cross_entropy(x_, p_, softcap=2.0)

    for argnums in (0, 1):
        np.testing.assert_allclose(jax.grad(ours, argnums)(x, p), jax.grad(formula, argnums)(x, p),
                                   rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="softcap"):
        smj.cross_entropy(x, p, softcap=float("inf"))
    assert float(sml.cross_entropy(np.asarray(x), np.asarray(p), softcap=2.0)) == pytest.approx(float(ours(x, p)), rel=1e-12)


def test_jax_focal_loss_of_capped_logits(x64):
    """focal_gamma with softcap in JAX: the NumPy reference's loss and gradient."""
    jax = x64
    jnp = pytest.importorskip("jax.numpy")
    smj = pytest.importorskip("softmaxloss.jax")
    x, t = _inputs(n_classes=7)

    def ours(x_):
        return smj.cross_entropy(x_, jnp.asarray(t), softcap=3.0, focal_gamma=2.0)

    loss_r, grad_r = ref.cross_entropy_with_grad(x, t, softcap=3.0, focal_gamma=2.0)
    np.testing.assert_allclose(ours(jnp.asarray(x)), loss_r, rtol=1e-12)
    np.testing.assert_allclose(jax.grad(ours)(jnp.asarray(x)), grad_r, rtol=1e-10, atol=1e-14)


def test_torch_focal_with_softcap_matches_the_reference():
    torch = pytest.importorskip("torch")
    smt = pytest.importorskip("softmaxloss.torch")
    x, t = _inputs()
    loss_r, grad_r = ref.cross_entropy_with_grad(x, t, softcap=3.0, focal_gamma=2.0)
    xt = torch.tensor(x, requires_grad=True)
    loss = smt.cross_entropy(xt, torch.tensor(t), softcap=3.0, focal_gamma=2.0)
    loss.backward()
    np.testing.assert_allclose(loss.item(), loss_r, rtol=1e-12)
    np.testing.assert_allclose(xt.grad.numpy(), grad_r, rtol=1e-10, atol=1e-14)


def test_torch_extra_outputs_of_the_capped_logits():
    """return_lse / return_entropy / return_argmax with softcap: a torch formula on the
    capped logits (values and gradient through the loss, lse**2 and the entropy), and
    torch.autograd.gradcheck of the same with the focal loss."""
    torch = pytest.importorskip("torch")
    smt = pytest.importorskip("softmaxloss.torch")
    x, t = _inputs(n_rows=4)
    xt, tt = torch.tensor(x, requires_grad=True), torch.tensor(t)
    flags = dict(return_lse=True, return_entropy=True, return_argmax=True)

    def ours(v, **kw):
        out = smt.cross_entropy(v, tt, softcap=3.0, **flags, **kw)
        return out.loss + 0.3 * (out.lse**2).sum() + 0.7 * out.entropy.sum(), out

    def formula(v):
        c = 3.0 * torch.tanh(v / 3.0)
        log_p = torch.log_softmax(c, 1)
        entropy = -(log_p.exp() * log_p).sum(1)
        total = torch.nn.functional.cross_entropy(c, tt) + 0.3 * (torch.logsumexp(c, 1) ** 2).sum()
        return total + 0.7 * entropy.sum(), c.argmax(1)

    value, out = ours(xt)
    value_r, argmax_r = formula(xt)
    np.testing.assert_allclose(value.item(), value_r.item(), rtol=1e-12)
    assert out.argmax.tolist() == argmax_r.tolist()
    (g,), (g_r,) = torch.autograd.grad(value, xt), torch.autograd.grad(value_r, xt)
    np.testing.assert_allclose(g.numpy(), g_r.numpy(), rtol=1e-10, atol=1e-13)
    assert torch.autograd.gradcheck(lambda v: ours(v, focal_gamma=2.0)[0], (xt,))


def test_jax_extra_outputs_of_the_capped_logits(x64):
    jax = x64
    jnp = pytest.importorskip("jax.numpy")
    smj = pytest.importorskip("softmaxloss.jax")
    x, t = _inputs()
    keep = t != -100
    labels = jnp.asarray(np.where(keep, t, 0))[:, None]

    def ours(x_):
        out = smj.cross_entropy(x_, jnp.asarray(t), softcap=3.0, return_lse=True, return_entropy=True,
                                return_argmax=True)
        return out.loss + 0.3 * (out.lse**2).sum() + 0.7 * out.entropy.sum(), out.argmax

    def formula(x_):
        c = 3.0 * jnp.tanh(x_ / 3.0)
        log_p = jax.nn.log_softmax(c, -1)
        nll = jnp.where(keep, -jnp.take_along_axis(log_p, labels, -1)[:, 0], 0.0).sum() / keep.sum()
        entropy = -(jnp.exp(log_p) * log_p).sum(-1)
        return nll + 0.3 * (jax.nn.logsumexp(c, -1) ** 2).sum() + 0.7 * entropy.sum(), c.argmax(-1)

    x = jnp.asarray(x)
    (value, argmax), (value_r, argmax_r) = ours(x), formula(x)
    np.testing.assert_allclose(value, value_r, rtol=1e-12)
    np.testing.assert_array_equal(argmax, argmax_r)
    grad = jax.grad(lambda v: ours(v)[0])(x)
    np.testing.assert_allclose(grad, jax.grad(lambda v: formula(v)[0])(x), rtol=1e-10, atol=1e-13)

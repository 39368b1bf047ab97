"""`focal_gamma=` (issue 16 item 4): the softmax focal loss, per row
s w[y] (1 - p_y)^gamma (-log p_y), in the kernel on every path, against the reference, a
PyTorch formula in float64, finite differences and an mpmath gradient as p_y -> 1."""

import numpy as np
import pytest

import softmaxloss as sml
from softmaxloss import reference as ref

from test_extra_outputs import assert_close, half_dtypes

CLASS_COUNTS = [2, 5, 23, 24, 100, 1024, 1025, 5000]
DTYPES = [np.float32, np.float64] + half_dtypes()


def _case(dtype, n_classes, n_rows=None, seed=0):
    rng = np.random.default_rng(seed + n_classes)
    n_rows = n_rows or (5 if n_classes >= 5000 else 70)
    x = (rng.standard_normal((n_rows, n_classes)) * 3).astype(dtype)
    target = rng.integers(0, n_classes, n_rows)
    target[: n_rows // 2] = np.argmax(x[: n_rows // 2].astype(np.float64), axis=1)  # confident rows too
    target[3] = -100
    weight = rng.uniform(0.5, 2.0, n_classes)
    sample_weight = rng.uniform(0.5, 1.5, n_rows)
    return x, target, weight, sample_weight


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_every_path_matches_the_reference(dtype, n_classes, gamma):
    x, target, weight, sample_weight = _case(dtype, n_classes)
    for reduction in ("mean", "sum", "none"):
        kw = dict(focal_gamma=gamma, weight=weight, sample_weight=sample_weight, reduction=reduction)
        loss, grad = sml.cross_entropy_with_grad(x, target, **kw)
        expected_loss, expected_grad = ref.cross_entropy_with_grad(x, target, **kw)
        assert_close(loss, expected_loss, dtype, f"{reduction} loss")
        assert_close(grad, expected_grad, dtype, f"{reduction} grad")
        assert_close(sml.cross_entropy(x, target, **kw), expected_loss, dtype, "loss only")


@pytest.mark.parametrize("n_classes", [5, 100, 1025])
def test_gamma_zero_is_the_cross_entropy_bitwise(n_classes):
    x, target, weight, _ = _case(np.float32, n_classes)
    focal = sml.cross_entropy_with_grad(x, target, weight=weight, focal_gamma=0.0)
    plain = sml.cross_entropy_with_grad(x, target, weight=weight)
    assert focal[0].tobytes() == plain[0].tobytes() and focal[1].tobytes() == plain[1].tobytes()


@pytest.mark.parametrize("n_classes", [5, 1025])
def test_composes_with_z_loss_and_extra_outputs(n_classes):
    x, target, weight, sample_weight = _case(np.float64, n_classes)
    kw = dict(focal_gamma=1.5, z_loss=1e-2, weight=weight, sample_weight=sample_weight)
    fast = sml.cross_entropy_with_grad(x, target, return_lse=True, return_entropy=True, **kw)
    expected = ref.cross_entropy_with_grad(x, target, return_lse=True, return_entropy=True, **kw)
    for name in ("loss", "grad", "lse", "entropy"):
        assert_close(getattr(fast, name), getattr(expected, name), np.float64, name)
    # the z-loss term is added to the focal term
    no_z = ref.cross_entropy(x, target, focal_gamma=1.5, weight=weight, sample_weight=sample_weight, reduction="none")
    lse = ref.logsumexp(x, axis=1)
    kept = target != -100
    with_z = ref.cross_entropy(x, target, reduction="none", **kw)
    np.testing.assert_allclose(with_z, np.where(kept, no_z + 1e-2 * sample_weight * lse**2, 0.0), rtol=1e-13)


@pytest.mark.parametrize("gamma", [0.25, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_against_a_pytorch_formula_in_float64(gamma, reduction):
    torch = pytest.importorskip("torch")
    x, target, weight, _ = _case(np.float64, 9, n_rows=30)
    t = torch.tensor(x, requires_grad=True)
    tt = torch.tensor(np.where(target == -100, 0, target))
    kept = torch.tensor(target != -100, dtype=torch.float64)
    log_p = torch.log_softmax(t, 1).gather(1, tt[:, None])[:, 0]
    w = torch.tensor(weight)[tt] * kept
    per_row = -w * (1 - log_p.exp()) ** gamma * log_p  # alpha = class weight, as torch's focal losses
    loss = {"mean": per_row.sum() / w.sum(), "sum": per_row.sum(), "none": per_row}[reduction]
    loss.sum().backward()
    fast_loss, fast_grad = sml.cross_entropy_with_grad(x, target, weight=weight, focal_gamma=gamma, reduction=reduction)
    np.testing.assert_allclose(fast_loss, loss.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(fast_grad, t.grad.numpy(), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("gamma", [0.3, 1.0, 2.5])
def test_finite_differences_in_float64(gamma):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 7))
    target = rng.integers(0, 7, 6)
    weight = rng.uniform(0.5, 2.0, 7)
    _, grad = sml.cross_entropy_with_grad(x, target, weight=weight, focal_gamma=gamma)
    h = 1e-6
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (sml.cross_entropy(up, target, weight=weight, focal_gamma=gamma)
                          - sml.cross_entropy(down, target, weight=weight, focal_gamma=gamma)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("n_classes", [3, 40, 1500])
def test_gradient_as_p_y_goes_to_one_against_mpmath(gamma, n_classes):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    margins = [2.0, 8.0, 20.0, 35.0, 50.0, 300.0]
    x = np.zeros((len(margins), n_classes))
    for i, margin in enumerate(margins):
        x[i, 1:] = -margin - np.linspace(0, 1, n_classes - 1)
    target = np.zeros(len(margins), np.int64)
    loss, grad = sml.cross_entropy_with_grad(x, target, focal_gamma=gamma, reduction="none")
    for i in range(len(margins)):
        row = [mpmath.mpf(float(v)) for v in x[i]]  # row[0] = 0, the max
        rest = mpmath.fsum(mpmath.exp(v) for v in row[1:])
        total = 1 + rest
        p = [mpmath.exp(v) / total for v in row]
        q = rest / total  # 1 - p_y, without cancellation
        L = mpmath.log1p(rest)
        f = q**gamma * L
        slope = gamma * q ** (gamma - 1) * p[0] * L + q**gamma
        assert abs(float(f) - loss[i]) <= 1e-14 * float(f) + 1e-300, (i, float(f), loss[i])
        exact = [float(slope * (-q if c == 0 else p[c])) for c in range(n_classes)]
        np.testing.assert_allclose(grad[i], exact, rtol=5e-14, atol=1e-300, err_msg=f"margin {margins[i]}")


@pytest.mark.parametrize("gamma", [0.1, 0.5, 1.0, 3.0])
def test_a_certain_row_has_zero_loss_and_gradient(gamma):
    for dtype in (np.float32, np.float64):
        x = np.array([[0.0, -np.inf, -np.inf], [5.0, -1e4, -1e4], [1.0, 2.0, np.inf - np.inf]], dtype)[:2]
        loss, grad = sml.cross_entropy_with_grad(x, np.array([0, 0]), focal_gamma=gamma, reduction="none")
        assert np.all(loss == 0) and np.all(grad == 0) and np.isfinite(grad).all()
        # p_y = 0 (L huge, finite or not): f' = 1, the cross-entropy's gradient
        x = np.array([[0.0, 1e4, 0.0]], dtype)
        loss, grad = sml.cross_entropy_with_grad(x, np.array([0]), focal_gamma=gamma, reduction="sum")
        plain = sml.cross_entropy_with_grad(x, np.array([0]), reduction="sum")
        np.testing.assert_allclose(loss, plain[0], rtol=1e-6)
        np.testing.assert_allclose(grad, plain[1], rtol=1e-6)


def test_bitwise_across_thread_counts():
    rng = np.random.default_rng(5)
    for n_classes in (7, 200, 2000):
        x = rng.standard_normal((200000 // n_classes + 3, n_classes)).astype(np.float32)
        target = rng.integers(0, n_classes, x.shape[0])
        results = [sml.cross_entropy_with_grad(x, target, focal_gamma=2.0, n_threads=t) for t in (1, 2, 3)]
        for loss, grad in results[1:]:
            assert loss.tobytes() == results[0][0].tobytes() and grad.tobytes() == results[0][1].tobytes()


def test_in_place_and_layouts():
    x, target, weight, _ = _case(np.float32, 30, n_rows=20)
    expected = ref.cross_entropy_with_grad(x, target, focal_gamma=2.0, weight=weight)
    work = x.copy()
    loss, grad = sml.cross_entropy_with_grad(work, target, focal_gamma=2.0, weight=weight, out=work)
    assert grad is work
    assert_close(loss, expected[0], np.float32)
    assert_close(grad, expected[1], np.float32)
    loss, grad = sml.cross_entropy_with_grad(np.asfortranarray(x), target, focal_gamma=2.0, weight=weight)
    assert_close(grad, expected[1], np.float32)


def test_torch_adapter_focal():
    torch = pytest.importorskip("torch")
    import softmaxloss.torch as smt
    rng = np.random.default_rng(6)
    x = torch.tensor(rng.standard_normal((12, 9)), requires_grad=True)
    target = torch.tensor(rng.integers(0, 9, 12))
    target[2] = -100
    weight = torch.tensor(rng.uniform(0.5, 2.0, 9))

    def focal(logits):
        return smt.cross_entropy(logits, target, weight=weight, focal_gamma=2.0)

    assert torch.autograd.gradcheck(focal, (x,))
    loss = focal(x)
    expected = sml.cross_entropy(x.detach().numpy(), target.numpy(), weight=weight.numpy(), focal_gamma=2.0)
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-15)
    compiled = torch.compile(focal, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), loss)
    with pytest.raises(ValueError, match="class-index targets only"):
        smt.cross_entropy(x, torch.softmax(x.detach(), 1), focal_gamma=1.0)


def test_jax_adapter_focal():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    import softmaxloss.jax as smj
    rng = np.random.default_rng(8)
    x = rng.standard_normal((12, 9)).astype(np.float32)
    target = rng.integers(0, 9, 12)
    target[0] = -100

    def formula(logits):
        log_p = jax.nn.log_softmax(logits, axis=-1)
        kept = jnp.asarray(target != -100)
        y = jnp.where(kept, jnp.asarray(target), 0)
        log_p_y = jnp.take_along_axis(log_p, y[:, None], -1)[:, 0]
        per_row = -(1 - jnp.exp(log_p_y)) ** 2.0 * log_p_y
        return jnp.where(kept, per_row, 0).sum() / kept.sum()

    loss, grad = jax.jit(jax.value_and_grad(lambda v: smj.cross_entropy(v, jnp.asarray(target), focal_gamma=2.0)))(
        jnp.asarray(x))
    expected, expected_grad = jax.value_and_grad(formula)(jnp.asarray(x))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-6)
    with pytest.raises(NotImplementedError, match="not weight"):
        jax.grad(lambda w: smj.cross_entropy(jnp.asarray(x), jnp.asarray(target), weight=w, focal_gamma=2.0))(
            jnp.ones(9))

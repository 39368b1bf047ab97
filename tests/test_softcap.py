"""softcap=: the logits every loss and softmax sees are cap * tanh(x / cap) (Gemma 2: 30),
formed inside the kernel's pass; the gradient carries the exact slope sech^2(x / cap),
formed as 4 t / (1 + t)^2 with t = e^(-2|x / cap|), never as 1 - tanh^2.

Fast vs reference (and the reference vs mpmath and vs a Liger-style formula in PyTorch)
over the options, dtypes, layouts, thread counts and hostile values; finite differences;
the slope's accuracy where 1 - tanh^2 fails; no N x C temporary; bad caps refused."""

import itertools
import math
import numpy as np
import pytest

import softmaxloss as sml
from softmaxloss import _dispatch
from softmaxloss import reference as ref

from _helpers import assert_close, with_layout
from test_memory_use import peak_allocation, per_row_budget

mpmath = pytest.importorskip("mpmath")

RNG = np.random.default_rng(1602)
# Class counts that reach each cross-entropy path: the few-class block (<= 23 float32 /
# 16 float64 classes), the row groups (<= 1024) and the single long row.
CLASS_COUNTS = [5, 100, 1500]


def _logits(n_rows, n_classes, dtype=np.float64, scale=40.0, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n_rows, n_classes)) * scale).astype(dtype)


def _targets(n_rows, n_classes, seed=0, n_ignored=2):
    rng = np.random.default_rng(seed + 1)
    t = rng.integers(0, n_classes, n_rows)
    t[:n_ignored] = -100
    return t


def _mp_sech2(u):
    """sech^2(u) of the float64 u, correctly rounded (50 digits, then to float64)."""
    with mpmath.workdps(50):
        return float(mpmath.sech(mpmath.mpf(u)) ** 2)


def _mp_slope(x, cap):
    """sech^2(x / cap) of the exact quotient of two float64s."""
    with mpmath.workdps(50):
        return float(mpmath.sech(mpmath.mpf(float(x)) / mpmath.mpf(cap)) ** 2)


def _mp_capped(x, cap):
    with mpmath.workdps(50):
        return float(mpmath.mpf(cap) * mpmath.tanh(mpmath.mpf(float(x)) / mpmath.mpf(cap)))


# ---- the capped logits and their slope ------------------------------------------------------


def _kernel_cap(x, cap, dtype=np.float64):
    """The kernels' own capped logits and slopes (float64, or float32: what float32 and
    half logits are computed on)."""
    x = np.ascontiguousarray(x, dtype)
    capped, slope = np.empty_like(x), np.empty_like(x)
    _dispatch.kernels.softcap_slope(x, cap, capped, slope)
    return capped, slope


def test_slope_is_exact_where_one_minus_tanh_squared_is_not():
    """sech^2 at u = 5, 8, 15 (and across [0, 40]) against mpmath: the kernel's float64 form
    is within a few ulps; 1 - tanh^2 in float32 is off by 1.5e-4 at u = 5 and 6 % at u = 8
    (the issue's figures), and even in float64 it loses digits as u grows."""
    cap = 30.0
    for u in (5.0, 8.0, 15.0):
        exact = _mp_sech2(u)
        _, slope = _kernel_cap(np.array([u * cap]), cap)
        assert abs(slope[0] / exact - 1) < 4e-16 * 8, (u, slope[0], exact)
        reference = ref.softcap_slope(np.array([u * cap]), cap)[0]
        assert abs(reference / exact - 1) < 4e-16 * 8
        th32 = np.tanh(np.float32(u))
        naive32 = float(np.float32(1) - th32 * th32)
        naive_error = abs(naive32 / exact - 1)
        if u == 5.0:
            assert 1e-4 < naive_error < 2e-4, naive_error
        if u == 8.0:
            assert naive_error > 0.05, naive_error
        if u == 15.0:
            assert naive32 == 0.0  # all digits lost
    x = np.linspace(0, 40, 4001) * cap
    _, slope = _kernel_cap(x, cap)
    u = x / cap
    exact = np.array([_mp_slope(v, cap) for v in x])
    # x / cap rounded (half an ulp of u) moves sech^2(u) by up to 2u of those: inherent
    assert np.all(np.abs(slope / exact - 1) <= (8 + 2 * u) * 2.0**-53)
    naive64 = 1 - np.tanh(u) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        assert np.nanmax(np.abs(naive64 / exact - 1)) > 1e-3  # float64's 1 - tanh^2 fails too


def test_capped_logits_are_accurate_everywhere():
    """cap tanh(x / cap) in float64 within 2 ulps of mpmath's (the series below |u| = 1/4,
    the exponential form above), for u over many magnitudes, both signs, and caps tiny and
    huge; +-inf capped to +-cap with slope 0; NaN stays NaN."""
    for cap in (30.0, 1.0, 1e-3, 7.5e5):
        u = np.concatenate([np.geomspace(1e-12, 40, 600), [0.2499999, 0.25, 0.2500001, 1e3]])
        x = np.concatenate([u, -u]) * cap
        capped, slope = _kernel_cap(x, cap)
        exact = np.array([_mp_capped(v, cap) for v in x])
        ulp = np.spacing(np.abs(exact))
        assert np.max(np.abs(capped - exact) / np.maximum(ulp, np.spacing(0.0))) <= 2.0
        exact_slope = np.array([_mp_slope(v, cap) for v in x])
        positive = exact_slope > 0
        assert np.all(slope[~positive] == 0)  # |u| = 1e3: sech^2 underflows
        assert np.all(np.abs(slope - exact_slope)[positive] / exact_slope[positive]
                      <= (8 + 2 * np.abs(x / cap)[positive]) * 2.0**-53)
    capped, slope = _kernel_cap(np.array([np.inf, -np.inf, np.nan, 0.0, -0.0]), 30.0)
    assert capped[:2].tolist() == [30.0, -30.0] and slope[:2].tolist() == [0.0, 0.0]
    assert np.isnan(capped[2]) and np.isnan(slope[2])
    assert capped[3] == 0.0 and not np.signbit(capped[3]) and np.signbit(capped[4]) and slope[3] == 1.0
    for cap in (1e-300, 1e300):  # x / cap overflows / underflows: the limits
        capped, slope = _kernel_cap(np.array([1.0, -2.0, 1e-310]), cap)
        np.testing.assert_array_equal(capped, ref.softcapped(np.array([1.0, -2.0, 1e-310]), cap))


def test_float32_capped_logits_and_slopes():
    """The float32 code (float arithmetic, eight lanes; t from the exact -2|x / cap|): the
    capped logits within 2.5 float32 ulps of the exact ones (2.24 measured; the form before
    the polynomial below 0.6 and the cap as two floats: 3.4 at |x / cap| ~ 0.26-1), the
    slopes within 5 float32 ulps relative, for |x / cap| up to 40 (where 1 - tanh^2 in
    float32 has no digit left)."""
    dense = np.random.default_rng(16).uniform(0.2, 1.5, 400)  # where the capped values' errors peak
    for cap in (30.0, 1.0, 2.5e-3, 7.5e5):
        u = np.concatenate([np.geomspace(1e-9, 40, 800), dense, [0.2499, 0.25, 0.2501, 0.5999, 0.6, 1e3]])
        x = (np.concatenate([u, -u]) * cap).astype(np.float32)
        capped, slope = _kernel_cap(x, cap, np.float32)
        exact = np.array([_mp_capped(v, cap) for v in x])
        assert np.max(np.abs(capped - exact) / np.spacing(np.abs(exact).astype(np.float32))) <= 2.5
        exact_slope = np.array([_mp_slope(v, cap) for v in x])
        positive = exact_slope > 1e-37  # float32's normal range
        assert np.max(np.abs(slope - exact_slope)[positive] / exact_slope[positive]) <= 5 * 2.0**-24
    capped, slope = _kernel_cap(np.array([np.inf, -np.inf, np.nan, 0.0, 3e38]), 1e-30, np.float32)
    assert capped[0] == np.float32(1e-30) and capped[1] == -np.float32(1e-30) and np.isnan(capped[2])
    assert capped[3] == 0 and slope[3] == 1 and slope[0] == 0 and capped[4] == np.float32(1e-30)


@pytest.mark.parametrize("cap", [30.0, 2.5e-3])
def test_float32_slope_depends_on_the_value_only(cap):
    """A chunk of 256 whose every |x / cap| is below 0.6 takes the one pass without exp
    (1 - tanh^2 of the polynomial tanh there); one entry beyond sends its chunk through the
    exp form, whose entries below 0.6 take the same formula per lane: the same bits for
    every other entry, and slopes below 0.6 within 2.5 float32 ulps of sech^2."""
    u = np.random.default_rng(7).uniform(-0.5999, 0.5999, 1000)
    x = (u * cap).astype(np.float32)
    mixed = x.copy()
    mixed[::256] = np.float32(5 * cap)  # every chunk (and the row's tail) leaves the one pass
    capped, slope = _kernel_cap(x, cap, np.float32)
    capped_m, slope_m = _kernel_cap(mixed, cap, np.float32)
    kept = np.ones(x.size, bool)
    kept[::256] = False
    assert capped[kept].tobytes() == capped_m[kept].tobytes()
    assert slope[kept].tobytes() == slope_m[kept].tobytes()
    exact = np.array([_mp_slope(v, cap) for v in x[:200]])
    assert np.max(np.abs(slope[:200] - exact) / exact) <= 2.5 * 2.0**-24


# ---- fast vs reference ------------------------------------------------------------------------


def _expected(name, x, cap, *args, **kwargs):
    """The reference for x's compute dtype: float64 logits in float64 as the math reads
    (`reference`); float32 logits are computed in float32, on their capped logits as the
    kernels' float32 code forms them (within 2.5 float32 ulps of the exact ones, tested
    above): the reference on those, the gradient times the kernels' float32 slopes."""
    if x.dtype != np.float32:
        return getattr(ref, name)(x, *args, softcap=cap, **kwargs)
    return _on_capped(name, x, cap, *args, **kwargs)


OPTION_SETS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"label_smoothing": 0.2},
    {"label_smoothing": 1.0, "reduction": "sum"},
    {"z_loss": 1e-3},
    {"ignore_index": 3},
    {"weight": "w"},
    {"sample_weight": "s"},
    {"weight": "w", "sample_weight": "s", "label_smoothing": 0.1, "z_loss": 1e-4, "reduction": "none"},
]


def _options(opts, n_rows, n_classes):
    rng = np.random.default_rng(7)
    resolved = dict(opts)
    if "ignore_index" in resolved:
        resolved["ignore_index"] = min(resolved["ignore_index"], n_classes - 1)
    if resolved.get("weight") == "w":
        resolved["weight"] = rng.uniform(0.2, 2.0, n_classes)
    if resolved.get("sample_weight") == "s":
        resolved["sample_weight"] = rng.uniform(0.0, 2.0, n_rows)
    return resolved


def _grad_scale(grad):
    return float(np.max(np.abs(np.asarray(grad, np.float64)), initial=0.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
def test_index_targets_every_option_match_the_reference(dtype, n_classes):
    n_rows = 70  # more than one block of 64 rows
    x = _logits(n_rows, n_classes, dtype)
    for opts in OPTION_SETS:
        kw = _options(opts, n_rows, n_classes)
        t = _targets(n_rows, n_classes)
        if "ignore_index" in kw:
            t = np.where(t == -100, kw["ignore_index"], t)
        for cap in (30.0, 2.5):
            loss, grad = sml.cross_entropy_with_grad(x, t, softcap=cap, **kw)
            loss_r, grad_r = _expected("cross_entropy_with_grad", x, cap, t, **kw)
            assert_close(loss, loss_r, what=f"{opts} loss")
            assert_close(grad, grad_r, what=f"{opts} grad", scale=_grad_scale(grad_r))
            assert_close(sml.cross_entropy(x, t, softcap=cap, **kw), loss_r, what=f"{opts} loss only")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", [2, 5, 23, 100, 1500])
def test_the_focal_loss_of_the_capped_logits_matches_the_reference(dtype, n_classes):
    """focal_gamma with softcap: the focal loss of cap * tanh(x / cap) (class and sample
    weights, ignored rows, z-loss, every reduction), its gradient times the slope, on
    every path (blocks, groups, single rows)."""
    n_rows = 70
    x = _logits(n_rows, n_classes, dtype, scale=10.0)
    t = _targets(n_rows, n_classes)
    rng = np.random.default_rng(n_classes)
    for kw in [{"focal_gamma": 2.0}, {"focal_gamma": 0.5, "reduction": "sum", "z_loss": 1e-3},
               {"focal_gamma": 1.0, "reduction": "none", "weight": rng.uniform(0.5, 2, n_classes),
                "sample_weight": rng.uniform(0, 2, n_rows)}]:
        loss, grad = sml.cross_entropy_with_grad(x, t, softcap=4.0, **kw)
        loss_r, grad_r = _expected("cross_entropy_with_grad", x, 4.0, t, **kw)
        assert_close(loss, loss_r, what=f"{kw} loss")
        assert_close(grad, grad_r, what=f"{kw} grad", scale=_grad_scale(grad_r))
        plain_focal = sml.cross_entropy_with_grad(x, t, **kw)[1]
        assert not np.allclose(grad, plain_focal)  # the cap is applied, not dropped


def test_finite_differences_of_the_capped_focal_loss():
    rng = np.random.default_rng(12)
    for n_classes in (6, 40, 1100):
        x = rng.standard_normal((5, n_classes)) * 20
        t = rng.integers(0, n_classes, 5)
        _, grad = sml.cross_entropy_with_grad(x, t, softcap=8.0, focal_gamma=2.0)
        h = 1e-3
        for i, j in [(0, 0), (1, t[1]), (2, n_classes - 1), (4, n_classes // 2)]:
            def f(delta):
                y = x.copy()
                y[i, j] += delta
                return float(sml.cross_entropy(y, t, softcap=8.0, focal_gamma=2.0))
            fd = (-f(2 * h) + 8 * f(h) - 8 * f(-h) + f(-2 * h)) / (12 * h)
            assert abs(fd - grad[i, j]) <= 1e-7 * max(abs(grad[i, j]), 1e-4), (n_classes, i, j, fd, grad[i, j])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
def test_probability_targets_match_the_reference(dtype, n_classes):
    n_rows = 33
    x = _logits(n_rows, n_classes, dtype)
    p = RNG.random((n_rows, n_classes)).astype(dtype)
    p /= p.sum(axis=1, keepdims=True)
    p[0] *= 0.5  # a row that does not sum to 1
    for opts in [{}, {"reduction": "sum", "label_smoothing": 0.3}, {"weight": "w", "sample_weight": "s", "z_loss": 1e-3}]:
        kw = _options(opts, n_rows, n_classes)
        loss, grad = sml.cross_entropy_with_grad(x, p, softcap=20.0, **kw)
        loss_r, grad_r = _expected("cross_entropy_with_grad", x, 20.0, p, **kw)
        assert_close(loss, loss_r, what=f"{opts} loss")
        assert_close(grad, grad_r, what=f"{opts} grad", scale=_grad_scale(grad_r))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", [1, 7, 1500])
def test_softmax_family_matches_the_reference(dtype, n_classes):
    x = _logits(9, n_classes, dtype, scale=60.0)
    for name in ("softmax", "log_softmax", "logsumexp"):
        for cap in (30.0, 0.7):
            assert_close(getattr(sml, name)(x, softcap=cap), _expected(name, x, cap), what=name)
            assert_close(getattr(sml, name)(x, axis=0, softcap=cap), _expected(name, x, cap, axis=0), what=name)
            assert_close(getattr(sml, name)(x, axis=None, softcap=cap), _expected(name, x, cap, axis=None), what=name)
    b = RNG.uniform(-1, 2, x.shape)
    for return_sign in (False, True):
        assert_close(sml.logsumexp(x, b=b, return_sign=return_sign, softcap=5.0),
                     ref.logsumexp(x, b=b, return_sign=return_sign, softcap=5.0), what="logsumexp b=")
    assert_close(sml.logsumexp(x, keepdims=True, softcap=3.0), _expected("logsumexp", x, 3.0, keepdims=True))


@pytest.mark.parametrize("layout", ["F", "strided", "negative-strides", "readonly", "byteswapped"])
def test_every_layout_and_the_torch_class_axis(layout):
    for dtype, n_classes in itertools.product([np.float32, np.float64], [5, 100, 1500]):
        x = with_layout(_logits(12, n_classes, dtype), layout)
        t = _targets(12, n_classes)
        loss, grad = sml.cross_entropy_with_grad(x, t, softcap=30.0, label_smoothing=0.1)
        loss_r, grad_r = _expected("cross_entropy_with_grad", x, 30.0, t, label_smoothing=0.1)
        assert_close(loss, loss_r)
        assert_close(grad, grad_r, scale=_grad_scale(grad_r))
        assert_close(sml.log_softmax(x, softcap=30.0), _expected("log_softmax", x, 30.0))
    x = _logits(24, 50, np.float32).reshape(6, 4, 50).transpose(0, 2, 1)  # (N, C, d), class axis 1
    t = RNG.integers(0, 50, (6, 4))
    loss, grad = sml.cross_entropy_with_grad(x, t, axis=1, softcap=30.0)
    loss_r, grad_r = _expected("cross_entropy_with_grad", x, 30.0, t, axis=1)
    assert_close(loss, loss_r)
    assert_close(grad, grad_r, scale=_grad_scale(grad_r))


@pytest.mark.parametrize("n_classes", [5, 100, 1500])
def test_out_and_in_place(n_classes):
    for dtype in (np.float32, np.float64):
        x = _logits(40, n_classes, dtype)
        t = _targets(40, n_classes)
        loss_r, grad_r = _expected("cross_entropy_with_grad", x, 30.0, t, z_loss=1e-3)
        out = np.full_like(x, 7.0)
        loss, grad = sml.cross_entropy_with_grad(x, t, softcap=30.0, z_loss=1e-3, out=out)
        assert grad is out
        assert_close(grad, grad_r, scale=_grad_scale(grad_r))
        y = x.copy()
        loss, grad = sml.cross_entropy_with_grad(y, t, softcap=30.0, z_loss=1e-3, out=y)
        assert grad is y
        assert_close(loss, loss_r)
        assert_close(grad, grad_r, scale=_grad_scale(grad_r))
        f = np.asfortranarray(np.full_like(x, 7.0))
        sml.cross_entropy_with_grad(x, t, softcap=30.0, z_loss=1e-3, out=f)
        assert_close(f, grad_r, scale=_grad_scale(grad_r))
        for name in ("softmax", "log_softmax"):
            y = x.copy()
            assert getattr(sml, name)(y, out=y, softcap=30.0) is y
            assert_close(y, _expected(name, x, 30.0))


def test_where_mask_composes():
    x = _logits(20, 30, np.float64)
    t = RNG.integers(0, 30, 20)
    where = RNG.random((20, 30)) < 0.7
    where[3] = False
    where[4, :] = False
    where[4, 5] = True
    for opts in [{}, {"label_smoothing": 0.2}, {"weight": "w", "reduction": "sum"}, {"z_loss": 1e-3, "reduction": "none"}]:
        kw = _options(opts, 20, 30)
        for dtype in (np.float32, np.float64):
            xd = x.astype(dtype)
            loss, grad = sml.cross_entropy_with_grad(xd, t, where=where, softcap=10.0, **kw)
            loss_r, grad_r = ref.cross_entropy_with_grad(xd, t, where=where, softcap=10.0, **kw)
            assert_close(loss, loss_r, what=str(opts))
            assert_close(grad, grad_r, what=str(opts), scale=_grad_scale(grad_r))
            assert np.all(grad[~where & (np.arange(30) != t[:, None])] == 0)
    p = RNG.random((20, 30))
    loss, grad = sml.cross_entropy_with_grad(x, p, where=where, softcap=10.0)
    loss_r, grad_r = ref.cross_entropy_with_grad(x, p, where=where, softcap=10.0)
    assert_close(loss, loss_r)
    assert_close(grad, grad_r, scale=_grad_scale(grad_r))


def _on_capped(name, x, cap, *args, **kwargs):
    """The reference on what the kernel computes on: the capped logits in the logits'
    dtype (float32: the kernels' own float32 capped logits and slopes, within 2.5 float32
    ulps of the exact ones; float64: the exact ones rounded once). Near-ties at the cap,
    which any float32 softmax resolves by rounding, are then the kernel's own; the
    gradient is the reference's times the slope."""
    if x.dtype == np.float32:
        flat, slope = _kernel_cap(np.asarray(x).ravel(), cap, np.float32)
        capped, slope = flat.reshape(x.shape), slope.reshape(x.shape).astype(np.float64)
    else:
        capped, slope = ref.softcapped(x, cap).astype(x.dtype), ref.softcap_slope(x, cap)
    result = getattr(ref, name)(capped, *args, **kwargs)
    if name != "cross_entropy_with_grad":
        return result
    with np.errstate(invalid="ignore"):
        grad = np.where(result[1] != 0, result[1] * slope, 0.0).astype(x.dtype)
    return result[0], grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
def test_extra_outputs_are_the_capped_logits(dtype, n_classes):
    """return_lse / return_entropy / return_argmax with softcap: the capped logits'
    log-sum-exp, entropy and argmax (the reference on what the kernel computes on), the
    loss and gradient unchanged by asking for them; index and probability targets, with
    and without the gradient, with the focal loss."""
    n_rows, cap = 70, 30.0
    x = _logits(n_rows, n_classes, dtype)
    t = _targets(n_rows, n_classes)
    x[5, :3] = 1e4  # saturated: three logits tie at the cap, the first wins
    flags = dict(return_lse=True, return_entropy=True, return_argmax=True)
    expected = _on_capped("cross_entropy", x, cap, t, reduction="none", **flags)
    tol = dict(rtol=3e-6, atol=3e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for call in (sml.cross_entropy, sml.cross_entropy_with_grad):
        got = call(x, t, softcap=cap, reduction="none", **flags)
        np.testing.assert_allclose(got.lse, expected.lse, **tol)
        np.testing.assert_allclose(got.entropy, expected.entropy, **tol)
        np.testing.assert_array_equal(got.argmax, expected.argmax)
        assert got.argmax[5] == 0 and got.n_correct == expected.n_correct
        assert got.lse.dtype == dtype and got.argmax.dtype == np.int64
    for kw in [{}, {"label_smoothing": 0.1, "z_loss": 1e-3, "reduction": "sum"}, {"focal_gamma": 2.0}]:
        loss, grad = sml.cross_entropy_with_grad(x, t, softcap=cap, **kw)
        both = sml.cross_entropy_with_grad(x, t, softcap=cap, **kw, **flags)
        np.testing.assert_array_equal(both.loss, loss)
        np.testing.assert_array_equal(both.grad, grad)
    p = RNG.random((n_rows, n_classes))
    got = sml.cross_entropy_with_grad(x, p, softcap=cap, **flags)
    _, grad = sml.cross_entropy_with_grad(x, p, softcap=cap)
    np.testing.assert_array_equal(got.grad, grad)
    np.testing.assert_allclose(got.lse, expected.lse, **tol)
    np.testing.assert_allclose(got.entropy, expected.entropy, **tol)
    np.testing.assert_array_equal(got.argmax, expected.argmax)
    ref_outputs = ref.cross_entropy(x.astype(np.float64), t, softcap=cap, reduction="none", **flags)
    np.testing.assert_allclose(ref_outputs.lse, expected.lse, rtol=1e-6)  # the reference caps them too


def test_hostile_values():
    """|x / cap| up to 20 and far beyond, +-inf, NaN rows, all -inf rows; caps tiny and huge
    (huge: |x / cap| up to 5, the capped logits ~1e30 apart, where the softmax is one-hot)."""
    n_classes = 40
    for dtype in (np.float32, np.float64):
        for cap, spread in ((30.0, 20.0), (1e-3, 20.0), (1e-30, 20.0), (1e30, 2.0)):
            x = (RNG.standard_normal((10, n_classes)) * spread * cap).astype(dtype)
            x[1, :5] = np.inf
            x[2, 3] = np.nan
            x[3, :] = -np.inf
            x[4, :] = np.finfo(dtype).max
            x[5, ::2] = -np.finfo(dtype).max
            x[6] = np.linspace(-1e4, 1e4, n_classes) * cap
            t = RNG.integers(0, n_classes, 10)
            t[7] = -100
            x[7, 0] = np.nan  # an ignored row with NaN: loss and gradient 0
            with np.errstate(all="ignore"):
                loss, grad = sml.cross_entropy_with_grad(x, t, softcap=cap, reduction="none")
                loss_r, grad_r = _on_capped("cross_entropy_with_grad", x, cap, t, reduction="none")
                exact_loss, _ = ref.cross_entropy_with_grad(x, t, softcap=cap, reduction="none")
            # and the loss itself close to the exact one (the capped logits' rounding is
            # at most half an ulp of the cap per logit)
            finite = np.isfinite(exact_loss)
            assert np.all(np.abs(loss[finite] - exact_loss[finite]) <= 4 * np.spacing(dtype(cap)) + 1e-6 * np.abs(exact_loss[finite]))
            assert_close(loss, loss_r, what=f"cap {cap}")
            assert_close(grad, grad_r, what=f"cap {cap}", scale=_grad_scale(grad_r[np.isfinite(grad_r)]))
            assert loss[7] == 0 and np.all(grad[7] == 0)
            assert np.all(np.isfinite(loss[[1, 3, 4, 5, 6]]))  # capped: +-inf and huge logits become finite
            assert np.isnan(loss[2]) and np.all(np.isnan(grad[2]))
            for name in ("softmax", "log_softmax", "logsumexp"):
                with np.errstate(all="ignore"):
                    assert_close(getattr(sml, name)(x, softcap=cap), _on_capped(name, x, cap), what=name)


def test_bitwise_the_same_for_every_thread_count():
    x = _logits(3000, 1500, np.float32, seed=3)
    t = _targets(3000, 1500)
    base = sml.cross_entropy_with_grad(x, t, softcap=30.0, label_smoothing=0.1, n_threads=1)
    for threads in (2, 3):
        other = sml.cross_entropy_with_grad(x, t, softcap=30.0, label_smoothing=0.1, n_threads=threads)
        assert base[0] == other[0]
        np.testing.assert_array_equal(base[1], other[1])
    s1 = sml.softmax(x, softcap=30.0, n_threads=1)
    np.testing.assert_array_equal(s1, sml.softmax(x, softcap=30.0, n_threads=2))
    x = _logits(2000, 60, np.float64, seed=4)
    t = _targets(2000, 60)
    base = sml.cross_entropy_with_grad(x, t, softcap=5.0, n_threads=1)
    other = sml.cross_entropy_with_grad(x, t, softcap=5.0, n_threads=2)
    assert base[0] == other[0]
    np.testing.assert_array_equal(base[1], other[1])


def test_softcap_none_is_the_plain_call():
    x = _logits(64, 300, np.float32)
    t = _targets(64, 300)
    plain = sml.cross_entropy_with_grad(x, t)
    none = sml.cross_entropy_with_grad(x, t, softcap=None)
    assert plain[0] == none[0]
    np.testing.assert_array_equal(plain[1], none[1])
    np.testing.assert_array_equal(sml.softmax(x), sml.softmax(x, softcap=None))
    # and the cap changes the result
    capped = sml.cross_entropy_with_grad(x, t, softcap=30.0)
    assert capped[0] != plain[0]


def test_a_huge_cap_is_the_plain_loss_and_a_capped_row_is_bounded():
    x = _logits(16, 50, np.float64, scale=3.0)
    t = _targets(16, 50, n_ignored=0)
    loss, grad = sml.cross_entropy_with_grad(x, t)
    loss_c, grad_c = sml.cross_entropy_with_grad(x, t, softcap=1e8)
    assert abs(loss_c - loss) < 1e-12 * abs(loss)
    np.testing.assert_allclose(grad_c, grad, rtol=1e-10, atol=1e-14)
    # with cap c every capped logit is in (-c, c): the loss is at most 2c + log C per row
    x = _logits(16, 50, np.float64, scale=1e6)
    losses = sml.cross_entropy(x, t, softcap=2.0, reduction="none")
    assert np.all(losses <= 4.0 + math.log(50))


# ---- vs PyTorch (a Liger-style formula) and finite differences -------------------------------


def test_matches_a_liger_style_formula_in_float64():
    """Liger's soft-capped cross-entropy, written in PyTorch: F.cross_entropy on
    cap * tanh(x / cap), autograd through tanh (in float64, where 1 - tanh^2 is still good
    enough for moderate u)."""
    torch = pytest.importorskip("torch")
    for n_classes in (5, 100, 1500):
        x = _logits(30, n_classes, np.float64, scale=20.0)
        t = _targets(30, n_classes)
        for kw in [{}, {"label_smoothing": 0.1}, {"reduction": "sum", "weight": "w"}]:
            kw = _options(kw, 30, n_classes)
            xt = torch.tensor(x, requires_grad=True)
            tkw = dict(kw)
            if "weight" in tkw:
                tkw["weight"] = torch.tensor(tkw["weight"])
            loss_t = torch.nn.functional.cross_entropy(30.0 * torch.tanh(xt / 30.0), torch.tensor(t), **tkw)
            loss_t.backward()
            loss, grad = sml.cross_entropy_with_grad(x, t, softcap=30.0, **kw)
            assert abs(loss - loss_t.item()) <= 1e-12 * abs(loss_t.item())
            np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-10, atol=1e-13 * np.abs(grad).max())


def test_finite_differences_of_the_loss():
    """4th-order central differences of the float64 loss against its gradient."""
    rng = np.random.default_rng(11)
    for n_classes, kw in [(6, {}), (40, {"label_smoothing": 0.2, "z_loss": 0.01}), (1100, {"reduction": "sum"})]:
        x = rng.standard_normal((5, n_classes)) * 30
        t = rng.integers(0, n_classes, 5)
        cap = 12.0
        _, grad = sml.cross_entropy_with_grad(x, t, softcap=cap, **kw)
        h = 1e-3
        for i, j in [(0, 0), (1, t[1]), (2, n_classes - 1), (4, n_classes // 2)]:
            def f(delta):
                y = x.copy()
                y[i, j] += delta
                return float(sml.cross_entropy(y, t, softcap=cap, **kw))
            fd = (-f(2 * h) + 8 * f(h) - 8 * f(-h) + f(-2 * h)) / (12 * h)
            assert abs(fd - grad[i, j]) <= 1e-7 * max(abs(grad[i, j]), 1e-4), (i, j, fd, grad[i, j])
    x = rng.standard_normal((4, 9)) * 10
    p = rng.random((4, 9))
    _, grad = sml.cross_entropy_with_grad(x, p, softcap=4.0)
    for i, j in [(0, 0), (3, 8)]:
        def g(delta):
            y = x.copy()
            y[i, j] += delta
            return float(sml.cross_entropy(y, p, softcap=4.0))
        fd = (-g(2e-3) + 8 * g(1e-3) - 8 * g(-1e-3) + g(-2e-3)) / 12e-3
        assert abs(fd - grad[i, j]) <= 1e-7 * max(abs(grad[i, j]), 1e-4)


def test_float32_gradient_keeps_its_digits_far_out_on_the_tanh():
    """Logits at u = 5, 8, 15 (where 1 - tanh^2 loses 1.5e-4, 6 %, everything in float32):
    the float32 gradient entries are within a few float32 ulps of the exact ones."""
    cap = 30.0
    x = np.array([[5 * cap, 8 * cap, 15 * cap, -8 * cap, 0.0, 1.0]], np.float32)
    t = np.array([0])
    _, grad = sml.cross_entropy_with_grad(x, t, softcap=cap, reduction="sum")
    capped, _ = _kernel_cap(x[0], cap, np.float32)  # what the float32 kernel computes on
    _, grad_capped = ref.cross_entropy_with_grad(capped[None].astype(np.float64), t, reduction="sum")
    exact = grad_capped * np.array([[_mp_slope(v, cap) for v in x[0]]])
    rel = np.abs(grad.astype(np.float64) - exact) / np.abs(exact)
    assert np.all(rel < 8 * 2.0**-24), rel
    naive = 1 - np.tanh(x.astype(np.float32) / np.float32(cap)) ** 2  # Liger's form in float32
    rel_naive = np.abs(grad_capped * naive - exact) / np.abs(exact)
    assert rel_naive[0, 1] > 0.05 and rel_naive[0, 2] == 1.0


# ---- half precision -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bfloat16", "float16"])
@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
def test_half_logits_are_the_float32_result_rounded_once(name, n_classes):
    if name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        half = np.dtype(ml_dtypes.bfloat16)
    else:
        half = np.dtype(np.float16)
    x = _logits(70, n_classes, np.float32, scale=10.0).astype(half)
    x32 = x.astype(np.float32)
    t = _targets(70, n_classes)
    for kw in [{}, {"label_smoothing": 0.1, "z_loss": 1e-3, "reduction": "sum"}]:
        loss, grad = sml.cross_entropy_with_grad(x, t, softcap=30.0, **kw)
        _, grad32 = sml.cross_entropy_with_grad(x32, t, softcap=30.0, **kw)
        assert grad.dtype == half and loss.dtype == half
        np.testing.assert_array_equal(grad.view(np.uint16), grad32.astype(half).view(np.uint16))
        loss_r = ref.cross_entropy(x, t, softcap=30.0, **kw)
        assert abs(float(loss) - float(loss_r)) <= float(np.finfo(np.float16).eps) * abs(float(loss_r))
        y = x.copy()
        sml.cross_entropy_with_grad(y, t, softcap=30.0, out=y, **kw)
        np.testing.assert_array_equal(y.view(np.uint16), grad.view(np.uint16))
    p = RNG.random((70, n_classes))
    _, grad = sml.cross_entropy_with_grad(x, p, softcap=30.0)
    _, grad32 = sml.cross_entropy_with_grad(x32, p, softcap=30.0)
    np.testing.assert_array_equal(grad.view(np.uint16), grad32.astype(half).view(np.uint16))
    for fn in ("softmax", "log_softmax"):
        np.testing.assert_array_equal(getattr(sml, fn)(x, softcap=30.0).view(np.uint16),
                                      getattr(sml, fn)(x32, softcap=30.0).astype(half).view(np.uint16))
    flags = dict(return_lse=True, return_entropy=True, return_argmax=True)
    got, got32 = (sml.cross_entropy_with_grad(v, t, softcap=30.0, **flags) for v in (x, x32))
    np.testing.assert_array_equal(got.grad.view(np.uint16), got32.grad.astype(half).view(np.uint16))
    np.testing.assert_array_equal(got.argmax, got32.argmax)
    assert got.lse.dtype == half
    np.testing.assert_allclose(got.lse.astype(np.float32), got32.lse, rtol=float(np.finfo(half).eps))
    lse = sml.logsumexp(x, softcap=30.0)
    assert lse.dtype == half
    np.testing.assert_array_equal(lse.astype(np.float32), sml.logsumexp(x32, softcap=30.0).astype(half).astype(np.float32))


# ---- memory -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_n_by_c_temporary(dtype):
    n_rows, n_classes = 2000, 600
    x = _logits(n_rows, n_classes, dtype)
    t = _targets(n_rows, n_classes)
    budget = per_row_budget(n_rows)
    assert peak_allocation(lambda: sml.cross_entropy(x, t, softcap=30.0)) < budget
    out = np.empty_like(x)
    assert peak_allocation(lambda: sml.cross_entropy_with_grad(x, t, softcap=30.0, out=out)) < budget
    assert peak_allocation(lambda: sml.cross_entropy_with_grad(x, t, softcap=30.0)) < budget + x.nbytes
    assert peak_allocation(lambda: sml.softmax(x, softcap=30.0, out=out)) < budget
    assert peak_allocation(lambda: sml.logsumexp(x, softcap=30.0)) < budget
    p = np.full(x.shape, 1.0 / n_classes)  # float64 (float32 targets are converted: not this option's)
    assert peak_allocation(lambda: sml.cross_entropy_with_grad(x, p, softcap=30.0, out=out)) < budget


# ---- bad caps -----------------------------------------------------------------------------


@pytest.mark.parametrize("cap,error", [(0.0, ValueError), (-1.0, ValueError), (np.nan, ValueError),
                                       (np.inf, ValueError), ("30", TypeError), (True, TypeError),
                                       ([30.0], TypeError), (1 + 2j, TypeError)])
def test_bad_caps_are_refused_before_any_work(cap, error):
    x = _logits(4, 3, np.float64)
    t = np.array([0, 1, 2, 0])
    before = x.copy()
    out = np.full_like(x, 7.0)
    for module in (sml, ref):
        for call in (lambda: module.cross_entropy_with_grad(x, t, softcap=cap, out=out),
                     lambda: module.cross_entropy(x, t, softcap=cap),
                     lambda: module.softmax(x, softcap=cap, out=out),
                     lambda: module.log_softmax(x, softcap=cap),
                     lambda: module.logsumexp(x, softcap=cap)):
            with pytest.raises(error, match="softcap"):
                call()
    np.testing.assert_array_equal(x, before)
    assert np.all(out == 7.0)

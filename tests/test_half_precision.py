"""bfloat16 (ml_dtypes) and float16 logits read and written as stored (issue 16, item 1).

The contract, tested here on every kernel build:
- conversions: half -> float32 exact, float32 -> half rounded once to nearest-even, NaN kept NaN,
  the same bits as NumPy's / ml_dtypes' own conversions (every float16/bfloat16 value, and a
  large sample of float32 ones with every special case);
- results: a half result is exactly the float32 kernel's result on the same logits (converted
  exactly) rounded once: the same bits as the float32 call's result cast to the half dtype;
- accuracy: against the reference (float64, rounded once) results are the correctly rounded
  value except where the exact value lies within float32 rounding of a midpoint between two
  half values, and then the neighbour (`assert_rounded_once`);
- out= and in place, strided layouts, hostile rows, no N x C temporaries, every n_threads.
"""

import sys
import tracemalloc

import numpy as np
import pytest

import softmaxloss as sml
from softmaxloss import _dispatch, reference
from softmaxloss._halfdtypes import round_float64

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
HALF = {"bfloat16": BF16, "float16": F16}
KIND = {"bfloat16": 0, "float16": 1}
BITS = {"bfloat16": 8, "float16": 11}  # significand bits
SUBNORMAL_ULP = {"bfloat16": 2.0**-133, "float16": 2.0**-24}

# class counts that take the float32 block path (<= 23), the group path (<= 1024), the row path
CLASSES = [5, 100, 1500]


def bits(a):
    return np.ascontiguousarray(a).view(np.uint16)


def same_bits(a, b):
    """Equal as stored (a NaN equal to any NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    nan_a, nan_b = np.isnan(a.astype(np.float32)), np.isnan(b.astype(np.float32))
    unsigned = f"u{a.dtype.itemsize}"
    a, b = np.ascontiguousarray(a).view(unsigned), np.ascontiguousarray(b).view(unsigned)
    return bool(np.array_equal(nan_a, nan_b) and np.array_equal(a[~nan_a], b[~nan_b]))


def logits(rng, name, shape, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(HALF[name])


def assert_rounded_once(actual, exact, name, float32=None, minimum_fraction=0.999):
    """The budget: each element of `actual` (half) is within 0.5 half ulp of the float32-math
    value `float32` (the float32 kernel's result, itself within its own budget of the exact
    value), i.e. |actual - exact| <= 0.5 ulp + |float32 - exact| (without `float32`, a
    float32-rounding 2^-21 relative in its place); and at least `minimum_fraction` of them are
    float64 `exact` correctly rounded. Returns that fraction."""
    exact = np.asarray(exact, np.float64)
    f32_error = (np.abs(exact) * 2.0**-21 if float32 is None
                 else np.abs(np.asarray(float32, np.float64) - exact))
    actual64 = np.asarray(actual).astype(np.float64)
    rounded = round_float64(exact, HALF[name]).astype(np.float64)
    finite = np.isfinite(exact) & np.isfinite(rounded)
    equal = (actual64 == rounded) | (np.isnan(actual64) & np.isnan(exact))
    ulp = np.maximum(np.exp2(np.floor(np.log2(np.maximum(np.abs(exact), 2.0**-140))) - (BITS[name] - 1)),
                     SUBNORMAL_ULP[name])
    close = finite & (np.abs(actual64 - exact) <= 0.5 * ulp + f32_error)
    assert np.all(equal | close), (actual64[~(equal | close)][:5], exact[~(equal | close)][:5])
    fraction = float(equal.mean()) if equal.size else 1.0
    assert fraction >= minimum_fraction
    return fraction


# ---- conversions -------------------------------------------------------------------------------

SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0,
                    65504.0, 65519.99, 65520.0, 65536.0, 6.1035156e-05, 6.0e-08, 5.96e-08, 2.98e-08,
                    2.9e-08, 1e-45, -1e-45, 1.1754944e-38, 1e-40, 3.3895314e38, 3.3961e38, 3.4028235e38,
                    1.00390625, 1.01171875, 1.0009765625, 1.0029296875], np.float32)


def float32_sample(rng):
    mantissas = rng.integers(0, 2**32, 1 << 18, dtype=np.uint64).astype(np.uint32)
    # every exponent, and the bit patterns around each rounding midpoint of both half formats
    ties = (rng.integers(0, 2**16, 1 << 14, dtype=np.uint32) << 16) | np.uint32(0x8000)
    f16_ties = (rng.integers(0, 2**19, 1 << 14, dtype=np.uint32) << 13) | np.uint32(0x1000)
    patterns = np.concatenate([mantissas, ties, ties + 1, ties - 1, f16_ties, f16_ties + 1, f16_ties - 1])
    return np.concatenate([SPECIAL, patterns.view(np.float32)])


@pytest.mark.parametrize("name", sorted(HALF))
def test_float32_to_half_rounds_once_to_nearest_even(kernel_build, rng, name):
    x = float32_sample(rng)
    out = np.empty(x.shape, np.uint16)
    _dispatch.kernels.half_from_float32(x, out, KIND[name])
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(HALF[name]).view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(out[~nan], expected[~nan])
    back = out.view(HALF[name]).astype(np.float32)
    assert np.isnan(back[nan]).all()  # NaN kept NaN, its sign too
    assert np.array_equal(np.signbit(back[nan]), np.signbit(x[nan]))


@pytest.mark.parametrize("name", sorted(HALF))
def test_half_to_float32_is_exact_for_every_value(kernel_build, name):
    every = np.arange(2**16, dtype=np.uint16)
    out = np.empty(every.shape, np.float32)
    _dispatch.kernels.half_to_float32(every, out, KIND[name])
    expected = every.view(HALF[name]).astype(np.float32)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(out), nan)
    assert np.array_equal(out.view(np.uint32)[~nan], expected.view(np.uint32)[~nan])


def test_reference_rounds_float64_to_bfloat16_once(rng):
    """round_float64 rounds once: to the nearer of the two bfloat16 neighbours, the even one
    on a tie (ml_dtypes before 0.7.0 cast float64 -> bfloat16 through float32, twice: then
    1 + 2**-8 + 2**-30 came out 1.0; 0.7.0 rounds once, so its cast is not relied on)."""
    x = np.concatenate([rng.standard_normal(20000) * np.exp2(rng.integers(-130, 128, 20000)),
                        [1 + 2**-8 + 2**-30, 1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8 + 2**-40), 3.4e38, 3.3961e38,
                         1e-50, -1e-50, np.inf, -np.inf, np.nan, 0.0]])
    got = round_float64(x, BF16).astype(np.float64)
    assert got[-12] == 1 + 2**-7  # above the tie 1 + 2**-8 by 2**-30: up, where float32 first gives the tie
    finite = np.isfinite(got) & np.isfinite(x)
    down = x[finite].astype(np.float32).astype(BF16)
    candidates = np.stack([np.nextafter(down, np.array(-np.inf, BF16)), down,
                           np.nextafter(down, np.array(np.inf, BF16))]).astype(np.float64)
    distance = np.abs(candidates - x[finite])
    best = distance.min(axis=0)
    assert np.all(np.abs(got[finite] - x[finite]) == best)
    tie = (distance == best).sum(axis=0) > 1
    assert np.all(bits(got[finite][tie].astype(BF16)) % 2 == 0)
    assert np.isnan(got[-2]) and got[-3] == -np.inf and got[-4] == np.inf


# ---- results: the float32 kernels' results rounded once --------------------------------------------

def cross_entropy_cases(rng, n_classes):
    n = 70
    y = rng.integers(0, n_classes, n)
    y[3] = -100
    weight = rng.uniform(0.5, 2.0, n_classes)
    sample_weight = rng.uniform(0.0, 2.0, n)
    return y, [
        {},
        dict(reduction="sum"),
        dict(reduction="none", label_smoothing=0.1),
        dict(weight=weight, sample_weight=sample_weight, z_loss=1e-3),
        dict(label_smoothing=1.0, reduction="sum"),
    ]


@pytest.mark.parametrize("name", sorted(HALF))
@pytest.mark.parametrize("n_classes", CLASSES)
def test_cross_entropy_is_the_float32_result_rounded_once(kernel_build, rng, name, n_classes):
    y, options = cross_entropy_cases(rng, n_classes)
    x = logits(rng, name, (len(y), n_classes))
    x32 = x.astype(np.float32)
    for option in options:
        loss, grad = sml.cross_entropy_with_grad(x, y, **option)
        _, grad32 = sml.cross_entropy_with_grad(x32, y, **option)
        assert grad.dtype == HALF[name] and np.asarray(loss).dtype == HALF[name]
        assert same_bits(grad, grad32.astype(HALF[name])), option
        assert same_bits(loss, sml.cross_entropy(x, y, **option)), option
        ref_loss, ref_grad = reference.cross_entropy_with_grad(x, y, **option)
        assert_rounded_once(grad, reference.cross_entropy_with_grad(x.astype(np.float64), y, **option)[1], name,
                            grad32)
        assert_rounded_once(loss, reference.cross_entropy(x.astype(np.float64), y, **option), name,
                            minimum_fraction=0.0)
        assert ref_grad.dtype == HALF[name] and np.asarray(ref_loss).dtype == HALF[name]


@pytest.mark.parametrize("name", sorted(HALF))
@pytest.mark.parametrize("n_classes", [5, 1500])
def test_probability_targets(kernel_build, rng, name, n_classes):
    x = logits(rng, name, (40, n_classes))
    t = rng.dirichlet(np.ones(n_classes), 40)
    for option in ({}, dict(label_smoothing=0.2, z_loss=1e-3, reduction="sum")):
        loss, grad = sml.cross_entropy_with_grad(x, t, **option)
        _, grad32 = sml.cross_entropy_with_grad(x.astype(np.float32), t, **option)
        assert same_bits(grad, grad32.astype(HALF[name]))
        assert_rounded_once(grad, reference.cross_entropy_with_grad(x.astype(np.float64), t, **option)[1], name,
                            grad32)


@pytest.mark.parametrize("name", sorted(HALF))
@pytest.mark.parametrize("n_classes", CLASSES)
def test_softmax_log_softmax_logsumexp(kernel_build, rng, name, n_classes):
    x = logits(rng, name, (50, n_classes))
    x32, x64 = x.astype(np.float32), x.astype(np.float64)
    for function in (sml.softmax, sml.log_softmax):
        result = function(x)
        assert result.dtype == HALF[name]
        assert same_bits(result, function(x32).astype(HALF[name]))
        assert_rounded_once(result, getattr(reference, function.__name__)(x64), name, function(x32))
    lse = sml.logsumexp(x)
    assert lse.dtype == HALF[name]
    assert_rounded_once(lse, reference.logsumexp(x64), name)
    assert same_bits(reference.logsumexp(x), round_float64(reference.logsumexp(x64), HALF[name]))


@pytest.mark.parametrize("name", sorted(HALF))
def test_layouts_out_and_in_place(rng, name):
    x = logits(rng, name, (30, 1200))
    y = rng.integers(0, 1200, 30)
    loss, grad = sml.cross_entropy_with_grad(x, y)
    # the class axis strided (axis 0 of the transpose), F order, an (N, C, d) layout
    xt = np.ascontiguousarray(x.T)
    assert same_bits(sml.cross_entropy_with_grad(xt, y, axis=0)[1], grad.T)
    assert same_bits(sml.cross_entropy_with_grad(np.asfortranarray(x), y)[1], grad)
    x3 = np.ascontiguousarray(x.reshape(10, 3, 1200).transpose(0, 2, 1))
    assert same_bits(sml.cross_entropy_with_grad(x3, y.reshape(10, 3), axis=1)[1],
                     grad.reshape(10, 3, 1200).transpose(0, 2, 1))
    # out= of the half dtype (written directly), of float32 (the half result cast), in place
    out = np.full_like(x, 7)
    result = sml.cross_entropy_with_grad(x, y, out=out)
    assert result[1] is out and same_bits(out, grad) and same_bits(result[0], loss)
    out32 = np.empty(x.shape, np.float32)
    assert same_bits(sml.cross_entropy_with_grad(x, y, out=out32)[1], grad.astype(np.float32))
    inplace = x.copy()
    assert sml.cross_entropy_with_grad(inplace, y, out=inplace)[1] is inplace
    assert same_bits(inplace, grad)
    strided_out = np.empty((30, 2400), HALF[name])[:, ::2]
    assert same_bits(sml.cross_entropy_with_grad(x, y, out=strided_out)[1], grad)
    # softmax into out and in place; read-only logits
    p = sml.softmax(x)
    inplace = x.copy()
    assert sml.softmax(inplace, out=inplace) is inplace and same_bits(inplace, p)
    readonly = x.copy()
    readonly.flags.writeable = False
    assert same_bits(sml.softmax(readonly), p)
    assert same_bits(sml.log_softmax(x, out=np.empty_like(x)), sml.log_softmax(x))
    assert same_bits(reference.cross_entropy_with_grad(x, y, out=np.empty_like(x))[1],
                     reference.cross_entropy_with_grad(x, y)[1])


@pytest.mark.parametrize("name", sorted(HALF))
@pytest.mark.parametrize("shape", [(512, 300), (64, 1500)])  # the group path, the row path
def test_bitwise_identical_for_every_thread_count(rng, name, shape):
    x = logits(rng, name, shape)
    y = rng.integers(0, shape[1], shape[0])
    first = sml.cross_entropy_with_grad(x, y, n_threads=1)
    for threads in (2, 3, 8):
        result = sml.cross_entropy_with_grad(x, y, n_threads=threads)
        assert same_bits(result[0], first[0]) and same_bits(result[1], first[1])
        assert same_bits(sml.softmax(x, n_threads=threads), sml.softmax(x, n_threads=1))


@pytest.mark.parametrize("name", sorted(HALF))
@pytest.mark.parametrize("width", [4, 40, 1100])  # the block, group and row paths
def test_hostile_rows(kernel_build, name, width):
    big = float(np.finfo(np.float32).max) if name == "bfloat16" else 65504.0
    rows = np.array([
        [0.0, 1.0, 2.0, 3.0],
        [np.inf, 0.0, 1.0, 2.0],
        [-np.inf, -np.inf, -np.inf, -np.inf],
        [np.nan, 0.0, 1.0, 2.0],
        [-np.inf, 0.0, 1.0, -np.inf],
        [big, -big, 0.0, big],
        [-big, -big, -big, -big],
        [1e-30, -1e-30, 0.0, 5e-8],
    ])
    rows = np.concatenate([rows, np.linspace(-20.0, 1.0, 8 * (width - 4)).reshape(8, -1)], axis=1)
    rows = rows.astype(HALF[name])
    y = np.array([1, 2, 0, 3, 0, 3, 1, width - 1])
    for with_options in ({}, dict(reduction="none", label_smoothing=0.3),
                         dict(reduction="sum", sample_weight=np.full(8, 1e300)),  # scales overflow
                         dict(sample_weight=np.full(8, 1e-310)),  # a subnormal divisor
                         dict(ignore_index=2, weight=np.linspace(0.5, 3.0, width))):
        total, grad = sml.cross_entropy_with_grad(rows, y, **with_options)
        _, grad32 = sml.cross_entropy_with_grad(rows.astype(np.float32), y, **with_options)
        assert same_bits(grad, grad32.astype(HALF[name])), with_options
        assert same_bits(total, sml.cross_entropy(rows, y, **with_options)), with_options
        loss = sml.cross_entropy(rows, y, reduction="none")
        ref = reference.cross_entropy(rows, y, reduction="none")
        assert np.array_equal(np.isnan(loss.astype(np.float32)), np.isnan(ref.astype(np.float32)))
    for function in (sml.softmax, sml.log_softmax):
        with np.errstate(over="ignore"):  # float16 log_softmax: -131008 rounds to -inf
            assert same_bits(function(rows), function(rows.astype(np.float32)).astype(HALF[name]))
    assert same_bits(sml.logsumexp(rows), reference.logsumexp(rows))


@pytest.mark.parametrize("name", sorted(HALF))
def test_no_n_by_c_temporaries(name):
    """Loss only: per-row memory; with out= or in place: per-row memory; a new gradient: the
    gradient itself (half the bytes of a float32 one) plus per-row memory."""
    rng = np.random.default_rng(0)
    x = logits(rng, name, (2000, 600))
    y = rng.integers(0, 600, 2000)
    budget = 6 * 8 * 2000 + 64 * 1024

    def peak(call):
        call()
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            start, _ = tracemalloc.get_traced_memory()
            call()
            return tracemalloc.get_traced_memory()[1] - start
        finally:
            tracemalloc.stop()

    out = np.empty_like(x)
    assert peak(lambda: sml.cross_entropy(x, y)) < budget
    assert peak(lambda: sml.cross_entropy(x, y, reduction="none")) < budget
    assert peak(lambda: sml.cross_entropy_with_grad(x, y, out=out)) < budget
    assert peak(lambda: sml.cross_entropy_with_grad(x, y)) < x.nbytes + budget
    assert peak(lambda: sml.softmax(x, out=out)) < budget
    assert peak(lambda: sml.logsumexp(x)) < budget


def test_bfloat16_dtype_arguments_and_validation(rng):
    x = rng.standard_normal((4, 10))
    assert not np.issubdtype(BF16, np.floating)  # why validation has a case for it
    assert sml.softmax(x, dtype="bfloat16").dtype == BF16
    assert same_bits(sml.softmax(x, dtype=BF16), sml.softmax(x.astype(BF16)))
    assert reference.softmax(x, dtype="bfloat16").dtype == BF16
    out = np.empty((4, 10), BF16)
    assert sml.softmax(x, out=out) is out  # a float64 result rounded into a bfloat16 out
    with pytest.raises(TypeError, match="dtype must be float16, float32, float64 or bfloat16"):
        sml.softmax(x, dtype=np.int32)


def test_bfloat16_needs_ml_dtypes_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes now fails
    with pytest.raises(ImportError, match="optional dependency ml_dtypes"):
        sml.softmax(np.zeros(3), dtype="bfloat16")


@pytest.mark.parametrize("name", sorted(HALF))
def test_kernel_refuses_an_unknown_kind(name):
    x = np.zeros((1, 1, 3), np.uint16)
    with pytest.raises(ValueError, match="kind must be 0"):
        _dispatch.kernels.softmax_half(x, x.copy(), False, 2, 1)


# ---- the PyTorch adapter ------------------------------------------------------------------------

def torch_half(name):
    torch = pytest.importorskip("torch")
    return torch, getattr(torch, name)


@pytest.mark.parametrize("name", sorted(HALF))
def test_torch_half_tensors_are_read_and_written_as_stored(rng, name):
    torch, dtype = torch_half(name)
    import softmaxloss.torch as st

    base = torch.from_numpy(rng.standard_normal((40, 1200)).astype(np.float32) * 3).to(dtype)
    for x in (base, base[:, ::2], base.t()):  # contiguous, strided classes, F order (class axis 0 of .t())
        array = st._numpy(x)
        assert array.dtype == HALF[name] and np.shares_memory(array, x.view(torch.uint16).numpy())
    y = torch.from_numpy(rng.integers(0, 600, 40))
    for x in (base, base[:, ::2].contiguous()):
        x = x.clone().requires_grad_()
        loss = st.cross_entropy(x, y, label_smoothing=0.1)
        loss.backward()
        n_loss, n_grad = sml.cross_entropy_with_grad(st._numpy(x), y.numpy(), label_smoothing=0.1)
        assert loss.dtype == dtype and x.grad.dtype == dtype
        assert same_bits(st._numpy(x.grad), n_grad) and same_bits(st._numpy(loss.detach()), np.asarray(n_loss))


def test_torch_bfloat16_without_ml_dtypes_takes_a_float32_copy(rng, monkeypatch):
    torch, dtype = torch_half("bfloat16")
    import softmaxloss.torch as st

    x = torch.from_numpy(rng.standard_normal((8, 50)).astype(np.float32)).to(dtype).requires_grad_()
    y = torch.from_numpy(rng.integers(0, 50, 8))
    st.cross_entropy(x, y).backward()
    expected = x.grad.clone()
    x.grad = None
    monkeypatch.setattr(st, "_bfloat16", lambda: None)
    assert st._numpy(x).dtype == np.float32
    loss = st.cross_entropy(x, y)
    loss.backward()
    assert loss.dtype == dtype and torch.equal(x.grad, expected)  # the float32 gradient rounded once


def relative_error_off_label(grad, exact, y):
    off = np.ones(exact.shape, bool)
    off[np.arange(len(y)), y] = False
    return np.abs(grad.astype(np.float64)[off] - exact[off]) / np.abs(exact[off])


def test_torch_bfloat16_gradient_is_more_exact_than_pytorchs(rng):
    """PyTorch's CPU bf16 cross-entropy rebuilds p from rounded bf16 log-probabilities; the
    kernel rounds its float32 gradient once. Compared in float64 with the exact gradient."""
    torch, dtype = torch_half("bfloat16")
    import softmaxloss.torch as st

    n, c = 64, 8000
    x = torch.from_numpy(rng.standard_normal((n, c)).astype(np.float32) * 2).to(dtype)
    y = torch.from_numpy(rng.integers(0, c, n))
    exact = reference.cross_entropy_with_grad(x.double().numpy(), y.numpy())[1]
    mine = x.clone().requires_grad_()
    st.cross_entropy(mine, y).backward()
    theirs = x.clone().requires_grad_()
    torch.nn.functional.cross_entropy(theirs, y).backward()
    error = relative_error_off_label(mine.grad.double().numpy(), exact, y.numpy())
    torch_error = relative_error_off_label(theirs.grad.double().numpy(), exact, y.numpy())
    assert np.median(error) <= 2.0**-9  # rounded once: at most half an ulp, 2^-9 relative
    assert np.max(error) <= 2.0**-8
    assert np.median(torch_error) > 4 * np.median(error)


# ---- the JAX adapter ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(HALF))
def test_jax_half_logits(rng, name):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    import softmaxloss.jax as sj

    x = jnp.asarray(rng.standard_normal((32, 500)) * 3, getattr(jnp, name))
    y = jnp.asarray(rng.integers(0, 500, 32))
    loss, grad = jax.value_and_grad(sj.cross_entropy)(x, y)
    n_loss, n_grad = sml.cross_entropy_with_grad(np.asarray(x), np.asarray(y))
    assert loss.dtype == x.dtype and grad.dtype == x.dtype
    assert same_bits(np.asarray(grad), n_grad) and same_bits(np.asarray(loss), np.asarray(n_loss))
    assert same_bits(np.asarray(jax.jit(jax.grad(sj.cross_entropy))(x, y)), n_grad)
    # forward mode: the tangent sum_c grad * dx formed in float32, rounded once to the dtype
    dx = jnp.asarray(rng.standard_normal(x.shape), x.dtype)
    _, tangent = jax.jvp(lambda a: sj.cross_entropy(a, y), (x,), (dx,))
    expected = (n_grad.astype(np.float64) * np.asarray(dx).astype(np.float64)).sum()
    assert tangent.dtype == x.dtype
    assert abs(float(tangent) - expected) <= 2.0**-7 * abs(expected) + 1e-6
    # probability targets' tangent, computed in float32 from the half logits
    t = jnp.asarray(rng.dirichlet(np.ones(500), 32), jnp.float32)
    d_target = jax.grad(sj.cross_entropy, argnums=1)(x, t)
    assert d_target.dtype == jnp.float32
    expected_target = -reference.log_softmax(np.asarray(x)).astype(np.float64) / 32
    np.testing.assert_allclose(np.asarray(d_target), expected_target, rtol=2.0**-7)


@pytest.mark.parametrize("name", sorted(HALF))
def test_every_build_gives_the_same_bits_from_the_same_float32_values(rng, name):
    """The conversions are the same integer code on every build, so two builds' half results
    differ only where their float32 kernels' results do (FMA contraction on AVX2: rarely, by
    one float32 ulp, which moves a half rounding in a few entries per million)."""
    x = logits(rng, name, (300, 1100))
    y = rng.integers(0, 1100, 300)
    results = {}
    for build in sorted(_dispatch.available):
        with _dispatch.use(build):
            results[build] = [(sml.cross_entropy_with_grad(x, y)[1], sml.cross_entropy_with_grad(x.astype(np.float32), y)[1]),
                              (sml.softmax(x), sml.softmax(x.astype(np.float32)))]
    first, *others = results.values()
    for other in others:
        for (half_a, f32_a), (half_b, f32_b) in zip(first, other):
            agree = f32_a.view(np.uint32) == f32_b.view(np.uint32)
            assert np.array_equal(bits(half_a)[agree], bits(half_b)[agree])
            assert (bits(half_a) != bits(half_b)).mean() <= 1e-5

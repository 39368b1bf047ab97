"""The peers' call forms, as their users write them: SciPy's `logsumexp(a, axis=None|int|
tuple, b=, keepdims=, return_sign=)` and `softmax`/`log_softmax(x, axis=None|tuple)`, 0-d
inputs, torch's `dtype=`, scikit-learn's float class labels, `out` of another float
dtype, and `sml.reference` / `sml.testing` as attributes. Fast, reference and SciPy agree
(SciPy's cases from scipy/special/tests/test_logsumexp.py, re-stated here; complex input
stays a TypeError, a deliberate refusal: softmaxloss is for real logits)."""

import math
import re
import subprocess
import sys

import numpy as np
import pytest
from _helpers import assert_close

import softmaxloss as sml
from softmaxloss import reference as ref

special = pytest.importorskip("scipy.special")

RNG = np.random.default_rng(0)
X3 = RNG.standard_normal((3, 4, 5)) * 3


def both(name, *args, **kwargs):
    return getattr(sml, name)(*args, **kwargs), getattr(ref, name)(*args, **kwargs)


@pytest.mark.parametrize("axis", [None, 0, -1, (0, 2), (2, 0), (1,), (), (0, 1, 2), (-1, -2)])
@pytest.mark.parametrize("name", ["logsumexp", "softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_axis_none_and_tuples_as_scipy(name, axis, dtype):
    x = X3.astype(dtype)
    fast, reference = both(name, x, axis)
    expected = getattr(special, name)(x.astype(np.float64), axis=axis).astype(dtype)
    assert_close(fast, reference, dtype)
    np.testing.assert_allclose(np.asarray(fast, np.float64), expected, rtol=10 * np.finfo(dtype).eps,
                               atol=10 * np.finfo(dtype).eps)


@pytest.mark.parametrize("axis", [None, 1, (0, 2)])
def test_logsumexp_keepdims_over_several_axes(axis):
    fast, reference = both("logsumexp", X3, axis, keepdims=True)
    expected = special.logsumexp(X3, axis=axis, keepdims=True)
    assert fast.shape == reference.shape == expected.shape
    np.testing.assert_allclose(fast, expected, rtol=1e-14)


def test_in_place_and_out_over_several_axes():
    x = X3.copy()
    expected = special.softmax(X3, axis=(0, 2))
    assert sml.softmax(x, (0, 2), out=x) is x
    np.testing.assert_allclose(x, expected, rtol=1e-14)
    out = np.empty(X3.shape, np.float32)
    assert sml.log_softmax(X3, None, out=out) is out
    np.testing.assert_allclose(out, special.log_softmax(X3, axis=None), rtol=1e-6)


@pytest.mark.parametrize("value", [3.0, -1e300, np.inf, -np.inf, np.nan, 7])
def test_zero_dimensional_input_is_one_element(value):
    x = np.asarray(value)
    for name in ("logsumexp", "softmax", "log_softmax"):
        fast, reference = both(name, x)
        assert np.shape(fast) == ()
        with np.errstate(invalid="ignore"):
            expected = getattr(special, name)(x.astype(np.float64))
        np.testing.assert_array_equal(np.asarray(fast, np.float64), expected)
        np.testing.assert_array_equal(np.asarray(reference, np.float64), expected)
    assert sml.softmax(np.float32(2), axis=0).dtype == np.float32  # torch's dim=0 of a 0-d tensor


@pytest.mark.parametrize("axis", [None, 0, -1, (), (0,), (-1,)])
def test_zero_dimensional_input_takes_each_axis_form_scipy_and_torch_take(axis):
    """A 0-d array's one element is its own row whatever form names it: axis None, 0, -1,
    alone or in a tuple (torch's dim=(0,), SciPy's axis=(0,)), or the empty tuple."""
    for name in ("logsumexp", "softmax", "log_softmax"):
        for result in both(name, np.float64(2.0), axis=axis):
            assert np.shape(result) == ()
            assert float(result) == {"logsumexp": 2.0, "softmax": 1.0, "log_softmax": 0.0}[name]


@pytest.mark.parametrize("axis,error,message", [
    (1, np.exceptions.AxisError, "axis 1 is out of bounds for array of dimension 0"),
    ((-2,), np.exceptions.AxisError, "axis -2 is out of bounds for array of dimension 0"),
    ((0, -1), ValueError, "repeats an axis"),
])
def test_zero_dimensional_input_refuses_other_axes(axis, error, message):
    for name in ("logsumexp", "softmax", "log_softmax"):
        for module in (sml, sml.reference):
            with pytest.raises(error, match=re.escape(message)):
                getattr(module, name)(np.float64(2.0), axis=axis)


# ---- logsumexp's b= and return_sign=, SciPy's cases --------------------------------------


def test_logsumexp_b_scipy_cases():
    a = np.arange(200.0)
    b = np.arange(200.0, 0.0, -1.0)
    for result in both("logsumexp", a, b=b):
        np.testing.assert_allclose(result, np.log(np.sum(b * np.exp(a))), rtol=1e-14)
    for result in both("logsumexp", np.array([1000, 1000]), b=np.array([1.2, 1.2])):
        np.testing.assert_allclose(result, 1000 + math.log(2 * 1.2), rtol=1e-15)
    x = np.full(100000, 1e-40)
    b = np.linspace(1, 1000, 100000)
    log_x, big_x, big_b = np.log(x), np.stack((x, x)), np.stack((b, b))
    for axis in (None, 0, 1):
        expected = np.sum(big_b * big_x, axis=axis)
        for result in both("logsumexp", np.stack((log_x, log_x)), axis, b=big_b):
            np.testing.assert_allclose(np.exp(result), expected, rtol=1e-12)


def test_logsumexp_b_zero_leaves_an_entry_out_even_at_a_huge_logit():
    for result in both("logsumexp", np.array([1, 10000]), b=np.array([1, 0])):
        np.testing.assert_allclose(result, 1.0)
    for result in both("logsumexp", np.array([1.0, np.inf]), b=np.array([1, 0])):
        np.testing.assert_allclose(result, 1.0)


@pytest.mark.parametrize(
    "a,b,expected_value,expected_sign",
    [
        ([1, 1, 1], [1, -1, -1], 1.0, -1.0),               # scipy: test_logsumexp_sign
        ([1, 1], [1, -1], -np.inf, 0.0),                   # a zero sum: -inf, sign 0
        ([np.inf], None, np.inf, 1.0),                     # gh-23548
        ([np.inf], [-1.0], np.inf, -1.0),
        ([-np.inf], None, -np.inf, 0.0),
        ([3.06409428, 0.37251854, 3.87471931], [1.88190708, 2.84174795, -0.85016884], None, 1.0),  # gh-22903
        ([3.06409428, 0.37251854, 3.87471931], [1.88190708, 2.84174795, -3.85016884], None, -1.0),
        ([1.0, 2.0], [np.nan, 1.0], np.nan, np.nan),
    ],
)
def test_logsumexp_signs(a, b, expected_value, expected_sign):
    a = np.asarray(a, np.float64)
    b = None if b is None else np.asarray(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        scipy_value, scipy_sign = special.logsumexp(a, b=b, return_sign=True)
    for value, sign in both("logsumexp", a, b=b, return_sign=True):
        np.testing.assert_allclose(value, scipy_value if expected_value is None else expected_value, rtol=1e-14)
        np.testing.assert_array_equal(sign, expected_sign)
    # Without return_sign a negative sum is NaN (the log of a negative number).
    for value in both("logsumexp", a, b=b):
        assert np.isnan(value) if expected_sign != 1.0 and expected_sign != 0.0 else not np.isnan(value)


def test_logsumexp_b_broadcasts_and_sign_has_the_result_shape():
    a = np.ones((1, 2, 3, 4))
    for axis, shape in [(2, (1, 2, 4)), ((1, 3), (1, 3))]:
        value, sign = sml.logsumexp(a, axis, b=np.ones_like(a), return_sign=True)
        assert value.shape == sign.shape == shape
    value = sml.logsumexp(np.zeros((4, 1, 2, 1)), None, b=np.ones((3, 1, 5)))  # scipy: test_logsumexp_b_shape
    np.testing.assert_allclose(value, math.log(4 * 3 * 2 * 5))
    with pytest.raises(ValueError, match="does not broadcast"):
        sml.logsumexp(np.ones((2, 3)), b=np.ones(4))


@pytest.mark.parametrize("dtype_a", [np.float32, np.float64, np.int32, np.int64])
@pytest.mark.parametrize("dtype_b", [np.float32, np.float64, np.int32, np.int64])
def test_logsumexp_result_dtype_is_the_promotion_of_a_and_b(dtype_a, dtype_b):
    """scipy: test_dtypes_ab (integers promote to float64)."""
    a, b = np.array([2, 1], dtype_a), np.array([1, -1], dtype_b)
    expected_dtype = np.result_type(dtype_a, dtype_b)
    expected_dtype = np.float64 if expected_dtype.kind in "iu" else expected_dtype
    for result in both("logsumexp", a, b=b):
        assert result.dtype == expected_dtype
        np.testing.assert_allclose(result, math.log(math.exp(2) - math.exp(1)), rtol=1e-6)
    assert sml.logsumexp(np.array([1, 2], np.float32), b=2).dtype == np.float32  # a Python scalar b


def test_logsumexp_inputs_are_not_written_and_array_likes_work():
    a, b = np.array([5.0, 4.0]), np.array([3.0, 2.0])
    sml.logsumexp(a, b=b)
    np.testing.assert_array_equal(a, [5.0, 4.0])
    np.testing.assert_array_equal(b, [3.0, 2.0])
    np.testing.assert_allclose(sml.logsumexp([1000, 1000]), 1000 + math.log(2))
    assert sml.logsumexp(1) == 1.0


def test_complex_input_stays_a_clear_type_error():
    with pytest.raises(TypeError, match="real numeric array"):
        sml.logsumexp(np.array([1 + 1j, 2 - 1j]))


# ---- dtype=, float class labels, out of another float dtype -------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtype_converts_the_input_first(dtype):
    x = RNG.standard_normal((4, 6))
    for name in ("softmax", "log_softmax", "logsumexp"):
        fast, reference = both(name, x, dtype=dtype)
        assert fast.dtype == reference.dtype == dtype
        assert_close(fast, getattr(sml, name)(x.astype(dtype)), dtype)


def test_float_class_labels_are_class_indices_as_scikit_learn_passes_them():
    x = RNG.standard_normal((5, 3))
    labels = np.array([0, 2, 1, 1, 0])
    for function in ("cross_entropy", "cross_entropy_with_grad"):
        for weights in ({}, {"weight": np.array([1.0, 2.0, 0.5])}):
            expected = getattr(sml, function)(x, labels, **weights)
            for result in both(function, x, labels.astype(np.float64), **weights):
                assert_close(result, expected, x.dtype)
    ignored = np.array([0.0, -100.0, 1.0, 1.0, 0.0])
    assert_close(sml.cross_entropy(x, ignored), sml.cross_entropy(x, ignored.astype(int)), x.dtype)
    for bad, message in [(np.array([0, 1.5, 1, 1, 0]), "whole class numbers"), (np.array([0, 3.0, 1, 1, 0]), "target value 3.0")]:
        for function in (sml.cross_entropy, ref.cross_entropy):
            with pytest.raises(ValueError, match=message):
                function(x, bad)


@pytest.mark.parametrize("out_dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_of_another_float_dtype_receives_the_result_cast(dtype, out_dtype):
    x = (RNG.standard_normal((6, 30)) * 3).astype(dtype)
    t = RNG.integers(0, 30, 6)
    out = np.empty(x.shape, out_dtype)
    loss, grad = sml.cross_entropy_with_grad(x, t, out=out)
    assert grad is out
    expected_loss, expected_grad = sml.cross_entropy_with_grad(x, t)
    assert loss == expected_loss
    np.testing.assert_array_equal(out, expected_grad.astype(out_dtype))
    out_ref = np.empty(x.shape, out_dtype)
    ref.cross_entropy_with_grad(x, t, out=out_ref)
    # Both hold the result rounded to the logits' dtype, then to out's: compare in the coarser.
    coarser = min(np.dtype(dtype), np.dtype(out_dtype), key=lambda d: d.itemsize)
    assert_close(out_ref.astype(coarser), out.astype(coarser), coarser)
    for name in ("softmax", "log_softmax"):
        out = np.empty(x.shape, out_dtype)
        assert getattr(sml, name)(x, out=out) is out
        np.testing.assert_array_equal(out, getattr(sml, name)(x).astype(out_dtype))
    grad_out, hess_out = np.empty(x.shape, out_dtype), np.empty(x.shape, out_dtype)
    sml.gradient_hessian(x, t, out=(grad_out, hess_out))
    expected = sml.gradient_hessian(x, t)
    np.testing.assert_array_equal(grad_out, expected[0].astype(out_dtype))
    np.testing.assert_array_equal(hess_out, expected[1].astype(out_dtype))


# ---- submodules as attributes --------------------------------------------------------------


def test_submodules_are_attributes_imported_on_first_use():
    code = (
        "import sys, softmaxloss as sml\n"
        "assert 'torch' not in sys.modules and 'jax' not in sys.modules\n"
        "assert 'softmaxloss.testing' not in sys.modules\n"
        "assert sml.reference.softmax and sml.testing.hostile_cases\n"
        "assert 'softmaxloss.testing' in sys.modules and 'torch' not in sys.modules\n"
        "assert {'reference', 'testing', 'torch', 'jax', 'boosting'} <= set(dir(sml))\n"
        "try:\n    sml.no_such_thing\nexcept AttributeError as e:\n    assert 'no_such_thing' in str(e)\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

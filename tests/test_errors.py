"""Bad input gets a clear error before any work, from the fast functions and the
reference alike (same exception type, same message), and the caller's arrays are
left as they were."""

import numpy as np
import pytest
from numpy.exceptions import AxisError

import softmaxloss as sml
from softmaxloss import reference as ref

RNG = np.random.default_rng(0)
X = RNG.standard_normal((4, 3))
T = np.array([0, 2, 1, 0])
P = np.full((4, 3), 1 / 3)

# (id, function name, args, kwargs, exception, message fragment)
BAD_CALLS = [
    ("target-shape", "cross_entropy", (X, np.zeros(5, int)), {}, ValueError, "(5,)"),
    ("target-shape-names-logits", "cross_entropy", (X, np.zeros(5, int)), {}, ValueError, "(4, 3)"),
    ("probability-shape", "cross_entropy", (X, np.zeros((4, 4))), {}, ValueError, "(4, 4)"),
    ("target-too-big", "cross_entropy", (X, np.array([0, 3, 1, 0])), {}, ValueError, "target value 3 at position (1,)"),
    ("target-negative", "cross_entropy", (X, np.array([0, 1, -1, 0])), {}, ValueError, "target value -1 at position (2,)"),
    ("target-int64-min", "cross_entropy", (X, np.array([0, 1, np.iinfo(np.int64).min, 0])), {}, ValueError, "out of range"),
    ("target-uint64-max", "cross_entropy", (X, np.array([0, 1, 2**64 - 1, 0], np.uint64)), {}, ValueError, str(2**64 - 1)),
    ("target-bool", "cross_entropy", (X, np.array([True, False, True, True])), {}, TypeError, "target"),
    ("target-object", "cross_entropy", (X, np.array([0, 1, 2, 0], object)), {}, TypeError, "target"),
    ("weight-length", "cross_entropy", (X, T), {"weight": np.ones(4)}, ValueError, "shape (3,)"),
    ("sample-weight-shape", "cross_entropy", (X, T), {"sample_weight": np.ones(3)}, ValueError, "(4,)"),
    ("smoothing-above-one", "cross_entropy", (X, T), {"label_smoothing": 1.5}, ValueError, "label_smoothing"),
    ("smoothing-negative", "cross_entropy", (X, T), {"label_smoothing": -0.1}, ValueError, "label_smoothing"),
    ("smoothing-nan", "cross_entropy", (X, T), {"label_smoothing": np.nan}, ValueError, "label_smoothing"),
    ("z-loss-negative", "cross_entropy", (X, T), {"z_loss": -1.0}, ValueError, "z_loss"),
    ("softcap-zero", "cross_entropy", (X, T), {"softcap": 0.0}, ValueError, "softcap must be a finite number > 0"),
    ("softcap-negative", "cross_entropy_with_grad", (X, T), {"softcap": -30.0}, ValueError, "softcap"),
    ("softcap-nan", "softmax", (X,), {"softcap": np.nan}, ValueError, "softcap"),
    ("softcap-inf", "logsumexp", (X,), {"softcap": np.inf}, ValueError, "softcap"),
    ("softcap-string", "log_softmax", (X,), {"softcap": "30"}, TypeError, "softcap must be None or a real number"),
    ("softcap-bool", "cross_entropy", (X, P), {"softcap": True}, TypeError, "softcap"),
    ("reduction", "cross_entropy", (X, T), {"reduction": "avg"}, ValueError, "'none', 'mean', 'sum'"),
    ("axis", "cross_entropy", (X, T), {"axis": 2}, AxisError, "axis 2"),
    ("axis-type", "cross_entropy", (X, T), {"axis": 1.0}, TypeError, "axis"),
    ("zero-classes", "cross_entropy", (np.zeros((4, 0)), T), {}, ValueError, "zero classes"),
    ("scalar-logits", "cross_entropy", (np.float64(1.0), 0), {}, ValueError, "at least one dimension"),
    ("complex-logits", "cross_entropy", (X.astype(complex), T), {}, TypeError, "complex"),
    ("object-logits", "softmax", (X.astype(object),), {}, TypeError, "object"),
    ("string-logits", "softmax", (np.array(["a", "b"]),), {}, TypeError, "dtype"),
    ("softmax-axis", "softmax", (X,), {"axis": -3}, AxisError, "axis -3"),
    ("logsumexp-axis", "logsumexp", (X,), {"axis": 5}, AxisError, "axis 5"),
    ("ignore-index-with-probabilities", "cross_entropy", (X, P), {"ignore_index": 1}, ValueError, "ignore_index"),
    ("n-threads-zero", "cross_entropy", (X, T), {"n_threads": 0}, ValueError, "n_threads"),
    ("n-threads-type", "softmax", (X,), {"n_threads": 1.5}, TypeError, "n_threads"),
    ("out-shape", "cross_entropy_with_grad", (X, T), {"out": np.empty((3, 4))}, ValueError, "shape (3, 4)"),
    ("out-dtype", "cross_entropy_with_grad", (X, T), {"out": np.empty((4, 3), np.int64)}, TypeError, "dtype int64"),
    ("out-not-array", "softmax", (X,), {"out": [[0.0] * 3] * 4}, TypeError, "numpy.ndarray"),
    ("out-overlaps-target", "cross_entropy_with_grad", (X, P), {"out": P}, ValueError, "shares memory with target"),
    ("where-dtype", "cross_entropy", (X, T), {"where": np.ones((4, 3), int)}, TypeError, "dtype bool"),
    ("where-shape", "cross_entropy", (X, T), {"where": np.ones((4, 2), bool)}, ValueError, "where has shape (4, 2)"),
    ("where-example-shape", "cross_entropy", (X, T), {"where": np.ones(3, bool)}, ValueError, "(4,) (one value per example)"),
    ("where-ndim", "cross_entropy_with_grad", (X, P), {"where": np.ones((1, 4, 3), bool)}, ValueError, "logits' shape (4, 3)"),
    ("return-lse-type", "cross_entropy", (X, T), {"return_lse": 1}, TypeError, "return_lse must be True or False"),
    ("return-entropy-type", "cross_entropy_with_grad", (X, T), {"return_entropy": "yes"}, TypeError, "return_entropy"),
    ("return-argmax-type", "cross_entropy", (X, T), {"return_argmax": None}, TypeError, "return_argmax"),
    ("return-lse-with-where", "cross_entropy", (X, T), {"return_lse": True, "where": np.ones((4, 3), bool)}, ValueError, "where="),
    ("focal-negative", "cross_entropy", (X, T), {"focal_gamma": -0.5}, ValueError, "focal_gamma must be a finite number >= 0"),
    ("focal-nan", "cross_entropy_with_grad", (X, T), {"focal_gamma": np.nan}, ValueError, "focal_gamma"),
    ("focal-inf", "cross_entropy", (X, T), {"focal_gamma": np.inf}, ValueError, "focal_gamma"),
    ("focal-string", "cross_entropy", (X, T), {"focal_gamma": "2"}, TypeError, "focal_gamma"),
    ("focal-bool", "cross_entropy", (X, T), {"focal_gamma": True}, TypeError, "focal_gamma"),
    ("focal-with-smoothing", "cross_entropy", (X, T), {"focal_gamma": 2.0, "label_smoothing": 0.1}, ValueError, "label_smoothing"),
    ("focal-with-probabilities", "cross_entropy_with_grad", (X, P), {"focal_gamma": 2.0}, ValueError, "class-index targets only"),
    ("focal-with-where", "cross_entropy", (X, T), {"focal_gamma": 1.0, "where": np.ones((4, 3), bool)}, ValueError, "where="),
    ("gh-labels-shape", "gradient_hessian", (X, np.zeros(3, int)), {}, ValueError, "(3,)"),
    ("gh-labels-range", "gradient_hessian", (X, np.array([0, 1, 3, 0])), {}, ValueError, "labels value 3"),
    ("gh-labels-fraction", "gradient_hessian", (X, np.array([0, 1.5, 2, 0])), {}, ValueError, "whole class numbers"),
    ("gh-logits-1d", "gradient_hessian", (np.zeros(3), np.zeros(3, int)), {}, ValueError, "2-D"),
    ("gh-out-not-pair", "gradient_hessian", (X, T), {"out": np.empty((4, 3))}, TypeError, "tuple"),
]


@pytest.mark.parametrize(
    "function,args,kwargs,exception,fragment",
    [case[1:] for case in BAD_CALLS],
    ids=[case[0] for case in BAD_CALLS],
)
def test_bad_input_is_refused_the_same_way_by_fast_and_reference(function, args, kwargs, exception, fragment):
    copies = [np.array(a, copy=True) for a in args]
    kwarg_copies = {k: np.array(v, copy=True) for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    with pytest.raises(exception) as fast_error:
        getattr(sml, function)(*args, **kwargs)
    assert fragment in str(fast_error.value)
    with pytest.raises(exception) as reference_error:
        getattr(ref, function)(*args, **kwargs)
    assert str(reference_error.value) == str(fast_error.value)
    for original, copy in zip(args, copies):
        np.testing.assert_array_equal(original, copy)
    for name, copy in kwarg_copies.items():
        np.testing.assert_array_equal(kwargs[name], copy)


def test_read_only_out_is_refused_and_nothing_is_written():
    out = np.zeros((4, 3))
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        sml.softmax(X, out=out)
    np.testing.assert_array_equal(out, 0)


def test_out_with_a_layout_the_kernel_cannot_write_is_refused_before_work():
    """A (2, 3, 4, 5) out whose three row axes all step by 2: no two merge into one stride."""
    x = RNG.standard_normal((2, 3, 4, 5))
    t = RNG.integers(0, 5, (2, 3, 4))
    big = np.zeros((4, 6, 8, 5))
    out = big[::2, ::2, ::2]
    with pytest.raises(ValueError, match="memory layout"):
        sml.cross_entropy_with_grad(x, t, out=out)
    np.testing.assert_array_equal(big, 0)


def test_out_partially_overlapping_the_logits_is_refused():
    x = RNG.standard_normal((5, 3))
    copy = x.copy()
    with pytest.raises(ValueError, match="overlaps the logits"):
        sml.softmax(x[:4], out=x[1:])
    np.testing.assert_array_equal(x, copy)


def test_an_out_of_range_label_is_refused_before_the_gradient_is_written():
    x = RNG.standard_normal((4, 3))
    out = np.full((4, 3), 7.0)
    with pytest.raises(ValueError):
        sml.cross_entropy_with_grad(x, np.array([0, 1, 2, 99]), out=out)
    np.testing.assert_array_equal(out, 7.0)
    logits = x.copy()
    with pytest.raises(ValueError):
        sml.cross_entropy_with_grad(logits, np.array([0, 1, 2, 99]), out=logits)
    np.testing.assert_array_equal(logits, x)


def test_layer_refuses_bad_options_at_construction():
    with pytest.raises(ValueError, match="reduction"):
        sml.SoftmaxWithLoss(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        sml.SoftmaxWithLoss(label_smoothing=2)
    with pytest.raises(RuntimeError, match="before forward"):
        sml.SoftmaxWithLoss().backward()

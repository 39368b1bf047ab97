"""A pytest plugin (`-p _scipy_special_plugin`) for running SciPy's own
`scipy/special/tests/test_logsumexp.py` against softmaxloss: the test module's
`logsumexp`, `softmax` and `log_softmax` (imported from scipy.special) are replaced by
softmaxloss's, called with SciPy's default axis=None (softmaxloss's default is -1, as
PyTorch's and optax's: a deliberate difference, see tests/test_scipy_suite.py)."""

import softmaxloss as sml


def logsumexp(a, axis=None, b=None, keepdims=False, return_sign=False):
    return sml.logsumexp(a, axis, b=b, keepdims=keepdims, return_sign=return_sign)


def softmax(x, axis=None):
    return sml.softmax(x, axis)


def log_softmax(x, axis=None):
    return sml.log_softmax(x, axis)


def pytest_collection_modifyitems(items):
    for module in {item.module for item in items}:
        for function in (logsumexp, softmax, log_softmax):
            if hasattr(module, function.__name__):
                setattr(module, function.__name__, function)

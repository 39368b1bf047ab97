"""softmaxloss: the Softmax-with-Loss layer as a fast, exact CPU library.

Stable softmax, cross-entropy and its gradient softmax(a) - y, fused in one Cython
kernel, with PyTorch's semantics; `softmaxloss.reference` holds the pure-NumPy twin
of every function.
"""

from importlib.metadata import PackageNotFoundError, version

from ._config import show_config
from ._facade import (
    cross_entropy,
    cross_entropy_with_grad,
    gradient_hessian,
    log_softmax,
    logsumexp,
    softmax,
)
from .layer import SoftmaxWithLoss

try:
    __version__ = version("softmaxloss")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "SoftmaxWithLoss",
    "__version__",
    "cross_entropy",
    "cross_entropy_with_grad",
    "gradient_hessian",
    "log_softmax",
    "logsumexp",
    "show_config",
    "softmax",
]

"""softmaxloss: the Softmax-with-Loss layer as a fast, exact CPU library.

Stable softmax, cross-entropy and its gradient softmax(a) - y, fused in one Cython
kernel, with PyTorch's semantics; `softmaxloss.reference` holds the pure-NumPy twin
of every function.
"""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ._config import show_config
from ._facade import (
    cross_entropy,
    cross_entropy_with_grad,
    gradient_hessian,
    log_softmax,
    logsumexp,
    softmax,
)
from ._outputs import CrossEntropyOutputs
from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad
from .layer import SoftmaxWithLoss

try:
    __version__ = version("softmaxloss")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

# Submodules reachable as attributes (`sml.reference`, `sml.torch`, ...), imported on first
# use: `import softmaxloss` imports neither the adapters' frameworks nor the test tools.
_SUBMODULES = ("boosting", "dask", "distributed", "jax", "reference", "testing", "torch")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])


__all__ = [
    "CrossEntropyOutputs",
    "SoftmaxWithLoss",
    "__version__",
    "cross_entropy",
    "cross_entropy_with_grad",
    "gradient_hessian",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "log_softmax",
    "logsumexp",
    "show_config",
    "softmax",
]

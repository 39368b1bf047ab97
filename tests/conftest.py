"""Shared fixtures. The tests import the installed softmaxloss, never the source tree."""

import numpy as np
import pytest

from softmaxloss import _dispatch


@pytest.fixture(params=sorted(_dispatch.available))
def kernel_build(request):
    """Run the test once with every compiled kernel build this CPU supports."""
    with _dispatch.use(request.param):
        yield request.param


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: reproducible, different per test."""
    seed = sum(map(ord, request.node.nodeid)) % 2**32
    return np.random.default_rng(seed)

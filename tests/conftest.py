"""Shared fixtures. The tests import the installed softmaxloss, never the source tree."""

import os

import numpy as np
import pytest
from hypothesis import settings

from softmaxloss import _dispatch

# HYPOTHESIS_PROFILE=ci (set by .ci/run): the same examples on every run, so that CI
# is reproducible; locally each run explores new ones. "thorough" for long hunts.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=60)
settings.register_profile("dev", deadline=None, max_examples=60)
settings.register_profile("thorough", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


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

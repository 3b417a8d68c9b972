"""Shared test settings: one torch thread, and registries left as each test found them."""

import pytest
import torch

from cincer.inspect import INSPECTORS
from cincer.models import MODELS
from cincer.select import SELECTORS


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One PyTorch thread, as the CLI defaults to: tiny models and small LAPACK calls run far faster
    than with two threads fighting over a shared 2-core machine. Restored after every test, since
    ``cincer --threads`` sets torch's process-wide count."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def clean_registries():
    """A test that registers a plugin selector, inspector or model leaves no trace in the next one."""
    before = {registry: set(registry) for registry in (INSPECTORS, SELECTORS, MODELS)}
    yield
    for registry, names in before.items():
        for name in set(registry) - names:
            registry.unregister(name)

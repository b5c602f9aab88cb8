"""Every test starts from the same global RNG state, whatever ran before it, so a test that draws
from torch's global generator (module initializers, torch.randn without a generator) is
deterministic alone and in any order. Tests draw their data from their own seeded generators."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    torch.manual_seed(0)
    yield

"""Suite-wide settings.

- Every test starts from the same global RNG state, whatever ran before it, so a test that draws
  from torch's global generator (module initializers, torch.randn without a generator) is
  deterministic alone and in any order. Tests draw their data from their own seeded generators.
- The suite tests matching and rewriting at small sizes, where the cost table
  (``fla_compile.costs``) would keep regions as written: it runs with the choice off (always
  rewrite), subprocesses included. ``tests/test_costs.py`` tests the choice with tables of its own.
"""

import os

import pytest
import torch

os.environ.setdefault("FLA_COMPILE_COSTS", "off")


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    torch.manual_seed(0)
    yield

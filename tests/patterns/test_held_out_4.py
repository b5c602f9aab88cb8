"""Held-out set 4 is well formed: enough positives and near misses, every family covered, and every positive equal to
its ``fla_compile.reference`` computation in float64 (the set's own check; recognition is measured by
``benchmarks/recognition.py --set held_out_4``)."""

import pytest
import torch

from fla_compile.ir import Family
from tests.compare import flat, rel
from tests.patterns.held_out_4 import CASES

FAMILIES = {f.value for f in Family}  # every family the IR knows
POSITIVES = [c for c in CASES if c.family is not None]
NEAR_MISSES = [c for c in CASES if c.family is None]


def test_counts_and_coverage():
    assert len(POSITIVES) >= 35
    assert len(NEAR_MISSES) >= 12
    assert len({c.name for c in CASES}) == len(CASES), "case names are unique"
    assert {c.family for c in POSITIVES} == FAMILIES
    assert all(c.ref is not None for c in POSITIVES)


@pytest.mark.parametrize("case", POSITIVES, ids=lambda c: c.name)
def test_positive_matches_reference(case):
    args = case.inputs(torch.float64, "cpu", 3)
    with torch.no_grad():
        got = case.fn(*args)
        want = case.ref(*args)
    if isinstance(want, (tuple, list)):
        got, want = flat(got), flat(want)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert rel(a, b) < 1e-8
    else:
        if isinstance(got, (tuple, list)):
            got = got[0]
        assert rel(got, want) < 1e-8


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_runs_finite_in_float32(case):
    args = case.inputs()
    assert all(a.dtype == torch.float32 for a in args)
    with torch.no_grad():
        out = flat(case.fn(*args))
    assert out and all(torch.isfinite(t).all() for t in out)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_inputs_seeded(case):
    a, b, c = case.inputs(seed=5), case.inputs(seed=5), case.inputs(seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))

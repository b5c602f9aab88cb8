"""What the user reads: ``explain`` and ``torch.compile(backend="fla")`` give a function the same
labels (family and spelling) over every loop spelling of the test suite."""

import pytest
import torch

import fla_compile
from fla_compile import backend

from .patterns import spellings as S
from .patterns.test_loop import NEGATIVE, POSITIVE, make_inputs


def labels(matches):
    return sorted(f"{m.family} ({m.spelling})" for m in matches)


@pytest.mark.parametrize("name", sorted(POSITIVE) + sorted(NEGATIVE))
def test_explain_and_backend_agree_on_labels(name):
    fn = getattr(S, name)
    args = make_inputs(fn)
    torch._dynamo.reset()
    explained = fla_compile.explain(fn, *args)
    torch._dynamo.reset()
    backend.REPORTS.clear()
    with torch.no_grad():
        torch.compile(fn, backend="fla", options={"inductor": False})(*args)
    compiled = [m for r in backend.REPORTS for m in r.matches]
    torch._dynamo.reset()
    assert labels(explained.matches) == labels(compiled)
    if name in POSITIVE:
        assert labels(compiled) == [f"{POSITIVE[name]} (loop)"]

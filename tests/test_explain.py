"""``fla_compile.explain`` called many times in one process, and never silently empty."""

import torch
import torch.nn.functional as F

import fla_compile

from .patterns import spellings as S

CALLS = 12  # more than Dynamo's default recompile limit (8)


def gla_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, g = (torch.randn(1, 4, 1, 2, generator=gen) for _ in range(4))
    return q, k, v, F.logsigmoid(g)


def limit(n):
    """Dynamo's recompile limit set to ``n`` (``cache_size_limit`` is its name in older torch)."""
    return torch._dynamo.config.patch(cache_size_limit=n)


def test_explain_many_times_in_one_process():
    # the colleague's report: from the 9th call on, explain returned an empty report
    with limit(8):
        for i in range(CALLS):
            report = fla_compile.explain(S.gla_fla_naive, *gla_inputs(i))
            assert [m.family for m in report.matches] == ["gla"], (i, str(report))
            # the backend's own note (nothing left for Inductor) only: nothing Dynamo left unexamined
            assert all("Inductor's cold compile" in n for n in report.notes), (i, str(report))


def test_explain_many_times_through_a_graph_break():
    # a graph break makes Dynamo compile the function's own code (shared between explains) as a frame
    def with_break(q, k, v, g):
        q = q * 1.0
        torch._dynamo.graph_break()
        return S.gla_fla_naive(q, k, v, g)

    class Layer(torch.nn.Module):
        def forward(self, q, k, v, g):
            torch._dynamo.graph_break()
            return S.gla_fla_naive(q, k, v, g)

    layer = Layer()
    with limit(8):
        for fn in (with_break, layer):
            for i in range(CALLS):
                report = fla_compile.explain(fn, *gla_inputs(i))
                assert [m.family for m in report.matches] == ["gla"], (fn, i, str(report))
                assert any("graph break" in n for n in report.notes), (fn, i, str(report))


def test_explain_says_when_nothing_was_captured():
    report = fla_compile.explain(lambda x: x.shape[0] + 1, torch.randn(3))
    assert not report.matches and not report.misses
    assert any("captured no graph" in n for n in report.notes), str(report)
    assert "captured no graph" in str(report)


def test_explain_says_when_the_recompile_limit_was_hit():
    # code the user compiled themselves keeps its cache entries; at the limit, Dynamo runs it uncaptured
    # (explain captures the function it is given from a fresh code object; the code it calls, here a
    # helper with a graph break that the user compiled, is shared)
    def with_break(q, k, v, g):
        q = q * 1.0
        torch._dynamo.graph_break()
        return S.gla_fla_naive(q, k, v, g)

    def outer(q, k, v, g):
        return with_break(q, k, v, g)

    with limit(1):
        torch.compile(with_break, backend="eager")(*gla_inputs(0))
        report = fla_compile.explain(outer, *gla_inputs(1))
    assert not report.matches
    assert any("recompile limit" in n for n in report.notes), str(report)

"""The torch chunked GLA path: which score form it picks, and that both forms are exact.

Per-key gates use the factored scores (q e^{b}) . (k e^{-b}) when every in-chunk decay span is
within FACTOR_SPAN, else the pairwise sub-chunk form; both must match the float64 loop."""

import pytest
import torch

from fla_compile import ops
from fla_compile.lowering.gla import torch_path as G
from fla_compile.reference import gla as ref
from tests.compare import rel


def factored(g, C=64):
    Tp = -(-g.shape[1] // C) * C
    return G._can_factor(G._in_chunk_cumsum(G._pad_time(g, Tp), C))


@pytest.mark.parametrize("family", ["gla", "simple_gla"])
@pytest.mark.parametrize("per_step,form", [(0.05, True), (0.92, True), (1.05, False), (3.0, False)])
def test_both_score_forms_are_exact(family, per_step, form):
    """0.92 per step spans about 56 over a chunk of 64 (factored, near its limit); 1.05 does not."""
    torch.manual_seed(0)
    B, T, H, K, V = 2, 200, 2, 16, 12
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    shape = (B, T, H, K) if family == "gla" else (B, T, H)
    g = -per_step * (0.9 + 0.1 * torch.rand(shape))
    assert factored(g) == form
    h0 = torch.randn(B, H, K, V)
    xs = [x.clone().requires_grad_() for x in (q, k, v, g, h0)]
    o, ht = getattr(ops, family)(*xs[:4], initial_state=xs[4], output_final_state=True)
    (o.square().sum() + ht.square().sum()).backward()
    xd = [x.double().requires_grad_() for x in (q, k, v, g, h0)]
    ro, rh = getattr(ref, family)(*xd[:4], initial_state=xd[4], output_final_state=True)
    (ro.square().sum() + rh.square().sum()).backward()
    assert rel(o, ro) < 1e-5 and rel(ht, rh) < 1e-5
    for name, a, b in zip(["dq", "dk", "dv", "dg", "dh0"], xs, xd):
        assert rel(a.grad, b.grad) < (3e-5 if name == "dg" else 1e-5), name


def test_growing_gates_take_the_pairwise_form():
    g = torch.full((1, 70, 2, 4), 1.0)  # positive log-gates: decays above 1, spanning 64 in a chunk
    assert not factored(g)


@pytest.mark.parametrize("grad", [False, True])
def test_inputs_are_never_written(grad):
    """The fast path updates its chunk-major copies in place; the caller's tensors stay as they were."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 128, 2, 8) for _ in range(3))
    g = torch.nn.functional.logsigmoid(torch.randn(1, 128, 2, 8)) / 16
    before = [x.clone() for x in (q, k, v, g)]
    with torch.set_grad_enabled(grad):
        G.chunk_gla_dense(q, k, v, g, G.GATE_VECTOR, 0.5, None)
        G.chunk_gla_dense(q, k, v, None, G.GATE_NONE, 0.5, None)
    for x, y in zip((q, k, v, g), before):
        assert torch.equal(x, y)

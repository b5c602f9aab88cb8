"""GLA's parallel form with per-key decays, factored as (q e^G)(k e^-G)^T with G the cumsum over time of
per-key log-gates: recognised as gla (not as linear_attn on the factored q and k, whose factors overflow
at long T), equal to eager in outputs and gradients. Look-alikes stay what they are: linear_attn on the
values they contract, never gla."""

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from tests.compare import rel

B, T, H, D = 2, 16, 2, 8


def gla_factored_matmul(q, k, v, g):
    """[B,T,H,K] inputs, the factors transposed to [B,H,T,K], matmul, tril."""
    G = torch.cumsum(g, dim=1)
    qg, kg = (q * G.exp()).transpose(1, 2), (k * torch.exp(-G)).transpose(1, 2)
    return (torch.tril(qg @ kg.transpose(-1, -2)) @ v.transpose(1, 2)).transpose(1, 2)


def gla_factored_einsum_div(q, k, v, g):
    """einsum in [B,T,H,K], k divided by e^G, the scale on the scores, masked_fill."""
    G = g.cumsum(1)
    s = torch.einsum("bthk,bshk->bhts", torch.exp(G) * q, k / G.exp()) * D**-0.5
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), 0)
    return torch.einsum("bhts,bshd->bthd", s, v)


def gla_factored_bhtd(q, k, v, g):
    """Everything in [B,H,T,K] (gates too), cumsum over dim 2."""
    q, k, v, g = (x.transpose(1, 2) for x in (q, k, v, g))
    G = torch.cumsum(g, 2)
    return torch.tril((q * G.exp()) @ (k * (-G).exp()).transpose(-1, -2)) @ v


def two_cumsums(q, k, v, g):
    """k's factor from another cumsum (of 2g): not GLA's pairing, still linear attention on the factors."""
    G1, G2 = torch.cumsum(g, 1), torch.cumsum(2 * g, 1)
    qg, kg = (q * G1.exp()).transpose(1, 2), (k * (-G2).exp()).transpose(1, 2)
    return (torch.tril(qg @ kg.transpose(-1, -2)) @ v.transpose(1, 2)).transpose(1, 2)


def cumsum_over_keys(q, k, v, g):
    """The cumsum runs over the key dim, not time: no decay between steps."""
    G = torch.cumsum(g, dim=-1)
    qg, kg = (q * G.exp()).transpose(1, 2), (k * (-G).exp()).transpose(1, 2)
    return (torch.tril(qg @ kg.transpose(-1, -2)) @ v.transpose(1, 2)).transpose(1, 2)


def same_sign(q, k, v, g):
    """Both factors e^{+G}: a growth, not a decay between steps."""
    G = torch.cumsum(g, 1)
    qg, kg = (q * G.exp()).transpose(1, 2), (k * G.exp()).transpose(1, 2)
    return (torch.tril(qg @ kg.transpose(-1, -2)) @ v.transpose(1, 2)).transpose(1, 2)


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, D, generator=gen) for _ in range(3))
    g = F.logsigmoid(torch.randn(B, T, H, D, generator=gen)) * 0.2  # mild: e^{-G} stays small at T=16
    return [x.requires_grad_() for x in (q, k, v, g)]


def run(fn):
    xs = inputs()
    ref = fn(*xs)
    torch._dynamo.reset()
    out = torch.compile(fn, backend="fla", options={"inductor": False})(*xs)
    return xs, ref, out, fla_compile.last_report()


@pytest.mark.parametrize(
    "fn", [gla_factored_matmul, gla_factored_einsum_div, gla_factored_bhtd], ids=lambda f: f.__name__
)
def test_per_key_factored_is_gla(fn):
    xs, ref, out, report = run(fn)
    assert [(m.family, m.spelling) for m in report.matches] == [("gla", "parallel")], str(report)
    assert report.matches[0].error < 1e-5 and not report.misses, str(report)
    assert rel(out, ref) < 1e-5
    proj = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * proj).sum(), xs, retain_graph=True)
    g_out = torch.autograd.grad((out * proj).sum(), xs)
    for a, b in zip(g_out, g_ref):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("fn", [two_cumsums, cumsum_over_keys, same_sign], ids=lambda f: f.__name__)
def test_per_key_lookalikes_are_not_gla(fn):
    """Each is still a causal linear attention of its factored q and k (proven, rewritten as that), never gla."""
    xs, ref, out, report = run(fn)
    assert [(m.family, m.spelling) for m in report.matches] == [("linear_attn", "parallel")], str(report)
    assert rel(out, ref) < 1e-5


def test_per_key_at_long_T_with_jit():
    """At T=256 strong gates overflow the factors in float32 (the code as written gives inf or NaN);
    the gla op works in log space, so the rewrite equals the float64 reference."""
    fn = fla_compile.jit(gla_factored_matmul)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 256, 1, 8, generator=gen) for _ in range(3))
    g = F.logsigmoid(torch.randn(1, 256, 1, 8, generator=gen))
    assert [m.family for m in fn.explain(q, k, v, g).matches] == ["gla"]
    out = fn(q, k, v, g)
    with torch.no_grad():
        assert not torch.isfinite(gla_factored_matmul(q, k, v, g)).all()  # as written: e^{-G} overflows
    G = torch.cumsum(g.double(), 1)[0, :, 0]  # [T, K]
    causal = torch.ones(256, 256, dtype=torch.bool).tril()[..., None]
    dec = torch.exp((G[:, None, :] - G[None, :, :]).masked_fill(~causal, -torch.inf))  # [T, S, K]
    A = (q.double()[0, :, 0][:, None, :] * k.double()[0, :, 0][None, :, :] * dec).sum(-1)
    want = (A @ v.double()[0, :, 0])[None, :, None]
    assert torch.isfinite(out).all() and rel(out.double(), want) < 1e-4

"""Parallel forms whose scores are built pairwise over a [.., T, S, K] tensor (issue 14): GLA as
sum_k q_tk k_sk exp(G_tk - G_sk), G a cumsum over time of per-key log-gates, and Mamba2's SSD form
einsum(C, B, exp(segsum(A)), x). Recognised as gla / simple_gla, equal to eager in outputs and gradients;
look-alikes (a growth exp(G_s - G_t), a cumsum over keys, a sum of cumsums, a softmax) stay as written."""

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from tests.compare import rel

B, T, H, D = 1, 16, 2, 8


def _fold(x):
    """[B, T, H, D] -> [B*H, T, D]"""
    return x.transpose(1, 2).reshape(B * H, T, -1)


def gla_pairwise_folded_heads(q, k, v, g):
    """Heads folded into the batch, the decays over [N, T, T, K], a multiplicative tril mask."""
    q, k, v, g = map(_fold, (q, k, v, g))
    G = torch.cumsum(g, dim=1)
    A = (q[:, :, None] * k[:, None] * torch.exp(G[:, :, None] - G[:, None])).sum(-1)
    o = (A * torch.ones(T, T).tril()) @ v
    return o.reshape(B, H, T, -1).transpose(1, 2)


def gla_pairwise_einsum_scaled(q, k, v, g):
    """A three-operand einsum in [B, H, T, K], the log-decays masked to -inf, a scale, masked_fill."""
    q, k, v, g = (x.transpose(1, 2) for x in (q, k, v, g))
    G = g.cumsum(2)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    D_ = torch.exp((G.unsqueeze(-2) - G.unsqueeze(-3)).masked_fill(~causal[..., None], -torch.inf))
    A = torch.einsum("bhtk,bhsk,bhtsk->bhts", q, k, D_) * D**-0.5
    return (A.masked_fill(~causal, 0) @ v).transpose(1, 2)


def ssd_segsum_einsum(q, k, v, g):
    """Mamba2's quadratic form: one scalar log-decay per head, exp(segsum), one four-operand einsum."""
    a = g[..., 0].permute(0, 2, 1)  # [B, H, T]
    seg = a.cumsum(-1)
    seg = seg[..., :, None] - seg[..., None, :]
    L = torch.exp(seg.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -torch.inf))
    return torch.einsum("bthn,bshn,bhts,bshp->bthp", q, k, L, v)


def gla_pairwise_where_fill(q, k, v, g, fill=-torch.inf):
    """The [B, H, T, T, K] log-decays masked by torch.where against a full_like fill before the exp (a fill of 0
    keeps exp(0) = 1 above the diagonal: not causal)."""
    q, k, v, g = (x.transpose(1, 2) for x in (q, k, v, g))
    G = g.cumsum(2)
    pair = G[:, :, :, None, :] - G[:, :, None, :, :]
    causal = torch.ones(T, T, dtype=torch.bool).tril()[..., None]
    pair = torch.where(causal, pair, torch.full_like(pair, fill)).exp()
    return (torch.einsum("bhtk,bhsk,bhtsk->bhts", q, k, pair) @ v).transpose(1, 2)


def where_fill_zero(q, k, v, g):
    return gla_pairwise_where_fill(q, k, v, g, fill=0.0)


def growth_not_decay(q, k, v, g):
    """exp(G_s - G_t) under a tril mask: a growth between steps."""
    q, k, v, g = map(_fold, (q, k, v, g))
    G = torch.cumsum(g, dim=1)
    A = (q[:, :, None] * k[:, None] * torch.exp(G[:, None] - G[:, :, None])).sum(-1)
    return (A.tril() @ v).reshape(B, H, T, -1).transpose(1, 2)


def cumsum_over_keys(q, k, v, g):
    """The cumsum runs over the key dim, not time."""
    q, k, v, g = map(_fold, (q, k, v, g))
    G = torch.cumsum(g, dim=-1)
    A = (q[:, :, None] * k[:, None] * torch.exp(G[:, :, None] - G[:, None])).sum(-1)
    return (A.tril() @ v).reshape(B, H, T, -1).transpose(1, 2)


def sum_of_cumsums(q, k, v, g):
    """exp(G_t + G_s): not a difference."""
    q, k, v, g = map(_fold, (q, k, v, g))
    G = torch.cumsum(g, dim=1)
    A = (q[:, :, None] * k[:, None] * torch.exp(G[:, :, None] + G[:, None])).sum(-1)
    return (A.tril() @ v).reshape(B, H, T, -1).transpose(1, 2)


def softmax_of_pairwise(q, k, v, g):
    """Decayed scores through a softmax (forgetting attention)."""
    q, k, v, g = map(_fold, (q, k, v, g))
    G = torch.cumsum(g, dim=1)
    A = (q[:, :, None] * k[:, None] * torch.exp(G[:, :, None] - G[:, None])).sum(-1)
    A = A.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -torch.inf).softmax(-1)
    return (A @ v).reshape(B, H, T, -1).transpose(1, 2)


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, D, generator=gen) for _ in range(3))
    g = F.logsigmoid(torch.randn(B, T, H, D, generator=gen)) * 0.3
    return [x.requires_grad_() for x in (q, k, v, g)]


def run(fn):
    torch._dynamo.reset()
    xs = inputs()
    ref = fn(*xs)
    out = torch.compile(fn, backend="fla", options={"inductor": False})(*xs)
    return xs, ref, out, fla_compile.last_report()


@pytest.mark.parametrize(
    "fn,family",
    [
        (gla_pairwise_folded_heads, "gla"),
        (gla_pairwise_einsum_scaled, "gla"),
        (ssd_segsum_einsum, "simple_gla"),
        (gla_pairwise_where_fill, "gla"),
    ],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_pairwise_form_is_recognised(fn, family):
    xs, ref, out, report = run(fn)
    assert [(m.family, m.spelling) for m in report.matches] == [(family, "parallel")], str(report)
    assert rel(out, ref) < 1e-5
    proj = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * proj).sum(), xs, retain_graph=True)
    g_out = torch.autograd.grad((out * proj).sum(), xs)
    for a, b in zip(g_out, g_ref):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize(
    "fn",
    [growth_not_decay, cumsum_over_keys, sum_of_cumsums, softmax_of_pairwise, where_fill_zero],
    ids=lambda f: f.__name__,
)
def test_pairwise_lookalikes_stay_as_written(fn):
    xs, ref, out, report = run(fn)
    assert not report.matches, str(report)
    assert rel(out, ref) < 1e-6

"""Loops with GQA inside the step: the k and v heads (and gates, beta) repeated to q's heads by
``repeat_interleave``, ``expand`` + ``reshape`` or ``repeat``. The repeat is per-step work that does not
touch the state, hoisted over the sequence; the binding is proven like any other. A head mapping that
changes from step to step is no such loop and stays as written."""

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from tests.compare import rel

B, T, H, HK, K, V = 1, 4, 4, 2, 4, 5


def gla_repeat_interleave(q, k, v, g):
    """Per-key gates; k, v and g repeated with repeat_interleave in the step."""
    G = q.shape[2] // k.shape[2]
    h = q.new_zeros(B, H, K, V)
    outs = []
    for t in range(q.shape[1]):
        kt, vt, gt = (x[:, t].repeat_interleave(G, dim=1) for x in (k, v, g))
        h = h * gt.exp()[..., None] + kt[..., None] * vt[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h))
    return torch.stack(outs, 1)


def simple_gla_expand(q, k, v, g):
    """A gate per head; k, v, g expanded over the group and reshaped to H heads."""
    G = q.shape[2] // k.shape[2]
    h = q.new_zeros(B, H, K, V)
    outs = []
    for t in range(q.shape[1]):
        kt = k[:, t, :, None, :].expand(B, HK, G, K).reshape(B, H, K)
        vt = v[:, t, :, None, :].expand(B, HK, G, V).reshape(B, H, V)
        gt = g[:, t, :, 0, None].expand(B, HK, G).reshape(B, H)
        h = h * gt.exp()[..., None, None] + kt[..., None] * vt[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h))
    return torch.stack(outs, 1)


def delta_rule_repeat_interleave(q, k, v, g):
    """The delta rule with k, v and beta repeated in the step."""
    G = q.shape[2] // k.shape[2]
    k = F.normalize(k, dim=-1)
    b = torch.sigmoid(g[..., 0])
    h = q.new_zeros(B, H, K, V)
    outs = []
    for t in range(q.shape[1]):
        kt, vt, bt = (x[:, t].repeat_interleave(G, dim=1) for x in (k, v, b))
        pred = torch.einsum("bhk,bhkv->bhv", kt, h)
        h = h + torch.einsum("bhk,bhv->bhkv", kt, bt[..., None] * (vt - pred))
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h))
    return torch.stack(outs, 1)


def linear_repeat_bhtd(q, k, v, g):
    """[B,H,T,D] layout, torch.repeat_interleave for k and Tensor.repeat for v, a buffer write."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    G = q.shape[1] // k.shape[1]
    h = q.new_zeros(B, H, K, V)
    o = q.new_zeros(B, H, q.shape[2], V)
    for t in range(q.shape[2]):
        kt, vt = torch.repeat_interleave(k[:, :, t], G, dim=1), v[:, :, t].repeat(1, G, 1)
        h = h + kt.unsqueeze(-1) @ vt.unsqueeze(-2)
        o[:, :, t] = (q[:, :, t].unsqueeze(-2) @ h).squeeze(-2)
    return o.transpose(1, 2)


def miss_heads_rotate_per_step(q, k, v, g):
    """The k heads rotate with the step (roll by t): no fixed head mapping, so not one recurrence per head."""
    G = q.shape[2] // k.shape[2]
    h = q.new_zeros(B, H, K, V)
    outs = []
    for t in range(q.shape[1]):
        kt = k[:, t].repeat_interleave(G, dim=1).roll(t, dims=1)
        vt = v[:, t].repeat_interleave(G, dim=1)
        h = h + kt[..., None] * vt[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], h))
    return torch.stack(outs, 1)


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, HK, K, generator=gen)
    v = torch.randn(B, T, HK, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, HK, K, generator=gen))
    return [x.requires_grad_() for x in (q, k, v, g)]


def run(fn):
    xs = inputs()
    ref = fn(*xs)
    torch._dynamo.reset()
    out = torch.compile(fn, backend="fla", options={"inductor": False})(*xs)
    return xs, ref, out, fla_compile.last_report()


POSITIVE = [
    (gla_repeat_interleave, "gla"),
    (simple_gla_expand, "simple_gla"),
    (delta_rule_repeat_interleave, "delta_rule"),
    (linear_repeat_bhtd, "linear_attn"),
]


@pytest.mark.parametrize("fn,family", POSITIVE, ids=[f.__name__ for f, _ in POSITIVE])
def test_gqa_loop_matched(fn, family):
    xs, ref, out, report = run(fn)
    assert [(m.family, m.spelling) for m in report.matches] == [(family, "loop")], str(report)
    assert rel(out, ref) < 1e-5
    proj = torch.randn_like(ref)
    used = [x for x in xs if x.grad_fn is None and x.requires_grad]
    g_ref = torch.autograd.grad((ref * proj).sum(), used, retain_graph=True, allow_unused=True)
    g_out = torch.autograd.grad((out * proj).sum(), used, allow_unused=True)
    for a, b in zip(g_out, g_ref):
        assert (a is None) == (b is None) and (b is None or rel(a, b) < 1e-5)


def test_gqa_heads_rotating_per_step_stay_as_written():
    xs, ref, out, report = run(miss_heads_rotate_per_step)
    assert not report.matches, str(report)
    assert any(m.spelling == "loop" for m in report.misses), str(report)
    assert rel(out, ref) < 1e-6

"""Loops whose step is written for one head (or one sequence) and mapped with ``torch.func.vmap`` (issue 14):
Dynamo inlines vmap as a bracket of interpreter-wide calls, which ``patterns/_vmap.py`` replaces by the
batched aten ops it traces to; the step is then an ordinary one, proven and rewritten. Equal to eager in
outputs and gradients; vmapped look-alikes (a state through tanh, a decay read from the state, softmax
attention per head) stay as written and still compute what they did."""

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from tests.compare import rel

B, T, H, K, V = 2, 4, 2, 4, 5


def gla_vmap_batch_heads(q, k, v, g, b):
    """A one-head step (state [K, V]) vmapped over heads, then batch; einsum read-out."""

    def step(S, q_t, k_t, v_t, g_t):
        S = g_t.exp()[:, None] * S + k_t[:, None] * v_t[None, :]
        return S, torch.einsum("k,kv->v", q_t, S)

    f = torch.func.vmap(torch.func.vmap(step))
    S = q.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        S, o = f(S, q[:, t], k[:, t], v[:, t], g[:, t])
        outs.append(o)
    return torch.stack(outs, 1)


def simple_gla_vmap_heads_dim1(q, k, v, g, b):
    """A per-head scalar gate; vmapped over the head dim 1 of [B, H, ...] slices (in_dims=1, out_dims=1)."""

    def step(S, q_t, k_t, v_t, g_t):  # S [B, K, V], q_t [B, K], g_t [B]
        S = S * g_t.exp()[:, None, None] + k_t[..., None] * v_t[:, None]
        return S, (q_t[..., None] * S).sum(-2)

    f = torch.vmap(step, in_dims=1, out_dims=1)
    S = q.new_zeros(B, H, K, V)
    o = torch.zeros(B, T, H, V)
    for t in range(T):
        S, o[:, t] = f(S, q[:, t], k[:, t], v[:, t], g[:, t, :, 0])
    return o


def gated_delta_vmap_batch(q, k, v, g, b):
    """The gated delta rule for one sequence ([H, K, V]), vmapped over the batch."""

    def step(S, q_t, k_t, v_t, g_t, b_t):
        k_t = F.normalize(k_t, dim=-1)
        S = S * g_t.exp()[:, None, None]
        pred = (S * k_t[..., None]).sum(-2)
        S = S + k_t[..., None] * (b_t[:, None] * (v_t - pred))[:, None]
        return S, (S * q_t[..., None]).sum(-2)

    S = q.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        S, o = torch.vmap(step)(S, q[:, t], k[:, t], v[:, t], g[:, t, :, 0], b[:, t])
        outs.append(o)
    return torch.stack(outs, 1)


def gla_loop_vmapped_heads(q, k, v, g, b):
    """The whole loop written for one head ([B, T, K] inputs) and vmapped over the head dim 2 of [B, T, H, K]:
    the batching rules move the head dim first at every read (``permute(q, [2, 0, 1, 3])`` per step), which the
    splice computes once, so the steps read one sequence; the outputs are stacked by ``aten.stack``."""

    def one_head(q, k, v, g):
        S = q.new_zeros(q.shape[0], q.shape[-1], v.shape[-1])
        outs = []
        for t in range(q.shape[1]):
            S = S * g[:, t].exp()[..., None] + k[:, t, :, None] * v[:, t, None, :]
            outs.append(torch.einsum("bk,bkv->bv", q[:, t], S))
        return torch.stack(outs, 1)

    return torch.vmap(one_head, in_dims=2, out_dims=2)(q, k, v, g)


def gla_loop_vmapped_batch_heads(q, k, v, g, b):
    """The loop for one sequence and head ([T, K] inputs), vmapped over heads (dim 1) then batch (dim 0)."""

    def one(q, k, v, g):
        S = q.new_zeros(q.shape[-1], v.shape[-1])
        outs = []
        for t in range(q.shape[0]):
            S = g[t].exp()[:, None] * S + torch.outer(k[t], v[t])
            outs.append(q[t] @ S)
        return torch.stack(outs)

    return torch.vmap(torch.vmap(one, in_dims=1, out_dims=1))(q, k, v, g)


def vmap_state_through_tanh(q, k, v, g, b):
    def step(S, q_t, k_t, v_t, g_t):
        S = torch.tanh(g_t.exp()[:, None] * S + k_t[:, None] * v_t[None, :])
        return S, q_t @ S

    f = torch.func.vmap(torch.func.vmap(step))
    S = q.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        S, o = f(S, q[:, t], k[:, t], v[:, t], g[:, t])
        outs.append(o)
    return torch.stack(outs, 1)


def vmap_decay_reads_state(q, k, v, g, b):
    def step(S, q_t, k_t, v_t):
        S = torch.sigmoid(S.mean()) * S + k_t[:, None] * v_t[None, :]
        return S, q_t @ S

    f = torch.func.vmap(torch.func.vmap(step))
    S = q.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        S, o = f(S, q[:, t], k[:, t], v[:, t])
        outs.append(o)
    return torch.stack(outs, 1)


def vmap_loop_state_through_tanh(q, k, v, g, b):
    """The vmapped whole loop of ``gla_loop_vmapped_heads`` with its state through tanh: no linear recurrence."""

    def one_head(q, k, v, g):
        S = q.new_zeros(q.shape[0], q.shape[-1], v.shape[-1])
        outs = []
        for t in range(q.shape[1]):
            S = torch.tanh(S * g[:, t].exp()[..., None] + k[:, t, :, None] * v[:, t, None, :])
            outs.append(torch.einsum("bk,bkv->bv", q[:, t], S))
        return torch.stack(outs, 1)

    return torch.vmap(one_head, in_dims=2, out_dims=2)(q, k, v, g)


def vmap_loop_keys_reversed(q, k, v, g, b):
    """The vmapped whole loop whose step t reads k at T-1-t: each step's read of the (shared) k differs."""

    def one_head(q, k, v, g):
        S = q.new_zeros(q.shape[0], q.shape[-1], v.shape[-1])
        outs = []
        for t in range(q.shape[1]):
            S = S * g[:, t].exp()[..., None] + k[:, T - 1 - t, :, None] * v[:, t, None, :]
            outs.append(torch.einsum("bk,bkv->bv", q[:, t], S))
        return torch.stack(outs, 1)

    return torch.vmap(one_head, in_dims=2, out_dims=2)(q, k, v, g)


def vmap_softmax_attention(q, k, v, g, b):
    """Causal softmax attention for one head, vmapped over batch and heads: no loop, no recurrence."""

    def head(q, k, v):
        s = (q @ k.T).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -torch.inf)
        return s.softmax(-1) @ v

    return torch.vmap(torch.vmap(head, in_dims=1, out_dims=1))(q, k, v)


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=gen) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, K, generator=gen))
    b = torch.rand(B, T, H, generator=gen)
    return [x.requires_grad_() for x in (q, k, v, g, b)]


def run(fn):
    torch._dynamo.reset()
    xs = inputs()
    ref = fn(*xs)
    out = torch.compile(fn, backend="fla", options={"inductor": False})(*xs)
    return xs, ref, out, fla_compile.last_report()


@pytest.mark.parametrize(
    "fn,family",
    [
        (gla_vmap_batch_heads, "gla"),
        (simple_gla_vmap_heads_dim1, "simple_gla"),
        (gated_delta_vmap_batch, "gated_delta_rule"),
        (gla_loop_vmapped_heads, "gla"),
        (gla_loop_vmapped_batch_heads, "gla"),
    ],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_vmapped_step_is_recognised(fn, family):
    xs, ref, out, report = run(fn)
    assert [(m.family, m.spelling) for m in report.matches] == [(family, "loop")], str(report)
    assert rel(out, ref) < 1e-5
    proj = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * proj).sum(), xs, retain_graph=True, allow_unused=True)
    g_out = torch.autograd.grad((out * proj).sum(), xs, allow_unused=True)
    for a, b in zip(g_out, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            assert rel(a, b) < 1e-5


@pytest.mark.parametrize(
    "fn",
    [
        vmap_state_through_tanh,
        vmap_decay_reads_state,
        vmap_softmax_attention,
        vmap_loop_state_through_tanh,
        vmap_loop_keys_reversed,
    ],
    ids=lambda f: f.__name__,
)
def test_vmapped_lookalikes_stay_as_written(fn):
    xs, ref, out, report = run(fn)
    assert not report.matches, str(report)
    assert rel(out, ref) < 1e-6
    proj = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * proj).sum(), xs[:3], retain_graph=True)
    g_out = torch.autograd.grad((out * proj).sum(), xs[:3])
    for a, b in zip(g_out, g_ref):
        assert rel(a, b) < 1e-5


def test_symbolic_sizes_leave_vmap_as_written():
    """Under dynamic shapes the bracket's sizes are symbols: it is not traced at this call's sizes (the graph
    serves others), so it stays as written and still computes what it did."""
    torch._dynamo.reset()
    xs = inputs()
    out = torch.compile(gla_vmap_batch_heads, backend="fla", dynamic=True, options={"inductor": False})(*xs)
    assert not fla_compile.last_report().matches
    assert rel(out, gla_vmap_batch_heads(*xs)) < 1e-6


def gla_loop_reads_a_copy_per_step(q, k, v, g, b):
    """Every step transposes the whole q, k, v, g again and reads step t of its copy: no sequence is read at
    every t, so no loop is framed; the report says why in a note (it said nothing before)."""
    S = q.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        g_t, k_t, v_t = g.transpose(1, 2)[:, :, t], k.transpose(1, 2)[:, :, t], v.transpose(1, 2)[:, :, t]
        S = S * g_t[..., None].exp() + k_t[..., None] * v_t[..., None, :]
        outs.append((q.transpose(1, 2)[:, :, t, :, None] * S).sum(-2))
    return torch.stack(outs, 1)


def test_a_loop_reading_copies_is_explained():
    xs, ref, out, report = run(gla_loop_reads_a_copy_per_step)
    said = "not re-rolled: each step reads step t of its own copy of transpose"
    assert any(said in n for n in report.notes), str(report)
    assert rel(out, ref) < 1e-5

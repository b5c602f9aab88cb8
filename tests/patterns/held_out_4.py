"""Held-out set 4: naive PyTorch spellings of linear-attention and scan recurrences, and near misses.

Written independently of the recognizers (only ``fla_compile/reference`` and the ops' signatures were read): each
positive is a recurrence retyped from memory of a public implementation or paper (RetNet, GLA, Mamba / Mamba-2,
DeltaNet, Gated DeltaNet, Qwen3-Next, Kimi-Linear, RWKV-6, HGRN, minGRU, RG-LRU, LRU, Katharopoulos et al., Based,
Hedgehog, ReBased, Performer, Lightning Attention), in its own layout, loop style and gate parameterization, often
wrapped in the model code around it (projections, token shift, norms, skips, output gates), which stays outside the
recurrence. ``ref`` computes the same output through ``fla_compile.reference`` (float64-exact).

Near misses (``family=None``) are realistic bugs or different models that look like a family but are not one of them
as written: softmax in the loop, nonlinear or clamped or resetting states, off-by-one reads, decays on the wrong axis,
leaky normalizers, windows, second-order memories. A few are equal to a family applied to other tensors (said in
their notes); a rewrite is right only if it reproduces the eager output.

Every case brings its own inputs: ``inputs(dtype, device, seed)`` with B = 2, T = 8, at most 3 heads and head size 8,
values drawn in float64 from a seeded generator and cast (the same values at every dtype, up to rounding).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fla_compile.reference import delta as rdelta
from fla_compile.reference import gla as rgla
from fla_compile.reference import hgrn as rhgrn
from fla_compile.reference import mamba as rmamba
from fla_compile.reference import normalized as rnorm
from fla_compile.reference import rwkv6 as rrwkv


# fmt: off
@dataclass(frozen=True)
class Case:
    name: str
    family: str | None      # one of: gla, simple_gla, retention, linear_attn, delta_rule, gated_delta_rule, kda, rwkv6, hgrn, mamba, normalized_linear_attn; None for a near miss
    fn: Callable            # the spelling, taking the tensors that inputs() returns
    inputs: Callable        # inputs(dtype=torch.float32, device="cpu", seed=0) -> tuple/list of tensors (small sizes: B<=2, T=8, H<=3, D<=8)
    ref: Callable | None = None   # positives: same args -> the output computed with fla_compile.reference (float64-exact)
    note: str = ""
# fmt: on


# ----------------------------------------------------------------------------------------------------- inputs


class _Draw:
    """Seeded draws made in float64 on the CPU, then cast to the asked dtype and device."""

    def __init__(self, dtype, device, seed):
        self.gen = torch.Generator().manual_seed(int(seed))
        self.dtype, self.device = dtype, device

    def _n(self, shape):
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64)

    def _cast(self, x):
        return x.to(device=self.device, dtype=self.dtype)

    def randn(self, *shape, scale=1.0, shift=0.0):
        return self._cast(self._n(shape) * scale + shift)

    def unit(self, *shape):
        """Rows of unit L2 norm (keys that arrive normalized)."""
        x = self._n(shape)
        return self._cast(x / x.norm(dim=-1, keepdim=True))

    def prob(self, *shape, lo=0.0, hi=1.0):
        """Values in (lo, hi): lo + (hi - lo) * sigmoid(randn)."""
        return self._cast(lo + (hi - lo) * torch.sigmoid(self._n(shape)))

    def logsig(self, *shape, div=1.0):
        """Log-space gates logsigmoid(randn) / div."""
        return self._cast(F.logsigmoid(self._n(shape)) / div)


def _inputs(build):
    def inputs(dtype=torch.float32, device="cpu", seed=0):
        return build(_Draw(dtype, device, seed))

    return inputs


def _swap12(x):
    """[B, H, T, D] <-> [B, T, H, D]."""
    return x.transpose(1, 2)


def _swap01(x):
    """[T, B, H, D] <-> [B, T, H, D]."""
    return x.transpose(0, 1)


def _param(gen, *shape, scale=0.3, shift=0.0):
    return nn.Parameter(torch.randn(*shape, generator=gen) * scale + shift)


# ================================================================================================== linear_attn


def la_masked_scores_bhtd(q, k, v):
    """Causal linear attention in its parallel, attention-like form: scores q k^T, the future zeroed with masked_fill,
    times v. [B, H, T, D], no scale, no normalizer (the un-normalized 'linear transformer' of many ablations)."""
    T = q.shape[-2]
    scores = torch.matmul(q, k.transpose(-2, -1))
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, 0.0)
    return torch.matmul(scores, v)


def la_cumsum_context(q, k, v):
    """lucidrains-style causal linear attention without the denominator: the running context is a cumsum over time of
    k (x) v outer products, read with einsum; q scaled by D^-0.5 first. [B, H, T, D]."""
    q = q * q.shape[-1] ** -0.5
    context = torch.einsum("bhtd,bhte->bhtde", k, v).cumsum(dim=2)
    return torch.einsum("bhtd,bhtde->bhte", q, context)


def la_flat_heads_bmm(q, k, v):
    """Batch and heads folded into B*H sequences, a token loop of bmm outer products into a [K, V] state and bmm
    read-outs into a preallocated output; the D^-0.5 scale multiplies the result at the end. [B, T, H, D] in and out."""
    B, T, H, D = q.shape
    E = v.shape[-1]
    qf = q.permute(0, 2, 1, 3).reshape(B * H, T, D)
    kf = k.permute(0, 2, 1, 3).reshape(B * H, T, D)
    vf = v.permute(0, 2, 1, 3).reshape(B * H, T, E)
    state = qf.new_zeros(B * H, D, E)
    out = qf.new_empty(B * H, T, E)
    for t in range(T):
        state = state + torch.bmm(kf[:, t].unsqueeze(2), vf[:, t].unsqueeze(1))
        out[:, t] = torch.bmm(qf[:, t].unsqueeze(1), state).squeeze(1)
    return out.reshape(B, H, T, E).permute(0, 2, 1, 3) * D**-0.5


def la_time_major_state_vk(q, k, v, state):
    """Time-major [T, B, H, D] decoding-style loop over unbind(0), the state kept transposed [B, H, V, K] and passed in
    (a cache), read with matmul against q as a column; returns (outputs, final state). No scale."""
    outs = []
    for q_t, k_t, v_t in zip(q.unbind(0), k.unbind(0), v.unbind(0)):
        state = state + v_t.unsqueeze(-1) * k_t.unsqueeze(-2)
        outs.append(torch.matmul(state, q_t.unsqueeze(-1)).squeeze(-1))
    return torch.stack(outs), state


def _ref_la_bhtd(q, k, v, scale=None):
    return _swap12(rgla.linear_attn(_swap12(q), _swap12(k), _swap12(v), scale=scale)[0])


def _ref_la_time_major(q, k, v, state):
    o, S = rgla.linear_attn(
        _swap01(q),
        _swap01(k),
        _swap01(v),
        scale=1.0,
        initial_state=state.transpose(-1, -2),
        output_final_state=True,
    )
    return _swap01(o), S.transpose(-1, -2)


# ==================================================================================================== retention


def retnet_parallel_decay_mask(q, k, v):
    """torchscale's RetNet parallel retention without its row normalizations: per-head gamma = 1 - 2^(-5-h), a decay
    matrix gamma^(n-m) built from log(gamma) times the position difference (masked to -inf above the diagonal
    before exp), k scaled by d^-0.5. [B, H, T, D], three heads."""
    B, H, T, D = q.shape
    gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=q.dtype, device=q.device))
    pos = torch.arange(T, device=q.device)
    dist = (pos[:, None] - pos[None, :]).to(q.dtype)
    decay = gamma.log()[:, None, None] * dist
    decay = decay.masked_fill(dist < 0, float("-inf")).exp()
    k = k * D**-0.5
    return (q @ k.transpose(-1, -2) * decay) @ v


def _ref_retnet_parallel(q, k, v):
    H, D = q.shape[1], q.shape[-1]
    log_gamma = torch.log(1 - 2.0 ** (-5.0 - torch.arange(H, dtype=torch.float64)))
    o = rgla.retention(_swap12(q), _swap12(k), _swap12(v), decay=log_gamma, scale=D**-0.5)[0]
    return _swap12(o)


class RetNetRecurrentLayer(nn.Module):
    """A RetNet multi-scale retention layer run in its recurrent form: q/k/v projections of x [B, T, C], per-head
    gamma = 1 - 2^(-5-h) held as a buffer, k scaled by d^-0.5, kv = gamma kv + k^T v per token, outputs stacked,
    then GroupNorm per head and a swish gate (all outside the recurrence)."""

    def __init__(self, d_model=8, heads=2, head_dim=4, seed=11):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.heads, self.head_dim = heads, head_dim
        self.wq = _param(g, heads * head_dim, d_model)
        self.wk = _param(g, heads * head_dim, d_model)
        self.wv = _param(g, heads * head_dim, d_model)
        self.wg = _param(g, heads * head_dim, d_model)
        self.norm_w = _param(g, heads * head_dim, scale=0.1, shift=1.0)
        self.norm_b = _param(g, heads * head_dim, scale=0.1)
        self.register_buffer("gamma", 1 - 2.0 ** (-5.0 - torch.arange(heads, dtype=torch.float32)))

    def _project(self, x):
        B, T, _ = x.shape
        H, Dh = self.heads, self.head_dim
        q = F.linear(x, self.wq.to(x)).view(B, T, H, Dh)
        k = F.linear(x, self.wk.to(x)).view(B, T, H, Dh) * Dh**-0.5
        v = F.linear(x, self.wv.to(x)).view(B, T, H, Dh)
        return q, k, v

    def _finish(self, x, y):
        B, T, _ = x.shape
        y = F.group_norm(y.reshape(B * T, -1), self.heads, self.norm_w.to(x), self.norm_b.to(x), eps=1e-5)
        return y.view(B, T, -1) * F.silu(F.linear(x, self.wg.to(x)))

    def forward(self, x):
        q, k, v = self._project(x)
        B, T, H, Dh = q.shape
        gamma = self.gamma.to(x).view(1, H, 1, 1)
        kv = x.new_zeros(B, H, Dh, Dh)
        ys = []
        for t in range(T):
            kv = gamma * kv + k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)
            ys.append(torch.einsum("bhd,bhde->bhe", q[:, t], kv))
        return self._finish(x, torch.stack(ys, dim=1))

    def reference(self, x):
        q, k, v = self._project(x)
        y = rgla.retention(q, k, v, decay=self.gamma.to(x).log(), scale=1.0)[0]
        return self._finish(x, y)


_retnet_layer = RetNetRecurrentLayer()


def retention_chunkwise(q, k, v, chunk=4):
    """torchscale-style chunkwise retention: inside a chunk the decayed masked scores, across chunks a carried kv state
    (queries see it decayed by gamma^(i+1), keys enter it decayed by gamma^(C-1-j), the state by gamma^C);
    gamma_h = 1 - 2^(-5-h) via log1p. [B, T, H, D] in and out, moved to [B, H, T, D], pieces joined with cat."""
    B, T, H, D = q.shape
    log_g = torch.log1p(-torch.pow(2.0, -5.0 - torch.arange(H, dtype=q.dtype, device=q.device)))
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    q = q * D**-0.5
    pos = torch.arange(chunk, dtype=q.dtype, device=q.device)
    delta = pos[:, None] - pos[None, :]
    intra = torch.exp(log_g[:, None, None] * delta.clamp(min=0)) * (delta >= 0)
    q_decay = torch.exp(log_g[:, None] * (pos + 1))[..., None]
    k_decay = torch.exp(log_g[:, None] * (chunk - 1 - pos))[..., None]
    chunk_decay = torch.exp(log_g * chunk)[:, None, None]
    state = q.new_zeros(B, H, D, v.shape[-1])
    pieces = []
    for s in range(0, T, chunk):
        qc, kc, vc = q[:, :, s : s + chunk], k[:, :, s : s + chunk], v[:, :, s : s + chunk]
        inner = (qc @ kc.transpose(-1, -2) * intra) @ vc
        cross = (qc * q_decay) @ state
        pieces.append(inner + cross)
        state = chunk_decay * state + (kc * k_decay).transpose(-1, -2) @ vc
    return torch.cat(pieces, dim=2).transpose(1, 2)


def _ref_retention_chunkwise(q, k, v):
    H, D = q.shape[2], q.shape[-1]
    log_g = torch.log1p(-torch.pow(2.0, -5.0 - torch.arange(H, dtype=torch.float64)))
    return rgla.retention(q, k, v, decay=log_g, scale=D**-0.5)[0]


def lightning_attention_blocks(q, k, v, block=2):
    """Lightning Attention-2 / TransNormerLLM: silu feature maps on q and k, per-head decay lambda_h = exp(-s_h) with
    ALiBi slopes s_h = 2^(-8(h+1)/H), blocks of 2 tokens: intra-block decayed masked scores plus the inter-block kv
    state, written into a preallocated output. [B, H, T, D], no scale."""
    B, H, T, D = q.shape
    q, k = F.silu(q), F.silu(k)
    slope = torch.pow(2.0, -8.0 * torch.arange(1, H + 1, dtype=q.dtype, device=q.device) / H)
    idx = torch.arange(block, dtype=q.dtype, device=q.device)
    rel_pos = idx[:, None] - idx[None, :]
    diag = torch.exp(-slope[:, None, None] * rel_pos.clamp(min=0)) * (rel_pos >= 0)
    q_decay = torch.exp(-slope[:, None] * (idx + 1))
    k_decay = torch.exp(-slope[:, None] * (block - 1 - idx))
    block_decay = torch.exp(-slope * block)
    kv = q.new_zeros(B, H, D, v.shape[-1])
    out = torch.empty_like(v)
    for start in range(0, T, block):
        qb, kb, vb = q[:, :, start : start + block], k[:, :, start : start + block], v[:, :, start : start + block]
        intra = torch.matmul(torch.matmul(qb, kb.transpose(-1, -2)) * diag, vb)
        inter = torch.matmul(qb * q_decay[..., None], kv)
        out[:, :, start : start + block] = intra + inter
        kv = block_decay[:, None, None] * kv + torch.matmul((kb * k_decay[..., None]).transpose(-1, -2), vb)
    return out


def _ref_lightning(q, k, v):
    H = q.shape[1]
    slope = torch.pow(2.0, -8.0 * torch.arange(1, H + 1, dtype=torch.float64) / H)
    o = rgla.retention(_swap12(F.silu(q)), _swap12(F.silu(k)), _swap12(v), decay=-slope, scale=1.0)[0]
    return _swap12(o)


def retention_rescaled_cumsum(q, k, v):
    """Constant-decay retention by rescaling (the 'xpos-like' trick): o_t = gamma^t q_t . sum_{s<=t} gamma^-s k_s v_s^T
    with one gamma = 0.9 for every head, so a plain cumsum of outer products does the recurrence. Time-major
    [T, B, H, D], q scaled by D^-0.5."""
    T = q.shape[0]
    steps = torch.arange(T, dtype=q.dtype, device=q.device)
    up = (0.9**steps)[:, None, None, None]
    q = q * up * q.shape[-1] ** -0.5
    k = k / up
    kv = torch.cumsum(k.unsqueeze(-1) * v.unsqueeze(-2), dim=0)
    return (q.unsqueeze(-1) * kv).sum(-2)


def _ref_retention_rescaled(q, k, v):
    o = rgla.retention(_swap01(q), _swap01(k), _swap01(v), decay=math.log(0.9), scale=q.shape[-1] ** -0.5)[0]
    return _swap01(o)


# =================================================================================================== simple_gla


def simple_gla_logsigmoid_state_vk(q, k, v, gate_logits):
    """Scalar (per head) gated linear attention with fla's gate normalizer, g = logsigmoid(x) / 8, the state held
    transposed [V, K], outputs collected in a list and stacked; q scaled by K^-0.5 before the loop. [B, T, H, D]."""
    B, T, H, K = q.shape
    g = F.logsigmoid(gate_logits) / 8
    q = q * K**-0.5
    S = q.new_zeros(B, H, v.shape[-1], K)
    outs = []
    for t in range(T):
        S = torch.exp(g[:, t])[:, :, None, None] * S + torch.einsum("bhv,bhk->bhvk", v[:, t], k[:, t])
        outs.append(torch.einsum("bhvk,bhk->bhv", S, q[:, t]))
    return torch.stack(outs, dim=1)


def simple_gla_decay_mask_bhtd(q, k, v, g):
    """Parallel form of scalar-gated linear attention: cumulative log decays, pairwise exp(G_t - G_s) masked to the
    causal triangle (-inf before exp), multiplied into q k^T. [B, H, T, D], g [B, H, T], no scale."""
    cum = g.cumsum(-1)
    diff = cum[..., :, None] - cum[..., None, :]
    T = g.shape[-1]
    keep = torch.ones(T, T, dtype=torch.bool, device=g.device).tril()
    decay = torch.exp(diff.masked_fill(~keep, float("-inf")))
    return ((q @ k.transpose(-1, -2)) * decay) @ v


def _segment_sums(a):
    """[..., L] -> [..., L, L]: (i, j) holds a_{j+1} + ... + a_i for j <= i and -inf above the diagonal."""
    L = a.shape[-1]
    c = torch.cumsum(a, dim=-1)
    seg = c[..., :, None] - c[..., None, :]
    below = torch.ones(L, L, dtype=torch.bool, device=a.device).tril()
    return seg.masked_fill(~below, float("-inf"))


def mamba2_ssd_chunked(x, dt_raw, A_log, Bm, Cm, chunk=4):
    """Mamba-2's SSD in the chunked 'minimal' form: x [b, l, h, p], dt = softplus(dt_raw) [b, l, h],
    A = -exp(A_log) [h], B and C per head [b, l, h, n]. Intra-chunk quadratic term with exp(segment sums), the state
    each chunk leaves, the chunk-to-chunk recurrence over states (segment sums of chunk totals), the state-to-output
    term. Returns (y, final state [b, h, p, n])."""
    b, l, h, p = x.shape
    n = Bm.shape[-1]
    nc = l // chunk
    dt = F.softplus(dt_raw)
    A = -torch.exp(A_log)
    xs = (x * dt[..., None]).reshape(b, nc, chunk, h, p)
    a = (dt * A).reshape(b, nc, chunk, h).permute(0, 3, 1, 2)
    Bc = Bm.reshape(b, nc, chunk, h, n)
    Cc = Cm.reshape(b, nc, chunk, h, n)
    a_cum = torch.cumsum(a, dim=-1)
    within = torch.exp(_segment_sums(a))
    y_in = torch.einsum("bcihn,bcjhn,bhcij,bcjhp->bcihp", Cc, Bc, within, xs)
    to_end = torch.exp(a_cum[..., -1:] - a_cum)
    left = torch.einsum("bcjhn,bhcj,bcjhp->bchpn", Bc, to_end, xs)
    left = torch.cat([torch.zeros_like(left[:, :1]), left], dim=1)
    across = torch.exp(_segment_sums(F.pad(a_cum[..., -1], (1, 0))))
    carried = torch.einsum("bhzc,bchpn->bzhpn", across, left)
    entering, final = carried[:, :-1], carried[:, -1]
    y_out = torch.einsum("bcihn,bchpn,bhci->bcihp", Cc, entering, torch.exp(a_cum))
    return (y_in + y_out).reshape(b, l, h, p), final


def _ref_ssd(x, dt_raw, A_log, Bm, Cm):
    dt = F.softplus(dt_raw)
    g = dt * -torch.exp(A_log)
    o, S = rgla.simple_gla(Cm, Bm, x * dt[..., None], g, scale=1.0, output_final_state=True)
    return o, S.transpose(-1, -2)


def mamba2_recurrent_shared_bc(x, dt_raw, dt_bias, A_log, Bm, Cm, D):
    """transformers' Mamba2 torch path unrolled token by token (as cached decoding does): one group, so B_t and C_t
    [b, n] are shared by every head; dt = softplus(dt + dt_bias), dA = exp(dt A) per head, the state [b, h, p, n]
    (head dim before state dim), y_t = state @ C_t; the D x skip added after. x [b, l, h, p]."""
    b, l, h, p = x.shape
    dt = F.softplus(dt_raw + dt_bias)
    A = -torch.exp(A_log)
    state = x.new_zeros(b, h, p, Bm.shape[-1])
    ys = torch.empty_like(x)
    for t in range(l):
        dA = torch.exp(dt[:, t] * A)
        dBx = (dt[:, t, :, None] * x[:, t])[..., None] * Bm[:, t, None, None, :]
        state = state * dA[..., None, None] + dBx
        ys[:, t] = torch.matmul(state, Cm[:, t, None, :, None]).squeeze(-1)
    return ys + x * D[:, None]


def _ref_mamba2_shared(x, dt_raw, dt_bias, A_log, Bm, Cm, D):
    dt = F.softplus(dt_raw + dt_bias)
    g = dt * -torch.exp(A_log)
    o = rgla.simple_gla(Cm[:, :, None], Bm[:, :, None], x * dt[..., None], g, scale=1.0)[0]
    return o + x * D[:, None]


def simple_gla_softplus_decay_mqa(q, k, v, a):
    """Multi-query scalar-gated linear attention: one q/k head expanded over H value heads, the per-head decay written
    as a probability alpha = exp(-softplus(a)) multiplying the state, a preallocated output filled by index.
    [B, T, H, D], no scale."""
    B, T, _, K = q.shape
    H = v.shape[2]
    q = q.expand(B, T, H, K)
    k = k.expand(B, T, H, K)
    alpha = torch.exp(-F.softplus(a))
    S = q.new_zeros(B, H, K, v.shape[-1])
    o = torch.zeros_like(v)
    for t in range(T):
        S = alpha[:, t, :, None, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = (q[:, t, :, :, None] * S).sum(-2)
    return o


def _one_sequence_sgla(q, k, v, g):
    K, V = q.shape[-1], v.shape[-1]
    S = q.new_zeros(K, V)
    rows = []
    for t in range(q.shape[0]):
        S = torch.exp(g[t]) * S + torch.outer(k[t], v[t])
        rows.append(q[t] @ S)
    return torch.stack(rows)


def simple_gla_vmap_sequences(q, k, v, g):
    """A per-sequence loop ([T, D] tensors, torch.outer, a [K, V] state) written once and lifted over batch * heads
    with torch.func.vmap. [B, H, T, D], g [B, H, T], q scaled by K^-0.5."""
    B, H, T, K = q.shape
    o = torch.func.vmap(_one_sequence_sgla)(
        q.flatten(0, 1) * K**-0.5, k.flatten(0, 1), v.flatten(0, 1), g.flatten(0, 1)
    )
    return o.unflatten(0, (B, H))


# ========================================================================================================== gla


def gla_sigmoid_pow_gate(q, k, v, z):
    """GLA paper's gate, alpha_t = sigmoid(x W)^(1/16) per key dim, multiplied straight into the [K, V] state rows;
    read-out by broadcast-multiply and sum over K; q scaled by K^-0.5. [B, H, T, D]."""
    alpha = torch.sigmoid(z) ** (1 / 16)
    q = q * q.shape[-1] ** -0.5
    B, H, T, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        S = alpha[:, :, t, :, None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append((q[:, :, t, :, None] * S).sum(-2))
    return torch.stack(outs, dim=2)


def _ref_gla_sigmoid_pow(q, k, v, z):
    o = rgla.gla(_swap12(q), _swap12(k), _swap12(v), gk=_swap12(F.logsigmoid(z) / 16))[0]
    return _swap12(o)


def gla_chunked_secondary(q, k, v, gk, chunk=4):
    """fla's naive chunked GLA: inside a chunk, q times exp(cumsum gk) and k times exp(-cumsum gk) give the masked
    intra-chunk scores; the carried [K, V] state is read by the decayed q and updated with keys decayed to the chunk
    end. [B, H, T, K], per-key log gates gk, q scaled by K^-0.5."""
    B, H, T, K = q.shape
    q = q * K**-0.5
    S = q.new_zeros(B, H, K, v.shape[-1])
    mask = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    pieces = []
    for s in range(0, T, chunk):
        qc, kc, vc, gc = (x[:, :, s : s + chunk] for x in (q, k, v, gk))
        b = gc.cumsum(2)
        qe = qc * b.exp()
        ke = kc * (-b).exp()
        scores = (qe @ ke.transpose(-1, -2)).masked_fill(~mask, 0)
        pieces.append(scores @ vc + qe @ S)
        last = b[:, :, -1:]
        S = S * last.transpose(-1, -2).exp() + (kc * (last - b).exp()).transpose(-1, -2) @ vc
    return torch.cat(pieces, dim=2)


def _ref_gla_bhtd(q, k, v, gk):
    return _swap12(rgla.gla(_swap12(q), _swap12(k), _swap12(v), gk=_swap12(gk))[0])


def gla_time_major_state_vk(q, k, v, gk, state):
    """Time-major [T, B, H, D] GLA with the state transposed [B, H, V, K] (so the per-key decay broadcasts over the last
    axis), an initial state passed in, a preallocated output; returns (out, final state). Scale K^-0.5 at the read."""
    out = torch.empty_like(v)
    scale = q.shape[-1] ** -0.5
    for t in range(q.shape[0]):
        state = state * torch.exp(gk[t]).unsqueeze(-2) + v[t].unsqueeze(-1) * k[t].unsqueeze(-2)
        out[t] = scale * torch.einsum("bhvk,bhk->bhv", state, q[t])
    return out, state


def _ref_gla_time_major(q, k, v, gk, state):
    o, S = rgla.gla(
        _swap01(q),
        _swap01(k),
        _swap01(v),
        gk=_swap01(gk),
        initial_state=state.transpose(-1, -2),
        output_final_state=True,
    )
    return _swap01(o), S.transpose(-1, -2)


class GLALayerSharedQK(nn.Module):
    """An fla-style GatedLinearAttention layer with shared q/k: x [B, T, C] -> q, k with one head, v with two heads,
    a low-rank per-key gate gk = logsigmoid(x W_down W_up) / 16 for each value head; q/k expanded to the value heads,
    a recurrent token loop, then RMSNorm per head and a swish output gate."""

    def __init__(self, d_model=8, heads=2, head_k=4, head_v=4, rank=2, seed=12):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.heads, self.head_k, self.head_v = heads, head_k, head_v
        self.wq = _param(g, head_k, d_model)
        self.wk = _param(g, head_k, d_model)
        self.wv = _param(g, heads * head_v, d_model)
        self.wg_down = _param(g, rank, d_model)
        self.wg_up = _param(g, heads * head_k, rank, scale=0.5, shift=1.0)
        self.wo_gate = _param(g, heads * head_v, d_model)
        self.norm_w = _param(g, head_v, scale=0.1, shift=1.0)

    def _project(self, x):
        B, T, _ = x.shape
        H, K, V = self.heads, self.head_k, self.head_v
        q = F.linear(x, self.wq.to(x)).view(B, T, 1, K)
        k = F.linear(x, self.wk.to(x)).view(B, T, 1, K)
        v = F.linear(x, self.wv.to(x)).view(B, T, H, V)
        gk = F.logsigmoid(F.linear(F.linear(x, self.wg_down.to(x)), self.wg_up.to(x))).view(B, T, H, K) / 16
        return q, k, v, gk

    def _finish(self, x, o):
        B, T, _ = x.shape
        o = F.rms_norm(o, (self.head_v,), self.norm_w.to(x), eps=1e-6)
        gate = F.silu(F.linear(x, self.wo_gate.to(x))).view(B, T, self.heads, self.head_v)
        return (o * gate).flatten(2)

    def forward(self, x):
        q, k, v, gk = self._project(x)
        B, T, H, V = v.shape
        K = self.head_k
        q = q.expand(-1, -1, H, -1) * K**-0.5
        k = k.expand(-1, -1, H, -1)
        S = x.new_zeros(B, H, K, V)
        outs = []
        for t in range(T):
            S = S * gk[:, t, :, :, None].exp() + torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
            outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
        return self._finish(x, torch.stack(outs, 1))

    def reference(self, x):
        q, k, v, gk = self._project(x)
        return self._finish(x, rgla.gla(q, k, v, gk=gk)[0])


_gla_layer = GLALayerSharedQK()


def gla_unbind_softplus_gate(q, k, v, w):
    """GateLoop-style per-key forget gate given as a probability exp(-softplus(w)); tokens taken with unbind(1), the
    decay applied by einsum, outer products by einsum; the K^-0.5 scale applied to each read-out. [B, T, H, D]."""
    decay = torch.exp(-F.softplus(w))
    scale = q.shape[-1] ** -0.5
    S = torch.zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3], dtype=q.dtype, device=q.device)
    ys = []
    for q_t, k_t, v_t, d_t in zip(q.unbind(1), k.unbind(1), v.unbind(1), decay.unbind(1)):
        S = torch.einsum("bhk,bhkv->bhkv", d_t, S) + torch.einsum("bhk,bhv->bhkv", k_t, v_t)
        ys.append(torch.einsum("bhk,bhkv->bhv", q_t, S) * scale)
    return torch.stack(ys, dim=1)


def gla_pairwise_decay_quadratic(q, k, v, gk):
    """Fully parallel GLA (no chunks): o_t = sum_{s<=t} sum_k q_t[k] k_s[k] exp(G_t[k] - G_s[k]) v_s with G the cumsum
    of per-key log gates; the pairwise decay tensor [B, H, T, T, K] is set to -inf outside the causal triangle by
    torch.where before the exp. [B, H, T, D], no scale."""
    G = gk.cumsum(dim=2)
    T = q.shape[2]
    pair = G[:, :, :, None, :] - G[:, :, None, :, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()[..., None]
    pair = torch.where(causal, pair, torch.full_like(pair, float("-inf"))).exp()
    A = torch.einsum("bhtk,bhsk,bhtsk->bhts", q, k, pair)
    return A @ v


# =================================================================================================== delta_rule


def deltanet_normalize_interpolate(q, k, v, b):
    """DeltaNet written as the paper's value interpolation: v_old = S^T k, v_new = beta v + (1 - beta) v_old, write
    k (v_new - v_old)^T; q and k normalized with F.normalize, beta = sigmoid(b); the K^-0.5 scale applied to the
    finished output. [B, T, H, D]."""
    q = F.normalize(q, p=2, dim=-1)
    k = F.normalize(k, p=2, dim=-1)
    beta = torch.sigmoid(b)
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    o = torch.empty_like(v)
    for t in range(T):
        k_t = k[:, t]
        v_old = torch.einsum("bhk,bhkv->bhv", k_t, S)
        v_new = beta[:, t, :, None] * v[:, t] + (1 - beta[:, t, :, None]) * v_old
        S = S + torch.einsum("bhk,bhv->bhkv", k_t, v_new - v_old)
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t], S)
    return o * K**-0.5


def _ref_deltanet_normalize(q, k, v, b):
    return rdelta.delta_rule(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, torch.sigmoid(b))[0]


def deltanet_householder_state_vk(q, k, v, beta, state):
    """DeltaNet as a product of generalized Householder transitions on a transposed state [B, H, V, K]:
    S = S (I - beta k k^T) + beta v k^T with torch.eye and matmuls, o = S q; time-major [T, B, H, D], q/k arrive
    normalized, initial state in, (out, state) back. No scale."""
    K = q.shape[-1]
    eye = torch.eye(K, dtype=q.dtype, device=q.device)
    outs = []
    for t in range(q.shape[0]):
        kt = k[t].unsqueeze(-1)
        bt = beta[t][..., None, None]
        state = state @ (eye - bt * kt @ kt.transpose(-1, -2)) + bt * v[t].unsqueeze(-1) @ kt.transpose(-1, -2)
        outs.append((state @ q[t].unsqueeze(-1)).squeeze(-1))
    return torch.stack(outs), state


def _ref_deltanet_householder(q, k, v, beta, state):
    o, S = rdelta.delta_rule(
        _swap01(q),
        _swap01(k),
        _swap01(v),
        beta.transpose(0, 1),
        scale=1.0,
        initial_state=state.transpose(-1, -2),
        output_final_state=True,
    )
    return _swap01(o), S.transpose(-1, -2)


def _unit_rows(x):
    return x / x.norm(dim=-1, keepdim=True)


def deltanet_chunked_wy(q, k, v, beta, chunk=4):
    """DeltaNet's chunkwise WY / UT-transform form: per chunk A = strict-lower(beta k k^T), (I + A)^-1 built row by
    row by forward substitution, W = T (beta k), U = T (beta v) - W S, o = q S + causal(q k^T) U, S += k^T U.
    q and k normalized as x / ||x||, q scaled by K^-0.5. [B, H, T, D], beta [B, H, T]."""
    q, k = _unit_rows(q), _unit_rows(k)
    B, H, T, K = q.shape
    q = q * K**-0.5
    S = q.new_zeros(B, H, K, v.shape[-1])
    eye = torch.eye(chunk, dtype=q.dtype, device=q.device)
    ones = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device)
    strict, upto = ones.tril(-1), ones.tril()
    outs = []
    for s in range(0, T, chunk):
        qc, kc, vc = q[:, :, s : s + chunk], k[:, :, s : s + chunk], v[:, :, s : s + chunk]
        bc = beta[:, :, s : s + chunk, None]
        A = ((bc * kc) @ kc.transpose(-1, -2)).masked_fill(~strict, 0)
        rows = []
        for i in range(chunk):
            r = eye[i].expand_as(A[..., i, :])
            for j in range(i):
                r = r - A[..., i, j, None] * rows[j]
            rows.append(r)
        Tm = torch.stack(rows, dim=-2)
        W = Tm @ (bc * kc)
        U = Tm @ (bc * vc) - W @ S
        outs.append(qc @ S + (qc @ kc.transpose(-1, -2)).masked_fill(~upto, 0) @ U)
        S = S + kc.transpose(-1, -2) @ U
    return torch.cat(outs, dim=2)


def _ref_deltanet_chunked(q, k, v, beta):
    o = rdelta.delta_rule(
        _swap12(_unit_rows(q)), _swap12(_unit_rows(k)), _swap12(v), beta.transpose(1, 2), scale=q.shape[-1] ** -0.5
    )[0]
    return _swap12(o)


def delta_rule_gva_rsqrt(q, k, v, b):
    """Grouped-value DeltaNet: one q/k head ([B, 1, T, K], expanded) feeding H value heads, q/k normalized as
    x * rsqrt(sum x^2 + 1e-6) then q scaled by K^-0.5, beta = sigmoid(b) [B, H, T]; error-correction write with
    broadcast-multiply-sum; [B, H, T, D], outputs stacked on dim 2."""

    def l2(x):
        return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)

    H = v.shape[1]
    q = l2(q).expand(-1, H, -1, -1) * q.shape[-1] ** -0.5
    k = l2(k).expand(-1, H, -1, -1)
    beta = torch.sigmoid(b)
    S = q.new_zeros(q.shape[0], H, q.shape[-1], v.shape[-1])
    outs = []
    for t in range(q.shape[2]):
        kt = k[:, :, t]
        err = v[:, :, t] - (kt.unsqueeze(-1) * S).sum(-2)
        S = S + kt.unsqueeze(-1) * (beta[:, :, t, None] * err).unsqueeze(-2)
        outs.append((q[:, :, t].unsqueeze(-1) * S).sum(-2))
    return torch.stack(outs, dim=2)


def _ref_delta_gva(q, k, v, b):
    o = rdelta.delta_rule(_swap12(q), _swap12(k), _swap12(v), torch.sigmoid(b).transpose(1, 2), use_qk_l2norm=True)[0]
    return _swap12(o)


# ============================================================================================= gated_delta_rule


def qwen3_next_recurrent(q, k, v, a, b, A_log, dt_bias):
    """Qwen3-Next's gated delta net torch fallback with its gate math: beta = sigmoid(b),
    g = -exp(A_log) * softplus(a + dt_bias), q/k repeated (repeat_interleave) from 1 to 2 heads, L2-normalized with
    rsqrt(sum + 1e-6), moved to [B, H, T, D], q scaled; decay, predict, write, read. Returns (out [B, T, H, V],
    final state)."""

    def _l2(x, eps=1e-6):
        return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)

    H = v.shape[2]
    rep = H // q.shape[2]
    q = q.repeat_interleave(rep, dim=2)
    k = k.repeat_interleave(rep, dim=2)
    beta = b.sigmoid()
    g = -A_log.exp() * F.softplus(a + dt_bias)
    q, k = _l2(q), _l2(k)
    q, k, v, beta, g = (x.transpose(1, 2).contiguous() for x in (q, k, v, beta, g))
    B, H, T, K = k.shape
    q = q * K**-0.5
    state = q.new_zeros(B, H, K, v.shape[-1])
    out = torch.zeros_like(v)
    for i in range(T):
        q_t, k_t, v_t = q[:, :, i], k[:, :, i], v[:, :, i]
        state = state * g[:, :, i].exp()[..., None, None]
        mem = (state * k_t[..., None]).sum(dim=-2)
        delta = (v_t - mem) * beta[:, :, i, None]
        state = state + k_t[..., None] * delta[..., None, :]
        out[:, :, i] = (state * q_t[..., None]).sum(dim=-2)
    return out.transpose(1, 2), state


def _ref_qwen3_next(q, k, v, a, b, A_log, dt_bias):
    g = -A_log.exp() * F.softplus(a + dt_bias)
    return rdelta.gated_delta_rule(q, k, v, g, b.sigmoid(), use_qk_l2norm=True, output_final_state=True)


def gated_deltanet_chunked(q, k, v, g, beta, chunk=4):
    """Gated DeltaNet's chunkwise form: within a chunk the decayed strict-lower matrix A = beta k k^T exp(G_i - G_j) is
    inverted by in-place forward substitution (fla's naive style, with clones), the state's share uses keys decayed
    by exp(G), outputs combine q exp(G) S with the decayed causal scores; the state decays by the chunk total.
    [B, H, T, D], q/k arrive normalized, g [B, H, T] log decays, beta [B, H, T]; q scaled by K^-0.5."""
    B, H, T, K = q.shape
    q = q * K**-0.5
    S = q.new_zeros(B, H, K, v.shape[-1])
    ones = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device)
    strict, upto = ones.tril(-1), ones.tril()
    eye = torch.eye(chunk, dtype=q.dtype, device=q.device)
    out = torch.empty_like(v)
    for s in range(0, T, chunk):
        qc, kc, vc = q[:, :, s : s + chunk], k[:, :, s : s + chunk], v[:, :, s : s + chunk]
        bc = beta[:, :, s : s + chunk, None]
        G = g[:, :, s : s + chunk].cumsum(-1)
        rel_decay = G[..., :, None] - G[..., None, :]
        dec_strict = rel_decay.masked_fill(~strict, float("-inf")).exp()
        dec_upto = rel_decay.masked_fill(~upto, float("-inf")).exp()
        M = -((bc * kc) @ kc.transpose(-1, -2) * dec_strict)
        for i in range(1, chunk):
            M[..., i, :i] = M[..., i, :i].clone() + (M[..., i, :, None].clone() * M[..., :, :i].clone()).sum(-2)
        Tm = M + eye
        W = Tm @ (bc * G.exp()[..., None] * kc)
        U = Tm @ (bc * vc) - W @ S
        out[:, :, s : s + chunk] = (qc * G.exp()[..., None]) @ S + ((qc @ kc.transpose(-1, -2)) * dec_upto) @ U
        tail = (G[..., -1:] - G).exp()[..., None]
        S = S * G[..., -1, None, None].exp() + (kc * tail).transpose(-1, -2) @ U
    return out


def _ref_gated_chunked(q, k, v, g, beta):
    o = rdelta.gated_delta_rule(_swap12(q), _swap12(k), _swap12(v), g.transpose(1, 2), beta.transpose(1, 2))[0]
    return _swap12(o)


def gated_delta_flat_state_vk(q, k, v, alpha, beta, state):
    """Gated delta rule over B*H flattened sequences with bmm, the state kept [V, K], the decay given as a probability
    alpha (a sigmoid) scaling the state before the error-correcting write; q/k arrive normalized, no scale; initial
    state [B, H, V, K] in, (out [B, T, H, V], state) back."""
    B, T, H, K = q.shape
    V = v.shape[-1]

    def fl(x):
        return x.transpose(1, 2).reshape(B * H, T, *x.shape[3:])

    qf, kf, vf, af, bf = fl(q), fl(k), fl(v), fl(alpha), fl(beta)
    S = state.reshape(B * H, V, K)
    outs = []
    for t in range(T):
        S = af[:, t, None, None] * S
        kt = kf[:, t].unsqueeze(-1)
        err = vf[:, t].unsqueeze(-1) - torch.bmm(S, kt)
        S = S + torch.bmm(bf[:, t, None, None] * err, kt.transpose(1, 2))
        outs.append(torch.bmm(S, qf[:, t].unsqueeze(-1)).squeeze(-1))
    o = torch.stack(outs, dim=1).reshape(B, H, T, V).transpose(1, 2)
    return o, S.reshape(B, H, V, K)


def _ref_gated_flat(q, k, v, alpha, beta, state):
    o, S = rdelta.gated_delta_rule(
        q, k, v, alpha.log(), beta, scale=1.0, initial_state=state.transpose(-1, -2), output_final_state=True
    )
    return o, S.transpose(-1, -2)


# ========================================================================================================== kda


def kimi_delta_recurrent(q, k, v, f, b, A_log, dt_bias):
    """Kimi-Linear's KDA torch fallback with its gate math: per-key gate g = -exp(A_log)[h] * softplus(f + dt_bias)
    [B, T, H, K], beta = sigmoid(b), q/k L2-normalized with rsqrt(sum + 1e-6), permuted to [B, H, T, D], q scaled;
    decay the state's K rows, predict with k, write beta times the error, read with q."""

    def l2(x):
        return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)

    g = -torch.exp(A_log)[:, None] * F.softplus(f + dt_bias)
    beta = torch.sigmoid(b).permute(0, 2, 1)
    q, k = l2(q), l2(k)
    q, k, v, g = (x.permute(0, 2, 1, 3) for x in (q, k, v, g))
    B, H, T, K = q.shape
    q = q * K**-0.5
    S = q.new_zeros(B, H, K, v.shape[-1])
    o = q.new_zeros(B, H, T, v.shape[-1])
    for i in range(T):
        S = S * g[:, :, i, :, None].exp()
        kk = k[:, :, i]
        pred = torch.einsum("bhk,bhkv->bhv", kk, S)
        S = S + torch.einsum("bhk,bhv->bhkv", kk, beta[:, :, i, None] * (v[:, :, i] - pred))
        o[:, :, i] = torch.einsum("bhk,bhkv->bhv", q[:, :, i], S)
    return o.permute(0, 2, 1, 3)


def _ref_kimi(q, k, v, f, b, A_log, dt_bias):
    g = -torch.exp(A_log)[:, None] * F.softplus(f + dt_bias)
    return rdelta.kda(q, k, v, g, torch.sigmoid(b), use_qk_l2norm=True)[0]


def kda_time_major_state_vk(q, k, v, gk, beta, state):
    """KDA time-major [T, B, H, D] with the state transposed [B, H, V, K]: the per-key decay exp(gk) scales the state's
    last axis, err = v - S k, S += beta err k^T, o = S q; q/k arrive normalized, no scale, initial state in,
    (out, state) back."""
    outs = []
    for t in range(q.shape[0]):
        state = state * gk[t].exp().unsqueeze(-2)
        kt = k[t]
        err = v[t] - torch.einsum("bhvk,bhk->bhv", state, kt)
        state = state + (beta[t].unsqueeze(-1) * err).unsqueeze(-1) * kt.unsqueeze(-2)
        outs.append(torch.einsum("bhvk,bhk->bhv", state, q[t]))
    return torch.stack(outs, 0), state


def _ref_kda_time_major(q, k, v, gk, beta, state):
    o, S = rdelta.kda(
        _swap01(q),
        _swap01(k),
        _swap01(v),
        _swap01(gk),
        beta.transpose(0, 1),
        scale=1.0,
        initial_state=state.transpose(-1, -2),
        output_final_state=True,
    )
    return _swap01(o), S.transpose(-1, -2)


def kda_sigmoid_gate_gqa(q, k, v, z, beta):
    """KDA with the per-key gate as a probability alpha = sigmoid(z)^(1/8) multiplying the state's rows; q/k with one
    head repeat_interleave'd to 3 value heads; [B, H, T, D], q/k arrive normalized, preallocated output, the K^-0.5
    scale applied at the read."""
    H = v.shape[1]
    rep = H // q.shape[1]
    q = q.repeat_interleave(rep, dim=1)
    k = k.repeat_interleave(rep, dim=1)
    alpha = torch.sigmoid(z) ** 0.125
    scale = q.shape[-1] ** -0.5
    S = torch.zeros(q.shape[0], H, q.shape[-1], v.shape[-1], dtype=q.dtype, device=q.device)
    o = torch.empty_like(v)
    for t in range(q.shape[2]):
        S = alpha[:, :, t].unsqueeze(-1) * S
        kt = k[:, :, t]
        v_old = (kt.unsqueeze(-1) * S).sum(-2)
        S = S + beta[:, :, t, None, None] * kt.unsqueeze(-1) * (v[:, :, t] - v_old).unsqueeze(-2)
        o[:, :, t] = scale * (q[:, :, t].unsqueeze(-1) * S).sum(-2)
    return o


def _ref_kda_sigmoid(q, k, v, z, beta):
    o = rdelta.kda(_swap12(q), _swap12(k), _swap12(v), _swap12(F.logsigmoid(z) / 8), beta.transpose(1, 2))[0]
    return _swap12(o)


# ======================================================================================================== rwkv6


def rwkv6_wkv_loop(r, k, v, w_raw, u):
    """RWKV-6 'Finch' WKV as RWKV-LM's plain-torch reference writes it: k laid out [B, H, K, T] so k_t is a column,
    at = k_t @ v_t, out_t = r_t @ (u * at + s), s = at + w_t * s with w = exp(-exp(w_raw)); u [H, K]. Inputs
    [B, T, H, D]; no scale."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    r_ = r.permute(0, 2, 1, 3)
    k_ = k.permute(0, 2, 3, 1)
    v_ = v.permute(0, 2, 1, 3)
    w = torch.exp(-torch.exp(w_raw)).permute(0, 2, 3, 1)
    bonus = u.view(1, H, K, 1)
    s = r.new_zeros(B, H, K, V)
    out = r.new_zeros(B, H, T, V)
    for t in range(T):
        rt = r_[:, :, t : t + 1, :]
        kt = k_[:, :, :, t : t + 1]
        vt = v_[:, :, t : t + 1, :]
        at = kt @ vt
        out[:, :, t] = (rt @ (bonus * at + s)).squeeze(2)
        s = at + w[:, :, :, t : t + 1] * s
    return out.permute(0, 2, 1, 3)


def _ref_rwkv6_loop(r, k, v, w_raw, u):
    return rrwkv.rwkv6(r, k, v, -torch.exp(w_raw), u, scale=1.0)[0]


def rwkv6_flat_heads_bmm(r, k, v, logw, u, state):
    """RWKV-6 over B*H flattened sequences with bmm: out_t = r_t (S + diag(u) k_t^T v_t), S = diag(exp(logw_t)) S +
    k_t^T v_t, r scaled by K^-0.5, u [H, K] tiled over the batch with repeat; initial state [B*H, K, V] in,
    (out [B, T, H, V], state) back."""
    B, T, H, K = r.shape
    V = v.shape[-1]

    def fl(x):
        return x.transpose(1, 2).reshape(B * H, T, x.shape[-1])

    rf, kf, vf, wf = fl(r) * K**-0.5, fl(k), fl(v), fl(logw).exp()
    uf = u.repeat(B, 1).unsqueeze(-1)
    S = state
    outs = []
    for t in range(T):
        kv = torch.bmm(kf[:, t, :, None], vf[:, t, None, :])
        outs.append(torch.bmm(rf[:, t, None, :], S + uf * kv).squeeze(1))
        S = wf[:, t, :, None] * S + kv
    o = torch.stack(outs, 1).reshape(B, H, T, V).transpose(1, 2)
    return o, S


def _ref_rwkv6_flat(r, k, v, logw, u, state):
    B, T, H, K = r.shape
    o, S = rrwkv.rwkv6(
        r,
        k,
        v,
        logw,
        u,
        scale=K**-0.5,
        initial_state=state.reshape(B, H, K, v.shape[-1]),
        output_final_state=True,
    )
    return o, S.reshape(B * H, K, v.shape[-1])


class RWKV6TimeMix(nn.Module):
    """An RWKV-6 time-mixing block: token shift (ZeroPad-style F.pad(x, (0, 0, 1, -1))) with per-channel mixing
    coefficients, r/k/v/g projections, the data-dependent decay w = w0 + tanh(x_w A) B (a LoRA) as log decay
    -exp(w), a bonus u [H, K]; the core keeps the state transposed [V, K]; GroupNorm per head and a silu gate after."""

    def __init__(self, d_model=8, heads=2, seed=13):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.heads = heads
        self.mu = nn.Parameter(torch.rand(5, d_model, generator=gen))
        self.Wr = _param(gen, d_model, d_model, scale=0.4)
        self.Wk = _param(gen, d_model, d_model, scale=0.4)
        self.Wv = _param(gen, d_model, d_model, scale=0.4)
        self.Wg = _param(gen, d_model, d_model, scale=0.4)
        self.w0 = _param(gen, d_model, scale=0.3, shift=-0.6)
        self.wA = _param(gen, d_model, 2, scale=0.3)
        self.wB = _param(gen, 2, d_model, scale=0.3)
        self.u = _param(gen, heads, d_model // heads, scale=0.5)
        self.ln_w = _param(gen, d_model, scale=0.1, shift=1.0)
        self.ln_b = _param(gen, d_model, scale=0.1)

    def _mix(self, x):
        B, T, C = x.shape
        H, K = self.heads, C // self.heads
        dx = F.pad(x, (0, 0, 1, -1)) - x
        mu = self.mu.to(x)
        xr, xk, xv, xw, xg = (x + dx * mu[i] for i in range(5))
        r = (xr @ self.Wr.to(x)).view(B, T, H, K)
        k = (xk @ self.Wk.to(x)).view(B, T, H, K)
        v = (xv @ self.Wv.to(x)).view(B, T, H, K)
        w = self.w0.to(x) + torch.tanh(xw @ self.wA.to(x)) @ self.wB.to(x)
        logw = -torch.exp(w).view(B, T, H, K)
        g = F.silu(xg @ self.Wg.to(x))
        return r, k, v, logw, g

    def _out(self, x, o, g):
        B, T, C = x.shape
        o = F.group_norm(o.reshape(B * T, C), self.heads, self.ln_w.to(x), self.ln_b.to(x), eps=64e-5)
        return o.view(B, T, C) * g

    def forward(self, x):
        r, k, v, logw, g = self._mix(x)
        B, T, H, K = r.shape
        u = self.u.to(x)
        S = x.new_zeros(B, H, K, K)
        outs = []
        for t in range(T):
            vk = v[:, t, :, :, None] * k[:, t, :, None, :]
            outs.append(torch.einsum("bhvk,bhk->bhv", S + vk * u[None, :, None, :], r[:, t]))
            S = S * torch.exp(logw[:, t])[:, :, None, :] + vk
        return self._out(x, torch.stack(outs, 1), g)

    def reference(self, x):
        r, k, v, logw, g = self._mix(x)
        o = rrwkv.rwkv6(r, k, v, logw, self.u.to(x), scale=1.0)[0]
        return self._out(x, o, g)


_rwkv6_block = RWKV6TimeMix()


# ========================================================================================================= hgrn


def hgrn_lower_bounded_forget(x, f_raw):
    """HGRN's token mixer: forget gate f = lb + (1 - lb) sigmoid(f_raw) with a layer lower bound lb = 0.25, input
    silu(x) (1 - f), h = f h + i by a loop into a preallocated output. [B, T, D]."""
    lb = 0.25
    f = lb + (1 - lb) * torch.sigmoid(f_raw)
    inp = F.silu(x) * (1 - f)
    h = torch.zeros_like(x[:, 0])
    out = torch.empty_like(x)
    for t in range(x.shape[1]):
        h = f[:, t] * h + inp[:, t]
        out[:, t] = h
    return out


def _ref_hgrn_lb(x, f_raw):
    f = 0.25 + 0.75 * torch.sigmoid(f_raw)
    return rhgrn.hgrn(F.silu(x) * (1 - f), f.log())[0]


def _log_g(x):
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def mingru_log_space_scan(hidden, gate):
    """minGRU's parallel mode ('Were RNNs All We Needed?'), Heinsen's log-space scan: log(1 - z) = -softplus(gate),
    log z = -softplus(-gate), log g(h~) with g(x) = x + 0.5 for x >= 0 else sigmoid(x); h = exp(a* + logcumsumexp(
    log values - a*)). [B, T, D], zero initial state."""
    log_coeffs = -F.softplus(gate)
    log_z = -F.softplus(-gate)
    log_values = log_z + _log_g(hidden)
    a_star = torch.cumsum(log_coeffs, dim=1)
    log_h = a_star + torch.logcumsumexp(log_values - a_star, dim=1)
    return torch.exp(log_h)


def _ref_mingru(hidden, gate):
    g_val = torch.where(hidden >= 0, hidden + 0.5, torch.sigmoid(hidden))
    return rhgrn.hgrn(torch.sigmoid(gate) * g_val, -F.softplus(gate))[0]


class RGLRU(nn.Module):
    """RecurrentGemma's Real-Gated Linear Recurrent Unit: input and recurrence gates from x, log a = -8 r softplus(Lambda),
    the input scaled by sqrt(1 - a^2) except at the first position (the reset), h_0 = x_0 special-cased, then
    h = a h + x~. x [B, T, D]."""

    def __init__(self, width=8, seed=14):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.Wx = _param(gen, width, width, scale=0.4)
        self.bx = _param(gen, width, scale=0.1)
        self.Wa = _param(gen, width, width, scale=0.4)
        self.ba = _param(gen, width, scale=0.1)
        self.a_param = _param(gen, width, scale=0.5, shift=-2.0)

    def _gates(self, x):
        T = x.shape[1]
        gate_x = torch.sigmoid(F.linear(x, self.Wx.to(x), self.bx.to(x)))
        gate_a = torch.sigmoid(F.linear(x, self.Wa.to(x), self.ba.to(x)))
        log_a = -8.0 * gate_a * F.softplus(self.a_param.to(x))
        multiplier = torch.sqrt(1 - torch.exp(2 * log_a))
        reset = (torch.arange(T, device=x.device) == 0)[None, :, None]
        multiplier = torch.where(reset, torch.ones_like(multiplier), multiplier)
        return x * gate_x * multiplier, log_a

    def forward(self, x):
        xn, log_a = self._gates(x)
        a = torch.exp(log_a)
        h = None
        ys = []
        for t in range(x.shape[1]):
            h = xn[:, t] if h is None else a[:, t] * h + xn[:, t]
            ys.append(h)
        return torch.stack(ys, 1)

    def reference(self, x):
        xn, log_a = self._gates(x)
        return rhgrn.hgrn(xn, log_a)[0]


_rglru = RGLRU()


def lru_cumprod_closed_form(x, a):
    """A real diagonal linear recurrence (LRU / S5 style, decays a in (0.7, 1)) in closed form: with P_t the cumprod of
    a, h_t = P_t * sum_{s<=t} x_s / P_s. [B, T, H, D], every channel its own scan."""
    P = torch.cumprod(a, dim=1)
    return P * torch.cumsum(x / P, dim=1)


def _ref_lru(x, a):
    return rhgrn.hgrn(x.flatten(2), a.log().flatten(2))[0].view_as(x)


def hgrn_time_major_addcmul(x, g, h0):
    """An elementwise gated scan time-major [T, B, D], iterating the tensors directly (zip over dim 0), the log decay
    exponentiated per step, the update as torch.addcmul(x_t, exp(g_t), h); initial state h0 [B, D]; returns
    (outputs, final state)."""
    h = h0
    hs = []
    for x_t, g_t in zip(x, g):
        h = torch.addcmul(x_t, g_t.exp(), h)
        hs.append(h)
    return torch.stack(hs), h


def _ref_hgrn_tm(x, g, h0):
    o, h = rhgrn.hgrn(_swap01(x), _swap01(g), initial_state=h0, output_final_state=True)
    return _swap01(o), h


# ======================================================================================================== mamba


def selective_scan_ref_channels_first(u, delta, A, Bm, Cm, D, z, delta_bias):
    """mamba_ssm's selective_scan_ref: channels-first u, delta, z [B, D, L], B/C [B, N, L] (one group), A [D, N],
    delta_softplus with a bias; deltaA = exp(delta A) and deltaB_u = delta B u as [B, D, L, N] by einsum, a loop over
    L, y_i = x . C_i by einsum; then + D u and * silu(z)."""
    delta = F.softplus(delta + delta_bias[..., None])
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    dBu = torch.einsum("bdl,bnl,bdl->bdln", delta, Bm, u)
    x = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = dA[:, :, i] * x + dBu[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, Cm[:, :, i]))
    y = torch.stack(ys, dim=2)
    out = y + u * D[:, None]
    return out * F.silu(z)


def _ref_selective_scan_ref(u, delta, A, Bm, Cm, D, z, delta_bias):
    delta = F.softplus(delta + delta_bias[..., None])
    y = rmamba.selective_scan(
        (delta * u).transpose(1, 2), delta.transpose(1, 2), A, Bm.transpose(1, 2), Cm.transpose(1, 2)
    )[0].transpose(1, 2)
    return (y + u * D[:, None]) * F.silu(z)


class MambaMinimalSSM(nn.Module):
    """mamba-minimal's MambaBlock.ssm + selective_scan on x [b, l, d_inner] (after the conv): S4D-real A = -exp(A_log),
    x_proj splits into (dt_low, B, C), dt = softplus(dt_proj(dt_low)), discretized dA / dBu by einsum in
    [b, l, d, n], a loop, y by einsum, stacked on dim 1, plus the D skip."""

    def __init__(self, d_inner=6, d_state=4, dt_rank=2, seed=15):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.dt_rank, self.d_state = dt_rank, d_state
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = _param(gen, d_inner, scale=0.1, shift=1.0)
        self.x_proj = _param(gen, dt_rank + 2 * d_state, d_inner, scale=0.4)
        self.dt_w = _param(gen, d_inner, dt_rank, scale=0.5)
        self.dt_b = _param(gen, d_inner, scale=0.3, shift=-1.0)

    def _params(self, x):
        A = -torch.exp(self.A_log.to(x))
        dt_low, Bm, Cm = F.linear(x, self.x_proj.to(x)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(F.linear(dt_low, self.dt_w.to(x), self.dt_b.to(x)))
        return A, dt, Bm, Cm

    def forward(self, x):
        A, dt, Bm, Cm = self._params(x)
        dA = torch.exp(torch.einsum("bld,dn->bldn", dt, A))
        dBu = torch.einsum("bld,bln,bld->bldn", dt, Bm, x)
        h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
        ys = []
        for i in range(x.shape[1]):
            h = dA[:, i] * h + dBu[:, i]
            ys.append(torch.einsum("bdn,bn->bd", h, Cm[:, i]))
        return torch.stack(ys, dim=1) + x * self.D.to(x)

    def reference(self, x):
        A, dt, Bm, Cm = self._params(x)
        return rmamba.selective_scan(dt * x, dt, A, Bm, Cm)[0] + x * self.D.to(x)


_mamba_minimal = MambaMinimalSSM()


def hf_mamba_slow_scan(hidden, dt, A, Bm, Cm, D, gate, ssm_state):
    """transformers' MambaMixer.slow_forward core (Mamba / FalconMamba / Jamba): hidden, dt (already softplus'ed) and
    gate channels-first [B, D, L], B/C [B, L, N], discrete_A = exp(A[None, :, None, :] dt[..., None]), deltaB_u =
    dt B hidden, an ssm_state [B, D, N] carried in (the cache) and returned, read-out by matmul with C as a column;
    then the D skip and silu(gate)."""
    dA = torch.exp(A[None, :, None, :] * dt[:, :, :, None])
    dB = dt[:, :, :, None] * Bm[:, None, :, :]
    dBu = dB * hidden[:, :, :, None]
    ys = []
    for i in range(hidden.shape[-1]):
        ssm_state = dA[:, :, i, :] * ssm_state + dBu[:, :, i, :]
        ys.append(torch.matmul(ssm_state, Cm[:, i, :].unsqueeze(-1))[:, :, 0])
    y = torch.stack(ys, dim=-1)
    y = y + hidden * D[None, :, None]
    return y * F.silu(gate), ssm_state


def _ref_hf_mamba(hidden, dt, A, Bm, Cm, D, gate, ssm_state):
    y, S = rmamba.selective_scan(
        (dt * hidden).transpose(1, 2),
        dt.transpose(1, 2),
        A,
        Bm,
        Cm,
        initial_state=ssm_state,
        output_final_state=True,
    )
    y = y.transpose(1, 2) + hidden * D[None, :, None]
    return y * F.silu(gate), S


def mamba_pairwise_kernel(u, dt, A, Bm, Cm):
    """The selective scan materialized as a causal kernel (Mamba-1 seen through SSD's 'attention' lens): cumulative
    dt A per channel and state, pairwise decays exp(c_t - c_s) masked to s <= t, y_t[d] = sum_s sum_n C_t[n]
    decay[t, s, d, n] B_s[n] u_s[d] in one einsum; u already multiplied by dt. [B, L, D]."""
    c = torch.cumsum(dt[..., None] * A, dim=1)
    L = u.shape[1]
    diff = c[:, :, None] - c[:, None, :]
    causal = torch.ones(L, L, dtype=torch.bool, device=u.device).tril()[None, :, :, None, None]
    decay = diff.masked_fill(~causal, float("-inf")).exp()
    return torch.einsum("btn,btsdn,bsn,bsd->btd", Cm, decay, Bm, u)


def _ref_mamba_pairwise(u, dt, A, Bm, Cm):
    return rmamba.selective_scan(u, dt, A, Bm, Cm)[0]


# ======================================================================================= normalized_linear_attn


def elu_feature_causal_linear_attention(q, k, v):
    """Katharopoulos et al. ('Transformers are RNNs') as fast-transformers' CausalLinearAttention: phi = elu + 1,
    Z = 1 / (phi(q) . cumsum phi(k) + eps), the numerator a cumsum of phi(k) v^T, times Z. [N, L, H, D], eps 1e-6."""
    eps = 1e-6
    Qf = F.elu(q) + 1
    Kf = F.elu(k) + 1
    Z = 1 / (torch.einsum("nlhi,nlhi->nlh", Qf, Kf.cumsum(1)) + eps)
    kv = torch.einsum("nlhi,nlhm->nlhim", Kf, v).cumsum(1)
    num = torch.einsum("nlhi,nlhim->nlhm", Qf, kv)
    return num * Z[..., None]


def _ref_elu(q, k, v):
    return rnorm.normalized_linear_attn(F.elu(q) + 1, F.elu(k) + 1, v, eps=1e-6)[0]


def _taylor_features(x):
    d = x.shape[-1]
    sq = (x[..., :, None] * x[..., None, :]).flatten(-2) / (math.sqrt(2) * math.sqrt(d))
    return torch.cat([torch.ones_like(x[..., :1]), x / d**0.25, sq], dim=-1)


def based_taylor_recurrent(q, k, v):
    """Based's linear-attention branch: 2nd-order Taylor feature map phi(x) = [1, x / d^(1/4), vec(x x^T) / sqrt(2d)]
    (phi(q).phi(k) = 1 + s + s^2/2, s = q.k / sqrt(d), always positive), a recurrent loop keeping the kv state and
    the key-sum normalizer, a preallocated output; [B, H, T, d], d = 4 (21 features), eps 1e-12."""
    fq, fk = _taylor_features(q), _taylor_features(k)
    B, H, T, Fd = fq.shape
    kv = q.new_zeros(B, H, Fd, v.shape[-1])
    ksum = q.new_zeros(B, H, Fd)
    out = torch.empty_like(v)
    for t in range(T):
        kv = kv + fk[:, :, t, :, None] * v[:, :, t, None, :]
        ksum = ksum + fk[:, :, t]
        num = torch.einsum("bhf,bhfv->bhv", fq[:, :, t], kv)
        den = (fq[:, :, t] * ksum).sum(-1, keepdim=True)
        out[:, :, t] = num / (den + 1e-12)
    return out


def _ref_based(q, k, v):
    o = rnorm.normalized_linear_attn(_swap12(_taylor_features(q)), _swap12(_taylor_features(k)), _swap12(v), eps=1e-12)[
        0
    ]
    return _swap12(o)


class HedgehogAttention(nn.Module):
    """Hedgehog's learnable feature map phi(x) = [softmax(x W_h), softmax(-x W_h)] per head, causal attention in its
    quadratic masked form (tril of phi(q) phi(k)^T) normalized by the row sums + 1e-6. q, k, v [B, H, T, D]."""

    def __init__(self, heads=2, dim=4, feat=4, seed=16):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.W = _param(gen, heads, dim, feat, scale=0.5)

    def _phi(self, x):
        z = torch.einsum("bhtd,hdf->bhtf", x, self.W.to(x))
        return torch.cat([torch.softmax(z, -1), torch.softmax(-z, -1)], -1)

    def forward(self, q, k, v):
        fq, fk = self._phi(q), self._phi(k)
        A = (fq @ fk.transpose(-1, -2)).tril()
        return (A @ v) / (A.sum(-1, keepdim=True) + 1e-6)

    def reference(self, q, k, v):
        fq, fk = self._phi(q), self._phi(k)
        return _swap12(rnorm.normalized_linear_attn(_swap12(fq), _swap12(fk), _swap12(v), eps=1e-6)[0])


_hedgehog = HedgehogAttention()


def rebased_flat_with_state(q, k, v, gamma, beta, S0, z0):
    """ReBased: phi(x) = (gamma * LayerNorm(x) + beta)^2, B*H flattened sequences, torch.baddbmm for the state update
    and bmm read-outs of numerator and denominator; initial (S0 [B*H, D, V], z0 [B*H, D]) in, (out, (S, z)) back.
    q, k, v [B, T, H, D], eps 1e-6."""
    B, T, H, D = q.shape

    def phi(x):
        return (F.layer_norm(x, (D,)) * gamma + beta).pow(2)

    fq = phi(q).transpose(1, 2).reshape(B * H, T, D)
    fk = phi(k).transpose(1, 2).reshape(B * H, T, D)
    vf = v.transpose(1, 2).reshape(B * H, T, -1)
    S, z = S0, z0
    outs = []
    for t in range(T):
        S = torch.baddbmm(S, fk[:, t, :, None], vf[:, t, None, :])
        z = z + fk[:, t]
        num = torch.bmm(fq[:, t, None, :], S).squeeze(1)
        den = torch.bmm(fq[:, t, None, :], z[:, :, None]).squeeze(1)
        outs.append(num / (den + 1e-6))
    o = torch.stack(outs, 1).view(B, H, T, -1).transpose(1, 2)
    return o, (S, z)


def _ref_rebased(q, k, v, gamma, beta, S0, z0):
    B, T, H, D = q.shape
    V = v.shape[-1]

    def phi(x):
        return (F.layer_norm(x, (D,)) * gamma + beta).pow(2)

    o, (S, z) = rnorm.normalized_linear_attn(
        phi(q),
        phi(k),
        v,
        eps=1e-6,
        initial_state=(S0.reshape(B, H, D, V), z0.reshape(B, H, D)),
        output_final_state=True,
    )
    return o, (S.reshape(B * H, D, V), z.reshape(B * H, D))


def _favor_features(x, proj):
    x = x * x.shape[-1] ** -0.25
    return torch.exp(x @ proj.T - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(proj.shape[0])


def performer_favor_time_major(q, k, v, proj):
    """Performer's FAVOR+ positive random features phi(x) = exp(w . x - |x|^2 / 2) / sqrt(m) (x pre-scaled by
    d^-1/4) with a fixed Gaussian projection proj [m, D] passed in; causal prefix sums by a time-major loop
    [T, B, H, D] with the normalizer, eps 1e-6."""
    fq, fk = _favor_features(q, proj), _favor_features(k, proj)
    S = fq.new_zeros(*fq.shape[1:], v.shape[-1])
    z = fq.new_zeros(fq.shape[1:])
    outs = []
    for t in range(q.shape[0]):
        S = S + torch.einsum("bhm,bhv->bhmv", fk[t], v[t])
        z = z + fk[t]
        den = torch.einsum("bhm,bhm->bh", fq[t], z)[..., None] + 1e-6
        outs.append(torch.einsum("bhm,bhmv->bhv", fq[t], S) / den)
    return torch.stack(outs)


def _ref_performer(q, k, v, proj):
    fq, fk = _favor_features(q, proj), _favor_features(k, proj)
    return _swap01(rnorm.normalized_linear_attn(_swap01(fq), _swap01(fk), _swap01(v), eps=1e-6)[0])


# ================================================================================================= near misses


def softmax_attention_kv_cache_loop(q, k, v):
    """Causal softmax attention decoded token by token: a growing KV cache and a softmax over the cached keys at
    every step (the softmax sits inside the loop). [B, T, H, D]."""
    scale = q.shape[-1] ** -0.5
    outs = []
    for t in range(q.shape[1]):
        scores = torch.einsum("bhd,bshd->bhs", q[:, t], k[:, : t + 1]) * scale
        outs.append(torch.einsum("bhs,bshv->bhv", scores.softmax(-1), v[:, : t + 1]))
    return torch.stack(outs, 1)


def fast_weights_tanh_state(q, k, v, g):
    """A gated fast-weight memory with a squashing nonlinearity on the state, S = tanh(exp(g) S + k v^T): a nonlinear
    RNN that looks like simple_gla. [B, T, H, D]."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        S = torch.tanh(torch.exp(g[:, t])[..., None, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :])
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1)


def deltanet_reads_state_before_write(q, k, v, beta):
    """Off-by-one bug in a DeltaNet loop: the read-out uses the state from before this token's delta write
    (o_t = S_{t-1}^T q_t), so the current token never reaches its own output. [B, T, H, D], q/k normalized."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    o = torch.empty_like(v)
    for t in range(T):
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t], S)
        k_t = k[:, t]
        err = v[:, t] - torch.einsum("bhk,bhkv->bhv", k_t, S)
        S = S + torch.einsum("bhk,bhv->bhkv", k_t, beta[:, t, :, None] * err)
    return o


def gla_decay_on_value_axis(q, k, v, gv):
    """Decay on the wrong axis: a per-dim gate (K = V, so the shapes still fit) broadcast over the value axis of the
    [K, V] state, S * exp(g)[..., None, :], instead of its key axis. [B, T, H, D]."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        S = S * gv[:, t].exp()[:, :, None, :] + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1)


def normalized_denominator_whole_sequence(q, k, v):
    """Normalizer over the wrong axis: a causal numerator (cumsum of phi(k) v^T) divided by phi(q) . sum of phi(k)
    over the whole sequence (k.sum over T instead of a cumsum), which leaks future tokens. elu + 1 features,
    [B, T, H, D]."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    num = torch.einsum("bthk,bthkv->bthv", fq, torch.einsum("bthk,bthv->bthkv", fk, v).cumsum(1))
    den = torch.einsum("bthk,bhk->bth", fq, fk.sum(1))
    return num / (den[..., None] + 1e-6)


def linear_attn_state_clamped(q, k, v):
    """A data-dependent clamp: the running kv state is clamped each step to +/- half the largest |v| seen so far (a
    saturating memory), which makes the recurrence nonlinear. [B, T, H, D]."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    bound = q.new_zeros(B, H, 1, 1)
    outs = []
    for t in range(T):
        bound = torch.maximum(bound, 0.5 * v[:, t].abs().amax(-1)[..., None, None])
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        S = torch.minimum(torch.maximum(S, -bound), bound)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1)


def simple_gla_reset_when_large(q, k, v, g):
    """A state that resets on a condition: scalar-gated linear attention whose state is zeroed wherever its Frobenius
    norm passes 6 (the reset depends on the state itself). [B, T, H, D]."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        S = torch.exp(g[:, t])[..., None, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        big = S.flatten(-2).norm(dim=-1) > 6.0
        S = torch.where(big[..., None, None], torch.zeros_like(S), S)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1)


def linear_attn_swapped_qk(q, k, v):
    """An outer product of the wrong tensors: the loop writes q_t v_t^T (the query instead of the key) and reads the
    state with k_t, so o_t = sum_{s<=t} (q_s . k_t) v_s (equal to linear_attn(k, q, v), not to linear_attn(q, k, v)).
    [B, T, H, D]."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        S = S + q[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", k[:, t], S))
    return torch.stack(outs, 1)


def linear_attn_sliding_window(q, k, v):
    """A sliding window: masked quadratic linear attention that only looks back 3 tokens (a band mask), as in local
    linear attention; the window makes it no single causal prefix recurrence. [B, H, T, D]."""
    T = q.shape[2]
    i = torch.arange(T, device=q.device)
    band = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < 3)
    return ((q @ k.transpose(-1, -2)) * band) @ v


def mamba_reads_state_before_update(u, dt, A, Bm, Cm):
    """Off-by-one in a selective scan: y_t = C_t . h_{t-1} is read before token t is written (equal to a selective
    scan of inputs shifted by one, not to the scan of these). u (already dt x), dt [B, L, D], A [D, N], B/C
    [B, L, N]."""
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    ys = []
    for t in range(u.shape[1]):
        ys.append((h * Cm[:, t, None, :]).sum(-1))
        h = torch.exp(dt[:, t, :, None] * A) * h + u[:, t, :, None] * Bm[:, t, None, :]
    return torch.stack(ys, 1)


def gru_gate_reads_state(x, Wz, Uz):
    """A GRU-like cell whose update gate depends on the previous hidden state, z_t = sigmoid(x_t Wz + h_{t-1} Uz): the
    minGRU simplification undone, so no linear scan. [B, T, D]."""
    h = torch.zeros_like(x[:, 0])
    outs = []
    for t in range(x.shape[1]):
        z = torch.sigmoid(x[:, t] @ Wz + h @ Uz)
        h = (1 - z) * h + z * torch.tanh(x[:, t])
        outs.append(h)
    return torch.stack(outs, 1)


def rwkv4_wkv_stabilized(w, u, k, v):
    """RWKV-4's WKV (a different model): a ratio of two exponentially weighted sums, kept with a running max exponent
    for stability (numerator a, denominator b, exponent p); per channel [B, T, C], w = -exp(decay) [C], bonus u [C]."""
    B, T, C = k.shape
    a = k.new_zeros(B, C)
    b = k.new_zeros(B, C)
    p = torch.full((B, C), -1e30, dtype=k.dtype, device=k.device)
    outs = []
    for t in range(T):
        kt, vt = k[:, t], v[:, t]
        ww = u + kt
        m = torch.maximum(p, ww)
        e1, e2 = torch.exp(p - m), torch.exp(ww - m)
        outs.append((e1 * a + e2 * vt) / (e1 * b + e2))
        ww = p + w
        m = torch.maximum(ww, kt)
        e1, e2 = torch.exp(ww - m), torch.exp(kt - m)
        a = e1 * a + e2 * vt
        b = e1 * b + e2
        p = m
    return torch.stack(outs, 1)


def delta_rule_error_from_query(q, k, v, beta):
    """The wrong tensor in the delta rule's prediction: the write corrects v against what the query retrieves
    (v - S^T q) instead of the key, so the transition I - beta k q^T is no key projection. [B, T, H, D]."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        pred = torch.einsum("bhk,bhkv->bhv", q[:, t], S)
        S = S + k[:, t, :, :, None] * (beta[:, t, :, None] * (v[:, t] - pred))[:, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1)


def linear_attn_noncausal_encoder(q, k, v):
    """Bidirectional (encoder) normalized linear attention: o = phi(q) (phi(k)^T v) / (phi(q) . sum phi(k)) over the
    whole sequence, no causal prefix. elu + 1 features, [B, H, T, D]."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    kv = fk.transpose(-1, -2) @ v
    den = fq @ fk.sum(2, keepdim=True).transpose(-1, -2)
    return (fq @ kv) / (den + 1e-6)


def titans_momentum_memory(q, k, v, theta, eta):
    """A Titans-style linear memory trained online with momentum (a second-order recurrence): surprise
    M_t = eta_t M_{t-1} - theta_t k_t (S_{t-1}^T k_t - v_t)^T, S_t = S_{t-1} + M_t, o_t = S_t^T q_t. [B, T, H, D]."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    M = torch.zeros_like(S)
    outs = []
    for t in range(T):
        k_t = k[:, t]
        grad = k_t[..., :, None] * (torch.einsum("bhk,bhkv->bhv", k_t, S) - v[:, t])[..., None, :]
        M = eta[:, t, :, None, None] * M - theta[:, t, :, None, None] * grad
        S = S + M
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1)


def mlstm_stabilized_recurrent(q, k, v, i_raw, f_raw):
    """xLSTM's mLSTM recurrent step (a different model): exponential input gate with the max stabilizer
    m_t = max(logsigmoid(f) + m_{t-1}, i), C_t = f' C + i' k v^T, n_t = f' n + i' k, h = C^T q / max(|n . q|,
    exp(-m_t)); the max in the denominator makes it no plain gated normalized linear attention. [B, H, T, D]."""
    B, H, T, K = q.shape
    k = k * K**-0.5
    C = q.new_zeros(B, H, K, v.shape[-1])
    n = q.new_zeros(B, H, K)
    m = q.new_zeros(B, H)
    outs = []
    for t in range(T):
        log_f = F.logsigmoid(f_raw[:, :, t])
        m_new = torch.maximum(log_f + m, i_raw[:, :, t])
        f_s = torch.exp(log_f + m - m_new)
        i_s = torch.exp(i_raw[:, :, t] - m_new)
        C = f_s[..., None, None] * C + i_s[..., None, None] * k[:, :, t, :, None] * v[:, :, t, None, :]
        n = f_s[..., None] * n + i_s[..., None] * k[:, :, t]
        m = m_new
        num = torch.einsum("bhk,bhkv->bhv", q[:, :, t], C)
        den = torch.maximum((n * q[:, :, t]).sum(-1).abs(), torch.exp(-m))
        outs.append(num / den[..., None])
    return torch.stack(outs, 2)


def retention_gaussian_distance_decay(q, k, v):
    """Masked quadratic attention whose decay is gamma^((t-s)^2) (a Gaussian-in-distance bias) rather than
    gamma^(t-s): not a product of per-step decays, so no recurrence. [B, H, T, D], gamma 0.9."""
    T = q.shape[2]
    i = torch.arange(T, device=q.device, dtype=q.dtype)
    d = i[:, None] - i[None, :]
    decay = torch.where(d >= 0, 0.9 ** (d * d), torch.zeros_like(d))
    return ((q @ k.transpose(-1, -2)) * decay) @ v


# ====================================================================================================== cases

_B, _T = 2, 8

CASES: list[Case] = [
    # ----------------------------------------------------------------------------------------- linear_attn
    Case(
        "la_masked_scores_bhtd",
        "linear_attn",
        la_masked_scores_bhtd,
        _inputs(lambda d: (d.randn(_B, 2, _T, 6), d.randn(_B, 2, _T, 6), d.randn(_B, 2, _T, 5))),
        lambda q, k, v: _ref_la_bhtd(q, k, v, scale=1.0),
        "parallel masked-scores form of un-normalized causal linear attention",
    ),
    Case(
        "la_cumsum_context",
        "linear_attn",
        la_cumsum_context,
        _inputs(lambda d: (d.randn(_B, 3, _T, 4), d.randn(_B, 3, _T, 4), d.randn(_B, 3, _T, 6))),
        _ref_la_bhtd,
        "lucidrains causal linear attention numerator: cumsum of outer products",
    ),
    Case(
        "la_flat_heads_bmm",
        "linear_attn",
        la_flat_heads_bmm,
        _inputs(lambda d: (d.randn(_B, _T, 2, 8), d.randn(_B, _T, 2, 8), d.randn(_B, _T, 2, 4))),
        lambda q, k, v: rgla.linear_attn(q, k, v)[0],
        "B*H flattened bmm loop, scale on the output",
    ),
    Case(
        "la_time_major_state_vk",
        "linear_attn",
        la_time_major_state_vk,
        _inputs(
            lambda d: (
                d.randn(_T, _B, 2, 4),
                d.randn(_T, _B, 2, 4),
                d.randn(_T, _B, 2, 6),
                d.randn(_B, 2, 6, 4, scale=0.3),
            )
        ),
        _ref_la_time_major,
        "time-major decoding loop with a transposed [V, K] cache in and out",
    ),
    # ------------------------------------------------------------------------------------------- retention
    Case(
        "retnet_parallel_decay_mask",
        "retention",
        retnet_parallel_decay_mask,
        _inputs(lambda d: (d.randn(_B, 3, _T, 4), d.randn(_B, 3, _T, 4), d.randn(_B, 3, _T, 4))),
        _ref_retnet_parallel,
        "torchscale RetNet parallel retention, gamma = 1 - 2^(-5-h)",
    ),
    Case(
        "retnet_recurrent_layer",
        "retention",
        _retnet_layer,
        _inputs(lambda d: (d.randn(_B, _T, 8),)),
        _retnet_layer.reference,
        "RetNet layer (projections, GroupNorm, swish gate) in recurrent form",
    ),
    Case(
        "retention_chunkwise",
        "retention",
        retention_chunkwise,
        _inputs(lambda d: (d.randn(_B, _T, 2, 4), d.randn(_B, _T, 2, 4), d.randn(_B, _T, 2, 6))),
        _ref_retention_chunkwise,
        "torchscale-style chunkwise retention, chunk 4",
    ),
    Case(
        "lightning_attention_blocks",
        "retention",
        lightning_attention_blocks,
        _inputs(lambda d: (d.randn(_B, 2, _T, 4), d.randn(_B, 2, _T, 4), d.randn(_B, 2, _T, 4))),
        _ref_lightning,
        "Lightning Attention-2 blocks with ALiBi-slope decays and silu features",
    ),
    Case(
        "retention_rescaled_cumsum",
        "retention",
        retention_rescaled_cumsum,
        _inputs(lambda d: (d.randn(_T, _B, 2, 4), d.randn(_T, _B, 2, 4), d.randn(_T, _B, 2, 4))),
        _ref_retention_rescaled,
        "constant decay via gamma^t / gamma^-t rescaling and a cumsum, time-major",
    ),
    # ------------------------------------------------------------------------------------------ simple_gla
    Case(
        "simple_gla_logsigmoid_state_vk",
        "simple_gla",
        simple_gla_logsigmoid_state_vk,
        _inputs(
            lambda d: (
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 6),
                d.randn(_B, _T, 2),
            )
        ),
        lambda q, k, v, a: rgla.simple_gla(q, k, v, F.logsigmoid(a) / 8)[0],
        "per-head logsigmoid/8 gate, [V, K] state, list + stack",
    ),
    Case(
        "simple_gla_decay_mask_bhtd",
        "simple_gla",
        simple_gla_decay_mask_bhtd,
        _inputs(
            lambda d: (
                d.randn(_B, 2, _T, 4),
                d.randn(_B, 2, _T, 4),
                d.randn(_B, 2, _T, 4),
                d.logsig(_B, 2, _T, div=2),
            )
        ),
        lambda q, k, v, g: _swap12(
            rgla.simple_gla(_swap12(q), _swap12(k), _swap12(v), g.transpose(1, 2), scale=1.0)[0]
        ),
        "parallel form with exp(G_t - G_s) decay mask",
    ),
    Case(
        "mamba2_ssd_chunked",
        "simple_gla",
        mamba2_ssd_chunked,
        _inputs(
            lambda d: (
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, shift=-1.0),
                d.randn(2, scale=0.5),
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
            )
        ),
        _ref_ssd,
        "Mamba-2 ssd_minimal chunked SSD with final state",
    ),
    Case(
        "mamba2_recurrent_shared_bc",
        "simple_gla",
        mamba2_recurrent_shared_bc,
        _inputs(
            lambda d: (
                d.randn(_B, _T, 3, 4),
                d.randn(_B, _T, 3),
                d.randn(3, scale=0.5, shift=-1.0),
                d.randn(3, scale=0.5),
                d.randn(_B, _T, 4),
                d.randn(_B, _T, 4),
                d.randn(3),
            )
        ),
        _ref_mamba2_shared,
        "transformers Mamba2 torch path per token, one group of B/C shared by the heads",
    ),
    Case(
        "simple_gla_softplus_decay_mqa",
        "simple_gla",
        simple_gla_softplus_decay_mqa,
        _inputs(
            lambda d: (
                d.randn(_B, _T, 1, 4),
                d.randn(_B, _T, 1, 4),
                d.randn(_B, _T, 3, 4),
                d.randn(_B, _T, 3, scale=0.5, shift=-1.5),
            )
        ),
        lambda q, k, v, a: rgla.simple_gla(q, k, v, -F.softplus(a), scale=1.0)[0],
        "multi-query, decay exp(-softplus(a)) as a probability",
    ),
    Case(
        "simple_gla_vmap_sequences",
        "simple_gla",
        simple_gla_vmap_sequences,
        _inputs(
            lambda d: (
                d.randn(_B, 2, _T, 4),
                d.randn(_B, 2, _T, 4),
                d.randn(_B, 2, _T, 4),
                d.logsig(_B, 2, _T, div=4),
            )
        ),
        lambda q, k, v, g: _swap12(rgla.simple_gla(_swap12(q), _swap12(k), _swap12(v), g.transpose(1, 2))[0]),
        "per-sequence loop lifted with torch.func.vmap",
    ),
    # ------------------------------------------------------------------------------------------------- gla
    Case(
        "gla_sigmoid_pow_gate",
        "gla",
        gla_sigmoid_pow_gate,
        _inputs(
            lambda d: (
                d.randn(_B, 2, _T, 4),
                d.randn(_B, 2, _T, 4),
                d.randn(_B, 2, _T, 6),
                d.randn(_B, 2, _T, 4),
            )
        ),
        _ref_gla_sigmoid_pow,
        "GLA paper gate sigmoid(xW)^(1/16) multiplied into the state",
    ),
    Case(
        "gla_chunked_secondary",
        "gla",
        gla_chunked_secondary,
        _inputs(
            lambda d: (
                d.randn(_B, 2, _T, 4),
                d.randn(_B, 2, _T, 4),
                d.randn(_B, 2, _T, 4),
                d.logsig(_B, 2, _T, 4, div=8),
            )
        ),
        _ref_gla_bhtd,
        "fla naive chunked GLA (q e^b, k e^-b)",
    ),
    Case(
        "gla_time_major_state_vk",
        "gla",
        gla_time_major_state_vk,
        _inputs(
            lambda d: (
                d.randn(_T, _B, 2, 4),
                d.randn(_T, _B, 2, 4),
                d.randn(_T, _B, 2, 6),
                d.logsig(_T, _B, 2, 4, div=4),
                d.randn(_B, 2, 6, 4, scale=0.3),
            )
        ),
        _ref_gla_time_major,
        "time-major, transposed state, initial state in and final out",
    ),
    Case(
        "gla_layer_shared_qk",
        "gla",
        _gla_layer,
        _inputs(lambda d: (d.randn(_B, _T, 8),)),
        _gla_layer.reference,
        "fla GLA layer with low-rank gate, q/k shared by 2 value heads, RMSNorm + swish gate",
    ),
    Case(
        "gla_unbind_softplus_gate",
        "gla",
        gla_unbind_softplus_gate,
        _inputs(
            lambda d: (
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4, scale=0.5, shift=-1.5),
            )
        ),
        lambda q, k, v, w: rgla.gla(q, k, v, gk=-F.softplus(w))[0],
        "GateLoop-like per-key gate exp(-softplus), unbind + einsum",
    ),
    Case(
        "gla_pairwise_decay_quadratic",
        "gla",
        gla_pairwise_decay_quadratic,
        _inputs(
            lambda d: (
                d.randn(_B, 2, _T, 4),
                d.randn(_B, 2, _T, 4),
                d.randn(_B, 2, _T, 5),
                d.logsig(_B, 2, _T, 4, div=4),
            )
        ),
        lambda q, k, v, gk: _swap12(rgla.gla(_swap12(q), _swap12(k), _swap12(v), gk=_swap12(gk), scale=1.0)[0]),
        "fully parallel GLA with a [T, T, K] pairwise decay tensor",
    ),
    # ------------------------------------------------------------------------------------------ delta_rule
    Case(
        "deltanet_normalize_interpolate",
        "delta_rule",
        deltanet_normalize_interpolate,
        _inputs(
            lambda d: (
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2),
            )
        ),
        _ref_deltanet_normalize,
        "DeltaNet value interpolation v_new = b v + (1-b) v_old, F.normalize",
    ),
    Case(
        "deltanet_householder_state_vk",
        "delta_rule",
        deltanet_householder_state_vk,
        _inputs(
            lambda d: (
                d.unit(_T, _B, 2, 4),
                d.unit(_T, _B, 2, 4),
                d.randn(_T, _B, 2, 6),
                d.prob(_T, _B, 2),
                d.randn(_B, 2, 6, 4, scale=0.3),
            )
        ),
        _ref_deltanet_householder,
        "S (I - b k k^T) + b v k^T on a [V, K] state, time-major, cache in/out",
    ),
    Case(
        "deltanet_chunked_wy",
        "delta_rule",
        deltanet_chunked_wy,
        _inputs(
            lambda d: (
                d.randn(_B, 2, _T, 4),
                d.randn(_B, 2, _T, 4),
                d.randn(_B, 2, _T, 4),
                d.prob(_B, 2, _T),
            )
        ),
        _ref_deltanet_chunked,
        "DeltaNet chunkwise WY / UT transform, chunk 4",
    ),
    Case(
        "delta_rule_gva_rsqrt",
        "delta_rule",
        delta_rule_gva_rsqrt,
        _inputs(
            lambda d: (
                d.randn(_B, 1, _T, 4),
                d.randn(_B, 1, _T, 4),
                d.randn(_B, 3, _T, 4),
                d.randn(_B, 3, _T),
            )
        ),
        _ref_delta_gva,
        "one q/k head, three value heads, rsqrt L2 norm inside",
    ),
    # ------------------------------------------------------------------------------------ gated_delta_rule
    Case(
        "qwen3_next_recurrent",
        "gated_delta_rule",
        qwen3_next_recurrent,
        _inputs(
            lambda d: (
                d.randn(_B, _T, 1, 4),
                d.randn(_B, _T, 1, 4),
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2),
                d.randn(_B, _T, 2),
                d.randn(2, scale=0.3),
                d.randn(2, scale=0.3),
            )
        ),
        _ref_qwen3_next,
        "Qwen3-Next torch recurrent gated delta rule with its gate math and GVA",
    ),
    Case(
        "gated_deltanet_chunked",
        "gated_delta_rule",
        gated_deltanet_chunked,
        _inputs(
            lambda d: (
                d.unit(_B, 2, _T, 4),
                d.unit(_B, 2, _T, 4),
                d.randn(_B, 2, _T, 4),
                d.logsig(_B, 2, _T, div=2),
                d.prob(_B, 2, _T),
            )
        ),
        _ref_gated_chunked,
        "Gated DeltaNet chunkwise form, chunk 4",
    ),
    Case(
        "gated_delta_flat_state_vk",
        "gated_delta_rule",
        gated_delta_flat_state_vk,
        _inputs(
            lambda d: (
                d.unit(_B, _T, 2, 4),
                d.unit(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 6),
                d.prob(_B, _T, 2, lo=0.6, hi=1.0),
                d.prob(_B, _T, 2),
                d.randn(_B, 2, 6, 4, scale=0.3),
            )
        ),
        _ref_gated_flat,
        "B*H bmm loop, [V, K] state, decay as a probability, cache in/out",
    ),
    # ------------------------------------------------------------------------------------------------- kda
    Case(
        "kimi_delta_recurrent",
        "kda",
        kimi_delta_recurrent,
        _inputs(
            lambda d: (
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2),
                d.randn(2, scale=0.3),
                d.randn(2, 4, scale=0.3),
            )
        ),
        _ref_kimi,
        "Kimi-Linear KDA torch fallback with its gate math",
    ),
    Case(
        "kda_time_major_state_vk",
        "kda",
        kda_time_major_state_vk,
        _inputs(
            lambda d: (
                d.unit(_T, _B, 2, 4),
                d.unit(_T, _B, 2, 4),
                d.randn(_T, _B, 2, 6),
                d.logsig(_T, _B, 2, 4, div=4),
                d.prob(_T, _B, 2),
                d.randn(_B, 2, 6, 4, scale=0.3),
            )
        ),
        _ref_kda_time_major,
        "time-major KDA on a [V, K] state, cache in/out",
    ),
    Case(
        "kda_sigmoid_gate_gqa",
        "kda",
        kda_sigmoid_gate_gqa,
        _inputs(
            lambda d: (
                d.unit(_B, 1, _T, 4),
                d.unit(_B, 1, _T, 4),
                d.randn(_B, 3, _T, 4),
                d.randn(_B, 3, _T, 4),
                d.prob(_B, 3, _T),
            )
        ),
        _ref_kda_sigmoid,
        "KDA with sigmoid^(1/8) gate, one q/k head for 3 value heads",
    ),
    # ----------------------------------------------------------------------------------------------- rwkv6
    Case(
        "rwkv6_wkv_loop",
        "rwkv6",
        rwkv6_wkv_loop,
        _inputs(
            lambda d: (
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4, scale=0.5, shift=-0.5),
                d.randn(2, 4, scale=0.5),
            )
        ),
        _ref_rwkv6_loop,
        "RWKV-LM RWKV-6 plain-torch WKV with w = exp(-exp(w))",
    ),
    Case(
        "rwkv6_flat_heads_bmm",
        "rwkv6",
        rwkv6_flat_heads_bmm,
        _inputs(
            lambda d: (
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 6),
                -torch.exp(d.randn(_B, _T, 2, 4, scale=0.3, shift=-1.0)),
                d.randn(2, 4, scale=0.5),
                d.randn(_B * 2, 4, 6, scale=0.3),
            )
        ),
        _ref_rwkv6_flat,
        "RWKV-6 over B*H sequences with bmm, state in/out",
    ),
    Case(
        "rwkv6_time_mix_block",
        "rwkv6",
        _rwkv6_block,
        _inputs(lambda d: (d.randn(_B, _T, 8),)),
        _rwkv6_block.reference,
        "RWKV-6 time-mix block: token shift, LoRA decay, [V, K] state, GroupNorm + gate",
    ),
    # ------------------------------------------------------------------------------------------------ hgrn
    Case(
        "hgrn_lower_bounded_forget",
        "hgrn",
        hgrn_lower_bounded_forget,
        _inputs(lambda d: (d.randn(_B, _T, 8), d.randn(_B, _T, 8))),
        _ref_hgrn_lb,
        "HGRN forget gate with a lower bound, input silu(x)(1-f)",
    ),
    Case(
        "mingru_log_space_scan",
        "hgrn",
        mingru_log_space_scan,
        _inputs(lambda d: (d.randn(_B, _T, 6), d.randn(_B, _T, 6))),
        _ref_mingru,
        "minGRU parallel mode via logcumsumexp",
    ),
    Case(
        "rglru_recurrent_gemma",
        "hgrn",
        _rglru,
        _inputs(lambda d: (d.randn(_B, _T, 8),)),
        _rglru.reference,
        "RecurrentGemma RG-LRU with sqrt(1 - a^2) input normalization",
    ),
    Case(
        "lru_cumprod_closed_form",
        "hgrn",
        lru_cumprod_closed_form,
        _inputs(lambda d: (d.randn(_B, _T, 2, 4), d.prob(_B, _T, 2, 4, lo=0.7, hi=1.0))),
        _ref_lru,
        "real diagonal scan via cumprod / cumsum closed form",
    ),
    Case(
        "hgrn_time_major_addcmul",
        "hgrn",
        hgrn_time_major_addcmul,
        _inputs(lambda d: (d.randn(_T, _B, 6), d.logsig(_T, _B, 6, div=2), d.randn(_B, 6))),
        _ref_hgrn_tm,
        "time-major addcmul scan with initial and final state",
    ),
    # ----------------------------------------------------------------------------------------------- mamba
    Case(
        "selective_scan_ref_channels_first",
        "mamba",
        selective_scan_ref_channels_first,
        _inputs(
            lambda d: (
                d.randn(_B, 6, _T),
                d.randn(_B, 6, _T, scale=0.5),
                -torch.exp(d.randn(6, 4, scale=0.5)),
                d.randn(_B, 4, _T),
                d.randn(_B, 4, _T),
                d.randn(6),
                d.randn(_B, 6, _T),
                d.randn(6, scale=0.3, shift=-1.0),
            )
        ),
        _ref_selective_scan_ref,
        "mamba_ssm selective_scan_ref, channels-first, D skip and z gate",
    ),
    Case(
        "mamba_minimal_ssm",
        "mamba",
        _mamba_minimal,
        _inputs(lambda d: (d.randn(_B, _T, 6),)),
        _mamba_minimal.reference,
        "mamba-minimal MambaBlock.ssm with x_proj / dt_proj",
    ),
    Case(
        "hf_mamba_slow_scan",
        "mamba",
        hf_mamba_slow_scan,
        _inputs(
            lambda d: (
                d.randn(_B, 6, _T),
                F.softplus(d.randn(_B, 6, _T, shift=-1.0)),
                -torch.exp(d.randn(6, 4, scale=0.5)),
                d.randn(_B, _T, 4),
                d.randn(_B, _T, 4),
                d.randn(6),
                d.randn(_B, 6, _T),
                d.randn(_B, 6, 4, scale=0.3),
            )
        ),
        _ref_hf_mamba,
        "transformers MambaMixer.slow_forward with ssm_state cache in/out",
    ),
    Case(
        "mamba_pairwise_kernel",
        "mamba",
        mamba_pairwise_kernel,
        _inputs(
            lambda d: (
                d.randn(_B, _T, 6),
                F.softplus(d.randn(_B, _T, 6, shift=-1.0)),
                -torch.exp(d.randn(6, 4, scale=0.5)),
                d.randn(_B, _T, 4),
                d.randn(_B, _T, 4),
            )
        ),
        _ref_mamba_pairwise,
        "selective scan as a materialized causal kernel (one einsum)",
    ),
    # ------------------------------------------------------------------------------ normalized_linear_attn
    Case(
        "elu_feature_causal_linear_attention",
        "normalized_linear_attn",
        elu_feature_causal_linear_attention,
        _inputs(lambda d: (d.randn(_B, _T, 2, 4), d.randn(_B, _T, 2, 4), d.randn(_B, _T, 2, 6))),
        _ref_elu,
        "Katharopoulos / fast-transformers causal linear attention, elu+1",
    ),
    Case(
        "based_taylor_recurrent",
        "normalized_linear_attn",
        based_taylor_recurrent,
        _inputs(lambda d: (d.randn(_B, 2, _T, 4), d.randn(_B, 2, _T, 4), d.randn(_B, 2, _T, 4))),
        _ref_based,
        "Based 2nd-order Taylor features, recurrent",
    ),
    Case(
        "hedgehog_quadratic",
        "normalized_linear_attn",
        _hedgehog,
        _inputs(lambda d: (d.randn(_B, 2, _T, 4), d.randn(_B, 2, _T, 4), d.randn(_B, 2, _T, 4))),
        _hedgehog.reference,
        "Hedgehog softmax feature map, quadratic masked form",
    ),
    Case(
        "rebased_flat_with_state",
        "normalized_linear_attn",
        rebased_flat_with_state,
        _inputs(
            lambda d: (
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.randn(4, scale=0.2, shift=1.0),
                d.randn(4, scale=0.2),
                d.randn(_B * 2, 4, 4, scale=0.3),
                d.prob(_B * 2, 4, lo=0.5, hi=1.5),
            )
        ),
        _ref_rebased,
        "ReBased (gamma LN(x) + beta)^2 features, baddbmm, state in/out",
    ),
    Case(
        "performer_favor_time_major",
        "normalized_linear_attn",
        performer_favor_time_major,
        _inputs(
            lambda d: (
                d.randn(_T, _B, 2, 4),
                d.randn(_T, _B, 2, 4),
                d.randn(_T, _B, 2, 4),
                d.randn(8, 4),
            )
        ),
        _ref_performer,
        "Performer FAVOR+ positive random features, time-major loop",
    ),
    # ----------------------------------------------------------------------------------------- near misses
    Case(
        "softmax_attention_kv_cache_loop",
        None,
        softmax_attention_kv_cache_loop,
        _inputs(lambda d: (d.randn(_B, _T, 2, 4), d.randn(_B, _T, 2, 4), d.randn(_B, _T, 2, 4))),
        note="softmax inside the loop (decoding with a KV cache)",
    ),
    Case(
        "fast_weights_tanh_state",
        None,
        fast_weights_tanh_state,
        _inputs(
            lambda d: (
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.logsig(_B, _T, 2, div=4),
            )
        ),
        note="tanh on the state",
    ),
    Case(
        "deltanet_reads_state_before_write",
        None,
        deltanet_reads_state_before_write,
        _inputs(
            lambda d: (
                d.unit(_B, _T, 2, 4),
                d.unit(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.prob(_B, _T, 2),
            )
        ),
        note="off-by-one read of the delta-rule state",
    ),
    Case(
        "gla_decay_on_value_axis",
        None,
        gla_decay_on_value_axis,
        _inputs(
            lambda d: (
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.logsig(_B, _T, 2, 4, div=2),
            )
        ),
        note="per-dim decay on the value axis (K = V so shapes fit)",
    ),
    Case(
        "normalized_denominator_whole_sequence",
        None,
        normalized_denominator_whole_sequence,
        _inputs(lambda d: (d.randn(_B, _T, 2, 4), d.randn(_B, _T, 2, 4), d.randn(_B, _T, 2, 4))),
        note="normalizer sums keys over all of T (sum, not cumsum)",
    ),
    Case(
        "linear_attn_state_clamped",
        None,
        linear_attn_state_clamped,
        _inputs(lambda d: (d.randn(_B, _T, 2, 4), d.randn(_B, _T, 2, 4), d.randn(_B, _T, 2, 4))),
        note="data-dependent clamp of the state",
    ),
    Case(
        "simple_gla_reset_when_large",
        None,
        simple_gla_reset_when_large,
        _inputs(
            lambda d: (
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.logsig(_B, _T, 2, div=4),
            )
        ),
        note="state reset conditioned on its own norm",
    ),
    Case(
        "linear_attn_swapped_qk",
        None,
        linear_attn_swapped_qk,
        _inputs(lambda d: (d.randn(_B, _T, 2, 4), d.randn(_B, _T, 2, 4), d.randn(_B, _T, 2, 4))),
        note="outer product of the wrong tensors (q v^T, read with k); equals linear_attn(k, q, v)",
    ),
    Case(
        "linear_attn_sliding_window",
        None,
        linear_attn_sliding_window,
        _inputs(lambda d: (d.randn(_B, 2, _T, 4), d.randn(_B, 2, _T, 4), d.randn(_B, 2, _T, 4))),
        note="band mask of width 3",
    ),
    Case(
        "mamba_reads_state_before_update",
        None,
        mamba_reads_state_before_update,
        _inputs(
            lambda d: (
                d.randn(_B, _T, 6),
                F.softplus(d.randn(_B, _T, 6, shift=-1.0)),
                -torch.exp(d.randn(6, 4, scale=0.5)),
                d.randn(_B, _T, 4),
                d.randn(_B, _T, 4),
            )
        ),
        note="off-by-one read of the selective-scan state",
    ),
    Case(
        "gru_gate_reads_state",
        None,
        gru_gate_reads_state,
        _inputs(lambda d: (d.randn(_B, _T, 6), d.randn(6, 6, scale=0.4), d.randn(6, 6, scale=0.4))),
        note="GRU gate depends on h_{t-1} (nonlinear)",
    ),
    Case(
        "rwkv4_wkv_stabilized",
        None,
        rwkv4_wkv_stabilized,
        _inputs(
            lambda d: (
                -torch.exp(d.randn(6, scale=0.5)),
                d.randn(6, scale=0.5),
                d.randn(_B, _T, 6),
                d.randn(_B, _T, 6),
            )
        ),
        note="RWKV-4 WKV ratio with max stabilization",
    ),
    Case(
        "delta_rule_error_from_query",
        None,
        delta_rule_error_from_query,
        _inputs(
            lambda d: (
                d.unit(_B, _T, 2, 4),
                d.unit(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.prob(_B, _T, 2),
            )
        ),
        note="delta write predicts with q instead of k",
    ),
    Case(
        "linear_attn_noncausal_encoder",
        None,
        linear_attn_noncausal_encoder,
        _inputs(lambda d: (d.randn(_B, 2, _T, 4), d.randn(_B, 2, _T, 4), d.randn(_B, 2, _T, 4))),
        note="bidirectional normalized linear attention (no causal prefix)",
    ),
    Case(
        "titans_momentum_memory",
        None,
        titans_momentum_memory,
        _inputs(
            lambda d: (
                d.unit(_B, _T, 2, 4),
                d.unit(_B, _T, 2, 4),
                d.randn(_B, _T, 2, 4),
                d.prob(_B, _T, 2, lo=0.0, hi=0.5),
                d.prob(_B, _T, 2, lo=0.5, hi=1.0),
            )
        ),
        note="Titans-style momentum memory (second-order recurrence)",
    ),
    Case(
        "mlstm_stabilized_recurrent",
        None,
        mlstm_stabilized_recurrent,
        _inputs(
            lambda d: (
                d.randn(_B, 2, _T, 4),
                d.randn(_B, 2, _T, 4),
                d.randn(_B, 2, _T, 4),
                d.randn(_B, 2, _T),
                d.randn(_B, 2, _T, shift=2.0),
            )
        ),
        note="xLSTM mLSTM with max stabilizer and max() denominator",
    ),
    Case(
        "retention_gaussian_distance_decay",
        None,
        retention_gaussian_distance_decay,
        _inputs(lambda d: (d.randn(_B, 2, _T, 4), d.randn(_B, 2, _T, 4), d.randn(_B, 2, _T, 4))),
        note="decay gamma^((t-s)^2), not a per-step product",
    ),
]

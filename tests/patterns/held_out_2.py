"""A second, independent held-out set of linear-attention spellings (issue 14).

Written without reading the recognizers or the first held-out set: each entry is a spelling as
researchers and reference repos write it (FLA's naive references retyped, torchscale's RetNet forms,
the GLA paper's pseudo-code, Mamba's ``selective_scan_ref`` and mamba-minimal, HGRN, RWKV-6's time
mix, DeltaNet / Gated DeltaNet recurrent and chunked WY forms, Kimi's KDA, lightning attention), in
both layouts, with and without initial / final state, stacked or written into a buffer, as
functions and as ``nn.Module``s. ``family`` is the op it must be rewritten to; ``None`` marks a near
miss, a look-alike that must stay as written.

Every positive also carries ``ref``: the same result computed by ``fla_compile.reference``, so the
spelling itself is checked (``test_held_out_2.py``) and a miss is the recognizer's, not the set's.
Sizes are small on purpose (T = 8, chunk 4): the backend unrolls time loops.
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

B, T, H, K, V = 2, 8, 2, 8, 6
CHUNK = 4


@dataclass(frozen=True)
class Case:
    """One spelling: ``fn(*inputs(dtype, device, seed))``; ``family`` None marks a near miss."""

    name: str
    family: str | None
    fn: Callable
    inputs: Callable
    ref: Callable | None = None  # ref(*inputs) -> the spelling's first output, by the reference
    note: str = ""


# ---------------------------------------------------------------- inputs


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _r(g, *shape, dtype, device):
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


def qkv_bthd(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    return tuple(_r(g, B, T, H, d, dtype=dtype, device=device) for d in (K, K, V))


def qkv_bhtd(dtype=torch.float32, device="cpu", seed=0):
    return tuple(x.transpose(1, 2).contiguous() for x in qkv_bthd(dtype, device, seed))


def qkv_g_bthd(dtype=torch.float32, device="cpu", seed=0):
    q, k, v = qkv_bthd(dtype, device, seed)
    g = F.logsigmoid(_r(_gen(seed + 1), B, T, H, dtype=dtype, device=device))
    return q, k, v, g


def qkv_gk_bthd(dtype=torch.float32, device="cpu", seed=0):
    q, k, v = qkv_bthd(dtype, device, seed)
    gk = F.logsigmoid(_r(_gen(seed + 1), B, T, H, K, dtype=dtype, device=device)) / 4
    return q, k, v, gk


def qkv_h0_bthd(dtype=torch.float32, device="cpu", seed=0):
    q, k, v = qkv_bthd(dtype, device, seed)
    return q, k, v, _r(_gen(seed + 2), B, H, K, V, dtype=dtype, device=device)


def delta_bthd(dtype=torch.float32, device="cpu", seed=0):
    """q, k (k L2-normalized, as every DeltaNet normalizes it), v, beta [B, T, H]."""
    q, k, v = qkv_bthd(dtype, device, seed)
    k = F.normalize(k, p=2, dim=-1)
    beta = torch.sigmoid(_r(_gen(seed + 3), B, T, H, dtype=dtype, device=device))
    return q, k, v, beta


def gdelta_bthd(dtype=torch.float32, device="cpu", seed=0):
    q, k, v, beta = delta_bthd(dtype, device, seed)
    g = F.logsigmoid(_r(_gen(seed + 1), B, T, H, dtype=dtype, device=device))
    return q, k, v, g, beta


def kda_bthd(dtype=torch.float32, device="cpu", seed=0):
    q, k, v, beta = delta_bthd(dtype, device, seed)
    gk = F.logsigmoid(_r(_gen(seed + 1), B, T, H, K, dtype=dtype, device=device)) / 4
    return q, k, v, gk, beta


def _bhtd(maker):
    def make(dtype=torch.float32, device="cpu", seed=0):
        return tuple(x.transpose(1, 2).contiguous() if x.dim() >= 3 else x for x in maker(dtype, device, seed))

    return make


def x_gate_btd(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    x = _r(g, B, T, H * K, dtype=dtype, device=device)
    f = _r(g, B, T, H * K, dtype=dtype, device=device)
    return x, f


def selective_bld(dtype=torch.float32, device="cpu", seed=0):
    """mamba-minimal's layout: u, delta [B, L, D]; A [D, N]; B, C [B, L, N]."""
    g = _gen(seed)
    D, N = 6, 4
    u = _r(g, B, T, D, dtype=dtype, device=device)
    delta = F.softplus(_r(g, B, T, D, dtype=dtype, device=device))
    A = -torch.exp(_r(g, D, N, dtype=dtype, device=device) * 0.5)
    Bm = _r(g, B, T, N, dtype=dtype, device=device)
    Cm = _r(g, B, T, N, dtype=dtype, device=device)
    return u, delta, A, Bm, Cm


def selective_bdl(dtype=torch.float32, device="cpu", seed=0):
    """Mamba's selective_scan_ref layout: u, delta [B, D, L]; A [D, N]; B, C [B, N, L]."""
    u, delta, A, Bm, Cm = selective_bld(dtype, device, seed)
    return u.transpose(1, 2), delta.transpose(1, 2), A, Bm.transpose(1, 2), Cm.transpose(1, 2)


def rwkv_bhtd(dtype=torch.float32, device="cpu", seed=0):
    """r, k, v, w (log decay, w = -exp(raw)), u [H, K]; [B, H, T, D]."""
    g = _gen(seed)
    r, k, v = (_r(g, B, H, T, d, dtype=dtype, device=device) for d in (K, K, V))
    w = -torch.exp(_r(g, B, H, T, K, dtype=dtype, device=device) * 0.5 - 1)
    u = _r(g, H, K, dtype=dtype, device=device) * 0.5
    return r, k, v, w, u


def fmap_qkv_bthd(dtype=torch.float32, device="cpu", seed=0):
    q, k, v = qkv_bthd(dtype, device, seed)
    return F.elu(q) + 1, F.elu(k) + 1, v


# ---------------------------------------------------------------- helpers of the refs


def _t(x):
    """[B, H, T, ...] <-> [B, T, H, ...]."""
    return x.transpose(1, 2)


def _ref_la(q, k, v, scale=None, h0=None):
    return rgla.linear_attn(q, k, v, scale=scale, initial_state=h0)[0]


# ================================================================ linear_attn


def la_fla_recurrent(q, k, v, scale=None, initial_state=None, output_final_state=False):
    """FLA's naive recurrent linear attention: einsum outer product, scale on q, a buffer."""
    dt = q.dtype
    Bq, Tq, Hq, Kq = q.shape
    if scale is None:
        scale = Kq**-0.5
    q, k, v = (x.float() for x in (q, k, v))
    out = torch.empty_like(v)
    state = torch.zeros(Bq, Hq, Kq, v.shape[-1], dtype=torch.float32, device=q.device)
    if initial_state is not None:
        state = state + initial_state.float()
    for step in range(Tq):
        state = state + torch.einsum("bhk,bhv->bhkv", k[:, step], v[:, step])
        out[:, step] = torch.einsum("bhkv,bhk->bhv", state, q[:, step] * scale)
    return out.to(dt), (state if output_final_state else None)


def la_bhtd_stack_matmul(q, k, v):
    """[B, H, T, D], outer product by matmul of a column and a row, outputs stacked, scale on o."""
    s = q.new_zeros(q.shape[0], q.shape[1], q.shape[-1], v.shape[-1])
    outs = []
    for i in range(q.shape[2]):
        s = s + k[:, :, i].unsqueeze(-1) @ v[:, :, i].unsqueeze(-2)
        outs.append((q[:, :, i].unsqueeze(-2) @ s).squeeze(-2))
    return torch.stack(outs, dim=2) / math.sqrt(q.shape[-1])


def la_parallel_tril(q, k, v):
    """[B, H, T, D]: (q k^T * scale).tril() @ v, the masked quadratic form."""
    att = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return att.tril() @ v


def la_parallel_masked_fill(q, k, v):
    """[B, T, H, D] through einsum, the upper triangle filled with zeros."""
    n = q.shape[1]
    scores = torch.einsum("bthd,bshd->bhts", q * q.shape[-1] ** -0.5, k)
    future = torch.triu(torch.ones(n, n, dtype=torch.bool, device=q.device), diagonal=1)
    scores = scores.masked_fill(future, 0.0)
    return torch.einsum("bhts,bshd->bthd", scores, v)


def la_cumsum_outer(q, k, v):
    """[B, T, H, D]: a running sum of outer products over time, read by q."""
    kv = torch.einsum("bthk,bthv->bthkv", k, v).cumsum(dim=1)
    return torch.einsum("bthk,bthkv->bthv", q, kv) * q.shape[-1] ** -0.5


def la_fla_chunk(q, k, v):
    """FLA's naive chunked linear attention: inter-chunk by a cumsum of chunk states, intra masked."""
    scale = q.shape[-1] ** -0.5
    b, t, h, d = q.shape
    n = t // CHUNK

    def chunks(x):
        return x.reshape(b, n, CHUNK, h, x.shape[-1]).permute(0, 3, 1, 2, 4)

    qc, kc, vc = chunks(q) * scale, chunks(k), chunks(v)
    kv = (kc.transpose(-1, -2) @ vc).cumsum(2)
    kv = torch.cat([torch.zeros_like(kv[:, :, :1]), kv[:, :, :-1]], dim=2)
    upper = torch.triu(torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=q.device), diagonal=1)
    intra = (qc @ kc.transpose(-1, -2)).masked_fill(upper, 0) @ vc
    o = qc @ kv + intra
    return o.permute(0, 2, 3, 1, 4).reshape(b, t, h, -1)


class LinearAttnLayer(nn.Module):
    """A layer: projections, heads split, a loop over time with a final state, out projection."""

    def __init__(self, dim=H * K, heads=H):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(dim))

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.heads, -1) for p in (self.q_proj, self.k_proj, self.v_proj))
        q = q * q.shape[-1] ** -0.5
        kv = x.new_zeros(b, self.heads, q.shape[-1], v.shape[-1])
        ys = []
        for i in range(t):
            kv = kv + k[:, i, :, :, None] * v[:, i, :, None, :]
            ys.append(torch.einsum("bhd,bhde->bhe", q[:, i], kv))
        y = torch.stack(ys, dim=1).reshape(b, t, -1)
        return self.o_proj(y)


def _layer_input(dtype=torch.float32, device="cpu", seed=0):
    return (_r(_gen(seed), B, T, H * K, dtype=dtype, device=device),)


_LA_LAYER = LinearAttnLayer()


def la_module(x):
    return _LA_LAYER.to(x.device, x.dtype)(x)


def _la_module_ref(x):
    m = _LA_LAYER.to(x.device, x.dtype)
    b, t, _ = x.shape
    q, k, v = (p(x).view(b, t, H, -1) for p in (m.q_proj, m.k_proj, m.v_proj))
    return m.o_proj(_ref_la(q, k, v).reshape(b, t, -1))


def la_final_state_h0(q, k, v, h0):
    """Initial state given, final state returned, state kept transposed [V, K]."""
    st = h0.transpose(-1, -2).clone()
    o = torch.zeros_like(v)
    for t in range(q.shape[1]):
        st = st + v[:, t].unsqueeze(-1) * k[:, t].unsqueeze(-2)
        o[:, t] = (st @ q[:, t].unsqueeze(-1)).squeeze(-1) * K**-0.5
    return o, st.transpose(-1, -2)


# ================================================================ retention (RetNet, lightning)


def _retnet_gammas(h, device, dtype):
    return 1 - 2 ** (-5 - torch.arange(h, device=device, dtype=dtype))


def ret_parallel_torchscale(q, k, v):
    """torchscale's parallel retention, [B, H, T, D]: a per-head decay mask gamma^(n-m), n >= m."""
    n = q.shape[2]
    gamma = _retnet_gammas(q.shape[1], q.device, q.dtype)
    idx = torch.arange(n, device=q.device, dtype=q.dtype)
    diff = idx[:, None] - idx[None, :]
    mask = torch.where(diff >= 0, gamma[:, None, None] ** diff.clamp(min=0), torch.zeros_like(diff))
    qk = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    return (qk * mask) @ v


def ret_parallel_fla_exp2(q, k, v):
    """FLA's naive retention: log2 decays, exp2 of the distance times a causal boolean."""
    n, h, d = q.shape[2], q.shape[1], q.shape[3]
    s = torch.log2(1 - torch.pow(2.0, -5.0 - torch.arange(h, dtype=torch.float32))).to(q.device)
    pos = torch.arange(n, dtype=torch.float32, device=q.device)
    decay = torch.exp2((pos[:, None] - pos[None, :]) * s.view(-1, 1, 1)) * (pos[:, None] >= pos[None, :])
    att = torch.einsum("bhqd,bhkd,hqk->bhqk", q * d**-0.5, k, decay.to(q.dtype))
    return torch.einsum("bhqk,bhkd->bhqd", att, v)


def ret_recurrent_torchscale(q, k, v):
    """torchscale's recurrent retention, one step per token: kv = k^T v, state = gamma state + kv."""
    b, h, n, d = q.shape
    gamma = _retnet_gammas(h, q.device, q.dtype).view(1, h, 1, 1)
    state = torch.zeros(b, h, d, v.shape[-1], dtype=q.dtype, device=q.device)
    out = []
    for i in range(n):
        kv = k[:, :, i, :, None] @ v[:, :, i, None, :]
        state = state * gamma + kv
        out.append(torch.sum(q[:, :, i, :, None] * d**-0.5 * state, dim=2))
    return torch.stack(out, dim=2)


def ret_chunkwise_torchscale(q, k, v):
    """torchscale-like chunkwise retention: masked intra-chunk, cross-chunk state with decays."""
    b, h, n, d = q.shape
    gamma = _retnet_gammas(h, q.device, q.dtype)
    q = q * d**-0.5
    pos = torch.arange(CHUNK, device=q.device, dtype=q.dtype)
    diff = pos[:, None] - pos[None, :]
    inner = torch.where(diff >= 0, gamma[:, None, None] ** diff.clamp(min=0), torch.zeros_like(diff))
    q_decay = gamma[:, None] ** (pos[None, :] + 1)  # [H, C]: decay from the chunk start to row i
    k_decay = gamma[:, None] ** (CHUNK - 1 - pos[None, :])  # [H, C]: from row j to the chunk end
    chunk_decay = gamma**CHUNK
    state = q.new_zeros(b, h, d, v.shape[-1])
    outs = []
    for c in range(n // CHUNK):
        sl = slice(c * CHUNK, (c + 1) * CHUNK)
        qc, kc, vc = q[:, :, sl], k[:, :, sl], v[:, :, sl]
        intra = ((qc @ kc.transpose(-1, -2)) * inner) @ vc
        cross = (qc * q_decay[..., None]) @ state
        outs.append(intra + cross)
        state = state * chunk_decay[:, None, None] + (kc * k_decay[..., None]).transpose(-1, -2) @ vc
    return torch.cat(outs, dim=2)


def _ret_ref_bhtd(q, k, v):
    decay = torch.log(_retnet_gammas(q.shape[1], q.device, torch.float64)).to(q.dtype)
    return _t(rgla.retention(_t(q), _t(k), _t(v), decay)[0])


def lightning_recurrent(q, k, v):
    """Lightning attention's decode-style recurrence: kv = exp(-slope) kv + k^T v, no scale."""
    b, h, n, d = q.shape
    start = 2 ** (-(2 ** -(math.log2(h) - 3)))
    slopes = torch.tensor([start * start**i for i in range(h)], dtype=q.dtype, device=q.device)
    ratio = torch.exp(-slopes).view(1, h, 1, 1)
    kv = torch.zeros(b, h, d, v.shape[-1], dtype=q.dtype, device=q.device)
    o = torch.empty(b, h, n, v.shape[-1], dtype=q.dtype, device=q.device)
    for i in range(n):
        kv = ratio * kv + torch.einsum("bhd,bhe->bhde", k[:, :, i], v[:, :, i])
        o[:, :, i] = torch.einsum("bhd,bhde->bhe", q[:, :, i], kv)
    return o


def _lightning_ref(q, k, v):
    h = q.shape[1]
    start = 2 ** (-(2 ** -(math.log2(h) - 3)))
    slopes = torch.tensor([start * start**i for i in range(h)], dtype=q.dtype, device=q.device)
    return _t(rgla.retention(_t(q), _t(k), _t(v), -slopes, scale=1.0)[0])


def ret_loop_scalar_gamma(q, k, v):
    """[B, T, H, D] with one gamma for every head, a float literal."""
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    o = torch.zeros_like(v)
    for t in range(q.shape[1]):
        S = 0.9 * S + torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t], S) * q.shape[-1] ** -0.5
    return o


# ================================================================ simple_gla (per-head data-dependent gate)


def sgla_fla_recurrent(q, k, v, g, scale=None):
    """FLA's naive recurrent simple GLA: transposed to [B, H, T, D], readout by a sum over K."""
    q, k, v, g = (x.transpose(1, 2).float() for x in (q, k, v, g))
    b, h, n, d = q.shape
    q = q * (d**-0.5 if scale is None else scale)
    o = v.new_zeros(b, h, n, v.shape[-1])
    S = q.new_zeros(b, h, d, v.shape[-1])
    for i in range(n):
        S = S * g[:, :, i].exp().unsqueeze(-1).unsqueeze(-1) + k[:, :, i].unsqueeze(-1) * v[:, :, i].unsqueeze(-2)
        o[:, :, i] = (q[:, :, i].unsqueeze(-1) * S).sum(-2)
    return o.transpose(1, 2)


def sgla_parallel_segsum(q, k, v, g):
    """FLA's naive parallel simple GLA: cumsum of g, exp of pairwise differences, lower triangle."""
    q, k, v, g = (x.transpose(1, 2) for x in (q, k, v, g))
    att = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    G = g.cumsum(-1)
    att = att * (G.unsqueeze(-1) - G.unsqueeze(-2)).tril().exp().tril()
    return (att @ v).transpose(1, 2)


def sgla_fla_chunk(q, k, v, g):
    """FLA's naive chunked simple GLA (chunk 4): intra by a decay mask, inter by a carried state."""
    q, k, v, g = (x.transpose(1, 2).float() for x in (q, k, v, g))
    b, h, n, d = q.shape
    q = q * d**-0.5
    nc = n // CHUNK
    q, k, v = (x.reshape(b, h, nc, CHUNK, x.shape[-1]) for x in (q, k, v))
    gc = g.reshape(b, h, nc, CHUNK).cumsum(-1)
    L = (gc.unsqueeze(-1) - gc.unsqueeze(-2)).tril().exp().tril()
    S = k.new_zeros(b, h, d, v.shape[-1])
    o = torch.zeros_like(v)
    for i in range(nc):
        att = q[:, :, i] @ k[:, :, i].transpose(-1, -2) * L[:, :, i]
        o[:, :, i] = (q[:, :, i] * gc[:, :, i, :, None].exp()) @ S + att @ v[:, :, i]
        last = gc[:, :, i, -1]
        S = (
            S * last.exp()[..., None, None]
            + (k[:, :, i] * (last[..., None] - gc[:, :, i]).exp()[..., None]).transpose(-1, -2) @ v[:, :, i]
        )
    return o.reshape(b, h, n, -1).transpose(1, 2)


def _segsum(x):
    """Mamba2's stable segment sum: out[..., i, j] = sum_{j < m <= i} x[..., m], -inf above."""
    n = x.size(-1)
    x = x[..., None].repeat(*([1] * x.dim()), n)
    low = torch.tril(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=-1)
    x = x.masked_fill(~low, 0)
    ss = torch.cumsum(x, dim=-2)
    keep = torch.tril(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=0)
    return ss.masked_fill(~keep, -torch.inf)


def sgla_mamba2_quadratic(q, k, v, g):
    """Mamba2 SSD's quadratic form: C = q, B = k, X = v, A dt = g; L = exp(segsum), one einsum."""
    L = torch.exp(_segsum(g.permute(0, 2, 1)))  # [B, H, T, S]
    return torch.einsum("blhn,bshn,bhls,bshp->blhp", q, k, L, v)


def sgla_gate_in_loop(q, k, v, a):
    """The gate made inside the loop from a pre-activation: logsigmoid(a_t) / 8."""
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    outs = []
    for t in range(q.shape[1]):
        decay = torch.exp(F.logsigmoid(a[:, t]) / 8)
        S = decay[:, :, None, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * q.shape[-1] ** -0.5, S))
    return torch.stack(outs, 1)


def _sgla_ref(q, k, v, g):
    return rgla.simple_gla(q, k, v, g)[0]


# ================================================================ gla (per-key gate)


def gla_fla_recurrent(q, k, v, gk, initial_state=None):
    """FLA's naive recurrent GLA, [B, T, H, D] in, transposed inside, (q_i[..., None] * h).sum(-2)."""
    q, k, v, gk = (x.transpose(1, 2).float() for x in (q, k, v, gk))
    b, h, n, d = q.shape
    o = torch.zeros_like(v)
    st = q.new_zeros(b, h, d, v.shape[-1])
    if initial_state is not None:
        st = st + initial_state
    for i in range(n):
        kv = k[:, :, i][..., None] * v[:, :, i][..., None, :]
        st = st * gk[:, :, i].exp()[..., None] + kv
        o[:, :, i] = (q[:, :, i][..., None] * d**-0.5 * st).sum(-2)
    return o.transpose(1, 2)


def gla_paper_alpha(q, k, v, gk):
    """The GLA paper's recurrent form: alpha_t in (0, 1) per key, S_t = (alpha_t^T 1) * S + k^T v."""
    alpha = gk.exp()
    b, n, h, d = q.shape
    S = torch.zeros(b, h, d, v.shape[-1], device=q.device, dtype=q.dtype)
    o = []
    for t in range(n):
        G = alpha[:, t].unsqueeze(-1).expand(-1, -1, -1, v.shape[-1])
        S = G * S + k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)
        o.append((q[:, t].unsqueeze(-2) @ S).squeeze(-2) * d**-0.5)
    return torch.stack(o, dim=1)


def gla_parallel_factored(q, k, v, gk):
    """GLA's parallel form: q e^{G}, k e^{-G} with G = cumsum of the per-key log gates, masked."""
    G = gk.cumsum(1)
    qe = q * G.exp() * q.shape[-1] ** -0.5
    ke = k * (-G).exp()
    att = torch.einsum("bthd,bshd->bhts", qe, ke)
    n = q.shape[1]
    att = att * torch.tril(torch.ones(n, n, device=q.device, dtype=q.dtype))
    return torch.einsum("bhts,bshd->bthd", att, v)


def gla_einsum_bthd_h0(q, k, v, gk, h0):
    """[B, T, H, D] einsum loop with an initial state and the final state returned."""
    S = h0
    o = q.new_empty(q.shape[0], q.shape[1], q.shape[2], v.shape[-1])
    for t in range(q.shape[1]):
        S = torch.einsum("bhk,bhkv->bhkv", gk[:, t].exp(), S) + torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t], S) * K**-0.5
    return o, S


def _gla_h0_inputs(dtype=torch.float32, device="cpu", seed=0):
    q, k, v, gk = qkv_gk_bthd(dtype, device, seed)
    return q, k, v, gk, _r(_gen(seed + 2), B, H, K, V, dtype=dtype, device=device)


class GLALayer(nn.Module):
    """A GLA layer: a low-rank gate projection, logsigmoid / 16, the recurrent loop."""

    def __init__(self, dim=H * K, heads=H):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.gk = nn.Sequential(nn.Linear(dim, 4, bias=False), nn.Linear(4, dim, bias=True))
        g = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, -1).unbind(2)
        gk = F.logsigmoid(self.gk(x)).view(b, t, self.heads, -1) / 16
        d = q.shape[-1]
        h = x.new_zeros(b, self.heads, d, v.shape[-1])
        o = torch.zeros_like(v)
        for i in range(t):
            h = h * gk[:, i, :, :, None].exp() + k[:, i, :, :, None] * v[:, i, :, None, :]
            o[:, i] = (q[:, i, :, :, None] * h).sum(-2) * d**-0.5
        return o.reshape(b, t, -1)


_GLA_LAYER = GLALayer()


def gla_module(x):
    return _GLA_LAYER.to(x.device, x.dtype)(x)


def _gla_module_ref(x):
    m = _GLA_LAYER.to(x.device, x.dtype)
    b, t, _ = x.shape
    q, k, v = m.qkv(x).view(b, t, 3, H, -1).unbind(2)
    gk = F.logsigmoid(m.gk(x)).view(b, t, H, -1) / 16
    return rgla.gla(q, k, v, gk=gk)[0].reshape(b, t, -1)


def _gla_ref(q, k, v, gk, *rest):
    return rgla.gla(q, k, v, gk=gk)[0]


# ================================================================ delta_rule


def delta_fla_recurrent(q, k, v, beta):
    """FLA's naive delta rule, [B, H, T, D], with its clones and beta[..., None]."""
    b, h, n, d = q.shape
    q, k, v, beta = (x.float() for x in (q, k, v, beta))
    o = torch.zeros_like(v)
    S = torch.zeros(b, h, d, v.shape[-1]).to(v)
    q = q * d**-0.5
    beta = beta[..., None]
    for i in range(n):
        kk = k[:, :, i]
        vv = v[:, :, i].clone()
        vv = vv - (S.clone() * kk[..., None]).sum(-2)
        vv = vv * beta[:, :, i]
        S = S.clone() + kk.unsqueeze(-1) * vv.unsqueeze(-2)
        o[:, :, i] = torch.einsum("bhd,bhdm->bhm", q[:, :, i], S)
    return o


def delta_fla_chunkwise(q, k, v, beta):
    """FLA's naive chunkwise delta rule (chunk 4): the UT transform by forward substitution."""
    b, h, n, d = q.shape
    q = q * d**-0.5
    v = v * beta[..., None]
    kb = k * beta[..., None]
    nc = n // CHUNK
    q, k, v, kb = (x.reshape(b, h, nc, CHUNK, x.shape[-1]) for x in (q, k, v, kb))
    incl = torch.triu(torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=q.device), diagonal=0)
    A = -(kb @ k.transpose(-1, -2)).masked_fill(incl, 0)
    for i in range(1, CHUNK):
        A[..., i, :i] = A[..., i, :i].clone() + (A[..., i, :, None].clone() * A[..., :, :i].clone()).sum(-2)
    A = A + torch.eye(CHUNK, dtype=q.dtype, device=q.device)
    u = A @ v
    w = A @ kb
    S = k.new_zeros(b, h, d, v.shape[-1])
    o = torch.zeros_like(v)
    strict = torch.triu(torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=q.device), diagonal=1)
    for i in range(nc):
        qi, ki = q[:, :, i], k[:, :, i]
        att = (qi @ ki.transpose(-1, -2)).masked_fill(strict, 0)
        ui = u[:, :, i] - w[:, :, i] @ S
        o[:, :, i] = qi @ S + att @ ui
        S = S + ki.transpose(-1, -2) @ ui
    return o.reshape(b, h, n, -1)


def delta_matmul_bthd(q, k, v, beta):
    """[B, T, H, D]: predict by k_t^T S as a matmul, correct by an outer product of beta * error."""
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    ys = []
    for t in range(q.shape[1]):
        kt = k[:, t].unsqueeze(-2)  # [B, H, 1, K]
        err = v[:, t].unsqueeze(-2) - kt @ S  # [B, H, 1, V]
        S = S + kt.transpose(-1, -2) @ (beta[:, t, :, None, None] * err)
        ys.append((q[:, t].unsqueeze(-2) @ S).squeeze(-2) * K**-0.5)
    return torch.stack(ys, dim=1)


def delta_householder(q, k, v, beta):
    """The Householder-like transition written out: S = (I - b k k^T) S + b k v^T, with torch.eye."""
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    o = torch.empty_like(v)
    for t in range(q.shape[1]):
        kt, bt = k[:, t], beta[:, t, :, None, None]
        S = (eye - bt * kt[..., :, None] * kt[..., None, :]) @ S + bt * kt[..., :, None] * v[:, t, :, None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t] * K**-0.5, S)
    return o


def delta_state_vk(q, k, v, beta):
    """The paper's orientation: S in R^{V x K}, S_t = S - b (S k - v) k^T, o_t = S q."""
    S = q.new_zeros(q.shape[0], q.shape[2], v.shape[3], q.shape[3])
    o = torch.zeros_like(v)
    for t in range(q.shape[1]):
        kt = k[:, t]
        Sk = torch.einsum("bhvk,bhk->bhv", S, kt)
        S = S - beta[:, t, :, None, None] * torch.einsum("bhv,bhk->bhvk", Sk - v[:, t], kt)
        o[:, t] = torch.einsum("bhvk,bhk->bhv", S, q[:, t]) * K**-0.5
    return o


def _delta_ref(q, k, v, beta):
    return rdelta.delta_rule(q, k, v, beta)[0]


def _delta_ref_bhtd(q, k, v, beta):
    return _t(rdelta.delta_rule(_t(q), _t(k), _t(v), _t(beta))[0])


# ================================================================ gated_delta_rule


def gdn_fla_recurrent(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False):
    """FLA's naive recurrent gated delta rule, transposed to [B, H, T, D] inside."""
    q, k, v, beta, g = (x.transpose(1, 2).contiguous().float() for x in (q, k, v, beta, g))
    b, h, n, d = k.shape
    o = torch.zeros(b, h, n, v.shape[-1]).to(v)
    S = torch.zeros(b, h, d, v.shape[-1]).to(v)
    if initial_state is not None:
        S = initial_state.float()
    q = q * (1 / d**0.5 if scale is None else scale)
    for i in range(n):
        kk, vv = k[:, :, i], v[:, :, i].clone()
        S = S.clone() * g[:, :, i].exp()[..., None, None]
        vv = (vv - (S.clone() * kk[..., None]).sum(-2)) * beta[:, :, i][..., None]
        S = S.clone() + kk.unsqueeze(-1) * vv.unsqueeze(-2)
        o[:, :, i] = torch.einsum("bhd,bhdm->bhm", q[:, :, i], S)
    return o.transpose(1, 2).contiguous(), (S if output_final_state else None)


def _l2(x, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).sum(dim=-1, keepdim=True) + eps)


def gdn_transformers_style(query, key, value, g, beta):
    """transformers' torch_recurrent_gated_delta_rule, retyped: l2norm, [B, H, T, D], last state."""
    query, key = _l2(query), _l2(key)
    query, key, value, beta, g = (
        x.transpose(1, 2).contiguous().to(torch.float32) for x in (query, key, value, beta, g)
    )
    bsz, nh, seq, kd = key.shape
    query = query * (1 / kd**0.5)
    out = torch.zeros(bsz, nh, seq, value.shape[-1]).to(value)
    last = torch.zeros(bsz, nh, kd, value.shape[-1]).to(value)
    for i in range(seq):
        q_t, k_t, v_t = query[:, :, i], key[:, :, i], value[:, :, i]
        g_t = g[:, :, i].exp().unsqueeze(-1).unsqueeze(-1)
        beta_t = beta[:, :, i].unsqueeze(-1)
        last = last * g_t
        kv_mem = (last * k_t.unsqueeze(-1)).sum(dim=-2)
        delta = (v_t - kv_mem) * beta_t
        last = last + k_t.unsqueeze(-1) * delta.unsqueeze(-2)
        out[:, :, i] = (last * q_t.unsqueeze(-1)).sum(dim=-2)
    return out.transpose(1, 2).contiguous(), last


def gdn_fla_chunk(q, k, v, g, beta):
    """FLA's naive chunked gated delta rule (chunk 4): decay mask inside the WY transform."""
    q, k, v, beta, g = (x.transpose(1, 2).contiguous().float() for x in (q, k, v, beta, g))
    b, h, n, d = q.shape
    q = q * d**-0.5
    v = v * beta[..., None]
    kb = k * beta[..., None]
    nc = n // CHUNK
    q, k, v, kb = (x.reshape(b, h, nc, CHUNK, x.shape[-1]) for x in (q, k, v, kb))
    gc = g.reshape(b, h, nc, CHUNK).cumsum(-1)
    L = (gc.unsqueeze(-1) - gc.unsqueeze(-2)).tril().exp().tril()
    incl = torch.triu(torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=q.device), diagonal=0)
    A = -((kb @ k.transpose(-1, -2)) * L).masked_fill(incl, 0)
    for i in range(1, CHUNK):
        A[..., i, :i] = A[..., i, :i].clone() + (A[..., i, :i, None].clone() * A[..., :i, :i].clone()).sum(-2)
    A = A + torch.eye(CHUNK, dtype=q.dtype, device=q.device)
    vv = A @ v
    kcd = A @ (kb * gc.exp()[..., None])
    S = k.new_zeros(b, h, d, v.shape[-1])
    o = torch.zeros_like(vv)
    strict = torch.triu(torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=q.device), diagonal=1)
    for i in range(nc):
        qi, ki = q[:, :, i], k[:, :, i]
        att = (qi @ ki.transpose(-1, -2) * L[:, :, i]).masked_fill(strict, 0)
        vn = vv[:, :, i] - kcd[:, :, i] @ S
        o[:, :, i] = (qi * gc[:, :, i, :, None].exp()) @ S + att @ vn
        last = gc[:, :, i, -1]
        S = (
            S * last[..., None, None].exp()
            + (ki * (last[..., None] - gc[:, :, i]).exp()[..., None]).transpose(-1, -2) @ vn
        )
    return o.reshape(b, h, n, -1).transpose(1, 2)


def gdn_paper_alpha_vk(q, k, v, g, beta):
    """Gated DeltaNet's paper form: S in R^{V x K}, S = alpha S (I - b k k^T) + b v k^T, alpha given."""
    alpha = g.exp()
    eye = torch.eye(k.shape[-1], dtype=q.dtype, device=q.device)
    S = q.new_zeros(q.shape[0], q.shape[2], v.shape[-1], k.shape[-1])
    outs = []
    for t in range(q.shape[1]):
        kt, bt = k[:, t], beta[:, t][..., None, None]
        S = alpha[:, t][..., None, None] * (S @ (eye - bt * kt.unsqueeze(-1) * kt.unsqueeze(-2)))
        S = S + bt * v[:, t].unsqueeze(-1) * kt.unsqueeze(-2)
        outs.append((S @ q[:, t].unsqueeze(-1)).squeeze(-1) / math.sqrt(k.shape[-1]))
    return torch.stack(outs, 1)


def _gdn_ref(q, k, v, g, beta):
    return rdelta.gated_delta_rule(q, k, v, g, beta)[0]


def _gdn_tf_ref(q, k, v, g, beta):
    return rdelta.gated_delta_rule(q, k, v, g, beta, use_qk_l2norm=True)[0]


# ================================================================ kda


def kda_fla_recurrent(q, k, v, g, beta, scale=None):
    """FLA's naive recurrent KDA, [B, T, H, D]: decay the state per key, then the delta step."""
    d = q.shape[-1]
    q, k, v, g, beta = (x.float() for x in (q, k, v, g, beta))
    q = q * (d**-0.5 if scale is None else scale)
    S = k.new_zeros(q.shape[0], q.shape[2], d, v.shape[-1])
    o = torch.zeros_like(v)
    for i in range(q.shape[1]):
        qi, ki, vi, gi, bi = q[:, i], k[:, i], v[:, i], g[:, i], beta[:, i]
        S = S * gi[..., None].exp()
        S = S + torch.einsum("bhk,bhv->bhkv", bi[..., None] * ki, vi - (ki[..., None] * S).sum(-2))
        o[:, i] = torch.einsum("bhk,bhkv->bhv", qi, S)
    return o


def kda_alpha_bhtd(q, k, v, alpha, beta):
    """[B, H, T, D] with the per-key decay given as a probability alpha, a stacked output."""
    S = q.new_zeros(q.shape[0], q.shape[1], q.shape[3], v.shape[3])
    ys = []
    for i in range(q.shape[2]):
        S = alpha[:, :, i].unsqueeze(-1) * S
        kt = k[:, :, i]
        pred = torch.einsum("bhk,bhkv->bhv", kt, S)
        S = S + torch.einsum("bhk,bhv->bhkv", kt, beta[:, :, i].unsqueeze(-1) * (v[:, :, i] - pred))
        ys.append(torch.einsum("bhk,bhkv->bhv", q[:, :, i], S) * K**-0.5)
    return torch.stack(ys, dim=2)


def _kda_alpha_inputs(dtype=torch.float32, device="cpu", seed=0):
    q, k, v, gk, beta = kda_bthd(dtype, device, seed)
    return _t(q), _t(k), _t(v), _t(gk).exp(), _t(beta)


def _kda_alpha_ref(q, k, v, alpha, beta):
    return _t(rdelta.kda(_t(q), _t(k), _t(v), _t(alpha).log(), _t(beta))[0])


def kda_module_style(q, k, v, g, beta):
    """Kimi-style recurrent KDA with l2-normalized q, k inside and a buffer written in place."""
    q, k, v, g, beta = (x.float() for x in (q, k, v, g, beta))
    q = F.normalize(q, p=2, dim=-1, eps=1e-6)
    k = F.normalize(k, p=2, dim=-1, eps=1e-6)
    b, n, h, d = q.shape
    state = torch.zeros(b, h, d, v.shape[-1], dtype=torch.float32, device=q.device)
    out = torch.empty(b, n, h, v.shape[-1], dtype=torch.float32, device=q.device)
    for t in range(n):
        state = state * torch.exp(g[:, t]).unsqueeze(-1)
        v_old = torch.einsum("bhk,bhkv->bhv", k[:, t], state)
        state = state + torch.einsum("bhk,bhv->bhkv", k[:, t], (v[:, t] - v_old) * beta[:, t, :, None])
        out[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t] * d**-0.5, state)
    return out


def _kda_ref(q, k, v, gk, beta):
    return rdelta.kda(q, k, v, gk, beta)[0]


def _kda_norm_ref(q, k, v, gk, beta):
    return rdelta.kda(F.normalize(q, dim=-1, eps=1e-6), F.normalize(k, dim=-1, eps=1e-6), v, gk, beta)[0]


# ================================================================ rwkv6


def rwkv6_fla_recurrent(r, k, v, w, u):
    """FLA's naive recurrent RWKV-6, [B, H, T, D]: the output reads (h + u k v^T) before the update."""
    b, h, n, d = r.shape
    st = torch.zeros(b, h, d, v.shape[-1], dtype=torch.float32, device=r.device)
    o = torch.zeros_like(v)
    for i in range(n):
        kv = k[:, :, i][..., None] * v[:, :, i][..., None, :]
        o[:, :, i] = ((st + u[None, ..., None] * kv) * (r[:, :, i] * d**-0.5)[..., None]).sum(-2)
        st = st * w[:, :, i].exp()[..., None] + kv
    return o


def rwkv6_official_timemix(r, k, v, w, u):
    """RWKV-6's own torch reference: w as a decay value exp(w), matmuls, no scale, state last."""
    b, h, n, d = r.shape
    decay = torch.exp(w)
    state = torch.zeros(b, h, d, v.shape[-1], dtype=r.dtype, device=r.device)
    ys = []
    for t in range(n):
        rt = r[:, :, t : t + 1, :]  # [B, H, 1, K]
        kt = k[:, :, t : t + 1, :].transpose(-1, -2)  # [B, H, K, 1]
        vt = v[:, :, t : t + 1, :]  # [B, H, 1, V]
        at = kt @ vt
        ys.append(rt @ (u.view(1, h, d, 1) * at + state))
        state = at + decay[:, :, t].unsqueeze(-1) * state
    return torch.cat(ys, dim=2)


def _rwkv_ref(r, k, v, w, u, scale=None):
    return _t(rrwkv.rwkv6(_t(r), _t(k), _t(v), _t(w), u, scale=scale)[0])


# ================================================================ hgrn (elementwise scans)


def hgrn_fla_recurrent(x, g, initial_state=None, output_final_state=False):
    """FLA's naive recurrent HGRN: h = exp(g_t) h + x_t, written into a zeroed buffer."""
    b, n, d = x.shape
    h = torch.zeros(b, d, dtype=torch.float32, device=x.device)
    if initial_state is not None:
        h = h + initial_state
    o = torch.zeros_like(x)
    gl = F.logsigmoid(g)
    for i in range(n):
        h = gl[:, i].exp() * h + x[:, i]
        o[:, i] = h
    return o, (h if output_final_state else None)


def hgrn1_lerp(x, f):
    """HGRN1: forget gate f = sigmoid, h = f h + (1 - f) * silu(x) (the input made before the loop)."""
    f = torch.sigmoid(f)
    i = F.silu(x) * (1 - f)
    h = torch.zeros_like(x[:, 0])
    hs = []
    for t in range(x.shape[1]):
        h = f[:, t] * h + i[:, t]
        hs.append(h)
    return torch.stack(hs, dim=1)


def rglru_style(x, r):
    """RG-LRU: log_a = -8 softplus(c) r, a = exp(log_a), x scaled by sqrt(1 - a^2); a loop."""
    c = torch.linspace(-1.0, 1.0, x.shape[-1], dtype=x.dtype, device=x.device)
    log_a = -8.0 * torch.sigmoid(r) * F.softplus(c)
    a = torch.exp(log_a)
    xn = x * torch.sqrt(1 - torch.exp(2 * log_a))
    h = None
    ys = []
    for t in range(x.shape[1]):
        h = xn[:, t] if h is None else a[:, t] * h + xn[:, t]
        ys.append(h)
    return torch.stack(ys, 1)


def _rglru_ref(x, r):
    c = torch.linspace(-1.0, 1.0, x.shape[-1], dtype=x.dtype, device=x.device)
    log_a = -8.0 * torch.sigmoid(r) * F.softplus(c)
    return rhgrn.hgrn(x * torch.sqrt(1 - torch.exp(2 * log_a)), log_a)[0]


def hgrn_bhtd_heads(x, g):
    """Heads kept apart: [B, T, D] viewed [B, T, H, D / H], a [B, H, D / H] state, a buffer."""
    b, n, dd = x.shape
    xs, gs = x.view(b, n, H, dd // H), F.logsigmoid(g).view(b, n, H, dd // H)
    h = x.new_zeros(b, H, dd // H)
    out = torch.empty_like(xs)
    for t in range(n):
        h = torch.exp(gs[:, t]) * h + xs[:, t]
        out[:, t] = h
    return out.view(b, n, dd)


def _hgrn_ref(x, g, *rest):
    return rhgrn.hgrn(x, F.logsigmoid(g))[0]


def _hgrn1_ref(x, f):
    return rhgrn.hgrn(F.silu(x) * (1 - torch.sigmoid(f)), F.logsigmoid(f))[0]


# ================================================================ mamba (selective scan)


def selective_scan_ref_style(u, delta, A, Bm, Cm):
    """Mamba's selective_scan_ref retyped: [B, D, L] inputs, deltaA / deltaB_u precomputed, ys stacked."""
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    dBu = torch.einsum("bdl,bnl,bdl->bdln", delta, Bm, u)
    x = A.new_zeros(u.shape[0], A.shape[0], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = dA[:, :, i] * x + dBu[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, Cm[:, :, i]))
    return torch.stack(ys, dim=2)


def _sel_ref_bdl(u, delta, A, Bm, Cm):
    return _t(rmamba.selective_scan(_t(u) * _t(delta), _t(delta), A, _t(Bm), _t(Cm))[0])


def mamba_minimal(u, delta, A, Bm, Cm):
    """mamba-minimal's selective_scan: [B, L, D], discretized before the loop, a buffer-free stack."""
    b, n, d = u.shape
    dA = torch.exp(torch.einsum("bld,dn->bldn", delta, A))
    dBu = torch.einsum("bld,bln,bld->bldn", delta, Bm, u)
    x = torch.zeros(b, d, A.shape[1], device=u.device, dtype=u.dtype)
    ys = []
    for i in range(n):
        x = dA[:, i] * x + dBu[:, i]
        ys.append(torch.einsum("bdn,bn->bd", x, Cm[:, i, :]))
    return torch.stack(ys, dim=1)


def mamba_discretize_in_loop(u, delta, A, Bm, Cm):
    """The discretization inside the loop, y by a sum over N, and the D skip after it."""
    b, n, d = u.shape
    h = u.new_zeros(b, d, A.shape[-1])
    y = torch.empty_like(u)
    for t in range(n):
        dt = delta[:, t].unsqueeze(-1)
        h = torch.exp(dt * A) * h + (dt * u[:, t].unsqueeze(-1)) * Bm[:, t].unsqueeze(1)
        y[:, t] = (h * Cm[:, t].unsqueeze(1)).sum(-1)
    return y + 0.5 * u


def _sel_ref_bld(u, delta, A, Bm, Cm):
    return rmamba.selective_scan(u * delta, delta, A, Bm, Cm)[0]


# ================================================================ normalized_linear_attn


def nla_parallel_elu(q, k, v):
    """Katharopoulos et al.'s causal form: masked phi(q) phi(k)^T, divided by its row sums."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    A = (q @ k.transpose(-1, -2)).tril()
    return ((A @ v) / (A.sum(-1, keepdim=True) + 1e-6)).transpose(1, 2)


def nla_loop_sz(q, k, v):
    """The RNN view: S and z carried together, o = S^T q / (z . q + eps)."""
    b, n, h, d = q.shape
    S = q.new_zeros(b, h, d, v.shape[-1])
    z = q.new_zeros(b, h, d)
    o = []
    for t in range(n):
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        z = z + k[:, t]
        num = torch.einsum("bhk,bhkv->bhv", q[:, t], S)
        den = torch.einsum("bhk,bhk->bh", q[:, t], z)[..., None]
        o.append(num / (den + 1e-6))
    return torch.stack(o, 1)


def nla_cumsum(q, k, v):
    """Cumsum numerator and q . cumsum(k) normalizer, a reciprocal multiplied."""
    kv = torch.cumsum(k.unsqueeze(-1) * v.unsqueeze(-2), dim=1)
    num = (q.unsqueeze(-1) * kv).sum(-2)
    den = (q * k.cumsum(1)).sum(-1, keepdim=True)
    return num * (1.0 / (den + 1e-6))


def _nla_ref(q, k, v):
    return rnorm.normalized_linear_attn(q, k, v, eps=1e-6)[0]


# ================================================================ near misses (must stay as written)


def nm_tanh_state(q, k, v):
    """A nonlinearity inside the recurrence: S = tanh(S + k v^T)."""
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    o = torch.zeros_like(v)
    for t in range(q.shape[1]):
        S = torch.tanh(S + torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t]))
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t], S)
    return o


def nm_noncausal(q, k, v):
    """Non-causal linear attention: (q k^T) v with no mask at all."""
    return torch.einsum("bhts,bshd->bthd", torch.einsum("bthd,bshd->bhts", q, k), v)


def nm_anticausal(q, k, v):
    """The upper triangle kept: each token reads the future."""
    att = torch.einsum("bthd,bshd->bhts", q, k).triu()
    return torch.einsum("bhts,bshd->bthd", att, v)


def nm_strict_causal(q, k, v):
    """tril(-1): the current token excluded (a different recurrence, reading S_{t-1})."""
    att = (q @ k.transpose(-1, -2)).tril(-1)
    return att @ v


def nm_value_axis_decay(q, k, v, gk):
    """The per-feature decay on the value axis of a [K, V] state read over K (no op does that)."""
    gv = gk[..., : v.shape[-1]]
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    o = torch.zeros_like(v)
    for t in range(q.shape[1]):
        S = S * gv[:, t].exp()[..., None, :] + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = (q[:, t, :, :, None] * S).sum(-2)
    return o


def nm_reset_mid(q, k, v):
    """The state reset half way through the sequence."""
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    o = torch.zeros_like(v)
    for t in range(q.shape[1]):
        if t == q.shape[1] // 2:
            S = torch.zeros_like(S)
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t], S)
    return o


def nm_block_diag_mask(q, k, v):
    """A causal mask that also resets at every chunk boundary (block-diagonal causal)."""
    n = q.shape[2]
    pos = torch.arange(n, device=q.device)
    mask = (pos[:, None] >= pos[None, :]) & (pos[:, None] // CHUNK == pos[None, :] // CHUNK)
    return ((q @ k.transpose(-1, -2)) * mask) @ v


def nm_norm_wrong_axis(q, k, v):
    """Normalized linear attention whose normalizer sums the masked scores over queries (dim -2)."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    A = (q @ k.transpose(-1, -2)).tril()
    return ((A @ v) / (A.sum(-2, keepdim=True).transpose(-1, -2) + 1e-6)).transpose(1, 2)


def nm_delta_q_error(q, k, v, beta):
    """The error predicted from q instead of k: S += b k (v - q^T S), a non-symmetric transition."""
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    o = torch.zeros_like(v)
    for t in range(q.shape[1]):
        err = v[:, t] - torch.einsum("bhk,bhkv->bhv", q[:, t], S)
        S = S + beta[:, t, :, None, None] * k[:, t, :, :, None] * err[:, :, None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t], S)
    return o


def nm_delta_beta_write_only(q, k, v, beta):
    """beta on the write but not the erase: S = (I - k k^T) S + b k v^T (no delta op does that)."""
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    o = torch.zeros_like(v)
    for t in range(q.shape[1]):
        kt = k[:, t]
        pred = torch.einsum("bhk,bhkv->bhv", kt, S)
        S = S + kt[..., :, None] * (beta[:, t, :, None] * v[:, t] - pred)[..., None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t], S)
    return o


def nm_hgrn_tanh(x, g):
    """An elementwise scan with tanh on the carried value."""
    h = torch.zeros_like(x[:, 0])
    o = torch.zeros_like(x)
    a = torch.sigmoid(g)
    for t in range(x.shape[1]):
        h = a[:, t] * torch.tanh(h) + x[:, t]
        o[:, t] = h
    return o


def nm_mamba_prev_state(u, delta, A, Bm, Cm):
    """The read-out of the state before the update, y_t = h_{t-1} C_t (shifted by one step)."""
    dA = torch.exp(torch.einsum("bld,dn->bldn", delta, A))
    dBu = torch.einsum("bld,bln,bld->bldn", delta, Bm, u)
    x = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    ys = []
    for i in range(u.shape[1]):
        ys.append(torch.einsum("bdn,bn->bd", x, Cm[:, i]))
        x = dA[:, i] * x + dBu[:, i]
    return torch.stack(ys, dim=1)


def nm_softmax_causal(q, k, v):
    """Causal softmax attention: not a recurrence at all."""
    n = q.shape[2]
    att = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    att = att.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool, device=q.device), 1), float("-inf"))
    return att.softmax(-1) @ v


def nm_cumsum_wrong_axis(q, k, v):
    """A cumsum of outer products over heads, not time: nothing causal about it."""
    kv = torch.einsum("bthk,bthv->bthkv", k, v).cumsum(dim=2)
    return torch.einsum("bthk,bthkv->bthv", q, kv)


def nm_cumsum_squared(q, k, v):
    """A running sum of outer products squared elementwise before the read-out: not linear in k v^T."""
    kv = torch.einsum("bthk,bthv->bthkv", k, v).cumsum(dim=1)
    return torch.einsum("bthk,bthkv->bthv", q, kv * kv)


def nm_bidirectional_decay(q, k, v):
    """RetNet-like decay gamma^|n-m| on both sides of the diagonal (bidirectional retention)."""
    n = q.shape[2]
    pos = torch.arange(n, device=q.device, dtype=q.dtype)
    mask = 0.9 ** (pos[:, None] - pos[None, :]).abs()
    return ((q @ k.transpose(-1, -2)) * mask) @ v


def nm_retention_row_gamma(q, k, v):
    """A decay mask gamma_n^(n-m) whose base depends on the query row: causal, positive, not Toeplitz."""
    n = q.shape[2]
    pos = torch.arange(n, device=q.device, dtype=q.dtype)
    gamma = torch.linspace(0.6, 0.95, n, device=q.device, dtype=q.dtype)[:, None]
    diff = (pos[:, None] - pos[None, :]).clamp(min=0)
    mask = gamma**diff * (pos[:, None] >= pos[None, :])
    return ((q @ k.transpose(-1, -2)) * mask) @ v


def nm_kda_decay_after_write(q, k, v, gk, beta):
    """The per-key decay applied after the delta step, S = diag(a)((I - b k k^T) S + b k v^T): not kda's order."""
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    o = torch.zeros_like(v)
    for t in range(q.shape[1]):
        kt = k[:, t]
        pred = torch.einsum("bhk,bhkv->bhv", kt, S)
        S = S + torch.einsum("bhk,bhv->bhkv", kt, beta[:, t, :, None] * (v[:, t] - pred))
        S = S * gk[:, t].exp()[..., None]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t], S)
    return o


def nm_rwkv_bonus_on_state(r, k, v, w, u):
    """RWKV-like, but the bonus multiplies the old state instead of the current token: o = (u * S + k v^T)^T r."""
    b, h, n, d = r.shape
    st = r.new_zeros(b, h, d, v.shape[-1])
    o = torch.zeros_like(v)
    for i in range(n):
        kv = k[:, :, i, :, None] * v[:, :, i, None, :]
        o[:, :, i] = ((u[None, :, :, None] * st + kv) * r[:, :, i, :, None]).sum(-2)
        st = st * w[:, :, i].exp()[..., None] + kv
    return o


def nm_hgrn_prev_output(x, g):
    """The scan's output is the state before the update, o_t = h_{t-1}."""
    h = torch.zeros_like(x[:, 0])
    o = torch.zeros_like(x)
    a = torch.sigmoid(g)
    for t in range(x.shape[1]):
        o[:, t] = h
        h = a[:, t] * h + x[:, t]
    return o


def nm_norm_eps_outside(q, k, v):
    """num / den + eps: the eps added after the division, not to the normalizer."""
    A = torch.einsum("bthd,bshd->bhts", q, k).tril()
    num = torch.einsum("bhts,bshd->bthd", A, v)
    den = A.sum(-1).transpose(1, 2)[..., None]
    return num / den + 1e-2


def nm_gla_gate_from_state(q, k, v):
    """A gate computed from the state itself (sigmoid of its mean): the transition depends on S."""
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    o = torch.zeros_like(v)
    for t in range(q.shape[1]):
        gate = torch.sigmoid(S.mean(-1, keepdim=True))
        S = gate * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t], S)
    return o


def nm_delta_unnormalized_key_reuse(q, k, v, beta):
    """A delta-like step whose erase uses k_t but whose write uses q_t: S = S - b k (k^T S) + b q v^T."""
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    o = torch.zeros_like(v)
    for t in range(q.shape[1]):
        kt, bt = k[:, t], beta[:, t, :, None, None]
        S = S - bt * kt[..., :, None] * torch.einsum("bhk,bhkv->bhv", kt, S)[..., None, :]
        S = S + bt * q[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t], S)
    return o


# ================================================================ the set


def _nla_inputs(dtype=torch.float32, device="cpu", seed=0):
    return fmap_qkv_bthd(dtype, device, seed)


CASES: list[Case] = [
    # linear_attn
    Case("la_fla_recurrent", "linear_attn", la_fla_recurrent, qkv_bthd, _ref_la),
    Case(
        "la_bhtd_stack_matmul",
        "linear_attn",
        la_bhtd_stack_matmul,
        qkv_bhtd,
        lambda q, k, v: _t(_ref_la(_t(q), _t(k), _t(v))),
    ),
    Case(
        "la_parallel_tril", "linear_attn", la_parallel_tril, qkv_bhtd, lambda q, k, v: _t(_ref_la(_t(q), _t(k), _t(v)))
    ),
    Case("la_parallel_masked_fill", "linear_attn", la_parallel_masked_fill, qkv_bthd, _ref_la),
    Case("la_cumsum_outer", "linear_attn", la_cumsum_outer, qkv_bthd, _ref_la),
    Case("la_fla_chunk", "linear_attn", la_fla_chunk, qkv_bthd, _ref_la),
    Case("la_module", "linear_attn", la_module, _layer_input, _la_module_ref),
    Case(
        "la_final_state_h0", "linear_attn", la_final_state_h0, qkv_h0_bthd, lambda q, k, v, h0: _ref_la(q, k, v, h0=h0)
    ),
    Case(
        "la_fla_recurrent_h0",
        "linear_attn",
        lambda q, k, v, h0: la_fla_recurrent(q, k, v, None, h0, True),
        qkv_h0_bthd,
        lambda q, k, v, h0: _ref_la(q, k, v, h0=h0),
    ),
    # retention
    Case("ret_parallel_torchscale", "retention", ret_parallel_torchscale, qkv_bhtd, _ret_ref_bhtd),
    Case("ret_parallel_fla_exp2", "retention", ret_parallel_fla_exp2, qkv_bhtd, _ret_ref_bhtd),
    Case("ret_recurrent_torchscale", "retention", ret_recurrent_torchscale, qkv_bhtd, _ret_ref_bhtd),
    Case("ret_chunkwise_torchscale", "retention", ret_chunkwise_torchscale, qkv_bhtd, _ret_ref_bhtd),
    Case("lightning_recurrent", "retention", lightning_recurrent, qkv_bhtd, _lightning_ref),
    Case(
        "ret_loop_scalar_gamma",
        "retention",
        ret_loop_scalar_gamma,
        qkv_bthd,
        lambda q, k, v: rgla.retention(q, k, v, math.log(0.9))[0],
    ),
    # simple_gla
    Case("sgla_fla_recurrent", "simple_gla", sgla_fla_recurrent, qkv_g_bthd, _sgla_ref),
    Case("sgla_parallel_segsum", "simple_gla", sgla_parallel_segsum, qkv_g_bthd, _sgla_ref),
    Case("sgla_fla_chunk", "simple_gla", sgla_fla_chunk, qkv_g_bthd, _sgla_ref),
    Case(
        "sgla_mamba2_quadratic",
        "simple_gla",
        sgla_mamba2_quadratic,
        qkv_g_bthd,
        lambda q, k, v, g: rgla.simple_gla(q, k, v, g, scale=1.0)[0],
    ),
    Case(
        "sgla_gate_in_loop",
        "simple_gla",
        sgla_gate_in_loop,
        qkv_g_bthd,
        lambda q, k, v, a: rgla.simple_gla(q, k, v, F.logsigmoid(a) / 8)[0],
    ),
    # gla
    Case("gla_fla_recurrent", "gla", gla_fla_recurrent, qkv_gk_bthd, _gla_ref),
    Case("gla_paper_alpha", "gla", gla_paper_alpha, qkv_gk_bthd, _gla_ref),
    Case("gla_parallel_factored", "gla", gla_parallel_factored, qkv_gk_bthd, _gla_ref),
    Case(
        "gla_einsum_bthd_h0",
        "gla",
        gla_einsum_bthd_h0,
        _gla_h0_inputs,
        lambda q, k, v, gk, h0: rgla.gla(q, k, v, gk=gk, initial_state=h0)[0],
    ),
    Case("gla_module", "gla", gla_module, _layer_input, _gla_module_ref),
    # delta_rule
    Case("delta_fla_recurrent", "delta_rule", delta_fla_recurrent, _bhtd(delta_bthd), _delta_ref_bhtd),
    Case("delta_fla_chunkwise", "delta_rule", delta_fla_chunkwise, _bhtd(delta_bthd), _delta_ref_bhtd),
    Case("delta_matmul_bthd", "delta_rule", delta_matmul_bthd, delta_bthd, _delta_ref),
    Case("delta_householder", "delta_rule", delta_householder, delta_bthd, _delta_ref),
    Case("delta_state_vk", "delta_rule", delta_state_vk, delta_bthd, _delta_ref),
    # gated_delta_rule
    Case("gdn_fla_recurrent", "gated_delta_rule", gdn_fla_recurrent, gdelta_bthd, _gdn_ref),
    Case("gdn_transformers_style", "gated_delta_rule", gdn_transformers_style, gdelta_bthd, _gdn_tf_ref),
    Case("gdn_fla_chunk", "gated_delta_rule", gdn_fla_chunk, gdelta_bthd, _gdn_ref),
    Case("gdn_paper_alpha_vk", "gated_delta_rule", gdn_paper_alpha_vk, gdelta_bthd, _gdn_ref),
    # kda
    Case("kda_fla_recurrent", "kda", kda_fla_recurrent, kda_bthd, _kda_ref),
    Case("kda_alpha_bhtd", "kda", kda_alpha_bhtd, _kda_alpha_inputs, _kda_alpha_ref),
    Case("kda_module_style", "kda", kda_module_style, kda_bthd, _kda_norm_ref),
    # rwkv6
    Case("rwkv6_fla_recurrent", "rwkv6", rwkv6_fla_recurrent, rwkv_bhtd, _rwkv_ref),
    Case(
        "rwkv6_official_timemix",
        "rwkv6",
        rwkv6_official_timemix,
        rwkv_bhtd,
        lambda r, k, v, w, u: _rwkv_ref(r, k, v, w, u, scale=1.0),
    ),
    # hgrn
    Case("hgrn_fla_recurrent", "hgrn", hgrn_fla_recurrent, x_gate_btd, _hgrn_ref),
    Case("hgrn1_lerp", "hgrn", hgrn1_lerp, x_gate_btd, _hgrn1_ref),
    Case("rglru_style", "hgrn", rglru_style, x_gate_btd, _rglru_ref),
    Case("hgrn_heads_split", "hgrn", hgrn_bhtd_heads, x_gate_btd, _hgrn_ref),
    # mamba
    Case("selective_scan_ref_style", "mamba", selective_scan_ref_style, selective_bdl, _sel_ref_bdl),
    Case("mamba_minimal", "mamba", mamba_minimal, selective_bld, _sel_ref_bld),
    Case(
        "mamba_discretize_in_loop",
        "mamba",
        mamba_discretize_in_loop,
        selective_bld,
        lambda u, dl, A, Bm, Cm: _sel_ref_bld(u, dl, A, Bm, Cm) + 0.5 * u,
    ),
    # normalized_linear_attn
    Case("nla_parallel_elu", "normalized_linear_attn", nla_parallel_elu, _nla_inputs, _nla_ref),
    Case("nla_loop_sz", "normalized_linear_attn", nla_loop_sz, _nla_inputs, _nla_ref),
    Case("nla_cumsum", "normalized_linear_attn", nla_cumsum, _nla_inputs, _nla_ref),
    # near misses
    Case("nm_tanh_state", None, nm_tanh_state, qkv_bthd),
    Case("nm_noncausal", None, nm_noncausal, qkv_bthd),
    Case("nm_anticausal", None, nm_anticausal, qkv_bthd),
    Case("nm_strict_causal", None, nm_strict_causal, qkv_bhtd),
    Case("nm_value_axis_decay", None, nm_value_axis_decay, qkv_gk_bthd),
    Case("nm_reset_mid", None, nm_reset_mid, qkv_bthd),
    Case("nm_block_diag_mask", None, nm_block_diag_mask, qkv_bhtd),
    Case("nm_norm_wrong_axis", None, nm_norm_wrong_axis, _nla_inputs),
    Case("nm_delta_q_error", None, nm_delta_q_error, delta_bthd),
    Case("nm_delta_beta_write_only", None, nm_delta_beta_write_only, delta_bthd),
    Case("nm_hgrn_tanh", None, nm_hgrn_tanh, x_gate_btd),
    Case("nm_mamba_prev_state", None, nm_mamba_prev_state, selective_bld),
    Case("nm_softmax_causal", None, nm_softmax_causal, qkv_bhtd),
    # a causal running sum over the heads axis IS linear attention along that axis: rewritten, it must be right
    Case("nm_cumsum_wrong_axis", None, nm_cumsum_wrong_axis, qkv_bthd, note="a rewrite along heads is correct"),
    Case("nm_cumsum_squared", None, nm_cumsum_squared, qkv_bthd),
    Case("nm_bidirectional_decay", None, nm_bidirectional_decay, qkv_bhtd),
    Case("nm_retention_row_gamma", None, nm_retention_row_gamma, qkv_bhtd),
    Case("nm_kda_decay_after_write", None, nm_kda_decay_after_write, kda_bthd),
    Case("nm_rwkv_bonus_on_state", None, nm_rwkv_bonus_on_state, rwkv_bhtd),
    Case("nm_hgrn_prev_output", None, nm_hgrn_prev_output, x_gate_btd),
    Case("nm_norm_eps_outside", None, nm_norm_eps_outside, _nla_inputs),
    Case("nm_gla_gate_from_state", None, nm_gla_gate_from_state, qkv_bthd),
    Case("nm_delta_erase_k_write_q", None, nm_delta_unnormalized_key_reuse, delta_bthd),
]

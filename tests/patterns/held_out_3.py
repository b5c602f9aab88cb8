"""Third held-out set of spellings: how researchers write linear-attention and scan math in their own repos.

Written under independence rules, so that it measures recognition rather than restating it:

* the author did not read the recognizers (``fla_compile/patterns/``), the verifier, the backend, the other
  spelling sets under ``tests/patterns/``, ``benchmarks/recognition.py`` or README.md's table of recognized
  spellings, and did not run the compiler on any of these spellings;
* only ``fla_compile/reference/*.py`` (for ``ref``) and the docstrings / signatures of ``fla_compile/ops`` were
  read;
* public implementations (BlinkDL's RWKV-6 time mixing, mamba_ssm's ``selective_scan_ref``, mamba-minimal,
  mamba.py, transformers' Jamba / FalconMamba / RecurrentGemma slow paths, fast-transformers, Based, Rebased,
  HGRN / HGRN2, minGRU, RetNet, Qwen3-Next's gated delta rule) were used only to recall the algorithms, which
  were then retyped with their own names, layouts and loop styles; no code was copied.

Every positive's ``fn`` equals its ``ref`` (computed with ``fla_compile.reference``) in eager float64. Near misses
(``family=None``) are realistic bugs or genuinely different models that must stay as written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla_compile.reference import delta as ref_delta
from fla_compile.reference import gla as ref_gla
from fla_compile.reference import hgrn as ref_hgrn
from fla_compile.reference import mamba as ref_mamba
from fla_compile.reference import normalized as ref_norm
from fla_compile.reference import rwkv6 as ref_rwkv6


@dataclass(frozen=True)
class Case:
    name: str
    family: str | None
    fn: Callable
    inputs: Callable
    ref: Callable | None = None
    note: str = ""


# sizes: batch, time, heads, key dim, value dim, chunk; mamba channels and states; hgrn width
B, T, H, K, V = 2, 8, 2, 8, 6
CHUNK = 4
DM, NM = 6, 4
DH = 12
EPS = 1e-6


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _n(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _u(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=g, dtype=torch.float64)


def _to(dtype, device, *xs: torch.Tensor) -> tuple:
    return tuple(x.to(dtype=dtype, device=device) for x in xs)


def _bt(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, D] <-> [B, T, H, D]."""
    return x.transpose(1, 2)


# ----------------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------------


def _rwkv_heads_first_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    r = _n(g, B, H, T, K)
    k = _n(g, B, H, T, K) * K**-0.5
    v = _n(g, B, H, T, V)
    w_raw = 0.5 * _n(g, B, H, T, K) - 1.0  # decay = exp(-exp(w_raw))
    u = 0.5 * _n(g, H, K)
    return _to(dtype, device, r, k, v, w_raw, u)


def _rwkv_time_first_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    r = _n(g, B, T, H, K)
    k = _n(g, B, T, H, K) * K**-0.5
    v = _n(g, B, T, H, V)
    w_log = -torch.exp(0.5 * _n(g, B, T, H, K) - 1.0)  # log-space decay
    u = 0.5 * _n(g, H, K)
    return _to(dtype, device, r, k, v, w_log, u)


def _rwkv_raw_time_first_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    r = _n(g, B, T, H, K)
    k = _n(g, B, T, H, K) * K**-0.5
    v = _n(g, B, T, H, V)
    w_raw = 0.5 * _n(g, B, T, H, K) - 1.0
    u = 0.5 * _n(g, H, K)
    return _to(dtype, device, r, k, v, w_raw, u)


def _rwkv_state_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed + 1000)
    r, k, v, w, u = _rwkv_time_first_inputs(torch.float64, "cpu", seed)
    s0 = 0.5 * _n(g, B, H, K, V)
    return _to(dtype, device, r, k, v, w, u, s0)


def _rwkv_flat_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    C = H * K
    r = _n(g, B, T, C)
    k = _n(g, B, T, C) * K**-0.5
    v = _n(g, B, T, C)
    w_raw = 0.5 * _n(g, B, T, C) - 1.0
    return _to(dtype, device, r, k, v, w_raw)


def _rwkv_time_major_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    r = _n(g, T, B, H, K)
    k = _n(g, T, B, H, K) * K**-0.5
    v = _n(g, T, B, H, V)
    w_log = F.logsigmoid(_n(g, T, B, H, K) + 2.5)
    u = 0.5 * _n(g, H, K)
    return _to(dtype, device, r, k, v, w_log, u)


def _rwkv_chunk_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    r = _n(g, B, H, T, K)
    k = _n(g, B, H, T, K) * K**-0.5
    v = _n(g, B, H, T, V)
    w_log = -torch.exp(0.5 * _n(g, B, H, T, K) - 1.0)
    u = 0.5 * _n(g, H, K)
    return _to(dtype, device, r, k, v, w_log, u)


def _hgrn_x_raw_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    return _to(dtype, device, _n(g, B, T, DH), _n(g, B, T, DH))


def _hgrn_log_state_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    x = _n(g, B, T, DH)
    gate = F.logsigmoid(_n(g, B, T, DH) + 1.0)
    h0 = _n(g, B, DH)
    return _to(dtype, device, x, gate, h0)


def _hgrn_log_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    x = _n(g, B, T, DH)
    gate = F.logsigmoid(_n(g, B, T, DH) + 1.0)
    return _to(dtype, device, x, gate)


def _rglru_paper_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    x = _n(g, B, T, DH)
    gate_x = _n(g, B, T, DH)
    gate_a = _n(g, B, T, DH)
    lam = 3.0 + 0.5 * _n(g, DH)  # sigmoid(lam) in about (0.9, 0.99)
    return _to(dtype, device, x, gate_x, gate_a, lam)


def _rglru_hf_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    x = _n(g, B, T, DH)
    gate_x = _n(g, B, T, DH)
    gate_a = _n(g, B, T, DH)
    a_param = 0.3 * _n(g, DH) - 3.0
    return _to(dtype, device, x, gate_x, gate_a, a_param)


def _lru_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    x = _n(g, B, DH, T)  # channels before time
    nu_log = 0.5 * _n(g, DH) - 2.5
    return _to(dtype, device, x, nu_log)


def _hgrn_time_major_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    x = _n(g, T, B, DH)
    a = 0.2 + 0.79 * _u(g, T, B, DH)  # decay probability in (0.2, 0.99)
    return _to(dtype, device, x, a)


def _mingru_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    return _to(dtype, device, _n(g, B, T, DH), _n(g, B, T, DH))


def _hgrn_heads_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    return _to(dtype, device, _n(g, B, T, H, DH // H), _n(g, B, T, H, DH // H) + 1.0)


def _mamba_channels_first_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    u = _n(g, B, DM, T)
    delta = 0.5 * _n(g, B, DM, T) - 1.0
    A = -torch.arange(1, NM + 1, dtype=torch.float64).repeat(DM, 1) * (1.0 + 0.1 * _u(g, DM, NM))
    Bv = _n(g, B, NM, T)
    Cv = _n(g, B, NM, T)
    Dskip = _n(g, DM)
    z = _n(g, B, DM, T)
    delta_bias = 0.1 * _n(g, DM)
    return _to(dtype, device, u, delta, A, Bv, Cv, Dskip, z, delta_bias)


def _mamba_channels_first_noz_inputs(dtype=torch.float32, device="cpu", seed=0):
    u, delta, A, Bv, Cv, Dskip, _, delta_bias = _mamba_channels_first_inputs(torch.float64, "cpu", seed)
    return _to(dtype, device, u, delta, A, Bv, Cv, Dskip, delta_bias)


def _mamba_minimal_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    x = _n(g, B, T, DM)
    delta_raw = 0.5 * _n(g, B, T, DM) - 1.0
    A_log = torch.log(torch.arange(1, NM + 1, dtype=torch.float64)).repeat(DM, 1) + 0.1 * _n(g, DM, NM)
    Bm = _n(g, B, T, NM)
    Cm = _n(g, B, T, NM)
    Dp = _n(g, DM)
    return _to(dtype, device, x, delta_raw, A_log, Bm, Cm, Dp)


def _mamba_py_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    x = _n(g, B, T, DM)
    delta = F.softplus(0.5 * _n(g, B, T, DM) - 1.0)
    A = -torch.exp(0.3 * _n(g, DM, NM))
    Bm = _n(g, B, T, NM)
    Cm = _n(g, B, T, NM)
    Dp = _n(g, DM)
    return _to(dtype, device, x, delta, A, Bm, Cm, Dp)


def _jamba_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    hidden = _n(g, B, DM, T)
    gate = _n(g, B, DM, T)
    time_step = 0.5 * _n(g, B, T, DM) - 1.0
    Bm = _n(g, B, T, NM)
    Cm = _n(g, B, T, NM)
    A_log = torch.log(torch.arange(1, NM + 1, dtype=torch.float64)).repeat(DM, 1)
    Dp = _n(g, DM)
    dt_bias = 0.1 * _n(g, DM)
    return _to(dtype, device, hidden, gate, time_step, Bm, Cm, A_log, Dp, dt_bias)


def _falcon_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed + 1000)
    hidden, gate, time_step, Bm, Cm, A_log, Dp, dt_bias = _jamba_inputs(torch.float64, "cpu", seed)
    ssm_state = 0.5 * _n(g, B, DM, NM)
    return _to(dtype, device, hidden, gate, time_step, Bm, Cm, A_log, Dp, dt_bias, ssm_state)


def _mamba_module_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    x = _n(g, B, T, DM)
    dt_raw = 0.5 * _n(g, B, T, DM) - 1.0
    Bm = _n(g, B, T, NM)
    Cm = _n(g, B, T, NM)
    z = _n(g, B, T, DM)
    return _to(dtype, device, x, dt_raw, Bm, Cm, z)


def _mamba_plain_inputs(dtype=torch.float32, device="cpu", seed=0):
    """Time-first x, positive dt, negative A, B, C: the recurrence with no work around it."""
    g = _gen(seed)
    x = _n(g, B, T, DM)
    dt = F.softplus(0.5 * _n(g, B, T, DM) - 1.0)
    A = -torch.exp(0.3 * _n(g, DM, NM))
    Bm = _n(g, B, T, NM)
    Cm = _n(g, B, T, NM)
    return _to(dtype, device, x, dt, A, Bm, Cm)


def _mamba_plain_state_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed + 1000)
    x, dt, A, Bm, Cm = _mamba_plain_inputs(torch.float64, "cpu", seed)
    h0 = 0.5 * _n(g, B, DM, NM)
    return _to(dtype, device, x, dt, A, Bm, Cm, h0)


def _qkv_time_first_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    return _to(dtype, device, _n(g, B, T, H, K), _n(g, B, T, H, K), _n(g, B, T, H, V))


def _qkv_heads_first_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    return _to(dtype, device, _n(g, B, H, T, K), _n(g, B, H, T, K), _n(g, B, H, T, V))


def _norm_state_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    q, k, v = _n(g, B, H, T, K), _n(g, B, H, T, K), _n(g, B, H, T, V)
    S0 = _u(g, B, H, K, V)
    z0 = 1.0 + _u(g, B, H, K)
    return _to(dtype, device, q, k, v, S0, z0)


def _based_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    d = 4  # Based projects q and k to a small feature dim before the Taylor map
    return _to(dtype, device, _n(g, B, H, T, d), _n(g, B, H, T, d), _n(g, B, H, T, V))


def _based_time_first_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    d = 4
    return _to(dtype, device, _n(g, B, T, H, d), _n(g, B, T, H, d), _n(g, B, T, H, V))


def _performer_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    q = _n(g, B, T, H, K) * K**-0.25
    k = _n(g, B, T, H, K) * K**-0.25
    v = _n(g, B, T, H, V)
    proj = _n(g, 8, K)  # m = 8 random features
    return _to(dtype, device, q, k, v, proj)


def _gla_time_first_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    q, k, v = _n(g, B, T, H, K), _n(g, B, T, H, K), _n(g, B, T, H, V)
    gk = F.logsigmoid(_n(g, B, T, H, K) + 1.0) / 4
    return _to(dtype, device, q, k, v, gk)


def _gla_heads_first_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    q, k, v = _n(g, B, H, T, K), _n(g, B, H, T, K), _n(g, B, H, T, V)
    gk = F.logsigmoid(_n(g, B, H, T, K) + 1.0) / 4
    return _to(dtype, device, q, k, v, gk)


def _hgrn2_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    return _to(dtype, device, _n(g, B, T, H, K), _n(g, B, T, H, K), _n(g, B, T, H, V))


def _simple_gla_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    q, k, v = _n(g, B, T, H, K), _n(g, B, T, H, K), _n(g, B, T, H, V)
    gate = F.logsigmoid(_n(g, B, T, H) + 2.0)
    return _to(dtype, device, q, k, v, gate)


def _delta_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    q, k, v = _n(g, B, T, H, K), _n(g, B, T, H, K), _n(g, B, T, H, V)
    beta = torch.sigmoid(_n(g, B, T, H))
    return _to(dtype, device, q, k, v, beta)


def _qwen_gdn_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    q, k, v = _n(g, B, T, H, K), _n(g, B, T, H, K), _n(g, B, T, H, V)
    a_raw = _n(g, B, T, H)
    b_raw = _n(g, B, T, H)
    A_log = torch.log(1.0 + 4.0 * _u(g, H))
    dt_bias = 0.1 * _n(g, H)
    return _to(dtype, device, q, k, v, a_raw, b_raw, A_log, dt_bias)


def _kda_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    q = _n(g, B, T, H, K)
    k = F.normalize(_n(g, B, T, H, K), dim=-1)
    v = _n(g, B, T, H, V)
    gk = F.logsigmoid(_n(g, B, T, H, K) + 2.0)
    beta = torch.sigmoid(_n(g, B, T, H))
    return _to(dtype, device, q, k, v, gk, beta)


def _mamba_dt_state_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed + 1000)
    x, dt, A, Bm, Cm = _mamba_plain_inputs(torch.float64, "cpu", seed)
    w = 0.3 * _n(g, DM)
    return _to(dtype, device, x, dt, A, Bm, Cm, w)


def _gru_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    x = _n(g, B, T, DH)
    z_raw = _n(g, B, T, DH)
    W = _n(g, DH, DH) / math.sqrt(DH)
    return _to(dtype, device, x, z_raw, W)


def _mlstm_inputs(dtype=torch.float32, device="cpu", seed=0):
    g = _gen(seed)
    q, k, v = _n(g, B, T, H, K), _n(g, B, T, H, K) * K**-0.5, _n(g, B, T, H, V)
    i_raw = 0.5 * _n(g, B, T, H)
    f_raw = _n(g, B, T, H) + 2.0
    return _to(dtype, device, q, k, v, i_raw, f_raw)


# ----------------------------------------------------------------------------------------------------------------
# rwkv6
# ----------------------------------------------------------------------------------------------------------------


def rwkv6_blinkdl_heads_first(r, k, v, w, u):
    decay = torch.exp(-torch.exp(w))
    nb, nh, L, hs = r.shape
    s = torch.zeros(nb, nh, hs, v.shape[-1], dtype=r.dtype, device=r.device)
    ys = []
    for t in range(L):
        kv = k[:, :, t, :, None] * v[:, :, t, None, :]
        y = (r[:, :, t, :, None] * (u[None, :, :, None] * kv + s)).sum(dim=2)
        s = kv + decay[:, :, t, :, None] * s
        ys.append(y)
    return torch.stack(ys, dim=2)


def _ref_rwkv6_heads_first_raw(r, k, v, w, u):
    o, _ = ref_rwkv6.rwkv6(_bt(r), _bt(k), _bt(v), _bt(-torch.exp(w)), u, scale=1.0)
    return _bt(o)


def rwkv6_matmul_prealloc(r, k, v, w, u):
    nb, L, nh, dk = r.shape
    dv = v.shape[-1]
    state = r.new_zeros(nb, nh, dk, dv)
    out = v.new_empty(nb, L, nh, dv)
    bonus = u.unsqueeze(-1)
    for t in range(L):
        kv = k[:, t].unsqueeze(-1) @ v[:, t].unsqueeze(-2)
        out[:, t] = (r[:, t].unsqueeze(-2) @ (state + bonus * kv)).squeeze(-2)
        state = state * w[:, t].exp().unsqueeze(-1) + kv
    return out


def _ref_rwkv6_time_first(r, k, v, w, u):
    return ref_rwkv6.rwkv6(r, k, v, w, u, scale=1.0)[0]


def rwkv6_carry_state(r, k, v, w, u, s0):
    s = s0.clone()
    outs = []
    for t in range(r.shape[1]):
        rt, kt, vt = r[:, t], k[:, t], v[:, t]
        from_state = torch.einsum("bhi,bhij->bhj", rt, s)
        current = torch.einsum("bhi,hi,bhi->bh", rt, u, kt)[..., None] * vt
        outs.append(from_state + current)
        s = torch.exp(w[:, t])[..., None] * s + torch.einsum("bhi,bhj->bhij", kt, vt)
    return torch.stack(outs, 1), s


def _ref_rwkv6_state(r, k, v, w, u, s0):
    return ref_rwkv6.rwkv6(r, k, v, w, u, scale=1.0, initial_state=s0)[0]


class RWKV6TimeMixCore(nn.Module):
    """The WKV part of an RWKV-6 block: r, k, v, w already projected, [B, T, C] with C = heads * head_size."""

    def __init__(self, n_head: int, head_size: int):
        super().__init__()
        self.n_head = n_head
        self.head_size = head_size
        gen = torch.Generator().manual_seed(1234)
        self.time_faaaa = nn.Parameter(0.3 * torch.randn(n_head, head_size, generator=gen, dtype=torch.float64))

    def forward(self, r, k, v, w):
        nb, L, C = r.shape
        nh, n = self.n_head, self.head_size
        r = r.view(nb, L, nh, n)
        k = k.view(nb, L, nh, n)
        v = v.view(nb, L, nh, n)
        w = torch.exp(-torch.exp(w.view(nb, L, nh, n)))
        u = self.time_faaaa.to(device=r.device, dtype=r.dtype)
        state = torch.zeros(nb, nh, n, n, device=r.device, dtype=r.dtype)
        out = torch.zeros_like(v)
        for t in range(L):
            kv = k[:, t, :, :, None] * v[:, t, :, None, :]
            out[:, t] = torch.einsum("bhk,bhkv->bhv", r[:, t], state + u[:, :, None] * kv)
            state = state * w[:, t, :, :, None] + kv
        return out.reshape(nb, L, C)


_RWKV6_MODULE = RWKV6TimeMixCore(H, K)


def _ref_rwkv6_module(r, k, v, w):
    nb, L, C = r.shape
    sh = (nb, L, H, K)
    u = _RWKV6_MODULE.time_faaaa.detach().to(device=r.device, dtype=r.dtype)
    o, _ = ref_rwkv6.rwkv6(r.view(sh), k.view(sh), v.view(sh), -torch.exp(w.view(sh)), u, scale=1.0)
    return o.reshape(nb, L, C)


def rwkv6_per_sequence(r, k, v, w, u):
    """One sequence at a time, as the single-stream inference demos run; state [H, K, V]."""
    nb, L, nh, n = r.shape
    m = v.shape[-1]
    results = []
    for b in range(nb):
        state = torch.zeros(nh, n, m, dtype=r.dtype, device=r.device)
        rows = []
        for t in range(L):
            kk = k[b, t].view(nh, n, 1)
            vv = v[b, t].view(nh, 1, m)
            rr = r[b, t].view(nh, 1, n)
            kv = kk @ vv
            rows.append((rr @ (u.view(nh, n, 1) * kv + state)).view(nh, m))
            state = kv + torch.exp(-torch.exp(w[b, t])).view(nh, n, 1) * state
        results.append(torch.stack(rows))
    return torch.stack(results)


def _ref_rwkv6_time_first_raw(r, k, v, w, u):
    return ref_rwkv6.rwkv6(r, k, v, -torch.exp(w), u, scale=1.0)[0]


def rwkv6_chunked(r, k, v, w, u):
    nb, nh, L, dk = r.shape
    S = r.new_zeros(nb, nh, dk, v.shape[-1])
    strict = torch.tril(torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=r.device), diagonal=-1)
    out = []
    for c0 in range(0, L, CHUNK):
        rc, kc, vc, wc = (x[:, :, c0 : c0 + CHUNK] for x in (r, k, v, w))
        cum = wc.cumsum(2)  # decay through position i, inclusive
        cum_ex = cum - wc  # decay before position i
        o = (rc * cum_ex.exp()) @ S
        diff = cum_ex[:, :, :, None, :] - cum[:, :, None, :, :]  # [b, h, i, j, k]
        diff = diff.masked_fill(~strict[:, :, None], float("-inf"))
        att = (rc[:, :, :, None, :] * diff.exp() * kc[:, :, None, :, :]).sum(-1)
        o = o + att @ vc
        o = o + (rc * u[None, :, None, :] * kc).sum(-1, keepdim=True) * vc
        out.append(o)
        last = cum[:, :, -1:, :]
        S = last.transpose(-1, -2).exp() * S + (kc * (last - cum).exp()).transpose(-1, -2) @ vc
    return torch.cat(out, dim=2)


def _ref_rwkv6_chunk(r, k, v, w, u):
    o, _ = ref_rwkv6.rwkv6(_bt(r), _bt(k), _bt(v), _bt(w), u, scale=1.0)
    return _bt(o)


def rwkv6_time_major_unbind(r, k, v, w, u):
    S = torch.zeros(r.shape[1], r.shape[2], r.shape[3], v.shape[-1], dtype=v.dtype, device=v.device)
    ys = []
    for rt, kt, vt, wt in zip(r.unbind(0), k.unbind(0), v.unbind(0), w.unbind(0)):
        kv = torch.einsum("bhk,bhv->bhkv", kt, vt)
        ys.append(torch.einsum("bhk,bhkv->bhv", rt, S + u[..., None] * kv))
        S = wt.exp()[..., None] * S + kv
    return torch.stack(ys)


def _ref_rwkv6_time_major(r, k, v, w, u):
    tr = lambda x: x.transpose(0, 1)
    return tr(ref_rwkv6.rwkv6(tr(r), tr(k), tr(v), tr(w), u, scale=1.0)[0])


def rwkv6_state_vk(r, k, v, w, u):
    """State kept as [V, K] (value rows), as RWKV-7-era code keeps it."""
    nb, L, nh, dk = r.shape
    dv = v.shape[-1]
    decay = torch.exp(-torch.exp(w))
    st = r.new_zeros(nb, nh, dv, dk)
    outs = []
    for t in range(L):
        vk = v[:, t, :, :, None] * k[:, t, :, None, :]
        outs.append(((st + vk * u[:, None, :]) * r[:, t, :, None, :]).sum(-1))
        st = st * decay[:, t, :, None, :] + vk
    return torch.stack(outs, dim=1), st


# ----------------------------------------------------------------------------------------------------------------
# hgrn / elementwise scans
# ----------------------------------------------------------------------------------------------------------------

HGRN_LOWER = 0.25


def hgrn1_lower_bound(x, f_raw):
    f = HGRN_LOWER + (1 - HGRN_LOWER) * torch.sigmoid(f_raw)
    i = F.silu(x) * (1 - f)
    h = torch.zeros_like(x[:, 0])
    hs = []
    for t in range(x.shape[1]):
        h = f[:, t] * h + i[:, t]
        hs.append(h)
    return torch.stack(hs, dim=1)


def _ref_hgrn1(x, f_raw):
    f = HGRN_LOWER + (1 - HGRN_LOWER) * torch.sigmoid(f_raw)
    return ref_hgrn.hgrn(F.silu(x) * (1 - f), torch.log(f))[0]


def hgrn_logspace_prealloc(x, g, h0):
    o = torch.empty_like(x)
    h = h0
    for t in range(x.size(1)):
        h = torch.exp(g[:, t]) * h + x[:, t]
        o[:, t] = h
    return o, h


def _ref_hgrn_state(x, g, h0):
    return ref_hgrn.hgrn(x, g, initial_state=h0)[0]


RGLRU_C = 8.0


def rglru_paper(x, gate_x, gate_a, lam):
    r = torch.sigmoid(gate_a)
    i = torch.sigmoid(gate_x)
    a = torch.sigmoid(lam) ** (RGLRU_C * r)
    xin = torch.sqrt(1 - a * a) * (i * x)
    h = x.new_zeros(x.shape[0], x.shape[2])
    y = []
    for t in range(x.shape[1]):
        h = a[:, t] * h + xin[:, t]
        y.append(h)
    return torch.stack(y, 1)


def _ref_rglru_paper(x, gate_x, gate_a, lam):
    log_a = RGLRU_C * torch.sigmoid(gate_a) * F.logsigmoid(lam)
    a = torch.exp(log_a)
    xin = torch.sqrt(1 - a * a) * (torch.sigmoid(gate_x) * x)
    return ref_hgrn.hgrn(xin, log_a)[0]


def _rglru_hf_pre(x, gate_x, gate_a, a_param):
    log_a = -8.0 * torch.sigmoid(gate_a) * F.softplus(a_param)
    mult = torch.sqrt(1 - torch.exp(2 * log_a))
    reset = torch.zeros(x.shape[1], 1, dtype=torch.bool, device=x.device)
    reset[0] = True
    mult = torch.where(reset, torch.ones_like(mult), mult)
    return log_a, x * torch.sigmoid(gate_x) * mult


def rglru_softplus_reset(x, gate_x, gate_a, a_param):
    log_a, normed = _rglru_hf_pre(x, gate_x, gate_a, a_param)
    a = torch.exp(log_a)
    h = torch.zeros_like(normed[:, 0])
    out = torch.zeros_like(normed)
    for t in range(normed.shape[1]):
        h = a[:, t] * h + normed[:, t]
        out[:, t] = h
    return out


def _ref_rglru_hf(x, gate_x, gate_a, a_param):
    log_a, normed = _rglru_hf_pre(x, gate_x, gate_a, a_param)
    return ref_hgrn.hgrn(normed, log_a)[0]


def lru_real_diag_channels_first(x, nu_log):
    lam = torch.exp(-torch.exp(nu_log))
    gamma = torch.sqrt(1 - lam**2)
    u = gamma[:, None] * x
    h = x.new_zeros(x.shape[:2])
    cols = []
    for t in range(x.shape[-1]):
        h = lam * h + u[..., t]
        cols.append(h.unsqueeze(-1))
    return torch.cat(cols, dim=-1)


def _ref_lru(x, nu_log):
    lam = torch.exp(-torch.exp(nu_log))
    gamma = torch.sqrt(1 - lam**2)
    xt = (gamma[:, None] * x).transpose(1, 2)
    g = (-torch.exp(nu_log)).expand(xt.shape)
    return ref_hgrn.hgrn(xt, g)[0].transpose(1, 2)


def hgrn_time_major_inplace(x, a):
    h = torch.zeros_like(x[0])
    out = torch.empty_like(x)
    for t in range(x.shape[0]):
        h.mul_(a[t]).add_(x[t])
        out[t] = h
    return out


def _ref_hgrn_time_major(x, a):
    return ref_hgrn.hgrn(x.transpose(0, 1), a.log().transpose(0, 1))[0].transpose(0, 1)


def mingru_sequential(z_raw, h_tilde):
    z = torch.sigmoid(z_raw)
    h = torch.zeros_like(h_tilde[:, 0])
    outs = []
    for t in range(h_tilde.shape[1]):
        h = (1 - z[:, t]) * h + z[:, t] * h_tilde[:, t]
        outs.append(h)
    return torch.stack(outs, dim=1)


def _ref_mingru(z_raw, h_tilde):
    z = torch.sigmoid(z_raw)
    return ref_hgrn.hgrn(z * h_tilde, torch.log(1 - z))[0]


def hgrn_multihead_sigmoid(x, f_raw):
    f = torch.sigmoid(f_raw)
    state = x.new_zeros(x.shape[0], x.shape[2], x.shape[3])
    outs = []
    for xt, ft in zip(x.unbind(1), f.unbind(1)):
        state = ft * state + (1 - ft) * xt
        outs.append(state)
    return torch.stack(outs, 1)


def _ref_hgrn_multihead(x, f_raw):
    nb, L, nh, d = x.shape
    f = torch.sigmoid(f_raw)
    o, _ = ref_hgrn.hgrn(((1 - f) * x).reshape(nb, L, nh * d), torch.log(f).reshape(nb, L, nh * d))
    return o.reshape(nb, L, nh, d)


def _log_g(x):
    """log of minGRU's positive activation g(x) = x + 0.5 (x >= 0), sigmoid(x) (x < 0)."""
    return torch.where(x >= 0, (F.relu(x) + 0.5).log(), -F.softplus(-x))


def mingru_parallel_log_space(k_raw, h_raw):
    log_z = -F.softplus(-k_raw)
    log_coeffs = -F.softplus(k_raw)  # log(1 - z)
    log_values = log_z + _log_g(h_raw)
    a_star = log_coeffs.cumsum(dim=1)
    log_h = a_star + torch.logcumsumexp(log_values - a_star, dim=1)
    return log_h.exp()


def _ref_mingru_parallel(k_raw, h_raw):
    log_values = -F.softplus(-k_raw) + _log_g(h_raw)
    return ref_hgrn.hgrn(log_values.exp(), -F.softplus(k_raw))[0]


# ----------------------------------------------------------------------------------------------------------------
# mamba
# ----------------------------------------------------------------------------------------------------------------


def _mamba_ref(x, dt, A, Bm, Cm, D=None, z=None, h0=None):
    """Time-first [B, T, D] x and dt (already positive), B/C [B, T, N], through the reference scan."""
    y, _ = ref_mamba.selective_scan(dt * x, dt, A, Bm, Cm, initial_state=h0)
    if D is not None:
        y = y + D * x
    if z is not None:
        y = y * F.silu(z)
    return y


def mamba_selective_scan_ref_style(u, delta, A, Bv, Cv, Dskip, z, delta_bias):
    delta = F.softplus(delta + delta_bias[..., None])
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    dBu = torch.einsum("bdl,bnl,bdl->bdln", delta, Bv, u)
    x = u.new_zeros(u.shape[0], A.shape[0], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = dA[:, :, i] * x + dBu[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, Cv[:, :, i]))
    y = torch.stack(ys, dim=2)
    out = y + u * Dskip[:, None]
    return out * F.silu(z)


def _ref_mamba_cf(u, delta, A, Bv, Cv, Dskip, z, delta_bias):
    dt = F.softplus(delta + delta_bias[..., None]).transpose(1, 2)
    tr = lambda a: a.transpose(1, 2)
    return tr(_mamba_ref(tr(u), dt, A, tr(Bv), tr(Cv), Dskip, tr(z)))


def mamba_scan_last_state(u, delta, A, Bv, Cv, Dskip, delta_bias):
    dt = F.softplus(delta + delta_bias.unsqueeze(-1))
    decay = torch.exp(dt.unsqueeze(-1) * A.unsqueeze(1))  # [b, d, l, n]
    drive = (dt * u).unsqueeze(-1) * Bv.transpose(1, 2).unsqueeze(1)  # [b, d, l, n]
    state = torch.zeros(u.shape[0], A.shape[0], A.shape[1], dtype=u.dtype, device=u.device)
    ys = []
    last_state = None
    for i in range(u.shape[-1]):
        state = decay[:, :, i] * state + drive[:, :, i]
        ys.append((state * Cv[:, None, :, i]).sum(-1))
        if i == u.shape[-1] - 1:
            last_state = state
    out = torch.stack(ys, dim=-1) + Dskip.view(1, -1, 1) * u
    return out, last_state


def _ref_mamba_cf_noz(u, delta, A, Bv, Cv, Dskip, delta_bias):
    dt = F.softplus(delta + delta_bias[..., None]).transpose(1, 2)
    tr = lambda a: a.transpose(1, 2)
    return tr(_mamba_ref(tr(u), dt, A, tr(Bv), tr(Cv), Dskip))


def mamba_minimal_style(x, delta_raw, A_log, Bm, Cm, Dp):
    b, L, d_in = x.shape
    n = A_log.shape[1]
    A = -torch.exp(A_log)
    delta = F.softplus(delta_raw)
    deltaA = torch.exp(torch.einsum("bld,dn->bldn", delta, A))
    deltaB_u = torch.einsum("bld,bln,bld->bldn", delta, Bm, x)
    s = torch.zeros(b, d_in, n, dtype=x.dtype, device=x.device)
    ys = []
    for i in range(L):
        s = deltaA[:, i] * s + deltaB_u[:, i]
        ys.append(torch.einsum("bdn,bn->bd", s, Cm[:, i, :]))
    y = torch.stack(ys, dim=1)
    return y + x * Dp


def _ref_mamba_minimal(x, delta_raw, A_log, Bm, Cm, Dp):
    return _mamba_ref(x, F.softplus(delta_raw), -torch.exp(A_log), Bm, Cm, Dp)


def mambapy_selective_scan_seq(x, delta, A, Bm, Cm, Dp):
    _, L, _ = x.shape
    deltaA = torch.exp(delta.unsqueeze(-1) * A)  # (B, L, ED, N)
    deltaB = delta.unsqueeze(-1) * Bm.unsqueeze(2)  # (B, L, ED, N)
    BX = deltaB * x.unsqueeze(-1)
    h = torch.zeros(x.size(0), x.size(2), A.size(-1), device=x.device, dtype=x.dtype)
    hs = []
    for t in range(L):
        h = deltaA[:, t] * h + BX[:, t]
        hs.append(h)
    hs = torch.stack(hs, dim=1)  # (B, L, ED, N)
    y = (hs @ Cm.unsqueeze(-1)).squeeze(3)
    return y + Dp * x


def _ref_mamba_plain_D(x, dt, A, Bm, Cm, Dp):
    return _mamba_ref(x, dt, A, Bm, Cm, Dp)


def jamba_slow_forward(hidden, gate, time_step, Bm, Cm, A_log, Dp, dt_bias):
    nb, d, L = hidden.shape
    dts = F.softplus(time_step + dt_bias).transpose(1, 2)  # [B, D, L]
    A = -torch.exp(A_log)
    discrete_A = torch.exp(A[None, :, None, :] * dts[:, :, :, None])  # [B, D, L, N]
    discrete_B = dts[:, :, :, None] * Bm[:, None, :, :]
    deltaB_u = discrete_B * hidden[:, :, :, None]
    ssm_state = torch.zeros(nb, d, A.shape[-1], dtype=hidden.dtype, device=hidden.device)
    scan_outputs = []
    for i in range(L):
        ssm_state = discrete_A[:, :, i, :] * ssm_state + deltaB_u[:, :, i, :]
        scan_outputs.append(torch.matmul(ssm_state, Cm[:, i, :].unsqueeze(-1))[:, :, 0])
    scan_output = torch.stack(scan_outputs, dim=-1)
    scan_output = scan_output + hidden * Dp[None, :, None]
    return scan_output * F.silu(gate)


def _ref_jamba(hidden, gate, time_step, Bm, Cm, A_log, Dp, dt_bias):
    dt = F.softplus(time_step + dt_bias)
    tr = lambda a: a.transpose(1, 2)
    return tr(_mamba_ref(tr(hidden), dt, -torch.exp(A_log), Bm, Cm, Dp, tr(gate)))


def _rms(x, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def falcon_mamba_slow_cached(hidden, gate, time_step, Bm, Cm, A_log, Dp, dt_bias, ssm_state):
    Bn, Cn = _rms(Bm), _rms(Cm)
    dts = F.softplus(_rms(time_step) + dt_bias).transpose(1, 2)  # [B, D, L]
    A = -torch.exp(A_log)
    dA = torch.exp(A[None, :, None, :] * dts[..., None])
    dBu = dts[..., None] * Bn[:, None, :, :] * hidden[..., None]
    state = ssm_state.clone()
    outs = []
    for i in range(hidden.shape[-1]):
        state = dA[:, :, i, :] * state + dBu[:, :, i, :]
        outs.append(torch.matmul(state, Cn[:, i, :].unsqueeze(-1)))
    y = torch.cat(outs, dim=-1)  # [B, D, L]
    y = (y + hidden * Dp[None, :, None]) * F.silu(gate)
    return y, state


def _ref_falcon(hidden, gate, time_step, Bm, Cm, A_log, Dp, dt_bias, ssm_state):
    dt = F.softplus(_rms(time_step) + dt_bias)
    tr = lambda a: a.transpose(1, 2)
    return tr(_mamba_ref(tr(hidden), dt, -torch.exp(A_log), _rms(Bm), _rms(Cm), Dp, tr(gate), h0=ssm_state))


class SelectiveSSM(nn.Module):
    """S6 core holding A_log, D and the dt bias as parameters; inputs already projected, time-first."""

    def __init__(self, d_inner: int, d_state: int):
        super().__init__()
        gen = torch.Generator().manual_seed(4321)
        A = torch.arange(1, d_state + 1, dtype=torch.float64).repeat(d_inner, 1)
        self.A_log = nn.Parameter(
            torch.log(A) + 0.05 * torch.randn(d_inner, d_state, generator=gen, dtype=torch.float64)
        )
        self.D = nn.Parameter(torch.randn(d_inner, generator=gen, dtype=torch.float64))
        self.dt_bias = nn.Parameter(0.1 * torch.randn(d_inner, generator=gen, dtype=torch.float64))

    def forward(self, x, dt_raw, Bm, Cm, z):
        p = dict(device=x.device, dtype=x.dtype)
        A = -torch.exp(self.A_log.to(**p))
        dt = F.softplus(dt_raw + self.dt_bias.to(**p))
        h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
        y = torch.empty_like(x)
        for t in range(x.shape[1]):
            h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[:, :, None] * Bm[:, t, None, :]
            y[:, t] = (h * Cm[:, t, None, :]).sum(-1)
        y = y + self.D.to(**p) * x
        return y * F.silu(z)


_MAMBA_MODULE = SelectiveSSM(DM, NM)


def _ref_mamba_module(x, dt_raw, Bm, Cm, z):
    m = _MAMBA_MODULE
    p = dict(device=x.device, dtype=x.dtype)
    with torch.no_grad():
        dt = F.softplus(dt_raw + m.dt_bias.to(**p))
        return _mamba_ref(x, dt, -torch.exp(m.A_log.to(**p)), Bm, Cm, m.D.to(**p), z)


def mamba_discretize_in_loop(x, dt, A, Bm, Cm):
    nb, L, d = x.shape
    h = torch.zeros(nb, d, A.shape[1], dtype=x.dtype, device=x.device)
    ys = torch.zeros_like(x)
    for t in range(L):
        dA = torch.exp(dt[:, t].unsqueeze(-1) * A)
        dBx = (dt[:, t] * x[:, t]).unsqueeze(-1) * Bm[:, t].unsqueeze(1)
        h = h * dA + dBx
        ys[:, t] = (h * Cm[:, t].unsqueeze(1)).sum(-1)
    return ys


def _ref_mamba_plain(x, dt, A, Bm, Cm):
    return _mamba_ref(x, dt, A, Bm, Cm)


def mamba_bmm_readout_state(x, dt, A, Bm, Cm, h0):
    h = h0
    ys = []
    for t in range(x.shape[1]):
        dtt = dt[:, t, :, None]
        h = torch.exp(dtt * A[None]) * h + dtt * x[:, t, :, None] * Bm[:, t, None, :]
        ys.append(torch.bmm(h, Cm[:, t, :, None]).squeeze(-1))
    return torch.stack(ys, 1), h


def _ref_mamba_plain_state(x, dt, A, Bm, Cm, h0):
    return _mamba_ref(x, dt, A, Bm, Cm, h0=h0)


def mamba_state_nd(x, dt, A, Bm, Cm):
    """State laid out [batch, state, channel]: the transpose of mamba_ssm's."""
    At = A.t()  # [N, D]
    s = x.new_zeros(x.shape[0], At.shape[0], At.shape[1])
    outs = []
    for t in range(x.shape[1]):
        s = torch.exp(At * dt[:, t, None, :]) * s + Bm[:, t, :, None] * (dt[:, t] * x[:, t])[:, None, :]
        outs.append(torch.einsum("bnd,bn->bd", s, Cm[:, t]))
    return torch.stack(outs, dim=1)


# ----------------------------------------------------------------------------------------------------------------
# normalized linear attention
# ----------------------------------------------------------------------------------------------------------------


def _elu1(x):
    return F.elu(x) + 1


def linear_transformer_causal_loop(q, k, v):
    q, k = _elu1(q), _elu1(k)
    nb, L, nh, dk = q.shape
    S = q.new_zeros(nb, nh, dk, v.shape[-1])
    z = q.new_zeros(nb, nh, dk)
    outs = []
    for t in range(L):
        S = S + torch.einsum("bhd,bhm->bhdm", k[:, t], v[:, t])
        z = z + k[:, t]
        num = torch.einsum("bhd,bhdm->bhm", q[:, t], S)
        den = torch.einsum("bhd,bhd->bh", q[:, t], z) + EPS
        outs.append(num / den[..., None])
    return torch.stack(outs, dim=1)


def _ref_norm_elu(q, k, v):
    return ref_norm.normalized_linear_attn(_elu1(q), _elu1(k), v, eps=EPS)[0]


def fast_transformers_cumsum(q, k, v):
    Q, K_ = _elu1(q), _elu1(k)
    K_sum = K_.cumsum(1)
    Z = 1.0 / (torch.einsum("nlhi,nlhi->nlh", Q, K_sum) + EPS)
    KV = torch.einsum("nlhd,nlhm->nlhdm", K_, v).cumsum(1)
    out = torch.einsum("nlhd,nlhdm->nlhm", Q, KV)
    return out * Z[..., None]


def _taylor_map(x):
    """Based's second-order Taylor feature map: [1, x / d^(1/4), (x x^T).flatten() / (sqrt(2) sqrt(d))]."""
    d = x.shape[-1]
    rd = math.sqrt(d)
    rrd = math.sqrt(rd)
    x2 = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(start_dim=-2) / math.sqrt(2)
    return torch.cat([x[..., :1] ** 0, x / rrd, x2 / rd], dim=-1)


def based_taylor_cumsum(q, k, v):
    q, k = _taylor_map(q), _taylor_map(k)
    q, k, v = q.unsqueeze(-2), k.unsqueeze(-2), v.unsqueeze(-1)
    num = (q * (k * v).cumsum(dim=2)).sum(dim=-1)
    den = (q * k.cumsum(dim=2)).sum(dim=-1) + 1e-12
    return num / den


def _ref_based_heads_first(q, k, v):
    o, _ = ref_norm.normalized_linear_attn(_bt(_taylor_map(q)), _bt(_taylor_map(k)), _bt(v), eps=1e-12)
    return _bt(o)


def based_taylor_quadratic(q, k, v):
    """Based's quadratic reference: exp(q.k / sqrt(d)) replaced by its 2nd-order Taylor polynomial, no feature map."""
    d = q.shape[-1]
    s = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d)
    A = 1 + s + 0.5 * s * s
    A = torch.tril(A)
    num = torch.einsum("bhij,bjhv->bihv", A, v)
    den = A.sum(-1).transpose(1, 2).unsqueeze(-1) + EPS
    return num / den


def _ref_based_time_first(q, k, v):
    return ref_norm.normalized_linear_attn(_taylor_map(q), _taylor_map(k), v, eps=EPS)[0]


class RebasedAttention(nn.Module):
    """Rebased: learnable (gamma * LN(x) + beta)^2 feature map, parallel masked form with a row-sum normalizer."""

    def __init__(self, head_dim: int):
        super().__init__()
        gen = torch.Generator().manual_seed(777)
        self.gamma = nn.Parameter(1.0 + 0.1 * torch.randn(head_dim, generator=gen, dtype=torch.float64))
        self.beta = nn.Parameter(0.1 * torch.randn(head_dim, generator=gen, dtype=torch.float64))
        self.eps = 1e-6

    def feature_map(self, x):
        x = F.layer_norm(x, x.shape[-1:])
        return (self.gamma.to(x) * x + self.beta.to(x)) ** 2

    def forward(self, q, k, v):
        q, k = self.feature_map(q), self.feature_map(k)
        L = q.shape[-2]
        causal = torch.tril(torch.ones(L, L, device=q.device, dtype=q.dtype))
        A = (q @ k.transpose(-1, -2)) * causal
        return (A @ v) / (A.sum(-1, keepdim=True) + self.eps)


_REBASED = RebasedAttention(K)


def _ref_rebased(q, k, v):
    with torch.no_grad():
        fq, fk = _REBASED.feature_map(q), _REBASED.feature_map(k)
        return _bt(ref_norm.normalized_linear_attn(_bt(fq), _bt(fk), _bt(v), eps=1e-6)[0])


def _favor_map(x, proj):
    m = proj.shape[0]
    return torch.exp(x @ proj.t() - 0.5 * (x * x).sum(-1, keepdim=True)) / math.sqrt(m)


def performer_favor_causal(q, k, v, proj):
    fq, fk = _favor_map(q, proj), _favor_map(k, proj)
    kv_prefix = torch.cumsum(fk.unsqueeze(-1) * v.unsqueeze(-2), dim=1)  # [b, l, h, m, v]
    k_prefix = torch.cumsum(fk, dim=1)
    num = (fq.unsqueeze(-1) * kv_prefix).sum(-2)
    den = (fq * k_prefix).sum(-1, keepdim=True)
    return num / (den + EPS)


def _ref_performer(q, k, v, proj):
    return ref_norm.normalized_linear_attn(_favor_map(q, proj), _favor_map(k, proj), v, eps=EPS)[0]


def normalized_heads_first_with_state(q, k, v, S0, z0):
    q, k = _elu1(q), _elu1(k)
    S, z = S0, z0
    outs = []
    for t in range(q.shape[2]):
        kt, vt, qt = k[:, :, t], v[:, :, t], q[:, :, t]
        S = S + kt.unsqueeze(-1) * vt.unsqueeze(-2)
        z = z + kt
        o = (qt.unsqueeze(-1) * S).sum(-2) / ((qt * z).sum(-1, keepdim=True) + EPS)
        outs.append(o)
    return torch.stack(outs, dim=2), (S, z)


def _ref_norm_state(q, k, v, S0, z0):
    o, _ = ref_norm.normalized_linear_attn(_bt(_elu1(q)), _bt(_elu1(k)), _bt(v), eps=EPS, initial_state=(S0, z0))
    return _bt(o)


def normalized_chunked(q, k, v):
    q, k = _elu1(q), _elu1(k)
    nb, nh, L, dk = q.shape
    S = q.new_zeros(nb, nh, dk, v.shape[-1])
    z = q.new_zeros(nb, nh, dk)
    mask = torch.ones(CHUNK, CHUNK, dtype=q.dtype, device=q.device).tril()
    outs = []
    for start in range(0, L, CHUNK):
        qc, kc, vc = (x[:, :, start : start + CHUNK] for x in (q, k, v))
        A = (qc @ kc.transpose(-1, -2)) * mask
        num = qc @ S + A @ vc
        den = qc @ z.unsqueeze(-1) + A.sum(-1, keepdim=True)
        outs.append(num / (den + EPS))
        S = S + kc.transpose(-1, -2) @ vc
        z = z + kc.sum(-2)
    return torch.cat(outs, 2)


def _ref_norm_elu_heads_first(q, k, v):
    return _bt(ref_norm.normalized_linear_attn(_bt(_elu1(q)), _bt(_elu1(k)), _bt(v), eps=EPS)[0])


# ----------------------------------------------------------------------------------------------------------------
# GLA line and delta line in less common idioms
# ----------------------------------------------------------------------------------------------------------------


def _retnet_log_gamma(nh, like):
    return torch.log(1 - 2.0 ** (-5.0 - torch.arange(nh, dtype=like.dtype, device=like.device)))


def retention_baddbmm(q, k, v):
    nb, nh, L, dk = q.shape
    dv = v.shape[-1]
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(nh, dtype=q.dtype, device=q.device))
    gamma = gamma.repeat(nb)[:, None, None]  # [(b h), 1, 1]
    qf = q.reshape(nb * nh, L, dk)
    kf = k.reshape(nb * nh, L, dk) * dk**-0.5
    vf = v.reshape(nb * nh, L, dv)
    S = q.new_zeros(nb * nh, dk, dv)
    outs = []
    for t in range(L):
        S = torch.baddbmm(S * gamma, kf[:, t, :, None], vf[:, t, None, :])
        outs.append(torch.bmm(qf[:, t, None, :], S))
    return torch.cat(outs, dim=1).view(nb, nh, L, dv)


def _ref_retention_heads_first(q, k, v):
    lg = _retnet_log_gamma(q.shape[1], q)
    return _bt(ref_gla.retention(_bt(q), _bt(k), _bt(v), lg, scale=q.shape[-1] ** -0.5)[0])


def retention_parallel_decay_mask(q, k, v):
    L, nh = q.shape[1], q.shape[2]
    log_gamma = _retnet_log_gamma(nh, q)
    idx = torch.arange(L, device=q.device)
    dist = (idx.view(-1, 1) - idx.view(1, -1)).to(q.dtype)
    decay = torch.where(dist >= 0, torch.exp(log_gamma.view(-1, 1, 1) * dist), torch.zeros((), dtype=q.dtype))
    scores = torch.einsum("bihd,bjhd->bhij", q * q.shape[-1] ** -0.5, k) * decay
    return torch.einsum("bhij,bjhv->bihv", scores, v)


def _ref_retention_time_first(q, k, v):
    return ref_gla.retention(q, k, v, _retnet_log_gamma(q.shape[2], q))[0]


def gla_chunked_einsum(q, k, v, gk):
    dk = q.shape[-1]
    q = q * dk**-0.5
    S = q.new_zeros(q.shape[0], q.shape[2], dk, v.shape[-1])
    causal = torch.triu(torch.ones(CHUNK, CHUNK, device=q.device)).T.bool()  # lower triangle with diagonal
    pieces = []
    for s in range(0, q.shape[1], CHUNK):
        qs, ks, vs, gs = (x[:, s : s + CHUNK] for x in (q, k, v, gk))
        bcum = gs.cumsum(1)  # b c h k
        inter = torch.einsum("bchk,bhkv->bchv", qs * bcum.exp(), S)
        rel = bcum[:, :, None] - bcum[:, None, :]  # b i j h k
        rel = rel.masked_fill(~causal[None, :, :, None, None], float("-inf"))
        A = torch.einsum("bihk,bijhk,bjhk->bhij", qs, rel.exp(), ks)
        intra = torch.einsum("bhij,bjhv->bihv", A, vs)
        pieces.append(inter + intra)
        tail = bcum[:, -1]  # b h k
        S = S * tail.exp()[..., None] + torch.einsum("bjhk,bjhv->bhkv", ks * (tail[:, None] - bcum).exp(), vs)
    return torch.cat(pieces, 1)


def _ref_gla_time_first(q, k, v, gk):
    return ref_gla.gla(q, k, v, gk=gk)[0]


def gla_state_vk(q, k, v, gk):
    scale = q.shape[-1] ** -0.5
    Sv = q.new_zeros(q.shape[0], q.shape[1], v.shape[-1], q.shape[-1])
    ys = []
    for t in range(q.shape[2]):
        Sv = Sv * gk[:, :, t].exp().unsqueeze(-2) + v[:, :, t].unsqueeze(-1) * k[:, :, t].unsqueeze(-2)
        ys.append(torch.matmul(Sv, (q[:, :, t] * scale).unsqueeze(-1)).squeeze(-1))
    return torch.stack(ys, 2)


def _ref_gla_heads_first(q, k, v, gk):
    return _bt(ref_gla.gla(_bt(q), _bt(k), _bt(v), gk=_bt(gk))[0])


HGRN2_LOWER = 0.3


def hgrn2_recurrent(q, f_raw, v):
    f = HGRN2_LOWER + (1 - HGRN2_LOWER) * torch.sigmoid(f_raw)
    k = 1 - f
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    o = torch.empty_like(v)
    for t in range(q.shape[1]):
        S = f[:, t, :, :, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = (q[:, t, :, :, None] * S).sum(-2)
    return o


def _ref_hgrn2(q, f_raw, v):
    f = HGRN2_LOWER + (1 - HGRN2_LOWER) * torch.sigmoid(f_raw)
    return ref_gla.gla(q, 1 - f, v, gk=torch.log(f), scale=1.0)[0]


def simple_gla_cat_steps(q, k, v, g):
    scale = q.shape[-1] ** -0.5
    S = None
    steps = []
    for t in range(q.shape[1]):
        kv = torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        S = kv if S is None else S * torch.exp(g[:, t])[:, :, None, None] + kv
        steps.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S).unsqueeze(1) * scale)
    return torch.cat(steps, dim=1)


def _ref_simple_gla(q, k, v, g):
    return ref_gla.simple_gla(q, k, v, g)[0]


def linear_attn_masked_fill(q, k, v):
    L = q.shape[-2]
    future = torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1)
    scores = (q @ k.mT) * q.shape[-1] ** -0.5
    return scores.masked_fill(future, 0.0) @ v


def _ref_linear_heads_first(q, k, v):
    return _bt(ref_gla.linear_attn(_bt(q), _bt(k), _bt(v))[0])


def delta_rule_householder(q, k, v, beta):
    k = F.normalize(k, p=2, dim=-1)
    nb, L, nh, dk = k.shape
    eye = torch.eye(dk, dtype=k.dtype, device=k.device)
    S = k.new_zeros(nb, nh, dk, v.shape[-1])
    ys = []
    for t in range(L):
        kt = k[:, t].unsqueeze(-1)
        bt = beta[:, t, :, None, None]
        S = (eye - bt * kt @ kt.transpose(-1, -2)) @ S + bt * kt @ v[:, t].unsqueeze(-2)
        ys.append((S.transpose(-1, -2) @ (q[:, t] * dk**-0.5).unsqueeze(-1)).squeeze(-1))
    return torch.stack(ys, 1)


def _ref_delta_householder(q, k, v, beta):
    return ref_delta.delta_rule(q, F.normalize(k, p=2, dim=-1), v, beta)[0]


def gated_delta_vk_state(q, k, v, a_raw, b_raw, A_log, dt_bias):
    g = -A_log.exp() * F.softplus(a_raw + dt_bias)
    beta = b_raw.sigmoid()
    q = q * torch.rsqrt(q.pow(2).sum(-1, keepdim=True) + 1e-6)
    k = k * torch.rsqrt(k.pow(2).sum(-1, keepdim=True) + 1e-6)
    q = q * q.shape[-1] ** -0.5
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # B H T D
    nb, nh, L, dk = k.shape
    M = q.new_zeros(nb, nh, v.shape[-1], dk)  # memory as [V, K]
    out = []
    for t in range(L):
        M = M * g[:, t].exp()[:, :, None, None]
        err = v[:, :, t] - (M @ k[:, :, t, :, None]).squeeze(-1)
        M = M + (beta[:, t, :, None] * err)[..., None] * k[:, :, t, None, :]
        out.append((M @ q[:, :, t, :, None]).squeeze(-1))
    return torch.stack(out, dim=1)


def _ref_gated_delta_qwen(q, k, v, a_raw, b_raw, A_log, dt_bias):
    g = -A_log.exp() * F.softplus(a_raw + dt_bias)
    return ref_delta.gated_delta_rule(q, k, v, g, b_raw.sigmoid(), use_qk_l2norm=True)[0]


def kda_einsum_final_state(q, k, v, gk, beta):
    scale = q.shape[-1] ** -0.5
    S = torch.zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3], dtype=q.dtype, device=q.device)
    ys = []
    for t in range(q.shape[1]):
        S = torch.einsum("bhkv,bhk->bhkv", S, gk[:, t].exp())
        v_hat = torch.einsum("bhkv,bhk->bhv", S, k[:, t])
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], beta[:, t, :, None] * (v[:, t] - v_hat))
        ys.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t]) * scale)
    return torch.stack(ys, 1), S


def _ref_kda(q, k, v, gk, beta):
    return ref_delta.kda(q, k, v, gk, beta)[0]


# ----------------------------------------------------------------------------------------------------------------
# near misses: realistic bugs and different models that must stay as written
# ----------------------------------------------------------------------------------------------------------------


def nm_hgrn_relu_in_loop(x, g):
    h = torch.zeros_like(x[:, 0])
    hs = []
    for t in range(x.shape[1]):
        h = torch.relu(torch.exp(g[:, t]) * h + x[:, t])
        hs.append(h)
    return torch.stack(hs, 1)


def nm_mamba_dt_from_state(x, dt, A, Bm, Cm, w):
    h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    ys = []
    for t in range(x.shape[1]):
        dtt = F.softplus(dt[:, t] + w * h.sum(-1))  # step size reads the state: no longer a linear scan
        h = torch.exp(dtt[..., None] * A) * h + (dtt * x[:, t])[..., None] * Bm[:, t, None, :]
        ys.append((h * Cm[:, t, None, :]).sum(-1))
    return torch.stack(ys, 1)


def nm_normalizer_column_sum(q, k, v):
    q, k = _elu1(q), _elu1(k)
    A = torch.tril(q @ k.transpose(-1, -2))
    return (A @ v) / (A.sum(dim=-2).unsqueeze(-1) + EPS)  # sums over queries, not keys


def nm_rwkv6_bonus_after_update(r, k, v, w, u):
    nb, L, nh, dk = r.shape
    S = r.new_zeros(nb, nh, dk, v.shape[-1])
    outs = []
    for t in range(L):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]
        S = S * w[:, t].exp()[..., None] + kv  # state updated first, then read with the bonus on top
        outs.append(torch.einsum("bhk,bhkv->bhv", r[:, t], S + u[..., None] * kv))
    return torch.stack(outs, 1)


def nm_linear_attn_noncausal(q, k, v):
    q, k = _elu1(q), _elu1(k)
    kv = torch.einsum("bshd,bshm->bhdm", k, v)
    z = k.sum(1)
    num = torch.einsum("bthd,bhdm->bthm", q, kv)
    den = torch.einsum("bthd,bhd->bth", q, z)[..., None] + EPS
    return num / den


def nm_kda_decay_after_write(q, k, v, gk, beta):
    scale = q.shape[-1] ** -0.5
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    ys = []
    for t in range(q.shape[1]):
        kt = k[:, t]
        pred = torch.einsum("bhkv,bhk->bhv", S, kt)
        S = S + torch.einsum("bhk,bhv->bhkv", kt, beta[:, t, :, None] * (v[:, t] - pred))
        S = S * gk[:, t].exp()[..., None]  # decays after the write (KDA decays before it)
        ys.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t] * scale))
    return torch.stack(ys, 1)


def nm_normalized_stale_numerator(q, k, v):
    q, k = _elu1(q), _elu1(k)
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    z = q.new_zeros(q.shape[0], q.shape[2], q.shape[3])
    outs = []
    for t in range(q.shape[1]):
        z = z + k[:, t]
        num = torch.einsum("bhk,bhkv->bhv", q[:, t], S)  # bug: reads S before this step's write
        outs.append(num / ((q[:, t] * z).sum(-1, keepdim=True) + EPS))
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
    return torch.stack(outs, 1)


def nm_softmax_causal(q, k, v):
    L = q.shape[1]
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * q.shape[-1] ** -0.5
    mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    p = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.einsum("bhij,bjhv->bihv", p, v)


def nm_hgrn_anticausal(x, g):
    h = torch.zeros_like(x[:, 0])
    out = torch.empty_like(x)
    for t in reversed(range(x.shape[1])):
        h = torch.exp(g[:, t]) * h + x[:, t]
        out[:, t] = h
    return out


def nm_gru_candidate_reads_state(x, z_raw, W):
    z = torch.sigmoid(z_raw)
    h = torch.zeros_like(x[:, 0])
    outs = []
    for t in range(x.shape[1]):
        cand = torch.tanh(x[:, t] + h @ W)
        h = (1 - z[:, t]) * h + z[:, t] * cand
        outs.append(h)
    return torch.stack(outs, 1)


def nm_delta_predicts_with_query(q, k, v, beta):
    k = F.normalize(k, dim=-1)
    scale = q.shape[-1] ** -0.5
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    ys = []
    for t in range(q.shape[1]):
        pred = torch.einsum("bhkv,bhk->bhv", S, q[:, t] * scale)  # bug: predicts with q, not k
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], beta[:, t, :, None] * (v[:, t] - pred))
        ys.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t] * scale))
    return torch.stack(ys, 1)


def nm_retnet_abs_rowsum_normalized(q, k, v):
    nh, L = q.shape[1], q.shape[2]
    log_gamma = _retnet_log_gamma(nh, q)
    idx = torch.arange(L, device=q.device, dtype=q.dtype)
    dist = idx[:, None] - idx[None, :]
    D = torch.exp(log_gamma[:, None, None] * dist) * (dist >= 0)
    qk = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 * D
    qk = qk / qk.detach().abs().sum(-1, keepdim=True).clamp(min=1)
    return qk @ v


def nm_mamba_tanh_state(x, dt, A, Bm, Cm):
    h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    ys = []
    for t in range(x.shape[1]):
        h = torch.tanh(torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * Bm[:, t, None, :])
        ys.append((h * Cm[:, t, None, :]).sum(-1))
    return torch.stack(ys, 1)


def nm_mlstm_max_normalizer(q, k, v, i_raw, f_raw):
    i_gate = torch.exp(i_raw)
    f_gate = torch.sigmoid(f_raw)
    C = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    n = q.new_zeros(q.shape[0], q.shape[2], q.shape[3])
    hs = []
    for t in range(q.shape[1]):
        ft, it = f_gate[:, t, :, None], i_gate[:, t, :, None]
        C = ft[..., None] * C + it[..., None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        n = ft * n + it * k[:, t]
        num = torch.einsum("bhkv,bhk->bhv", C, q[:, t])
        den = torch.clamp((n * q[:, t]).sum(-1, keepdim=True).abs(), min=1.0)
        hs.append(num / den)
    return torch.stack(hs, 1)


def nm_linear_attn_state_renorm(q, k, v):
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    outs = []
    for t in range(q.shape[1]):
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        S = S / S.flatten(-2).norm(dim=-1).clamp_min(1.0)[..., None, None]  # keep the memory bounded
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, 1)


def nm_cumsum_over_heads(q, k, v):
    q, k = _elu1(q), _elu1(k)  # [B, H, T, D]
    kv = (k.unsqueeze(-1) * v.unsqueeze(-2)).cumsum(dim=1)  # layout bug: dim 1 is heads here
    ks = k.cumsum(dim=1)
    num = (q.unsqueeze(-1) * kv).sum(-2)
    den = (q * ks).sum(-1, keepdim=True) + EPS
    return num / den


# ----------------------------------------------------------------------------------------------------------------
# the cases
# ----------------------------------------------------------------------------------------------------------------

CASES: list[Case] = [
    # rwkv6
    Case(
        "rwkv6_blinkdl_heads_first",
        "rwkv6",
        rwkv6_blinkdl_heads_first,
        _rwkv_heads_first_inputs,
        _ref_rwkv6_heads_first_raw,
        "BlinkDL-style WKV loop, [B,H,T,K], decay exp(-exp(w)), (u*kv + s) read before s = kv + w*s",
    ),
    Case(
        "rwkv6_matmul_prealloc",
        "rwkv6",
        rwkv6_matmul_prealloc,
        _rwkv_time_first_inputs,
        _ref_rwkv6_time_first,
        "time-first, log-space w, k@v outer product by matmul, r@(S + u*kv), preallocated output buffer",
    ),
    Case(
        "rwkv6_carry_state",
        "rwkv6",
        rwkv6_carry_state,
        _rwkv_state_inputs,
        _ref_rwkv6_state,
        "initial state in, final state out; bonus term as a separate (r.u.k) v einsum",
    ),
    Case(
        "rwkv6_module_time_faaaa",
        "rwkv6",
        _RWKV6_MODULE,
        _rwkv_flat_inputs,
        _ref_rwkv6_module,
        "nn.Module holding u as the time_faaaa Parameter, flat [B,T,C] channels split into heads",
    ),
    Case(
        "rwkv6_per_sequence",
        "rwkv6",
        rwkv6_per_sequence,
        _rwkv_raw_time_first_inputs,
        _ref_rwkv6_time_first_raw,
        "single-stream demo style: loop over batch then time, state [H,K,V], view-based matmuls",
    ),
    Case(
        "rwkv6_chunked",
        "rwkv6",
        rwkv6_chunked,
        _rwkv_chunk_inputs,
        _ref_rwkv6_chunk,
        "chunked torch form (chunk 4): inter-chunk via exclusive cumsum, strict-lower pairwise decays, bonus diagonal",
    ),
    Case(
        "rwkv6_time_major_unbind",
        "rwkv6",
        rwkv6_time_major_unbind,
        _rwkv_time_major_inputs,
        _ref_rwkv6_time_major,
        "time-major [T,B,H,K], zip over unbind(0), logsigmoid log decay",
    ),
    Case(
        "rwkv6_state_vk",
        "rwkv6",
        rwkv6_state_vk,
        _rwkv_raw_time_first_inputs,
        _ref_rwkv6_time_first_raw,
        "state kept as [V,K] (value rows), decay exp(-exp(w)), returns the final state too",
    ),
    # hgrn
    Case(
        "hgrn1_lower_bound",
        "hgrn",
        hgrn1_lower_bound,
        _hgrn_x_raw_inputs,
        _ref_hgrn1,
        "HGRN1: f = lb + (1-lb) sigmoid, input silu(x)*(1-f), h = f*h + i, torch.stack",
    ),
    Case(
        "hgrn_logspace_prealloc",
        "hgrn",
        hgrn_logspace_prealloc,
        _hgrn_log_state_inputs,
        _ref_hgrn_state,
        "log-space gate exp(g)*h + x, initial state, in-place writes into a preallocated output, final state",
    ),
    Case(
        "rglru_paper",
        "hgrn",
        rglru_paper,
        _rglru_paper_inputs,
        _ref_rglru_paper,
        "Griffin RG-LRU as in the paper: a_t = sigmoid(lambda) ** (c r_t), input sqrt(1 - a^2) * (i * x)",
    ),
    Case(
        "rglru_softplus_reset",
        "hgrn",
        rglru_softplus_reset,
        _rglru_hf_inputs,
        _ref_rglru_hf,
        "RecurrentGemma HF style: log_a = -8 r softplus(param), multiplier reset to 1 at t=0, zeros_like buffer",
    ),
    Case(
        "lru_real_diag_channels_first",
        "hgrn",
        lru_real_diag_channels_first,
        _lru_inputs,
        _ref_lru,
        "LRU real diagonal, [B,D,T] layout, lambda = exp(-exp(nu_log)), gamma normalization, cat on last dim",
    ),
    Case(
        "hgrn_time_major_inplace",
        "hgrn",
        hgrn_time_major_inplace,
        _hgrn_time_major_inputs,
        _ref_hgrn_time_major,
        "time-major [T,B,D], decay given as a probability, h.mul_(a).add_(x) in place",
    ),
    Case(
        "mingru_sequential",
        "hgrn",
        mingru_sequential,
        _mingru_inputs,
        _ref_mingru,
        "minGRU sequential mode: h = (1-z) h + z h_tilde",
    ),
    Case(
        "hgrn_multihead_sigmoid",
        "hgrn",
        hgrn_multihead_sigmoid,
        _hgrn_heads_inputs,
        _ref_hgrn_multihead,
        "[B,T,H,D] heads kept separate, zip over unbind(1), f*h + (1-f)*x",
    ),
    Case(
        "mingru_parallel_log_space",
        "hgrn",
        mingru_parallel_log_space,
        _mingru_inputs,
        _ref_mingru_parallel,
        "minGRU parallel mode: Heinsen log-space scan with cumsum + logcumsumexp",
    ),
    # mamba
    Case(
        "mamba_selective_scan_ref_style",
        "mamba",
        mamba_selective_scan_ref_style,
        _mamba_channels_first_inputs,
        _ref_mamba_cf,
        "mamba_ssm selective_scan_ref: u [B,D,L], delta bias + softplus, einsum discretization, D skip, silu(z)",
    ),
    Case(
        "mamba_scan_last_state",
        "mamba",
        mamba_scan_last_state,
        _mamba_channels_first_noz_inputs,
        _ref_mamba_cf_noz,
        "selective_scan_ref with return_last_state, broadcasting instead of einsum, no z",
    ),
    Case(
        "mamba_minimal_style",
        "mamba",
        mamba_minimal_style,
        _mamba_minimal_inputs,
        _ref_mamba_minimal,
        "mamba-minimal: A = -exp(A_log), einsum discretization before the loop, (b, l, d) layout, + u*D",
    ),
    Case(
        "mambapy_selective_scan_seq",
        "mamba",
        mambapy_selective_scan_seq,
        _mamba_py_inputs,
        _ref_mamba_plain_D,
        "mamba.py sequential fallback: stack every h then (hs @ C) readout after the loop",
    ),
    Case(
        "jamba_slow_forward",
        "mamba",
        jamba_slow_forward,
        _jamba_inputs,
        _ref_jamba,
        "Jamba slow path: hidden [B,D,L], time_step [B,L,D], matmul readout, D skip, silu gate",
    ),
    Case(
        "falcon_mamba_slow_cached",
        "mamba",
        falcon_mamba_slow_cached,
        _falcon_inputs,
        _ref_falcon,
        "FalconMamba slow path: RMS-normalized B/C/dt, cached initial ssm_state, returns the new state",
    ),
    Case(
        "mamba_module_s6",
        "mamba",
        _MAMBA_MODULE,
        _mamba_module_inputs,
        _ref_mamba_module,
        "nn.Module with A_log, D, dt_bias Parameters; discretization inside the loop; time-first",
    ),
    Case(
        "mamba_discretize_in_loop",
        "mamba",
        mamba_discretize_in_loop,
        _mamba_plain_inputs,
        _ref_mamba_plain,
        "bare recurrence, exp(dt A) computed per step, zeros_like output buffer",
    ),
    Case(
        "mamba_bmm_readout_state",
        "mamba",
        mamba_bmm_readout_state,
        _mamba_plain_state_inputs,
        _ref_mamba_plain_state,
        "initial state given, torch.bmm(h, C_t) readout, final state returned",
    ),
    Case(
        "mamba_state_nd",
        "mamba",
        mamba_state_nd,
        _mamba_plain_inputs,
        _ref_mamba_plain,
        "state laid out [B,N,D] (transposed), A.t(), einsum readout",
    ),
    # normalized linear attention
    Case(
        "linear_transformer_causal_loop",
        "normalized_linear_attn",
        linear_transformer_causal_loop,
        _qkv_time_first_inputs,
        _ref_norm_elu,
        "Transformers are RNNs: elu+1 features, running S and z, num / (q.z + eps)",
    ),
    Case(
        "fast_transformers_cumsum",
        "normalized_linear_attn",
        fast_transformers_cumsum,
        _qkv_time_first_inputs,
        _ref_norm_elu,
        "fast-transformers causal form: cumsum of K and of K v^T outer products, times 1/(Q.Ksum + eps)",
    ),
    Case(
        "based_taylor_cumsum",
        "normalized_linear_attn",
        based_taylor_cumsum,
        _based_inputs,
        _ref_based_heads_first,
        "Based: 2nd-order Taylor feature map [1, x/d^.25, xx/(sqrt2 sqrt d)], unsqueeze/cumsum causal form",
    ),
    Case(
        "based_taylor_quadratic",
        "normalized_linear_attn",
        based_taylor_quadratic,
        _based_time_first_inputs,
        _ref_based_time_first,
        "Based quadratic reference: A = tril(1 + s + s^2/2), s = q.k/sqrt(d), with row-sum normalizer",
    ),
    Case(
        "rebased_module",
        "normalized_linear_attn",
        _REBASED,
        _qkv_heads_first_inputs,
        _ref_rebased,
        "Rebased: learnable (gamma LN(x) + beta)^2 map in an nn.Module, masked quadratic form / row sums",
    ),
    Case(
        "performer_favor_causal",
        "normalized_linear_attn",
        performer_favor_causal,
        _performer_inputs,
        _ref_performer,
        "Performer FAVOR+ positive random features, prefix sums, normalized",
    ),
    Case(
        "normalized_heads_first_with_state",
        "normalized_linear_attn",
        normalized_heads_first_with_state,
        _norm_state_inputs,
        _ref_norm_state,
        "heads-first loop starting from (S0, z0), returns the final (S, z)",
    ),
    Case(
        "normalized_chunked",
        "normalized_linear_attn",
        normalized_chunked,
        _qkv_heads_first_inputs,
        _ref_norm_elu_heads_first,
        "chunked (4) normalized form: inter q@S and q@z, intra masked A, row-sum normalizer",
    ),
    # GLA line / delta line, unusual idioms
    Case(
        "retention_baddbmm",
        "retention",
        retention_baddbmm,
        _qkv_heads_first_inputs,
        _ref_retention_heads_first,
        "RetNet recurrent with (b h) flattened, S = baddbmm(gamma*S, k, v), bmm readout, torch.cat",
    ),
    Case(
        "retention_parallel_decay_mask",
        "retention",
        retention_parallel_decay_mask,
        _qkv_time_first_inputs,
        _ref_retention_time_first,
        "RetNet parallel form: decay mask via arange differences and torch.where, einsum",
    ),
    Case(
        "gla_chunked_einsum",
        "gla",
        gla_chunked_einsum,
        _gla_time_first_inputs,
        _ref_gla_time_first,
        "chunked GLA with the causal mask built as triu().T, pairwise-decay einsum, time-first",
    ),
    Case(
        "gla_state_vk",
        "gla",
        gla_state_vk,
        _gla_heads_first_inputs,
        _ref_gla_heads_first,
        "GLA with state kept as [V,K], matmul(S, q) readout, heads-first",
    ),
    Case(
        "hgrn2_recurrent",
        "gla",
        hgrn2_recurrent,
        _hgrn2_inputs,
        _ref_hgrn2,
        "HGRN2 recurrence: forget gate f with lower bound, key 1 - f, outer-product state",
    ),
    Case(
        "simple_gla_cat_steps",
        "simple_gla",
        simple_gla_cat_steps,
        _simple_gla_inputs,
        _ref_simple_gla,
        "per-head scalar gate, state starts as None, [B,1,H,V] steps joined by torch.cat",
    ),
    Case(
        "linear_attn_masked_fill",
        "linear_attn",
        linear_attn_masked_fill,
        _qkv_heads_first_inputs,
        _ref_linear_heads_first,
        "quadratic form masking the future with masked_fill(triu(1)), .mT transpose",
    ),
    Case(
        "delta_rule_householder",
        "delta_rule",
        delta_rule_householder,
        _delta_inputs,
        _ref_delta_householder,
        "DeltaNet written literally: S = (I - b k k^T) S + b k v^T with torch.eye, F.normalize keys",
    ),
    Case(
        "gated_delta_vk_state",
        "gated_delta_rule",
        gated_delta_vk_state,
        _qwen_gdn_inputs,
        _ref_gated_delta_qwen,
        "Qwen3-Next-like gate g = -exp(A_log) softplus(a + dt_bias), rsqrt l2norm, memory kept as [V,K]",
    ),
    Case(
        "kda_einsum_final_state",
        "kda",
        kda_einsum_final_state,
        _kda_inputs,
        _ref_kda,
        "KDA loop all in einsum, per-key decay before the delta write, final state returned",
    ),
    # near misses
    Case(
        "nm_hgrn_relu_in_loop",
        None,
        nm_hgrn_relu_in_loop,
        _hgrn_log_inputs,
        note="elementwise scan with a relu on the state every step: nonlinear",
    ),
    Case(
        "nm_mamba_dt_from_state",
        None,
        nm_mamba_dt_from_state,
        _mamba_dt_state_inputs,
        note="selective scan whose step size reads the state: nonlinear recurrence",
    ),
    Case(
        "nm_normalizer_column_sum",
        None,
        nm_normalizer_column_sum,
        _qkv_heads_first_inputs,
        note="normalized linear attention bug: normalizer sums A over queries (dim -2) instead of keys",
    ),
    Case(
        "nm_rwkv6_bonus_after_update",
        None,
        nm_rwkv6_bonus_after_update,
        _rwkv_time_first_inputs,
        note="rwkv6 bug: reads the already-updated state and adds the bonus on top (current token counted twice)",
    ),
    Case(
        "nm_linear_attn_noncausal",
        None,
        nm_linear_attn_noncausal,
        _qkv_time_first_inputs,
        note="non-causal (encoder) normalized linear attention: every query sees every key",
    ),
    Case(
        "nm_kda_decay_after_write",
        None,
        nm_kda_decay_after_write,
        _kda_inputs,
        note="KDA-like loop that decays after the delta write: diag(a)(I - b k k^T) is no kda transition",
    ),
    Case(
        "nm_normalized_stale_numerator",
        None,
        nm_normalized_stale_numerator,
        _qkv_time_first_inputs,
        note="normalized linear attention update-order bug: numerator reads S before the write, z after it",
    ),
    Case(
        "nm_softmax_causal",
        None,
        nm_softmax_causal,
        _qkv_time_first_inputs,
        note="plain causal softmax attention",
    ),
    Case(
        "nm_hgrn_anticausal",
        None,
        nm_hgrn_anticausal,
        _hgrn_log_inputs,
        note="anti-causal elementwise scan (reversed time), the backward half of a bidirectional LRU",
    ),
    Case(
        "nm_gru_candidate_reads_state",
        None,
        nm_gru_candidate_reads_state,
        _gru_inputs,
        note="GRU-like: candidate tanh(x + h W) reads the previous state, unlike minGRU",
    ),
    Case(
        "nm_delta_predicts_with_query",
        None,
        nm_delta_predicts_with_query,
        _delta_inputs,
        note="delta-rule bug: the error term predicts with q instead of k",
    ),
    Case(
        "nm_retnet_abs_rowsum_normalized",
        None,
        nm_retnet_abs_rowsum_normalized,
        _qkv_heads_first_inputs,
        note="RetNet parallel form with |QK^T * D| row-sum normalization clamped at 1: data-dependent, nonlinear",
    ),
    Case(
        "nm_mamba_tanh_state",
        None,
        nm_mamba_tanh_state,
        _mamba_plain_inputs,
        note="selective scan with a tanh squashing the state each step",
    ),
    Case(
        "nm_mlstm_max_normalizer",
        None,
        nm_mlstm_max_normalizer,
        _mlstm_inputs,
        note="xLSTM mLSTM recurrent form: exp input gate, normalizer max(|n.q|, 1) instead of n.q + eps",
    ),
    Case(
        "nm_linear_attn_state_renorm",
        None,
        nm_linear_attn_state_renorm,
        _qkv_time_first_inputs,
        note="linear attention whose state is renormalized by its Frobenius norm every step",
    ),
    Case(
        "nm_cumsum_over_heads",
        None,
        nm_cumsum_over_heads,
        _qkv_heads_first_inputs,
        note="layout bug: cumsum over dim 1 of [B,H,T,D] (heads), so nothing accumulates over time",
    ),
]

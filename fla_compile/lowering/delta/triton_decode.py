"""Triton decode kernel of the delta-rule line: the recurrence step by step, the state in registers.

Tensors are packed over time: every [B, T, H, D] input is seen as [T_total, H, D] with sequences given by
``cu``. q and k have HK heads; head h reads h // (H // HK). GATE: 0 none (delta_rule), 1 per head
(gated_delta_rule), 2 per key dim (kda). The chunked forward and backward are in :mod:`.triton_wy` and
:mod:`.triton_wy_bwd`.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def fused_recurrent_kernel(
    q, k, v, beta, g, h0, o, ht, cu, scale,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    GATE: tl.constexpr, HAS_H0: tl.constexpr, L2NORM: tl.constexpr,
):  # fmt: skip
    """Step-by-step recurrence for decoding: S [K, BV] in registers; ``ht`` may alias ``h0`` (in place)."""
    i_s, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos = tl.load(cu + i_s).to(tl.int64), tl.load(cu + i_s + 1).to(tl.int64)  # int64 offsets
    i_hk = i_h // (H // HK)
    o_k, o_v = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_s = (i_s * H + i_h).to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        b_S = tl.load(h0 + p_s, mask=m_kv, other=0.0).to(tl.float32)
    for t in range(bos, eos):
        b_q = tl.load(q + t * (HK * K) + i_hk * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_k = tl.load(k + t * (HK * K) + i_hk * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + t * (H * V) + i_h * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_b = tl.load(beta + t * H + i_h).to(tl.float32)
        if L2NORM:
            b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q, 0) + 1e-6)
            b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k, 0) + 1e-6)
        if GATE == 1:
            b_S = b_S * tl.exp(tl.load(g + t * H + i_h).to(tl.float32))
        if GATE == 2:
            b_g = tl.load(g + t * (H * K) + i_h * K + o_k, mask=m_k, other=0.0).to(tl.float32)
            b_S = b_S * tl.exp(b_g)[:, None]
        b_u = b_b * (b_v - tl.sum(b_S * b_k[:, None], 0))  # [BV]
        b_S += b_k[:, None] * b_u[None, :]
        b_o = tl.sum(b_S * (b_q * scale)[:, None], 0)
        tl.store(o + t * (H * V) + i_h * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
    tl.store(ht + p_s, b_S, mask=m_kv)

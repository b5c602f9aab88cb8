"""Triton forward kernels of the delta-rule line: chunk preparation (WY), chunk state + output, recurrent decode.

Math and notation as in :mod:`fla_compile.lowering.delta.torch_path`. Tensors are packed over
time: every [B, T, H, D] input is seen as [T_total, H, D] with sequences given by ``cu``
(a dense batch is B sequences of length T). q and k have HK heads; head h reads h // (H // HK).
GATE: 0 none (delta_rule), 1 per head (gated_delta_rule), 2 per key dim (kda).

Portable on Triton 3.6 to 3.9 and the interpreter: pointer arithmetic only (no block
pointers), no atomics, and no ``tl.trans`` at all: wherever a transposed operand is needed it
is loaded transposed from memory (Triton 3.4 to 3.7.0 miscompile ``tl.trans`` of a
``tl.dot`` result on Hopper).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..common.chunks import chunk_span


@triton.jit
def _col(x, o_c, j):
    """Column j of a [R, C] block as [R] (a masked reduction, no indexing)."""
    return tl.sum(tl.where(o_c[None, :] == j, x, 0.0), 1)


@triton.jit
def _row(x, o_r, j):
    """Row j of a [R, C] block as [C]."""
    return tl.sum(tl.where(o_r[:, None] == j, x, 0.0), 0)


@triton.jit
def chunk_gated_pairs(b_q, b_k, b_G, o_t, BT: tl.constexpr):
    """Per-key-dim gated A (strictly lower) and M (lower): sum_d x_i k_j exp(G_i - G_j), one column at a time.

    Every exponent is G_i - G_j with i >= j, so it never overflows whatever the gate strength.
    """
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    b_M = tl.zeros([BT, BT], dtype=tl.float32)
    for j in range(0, BT):
        b_kj = _row(b_k, o_t, j)
        b_Gj = _row(b_G, o_t, j)
        m_i = o_t >= j
        b_E = tl.where(m_i[:, None], tl.exp(tl.where(m_i[:, None], b_G - b_Gj[None, :], 0.0)), 0.0)
        b_kE = b_kj[None, :] * b_E
        b_a = tl.where(o_t > j, tl.sum(b_k * b_kE, 1), 0.0)
        b_m = tl.sum(b_q * b_kE, 1)
        b_A = tl.where(o_t[None, :] == j, b_a[:, None], b_A)
        b_M = tl.where(o_t[None, :] == j, b_m[:, None], b_M)
    return b_A, b_M


@triton.jit
def unit_lower_inverse(b_N, o_t, BT: tl.constexpr):
    """(I + N)^{-1} for strictly lower N, by forward substitution over rows: X_i = -N_i - sum_j N_ij X_j."""
    b_X = -b_N
    for i in range(1, BT):
        b_r = _row(b_X, o_t, i)
        b_r = b_r + tl.sum(b_r[:, None] * b_X, 0)
        b_X = tl.where(o_t[:, None] == i, b_r[None, :], b_X)
    return b_X + tl.where(o_t[:, None] == o_t[None, :], 1.0, 0.0)


@triton.jit
def chunk_prep_kernel(
    q, k, v, beta, g,  # inputs
    gc, w, u, mq, ti,  # outputs: in-chunk gate cumsum, W, U, M (scaled, gated q k^T), T = (I + diag(b) A)^-1
    cu, info, scale,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE: tl.constexpr, SAVE_T: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_s, i_n, bos, eos = chunk_span(info, cu, i_c)
    if i_s < 0:
        return
    t0 = bos + i_n * BT
    i_hk = i_h // (H // HK)
    o_t, o_k = tl.arange(0, BT), tl.arange(0, BK)
    m_t, m_k = o_t < eos - t0, o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    # [BT, BK]
    p_qk = (t0 + o_t[:, None]) * (HK * K) + i_hk * K + o_k[None, :]
    b_k = tl.load(k + p_qk, mask=m_tk, other=0.0).to(tl.float32)
    b_q = tl.load(q + p_qk, mask=m_tk, other=0.0).to(tl.float32) * scale
    # [BT]
    b_b = tl.load(beta + (t0 + o_t) * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    m_low = o_t[:, None] >= o_t[None, :]
    m_strict = o_t[:, None] > o_t[None, :]

    if GATE == 2:
        p_g = (t0 + o_t[:, None]) * (H * K) + i_h * K + o_k[None, :]
        b_G = tl.cumsum(tl.load(g + p_g, mask=m_tk, other=0.0).to(tl.float32), 0)  # [BT, BK]
        tl.store(gc + p_g, b_G, mask=m_tk)
        b_A, b_M = chunk_gated_pairs(b_q, b_k, b_G, o_t, BT)
        b_kb = b_k * tl.exp(b_G) * b_b[:, None]
    else:
        # [BK, BT], k loaded transposed
        p_kt = (t0 + o_t[None, :]) * (HK * K) + i_hk * K + o_k[:, None]
        b_kt = tl.load(k + p_kt, mask=m_k[:, None] & m_t[None, :], other=0.0).to(tl.float32)
        b_A = tl.dot(b_k, b_kt, input_precision=PREC)
        b_M = tl.dot(b_q, b_kt, input_precision=PREC)
        b_kb = b_k * b_b[:, None]
        if GATE == 1:
            b_G = tl.cumsum(tl.load(g + (t0 + o_t) * H + i_h, mask=m_t, other=0.0).to(tl.float32), 0)  # [BT]
            tl.store(gc + (t0 + o_t) * H + i_h, b_G, mask=m_t)
            b_E = tl.exp(tl.where(m_low, b_G[:, None] - b_G[None, :], float("-inf")))
            b_A = b_A * b_E
            b_M = b_M * b_E
            b_kb = b_kb * tl.exp(b_G)[:, None]
        b_A = tl.where(m_strict, b_A, 0.0)
        b_M = tl.where(m_low, b_M, 0.0)

    b_T = unit_lower_inverse(b_b[:, None] * b_A, o_t, BT)
    p_tt = (t0 + o_t[:, None]) * (H * BT) + i_h * BT + o_t[None, :]
    tl.store(mq + p_tt, b_M, mask=m_t[:, None])
    if SAVE_T:
        tl.store(ti + p_tt, b_T, mask=m_t[:, None])
    b_w = tl.dot(b_T, b_kb, input_precision=PREC)
    tl.store(w + (t0 + o_t[:, None]) * (H * K) + i_h * K + o_k[None, :], b_w, mask=m_tk)
    for v0 in range(0, V, BV):
        o_v = v0 + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        p_v = (t0 + o_t[:, None]) * (H * V) + i_h * V + o_v[None, :]
        b_v = tl.load(v + p_v, mask=m_tv, other=0.0).to(tl.float32)
        tl.store(u + p_v, tl.dot(b_T, b_v * b_b[:, None], input_precision=PREC), mask=m_tv)


@triton.jit
def chunk_fwd_kernel(
    q, k, w, u, mq, gc, h0,  # inputs (w, u, mq, gc from chunk_prep_kernel)
    o, ht, h, vn,  # outputs: o, final state, per-chunk entering states and v_new (when SAVE)
    cu, chunk_off, scale,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE: tl.constexpr, HAS_H0: tl.constexpr, SAVE: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """The sequential part: per sequence, head and V block, carry S [K, BV] across chunks and write o."""
    i_s, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos = tl.load(cu + i_s).to(tl.int64), tl.load(cu + i_s + 1).to(tl.int64)  # int64 offsets
    c0 = tl.load(chunk_off + i_s).to(tl.int64)
    i_hk = i_h // (H // HK)
    o_t, o_k, o_v = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_s = (i_s * H + i_h).to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        b_S = tl.load(h0 + p_s, mask=m_kv, other=0.0).to(tl.float32)
    for i_n in range(0, tl.cdiv(eos - bos, BT)):
        t0 = bos + i_n * BT
        m_t = o_t < eos - t0
        m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
        if SAVE:
            tl.store(h + ((c0 + i_n) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :], b_S, mask=m_kv)
        p_w = (t0 + o_t[:, None]) * (H * K) + i_h * K + o_k[None, :]
        p_v = (t0 + o_t[:, None]) * (H * V) + i_h * V + o_v[None, :]
        b_w = tl.load(w + p_w, mask=m_tk, other=0.0)
        b_vn = tl.load(u + p_v, mask=m_tv, other=0.0) - tl.dot(b_w, b_S, input_precision=PREC)  # [BT, BV]
        if SAVE:
            tl.store(vn + p_v, b_vn, mask=m_tv)
        b_q = tl.load(q + (t0 + o_t[:, None]) * (HK * K) + i_hk * K + o_k[None, :], mask=m_tk, other=0.0)
        b_q = b_q.to(tl.float32) * scale
        # [BK, BT] k transposed
        m_kt = m_k[:, None] & m_t[None, :]
        b_kt = tl.load(k + (t0 + o_t[None, :]) * (HK * K) + i_hk * K + o_k[:, None], mask=m_kt, other=0.0)
        b_kt = b_kt.to(tl.float32)
        last = tl.minimum(eos - t0, BT) - 1
        if GATE == 1:
            b_G = tl.load(gc + (t0 + o_t) * H + i_h, mask=m_t, other=0.0)
            b_Gl = tl.load(gc + (t0 + last) * H + i_h)
            b_q = b_q * tl.exp(b_G)[:, None]
            b_kt = b_kt * tl.exp(b_Gl - b_G)[None, :]
        if GATE == 2:
            b_G = tl.load(gc + p_w, mask=m_tk, other=0.0)
            b_Gt = tl.load(gc + (t0 + o_t[None, :]) * (H * K) + i_h * K + o_k[:, None], mask=m_kt, other=0.0)
            b_Gl = tl.load(gc + (t0 + last) * (H * K) + i_h * K + o_k, mask=m_k, other=0.0)
            b_q = b_q * tl.exp(b_G)
            b_kt = b_kt * tl.exp(b_Gl[:, None] - b_Gt)
        b_m = tl.load(mq + (t0 + o_t[:, None]) * (H * BT) + i_h * BT + o_t[None, :], mask=m_t[:, None], other=0.0)
        b_o = tl.dot(b_q, b_S, input_precision=PREC) + tl.dot(b_m, b_vn, input_precision=PREC)
        tl.store(o + p_v, b_o.to(o.dtype.element_ty), mask=m_tv)
        if GATE == 1:
            b_S = b_S * tl.exp(b_Gl)
        if GATE == 2:
            b_S = b_S * tl.exp(b_Gl)[:, None]
        b_S += tl.dot(b_kt, b_vn, input_precision=PREC)
    tl.store(ht + p_s, b_S, mask=m_kv)


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

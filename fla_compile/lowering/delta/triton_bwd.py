"""Triton backward kernels of the delta-rule line: the reverse state pass and the per-chunk gradients.

Forward of one chunk (notation of :mod:`fla_compile.lowering.delta.torch_path`, qs = scale q,
Γ = e^{G}, kd = e^{G_last - G} k, T = (I + diag(b) A)^{-1}):

    W = T (b Γ k),  U = T (b v),  v_new = U - W S0
    O = (Γ qs) S0 + M v_new,      S_C = e^{G_last} S0 + kd^T v_new

Reverse pass (sequential over chunks): dv_new = M^T dO + kd dS_C, dS0 = (Γ qs)^T dO +
e^{G_last} dS_C - W^T dv_new. The local kernel then differentiates the chunk given S0, dS_C,
v_new and dv_new. Every transposed product is formed from operands loaded transposed from
memory, e.g. dL^T = -T dT^T T is computed directly rather than as a transpose of dL: no
``tl.trans`` anywhere (Triton 3.4 to 3.7.0 miscompile ``tl.trans`` of a ``tl.dot`` result on
Hopper into wrong dk / dg). No atomics: each gradient element is written by one program.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..common.chunks import chunk_span
from .triton_fwd import _col, _row


@triton.jit
def chunk_bwd_state_kernel(
    q, k, w, mq, gc, dht, do,  # inputs (w, mq, gc recomputed by the forward preparation)
    dh, dh0, dvn,  # outputs: dS after each chunk, dS of the initial state, dv_new
    cu, chunk_off, scale,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    i_s, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos = tl.load(cu + i_s).to(tl.int64), tl.load(cu + i_s + 1).to(tl.int64)  # int64 offsets
    c0 = tl.load(chunk_off + i_s).to(tl.int64)
    i_hk = i_h // (H // HK)
    o_t, o_k, o_v = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_s = (i_s * H + i_h).to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    b_dS = tl.load(dht + p_s, mask=m_kv, other=0.0).to(tl.float32)
    NT = tl.cdiv(eos - bos, BT)
    for r in range(0, NT):
        i_n = NT - 1 - r
        t0 = bos + i_n * BT
        m_t = o_t < eos - t0
        m_tk, m_tv, m_kt = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :], m_k[:, None] & m_t[None, :]
        tl.store(dh + ((c0 + i_n) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :], b_dS, mask=m_kv)
        p_v = (t0 + o_t[:, None]) * (H * V) + i_h * V + o_v[None, :]
        b_do = tl.load(do + p_v, mask=m_tv, other=0.0).to(tl.float32)
        # [BT, BT] M transposed: element (a, b) = M[b, a]
        b_mt = tl.load(mq + (t0 + o_t[None, :]) * (H * BT) + i_h * BT + o_t[:, None], mask=m_t[None, :], other=0.0)
        b_k = tl.load(k + (t0 + o_t[:, None]) * (HK * K) + i_hk * K + o_k[None, :], mask=m_tk, other=0.0)
        b_k = b_k.to(tl.float32)
        # [BK, BT] q and w transposed
        b_qt = tl.load(q + (t0 + o_t[None, :]) * (HK * K) + i_hk * K + o_k[:, None], mask=m_kt, other=0.0)
        b_qt = b_qt.to(tl.float32) * scale
        b_wt = tl.load(w + (t0 + o_t[None, :]) * (H * K) + i_h * K + o_k[:, None], mask=m_kt, other=0.0)
        last = tl.minimum(eos - t0, BT) - 1
        if GATE == 1:
            b_Gl = tl.load(gc + (t0 + last) * H + i_h)
            b_G = tl.where(m_t, tl.load(gc + (t0 + o_t) * H + i_h, mask=m_t, other=0.0), b_Gl)
            b_k = b_k * tl.exp(b_Gl - b_G)[:, None]
            b_qt = b_qt * tl.exp(b_G)[None, :]
        if GATE == 2:
            b_Gl = tl.load(gc + (t0 + last) * (H * K) + i_h * K + o_k, mask=m_k, other=0.0)
            b_G = tl.load(gc + (t0 + o_t[:, None]) * (H * K) + i_h * K + o_k[None, :], mask=m_tk, other=0.0)
            b_G = tl.where(m_t[:, None], b_G, b_Gl[None, :])
            b_Gt = tl.load(gc + (t0 + o_t[None, :]) * (H * K) + i_h * K + o_k[:, None], mask=m_kt, other=0.0)
            b_Gt = tl.where(m_t[None, :], b_Gt, b_Gl[:, None])
            b_k = b_k * tl.exp(b_Gl[None, :] - b_G)
            b_qt = b_qt * tl.exp(b_Gt)
        b_dvn = tl.dot(b_mt, b_do, input_precision=PREC) + tl.dot(b_k, b_dS, input_precision=PREC)
        tl.store(dvn + p_v, b_dvn, mask=m_tv)
        if GATE == 1:
            b_dS = b_dS * tl.exp(b_Gl)
        if GATE == 2:
            b_dS = b_dS * tl.exp(b_Gl)[:, None]
        b_dS += tl.dot(b_qt, b_do, input_precision=PREC) - tl.dot(b_wt, b_dvn, input_precision=PREC)
    tl.store(dh0 + p_s, b_dS, mask=m_kv)


@triton.jit
def chunk_bwd_local_kernel(
    q, k, v, beta, gc, ti, h, vn, dh, dvn, do,  # inputs
    dq, dk, dv, db, dg,  # outputs, fp32, per value head
    cu, info, chunk_off, scale,
    H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_s, i_n, bos, eos = chunk_span(info, cu, i_c)
    if i_s < 0:
        return
    t0 = bos + i_n * BT
    i_hk = i_h // (H // HK)
    o_t, o_k = tl.arange(0, BT), tl.arange(0, BK)
    m_t, m_k = o_t < eos - t0, o_k < K
    m_tk, m_kt = m_t[:, None] & m_k[None, :], m_k[:, None] & m_t[None, :]
    m_low = o_t[:, None] >= o_t[None, :]
    m_strict = o_t[:, None] > o_t[None, :]
    last = tl.minimum(eos - t0, BT) - 1
    p_qk = (t0 + o_t[:, None]) * (HK * K) + i_hk * K + o_k[None, :]
    p_qkt = (t0 + o_t[None, :]) * (HK * K) + i_hk * K + o_k[:, None]
    b_k = tl.load(k + p_qk, mask=m_tk, other=0.0).to(tl.float32)  # [BT, BK]
    b_kt = tl.load(k + p_qkt, mask=m_kt, other=0.0).to(tl.float32)  # [BK, BT]
    b_q = tl.load(q + p_qk, mask=m_tk, other=0.0).to(tl.float32) * scale
    b_b = tl.load(beta + (t0 + o_t) * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    p_tt = (t0 + o_t[:, None]) * (H * BT) + i_h * BT + o_t[None, :]
    b_T = tl.load(ti + p_tt, mask=m_t[:, None], other=0.0)  # [BT, BT]
    b_Tt = tl.load(ti + (t0 + o_t[None, :]) * (H * BT) + i_h * BT + o_t[:, None], mask=m_t[None, :], other=0.0)
    p_tk = (t0 + o_t[:, None]) * (H * K) + i_h * K + o_k[None, :]

    # gates: Γ = e^G ([BT, 1] or [BT, BK]), Γ^T, and the decay to the chunk end kd = e^{G_last - G}
    b_gam = tl.full([BT, 1], 1.0, tl.float32)
    b_gamt = tl.full([1, BT], 1.0, tl.float32)
    b_fac = tl.full([BT, 1], 1.0, tl.float32)
    if GATE == 1:
        b_Gl = tl.load(gc + (t0 + last) * H + i_h)
        b_G = tl.where(m_t, tl.load(gc + (t0 + o_t) * H + i_h, mask=m_t, other=0.0), b_Gl)
        b_gam, b_gamt, b_fac = tl.exp(b_G)[:, None], tl.exp(b_G)[None, :], tl.exp(b_Gl - b_G)[:, None]
        b_E = tl.exp(tl.where(m_low, b_G[:, None] - b_G[None, :], float("-inf")))
        b_Et = tl.exp(tl.where(o_t[:, None] <= o_t[None, :], b_G[None, :] - b_G[:, None], float("-inf")))
    if GATE == 2:
        b_Gl = tl.load(gc + (t0 + last) * (H * K) + i_h * K + o_k, mask=m_k, other=0.0)
        b_G = tl.where(m_t[:, None], tl.load(gc + p_tk, mask=m_tk, other=0.0), b_Gl[None, :])
        b_Gt = tl.load(gc + (t0 + o_t[None, :]) * (H * K) + i_h * K + o_k[:, None], mask=m_kt, other=0.0)
        b_Gt = tl.where(m_t[None, :], b_Gt, b_Gl[:, None])
        b_gam, b_gamt, b_fac = tl.exp(b_G), tl.exp(b_Gt), tl.exp(b_Gl[None, :] - b_G)

    b_dqg = tl.zeros([BT, BK], dtype=tl.float32)  # d(Γ qs)
    b_dkd = tl.zeros([BT, BK], dtype=tl.float32)  # d(kd)
    b_dW = tl.zeros([BT, BK], dtype=tl.float32)
    b_dWt = tl.zeros([BK, BT], dtype=tl.float32)
    b_dM = tl.zeros([BT, BT], dtype=tl.float32)
    b_dMt = tl.zeros([BT, BT], dtype=tl.float32)
    b_dT = tl.zeros([BT, BT], dtype=tl.float32)
    b_dTt = tl.zeros([BT, BT], dtype=tl.float32)
    b_dgl = tl.zeros([BK], dtype=tl.float32)  # d(e^{G_last}) per key dim
    b_db = tl.zeros([BT], dtype=tl.float32)
    p_s = (i_c * H + i_h).to(tl.int64) * K * V
    for v0 in range(0, V, BV):
        o_v = v0 + tl.arange(0, BV)
        m_v = o_v < V
        m_tv, m_vt, m_kv, m_vk = (
            m_t[:, None] & m_v[None, :], m_v[:, None] & m_t[None, :], m_k[:, None] & m_v[None, :], m_v[:, None] & m_k[None, :],
        )  # fmt: skip
        p_v = (t0 + o_t[:, None]) * (H * V) + i_h * V + o_v[None, :]
        p_vt = (t0 + o_t[None, :]) * (H * V) + i_h * V + o_v[:, None]
        b_h = tl.load(h + p_s + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)  # [BK, BV]
        b_ht = tl.load(h + p_s + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0.0)  # [BV, BK]
        b_dht = tl.load(dh + p_s + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0.0)  # [BV, BK]
        b_vn = tl.load(vn + p_v, mask=m_tv, other=0.0)
        b_vnt = tl.load(vn + p_vt, mask=m_vt, other=0.0)
        b_dvn = tl.load(dvn + p_v, mask=m_tv, other=0.0)
        b_dvnt = tl.load(dvn + p_vt, mask=m_vt, other=0.0)
        b_do = tl.load(do + p_v, mask=m_tv, other=0.0).to(tl.float32)
        b_dot = tl.load(do + p_vt, mask=m_vt, other=0.0).to(tl.float32)
        b_vv = tl.load(v + p_v, mask=m_tv, other=0.0).to(tl.float32)
        b_bv = b_vv * b_b[:, None]
        b_bvt = tl.load(v + p_vt, mask=m_vt, other=0.0).to(tl.float32) * b_b[None, :]

        b_dqg += tl.dot(b_do, b_ht, input_precision=PREC)
        b_dkd += tl.dot(b_vn, b_dht, input_precision=PREC)
        b_dgl += tl.sum(b_ht * b_dht, 0)
        b_dW -= tl.dot(b_dvn, b_ht, input_precision=PREC)
        b_dWt -= tl.dot(b_h, b_dvnt, input_precision=PREC)
        b_dM += tl.dot(b_do, b_vnt, input_precision=PREC)
        b_dMt += tl.dot(b_vn, b_dot, input_precision=PREC)
        b_dT += tl.dot(b_dvn, b_bvt, input_precision=PREC)
        b_dTt += tl.dot(b_bv, b_dvnt, input_precision=PREC)
        b_dbv = tl.dot(b_Tt, b_dvn, input_precision=PREC)  # d(b v) = T^T dU, dU = dv_new
        tl.store(dv + p_v, b_dbv * b_b[:, None], mask=m_tv)
        b_db += tl.sum(b_dbv * b_vv, 1)

    # through W = T (b Γ k) and T = L^{-1}: dT += dW (bΓk)^T, dL = -T^T dT T^T (and its transpose directly)
    b_kb = b_k * b_gam * b_b[:, None]
    b_kbt = b_kt * b_gamt * b_b[None, :]
    b_dT += tl.dot(b_dW, b_kbt, input_precision=PREC)
    b_dTt += tl.dot(b_kb, b_dWt, input_precision=PREC)
    b_dkb = tl.dot(b_Tt, b_dW, input_precision=PREC)
    b_dL = -tl.dot(tl.dot(b_Tt, b_dT, input_precision=PREC), b_Tt, input_precision=PREC)
    b_dLt = -tl.dot(tl.dot(b_T, b_dTt, input_precision=PREC), b_T, input_precision=PREC)
    b_dL = tl.where(m_strict, b_dL, 0.0)
    b_dLt = tl.where(o_t[:, None] < o_t[None, :], b_dLt, 0.0)
    b_dA, b_dAt = b_dL * b_b[:, None], b_dLt * b_b[None, :]
    b_dM = tl.where(m_low, b_dM, 0.0)

    # through A (strictly lower) and M (lower): gated pair products of k with k and of qs with k
    if GATE == 2:
        b_dk = tl.zeros([BT, BK], dtype=tl.float32)
        b_dqs = tl.zeros([BT, BK], dtype=tl.float32)
        b_dG = tl.zeros([BT, BK], dtype=tl.float32)
        for j in range(0, BT):
            b_kj, b_Gj = _row(b_k, o_t, j), _row(b_G, o_t, j)
            m_i = o_t >= j
            b_E = tl.where(m_i[:, None], tl.exp(tl.where(m_i[:, None], b_G - b_Gj[None, :], 0.0)), 0.0)
            b_Es = tl.where((o_t > j)[:, None], b_E, 0.0)
            b_db += _col(b_dL, o_t, j) * tl.sum(b_k * b_kj[None, :] * b_Es, 1)
            b_dAj, b_dMj = _col(b_dA, o_t, j), _col(b_dM, o_t, j)
            b_t1 = b_dAj[:, None] * b_kj[None, :] * b_Es  # rows i: dA_ij e^{G_i - G_j} k_j
            b_t2 = b_dMj[:, None] * b_kj[None, :] * b_E
            b_dk += b_t1
            b_dqs += b_t2
            b_dG += b_k * b_t1 + b_q * b_t2
            b_r = tl.sum(b_dAj[:, None] * b_k * b_Es + b_dMj[:, None] * b_q * b_E, 0)  # row j: sum over i
            b_dk += tl.where(o_t[:, None] == j, b_r[None, :], 0.0)
            b_dG -= tl.where(o_t[:, None] == j, (b_kj * b_r)[None, :], 0.0)
    else:
        b_A = tl.dot(b_k, b_kt, input_precision=PREC)
        b_M = tl.dot(b_q, b_kt, input_precision=PREC)
        b_P, b_Pt, b_R, b_Rt = b_dA, b_dAt, b_dM, tl.where(o_t[:, None] <= o_t[None, :], b_dMt, 0.0)
        if GATE == 1:
            b_A, b_M = b_A * b_E, b_M * b_E
            b_P, b_Pt, b_R, b_Rt = b_P * b_E, b_Pt * b_Et, b_R * b_E, b_Rt * b_Et
        b_A = tl.where(m_strict, b_A, 0.0)
        b_db += tl.sum(b_dL * b_A, 1)
        b_dk = tl.dot(b_P, b_k, input_precision=PREC) + tl.dot(b_Pt, b_k, input_precision=PREC)
        b_dk += tl.dot(b_Rt, b_q, input_precision=PREC)
        b_dqs = tl.dot(b_R, b_k, input_precision=PREC)
        if GATE == 1:
            b_X = b_dA * b_A + b_dM * b_M
            b_dGs = tl.sum(b_X, 1) - tl.sum(b_X, 0)

    # the direct uses of Γ qs, b Γ k, kd and e^{G_last}
    b_dk += b_dkb * b_gam * b_b[:, None] + b_dkd * b_fac
    b_db += tl.sum(b_dkb * b_k * b_gam, 1)
    b_dqs += b_dqg * b_gam
    tl.store(dq + p_tk, b_dqs * scale, mask=m_tk)
    tl.store(dk + p_tk, b_dk, mask=m_tk)
    tl.store(db + (t0 + o_t) * H + i_h, b_db, mask=m_t)
    if GATE != 0:
        b_dGe = b_dkb * b_kb + b_dqg * b_q * b_gam - b_dkd * b_k * b_fac  # [BT, BK]
        b_dGl = tl.sum(b_dkd * b_k * b_fac, 0) + b_dgl * tl.exp(b_Gl)  # [BK]
        if GATE == 1:
            b_dGs += tl.sum(b_dGe, 1) + tl.where(o_t == last, tl.sum(b_dGl, 0), 0.0)
            b_dg = tl.sum(b_dGs, 0) - tl.cumsum(b_dGs, 0) + b_dGs  # reverse cumsum: dg_i = sum_{t >= i} dG_t
            tl.store(dg + (t0 + o_t) * H + i_h, b_dg, mask=m_t)
        else:
            b_dG += b_dGe + tl.where(o_t[:, None] == last, b_dGl[None, :], 0.0)
            b_dg = tl.sum(b_dG, 0)[None, :] - tl.cumsum(b_dG, 0) + b_dG
            tl.store(dg + p_tk, b_dg, mask=m_tk)

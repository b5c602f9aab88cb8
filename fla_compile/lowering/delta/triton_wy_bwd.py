"""Backward kernels of the delta line in stages (the forward is :mod:`fla_compile.lowering.delta.triton_wy`).

Per chunk, with v_new = U - W S, o = (e^G q) S scale + M v_new and S' = e^{G_last} S + k_gᵀ v_new
(k_g = e^{G_last - G} k, M the gated causal scale q kᵀ):

1. dv_local = Mᵀ do (the GLA line's ``chunk_bwd_dv_kernel`` without its dh term).
2. ``chunk_delta_dh_kernel``, the sequential part, backwards over a sequence's chunks: stores dS' (the gradient
   of the state after the chunk), dv_new = dv_local + k_g dS', then dS = e^{G_last} dS' + scale (e^G q)ᵀ do
   - Wᵀ dv_new.
3. dq, the dk of k_g and M, and the gate gradient of those: the GLA line's ``chunk_bwd_dqk_kernel`` (and, for a
   gate per key dim, its intra-chunk kernels) with v_new for v.
4. and 5., no gate or a scalar one: ``chunk_wy_pair_bwd_kernel``, one program per (chunk, head) as FLA's
   prepare_wy_repr_bwd, with dW = -dv_new Sᵀ formed by the dqk kernel (its ``DW``): through W = X (b e^G k),
   U = X (b v) it writes dv and the dk, db and dG of the scaled keys and values, keeps dN = -Xᵀ dX Xᵀ (strictly
   lower; N = diag(b) A) in registers and takes the pairs of A_ij = k_i . k_j e^{G_i - G_j} from it, with
   R = (dN o E) k and C = (dN o E)ᵀ (b k): dk += b R + C, db += k . R, dG += b k R - k C.
   A gate per key dim (kda): ``chunk_wy_bwd_kernel`` (dW from the chunk states, dN written), then the pairs by
   16-row blocks (``chunk_kk_pair_bwd_vec_kernel``) and the GLA line's intra kernel.

One kernel for 4 and 5 replaced two (``chunk_wy_bwd_kernel`` + a pair kernel) on the H200 (B=8 T=2048 H=16
D=128 bf16, 2026-11-30): 0.417 + 0.254 ms -> 0.410 (the dqk kernel +0.02 for dW), fwd+bwd kernel sums
delta_rule 2.241 -> 1.995 ms, gated 2.708 -> 2.491.

dG is the gradient of the in-chunk cumsum G; the launcher turns it into the gate's by a reverse cumsum inside
each chunk. No ``tl.trans``: transposed operands are loaded transposed.

Split forms of steps 2 and 4 (dS as two [K/2, BV] halves; dW by key blocks) were tried on the H200 and
were no faster at K = V = 128 (2026-11-30, benchmarks/RESULTS.md): one block each.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..common.chunks import chunk_span, sequence_span, state_block, state_offsets, state_start
from ..common.dots import dot


@triton.jit
def chunk_delta_dh_kernel(
    q,
    k,
    w,
    gc,
    dvl,
    do,
    dh,
    dvn,
    dht,
    dh0,
    cu,
    chunk_off,
    scale,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    GATE: tl.constexpr,
    USE_DHT: tl.constexpr,
    STORE_DH0: tl.constexpr,
    PREC: tl.constexpr,
):
    """Per sequence, head and V block, backwards: dh[slot] = dS', dv_new, then dS; dh0 = dS of the first chunk.

    A scalar gate's term diag(e^{G_last - G}) k dS' of dv_new decays the [BT, BV] product's rows, not the keys'
    [BT, BK] columns, so the keys reach the dot as loaded (FLA's order; the forward's state pass likewise)."""
    i_nh, _, i_v = state_block(1, tl.cdiv(V, BV))
    i_n, i_h = i_nh // H, i_nh % H
    i_hk = i_h // G
    bos, eos, NT = sequence_span(cu, i_n, BT)
    s0 = tl.load(chunk_off + i_n).to(tl.int64)
    o_k, o_v, m_k, m_v, m_h, o_h = state_offsets(0, i_v, K, V, BK, BV)
    b_dh = state_start(dht, i_n * H + i_h, o_h, m_h, K, V, BK, BV, USE_DHT)
    for i_r in range(0, NT):
        i_c = NT - 1 - i_r
        tl.store(dh + ((s0 + i_c) * H + i_h) * K * V + o_h, b_dh.to(dh.dtype.element_ty), mask=m_h)
        o_t = bos + i_c * BT + tl.arange(0, BT)
        m_t = o_t < eos
        m_tk = m_t[:, None] & m_k[None, :]
        m_kt = m_k[:, None] & m_t[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        last = tl.minimum(bos + i_c * BT + BT, eos) - 1
        # [BT, BK] keys and [BK, BT] queries and W, loaded transposed
        b_k = tl.load(k + (o_t * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_qt = tl.load(q + (o_t * (H // G) + i_hk)[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        b_wt = tl.load(w + (o_t * H + i_h)[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        dt = b_k.dtype
        if GATE == 1:
            b_g = tl.load(gc + o_t * H + i_h, mask=m_t, other=0)
            b_gl = tl.load(gc + last * H + i_h)
            b_qt = (b_qt.to(tl.float32) * tl.exp(b_g)[None, :]).to(dt)
        if GATE == 2:
            b_g = tl.load(gc + (o_t * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk, other=0)
            b_gt = tl.load(gc + (o_t * H + i_h)[None, :] * K + o_k[:, None], mask=m_kt, other=0)
            b_gl = tl.load(gc + (last * H + i_h) * K + o_k, mask=m_k, other=0)
            b_k = (b_k.to(tl.float32) * tl.exp(tl.where(m_tk, b_gl[None, :] - b_g, 0))).to(dt)
            b_qt = (b_qt.to(tl.float32) * tl.exp(b_gt)).to(dt)
        p_v = (o_t * H + i_h)[:, None] * V + o_v[None, :]
        # [BT, BV]
        b_kdh = dot(b_k, b_dh.to(dt), prec=PREC)
        if GATE == 1:
            b_kdh *= tl.exp(tl.where(m_t, b_gl - b_g, 0))[:, None]
        b_dvn = tl.load(dvl + p_v, mask=m_tv, other=0).to(tl.float32) + b_kdh
        tl.store(dvn + p_v, b_dvn.to(dvn.dtype.element_ty), mask=m_tv)
        b_do = tl.load(do + p_v, mask=m_tv, other=0)
        if GATE == 1:
            b_dh *= tl.exp(b_gl)
        if GATE == 2:
            b_dh *= tl.exp(b_gl)[:, None]
        b_dh += scale * dot(b_qt, b_do.to(dt), prec=PREC)
        b_dh -= dot(b_wt, b_dvn.to(dt), prec=PREC)
    if STORE_DH0:
        tl.store(dh0 + (i_n * H + i_h) * K * V + o_h, b_dh, mask=m_h)


@triton.jit
def _dh_key_block_kdh(k, gc, b_dh, o_t, m_t, last, i_h, i_hk, i_kb: tl.constexpr, H: tl.constexpr, G: tl.constexpr,
                      K: tl.constexpr, BK: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """:func:`chunk_delta_dh_split_kernel`'s key block ``i_kb``: its part of k_g dS' [BT, BV] (kda's keys decayed
    to the chunk's last step by the block's own gates; a scalar gate decays the sum's rows after)."""
    o_k = i_kb * BK + tl.arange(0, BK)
    m_tk = m_t[:, None] & (o_k < K)[None, :]
    b_k = tl.load(k + (o_t * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_tk, other=0)
    dt = b_k.dtype
    if GATE == 2:
        b_g = tl.load(gc + (o_t * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_gl = tl.load(gc + (last * H + i_h) * K + o_k, mask=o_k < K, other=0)
        b_k = (b_k.to(tl.float32) * tl.exp(tl.where(m_tk, b_gl[None, :] - b_g, 0))).to(dt)
    return dot(b_k, b_dh.to(dt), prec=PREC)


@triton.jit
def _dh_key_block_step(q, w, gc, b_dh, b_do, b_dvn, b_g, b_gl, scale, o_t, m_t, last, i_h, i_hk,
                       i_kb: tl.constexpr, H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, BK: tl.constexpr,
                       GATE: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """Key block ``i_kb`` of dS carried back over the chunk: e^{G_last} dS' + scale (e^G q)ᵀ do - Wᵀ dv_new, each
    restricted to the block's BK keys (``b_g``, ``b_gl``: a scalar gate's, loaded once for every block)."""
    o_k = i_kb * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_kt = m_k[:, None] & m_t[None, :]
    b_qt = tl.load(q + (o_t * (H // G) + i_hk)[None, :] * K + o_k[:, None], mask=m_kt, other=0)
    b_wt = tl.load(w + (o_t * H + i_h)[None, :] * K + o_k[:, None], mask=m_kt, other=0)
    dt = b_qt.dtype
    if GATE == 1:
        b_qt = (b_qt.to(tl.float32) * tl.exp(b_g)[None, :]).to(dt)
        b_dh *= tl.exp(b_gl)
    if GATE == 2:
        b_gt = tl.load(gc + (o_t * H + i_h)[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        b_qt = (b_qt.to(tl.float32) * tl.exp(b_gt)).to(dt)
        b_dh *= tl.exp(tl.load(gc + (last * H + i_h) * K + o_k, mask=m_k, other=0))[:, None]
    b_dh += scale * dot(b_qt, b_do.to(dt), prec=PREC)
    return b_dh - dot(b_wt, b_dvn.to(dt), prec=PREC)


@triton.jit
def chunk_delta_dh_split_kernel(
    q,
    k,
    w,
    gc,
    dvl,
    do,
    dh,
    dvn,
    dht,
    dh0,
    cu,
    chunk_off,
    scale,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    GATE: tl.constexpr,
    USE_DHT: tl.constexpr,
    STORE_DH0: tl.constexpr,
    PREC: tl.constexpr,
):
    """:func:`chunk_delta_dh_kernel` (the same arguments) with dS held as two to four key blocks of BK rows ([BK,
    BV] tiles, BK < K <= 4 BK; the launcher's BK is 64), the layout of the forward's ``chunk_delta_h_split_kernel``
    (launch option ``dh_split_k``, the gate kinds that take it). Each block's tiles are loaded and its dots taken
    apart, so the [K, BT] operands of the whole-K kernel are never live at once."""
    i_nh, _, i_v = state_block(1, tl.cdiv(V, BV))
    i_n, i_h = i_nh // H, i_nh % H
    i_hk = i_h // G
    bos, eos, NT = sequence_span(cu, i_n, BT)
    s0 = tl.load(chunk_off + i_n).to(tl.int64)
    _, o_v, _, m_v, m_h1, o_h1 = state_offsets(0, i_v, K, V, BK, BV)
    _, _, _, _, m_h2, o_h2 = state_offsets(1, i_v, K, V, BK, BV)
    _, _, _, _, m_h3, o_h3 = state_offsets(2, i_v, K, V, BK, BV)
    _, _, _, _, m_h4, o_h4 = state_offsets(3, i_v, K, V, BK, BV)
    b_dh1 = state_start(dht, i_n * H + i_h, o_h1, m_h1, K, V, BK, BV, USE_DHT)
    b_dh2 = state_start(dht, i_n * H + i_h, o_h2, m_h2, K, V, BK, BV, USE_DHT)
    if K > 2 * BK:
        b_dh3 = state_start(dht, i_n * H + i_h, o_h3, m_h3, K, V, BK, BV, USE_DHT)
    if K > 3 * BK:
        b_dh4 = state_start(dht, i_n * H + i_h, o_h4, m_h4, K, V, BK, BV, USE_DHT)
    for i_r in range(0, NT):
        i_c = NT - 1 - i_r
        p_dh = dh + ((s0 + i_c) * H + i_h) * K * V
        tl.store(p_dh + o_h1, b_dh1.to(dh.dtype.element_ty), mask=m_h1)
        tl.store(p_dh + o_h2, b_dh2.to(dh.dtype.element_ty), mask=m_h2)
        if K > 2 * BK:
            tl.store(p_dh + o_h3, b_dh3.to(dh.dtype.element_ty), mask=m_h3)
        if K > 3 * BK:
            tl.store(p_dh + o_h4, b_dh4.to(dh.dtype.element_ty), mask=m_h4)
        o_t = bos + i_c * BT + tl.arange(0, BT)
        m_t = o_t < eos
        m_tv = m_t[:, None] & m_v[None, :]
        last = tl.minimum(bos + i_c * BT + BT, eos) - 1
        # dv_new = dv_local + k_g dS', by key blocks
        b_kdh = _dh_key_block_kdh(k, gc, b_dh1, o_t, m_t, last, i_h, i_hk, 0, H, G, K, BK, GATE, PREC)
        b_kdh += _dh_key_block_kdh(k, gc, b_dh2, o_t, m_t, last, i_h, i_hk, 1, H, G, K, BK, GATE, PREC)
        if K > 2 * BK:
            b_kdh += _dh_key_block_kdh(k, gc, b_dh3, o_t, m_t, last, i_h, i_hk, 2, H, G, K, BK, GATE, PREC)
        if K > 3 * BK:
            b_kdh += _dh_key_block_kdh(k, gc, b_dh4, o_t, m_t, last, i_h, i_hk, 3, H, G, K, BK, GATE, PREC)
        b_g = tl.zeros([BT], dtype=tl.float32)
        b_gl = 0.0
        if GATE == 1:
            b_g = tl.load(gc + o_t * H + i_h, mask=m_t, other=0)
            b_gl = tl.load(gc + last * H + i_h)
            b_kdh *= tl.exp(tl.where(m_t, b_gl - b_g, 0))[:, None]
        p_v = (o_t * H + i_h)[:, None] * V + o_v[None, :]
        b_dvn = tl.load(dvl + p_v, mask=m_tv, other=0).to(tl.float32) + b_kdh
        tl.store(dvn + p_v, b_dvn.to(dvn.dtype.element_ty), mask=m_tv)
        b_do = tl.load(do + p_v, mask=m_tv, other=0)
        b_dh1 = _dh_key_block_step(q, w, gc, b_dh1, b_do, b_dvn, b_g, b_gl, scale, o_t, m_t, last, i_h, i_hk, 0, H,
                                   G, K, BK, GATE, PREC)  # fmt: skip
        b_dh2 = _dh_key_block_step(q, w, gc, b_dh2, b_do, b_dvn, b_g, b_gl, scale, o_t, m_t, last, i_h, i_hk, 1, H,
                                   G, K, BK, GATE, PREC)  # fmt: skip
        if K > 2 * BK:
            b_dh3 = _dh_key_block_step(q, w, gc, b_dh3, b_do, b_dvn, b_g, b_gl, scale, o_t, m_t, last, i_h, i_hk, 2,
                                       H, G, K, BK, GATE, PREC)  # fmt: skip
        if K > 3 * BK:
            b_dh4 = _dh_key_block_step(q, w, gc, b_dh4, b_do, b_dvn, b_g, b_gl, scale, o_t, m_t, last, i_h, i_hk, 3,
                                       H, G, K, BK, GATE, PREC)  # fmt: skip
    if STORE_DH0:
        p_dh0 = dh0 + (i_n * H + i_h) * K * V
        tl.store(p_dh0 + o_h1, b_dh1, mask=m_h1)
        tl.store(p_dh0 + o_h2, b_dh2, mask=m_h2)
        if K > 2 * BK:
            tl.store(p_dh0 + o_h3, b_dh3, mask=m_h3)
        if K > 3 * BK:
            tl.store(p_dh0 + o_h4, b_dh4, mask=m_h4)


@triton.jit
def chunk_wy_bwd_kernel(
    k,
    v,
    beta,
    gc,
    X,
    h,
    dvn,
    dv,
    dk,
    dbeta,
    dG,
    dN,
    info,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    GATE: tl.constexpr,
    PREC: tl.constexpr,
):
    """dv (written), dk += b e^G Xᵀ dW, dbeta and dG (written: scaled keys and values), dN = -Xᵀ dX Xᵀ (written).

    Launched for a gate per key dim (GATE 2, dG [TT, H, K]); without one (GATE 0) dG is not written. BK covers K."""
    i_s, i_h = tl.program_id(0), tl.program_id(1)
    i_n, i_c, bos, eos = chunk_span(info, i_s)
    if i_n < 0:
        return
    i_hk = i_h // G
    o_i = tl.arange(0, BT)
    o_t = bos + i_c * BT + o_i
    m_t = o_t < eos
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    m_kt = m_k[:, None] & m_t[None, :]
    # [BT, BT]: Xᵀ, loaded transposed (row a = column a of X)
    b_Xt = tl.load(X + (o_t * H + i_h)[None, :] * BT + o_i[:, None], mask=m_t[None, :], other=0)
    dt = b_Xt.dtype
    b_b = tl.load(beta + o_t * H + i_h, mask=m_t, other=0).to(tl.float32)
    b_dX = tl.zeros([BT, BT], dtype=tl.float32)
    b_db = tl.zeros([BT], dtype=tl.float32)
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    p_h = (i_s.to(tl.int64) * H + i_h) * K * V
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        p_v = (o_t * H + i_h)[:, None] * V + o_v[None, :]
        # [BT, BV]
        b_du = tl.load(dvn + p_v, mask=m_tv, other=0).to(dt)
        b_v = tl.load(v + p_v, mask=m_tv, other=0)
        # [BV, BT]
        b_vt = tl.load(v + (o_t * H + i_h)[None, :] * V + o_v[:, None], mask=m_v[:, None] & m_t[None, :], other=0)
        b_vbt = (b_vt.to(tl.float32) * b_b[None, :]).to(dt)
        b_dX += dot(b_du, b_vbt, prec=PREC)
        b_dvb = dot(b_Xt, b_du, prec=PREC)
        tl.store(dv + p_v, (b_dvb * b_b[:, None]).to(dv.dtype.element_ty), mask=m_tv)
        b_db += tl.sum(b_dvb * b_v.to(tl.float32), 1)
        # [BV, BK]: Sᵀ of the chunk, loaded transposed
        b_ht = tl.load(h + p_h + o_k[None, :] * V + o_v[:, None], mask=m_v[:, None] & m_k[None, :], other=0)
        b_dw -= dot(b_du, b_ht.to(dt), prec=PREC)
    # [BT, BK] and [BK, BT]: b e^G k
    b_k = tl.load(k + (o_t * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_tk, other=0).to(tl.float32)
    b_kt = tl.load(k + (o_t * (H // G) + i_hk)[None, :] * K + o_k[:, None], mask=m_kt, other=0).to(tl.float32)
    b_e = tl.full([BT, BK], 1.0, tl.float32)  # e^G
    if GATE == 2:
        b_g = tl.load(gc + (o_t * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_gt = tl.load(gc + (o_t * H + i_h)[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        b_e = tl.exp(b_g)
        b_kt = b_kt * tl.exp(b_gt)
    b_k = b_k * b_e
    b_dX += dot(b_dw.to(dt), (b_kt * b_b[None, :]).to(dt), prec=PREC)
    # [BT, BK]: gradient of the scaled keys b e^G k
    b_dkb = dot(b_Xt, b_dw.to(dt), prec=PREC)
    b_db += tl.sum(b_dkb * b_k, 1)
    p_k = (o_t * H + i_h)[:, None] * K + o_k[None, :]
    tl.store(dk + p_k, tl.load(dk + p_k, mask=m_tk, other=0) + b_dkb * b_b[:, None] * b_e, mask=m_tk)
    tl.store(dbeta + o_t * H + i_h, b_db, mask=m_t)
    if GATE == 2:
        tl.store(dG + p_k, b_dkb * b_k * b_b[:, None], mask=m_tk)
    # dN = -Xᵀ dX Xᵀ on the strictly lower part (X = (I + N)^-1)
    m_low = (o_i[:, None] >= o_i[None, :]) & m_t[:, None] & m_t[None, :]
    b_dX = tl.where(m_low, b_dX, 0)
    b_Xtf = b_Xt.to(tl.float32)
    b_P = dot(b_dX, b_Xtf, prec=PREC)
    b_dNv = -dot(b_Xtf, b_P, prec=PREC)
    m_S = (o_i[:, None] > o_i[None, :]) & m_t[:, None] & m_t[None, :]
    tl.store(dN + (o_t * H + i_h)[:, None] * BT + o_i[None, :], tl.where(m_S, b_dNv, 0), mask=m_t[:, None])


@triton.jit
def chunk_wy_pair_bwd_kernel(
    k,
    v,
    beta,
    gc,
    X,
    dw,
    dvn,
    dv,
    dk,
    dbeta,
    dG,
    dN,
    info,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    GATE: tl.constexpr,
    PREC: tl.constexpr,
    HALF: tl.constexpr = False,
    dko=None,
    DKO: tl.constexpr = False,
):
    """The WY backward and the k kᵀ pairs in one program (no gate or a scalar one): dv, dbeta and dG written, dk
    added to (it holds the dqk kernel's part); with ``DKO`` the sum goes to ``dko`` in its dtype instead (the
    inputs' dtype where nothing adds to dk after this kernel: no separate cast of an fp32 dk after it). With HALF
    the dN chain (P = dX Xᵀ, Q = -Xᵀ P) and the pair dots take operands in the inputs' dtype (bf16 tensor cores,
    as FLA's WY backward) instead of fp32 ones (tf32), accumulating in fp32 either way; without a half dtype it
    changes nothing.

    dW = -dv_new Sᵀ is read ([TT, H, K], the dqk kernel's ``DW``): no chunk state is loaded, and the keys and
    values go by blocks of BK and BV. Q = dN o E stays in registers; its transpose comes from the dN buffer (Q
    written, a barrier, loaded transposed: this program's own bytes, from L2), never ``tl.trans``. dk is re-read
    after the same barrier. Registers (sm_90, bf16, K = V = 128, Triton 3.9 offline): 4 warps ~255 with a small
    spill, 8 warps ~220-250 without (benchmarks/delta_bwd_regs.py). Tried and worse there: Q and Qᵀ loaded per key
    block instead of kept, and dk read once (the scaled keys' gradient moved to the second key loop)."""
    i_s, i_h = tl.program_id(0), tl.program_id(1)
    i_n, i_c, bos, eos = chunk_span(info, i_s)
    if i_n < 0:
        return
    i_hk = i_h // G
    o_i = tl.arange(0, BT)
    o_t = bos + i_c * BT + o_i
    m_t = o_t < eos
    m_tt = m_t[:, None] & m_t[None, :]
    # [BT, BT]: Xᵀ, loaded transposed (row a = column a of X)
    b_Xt = tl.load(X + (o_t * H + i_h)[None, :] * BT + o_i[:, None], mask=m_t[None, :], other=0)
    dt = b_Xt.dtype
    b_b = tl.load(beta + o_t * H + i_h, mask=m_t, other=0).to(tl.float32)
    b_e = tl.full([BT], 1.0, tl.float32)  # e^G
    if GATE == 1:
        b_g = tl.load(gc + o_t * H + i_h, mask=m_t, other=0)
        b_e = tl.exp(b_g)
    b_dX = tl.zeros([BT, BT], dtype=tl.float32)
    b_db = tl.zeros([BT], dtype=tl.float32)
    b_dg = tl.zeros([BT], dtype=tl.float32)
    # dU = dv_new through U = X (b v)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        p_v = (o_t * H + i_h)[:, None] * V + o_v[None, :]
        # [BT, BV]
        b_du = tl.load(dvn + p_v, mask=m_tv, other=0).to(dt)
        b_v = tl.load(v + p_v, mask=m_tv, other=0)
        # [BV, BT]
        b_vt = tl.load(v + (o_t * H + i_h)[None, :] * V + o_v[:, None], mask=m_v[:, None] & m_t[None, :], other=0)
        b_dX += dot(b_du, (b_vt.to(tl.float32) * b_b[None, :]).to(dt), prec=PREC)
        b_dvb = dot(b_Xt, b_du, prec=PREC)
        tl.store(dv + p_v, (b_dvb * b_b[:, None]).to(dv.dtype.element_ty), mask=m_tv)
        b_db += tl.sum(b_dvb * b_v.to(tl.float32), 1)
    # dW through W = X (b e^G k), by key blocks: the scaled keys' gradient b e^G Xᵀ dW goes into dk
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        p_k = (o_t * H + i_h)[:, None] * K + o_k[None, :]
        # [BT, BK] and [BK, BT]: e^G k
        b_dw = tl.load(dw + p_k, mask=m_tk, other=0).to(dt)
        b_k = tl.load(k + (o_t * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_tk, other=0).to(tl.float32)
        b_kt = tl.load(k + (o_t * (H // G) + i_hk)[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :],
                       other=0).to(tl.float32)  # fmt: skip
        b_k = b_k * b_e[:, None]
        b_kt = b_kt * b_e[None, :]
        b_dX += dot(b_dw, (b_kt * b_b[None, :]).to(dt), prec=PREC)
        b_dkb = dot(b_Xt, b_dw, prec=PREC)
        b_dkk = tl.sum(b_dkb * b_k, 1)
        b_db += b_dkk
        b_dg += b_dkk * b_b
        tl.store(dk + p_k, tl.load(dk + p_k, mask=m_tk, other=0) + b_dkb * b_b[:, None] * b_e[:, None], mask=m_tk)
    # dN = -Xᵀ dX Xᵀ on the strictly lower part (X = (I + N)^-1), then Q = dN o E
    m_low = (o_i[:, None] >= o_i[None, :]) & m_tt
    b_dX = tl.where(m_low, b_dX, 0)
    if HALF:
        b_P = dot(b_dX.to(dt), b_Xt, prec=PREC)
        b_Q = -dot(b_Xt, b_P.to(dt), prec=PREC)
    else:
        b_Xtf = b_Xt.to(tl.float32)
        b_P = dot(b_dX, b_Xtf, prec=PREC)
        b_Q = -dot(b_Xtf, b_P, prec=PREC)
    m_S = (o_i[:, None] > o_i[None, :]) & m_tt
    b_Q = tl.where(m_S, b_Q, 0)
    if GATE == 1:
        b_Q *= tl.exp(tl.where(m_S, b_g[:, None] - b_g[None, :], 0))
    p_Q = (o_t * H + i_h)[:, None] * BT + o_i[None, :]
    tl.store(dN + p_Q, b_Q, mask=m_t[:, None])
    tl.debug_barrier()  # Q and dk as this program stored them, for all its threads
    # [BT, BT]: Qᵀ, loaded transposed
    b_Qt = tl.load(dN + (o_t * H + i_h)[None, :] * BT + o_i[:, None], mask=m_tt, other=0)
    # the pairs of A = k kᵀ e^{G_i - G_j}: R = Q k, C = Qᵀ (b k)
    b_db2 = tl.zeros([BT], dtype=tl.float32)
    b_dg2 = tl.zeros([BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        p_k = (o_t * H + i_h)[:, None] * K + o_k[None, :]
        # [BT, BK]
        b_kh = tl.load(k + (o_t * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_k = b_kh.to(tl.float32)
        if HALF:
            b_R = dot(b_Q.to(dt), b_kh.to(dt), prec=PREC)
            b_C = dot(b_Qt.to(dt), (b_k * b_b[:, None]).to(dt), prec=PREC)
        else:
            b_R = dot(b_Q, b_k, prec=PREC)
            b_C = dot(b_Qt, b_k * b_b[:, None], prec=PREC)
        b_dk = tl.load(dk + p_k, mask=m_tk, other=0) + b_b[:, None] * b_R + b_C
        if DKO:
            tl.store(dko + p_k, b_dk.to(dko.dtype.element_ty), mask=m_tk)
        else:
            tl.store(dk + p_k, b_dk, mask=m_tk)
        b_db2 += tl.sum(b_k * b_R, 1)
        b_dg2 += tl.sum(b_k * (b_b[:, None] * b_R - b_C), 1)
    tl.store(dbeta + o_t * H + i_h, b_db + b_db2, mask=m_t)
    if GATE == 1:  # without a gate dG is a placeholder (the launcher passes dbeta)
        tl.store(dG + o_t * H + i_h, b_dg + b_dg2, mask=m_t)


@triton.jit
def chunk_kk_pair_bwd_vec_kernel(
    k,
    beta,
    gc,
    dN,
    dk,
    dbeta,
    dG,
    info,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    NC: tl.constexpr,
    PREC: tl.constexpr,
    dko=None,
    DKO: tl.constexpr = False,
):
    """The pairs of A_ij = sum_d k_id k_jd e^{G_id - G_jd} (a gate per key dim, kda) for the rows of one sub-chunk:
    R_i = sum_{j<i} dN_ij k_j e^{G_i - G_j}, C_i = sum_{m>i} dN_mi b_m k_m e^{G_m - G_i};
    dk += b R + C, dbeta += k . R, dG += b k R - k C (added; BK covers K). With ``DKO`` dk's sum goes to ``dko``
    in its dtype instead (the last addition to dk: no cast of the fp32 dk after).

    Blocks off the diagonal are dots of factors taken against a reference row of this sub-chunk (every exponent
    <= 0); the diagonal block is factored when its gate span allows (``SPAN``), else summed column by column."""
    i_s, i_i, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_c, bos, eos = chunk_span(info, i_s)
    if i_n < 0:
        return
    i_hk = i_h // G
    t0 = bos + i_c * BT
    t_i0 = t0 + i_i * BC
    if t_i0 >= eos:
        return
    o_c = tl.arange(0, BC)
    o_ti = t_i0 + o_c
    m_ti = o_ti < eos
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    m_ik = m_ti[:, None] & m_k[None, :]
    b_g = tl.load(gc + (o_ti * H + i_h)[:, None] * K + o_k[None, :], mask=m_ik, other=0)
    b_R = tl.zeros([BC, BK], dtype=tl.float32)
    b_C = tl.zeros([BC, BK], dtype=tl.float32)
    # blocks left of the diagonal: reference = the first row of this sub-chunk
    b_gr = tl.load(gc + (t_i0 * H + i_h) * K + o_k, mask=m_k, other=0)
    for i_j in range(0, i_i):
        o_tj = t0 + i_j * BC + o_c
        b_dN = tl.load(dN + (o_ti * H + i_h)[:, None] * BT + (i_j * BC + o_c)[None, :], mask=m_ti[:, None], other=0)
        b_kj = tl.load(k + (o_tj * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0)
        b_gj = tl.load(gc + (o_tj * H + i_h)[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0)
        b_kg = b_kj.to(tl.float32) * tl.exp(tl.where(m_k[None, :], b_gr[None, :] - b_gj, 0))
        b_R += dot(b_dN, b_kg, prec=PREC)
    # blocks below the diagonal: reference = the last valid row of this sub-chunk
    t_l = tl.minimum(t_i0 + BC, eos) - 1
    b_gl = tl.load(gc + (t_l * H + i_h) * K + o_k, mask=m_k, other=0)
    for i_b in range(i_i + 1, NC):
        o_tb = t0 + i_b * BC + o_c
        m_tb = o_tb < eos
        m_bk = m_tb[:, None] & m_k[None, :]
        # [BC(i), BC(m)]: dN^T, rows of block b as columns
        b_dNt = tl.load(dN + (o_tb * H + i_h)[None, :] * BT + (i_i * BC + o_c)[:, None], mask=m_tb[None, :], other=0)
        b_kb = tl.load(k + (o_tb * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_bk, other=0).to(tl.float32)
        b_bb = tl.load(beta + o_tb * H + i_h, mask=m_tb, other=0).to(tl.float32)
        b_gb = tl.load(gc + (o_tb * H + i_h)[:, None] * K + o_k[None, :], mask=m_bk, other=0)
        b_qg = b_kb * b_bb[:, None] * tl.exp(tl.where(m_bk, b_gb - b_gl[None, :], 0))
        b_C += dot(b_dNt, b_qg, prec=PREC)
    b_R *= tl.exp(tl.where(m_ik, b_g - b_gr[None, :], 0))
    b_C *= tl.exp(tl.where(m_ik, b_gl[None, :] - b_g, 0))
    # the diagonal block
    b_ki = tl.load(k + (o_ti * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_ik, other=0).to(tl.float32)
    b_bi = tl.load(beta + o_ti * H + i_h, mask=m_ti, other=0).to(tl.float32)
    b_df = tl.where(m_ik, b_g - b_gr[None, :], 0)
    b_dl = tl.where(m_ik, b_g - b_gl[None, :], 0)
    factored = tl.maximum(tl.max(tl.abs(b_df)), tl.max(tl.abs(b_dl))) <= 60.0
    if factored:
        m_S = (o_c[:, None] > o_c[None, :]) & m_ti[:, None] & m_ti[None, :]
        b_dNb = tl.load(dN + (o_ti * H + i_h)[:, None] * BT + (i_i * BC + o_c)[None, :], mask=m_S, other=0)
        m_St = (o_c[:, None] < o_c[None, :]) & m_ti[:, None] & m_ti[None, :]
        b_dNbt = tl.load(dN + (o_ti * H + i_h)[None, :] * BT + (i_i * BC + o_c)[:, None], mask=m_St, other=0)
        b_R += tl.exp(b_df) * dot(b_dNb, b_ki * tl.exp(-b_df), prec=PREC)
        b_C += tl.exp(-b_dl) * dot(b_dNbt, b_ki * b_bi[:, None] * tl.exp(b_dl), prec=PREC)
    for r in range(0, tl.where(factored, 0, BC)):
        t_r = t_i0 + r
        m_r = m_k & ((o_k * 0 + t_r) < eos)
        b_kr = tl.load(k + (t_r * (H // G) + i_hk) * K + o_k, mask=m_r, other=0).to(tl.float32)
        b_br = tl.load(beta + t_r * H + i_h, mask=t_r < eos, other=0).to(tl.float32)
        b_grr = tl.load(gc + (t_r * H + i_h) * K + o_k, mask=m_r, other=0)
        # [BC]: column r of dN (rows i of this block after r) and row r (columns j of this block before r)
        b_dnc = tl.load(dN + (o_ti * H + i_h) * BT + i_i * BC + r, mask=m_ti & (o_c > r), other=0)
        b_dnr = tl.load(dN + (t_r * H + i_h) * BT + i_i * BC + o_c, mask=(o_c < r) & ((o_c * 0 + t_r) < eos), other=0)
        m_ge = ((o_c > r) & m_ti)[:, None] & m_r[None, :]
        m_le = ((o_c < r) & m_ti)[:, None] & m_r[None, :]
        b_R += tl.where(m_ge, b_dnc[:, None] * b_kr[None, :] * tl.exp(tl.where(m_ge, b_g - b_grr[None, :], 0)), 0)
        b_C += tl.where(
            m_le, b_dnr[:, None] * (b_br * b_kr)[None, :] * tl.exp(tl.where(m_le, b_grr[None, :] - b_g, 0)), 0
        )
    p = (o_ti * H + i_h)[:, None] * K + o_k[None, :]
    b_dk = tl.load(dk + p, mask=m_ik, other=0) + b_bi[:, None] * b_R + b_C
    if DKO:
        tl.store(dko + p, b_dk.to(dko.dtype.element_ty), mask=m_ik)
    else:
        tl.store(dk + p, b_dk, mask=m_ik)
    tl.store(dG + p, tl.load(dG + p, mask=m_ik, other=0) + b_ki * (b_bi[:, None] * b_R - b_C), mask=m_ik)
    p_b = o_ti * H + i_h
    tl.store(dbeta + p_b, tl.load(dbeta + p_b, mask=m_ti, other=0) + tl.sum(b_ki * b_R, 1), mask=m_ti)

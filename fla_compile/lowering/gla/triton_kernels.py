"""Triton kernels of the GLA line (linear_attn, retention, simple_gla, gla).

One kernel set; the gate kind is a compile-time switch ``GATE``: 0 none, 1 scalar per head and step
(simple_gla), 2 vector per key dim (gla), 3 one decay per head for every step (retention: the chunk kernels form
its in-chunk cumsum from the step, ``common/gating.scalar_gate``; the decode kernel reads it once), 4 a scalar gate
the chunk kernels scan themselves (``triton_launch.SCALAR_SCAN_IN_KERNELS``: no cumsum kernel). Plain
pointer arithmetic and masks (no ``tl.make_block_ptr``, gone in Triton 3.9), so the same code runs on Triton 3.6,
3.9 and under ``TRITON_INTERPRET=1``.

Layouts (all contiguous, tokens of all sequences flattened to ``TT = B * T``):
    q, k: [TT, HK, K]      v, o, do: [TT, H, V]      gc: [TT, H] or [TT, H, K] fp32 ([H] decays for GATE 3)
    (GATE 4: the gate as given, [TT, H], any float dtype)
    h, dh: [NS, H, K, V] fp32 (state before / gradient after each chunk slot)
    h0, ht, dht, dh0: [N, H, K, V] fp32
Chunk-parallel kernels read (sequence, chunk, its bounds) from ``info`` ([NS, 4], sequence -1 for an unused
slot); state-carrying kernels read their sequence's bounds from ``cu`` ([N + 1] token offsets) and loop over its
chunks, starting at slot ``chunk_off[n]``.
No host syncs, no atomics: every output element is written by exactly one program.

rwkv6 (``BONUS``, vector gate only) reads the state before each step: q is gated by ``gq``, the
exclusive in-chunk cumsum (b_{i-1}, stored as a shifted copy of gc so that gq_i - gc_{i-1} is exactly
0), the intra-chunk scores are strictly causal, and the diagonal is the bonus q_i . (u k_i). The
kernels whose q gate differs take ``gq`` and ``BONUS`` as trailing arguments with defaults (off: the
gla code, unchanged); chunk_fwd_o_kernel gets gq as its gate, chunk_bwd_dv_kernel needs nothing.

Gates: ``gc`` is the in-chunk cumsum b of the fp32 log-gate. Every exponent taken is
b_i - b_j with i >= j, b_last - b_j or b_i (the chunk start is the reference), masked
to 0 before ``exp`` where it would not be used, so decaying gates never overflow.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..common.chunks import (
    chunk_block,
    chunk_span,
    sequence_span,
    state_block,
    state_chunk_rows,
    state_offsets,
    state_pass_tiles,
    state_start,
)
from ..common.dots import dot
from ..common.gating import (
    chunk_factored,
    chunk_gate,
    chunk_log_decay,
    decay_rows_to_last_t,
    decay_to_last_t,
    gate_range,
    scalar_decay_to_last,
    scalar_gate,
    scalar_gate_at,
    scalar_gate_id,
    scalar_gate_scores,
)


@triton.jit
def _strict_prefix(s1, p1, s2, p2):
    """Scan combine of (sum of all, sum of all but the last): its scan of (x, 0) gives sum_{j < t} x_j."""
    return s1 + s2, s1 + p2


@triton.jit
def chunk_cumsum_kernel(
    g,
    gc,
    info,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    GATE: tl.constexpr,
    gq=None,
    EXCL: tl.constexpr = False,
    spread=None,
    SPAN_OUT: tl.constexpr = False,
):
    """gc = cumsum of g inside each chunk, fp32; with EXCL (vector gate) also gq, the exclusive one; with
    ``SPAN_OUT`` (vector gate) the spread of each tile's cumsums (``gating.gate_range``) into ``spread`` [NS, NK, H],
    from which the A and output kernels decide which of them forms a chunk's scores (``gating.chunk_factored``)."""
    i_s, i_k, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_c, bos, eos = chunk_span(info, i_s)
    if i_n < 0:
        return
    o_t = bos + i_c * BT + tl.arange(0, BT)
    m_t = o_t < eos
    if GATE == 1:
        # [BT]
        b_g = tl.load(g + o_t * H + i_h, mask=m_t, other=0).to(tl.float32)
        tl.store(gc + o_t * H + i_h, tl.cumsum(b_g, axis=0), mask=m_t)
    else:
        o_k = i_k * BK + tl.arange(0, BK)
        m = m_t[:, None] & (o_k < K)[None, :]
        p = (o_t * H + i_h)[:, None] * K + o_k[None, :]
        # [BT, BK]
        b_g = tl.load(g + p, mask=m, other=0).to(tl.float32)
        b_c = tl.cumsum(b_g, axis=0)
        tl.store(gc + p, b_c, mask=m)
        if SPAN_OUT:  # with EXCL (rwkv6) 0 too: the exclusive cumsum's first row, the factored form's reference
            tl.store(spread + (i_s * tl.num_programs(1) + i_k) * H + i_h, gate_range(b_c, m, EXCL))
        if EXCL:  # gq[t] = gc[t - 1] inside the chunk, 0 at its first step: the same values, one row down
            o_i = tl.arange(0, BT)
            m_s = (o_t + 1 < eos)[:, None] & (o_i < BT - 1)[:, None] & (o_k < K)[None, :]
            tl.store(gq + p + H * K, b_c, mask=m_s)
            tl.store(gq + p, tl.zeros_like(b_c), mask=m & (o_i == 0)[:, None])


@triton.jit
def chunk_fwd_h_kernel(
    k,
    v,
    gc,
    h,
    h0,
    ht,
    cu,
    chunk_off,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    GATE: tl.constexpr,
    USE_H0: tl.constexpr,
    STORE_H: tl.constexpr,
    STORE_HT: tl.constexpr,
    PREC: tl.constexpr,
    DECAY_ROWS: tl.constexpr = False,
    FULL_CHUNKS: tl.constexpr = False,
    dcum=None,
    dseg=None,
    STORE_DCUM: tl.constexpr = False,
):
    """Carry the state over a sequence's chunks: h[slot] = state before the chunk, ht = final state.

    ``STORE_DCUM`` (the sequences are a sequence's segments, see ``segment_combine_kernel``): also the log decay
    per key dim from the sequence's start to each chunk's start, ``dcum`` [NS, H, K], and to its end, ``dseg``
    [N, H, K] (fp32, written by the V-block-0 programs; a scalar gate's repeated over K, 0 without a gate).

    ``DECAY_ROWS`` (scalar gates, ids 1, 3, 4): the update kᵀ diag(e^{G_last - G}) v decays v's [BT, BV] rows (the
    dot's B operand, stored to shared memory for it) instead of the keys' [BK, BT] columns (its A operand, which then
    takes a trip through shared memory into registers before the dot), FLA's order: fewer multiplies where V blocks
    are narrower than K blocks (offline sm_90, gate id 4, K blocks of 64, V blocks of 32, 4 warps: a loop of 300
    instructions and 72 registers against the keys' decay's 342 and 94; sm90's scalar table where fill_sms halves the
    blocks)."""
    i_nh, i_k, i_v = state_block(tl.cdiv(K, BK), tl.cdiv(V, BV))
    i_n, i_h = i_nh // H, i_nh % H
    i_hk = i_h // G
    bos, eos, NT = sequence_span(cu, i_n, BT)
    s0 = tl.load(chunk_off + i_n).to(tl.int64)
    o_k, o_v, m_k, m_v, m_h, o_h = state_offsets(i_k, i_v, K, V, BK, BV)
    # [BK, BV]
    b_h = state_start(h0, i_n * H + i_h, o_h, m_h, K, V, BK, BV, USE_H0)
    o_i = tl.arange(0, BT)
    b_dc = tl.zeros([BK], dtype=tl.float32)  # STORE_DCUM: the log decay so far
    m_dc = m_k & (o_k * 0 + i_v == 0)
    for i_c in range(0, NT):
        if STORE_H:
            tl.store(h + ((s0 + i_c) * H + i_h) * K * V + o_h, b_h.to(h.dtype.element_ty), mask=m_h)
        # the chunk's first row in the (int64) base pointers, the tiles' offsets from it in int32 (as the output
        # kernel's; the gate through ``gating.chunk_gate``)
        t0 = bos + i_c * BT
        n_t, m_t = state_chunk_rows(t0, eos, o_i, BT, FULL_CHUNKS)
        b_kt, b_v = state_pass_tiles(k, v, t0, o_i, m_t, o_k, m_k, o_v, m_v, i_hk, i_h, H, G, K, V)
        g_c = chunk_gate(gc, t0, H, K, GATE)
        if STORE_DCUM:
            tl.store(dcum + ((s0 + i_c) * H + i_h) * K + o_k, b_dc, mask=m_dc)
            b_dc += chunk_log_decay(g_c, o_i, m_t, n_t - 1, i_h, H, K, o_k, m_k, GATE)
        if DECAY_ROWS and scalar_gate_id(GATE):
            b_h, b_vd = decay_rows_to_last_t(b_h, b_v, g_c, o_i, m_t, 0, n_t - 1, i_h, H, GATE)
            b_h += dot(b_kt, b_vd.to(b_v.dtype), prec=PREC)
        else:
            b_h, b_kt = decay_to_last_t(b_h, b_kt, g_c, o_i, m_t, 0, n_t - 1, i_h, H, K, o_k, m_k, GATE)
            b_h += dot(b_kt.to(b_v.dtype), b_v, prec=PREC)
    if STORE_HT:
        tl.store(ht + (i_n * H + i_h) * K * V + o_h, b_h, mask=m_h)
    if STORE_DCUM:
        tl.store(dseg + (i_n * H + i_h) * K + o_k, b_dc, mask=m_dc)


@triton.jit
def segment_combine_kernel(
    hl,
    dseg,
    h0,
    hin,
    ht,
    S,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_H0: tl.constexpr,
):
    """The state entering each of a sequence's S segments, from the segments' own passes (each from a zero state,
    ``chunk_fwd_h_kernel`` with ``STORE_DCUM``): hin[s] = e^(dseg[s - 1]) ⊙ hin[s - 1] + hl[s - 1], hin[0] = h0 (or
    0), ht = the state after the last. hl [N S, H, K, V] fp32: each segment's final local state; dseg [N S, H, K]:
    its log decay; hin [N S, H, K, V] in the chunk states' dtype. A sequence whose heads x blocks leave SMs idle
    runs its state pass as S shorter walks side by side, and the output kernel adds e^(dcum) ⊙ hin to each chunk's
    local state (``chunk_fwd_o_kernel``'s ``SEGMENTED``)."""
    i_nh, i_k, i_v = state_block(tl.cdiv(K, BK), tl.cdiv(V, BV))
    i_n, i_h = i_nh // H, i_nh % H
    o_k, o_v, m_k, m_v, m_h, o_h = state_offsets(i_k, i_v, K, V, BK, BV)
    # [BK, BV]
    b_h = state_start(h0, i_nh, o_h, m_h, K, V, BK, BV, USE_H0)
    for s in range(0, S):
        i_g = (i_n * S + s) * H + i_h
        tl.store(hin + i_g.to(tl.int64) * K * V + o_h, b_h.to(hin.dtype.element_ty), mask=m_h)
        b_d = tl.load(dseg + i_g * K + o_k, mask=m_k, other=0)
        b_h = b_h * tl.exp(b_d)[:, None] + tl.load(hl + i_g.to(tl.int64) * K * V + o_h, mask=m_h, other=0)
    tl.store(ht + i_nh.to(tl.int64) * K * V + o_h, b_h, mask=m_h)


@triton.jit
def chunk_fwd_o_kernel(
    q,
    k,
    v,
    gc,
    h,
    A,
    o,
    info,
    scale,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    GATE: tl.constexpr,
    PREC: tl.constexpr,
    SA: tl.constexpr,
    HEADS_INNER: tl.constexpr = False,
    spread=None,
    NKS: tl.constexpr = 1,
    A_FACTORED: tl.constexpr = False,
    STORE_A: tl.constexpr = False,
    gk=None,
    u=None,
    BONUS: tl.constexpr = False,
    V_EARLY: tl.constexpr = False,
    hin=None,
    dcum=None,
    SEG_S=1,
    SEG_L=1,
    SEGMENTED: tl.constexpr = False,
):
    """o = scale * ((q * e^b) h + (causal A) v) per chunk, A_ij = sum_k q_ik k_jk e^(b_ik - b_jk).

    The vector gate reads A from chunk_gla_A_kernel, rows of SA entries (see gla_triton_intra). With
    ``A_FACTORED`` a chunk whose gate spread allows it (``gating.chunk_factored``, the A kernel skips those) forms
    its A here instead, in one dot of q_i e^(b_i - b_0) and k_j e^(b_0 - b_j) (b_0: the chunk's first row), and with
    ``STORE_A`` writes it to ``A`` for the backward. rwkv6 (``BONUS``; ``gc`` is then gq, the exclusive cumsum,
    and ``gk`` the inclusive one): the reference is gq's first row, 0, so q's factor is q e^(gq), the state term's
    own, k's is e^(-gk); the pairs strictly below the diagonal, the bonus q_i . (u k_i) on it. ``V_EARLY``: v's
    tile loaded before the K loop, its latency under the loop's (the table's ``o_v_early``). ``SEGMENTED``:
    ``h`` holds each chunk's state within its segment of SEG_L chunks (SEG_S a sequence), and the chunk's state is
    h + e^(dcum) ⊙ hin[segment] (``segment_combine_kernel``). The grid: ``chunks.chunk_grid`` (HEADS_INNER: its
    order)."""
    i_s, i_v, i_h = chunk_block(tl.cdiv(V, BV), H, HEADS_INNER)
    i_n, i_c, bos, eos = chunk_span(info, i_s)
    if i_n < 0:
        return
    i_hk = i_h // G
    o_i = tl.arange(0, BT)
    t0 = bos + i_c * BT
    o_t = t0 + o_i
    # the chunk's first row in the (int64) base pointers, the tiles' offsets from it in int32, as FLA's kernels
    # address them (every element's int64 offset from the tensor's start: 188 64-bit PTX instructions, now 72;
    # retention's forward kernels 0.165 -> 0.159 ms at (8, 2048, 32, 64) on the H200, bitwise the same)
    m_t = o_i < (eos - t0).to(tl.int32)
    q, k = q + (t0 * (H // G) + i_hk) * K, k + (t0 * (H // G) + i_hk) * K
    v, o = v + (t0 * H + i_h) * V, o + (t0 * H + i_h) * V
    r_q, r_v = o_i * ((H // G) * K), o_i * (H * V)
    if GATE == 2:
        gc, A = gc + (t0 * H + i_h) * K, A + (t0 * H + i_h) * SA
    r_g, r_a = o_i * (H * K), o_i * (H * SA)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    m_A = (o_i[:, None] >= o_i[None, :]) & m_t[:, None] & m_t[None, :]
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    b_bon = tl.zeros([BT], dtype=tl.float32)  # A_FACTORED and BONUS: q_i . (u k_i)
    if V_EARLY:  # v's tile in flight while the K loop runs
        b_v = tl.load(v + r_v[:, None] + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
    if BONUS:
        gk = gk + (t0 * H + i_h) * K
    if SEGMENTED:  # the chunk's segment, as a sequence x head of hin
        i_g = ((i_n * SEG_S + i_c // SEG_L) * H + i_h).to(tl.int64)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        # [BT, BK]
        b_q = tl.load(q + r_q[:, None] + o_k[None, :], mask=m_tk, other=0)
        # [BK, BV]
        b_h = tl.load(
            h + (i_s.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
            mask=m_k[:, None] & m_v[None, :],
            other=0,
        )
        if SEGMENTED:  # the state entering the segment, decayed to the chunk's start, added to the local one
            b_hin = tl.load(hin + i_g * K * V + o_k[:, None] * V + o_v[None, :],
                            mask=m_k[:, None] & m_v[None, :], other=0)  # fmt: skip
            b_dc = tl.load(dcum + (i_s.to(tl.int64) * H + i_h) * K + o_k, mask=m_k, other=0)
            b_h = b_h.to(tl.float32) + tl.exp(b_dc)[:, None] * b_hin.to(tl.float32)
        if GATE == 2:
            b_g = tl.load(gc + r_g[:, None] + o_k[None, :], mask=m_tk, other=0)
            b_qg = b_q.to(tl.float32) * tl.exp(b_g)
            b_o += dot(b_qg.to(b_q.dtype), b_h.to(b_q.dtype), prec=PREC)
            if A_FACTORED and BONUS:  # reference 0: q's factor is b_qg
                m_kt = m_k[:, None] & m_t[None, :]
                # [BK, BT]
                b_kt = tl.load(k + r_q[None, :] + o_k[:, None], mask=m_kt, other=0)
                b_gkt = tl.load(gk + r_g[None, :] + o_k[:, None], mask=m_kt, other=0)
                b_kf = (b_kt.to(tl.float32) * tl.exp(-b_gkt)).to(b_q.dtype)
                b_A += dot(b_qg.to(b_q.dtype), b_kf, prec=PREC)
                b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0).to(tl.float32)
                b_kr = tl.load(k + r_q[:, None] + o_k[None, :], mask=m_tk, other=0).to(tl.float32)
                b_bon += tl.sum(b_q.to(tl.float32) * b_u[None, :] * b_kr, axis=1)
            elif A_FACTORED:  # formed for every chunk, used where the spread allows: no branch in the loop
                b_d = tl.where(m_tk, b_g - tl.load(gc + o_k, mask=m_k, other=0)[None, :], 0)
                # [BK, BT]
                b_kt = tl.load(k + r_q[None, :] + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0)
                b_qf = (b_q.to(tl.float32) * tl.exp(b_d)).to(b_q.dtype)
                b_kf = (b_kt.to(tl.float32) * tl.exp(-tl.trans(b_d))).to(b_q.dtype)
                b_A += dot(b_qf, b_kf, prec=PREC)
        else:
            # [BK, BT]
            b_kt = tl.load(k + r_q[None, :] + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0)
            b_o += dot(b_q, b_h.to(b_q.dtype), prec=PREC)
            b_A += dot(b_q, b_kt, prec=PREC)
    if scalar_gate_id(GATE):
        b_o, b_A = scalar_gate_scores(b_o, b_A, scalar_gate(gc, o_t, m_t, t0, i_h, H, GATE), m_A)
    if GATE == 2:  # A from chunk_gla_A_kernel, or formed above
        if A_FACTORED:
            if chunk_factored(spread, i_s, i_h, H, NKS, q.dtype.element_ty == tl.float16):
                if BONUS:  # strictly causal pairs, the bonus on the diagonal
                    b_A = tl.where(o_i[:, None] > o_i[None, :], b_A, tl.where(o_i[:, None] == o_i[None, :],
                                                                              b_bon[:, None], 0))  # fmt: skip
                if STORE_A:
                    if i_v == 0:  # the rows of this chunk, zeros above the diagonal, as the A kernel writes them
                        tl.store(A + r_a[:, None] + o_i[None, :], tl.where(m_A, b_A, 0).to(A.dtype.element_ty),
                                 mask=m_t[:, None])  # fmt: skip
            else:
                b_A = tl.load(A + r_a[:, None] + o_i[None, :], mask=m_A, other=0).to(tl.float32)
        else:
            b_A = tl.load(A + r_a[:, None] + o_i[None, :], mask=m_A, other=0)
    b_A = tl.where(m_A, b_A, 0)
    if not V_EARLY:  # [BT, BV]
        b_v = tl.load(v + r_v[:, None] + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
    b_o += dot(b_A.to(b_v.dtype), b_v, prec=PREC)
    b_o *= scale
    tl.store(o + r_v[:, None] + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


@triton.jit
def chunk_fwd_walk_kernel(
    q,
    k,
    v,
    gc,
    o,
    h0,
    ht,
    cu,
    scale,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    GATE: tl.constexpr,
    USE_H0: tl.constexpr,
    PREC: tl.constexpr,
    A=None,
    SA: tl.constexpr = 64,
):
    """The forward in one pass: each program walks one sequence's chunks for one head and V block, the state
    [K, BV] in registers (BK >= K), and writes o chunk by chunk, o = scale ((q e^b) h + (causal A) v) as
    chunk_fwd_o_kernel forms it, then carries the state as chunk_fwd_h_kernel does. No chunk states go through
    memory; the grid is N H cdiv(V, BV) programs, so it pays where that fills the GPU (``triton_launch.FWD_WALK``).
    A gate per key dim (GATE 2) reads its A (rows of SA entries) from chunk_gla_A_kernel, as the output kernel does.
    ht: the final state."""
    i_nh, _, i_v = state_block(1, tl.cdiv(V, BV))
    i_n, i_h = i_nh // H, i_nh % H
    i_hk = i_h // G
    bos, eos, NT = sequence_span(cu, i_n, BT)
    o_k, o_v, m_k, m_v, m_h, o_h = state_offsets(0, i_v, K, V, BK, BV)
    # [BK, BV]
    b_h = state_start(h0, i_n * H + i_h, o_h, m_h, K, V, BK, BV, USE_H0)
    o_i = tl.arange(0, BT)
    r_q, r_v = o_i * ((H // G) * K), o_i * (H * V)
    for i_c in range(0, NT):
        t0 = bos + i_c * BT  # base pointers at the chunk's first row, int32 tile offsets
        n_t = tl.minimum(eos - t0, BT).to(tl.int32)
        m_t = o_i < n_t
        m_A = (o_i[:, None] >= o_i[None, :]) & m_t[:, None] & m_t[None, :]
        # [BT, BK]; [BK, BT], [BT, BV]
        b_q = tl.load(q + (t0 * (H // G) + i_hk) * K + r_q[:, None] + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                      other=0)  # fmt: skip
        b_kt, b_v = state_pass_tiles(k, v, t0, o_i, m_t, o_k, m_k, o_v, m_v, i_hk, i_h, H, G, K, V)
        g_c = chunk_gate(gc, t0, H, K, GATE)
        # the state before the chunk in the inputs' dtype, as chunk_fwd_o_kernel reads it from the stored states
        if GATE == 2:
            b_gq = tl.load(g_c + (o_i * H + i_h)[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                           other=0)  # fmt: skip
            b_o = dot((b_q.to(tl.float32) * tl.exp(b_gq)).to(b_q.dtype), b_h.to(b_q.dtype), prec=PREC)
            b_A = tl.load(A + (t0 * H + i_h) * SA + (o_i * (H * SA))[:, None] + o_i[None, :], mask=m_A, other=0)
        else:
            b_o = dot(b_q, b_h.to(b_q.dtype), prec=PREC)
            b_A = dot(b_q, b_kt, prec=PREC)
        if scalar_gate_id(GATE):  # the gate read (GATE 4: scanned) once for scores and state
            b_g = scalar_gate(g_c, o_i, m_t, 0, i_h, H, GATE)
            b_o, b_A = scalar_gate_scores(b_o, b_A, b_g, m_A)
        b_A = tl.where(m_A, b_A, 0)
        b_o += dot(b_A.to(b_v.dtype), b_v, prec=PREC)
        b_o *= scale
        tl.store(o + (t0 * H + i_h) * V + r_v[:, None] + o_v[None, :], b_o.to(o.dtype.element_ty),
                 mask=m_t[:, None] & m_v[None, :])  # fmt: skip
        if scalar_gate_id(GATE):  # after the output: fewer fp32 tiles live at once
            b_h, b_kt = scalar_decay_to_last(b_h, b_kt, b_g, g_c, o_i, m_t, 0, n_t - 1, i_h, H, GATE)
        if GATE == 2:  # the keys' gates read again, transposed (from cache), as chunk_fwd_h_kernel reads them
            b_h, b_kt = decay_to_last_t(b_h, b_kt, g_c, o_i, m_t, 0, n_t - 1, i_h, H, K, o_k, m_k, GATE)
        b_h += dot(b_kt.to(b_v.dtype), b_v, prec=PREC)
    tl.store(ht + (i_n * H + i_h) * K * V + o_h, b_h, mask=m_h)


@triton.jit
def chunk_bwd_dh_kernel(
    q,
    do,
    gc,
    dh,
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
    gq=None,
    BONUS: tl.constexpr = False,
    FULL_CHUNKS: tl.constexpr = False,
):
    """Carry the state gradient backwards: dh[slot] = dL/d(state after the chunk), dh0 = dL/d(initial state).

    BONUS (rwkv6): q is gated by gq, the exclusive cumsum."""
    i_nh, i_k, i_v = state_block(tl.cdiv(K, BK), tl.cdiv(V, BV))
    i_n, i_h = i_nh // H, i_nh % H
    i_hk = i_h // G
    bos, eos, NT = sequence_span(cu, i_n, BT)
    s0 = tl.load(chunk_off + i_n).to(tl.int64)
    o_k, o_v, m_k, m_v, m_h, o_h = state_offsets(i_k, i_v, K, V, BK, BV)
    # [BK, BV]
    b_dh = state_start(dht, i_n * H + i_h, o_h, m_h, K, V, BK, BV, USE_DHT)
    o_i = tl.arange(0, BT)
    for i_r in range(0, NT):
        i_c = NT - 1 - i_r
        tl.store(dh + ((s0 + i_c) * H + i_h) * K * V + o_h, b_dh.to(dh.dtype.element_ty), mask=m_h)
        t0 = bos + i_c * BT  # base pointers at the chunk's first row, int32 tile offsets (as chunk_fwd_h_kernel)
        n_t, m_t = state_chunk_rows(t0, eos, o_i, BT, FULL_CHUNKS)
        b_qt, b_do = state_pass_tiles(q, do, t0, o_i, m_t, o_k, m_k, o_v, m_v, i_hk, i_h, H, G, K, V)
        g_c = chunk_gate(gc, t0, H, K, GATE)
        if scalar_gate_id(GATE):
            b_g = scalar_gate(g_c, o_i, m_t, 0, i_h, H, GATE)
            b_gl = scalar_gate_at(g_c, b_g, o_i, n_t - 1, 0, i_h, H, GATE)
            b_dh *= tl.exp(b_gl)
            b_qt = (b_qt * tl.exp(b_g)[None, :]).to(b_do.dtype)
        if GATE == 2:
            p_gt = (o_i * (H * K) + i_h * K)[None, :] + o_k[:, None]
            if BONUS:
                b_gt = tl.load(chunk_gate(gq, t0, H, K, GATE) + p_gt, mask=m_k[:, None] & m_t[None, :], other=0)
            else:
                b_gt = tl.load(g_c + p_gt, mask=m_k[:, None] & m_t[None, :], other=0)
            b_gl = tl.load(g_c + ((n_t - 1) * H + i_h) * K + o_k, mask=m_k, other=0)
            b_dh *= tl.exp(b_gl)[:, None]
            b_qt = (b_qt * tl.exp(b_gt)).to(b_do.dtype)
        b_dh += scale * dot(b_qt.to(b_do.dtype), b_do, prec=PREC)
    if STORE_DH0:
        tl.store(dh0 + (i_n * H + i_h) * K * V + o_h, b_dh, mask=m_h)


@triton.jit
def chunk_bwd_dv_kernel(
    q,
    k,
    gc,
    A,
    do,
    dh,
    dv,
    info,
    scale,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    GATE: tl.constexpr,
    PREC: tl.constexpr,
    SA: tl.constexpr,
    USE_DH: tl.constexpr = True,
    HEADS_INNER: tl.constexpr = False,
):
    """dv = scale * A^T do + (k * e^(b_last - b)) dh; the vector gate's A has rows of SA entries.

    Without USE_DH only the intra-chunk part scale * A^T do (the delta line's dv_local; dh is not read). The grid:
    ``chunks.chunk_grid`` (HEADS_INNER: its order)."""
    i_s, i_v, i_h = chunk_block(tl.cdiv(V, BV), H, HEADS_INNER)
    i_n, i_c, bos, eos = chunk_span(info, i_s)
    if i_n < 0:
        return
    i_hk = i_h // G
    o_i = tl.arange(0, BT)
    o_t = bos + i_c * BT + o_i
    m_t = o_t < eos
    last = tl.minimum(bos + i_c * BT + BT, eos) - 1
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    # m_At[j, i]: i >= j
    m_At = (o_i[:, None] <= o_i[None, :]) & m_t[:, None] & m_t[None, :]
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    b_At = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK) if (USE_DH or GATE != 2) else 0):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        # [BT, BK]
        b_k = tl.load(k + (o_t * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        # [BK, BV]
        b_dh = tl.zeros([BK, BV], dtype=b_k.dtype)
        if USE_DH:
            b_dh = tl.load(
                dh + (i_s.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
                mask=m_k[:, None] & m_v[None, :],
                other=0,
            ).to(b_k.dtype)
        if GATE == 2:
            b_g = tl.load(gc + (o_t * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk, other=0)
            b_gl = tl.load(gc + (last * H + i_h) * K + o_k, mask=m_k, other=0)
            b_kf = b_k.to(tl.float32)
            b_kd = b_kf * tl.exp(tl.where(m_tk, b_gl[None, :] - b_g, 0))
            b_dv += dot(b_kd.to(b_k.dtype), b_dh.to(b_k.dtype), prec=PREC)
        else:
            # [BK, BT]
            b_qt = tl.load(
                q + (o_t * (H // G) + i_hk)[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0
            )
            if USE_DH:
                b_dv += dot(b_k, b_dh.to(b_k.dtype), prec=PREC)
            b_At += dot(b_k, b_qt, prec=PREC)
    if scalar_gate_id(GATE):
        b_g = scalar_gate(gc, o_t, m_t, bos + i_c * BT, i_h, H, GATE)
        b_gl = scalar_gate_at(gc, b_g, o_t, last, bos + i_c * BT, i_h, H, GATE)
        b_dv *= tl.exp(tl.where(m_t, b_gl - b_g, 0))[:, None]
        b_At *= tl.exp(tl.where(m_At, b_g[None, :] - b_g[:, None], 0))
    if GATE == 2:  # A^T from chunk_gla_A_kernel
        b_At = tl.load(A + (o_t * H + i_h)[None, :] * SA + o_i[:, None], mask=m_At, other=0)
    b_At = tl.where(m_At, b_At, 0)
    # [BT, BV]
    b_do = tl.load(do + (o_t * H + i_h)[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
    b_dv += scale * dot(b_At.to(b_do.dtype), b_do, prec=PREC)
    tl.store(
        dv + (o_t * H + i_h)[:, None] * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_t[:, None] & m_v[None, :]
    )


@triton.jit
def chunk_bwd_dqk_kernel(
    q,
    k,
    v,
    gc,
    h,
    do,
    dh,
    dA,
    dg,
    dq,
    dk,
    info,
    scale,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    GATE: tl.constexpr,
    PREC: tl.constexpr,
    gq=None,
    BONUS: tl.constexpr = False,
    dvn=None,
    dw=None,
    DW: tl.constexpr = False,
    DG: tl.constexpr = True,
    HEADS_INNER: tl.constexpr = False,
):
    """dq, dk per head of v (fp32), from dA = do v^T, do h^T and v dh^T (gla: the inter-chunk part, and dA).

    BONUS (rwkv6): q is gated by gq (the exclusive cumsum), so its terms enter the gate gradient of the
    steps strictly before it (a strict suffix sum); dA keeps its diagonal, the bonus's.
    DW (the delta line's fused WY backward): also dw = -dvn h^T [BT, BK] in dw's dtype, from the h tiles this
    loop loads anyway (as FLA's dqkwg), so that kernel reads no chunk state.
    dg, chunk-local: [B, T, H, K] for a gate per key dim; [B, T, H, NK] for a scalar gate (one column per K block
    of the grid, summed by the caller). DG False (a scalar gate or decay that takes no gradient: retention's fixed
    decays): dg is neither formed nor written. The grid: ``chunks.chunk_grid`` over K blocks (HEADS_INNER: its
    order)."""
    i_s, i_k, i_h = chunk_block(tl.cdiv(K, BK), H, HEADS_INNER)
    i_n, i_c, bos, eos = chunk_span(info, i_s)
    if i_n < 0:
        return
    i_hk = i_h // G
    o_i = tl.arange(0, BT)
    o_t = bos + i_c * BT + o_i
    m_t = o_t < eos
    last = tl.minimum(bos + i_c * BT + BT, eos) - 1
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    m_A = (o_i[:, None] >= o_i[None, :]) & m_t[:, None] & m_t[None, :]
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_hdh = tl.zeros([BK], dtype=tl.float32)
    if DW:
        b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        # [BT, BV]
        b_do = tl.load(do + (o_t * H + i_h)[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_v = tl.load(v + (o_t * H + i_h)[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        # [BV, BT]
        b_vt = tl.load(v + (o_t * H + i_h)[None, :] * V + o_v[:, None], mask=m_v[:, None] & m_t[None, :], other=0)
        # [BV, BK]
        p_ht = (i_s.to(tl.int64) * H + i_h) * K * V + o_k[None, :] * V + o_v[:, None]
        m_ht = m_v[:, None] & m_k[None, :]
        b_ht = tl.load(h + p_ht, mask=m_ht, other=0).to(b_do.dtype)
        b_dht = tl.load(dh + p_ht, mask=m_ht, other=0).to(b_do.dtype)
        b_dA += dot(b_do, b_vt, prec=PREC)
        b_dq += dot(b_do, b_ht, prec=PREC)
        b_dk += dot(b_v, b_dht, prec=PREC)
        if DW:
            b_dvn = tl.load(dvn + (o_t * H + i_h)[:, None] * V + o_v[None, :], mask=m_tv, other=0).to(b_do.dtype)
            b_dw -= dot(b_dvn, b_ht, prec=PREC)
        if GATE == 2 or (GATE != 0 and DG):
            b_hdh += tl.sum(b_ht.to(tl.float32) * b_dht.to(tl.float32), axis=0)
    if DW:  # stored now: its accumulator is not live through the gate gradient below (registers, spills)
        tl.store(dw + (o_t * H + i_h)[:, None] * K + o_k[None, :], b_dw.to(dw.dtype.element_ty), mask=m_tk)
    b_dA = tl.where(m_A, b_dA, 0)
    # [BT, BK]
    b_q = tl.load(q + (o_t * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_tk, other=0)
    b_k = tl.load(k + (o_t * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_tk, other=0)
    b_qf, b_kf = b_q.to(tl.float32), b_k.to(tl.float32)
    if GATE == 0:
        b_dq = scale * (b_dq + dot(b_dA.to(b_k.dtype), b_k, prec=PREC))
        b_dk += scale * dot(tl.trans(b_dA).to(b_q.dtype), b_q, prec=PREC)
    # gate gradient, chunk-local and free of cancellation: dg_t = sum_{s >= t} q_s dq_s - k_s dk_s over the
    # intra-chunk pairs (diagonal excluded: it cancels exactly) and the inter-chunk dq, plus sum_{j < t} of
    # k_j dk_j over the inter-chunk dk, plus e^(b_last) sum_v h dh (the decay of the incoming state)
    if scalar_gate_id(GATE):
        b_g = scalar_gate(gc, o_t, m_t, bos + i_c * BT, i_h, H, GATE)
        b_gl = scalar_gate_at(gc, b_g, o_t, last, bos + i_c * BT, i_h, H, GATE)
        m_S = (o_i[:, None] > o_i[None, :]) & m_A
        # [BT]: scale * diag(dA); [BT, BT]: the strictly causal part, decayed
        b_dAd = scale * tl.sum(tl.where(o_i[:, None] == o_i[None, :], b_dA, 0), axis=1)
        b_M = scale * tl.where(m_S, b_dA * tl.exp(tl.where(m_S, b_g[:, None] - b_g[None, :], 0)), 0)
        b_dqn = scale * b_dq * tl.exp(b_g)[:, None] + dot(b_M.to(b_k.dtype), b_k, prec=PREC)
        b_dkx = b_dk * tl.exp(tl.where(m_t, b_gl - b_g, 0))[:, None]
        b_dkn = dot(tl.trans(b_M).to(b_q.dtype), b_q, prec=PREC)
        if DG:
            b_db = b_qf * b_dqn - b_kf * b_dkn
            b_de = b_kf * b_dkx
            b_ds = tl.exp(b_gl) * b_hdh
        b_dq = b_dqn + b_dAd[:, None] * b_kf
        b_dk = b_dkx + b_dkn + b_dAd[:, None] * b_qf
    if GATE == 2:
        b_g = tl.load(gc + (o_t * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_gl = tl.load(gc + (last * H + i_h) * K + o_k, mask=m_k, other=0)
        if BONUS:
            b_dq = scale * b_dq * tl.exp(tl.load(gq + (o_t * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk, other=0))
        else:
            b_dq = scale * b_dq * tl.exp(b_g)
        b_dk *= tl.exp(tl.where(m_tk, b_gl[None, :] - b_g, 0))
        b_db = b_qf * b_dq  # the intra-chunk pairs come from chunk_gla_bwd_intra_kernel
        b_de = b_kf * b_dk
        b_ds = tl.exp(b_gl) * b_hdh
        if i_k == 0:  # the intra-chunk part is added by chunk_gla_bwd_intra_kernel, from dA
            tl.store(dA + (o_t * H + i_h)[:, None] * BT + o_i[None, :], b_dA, mask=m_t[:, None])
    p = (o_t * H + i_h)[:, None] * K + o_k[None, :]
    if scalar_gate_id(GATE) and DG:
        # one gate per step: the key columns summed first, so the scans below run over [BT] and not [BT, BK]
        # (at K = 64 they held 255 registers and spilled), and dg is [B, T, H, NK], one column per K block
        b_db1 = tl.sum(b_db, axis=1)
        b_de1 = tl.sum(b_de, axis=1)
        _, b_pre1 = tl.associative_scan((b_de1, tl.zeros_like(b_de1)), 0, _strict_prefix)
        b_dg1 = tl.cumsum(b_db1, axis=0, reverse=True) + b_pre1 + tl.sum(b_ds, axis=0)
        tl.store(dg + (o_t * H + i_h) * tl.cdiv(K, BK) + i_k, b_dg1, mask=m_t)
    if GATE == 2:
        # suffix and strict prefix sums as scans: a cumsum minus the element itself would lose a small
        # sum next to a large element, so the strict prefix is a scan of its own (_strict_prefix)
        _, b_pre = tl.associative_scan((b_de, tl.zeros_like(b_de)), 0, _strict_prefix)
        if BONUS:  # sum_{s > t}: Triton's reverse scan is the forward one over the flipped axis
            _, b_suf = tl.associative_scan((b_db, tl.zeros_like(b_db)), 0, _strict_prefix, reverse=True)
            b_dg = b_suf + b_pre
        else:
            b_dg = tl.cumsum(b_db, axis=0, reverse=True) + b_pre
        tl.store(dg + p, b_dg + b_ds[None, :], mask=m_tk)
    tl.store(dq + p, b_dq.to(dq.dtype.element_ty), mask=m_tk)  # fp32, or the inputs' dtype when final
    tl.store(dk + p, b_dk.to(dk.dtype.element_ty), mask=m_tk)


@triton.jit
def fused_recurrent_kernel(
    q,
    k,
    v,
    g,
    o,
    h0,
    ht,
    cu,
    scale,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    GATE: tl.constexpr,
    USE_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
    u=None,
    BONUS: tl.constexpr = False,
):
    """Step the recurrence token by token (decoding). ``ht`` may alias ``h0``: each program reads its tile first.

    GATE 3: one decay per head, g [H] (retention's, broadcast over batch and steps), read once.
    BONUS (rwkv6): o_t reads the state before the step plus the bonus, (S + diag(u) k v^T)^T q."""
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    i_hk = i_h // G
    bos, eos = tl.load(cu + i_n).to(tl.int64), tl.load(cu + i_n + 1).to(tl.int64)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_h = m_k[:, None] & m_v[None, :]
    o_h = (i_n * H + i_h).to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    # [BK, BV]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + o_h, mask=m_h, other=0)
    if BONUS:
        b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0).to(tl.float32)
    if GATE == 3:
        b_d = tl.exp(tl.load(g + i_h).to(tl.float32))
    for t in range(bos, eos):
        # [BK], [BV]
        b_q = tl.load(q + (t * (H // G) + i_hk) * K + o_k, mask=m_k, other=0).to(tl.float32)
        b_k = tl.load(k + (t * (H // G) + i_hk) * K + o_k, mask=m_k, other=0).to(tl.float32)
        b_v = tl.load(v + (t * H + i_h) * V + o_v, mask=m_v, other=0).to(tl.float32)
        if BONUS:  # read first, then decay and add
            b_kv = b_k[:, None] * b_v[None, :]
            b_o = tl.sum((b_h + b_u[:, None] * b_kv) * b_q[:, None], axis=0) * scale
            b_h = b_h * tl.exp(tl.load(g + (t * H + i_h) * K + o_k, mask=m_k, other=0).to(tl.float32))[:, None] + b_kv
        else:
            if GATE == 1:
                b_h *= tl.exp(tl.load(g + t * H + i_h).to(tl.float32))
            if GATE == 3:
                b_h *= b_d
            if GATE == 2:
                b_h *= tl.exp(tl.load(g + (t * H + i_h) * K + o_k, mask=m_k, other=0).to(tl.float32))[:, None]
            b_h += b_k[:, None] * b_v[None, :]
            b_o = tl.sum(b_h * b_q[:, None], axis=0) * scale
        tl.store(o + (t * H + i_h) * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
    if STORE_HT:
        tl.store(ht + o_h, b_h, mask=m_h)

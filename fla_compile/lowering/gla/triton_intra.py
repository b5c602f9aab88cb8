"""Intra-chunk kernels of the vector gate (gla): the attention matrix A and the dq/dk from dA.

With a gate per key dim, A_ij = sum_k q_ik k_jk e^(b_ik - b_jk) is no plain matmul. A chunk of
BT steps is cut into sub-chunks of BC; a block of rows i below a block of columns j (all j < r,
r the first row of the i block) is a tensor-core dot of q_i e^(b_i - b_r) and k_j e^(b_r - b_j),
both exponents <= 0. A BC x BC diagonal block is a dot too, of q_i e^(b_i - b_r) and k_j e^(b_r - b_j)
with r its first row, when every |b_i - b_r| in it is at most SPAN (both factors normal numbers);
under stronger gates it is summed column by column with one exponent b_i - b_j (i >= j) per element.
Nothing overflows for any gate.

rwkv6 (``BONUS``): q is gated by ``gq``, the exclusive cumsum (b_{i-1}), the pairs are j < i, and the
diagonal of A is the bonus q_i . (u k_i). The references r stay where every exponent is <= 0: gq_r for
rows at or after r (gq_i - gq_r = b_{i-1} - b_{r-1}) against columns before r (gq_r - b_j, j <= r - 1).

Layout of A and dA: [TT, H, SA] (SA >= BT), row = token, column = position in the token's chunk (the
first BT columns). dA is fp32 with SA = BT; A is stored in the inputs' dtype (its consumers cast it
to that dtype before every dot, so nothing is lost), with SA = BT, or SA = 64 in the layout the op
returns to its backward (``triton_launch.A_SLOTS``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..common.chunks import chunk_span
from ..common.dots import dot
from ..common.gating import SPAN, SPAN16, chunk_factored
from .triton_kernels import _strict_prefix


@triton.jit
def _A_block(
    q,
    k,
    gc,
    g_q,
    A,
    u,
    i_i,
    i_j,
    i_h,
    i_c,
    bos,
    eos,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    PREC: tl.constexpr,
    SA: tl.constexpr,
    BONUS: tl.constexpr,
):
    """Block (i_i, i_j) of chunk i_c's A (see chunk_gla_A_kernel), written to ``A``."""
    i_hk = i_h // G
    t0 = bos + i_c * BT
    if t0 + i_i * BC < eos:  # rows past the end: never read
        o_c = tl.arange(0, BC)
        o_ti = t0 + i_i * BC + o_c
        o_tj = t0 + i_j * BC + o_c
        m_ti, m_tj = o_ti < eos, o_tj < eos
        p_A = (o_ti * H + i_h)[:, None] * SA + (i_j * BC + o_c)[None, :]
        m_A = m_ti[:, None] & (o_c < BC)[None, :]
        b_A = tl.zeros([BC, BC], dtype=tl.float32)
        if i_i > i_j:
            t_r = t0 + i_i * BC  # first row of the i block: valid whenever any row of it is
            for i_k in range(0, tl.cdiv(K, BK)):
                o_k = i_k * BK + tl.arange(0, BK)
                m_k = o_k < K
                m_r = m_k & ((o_k * 0 + t_r) < eos)
                b_gr = tl.load(g_q + (t_r * H + i_h) * K + o_k, mask=m_r, other=0)
                m_qi = m_ti[:, None] & m_k[None, :]
                # [BC, BK]
                b_q = tl.load(q + (o_ti * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_qi, other=0)
                b_gq = tl.load(g_q + (o_ti * H + i_h)[:, None] * K + o_k[None, :], mask=m_qi, other=0)
                b_qg = b_q.to(tl.float32) * tl.exp(tl.where(m_qi, b_gq - b_gr[None, :], 0))
                m_kj = m_k[:, None] & m_tj[None, :]
                # [BK, BC]
                b_kt = tl.load(k + (o_tj * (H // G) + i_hk)[None, :] * K + o_k[:, None], mask=m_kj, other=0)
                b_gkt = tl.load(gc + (o_tj * H + i_h)[None, :] * K + o_k[:, None], mask=m_kj, other=0)
                b_kg = b_kt.to(tl.float32) * tl.exp(tl.where(m_kj, b_gr[:, None] - b_gkt, 0))
                b_A += dot(b_qg.to(b_q.dtype), b_kg.to(b_q.dtype), prec=PREC)
        if i_i == i_j:
            t_r = t0 + i_i * BC  # the block's first row: the reference of the factored form
            b_bon = tl.zeros([BC], dtype=tl.float32)  # BONUS: q_i . (u k_i)
            for i_k in range(0, tl.cdiv(K, BK)):
                o_k = i_k * BK + tl.arange(0, BK)
                m_k = o_k < K
                m_qi = m_ti[:, None] & m_k[None, :]
                # [BC, BK]
                b_q = tl.load(q + (o_ti * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_qi, other=0)
                b_gq = tl.load(g_q + (o_ti * H + i_h)[:, None] * K + o_k[None, :], mask=m_qi, other=0)
                b_gr = tl.load(g_q + (t_r * H + i_h) * K + o_k, mask=m_k, other=0)
                b_dr = tl.where(m_qi, b_gq - b_gr[None, :], 0)
                if BONUS:  # the keys' exponents b_j - gq_r differ from the queries'
                    b_gk = tl.load(gc + (o_ti * H + i_h)[:, None] * K + o_k[None, :], mask=m_qi, other=0)
                    b_dk = tl.where(m_qi, b_gk - b_gr[None, :], 0)
                    b_kr = tl.load(k + (o_ti * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_qi, other=0)
                    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0).to(tl.float32)
                    b_bon += tl.sum(b_q.to(tl.float32) * b_u[None, :] * b_kr.to(tl.float32), axis=1)
                    span = tl.maximum(tl.max(tl.abs(b_dr)), tl.max(tl.abs(b_dk)))
                else:
                    b_dk = b_dr
                    span = tl.max(tl.abs(b_dr))
                lim = SPAN
                if b_q.dtype == tl.float16:  # fp16 operands: the narrower span
                    lim = SPAN16
                if span <= lim:
                    # every factor e^(+-d) with |d| <= SPAN is a normal number: (q e^(b_i - b_r)) (k e^(b_r - b_j))^T
                    # is exact up to the rounding of the factors; entries above the diagonal are dropped below
                    b_qg = b_q.to(tl.float32) * tl.exp(b_dr)
                    b_kg = tl.trans(
                        tl.load(k + (o_ti * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_qi, other=0)
                    )
                    b_kg = b_kg.to(tl.float32) * tl.exp(-tl.trans(b_dk))
                    b_A += dot(b_qg.to(b_q.dtype), b_kg.to(b_q.dtype), prec=PREC)
                else:  # strong gates: one exponent b_i - b_j <= 0 per pair
                    b_qf = b_q.to(tl.float32)
                    for j in range(0, BC):
                        t_j = t0 + i_i * BC + j
                        m_j = m_k & ((o_k * 0 + t_j) < eos)
                        # [BK]
                        b_kj = tl.load(k + (t_j * (H // G) + i_hk) * K + o_k, mask=m_j, other=0).to(tl.float32)
                        b_gj = tl.load(gc + (t_j * H + i_h) * K + o_k, mask=m_j, other=0)
                        if BONUS:  # j < i only: gq_i - b_i = -w_i > 0 is never taken
                            m_ij = ((o_c > j) & m_ti)[:, None] & m_j[None, :]
                        else:
                            m_ij = ((o_c >= j) & m_ti)[:, None] & m_j[None, :]
                        # [BC]
                        b_a = tl.sum(
                            tl.where(m_ij, b_qf * b_kj[None, :] * tl.exp(tl.where(m_ij, b_gq - b_gj[None, :], 0)), 0),
                            axis=1,
                        )
                        b_A += tl.where(o_c[None, :] == j, b_a[:, None], 0)
            if BONUS:
                b_A = tl.where(
                    o_c[:, None] > o_c[None, :], b_A, tl.where(o_c[:, None] == o_c[None, :], b_bon[:, None], 0)
                )
            else:
                b_A = tl.where(o_c[:, None] >= o_c[None, :], b_A, 0)
        tl.store(A + p_A, b_A.to(A.dtype.element_ty), mask=m_A)


@triton.jit
def chunk_gla_A_kernel(
    q,
    k,
    gc,
    A,
    info,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    NC: tl.constexpr,
    PREC: tl.constexpr,
    SA: tl.constexpr,
    gq=None,
    u=None,
    BONUS: tl.constexpr = False,
    PAIRS_INNER: tl.constexpr = False,
    spread=None,
    NKS: tl.constexpr = 1,
    SKIP_FACTORED: tl.constexpr = False,
):
    """One [BC, BC] block (i_i, i_j) of A per program; blocks above the diagonal are zeros.

    A's rows hold SA >= BT entries (its last dim): BT, or the op's saved layout of 64 columns. The grid: (chunk
    slots, NC^2 blocks, heads), or with ``PAIRS_INNER`` (slots x blocks, 1, heads), a chunk's blocks side by side in
    launch order (they read the same rows). ``SKIP_FACTORED`` (grid (slots, 1, heads)): one program a chunk, which
    forms its blocks in turn unless the chunk's gate spread (``spread``) allows the whole of A in one dot
    (``gating.chunk_factored``): the output kernel forms those itself, and a program a block only to skip them cost
    0.04-0.08 ms of 0.5 (H200, gla forward at (8, 2048, 16, 128) and (8, 2048, 32, 64))."""
    if BONUS:  # the gate of q (and of the references r): the exclusive cumsum
        g_q = gq
    else:
        g_q = gc
    if PAIRS_INNER and not SKIP_FACTORED:
        i_s, i_ij, i_h = tl.program_id(0) // (NC * NC), tl.program_id(0) % (NC * NC), tl.program_id(2)
    else:
        i_s, i_ij, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_i, i_j = i_ij // NC, i_ij % NC
    i_n, i_c, bos, eos = chunk_span(info, i_s)
    if i_n < 0:
        return
    if SKIP_FACTORED:  # one program a chunk and head: its blocks in turn, none where the output kernel factors it
        n_ij = tl.where(chunk_factored(spread, i_s, i_h, H, NKS, q.dtype.element_ty == tl.float16), 0, NC * NC)
        for i_b in range(0, n_ij):
            _A_block(q, k, gc, g_q, A, u, i_b // NC, i_b % NC, i_h, i_c, bos, eos, H, G, K, BT, BC, BK, PREC, SA, BONUS)
    else:
        _A_block(q, k, gc, g_q, A, u, i_i, i_j, i_h, i_c, bos, eos, H, G, K, BT, BC, BK, PREC, SA, BONUS)


@triton.jit
def _store_dqk(dq, dk, dqo, dko, p, b_dq, b_dk, m, DQO: tl.constexpr, DKO: tl.constexpr):
    """The intra backward's last word on dq and dk: into ``dqo`` / ``dko`` in their dtype (``DQO`` / ``DKO``: no
    cast of an fp32 copy after), else back into the fp32 ``dq`` / ``dk``."""
    if DQO:
        tl.store(dqo + p, b_dq.to(dqo.dtype.element_ty), mask=m)
    else:
        tl.store(dq + p, b_dq, mask=m)
    if DKO:
        tl.store(dko + p, b_dk.to(dko.dtype.element_ty), mask=m)
    else:
        tl.store(dk + p, b_dk, mask=m)


@triton.jit
def _bwd_intra_factored(
    q,
    k,
    gc,
    dA,
    dq,
    dk,
    db,
    dqo,
    dko,
    scale,
    i_h,
    i_k,
    i_c,
    bos,
    eos,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    PREC: tl.constexpr,
    DQO: tl.constexpr,
    DKO: tl.constexpr,
):
    """chunk_gla_bwd_intra_kernel for a whole chunk whose gate spread allows one reference, its first row b_0:
    dq = e^(b - b_0) (dA (k e^(b_0 - b))), dk = e^(b_0 - b) (dAᵀ (q e^(b - b_0))) with dA strictly below the
    diagonal, then the diagonal and db as the sub-chunk form adds them."""
    i_hk = i_h // G
    t0 = bos + i_c * BT
    o_i = tl.arange(0, BT)
    o_t = t0 + o_i
    m_t = o_t < eos
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    p = (o_t * H + i_h)[:, None] * K + o_k[None, :]
    p_qk = (o_t * (H // G) + i_hk)[:, None] * K + o_k[None, :]
    # [BT, BK]
    b_d = tl.where(m_tk, tl.load(gc + p, mask=m_tk, other=0) - tl.load(gc + (t0 * H + i_h) * K + o_k, mask=m_k,
                                                                      other=0)[None, :], 0)  # fmt: skip
    b_q = tl.load(q + p_qk, mask=m_tk, other=0).to(tl.float32)
    b_k = tl.load(k + p_qk, mask=m_tk, other=0).to(tl.float32)
    m_S = (o_i[:, None] > o_i[None, :]) & m_t[:, None] & m_t[None, :]
    # [BT, BT]
    b_dA = tl.load(dA + (o_t * H + i_h)[:, None] * BT + o_i[None, :], mask=m_S, other=0)
    b_ep, b_en = tl.exp(b_d), tl.exp(-b_d)
    b_dq = b_ep * dot(b_dA, b_k * b_en, prec=PREC)
    b_dk = b_en * dot(tl.trans(b_dA), b_q * b_ep, prec=PREC)
    tl.store(db + p, scale * (b_q * b_dq - b_k * b_dk), mask=m_tk)
    b_dAd = tl.load(dA + (o_t * H + i_h) * BT + o_i, mask=m_t, other=0)
    b_dq = tl.load(dq + p, mask=m_tk, other=0) + scale * (b_dq + b_dAd[:, None] * b_k)
    b_dk = tl.load(dk + p, mask=m_tk, other=0) + scale * (b_dk + b_dAd[:, None] * b_q)
    _store_dqk(dq, dk, dqo, dko, p, b_dq, b_dk, m_tk, DQO, DKO)


@triton.jit
def chunk_gla_bwd_intra_kernel(
    q,
    k,
    gc,
    dA,
    dq,
    dk,
    db,
    info,
    scale,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    NC: tl.constexpr,
    PREC: tl.constexpr,
    gq=None,
    u=None,
    du=None,
    dg=None,
    BONUS: tl.constexpr = False,
    dqo=None,
    dko=None,
    DQO: tl.constexpr = False,
    DKO: tl.constexpr = False,
    spread=None,
    NKS: tl.constexpr = 1,
    FACTORED: tl.constexpr = False,
):
    """Add scale * the intra-chunk parts to dq, dk (fp32, per head of v) for the rows of one sub-chunk; with
    ``DQO`` / ``DKO`` the sums go to ``dqo`` / ``dko`` in their dtype instead (the inputs' dtype where this kernel
    is the last to add to them: no cast of an fp32 copy after).

    dq_i += sum_{j <= i} dA_ij k_j e^(b_i - b_j),   dk_j += sum_{i >= j} dA_ij q_i e^(b_i - b_j).
    Also db = q dq - k dk over these pairs without the diagonal (whose terms cancel exactly), for dg.

    BONUS (rwkv6): q's exponent is gq_i (pairs j < i); the diagonal is the bonus: dq_i += dA_ii u k_i,
    dk_i += dA_ii u q_i, and du gets scale dA_ii q_i k_i per token. A pair (i, j) then belongs to the gate
    gradient of the steps s with j < s < i: rc_add sums db strictly after s, and dg -= scale k dk here.
    """
    if BONUS:
        g_q = gq
    else:
        g_q = gc
    i_s, i_ik, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    NK = tl.cdiv(K, BK)
    i_i, i_k = i_ik // NK, i_ik % NK
    i_n, i_c, bos, eos = chunk_span(info, i_s)
    if i_n < 0:
        return
    if FACTORED:  # a chunk whose gate spread allows it: all its rows in one program, by two dots
        if chunk_factored(spread, i_s, i_h, H, NKS, q.dtype.element_ty == tl.float16):
            if i_i == 0:
                _bwd_intra_factored(q, k, gc, dA, dq, dk, db, dqo, dko, scale, i_h, i_k, i_c, bos, eos, H, G, K, BT,
                                    BK, PREC, DQO, DKO)  # fmt: skip
            return
    i_hk = i_h // G
    t0 = bos + i_c * BT
    t_i0 = t0 + i_i * BC
    if t_i0 >= eos:
        return
    o_c = tl.arange(0, BC)
    o_ti = t_i0 + o_c
    m_ti = o_ti < eos
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_ik = m_ti[:, None] & m_k[None, :]
    # [BC, BK]
    b_g = tl.load(gc + (o_ti * H + i_h)[:, None] * K + o_k[None, :], mask=m_ik, other=0)
    if BONUS:
        b_gqi = tl.load(gq + (o_ti * H + i_h)[:, None] * K + o_k[None, :], mask=m_ik, other=0)
    else:
        b_gqi = b_g
    b_dq = tl.zeros([BC, BK], dtype=tl.float32)
    b_dk = tl.zeros([BC, BK], dtype=tl.float32)
    # blocks left of the diagonal: reference r = the first row of this sub-chunk
    b_gr = tl.load(g_q + (t_i0 * H + i_h) * K + o_k, mask=m_k, other=0)
    for i_j in range(0, i_i):
        o_tj = t0 + i_j * BC + o_c
        # [BC, BC]: dA rows of this block, columns of block j
        b_dA = tl.load(dA + (o_ti * H + i_h)[:, None] * BT + (i_j * BC + o_c)[None, :], mask=m_ti[:, None], other=0)
        b_kj = tl.load(k + (o_tj * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0)
        b_gj = tl.load(gc + (o_tj * H + i_h)[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0)
        b_kg = b_kj.to(tl.float32) * tl.exp(tl.where(m_k[None, :], b_gr[None, :] - b_gj, 0))
        b_dq += dot(b_dA, b_kg, prec=PREC)
    # blocks below the diagonal: reference r' = the last valid row of this sub-chunk
    t_l = tl.minimum(t_i0 + BC, eos) - 1
    b_gl = tl.load(gc + (t_l * H + i_h) * K + o_k, mask=m_k, other=0)
    for i_b in range(i_i + 1, NC):
        o_tb = t0 + i_b * BC + o_c
        m_tb = o_tb < eos
        m_bk = m_tb[:, None] & m_k[None, :]
        # [BC(j), BC(i)]: dA^T, rows of block b as columns
        b_dAt = tl.load(dA + (o_tb * H + i_h)[None, :] * BT + (i_i * BC + o_c)[:, None], mask=m_tb[None, :], other=0)
        b_qb = tl.load(q + (o_tb * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_bk, other=0)
        b_gb = tl.load(g_q + (o_tb * H + i_h)[:, None] * K + o_k[None, :], mask=m_bk, other=0)
        b_qg = b_qb.to(tl.float32) * tl.exp(tl.where(m_bk, b_gb - b_gl[None, :], 0))
        b_dk += dot(b_dAt, b_qg, prec=PREC)
    # the diagonal block: factored when the block's gate span allows (see chunk_gla_A_kernel), else element by element
    b_dq *= tl.exp(tl.where(m_ik, b_gqi - b_gr[None, :], 0))
    b_dk *= tl.exp(tl.where(m_ik, b_gl[None, :] - b_g, 0))
    b_df = tl.where(m_ik, b_gqi - b_gr[None, :], 0)  # b_i - b_first (q's exponent)
    b_dl = tl.where(m_ik, b_g - b_gl[None, :], 0)  # b_i - b_last (k's exponent)
    if BONUS:  # the keys' exponent against the first row, the queries' against the last
        b_dfk = tl.where(m_ik, b_g - b_gr[None, :], 0)
        b_dlq = tl.where(m_ik, b_gqi - b_gl[None, :], 0)
        factored = (
            tl.maximum(
                tl.maximum(tl.max(tl.abs(b_df)), tl.max(tl.abs(b_dl))),
                tl.maximum(tl.max(tl.abs(b_dfk)), tl.max(tl.abs(b_dlq))),
            )
            <= SPAN
        )
    else:
        b_dfk = b_df
        b_dlq = b_dl
        factored = tl.maximum(tl.max(tl.abs(b_df)), tl.max(tl.abs(b_dl))) <= SPAN
    if factored:
        m_S = (o_c[:, None] > o_c[None, :]) & m_ti[:, None] & m_ti[None, :]
        # [BC, BC]: dA of this block, strictly below the diagonal
        b_dAb = tl.load(dA + (o_ti * H + i_h)[:, None] * BT + (i_i * BC + o_c)[None, :], mask=m_S, other=0)
        b_ki = tl.load(k + (o_ti * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_ik, other=0).to(tl.float32)
        b_qi = tl.load(q + (o_ti * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_ik, other=0).to(tl.float32)
        # dq_i += e^(b_i - b_f) sum_j dA_ij (k_j e^(b_f - b_j)),  dk_j += e^(b_l - b_j) sum_i dA_ij (q_i e^(b_i - b_l))
        b_dq += tl.exp(b_df) * dot(b_dAb, b_ki * tl.exp(-b_dfk), prec=PREC)
        b_dk += tl.exp(-b_dl) * dot(tl.trans(b_dAb), b_qi * tl.exp(b_dlq), prec=PREC)
    for r in range(0, tl.where(factored, 0, BC)):
        t_r = t_i0 + r
        m_r = m_k & ((o_k * 0 + t_r) < eos)
        # [BK]
        b_kr = tl.load(k + (t_r * (H // G) + i_hk) * K + o_k, mask=m_r, other=0).to(tl.float32)
        b_qr = tl.load(q + (t_r * (H // G) + i_hk) * K + o_k, mask=m_r, other=0).to(tl.float32)
        b_grr = tl.load(gc + (t_r * H + i_h) * K + o_k, mask=m_r, other=0)
        if BONUS:  # step r as the query of the pairs (r, j < r)
            b_grq = tl.load(gq + (t_r * H + i_h) * K + o_k, mask=m_r, other=0)
        else:
            b_grq = b_grr
        # [BC]: column r of dA (rows i of this block) and row r (columns j of this block)
        b_dac = tl.load(dA + (o_ti * H + i_h) * BT + i_i * BC + r, mask=m_ti & (o_c > r), other=0)
        b_dar = tl.load(dA + (t_r * H + i_h) * BT + i_i * BC + o_c, mask=(o_c < r) & ((o_c * 0 + t_r) < eos), other=0)
        m_ge = ((o_c > r) & m_ti)[:, None] & m_r[None, :]
        m_le = ((o_c < r) & m_ti)[:, None] & m_r[None, :]
        b_dq += tl.where(m_ge, b_dac[:, None] * b_kr[None, :] * tl.exp(tl.where(m_ge, b_gqi - b_grr[None, :], 0)), 0)
        b_dk += tl.where(m_le, b_dar[:, None] * b_qr[None, :] * tl.exp(tl.where(m_le, b_grq[None, :] - b_g, 0)), 0)
    # the diagonal: dq_i += dA_ii k_i, dk_i += dA_ii q_i
    b_dAd = tl.load(dA + (o_ti * H + i_h) * BT + i_i * BC + o_c, mask=m_ti, other=0)
    p = (o_ti * H + i_h)[:, None] * K + o_k[None, :]
    # [BC, BK]
    b_qi = tl.load(q + (o_ti * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_ik, other=0).to(tl.float32)
    b_ki = tl.load(k + (o_ti * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_ik, other=0).to(tl.float32)
    tl.store(db + p, scale * (b_qi * b_dq - b_ki * b_dk), mask=m_ik)
    if BONUS:
        b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0).to(tl.float32)
        tl.store(du + p, scale * b_dAd[:, None] * b_qi * b_ki, mask=m_ik)
        tl.store(dg + p, tl.load(dg + p, mask=m_ik, other=0) - scale * b_ki * b_dk, mask=m_ik)
        b_dq = tl.load(dq + p, mask=m_ik, other=0) + scale * (b_dq + b_dAd[:, None] * b_u[None, :] * b_ki)
        b_dk = tl.load(dk + p, mask=m_ik, other=0) + scale * (b_dk + b_dAd[:, None] * b_u[None, :] * b_qi)
    else:
        b_dq = tl.load(dq + p, mask=m_ik, other=0) + scale * (b_dq + b_dAd[:, None] * b_ki)
        b_dk = tl.load(dk + p, mask=m_ik, other=0) + scale * (b_dk + b_dAd[:, None] * b_qi)
    _store_dqk(dq, dk, dqo, dko, p, b_dq, b_dk, m_ik, DQO, DKO)


@triton.jit
def chunk_rc_add_kernel(
    db,
    dg,
    info,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BONUS: tl.constexpr = False,
):
    """dg += the reverse cumsum of db inside each chunk (sum over s >= t; BONUS, rwkv6: over s > t)."""
    i_s, i_k, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_c, bos, eos = chunk_span(info, i_s)
    if i_n < 0:
        return
    o_t = bos + i_c * BT + tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m = (o_t < eos)[:, None] & (o_k < K)[None, :]
    p = (o_t * H + i_h)[:, None] * K + o_k[None, :]
    # [BT, BK]
    b_db = tl.load(db + p, mask=m, other=0)
    # a reverse scan: no cancellation (a total minus a prefix would lose a small sum next to a large one)
    if BONUS:  # Triton's reverse scan is the forward one over the flipped axis: this is sum_{s > t}
        _, b_suf = tl.associative_scan((b_db, tl.zeros_like(b_db)), 0, _strict_prefix, reverse=True)
        b_dg = tl.load(dg + p, mask=m, other=0) + b_suf
    else:
        b_dg = tl.load(dg + p, mask=m, other=0) + tl.cumsum(b_db, axis=0, reverse=True)
    tl.store(dg + p, b_dg, mask=m)

"""Forward kernels of the delta line in stages, on tensor cores: k kᵀ, the blockwise WY solve, the state pass.

Notation of :mod:`fla_compile.lowering.delta.torch_path`. Per chunk of BT steps (G the in-chunk gate cumsum):

1. ``chunk_kkt_kernel`` (no gate, scalar gate): A_ij = k_i . k_j e^{G_i - G_j} for j <= i, fp32. With a gate per
   key dim (kda) the GLA line's ``chunk_gla_A_kernel`` computes the same matrix (k for q), as dots of factored
   sub-chunks; in the forward ``chunk_kda_A_rows_kernel`` (one row block per program) forms it together with the
   output's gated q kᵀ (against one [16, 16] block per program, which re-loaded each row block: kda forward
   1.114 -> 0.876 ms on the H200).
2. ``chunk_wy_kernel``: X = (I + diag(b) strict(A))^{-1} by blocks of 16: each diagonal block by forward
   substitution (16 row steps on a 16 x 16 tile, row i of N loaded at step i), the blocks below it merged by dots,
   X_rc = -X_rr sum_{c <= m < r} N_rm X_mc; then W = X (b e^{G} k) and U = X (b v) by dots. X is kept (in the
   inputs' dtype) for the backward.
3. ``chunk_delta_h_kernel``: the only sequential part. Per sequence, head and block of V it carries the state
   S [K, BV] over the chunks: stores S, v_new = U - W S, then S <- e^{G_last} S + (e^{G_last - G} k)ᵀ v_new
   (kda: e^{G_last - G} k made once by ``chunk_wu_kernel``, launch option ``KG``, not once per V block).

The output is then the GLA line's chunk-parallel ``chunk_fwd_o_kernel`` with v_new for v:
o = scale ((e^{G} q) S + causal(q kᵀ e^{G_i - G_j}) v_new). Layouts as in the GLA kernels ([TT, H, D] tokens
flattened); A and X are [TT, H, BT]: row = token, column = position in the token's chunk.
Pointer arithmetic only, no ``tl.trans``: transposed operands are loaded transposed.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..common.chunks import chunk_span, sequence_span, state_block, state_chunk_rows, state_offsets, state_start
from ..common.dots import dot
from ..common.gating import chunk_gate, decay_rows_to_last_t, decay_to_last_t, scalar_gate, scalar_gate_at


@triton.jit
def chunk_kkt_kernel(
    k,
    gc,
    A,
    info,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    GATE: tl.constexpr,
    PREC: tl.constexpr,
):
    """A = causal(k kᵀ e^{G_i - G_j}) per chunk (no gate or a scalar one), fp32 [TT, H, BT]."""
    i_s, i_h = tl.program_id(0), tl.program_id(1)
    i_n, i_c, bos, eos = chunk_span(info, i_s)
    if i_n < 0:
        return
    i_hk = i_h // G
    o_i = tl.arange(0, BT)
    o_t = bos + i_c * BT + o_i
    m_t = o_t < eos
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        # [BT, BK] and [BK, BT]
        b_k = tl.load(
            k + (o_t * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0
        )
        b_kt = tl.load(
            k + (o_t * (H // G) + i_hk)[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0
        )
        b_A += dot(b_k, b_kt, prec=PREC)
    m_A = (o_i[:, None] >= o_i[None, :]) & m_t[:, None] & m_t[None, :]
    if GATE == 1:
        b_g = tl.load(gc + o_t * H + i_h, mask=m_t, other=0)
        b_A *= tl.exp(tl.where(m_A, b_g[:, None] - b_g[None, :], 0))
    b_A = tl.where(m_A, b_A, 0)
    tl.store(A + (o_t * H + i_h)[:, None] * BT + o_i[None, :], b_A, mask=m_t[:, None])


@triton.jit
def _block_N(A, beta, t0, eos, i_h, H: tl.constexpr, BT: tl.constexpr, r: tl.constexpr, c: tl.constexpr):
    """Block (r, c) of N = diag(b) strict(A), [16, 16] fp32; rows and columns past the sequence are zeros."""
    o_c = tl.arange(0, 16)
    o_r = t0 + r * 16 + o_c
    m_r = o_r < eos
    m_c = (t0 + c * 16 + o_c) < eos
    b_N = tl.load(
        A + (o_r * H + i_h)[:, None] * BT + (c * 16 + o_c)[None, :], mask=m_r[:, None] & m_c[None, :], other=0
    )
    b_b = tl.load(beta + o_r * H + i_h, mask=m_r, other=0).to(tl.float32)
    b_N = b_N * b_b[:, None]
    if r == c:
        b_N = tl.where(o_c[:, None] > o_c[None, :], b_N, 0)
    return b_N


@triton.jit
def _k16_t(k, t0, eos, i_hk, HK: tl.constexpr, K: tl.constexpr, r: tl.constexpr, o_k, m_k):
    """Rows r*16 .. r*16+15 of the chunk's keys loaded transposed, [BK, 16]; zeros past the sequence."""
    o_r = t0 + r * 16 + tl.arange(0, 16)
    return tl.load(k + (o_r * HK + i_hk)[None, :] * K + o_k[:, None], mask=m_k[:, None] & (o_r < eos)[None, :], other=0)


@triton.jit
def _gated16(b_A, gc, t0, eos, i_h, H: tl.constexpr, r: tl.constexpr, c: tl.constexpr, GATE: tl.constexpr):
    """Block (r, c) of A = causal(k kᵀ e^{G_i - G_j}) from its k kᵀ block, as ``chunk_kkt_kernel`` stores it:
    the gate where both tokens are in the sequence (and i >= j on the diagonal), zeros elsewhere."""
    o_c = tl.arange(0, 16)
    o_i = t0 + r * 16 + o_c
    o_j = t0 + c * 16 + o_c
    m = (o_i < eos)[:, None] & (o_j < eos)[None, :]
    if r == c:
        m = m & (o_c[:, None] >= o_c[None, :])
    if GATE == 1:
        b_gi = tl.load(gc + o_i * H + i_h, mask=o_i < eos, other=0)
        b_gj = tl.load(gc + o_j * H + i_h, mask=o_j < eos, other=0)
        b_A = b_A * tl.exp(tl.where(m, b_gi[:, None] - b_gj[None, :], 0))
    return tl.where(m, b_A, 0)


@triton.jit
def _beta_rows(b_A, beta, t0, eos, i_h, H: tl.constexpr, r: tl.constexpr):
    """diag(b) b_A for row block r: block (r, c < r) of N = diag(b) strict(A)."""
    o_r = t0 + r * 16 + tl.arange(0, 16)
    return b_A * tl.load(beta + o_r * H + i_h, mask=o_r < eos, other=0).to(tl.float32)[:, None]


@triton.jit
def _strict16(b_N):
    """The strictly lower part of a [16, 16] block (a diagonal block of N = diag(b) strict(A))."""
    o_c = tl.arange(0, 16)
    return tl.where(o_c[:, None] > o_c[None, :], b_N, 0)


@triton.jit
def _diag_kkt(b_A, gc, beta, t0, eos, i_h, H: tl.constexpr, r: tl.constexpr, GATE: tl.constexpr):
    """Diagonal block r of k kᵀ formed in registers (KKT), gated, as N's block: diag(b) strictly lower."""
    return _strict16(_beta_rows(_gated16(b_A, gc, t0, eos, i_h, H, r, r, GATE), beta, t0, eos, i_h, H, r))


@triton.jit
def _diag_inverse(
    A,
    b_D,
    beta,
    t0,
    eos,
    i_h,
    H: tl.constexpr,
    BT: tl.constexpr,
    r: tl.constexpr,
    ROW_LOADS: tl.constexpr,
    KKT: tl.constexpr,
    DIAG: tl.constexpr = "steps",
    MERGE_PREC: tl.constexpr = "ieee",
):
    """(I + N_rr)^{-1}: with DIAG "powers" a product of powers of N's block at the merges' precision (the block in
    registers, ``_diag_kkt``'s, with KKT; else loaded whole from A); else row steps on the block in registers (KKT),
    on its rows loaded from A (ROW_LOADS), or on the block loaded whole from A."""
    if DIAG == "powers":
        b_X = _inverse16_powers(b_D if KKT else _block_N(A, beta, t0, eos, i_h, H, BT, r, r), MERGE_PREC)
    elif KKT:
        b_X = _inverse16(b_D)
    elif ROW_LOADS:
        b_X = _inverse16_rows(A, beta, t0, eos, i_h, H, BT, r)
    else:
        b_X = _inverse16(_block_N(A, beta, t0, eos, i_h, H, BT, r, r))
    return b_X


@triton.jit
def _inverse16(b_N):
    """(I + N)^{-1} of a strictly lower [16, 16] N: X_i = -N_i - sum_{j<i} N_ij X_j, one row per step."""
    o_c = tl.arange(0, 16)
    b_X = -b_N
    for i in range(1, 16):
        b_r = tl.sum(tl.where(o_c[:, None] == i, b_X, 0.0), 0)
        b_r = b_r + tl.sum(b_r[:, None] * b_X, 0)
        b_X = tl.where(o_c[:, None] == i, b_r[None, :], b_X)
    return b_X + tl.where(o_c[:, None] == o_c[None, :], 1.0, 0.0)


@triton.jit
def _inverse16_powers(b_N, PREC: tl.constexpr):
    """(I + N)^{-1} of a strictly lower [16, 16] N as (I - N)(I + N^2)(I + N^4)(I + N^8): N^16 = 0, so that product
    is the whole series sum_k (-N)^k. Six dots at PREC, four deep (N^2, N^4, N^8, then the last factor), where the
    row steps are 15 deep with two reductions each; the rounding differs from theirs (not bitwise)."""
    o_c = tl.arange(0, 16)
    b_I = tl.where(o_c[:, None] == o_c[None, :], 1.0, 0.0)
    b_N2 = dot(b_N, b_N, prec=PREC)
    b_N4 = dot(b_N2, b_N2, prec=PREC)
    b_N8 = dot(b_N4, b_N4, prec=PREC)
    b_X = b_I - b_N
    b_X = dot(b_X, b_N2, b_X, prec=PREC)
    b_X = dot(b_X, b_N4, b_X, prec=PREC)
    return dot(b_X, b_N8, b_X, prec=PREC)


@triton.jit
def _inverse16_rows(A, beta, t0, eos, i_h, H: tl.constexpr, BT: tl.constexpr, r: tl.constexpr):
    """As ``_inverse16(_block_N(..., r, r))``, with row i of -N loaded from memory at step i instead of
    picked out of the tile by a masked sum: one cross-thread reduction per step instead of two, and the
    row loads do not wait on the steps (unrolled). Same arithmetic, same rounding."""
    o_c = tl.arange(0, 16)
    b_X = -_block_N(A, beta, t0, eos, i_h, H, BT, r, r)
    for i in tl.static_range(1, 16):
        t_i = t0 + r * 16 + i
        m_i = (o_c < i) & ((o_c * 0 + t_i) < eos)
        b_a = tl.load(A + (t_i * H + i_h) * BT + r * 16 + o_c, mask=m_i, other=0)
        b_b = tl.load(beta + t_i * H + i_h, mask=t_i < eos, other=0).to(tl.float32)
        b_r = -(b_a * b_b)
        b_r = b_r + tl.sum(b_r[:, None] * b_X, 0)
        b_X = tl.where(o_c[:, None] == i, b_r[None, :], b_X)
    return b_X + tl.where(o_c[:, None] == o_c[None, :], 1.0, 0.0)


@triton.jit
def _store16(X, b_X, t0, eos, i_h, H: tl.constexpr, BT: tl.constexpr, r: tl.constexpr, c: tl.constexpr):
    o_c = tl.arange(0, 16)
    o_r = t0 + r * 16 + o_c
    tl.store(
        X + (o_r * H + i_h)[:, None] * BT + (c * 16 + o_c)[None, :],
        b_X.to(X.dtype.element_ty),
        mask=(o_r < eos)[:, None],
    )


@triton.jit
def _rows(x, t0, eos, i_h, H: tl.constexpr, D: tl.constexpr, r: tl.constexpr, o_d, m_d):
    """Rows r*16 .. r*16+15 of the chunk of a [TT, H, D] tensor, [16, BD]; zeros past the sequence."""
    o_r = t0 + r * 16 + tl.arange(0, 16)
    return tl.load(x + (o_r * H + i_h)[:, None] * D + o_d[None, :], mask=(o_r < eos)[:, None] & m_d[None, :], other=0)


@triton.jit
def _scaled_k(k, beta, gc, t0, eos, i_h, i_hk, H: tl.constexpr, HK: tl.constexpr, K: tl.constexpr,
              r: tl.constexpr, o_k, m_k, GATE: tl.constexpr):  # fmt: skip
    """Rows of b e^{G} k for block r, [16, BK] in k's dtype."""
    o_r = t0 + r * 16 + tl.arange(0, 16)
    m_r = o_r < eos
    b_k = tl.load(k + (o_r * HK + i_hk)[:, None] * K + o_k[None, :], mask=m_r[:, None] & m_k[None, :], other=0)
    b_s = tl.load(beta + o_r * H + i_h, mask=m_r, other=0).to(tl.float32)
    b_kf = b_k.to(tl.float32) * b_s[:, None]
    if GATE == 1:
        b_kf = b_kf * tl.exp(tl.load(gc + o_r * H + i_h, mask=m_r, other=0))[:, None]
    if GATE == 2:
        m = m_r[:, None] & m_k[None, :]
        b_kf = b_kf * tl.exp(tl.load(gc + (o_r * H + i_h)[:, None] * K + o_k[None, :], mask=m, other=0))
    return b_kf.to(b_k.dtype)


@triton.jit
def _scaled_v(v, beta, t0, eos, i_h, H: tl.constexpr, V: tl.constexpr, r: tl.constexpr, o_v, m_v):
    o_r = t0 + r * 16 + tl.arange(0, 16)
    m_r = o_r < eos
    b_v = tl.load(v + (o_r * H + i_h)[:, None] * V + o_v[None, :], mask=m_r[:, None] & m_v[None, :], other=0)
    b_s = tl.load(beta + o_r * H + i_h, mask=m_r, other=0).to(tl.float32)
    return (b_v.to(tl.float32) * b_s[:, None]).to(b_v.dtype)


@triton.jit
def _apply4(x0, x1, x2, x3, X00, X10, X11, X20, X21, X22, X30, X31, X32, X33, NB: tl.constexpr, PREC: tl.constexpr):
    """Rows blocks of X @ [x0; x1; x2; x3] for NB blocks (X lower block-triangular), fp32."""
    dt = x0.dtype
    y0 = dot(X00.to(dt), x0, prec=PREC)
    y1 = y0 * 0
    y2 = y0 * 0
    y3 = y0 * 0
    if NB > 1:
        y1 = dot(X10.to(dt), x0, prec=PREC) + dot(X11.to(dt), x1, prec=PREC)
    if NB > 2:
        y2 = dot(X20.to(dt), x0, prec=PREC) + dot(X21.to(dt), x1, prec=PREC)
        y2 += dot(X22.to(dt), x2, prec=PREC)
    if NB > 3:
        y3 = dot(X30.to(dt), x0, prec=PREC) + dot(X31.to(dt), x1, prec=PREC)
        y3 += dot(X32.to(dt), x2, prec=PREC) + dot(X33.to(dt), x3, prec=PREC)
    return y0, y1, y2, y3


@triton.jit
def _store_rows(x, y, t0, eos, i_h, H: tl.constexpr, D: tl.constexpr, r: tl.constexpr, o_d, m_d):
    o_r = t0 + r * 16 + tl.arange(0, 16)
    p = (o_r * H + i_h)[:, None] * D + o_d[None, :]
    tl.store(x + p, y.to(x.dtype.element_ty), mask=(o_r < eos)[:, None] & m_d[None, :])


@triton.jit
def chunk_wy_kernel(
    k,
    v,
    beta,
    gc,
    A,
    X,
    w,
    u,
    info,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    GATE: tl.constexpr,
    LOAD_X: tl.constexpr,
    PREC: tl.constexpr,
    SOLVE_ONLY: tl.constexpr = False,
    ROW_LOADS: tl.constexpr = True,
    KKT: tl.constexpr = False,
    BKA: tl.constexpr = 64,
    MERGE_PREC: tl.constexpr = "ieee",
    DIAG: tl.constexpr = "steps",
):
    """X = (I + diag(b) strict(A))^{-1} (or X read back when LOAD_X), W = X (b e^G k), U = X (b v); BT in 16, 32, 64.

    With SOLVE_ONLY only X is written (``chunk_wu_kernel`` then forms W and U with full-chunk dots). With KKT (no
    gate or a scalar one) A is not read but formed here, as its ten [16, 16] blocks in registers over key blocks of
    BKA, instead of by ``chunk_kkt_kernel`` (which writes all of A in fp32 for this kernel to read back); the
    diagonal blocks' substitution picks its rows out of the tile, as FLA's fused kernel (``A`` is not touched).
    Without KKT, ROW_LOADS loads each row of a diagonal block from A instead (one reduction a step, not two).
    MERGE_PREC: the precision of the dots merging the inverted diagonal blocks ("ieee" exact; the inputs' "tf32"
    for half inputs, whose X is stored in half anyway, as FLA's). DIAG, how the diagonal blocks are inverted: "steps",
    row by row (``_inverse16``, 15 serial steps each), or "powers", a product of powers of N (``_inverse16_powers``,
    six dots four deep, at MERGE_PREC)."""
    i_s, i_h = tl.program_id(0), tl.program_id(1)
    i_n, i_c, bos, eos = chunk_span(info, i_s)
    if i_n < 0:
        return
    i_hk = i_h // G
    t0 = bos + i_c * BT
    z = tl.zeros([16, 16], dtype=tl.float32)
    X00, X10, X11, X20, X21, X22, X30, X31, X32, X33 = z, z, z, z, z, z, z, z, z, z
    o16 = tl.arange(0, 16)
    m16 = o16 < 16
    if LOAD_X:
        X00 = _rows(X + 0, t0, eos, i_h, H, BT, 0, o16, m16).to(tl.float32)
        if BT // 16 > 1:
            X10 = _rows(X + 0, t0, eos, i_h, H, BT, 1, o16, m16).to(tl.float32)
            X11 = _rows(X + 16, t0, eos, i_h, H, BT, 1, o16, m16).to(tl.float32)
        if BT // 16 > 2:
            X20 = _rows(X + 0, t0, eos, i_h, H, BT, 2, o16, m16).to(tl.float32)
            X21 = _rows(X + 16, t0, eos, i_h, H, BT, 2, o16, m16).to(tl.float32)
            X22 = _rows(X + 32, t0, eos, i_h, H, BT, 2, o16, m16).to(tl.float32)
        if BT // 16 > 3:
            X30 = _rows(X + 0, t0, eos, i_h, H, BT, 3, o16, m16).to(tl.float32)
            X31 = _rows(X + 16, t0, eos, i_h, H, BT, 3, o16, m16).to(tl.float32)
            X32 = _rows(X + 32, t0, eos, i_h, H, BT, 3, o16, m16).to(tl.float32)
            X33 = _rows(X + 48, t0, eos, i_h, H, BT, 3, o16, m16).to(tl.float32)
    else:
        N10, N20, N21, N30, N31, N32 = z, z, z, z, z, z
        D0, D1, D2, D3 = z, z, z, z  # N's diagonal blocks in registers (KKT)
        if KKT:
            A00, A10, A11, A20, A21, A22, A30, A31, A32, A33 = z, z, z, z, z, z, z, z, z, z
            for i_k in range(0, tl.cdiv(K, BKA)):
                o_k = i_k * BKA + tl.arange(0, BKA)
                m_k = o_k < K
                k0 = _rows(k, t0, eos, i_hk, H // G, K, 0, o_k, m_k)
                c0 = _k16_t(k, t0, eos, i_hk, H // G, K, 0, o_k, m_k)
                A00 = dot(k0, c0, A00, prec=PREC)
                if BT // 16 > 1:
                    k1 = _rows(k, t0, eos, i_hk, H // G, K, 1, o_k, m_k)
                    c1 = _k16_t(k, t0, eos, i_hk, H // G, K, 1, o_k, m_k)
                    A10 = dot(k1, c0, A10, prec=PREC)
                    A11 = dot(k1, c1, A11, prec=PREC)
                if BT // 16 > 2:
                    k2 = _rows(k, t0, eos, i_hk, H // G, K, 2, o_k, m_k)
                    c2 = _k16_t(k, t0, eos, i_hk, H // G, K, 2, o_k, m_k)
                    A20 = dot(k2, c0, A20, prec=PREC)
                    A21 = dot(k2, c1, A21, prec=PREC)
                    A22 = dot(k2, c2, A22, prec=PREC)
                if BT // 16 > 3:
                    k3 = _rows(k, t0, eos, i_hk, H // G, K, 3, o_k, m_k)
                    c3 = _k16_t(k, t0, eos, i_hk, H // G, K, 3, o_k, m_k)
                    A30 = dot(k3, c0, A30, prec=PREC)
                    A31 = dot(k3, c1, A31, prec=PREC)
                    A32 = dot(k3, c2, A32, prec=PREC)
                    A33 = dot(k3, c3, A33, prec=PREC)
            D0 = _diag_kkt(A00, gc, beta, t0, eos, i_h, H, 0, GATE)
            if BT // 16 > 1:
                D1 = _diag_kkt(A11, gc, beta, t0, eos, i_h, H, 1, GATE)
                N10 = _beta_rows(_gated16(A10, gc, t0, eos, i_h, H, 1, 0, GATE), beta, t0, eos, i_h, H, 1)
            if BT // 16 > 2:
                D2 = _diag_kkt(A22, gc, beta, t0, eos, i_h, H, 2, GATE)
                N20 = _beta_rows(_gated16(A20, gc, t0, eos, i_h, H, 2, 0, GATE), beta, t0, eos, i_h, H, 2)
                N21 = _beta_rows(_gated16(A21, gc, t0, eos, i_h, H, 2, 1, GATE), beta, t0, eos, i_h, H, 2)
            if BT // 16 > 3:
                D3 = _diag_kkt(A33, gc, beta, t0, eos, i_h, H, 3, GATE)
                N30 = _beta_rows(_gated16(A30, gc, t0, eos, i_h, H, 3, 0, GATE), beta, t0, eos, i_h, H, 3)
                N31 = _beta_rows(_gated16(A31, gc, t0, eos, i_h, H, 3, 1, GATE), beta, t0, eos, i_h, H, 3)
                N32 = _beta_rows(_gated16(A32, gc, t0, eos, i_h, H, 3, 2, GATE), beta, t0, eos, i_h, H, 3)
        X00 = _diag_inverse(A, D0, beta, t0, eos, i_h, H, BT, 0, ROW_LOADS, KKT, DIAG, MERGE_PREC)
        if BT // 16 > 1:
            X11 = _diag_inverse(A, D1, beta, t0, eos, i_h, H, BT, 1, ROW_LOADS, KKT, DIAG, MERGE_PREC)
            if not KKT:  # A's blocks loaded where used (not all at once: registers in the serial steps)
                N10 = _block_N(A, beta, t0, eos, i_h, H, BT, 1, 0)
            X10 = -dot(X11, dot(N10, X00, prec=MERGE_PREC), prec=MERGE_PREC)
        if BT // 16 > 2:
            X22 = _diag_inverse(A, D2, beta, t0, eos, i_h, H, BT, 2, ROW_LOADS, KKT, DIAG, MERGE_PREC)
            if not KKT:
                N20 = _block_N(A, beta, t0, eos, i_h, H, BT, 2, 0)
                N21 = _block_N(A, beta, t0, eos, i_h, H, BT, 2, 1)
            X21 = -dot(X22, dot(N21, X11, prec=MERGE_PREC), prec=MERGE_PREC)
            b_s = dot(N20, X00, prec=MERGE_PREC) + dot(N21, X10, prec=MERGE_PREC)
            X20 = -dot(X22, b_s, prec=MERGE_PREC)
        if BT // 16 > 3:
            X33 = _diag_inverse(A, D3, beta, t0, eos, i_h, H, BT, 3, ROW_LOADS, KKT, DIAG, MERGE_PREC)
            if not KKT:
                N30 = _block_N(A, beta, t0, eos, i_h, H, BT, 3, 0)
                N31 = _block_N(A, beta, t0, eos, i_h, H, BT, 3, 1)
                N32 = _block_N(A, beta, t0, eos, i_h, H, BT, 3, 2)
            X32 = -dot(X33, dot(N32, X22, prec=MERGE_PREC), prec=MERGE_PREC)
            b_s = dot(N31, X11, prec=MERGE_PREC) + dot(N32, X21, prec=MERGE_PREC)
            X31 = -dot(X33, b_s, prec=MERGE_PREC)
            b_s = dot(N30, X00, prec=MERGE_PREC) + dot(N31, X10, prec=MERGE_PREC)
            b_s += dot(N32, X20, prec=MERGE_PREC)
            X30 = -dot(X33, b_s, prec=MERGE_PREC)
        # X in full (zeros above the diagonal blocks): the backward reads it back
        _store16(X, X00, t0, eos, i_h, H, BT, 0, 0)
        for c in tl.static_range(1, BT // 16):
            _store16(X, z, t0, eos, i_h, H, BT, 0, c)
        if BT // 16 > 1:
            _store16(X, X10, t0, eos, i_h, H, BT, 1, 0)
            _store16(X, X11, t0, eos, i_h, H, BT, 1, 1)
            for c in tl.static_range(2, BT // 16):
                _store16(X, z, t0, eos, i_h, H, BT, 1, c)
        if BT // 16 > 2:
            _store16(X, X20, t0, eos, i_h, H, BT, 2, 0)
            _store16(X, X21, t0, eos, i_h, H, BT, 2, 1)
            _store16(X, X22, t0, eos, i_h, H, BT, 2, 2)
            for c in tl.static_range(3, BT // 16):
                _store16(X, z, t0, eos, i_h, H, BT, 2, c)
        if BT // 16 > 3:
            _store16(X, X30, t0, eos, i_h, H, BT, 3, 0)
            _store16(X, X31, t0, eos, i_h, H, BT, 3, 1)
            _store16(X, X32, t0, eos, i_h, H, BT, 3, 2)
            _store16(X, X33, t0, eos, i_h, H, BT, 3, 3)
    for i_k in range(0, 0 if SOLVE_ONLY else tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        x0 = _scaled_k(k, beta, gc, t0, eos, i_h, i_hk, H, H // G, K, 0, o_k, m_k, GATE)
        x1, x2, x3 = x0, x0, x0
        if BT // 16 > 1:
            x1 = _scaled_k(k, beta, gc, t0, eos, i_h, i_hk, H, H // G, K, 1, o_k, m_k, GATE)
        if BT // 16 > 2:
            x2 = _scaled_k(k, beta, gc, t0, eos, i_h, i_hk, H, H // G, K, 2, o_k, m_k, GATE)
        if BT // 16 > 3:
            x3 = _scaled_k(k, beta, gc, t0, eos, i_h, i_hk, H, H // G, K, 3, o_k, m_k, GATE)
        y0, y1, y2, y3 = _apply4(x0, x1, x2, x3, X00, X10, X11, X20, X21, X22, X30, X31, X32, X33, BT // 16, PREC)
        _store_rows(w, y0, t0, eos, i_h, H, K, 0, o_k, m_k)
        if BT // 16 > 1:
            _store_rows(w, y1, t0, eos, i_h, H, K, 1, o_k, m_k)
        if BT // 16 > 2:
            _store_rows(w, y2, t0, eos, i_h, H, K, 2, o_k, m_k)
        if BT // 16 > 3:
            _store_rows(w, y3, t0, eos, i_h, H, K, 3, o_k, m_k)
    for i_v in range(0, 0 if SOLVE_ONLY else tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        x0 = _scaled_v(v, beta, t0, eos, i_h, H, V, 0, o_v, m_v)
        x1, x2, x3 = x0, x0, x0
        if BT // 16 > 1:
            x1 = _scaled_v(v, beta, t0, eos, i_h, H, V, 1, o_v, m_v)
        if BT // 16 > 2:
            x2 = _scaled_v(v, beta, t0, eos, i_h, H, V, 2, o_v, m_v)
        if BT // 16 > 3:
            x3 = _scaled_v(v, beta, t0, eos, i_h, H, V, 3, o_v, m_v)
        y0, y1, y2, y3 = _apply4(x0, x1, x2, x3, X00, X10, X11, X20, X21, X22, X30, X31, X32, X33, BT // 16, PREC)
        _store_rows(u, y0, t0, eos, i_h, H, V, 0, o_v, m_v)
        if BT // 16 > 1:
            _store_rows(u, y1, t0, eos, i_h, H, V, 1, o_v, m_v)
        if BT // 16 > 2:
            _store_rows(u, y2, t0, eos, i_h, H, V, 2, o_v, m_v)
        if BT // 16 > 3:
            _store_rows(u, y3, t0, eos, i_h, H, V, 3, o_v, m_v)


@triton.jit
def chunk_wu_kernel(
    k,
    v,
    beta,
    gc,
    X,
    w,
    u,
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
    kg=None,
    STORE_KG: tl.constexpr = False,
):
    """W = X (b e^G k) and U = X (b v) with [BT, BT] x [BT, BD] dots, X read from ``chunk_wy_kernel``.

    With ``STORE_KG`` (gate per key) also kg = k e^{G_last - G} in the inputs' dtype, the keys decayed to the
    chunk's last step as the state pass uses them: made once here, where k and G are loaded anyway, instead
    of once per V block of the sequential pass (the same fp32 product, cast as the pass casts it)."""
    i_s, i_h = tl.program_id(0), tl.program_id(1)
    i_n, i_c, bos, eos = chunk_span(info, i_s)
    if i_n < 0:
        return
    i_hk = i_h // G
    o_i = tl.arange(0, BT)
    o_t = bos + i_c * BT + o_i
    m_t = o_t < eos
    b_X = tl.load(X + (o_t * H + i_h)[:, None] * BT + o_i[None, :], mask=m_t[:, None], other=0)
    b_b = tl.load(beta + o_t * H + i_h, mask=m_t, other=0).to(tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        p_v = (o_t * H + i_h)[:, None] * V + o_v[None, :]
        b_v = tl.load(v + p_v, mask=m_tv, other=0)
        b_vb = (b_v.to(tl.float32) * b_b[:, None]).to(b_X.dtype)
        tl.store(u + p_v, dot(b_X, b_vb, prec=PREC).to(u.dtype.element_ty), mask=m_tv)
    if GATE == 1:
        b_b = b_b * tl.exp(tl.load(gc + o_t * H + i_h, mask=m_t, other=0))
    last = tl.minimum(bos + i_c * BT + BT, eos) - 1
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        p_k = (o_t * H + i_h)[:, None] * K + o_k[None, :]
        b_kr = tl.load(k + (o_t * (H // G) + i_hk)[:, None] * K + o_k[None, :], mask=m_tk, other=0).to(tl.float32)
        b_k = b_kr * b_b[:, None]
        if GATE == 2:
            b_g = tl.load(gc + (o_t * H + i_h)[:, None] * K + o_k[None, :], mask=m_tk, other=0)
            b_k = b_k * tl.exp(b_g)
            if STORE_KG:
                b_gl = tl.load(gc + (last * H + i_h) * K + o_k, mask=o_k < K, other=0)
                b_kg = b_kr * tl.exp(tl.where(m_tk, b_gl[None, :] - b_g, 0))
                tl.store(kg + p_k, b_kg.to(kg.dtype.element_ty), mask=m_tk)
        tl.store(w + p_k, dot(b_X, b_k.to(b_X.dtype), prec=PREC).to(w.dtype.element_ty), mask=m_tk)


@triton.jit
def chunk_delta_h_kernel(
    k,
    w,
    u,
    gc,
    h,
    vn,
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
    PREC: tl.constexpr,
    kg=None,
    KG: tl.constexpr = False,
    FULL_CHUNKS: tl.constexpr = False,
):
    """Per sequence, head and V block: h[slot] = S entering the chunk, v_new = U - W S, S carried; ht = final S.
    With ``KG`` (gate per key) the decayed keys come from ``chunk_wu_kernel``'s kg, and only G_last is read.
    A scalar gate's update kᵀ diag(e^{G_last - G}) v_new decays v_new's rows, which are in registers anyway, not
    the keys' columns: the keys go to the dot as loaded (FLA's order; H200: RESULTS, fifteenth session).

    BK covers K (v_new needs all of it). S stays fp32 in registers; h and v_new are stored in the inputs' dtype
    (every consumer casts them to it before its dots)."""
    i_nh, _, i_v = state_block(1, tl.cdiv(V, BV))
    i_n, i_h = i_nh // H, i_nh % H
    i_hk = i_h // G
    bos, eos, NT = sequence_span(cu, i_n, BT)
    s0 = tl.load(chunk_off + i_n).to(tl.int64)
    o_k, o_v, m_k, m_v, m_h, o_h = state_offsets(0, i_v, K, V, BK, BV)
    b_h = state_start(h0, i_n * H + i_h, o_h, m_h, K, V, BK, BV, USE_H0)
    o_i = tl.arange(0, BT)
    for i_c in range(0, NT):
        tl.store(h + ((s0 + i_c) * H + i_h) * K * V + o_h, b_h.to(h.dtype.element_ty), mask=m_h)
        # the chunk's first row in the (int64) base pointers, the tiles' offsets from it in int32 (as the GLA line's
        # state passes); no row masks where every chunk is full (``chunks.state_chunk_rows``)
        t0 = bos + i_c * BT
        n_t, m_t = state_chunk_rows(t0, eos, o_i, BT, FULL_CHUNKS)
        m_tv = m_t[:, None] & m_v[None, :]
        # [BT, BK]
        m_tk = m_t[:, None] & m_k[None, :]
        b_w = tl.load(w + (t0 * H + i_h) * K + (o_i * (H * K))[:, None] + o_k[None, :], mask=m_tk, other=0)
        # [BT, BV]
        p_v = (t0 * H + i_h) * V + (o_i * (H * V))[:, None] + o_v[None, :]
        b_vn = tl.load(u + p_v, mask=m_tv, other=0).to(tl.float32) - dot(b_w, b_h.to(b_w.dtype), prec=PREC)
        tl.store(vn + p_v, b_vn.to(vn.dtype.element_ty), mask=m_tv)
        # [BK, BT]
        if KG:
            b_kt = tl.load(kg + (t0 * H + i_h) * K + (o_i * (H * K))[None, :] + o_k[:, None],
                           mask=m_k[:, None] & m_t[None, :], other=0)  # fmt: skip
            b_h *= tl.exp(tl.load(gc + ((t0 + n_t - 1) * H + i_h) * K + o_k, mask=m_k, other=0))[:, None]
        else:
            b_kt = tl.load(k + (t0 * (H // G) + i_hk) * K + (o_i * ((H // G) * K))[None, :] + o_k[:, None],
                           mask=m_k[:, None] & m_t[None, :], other=0)  # fmt: skip
            g_c = chunk_gate(gc, t0, H, K, GATE)
            if GATE == 1 or GATE == 3:
                b_h, b_vn = decay_rows_to_last_t(b_h, b_vn, g_c, o_i, m_t, 0, n_t - 1, i_h, H, GATE)
            else:
                b_h, b_kt = decay_to_last_t(b_h, b_kt, g_c, o_i, m_t, 0, n_t - 1, i_h, H, K, o_k, m_k, GATE)
        b_h += dot(b_kt.to(b_w.dtype), b_vn.to(b_w.dtype), prec=PREC)
    tl.store(ht + (i_n * H + i_h) * K * V + o_h, b_h, mask=m_h)


@triton.jit
def _key_block_state(h0, i_nh, i_v, i_kb: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                     BV: tl.constexpr, USE_H0: tl.constexpr):  # fmt: skip
    """:func:`chunk_delta_h_split_kernel`'s key block ``i_kb`` of BK rows: (its carried [BK, BV] state, its offsets
    and mask within one [K, V] state)."""
    _, _, _, _, m_h, o_h = state_offsets(i_kb, i_v, K, V, BK, BV)
    return state_start(h0, i_nh, o_h, m_h, K, V, BK, BV, USE_H0), o_h, m_h


@triton.jit
def _key_block_ws(w, b_h, t0, o_i, m_t, i_h, i_kb: tl.constexpr, H: tl.constexpr, K: tl.constexpr,
                  BK: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """The chunk's W [BT, K] restricted to key block ``i_kb`` (BK columns) times that block of S: its part of W S."""
    o_k = i_kb * BK + tl.arange(0, BK)
    b_w = tl.load(w + (t0 * H + i_h) * K + (o_i * (H * K))[:, None] + o_k[None, :],
                  mask=m_t[:, None] & (o_k < K)[None, :], other=0)  # fmt: skip
    return dot(b_w, b_h.to(b_w.dtype), prec=PREC)


@triton.jit
def _key_block_step(k, kg, gc, b_h, b_vn, b_decay, t0, n_t, o_i, m_t, i_h, i_hk, i_kb: tl.constexpr,
                    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, BK: tl.constexpr, KG: tl.constexpr,
                    PREC: tl.constexpr):  # fmt: skip
    """Key block ``i_kb`` of S carried over the chunk: S e^{G_last} (``b_decay``, a scalar gate's; with ``KG`` the
    block's own e^{G_last} per key) + kᵀ v_new (v_new's rows already decayed for a scalar gate; with ``KG`` the
    decayed keys of ``chunk_wu_kernel``)."""
    o_k = i_kb * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_kt = m_k[:, None] & m_t[None, :]
    if KG:
        b_kt = tl.load(kg + (t0 * H + i_h) * K + (o_i * (H * K))[None, :] + o_k[:, None], mask=m_kt, other=0)
        b_h *= tl.exp(tl.load(gc + ((t0 + n_t - 1) * H + i_h) * K + o_k, mask=m_k, other=0))[:, None]
    else:
        b_kt = tl.load(k + (t0 * (H // G) + i_hk) * K + (o_i * ((H // G) * K))[None, :] + o_k[:, None], mask=m_kt,
                       other=0)  # fmt: skip
        b_h *= b_decay
    return b_h + dot(b_kt.to(b_vn.dtype), b_vn, prec=PREC)


@triton.jit
def chunk_delta_h_split_kernel(
    k,
    w,
    u,
    gc,
    h,
    vn,
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
    PREC: tl.constexpr,
    kg=None,
    KG: tl.constexpr = False,
    FULL_CHUNKS: tl.constexpr = False,
):
    """:func:`chunk_delta_h_kernel` (the same arguments) with the state held as two to four key blocks of BK rows
    ([BK, BV] tiles, BK < K <= 4 BK; the launcher's BK is 64), FLA's layout of its Hopper state pass, which ran
    0.386 ms a call against the whole-K 0.445 at K 256 x V 512 (gated_delta_rule, B=8 H=8 T=2048; launch option
    ``h_split_k``). Gates: none, scalar (1, 3) or per key through ``kg`` (``KG``); the others take the whole-K
    kernel."""
    i_nh, _, i_v = state_block(1, tl.cdiv(V, BV))
    i_n, i_h = i_nh // H, i_nh % H
    i_hk = i_h // G
    bos, eos, NT = sequence_span(cu, i_n, BT)
    s0 = tl.load(chunk_off + i_n).to(tl.int64)
    _, o_v, _, m_v, _, _ = state_offsets(0, i_v, K, V, BK, BV)
    b_h1, o_h1, m_h1 = _key_block_state(h0, i_n * H + i_h, i_v, 0, K, V, BK, BV, USE_H0)
    b_h2, o_h2, m_h2 = _key_block_state(h0, i_n * H + i_h, i_v, 1, K, V, BK, BV, USE_H0)
    if K > 2 * BK:
        b_h3, o_h3, m_h3 = _key_block_state(h0, i_n * H + i_h, i_v, 2, K, V, BK, BV, USE_H0)
    if K > 3 * BK:
        b_h4, o_h4, m_h4 = _key_block_state(h0, i_n * H + i_h, i_v, 3, K, V, BK, BV, USE_H0)
    o_i = tl.arange(0, BT)
    for i_c in range(0, NT):
        p_h = h + ((s0 + i_c) * H + i_h) * K * V
        tl.store(p_h + o_h1, b_h1.to(h.dtype.element_ty), mask=m_h1)
        tl.store(p_h + o_h2, b_h2.to(h.dtype.element_ty), mask=m_h2)
        if K > 2 * BK:
            tl.store(p_h + o_h3, b_h3.to(h.dtype.element_ty), mask=m_h3)
        if K > 3 * BK:
            tl.store(p_h + o_h4, b_h4.to(h.dtype.element_ty), mask=m_h4)
        t0 = bos + i_c * BT
        n_t, m_t = state_chunk_rows(t0, eos, o_i, BT, FULL_CHUNKS)
        m_tv = m_t[:, None] & m_v[None, :]
        # v_new = U - W S, by key blocks
        b_ws = _key_block_ws(w, b_h1, t0, o_i, m_t, i_h, 0, H, K, BK, PREC)
        b_ws += _key_block_ws(w, b_h2, t0, o_i, m_t, i_h, 1, H, K, BK, PREC)
        if K > 2 * BK:
            b_ws += _key_block_ws(w, b_h3, t0, o_i, m_t, i_h, 2, H, K, BK, PREC)
        if K > 3 * BK:
            b_ws += _key_block_ws(w, b_h4, t0, o_i, m_t, i_h, 3, H, K, BK, PREC)
        p_v = (t0 * H + i_h) * V + (o_i * (H * V))[:, None] + o_v[None, :]
        b_vn = tl.load(u + p_v, mask=m_tv, other=0).to(tl.float32) - b_ws
        tl.store(vn + p_v, b_vn.to(vn.dtype.element_ty), mask=m_tv)
        b_decay = 1.0
        if GATE == 1 or GATE == 3:  # v_new's rows to the chunk's last step, S by e^{G_last} (decay_rows_to_last_t)
            g_c = chunk_gate(gc, t0, H, K, GATE)
            b_g = scalar_gate(g_c, o_i, m_t, 0, i_h, H, GATE)
            b_gl = scalar_gate_at(g_c, b_g, o_i, n_t - 1, 0, i_h, H, GATE)
            b_vn = b_vn * tl.exp(tl.where(m_t, b_gl - b_g, 0))[:, None]
            b_decay = tl.exp(b_gl)
        b_vn = b_vn.to(vn.dtype.element_ty)
        b_h1 = _key_block_step(k, kg, gc, b_h1, b_vn, b_decay, t0, n_t, o_i, m_t, i_h, i_hk, 0, H, G, K, BK, KG, PREC)
        b_h2 = _key_block_step(k, kg, gc, b_h2, b_vn, b_decay, t0, n_t, o_i, m_t, i_h, i_hk, 1, H, G, K, BK, KG, PREC)
        if K > 2 * BK:
            b_h3 = _key_block_step(k, kg, gc, b_h3, b_vn, b_decay, t0, n_t, o_i, m_t, i_h, i_hk, 2, H, G, K, BK, KG,
                                   PREC)  # fmt: skip
        if K > 3 * BK:
            b_h4 = _key_block_step(k, kg, gc, b_h4, b_vn, b_decay, t0, n_t, o_i, m_t, i_h, i_hk, 3, H, G, K, BK, KG,
                                   PREC)  # fmt: skip
    p_ht = ht + (i_n * H + i_h) * K * V
    tl.store(p_ht + o_h1, b_h1, mask=m_h1)
    tl.store(p_ht + o_h2, b_h2, mask=m_h2)
    if K > 2 * BK:
        tl.store(p_ht + o_h3, b_h3, mask=m_h3)
    if K > 3 * BK:
        tl.store(p_ht + o_h4, b_h4, mask=m_h4)


@triton.jit
def chunk_kda_A_rows_kernel(
    q,
    k,
    gc,
    Akk,
    Aqk,
    info,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    NC: tl.constexpr,
    PREC: tl.constexpr,
    BKF: tl.constexpr = 32,
):
    """kda's k kᵀ and gated q kᵀ of a chunk (fp32 Akk, Aqk in the inputs' dtype) by row blocks: one program per
    row block i of a chunk (grid (NS, NC, H)), so q_i, k_i and their gates are loaded and scaled once, not once
    per (i, j) block.

    The whole key dim in one block (BK >= K): against the reference r (block i's first row) x_i e^{G_i - G_r}
    is formed once and kept, then a loop over the key blocks j <= i loads each k_j and its gates once and stores
    (x_i e^{G_i - G_r}) (k_j e^{G_r - G_j})ᵀ (no work on the zero blocks above the diagonal). The diagonal
    block is the loop's last step while its span allows (factored like the off-diagonal ones), else it is summed
    column by column after the loop from q_i, k_i and G_i loaded again by K blocks of BKF (strong gates only:
    nothing of that path stays live through the loop, which keeps the registers of the common path low)."""
    i_s, i_i, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_c, bos, eos = chunk_span(info, i_s)
    if i_n < 0:
        return
    i_hk = i_h // G
    t0 = bos + i_c * BT
    t_r = t0 + i_i * BC  # the i block's first row: the reference
    if t_r >= eos:
        return
    o_c = tl.arange(0, BC)
    o_ti = t_r + o_c
    m_ti = o_ti < eos
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    m_qi = m_ti[:, None] & m_k[None, :]
    p_i = (o_ti * (H // G) + i_hk)[:, None] * K + o_k[None, :]
    p_gi = (o_ti * H + i_h)[:, None] * K + o_k[None, :]
    b_q = tl.load(q + p_i, mask=m_qi, other=0)
    b_gr = tl.load(gc + (t_r * H + i_h) * K + o_k, mask=m_k, other=0)
    b_dr = tl.where(m_qi, tl.load(gc + p_gi, mask=m_qi, other=0) - b_gr[None, :], 0)
    span = 60.0
    if b_q.dtype == tl.float16:
        span = 8.0
    # factors e^(+-d), |d| <= span: normal numbers in the inputs' dtype; then the diagonal block is a dot too
    n_j = tl.where(tl.max(tl.abs(b_dr)) <= span, i_i + 1, i_i)
    b_e = tl.exp(b_dr)
    b_qg = (b_q.to(tl.float32) * b_e).to(b_q.dtype)
    b_kig = (tl.load(k + p_i, mask=m_qi, other=0).to(tl.float32) * b_e).to(b_q.dtype)
    p_A = (o_ti * H + i_h)[:, None] * BT + o_c[None, :]
    m_A = m_ti[:, None] & (o_c < BC)[None, :]
    m_low = o_c[:, None] >= o_c[None, :]
    for i_j in range(0, n_j):  # key block j: factors e^(G_r - G_j) <= 1 below the diagonal, <= e^span on it
        o_tj = t0 + i_j * BC + o_c
        m_kj = m_k[:, None] & (o_tj < eos)[None, :]
        b_kt = tl.load(k + (o_tj * (H // G) + i_hk)[None, :] * K + o_k[:, None], mask=m_kj, other=0)
        b_gkt = tl.load(gc + (o_tj * H + i_h)[None, :] * K + o_k[:, None], mask=m_kj, other=0)
        b_kg = (b_kt.to(tl.float32) * tl.exp(tl.where(m_kj, b_gr[:, None] - b_gkt, 0))).to(b_q.dtype)
        b_Ak = dot(b_kig, b_kg, prec=PREC)
        b_Aq = dot(b_qg, b_kg, prec=PREC)
        m_S = m_low | (i_j < i_i)  # the diagonal block: its lower triangle
        tl.store(Akk + p_A + i_j * BC, tl.where(m_S, b_Ak, 0), mask=m_A)
        tl.store(Aqk + p_A + i_j * BC, tl.where(m_S, b_Aq, 0).to(Aqk.dtype.element_ty), mask=m_A)
    if n_j == i_i:  # strong gates: the diagonal block by one exponent G_i - G_j <= 0 per pair, K by BKF
        b_Ak = tl.zeros([BC, BC], dtype=tl.float32)
        b_Aq = tl.zeros([BC, BC], dtype=tl.float32)
        for i_f in range(0, tl.cdiv(K, BKF)):
            o_f = i_f * BKF + tl.arange(0, BKF)
            m_f = o_f < K
            m_qf = m_ti[:, None] & m_f[None, :]
            p_f = (o_ti * (H // G) + i_hk)[:, None] * K + o_f[None, :]
            b_qf = tl.load(q + p_f, mask=m_qf, other=0).to(tl.float32)
            b_kif = tl.load(k + p_f, mask=m_qf, other=0).to(tl.float32)
            b_gq = tl.load(gc + (o_ti * H + i_h)[:, None] * K + o_f[None, :], mask=m_qf, other=0)
            for j in range(0, BC):
                t_j = t_r + j
                m_j = m_f & ((o_f * 0 + t_j) < eos)
                b_kj = tl.load(k + (t_j * (H // G) + i_hk) * K + o_f, mask=m_j, other=0).to(tl.float32)
                b_gj = tl.load(gc + (t_j * H + i_h) * K + o_f, mask=m_j, other=0)
                m_ij = ((o_c >= j) & m_ti)[:, None] & m_j[None, :]
                b_w = tl.where(m_ij, b_kj[None, :] * tl.exp(tl.where(m_ij, b_gq - b_gj[None, :], 0)), 0)
                b_Aq += tl.where(o_c[None, :] == j, tl.sum(b_qf * b_w, axis=1)[:, None], 0)
                b_Ak += tl.where(o_c[None, :] == j, tl.sum(b_kif * b_w, axis=1)[:, None], 0)
        tl.store(Akk + p_A + i_i * BC, tl.where(m_low, b_Ak, 0), mask=m_A)
        tl.store(Aqk + p_A + i_i * BC, tl.where(m_low, b_Aq, 0).to(Aqk.dtype.element_ty), mask=m_A)
    b_z = tl.zeros([BC, BC], dtype=tl.float32)
    for i_j in range(i_i + 1, NC):  # blocks above the diagonal: zeros
        tl.store(Akk + p_A + i_j * BC, b_z, mask=m_A)
        tl.store(Aqk + p_A + i_j * BC, b_z.to(Aqk.dtype.element_ty), mask=m_A)

"""Triton kernels of the scan line, hgrn (elementwise) and mamba (the selective scan), and their launchers.

The scan moves 3 numbers per element forward (x, g in; o out) and 5 backward, and does two flops
each: it is memory-bound. One program owns a block of ``BD`` channels of one sequence and walks its
steps, the state in registers (fp32): no chunking, no second pass, every element read once. The
forward is also the decoding kernel (a few steps, state in and out). Gates stay in log space; each
step computes exp(g_t) <= 1 for decaying gates, and a gate of -inf (a reset) gives exactly 0.

Mamba's selective scan walks the same way over a [16, N] state tile (``selective_fwd_kernel``); its
backward (``selective_bwd_kernel``) keeps a state every BT steps and recomputes each segment's states
into a per-program scratch before walking it in reverse, so no state per step is ever stored.

Packed sequences (``cu_seqlens``) give each program its [bos, eos) from the offsets; otherwise
sequence n is [n T, (n + 1) T) of the flattened [B T, D] inputs. Pointer arithmetic with masks only
(``tl.make_block_ptr`` is gone in Triton 3.9); offsets in int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import launch
from ..common.launch import DTYPES, pow2

BD_MAX = 64  # channels per program: more programs walk T side by side (the walk is latency-bound)


@triton.jit
def _span(cu_seqlens, i_n, T, IS_VARLEN: tl.constexpr):
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
    return bos, eos


@triton.jit
def scan_fwd_kernel(
    x, g, h0, o, ht, cu_seqlens, T, D,
    USE_H0: tl.constexpr, IS_VARLEN: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    i_d, i_n = tl.program_id(0), tl.program_id(1)
    bos, eos = _span(cu_seqlens, i_n, T, IS_VARLEN)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    o_n = i_n.to(tl.int64) * D + o_d
    # [BD]
    b_h = tl.zeros([BD], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + o_n, mask=m_d, other=0).to(tl.float32)
    for t in range(bos, eos):
        p = t * D + o_d
        b_x = tl.load(x + p, mask=m_d, other=0).to(tl.float32)
        b_g = tl.load(g + p, mask=m_d, other=0).to(tl.float32)
        b_h = tl.exp(b_g) * b_h + b_x
        tl.store(o + p, b_h.to(o.dtype.element_ty), mask=m_d)
    tl.store(ht + o_n, b_h, mask=m_d)


@triton.jit
def scan_bwd_kernel(
    g, o, h0, do, dht, dx, dg, dh0, cu_seqlens, T, D,
    USE_H0: tl.constexpr, USE_DHT: tl.constexpr, IS_VARLEN: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    """The reverse scan: dh_t = do_t + exp(g_{t+1}) dh_{t+1}; dx_t = dh_t, dg_t = dh_t h_{t-1} exp(g_t)."""
    i_d, i_n = tl.program_id(0), tl.program_id(1)
    bos, eos = _span(cu_seqlens, i_n, T, IS_VARLEN)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    o_n = i_n.to(tl.int64) * D + o_d
    # [BD]
    b_dh = tl.zeros([BD], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(dht + o_n, mask=m_d, other=0).to(tl.float32)
    b_h0 = tl.zeros([BD], dtype=tl.float32)
    if USE_H0:
        b_h0 += tl.load(h0 + o_n, mask=m_d, other=0).to(tl.float32)
    for i in range(0, eos - bos):
        t = eos - 1 - i
        p = t * D + o_d
        b_dh += tl.load(do + p, mask=m_d, other=0).to(tl.float32)
        b_a = tl.exp(tl.load(g + p, mask=m_d, other=0).to(tl.float32))
        # h_{t-1}: o at t - 1, the initial state at the sequence's first step (the load there is discarded)
        b_hp = tl.load(o + tl.maximum(t - 1, bos) * D + o_d, mask=m_d, other=0).to(tl.float32)
        b_hp = tl.where(t > bos, b_hp, b_h0)
        tl.store(dx + p, b_dh.to(dx.dtype.element_ty), mask=m_d)
        tl.store(dg + p, (b_dh * b_hp * b_a).to(dg.dtype.element_ty), mask=m_d)
        b_dh = b_dh * b_a
    if USE_H0:
        tl.store(dh0 + o_n, b_dh, mask=m_d)


def supported(x: torch.Tensor, g: torch.Tensor) -> bool:
    """The kernels take fp32 / bf16 / fp16 inputs of any width (D is blocked)."""
    return x.dtype in DTYPES and g.dtype in DTYPES


def _grid(D: int, N: int):
    BD = min(BD_MAX, pow2(D))
    return BD, (launch.cdiv(D, BD), N)


def fwd_io(x, g, initial_state, cu_seqlens):
    """(x, g, h0 dense, o, N): the forward's inputs as the hgrn kernels (walk, chunked, tile) read them and its
    output as they write it, dense [B, T, D] rows in x's dtype. One definition for the three launchers."""
    x, g = x.contiguous(), g.contiguous()
    h0 = initial_state.contiguous() if initial_state is not None else None
    N = x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return x, g, h0, torch.empty(x.shape, dtype=x.dtype, device=x.device), N


def bwd_io(x, g, initial_state, o, do, dht, cu_seqlens):
    """(g, o, do, h0, dht dense, dx, dg, N): the backward's inputs as the kernels read them and the gradients as
    they write them, dense rows whatever x's strides (``empty_like`` of a permuted x would keep its strides: a
    wrong dx, 2026-11-30)."""
    g, o, do = g.contiguous(), o.contiguous(), do.contiguous()
    h0 = initial_state.contiguous() if initial_state is not None else None
    dht = dht.contiguous() if dht is not None else None
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dg = torch.empty(g.shape, dtype=g.dtype, device=g.device)
    N = x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return g, o, do, h0, dht, dx, dg, N


def forward(x, g, initial_state=None, cu_seqlens=None):
    """(o [B, T, D] in x's dtype, final state [N, D] fp32)."""
    B, T, D = x.shape
    x, g, h0, o, N = fwd_io(x, g, initial_state, cu_seqlens)
    ht = x.new_empty(N, D, dtype=torch.float32)
    BD, grid = _grid(D, N)
    scan_fwd_kernel[grid](
        x, g, h0, o, ht, cu_seqlens, T, D,
        USE_H0=h0 is not None, IS_VARLEN=cu_seqlens is not None, BD=BD, num_warps=1,
    )  # fmt: skip
    return o, ht


def backward(x, g, initial_state, cu_seqlens, o, do, dht):
    """(dx in x's dtype, dg in g's dtype, dh0 fp32 or None)."""
    B, T, D = x.shape
    g, o, do, h0, dht, dx, dg, N = bwd_io(x, g, initial_state, o, do, dht, cu_seqlens)
    dh0 = x.new_empty(N, D, dtype=torch.float32) if h0 is not None else None
    BD, grid = _grid(D, N)
    scan_bwd_kernel[grid](
        g, o, h0, do, dht, dx, dg, dh0, cu_seqlens, T, D,
        USE_H0=h0 is not None, USE_DHT=dht is not None, IS_VARLEN=cu_seqlens is not None, BD=BD, num_warps=1,
    )  # fmt: skip
    return dx, dg, dh0


# ------------------------------------------------------------------ Mamba's selective scan
BD_SELECTIVE = 16  # channels per program; the state tile is [BD, N] fp32 in registers


@triton.jit
def selective_fwd_kernel(
    u, dt, A, Bm, Cm, h0, y, ht, cu_seqlens, T, D, N,
    USE_H0: tl.constexpr, IS_VARLEN: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    """h_t = exp(dt_t A) * h_{t-1} + u_t B_t^T over a [BD, N] tile, y_t = h_t C_t: one program per sequence
    and block of channels walks the steps; u, dt are [B T, D], B, C [B T, N], A [D, N], the state [N_seq, D, N]."""
    i_d, i_n = tl.program_id(0), tl.program_id(1)
    bos, eos = _span(cu_seqlens, i_n, T, IS_VARLEN)
    o_d = i_d * BD + tl.arange(0, BD)
    o_k = tl.arange(0, BN)
    m_d, m_k = o_d < D, o_k < N
    m_dk = m_d[:, None] & m_k[None, :]
    o_dk = o_d[:, None] * N + o_k[None, :]
    # [BD, BN]
    b_A = tl.load(A + o_dk, mask=m_dk, other=0).to(tl.float32)
    b_h = tl.zeros([BD, BN], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_n.to(tl.int64) * D * N + o_dk, mask=m_dk, other=0).to(tl.float32)
    for t in range(bos, eos):
        # [BD]
        b_u = tl.load(u + t * D + o_d, mask=m_d, other=0).to(tl.float32)
        b_dt = tl.load(dt + t * D + o_d, mask=m_d, other=0).to(tl.float32)
        # [BN]
        b_B = tl.load(Bm + t * N + o_k, mask=m_k, other=0).to(tl.float32)
        b_C = tl.load(Cm + t * N + o_k, mask=m_k, other=0).to(tl.float32)
        b_h = tl.exp(b_dt[:, None] * b_A) * b_h + b_u[:, None] * b_B[None, :]
        b_y = tl.sum(b_h * b_C[None, :], 1)
        tl.store(y + t * D + o_d, b_y.to(y.dtype.element_ty), mask=m_d)
    tl.store(ht + i_n.to(tl.int64) * D * N + o_dk, b_h, mask=m_dk)


def selective_supported(u, dt, A, B, C) -> bool:
    """fp32 / bf16 / fp16 tensors and a state of at most 256 per channel (the tile lives in registers)."""
    return all(x.dtype in DTYPES for x in (u, dt, A, B, C)) and A.shape[-1] <= 256


def selective_outputs(u, dt, A, B, C, initial_state, cu_seqlens):
    """What every selective-scan forward launcher starts from: the inputs contiguous, the initial state or None,
    the sequence count, and y [B, T, D] in u's dtype and the final state [N_seq, D, N] fp32 to fill."""
    xs = tuple(x.contiguous() for x in (u, dt, A, B, C))
    n_seq = u.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    h0 = initial_state.contiguous() if initial_state is not None else None
    return xs, h0, n_seq, torch.empty_like(xs[0]), u.new_empty(n_seq, u.shape[-1], A.shape[-1], dtype=torch.float32)


def selective_bwd_inputs(u, dt, A, B, C, initial_state, cu_seqlens, dy, dht):
    """What every selective-scan backward launcher starts from: (u, dt, A, B, C, dy) contiguous, the initial state
    and the final state's gradient contiguous or None, and the sequence count."""
    xs = tuple(x.contiguous() for x in (u, dt, A, B, C, dy))
    n_seq = u.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return xs, *(x.contiguous() if x is not None else None for x in (initial_state, dht)), n_seq


def selective_grad_parts(u, dt, A, n_d: int, n_dA: int, n_seq: int, with_h0: bool):
    """What every selective-scan backward launcher fills: du, ddt like u, dt; fp32 partial sums of dA (``n_dA``
    parts [D, N]) and of dB, dC (one [B T, N] per block of ``n_d`` channels), added by :func:`selective_grads`;
    dh0 [N_seq, D, N] fp32 or None."""
    D, N, T_all = u.shape[-1], A.shape[-1], u.shape[0] * u.shape[1]
    f32 = dict(dtype=torch.float32, device=u.device)
    dh0 = torch.empty(n_seq, D, N, **f32) if with_h0 else None
    return (torch.empty_like(u), torch.empty_like(dt), torch.empty(n_dA, D, N, **f32),
            torch.empty(n_d, T_all, N, **f32), torch.empty(n_d, T_all, N, **f32), dh0)  # fmt: skip


def selective_grads(parts, A, B, C):
    """(du, ddt, dA, dB, dC, dh0 or None) from :func:`selective_grad_parts` once filled: the partial sums added (no
    atomics: bitwise deterministic) and cast to the inputs' dtypes."""
    du, ddt, dA_part, dB_part, dC_part, dh0 = parts
    Bsz, T, N = B.shape
    dB = dB_part.sum(0).view(Bsz, T, N).to(B.dtype)
    dC = dC_part.sum(0).view(Bsz, T, N).to(C.dtype)
    return du, ddt, dA_part.sum(0).to(A.dtype), dB, dC, dh0


def selective_forward(u, dt, A, B, C, initial_state=None, cu_seqlens=None):
    """(y [B, T, D] in u's dtype, final state [N_seq, D, N] fp32)."""
    Bsz, T, D = u.shape
    N = A.shape[-1]
    (u, dt, A, B, C), h0, n_seq, y, ht = selective_outputs(u, dt, A, B, C, initial_state, cu_seqlens)
    BN = pow2(N, lo=2)
    BD = min(BD_SELECTIVE, pow2(D, lo=2))
    grid = (launch.cdiv(D, BD), n_seq)
    selective_fwd_kernel[grid](
        u, dt, A, B, C, h0, y, ht, cu_seqlens, T, D, N,
        USE_H0=h0 is not None, IS_VARLEN=cu_seqlens is not None, BD=BD, BN=BN, num_warps=2,
    )  # fmt: skip
    return y, ht


@triton.jit
def selective_bwd_kernel(
    u, dt, A, Bm, Cm, h0, dy, dht, du, ddt, dA_part, dB_part, dC_part, dh0, ck, hs, cu_seqlens, T, D, N, T_all,
    USE_H0: tl.constexpr, USE_DHT: tl.constexpr, IS_VARLEN: tl.constexpr,
    BD: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr,
):  # fmt: skip
    """The selective scan's backward without storing a state per step. A first walk keeps the state at every
    BT-th step of the packed time axis (``ck`` [cdiv(T_all, BT), D, N]); then, segment by segment from the
    last, the segment's states are recomputed into this program's scratch (``hs`` [BT, BD, BN]) and walked in
    reverse: dh_t = dy_t C_t + exp(dt_{t+1} A) dh_{t+1}. The sums over channels (dB, dC) are written per
    block of channels and the sum over sequences (dA) per sequence, and added up after: no atomics, so the
    gradients are bitwise deterministic."""
    i_d, i_n = tl.program_id(0), tl.program_id(1)
    bos, eos = _span(cu_seqlens, i_n, T, IS_VARLEN)
    o_d = i_d * BD + tl.arange(0, BD)
    o_k = tl.arange(0, BN)
    m_d, m_k = o_d < D, o_k < N
    m_dk = m_d[:, None] & m_k[None, :]
    o_dk = o_d[:, None] * N + o_k[None, :]
    o_tile = tl.arange(0, BD)[:, None] * BN + o_k[None, :]
    p_hs = hs + (i_n.to(tl.int64) * tl.num_programs(0) + i_d) * BT * BD * BN
    # [BD, BN]
    b_A = tl.load(A + o_dk, mask=m_dk, other=0).to(tl.float32)
    b_h0 = tl.zeros([BD, BN], dtype=tl.float32)
    if USE_H0:
        b_h0 += tl.load(h0 + i_n.to(tl.int64) * D * N + o_dk, mask=m_dk, other=0).to(tl.float32)
    # 1. the states before every BT-th step
    b_h = b_h0
    for t in range(bos, eos):
        if (t % BT == 0) & (t > bos):
            tl.store(ck + (t // BT) * D * N + o_dk, b_h, mask=m_dk)
        b_u = tl.load(u + t * D + o_d, mask=m_d, other=0).to(tl.float32)
        b_dt = tl.load(dt + t * D + o_d, mask=m_d, other=0).to(tl.float32)
        b_B = tl.load(Bm + t * N + o_k, mask=m_k, other=0).to(tl.float32)
        b_h = tl.exp(b_dt[:, None] * b_A) * b_h + b_u[:, None] * b_B[None, :]
    # 2. segments from the last: recompute their states, then walk them in reverse
    b_dh = tl.zeros([BD, BN], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(dht + i_n.to(tl.int64) * D * N + o_dk, mask=m_dk, other=0).to(tl.float32)
    b_dA = tl.zeros([BD, BN], dtype=tl.float32)
    c_first = bos // BT
    for ci in range(0, (eos - 1) // BT - c_first + 1):
        c = (eos - 1) // BT - ci
        s0 = tl.maximum(bos, c * BT)
        s1 = tl.minimum(eos, (c + 1) * BT)
        # the segment's start state: the kept one, or the sequence's own start (no kept state is read there: none
        # was written)
        b_ck = tl.load(ck + c * D * N + o_dk, mask=m_dk & (o_dk * 0 + s0 > bos), other=0)
        b_hs = tl.where(s0 > bos, b_ck, b_h0)
        b_h = b_hs
        for t in range(s0, s1):
            b_u = tl.load(u + t * D + o_d, mask=m_d, other=0).to(tl.float32)
            b_dt = tl.load(dt + t * D + o_d, mask=m_d, other=0).to(tl.float32)
            b_B = tl.load(Bm + t * N + o_k, mask=m_k, other=0).to(tl.float32)
            b_h = tl.exp(b_dt[:, None] * b_A) * b_h + b_u[:, None] * b_B[None, :]
            tl.store(p_hs + (t - s0) * BD * BN + o_tile, b_h)
        tl.debug_barrier()
        for i in range(0, s1 - s0):
            t = s1 - 1 - i
            b_u = tl.load(u + t * D + o_d, mask=m_d, other=0).to(tl.float32)
            b_dt = tl.load(dt + t * D + o_d, mask=m_d, other=0).to(tl.float32)
            b_dy = tl.load(dy + t * D + o_d, mask=m_d, other=0).to(tl.float32)
            b_B = tl.load(Bm + t * N + o_k, mask=m_k, other=0).to(tl.float32)
            b_C = tl.load(Cm + t * N + o_k, mask=m_k, other=0).to(tl.float32)
            b_ht = tl.load(p_hs + (t - s0) * BD * BN + o_tile)
            b_hp = tl.load(p_hs + tl.maximum(t - s0 - 1, 0) * BD * BN + o_tile)
            b_hp = tl.where(t > s0, b_hp, b_hs)  # h_{t-1}
            b_dh += b_dy[:, None] * b_C[None, :]
            b_a = tl.exp(b_dt[:, None] * b_A)
            b_q = b_dh * b_hp * b_a  # the gradient of dt_t A, elementwise
            tl.store(ddt + t * D + o_d, tl.sum(b_q * b_A, 1).to(ddt.dtype.element_ty), mask=m_d)
            tl.store(du + t * D + o_d, tl.sum(b_dh * b_B[None, :], 1).to(du.dtype.element_ty), mask=m_d)
            b_dA += b_q * b_dt[:, None]
            o_part = (i_d.to(tl.int64) * T_all + t) * N + o_k
            tl.store(dB_part + o_part, tl.sum(tl.where(m_dk, b_dh * b_u[:, None], 0), 0), mask=m_k)
            tl.store(dC_part + o_part, tl.sum(tl.where(m_dk, b_ht * b_dy[:, None], 0), 0), mask=m_k)
            b_dh = b_dh * b_a
        tl.debug_barrier()
    if USE_H0:
        tl.store(dh0 + i_n.to(tl.int64) * D * N + o_dk, b_dh, mask=m_dk)
    tl.store(dA_part + i_n.to(tl.int64) * D * N + o_dk, b_dA, mask=m_dk)


SELECTIVE_BT = 32  # steps per recomputed segment (the scratch holds BT states of a [BD, N] tile)


def selective_backward(u, dt, A, B, C, initial_state, cu_seqlens, dy, dht):
    """(du, ddt, dA, dB, dC, dh0 or None) by the fused backward walk."""
    Bsz, T, D = u.shape
    N = A.shape[-1]
    (u, dt, A, B, C, dy), h0, dht, n_seq = selective_bwd_inputs(u, dt, A, B, C, initial_state, cu_seqlens, dy, dht)
    BN, BD, BT = pow2(N, lo=2), min(BD_SELECTIVE, pow2(D, lo=2)), SELECTIVE_BT
    n_d = launch.cdiv(D, BD)
    T_all = Bsz * T
    f32 = dict(dtype=torch.float32, device=u.device)
    parts = selective_grad_parts(u, dt, A, n_d, n_seq, n_seq, h0 is not None)
    ck = torch.empty(launch.cdiv(T_all, BT), D, N, **f32)
    hs = torch.empty(n_seq * n_d, BT, BD, BN, **f32)
    selective_bwd_kernel[(n_d, n_seq)](
        u, dt, A, B, C, h0, dy, dht, *parts, ck, hs, cu_seqlens, T, D, N,
        T_all, USE_H0=h0 is not None, USE_DHT=dht is not None, IS_VARLEN=cu_seqlens is not None, BD=BD, BN=BN, BT=BT,
        num_warps=2,
    )  # fmt: skip
    return selective_grads(parts, A, B, C)

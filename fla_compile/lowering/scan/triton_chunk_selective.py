"""Chunked Triton kernels of Mamba's selective scan (the ``mamba`` family), forward and backward.

Per channel d and state n: h_t = a_t h_{t-1} + b_t with a_t = exp(dt_t[d] A[d, n]) and b_t = u_t[d] B_t[n],
y_t[d] = sum_n C_t[n] h_t[d, n]. The fused walk (``triton_scan.selective_fwd_kernel``) is latency-bound:
each step waits for its loads and for the previous step. Here one program owns a sequence and a block
of ``BD`` channels with all states, and moves through time a chunk of ``BT`` steps at a time: the chunk's
inputs come in as whole tiles (the next chunk's tiles are loaded while this one computes), a and b are
formed as [BT, BN, BD] tiles and ``tl.associative_scan`` along time gives every state of the chunk at
once; the carried state enters as part of the first step's input (b_0 + a_0 h_carry). The sequential
dependency is one per chunk, not per step, and the work per chunk is wide.

Backward, in two launches: ``chunk_selective_states_kernel`` keeps the state at the start of every chunk
(closed form, no scan: h_end = exp(A sum dt) h + sum_s exp(A (sum dt after s)) b_s); then
``chunk_selective_bwd_kernel`` goes through the chunks from the last, recomputes the chunk's states from
its start state by the forward scan, and gets dh_t = C_t dy_t + a_{t+1} dh_{t+1} by a reverse scan, the
gradient from later chunks entering as a_{s1} dh_{s1} at the chunk's last step. Then du_t = sum_n dh B_t,
dC_t = sum_d h dy_t, dB_t = sum_d dh u_t and, with a_t h_{t-1} = h_t - b_t (no shifted state needed, as
in mamba's own backward), ddt_t = sum_n dh (h_t - b_t) A and dA = sum_t dh (h_t - b_t) dt_t. Sums over
channels (dB, dC) are written per block of channels and those over sequences (dA) per sequence, then
added: no atomics, bitwise deterministic. No state per step is ever stored.

The op runs ``triton_chunk_selective_vec`` instead (see there; N padded to a power of two), unless
``dispatch.SELECTIVE_VEC`` is off: these kernels stay as its measured alternative.

Decays are exp2 of dt * (A log2 e); A <= 0 keeps every factor <= 1. Packed sequences (``cu_seqlens``)
give each program its [bos, eos); chunks start at bos. Masked rows and channels are identities
(dt = 0, u = 0: a = 1, b = 0). Pointer arithmetic with masks (no ``tl.make_block_ptr``); offsets int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import launch
from ..common.launch import pow2
from .triton_scan import (  # the walk's
    _span,
    selective_bwd_inputs,
    selective_grad_parts,
    selective_grads,
    selective_outputs,
)

LOG2E = tl.constexpr(1.4426950408889634)  # 1 / ln 2: exp(x) = exp2(x log2 e)

# Launch shapes. The fp32 tiles [BT, BN, BD] live in registers: with BN = 16 the default layout puts the
# channels on 16 lanes, the states on 2 lanes and the warps, and time inside each thread, so the scans are
# sequential in-thread FMAs and the sums over states (y, du, ddt) cost one shuffle level; the backward's
# sums over channels (dB, dC) take four (a shuffle and an add per level and element) and lead its cost.
# Compiled for sm_90a with Triton 3.6 (the H200's) and 3.9, no spills: forward 128 registers (~20
# instructions per element), states 128 (~15), backward 255 with 4 warps (~60; two programs per SM).
# benchmarks/sweep_mamba_chunk.py times other choices.
# the forward's launch (either layout, FWD_LANES below): the lanes kernel's best at both sweep shapes (H200, bf16,
# 2026-12-01); the other layout's was 2 warps (0.324 ms at (4, 2048, 1536, 16), 0.873 at (1, 8192, 4096, 16))
BT_FWD, BD_FWD, WARPS_FWD = 16, 16, 4
BT_BWD, BD_BWD, WARPS_STATES, WARPS_BWD = 16, 16, 4, 4
# The forward with the states on the lanes (``chunk_selective_fwd_lanes_kernel``; False: the states across the
# warps, ``chunk_selective_fwd_kernel``). Offline sm_90a (Triton 3.9): BT 16, BD 16 at 4 warps 136 registers, 768
# SASS instructions for 32 elements a thread (the other at 2 warps: 168, 832 for 64, with 49 shared loads and 23
# barriers a chunk): more instructions (shuffles), twice the warps, no barriers. On the H200 (bf16,
# benchmarks/sweep_mamba_chunk.py --fwd, 2026-12-01): 0.324 -> 0.225 ms at (4, 2048, 1536, 16), 0.873 -> 0.652 at
# (1, 8192, 4096, 16), outputs within 2e-5 of the other layout's
FWD_LANES = True


@triton.jit
def _first_order(a1, b1, a2, b2):
    """(a1, b1) then (a2, b2) of h -> a h + b: h -> a2 (a1 h + b1) + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _load_td(p, t0, o_t, o_d, eos, D):
    """A [BT, BD] tile of a [T, D] tensor from row t0 in fp32 (rows past ``eos`` and channels past D read 0)."""
    rows = t0 + o_t
    m = (rows < eos)[:, None] & (o_d < D)[None, :]
    return tl.load(p + rows[:, None] * D + o_d[None, :], mask=m, other=0).to(tl.float32)


@triton.jit
def _store_td(p, x, t0, o_t, o_d, eos, D):
    rows = t0 + o_t
    m = (rows < eos)[:, None] & (o_d < D)[None, :]
    tl.store(p + rows[:, None] * D + o_d[None, :], x.to(p.dtype.element_ty), mask=m)


@triton.jit
def _load_chunk(dt, u, Bm, Cm, t0, o_t, o_d, o_k, eos, D, N):
    """The forward's tiles of the chunk at row t0: dt, u [BT, BD] and B, C [BT, BN] in fp32."""
    b_dt = _load_td(dt, t0, o_t, o_d, eos, D)
    b_u = _load_td(u, t0, o_t, o_d, eos, D)
    return b_dt, b_u, _load_td(Bm, t0, o_t, o_k, eos, N), _load_td(Cm, t0, o_t, o_k, eos, N)


@triton.jit
def _load_bwd_chunk(dt, u, dy, Bm, Cm, t0, o_t, o_d, o_k, eos, D, N, BT: tl.constexpr):
    """The backward's tiles of the chunk at row t0 in fp32: dt, dt one step ahead within the chunk (0 at its last
    step: a = 1 there), u, dy [BT, BD] and B, C [BT, BN]."""
    b_dtn = _load_td(dt, t0 + 1, o_t, o_d, tl.minimum(t0 + BT, eos), D)
    b_dt, b_u, b_B, b_C = _load_chunk(dt, u, Bm, Cm, t0, o_t, o_d, o_k, eos, D, N)
    return b_dt, b_dtn, b_u, _load_td(dy, t0, o_t, o_d, eos, D), b_B, b_C


@triton.jit
def _chunk_scans(b_a, b_b, b_h, b_an, b_dc, b_g, o_t, BT: tl.constexpr):
    """The backward's two scans of a chunk, time on axis 0 of 3-D tiles: (h_t, dh_t). The chunk's states again, the
    start state ``b_h`` entering the first step's input; dh_t = C_t dy_t + a_{t+1} dh_{t+1} (``b_dc`` = C dy,
    ``b_an`` = a_{t+1}, 1 at the last step), the later chunks' gradient ``b_g`` entering the last row."""
    _, b_hs = tl.associative_scan((b_a, tl.where((o_t == 0)[:, None, None], b_b + b_a * b_h, b_b)), 0, _first_order)
    b_dc = tl.where((o_t == BT - 1)[:, None, None], b_dc + b_g, b_dc)
    # the reverse scan as a forward one between flips: in-thread flips are free, while reverse=True costs
    # ~20 shuffles per element on Triton 3.6 (4 on 3.9) even with time inside each thread
    _, b_dh = tl.associative_scan((tl.flip(b_an, 0), tl.flip(b_dc, 0)), 0, _first_order)
    return b_hs, tl.flip(b_dh, 0)


@triton.jit
def _row(x, o_t, i):
    """Row i of a 3-D tile, time on axis 0 (a masked sum: the time axis is a tile axis, not an index)."""
    return tl.sum(tl.where((o_t == i)[:, None, None], x, 0.0), 0)


@triton.jit
def _row2(x, o_t, i):
    """Row i of a [BT, BD] tile."""
    return tl.sum(tl.where((o_t == i)[:, None], x, 0.0), 0)


@triton.jit
def chunk_selective_fwd_kernel(
    u, dt, A, Bm, Cm, h0, y, ht, cu_seqlens, T, D, N,
    USE_H0: tl.constexpr, IS_VARLEN: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    """y and the final state; u, dt, y [B T, D], B, C [B T, N], A [D, N], states [N_seq, D, N]."""
    i_d, i_n = tl.program_id(0), tl.program_id(1)
    bos, eos = _span(cu_seqlens, i_n, T, IS_VARLEN)
    o_t = tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    o_k = tl.arange(0, BN)
    m_kd = (o_k < N)[:, None] & (o_d < D)[None, :]
    o_kd = o_k[:, None] + o_d[None, :] * N  # [BN, BD] of a [D, N] tensor: channels along the lanes
    # [BN, BD]
    b_A2 = tl.load(A + o_kd, mask=m_kd, other=0).to(tl.float32) * LOG2E
    b_h = tl.zeros([BN, BD], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_n.to(tl.int64) * D * N + o_kd, mask=m_kd, other=0).to(tl.float32)
    # [BT, BD], [BT, BN]: the first chunk's tiles; every iteration loads the next chunk's before computing
    b_dt, b_u, b_B, b_C = _load_chunk(dt, u, Bm, Cm, bos, o_t, o_d, o_k, eos, D, N)
    for t0 in range(bos, eos, BT):
        n_dt, n_u, n_B, n_C = _load_chunk(dt, u, Bm, Cm, t0 + BT, o_t, o_d, o_k, eos, D, N)
        # [BT, BN, BD]; the carried state enters the first step's input
        b_a = tl.exp2(b_dt[:, None, :] * b_A2[None, :, :])
        b_b = b_B[:, :, None] * b_u[:, None, :]
        b_b = tl.where((o_t == 0)[:, None, None], b_b + b_a * b_h[None, :, :], b_b)
        _, b_hs = tl.associative_scan((b_a, b_b), 0, _first_order)
        # [BT, BD]
        _store_td(y, tl.sum(b_hs * b_C[:, :, None], 1), t0, o_t, o_d, eos, D)
        b_h = _row(b_hs, o_t, BT - 1)  # masked rows are identities: the last row is the state after eos - 1
        b_dt, b_u, b_B, b_C = n_dt, n_u, n_B, n_C
    tl.store(ht + i_n.to(tl.int64) * D * N + o_kd, b_h, mask=m_kd)


@triton.jit
def chunk_selective_fwd_lanes_kernel(
    u, dt, A, Bm, Cm, h0, y, ht, cu_seqlens, T, D, N,
    USE_H0: tl.constexpr, IS_VARLEN: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    """``chunk_selective_fwd_kernel`` with the states last, under A/B (``FWD_LANES``): [BT, BD, BN] tiles put
    the states on the lanes and the warps on channels only, so the sum over states (y) stays in a warp (four
    shuffle levels per output, no shared memory or barrier) and more warps per program split no sum."""
    i_d, i_n = tl.program_id(0), tl.program_id(1)
    bos, eos = _span(cu_seqlens, i_n, T, IS_VARLEN)
    o_t = tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    o_k = tl.arange(0, BN)
    m_dk = (o_d < D)[:, None] & (o_k < N)[None, :]
    o_dk = o_d[:, None] * N + o_k[None, :]  # [BD, BN] of a [D, N] tensor, read and written along N
    # [BD, BN]
    b_A2 = tl.load(A + o_dk, mask=m_dk, other=0).to(tl.float32) * LOG2E
    b_h = tl.zeros([BD, BN], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_n.to(tl.int64) * D * N + o_dk, mask=m_dk, other=0).to(tl.float32)
    b_dt, b_u, b_B, b_C = _load_chunk(dt, u, Bm, Cm, bos, o_t, o_d, o_k, eos, D, N)
    for t0 in range(bos, eos, BT):
        n_dt, n_u, n_B, n_C = _load_chunk(dt, u, Bm, Cm, t0 + BT, o_t, o_d, o_k, eos, D, N)
        # [BT, BD, BN]
        b_a = tl.exp2(b_dt[:, :, None] * b_A2[None, :, :])
        b_b = b_u[:, :, None] * b_B[:, None, :]
        b_b = tl.where((o_t == 0)[:, None, None], b_b + b_a * b_h[None, :, :], b_b)
        _, b_hs = tl.associative_scan((b_a, b_b), 0, _first_order)
        _store_td(y, tl.sum(b_hs * b_C[:, None, :], 2), t0, o_t, o_d, eos, D)
        b_h = _row(b_hs, o_t, BT - 1)
        b_dt, b_u, b_B, b_C = n_dt, n_u, n_B, n_C
    tl.store(ht + i_n.to(tl.int64) * D * N + o_dk, b_h, mask=m_dk)


@triton.jit
def chunk_selective_states_kernel(
    u, dt, A, Bm, h0, hc, cu_seqlens, T, D, N,
    USE_H0: tl.constexpr, IS_VARLEN: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    """The state before every chunk into ``hc`` [slots, D, N], the chunk starting at row t0 of sequence i_n
    at slot i_n + t0 // BT (distinct across sequences: see ``_slots``)."""
    i_d, i_n = tl.program_id(0), tl.program_id(1)
    bos, eos = _span(cu_seqlens, i_n, T, IS_VARLEN)
    o_t = tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    o_k = tl.arange(0, BN)
    m_kd = (o_k < N)[:, None] & (o_d < D)[None, :]
    o_kd = o_k[:, None] + o_d[None, :] * N  # [BN, BD] of a [D, N] tensor: channels along the lanes
    b_A2 = tl.load(A + o_kd, mask=m_kd, other=0).to(tl.float32) * LOG2E
    b_h = tl.zeros([BN, BD], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_n.to(tl.int64) * D * N + o_kd, mask=m_kd, other=0).to(tl.float32)
    b_dt = _load_td(dt, bos, o_t, o_d, eos, D)
    b_u = _load_td(u, bos, o_t, o_d, eos, D)
    b_B = _load_td(Bm, bos, o_t, o_k, eos, N)
    for t0 in range(bos, eos, BT):
        tl.store(hc + (i_n + t0 // BT) * D * N + o_k[:, None] * D + o_d[None, :], b_h, mask=m_kd)
        n_dt = _load_td(dt, t0 + BT, o_t, o_d, eos, D)
        n_u = _load_td(u, t0 + BT, o_t, o_d, eos, D)
        n_B = _load_td(Bm, t0 + BT, o_t, o_k, eos, N)
        # [BT, BD]: the step sizes after each step of the chunk, so every decay below is <= 1 for A <= 0
        b_after = tl.sum(b_dt, 0)[None, :] - tl.cumsum(b_dt, 0)
        # [BT, BN, BD]
        b_w = tl.exp2(b_after[:, None, :] * b_A2[None, :, :])
        b_h = tl.exp2(tl.sum(b_dt, 0)[None, :] * b_A2) * b_h + tl.sum(b_w * (b_B[:, :, None] * b_u[:, None, :]), 0)
        b_dt, b_u, b_B = n_dt, n_u, n_B


@triton.jit
def chunk_selective_bwd_kernel(
    u, dt, A, Bm, Cm, hc, dy, dht, du, ddt, dA_part, dB_part, dC_part, dh0, cu_seqlens, T, D, N, T_all,
    USE_H0: tl.constexpr, USE_DHT: tl.constexpr, IS_VARLEN: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    """The gradients, chunk by chunk from the last (see the module's docstring); dB, dC per block of
    channels ([n_d, T_all, N]), dA per sequence ([N_seq, D, N])."""
    i_d, i_n = tl.program_id(0), tl.program_id(1)
    bos, eos = _span(cu_seqlens, i_n, T, IS_VARLEN)
    o_t = tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    o_k = tl.arange(0, BN)
    m_kd = (o_k < N)[:, None] & (o_d < D)[None, :]
    o_kd = o_k[:, None] + o_d[None, :] * N  # [BN, BD] of a [D, N] tensor: channels along the lanes
    b_A = tl.load(A + o_kd, mask=m_kd, other=0).to(tl.float32)
    b_A2 = b_A * LOG2E
    # [BN, BD]: a_{s1} dh_{s1}, the gradient reaching the state before the chunk from after it
    b_g = tl.zeros([BN, BD], dtype=tl.float32)
    if USE_DHT:
        b_g += tl.load(dht + i_n.to(tl.int64) * D * N + o_kd, mask=m_kd, other=0).to(tl.float32)
    b_dA = tl.zeros([BN, BD], dtype=tl.float32)
    n_chunks = tl.cdiv(eos - bos, BT)
    for i in range(0, n_chunks):
        t0 = bos + (n_chunks - 1 - i) * BT
        b_dt, b_dtn, b_u, b_dy, b_B, b_C = _load_bwd_chunk(dt, u, dy, Bm, Cm, t0, o_t, o_d, o_k, eos, D, N, BT)
        b_h = tl.load(hc + (i_n + t0 // BT) * D * N + o_k[:, None] * D + o_d[None, :], mask=m_kd, other=0)
        # [BT, BN, BD]
        b_a = tl.exp2(b_dt[:, None, :] * b_A2[None, :, :])
        b_b = b_B[:, :, None] * b_u[:, None, :]
        b_an = tl.exp2(b_dtn[:, None, :] * b_A2[None, :, :])
        b_dc = b_C[:, :, None] * b_dy[:, None, :]
        b_hs, b_dh = _chunk_scans(b_a, b_b, b_h[None, :, :], b_an, b_dc, b_g[None, :, :], o_t, BT)
        b_q = b_dh * (b_hs - b_b)  # dh_t a_t h_{t-1}: the gradient of dt_t A
        _store_td(du, tl.sum(b_dh * b_B[:, :, None], 1), t0, o_t, o_d, eos, D)
        _store_td(ddt, tl.sum(b_q * b_A[None, :, :], 1), t0, o_t, o_d, eos, D)
        b_dA += tl.sum(b_q * b_dt[:, None, :], 0)
        p_part = i_d.to(tl.int64) * T_all * N
        _store_td(dB_part + p_part, tl.sum(b_dh * b_u[:, None, :], 2), t0, o_t, o_k, eos, N)
        _store_td(dC_part + p_part, tl.sum(b_hs * b_dy[:, None, :], 2), t0, o_t, o_k, eos, N)
        b_g = tl.exp2(_row2(b_dt, o_t, 0)[None, :] * b_A2) * _row(b_dh, o_t, 0)
    if USE_H0:
        tl.store(dh0 + i_n.to(tl.int64) * D * N + o_kd, b_g, mask=m_kd)
    tl.store(dA_part + i_n.to(tl.int64) * D * N + o_kd, b_dA, mask=m_kd)


def _slots(n_seq: int, T_all: int, BT: int) -> int:
    """Rows of the chunk-state buffer: sequence n's chunk from row t0 takes slot n + t0 // BT. Within a
    sequence the slots grow by one per chunk; the last of sequence n, n + (eos - 1) // BT, is below the
    first of n + 1, n + 1 + eos // BT; the largest is below n_seq + T_all // BT."""
    return n_seq + T_all // BT


def forward(u, dt, A, B, C, initial_state=None, cu_seqlens=None):
    """(y [B, T, D] in u's dtype, final state [N_seq, D, N] fp32)."""
    Bsz, T, D = u.shape
    N = A.shape[-1]
    (u, dt, A, B, C), h0, n_seq, y, ht = selective_outputs(u, dt, A, B, C, initial_state, cu_seqlens)
    BN, BD = pow2(N, lo=2), min(BD_FWD, pow2(D, lo=2))
    kernel = chunk_selective_fwd_lanes_kernel if FWD_LANES else chunk_selective_fwd_kernel
    kernel[(launch.cdiv(D, BD), n_seq)](
        u, dt, A, B, C, h0, y, ht, cu_seqlens, T, D, N,
        USE_H0=h0 is not None, IS_VARLEN=cu_seqlens is not None, BT=BT_FWD, BD=BD, BN=BN, num_warps=WARPS_FWD,
    )  # fmt: skip
    return y, ht


def backward(u, dt, A, B, C, initial_state, cu_seqlens, dy, dht):
    """(du, ddt, dA, dB, dC, dh0 or None): the chunk states, then the reverse pass."""
    Bsz, T, D = u.shape
    N = A.shape[-1]
    (u, dt, A, B, C, dy), h0, dht, n_seq = selective_bwd_inputs(u, dt, A, B, C, initial_state, cu_seqlens, dy, dht)
    BN, BD, BT = pow2(N, lo=2), min(BD_BWD, pow2(D, lo=2)), BT_BWD
    n_d, T_all = launch.cdiv(D, BD), Bsz * T
    f32 = dict(dtype=torch.float32, device=u.device)
    flags = dict(IS_VARLEN=cu_seqlens is not None, BT=BT, BD=BD, BN=BN)
    hc = torch.empty(_slots(n_seq, T_all, BT), N, D, **f32)
    chunk_selective_states_kernel[(n_d, n_seq)](
        u, dt, A, B, h0, hc, cu_seqlens, T, D, N, USE_H0=h0 is not None, num_warps=WARPS_STATES, **flags
    )  # fmt: skip
    parts = selective_grad_parts(u, dt, A, n_d, n_seq, n_seq, h0 is not None)
    chunk_selective_bwd_kernel[(n_d, n_seq)](
        u, dt, A, B, C, hc, dy, dht, *parts, cu_seqlens, T, D, N, T_all,
        USE_H0=h0 is not None, USE_DHT=dht is not None, num_warps=WARPS_BWD, **flags,
    )  # fmt: skip
    return selective_grads(parts, A, B, C)

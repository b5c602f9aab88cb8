"""Mamba's selective scan (the ``mamba`` family) chunked: the states vectorized in each thread, the sequence
split into segments that run in parallel. Forward and backward. The kernels take N a power of two; any other N
runs on states padded with zeros (``states_run``), exactly.

The recurrence, the chunk's scan and the gradients are ``triton_chunk_selective``'s (see there). Two things
differ:

- **Layout.** With N a compile-time size, A loads as a [1, BD, N] tile in 16-byte vectors along the states.
  That load's layout (four states in each thread, then lanes on states and channels, warps on channels, time
  in each thread) anchors the chunk's [BT, BD, N] tiles, so a sum over states is three in-thread adds and two
  shuffle levels per four elements, where the other kernels spend four shuffle levels on every element.
  Offline sm_90a (Triton 3.6), forward at BT 16, BD 32, 4 warps: ~10 loop instructions an element against
  ~17. The states a thread are a launch option (``Tiles.vec``: a contiguity hint on that load sets its
  vector width); two a thread put twice the warps on the same channels for a third more instructions.
- **Segments.** A walk through a whole sequence leaves the machine idle: (4, 2048, 1536, 16) gives 384
  programs of a serial walk, (1, 8192, 4096, 16) 256. So a dense sequence is cut into segments of G chunks
  (the backward always; the forward only on small grids, ``FWD_SEGMENTS_BELOW``: elsewhere it walks whole
  sequences on chunks of 32 steps, a walk of half the serial steps, or on large grids of 16 with two channels a
  thread, ``FWD_WIDE``).
  ``chunk_selective_segments_kernel`` gives every segment, in parallel, its state from a zero start and its
  step sizes summed (and for the backward its state gradient from a zero end). Each consumer then forms its
  own start state from the segments before it, h <- exp(A sum dt) h + h_local (its end gradient likewise from
  the segments after it), and walks only its own chunks. A few segments before each program cost little; the
  launchers keep at most ``MAX_SEGMENTS``. Packed sequences (``cu_seqlens``) keep one segment a sequence:
  their lengths are not known on the host.

The backward's program walks its chunks forward first, keeping each chunk's start state in ``hc`` (read back by
the same program), then backward for the gradients, as ``chunk_selective_bwd_kernel`` does for a sequence.

Every walk loads the next chunk's tiles before it works on the current one's: a program has one or two warps and an
SM a few programs, too few to hide a load's latency otherwise (ncu, the backward at (4, 2048, 1536, 16) with its
loads after use: 3.5 of 6.7 cycles an instruction stalled on them; loaded ahead, 0.80 -> 0.62 ms on the H200).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..common import launch
from ..common.launch import pow2
from .triton_chunk_selective import (
    LOG2E,
    _chunk_scans,
    _first_order,
    _load_bwd_chunk,
    _load_chunk,
    _load_td,
    _row,
    _row2,
    _slots,
    _store_td,
)
from .triton_scan import _span, selective_bwd_inputs, selective_grad_parts, selective_grads, selective_outputs


@dataclass(frozen=True)
class Tiles:
    """A kernel's launch shape: steps a chunk, channels a program, warps, and states in each thread (the
    vector width of the anchor load; fewer states a thread put more warps on the same channels)."""

    BT: int
    BD: int
    warps: int
    vec: int

    def for_states(self, N: int) -> Tiles:
        """These tiles for N states: they are set for N <= 16, so a larger N takes N / 16 times fewer steps a
        chunk (not under 2), then fewer channels, keeping a thread's elements, and its registers, as at 16.
        Offline (Triton 3.6, sm_90a): the forward at N = 32 on 32 steps spills 660 B a thread, on 16 none (254
        registers); the backward (one warp, 16 channels) at N = 32 on 4 steps 116 B, on 2 none; at N = 64 on 2
        steps 576 B, on 2 steps of 8 channels none (252 registers)."""
        if N <= 16:
            return self
        BT = max(2, self.BT * 16 // N)
        return replace(self, BT=BT, BD=max(2, self.BD * self.BT * 16 // (N * BT)))


# Launch shapes, the best of benchmarks/sweep_mamba_chunk.py --vec (H200, bf16, N = 16, 2026-12-02). The forward
# walking whole sequences: a chunk of 32 steps halves the walk's serial steps against 16, each of them latency
# more than work (ncu: 0.34 instructions a cycle a scheduler, stalls mostly on fixed-latency dependencies);
# (4, 2048, 1536) 0.170 -> 0.136 ms, (1, 8192, 4096) 0.587 -> 0.417, (8, 2048, 2048) 0.364 -> 0.305. Two states
# a thread (twice the warps, a third more instructions) won only on the smaller grids.
FWD = Tiles(32, 16, 2, 4)
# Large grids walk on FWD_WIDE's tiles: chunks of 16 steps, two channels a thread (twice FWD's channels a program,
# half its programs), where FWD's grid has at least FWD_WIDE_FROM warps a multiprocessor. There the machine is full
# either way, and each thread's second channel is a second independent chain. H200, bf16, forward ms (FWD's warps a
# multiprocessor, FWD -> FWD_WIDE): N = 16, (4, 2048, 2048) 7.8 0.157 -> 0.211; (6, 2048, 2048) 11.6 0.257 -> 0.253;
# (8, 2048, 2048) 15.5 0.305 -> 0.262; (16, 2048, 2048) 31 0.602 -> 0.511; N = 32, (8, 2048, 2048) 0.517 -> 0.472;
# N = 64 1.070 -> 0.980. Below 8 warps a multiprocessor FWD wins by 35-90%.
FWD_WIDE, FWD_WIDE_FROM = Tiles(16, 32, 2, 4), 12.0
# The forward in segments of CHUNKS_FWD chunks (small grids), and its segments pass.
FWD_IN_SEGMENTS, SEG_FWD, CHUNKS_FWD = Tiles(16, 16, 2, 4), Tiles(16, 16, 2, 4), 16
# The backward (always in segments of CHUNKS_BWD chunks) and its segments pass, whose chunk divides a segment's.
# One warp a program, two channels a thread: its four sums a step (du, ddt over states; dB, dC over channels) add
# in the thread first and need no pass across warps. Offline (Triton 3.6, sm_90a) its loop takes 32.5 instructions
# an element against 47.5 for two warps, one channel a thread, on 8-step chunks (7.25 shuffles an element against
# 4.0, and the shared-memory sums gone). H200, bf16, backward ms: (4, 2048, 1536) 1.137 -> 0.939, (1, 8192, 4096)
# 3.013 -> 2.561, (8, 2048, 2048) 2.907 -> 2.432, (1, 2048, 1536) 0.327 -> 0.284 (0.268 on segments of 16 chunks).
BWD, CHUNKS_BWD = Tiles(4, 16, 1, 4), 32
# Its segments pass: one warp a program, two channels a thread (offline 7.6 loop instructions an element against
# 9.9 on two warps: each step's loads and conversions serve two channels), but on two warps where the one-warp
# grid has fewer than SEG_BWD_ONE_WARP_FROM warps a multiprocessor: there a walk per program is latency, and twice
# the warps hide more of it. H200, bf16, backward ms, two warps -> one: (4, 2048, 1536) 46 warps/SM 0.938 -> 0.803,
# (1, 8192, 4096) 62 warps 2.566 -> 2.231, (8, 2048, 2048) 2.432 -> 2.080; (1, 2048, 1536) 12 warps 0.282 -> 0.337.
# (Measured with the pass's two walks, one for the states and one for the gradients. Fused into one walk with one
# exp an element, offline 11.0 loop instructions an element against 15.2, the whole backward: 0.617 -> 0.594 ms at
# (4, 2048, 1536), 1.670 -> 1.600 at (1, 8192, 4096), 1.620 -> 1.557 at (8, 2048, 2048), 1.547 -> 1.447 at N = 32.)
SEG_BWD, SEG_BWD_SMALL_GRID, SEG_BWD_ONE_WARP_FROM = Tiles(8, 16, 1, 4), Tiles(8, 16, 2, 4), 24
MAX_SEGMENTS = 32  # a consumer combines up to this many segments before its own
# The forward cuts its sequences into segments only where its grid (sequences x channel blocks, FWD's tiles) has
# fewer warps than this many a multiprocessor: the segments pass evaluates an exp per element as the forward does,
# so it pays only where a walk per sequence leaves much of the machine idle. H200 (132 SMs; bf16, N = 16; ms,
# whole sequences on FWD's tiles -> segments): 96 warps (1, 2048, 768) 0.102 -> 0.071; 128 (1, 8192, 1024) 0.387
# -> 0.195; 192 (1, 2048, 1536) 0.104 -> 0.079; 384 (2, 2048, 1536) 0.110 -> 0.140 and (1, 4096, 3072) 0.210 ->
# 0.267; 768 (4, 2048, 1536) 0.136 -> 0.265.
FWD_SEGMENTS_BELOW = 2.2


def states_run(N: int) -> int:
    """The states the kernels run for N: N up to a power of two (at least 2). The state vector's width is a
    compile-time size whose tile loads as vectors only unmasked (a masked or runtime N loads one element a
    thread, 1,096 loop instructions offline against ~600)."""
    return max(2, pow2(N))


def _pad_states(x, n: int):
    """x (or None) with its last axis, the states, zero-padded to n. Padded states have A = 0, B = C = 0 and
    a zero start, so they stay zero and add nothing to y or to the other gradients: exact, not approximate."""
    return x if x is None or x.shape[-1] == n else F.pad(x, (0, n - x.shape[-1]))


@triton.jit
def _vec_offsets(i_d, D, BD: tl.constexpr, N: tl.constexpr, VEC: tl.constexpr):
    """Offsets and mask of a [1, BD, N] tile of a [D, N] tensor: the anchor layout, ``VEC`` states in each thread
    (the load's vector width, from the contiguity the hint declares)."""
    o_d = i_d * BD + tl.arange(0, BD)
    o_k = tl.max_contiguous(tl.arange(0, N), VEC)
    return o_d[None, :, None] * N + o_k[None, None, :], (o_d < D)[None, :, None] & (o_k < N)[None, None, :]


@triton.jit
def _products(p1, e1, p2, e2):
    """The combine of a product scan keeping both kinds: (the product through this element, the product of the
    elements before it); an element enters as (a, 1)."""
    return p1 * p2, p1 * e2


@triton.jit
def _load_walk(dt, x, m, t0, o_t, o_d, o_k, eos, D, N):
    """A walk's tiles of the chunk at row t0, in fp32: dt and x [BT, BD], m [BT, N] (u and B for the states'
    walks, dy and C for the gradients')."""
    return _load_td(dt, t0, o_t, o_d, eos, D), _load_td(x, t0, o_t, o_d, eos, D), _load_td(m, t0, o_t, o_k, eos, N)


@triton.jit
def _state_step(b_h, b_dt, b_u, b_B, b_A2):
    """The state after a chunk from the state before it, closed form: exp(A sum dt) h + sum_s exp(A (the
    step sizes after s)) u_s B_s (every factor <= 1 for A <= 0)."""
    b_total = tl.sum(b_dt, 0)
    b_w = tl.exp2((b_total[None, :] - tl.cumsum(b_dt, 0))[:, :, None] * b_A2)
    b_h = tl.exp2(b_total[None, :, None] * b_A2) * b_h
    return b_h + tl.sum(b_w * (b_u[:, :, None] * b_B[:, None, :]), 0, keep_dims=True)


@triton.jit
def _segment_rows(bos, eos, i_s, G, BT: tl.constexpr, SEGMENTED: tl.constexpr):
    """[t_s, t_e): the rows of segment i_s (G chunks from bos), or the whole sequence."""
    if SEGMENTED:
        t_s = bos + i_s * G * BT
        return t_s, tl.minimum(t_s + G * BT, eos)
    return bos, eos


@triton.jit
def _combine(loc, seg_dt, b_x, b_A2, o3, m3, o_d, m_d, D, N: tl.constexpr, first, count, step):
    """x <- exp(A sum dt) x + x_local over ``count`` segments from ``first`` in steps of ``step`` (+1: the
    states before a segment; -1: the gradients after it); loc [segments, D, N], seg_dt [segments, D]."""
    for i in range(0, count):
        j = first + i * step  # below MAX_SEGMENTS: the bases carry the large offsets
        b_sum = tl.load(seg_dt + j * D + o_d, mask=m_d, other=0)
        b_x = tl.exp2(b_sum[None, :, None] * b_A2) * b_x + tl.load(loc + j * D * N + o3, mask=m3, other=0)
    return b_x


@triton.jit
def chunk_selective_segments_kernel(
    u, dt, A, Bm, Cm, dy, loc_h, loc_g, seg_dt, T, D, G,
    GRADS: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, N: tl.constexpr, VEC: tl.constexpr,
):  # fmt: skip
    """Per segment of G chunks (dense sequences): its end state from a zero start, its step sizes summed and, with
    ``GRADS``, its start gradient from a zero end; [B, segments, ...] flattened."""
    i_d, i_n, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos = i_n.to(tl.int64) * T
    t_s, t_e = _segment_rows(bos, bos + T, i_s, G, BT, True)
    o_t = tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    o_k = tl.arange(0, N)
    o3, m3 = _vec_offsets(i_d, D, BD, N, VEC)
    b_A2 = tl.load(A + o3, mask=m3, other=0).to(tl.float32) * LOG2E
    b_sum = tl.zeros([BD], dtype=tl.float32)
    j = (i_n * tl.num_programs(2) + i_s).to(tl.int64)
    b_h = tl.zeros([1, BD, N], dtype=tl.float32)
    # each walk loads the next chunk's tiles before working on this one's (see the module's docstring)
    b_dt, b_u, b_B = _load_walk(dt, u, Bm, t_s, o_t, o_d, o_k, t_e, D, N)
    if GRADS:
        # one walk for both: the gradient from a zero end, sum_t exp(A (the step sizes from the segment's start
        # through t)) C_t dy_t, is a sum in time order too, so each step's exp(A dt) serves both sums
        b_g = tl.zeros([1, BD, N], dtype=tl.float32)
        b_p = tl.full([1, BD, N], 1.0, tl.float32)  # exp(A (the step sizes before the chunk))
        b_dy, b_C = _load_td(dy, t_s, o_t, o_d, t_e, D), _load_td(Cm, t_s, o_t, o_k, t_e, N)
        for t0 in range(t_s, t_e, BT):
            n_dt, n_u, n_B = _load_walk(dt, u, Bm, t0 + BT, o_t, o_d, o_k, t_e, D, N)
            n_dy, n_C = _load_td(dy, t0 + BT, o_t, o_d, t_e, D), _load_td(Cm, t0 + BT, o_t, o_k, t_e, N)
            b_total = tl.sum(b_dt, 0)
            b_sum += b_total
            b_a = tl.exp2(b_dt[:, :, None] * b_A2)  # [BT, BD, N]
            ones = tl.full(b_a.shape, 1.0, tl.float32)
            # exp(A c_t), c_t the chunk's step sizes through t; exp(A (those after t)): products in the thread
            b_pre, _ = tl.associative_scan((b_a, ones), 0, _products)
            _, b_post = tl.associative_scan((tl.flip(b_a, 0), ones), 0, _products)
            b_decay = tl.exp2(b_total[None, :, None] * b_A2)
            b_g += b_p * tl.sum(b_pre * (b_dy[:, :, None] * b_C[:, None, :]), 0, keep_dims=True)
            b_h = b_decay * b_h + tl.sum(tl.flip(b_post, 0) * (b_u[:, :, None] * b_B[:, None, :]), 0, keep_dims=True)
            b_p = b_p * b_decay
            b_dt, b_u, b_B, b_dy, b_C = n_dt, n_u, n_B, n_dy, n_C
        tl.store(loc_g + j * D * N + o3, b_g, mask=m3)
    else:
        for t0 in range(t_s, t_e, BT):
            n_dt, n_u, n_B = _load_walk(dt, u, Bm, t0 + BT, o_t, o_d, o_k, t_e, D, N)
            b_sum += tl.sum(b_dt, 0)
            b_h = _state_step(b_h, b_dt, b_u, b_B, b_A2)
            b_dt, b_u, b_B = n_dt, n_u, n_B
    tl.store(loc_h + j * D * N + o3, b_h, mask=m3)
    tl.store(seg_dt + j * D + o_d, b_sum, mask=o_d < D)


@triton.jit
def chunk_selective_fwd_vec_kernel(
    u, dt, A, Bm, Cm, h0, y, ht, loc_h, seg_dt, cu_seqlens, T, D, G,
    USE_H0: tl.constexpr, IS_VARLEN: tl.constexpr, SEGMENTED: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, N: tl.constexpr, VEC: tl.constexpr,
):  # fmt: skip
    """y over one segment (the whole sequence unless ``SEGMENTED``), and the final state from the last."""
    i_d, i_n, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos = _span(cu_seqlens, i_n, T, IS_VARLEN)
    t_s, t_e = _segment_rows(bos, eos, i_s, G, BT, SEGMENTED)
    o_t = tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    o_k = tl.arange(0, N)
    o3, m3 = _vec_offsets(i_d, D, BD, N, VEC)
    b_A2 = tl.load(A + o3, mask=m3, other=0).to(tl.float32) * LOG2E
    b_h = tl.zeros([1, BD, N], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_n.to(tl.int64) * D * N + o3, mask=m3, other=0).to(tl.float32)
    if SEGMENTED:
        b_h = _combine(loc_h + i_n.to(tl.int64) * tl.num_programs(2) * D * N,
                       seg_dt + i_n.to(tl.int64) * tl.num_programs(2) * D, b_h, b_A2, o3, m3, o_d, o_d < D, D, N,
                       0, i_s, 1)  # fmt: skip
    b_dt, b_u, b_B, b_C = _load_chunk(dt, u, Bm, Cm, t_s, o_t, o_d, o_k, t_e, D, N)
    for t0 in range(t_s, t_e, BT):
        n_dt, n_u, n_B, n_C = _load_chunk(dt, u, Bm, Cm, t0 + BT, o_t, o_d, o_k, t_e, D, N)
        # [BT, BD, N]; the carried state enters the first step's input
        b_a = tl.exp2(b_dt[:, :, None] * b_A2)
        b_b = b_u[:, :, None] * b_B[:, None, :]
        b_b = tl.where((o_t == 0)[:, None, None], b_b + b_a * b_h, b_b)
        _, b_hs = tl.associative_scan((b_a, b_b), 0, _first_order)
        _store_td(y, tl.sum(b_hs * b_C[:, None, :], 2), t0, o_t, o_d, t_e, D)
        b_h = _row(b_hs, o_t, BT - 1)[None, :, :]
        b_dt, b_u, b_B, b_C = n_dt, n_u, n_B, n_C
    if i_s == tl.num_programs(2) - 1:
        tl.store(ht + i_n.to(tl.int64) * D * N + o3, b_h, mask=m3)


@triton.jit
def chunk_selective_bwd_vec_kernel(
    u, dt, A, Bm, Cm, h0, dht, hc, loc_h, loc_g, seg_dt, dy, du, ddt, dA_part, dB_part, dC_part, dh0, cu_seqlens,
    T, D, T_all, G,
    USE_H0: tl.constexpr, USE_DHT: tl.constexpr, IS_VARLEN: tl.constexpr, SEGMENTED: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, N: tl.constexpr, VEC: tl.constexpr,
):  # fmt: skip
    """The gradients over one segment: its chunks forward for their start states (into ``hc``), then backward
    as in ``chunk_selective_bwd_kernel``; dA per (sequence, segment), dh0 from the first segment."""
    i_d, i_n, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_seg = tl.num_programs(2)
    bos, eos = _span(cu_seqlens, i_n, T, IS_VARLEN)
    t_s, t_e = _segment_rows(bos, eos, i_s, G, BT, SEGMENTED)
    o_t = tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    o_k = tl.arange(0, N)
    m_d = o_d < D
    o3, m3 = _vec_offsets(i_d, D, BD, N, VEC)
    b_A = tl.load(A + o3, mask=m3, other=0).to(tl.float32)
    b_A2 = b_A * LOG2E
    b_h = tl.zeros([1, BD, N], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_n.to(tl.int64) * D * N + o3, mask=m3, other=0).to(tl.float32)
    # [1, BD, N]: a_{s1} dh_{s1}, the gradient reaching the state before a chunk from after it
    b_g = tl.zeros([1, BD, N], dtype=tl.float32)
    if USE_DHT:
        b_g += tl.load(dht + i_n.to(tl.int64) * D * N + o3, mask=m3, other=0).to(tl.float32)
    if SEGMENTED:
        p_loc, p_sum = i_n.to(tl.int64) * n_seg * D * N, i_n.to(tl.int64) * n_seg * D
        b_h = _combine(loc_h + p_loc, seg_dt + p_sum, b_h, b_A2, o3, m3, o_d, m_d, D, N, 0, i_s, 1)
        b_g = _combine(loc_g + p_loc, seg_dt + p_sum, b_g, b_A2, o3, m3, o_d, m_d, D, N, n_seg - 1, n_seg - 1 - i_s,
                       -1)  # fmt: skip
    # both walks load the next chunk's tiles before working on this one's (see the module's docstring)
    b_dt, b_u, b_B = _load_walk(dt, u, Bm, t_s, o_t, o_d, o_k, t_e, D, N)
    for t0 in range(t_s, t_e, BT):
        tl.store(hc + (i_n + t0 // BT) * D * N + o3, b_h, mask=m3)
        n_dt, n_u, n_B = _load_walk(dt, u, Bm, t0 + BT, o_t, o_d, o_k, t_e, D, N)
        b_h = _state_step(b_h, b_dt, b_u, b_B, b_A2)
        b_dt, b_u, b_B = n_dt, n_u, n_B
    tl.debug_barrier()  # the start states, stored by this program, are read back across its threads
    b_dA = tl.zeros([1, BD, N], dtype=tl.float32)
    p_part = i_d.to(tl.int64) * T_all * N
    n_chunks = tl.cdiv(t_e - t_s, BT)
    t_last = tl.maximum(t_s + (n_chunks - 1) * BT, t_s)  # an empty sequence's: all rows masked
    b_dt, b_dtn, b_u, b_dy, b_B, b_C = _load_bwd_chunk(dt, u, dy, Bm, Cm, t_last, o_t, o_d, o_k, t_e, D, N, BT)
    b_h = tl.load(hc + (i_n + t_last // BT) * D * N + o3, mask=m3, other=0)
    for i in range(0, n_chunks):
        t0 = t_s + (n_chunks - 1 - i) * BT
        t_p = tl.maximum(t0 - BT, t_s)  # the chunk before (the first chunk again at the end: in bounds)
        n_dt, n_dtn, n_u, n_dy, n_B, n_C = _load_bwd_chunk(dt, u, dy, Bm, Cm, t_p, o_t, o_d, o_k, t_e, D, N, BT)
        n_h = tl.load(hc + (i_n + t_p // BT) * D * N + o3, mask=m3, other=0)
        # [BT, BD, N]
        b_a = tl.exp2(b_dt[:, :, None] * b_A2)
        b_b = b_u[:, :, None] * b_B[:, None, :]
        b_an = tl.exp2(b_dtn[:, :, None] * b_A2)
        b_hs, b_dh = _chunk_scans(b_a, b_b, b_h, b_an, b_dy[:, :, None] * b_C[:, None, :], b_g, o_t, BT)
        b_q = b_dh * (b_hs - b_b)  # dh_t a_t h_{t-1}: the gradient of dt_t A
        _store_td(du, tl.sum(b_dh * b_B[:, None, :], 2), t0, o_t, o_d, t_e, D)
        _store_td(ddt, tl.sum(b_q * b_A, 2), t0, o_t, o_d, t_e, D)
        b_dA += tl.sum(b_q * b_dt[:, :, None], 0, keep_dims=True)
        _store_td(dB_part + p_part, tl.sum(b_dh * b_u[:, :, None], 1), t0, o_t, o_k, t_e, N)
        _store_td(dC_part + p_part, tl.sum(b_hs * b_dy[:, :, None], 1), t0, o_t, o_k, t_e, N)
        b_g = tl.exp2(_row2(b_dt, o_t, 0)[None, :, None] * b_A2) * _row(b_dh, o_t, 0)[None, :, :]
        b_dt, b_dtn, b_u, b_dy, b_B, b_C, b_h = n_dt, n_dtn, n_u, n_dy, n_B, n_C, n_h
    if USE_H0:
        if i_s == 0:
            tl.store(dh0 + i_n.to(tl.int64) * D * N + o3, b_g, mask=m3)
    tl.store(dA_part + (i_n * n_seg + i_s).to(tl.int64) * D * N + o3, b_dA, mask=m3)


def _block_d(tiles: Tiles, D: int) -> int:
    """The channels a program of these tiles takes: BD, or D up to a power of two where it is smaller."""
    return min(tiles.BD, pow2(D, lo=2))


def _warps_per_sm(tiles: Tiles, D: int, programs: int, device) -> float:
    """Warps a multiprocessor of a grid of ``programs`` x channel blocks on these tiles (one SM off CUDA)."""
    sms = launch.sm_count(device) if device.type == "cuda" else 1
    return launch.cdiv(D, _block_d(tiles, D)) * programs * tiles.warps / sms


def _segments(T: int, BT: int, chunks: int, whole: bool) -> tuple[int, int]:
    """(G chunks a segment, segments a sequence): ``chunks`` a segment, fewer segments than ``MAX_SEGMENTS``;
    one segment a sequence if ``whole`` (packed inputs: their lengths are not known on the host)."""
    n_chunks = launch.cdiv(T, BT)
    if whole or n_chunks <= chunks:
        return max(n_chunks, 1), 1
    G = max(chunks, launch.cdiv(n_chunks, MAX_SEGMENTS))
    return G, launch.cdiv(n_chunks, G)


def _segment_summaries(u, dt, A, B, C, dy, rows: int, n_seg: int, grads: bool, tiles: Tiles):
    """The segments pass over segments of ``rows`` steps, on chunks of ``tiles.BT`` or of the largest power of two
    dividing ``rows`` below it: (end states from zero, start gradients from zero or None, step sizes summed)."""
    Bsz, T, D = u.shape
    N = A.shape[-1]
    tiles = tiles.for_states(N)
    f32 = dict(dtype=torch.float32, device=u.device)
    loc_h = torch.empty(Bsz * n_seg, D, N, **f32)
    loc_g = torch.empty(Bsz * n_seg, D, N, **f32) if grads else None
    seg_dt = torch.empty(Bsz * n_seg, D, **f32)
    BD = _block_d(tiles, D)
    BT = math.gcd(tiles.BT, rows)
    chunk_selective_segments_kernel[(launch.cdiv(D, BD), Bsz, n_seg)](
        u, dt, A, B, C, dy, loc_h, loc_g, seg_dt, T, D, rows // BT,
        GRADS=grads, BT=BT, BD=BD, N=N, VEC=min(tiles.vec, N), num_warps=tiles.warps,
    )  # fmt: skip
    return loc_h, loc_g, seg_dt


def forward(u, dt, A, B, C, initial_state=None, cu_seqlens=None):
    """(y [B, T, D] in u's dtype, final state [N_seq, D, N] fp32); N not a power of two runs padded
    (:func:`states_run`)."""
    N, n = A.shape[-1], states_run(A.shape[-1])
    if n == N:
        return _forward(u, dt, A, B, C, initial_state, cu_seqlens)
    y, ht = _forward(u, dt, *(_pad_states(x, n) for x in (A, B, C, initial_state)), cu_seqlens)
    return y, ht[..., :N].contiguous()


def backward(u, dt, A, B, C, initial_state, cu_seqlens, dy, dht):
    """(du, ddt, dA, dB, dC, dh0 or None); N not a power of two runs padded (:func:`states_run`)."""
    N, n = A.shape[-1], states_run(A.shape[-1])
    if n == N:
        return _backward(u, dt, A, B, C, initial_state, cu_seqlens, dy, dht)
    A, B, C, h0, dht = (_pad_states(x, n) for x in (A, B, C, initial_state, dht))
    du, ddt, dA, dB, dC, dh0 = _backward(u, dt, A, B, C, h0, cu_seqlens, dy, dht)
    dA, dB, dC = (g[..., :N].contiguous() for g in (dA, dB, dC))
    return du, ddt, dA, dB, dC, dh0[..., :N].contiguous() if dh0 is not None else None


def _forward(u, dt, A, B, C, initial_state, cu_seqlens):
    N = A.shape[-1]
    Bsz, T, D = u.shape
    (u, dt, A, B, C), h0, n_seq, y, ht = selective_outputs(u, dt, A, B, C, initial_state, cu_seqlens)
    warps = _warps_per_sm(FWD, D, n_seq, u.device)  # FWD's grid: the choice of tiles reads it
    tiles = FWD_IN_SEGMENTS.for_states(N)
    G, n_seg = _segments(T, tiles.BT, CHUNKS_FWD, whole=cu_seqlens is not None or warps >= FWD_SEGMENTS_BELOW)
    loc_h = seg_dt = None
    if n_seg == 1:  # one walk a sequence (G unused)
        tiles = (FWD_WIDE if warps >= FWD_WIDE_FROM else FWD).for_states(N)
    else:
        loc_h, _, seg_dt = _segment_summaries(u, dt, A, B, C, None, G * tiles.BT, n_seg, False, SEG_FWD)
    BD = _block_d(tiles, D)
    chunk_selective_fwd_vec_kernel[(launch.cdiv(D, BD), n_seq, n_seg)](
        u, dt, A, B, C, h0, y, ht, loc_h, seg_dt, cu_seqlens, T, D, G,
        USE_H0=h0 is not None, IS_VARLEN=cu_seqlens is not None, SEGMENTED=n_seg > 1, BT=tiles.BT, BD=BD, N=N,
        VEC=min(tiles.vec, N), num_warps=tiles.warps,
    )  # fmt: skip
    return y, ht


def _backward(u, dt, A, B, C, initial_state, cu_seqlens, dy, dht):
    N = A.shape[-1]
    Bsz, T, D = u.shape
    (u, dt, A, B, C, dy), h0, dht, n_seq = selective_bwd_inputs(u, dt, A, B, C, initial_state, cu_seqlens, dy, dht)
    T_all = Bsz * T
    tiles = BWD.for_states(N)
    G, n_seg = _segments(T, tiles.BT, CHUNKS_BWD, whole=cu_seqlens is not None)
    loc_h = loc_g = seg_dt = None
    if n_seg > 1:
        one_warp = _warps_per_sm(SEG_BWD, D, n_seq * n_seg, u.device) >= SEG_BWD_ONE_WARP_FROM
        seg = SEG_BWD if one_warp else SEG_BWD_SMALL_GRID
        loc_h, loc_g, seg_dt = _segment_summaries(u, dt, A, B, C, dy, G * tiles.BT, n_seg, True, seg)
    BD = _block_d(tiles, D)
    n_d = launch.cdiv(D, BD)
    hc = torch.empty(_slots(n_seq, T_all, tiles.BT), D, N, dtype=torch.float32, device=u.device)
    parts = selective_grad_parts(u, dt, A, n_d, n_seq * n_seg, n_seq, h0 is not None)
    chunk_selective_bwd_vec_kernel[(n_d, n_seq, n_seg)](
        u, dt, A, B, C, h0, dht, hc, loc_h, loc_g, seg_dt, dy, *parts, cu_seqlens, T, D, T_all, G,
        USE_H0=h0 is not None, USE_DHT=dht is not None, IS_VARLEN=cu_seqlens is not None, SEGMENTED=n_seg > 1,
        BT=tiles.BT, BD=BD, N=N, VEC=min(tiles.vec, N), num_warps=tiles.warps,
    )  # fmt: skip
    return selective_grads(parts, A, B, C)

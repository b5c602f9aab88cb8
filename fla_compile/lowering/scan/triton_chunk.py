"""Chunked (parallel over time) Triton kernels of the elementwise scan (hgrn): forward and backward.

The walk (:mod:`.triton_scan`) is latency-bound: one program per sequence and block of channels steps
through T, so few sequences or narrow D leave the GPU idle for T steps. Here time is cut into chunks of
``BT`` steps and every (chunk, block of channels) is its own program, in three passes:

1. ``chunk_sum_kernel``: each program scans its [BT, BD] tile of pairs (a_t, x_t) = (e^{g_t}, x_t) with
   ``tl.associative_scan`` and keeps the last row: the chunk as one affine map h -> A h + B ([NT, D] each);
2. ``chunk_carry_kernel``: one program per block of channels scans those maps over the chunks (blocks of
   ``BC`` chunks, one associative scan each) and writes the state after every chunk over B;
3. ``chunk_out_kernel`` (``chunk_bwd_kernel`` backward): each program folds the state before its chunk into
   its first row (x_0 + a_0 h_in) and scans the tile again, so every h_t is one scan of exact products.

The combine of (a1, b1) then (a2, b2) is (a1 a2, a2 b1 + b2): only products of decays, never a ratio or an
exp of a difference of cumulated gates, so gates down to -inf (a reset, a = 0) stay exact, as in the walk.
Traffic: x, g read twice and o written forward (5 numbers per element against the walk's 3), but every SM
works from the first step.

The backward is the same scan in reverse (rows loaded last step first): dh_t = e^{g_{t+1}} dh_{t+1} + do_t,
then dx_t = dh_t, dg_t = dh_t h_{t-1} e^{g_t} (h_{t-1} read from o), dh0 = e^{g_first} dh_first.

Sequences are rows of one packed time axis [B T] (or the ``cu_seqlens`` axis): chunks are cut on that axis
and may straddle sequences. A sequence's first step has a = 0 (nothing flows in) and x + e^g h0 (its
initial state); its last step stores the final state (forward), takes dht and passes nothing back
(backward). Packed sequences need a sequence id per step (``seq_ids``, from ``searchsorted`` on the device:
no host sync), dense ones compute it as t // T. Pointer arithmetic with masks, offsets in int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import launch
from .triton_scan import bwd_io, fwd_io

# Launch options, read by the launchers at every call (benchmarks/scan_hgrn.py --sweep-chunk times others):
# BT steps per chunk and BD channels per program of passes 1 and 3, BC chunks per associative scan and BDC
# channels per program of the carry pass. Chosen from ptxas's register counts for sm_90 (Triton 3.9), not
# yet from timings: ~8 elements of a tile per thread keeps passes 1 / 3 at 70-115 registers with no spills
# ([128, 64] tiles on 4 warps spill), and the carry pass at ~90.
CONFIG = {"BT": 64, "BD": 32, "num_warps": 8, "BC": 128, "BDC": 16, "carry_warps": 8}


@triton.jit
def _combine(a1, b1, a2, b2):
    """(a1, b1) then (a2, b2) as one affine map: h -> a2 (a1 h + b1) + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _rows(i_c, T, T_all, seq_ids, cu_seqlens, BT: tl.constexpr, IS_VARLEN: tl.constexpr, REVERSE: tl.constexpr):
    """Chunk ``i_c``'s rows (steps from the chunk's start, last first when REVERSE), their mask, sequence
    (int32: N D fits), and first / last flags. Tiles address rows from the chunk's start (int32 offsets
    in registers; the kernels move their base pointers by the chunk's int64 offset)."""
    o_r = tl.arange(0, BT)
    if REVERSE:
        o_r = BT - 1 - o_r
    t = i_c.to(tl.int64) * BT + o_r
    m_t = t < T_all
    if IS_VARLEN:
        i_n = tl.load(seq_ids + t, mask=m_t, other=0)
        bos = tl.load(cu_seqlens + i_n, mask=m_t, other=0).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1, mask=m_t, other=0).to(tl.int64)
    else:
        i_n64 = t // T
        bos = i_n64 * T
        eos = bos + T
        i_n = i_n64.to(tl.int32)
    return o_r, t, m_t, i_n, m_t & (t == bos), m_t & (t == eos - 1)


@triton.jit
def _fwd_pairs(x, g, h0, o_r, m_t, i_n, first, o_d, m_d, D, USE_H0: tl.constexpr):
    """The tile's (a, x) pairs: a = 0 and x + a h0 at a sequence's first step; (1, 0) (no-op) off the end."""
    m = m_t[:, None] & m_d[None, :]
    p = o_r[:, None] * D + o_d[None, :]
    # [BT, BD]
    b_x = tl.load(x + p, mask=m, other=0).to(tl.float32)
    b_a = tl.exp(tl.load(g + p, mask=m, other=0).to(tl.float32))
    if USE_H0:
        b_h0 = tl.load(h0 + i_n[:, None] * D + o_d[None, :], mask=m & first[:, None], other=0).to(tl.float32)
        b_x = tl.where(first[:, None], b_x + b_a * b_h0, b_x)
    b_a = tl.where(first[:, None], 0.0, b_a)
    return b_a, b_x


@triton.jit
def _bwd_pairs(g, do, dht, o_r, t, m_t, i_n, last, o_d, m_d, D, T_all, USE_DHT: tl.constexpr):
    """The reverse scan's pairs (e^{g_{t+1}}, do_t): 0 and do + dht at a sequence's last step; (1, 0) off the end."""
    m = m_t[:, None] & m_d[None, :]
    p = o_r[:, None] * D + o_d[None, :]
    m_next = m & (t + 1 < T_all)[:, None] & (~last)[:, None]
    # [BT, BD]
    b_dh = tl.load(do + p, mask=m, other=0).to(tl.float32)
    b_an = tl.exp(tl.load(g + p + D, mask=m_next, other=0).to(tl.float32))
    if USE_DHT:
        b_dht = tl.load(dht + i_n[:, None] * D + o_d[None, :], mask=m & last[:, None], other=0).to(tl.float32)
        b_dh = tl.where(last[:, None], b_dh + b_dht, b_dh)
    b_an = tl.where(last[:, None], 0.0, b_an)
    return b_an, b_dh


@triton.jit
def _last_row(b, BT: tl.constexpr):
    """Row BT - 1 of a [BT, BD] tile, as [BD]."""
    return tl.sum(tl.where((tl.arange(0, BT) == BT - 1)[:, None], b, 0.0), 0)


@triton.jit
def chunk_sum_kernel(
    x, g, h0, do, dht, A, Bs, seq_ids, cu_seqlens, T, T_all, D,
    BACKWARD: tl.constexpr, USE_H0: tl.constexpr, USE_DHT: tl.constexpr, IS_VARLEN: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    """Pass 1: each chunk as one affine map (A, B) of the state entering it (forward) or, BACKWARD, of the
    gradient entering it from its end (the steps scanned last first)."""
    i_d, i_c = tl.program_id(0), tl.program_id(1)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    o_r, t, m_t, i_n, first, last = _rows(i_c, T, T_all, seq_ids, cu_seqlens, BT, IS_VARLEN, BACKWARD)
    base = i_c.to(tl.int64) * BT * D
    if BACKWARD:
        b_a, b_b = _bwd_pairs(g + base, do + base, dht, o_r, t, m_t, i_n, last, o_d, m_d, D, T_all, USE_DHT)
    else:
        b_a, b_b = _fwd_pairs(x + base, g + base, h0, o_r, m_t, i_n, first, o_d, m_d, D, USE_H0)
    b_a, b_b = tl.associative_scan((b_a, b_b), 0, _combine)
    p = i_c.to(tl.int64) * D + o_d
    tl.store(A + p, _last_row(b_a, BT), mask=m_d)
    tl.store(Bs + p, _last_row(b_b, BT), mask=m_d)


@triton.jit
def chunk_carry_kernel(A, Bs, NT, D, REVERSE: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr):
    """Pass 2: scan the chunks' maps in order (last first when REVERSE), BC chunks per associative scan, and
    write the state after each chunk over its B."""
    i_d = tl.program_id(0)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    o_r = tl.arange(0, BC)
    # [BD]
    b_h = tl.zeros([BD], dtype=tl.float32)
    for j in range(0, tl.cdiv(NT, BC)):
        c = j * BC + o_r
        if REVERSE:
            c = NT - 1 - c
        m_c = (c >= 0) & (c < NT)
        m = m_c[:, None] & m_d[None, :]
        p = c.to(tl.int64)[:, None] * D + o_d[None, :]
        # [BC, BD]
        b_a = tl.load(A + p, mask=m, other=1)
        b_b = tl.load(Bs + p, mask=m, other=0)
        b_b = tl.where((o_r == 0)[:, None], b_b + b_a * b_h[None, :], b_b)
        b_a, b_b = tl.associative_scan((b_a, b_b), 0, _combine)
        tl.store(Bs + p, b_b, mask=m)
        b_h = _last_row(b_b, BC)


@triton.jit
def chunk_out_kernel(
    x, g, h0, o, ht, H, seq_ids, cu_seqlens, T, T_all, D,
    USE_H0: tl.constexpr, IS_VARLEN: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    """Pass 3 (forward): the state after the previous chunk folded into the first row, the tile scanned: o_t,
    and the final state at each sequence's last step."""
    i_d, i_c = tl.program_id(0), tl.program_id(1)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    o_r, t, m_t, i_n, first, last = _rows(i_c, T, T_all, seq_ids, cu_seqlens, BT, IS_VARLEN, False)
    base = i_c.to(tl.int64) * BT * D
    b_a, b_x = _fwd_pairs(x + base, g + base, h0, o_r, m_t, i_n, first, o_d, m_d, D, USE_H0)
    # [BD]: 0 for the first chunk (the scalar test as a [BD] tensor: the interpreter takes no scalar & mask)
    b_in = tl.load(H + (i_c - 1).to(tl.int64) * D + o_d, mask=m_d & (o_d * 0 + i_c > 0), other=0)
    b_x = tl.where((tl.arange(0, BT) == 0)[:, None], b_x + b_a * b_in[None, :], b_x)
    b_a, b_h = tl.associative_scan((b_a, b_x), 0, _combine)
    m = m_t[:, None] & m_d[None, :]
    tl.store(o + base + o_r[:, None] * D + o_d[None, :], b_h.to(o.dtype.element_ty), mask=m)
    tl.store(ht + i_n[:, None] * D + o_d[None, :], b_h, mask=m & last[:, None])


@triton.jit
def chunk_bwd_kernel(
    g, o, h0, do, dht, dx, dg, dh0, G, seq_ids, cu_seqlens, T, T_all, NT, D,
    USE_H0: tl.constexpr, USE_DHT: tl.constexpr, IS_VARLEN: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    """Pass 3 (backward): the gradient from the next chunk folded into the last step, the tile scanned last
    step first: dh_t = dx_t; dg_t = dh_t h_{t-1} e^{g_t}; dh0 = e^{g_t} dh_t at each sequence's first step."""
    i_d, i_c = tl.program_id(0), tl.program_id(1)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    o_r, t, m_t, i_n, first, last = _rows(i_c, T, T_all, seq_ids, cu_seqlens, BT, IS_VARLEN, True)
    base = i_c.to(tl.int64) * BT * D
    g, o, dx, dg = g + base, o + base, dx + base, dg + base
    b_an, b_dh = _bwd_pairs(g, do + base, dht, o_r, t, m_t, i_n, last, o_d, m_d, D, T_all, USE_DHT)
    # [BD]: 0 for the last chunk
    b_in = tl.load(G + (i_c + 1).to(tl.int64) * D + o_d, mask=m_d & (o_d * 0 + i_c + 1 < NT), other=0)
    b_dh = tl.where((tl.arange(0, BT) == 0)[:, None], b_dh + b_an * b_in[None, :], b_dh)
    b_an, b_dh = tl.associative_scan((b_an, b_dh), 0, _combine)
    m = m_t[:, None] & m_d[None, :]
    p = o_r[:, None] * D + o_d[None, :]
    # [BT, BD]
    b_a = tl.exp(tl.load(g + p, mask=m, other=0).to(tl.float32))
    # h_{t-1}: o at t - 1, the initial state (or 0) at a sequence's first step
    b_hp = tl.load(o + p - D, mask=m & (~first)[:, None], other=0).to(tl.float32)
    if USE_H0:
        b_h0 = tl.load(h0 + i_n[:, None] * D + o_d[None, :], mask=m & first[:, None], other=0).to(tl.float32)
        b_hp = tl.where(first[:, None], b_h0, b_hp)
        tl.store(dh0 + i_n[:, None] * D + o_d[None, :], b_a * b_dh, mask=m & first[:, None])
    tl.store(dx + p, b_dh.to(dx.dtype.element_ty), mask=m)
    tl.store(dg + p, (b_dh * b_hp * b_a).to(dg.dtype.element_ty), mask=m)


def _layout(x, cu_seqlens):
    """(T, T_all, N, seq_ids or None): the packed time axis and, for packed sequences, each step's sequence."""
    B, T, D = x.shape
    T_all = B * T
    if cu_seqlens is None:
        return T, T_all, B, None
    steps = torch.arange(T_all, device=x.device, dtype=cu_seqlens.dtype)
    seq_ids = (torch.searchsorted(cu_seqlens, steps, right=True) - 1).to(torch.int32)
    return T, T_all, cu_seqlens.shape[0] - 1, seq_ids


def _carry(A, Bs, NT, D, reverse):
    cfg = CONFIG
    BDC = min(cfg["BDC"], launch.next_pow2(D))
    chunk_carry_kernel[(launch.cdiv(D, BDC),)](
        A, Bs, NT, D, REVERSE=reverse, BC=cfg["BC"], BD=BDC, num_warps=cfg["carry_warps"]
    )  # fmt: skip


def forward(x, g, initial_state=None, cu_seqlens=None):
    """(o [B, T, D] in x's dtype, final state [N, D] fp32)."""
    D = x.shape[-1]
    x, g, h0, o, N = fwd_io(x, g, initial_state, cu_seqlens)
    T, T_all, N, seq_ids = _layout(x, cu_seqlens)
    cfg = CONFIG
    BT, BD = cfg["BT"], min(cfg["BD"], launch.next_pow2(D))
    NT = launch.cdiv(T_all, BT)
    if cu_seqlens is None:  # every sequence has a last step that writes its state
        ht = torch.empty(N, D, dtype=torch.float32, device=x.device)
    else:  # an empty sequence passes its initial state (or 0) through
        ht = h0.float().clone() if h0 is not None else torch.zeros(N, D, dtype=torch.float32, device=x.device)
    A = torch.empty(NT, D, dtype=torch.float32, device=x.device)
    Bs = torch.empty(NT, D, dtype=torch.float32, device=x.device)
    grid = (launch.cdiv(D, BD), NT)
    flags = dict(USE_H0=h0 is not None, IS_VARLEN=cu_seqlens is not None, BT=BT, BD=BD, num_warps=cfg["num_warps"])
    chunk_sum_kernel[grid](
        x, g, h0, None, None, A, Bs, seq_ids, cu_seqlens, T, T_all, D, BACKWARD=False, USE_DHT=False, **flags
    )  # fmt: skip
    _carry(A, Bs, NT, D, reverse=False)
    chunk_out_kernel[grid](x, g, h0, o, ht, Bs, seq_ids, cu_seqlens, T, T_all, D, **flags)
    return o, ht


def backward(x, g, initial_state, cu_seqlens, o, do, dht):
    """(dx in x's dtype, dg in g's dtype, dh0 fp32 or None), from the forward's output ``o``."""
    D = x.shape[-1]
    g, o, do, h0, dht, dx, dg, N = bwd_io(x, g, initial_state, o, do, dht, cu_seqlens)
    T, T_all, N, seq_ids = _layout(x, cu_seqlens)
    cfg = CONFIG
    BT, BD = cfg["BT"], min(cfg["BD"], launch.next_pow2(D))
    NT = launch.cdiv(T_all, BT)
    dh0 = None
    if h0 is not None:
        if cu_seqlens is None:
            dh0 = torch.empty(N, D, dtype=torch.float32, device=x.device)
        else:  # an empty sequence passes dht (or 0) back to its initial state
            dh0 = dht.float().clone() if dht is not None else torch.zeros(N, D, dtype=torch.float32, device=x.device)
    A = torch.empty(NT, D, dtype=torch.float32, device=x.device)
    Gs = torch.empty(NT, D, dtype=torch.float32, device=x.device)
    grid = (launch.cdiv(D, BD), NT)
    flags = dict(USE_DHT=dht is not None, IS_VARLEN=cu_seqlens is not None, BT=BT, BD=BD, num_warps=cfg["num_warps"])
    chunk_sum_kernel[grid](
        None, g, None, do, dht, A, Gs, seq_ids, cu_seqlens, T, T_all, D, BACKWARD=True, USE_H0=False, **flags
    )  # fmt: skip
    _carry(A, Gs, NT, D, reverse=True)
    chunk_bwd_kernel[grid](
        g, o, h0, do, dht, dx, dg, dh0, Gs, seq_ids, cu_seqlens, T, T_all, NT, D, USE_H0=h0 is not None, **flags
    )  # fmt: skip
    return dx, dg, dh0

"""One-pass tiled scan ("tile walk") of hgrn, h_t = e^{g_t} h_{t-1} + x_t over [B, T, D]: forward and backward.

The walk (:mod:`.triton_scan`) moves 3 numbers per element but waits one load latency per step; the chunked
scan (:mod:`.triton_chunk`) keeps every SM busy from the first step but moves 5 (x, g read twice). Here one
program per (sequence, block of ``BD`` channels) walks the sequence ``BT`` rows at a time: it loads whole
[BT, BD] tiles of g and x (wide loads, pipelined over iterations by ``num_stages``: memory-level parallelism
instead of one row's latency per step; the loop asks for them with ``tl.range(num_stages=...)``, as Triton
pipelines a loop without a dot only then), scans the tile with ``tl.associative_scan`` after folding the carried
state into its first row (x_0 + a_0 h_carry, as the chunked scan's output pass does), stores o and carries the
last row in registers. Forward traffic: 3 numbers per element. It needs enough programs (sequences x channel
blocks) to fill the GPU; :func:`.dispatch.pick` keeps the chunked scan below that.

The combine of (a1, b1) then (a2, b2) is (a1 a2, a2 b1 + b2), the chunked scan's: only products of decays, so
gates of -inf (a reset, a = 0) stay exact. Rows past a sequence's end load as (a, x) = (1, 0), the identity,
so the tile's last row is the state after the sequence's last step: the final state is the carry.

The backward walks the tiles last first, rows in reverse (row 0 of the scan is the tile's last step):
dh_t = e^{g_{t+1}} dh_{t+1} + do_t (g read one row ahead), dx_t = dh_t, dg_t = r_t h_{t-1} with
r_t = e^{g_t} dh_t (h_{t-1} read from o one row behind, h0 at the sequence's first step). The carry is r at
the tile's first step, added to the next tile's last row as it is (r_{t+1} = e^{g_{t+1}} dh_{t+1}); it starts
as dht and ends as dh0 = r_bos. Reads do, g, o (the shifted reads of g and o mostly hit tiles already in L2),
writes dx, dg: 5 numbers per element.

Sequences are [bos, eos) from ``cu_seqlens`` (packed) or [n T, (n + 1) T); tiles start at bos. An empty sequence
passes h0 (or 0) to its final state and dht (or 0) to dh0. Pointer arithmetic with masks, row offsets in int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import launch
from .triton_chunk import _combine, _last_row
from .triton_scan import _span, bwd_io, fwd_io

# Launch options, read by the launchers at every call (benchmarks/scan_hgrn.py --sweep-tile times others):
# BT rows per tile, BD channels per program, warps, and stages of the software pipeline over tiles (lowered by
# _launch where the stage buffers overflow shared memory). H200 sweep, bf16, kernels alone, fwd / fwd+bwd ms
# (2026-11-30): [128, 16] tiles on 4 warps, 3 stages: 0.130 / 0.301 at (8, 2048, 2048), 0.297 / 0.669 at
# (1, 16384, 4096); the first choice ([64, 32], 4 warps forward, 8 backward) 0.118 / 0.307 and 0.442 / 0.956
# (at 128 programs the narrow blocks double the programs: ~2 per SM). ptxas sm_90: [64, 32] tiles (the same
# 2048 elements a program) at 4 warps 72-78 registers forward, backward 140 bf16 / 168 fp32 with a small fp32
# spill (benchmarks/scan_tile_regs.py).
CONFIG = {"BT": 128, "BD": 16, "num_warps": 4, "num_stages": 3}
BWD_CONFIG = {"BT": 128, "BD": 16, "num_warps": 4, "num_stages": 3}


@triton.jit
def tile_fwd_kernel(
    x, g, h0, o, ht, cu_seqlens, T, D,
    USE_H0: tl.constexpr, IS_VARLEN: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, NUM_STAGES: tl.constexpr,
):  # fmt: skip
    """One sequence's block of channels, BT rows at a time: fold the carry into row 0, scan, store o, carry
    the last row; the final state after the last tile."""
    i_d, i_n = tl.program_id(0), tl.program_id(1)
    bos, eos = _span(cu_seqlens, i_n, T, IS_VARLEN)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    o_r = tl.arange(0, BT)
    # [BT, BD]: offsets from the tile's first row (int32; the tile's int64 row offset goes on the pointers)
    p_t = o_r[:, None] * D + o_d[None, :]
    first = (o_r == 0)[:, None]
    o_n = i_n.to(tl.int64) * D + o_d
    # [BD]
    b_h = tl.zeros([BD], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + o_n, mask=m_d, other=0).to(tl.float32)
    for t0 in tl.range(bos, eos, BT, num_stages=NUM_STAGES):
        m = (o_r < eos - t0)[:, None] & m_d[None, :]
        base = t0 * D
        # [BT, BD]
        b_x = tl.load(x + base + p_t, mask=m, other=0).to(tl.float32)
        b_a = tl.exp(tl.load(g + base + p_t, mask=m, other=0).to(tl.float32))
        b_x = tl.where(first, b_x + b_a * b_h[None, :], b_x)
        b_a, b_x = tl.associative_scan((b_a, b_x), 0, _combine)
        tl.store(o + base + p_t, b_x.to(o.dtype.element_ty), mask=m)
        b_h = _last_row(b_x, BT)
    tl.store(ht + o_n, b_h, mask=m_d)


@triton.jit
def tile_bwd_kernel(
    g, o, h0, do, dht, dx, dg, dh0, cu_seqlens, T, D,
    USE_H0: tl.constexpr, USE_DHT: tl.constexpr, IS_VARLEN: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, NUM_STAGES: tl.constexpr,
):  # fmt: skip
    """The reverse walk: tiles last first, each scanned last step first with the carry r = e^{g} dh of the step
    after it added to its last step; dx = dh, dg = r h_{t-1}; dh0 = the carry after the first tile."""
    i_d, i_n = tl.program_id(0), tl.program_id(1)
    bos, eos = _span(cu_seqlens, i_n, T, IS_VARLEN)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    o_s = tl.arange(0, BT)
    # rows from the tile's first step, last first: scan row j is step t0 + BT - 1 - j
    o_r = BT - 1 - o_s
    # [BT, BD]
    p_t = o_r[:, None] * D + o_d[None, :]
    last = (o_s == 0)[:, None]
    o_n = i_n.to(tl.int64) * D + o_d
    # [BD]
    b_c = tl.zeros([BD], dtype=tl.float32)
    if USE_DHT:
        b_c += tl.load(dht + o_n, mask=m_d, other=0).to(tl.float32)
    b_h0 = tl.zeros([BD], dtype=tl.float32)
    if USE_H0:
        b_h0 += tl.load(h0 + o_n, mask=m_d, other=0).to(tl.float32)
    n_tiles = tl.cdiv(eos - bos, BT)
    for i in tl.range(0, n_tiles, num_stages=NUM_STAGES):
        t0 = bos + (n_tiles - 1 - i) * BT
        n_valid = eos - t0  # rows of this tile inside the sequence (BT or fewer for the last tile)
        m_t = o_r < n_valid
        m = m_t[:, None] & m_d[None, :]
        base = t0 * D
        # [BT, BD]
        b_dh = tl.load(do + base + p_t, mask=m, other=0).to(tl.float32)
        # e^{g_{t+1}} within the tile (row 0's step takes the carry instead; past the end: 1)
        m_next = m & (o_r + 1 < n_valid)[:, None] & (o_s > 0)[:, None]
        b_an = tl.exp(tl.load(g + base + D + p_t, mask=m_next, other=0).to(tl.float32))
        b_a = tl.exp(tl.load(g + base + p_t, mask=m, other=0).to(tl.float32))
        # h_{t-1}: o one row behind, the initial state (or 0) at the sequence's first step
        at_bos = (o_r == bos - t0)[:, None]
        b_hp = tl.load(o + base - D + p_t, mask=m & (~at_bos), other=0).to(tl.float32)
        if USE_H0:
            b_hp = tl.where(at_bos, b_h0[None, :], b_hp)
        b_dh = tl.where(last, b_dh + b_c[None, :], b_dh)
        b_an, b_dh = tl.associative_scan((b_an, b_dh), 0, _combine)
        b_r = b_a * b_dh
        tl.store(dx + base + p_t, b_dh.to(dx.dtype.element_ty), mask=m)
        tl.store(dg + base + p_t, (b_r * b_hp).to(dg.dtype.element_ty), mask=m)
        b_c = _last_row(b_r, BT)
    if USE_H0:
        tl.store(dh0 + o_n, b_c, mask=m_d)


def _launch(kernel, grid, *args, stages: int, **kwargs):
    """``kernel[grid](*args, ...)`` with ``stages`` pipeline stages, lowered (down to 1) while Triton finds the stage
    buffers over the device's shared memory (fp32 tiles take twice bf16's bytes). As ``launch.fitted``, but the
    loop's own ``tl.range(num_stages=...)`` (NUM_STAGES) drops with the kernel's: Triton pipelines the loads of a
    loop without a dot only where the loop asks for stages."""
    while True:
        try:
            return kernel[grid](*args, NUM_STAGES=stages, num_stages=stages, **kwargs)
        except launch.out_of_resources() as e:  # refused before anything ran: retrying is safe; no import per call
            if e.name != "shared memory" or stages <= 1:
                raise
            stages -= 1


def _block(cfg, D):
    return cfg["BT"], min(cfg["BD"], launch.pow2(D, lo=1))


def programs(x: torch.Tensor, cu_seqlens=None) -> int:
    """The forward's programs: sequences x channel blocks (the dispatch weighs them against the SMs)."""
    B, T, D = x.shape
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return N * launch.cdiv(D, _block(CONFIG, D)[1])


def forward(x, g, initial_state=None, cu_seqlens=None):
    """(o [B, T, D] in x's dtype, final state [N, D] fp32)."""
    B, T, D = x.shape
    x, g, h0, o, N = fwd_io(x, g, initial_state, cu_seqlens)
    cfg = CONFIG
    BT, BD = _block(cfg, D)
    ht = torch.empty(N, D, dtype=torch.float32, device=x.device)
    _launch(
        tile_fwd_kernel, (launch.cdiv(D, BD), N), x, g, h0, o, ht, cu_seqlens, T, D,
        USE_H0=h0 is not None, IS_VARLEN=cu_seqlens is not None, BT=BT, BD=BD,
        stages=cfg["num_stages"], num_warps=cfg["num_warps"],
    )  # fmt: skip
    return o, ht


def backward(x, g, initial_state, cu_seqlens, o, do, dht):
    """(dx in x's dtype, dg in g's dtype, dh0 fp32 or None), from the forward's output ``o``."""
    B, T, D = x.shape
    g, o, do, h0, dht, dx, dg, N = bwd_io(x, g, initial_state, o, do, dht, cu_seqlens)
    cfg = BWD_CONFIG
    BT, BD = _block(cfg, D)
    dh0 = torch.empty(N, D, dtype=torch.float32, device=x.device) if h0 is not None else None
    _launch(
        tile_bwd_kernel, (launch.cdiv(D, BD), N), g, o, h0, do, dht, dx, dg, dh0, cu_seqlens, T, D,
        USE_H0=h0 is not None, USE_DHT=dht is not None, IS_VARLEN=cu_seqlens is not None, BT=BT, BD=BD,
        stages=cfg["num_stages"], num_warps=cfg["num_warps"],
    )  # fmt: skip
    return dx, dg, dh0

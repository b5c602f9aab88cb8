"""How the Triton kernels cut sequences into chunks: one table on the host, read the same way in
every kernel.

A launch has NS programs along its first grid axis, one per chunk slot. ``chunk_meta`` builds the
table ``info`` [NS, 4] = (sequence n, chunk c of it, the sequence's bounds bos, eos in tokens), with n = -1
on padding slots (packed sequences need a bound known from shapes alone), and ``chunk_span`` is its reading
inside a kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch

_META_CACHE: dict = {}


def _cached(key, make):
    """Small device tensors of dense metadata, made once per shape; cached only when made on the device's
    default stream outside a capture. A CUDA graph's capture and Inductor's cudagraph trees' warmup both run
    on a side stream and allocate from the graph's private pool: a tensor made then is only filled at replay,
    or lives in memory the next replay overwrites (and the trees refuse a pool tensor they do not track)."""
    value = _META_CACHE.get(key)
    if value is None:
        value = make()
        if len(_META_CACHE) < 256 and _may_cache(value.device):
            _META_CACHE[key] = value
    return value


def _may_cache(device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    if torch.cuda.is_current_stream_capturing():
        return False
    return torch.cuda.current_stream(device) == torch.cuda.default_stream(device)


def dense_cu(B: int, T: int, device) -> torch.Tensor:
    """[0, T, 2T, ..., B T] int32: the bounds of B sequences of T tokens laid end to end."""
    return _cached(("cu", B, T, device), lambda: torch.arange(0, B + 1, device=device, dtype=torch.int32) * T)


def segment_meta(B: int, T: int, S: int, L: int, BT: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(cu, chunk_off) int32 [B S + 1] of B dense sequences of T tokens, each cut into S segments of L chunks of BT
    (the last one shorter), as sequences of a state pass: segment s of sequence b is sequence b S + s, and its chunk
    c sits in slot b NT + s L + c, the dense slot of that chunk."""
    NT = launch.cdiv(T, BT)

    def make():
        n = torch.arange(B * S + 1, device=device, dtype=torch.int32)
        b, s = n // S, n % S
        cu = b * T + torch.clamp(s * (L * BT), max=T)
        return torch.stack([cu, b * NT + torch.clamp(s * L, max=NT)]).contiguous()

    meta = _cached(("segments", B, T, S, L, BT, device), make)
    return meta[0], meta[1]


def _dense_info(B: int, T: int, NT: int, device) -> torch.Tensor:
    def make():
        idx = torch.arange(B * NT, device=device, dtype=torch.int32)
        n = idx // NT
        return torch.stack([n, idx % NT, n * T, n * T + T], 1).contiguous()

    return _cached(("info", B, T, NT, device), make)


def chunk_meta(B: int, T: int, cu_seqlens: torch.Tensor | None, BT: int, device):
    """(cu int32 [N+1], info int32 [NS, 4] = (sequence or -1, chunk, bos, eos), chunk_off int32 [N+1], NS, N).

    Slot ``chunk_off[n] + c`` holds chunk c of sequence n, whose tokens are [bos, eos) (a padding slot: the first
    sequence's). NS is a bound known from shapes alone:
    B * ceil(T / BT) dense; T // BT + N packed (the chunk count, a sum of ceil(len_n / BT), is an
    integer below T / BT + N).
    """
    if cu_seqlens is None:
        NT = launch.cdiv(T, BT)
        return dense_cu(B, T, device), _dense_info(B, T, NT, device), dense_cu(B, NT, device), B * NT, B
    if cu_seqlens.device.type == "cpu":  # free to check here (on a GPU it would cost a sync; the ops check it)
        bounds = cu_seqlens.tolist()
        if bounds[0] != 0 or bounds[-1] > B * T or any(a > b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(
                f"cu_seqlens: expected non-decreasing offsets from 0 to at most B*T = {B * T} tokens, got {bounds}"
            )
    cu = cu_seqlens.to(device=device, dtype=torch.int32).contiguous()
    N = cu.shape[0] - 1
    nchunks = (cu[1:] - cu[:-1] + BT - 1) // BT
    chunk_off = torch.cat([cu.new_zeros(1), nchunks.cumsum(0).to(torch.int32)])
    NS = T // BT + N
    idx = torch.arange(NS, device=device, dtype=torch.int32)
    n = torch.searchsorted(chunk_off[1:].contiguous(), idx, right=True).to(torch.int32)
    valid = n < N
    r = torch.where(valid, n, 0)  # a padding slot reads the first sequence's row (its chunk index is never read)
    info = torch.stack([torch.where(valid, n, -1), idx - chunk_off[r], cu[r], cu[r + 1]], 1)  # r < N: r + 1 <= N
    info = info.to(torch.int32)
    return cu, info.contiguous(), chunk_off, NS, N


@triton.jit
def chunk_span(info, i_p):
    """Slot i_p of ``info``: (sequence n, chunk c, bos, eos) with [bos, eos) the sequence's tokens
    as int64. n < 0 marks a padding slot: the caller returns (its bounds are the first sequence's).
    The bounds sit in the slot's row, so no load waits on another (read from ``cu`` by n, they took a second
    round trip before any tile could be addressed)."""
    i_n = tl.load(info + i_p * 4)
    i_c = tl.load(info + i_p * 4 + 1)
    bos = tl.load(info + i_p * 4 + 2).to(tl.int64)
    eos = tl.load(info + i_p * 4 + 3).to(tl.int64)
    return i_n, i_c, bos, eos


@triton.jit
def sequence_span(cu, i_n, BT: tl.constexpr):
    """Sequence i_n's tokens [bos, eos) (int64, from ``cu``) and its number of chunks of BT: what a state pass,
    which walks one sequence's chunks in turn, reads first."""
    bos, eos = tl.load(cu + i_n).to(tl.int64), tl.load(cu + i_n + 1).to(tl.int64)
    return bos, eos, tl.cdiv(eos - bos, BT)


@triton.jit
def state_chunk_rows(t0, eos, o_i, BT: tl.constexpr, FULL: tl.constexpr):
    """A state pass's chunk from step ``t0``: its number of rows (int32) and their mask over ``o_i`` (0 .. BT - 1).
    ``FULL``: every chunk has BT rows (no packed sequences, T a multiple of BT), so the mask is a constant and the
    masked loads, the gates' ``where``s and the predicates they keep live fold away (offline, sm_90: simple_gla's
    forward state pass at K = V = 128 takes a loop of 329 instructions against 399)."""
    if FULL:
        n_t = (t0 * 0 + BT).to(tl.int32)
        m_t = tl.full([BT], 1, tl.int1)
    else:
        n_t = tl.minimum(eos - t0, BT).to(tl.int32)
        m_t = o_i < n_t
    return n_t, m_t


@triton.jit
def state_offsets(i_k, i_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """A state pass's [BK, BV] block (i_k, i_v) of a [K, V] state: (key and value indices, their masks, the block's
    mask and offsets within one state)."""
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    return o_k, o_v, m_k, m_v, m_k[:, None] & m_v[None, :], o_k[:, None] * V + o_v[None, :]


@triton.jit
def state_start(
    h0, i_nh, o_h, m_h, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, USE: tl.constexpr
):
    """A state pass's carried [BK, BV] block, fp32: zeros, plus (``USE``) its block ``o_h`` / ``m_h`` of the given
    start ``h0`` [N H, K, V] at sequence x head ``i_nh`` (the initial state forwards, the final state's gradient
    backwards)."""
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE:
        b_h += tl.load(h0 + i_nh * K * V + o_h, mask=m_h, other=0)
    return b_h


@triton.jit
def state_pass_tiles(x, y, t0, o_i, m_t, o_k, m_k, o_v, m_v, i_hk, i_h, H: tl.constexpr, G: tl.constexpr,
                     K: tl.constexpr, V: tl.constexpr):  # fmt: skip
    """A state pass's operands of the chunk from step ``t0``: x [TT, H / G, K] transposed to [BK, BT] (keys, or
    queries backwards) and y [TT, H, V] as [BT, BV] (values, or the output's gradient); base pointers at the chunk's
    first row, int32 tile offsets (``o_i`` its local steps)."""
    b_xt = tl.load(x + (t0 * (H // G) + i_hk) * K + (o_i * ((H // G) * K))[None, :] + o_k[:, None],
                   mask=m_k[:, None] & m_t[None, :], other=0)  # fmt: skip
    b_y = tl.load(y + (t0 * H + i_h) * V + (o_i * (H * V))[:, None] + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                  other=0)  # fmt: skip
    return b_xt, b_y


# The sequential state passes (the GLA line's forward h and backward dh, the delta line's h) run unmasked where every
# chunk has BT rows (``full_chunks``; in the kernels ``state_chunk_rows``). False: always masked, for A/B. Offline
# (sm_90) the loops: simple_gla's h pass 399 -> 329 SASS instructions on Triton 3.9 (391 -> 320 on 3.6; FLA's 328),
# gated_delta_rule's 659 -> 575. H200, kernel time, bitwise the same (RESULTS, twenty-first session), at (2, 8192,
# 16, 128): simple_gla fwd 0.222 -> 0.218 ms (FLA 0.217), retention fwd+bwd 0.766 -> 0.751, gated_delta_rule fwd
# 0.442 -> 0.426; gla (a gate per key dim) 2.249 -> 2.292, so its passes keep the masks; the output kernel unmasked
# lost (retention 0.196 -> 0.204, linear_attn 0.183 -> 0.191)
FULL_CHUNKS = True


def full_chunks(T: int, cu_seqlens, BT: int) -> bool:
    """Whether every chunk has BT rows, so a state pass may run unmasked: no packed sequences, T a multiple of BT
    (and :data:`FULL_CHUNKS` on)."""
    return FULL_CHUNKS and cu_seqlens is None and T % BT == 0


# the parallel output, dv and dq/dk kernels' launch order (``chunk_grid`` / ``chunk_block``) is each kernel line's
# table's ("heads_inner": a 1-D grid with a chunk's heads side by side; else the 3-D grid (NS, NV, H) that runs a
# head's chunks together). HEADS_INNER True / False forces one order everywhere (A/Bs, tests); None: the tables
HEADS_INNER: bool | None = None


def chunk_grid(NS: int, NV: int, H: int, heads_inner: bool = False) -> tuple:
    """(grid, kernel keyword arguments) of a parallel chunk kernel whose programs ``chunk_block`` reads, in the order
    the caller's table gives (``heads_inner``; :data:`HEADS_INNER` overrides it), the same in both so they cannot
    disagree."""
    if heads_inner if HEADS_INNER is None else HEADS_INNER:
        return (NS * NV * H,), {"HEADS_INNER": True}
    return (NS, NV, H), {}


@triton.jit
def chunk_block(NV, H, HEADS_INNER: tl.constexpr):
    """(chunk slot, V (or K) block, head) of a parallel chunk kernel's program. HEADS_INNER: a 1-D grid of NS NV H,
    the block fastest, then head, then chunk, so the programs running together read one chunk's rows of every head,
    which lie side by side in [B, T, H, D] memory (FLA's output kernel runs a (batch, head)'s chunks together and
    then the next head's); else the 3-D grid (NS, NV, H), whose programs running together read one head's rows,
    H D apart, and leave the rest of those DRAM pages to later waves."""
    if HEADS_INNER:
        pid = tl.program_id(0)
        i_s, i_v, i_h = pid // (NV * H), pid % NV, (pid // NV) % H
    else:
        i_s, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    return i_s, i_v, i_h


@triton.jit
def state_block(NK, NV):
    """(sequence x head, K block, V block) of a sequential state pass's program in a 1-D grid of N H NK NV: a
    head's blocks side by side in launch order, so the blocks that read the same keys, values and queries chunk
    by chunk share them through L2 (a grid with heads first ran them a wave apart and read them again)."""
    pid = tl.program_id(0)
    return pid // (NV * NK), (pid // NV) % NK, pid % NV

"""Launchers of the GLA-line Triton kernels: chunked forward and backward, fused recurrent decoding.

Inputs follow the ops: q, k [B, T, HK, K], v [B, T, H, V], gate None / [B, T, H] / [B, T, H, K]
in log space, initial state [N, H, K, V], ``cu_seqlens`` [N + 1] (B == 1). A dense batch is run
as B sequences of length T, so one code path covers both; the chunk metadata of packed
sequences is built with torch ops on the device (no ``.item()``, no host sync).

Block sizes come from :mod:`fla_compile.lowering.common.autotune` (per-arch tables, screened and
persisted winners); pass ``config`` to force one.
"""

from __future__ import annotations

import os

import torch

from ..common import launch
from ..common.chunks import chunk_grid, chunk_meta, dense_cu, full_chunks, segment_meta
from ..common.gates import (
    GATE_HEAD_DECAY_ID,
    GATE_IDS,
    GATE_NONE_ID,
    GATE_SCALAR_ID,
    GATE_SCANNED_ID,
    GATE_VECTOR_ID,
    SCALAR_GATE_IDS,
    scalar_dg_per_step,
)
from . import triton_intra as intra
from . import triton_kernels as kern

DECODE_MAX_T = 64
# the largest K and V the kernels take (larger: the torch path). They tile both, and the decode kernel holds the whole
# K. 512 covers the published GLA and RetNet configs (K 256, V 512) and Based's Taylor map (K 273). H200, bf16, fp32
# against fp64 (thirty-second session: every family, K x V of 256 x 512, 512 x 256, 512 x 512, 272 x 64, T of 300,
# 1, 5, passed), and by do_bench, ms fwd / fwd+bwd, these kernels against the torch path that took them before and
# FLA 0.6.0: gla (8, 2048, 4, K 256, V 512) 0.706 / 1.908, torch path 8.678 / 36.831, FLA 0.631 / 2.644; retention
# (8, 2048, 8, 256, 512) 0.524 / 2.004, 4.689 / 22.300, FLA 0.708 / 3.421
MAX_HEAD_DIM = 512
# fp32 inputs past 256 would run exact "ieee" dots (``launch.FP32_SPLIT_DIMS``), which spill at large heads and were
# not timed against the torch path (cuBLAS) that takes them: they stay there, as before
MAX_HEAD_DIM_FP32 = 256
BC = 16  # sub-chunk of the vector gate's intra-chunk kernels
POISON = False  # tests set it: every buffer starts as NaN, to prove each element is written
# fp32 at torch's "highest" by three tf32 products (``launch.FP32_HIGHEST``), at the head dims it is kept to
# (``launch.FP32_SPLIT_DIMS``). On since the H200 ran this line's state passes that way at full V blocks against fp64
# (test_gla_triton_gpu.py's test_fp32_three_tf32_wide_grid, 2026-12-01; the delta line's state-gradient pass had
# faulted at one V block and not at others). False: exact "ieee" dots.
FP32_SPLIT = True
# one decay per head (retention): the chunk kernels form its in-chunk cumsum from the step (gate id 3) instead of
# reading a [B, T, H] copy of it and its cumsum from two more kernels (False: the scalar-gate path, gate id 1). On the
# H200 at (8, 2048, 32, 64) bf16 (2026-12-01; `benchmarks/ab_switch.py fla_compile.lowering.gla.triton_launch.HEAD_DECAY
# --families retention --fla` repeats it): forward kernels 0.190 -> 0.168 ms,
# forward+backward 0.711 -> 0.641 (FLA's chunk_retention 0.145 / 0.568); test_head_decay passed there
HEAD_DECAY = True
# a gate per key dim: the intra-chunk backward kernel, the last to add to dq and dk, writes them in the inputs' dtype
# (False: fp32, cast after by a pass over each). H200, gla fwd+bwd kernels, bitwise the same: 2.158 -> 2.038 ms at
# B=8 T=2048 H=16 D=128, 2.409 -> 2.284 at B=2 T=8192 (`benchmarks/ab_switch.py
# fla_compile.lowering.gla.triton_launch.FINAL_DQK_VECTOR --families gla --fp64`; RESULTS, sixteenth session)
FINAL_DQK_VECTOR = True
# a scalar gate (simple_gla) goes to the chunk kernels as given, gate id 4: each kernel scans its chunk's log decays
# (else a cumsum kernel writes them first, gate id 1). The same results within fp32 rounding (the scans group the
# sums differently). None: the tables decide per pass (``fwd_scan`` / ``bwd_scan``); True / False: every pass. H200
# (`benchmarks/ab_switch.py fla_compile.lowering.gla.triton_launch.SCALAR_SCAN_IN_KERNELS --values False,True
# --families simple_gla --fp64`, seventeenth session), fwd / fwd+bwd kernels: 0.176 -> 0.159 / 0.660 -> 0.668 ms at
# (8, 2048, 32, 64), 0.228 -> 0.240 / 0.890 -> 0.937 at (2, 8192, 16, 128): sm90 scans in the forward at K = V = 64
SCALAR_SCAN_IN_KERNELS: bool | None = None
# the forward in one pass (``chunk_fwd_walk_kernel``: each program walks a sequence's chunks with the state in
# registers, no chunk states through memory, no separate output kernel; a gate per key dim forms A first), K <= 128.
# None: where the table says ``fwd_walk`` and the walk's grid fills its waves to the table's ``walk_fill``
# (:func:`_walk`); True / False: always / never. H200 (`benchmarks/sweep_walk.py`, eighteenth session), forward
# kernels, two-pass -> walk on V blocks of 64, 4 warps (256 programs): at (8, 2048, 16, 128) linear_attn 0.184 ->
# 0.100 ms, simple_gla 0.201 -> 0.155, retention 0.190 -> 0.136; at (8, 2048, 32, 64) 0.137 -> 0.071, 0.159 ->
# 0.098, 0.143 -> 0.087. A grid that leaves SMs idle loses: at (2, 8192, 16, 128) (V blocks of 32, 128 programs)
# simple_gla 0.229 -> 0.403. gla (a gate per key dim, its A kernel before either form) loses at every shape and
# option (nineteenth session, forward kernels, best walk of V blocks 32/64, 4/8 warps, 1/2 stages): 0.527 -> 0.611
# at (8, 2048, 16, 128), 0.601 -> 1.018 at (2, 8192, 16, 128), 0.536 -> 0.547 at (8, 2048, 32, 64), so no table asks
# for it there
FWD_WALK: bool | None = None
# few long sequences: the forward's two-pass state pass (dense inputs) walks each sequence as S segments side by
# side, each from a zero state, and the output kernel adds the state entering the segment
# (``segment_combine_kernel``): N H sequences x heads walk their chunks in turn, and where they leave SMs idle the
# pass is a latency chain. None: where the table gives ``h_seg_heads`` (S: the smallest power of two with N H S at
# least that; segments of at least ``h_seg_chunks`` chunks, :data:`SEG_CHUNKS`); True: always, at :data:`SEG_HEADS`,
# the table's ``h_seg_chunks`` capped at SEG_CHUNKS (tests force segments on short sequences); False: never.
# H200, the state pass alone (thirtieth session), one segment -> the best S: (2, 8192, 16, 128) 0.181 -> 0.111 ms
# (S 4), (1, 8192, 16, 128) 0.149 -> 0.062 (8), (1, 32768, 16, 128) 0.567 -> 0.210 (8), (2, 8192, 16, 64) 0.125 ->
# 0.069 (4); (8, 2048, 16, 128) 0.110 -> 0.115 (2): each best at 128 sequences x heads
SEGMENTS: bool | None = None
SEG_HEADS = 128
# the fewest chunks a segment takes where the table gives no ``h_seg_chunks``, and the most it asks for when
# SEGMENTS is True
SEG_CHUNKS = 8
# programs of the walk one SM runs at once (4 warps, V blocks of 64: up to 255 registers a thread, two programs in an
# SM's 64K registers): simple_gla's walk at K = V = 128 takes 0.124-0.127 ms for 96-128 programs, 0.152-0.157 for
# 160-256, 0.272 for 288 (a second wave), H200
WALK_PER_SM = 2
# a gate per key dim: the output kernel forms a chunk's A itself, in one dot with the chunk's first row as every
# pair's reference, wherever the chunk's gate spread allows it (|b_i - b_0| within ``gating.SPAN`` in every key dim:
# every chunk of a GLA layer's usual gates), and the A kernel forms only the others (False: the A kernel forms every
# chunk's A and the output kernel reads it back). H200, gla forward kernels (twenty-sixth session, with the output
# kernel's 2-stage options): 0.519 -> 0.400 ms at (8, 2048, 16, 128), 0.589 -> 0.467 at (2, 8192, 16, 128), 0.524 ->
# 0.335 at (8, 2048, 32, 64)
FACTORED_A = True
# the same for the backward's intra-chunk kernel (dq, dk from dA): a chunk whose gate spread allows it takes all its
# rows in one program by two dots with the chunk's first row as reference, the others its sub-chunks' programs. None:
# the table's ``intra_factored`` (sm90: K = V = 128, where gla's fwd+bwd kernels went 1.909 -> 1.870 ms at (8, 2048,
# 16, 128) and 2.139 -> 2.098 at (2, 8192, 16, 128); at K = V = 64 1.733 -> 1.763, off: the kernel holding both forms
# takes 255 registers and spills); True / False: always / never
FACTORED_BWD: bool | None = None
# FACTORED_A for rwkv6's forward too (the bonus on the diagonal, the exclusive cumsum's first row, 0, as reference);
# its backward keeps the sub-chunk form. H200 (`benchmarks/ab_switch.py ...FACTORED_A_BONUS --families rwkv6`,
# twenty-seventh session), fwd / fwd+bwd kernels: 0.620 -> 0.453 / 2.536 -> 2.368 ms at (8, 2048, 16, 128), 0.688 ->
# 0.522 / 2.786 -> 2.620 at (2, 8192, 16, 128), 0.605 -> 0.398 / 2.489 -> 2.285 at (8, 2048, 32, 64)
FACTORED_A_BONUS = True
# the sequential state passes' blocks shrunk while their grid is under one wave (``_state_tile``): on the H200 at
# B=1 H=16 (32 programs of 132 SMs with the tuned blocks) retention's forward+backward 2.12 -> 1.58 ms at T=16384,
# gla's 3.59 -> 3.24 (benchmarks/RESULTS.md, 2026-11-30); FLA_COMPILE_GLA_FILL_SMS=0 turns it off
FILL_SMS = os.environ.get("FLA_COMPILE_GLA_FILL_SMS", "1") != "0"


def _empty(shape, device, dtype):
    x = torch.empty(shape, device=device, dtype=dtype)
    return x.fill_(float("nan")) if POISON else x


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the kernels take these inputs (dtype and head dims); otherwise use the torch path."""
    return launch.supported(MAX_HEAD_DIM, q, k, v, max_fp32_head_dim=MAX_HEAD_DIM_FP32)


def _dense(x, dtype=None):
    """``x`` in ``dtype`` (default its own), contiguous: itself when it already is (no dispatcher calls)."""
    if (dtype is None or x.dtype == dtype) and x.is_contiguous():
        return x
    return x.to(dtype or x.dtype).contiguous()


def _per_head(gate) -> bool:
    """A [B, T, H] gate that holds one value per head: broadcast over batch and steps (stride 0, or size 1)."""
    return gate.dim() == 3 and all(n == 1 or st == 0 for n, st in zip(gate.shape[:2], gate.stride()[:2]))


def _common(q, k, v, gate, gate_kind):
    """Dense inputs, sizes and the gate id. With :data:`HEAD_DECAY` a scalar gate that is one decay per head
    broadcast over batch and steps (retention's, ``expand``-ed) comes back as those decays [H] with gate id 3: the
    chunk kernels form its in-chunk cumsum from the step, the decode kernel reads it once (no cumsum kernel, no
    copy). The chunk launchers may then scan any other scalar gate in the kernels (:func:`_scan_gid`)."""
    dt = v.dtype
    q, k, v = _dense(q, dt), _dense(k, dt), _dense(v)
    gid = GATE_IDS[gate_kind]
    if gate is not None:
        if HEAD_DECAY and gid == GATE_SCALAR_ID and _per_head(gate):
            gate, gid = _dense(gate[0, 0], torch.float32), GATE_HEAD_DECAY_ID
        else:
            gate = _dense(gate)
    B, T, HK, K = q.shape
    H, V = v.shape[2], v.shape[3]
    return q, k, v, gate, B, T, H, HK, K, V, gid


def _scan_gid(gid, config, phase: str) -> int:
    """Gate id 4 for a scalar gate (id 1) that the chunk kernels of this pass ("fwd" or "bwd") scan themselves:
    :data:`SCALAR_SCAN_IN_KERNELS` when set, else the config's ``<phase>_scan`` (the decode kernel has no id 4)."""
    on = config.get(f"{phase}_scan", False) if SCALAR_SCAN_IN_KERNELS is None else SCALAR_SCAN_IN_KERNELS
    return GATE_SCANNED_ID if gid == GATE_SCALAR_ID and on else gid


def _walk_bv(config, V: int) -> int:
    """The walk's V block: ``walk_BV`` of the config, else 32 (offline sm_90, 4 warps, bf16: 183-237 registers with
    a scalar gate at K = 64-128, two programs a multiprocessor; V blocks of 64 take 222-255)."""
    return launch.head_block(V, config.get("walk_BV", 32))


def _walk(config, N: int, H: int, K: int, V: int, gid: int, device, dtype) -> bool:
    """Whether the forward runs as one walk (:data:`FWD_WALK`): K <= 128 (the state block [K, BV] lives in
    registers; a gate per key dim forms its A first, rwkv6's bonus never walks); from the tables only for
    half-precision inputs (measured there; fp32 tiles double the walk's registers), where its programs fill their
    waves of :data:`WALK_PER_SM` an SM to the table's ``walk_fill``: every program walks a whole sequence, so the
    walk takes as long as its waves, where the two-pass form takes time in proportion to its work."""
    if K > 128:
        return False
    if FWD_WALK is not None:
        return FWD_WALK
    if not config.get("fwd_walk", False) or device.type != "cuda" or dtype == torch.float32:
        return False
    programs = N * H * launch.cdiv(V, _walk_bv(config, V))
    wave = WALK_PER_SM * launch.sm_count(device)
    return programs / (launch.cdiv(programs, wave) * wave) >= config.get("walk_fill", 0.7)


def _fwd_walk(q, k, v, gc, h0, cu, N, H, G, K, V, gid, BT, cfg, prec, scale, A=None):
    """(o, final state fp32) by ``chunk_fwd_walk_kernel``; ``A``: a gate per key dim's intra-chunk matrix."""
    o = _empty(v.shape, v.device, v.dtype)
    ht = _empty((N, H, K, V), v.device, torch.float32)
    BV = _walk_bv(cfg, V)
    extra = {} if A is None else {"A": A, "SA": A.shape[-1]}
    launch.fitted(
        kern.chunk_fwd_walk_kernel, (N * H * launch.cdiv(V, BV),),
        q, k, v, gc if gc is not None else ht, o, h0 if h0 is not None else ht, ht, cu, scale, H, G, K, V, BT,
        launch.head_block(K), BV, gid, h0 is not None, prec, **extra, **_opts(cfg, "walk", gid),
    )  # fmt: skip
    return o, ht


def _blocks(config, K, V):
    BT = config["BT"]
    BK = launch.head_block(K, config["BK"])
    BV = launch.head_block(V, config["BV"])
    return BT, BK, BV, config


# kernels whose launch options default to the config's shared num_warps / num_stages; the others
# (small sub-chunk tiles, scans) default to Triton's own (4 warps, 3 stages)
_SHARED = ("h", "o", "dh", "dv", "dqk")


def _state_tile(config, kernel: str, programs: int, K: int, V: int, device, gid=None) -> tuple[int, int, bool]:
    """(BK, BV, filled) of a sequential state pass ("h", "dh"): the config's blocks, with ``FILL_SMS`` halved (V
    first, then K; down to 32) while the grid still fits the SMs (``launch.fill_sms``; ``<kernel>_fill_per_sm``
    programs an SM, 1 by default: at one a multiprocessor each pass is a latency chain; ``<kernel>_head_fill_per_sm``
    first for one decay per head, see :func:`_option`); ``filled``: they were, and the pass takes its
    ``<kernel>_fill_<option>`` launch options."""
    BK, BV = _tile(config, kernel, K, V, gid)
    if not FILL_SMS:
        return BK, BV, False
    per_sm = _option(config, kernel, "fill_per_sm", 1, gid)
    fBK, fBV = launch.fill_sms(device, programs, V, BV, K, BK, lo=32, per_sm=per_sm)
    return fBK, fBV, (fBK, fBV) != (BK, BV)


def _tile(config, kernel: str, K: int, V: int, gid=None, bonus=False, fp32=False, seg=False) -> tuple[int, int]:
    """(BK, BV) of one kernel: ``<kernel>_BK`` / ``<kernel>_BV`` of the config when given, else the shared ones,
    each read as :func:`_option` reads an option (one decay per head, ``seg``, ``bonus``, ``fp32`` first)."""
    BK = _option(config, kernel, "BK", config["BK"], gid, bonus=bonus, fp32=fp32, seg=seg)
    BV = _option(config, kernel, "BV", config["BV"], gid, bonus=bonus, fp32=fp32, seg=seg)
    return launch.head_block(K, BK), launch.head_block(V, BV)


def _option(config, kernel: str, name: str, default, gid=None, filled=False, bonus=False, fp32=False, seg=False):
    """``<kernel>_<name>`` of the config, or ``default``. One decay per head (gid 3, retention's form of a scalar
    gate, which shares the scalar table) reads ``<kernel>_head_<name>`` first: its kernels take other registers
    (its dq/dk kernel gains from a cap that the scalar gate's loses by). A state pass whose blocks ``fill_sms``
    halved (``filled``: few sequences x heads, each program a long walk) reads ``<kernel>_fill_<name>`` first
    (``<kernel>_fill_head_<name>`` before it for one decay per head): without a gate the forward's pass at K = V = 128
    wants 4 stages there, and loses with them at full blocks. rwkv6 (``bonus``, which shares the vector table) reads
    ``<kernel>_bonus_<name>`` first: its output kernel also sums the bonus and loses with gla's register cap. fp32
    inputs (``fp32``) read ``<kernel>_fp32_<name>`` before all: their dots take other registers (three tf32
    products at torch's "highest"), so a cap measured on bf16 may spill them or fail to compile. An output kernel
    that completes segmented chunk states (``seg``, :data:`SEGMENTS`) reads ``<kernel>_seg_<name>`` after those two:
    the state entering the segment takes registers that spilled under gla's cap."""
    if fp32 and f"{kernel}_fp32_{name}" in config:
        return config[f"{kernel}_fp32_{name}"]
    if bonus and f"{kernel}_bonus_{name}" in config:
        return config[f"{kernel}_bonus_{name}"]
    if seg and f"{kernel}_seg_{name}" in config:
        return config[f"{kernel}_seg_{name}"]
    if filled and gid == GATE_HEAD_DECAY_ID and f"{kernel}_fill_head_{name}" in config:
        return config[f"{kernel}_fill_head_{name}"]
    if filled and f"{kernel}_fill_{name}" in config:
        return config[f"{kernel}_fill_{name}"]
    if gid == GATE_HEAD_DECAY_ID and f"{kernel}_head_{name}" in config:
        return config[f"{kernel}_head_{name}"]
    return config.get(f"{kernel}_{name}", default)


def _opts(config, kernel: str, gid=None, filled=False, bonus=False, fp32=False, seg=False) -> dict:
    """Launch options of one kernel: ``<kernel>_warps`` / ``<kernel>_stages`` of the config when given, and
    ``<kernel>_maxnreg``, a register cap per thread (a kernel just over 128 registers on 4 warps fits three
    programs a multiprocessor where 128 fits four); see :func:`_option` for one decay per head, ``filled``,
    ``bonus``, ``fp32`` and ``seg``."""
    warps, stages = (config.get("num_warps", 4), config.get("num_stages", 2)) if kernel in _SHARED else (4, 3)
    opts = {
        "num_warps": _option(config, kernel, "warps", warps, gid, filled, bonus, fp32, seg),
        "num_stages": _option(config, kernel, "stages", stages, gid, filled, bonus, fp32, seg),
    }
    cap = _option(config, kernel, "maxnreg", None, gid, filled, bonus, fp32, seg)
    if cap is not None:
        opts["maxnreg"] = cap
    return opts


def _heads_inner(config, kernel: str, gid=None) -> bool:
    """Launch order of one parallel chunk kernel (``chunks.chunk_grid``): ``<kernel>_heads_inner`` of the config
    when given, else the shared ``heads_inner``."""
    return _option(config, kernel, "heads_inner", config.get("heads_inner", False), gid)


def _config(kind, q, v, T, cu_seqlens, config):
    if config is not None:
        return config
    from ..common.autotune import get_config

    return get_config(
        "chunk", kind, q.shape[-1], v.shape[-1], v.dtype, T, q.device, varlen=cu_seqlens is not None, line="gla"
    )


def _gate_cumsum(gate, gid, info, NS, H, K, BT, device, cfg, excl=False, spread=False):
    """(gc, gq, span): the in-chunk cumsum of the gate (fp32); with ``excl`` (rwkv6) gq, the exclusive one; with
    ``spread`` (a gate per key dim) span, each chunk's gate spread [NS, K blocks, H] fp32 (0 counted with ``excl``);
    None where not asked. No gate, one decay per head (gid 3) or a scalar gate the kernels scan (gid 4): gc is the
    gate itself."""
    if gid in (GATE_NONE_ID, GATE_HEAD_DECAY_ID, GATE_SCANNED_ID):
        return gate, None, None
    gc = _empty(gate.shape, device, torch.float32)
    BKg = launch.head_block(K, cfg.get("cumsum_BK")) if gid == GATE_VECTOR_ID else 16
    grid = (NS, 1 if gid == GATE_SCALAR_ID else launch.cdiv(K, BKg), H)
    gq = _empty(gate.shape, device, torch.float32) if excl else None
    span = _empty((NS, grid[1], H), device, torch.float32) if spread else None
    extra = {"gq": gq, "EXCL": True} if excl else {}
    if spread:
        extra.update(spread=span, SPAN_OUT=True)
    launch.fitted(kern.chunk_cumsum_kernel, grid, gate, gc, info, H, K, BT, BKg, gid, **extra, **_opts(cfg, "cumsum"))
    return gc, gq, span


def _full(T, cu_seqlens, BT, gid) -> bool:
    """Whether the state passes run unmasked (``chunks.full_chunks``); a gate per key dim keeps the masks (measured
    slower unmasked)."""
    return gid != GATE_VECTOR_ID and full_chunks(T, cu_seqlens, BT)


def _fwd_h(k, v, gc, h0, cu, chunk_off, NS, N, H, G, K, V, gid, BT, cfg, prec, store_h=True, full=False, **extra):
    """(chunk states in v's dtype, final states fp32 [N, H, K, V]), on the pass's own blocks (:func:`_state_tile`);
    ``extra``: the kernel's segment outputs (:func:`_fwd_h_segments`)."""
    # chunk states in the inputs' dtype: the kernels cast them to it before every dot anyway
    h = _empty((NS if store_h else 1, H, K, V), v.device, v.dtype)
    ht = _empty((N, H, K, V), v.device, torch.float32)
    BK, BV, filled = _state_tile(cfg, "h", N * H, K, V, v.device, gid)
    grid = (N * H * launch.cdiv(K, BK) * launch.cdiv(V, BV),)  # one dim: N H may pass 65535
    launch.fitted(
        kern.chunk_fwd_h_kernel, grid,
        k, v, gc if gc is not None else ht, h, h0 if h0 is not None else ht, ht, cu, chunk_off, H, G, K, V, BT, BK,
        BV, gid, h0 is not None, store_h, True, prec, bool(_option(cfg, "h", "decay_rows", False, gid, filled)),
        FULL_CHUNKS=full, **extra, **_opts(cfg, "h", gid, filled),
    )  # fmt: skip
    return h, ht


def _segments(cfg, B, T, H, BT, cu_seqlens, dtype) -> tuple[int, int]:
    """(S, L): segments a sequence and chunks a segment for the forward's state pass (:data:`SEGMENTS`); (1, NT):
    one segment. From the tables only for half-precision inputs (measured there), and only where S reaches the
    table's ``h_seg_min`` (2): each segmented chunk costs the output kernel a load and a multiply-add of the state
    entering its segment (at K = V = 128 +0.05 ms at (2, 8192, 16, 128), so S = 2 loses there)."""
    NT = launch.cdiv(T, BT)
    if SEGMENTS is None:
        want = cfg.get("h_seg_heads", 0) if dtype != torch.float32 else 0
    else:
        want = SEG_HEADS if SEGMENTS else 0
    if not want or cu_seqlens is not None or B * H >= want:
        return 1, NT
    S = 1 << (launch.cdiv(want, B * H) - 1).bit_length()
    least = cfg.get("h_seg_chunks", SEG_CHUNKS)
    L = max(launch.cdiv(NT, S), least if SEGMENTS is None else min(least, SEG_CHUNKS))
    S = launch.cdiv(NT, L)
    return (S, L) if S >= (cfg.get("h_seg_min", 2) if SEGMENTS is None else 2) else (1, NT)


def _fwd_h_segments(k, v, gc, h0, NS, B, T, H, G, K, V, gid, BT, cfg, prec, S, L):
    """The forward's chunk states by segments (:data:`SEGMENTS`): (h, ht, the output kernel's arguments), h each
    chunk's state within its segment, which the output kernel completes (a pass over h that completed them instead
    took as long or longer, H200, thirtieth session)."""
    dev = v.device
    cu, chunk_off = segment_meta(B, T, S, L, BT, dev)
    NG = B * S  # the segments, as sequences of the state pass
    dcum = _empty((NS, H, K), dev, torch.float32)
    dseg = _empty((NG, H, K), dev, torch.float32)
    # hl: each segment's final local state
    h, hl = _fwd_h(k, v, gc, None, cu, chunk_off, NS, NG, H, G, K, V, gid, BT, cfg, prec,
                   full=_full(T, None, BT, gid), dcum=dcum, dseg=dseg, STORE_DCUM=True)  # fmt: skip
    hin = _empty((NG, H, K, V), dev, v.dtype)
    ht = _empty((B, H, K, V), dev, torch.float32)
    cBK, cBV = launch.head_block(K, 64), launch.head_block(V, 64)
    launch.fitted(
        kern.segment_combine_kernel, (B * H * launch.cdiv(K, cBK) * launch.cdiv(V, cBV),),
        hl, dseg, h0 if h0 is not None else hl, hin, ht, S, H, K, V, cBK, cBV, h0 is not None,
        **_opts(cfg, "combine"),
    )  # fmt: skip
    return h, ht, dict(hin=hin, dcum=dcum, SEG_S=S, SEG_L=L, SEGMENTED=True)


def _gla_A(q, k, gc, info, NS, B, T, H, G, K, BT, BK, prec, cfg, out=None, gq=None, u=None, span=None):
    """The vector gate's intra-chunk attention matrix A: [B, T, H, BT] in the inputs' dtype (the kernels
    cast it to that dtype before every dot), or written into ``out`` [B, T, H, A_SLOTS] (BT <= A_SLOTS).

    rwkv6 (``u``, with ``gq`` the exclusive cumsum): strictly causal, the bonus on the diagonal. ``span`` (the
    chunks' gate spreads, :func:`_gate_cumsum`): only the chunks the output kernel cannot factor are formed."""
    A = _empty((B, T, H, BT), q.device, q.dtype) if out is None else out
    NC = BT // BC
    BK = _tile(cfg, "A", K, K)[0]
    extra = {} if u is None else {"gq": gq, "u": u, "BONUS": True}
    if span is not None:
        extra.update(spread=span, NKS=span.shape[1], SKIP_FACTORED=True)
    inner = _option(cfg, "A", "pairs_inner", False) and span is None
    launch.fitted(
        intra.chunk_gla_A_kernel, (NS * NC * NC, 1, H) if inner else (NS, 1 if span is not None else NC * NC, H),
        q, k, gc, A, info, H, G, K, BT, BC, BK, NC, prec, A.shape[-1], **extra, PAIRS_INNER=inner,
        **_opts(cfg, "A"),
    )  # fmt: skip
    return A


# The op keeps the forward's A for its backward (ops/gla.py): [B, T, H, A_SLOTS] in v's dtype, a layout
# fixed before any config is known (fake impls give it without tuning). A forward with BT <= A_SLOTS
# writes its A into the first BT columns of each row (zeros in the others; all zeros where it makes no A)
# and tags the tensor with that BT, a Python attribute: it lives as long as the tensor object, through
# autograd's saved tensors and compiled graphs. The backward uses the tensor only when the tag equals its
# own BT, and recomputes A otherwise (no tag: a copy, the fused recurrent forward, BT > A_SLOTS; or a
# forward that ran another config than the backward, e.g. tuning happened in between).
A_SLOTS = 64
_A_TAG = "_fla_compile_A_BT"


def saved_A_like(q, v):
    """An empty tensor in the op's saved layout of A: [B, T, H, A_SLOTS] in v's dtype."""
    B, T, H = v.shape[:3]
    return v.new_empty(B, T, H, A_SLOTS)


def _A_slot(A, B, T, H, BT, dtype, device):
    """Whether ``A`` can hold (forward) or holds (backward, then also tagged with BT) the A of this call."""
    return (
        A is not None
        and BT <= A_SLOTS
        and tuple(A.shape) == (B, T, H, A_SLOTS)
        and A.dtype == dtype
        and A.device == device
        and A.is_contiguous()
    )


def _untag(A_out):
    """A tensor about to be (re)used as ``A_out`` holds no A until written: drop any earlier tag."""
    if A_out is not None and hasattr(A_out, _A_TAG):
        delattr(A_out, _A_TAG)


def _no_A(A_out):
    """No A is kept (fused recurrent forward, BT > A_SLOTS): the op's output is zeros, not whatever was there."""
    if A_out is not None:
        A_out.zero_()


def saved_A_valid(A, B, T, H, BT, dtype, device) -> bool:
    """Whether ``A`` is a forward's A for chunk size BT in the saved layout (written, tagged, same BT)."""
    return _A_slot(A, B, T, H, BT, dtype, device) and getattr(A, _A_TAG, None) == BT


def _bonus(bonus, H, K):
    """rwkv6's u as the kernels read it: [H, K] fp32, contiguous (None for the other families)."""
    return None if bonus is None else bonus.float().contiguous()


def chunk_forward(
    q, k, v, gate, gate_kind, scale, initial_state=None, cu_seqlens=None, config=None, A_out=None, bonus=None
):
    """Chunked forward: (o in v's dtype, final state fp32 [N, H, K, V]).

    ``A_out`` (vector gate): a [B, T, H, A_SLOTS] tensor in v's dtype (:func:`saved_A_like`) to keep A in
    for the backward; written (zeros past column BT) and tagged with BT when BT <= A_SLOTS, else zeros.
    ``bonus`` (rwkv6, vector gate): u [H, K]; q is then gated by the exclusive cumsum and A holds the bonus.
    """
    _untag(A_out)
    q, k, v, gate, B, T, H, HK, K, V, gid = _common(q, k, v, gate, gate_kind)
    BT, BK, BV, cfg = _blocks(_config(gate_kind, q, v, T, cu_seqlens, config), K, V)
    gid = _scan_gid(gid, cfg, "fwd")
    cu, info, chunk_off, NS, N = chunk_meta(B, T, cu_seqlens, BT, q.device)
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    u = _bonus(bonus, H, K)
    walk = u is None and _walk(cfg, N, H, K, V, gid, q.device, v.dtype)
    # a gate per key dim: the output kernel forms the A of the chunks it can factor (FACTORED_A)
    factored = gid == GATE_VECTOR_ID and not walk and FACTORED_A and (u is None or FACTORED_A_BONUS)
    gc, gq, span = _gate_cumsum(gate, gid, info, NS, H, K, BT, q.device, cfg, excl=u is not None, spread=factored)
    prec = launch.prec(v.dtype, K, V, split=FP32_SPLIT)
    A = out = None
    if gid == GATE_VECTOR_ID:
        out = A_out if _A_slot(A_out, B, T, H, BT, v.dtype, v.device) else None
        A = _gla_A(q, k, gc, info, NS, B, T, H, H // HK, K, BT, BK, prec, cfg, out=out, gq=gq, u=u, span=span)
        if out is None:
            _no_A(A_out)
        else:
            if BT < A_SLOTS:  # the columns no chunk reaches: zeros, so the op's outputs are deterministic
                out[..., BT:].zero_()
            setattr(out, _A_TAG, BT)
    else:
        _no_A(A_out)
    if walk:  # with a gate per key dim, on the A just formed
        return _fwd_walk(q, k, v, gc, h0, cu, N, H, H // HK, K, V, gid, BT, cfg, prec, scale, A=A)
    S, L = _segments(cfg, B, T, H, BT, cu_seqlens, v.dtype)
    if S > 1:
        h, ht, seg = _fwd_h_segments(k, v, gc, h0, NS, B, T, H, H // HK, K, V, gid, BT, cfg, prec, S, L)
    else:
        full = _full(T, cu_seqlens, BT, gid)
        h, ht = _fwd_h(k, v, gc, h0, cu, chunk_off, NS, N, H, H // HK, K, V, gid, BT, cfg, prec, full=full)
        seg = {}
    A = h if A is None else A
    o = _empty(v.shape, v.device, v.dtype)
    # the output kernel's own options for rwkv6 (``o_bonus_*``) and fp32 inputs (``o_fp32_*``) first
    form = dict(bonus=u is not None, fp32=v.dtype == torch.float32, seg=S > 1)
    BK, BV = _tile(cfg, "o", K, V, gid, **form)
    grid, order = chunk_grid(NS, launch.cdiv(V, BV), H, _heads_inner(cfg, "o", gid))
    extra = {} if span is None else dict(spread=span, NKS=span.shape[1], A_FACTORED=True, STORE_A=out is not None)
    # v's tile loaded before the K loop (table option ``o_v_early``)
    if _option(cfg, "o", "v_early", False, gid, **form):
        extra["V_EARLY"] = True
    if span is not None and u is not None:
        extra.update(gk=gc, u=u, BONUS=True)
    extra.update(seg)
    # the gate of q: rwkv6's exclusive one
    launch.fitted(
        kern.chunk_fwd_o_kernel, grid,
        q, k, v, gq if gq is not None else gc if gc is not None else h, h, A, o, info, scale, H, H // HK, K, V, BT, BK,
        BV, gid, prec, A.shape[-1] if gid == GATE_VECTOR_ID else BT, **order, **extra, **_opts(cfg, "o", gid, **form),
    )  # fmt: skip
    return o, ht


def chunk_backward(
    q,
    k,
    v,
    gate,
    gate_kind,
    scale,
    initial_state,
    cu_seqlens,
    do,
    dht,
    config=None,
    A=None,
    bonus=None,
    need_dgate=True,
):
    """Chunked backward: (dq, dk, dv, dgate or None, dh0 or None), dq/dk/dv in the inputs' dtypes; with
    ``bonus`` (rwkv6) du [H, K] fp32 last. ``need_dgate`` False: a scalar gate's gradient is not formed (None).

    Recomputes the gate cumsum and the chunk states, carries the state gradient backwards, then forms dv,
    dq, dk and the gate gradient per chunk (chunk-local: the decay of the incoming state enters through
    sum_v h dh). The vector gate's A is the forward's ``A`` (``chunk_forward(A_out=...)``) when that holds
    A for this call's BT (:func:`saved_A_valid`), else recomputed.
    """
    in_dtypes = (q.dtype, k.dtype, v.dtype)
    q, k, v, gate, B, T, H, HK, K, V, gid = _common(q, k, v, gate, gate_kind)
    G = H // HK
    BT, BK, BV, cfg = _blocks(_config(gate_kind, q, v, T, cu_seqlens, config), K, V)
    gid = _scan_gid(gid, cfg, "bwd")
    cu, info, chunk_off, NS, N = chunk_meta(B, T, cu_seqlens, BT, q.device)
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    do = _dense(do, v.dtype)
    dht = dht.float().contiguous() if dht is not None else None
    u = _bonus(bonus, H, K)
    # the intra kernel's factored chunks (FACTORED_BWD, the table's intra_factored); rwkv6 keeps the sub-chunk form
    on = _option(cfg, "intra", "factored", False) if FACTORED_BWD is None else FACTORED_BWD
    factored = gid == GATE_VECTOR_ID and u is None and bool(on)
    gc, gq, span = _gate_cumsum(gate, gid, info, NS, H, K, BT, q.device, cfg, excl=u is not None, spread=factored)
    rw = () if u is None else (gq, True)  # the trailing rwkv6 arguments of the dh and dqk kernels
    prec = launch.prec(v.dtype, K, V, split=FP32_SPLIT)
    full = _full(T, cu_seqlens, BT, gid)
    h, ht = _fwd_h(k, v, gc, h0, cu, chunk_off, NS, N, H, G, K, V, gid, BT, cfg, prec, full=full)

    dh = _empty((NS, H, K, V), v.device, v.dtype)  # like h: cast to the inputs' dtype before every dot
    dh0 = _empty((N, H, K, V), v.device, torch.float32) if h0 is not None else None
    BK, BV, filled = _state_tile(cfg, "dh", N * H, K, V, v.device, gid)
    grid = (N * H * launch.cdiv(K, BK) * launch.cdiv(V, BV),)  # one dim: N H may pass 65535
    gc_arg = gc if gc is not None else h  # a placeholder pointer: never read without a gate
    launch.fitted(
        kern.chunk_bwd_dh_kernel, grid,
        q, do, gc_arg, dh, dht if dht is not None else h0 if h0 is not None else ht, dh0 if dh0 is not None else ht,
        cu, chunk_off, scale, H, G, K, V, BT, BK, BV, gid, dht is not None, dh0 is not None, prec, *rw,
        FULL_CHUNKS=full, **_opts(cfg, "dh", gid, filled),
    )  # fmt: skip
    if gid != GATE_VECTOR_ID:
        A = ht  # a placeholder pointer: never read
    elif not saved_A_valid(A, B, T, H, BT, v.dtype, v.device):
        A = _gla_A(q, k, gc, info, NS, B, T, H, G, K, BT, BK, prec, cfg, gq=gq, u=u)
    SA = A.shape[-1] if gid == GATE_VECTOR_ID else BT
    dv = _empty(v.shape, v.device, v.dtype)
    BK, BV = _tile(cfg, "dv", K, V, gid)
    grid, order = chunk_grid(NS, launch.cdiv(V, BV), H, _heads_inner(cfg, "dv", gid))
    launch.fitted(
        kern.chunk_bwd_dv_kernel, grid,
        q, k, gc_arg, A, do, dh, dv, info, scale, H, G, K, V, BT, BK, BV, gid, prec, SA, **order,
        **_opts(cfg, "dv", gid),
    )  # fmt: skip
    # dq, dk straight in the inputs' dtypes where nothing adds to them after this kernel (no per-key gate's
    # intra pass, no GQA group sum, no bonus): the same rounding as a cast after, without two more kernels
    last = G == 1 and u is None  # nothing adds to dq, dk after this line's kernels (no GQA sum, no bonus)
    final = gid != GATE_VECTOR_ID and last
    dq = _empty((B, T, H, K), v.device, in_dtypes[0] if final else torch.float32)
    dk = _empty(dq.shape, v.device, in_dtypes[1] if final else torch.float32)
    dA = _empty((B, T, H, BT), v.device, torch.float32) if gid == GATE_VECTOR_ID else ht
    BK, BV = _tile(cfg, "dqk", K, V, gid)
    # chunk-local; a scalar gate's has one column per K block of the grid (the kernel sums the keys)
    want_dg = gid == GATE_VECTOR_ID or (gid != GATE_NONE_ID and need_dgate)
    dg = (
        _empty((B, T, H, K if gid == GATE_VECTOR_ID else launch.cdiv(K, BK)), v.device, torch.float32)
        if want_dg
        else None
    )
    grid, order = chunk_grid(NS, launch.cdiv(K, BK), H, _heads_inner(cfg, "dqk", gid))
    launch.fitted(
        kern.chunk_bwd_dqk_kernel, grid,
        q, k, v, gc_arg, h, do, dh, dA, dg if dg is not None else dq, dq, dk, info, scale, H, G, K, V, BT, BK, BV,
        gid, prec, *rw, DG=want_dg, **order, **_opts(cfg, "dqk", gid),
    )  # fmt: skip
    if gid == GATE_VECTOR_ID:
        NC = BT // BC
        db = _empty(dq.shape, v.device, torch.float32)
        BKi = _tile(cfg, "intra", K, K)[0]
        grid = (NS, NC * launch.cdiv(K, BKi), H)
        du = _empty(dq.shape, v.device, torch.float32) if u is not None else None  # per token, summed below
        extra = () if u is None else (gq, u, du, dg, True)
        # dq, dk straight in the inputs' dtypes where this kernel adds to them last
        out = {}
        if FINAL_DQK_VECTOR and last and torch.float32 not in in_dtypes[:2]:
            dq_in, dk_in = (_empty(dq.shape, v.device, d) for d in in_dtypes[:2])
            out = dict(dqo=dq_in, dko=dk_in, DQO=True, DKO=True)
        if span is not None:
            out.update(spread=span, NKS=span.shape[1], FACTORED=True)
        launch.fitted(
            intra.chunk_gla_bwd_intra_kernel, grid,
            q, k, gc, dA, dq, dk, db, info, scale, H, G, K, BT, BC, BKi, NC, prec, *extra, **out,
            **_opts(cfg, "intra"),
        )  # fmt: skip
        if "dqo" in out:
            dq, dk = dq_in, dk_in
        BKr = _tile(cfg, "rc", K, K)[0]
        launch.fitted(
            intra.chunk_rc_add_kernel, (NS, launch.cdiv(K, BKr), H),
            db, dg, info, H, K, BT, BKr, *(() if u is None else (True,)), **_opts(cfg, "rc"),
        )  # fmt: skip
    if gid in SCALAR_GATE_IDS and want_dg:  # per step (gid 3: the op sums the steps for its per-head decay)
        dg = scalar_dg_per_step(dg)
    if G > 1:  # GQA: sum the heads of each group, in a fixed order
        dq = dq.view(B, T, HK, G, K).sum(3)
        dk = dk.view(B, T, HK, G, K).sum(3)
    if u is not None:  # du: the per-token terms summed over tokens, in a fixed order
        return dq.to(in_dtypes[0]), dk.to(in_dtypes[1]), dv.to(in_dtypes[2]), dg, dh0, du.sum((0, 1))
    return dq.to(in_dtypes[0]), dk.to(in_dtypes[1]), dv.to(in_dtypes[2]), dg, dh0


def fused_recurrent(
    q,
    k,
    v,
    gate,
    gate_kind,
    scale,
    initial_state=None,
    cu_seqlens=None,
    output_final_state=True,
    inplace_state=False,
    config=None,
    bonus=None,
):
    """Token-by-token forward for decoding (T up to ``DECODE_MAX_T``): (o, final state or None).

    ``bonus`` (rwkv6, vector gate): u [H, K]; each output reads the state before its step, plus the bonus.

    With ``inplace_state`` the new state is written into ``initial_state`` (which must be a
    contiguous fp32 tensor) and returned; nothing is allocated for it, so it is CUDA-graph safe.
    """
    q, k, v, gate, B, T, H, HK, K, V, gid = _common(q, k, v, gate, gate_kind)
    cu = dense_cu(B, T, q.device) if cu_seqlens is None else cu_seqlens.to(torch.int32)
    N = cu.shape[0] - 1
    if config is None:
        from ..common.autotune import get_config

        config = get_config("decode", gate_kind, K, V, v.dtype, T, q.device, varlen=cu_seqlens is not None, line="gla")
    BK, BV = launch.head_block(K), launch.head_block(V, config["BV"])
    if inplace_state:
        if initial_state is None or initial_state.dtype != torch.float32 or not initial_state.is_contiguous():
            raise ValueError("inplace_state needs a contiguous fp32 initial_state")
        h0 = ht = initial_state
    else:
        h0 = initial_state.float().contiguous() if initial_state is not None else None
        ht = _empty((N, H, K, V), q.device, torch.float32) if output_final_state else None
    o = _empty(v.shape, v.device, v.dtype)
    grid = (N * H, launch.cdiv(V, BV))
    kern.fused_recurrent_kernel[grid](
        q, k, v, gate if gate is not None else q, o, h0 if h0 is not None else o, ht if ht is not None else o, cu,
        scale, H, H // HK, K, V, BK, BV, gid, h0 is not None, ht is not None,
        *(() if bonus is None else (_bonus(bonus, H, K), True)), num_warps=config.get("num_warps", 4),
    )  # fmt: skip
    return o, ht


def forward(q, k, v, gate, gate_kind, scale, initial_state=None, cu_seqlens=None, A_out=None, bonus=None):
    """The op's forward: the fused recurrent kernel for short inputs (``A_out`` set to zeros), the chunked
    one otherwise (it keeps the vector gate's A in ``A_out``, see :func:`chunk_forward`)."""
    if q.shape[1] <= DECODE_MAX_T:
        _untag(A_out)
        _no_A(A_out)
        return fused_recurrent(q, k, v, gate, gate_kind, scale, initial_state, cu_seqlens, bonus=bonus)
    return chunk_forward(q, k, v, gate, gate_kind, scale, initial_state, cu_seqlens, A_out=A_out, bonus=bonus)

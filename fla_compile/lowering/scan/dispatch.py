"""Device dispatch of the scan line (hgrn): the Triton kernels (:mod:`.triton_scan`'s walk,
:mod:`.triton_chunk`'s chunked scan or :mod:`.triton_tile`'s tile walk, imported lazily, chosen by :func:`pick`)
for CUDA tensors of a supported dtype, the torch path (:mod:`.torch_path`) otherwise."""

from __future__ import annotations

import functools

import torch

from ..common.switch import triton_wanted
from . import torch_path


def scan_triton_enabled(x, g, *others) -> bool:
    """Whether the scan kernels run these inputs (see ``common.switch.triton_wanted``)."""
    if not triton_wanted(x, g, *others):
        return False
    try:
        from . import triton_scan
    except ImportError:
        return False
    return triton_scan.supported(x, g)


FORCE_KERNEL: str | None = None  # 'walk', 'chunk' or 'tile' overrides pick (tests, benchmarks/scan_hgrn.py)
KERNELS = ("walk", "chunk", "tile")
CHUNK_MIN_STEPS = 512  # mean steps per sequence from which the chunked scan runs even where the walk fills the GPU
WALK_MIN_STEPS = 64  # below this (decoding, short sequences) the walk always runs: one pass, one launch
WALK_BD = 64  # the walk's channels per program (triton_scan.BD_MAX), to count its programs
WALK_WAVES = 2  # the walk fills the GPU with at least this many programs per SM
TILE_MIN_STEPS = 64  # mean steps per sequence from which the tile walk may run (below: the walk)
TILE_WAVES = 1  # the tile walk runs where its programs (triton_tile.programs) are at least this many per SM
# (counted at triton_tile.CONFIG["BD"]). H200, bf16, fwd+bwd through the op (2026-11-30): with ~1 program per SM
# (128 of [64, 32]) the tile walk still beat the chunked scan, 0.934 vs 1.237 ms at (4, 8192, 1024) and 0.949
# vs 1.351 at (1, 16384, 4096); the chunked scan keeps fewer programs than SMs


@functools.cache
def _n_sm(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def pick(x: torch.Tensor, cu_seqlens=None) -> str:
    """Which hgrn kernel runs: 'walk', 'chunk' or 'tile' (``FORCE_KERNEL`` overrides).

    - the walk (one pass, one program per sequence and 64 channels stepping through T one row at a time:
      memory-optimal once its programs fill the GPU, latency-bound over long T) keeps decoding and short
      sequences (mean steps per sequence below ``WALK_MIN_STEPS``);
    - the tile walk (one pass, the same programs moving BT rows at a time with pipelined tile loads: 3 numbers
      per element forward) runs from ``TILE_MIN_STEPS`` wherever its programs (sequences x channel blocks) are
      at least ``TILE_WAVES`` per SM;
    - the chunked scan (three passes, time cut into chunks: every SM busy from the first step, but x and g read
      twice) takes what is left of long sequences (``CHUNK_MIN_STEPS`` and up: on the H200 the walk is ~10x
      slower than a chunked scan at T=8192-16384, and the tile walk's few programs could not fill the GPU)
      and, in between, any shape whose walk has too few programs to fill the GPU (fewer than ``WALK_WAVES``
      per SM).

    Packed sequences count their mean length (a walk's time is the longest one's, which is not known without
    reading cu_seqlens back)."""
    if FORCE_KERNEL is not None:
        if FORCE_KERNEL not in KERNELS:
            raise ValueError(f"dispatch.FORCE_KERNEL: expected one of {KERNELS} or None, got {FORCE_KERNEL!r}")
        return FORCE_KERNEL
    B, T, D = x.shape
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    steps = B * T / max(N, 1)
    if steps < WALK_MIN_STEPS:
        return "walk"
    n_sm = _n_sm(x.device.index if x.device.index is not None else torch.cuda.current_device()) if x.is_cuda else 132
    if steps >= TILE_MIN_STEPS and _tile_programs(x, cu_seqlens) >= TILE_WAVES * n_sm:
        return "tile"
    if steps >= CHUNK_MIN_STEPS:
        return "chunk"
    return "chunk" if N * -(-D // WALK_BD) < WALK_WAVES * n_sm else "walk"


def _tile_programs(x, cu_seqlens) -> int:
    """The tile walk's programs at ``triton_tile.CONFIG``'s BD (a larger BD halves them: see TILE_WAVES); 0
    without Triton."""
    try:
        from . import triton_tile
    except ImportError:
        return 0
    return triton_tile.programs(x, cu_seqlens)


def use_chunks(x: torch.Tensor, cu_seqlens=None) -> bool:
    """Whether the chunked scan runs (see :func:`pick`)."""
    return pick(x, cu_seqlens) == "chunk"


def _kernels(x, cu_seqlens):
    kernel = pick(x, cu_seqlens)
    if kernel == "chunk":
        from . import triton_chunk

        return triton_chunk
    if kernel == "tile":
        from . import triton_tile

        return triton_tile
    from . import triton_scan

    return triton_scan


def scan_forward(x, g, initial_state=None, cu_seqlens=None):
    """(o [B, T, D] in x's dtype, final state [N, D] fp32, fp64 for fp64 inputs)."""
    if scan_triton_enabled(x, g, initial_state):
        return _kernels(x, cu_seqlens).forward(x, g, initial_state, cu_seqlens)
    return torch_path.scan_forward(x, g, initial_state, cu_seqlens)


def scan_backward(x, g, initial_state, cu_seqlens, o, do, dht):
    """(dx, dg, dh0 or None) from the forward's output ``o`` (the states) and the incoming gradients."""
    if scan_triton_enabled(x, g, initial_state, do):
        return _kernels(x, cu_seqlens).backward(x, g, initial_state, cu_seqlens, o, do, dht)
    return torch_path.scan_backward(x, g, initial_state, cu_seqlens, o, do, dht)


def scan_decode(x, g, initial_state=None, cu_seqlens=None):
    """Decoding a few steps: the forward (for a few steps the walk: state in registers, one program per
    block of channels walking the steps; see :func:`use_chunks`)."""
    return scan_forward(x, g, initial_state, cu_seqlens)


def selective_triton_enabled(u, dt, A, B, C, *others) -> bool:
    if not triton_wanted(u, dt, A, B, C, *others):
        return False
    try:
        from . import triton_scan
    except ImportError:
        return False
    return triton_scan.selective_supported(u, dt, A, B, C)


SELECTIVE_CHUNK_MIN_T = 64  # steps from which the chunked kernels run (see ``selective_chunked``)
# The chunked kernels with the states vectorized and the sequence in parallel segments
# (:mod:`.triton_chunk_selective_vec`, N padded to a power of two); False: :mod:`.triton_chunk_selective`
SELECTIVE_VEC = True
# The most states a channel the chunked kernels take; the walk beyond. H200, bf16, kernels alone (ms, forward /
# backward, 2026-12-02): the vectorized kernels against the walk at (4, 2048, 1536) N = 32 0.259 / 2.53 against
# 2.37 / 4.86, N = 64 0.529 / 4.07 against 2.02 / 6.35; (1, 4096, 2048) N = 32 0.272 / 1.65 against 4.74 / 8.58.
# The other chunked kernels were measured at N <= 16 only.
SELECTIVE_CHUNK_MAX_N = 64


def selective_chunked(u, A) -> bool:
    """Whether the chunked kernels (:func:`_chunked_kernels`) take a selective scan rather than the
    walk. The walk waits on its loads and on the previous step at every step: fine for decoding (a few
    steps, one launch, nothing wasted) and ruinous for long sequences (~80x the memory floor on the H200
    at T = 2048). The chunked kernels load a chunk of 4-32 steps at once and scan it in registers, one
    dependency per chunk; under 64 steps they would mostly scan padding. Varlen inputs are judged by the
    packed length: the chunked kernels handle any lengths (chunks start at each sequence's start).
    States beyond ``SELECTIVE_CHUNK_MAX_N`` a channel (16 for the kernels not vectorized) keep to the walk:
    beyond 64 the vectorized backward spills (offline, sm_90a: 276 B a thread at 64, 1,896 at 128)."""
    return u.shape[1] >= SELECTIVE_CHUNK_MIN_T and A.shape[-1] <= (SELECTIVE_CHUNK_MAX_N if SELECTIVE_VEC else 16)


def _chunked_kernels():
    """The module of chunked kernels: the vectorized one unless ``SELECTIVE_VEC`` is off."""
    from . import triton_chunk_selective, triton_chunk_selective_vec

    return triton_chunk_selective_vec if SELECTIVE_VEC else triton_chunk_selective


def selective_forward(u, dt, A, B, C, initial_state=None, cu_seqlens=None):
    """Mamba's selective scan: (y [B, T, D] in u's dtype, final state [N_seq, D, N]). On CUDA the chunked
    Triton kernels for long inputs and the fused walk (state tile [16, N] in registers) for short ones
    (``selective_chunked``); else the torch path."""
    if selective_triton_enabled(u, dt, A, B, C, initial_state):
        if selective_chunked(u, A):
            return _chunked_kernels().forward(u, dt, A, B, C, initial_state, cu_seqlens)
        from . import triton_scan

        return triton_scan.selective_forward(u, dt, A, B, C, initial_state, cu_seqlens)
    return torch_path.selective_forward(u, dt, A, B, C, initial_state, cu_seqlens, scan=scan_forward)


def selective_backward(u, dt, A, B, C, initial_state, cu_seqlens, do, dht):
    """(du, ddt, dA, dB, dC, dh0 or None): on CUDA the chunked backward (chunk states, then a reverse pass)
    or the fused backward walk, as the forward chooses; else autograd through the torch path."""
    if selective_triton_enabled(u, dt, A, B, C, initial_state, do):
        if selective_chunked(u, A):
            return _chunked_kernels().backward(u, dt, A, B, C, initial_state, cu_seqlens, do, dht)
        from . import triton_scan

        return triton_scan.selective_backward(u, dt, A, B, C, initial_state, cu_seqlens, do, dht)
    leaves = [x.detach().requires_grad_() for x in (u, dt, A, B, C)]
    h0 = initial_state.detach().requires_grad_() if initial_state is not None else None
    with torch.enable_grad():
        y, ht = torch_path.selective_forward(*leaves, h0, cu_seqlens)
        wrt = leaves + ([h0] if h0 is not None else [])
        outs, douts = ((y,), (do.to(y.dtype),)) if dht is None else ((y, ht), (do.to(y.dtype), dht.to(ht.dtype)))
        grads = torch.autograd.grad(outs, wrt, douts, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, wrt)]
    return (*grads[:5], grads[5] if h0 is not None else None)


def selective_decode(u, dt, A, B, C, initial_state=None, cu_seqlens=None):
    """Decoding a few steps: the forward walk is already the fused recurrent kernel."""
    return selective_forward(u, dt, A, B, C, initial_state, cu_seqlens)

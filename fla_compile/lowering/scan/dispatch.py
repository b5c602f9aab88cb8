"""Device dispatch of the scan line (hgrn): the Triton kernels (:mod:`.triton_scan`, imported lazily)
for CUDA tensors of a supported dtype, the torch path (:mod:`.torch_path`) otherwise."""

from __future__ import annotations

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


def scan_forward(x, g, initial_state=None, cu_seqlens=None):
    """(o [B, T, D] in x's dtype, final state [N, D] fp32, fp64 for fp64 inputs)."""
    if scan_triton_enabled(x, g, initial_state):
        from . import triton_scan

        return triton_scan.forward(x, g, initial_state, cu_seqlens)
    return torch_path.scan_forward(x, g, initial_state, cu_seqlens)


def scan_backward(x, g, initial_state, cu_seqlens, o, do, dht):
    """(dx, dg, dh0 or None) from the forward's output ``o`` (the states) and the incoming gradients."""
    if scan_triton_enabled(x, g, initial_state, do):
        from . import triton_scan

        return triton_scan.backward(x, g, initial_state, cu_seqlens, o, do, dht)
    return torch_path.scan_backward(x, g, initial_state, cu_seqlens, o, do, dht)


def scan_decode(x, g, initial_state=None, cu_seqlens=None):
    """Decoding a few steps: the forward kernel is already the fused recurrent one (state in registers,
    one program per block of channels walking the steps), so decoding is the forward."""
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


def selective_chunked(u, A) -> bool:
    """Whether the chunked kernels (:mod:`.triton_chunk_selective`) take a selective scan rather than the
    walk. The walk waits on its loads and on the previous step at every step: fine for decoding (a few
    steps, one launch, nothing wasted) and ruinous for long sequences (~80x the memory floor on the H200
    at T = 2048). The chunked kernels load a chunk of 16 steps at once and scan it in registers, one
    dependency per chunk; under 64 steps they would mostly scan padding. Varlen inputs are judged by the
    packed length: the chunked kernels handle any lengths (chunks start at each sequence's start).
    States beyond 16 per channel keep to the walk (the chunk tiles are sized for N <= 16)."""
    return u.shape[1] >= SELECTIVE_CHUNK_MIN_T and A.shape[-1] <= 16


def selective_forward(u, dt, A, B, C, initial_state=None, cu_seqlens=None):
    """Mamba's selective scan: (y [B, T, D] in u's dtype, final state [N_seq, D, N]). On CUDA the chunked
    Triton kernels for long inputs and the fused walk (state tile [16, N] in registers) for short ones
    (``selective_chunked``); else the torch path."""
    if selective_triton_enabled(u, dt, A, B, C, initial_state):
        if selective_chunked(u, A):
            from . import triton_chunk_selective

            return triton_chunk_selective.forward(u, dt, A, B, C, initial_state, cu_seqlens)
        from . import triton_scan

        return triton_scan.selective_forward(u, dt, A, B, C, initial_state, cu_seqlens)
    return torch_path.selective_forward(u, dt, A, B, C, initial_state, cu_seqlens, scan=scan_forward)


def selective_backward(u, dt, A, B, C, initial_state, cu_seqlens, do, dht):
    """(du, ddt, dA, dB, dC, dh0 or None): on CUDA the chunked backward (chunk states, then a reverse pass)
    or the fused backward walk, as the forward chooses; else autograd through the torch path."""
    if selective_triton_enabled(u, dt, A, B, C, initial_state, do):
        if selective_chunked(u, A):
            from . import triton_chunk_selective

            return triton_chunk_selective.backward(u, dt, A, B, C, initial_state, cu_seqlens, do, dht)
        from . import triton_scan

        return triton_scan.selective_backward(u, dt, A, B, C, initial_state, cu_seqlens, do, dht)
    leaves = [x.detach().requires_grad_() for x in (u, dt, A, B, C)]
    h0 = initial_state.detach().requires_grad_() if initial_state is not None else None
    with torch.enable_grad():
        y, ht = torch_path.selective_forward(*leaves, h0, cu_seqlens)
        wrt = leaves + ([h0] if h0 is not None else [])
        grads = torch.autograd.grad((y, ht), wrt, (do.to(y.dtype), dht.to(ht.dtype)), allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, wrt)]
    return (*grads[:5], grads[5] if h0 is not None else None)


def selective_decode(u, dt, A, B, C, initial_state=None, cu_seqlens=None):
    """Decoding a few steps: the forward walk is already the fused recurrent kernel."""
    return selective_forward(u, dt, A, B, C, initial_state, cu_seqlens)

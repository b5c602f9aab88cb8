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


def selective_forward(u, dt, A, B, C, initial_state=None, cu_seqlens=None):
    """Mamba's selective scan: (y [B, T, D] in u's dtype, final state [N_seq, D, N]). The fused Triton walk
    (state tile [16, N] in registers, memory D per token) where it runs the inputs, else the torch path."""
    if selective_triton_enabled(u, dt, A, B, C, initial_state):
        from . import triton_scan

        return triton_scan.selective_forward(u, dt, A, B, C, initial_state, cu_seqlens)
    return torch_path.selective_forward(u, dt, A, B, C, initial_state, cu_seqlens, scan=scan_forward)


def selective_backward(u, dt, A, B, C, initial_state, cu_seqlens, do, dht):
    """(du, ddt, dA, dB, dC, dh0 or None): the fused Triton backward walk (states recomputed per segment
    from checkpoints, memory D N per BT steps), else autograd through the torch path."""
    if selective_triton_enabled(u, dt, A, B, C, initial_state, do):
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

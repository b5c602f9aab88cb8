"""Device dispatch of the scan line (hgrn): the Triton kernels (:mod:`.triton_scan`, imported lazily)
for CUDA tensors of a supported dtype, the torch path (:mod:`.torch_path`) otherwise."""

from __future__ import annotations

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

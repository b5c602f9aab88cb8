"""Implementations behind the ops: torch chunked paths (CPU and reference) and Triton kernels.

``gla_line`` / ``gla_line_backward`` pick the implementation for the GLA-line families from the
inputs: the Triton kernels (``gla_triton``, imported lazily) for CUDA tensors of a supported
dtype, the torch chunked path otherwise.
"""

from __future__ import annotations

import os

import torch

from .gla_torch import gla_line_forward


def gla_triton_enabled(q, k, v) -> bool:
    """Whether the GLA-line Triton kernels run these inputs (CUDA, fp32/bf16/fp16, head dims <= 256).

    ``FLA_COMPILE_TRITON=0`` turns them off; ``FLA_COMPILE_TRITON=interpret`` (with ``TRITON_INTERPRET=1``)
    also runs them on CPU tensors, which is how CI tests the ops' wiring.
    """
    mode = os.environ.get("FLA_COMPILE_TRITON", "1")
    if mode == "0" or not (q.is_cuda or (mode == "interpret" and os.environ.get("TRITON_INTERPRET") == "1")):
        return False
    try:
        from . import gla_triton
    except ImportError:
        return False
    return gla_triton.supported(q, k, v)


def gla_line(q, k, v, gate, gate_kind, scale, initial_state=None, cu_seqlens=None):
    """Forward of linear_attn / retention / simple_gla / gla: (o, final state fp32)."""
    if gla_triton_enabled(q, k, v):
        from . import gla_triton

        return gla_triton.forward(q, k, v, gate, gate_kind, scale, initial_state, cu_seqlens)
    return gla_line_forward(q, k, v, gate, gate_kind, scale, initial_state, cu_seqlens)


def gla_line_backward(q, k, v, gate, gate_kind, scale, initial_state, cu_seqlens, do, dht):
    """Backward of ``gla_line``: (dq, dk, dv, dgate or None, dh0 or None).

    Triton chunked backward on CUDA; elsewhere autograd through the torch chunked path.
    """
    if gla_triton_enabled(q, k, v):
        from . import gla_triton

        return gla_triton.chunk_backward(q, k, v, gate, gate_kind, scale, initial_state, cu_seqlens, do, dht)
    inputs = [q, k, v, gate, initial_state]
    with torch.enable_grad():
        leaves = [x.detach().requires_grad_() if x is not None else None for x in inputs]
        o, ht = gla_line_forward(*leaves[:4], gate_kind, scale, leaves[4], cu_seqlens)
        wrt = [x for x in leaves if x is not None]
        grads = iter(torch.autograd.grad((o, ht), wrt, (do.to(o.dtype), dht.to(ht.dtype)), allow_unused=True))
    out = []
    for x in leaves:
        g = next(grads) if x is not None else None
        out.append(torch.zeros_like(x) if g is None and x is not None else g)
    return tuple(out)

"""Device dispatch of the delta-line families: Triton kernels on CUDA, the torch chunked path elsewhere."""

from __future__ import annotations

from collections.abc import Callable

from .delta_torch import GATE_NONE, GATE_SCALAR, GATE_VECTOR, delta_line_forward

__all__ = ["GATE_NONE", "GATE_SCALAR", "GATE_VECTOR", "delta_line", "delta_line_backward"]


def delta_line(q, k, v, beta, gate, gate_kind, scale, initial_state=None, cu_seqlens=None, use_qk_l2norm=False):
    """Forward of delta_rule / gated_delta_rule / kda: (o in v's dtype, final state fp32 [N,H,K,V])."""
    return delta_line_forward(q, k, v, beta, gate, gate_kind, scale, initial_state, cu_seqlens, use_qk_l2norm)


def delta_line_backward(torch_backward: Callable, q, k, v, beta, gate, gate_kind, **kw):
    """Backward: the recomputing autograd backward of the torch path (CPU)."""
    gates = (beta,) if gate is None else (gate, beta)
    return torch_backward(q, k, v, *gates, **kw)

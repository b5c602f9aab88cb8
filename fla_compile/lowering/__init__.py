"""Implementations behind the ops: torch chunked paths (CPU and reference) and Triton kernels.

``gla_line`` picks the implementation for the GLA-line families from the inputs' device.
"""

from __future__ import annotations

from .gla_torch import gla_line_forward


def gla_line(q, k, v, gate, gate_kind, scale, initial_state=None, cu_seqlens=None):
    """Forward of linear_attn / retention / simple_gla / gla: (o, final state fp32)."""
    return gla_line_forward(q, k, v, gate, gate_kind, scale, initial_state, cu_seqlens)

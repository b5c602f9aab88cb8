"""Device dispatch of the delta-line families: Triton kernels on CUDA, the torch chunked path elsewhere.

The switch is the GLA line's (:func:`fla_compile.lowering.common.switch.triton_wanted`): ``FLA_COMPILE_TRITON=0`` runs
the torch path on CUDA too, ``interpret`` (with ``TRITON_INTERPRET=1``) runs the kernels on CPU tensors.
float64 anywhere among the inputs (verification probes, gradcheck) takes the torch path on every device. On
CUDA a short dense forward (T <= DECODE_MAX_T, decoding) runs the fused recurrent kernel;
the backward always runs the chunked kernels.
"""

from __future__ import annotations

from collections.abc import Callable

from ..common.gates import GATE_NONE, GATE_SCALAR, GATE_VECTOR
from ..common.switch import triton_wanted
from .torch_path import delta_line_forward

__all__ = [
    "GATE_NONE",
    "GATE_SCALAR",
    "GATE_VECTOR",
    "delta_decode",
    "delta_line",
    "delta_line_backward",
    "delta_saved_X",
]


def _use_triton(q, k, v, beta, gate, initial_state) -> bool:
    """Whether the Triton kernels run these inputs (see the module's docstring)."""
    if not triton_wanted(q, k, v, beta, gate, initial_state):
        return False
    try:  # Triton is not a dependency: without it CUDA tensors take the torch path too
        from . import triton_launch as delta_triton
    except ImportError:
        return False
    return delta_triton.supported(q, v)


def delta_saved_X(q, k, v, beta, gate, initial_state=None):
    """The buffer in which the delta ops keep the forward's WY inverses X for the backward: [B, T, H, 64] in v's
    dtype where the kernels run these inputs (kda: [2, B, T, H, 64], X and the gated q kᵀ), else an empty
    tensor (the torch path keeps nothing).

    Decided from the inputs' metadata and ``FLA_COMPILE_TRITON`` only, so the fake impl gives the same shape;
    see ``triton_launch.X_SLOTS``."""
    if _use_triton(q, k, v, beta, gate, initial_state):
        from . import triton_launch as delta_triton

        return delta_triton.saved_X_like(v, vector_gate=gate is not None and gate.dim() == 4)
    return v.new_empty(0)


def delta_line(
    q, k, v, beta, gate, gate_kind, scale, initial_state=None, cu_seqlens=None, use_qk_l2norm=False, X_out=None
):
    """Forward of delta_rule / gated_delta_rule / kda: (o in v's dtype, final state fp32 [N,H,K,V]).

    ``X_out`` (from :func:`delta_saved_X`): where the chunked kernels keep the WY inverses for the backward."""
    if not _use_triton(q, k, v, beta, gate, initial_state):
        return delta_line_forward(q, k, v, beta, gate, gate_kind, scale, initial_state, cu_seqlens, use_qk_l2norm)
    from . import triton_launch as delta_triton

    if cu_seqlens is None and q.shape[1] <= delta_triton.DECODE_MAX_T:
        delta_triton.no_X(X_out)
        return delta_triton.fused_recurrent(
            q, k, v, beta, gate, gate_kind, scale, initial_state, cu_seqlens, use_qk_l2norm
        )
    return delta_triton.chunk_forward(
        q, k, v, beta, gate, gate_kind, scale, initial_state, cu_seqlens, use_qk_l2norm, X_out=X_out
    )


def delta_decode(q, k, v, beta, gate, gate_kind, scale, initial_state=None, cu_seqlens=None, use_qk_l2norm=False):
    """Decoding (a few steps, T <= ``triton_launch.DECODE_MAX_T``): the fused recurrent kernel where the
    kernels run these inputs (what ``delta_line`` runs at such T), the torch chunked path otherwise."""
    if not _use_triton(q, k, v, beta, gate, initial_state):
        return delta_line_forward(q, k, v, beta, gate, gate_kind, scale, initial_state, cu_seqlens, use_qk_l2norm)
    from . import triton_launch as delta_triton

    return delta_triton.fused_recurrent(q, k, v, beta, gate, gate_kind, scale, initial_state, cu_seqlens, use_qk_l2norm)


def delta_line_backward(torch_backward: Callable, q, k, v, beta, gate, gate_kind, **kw):
    """Backward in the op's order (dq, dk, dv, [dgate,] dbeta, dh0): Triton on CUDA, else ``torch_backward``."""
    gates = (beta,) if gate is None else (gate, beta)
    saved = kw.pop("saved", None) or (None,)
    if not _use_triton(q, k, v, beta, gate, kw["initial_state"]):
        return torch_backward(q, k, v, *gates, **kw)
    from . import triton_launch as delta_triton

    dq, dk, dv, db, dg, dh0 = delta_triton.chunk_backward(
        q, k, v, beta, gate, gate_kind, kw["scale"], kw["initial_state"], kw["cu_seqlens"], kw["do"], kw["dht"],
        kw["use_qk_l2norm"], X=saved[0], X_from_op=True,
    )  # fmt: skip
    return (dq, dk, dv, db, dh0) if gate is None else (dq, dk, dv, dg, db, dh0)

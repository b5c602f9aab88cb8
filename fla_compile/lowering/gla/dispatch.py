"""Device dispatch of the GLA-line families (linear_attn, retention, simple_gla, gla).

``gla_line`` / ``gla_line_backward`` pick the implementation from the inputs: the Triton kernels
(:mod:`.triton_launch`, imported lazily) for CUDA tensors of a supported dtype, the torch chunked path
(:mod:`.torch_path`) otherwise.
"""

from __future__ import annotations

import torch

from ..common.switch import triton_wanted
from .torch_path import gla_line_forward


def gla_triton_enabled(q, k, v, *others) -> bool:
    """Whether the GLA-line Triton kernels run these inputs (CUDA, fp32/bf16/fp16, head dims up to
    ``triton_launch.MAX_HEAD_DIM``).

    ``others`` (gate, initial state; None skipped) must not be float64 either. ``FLA_COMPILE_TRITON=0``
    turns the kernels off; ``FLA_COMPILE_TRITON=interpret`` (with ``TRITON_INTERPRET=1``) also runs them
    on CPU tensors, which is how CI tests the ops' wiring.
    """
    if not triton_wanted(q, k, v, *others):
        return False
    try:
        from . import triton_launch as gla_triton
    except ImportError:
        return False
    return gla_triton.supported(q, k, v)


def gla_saved_A(q, k, v, gate, initial_state=None):
    """The buffer in which the gla op keeps the forward's A for its backward: [B, T, H, 64] in v's dtype
    where the kernels run these inputs, else an empty tensor (the torch path has no A to keep).

    Decided from the inputs' metadata and ``FLA_COMPILE_TRITON`` only (never from a config or a tuning
    run), so the op's fake impl calls it too and gives the same shape; see ``triton_launch.A_SLOTS``.
    """
    if gla_triton_enabled(q, k, v, gate, initial_state):
        from . import triton_launch as gla_triton

        return gla_triton.saved_A_like(q, v)
    return v.new_empty(0)


def gla_line(q, k, v, gate, gate_kind, scale, initial_state=None, cu_seqlens=None, A_out=None, bonus=None):
    """Forward of linear_attn / retention / simple_gla / gla / rwkv6: (o, final state fp32).

    ``A_out`` (gla, rwkv6, from :func:`gla_saved_A`): where the chunked kernels keep A for the backward.
    ``bonus`` (rwkv6): u [H, K]; the output then reads the state before each step, plus the bonus term.
    """
    if gla_triton_enabled(q, k, v, gate, initial_state, bonus):
        from . import triton_launch as gla_triton

        return gla_triton.forward(q, k, v, gate, gate_kind, scale, initial_state, cu_seqlens, A_out=A_out, bonus=bonus)
    return gla_line_forward(q, k, v, gate, gate_kind, scale, initial_state, cu_seqlens, bonus=bonus)


def gla_decode(q, k, v, gate, gate_kind, scale, initial_state=None, cu_seqlens=None, bonus=None):
    """Decoding (a few steps, T <= ``triton_launch.DECODE_MAX_T``): the fused recurrent kernel where the
    kernels run these inputs (what ``gla_line`` runs at such T), the torch chunked path otherwise."""
    if gla_triton_enabled(q, k, v, gate, initial_state, bonus):
        from . import triton_launch as gla_triton

        return gla_triton.fused_recurrent(q, k, v, gate, gate_kind, scale, initial_state, cu_seqlens, bonus=bonus)
    return gla_line_forward(q, k, v, gate, gate_kind, scale, initial_state, cu_seqlens, bonus=bonus)


def gla_line_backward(
    q, k, v, gate, gate_kind, scale, initial_state, cu_seqlens, do, dht, A=None, bonus=None, need_dgate=True
):
    """Backward of ``gla_line``: (dq, dk, dv, dgate or None, dh0 or None), and dbonus last with ``bonus``.
    ``dht`` None: the final state took no gradient. ``need_dgate`` False: the kernels may skip a scalar gate's
    gradient (None in its place); the torch path computes it anyway.

    Triton chunked backward on CUDA (reusing the forward's ``A`` when it holds A for the backward's chunk
    size, else recomputing it); elsewhere autograd through the torch chunked path.
    """
    if gla_triton_enabled(q, k, v, gate, initial_state, bonus):
        from . import triton_launch as gla_triton

        return gla_triton.chunk_backward(
            q, k, v, gate, gate_kind, scale, initial_state, cu_seqlens, do, dht, A=A, bonus=bonus, need_dgate=need_dgate
        )
    inputs = [q, k, v, gate, initial_state] + ([bonus] if bonus is not None else [])
    with torch.enable_grad():
        leaves = [x.detach().requires_grad_() if x is not None else None for x in inputs]
        o, ht = gla_line_forward(
            *leaves[:4], gate_kind, scale, leaves[4], cu_seqlens, bonus=leaves[5] if bonus is not None else None
        )
        wrt = [x for x in leaves if x is not None]
        outs, douts = ((o,), (do.to(o.dtype),)) if dht is None else ((o, ht), (do.to(o.dtype), dht.to(ht.dtype)))
        grads = iter(torch.autograd.grad(outs, wrt, douts, allow_unused=True))
    out = []
    for x in leaves:
        g = next(grads) if x is not None else None
        out.append(torch.zeros_like(x) if g is None and x is not None else g)
    return tuple(out)

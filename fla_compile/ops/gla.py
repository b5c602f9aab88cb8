"""The GLA-line ops: linear_attn, retention, simple_gla, gla.

Public functions take [B, T, H, D] inputs (GQA: q and k may have fewer heads than v),
log-space gates, an optional initial state [N, H, K, V] and packed ``cu_seqlens``; they
return ``(o, final_state)`` with ``final_state`` None unless asked for. Underneath each is
one ``torch.ops.fla_compile.<family>`` custom op.
"""

from __future__ import annotations

import torch

from ..lowering import gla_line, gla_line_backward, gla_triton_enabled
from ..lowering.gla_torch import GATE_NONE, GATE_SCALAR, GATE_VECTOR
from ._checks import check_gate, check_qkv, check_state, fail
from ._library import OpSpec, recompute_backward, register


def _linear_attn_fwd(q, k, v, *, scale, initial_state, cu_seqlens):
    return gla_line(q, k, v, None, GATE_NONE, scale, initial_state, cu_seqlens)


def _retention_fwd(q, k, v, decay, *, scale, initial_state, cu_seqlens):
    B, T, H = v.shape[:3]
    g = decay.reshape(1, 1, H).expand(B, T, H)
    return gla_line(q, k, v, g, GATE_SCALAR, scale, initial_state, cu_seqlens)


def _simple_gla_fwd(q, k, v, g, *, scale, initial_state, cu_seqlens):
    return gla_line(q, k, v, g, GATE_SCALAR, scale, initial_state, cu_seqlens)


def _gla_fwd(q, k, v, gk, *, scale, initial_state, cu_seqlens):
    return gla_line(q, k, v, gk, GATE_VECTOR, scale, initial_state, cu_seqlens)


def _line_backward(forward, gate_kind, per_head_gate=False):
    """The family's backward: the Triton chunked kernels on CUDA, autograd through ``forward`` elsewhere."""
    fallback = recompute_backward(forward)

    def backward(q, k, v, *gates, scale, initial_state, cu_seqlens, do, dht):
        if not gla_triton_enabled(q, k, v, *gates, initial_state):
            return fallback(
                q, k, v, *gates, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens, do=do, dht=dht
            )
        gate = gates[0] if gates else None
        if per_head_gate:  # retention: one decay per head, broadcast over [B, T, H]
            B, T, H = v.shape[:3]
            gate = gate.reshape(1, 1, H).expand(B, T, H)
        dq, dk, dv, dg, dh0 = gla_line_backward(q, k, v, gate, gate_kind, scale, initial_state, cu_seqlens, do, dht)
        if per_head_gate:
            dg = dg.sum((0, 1))
        return [dq, dk, dv, *((dg,) if gates else ()), dh0]

    return backward


SPECS = [
    OpSpec("linear_attn", (), _linear_attn_fwd, _line_backward(_linear_attn_fwd, GATE_NONE), "S = S + k v^T"),
    OpSpec(
        "retention",
        ("decay",),
        _retention_fwd,
        _line_backward(_retention_fwd, GATE_SCALAR, per_head_gate=True),
        "S = exp(decay_h) S + k v^T",
    ),
    OpSpec(
        "simple_gla", ("g",), _simple_gla_fwd, _line_backward(_simple_gla_fwd, GATE_SCALAR), "S = exp(g_t) S + k v^T"
    ),
    OpSpec("gla", ("gk",), _gla_fwd, _line_backward(_gla_fwd, GATE_VECTOR), "S = diag(exp(gk_t)) S + k v^T"),
]
for _spec in SPECS:
    register(_spec)


def _prepare(op, q, k, v, scale, initial_state, cu_seqlens):
    B, T, H, K, V = check_qkv(op, q, k, v, cu_seqlens)
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    check_state(op, initial_state, N, H, K, V, q.device)
    scale = K**-0.5 if scale is None else float(scale)
    return B, T, H, K, V, scale


def _result(o, ht, output_final_state):
    return o, (ht if output_final_state else None)


def linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """o_t = scale * S_t^T q_t with S_t = S_{t-1} + k_t v_t^T.

    Args:
        q, k: [B, T, HK, K]; v: [B, T, H, V] with H a multiple of HK.
        scale: defaults to K ** -0.5.
        initial_state: [N, H, K, V] (N = B, or the number of packed sequences).
        output_final_state: also return S_T as [N, H, K, V] fp32.
        cu_seqlens: [N + 1] offsets of packed sequences (B must be 1).
    Returns:
        (o [B, T, H, V] in v's dtype, final state or None).
    """
    *_, scale = _prepare("linear_attn", q, k, v, scale, initial_state, cu_seqlens)
    o, ht = torch.ops.fla_compile.linear_attn(q, k, v, scale, initial_state, cu_seqlens)
    return _result(o, ht, output_final_state)


def retention(q, k, v, decay, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """S_t = gamma_h S_{t-1} + k_t v_t^T with log(gamma) = ``decay`` (a float or a tensor [H])."""
    B, T, H, K, V, scale = _prepare("retention", q, k, v, scale, initial_state, cu_seqlens)
    decay = torch.as_tensor(decay, device=q.device)
    decay = decay.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
    if decay.dim() == 0:
        decay = decay.expand(H)
    if tuple(decay.shape) != (H,):
        fail("retention", f"decay must be a float or a tensor [H] = [{H}], got shape {tuple(decay.shape)}")
    o, ht = torch.ops.fla_compile.retention(q, k, v, decay, scale, initial_state, cu_seqlens)
    return _result(o, ht, output_final_state)


def simple_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """S_t = exp(g_t) S_{t-1} + k_t v_t^T, g: [B, T, H] log-space gate per head (Mamba2/SSD, Lightning)."""
    B, T, H, K, V, scale = _prepare("simple_gla", q, k, v, scale, initial_state, cu_seqlens)
    check_gate("simple_gla", "g", g, (B, T, H))
    o, ht = torch.ops.fla_compile.simple_gla(q, k, v, g, scale, initial_state, cu_seqlens)
    return _result(o, ht, output_final_state)


def gla(q, k, v, gk, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T, gk: [B, T, H, K] log-space gate per key dim."""
    B, T, H, K, V, scale = _prepare("gla", q, k, v, scale, initial_state, cu_seqlens)
    check_gate("gla", "gk", gk, (B, T, H, K))
    o, ht = torch.ops.fla_compile.gla(q, k, v, gk, scale, initial_state, cu_seqlens)
    return _result(o, ht, output_final_state)

"""The GLA-line ops: linear_attn, retention, simple_gla, gla.

Public functions take [B, T, H, D] inputs (GQA: q and k may have fewer heads than v),
log-space gates, an optional initial state [N, H, K, V] and packed ``cu_seqlens``; they
return ``(o, final_state)`` with ``final_state`` None unless asked for. Underneath each is
one ``torch.ops.fla_compile.<family>`` custom op returning ``(o, final_state)``; gla's returns a third,
non-differentiable output: its intra-chunk matrix A, kept for the backward (``lowering.gla_saved_A``).
"""

from __future__ import annotations

import numbers

import torch

from ..lowering import FAMILIES, gla_saved_A, gla_triton_enabled
from ._checks import check_gate, check_qkv, check_scale, check_state, fail
from ._docs import documented
from ._library import OpSpec, call, recompute_backward, register

_LINEAR_ATTN, _RETENTION, _SIMPLE_GLA, _GLA = (FAMILIES[f] for f in ("linear_attn", "retention", "simple_gla", "gla"))


def _linear_attn_fwd(q, k, v, *, scale, initial_state, cu_seqlens):
    return _LINEAR_ATTN.forward(q, k, v, None, _LINEAR_ATTN.gate_kind, scale, initial_state, cu_seqlens)


def _retention_fwd(q, k, v, decay, *, scale, initial_state, cu_seqlens):
    B, T, H = v.shape[:3]
    g = decay.reshape(1, 1, H).expand(B, T, H)
    return _RETENTION.forward(q, k, v, g, _RETENTION.gate_kind, scale, initial_state, cu_seqlens)


def _simple_gla_fwd(q, k, v, g, *, scale, initial_state, cu_seqlens):
    return _SIMPLE_GLA.forward(q, k, v, g, _SIMPLE_GLA.gate_kind, scale, initial_state, cu_seqlens)


def _gla_fwd(q, k, v, gk, *, scale, initial_state, cu_seqlens, saved=(None,)):
    return _GLA.forward(q, k, v, gk, _GLA.gate_kind, scale, initial_state, cu_seqlens, A_out=saved[0])


def _gla_saved(q, k, v, gk, *, initial_state, cu_seqlens):
    """gla keeps its intra-chunk matrix A for the backward (see ``lowering.gla_saved_A``)."""
    return (gla_saved_A(q, k, v, gk, initial_state),)


def _line_backward(forward, family, per_head_gate=False):
    """The family's backward: the Triton chunked kernels on CUDA, autograd through ``forward`` elsewhere."""
    fallback = recompute_backward(forward)

    def backward(q, k, v, *gates, scale, initial_state, cu_seqlens, do, dht, saved=(), gate_grads=(True,)):
        if not gla_triton_enabled(q, k, v, *gates, initial_state):
            return fallback(
                q, k, v, *gates, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens, do=do, dht=dht
            )
        gate = gates[0] if gates else None
        if per_head_gate:  # retention: one decay per head, broadcast over [B, T, H]
            B, T, H = v.shape[:3]
            gate = gate.reshape(1, 1, H).expand(B, T, H)
        A = saved[0] if saved else None  # gla: the forward's A, used when it holds A for this backward
        need_dg = bool(gates) and gate_grads[0]
        dq, dk, dv, dg, dh0 = family.backward(
            q, k, v, gate, family.gate_kind, scale, initial_state, cu_seqlens, do, dht, A=A, need_dgate=need_dg
        )
        if per_head_gate and dg is not None:
            dg = dg.sum((0, 1))
        return [dq, dk, dv, *((dg,) if gates else ()), dh0]

    return backward


SPECS = [
    OpSpec("linear_attn", (), _linear_attn_fwd, _line_backward(_linear_attn_fwd, _LINEAR_ATTN), "S = S + k v^T"),
    OpSpec(
        "retention",
        ("decay",),
        _retention_fwd,
        _line_backward(_retention_fwd, _RETENTION, per_head_gate=True),
        "S = exp(decay_h) S + k v^T",
        optional_gate_grads=True,
    ),
    OpSpec(
        "simple_gla",
        ("g",),
        _simple_gla_fwd,
        _line_backward(_simple_gla_fwd, _SIMPLE_GLA),
        "S = exp(g_t) S + k v^T",
        optional_gate_grads=True,
    ),
    OpSpec(
        "gla",
        ("gk",),
        _gla_fwd,
        _line_backward(_gla_fwd, _GLA),
        "S = diag(exp(gk_t)) S + k v^T",
        saved=("A",),
        saved_like=_gla_saved,
    ),
]
for _spec in SPECS:
    register(_spec)


def _prepare(op, q, k, v, scale, initial_state, cu_seqlens):
    B, T, H, K, V = check_qkv(op, q, k, v, cu_seqlens)
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    check_state(op, initial_state, N, H, K, V, q.device)
    return B, T, H, K, V, check_scale(op, scale, K)


def _result(o, ht, output_final_state):
    return o, (ht if output_final_state else None)


def _documented(summary: str, gate: str = ""):
    return documented(summary, gate)


@_documented("Linear attention: o_t = scale * S_t^T q_t with S_t = S_{t-1} + k_t v_t^T.")
def linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    *_, scale = _prepare("linear_attn", q, k, v, scale, initial_state, cu_seqlens)
    o, ht = call("linear_attn", q, k, v, scale, initial_state, cu_seqlens)
    return _result(o, ht, output_final_state)


@_documented(
    "Retention (RetNet, MiniMax lightning): S_t = gamma_h S_{t-1} + k_t v_t^T, o_t = scale * S_t^T q_t.",
    "decay: log(gamma), a float or a float tensor [H] (one per head of v).",
)
def retention(q, k, v, decay, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    B, T, H, K, V, scale = _prepare("retention", q, k, v, scale, initial_state, cu_seqlens)
    if isinstance(decay, torch.Tensor):
        if not decay.is_floating_point():
            fail("retention", f"decay must be a float or a float tensor [H], got {decay.dtype}")
    elif isinstance(decay, bool) or not isinstance(decay, numbers.Real):
        fail("retention", f"decay must be a float or a tensor [H] = [{H}], got {type(decay).__name__}")
    decay = torch.as_tensor(decay, device=q.device)
    decay = decay.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
    if decay.dim() == 0:
        decay = decay.expand(H)
    if tuple(decay.shape) != (H,):
        fail("retention", f"decay must be a float or a tensor [H] = [{H}], got shape {tuple(decay.shape)}")
    o, ht = call("retention", q, k, v, decay, scale, initial_state, cu_seqlens)
    return _result(o, ht, output_final_state)


@_documented(
    "Scalar-gated linear attention (Mamba2/SSD, Lightning): S_t = exp(g_t) S_{t-1} + k_t v_t^T, "
    "o_t = scale * S_t^T q_t.",
    "g: [B, T, H] log-space gate per step and head of v; in q's dtype or float32.",
)
def simple_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    B, T, H, K, V, scale = _prepare("simple_gla", q, k, v, scale, initial_state, cu_seqlens)
    check_gate("simple_gla", "g", g, (B, T, H), q)
    o, ht = call("simple_gla", q, k, v, g, scale, initial_state, cu_seqlens)
    return _result(o, ht, output_final_state)


@_documented(
    "Gated linear attention: S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T, o_t = scale * S_t^T q_t.",
    "gk: [B, T, H, K] log-space gate per step, head of v and key dim; in q's dtype or float32.",
)
def gla(q, k, v, gk, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    B, T, H, K, V, scale = _prepare("gla", q, k, v, scale, initial_state, cu_seqlens)
    check_gate("gla", "gk", gk, (B, T, H, K), q)
    o, ht, _ = call("gla", q, k, v, gk, scale, initial_state, cu_seqlens)  # _: A, for the backward
    return _result(o, ht, output_final_state)

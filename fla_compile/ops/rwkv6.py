"""The rwkv6 op (RWKV-6 time mixing): gla with a bonus u, the output reading the state before each step.

    o_t = scale * (S_{t-1} + diag(u) k_t v_t^T)^T r_t,    S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T

One ``torch.ops.fla_compile.rwkv6`` custom op, run by the GLA line's kernels (``bonus=u``): like gla's, it
returns a third, non-differentiable output, the intra-chunk matrix A (with the bonus on its diagonal), kept
for the backward.
"""

from __future__ import annotations

import torch

from ..lowering import FAMILIES, gla_saved_A, gla_triton_enabled
from ._checks import check_gate, fail
from ._docs import documented
from ._library import OpSpec, call, recompute_backward, register
from .gla import _prepare, _result

_RWKV6 = FAMILIES["rwkv6"]


def _rwkv6_fwd(q, k, v, w, u, *, scale, initial_state, cu_seqlens, saved=(None,)):
    return _RWKV6.forward(q, k, v, w, _RWKV6.gate_kind, scale, initial_state, cu_seqlens, A_out=saved[0], bonus=u)


def _rwkv6_saved(q, k, v, w, u, *, initial_state, cu_seqlens):
    return (gla_saved_A(q, k, v, w, initial_state),)


_fallback = recompute_backward(_rwkv6_fwd)


def _rwkv6_bwd(q, k, v, w, u, *, scale, initial_state, cu_seqlens, do, dht, saved=()):
    """The Triton chunked backward on CUDA, autograd through the torch chunked path elsewhere."""
    if not gla_triton_enabled(q, k, v, w, initial_state, u):
        return _fallback(q, k, v, w, u, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens, do=do, dht=dht)
    A = saved[0] if saved else None
    dq, dk, dv, dw, dh0, du = _RWKV6.backward(
        q, k, v, w, _RWKV6.gate_kind, scale, initial_state, cu_seqlens, do, dht, A=A, bonus=u
    )
    return [dq, dk, dv, dw, du, dh0]


SPEC = OpSpec(
    "rwkv6",
    ("w", "u"),
    _rwkv6_fwd,
    _rwkv6_bwd,
    "S = diag(exp(w_t)) S + k v^T, o = scale (S_{t-1} + diag(u) k v^T)^T r",
    saved=("A",),
    saved_like=_rwkv6_saved,
)
register(SPEC)


@documented(
    "RWKV-6 time mixing: o_t = scale * (S_{t-1} + diag(u) k_t v_t^T)^T r_t, "
    "S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T (the output reads the state before the step).",
    "w: [B, T, H, K] log-space decay per step, head of v and key dim; in r's dtype or float32.",
    before=("u: [H, K] the bonus of the current token, per head of v and key dim; in r's dtype or float32.",),
)
def rwkv6(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    B, T, H, K, V, scale = _prepare("rwkv6", r, k, v, scale, initial_state, cu_seqlens)
    check_gate("rwkv6", "w", w, (B, T, H, K), r)
    if not isinstance(u, torch.Tensor):
        fail("rwkv6", f"u must be a tensor [H, K] = {(H, K)}, got {type(u).__name__}")
    if tuple(u.shape) != (H, K):
        fail("rwkv6", f"u must have shape [H, K] = {(H, K)} (H = heads of v), got {tuple(u.shape)}")
    if not u.is_floating_point() or u.dtype not in (r.dtype, torch.float32):
        fail("rwkv6", f"u must be {str(r.dtype).replace('torch.', '')} or float32, got {u.dtype}")
    if u.device != r.device:
        fail("rwkv6", f"u is on {u.device} but r is on {r.device}")
    o, ht, _ = call("rwkv6", r, k, v, w, u, scale, initial_state, cu_seqlens)  # _: A, for the backward
    return _result(o, ht, output_final_state)

"""Canonical definitions of the delta-rule line: delta_rule, gated_delta_rule, kda.

Plain fp32 (or fp64) time loops over [B, T, H, D] inputs, the oracle of every test and of
verification:

    S_t = (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T                        (delta_rule)
    S_t = exp(g_t) (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T               (gated_delta_rule)
    S_t = (I - b_t k_t k_t^T) diag(exp(gk_t)) S_{t-1} + b_t k_t v_t^T        (kda)
    o_t = scale * S_t^T q_t

written as people write them: decay the state, predict v from k, write b times the error.
beta is [B, T, H]; g is [B, T, H] and gk is [B, T, H, K], both log space. GQA: q and k have
HK heads, v, beta and the gates H (a multiple of HK); head h reads q/k head h // (H // HK).
``use_qk_l2norm`` L2-normalizes q and k over the last dim first (x * rsqrt(sum x^2 + 1e-6),
in the compute dtype, as transformers' Qwen3-Next and Kimi-Linear functions do); ``scale``
(default K ** -0.5) is applied after the norm. These conventions match transformers'
``torch_recurrent_gated_delta_rule`` and ``recurrent_kimi_delta_attention``.
"""

from __future__ import annotations

import torch


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x * rsqrt(sum(x^2) + eps) over the last dim (the FLA / transformers convention)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def _expand_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    if x.shape[2] == heads:
        return x
    return x.repeat_interleave(heads // x.shape[2], dim=2)


def delta_loop(
    q, k, v, beta, g=None, gk=None, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm=False
):
    """The general delta-rule loop. ``g`` [B,T,H] (per head) or ``gk`` [B,T,H,K] (per key dim)."""
    B, T, _, K = q.shape
    H, V = v.shape[2], v.shape[3]
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k = _expand_heads(q, H).to(dtype), _expand_heads(k, H).to(dtype)
    v, beta = v.to(dtype), beta.to(dtype)
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    scale = K**-0.5 if scale is None else scale
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype).clone()
    o = q.new_empty(B, T, H, V)
    for t in range(T):
        if g is not None:
            S = S * g[:, t].to(dtype).exp()[..., None, None]
        if gk is not None:
            S = S * gk[:, t].to(dtype).exp()[..., None]
        k_t = k[:, t]
        pred = torch.einsum("bhk,bhkv->bhv", k_t, S)  # what S already predicts for k_t
        delta = beta[:, t, :, None] * (v[:, t] - pred)
        S = S + k_t[..., None] * delta[..., None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S)
    return o, (S if output_final_state else None)


def delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm=False):
    return delta_loop(q, k, v, beta, None, None, scale, initial_state, output_final_state, use_qk_l2norm)


def gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm=False):
    return delta_loop(q, k, v, beta, g, None, scale, initial_state, output_final_state, use_qk_l2norm)


def kda(q, k, v, gk, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm=False):
    return delta_loop(q, k, v, beta, None, gk, scale, initial_state, output_final_state, use_qk_l2norm)

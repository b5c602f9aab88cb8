"""Canonical definition of rwkv6 (RWKV-6 "Finch" time mixing): gla with a bonus, reading S_{t-1}.

A plain fp32 (or fp64) time loop over [B, T, H, D] inputs, the oracle of every rwkv6 test and of
verification:

    o_t = scale * (S_{t-1} + diag(u) k_t v_t^T)^T r_t        (the output reads the previous state,
    S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T                   plus the current token with bonus u)

w is a log-space gate [B, T, H, K], u a bonus [H, K] per head of v. GQA: r and k may have fewer
heads than v; head h of v reads head h // (HV // HK) of r and k.
"""

from __future__ import annotations

import torch

from .gla import _expand_heads


def rwkv6(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False):
    B, T, _, K = r.shape
    H, V = v.shape[2], v.shape[3]
    dtype = torch.float64 if r.dtype == torch.float64 else torch.float32
    r, k = _expand_heads(r, H).to(dtype), _expand_heads(k, H).to(dtype)
    v, w, u = v.to(dtype), w.to(dtype), u.to(dtype)
    scale = K**-0.5 if scale is None else scale
    S = r.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype).clone()
    o = v.new_empty(B, T, H, V)
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", r[:, t] * scale, S + u[None, :, :, None] * kv)
        S = S * w[:, t].exp()[..., None] + kv
    return o, (S if output_final_state else None)

"""Canonical definitions of the GLA line: linear_attn, retention, simple_gla, gla.

Plain fp32 (or fp64) time loops over [B, T, H, D] inputs. They are the oracle of every
test and of verification, and the documentation of the math:

    S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T        (gla; the others are special cases)
    o_t = scale * S_t^T q_t

Gates are in log space. GQA: q and k may have fewer heads than v; head h of v reads head
h // (HV // HK) of q and k.
"""

from __future__ import annotations

import torch


def _expand_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    if x.shape[2] == heads:
        return x
    return x.repeat_interleave(heads // x.shape[2], dim=2)


def gla(q, k, v, gk=None, g=None, scale=None, initial_state=None, output_final_state=False):
    """The general GLA-line loop. ``gk`` is [B,T,H,K] (per key), ``g`` is [B,T,H] (per head)."""
    B, T, _, K = q.shape
    H, V = v.shape[2], v.shape[3]
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k = _expand_heads(q, H).to(dtype), _expand_heads(k, H).to(dtype)
    v = v.to(dtype)
    scale = K**-0.5 if scale is None else scale
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype).clone()
    o = v.new_empty(B, T, H, V)
    for t in range(T):
        if gk is not None:
            S = S * gk[:, t].to(dtype).exp()[..., None]
        if g is not None:
            S = S * g[:, t].to(dtype).exp()[..., None, None]
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S)
    return o, (S if output_final_state else None)


def linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False):
    return gla(q, k, v, scale=scale, initial_state=initial_state, output_final_state=output_final_state)


def retention(q, k, v, decay, scale=None, initial_state=None, output_final_state=False):
    """``decay``: log of gamma, a float or a tensor [H]."""
    B, T, H = v.shape[:3]
    decay = torch.as_tensor(decay, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)
    g = decay.to(q.device).expand(H).expand(B, T, H)
    return gla(q, k, v, g=g, scale=scale, initial_state=initial_state, output_final_state=output_final_state)


def simple_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
    return gla(q, k, v, g=g, scale=scale, initial_state=initial_state, output_final_state=output_final_state)

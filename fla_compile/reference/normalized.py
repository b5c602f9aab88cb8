"""Canonical definition of normalized linear attention (Katharopoulos et al., Based, Rebased).

A plain fp32 (or fp64) time loop over [B, T, H, D] feature-mapped q, k and values v, the oracle of tests:

    S_t = S_{t-1} + k_t v_t^T,  z_t = z_{t-1} + k_t,  o_t = S_t^T q_t / (z_t . q_t + eps)
"""

from __future__ import annotations

import torch


def normalized_linear_attn(q, k, v, eps=1e-6, initial_state=None, output_final_state=False):
    """(o [B, T, H, V], (S_T, z_T) or None); ``initial_state`` (S0 [B, H, K, V], z0 [B, H, K])."""
    B, T, H, K = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)
    S = q.new_zeros(B, H, K, v.shape[-1], dtype=acc) if initial_state is None else initial_state[0].to(acc)
    z = q.new_zeros(B, H, K, dtype=acc) if initial_state is None else initial_state[1].to(acc)
    outs = []
    for t in range(T):
        q_t, k_t, v_t = q[:, t].to(acc), k[:, t].to(acc), v[:, t].to(acc)
        S = S + k_t[..., :, None] * v_t[..., None, :]
        z = z + k_t
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t, S) / ((z * q_t).sum(-1, keepdim=True) + eps))
    o = torch.stack(outs, 1).to(v.dtype)
    return o, ((S, z) if output_final_state else None)

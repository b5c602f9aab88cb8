"""One place that calls the family op for a ``Family``: every rewrite lowers through it."""

from __future__ import annotations

import torch

from ..ir import Family


def run_family(
    family: Family,
    q,
    k,
    v,
    *,
    gate=None,
    beta=None,
    decay=None,
    scale=1.0,
    initial_state=None,
    l2norm=False,
    bonus=None,
):
    """(o, final state) of ``torch.ops.fla_compile.<family>`` on [B, T, H, D] inputs.

    gate: log-space, [B,T,H] (scalar families) or [B,T,H,K] (gla, kda); hgrn takes x as ``v`` [B, T, D],
    ``gate`` [B, T, D] and a state [B, D] (q, k unused). decay: retention's
    log-gamma, a float or a tensor [H]. l2norm: normalize q and k first (delta ops do it in-kernel).
    bonus: rwkv6's u [H, K].
    """
    ops = torch.ops.fla_compile
    h0 = initial_state
    if family == Family.HGRN:  # elementwise: v is x [B, T, D], gate g [B, T, D], the state [B, D]
        return ops.hgrn(v, gate, h0, None)
    if family == Family.MAMBA:  # v is u, k is B, q is C, gate is dt, decay is A [D, N]; the state [B, D, N]
        return ops.mamba(v, gate, decay, k, q, h0, None)
    if family in (Family.DELTA_RULE, Family.GATED_DELTA_RULE, Family.KDA):
        # their third output is X, the WY inverses kept for the backward
        if family == Family.DELTA_RULE:
            return ops.delta_rule(q, k, v, beta, scale, h0, None, l2norm)[:2]
        return getattr(ops, family.value)(q, k, v, gate, beta, scale, h0, None, l2norm)[:2]
    if l2norm:
        q, k = torch.nn.functional.normalize(q, dim=-1, eps=1e-6), torch.nn.functional.normalize(k, dim=-1, eps=1e-6)
    if family == Family.LINEAR_ATTN:
        return ops.linear_attn(q, k, v, scale, h0, None)
    if family == Family.RETENTION and gate is None:
        H = v.shape[2]
        decay = torch.as_tensor(decay, device=q.device).to(torch.float64 if q.dtype == torch.float64 else torch.float32)
        return ops.retention(q, k, v, decay.expand(H).contiguous(), scale, h0, None)
    if family == Family.RWKV6:  # bonus: u [H, K]
        return ops.rwkv6(q, k, v, gate, bonus, scale, h0, None)[:2]
    if family == Family.GLA:
        return ops.gla(q, k, v, gate, scale, h0, None)[:2]  # its third output is A, kept for the backward
    return ops.simple_gla(q, k, v, gate, scale, h0, None)  # simple_gla, or retention held in a tensor

"""Normalized linear attention (Katharopoulos et al., Based, Rebased): the numerator and the normalizer by one op call.

    o_t = (sum_{s<=t} (q_t . k_s) v_s) / (sum_{s<=t} q_t . k_s + eps)

q and k are the feature-mapped queries and keys (elu + 1, Based's Taylor map, Rebased's squared map: the maps
stay in the caller's graph, where Inductor fuses them). The normalizer is a linear attention over a column
of ones, so one ``linear_attn`` call on [v, 1] computes both: its state is [S | z], z the running sum of keys.
"""

from __future__ import annotations

import torch

from ._checks import fail
from .gla import linear_attn


def normalized_linear_attn(
    q, k, v, eps=1e-6, initial_state=None, output_final_state=False, cu_seqlens=None
):  # fmt: skip
    """Normalized linear attention on [B, T, H, D] feature-mapped q, k and values v.

    Args:
        q, k: [B, T, HK, K] feature-mapped queries and keys (non-negative features keep the normalizer positive).
        v: [B, T, H, V] values.
        eps: added to the normalizer q_t . z_t before the division.
        initial_state: optional (S0 [N, H, K, V], z0 [N, H, K]) fp32: the state and the key sum before step 1.
        output_final_state: also return (S_T, z_T).
        cu_seqlens: packed sequences (B == 1), as every op.
    Returns:
        (o [B, T, H, V] in v's dtype, (S_T, z_T) or None).
    Raises:
        ValueError naming the argument for bad input (shapes, dtypes, eps, the state's parts).
    """
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
        fail("normalized_linear_attn", f"eps must be a non-negative float, got {eps!r}")
    if not isinstance(v, torch.Tensor) or v.dim() != 4:
        fail("normalized_linear_attn", f"v must be a [B, T, H, V] tensor, got {getattr(v, 'shape', type(v))}")
    V = v.shape[-1]
    h0 = None
    if initial_state is not None:
        if not (isinstance(initial_state, (tuple, list)) and len(initial_state) == 2):
            fail("normalized_linear_attn", "initial_state must be a pair (S0 [N, H, K, V], z0 [N, H, K])")
        S0, z0 = initial_state
        if not (
            isinstance(S0, torch.Tensor) and isinstance(z0, torch.Tensor) and tuple(z0.shape) == tuple(S0.shape[:-1])
        ):
            fail("normalized_linear_attn", f"initial_state's z0 must be S0's shape without its last dim, got "
                 f"{tuple(getattr(S0, 'shape', ()))} and {tuple(getattr(z0, 'shape', ()))}")  # fmt: skip
        h0 = torch.cat([S0, z0[..., None].to(S0.dtype)], -1)
    va = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], -1)
    o, ht = linear_attn(q, k, va, scale=1.0, initial_state=h0, output_final_state=output_final_state,
                        cu_seqlens=cu_seqlens)  # fmt: skip
    num, den = o[..., :V], o[..., V:]
    acc = torch.promote_types(v.dtype, torch.float32)  # the division in fp32 at least (fp64 stays fp64)
    out = (num.to(acc) / (den.to(acc) + eps)).to(v.dtype)
    return out, ((ht[..., :V], ht[..., V]) if output_final_state else None)

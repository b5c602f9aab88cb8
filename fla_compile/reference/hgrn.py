"""Canonical definition of the elementwise scan family: hgrn.

A plain fp32 (or fp64) time loop over [B, T, D] inputs, the oracle of every test and of
verification:

    h_t = exp(g_t) * h_{t-1} + x_t        (elementwise over D; g in log space)
    o_t = h_t

It covers HGRN, RecurrentGemma's RG-LRU scan (a_t = exp(g_t), x_t already scaled by
sqrt(1 - a_t^2) and the input gate), LRU/S5-style real diagonal scans and any decay given as a
probability a_t (g_t = log a_t; a_t = 0 resets the state). Heads are folded into D: the state of
one sequence is a vector [D], and [B, T, H, D] is [B, T, H * D] for this family.
"""

from __future__ import annotations

import torch


def hgrn(x, g, initial_state=None, output_final_state=False):
    """(o [B, T, D] in x's dtype, final state [B, D] fp32/fp64 or None)."""
    B, T, D = x.shape
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    h = x.new_zeros(B, D, dtype=dtype) if initial_state is None else initial_state.to(dtype).clone()
    o = x.new_empty(B, T, D)
    for t in range(T):
        h = g[:, t].to(dtype).exp() * h + x[:, t].to(dtype)
        o[:, t] = h
    return o, (h if output_final_state else None)

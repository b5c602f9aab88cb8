"""Canonical definition of Mamba's selective scan (Mamba1, S6): the ``mamba`` family.

A plain fp32 (or fp64) time loop, the oracle of every test and the documentation of the math. Per
channel d and state n:

    h_t[d, n] = exp(dt_t[d] * A[d, n]) * h_{t-1}[d, n] + u_t[d] * B_t[n]
    y_t[d]    = sum_n C_t[n] * h_t[d, n]

u is the input already scaled by the step size (Mamba's dt * x); the skip D * x, dt's bias and softplus
and the z gate are elementwise work around the scan (``fla_compile.ops.mamba`` applies them).
Layout: u, dt [B, T, D]; A [D, N]; B, C [B, T, N] (one group, shared by every channel); the state
[B, D, N]. The family is hgrn over the D * N elements with the decay and input factored, read out by C.
"""

from __future__ import annotations

import torch


def selective_scan(u, dt, A, B, C, initial_state=None, output_final_state=False):
    """(y [B, T, D] in u's dtype, final state [B, D, N] fp32 / fp64 or None)."""
    Bsz, T, D = u.shape
    N = A.shape[-1]
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, dt, A, B, C = (x.to(dtype) for x in (u, dt, A, B, C))
    h = u.new_zeros(Bsz, D, N) if initial_state is None else initial_state.to(dtype).clone()
    y = u.new_empty(Bsz, T, D)
    for t in range(T):
        h = torch.exp(dt[:, t, :, None] * A) * h + u[:, t, :, None] * B[:, t, None, :]
        y[:, t] = (h * C[:, t, None, :]).sum(-1)
    return y, (h if output_final_state else None)

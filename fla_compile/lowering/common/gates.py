"""The gate kinds every line takes, the ids its Triton kernels take them as (a constexpr), and the host side of
a scalar gate's gradient as the dq/dk kernel leaves it."""

from __future__ import annotations

GATE_NONE, GATE_SCALAR, GATE_VECTOR = "none", "scalar", "vector"
GATE_IDS = {GATE_NONE: 0, GATE_SCALAR: 1, GATE_VECTOR: 2}


def scalar_dg_per_step(dg):
    """[B, T, H] from the [B, T, H, NK] a scalar gate's chunk-local gradient comes in from the dq/dk kernel (one
    column per K block of its grid): the columns summed, or the one column as a view (no kernel)."""
    return dg.sum(-1) if dg.shape[-1] > 1 else dg.view(dg.shape[:-1])

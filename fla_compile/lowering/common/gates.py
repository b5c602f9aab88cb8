"""The gate kinds every line takes, the ids its Triton kernels take them as (a constexpr), and the host side of
a scalar gate's gradient as the dq/dk kernel leaves it."""

from __future__ import annotations

GATE_NONE, GATE_SCALAR, GATE_VECTOR = "none", "scalar", "vector"
GATE_IDS = {GATE_NONE: 0, GATE_SCALAR: 1, GATE_VECTOR: 2}
GATE_NONE_ID, GATE_SCALAR_ID, GATE_VECTOR_ID = GATE_IDS[GATE_NONE], GATE_IDS[GATE_SCALAR], GATE_IDS[GATE_VECTOR]
# Two more forms of a scalar gate, which the launchers choose: one decay per head (retention's: the kernels form its
# in-chunk cumsum from the step count, no [T, H] gate) and a scalar gate the kernels scan in each chunk (no cumsum
# pass). Every kernel branch for a scalar gate takes all three (``gating.scalar_gate_id``).
GATE_HEAD_DECAY_ID, GATE_SCANNED_ID = 3, 4
SCALAR_GATE_IDS = (GATE_IDS[GATE_SCALAR], GATE_HEAD_DECAY_ID, GATE_SCANNED_ID)


def scalar_dg_per_step(dg):
    """[B, T, H] from the [B, T, H, NK] a scalar gate's chunk-local gradient comes in from the dq/dk kernel (one
    column per K block of its grid): the columns summed, or the one column as a view (no kernel)."""
    return dg.sum(-1) if dg.shape[-1] > 1 else dg.view(dg.shape[:-1])

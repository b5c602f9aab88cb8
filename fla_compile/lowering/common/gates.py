"""The gate kinds every line takes, and the ids its Triton kernels take them as (a constexpr)."""

from __future__ import annotations

GATE_NONE, GATE_SCALAR, GATE_VECTOR = "none", "scalar", "vector"
GATE_IDS = {GATE_NONE: 0, GATE_SCALAR: 1, GATE_VECTOR: 2}

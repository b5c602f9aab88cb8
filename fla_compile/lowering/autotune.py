"""Config selection for the GLA-line kernels (placeholder: defaults only)."""

from __future__ import annotations


def get_config(kernel, gate_kind, K, V, dtype, T, device):
    if kernel == "decode":
        return {"BV": 32, "num_warps": 4}
    return {"BT": 16 if gate_kind == "vector" else 64, "BK": 64, "BV": 64, "num_warps": 4, "num_stages": 2}

"""Implementations behind the ops, laid out by kernel line.

- :mod:`.common`: what every line uses: chunk metadata, gate kinds, Triton launch helpers, the
  ``FLA_COMPILE_TRITON`` switch and the config system (autotune, per-arch tables).
- :mod:`.gla`: the GLA line (linear_attn, retention, simple_gla, gla): torch chunked path, Triton
  forward / backward / decode kernels and their launchers, the device dispatch.
- :mod:`.delta`: the delta line (delta_rule, gated_delta_rule, kda), laid out the same way.

Triton is imported lazily (by the dispatch, only where the kernels run the inputs).
"""

from __future__ import annotations

from .common.switch import triton_mode, triton_wanted
from .gla.dispatch import gla_line, gla_line_backward, gla_saved_A, gla_triton_enabled

__all__ = ["gla_line", "gla_line_backward", "gla_saved_A", "gla_triton_enabled", "triton_mode", "triton_wanted"]

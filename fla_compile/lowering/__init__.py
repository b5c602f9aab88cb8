"""Implementations behind the ops, laid out by kernel line.

- :mod:`.common`: what every line uses: chunk metadata, gate kinds, Triton launch helpers, the
  ``FLA_COMPILE_TRITON`` switch and the config system (autotune, per-arch tables in ``configs/``).
- :mod:`.gla`: the GLA line (linear_attn, retention, simple_gla, gla): torch chunked path, Triton
  forward / backward / decode kernels and their launchers, the device dispatch.
- :mod:`.delta`: the delta line (delta_rule, gated_delta_rule, kda), laid out the same way.
- :mod:`.scan`: the scan line (hgrn, an elementwise state; mamba, the selective scan over [D, N] tiles):
  torch scan, Triton forward / backward.

:data:`FAMILIES` maps each family to its line's entry points; the ops (``fla_compile.ops``) call
them. Triton is imported lazily, by the dispatch, only where the kernels run the inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .common.gates import GATE_NONE, GATE_SCALAR, GATE_VECTOR
from .common.switch import triton_mode, triton_wanted
from .delta.dispatch import delta_decode, delta_line, delta_line_backward, delta_saved_X
from .gla.dispatch import gla_decode, gla_line, gla_line_backward, gla_saved_A, gla_triton_enabled
from .scan.dispatch import (
    scan_backward,
    scan_decode,
    scan_forward,
    selective_backward,
    selective_decode,
    selective_forward,
)


@dataclass(frozen=True)
class Family:
    """A family's entry points, each dispatching on the inputs (Triton kernels on CUDA, torch elsewhere).

    ``forward``: (o, final state), the chunked kernels (the fused recurrent one for short T);
    ``backward``: the gradients (GLA line: ``gla_line_backward``'s signature; delta line: the op's order,
    given the torch fallback; hgrn: ``scan_backward(x, g, h0, cu_seqlens, o, do, dht)``; mamba:
    ``selective_backward(u, dt, A, B, C, h0, cu_seqlens, do, dht)``); ``decode``:
    a few steps by the fused recurrent kernel. ``gate_kind`` is what the family passes the line (see
    :mod:`.common.gates`; the scan line's gate is elementwise, taken as given).
    """

    line: str
    gate_kind: str
    forward: Callable
    backward: Callable
    decode: Callable


_GLA = dict(line="gla", forward=gla_line, backward=gla_line_backward, decode=gla_decode)
_DELTA = dict(line="delta", forward=delta_line, backward=delta_line_backward, decode=delta_decode)

FAMILIES: dict[str, Family] = {
    "linear_attn": Family(gate_kind=GATE_NONE, **_GLA),
    "retention": Family(gate_kind=GATE_SCALAR, **_GLA),
    "simple_gla": Family(gate_kind=GATE_SCALAR, **_GLA),
    "gla": Family(gate_kind=GATE_VECTOR, **_GLA),
    "rwkv6": Family(gate_kind=GATE_VECTOR, **_GLA),  # gla with a bonus u (the entry points' ``bonus=``)
    "delta_rule": Family(gate_kind=GATE_NONE, **_DELTA),
    "gated_delta_rule": Family(gate_kind=GATE_SCALAR, **_DELTA),
    "kda": Family(gate_kind=GATE_VECTOR, **_DELTA),
    "hgrn": Family(
        line="scan", gate_kind=GATE_VECTOR, forward=scan_forward, backward=scan_backward, decode=scan_decode
    ),
    "mamba": Family(
        line="scan",
        gate_kind=GATE_VECTOR,
        forward=selective_forward,
        backward=selective_backward,
        decode=selective_decode,
    ),
}

__all__ = [
    "FAMILIES",
    "Family",
    "gla_line",
    "gla_line_backward",
    "delta_saved_X",
    "gla_saved_A",
    "gla_triton_enabled",
    "triton_mode",
    "triton_wanted",
]

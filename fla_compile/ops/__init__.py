"""Public ops, each backed by a ``torch.ops.fla_compile.<family>`` custom op."""

from .delta import delta_rule, gated_delta_rule, kda
from .gla import gla, linear_attn, retention, simple_gla
from .hgrn import hgrn
from .mamba import mamba

__all__ = ["delta_rule", "gated_delta_rule", "gla", "hgrn", "kda", "linear_attn", "mamba", "retention", "simple_gla"]

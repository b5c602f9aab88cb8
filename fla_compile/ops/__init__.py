"""Public ops, each backed by a ``torch.ops.fla_compile.<family>`` custom op."""

from .gla import gla, linear_attn, retention, simple_gla

__all__ = ["gla", "linear_attn", "retention", "simple_gla"]

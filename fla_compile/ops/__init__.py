"""Public ops, each backed by a ``torch.ops.fla_compile.<family>`` custom op."""

from .delta import delta_rule, gated_delta_rule, kda
from .gla import gla, linear_attn, retention, simple_gla
from .hgrn import hgrn
from .loss import linear_cross_entropy, linear_kl_div
from .mamba import mamba
from .normalized import normalized_linear_attn
from .rwkv6 import rwkv6

__all__ = [
    "delta_rule",
    "gated_delta_rule",
    "gla",
    "hgrn",
    "kda",
    "linear_attn",
    "linear_cross_entropy",
    "linear_kl_div",
    "mamba",
    "normalized_linear_attn",
    "retention",
    "rwkv6",
    "simple_gla",
]

"""Hugging Face transformers integration: ``patch(model)`` binds known linear-attention layers to our ops.

See ``registry.py`` for the layers we know and ``patch.py`` for what patching does.
"""

from .patch import LayerGroup, PatchReport, is_patched, patch, unpatch
from .registry import RULES, Binding, Rule

__all__ = ["RULES", "Binding", "LayerGroup", "PatchReport", "Rule", "is_patched", "patch", "unpatch"]

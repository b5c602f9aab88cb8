"""Hugging Face transformers integration: ``patch(model)`` binds known linear-attention layers to our ops.

    report = fla_compile.hf.patch(model)   # in place; proven per layer class; returns a PatchReport
    print(report)                          # which classes, how many layers, which op, probe errors
    fla_compile.hf.unpatch(model)          # exactly what was there before
    fla_compile.hf.generate(model, ids, n) # greedy decoding, each step replayed from one CUDA graph

``registry.py`` lists the layer classes we know (gated delta net, KDA, lightning attention,
Mamba2 SSD, Mamba1's selective scan, RecurrentGemma's RG-LRU: 19 architectures) and their math
kind; ``gated_delta.py``, ``kda.py``, ``lightning.py``, ``ssd.py``, ``selective.py`` and
``rglru.py`` bind each kind to the ops; ``patch.py`` applies a binding per
instance after proving it on random probes. The layers keep transformers' own projections,
conv, caches and gated norms; only the recurrence (and the causal conv1d, which must keep
packed sequences apart) runs our code.

Not here yet: our own kernels for the causal conv1d (ours is the same torch conv, plus a
masked shifted sum for packed rows) and the gated RMSNorm. They are worth writing only if
they are a measurable share of a patched layer's time on the GPU; that has not been
measured. The probes compile our kernels at their own small shapes on first use.
"""

from .decode import GraphDecoder, generate
from .patch import LayerGroup, PatchReport, is_patched, patch, unpatch
from .registry import RULES, Binding, Rule

__all__ = [
    "RULES",
    "Binding",
    "GraphDecoder",
    "LayerGroup",
    "PatchReport",
    "Rule",
    "generate",
    "is_patched",
    "patch",
    "unpatch",
]

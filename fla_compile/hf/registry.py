"""Which transformers modules run which linear-attention math, as data.

One ``Rule`` per layer class: the class name (what ``patch`` matches on), the model types
that use it, and the math ``kind``; one ``Binding`` per kind (in ``gated_delta.py``,
``kda.py``, ``lightning.py``, ``ssd.py``, ``selective.py``, ``rglru.py``) says how that math
is bound to our ops. Adding a model whose layer runs known math is one line here.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping


@dataclasses.dataclass(frozen=True)
class Rule:
    """A transformers layer class and the math its torch fallback computes."""

    cls: str  # module class name, e.g. "Qwen3NextGatedDeltaNet"
    model_types: tuple[str, ...]  # config.model_type values whose models hold it
    kind: str  # key of BINDING_MODULES


@dataclasses.dataclass(frozen=True)
class Binding:
    """How one math kind is bound to our ops.

    Either ``functions`` (names the layer's forward calls as module globals, or holds as
    instance attributes in older transformers, mapped to our replacements; one name of each
    group in ``required`` must be found) or ``forward`` (a replacement forward, for layers whose recurrence is inline).
    Either way ours is called through an adapter with the original's signature, read at patch
    time (``signature.adapt``), so arguments transformers renames are bound by role, not dropped.
    ``probes[name](original, ours, device) -> rel err`` proves one function against the
    layer's own; the whole layer is also probed (original vs patched forward, fp32).
    """

    kind: str
    path: str  # what the patched layer runs, for the report and the log line
    functions: Mapping[str, Callable] = dataclasses.field(default_factory=dict)
    required: tuple[tuple[str, ...], ...] = ()  # each: one of these names must be found
    probes: Mapping[str, Callable] = dataclasses.field(default_factory=dict)
    forward: Callable | None = None
    probe_args: Callable = None  # x -> positional args of a probe call of the layer (default: (x,))
    twin: Callable = None  # layer -> its fp32 copy for the layer probe (default: common.fp32_copy)
    refresh: Callable = None  # fixes up a layer of an fp32 copy of a model in place (default: nothing)
    # per swapped name ("forward" for a replacement forward): parameters of the original that ours
    # may ignore; any other parameter ours does not take leaves the layer unpatched (signature.adapt)
    ignore: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    width: Callable = None  # layer -> input width of the layer probe (default: hidden_size, else a Linear's)


RULES: tuple[Rule, ...] = (
    # gated delta rule: S = exp(g) (I - b k k^T) S + b k v^T
    Rule("Qwen3NextGatedDeltaNet", ("qwen3_next",), "gated_delta"),
    Rule("Qwen3_5GatedDeltaNet", ("qwen3_5", "qwen3_5_text"), "gated_delta"),
    Rule("Qwen3_5MoeGatedDeltaNet", ("qwen3_5_moe", "qwen3_5_moe_text"), "gated_delta"),
    Rule("OlmoHybridGatedDeltaNet", ("olmo_hybrid",), "gated_delta"),
    Rule("Qwen4ExpTextGatedDeltaNet", ("qwen4_exp", "qwen4_exp_text"), "gated_delta"),
    # KDA: S = (I - b k k^T) diag(exp(gk)) S + b k v^T
    Rule("KimiLinearDeltaAttention", ("kimi_linear",), "kda"),
    Rule("BailingHybridDeltaAttention", ("bailing_hybrid",), "kda"),
    Rule("Glm5NextTextLinearAttention", ("glm5_next", "glm5_next_text"), "kda"),
    # lightning attention: S = exp(-slope_h) S + k v^T, o = S^T q (no scale)
    Rule("MiniMaxLightningAttention", ("minimax",), "lightning"),
    # SSD (Mamba2): S = exp(A_h dt) S + B (dt x)^T, o = S^T C + D x
    Rule("Mamba2Mixer", ("mamba2",), "ssd"),
    Rule("BambaMixer", ("bamba",), "ssd"),
    Rule("FalconH1Mixer", ("falcon_h1",), "ssd"),
    Rule("NemotronHMamba2Mixer", ("nemotron_h",), "ssd"),
    Rule("GraniteMoeHybridMambaLayer", ("granitemoehybrid",), "ssd"),
    Rule("Zamba2MambaMixer", ("zamba2",), "ssd"),
    # selective scan (Mamba1, S6): h = exp(dt A) * h + (dt x) B^T per channel, y = h C + D x
    Rule("MambaMixer", ("mamba",), "mamba"),
    Rule("FalconMambaMixer", ("falcon_mamba",), "mamba"),
    Rule("JambaMambaMixer", ("jamba",), "mamba"),
    # RG-LRU (RecurrentGemma): h = a * h + x per channel, a = 0 at a document start
    Rule("RecurrentGemmaRglru", ("recurrent_gemma",), "rglru"),
)

BINDING_MODULES = {
    "gated_delta": "fla_compile.hf.gated_delta",
    "kda": "fla_compile.hf.kda",
    "lightning": "fla_compile.hf.lightning",
    "ssd": "fla_compile.hf.ssd",
    "mamba": "fla_compile.hf.selective",
    "rglru": "fla_compile.hf.rglru",
}

RULES_BY_CLASS: dict[str, Rule] = {r.cls: r for r in RULES}
RULES_BY_MODEL_TYPE: dict[str, tuple[Rule, ...]] = {}
for _r in RULES:
    for _t in _r.model_types:
        RULES_BY_MODEL_TYPE[_t] = (*RULES_BY_MODEL_TYPE.get(_t, ()), _r)


def rule_for(module) -> Rule | None:
    """The rule of a module instance (matched on its class name), or None if it is not ours."""
    return RULES_BY_CLASS.get(type(module).__name__)


def binding(kind: str) -> Binding:
    """The binding of a math kind (imported on first use)."""
    return importlib.import_module(BINDING_MODULES[kind]).BINDING

"""``patch(model)`` / ``unpatch(model)``: bind the linear-attention layers of a transformers model to our ops.

For every module whose class is in the registry, the binding of its math kind is applied to
the instance (never to the class or the modeling module): either the layer's own forward with
the recurrence / conv functions it calls swapped for ours (``rebind``), or a replacement
forward. Ours is always reached through an adapter with the original's signature, read at
patch time (``signature.adapt``): arguments are bound by role whatever this transformers
version names them, and a parameter we do not know leaves the class unpatched, with the reason.

Before a layer class is patched, each swapped function is proven against the layer's own
function on small random fp32 probes, and the whole layer (original vs patched forward, on an
fp32 copy) on a random input. Then the decode proof drives the layer the way the model does:
``model.generate`` with the model's own cache class, a prefill and two cached decode steps,
every step's logits against the unpatched model (fp32). A failed proof leaves the class
unpatched and the report says why. ``unpatch`` restores exactly what was there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import types
import warnings

import torch

from ..numerics import rel_err
from . import common, rebind, registry, signature

logger = logging.getLogger("fla_compile.hf")

_RECORD = "_fla_compile_patch"
_MISSING = object()


@dataclasses.dataclass
class LayerGroup:
    """All layers of one module class in a model, and what happened to them."""

    cls: str
    kind: str
    layers: int
    patched: bool
    path: str = ""
    reason: str = ""  # why it was left alone, when it was
    swapped: tuple[str, ...] = ()  # functions (or "forward") now bound to ours
    probe_err: dict[str, float] = dataclasses.field(default_factory=dict)

    def line(self) -> str:
        if not self.patched:
            return f"{self.cls} x{self.layers} [{self.kind}]: left unpatched ({self.reason})"
        worst = max((e for k, e in self.probe_err.items() if k != "decode"), default=0.0)
        what = ", ".join(self.swapped)
        line = f"{self.cls} x{self.layers} [{self.kind}]: {self.path}; swapped {what}; probe rel err {worst:.1e}"
        if "decode" in self.probe_err:
            line += f"; decode proof (generate, cached) rel err {self.probe_err['decode']:.1e}"
        return line


@dataclasses.dataclass
class PatchReport:
    """What ``patch`` did to a model: one group per layer class it knows."""

    model: str
    groups: list[LayerGroup] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def layers_patched(self) -> int:
        return sum(g.layers for g in self.groups if g.patched)

    @property
    def ok(self) -> bool:
        """True when every known layer class was patched."""
        return all(g.patched for g in self.groups)

    def __str__(self) -> str:
        head = f"fla_compile.patch({self.model}): {self.layers_patched} layer(s) patched"
        if not self.groups:
            head += " (no known linear-attention layers)"
        return "\n".join([head, *("  " + g.line() for g in self.groups), *("  note: " + n for n in self.notes)])


@dataclasses.dataclass
class _Undo:
    slot: str  # where the patched forward went: "forward", or accelerate's "_old_forward"
    forward: object  # what that slot held on the instance before patching, or _MISSING
    attrs: dict  # instance attribute name -> previous value (or _MISSING)


def _slot(module) -> str:
    """The instance attribute holding the forward to patch. accelerate's hooks replace
    ``forward`` by a wrapper that calls ``_old_forward``: patch under the hook, keep the hook."""
    if "_hf_hook" in module.__dict__ and "_old_forward" in module.__dict__:
        return "_old_forward"
    return "forward"


def _base_forward(module):
    """The function the module's forward runs now (its class's, unless an instance override)."""
    fwd = module.__dict__.get(_slot(module), _MISSING)
    if fwd is _MISSING:
        return type(module).forward
    if isinstance(fwd, types.MethodType) and fwd.__self__ is module:
        return fwd.__func__
    return None


def _plan(module, binding):
    """(patched forward function or None, {name: original}, {name: ours, adapted}, {instance attr: ours}, reason).

    Ours is always wrapped in an adapter with the original's signature (``signature.adapt``);
    an original parameter the adapter cannot bind is a reason to leave the layer alone.
    """
    cls = type(module).__name__
    base = _base_forward(module)
    if base is None or not isinstance(base, types.FunctionType):
        return None, {}, {}, {}, "its forward is replaced on the instance by something we do not know"
    try:
        if binding.forward is not None:
            fwd = _adapt(base, binding.forward, binding, "forward", f"{cls}.forward")
            return fwd, {"forward": base}, {"forward": fwd}, {}, ""
        names = rebind.global_names(base)
        overrides, originals, attrs = {}, {}, {}
        for name, ours in binding.functions.items():
            if name in names and rebind.lookup_global(base, name) is not None:
                originals[name] = rebind.lookup_global(base, name)
                overrides[name] = _adapt(originals[name], ours, binding, name, name)
            elif callable(getattr(module, name, None)) and not isinstance(getattr(module, name), torch.nn.Module):
                originals[name] = getattr(module, name)
                attrs[name] = _adapt(originals[name], ours, binding, name, f"{cls}.{name}")
    except signature.Refused as e:
        return None, {}, {}, {}, str(e)
    missing = [" / ".join(alts) for alts in binding.required if not any(n in originals for n in alts)]
    if missing:
        return (
            None,
            {},
            {},
            {},
            f"its forward does not call {', '.join(missing)} (a transformers version we do not know)",
        )
    fwd = rebind.rebind_globals(base, overrides) if overrides else None
    return fwd, originals, {**overrides, **attrs}, attrs, ""


def _reference(fn):
    """The torch function a swapped name stands for. transformers >= 5.17 decorates its torch
    fallbacks (``torch_chunk_gated_delta_rule``, ...) with a dispatcher that calls a kernel package
    when one is importable (flash-linear-attention: different argument names, tf32 dots, no fp64),
    and 5.25 puts that in a ``kernels`` function module; the proofs compare with the math, the
    decorated torch function (``rebind.innermost``)."""
    return rebind.innermost(fn) if callable(fn) else fn


def _reference_forward(module, originals, attrs):
    """(forward, {attr: function}) of the layer as transformers' torch path, for the proofs' reference:
    the layer's own forward with every dispatching name bound to the torch function it wraps."""
    base = _base_forward(module)
    refs = {n: _reference(f) for n, f in originals.items() if _reference(f) is not f}
    ref_attrs = {n: refs[n] for n in attrs if n in refs}
    glob = {n: f for n, f in refs.items() if n not in attrs}
    fwd = rebind.rebind_globals(base, glob) if glob and isinstance(base, types.FunctionType) else None
    return fwd, ref_attrs


def _adapt(original, ours, binding, name, what):
    if signature.is_catch_all(ours):  # a stand-in that takes and ignores anything
        return ours
    return signature.adapt(original, ours, ignore=binding.ignore.get(name, ()), what=what)


def _prove(module, binding, fwd, originals, bound, attrs):
    """Probe every swapped function, then the whole layer; return ({name: rel err}, reason)."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    if device.type == "meta":
        return {}, "its weights are on the meta device; nothing to probe"
    errs = {}
    with torch.no_grad():
        for name, original in originals.items():
            probe = binding.probes.get(name)
            ours = bound.get(name)  # ours behind its adapter, as the layer will call it
            if probe is None or ours is None:
                continue
            try:  # a forward's probe gets the layer itself, a function's probe the layer's function
                errs[name] = probe(module if name == "forward" else _reference(original), ours, device)
            except Exception as e:  # a probe that cannot run proves nothing
                return errs, f"probe of {name} raised {type(e).__name__}: {e}"
            if not errs[name] < common.PROBE_TOL:
                return errs, f"probe of {name}: rel err {errs[name]:.2e} >= {common.PROBE_TOL:g}"
        try:
            errs["layer"] = _layer_probe(
                module, binding, fwd, attrs, device, _reference_forward(module, originals, attrs)
            )
        except Exception as e:
            return errs, f"layer probe raised {type(e).__name__}: {e}"
        if not errs["layer"] < common.PROBE_TOL:
            return errs, f"layer probe: rel err {errs['layer']:.2e} >= {common.PROBE_TOL:g}"
    return errs, ""


def _hidden_size(module) -> int:
    size = getattr(module, "hidden_size", None)
    if isinstance(size, int):
        return size
    lin = next(m for m in module.modules() if isinstance(m, torch.nn.Linear))
    return lin.in_features


def _layer_probe(module, binding, fwd, attrs, device, reference=(None, {})) -> float:
    """Original (``reference``: transformers' torch path, see ``_reference_forward``) vs patched
    forward of an fp32 copy of the layer on a random input, no cache."""
    twin = binding.twin(module) if binding.twin is not None else common.fp32_copy(module)
    twin.__dict__.pop(_RECORD, None)
    gen = common.generator(device)
    x = common.randn(gen, 2, 13, (binding.width or _hidden_size)(module), device=device)
    args = (binding.probe_args or (lambda h: (h,)))(x)
    base = _base_forward(twin)
    ref_fwd, ref_attrs = reference
    saved = {name: twin.__dict__.get(name, _MISSING) for name in ref_attrs}
    for name, f in ref_attrs.items():
        setattr(twin, name, f)
    ref = (ref_fwd or base)(twin, *args)
    for name, f in saved.items():
        if f is _MISSING:
            delattr(twin, name)
        else:
            setattr(twin, name, f)
    for name, ours in attrs.items():
        setattr(twin, name, ours)
    out = (fwd or base)(twin, *args)
    first = lambda o: o[0] if isinstance(o, tuple) else o
    return rel_err(first(out), first(ref))


def patch(model: torch.nn.Module, verify: bool = True) -> PatchReport:
    """Bind the known linear-attention layers of ``model`` to fla_compile's ops, in place.

    Layers are matched by class (see ``registry.RULES``); each binding is proven on random
    probes first and left off, with the reason in the report, if a proof fails. The last proof
    is a short greedy ``generate`` (prompt of 6 tokens, 2 rows, one left-padded; 3 new tokens)
    of the model itself when its weights are fp32, else of an fp32 copy when that has at most
    ``MODEL_PROOF_MAX_PARAMS`` parameters (300M; env ``FLA_COMPILE_HF_PROOF_MAX_PARAMS``).
    Larger low-precision models, models on the meta device and models that do not generate skip
    it (a note in the report says so) and rely on the per-layer proofs. ``verify=False`` skips
    every proof. Unknown modules are left alone. Calling it twice is harmless.
    Returns a ``PatchReport``; one INFO line on the ``fla_compile.hf`` logger says which path
    each layer kind now runs.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    report = PatchReport(type(model).__name__ + (f" ({model_type})" if model_type else ""))
    by_class: dict[type, list] = {}
    planned: dict[type, tuple] = {}  # classes whose binding is planned (and proven per layer)
    references: dict[type, tuple] = {}  # their torch path, the decode proof's reference
    for m in model.modules():
        if registry.rule_for(m) is not None:
            by_class.setdefault(type(m), []).append(m)
    for cls, mods in by_class.items():
        rule = registry.rule_for(mods[0])
        binding = registry.binding(rule.kind)
        group = LayerGroup(cls.__name__, rule.kind, len(mods), False, binding.path)
        report.groups.append(group)
        todo = [m for m in mods if _RECORD not in m.__dict__]
        if not todo:
            group.patched, group.swapped = True, ("already patched",)
            continue
        fwd, originals, bound, attrs, reason = _plan(todo[0], binding)
        if not reason and verify:
            group.probe_err, reason = _prove(todo[0], binding, fwd, originals, bound, attrs)
        if reason:
            group.reason = reason
            continue
        planned[cls] = (group, binding, todo, fwd, attrs)
        references[cls] = _reference_forward(todo[0], originals, attrs)
        group.swapped = tuple(originals) if binding.forward is None else ("forward",)
    if verify and planned:
        note = _decode_proof(model, planned, references)
        if note:
            report.notes.append(note)
    for group, _, todo, fwd, attrs in planned.values():
        if group.reason:
            group.swapped = ()
            continue
        for m in todo:
            _apply(m, fwd, attrs)
        group.patched = True
    found = {cls.__name__ for cls in by_class}
    for rule in registry.RULES_BY_MODEL_TYPE.get(model_type, ()):
        if rule.cls not in found:
            report.notes.append(
                f"model_type {model_type!r} uses {rule.cls} layers, but this model has none "
                f"(no such layers configured, or renamed in this transformers version)"
            )
    logger.info(_log_line(report))
    return report


# ---------------------------------------------------------------------------------------------
# the decode proof: the whole model, the way it is used (its forward, its cache class, generate)
# ---------------------------------------------------------------------------------------------

# an fp32 copy of a model larger than this (parameters) is not made for the decode proof
MODEL_PROOF_MAX_PARAMS = int(os.environ.get("FLA_COMPILE_HF_PROOF_MAX_PARAMS", 300_000_000))
PROOF_PROMPT, PROOF_STEPS = 6, 3  # prompt length; generated tokens (the prefill's and 2 cached decode steps)


def _decode_proof(model, planned, references=None) -> str:
    """Greedy ``generate`` with the model's own cache: a prefill and two cached decode steps, the
    logits of every step compared (fp32) with the unpatched model's, for each planned layer class.

    A class whose logits differ by ``common.PROBE_TOL`` or more, or whose patched run raises, gets
    its reason and stays unpatched. Runs on the model itself when its weights are fp32, else on an
    fp32 copy (up to ``MODEL_PROOF_MAX_PARAMS`` parameters; larger models skip it, relying on the
    per-layer proofs, and the report notes that). The reference runs transformers' torch path
    (``references``: names that dispatch to a kernel package bound to the torch functions they
    wrap). Returns a note for the report, or "".
    """
    what = type(model).__name__
    if not callable(getattr(model, "generate", None)) or not _can_generate(model):
        return f"decode proof skipped: {what} does not generate (patch the causal LM to have it)"
    params = list(model.parameters())
    if not params or any(p.device.type == "meta" for p in params):
        return "decode proof skipped: the weights are on the meta device"
    floats = [t for t in (*params, *model.buffers()) if t.is_floating_point()]
    if all(t.dtype == torch.float32 for t in floats):
        target, layers = model, {cls: todo for cls, (_, _, todo, _, _) in planned.items()}
    else:
        n = sum(p.numel() for p in params)
        if n > MODEL_PROOF_MAX_PARAMS:
            return (
                f"decode proof skipped: an fp32 copy of {n / 1e9:.1f}B parameters is over "
                f"MODEL_PROOF_MAX_PARAMS ({MODEL_PROOF_MAX_PARAMS / 1e6:.0f}M); the per-layer proofs ran"
            )
        target = common.fp32_copy(model)
        unpatch(target)  # the reference is transformers' own path throughout
        layers = {cls: [m for m in target.modules() if type(m) is cls] for cls in planned}
        for cls, (_, binding, _, _, _) in planned.items():
            for m in layers[cls] if binding.refresh is not None else ():
                binding.refresh(m)
    modes = [(m, m.training) for m in target.modules()]
    target.eval()
    try:
        run = _generator_of(target)
        reference = {cls: r for cls, r in (references or {}).items() if r[0] is not None or r[1]}
        for cls, (ref_fwd, ref_attrs) in reference.items():
            for m in layers[cls]:
                _apply(m, ref_fwd, ref_attrs)
        try:
            ref = run()
        except Exception as e:  # transformers' own path fails: there is nothing to compare with
            return f"decode proof skipped: the unpatched {what}.generate raised {type(e).__name__}: {e}"
        finally:
            for cls in reference:
                for m in layers[cls]:
                    _restore(m)
        for cls, (group, _, _, fwd, attrs) in planned.items():
            for m in layers[cls]:
                _apply(m, fwd, attrs)
            try:
                out = run()
            except Exception as e:
                group.reason = (
                    f"decode proof ({what}.generate, prefill + 2 cached steps) raised {type(e).__name__}: {e}"
                )
                continue
            finally:
                for m in layers[cls]:
                    _restore(m)
            errs = [rel_err(o, r) for o, r in zip(out, ref)] if len(out) == len(ref) else [float("inf")]
            group.probe_err["decode"] = max(errs)
            if not group.probe_err["decode"] < common.PROBE_TOL:
                step = next(i for i, e in enumerate(errs) if not e < common.PROBE_TOL)
                name = "prefill" if step == 0 else f"cached decode step {step}"
                group.reason = (
                    f"decode proof ({what}.generate with its own cache): {name} logits rel err "
                    f"{errs[step]:.2e} >= {common.PROBE_TOL:g}"
                )
    finally:
        for m, training in modes:
            m.training = training
    return ""


def _can_generate(model) -> bool:
    try:
        return bool(model.can_generate())
    except Exception:
        return False


def _generator_of(model):
    """A function running a fixed greedy generate on ``model``; returns each step's logits [B, V], fp32."""
    config = getattr(model, "config", None)
    emb = model.get_input_embeddings()
    vocab = emb.num_embeddings
    device = emb.weight.device
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, PROOF_PROMPT), generator=gen).to(device)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # one row left-padded: the padding path is driven as well
    pad = getattr(config, "pad_token_id", None)
    pad = pad if isinstance(pad, int) else 0

    def run():
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=PROOF_STEPS,
                min_new_tokens=PROOF_STEPS,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=pad,
            )
        return [x.float() for x in out.logits]

    return run


def _apply(module, fwd, attrs) -> None:
    slot = _slot(module)
    undo = _Undo(slot, module.__dict__.get(slot, _MISSING), {})
    for name, ours in attrs.items():
        undo.attrs[name] = module.__dict__.get(name, _MISSING)
        object.__setattr__(module, name, ours)
    if fwd is not None:
        object.__setattr__(module, slot, types.MethodType(fwd, module))
    module.__dict__[_RECORD] = undo


def unpatch(model: torch.nn.Module) -> int:
    """Restore every layer ``patch`` changed in ``model``; returns how many. Harmless if none."""
    return sum(_restore(m) for m in model.modules())


def _restore(m) -> bool:
    undo = m.__dict__.pop(_RECORD, None)
    if undo is None:
        return False
    for name, old in [*undo.attrs.items(), (undo.slot, undo.forward)]:
        if old is _MISSING:
            m.__dict__.pop(name, None)
        else:
            object.__setattr__(m, name, old)
    return True


def is_patched(module: torch.nn.Module) -> bool:
    return _RECORD in module.__dict__


def _log_line(report: PatchReport) -> str:
    if not report.groups:
        return f"fla_compile.patch: {report.model}: no known linear-attention layers, nothing patched"
    parts = []
    for g in report.groups:
        where = g.path if g.patched else f"transformers' own path ({g.reason})"
        parts.append(f"{g.layers} x {g.cls} -> {where}")
    return f"fla_compile.patch: {report.model}: " + "; ".join(parts)

"""The registry and the patch machinery: unknown modules, failed proofs, instance-only changes."""

from __future__ import annotations

import logging

import pytest
import torch

import fla_compile.hf as fh
from fla_compile.hf import registry, ssd
from tests.compare import rel

from .archs import ARCHS
from .conftest import OpCalls, load_tiny
from .test_patch import _prompt

MAMBA2 = next(a for a in ARCHS if a.name == "Mamba2")


def test_rules_are_data():
    assert len({r.cls for r in registry.RULES}) == len(registry.RULES)
    for r in registry.RULES:
        b = registry.binding(r.kind)
        assert b.kind == r.kind and b.path
        assert (b.forward is None) != (not b.functions)
        for name in b.probes:
            assert name == "forward" or name in b.functions
    assert {a.layer for a in ARCHS} == {r.cls for r in registry.RULES}


def test_unknown_modules_are_left_alone():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())
    report = fh.patch(model)
    assert report.groups == [] and report.layers_patched == 0
    assert "no known" in str(report)
    assert not any(fh.is_patched(m) for m in model.modules())
    assert fh.unpatch(model) == 0


def test_failed_proof_leaves_layer_unpatched(tmp_path, monkeypatch, caplog):
    model = load_tiny(MAMBA2, tmp_path)
    monkeypatch.setitem(ssd.BINDING.probes, "mamba2_chunk_scan", lambda original, ours, device: 0.5)
    with caplog.at_level(logging.INFO, logger="fla_compile.hf"):
        report = fh.patch(model)
    (group,) = report.groups
    assert not group.patched and "rel err 5.00e-01" in group.reason
    assert "left unpatched" in str(report) and not report.ok
    assert not any(fh.is_patched(m) for m in model.modules())
    assert len(caplog.records) == 1 and "transformers' own path" in caplog.records[0].getMessage()


def test_broken_binding_is_caught_by_the_layer_probe(tmp_path, monkeypatch):
    """A binding whose functions pass their own probes but are wired wrong fails the layer probe."""
    model = load_tiny(MAMBA2, tmp_path)

    def wrong(*args, **kwargs):  # reads the previous token's output too (the gated norm hides a rescale)
        out = ssd.chunk_scan(*args, **kwargs)
        o = out[0] if isinstance(out, tuple) else out
        o = o + 0.05 * o.roll(1, dims=1)
        return (o, out[1]) if isinstance(out, tuple) else o

    monkeypatch.setitem(ssd.BINDING.functions, "mamba2_chunk_scan", wrong)
    monkeypatch.delitem(ssd.BINDING.probes, "mamba2_chunk_scan")
    report = fh.patch(model)
    assert not report.groups[0].patched and "layer probe" in report.groups[0].reason


def test_patch_is_per_instance(tmp_path):
    a = load_tiny(MAMBA2, tmp_path / "a")
    b = load_tiny(MAMBA2, tmp_path / "b")
    cls_forward = type(a.backbone.layers[0].mixer).forward
    fh.patch(a)
    assert type(a.backbone.layers[0].mixer).forward is cls_forward
    assert not any(fh.is_patched(m) for m in b.modules())
    ids = _prompt()
    with torch.no_grad():
        assert rel(a(ids).logits, b(ids).logits) < 1e-4


def test_log_line_names_each_layer_kind(tmp_path, caplog):
    model = load_tiny(MAMBA2, tmp_path)
    with caplog.at_level(logging.INFO, logger="fla_compile.hf"):
        fh.patch(model)
    (rec,) = caplog.records
    assert "Mamba2Mixer" in rec.getMessage() and "simple_gla" in rec.getMessage()


@pytest.mark.parametrize("name", ["cu_seqlens", "cu_seq_lens_q", "seq_idx"])
def test_packed_metadata_names(name):
    from fla_compile.hf import common

    cu = torch.tensor([0, 3, 7, 8], dtype=torch.int32)
    kwargs = {name: cu if name != "seq_idx" else common.seq_idx_from_cu_seqlens(cu, 8)}
    assert common.packed_cu_seqlens(kwargs).tolist() == cu.tolist()
    assert common.packed_seq_idx(kwargs, 8).tolist() == [[0, 0, 0, 1, 1, 1, 1, 2]]


def test_patch_under_accelerate_style_hooks(tmp_path):
    """accelerate (offloading) wraps ``forward`` and calls ``_old_forward``: we patch under the hook."""
    import functools

    model = load_tiny(MAMBA2, tmp_path)
    ids = _prompt()
    with torch.no_grad():
        ref = model(ids).logits
    seen = []
    for m in model.modules():
        if type(m).__name__ == "Mamba2Mixer":  # what accelerate.hooks.add_hook_to_module does
            m._hf_hook = object()
            m._old_forward = old = m.forward

            def new_forward(module, *args, **kwargs):
                seen.append(module)
                return module._old_forward(*args, **kwargs)

            m.forward = functools.update_wrapper(functools.partial(new_forward, m), old)
    hooked = {id(m): m.forward for m in model.modules() if "_hf_hook" in m.__dict__}
    report = fh.patch(model)
    assert report.ok and report.layers_patched == 2
    seen.clear()  # the decode proof ran the model through the hooks too
    with OpCalls() as calls, torch.no_grad():
        out = model(ids).logits
    assert calls.count() == 2 and len(seen) == 2
    assert rel(out, ref) < 1e-4
    fh.unpatch(model)
    for m in model.modules():
        if id(m) in hooked:
            assert m.forward is hooked[id(m)] and m._old_forward.__func__ is type(m).forward


def test_known_model_type_without_its_layers_is_noted(tmp_path, monkeypatch):
    model = load_tiny(MAMBA2, tmp_path)
    monkeypatch.setattr(registry, "RULES_BY_CLASS", {})  # as if transformers had renamed the mixer
    report = fh.patch(model)
    assert report.layers_patched == 0 and "Mamba2Mixer" in str(report) and "renamed" in str(report)


def test_verify_false_skips_the_proofs(tmp_path, monkeypatch):
    model = load_tiny(MAMBA2, tmp_path)
    monkeypatch.setitem(ssd.BINDING.probes, "mamba2_chunk_scan", lambda original, ours, device: 0.5)
    report = fh.patch(model, verify=False)
    assert report.ok and report.groups[0].probe_err == {}
    assert fh.unpatch(model) == 2

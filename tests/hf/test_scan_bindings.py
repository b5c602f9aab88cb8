"""The scan-line bindings (Mamba1's selective scan, RecurrentGemma's RG-LRU) refuse what they cannot prove.

test_patch.py covers what they do on the tiny models (logits, cached generation, training, unpatch);
here: a transformers function or method with a parameter we do not know leaves the layer unpatched
with the reason, and a binding wired wrong in a way its own probe would not see (a reset ignored, a
cached state dropped) is caught by the layer probe or by the decode proof (generate, model's cache).
"""

from __future__ import annotations

import sys

import pytest
import torch

import fla_compile.hf as fh
from fla_compile.hf import rglru, selective
from tests.compare import rel

from .archs import ARCHS
from .conftest import OpCalls, load_tiny

MAMBA = next(a for a in ARCHS if a.name == "Mamba")
RG = next(a for a in ARCHS if a.name == "RecurrentGemma")
SCAN_ARCHS = [a for a in ARCHS if a.kind in ("mamba", "rglru")]


def _group(report, arch):
    return next(g for g in report.groups if g.cls == arch.layer)


def _layer_cls(model, arch):
    return next(type(m) for m in model.modules() if type(m).__name__ == arch.layer)


def test_mamba_scan_with_a_new_parameter_refuses(tmp_path, monkeypatch):
    """A release whose scan took an initial state (which we would drop) must not be bound."""
    model = load_tiny(MAMBA, tmp_path)
    module = sys.modules[_layer_cls(model, MAMBA).__module__]
    orig = module.mamba_selective_scan

    def scan(hidden_states, dt, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
             return_last_state=False, use_mambapy=False, use_associative_scan=False, initial_state=None, **kwargs):  # fmt: skip
        return orig(hidden_states, dt, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    monkeypatch.setattr(module, "mamba_selective_scan", scan)
    group = _group(fh.patch(model), MAMBA)
    assert not group.patched and "initial_state" in group.reason, group.reason
    assert not any(fh.is_patched(m) for m in model.modules())


def test_rglru_scan_with_a_new_parameter_refuses(tmp_path, monkeypatch):
    model = load_tiny(RG, tmp_path)
    cls = _layer_cls(model, RG)
    orig = cls._rnn_scan

    def _rnn_scan(self, hidden_states, recurrent_gate, reset, recurrent_states, segment_ids=None):
        return orig(self, hidden_states, recurrent_gate, reset, recurrent_states)

    monkeypatch.setattr(cls, "_rnn_scan", _rnn_scan)
    group = _group(fh.patch(model), RG)
    assert not group.patched and "segment_ids" in group.reason, group.reason


def _no_reset(hidden_states, recurrent_gate, reset, recurrent_states=None, acc_dtype=torch.float32):
    """A near miss: the same scan with document resets ignored."""
    return rglru.rnn_scan(hidden_states, recurrent_gate, torch.zeros_like(reset), recurrent_states, acc_dtype)


def test_rglru_ignoring_resets_fails_its_probe_and_the_layer_probe(tmp_path, monkeypatch):
    model = load_tiny(RG, tmp_path)
    monkeypatch.setitem(rglru.BINDING.functions, "_rnn_scan", _no_reset)
    group = _group(fh.patch(model), RG)
    assert not group.patched and "probe of _rnn_scan" in group.reason, group.reason
    monkeypatch.delitem(rglru.BINDING.probes, "_rnn_scan")
    group = _group(fh.patch(model), RG)
    assert not group.patched and "layer probe" in group.reason, group.reason


def test_mamba_decode_dropping_the_cached_state_fails_the_decode_proof(tmp_path, monkeypatch):
    """Only the cached decode steps differ (the layer probe runs without a cache): the decode proof says which."""
    model = load_tiny(MAMBA, tmp_path)

    def stateless(state, hidden_states, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, z=None, **kwargs):
        fresh = torch.zeros_like(state)
        out = selective.selective_state_update(fresh, hidden_states, dt, A, B, C, D, dt_bias, dt_softplus, z)
        state.copy_(fresh)
        return out

    monkeypatch.setitem(selective.BINDING.functions, "mamba_selective_state_update", stateless)
    monkeypatch.delitem(selective.BINDING.probes, "mamba_selective_state_update")
    report = fh.patch(model)
    group = _group(report, MAMBA)
    assert not group.patched and "cached decode step 1" in group.reason, str(report)


def test_selective_scan_matches_the_fallback_with_a_state():
    """ours(prefill) then ours(step) == transformers' scan over the whole sequence (the state hand-over).
    fp32: the fallback computes in fp32 whatever its inputs."""
    from transformers.models.mamba import modeling_mamba as mm

    from fla_compile.hf.rebind import innermost

    g, dtype = torch.Generator().manual_seed(0), torch.float32
    B, D, T, N = 2, 6, 9, 4
    x, dt, z = (torch.randn(B, D, T, generator=g, dtype=dtype) for _ in range(3))
    A = -torch.rand(D, N, generator=g, dtype=dtype) - 0.5
    Bm, Cm = torch.randn(B, N, T, generator=g, dtype=dtype), torch.randn(B, N, T, generator=g, dtype=dtype)
    Dk, bias = torch.randn(D, generator=g, dtype=dtype), torch.randn(D, generator=g, dtype=dtype)
    kw = dict(D=Dk, z=z, delta_bias=bias, delta_softplus=True)
    ref = innermost(mm.mamba_selective_scan)(x, dt, A, Bm, Cm, **kw)  # transformers' torch fallback itself
    y, state = selective.selective_scan(*(t[..., :-1] for t in (x, dt)), A, Bm[..., :-1], Cm[..., :-1],
                                        **{**kw, "z": z[..., :-1]}, return_last_state=True)  # fmt: skip
    last = selective.selective_state_update(state, x[..., -1], dt[..., -1], A, Bm[..., -1], Cm[..., -1], Dk,
                                            dt_bias=bias, dt_softplus=True, z=z[..., -1])  # fmt: skip
    torch.testing.assert_close(torch.cat([y, last[..., None]], -1), ref, rtol=1e-5, atol=1e-5)


def test_rglru_patched_after_a_training_step(tmp_path):
    """RecurrentGemma keeps its decoding state as plain attributes; after a forward with grad they are
    inside an autograd graph, which deepcopy refuses: the fp32 copies of the proofs get them detached."""
    model = load_tiny(RG, tmp_path).to(torch.bfloat16).train()
    ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    model(ids, labels=ids).loss.backward()
    assert not next(m for m in model.modules() if type(m).__name__ == RG.layer).recurrent_states.is_leaf
    report = fh.patch(model)
    assert report.ok and report.layers_patched == 1 and not report.notes, str(report)
    assert "decode" in _group(report, RG).probe_err  # the decode proof ran, on an fp32 copy


@pytest.mark.parametrize("arch", SCAN_ARCHS, ids=[a.name for a in SCAN_ARCHS])
def test_every_cached_step_matches_unpatched(arch, tmp_path):
    """The logits of the prefill and of each of 7 cached decode steps (one row left-padded), fp32 < 1e-4."""
    model = load_tiny(arch, tmp_path)
    ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0
    kw = dict(attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    kw.update(output_logits=True, return_dict_in_generate=True)
    ref = model.generate(ids, **kw)
    assert fh.patch(model).ok
    with OpCalls() as calls:
        out = model.generate(ids, **kw)
    n = sum(1 for m in model.modules() if type(m).__name__ == arch.layer)
    assert calls.count(T=9) == n and calls.count(T=1) == 7 * n
    assert torch.equal(out.sequences, ref.sequences)
    errs = [rel(o, r) for o, r in zip(out.logits, ref.logits)]
    assert len(errs) == 8 and max(errs) < 1e-4, errs

"""Patched layers follow the installed transformers' calling convention, or stay unpatched.

transformers renames arguments between versions (MiniMax: ``past_key_values`` -> ``cache`` in
5.24). A replacement that took a fixed name and ``**kwargs`` received the renamed cache in
``kwargs`` and decoded without its state. These tests simulate such renames, known and unknown,
and a binding that drops state in a way no per-layer probe sees: the patch must bind correctly
or refuse, and the decode proof (generate with the model's own cache) must catch what is left.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys

import pytest
import torch

import fla_compile.hf as fh
from fla_compile.hf import lightning, registry, signature

from .archs import ARCHS
from .conftest import OpCalls, load_tiny

MINIMAX = next(a for a in ARCHS if a.name == "MiniMax")


@pytest.fixture
def minimax(tmp_path):
    model = load_tiny(MINIMAX, tmp_path)
    yield model
    fh.unpatch(model)


def _ids():
    return torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(1))


def _generate(model, ids):
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    out = model.generate(ids, attention_mask=mask, pad_token_id=0, **kw)
    return out.sequences, torch.stack(out.logits)


def _layer_cls(model):
    return next(type(m) for m in model.modules() if type(m).__name__ == MINIMAX.layer)


def _rename_cache(monkeypatch, model, new_name):
    """Make the layer's forward take its cache as ``new_name``, and the model pass it so: what a
    transformers release renaming the argument (without a deprecation alias) would look like."""
    cls = _layer_cls(model)
    orig = cls.forward
    old = next(n for n in inspect.signature(orig).parameters if signature.role(n) == "cache")
    src = (
        f"def forward(self, hidden_states, position_embeddings, attention_mask, {new_name}=None, **kwargs):\n"
        f"    return orig(self, hidden_states, position_embeddings, attention_mask, {old}={new_name}, **kwargs)\n"
    )
    ns = {"orig": orig}
    exec(src, ns)
    monkeypatch.setattr(cls, "forward", ns["forward"])

    def caller(module, args, kwargs):  # the decoder layer of that release
        if old in kwargs:
            kwargs[new_name] = kwargs.pop(old)
        return args, kwargs

    handles = [m.register_forward_pre_hook(caller, with_kwargs=True) for m in model.modules() if type(m) is cls]
    return handles


def test_unknown_cache_rename_refuses(minimax, monkeypatch):
    """The cache argument renamed to a name we have never seen: left unpatched, with the reason."""
    handles = _rename_cache(monkeypatch, minimax, "kv_state")
    ids = _ids()
    ref = _generate(minimax, ids)
    report = fh.patch(minimax)
    group = next(g for g in report.groups if g.cls == MINIMAX.layer)
    assert not group.patched and "kv_state" in group.reason, str(report)
    out = _generate(minimax, ids)
    assert torch.equal(out[0], ref[0])
    for h in handles:
        h.remove()


def test_known_alias_rename_binds(minimax, monkeypatch):
    """The cache argument renamed to a name transformers has used for caches elsewhere: bound by role."""
    _rename_cache(monkeypatch, minimax, "cache_params")
    ids = _ids()
    ref = _generate(minimax, ids)
    report = fh.patch(minimax)
    group = next(g for g in report.groups if g.cls == MINIMAX.layer)
    assert group.patched, str(report)
    with OpCalls() as calls:
        out = _generate(minimax, ids)
    assert calls.count(T=1) == 5 * group.layers  # every cached decode step ran our op, with the state
    assert torch.equal(out[0], ref[0])
    assert (out[1] - ref[1]).norm() / ref[1].norm() < 1e-4
    assert group.probe_err["decode"] < 1e-4


def test_decode_proof_catches_dropped_state(minimax, monkeypatch):
    """A forward that drops the cached state, with no per-layer probe to see it: the decode proof
    (the model's generate with its own cache, every step's logits) leaves the class unpatched."""

    def forgetful(self, hidden_states, attention_mask=None, cache=None, **kwargs):
        return lightning.lightning_forward(self, hidden_states, attention_mask, None, **kwargs)

    fake = dataclasses.replace(lightning.BINDING, forward=forgetful, probes={})
    real = registry.binding
    monkeypatch.setattr(registry, "binding", lambda kind: fake if kind == "lightning" else real(kind))
    ids = _ids()
    ref = _generate(minimax, ids)
    report = fh.patch(minimax)
    group = next(g for g in report.groups if g.cls == MINIMAX.layer)
    assert not group.patched, str(report)
    assert "decode proof" in group.reason and "cached decode step 1" in group.reason, group.reason
    assert not any(fh.is_patched(m) for m in minimax.modules())
    assert torch.equal(_generate(minimax, ids)[0], ref[0])


def test_decode_proof_on_a_bf16_model(minimax):
    """A bf16 model is proven on an fp32 copy; the model itself is left in bf16."""
    model = minimax.to(torch.bfloat16)
    report = fh.patch(model)
    group = next(g for g in report.groups if g.cls == MINIMAX.layer)
    assert group.patched and group.probe_err["decode"] < 1e-4, str(report)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_decode_proof_skipped_over_the_size_limit(minimax, monkeypatch):
    monkeypatch.setattr(sys.modules["fla_compile.hf.patch"], "MODEL_PROOF_MAX_PARAMS", 10)
    report = fh.patch(minimax.to(torch.bfloat16))
    assert report.ok and "decode" not in report.groups[0].probe_err
    assert any("decode proof skipped" in n for n in report.notes), str(report)


# ---------------------------------------------------------------------------------------------
# signature.adapt on its own: swapped functions (rebind) go through it too
# ---------------------------------------------------------------------------------------------


def _ours(query, key, value, g, beta, initial_state=None, output_final_state=False, cu_seqlens=None, **kwargs):
    return dict(initial_state=initial_state, output_final_state=output_final_state, cu_seqlens=cu_seqlens, **kwargs)


def test_adapt_follows_the_originals_positions():
    def original(query, key, value, g, beta, output_final_state, initial_state=None, **kwargs):
        raise AssertionError

    f = signature.adapt(original, _ours)
    assert list(inspect.signature(f).parameters)[:7] == list(inspect.signature(original).parameters)[:7]
    out = f(1, 2, 3, 4, 5, True, "h0", cu_seqlens="cu")
    assert out == dict(initial_state="h0", output_final_state=True, cu_seqlens="cu")


def test_adapt_refuses_a_renamed_state_argument():
    def original(query, key, value, g, beta, state0=None, output_final_state=False, **kwargs):
        raise AssertionError

    with pytest.raises(signature.Refused, match="state0"):
        signature.adapt(original, _ours)


def test_adapt_refuses_a_required_argument_it_cannot_map():
    def original(query, key, value, g, beta, initial_state, output_final_state, scale, **kwargs):
        raise AssertionError

    with pytest.raises(signature.Refused, match="scale"):
        signature.adapt(original, _ours)


def test_adapt_ignores_only_what_it_is_told():
    def original(query, key, value, g, beta, chunk_size=64, initial_state=None):
        raise AssertionError

    with pytest.raises(signature.Refused, match="chunk_size"):
        signature.adapt(original, _ours)
    f = signature.adapt(original, _ours, ignore=("chunk_size",))
    assert f(1, 2, 3, 4, 5, 32, "h0")["initial_state"] == "h0"
    with pytest.raises(TypeError, match="cu_seqlens"):  # the original takes no **kwargs: neither does its adapter
        f(1, 2, 3, 4, 5, cu_seqlens="cu")


def test_adapt_follows_transformers_deprecation_alias():
    deprecate_kwarg = pytest.importorskip("transformers.utils.deprecation").deprecate_kwarg

    class Layer(torch.nn.Module):
        @deprecate_kwarg("past_key_values", "99.0.0", new_name="cache")
        def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
            raise AssertionError

    def ours(self, hidden_states, attention_mask=None, cache=None, **kwargs):
        return cache, kwargs

    f = signature.adapt(Layer.forward, ours)
    layer = Layer()
    assert f(layer, 1, None, "c") == ("c", {})
    assert f(layer, 1, cache="c", seq_idx=3) == ("c", {"seq_idx": 3})
    assert f(layer, 1, past_key_values="c") == ("c", {})  # the deprecated name, as the decorator maps it


def test_swapped_function_with_a_new_state_parameter_refuses(tmp_path, monkeypatch):
    """The rebind path (the layer's own forward, its recurrence function swapped): a function of the
    installed transformers taking a parameter we do not know leaves the layer unpatched."""
    arch = next(a for a in ARCHS if a.name == "Qwen3-Next")
    model = load_tiny(arch, tmp_path)
    layer = next(m for m in model.modules() if type(m).__name__ == arch.layer)
    module = sys.modules[type(layer).__module__]
    name = "torch_recurrent_gated_delta_rule"
    if not hasattr(module, name):
        pytest.skip(f"this transformers has no {name}")
    orig = getattr(module, name)

    def renamed(
        query, key, value, g, beta, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False,
        extra_state=None, **kwargs,
    ):  # fmt: skip
        return orig(query, key, value, g, beta, initial_state, output_final_state, use_qk_l2norm_in_kernel, **kwargs)

    monkeypatch.setattr(module, name, renamed)
    report = fh.patch(model)
    group = next(g for g in report.groups if g.cls == arch.layer)
    assert not group.patched and "extra_state" in group.reason, str(report)


def test_adapt_refuses_two_parameters_of_one_role():
    def original(self, hidden_states, cache=None, past_key_values=None, **kwargs):
        raise AssertionError

    def ours(self, hidden_states, cache=None, **kwargs):
        raise AssertionError

    with pytest.raises(signature.Refused, match="two parameters of one role"):
        signature.adapt(original, ours)


QWEN3_NEXT = next(a for a in ARCHS if a.name == "Qwen3-Next")


def test_kernel_package_dispatch_is_proven_against_the_torch_function(tmp_path, monkeypatch):
    """With flash-linear-attention importable, transformers >= 5.17 makes ``torch_chunk_gated_delta_rule``
    a dispatcher (``use_kernel_func_from_hub_with_fallback``): it keeps only the kernel's parameters
    (``q, k, v, ...``) and calls the kernel. Probing through it dropped ``query/key/value`` (the
    H200 run left Qwen3-Next unpatched: "missing 3 required positional arguments"). The proofs
    must compare with the torch function it wraps; here the stand-in kernel is off by 1%, so a
    proof against it would refuse, and one against the torch function passes."""
    import functools

    model = load_tiny(QWEN3_NEXT, tmp_path)
    mod = sys.modules[type(model).__module__]
    names = [n for n in ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule") if hasattr(mod, n)]
    assert names

    def dispatcher(torch_fn):
        def kernel(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, **kw):
            o, s = torch_fn(q, k, v, g, beta, initial_state=initial_state, output_final_state=output_final_state)
            return o * 1.01, s

        params = tuple(inspect.signature(kernel).parameters)

        @functools.wraps(torch_fn)
        def wrapped(*args, **kwargs):
            return kernel(*args, **{k: v for k, v in kwargs.items() if k in params})

        return wrapped

    for n in names:
        monkeypatch.setattr(mod, n, dispatcher(getattr(mod, n)))
    try:
        report = fh.patch(model)
        assert report.ok and report.layers_patched > 0, str(report)
        assert all(e < 1e-4 for g in report.groups for e in g.probe_err.values()), str(report)
    finally:
        fh.unpatch(model)

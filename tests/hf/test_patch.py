"""fla_compile.patch on tiny random models of every architecture it knows (CPU, fp32).

For each: logits agree with transformers' own path, greedy generation with the cache gives the
same tokens (prefill and T=1 decode through our ops), a training step gives the same loss and
gradients, packed sequences work where the unpatched path refuses (or mixes) them, a patched
model round-trips through save_pretrained / from_pretrained, and unpatch restores it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import fla_compile.hf as fh
from tests.compare import rel

from .archs import ARCHS
from .conftest import OpCalls, load_tiny, reload

TOL = 1e-4
ids_of = {a.name: a for a in ARCHS}


@pytest.fixture(scope="module", params=ARCHS, ids=[a.name for a in ARCHS])
def tiny(request, tmp_path_factory):
    arch = request.param
    path = tmp_path_factory.mktemp(arch.name.replace(".", "_"))
    model = load_tiny(arch, path)
    yield arch, model, path
    fh.unpatch(model)


def _layers(model, arch):
    return [m for m in model.modules() if type(m).__name__ == arch.layer]


def _prompt(B=2, T=23, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 100, (B, T), generator=g)


def test_logits_report_and_unpatch(tiny):
    arch, model, _ = tiny
    fh.unpatch(model)
    ids = _prompt()
    with torch.no_grad():
        ref = model(ids).logits
    report = fh.patch(model)
    group = next(g for g in report.groups if g.cls == arch.layer)
    assert group.patched, str(report)
    assert group.kind == arch.kind and group.layers == len(_layers(model, arch))
    assert max(group.probe_err.values()) < TOL
    assert arch.layer in str(report)
    assert fh.patch(model).layers_patched == report.layers_patched  # idempotent
    with OpCalls() as calls, torch.no_grad():
        out = model(ids).logits
    assert calls.count() == group.layers
    assert rel(out, ref) < TOL
    assert fh.unpatch(model) == group.layers
    assert fh.unpatch(model) == 0
    for m in _layers(model, arch):
        assert "forward" not in m.__dict__ and not fh.is_patched(m)
    with OpCalls() as calls, torch.no_grad():
        again = model(ids).logits
    assert calls.count() == 0
    torch.testing.assert_close(again, ref, rtol=0, atol=0)


def test_generate_with_cache(tiny):
    arch, model, _ = tiny
    fh.unpatch(model)
    ids = _prompt(T=9)
    kw = dict(
        max_new_tokens=32, min_new_tokens=32, do_sample=False, use_cache=True, attention_mask=torch.ones_like(ids)
    )
    ref = model.generate(ids, **kw)
    fh.patch(model)
    n = len(_layers(model, arch))
    with OpCalls() as calls:
        out = model.generate(ids, **kw)
    assert out.shape == (2, 9 + 32)
    assert torch.equal(out, ref)
    assert calls.count(T=9) == n  # prefill
    assert calls.count(T=1) == 31 * n  # every cached decode step, every layer


def test_training_step(tiny):
    arch, model, _ = tiny
    ids = _prompt(T=21)
    results = []
    for patched in (False, True):
        fh.unpatch(model)
        if patched:
            fh.patch(model)
        model.train()
        model.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    model.eval()
    model.zero_grad()
    (l0, g0), (l1, g1) = results
    assert rel(l1, l0) < TOL
    assert g0.keys() == g1.keys()
    total = torch.cat([g.flatten() for g in g0.values()]).norm()
    for name in g0:
        err = (g1[name] - g0[name]).norm() / torch.maximum(g0[name].norm(), 1e-3 * total)
        assert err < TOL, (name, err.item())


def test_generate_left_padded_batch(tiny):
    """Padding tokens are masked by transformers' own code around our op: same tokens as unpatched."""
    arch, model, _ = tiny
    fh.unpatch(model)
    ids = _prompt(T=11)
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = 0, 0
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, attention_mask=mask, pad_token_id=0)
    ref = model.generate(ids, **kw)
    fh.patch(model)
    assert torch.equal(model.generate(ids, **kw), ref)


def _packed_kwargs(arch, lengths):
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    if arch.packed == "seq_idx":
        seq_idx = torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(lengths)])[None]
        return dict(position_ids=pos, seq_idx=seq_idx)
    T = max(lengths)
    return dict(position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=T, max_length_k=T)


def test_packed_sequences(tiny, tmp_path):
    arch, model, _ = tiny
    if arch.packed is None:
        pytest.skip(f"{arch.name} passes no packed-sequence offsets to its layers")
    if arch.packed_layer_types is not None:
        layers = {"layer_types": list(arch.packed_layer_types)}
        model = load_tiny(dataclasses.replace(arch, kwargs={**arch.kwargs, **layers}), tmp_path)
    lengths = (13, 19)
    seqs = [_prompt(B=1, T=n, seed=i + 5) for i, n in enumerate(lengths)]
    packed = torch.cat(seqs, 1)
    kw = _packed_kwargs(arch, lengths)
    if arch.packed_module is not None:
        run = getattr(model, arch.packed_module)
        kw.pop("position_ids")
    else:
        run = model
    fh.patch(model)
    ref = torch.cat([run(s, use_cache=False)[0] for s in seqs], 1)
    out = run(packed, use_cache=False, **kw)[0]
    assert rel(out, ref) < TOL
    # training on packed rows: the same gradients as on the sequences one by one
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3))
    params = [p for p in model.parameters() if p.requires_grad]
    g_ref = torch.autograd.grad((ref * w).sum(), params, allow_unused=True)
    g_out = torch.autograd.grad((out * w).sum(), params, allow_unused=True)
    flat = lambda gs: torch.cat([g.flatten() for g in gs if g is not None])
    assert rel(flat(g_out), flat(g_ref)) < TOL
    ref, out = ref.detach(), out.detach()
    fh.unpatch(model)
    try:  # transformers' torch path refuses packed sequences, or silently lets them mix
        with torch.no_grad():
            mixed = run(packed, use_cache=False, **kw)[0]
    except ValueError:
        return
    assert rel(mixed, ref) > 10 * TOL


def test_save_load_roundtrip(tiny, tmp_path):
    arch, model, _ = tiny
    fh.patch(model)
    ids = _prompt()
    with torch.no_grad():
        ref = model(ids).logits
    keys = set(model.state_dict())
    model.save_pretrained(tmp_path)
    loaded = reload(arch, tmp_path)
    assert set(loaded.state_dict()) == keys
    assert not any(fh.is_patched(m) for m in loaded.modules())
    assert fh.patch(loaded).layers_patched == len(_layers(model, arch))
    with torch.no_grad():
        out = loaded(ids).logits
    assert rel(out, ref) < TOL

"""A patched model under torch.compile(fullgraph=True): no graph breaks, no host syncs in our code.

The Dynamo side only (``eager`` / ``aot_eager`` backends, CPU); the "fla" backend itself is
tested with the backend.
"""

from __future__ import annotations

import pytest
import torch

import fla_compile.hf as fh
from tests.compare import rel

from .archs import ARCHS
from .conftest import load_tiny
from .test_patch import _packed_kwargs, _prompt

TOL = 1e-4
ONE_PER_KIND = {a.kind: a for a in reversed(ARCHS)}  # the first architecture of each kind
PICKED = [a for a in ARCHS if ONE_PER_KIND[a.kind] is a]


@pytest.mark.parametrize("arch", PICKED, ids=[a.name for a in PICKED])
def test_fullgraph_prefill_and_packed(arch, tmp_path):
    model = load_tiny(arch, tmp_path)
    ids = _prompt()
    with torch.no_grad():
        ref = model(ids).logits
    fh.patch(model)
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend="eager", fullgraph=True)(ids, use_cache=False).logits
    assert rel(out, ref) < TOL

    if arch.packed is None:  # the model passes no packed-sequence offsets to its layers
        return
    lengths = (13, 19)
    seqs = [_prompt(B=1, T=n, seed=i + 5) for i, n in enumerate(lengths)]
    kw = _packed_kwargs(arch, lengths)
    run = model
    if arch.packed_module is not None:
        run = getattr(model, arch.packed_module)
        kw.pop("position_ids")
    with torch.no_grad():
        ref = torch.cat([run(s, use_cache=False)[0] for s in seqs], 1)
        out = torch.compile(run, backend="eager", fullgraph=True)(torch.cat(seqs, 1), use_cache=False, **kw)[0]
    assert rel(out, ref) < TOL


def test_fullgraph_training_step(tmp_path):
    arch = ONE_PER_KIND["ssd"]
    model = load_tiny(arch, tmp_path)
    ids = _prompt(T=21)
    model.train()
    loss_ref = model(ids, labels=ids).loss
    loss_ref.backward()
    grads_ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    fh.patch(model)
    torch._dynamo.reset()
    loss = torch.compile(model, backend="aot_eager", fullgraph=True)(ids, labels=ids, use_cache=False).loss
    loss.backward()
    assert rel(loss, loss_ref) < TOL
    assert (
        rel(torch.cat([p.grad.flatten() for p in model.parameters()]), torch.cat([g.flatten() for g in grads_ref]))
        < TOL
    )


def test_fla_backend_trains_a_patched_model(tmp_path):
    """torch.compile(backend="fla", fullgraph=True) on a patched model: Inductor around our ops, one step."""
    arch = ONE_PER_KIND["ssd"]
    model = load_tiny(arch, tmp_path)
    fh.patch(model)
    ids = _prompt(T=21)
    model.train()
    loss_ref = model(ids, labels=ids).loss
    loss_ref.backward()
    grads_ref = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    torch._dynamo.reset()
    loss = torch.compile(model, backend="fla", fullgraph=True)(ids, labels=ids, use_cache=False).loss
    loss.backward()
    assert rel(loss, loss_ref) < TOL
    assert rel(torch.cat([p.grad.flatten() for p in model.parameters()]), grads_ref) < TOL


def test_fla_backend_matches_the_loss_of_a_moe_training_graph(tmp_path):
    """The training graph of a patched MoE model (Qwen3-Next) is normalized and its loss matched (fused or kept):
    transformers 5.17's grouped-mm experts ``masked_fill_`` the rows they gathered with ``hidden[perm]``, which
    to_ssa once took for an update of a view of the hidden states, and then ran no pass on the whole graph."""
    import fla_compile

    arch = next(a for a in ARCHS if a.name == "Qwen3-Next")
    model = load_tiny(arch, tmp_path)
    fh.patch(model)
    model.train()
    ids = _prompt(T=21)
    torch._dynamo.reset()
    rep = fla_compile.explain(lambda ids: model(ids, labels=ids, use_cache=False).loss, ids)
    assert not any("not normalized" in n for n in rep.notes), str(rep)
    assert [m.op for m in rep.matches] == ["fla_compile.linear_cross_entropy"], str(rep)

"""bf16 models: every binding is still proven (on an fp32 copy of the layer) and applied.

The proofs run in fp32 whatever the model's dtype. The reference of each check is transformers'
own path in fp32 on the same weights; the patched bf16 model must be as close to it as
transformers' own bf16 path is (its error at most 1.25x that of unpatched bf16, plus 2e-3):
prefill logits, the logits of every cached decoding step of a greedy generation, and the
gradients of a training step. Measured (2026-11-29, CPU): unpatched bf16 vs fp32 is 0.8-2.2e-2
on logits and 1.0-6.4e-2 on gradients; the patched model is within 1% of those.
"""

from __future__ import annotations

import pytest
import torch

import fla_compile.hf as fh
from tests.compare import rel

from .archs import ARCHS
from .conftest import load_tiny, reload
from .test_compile import PICKED
from .test_patch import _prompt


def within_bf16_noise(patched: float, unpatched: float) -> bool:
    return patched <= 1.25 * unpatched + 2e-3


def models(arch, path):
    """(patched bf16, unpatched bf16, unpatched fp32), all with the same weights."""
    model = load_tiny(arch, path).to(torch.bfloat16)
    base = reload(arch, path).to(torch.bfloat16)
    f32 = reload(arch, path)
    report = fh.patch(model)
    assert report.ok and report.layers_patched > 0, str(report)
    return model, base, f32


@pytest.mark.parametrize("arch", PICKED, ids=[a.name for a in PICKED])
def test_bf16_logits_and_cached_generation(arch, tmp_path):
    model, base, f32 = models(arch, tmp_path)
    ids = _prompt()
    with torch.no_grad():
        ref = f32(ids).logits
        out, own = model(ids).logits.float(), base(ids).logits.float()
    assert within_bf16_noise(rel(out, ref), rel(own, ref)), (rel(out, ref), rel(own, ref))

    P, N = 5, 4
    kw = dict(max_new_tokens=N, min_new_tokens=N, do_sample=False, attention_mask=torch.ones_like(ids[:, :P]))
    gen = model.generate(ids[:, :P], return_dict_in_generate=True, output_logits=True, **kw)
    assert gen.sequences.shape == (2, P + N)
    steps = torch.stack(gen.logits, 1).float()  # the prefill's last logits, then each cached step's
    with torch.no_grad():  # the same tokens through transformers' own full forward
        ref = f32(gen.sequences[:, :-1]).logits[:, P - 1 :]
        own = base(gen.sequences[:, :-1]).logits[:, P - 1 :].float()
    assert within_bf16_noise(rel(steps, ref), rel(own, ref)), (rel(steps, ref), rel(own, ref))


@pytest.mark.parametrize("arch", PICKED, ids=[a.name for a in PICKED])
def test_bf16_training_step(arch, tmp_path):
    ids = _prompt()
    grads, losses = [], []
    for m in models(arch, tmp_path):
        m.train()
        loss = m(ids, labels=ids).loss
        loss.backward()
        losses.append(loss.detach().float())
        grads.append(torch.cat([p.grad.float().flatten() for p in m.parameters() if p.grad is not None]))
    (patched, own, ref), (lp, lo, lr) = grads, losses
    assert patched.shape == ref.shape
    assert within_bf16_noise(rel(lp, lr), rel(lo, lr)), (rel(lp, lr), rel(lo, lr))
    assert within_bf16_noise(rel(patched, ref), rel(own, ref)), (rel(patched, ref), rel(own, ref))


assert {a.kind for a in PICKED} == {a.kind for a in ARCHS}

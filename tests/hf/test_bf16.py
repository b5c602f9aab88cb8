"""bf16 models: every binding is still proven (on an fp32 copy of the layer) and applied.

The proofs run in fp32 whatever the model's dtype; here we check that a bf16 model gets
patched, that its logits stay within bf16 noise of transformers' own path, and that
generation and a training step run.
"""

from __future__ import annotations

import pytest
import torch

import fla_compile.hf as fh

from .archs import ARCHS
from .conftest import load_tiny, rel
from .test_compile import PICKED
from .test_patch import _prompt


@pytest.mark.parametrize("arch", PICKED, ids=[a.name for a in PICKED])
def test_bf16_model_is_patched(arch, tmp_path):
    model = load_tiny(arch, tmp_path).to(torch.bfloat16)
    ids = _prompt()
    with torch.no_grad():
        ref = model(ids).logits.float()
    report = fh.patch(model)
    assert report.ok and report.layers_patched > 0, str(report)
    with torch.no_grad():
        out = model(ids).logits.float()
    assert rel(out, ref) < 3e-2
    tokens = model.generate(ids[:, :5], max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(ids[:, :5]))
    assert tokens.shape == (2, 9)
    model.train()
    model(ids, labels=ids).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


assert {a.kind for a in PICKED} == {a.kind for a in ARCHS}

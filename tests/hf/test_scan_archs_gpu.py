"""Mamba1 (Mamba, FalconMamba, Jamba) and RecurrentGemma patched on CUDA: the Triton scan kernels
against transformers' own torch loop (GPU only).

At T=300 (several of the kernels' blocks, a state carried across them) on the tiny configs: fp32
logits of a prefill and of every cached decode step of a greedy generate (one row left-padded),
and the loss and gradients of a training step, all within 1e-4 of the unpatched model; bf16 as
close to the fp32 reference as transformers' own bf16 path (test_bf16.py's bound).
"""

from __future__ import annotations

import pytest
import torch

import fla_compile.hf as fh
from tests.compare import rel

from .archs import ARCHS
from .conftest import load_tiny, reload
from .test_bf16 import within_bf16_noise

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SCAN_ARCHS = [a for a in ARCHS if a.kind in ("mamba", "rglru")]
TOL = 1e-4


def _ids(B=2, T=300, seed=1, device="cuda"):
    return torch.randint(3, 100, (B, T), generator=torch.Generator().manual_seed(seed)).to(device)


def _generate(model, ids, mask, n=12):
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
        output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    return out.sequences, [x.float() for x in out.logits]


def _train_step(model, ids):
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(ids, labels=ids, use_cache=False).loss
    loss.backward()
    model.eval()
    return loss.detach().float(), torch.cat(
        [p.grad.float().flatten() for p in model.parameters() if p.grad is not None]
    )


@pytest.mark.parametrize("arch", SCAN_ARCHS, ids=[a.name for a in SCAN_ARCHS])
def test_fp32_prefill_decode_and_training(arch, tmp_path, device="cuda"):
    model = load_tiny(arch, tmp_path).to(device)
    ids = _ids(device=device)
    prompt = ids[:, :37].clone()
    mask = torch.ones_like(prompt)
    prompt[1, :5], mask[1, :5] = 0, 0
    with torch.no_grad():
        ref_logits = model(ids, use_cache=False).logits
    ref_seq, ref_steps = _generate(model, prompt, mask)
    ref_loss, ref_grads = _train_step(model, ids)

    report = fh.patch(model)
    assert report.ok and report.layers_patched > 0, str(report)
    with torch.no_grad():
        assert rel(model(ids, use_cache=False).logits, ref_logits) < TOL
    seq, steps = _generate(model, prompt, mask)
    errs = [rel(s, r) for s, r in zip(steps, ref_steps)]
    assert len(errs) == len(ref_steps) and max(errs) < TOL, errs  # the prefill's, then each cached step's
    assert torch.equal(seq, ref_seq)
    loss, grads = _train_step(model, ids)
    assert rel(loss, ref_loss) < TOL
    assert rel(grads, ref_grads) < TOL
    assert fh.unpatch(model) == report.layers_patched


@pytest.mark.parametrize("arch", SCAN_ARCHS, ids=[a.name for a in SCAN_ARCHS])
def test_bf16_within_transformers_noise(arch, tmp_path, device="cuda"):
    model = load_tiny(arch, tmp_path).to(device=device, dtype=torch.bfloat16)
    base = reload(arch, tmp_path).to(device=device, dtype=torch.bfloat16)
    f32 = reload(arch, tmp_path).to(device)
    report = fh.patch(model)
    assert report.ok, str(report)
    ids = _ids(device=device)
    with torch.no_grad():
        ref = f32(ids, use_cache=False).logits
        out, own = (m(ids, use_cache=False).logits.float() for m in (model, base))
    assert within_bf16_noise(rel(out, ref), rel(own, ref)), (rel(out, ref), rel(own, ref))
    (lp, gp), (lo, go), (lr, gr) = (_train_step(m, ids) for m in (model, base, f32))
    assert within_bf16_noise(rel(lp, lr), rel(lo, lr)), (rel(lp, lr), rel(lo, lr))
    assert within_bf16_noise(rel(gp, gr), rel(go, gr)), (rel(gp, gr), rel(go, gr))

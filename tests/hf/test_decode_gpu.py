"""``fla_compile.hf.generate`` on CUDA: the decode step captured in a CUDA graph and replayed (GPU only).

A capture refuses host syncs and records kernel launches with the arguments of that moment, so the
tokens of the graph replay are checked against (1) the same decoder's eager steps (the same kernels:
equal bitwise) and (2) transformers' ``model.generate(do_sample=False)`` with its dynamic cache on the
same patched model (fp32: the same greedy tokens).
"""

from __future__ import annotations

import pytest
import torch

import fla_compile.hf as fh
from fla_compile.hf.decode import GraphDecoder

from .archs import ARCHS
from .conftest import load_tiny

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PICKED = [a for a in ARCHS if a.name in ("Qwen3-Next", "Mamba2")]
N = 24


def _prompts(B, T, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (B, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # one row left-padded
    ids[1, :3] = 0
    return ids.cuda(), mask.cuda()


@pytest.mark.parametrize("arch", PICKED, ids=[a.name for a in PICKED])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_graph_decode_equals_generate(arch, dtype, tmp_path):
    model = load_tiny(arch, tmp_path).to("cuda", dtype)
    report = fh.patch(model)
    assert report.ok and report.layers_patched > 0, str(report)
    cfg = model.generation_config
    kw = dict(eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
    graph = GraphDecoder(model, 4, 9 + N, cuda_graph=True, **kw)
    eager = GraphDecoder(model, 4, 9 + N, cuda_graph=False, **kw)
    for seed in (1, 2):  # the second call replays the graph captured by the first
        ids, mask = _prompts(4, 9, seed)
        out = graph.generate(ids, N, mask)
        assert torch.equal(out, eager.generate(ids, N, mask))
        if dtype == torch.float32:  # bf16: the dynamic cache's attention may round differently and flip a tie
            ref = model.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False)
            assert torch.equal(out, ref), (out, ref)
            assert torch.equal(fh.generate(model, ids, N, mask), ref)  # the one-call helper
    assert graph.steps_run["eager"] == 2 and graph.steps_run["replayed"] > 0

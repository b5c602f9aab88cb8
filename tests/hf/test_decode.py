"""``fla_compile.hf.generate`` / ``GraphDecoder``: greedy decoding from a static cache, the step captured once.

On the CPU the capture is stood in for by ``make_fx`` (real tensors): like a CUDA graph capture it
freezes every Python-side decision of the step (shapes, branches, host-side counters) and replays
only the recorded tensor ops on the same buffers, the cache and the weights. A step that depended on
a Python value changing between steps would replay wrong tokens here, as it would from a CUDA graph;
a host sync inside the step (which a capture refuses) is caught by a dispatch mode. The reference is
transformers' own ``model.generate(do_sample=False)`` on the same patched model, with its dynamic cache.
The CUDA graph itself is tested in ``test_decode_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._python_dispatch import TorchDispatchMode

import fla_compile.hf as fh
from fla_compile.hf.decode import GraphDecoder

from .archs import ARCHS
from .conftest import load_tiny

PICKED = [a for a in ARCHS if a.name in ("Qwen3-Next", "Mamba2", "Mamba")]
SYNCS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::equal", "aten::item")


class NoHostSync(TorchDispatchMode):
    """Fails on the aten calls that read a tensor's value on the host (a sync a CUDA graph capture refuses).

    Also on ``aten::_grouped_mm`` outside its CUDA fast path (bf16): elsewhere (fp32; and every dtype
    before sm90) its CUDA kernel copies the group offsets to the host. On the CPU that copy is free and
    invisible, so it is named here: the fp32 MoE experts of Qwen3-Next failed the CUDA graph capture so.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        assert func._schema.name not in SYNCS, f"host sync in the decode step: {func}"
        if func._schema.name == "aten::_grouped_mm":
            assert args[0].dtype == torch.bfloat16, f"host sync in the decode step (on CUDA): {func} in {args[0].dtype}"
        return func(*args, **(kwargs or {}))


def frozen_capture(step):
    """make_fx of the step on real tensors: runs it once (so ``ran`` is True) and returns the replayable trace."""
    with NoHostSync():
        traced = make_fx(lambda: step(), tracing_mode="real")()
    return traced, True


def _prompts(B=3, T=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (B, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # one row left-padded
    ids[1, :2] = 0
    return ids, mask


def _reference(model, ids, mask, n, eos):
    return model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=0)


@pytest.fixture(scope="module", params=PICKED, ids=[a.name for a in PICKED])
def patched(request, tmp_path_factory):
    """One tiny patched model per architecture for the module (the tests do not change it)."""
    model = load_tiny(request.param, tmp_path_factory.mktemp(request.param.name))
    report = fh.patch(model)
    assert report.ok and report.layers_patched > 0, str(report)
    return request.param, model


def _eos_ending(tokens):
    """Two ids that end rows 0 and 2 early in ``tokens`` [B, n] (row 1 runs to the end): the eos path."""
    return [int(tokens[0, 3]), int(tokens[2, 5])]


def test_eager_fallback_equals_generate(patched):
    arch, model = patched
    ids, mask = _prompts()
    ref = _reference(model, ids, mask, 12, eos=None)  # the generation config's eos and pad, in both
    assert torch.equal(fh.generate(model, ids, 12, mask), ref)
    free = ref[:, 7:]
    for eos in (_eos_ending(free), [int(free[0, 3]), int(free[1, 4]), int(free[2, 5])]):  # some rows end; all do
        ref = _reference(model, ids, mask, 12, eos)
        out = fh.generate(model, ids, 12, mask, eos_token_id=eos, pad_token_id=0)
        assert torch.equal(out, ref), (out, ref)
    assert ref.shape[1] < 7 + 12  # every row ended: generate stopped early, and so did we


def test_frozen_step_replays_generate(patched):
    """One capture, reused by a second call with other prompts (the cache is reset in place)."""
    arch, model = patched
    ids, mask = _prompts()
    free = _reference(model, ids, mask, 12, eos=None)
    eos = _eos_ending(free[:, 7:])
    dec = GraphDecoder(model, 3, 7 + 12, capture=frozen_capture, eos_token_id=eos, pad_token_id=0, check_every=4)
    experts = model.get_experts_implementation()
    assert torch.equal(dec.generate(ids, 12, mask), _reference(model, ids, mask, 12, eos))
    assert model.get_experts_implementation() == experts  # the decode's sync-free experts were put back
    assert dec.swap_experts == (arch.name == "Qwen3-Next")  # fp32 grouped_mm experts would sync on CUDA
    assert dec.steps_run["eager"] == 2 and dec.steps_run["replayed"] > 0
    ids2, mask2 = _prompts(T=5, seed=2)
    replayed = dec.steps_run["replayed"]
    assert torch.equal(dec.generate(ids2, 14, mask2), _reference(model, ids2, mask2, 14, eos))
    assert dec.steps_run["eager"] == 2 and dec.steps_run["replayed"] > replayed  # no new warm-up, no new capture


def test_bad_calls(patched):
    arch, model = patched
    ids, mask = _prompts()
    dec = GraphDecoder(model, 3, 10)
    with pytest.raises(ValueError, match="3 rows of prompt"):
        dec.generate(ids, 4, mask)  # 7 + 4 > 10
    with pytest.raises(ValueError, match="3 rows of prompt"):
        dec.generate(ids[:2, :3], 4)
    with pytest.raises(ValueError, match="cuda_graph=True needs a model on CUDA"):
        GraphDecoder(model, 3, 10, cuda_graph=True)


def test_recurrent_gemma_is_refused(tmp_path):
    """Its recurrent state lives in module attributes, outside the cache: a captured step would replay stale reads."""
    model = load_tiny(next(a for a in ARCHS if a.name == "RecurrentGemma"), tmp_path)
    ids, mask = _prompts()
    with pytest.raises(ValueError, match="RecurrentGemmaForCausalLM is not supported: its recurrent blocks"):
        fh.generate(model, ids, 4, mask)

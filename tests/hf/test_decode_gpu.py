"""``fla_compile.hf.generate`` on CUDA: the decode step captured in a CUDA graph and replayed (GPU only).

A capture refuses host syncs and records kernel launches with the arguments of that moment, so the
tokens of the graph replay are checked against (1) the same decoder's eager steps (the same kernels:
equal bitwise) and (2) transformers' ``model.generate(do_sample=False)`` with its dynamic cache on the
same patched model (fp32: the same greedy tokens).

A failure says which part differs, so one GPU run is enough to tell: the first new token where each
of the graph and the eager decoder leaves generate (step, row, both tokens), generate's logits there
(top-2 margin: a near tie flips on rounding alone) and whether graph and eager agree; a capture that
raises is reported with the eager decoder's comparison to generate.
"""

from __future__ import annotations

import pytest
import torch

import fla_compile.hf as fh
from fla_compile.hf.decode import GraphDecoder

from .archs import ARCHS
from .conftest import load_tiny

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PICKED = [a for a in ARCHS if a.name in ("Qwen3-Next", "Mamba2", "Mamba")]
N = 24
T = 9


def _prompts(B, T, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (B, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # one row left-padded
    ids[1, :3] = 0
    return ids.cuda(), mask.cuda()


def _first_diff(a, b):
    """(new-token step, row) of the first new token where [B, T + n] outputs a and b differ; None if equal."""
    if a.shape == b.shape and torch.equal(a, b):
        return None
    n = min(a.shape[1], b.shape[1])
    diff = (a[:, T:n] != b[:, T:n]).T.nonzero()
    return (int(diff[0, 0]), int(diff[0, 1])) if len(diff) else (n - T, 0)  # else: only the lengths differ


def _vs_generate(name, toks, ref) -> str:
    """Where ``toks`` first leaves generate's tokens, and how close generate's logits were there."""
    d = _first_diff(toks, ref.sequences)
    if d is None:
        return f"{name} == generate"
    step, row = d
    if step >= len(ref.logits) or T + step >= toks.shape[1]:
        return f"{name} != generate in length: {tuple(toks.shape)} vs {tuple(ref.sequences.shape)}"
    lg = ref.logits[step][row].double()
    (v0, v1), _ = lg.topk(2)
    ours, theirs = int(toks[row, T + step]), int(ref.sequences[row, T + step])
    return (
        f"{name} != generate first at new token {step} of row {row}: {ours} vs generate's {theirs}; "
        f"generate's logits there: top-2 margin {float(v0 - v1):.3g} (top {float(v0):.4g}), "
        f"{name}'s token {float(lg[ours]):.6g} vs {float(lg[theirs]):.6g} (gap {float(lg[theirs] - lg[ours]):.3g})"
    )


def _report(out, eager, ref) -> str:
    lines = [f"graph {'==' if torch.equal(out, eager) else '!='} eager decoder" if out is not None else "graph: -"]
    if out is not None and not torch.equal(out, eager):
        d = _first_diff(out, eager)
        lines.append(f"graph != eager first at new token {d[0]} of row {d[1]}")
    if ref is not None:
        lines += [_vs_generate("graph", out, ref) if out is not None else "", _vs_generate("eager", eager, ref)]
    return "\n".join(x for x in lines if x)


@pytest.mark.parametrize("arch", PICKED, ids=[a.name for a in PICKED])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_graph_decode_equals_generate(arch, dtype, tmp_path):
    model = load_tiny(arch, tmp_path).to("cuda", dtype)
    report = fh.patch(model)
    assert report.ok and report.layers_patched > 0, str(report)
    cfg = model.generation_config
    kw = dict(eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
    graph = GraphDecoder(model, 4, T + N, cuda_graph=True, **kw)
    eager = GraphDecoder(model, 4, T + N, cuda_graph=False, **kw)
    for seed in (1, 2):  # the second call replays the graph captured by the first
        ids, mask = _prompts(4, T, seed)
        want = eager.generate(ids, N, mask)
        ref = None
        if dtype == torch.float32:  # bf16: the dynamic cache's attention may round differently and flip a tie
            ref = model.generate(
                ids, attention_mask=mask, max_new_tokens=N, do_sample=False, output_logits=True,
                return_dict_in_generate=True,
            )  # fmt: skip
        try:
            out = graph.generate(ids, N, mask)
        except Exception as e:  # a capture that refuses the step: still say how eager compares
            raise AssertionError(f"seed {seed}: graph decoder raised {e!r}\n{_report(None, want, ref)}") from e
        ok = torch.equal(out, want) and (ref is None or torch.equal(out, ref.sequences))
        assert ok, f"seed {seed} (swap_experts={graph.swap_experts}):\n{_report(out, want, ref)}"
        if ref is not None:
            assert torch.equal(fh.generate(model, ids, N, mask), ref.sequences)  # the one-call helper
    assert graph.steps_run["eager"] == 2 and graph.steps_run["replayed"] > 0

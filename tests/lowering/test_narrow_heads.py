"""Heads of 32 in masked blocks of 64 (``launch.head_block``), interpreted: what the compiled kernels run on a GPU.

On the H200 (Triton 3.6) a block equal to a head dim of 32 computed wrong dq, dk and o and read out of bounds;
compiled, such a head takes one masked block of 64. The interpreter keeps exact blocks, so its other tests never
run that path. Here it runs it (the fence switched on under the interpreter): every dot kernel of both lines gets a
block of at least 64 along the narrow head dim (a launcher that chose its block without ``head_block`` shows up),
and the op's outputs and gradients equal its torch path."""

from __future__ import annotations

import inspect
import os

import pytest
import torch
import torch.nn.functional as F

from fla_compile.lowering.common import launch
from tests.compare import rel

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="interpreted: compiled runs are the GPU tests' (narrow_heads)"
)

FAMILIES = ["linear_attn", "gla", "gated_delta_rule", "kda"]  # each line with and without a gate per key


def _inputs(family, K, V, T=20, B=1, HK=1, H=2):
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(B, T, HK, K, generator=gen), torch.randn(B, T, HK, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    args = [q, k, v]
    if family in ("gla", "kda"):
        args.append(F.logsigmoid(torch.randn(B, T, H, K, generator=gen)) / 4)
    if family == "gated_delta_rule":
        args.append(F.logsigmoid(torch.randn(B, T, H, generator=gen)))
    if family in ("gated_delta_rule", "kda"):
        args[1] = F.normalize(k, dim=-1)
        args.append(torch.rand(B, T, H, generator=gen))
    h0 = torch.randn(B, H, K, V, generator=gen) * 0.1
    return args, h0


def _run(family, args, h0):
    from fla_compile import ops

    leaves = [x.clone().requires_grad_() for x in (*args, h0)]
    o, ht = getattr(ops, family)(*leaves[:-1], initial_state=leaves[-1], output_final_state=True)[:2]
    gen = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=gen)).sum() + (ht * torch.randn(ht.shape, generator=gen)).sum()
    return [o, ht, *torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("K,V", [(32, 64), (64, 32)], ids=["K32_V64", "K64_V32"])
@pytest.mark.parametrize("family", FAMILIES)
def test_narrow_head_runs_in_masked_blocks_of_64(family, K, V, monkeypatch):
    args, h0 = _inputs(family, K, V)
    ref = _run(family, args, h0)  # the torch path
    blocks = []
    real = launch.fitted

    def fitted(kernel, grid, *a, **kw):
        opts = ("maxnreg", "num_warps", "num_stages", "avoid")
        bound = inspect.signature(kernel.fn).bind_partial(*a, **{k: v for k, v in kw.items() if k not in opts})
        args = bound.arguments
        # the gate's cumsum kernels have no dot; a solve-only WY launch never runs its K, V loops
        if "cumsum" not in kernel.fn.__name__ and not args.get("SOLVE_ONLY", False):
            for name, value in args.items():  # BK, BKA, ... along K; BV, ... along V: of this head only
                dim = "K" if name.startswith("BK") else "V" if name.startswith("BV") else None
                if dim and isinstance(value, int) and args.get(dim) == {"K": K, "V": V}[dim]:
                    blocks.append((kernel.fn.__name__, name, dim, value))
        return real(kernel, grid, *a, **kw)

    monkeypatch.setattr(launch, "interpreted", lambda: False)
    monkeypatch.setattr(launch, "fitted", fitted)
    monkeypatch.setenv("FLA_COMPILE_TRITON", "interpret")
    ours = _run(family, args, h0)
    assert blocks, "no kernel launched"
    narrow = [b for b in blocks if {"K": K, "V": V}[b[2]] <= 32 and b[3] < 64]
    assert not narrow, f"blocks under 64 along a head of 32: {narrow}"
    for name, a, b in zip(["o", "ht", *[f"d{i}" for i in range(len(ours) - 2)]], ours, ref):
        assert torch.isfinite(a).all() and rel(a, b) < 1e-4, (name, rel(a, b))

"""A forward and backward of each chunked op captured in one CUDA graph (marked ``gpu``).

CUDA graphs are how host-bound callers (small batches, and the H200's host at the issue shapes: a fwd+bwd of
delta_rule enqueues in ~1.6 ms against ~1.4 ms of kernels) take the launches' host time out. A replay on new
inputs, copied into the captured ones, must give bitwise the eager call's outputs and gradients: nothing in the
ops may sync, allocate outside the graph's pool, or pick its kernels from values the graph froze.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fla_compile.ops as ops
from tests.cuda_graphs import capture

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

FAMILIES = ["gla", "simple_gla", "retention", "linear_attn", "rwkv6", "delta_rule", "gated_delta_rule", "kda"]


def inputs(family, seed, B=2, T=200, H=4, D=64):
    """The op's arguments, bf16 (gates and bonus fp32), the differentiable ones leaves that take a gradient."""
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, device="cuda", generator=gen).to(dtype)

    q, k, v = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, D)
    if family in ("delta_rule", "gated_delta_rule", "kda"):
        k = F.normalize(k.float(), dim=-1).bfloat16()
        beta = torch.rand(B, T, H, device="cuda", generator=gen).bfloat16()
        gate = {
            "delta_rule": [],
            "gated_delta_rule": [F.logsigmoid(rnd(B, T, H, dtype=torch.float32))],
            "kda": [F.logsigmoid(rnd(B, T, H, D, dtype=torch.float32)) / 16],
        }[family]
        args = [q, k, v, *gate, beta]
    elif family == "retention":
        args = [q, k, v]
    else:
        gate = {
            "gla": [F.logsigmoid(rnd(B, T, H, D, dtype=torch.float32)) / 16],
            "rwkv6": [F.logsigmoid(rnd(B, T, H, D, dtype=torch.float32)) / 16, rnd(H, D, dtype=torch.float32)],
            "simple_gla": [F.logsigmoid(rnd(B, T, H, dtype=torch.float32)) / 16],
            "linear_attn": [],
        }[family]
        args = [q, k, v, *gate]
    args = [x.requires_grad_() for x in args]
    if family == "retention":  # one decay per head, a constant (no gradient)
        args.append(torch.tensor([-0.02, -0.1, -0.5, -2.0], device="cuda"))
    return args


# the warm-up's backward runs on a side stream, the leaves were made on the default one: torch's note, not ours
@pytest.mark.filterwarnings("ignore:The AccumulateGrad node's stream does not match")
@pytest.mark.parametrize("family", FAMILIES)
def test_fwd_bwd_replays_bitwise(family):
    op = getattr(ops, family)
    xs = inputs(family, seed=0)
    wrt = [x for x in xs if x.requires_grad]
    do = torch.randn(xs[2].shape, device="cuda").bfloat16()

    def step():
        o = op(*xs)[0]
        return (o, *torch.autograd.grad(o, wrt, do))

    graph, captured = capture(step)  # warmed up (compiles, table lookups, fitted stages) off the capture stream
    with torch.no_grad():  # new values into the captured inputs
        for x, new in zip(xs, inputs(family, seed=1)):
            x.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    assert all(torch.isfinite(t.float()).all() for t in eager)
    for name, a, b in zip(["o"] + [f"grad {i}" for i in range(len(wrt))], captured, eager):
        assert torch.equal(a, b), f"{family}: {name} of the replay differs from the eager call"

"""Compiling ahead on the GPU (``lowering/common/ahead.py``): in a fresh process with an empty Triton cache, the
first call's dry runs compile every kernel the real forward and backward then launch (the real calls compile
nothing), and the outputs and gradients are bitwise those of a process that compiles at each launch. Through the
public function (one dry run: the forward's covers the backward) and through the op as a compiled graph calls it
(no gradient said: the forward's dry run, then the backward's own)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, torch
import torch.nn.functional as F
from triton import knobs
import fla_compile.ops as ops
from fla_compile.lowering.common import ahead

compiles, dry = [], []
knobs.compilation.listener = lambda *, src, **_: compiles.append(getattr(getattr(src, "fn", None), "__name__", "?"))
real = ahead.compile_ahead

def compile_ahead(run, device, workers=None):
    before = len(compiles)
    n = real(run, device, workers)
    dry.append((n, len(compiles) - before))  # launches, compiles
    return n

ahead.compile_ahead = compile_ahead
family, path, out = sys.argv[1:]
g = torch.Generator(device="cuda").manual_seed(0)
B, T, H, D = 2, 200, 2, 64
q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
if family == "gla":
    gate = F.logsigmoid(torch.randn(B, T, H, D, device="cuda", generator=g)) / 16
    xs = [q, k, v, gate]
else:  # kda: unit-norm keys, per-key gates, beta in (0, 1)
    k = F.normalize(k.float(), dim=-1).to(k.dtype)
    gate = F.logsigmoid(torch.randn(B, T, H, D, device="cuda", generator=g)) / 16
    xs = [q, k, v, gate, torch.rand(B, T, H, device="cuda", dtype=torch.bfloat16, generator=g)]
if path == "function":
    xs = [x.requires_grad_() for x in xs]
    o = getattr(ops, family)(*xs)[0]
    grads = torch.autograd.grad(o.float().square().sum(), xs)
else:  # the ops as a compiled graph calls them: gla only
    o, ht, A = torch.ops.fla_compile.gla(*xs, D**-0.5, None, None)
    grads = torch.ops.fla_compile.gla_bwd(*xs, D**-0.5, None, None, torch.ones_like(o), None, A)
torch.save([o, *grads], out)
print(json.dumps({"dry": dry, "compiles": compiles}))
"""


def _child(family, path, tmp_path, ahead):
    out = tmp_path / f"{family}-{path}-{ahead}.pt"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               TRITON_CACHE_DIR=str(tmp_path / f"triton-{ahead}"), FLA_COMPILE_CACHE_DIR=str(tmp_path / f"fla-{ahead}"),
               FLA_COMPILE_AHEAD=ahead)  # fmt: skip
    run = subprocess.run([sys.executable, "-c", CHILD, family, path, str(out)], env=env, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), torch.load(out)


@pytest.mark.parametrize("family,path,dry_runs", [("gla", "function", 1), ("kda", "function", 1), ("gla", "op", 2)])
def test_a_fresh_process_compiles_its_first_call_ahead(family, path, dry_runs, tmp_path):
    on, got = _child(family, path, tmp_path, "1")
    off, want = _child(family, path, tmp_path, "0")
    assert len(on["dry"]) == dry_runs, on
    assert all(launches >= 3 for launches, _ in on["dry"]) and sum(n for _, n in on["dry"]) >= 8, on
    assert sum(n for _, n in on["dry"]) == len(on["compiles"]), on  # the real calls compiled nothing more
    assert sorted(on["compiles"]) == sorted(off["compiles"]) and off["dry"] == []
    assert all(torch.equal(a, b) for a, b in zip(got, want))

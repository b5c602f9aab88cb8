"""benchmarks/launch_forms.py: a step's launches recorded, none run; the sweeps skip a variant that launches as
the shipped options (an option the family does not read). Runs the delta ops on the CPU's Triton path in a child
process (TRITON_INTERPRET must be set before triton is imported); with the launches recorded, no kernel runs."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1] + "/benchmarks")
import torch
import torch.nn.functional as F
from launch_forms import launch_forms
import fla_compile.ops as ops
from fla_compile.lowering.delta import triton_launch as DT

B, T, H, K, V = 1, 40, 2, 16, 16
q, v = torch.randn(B, T, H, K), torch.randn(B, T, H, V)
k = F.normalize(torch.randn(B, T, H, K), dim=-1)
beta, gk = torch.rand(B, T, H), -torch.rand(B, T, H, K)
args = {"delta_rule": (q, k, v, beta), "kda": (q, k, v, gk, beta)}
out = {}
for family, xs in args.items():
    xs = [x.clone().requires_grad_() for x in xs]
    def step():
        o = getattr(ops, family)(*xs)[0]
        torch.autograd.grad(o, xs, torch.ones_like(o))
    shipped = launch_forms(step)
    DT.KG = not DT.KG  # kda's key decay: where the W/U kernel or the state pass decays the keys
    try:
        flipped = launch_forms(step)
    finally:
        DT.KG = not DT.KG
    out[family] = {"names": sorted({f[0] for f in shipped}), "same": flipped == shipped,
                   "again": launch_forms(step) == shipped}
print(json.dumps(out))
"""


def test_launch_forms_tell_an_option_the_family_reads():
    env = dict(os.environ, FLA_COMPILE_TRITON="interpret", TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT)], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for family in ("delta_rule", "kda"):
        assert "chunk_delta_h_kernel" in out[family]["names"], out
        assert out[family]["again"], out  # the same step records the same launches
    assert out["delta_rule"]["same"] and not out["kda"]["same"], out  # KG is kda's alone

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


LIVENESS_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1] + "/benchmarks")
import torch
import torch.nn.functional as F
from launch_forms import launch_forms
import fla_compile.ops as ops
from fla_compile.lowering.common.autotune import table
from fla_compile.lowering.delta import triton_launch as DT

DT._arch = lambda device_type, index: "sm90"  # sm90's tables for the CPU's tensors
GATES = ("none", "scalar", "vector")
# what an option needs before a launcher reads it: module switches, then options
NEEDS = {"kkt": ({}, {"fused_kkt": False}), "A": ({"FUSED_A": False}, {}), "wy": ({"WU_SPLIT": False}, {}),
         "h_split": ({}, {"h_split_k": GATES}), "BV_h_split": ({}, {"h_split_k": GATES}),
         "dh_split": ({}, {"dh_split_k": GATES}), "BV_dh_split": ({}, {"dh_split_k": GATES})}
# read for fp32 inputs under split products only (torch's "highest")
FP32_ONLY = ("split_precs",)
# decided on the GPU's SMs (fill_sms leaves the CPU's blocks alone), the decode kernel (launched directly, not
# through launch.fitted)
UNSEEN = ("h_fill", "dh_fill", "dh_fill_vector", "fill_sms", "BV_dh_split_lo_vector", "decode", "BV_decode")


def other(value):
    if isinstance(value, dict):  # split_precs: kernel -> its dots' split form
        return {} if value else {"o": "bf16x6"}
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value // 2 if value > 16 else value * 2
    if isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value):
        return () if value else GATES  # gate kinds taking a pass's key blocks
    return (value[0] * 2 if value[0] < 8 else value[0] // 2, *value[1:])  # (warps, stages[, cap])


def step_for(K, V, dtype):
    B, T, H = 1, 80, 2
    q, v = torch.randn(B, T, H, K).to(dtype), torch.randn(B, T, H, V).to(dtype)
    k = F.normalize(torch.randn(B, T, H, K), dim=-1).to(dtype)
    beta, g, gk = torch.rand(B, T, H).to(dtype), -torch.rand(B, T, H), -torch.rand(B, T, H, K)
    calls = {"delta_rule": (q, k, v, beta), "gated_delta_rule": (q, k, v, g, beta), "kda": (q, k, v, gk, beta)}

    def step():
        for family, xs in calls.items():
            for l2 in (False, True):
                xs_ = [x.clone().requires_grad_() for x in xs]
                o = getattr(ops, family)(*xs_, use_qk_l2norm_in_kernel=l2)[0]
                torch.autograd.grad(o, xs_, torch.ones_like(o))
    return step


def forms(step, switches, options):
    old = {n: getattr(DT, n) for n in switches}
    for n, value in switches.items():
        setattr(DT, n, value)
    DT.OVERRIDES.clear()
    DT.OVERRIDES.update(options)
    DT._device_table.cache_clear()
    try:
        return launch_forms(step)
    finally:
        DT.OVERRIDES.clear()
        for n, value in old.items():
            setattr(DT, n, value)


t = table("sm90")
bf16 = (torch.bfloat16, "highest")
cases = [("first", 128, 128, bf16, n, v) for n, v in t["delta"].items() if not n.startswith("_")]
for dims, entry in t["by_dims"].items():
    if not dims.startswith("_") and "delta" in entry:
        K, V = (int(x) for x in dims[1:].split("V"))
        cases += [(dims, K, V, bf16, n, v) for n, v in entry["delta"].items()]
# fp32's sections: "delta" at either precision, "delta_<form>" under torch's precision that picks that form
precision = {"delta": "highest", "delta_tf32x3": "highest", "delta_tf32": "high"}
for section, options in t["by_dtype"].get("float32", {}).items():
    if not section.startswith("_"):
        form = (torch.float32, precision[section])
        cases += [(f"float32 {section}", 128, 128, form, n, v) for n, v in options.items()]
read, unread = [], []
for dims, K, V, (dtype, prec), name, value in cases:
    if name in UNSEEN:
        continue
    if name in FP32_ONLY:
        dtype, prec = torch.float32, "highest"
    torch.set_float32_matmul_precision(prec)
    step = step_for(K, V, dtype)
    switches, needs = NEEDS.get(name, ({}, {}))
    same = forms(step, switches, needs) == forms(step, switches, {**needs, name: other(value)})
    (unread if same else read).append(f"{dims} {name}")
print(json.dumps({"read": read, "unread": unread}))
"""


def test_every_delta_table_option_is_read():
    """Every delta-line option of sm90's table (its "delta" section at K = V = 128, the ``by_dims`` entries' at their
    head dims, fp32's ``by_dtype`` sections under the precision that picks them) is read by a launcher: set to
    another value, a launch of delta_rule, gated_delta_rule or kda (with and without the in-kernel L2 norm) changes.
    Options read only under a switch are tried with it (the unfused k kᵀ kernel, the GLA line's A kernel, the W/U
    kernel unsplit, key blocks for every gate, fp32 inputs for split products); those decided on the GPU's SMs or
    outside ``launch.fitted`` are left out."""
    env = dict(os.environ, FLA_COMPILE_TRITON="interpret", TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-c", LIVENESS_CHILD, str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["unread"], f"options no launcher reads: {out['unread']}"
    assert len(out["read"]) > 30 and "K256V512 dh_split_vector" in out["read"], out
    assert "float32 delta_tf32x3 split_precs" in out["read"], out

"""Every Triton launch of one op's forward and backward, as sm90's tables configure it, compiled offline for sm_90:
registers, spills, shared memory and the programs a multiprocessor holds. No GPU.

    python benchmarks/launch_audit.py [--families retention,linear_attn,kda] [--dims 128 | 256,512] [--dtype bfloat16]

The op runs once on the CPU under the Triton interpreter (``FLA_COMPILE_TRITON=interpret``, tiny B and T, the head
dims asked for) with the sm90 tables in place of the CPU's defaults: the GLA line's ``autotune.get_config`` and the
delta line's ``_arch``. Each kernel launch is recorded (its arguments, constexprs and launch options as the
launchers pass them), then a child process without the interpreter compiles each distinct launch for sm_90 and
reads ``ptxas -v``. A launch shared by two families (the same kernel, constexprs and options) is listed once, under
the first. A kernel that holds one program a multiprocessor where a neighbouring config holds two (an
occupancy cliff: RESULTS, sixteenth session, retention's dq/dk at K = 128) shows before any GPU time is spent, and so
does a launch that asks more shared memory than sm_90 has (the GPU runs it on fewer stages than the table says).
Counts come from this machine's Triton (3.9), a guide for an H200 sweep, not a measurement; the state passes'
blocks are the tables' (``fill_sms`` only halves them on a GPU with few sequences x heads).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # fla_compile from this checkout, installed or not (as the other scripts here)

CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/benchmarks")
import importlib
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from delta_bwd_regs import usage
from gla_kernel_regs import programs_per_sm

for job in json.loads(sys.stdin.read()):
    fn = getattr(importlib.import_module(job["module"]), job["kernel"])
    opts = {"num_warps": job["warps"], "num_stages": job["stages"]}
    if job["cap"]:
        opts["maxnreg"] = job["cap"]
    try:
        sig = {name: job["signature"][name] for name in fn.arg_names}
        # pointers 16-byte aligned, as the launcher's specialization tells Triton (without it: scalar loads)
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if sig[n].startswith("*")}
        src = ASTSource(fn, sig, constexprs=job["consts"], attrs=attrs)
        u = usage(triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts))
        u["per_sm"] = programs_per_sm(u["regs"], u["shared"], job["warps"])
    except Exception as e:  # a row, not a lost table
        u = {"error": f"{type(e).__name__}: {str(e)[:100]}"}
    print(json.dumps(u), flush=True)
"""

# sequential state passes: one program per sequence, head and block, sized to the GPU by ``fill_sms``; one a
# multiprocessor is their design, not a cliff, so the table does not flag it
STATE_PASSES = {
    "chunk_fwd_h_kernel", "chunk_bwd_dh_kernel", "chunk_delta_h_kernel", "chunk_delta_dh_kernel",
    "chunk_delta_h_split_kernel", "chunk_delta_dh_split_kernel",
}  # fmt: skip
_PTR = {"torch.bfloat16": "*bf16", "torch.float16": "*fp16", "torch.float32": "*fp32", "torch.int32": "*i32",
        "torch.int64": "*i64"}  # fmt: skip


def record(families, dims: tuple[int, int], dtype_name: str) -> list[dict]:
    """The distinct launches of each family's fwd+bwd (a dict per launch: family, module, kernel, signature,
    constexprs, warps, stages, cap), under the interpreter with the sm90 tables."""
    import inspect

    import torch

    from fla_compile.lowering.common import autotune
    from fla_compile.lowering.delta import triton_launch as DT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from host_overhead import SHAPE, make_cases, wrap_kernels  # its cases: the ops as users call them

    def sm90_config(kernel, gate_kind, K, V, dtype, T, device, varlen=False, line="gla"):
        return autotune.candidates(kernel, gate_kind, "sm90", K, V)[0]

    autotune.get_config = sm90_config
    DT._arch = lambda device_type, index: "sm90"
    DT._device_table.cache_clear()
    launches, seen = [], set()
    family = [""]

    class Recorder:
        def __init__(self, module, name, fn):
            self.module, self.name, self.fn = module, name, fn
            self.signature = inspect.signature(fn.fn)

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                opts = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "maxnreg") if k in kwargs}
                bound = self.signature.bind(*args, **kwargs)
                bound.apply_defaults()
                sig, consts = {}, {}
                for name, value in bound.arguments.items():
                    if "constexpr" in str(self.signature.parameters[name].annotation) or value is None:
                        consts[name] = value
                    elif isinstance(value, torch.Tensor):
                        sig[name] = _PTR[str(value.dtype)]
                    elif isinstance(value, bool):
                        sig[name] = "i1"
                    elif isinstance(value, int):
                        sig[name] = "i32"
                    else:
                        sig[name] = "fp32"
                for name in consts:
                    sig[name] = "constexpr"
                job = dict(family=family[0], module=self.module, kernel=self.name, signature=sig, consts=consts,
                           warps=opts.get("num_warps", 4), stages=opts.get("num_stages", 3), cap=opts.get("maxnreg"))  # fmt: skip
                key = json.dumps({k: v for k, v in job.items() if k != "family"}, sort_keys=True, default=str)
                if key not in seen:
                    seen.add(key)
                    launches.append(job)
                return self.fn[grid](*args, **kwargs, **opts)

            return launch

    wrap_kernels(Recorder)
    # past every line's decode threshold; 80 steps: a full and a partial chunk
    SHAPE.update(B=1, T=80, H=2, D=dims[0], V=dims[1])
    cases = make_cases(torch, "cpu", getattr(torch, dtype_name))
    unknown = [name for name in families if name not in cases]
    if unknown:
        raise SystemExit(f"launch_audit: --families {','.join(unknown)}: expected among {', '.join(cases)}")
    for name in families:
        family[0] = name
        fwd, wrt = cases[name]
        o = fwd()[0]
        torch.autograd.grad(o, wrt, torch.ones_like(o))
    return launches


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="retention,linear_attn,simple_gla,gla")
    p.add_argument("--dims", default="128", help="K = V, or K,V")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    args = p.parse_args(argv)
    from gla_kernel_regs import SM90_MAX_SHARED

    os.environ["FLA_COMPILE_TRITON"] = "interpret"
    os.environ["TRITON_INTERPRET"] = "1"
    dims = [int(x) for x in args.dims.split(",")]
    K, V = dims[0], dims[-1]  # one number: K = V
    launches = record(args.families.split(","), (K, V), args.dtype)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT)], input=json.dumps(launches, default=str), env=env,
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if len(rows) != len(launches):
        print(out.stderr[-3000:], file=sys.stderr)
        return 1
    print(f"K = {K}, V = {V}, {args.dtype}, sm_90 (offline), as sm90's tables launch them")
    print("| family | kernel | warps | stages | cap | registers | spill bytes | shared bytes | programs per SM |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for job, u in zip(launches, rows):
        head = f"| {job['family']} | {job['kernel']} | {job['warps']} | {job['stages']} | {job['cap'] or 'none'} |"
        if "error" in u:
            print(f"{head} {u['error']} | | | |")
        else:
            flag = " **one**" if u["per_sm"] == 1 and job["kernel"] not in STATE_PASSES else ""
            if u["shared"] > SM90_MAX_SHARED:  # the GPU runs it on fewer stages (``launch.fitted``)
                flag = " **over the shared memory: runs on fewer stages**"
            print(f"{head} {u['regs']} | {u['spill']} | {u['shared']} | {u['per_sm']}{flag} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

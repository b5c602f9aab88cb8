"""Registers, spills and shared memory of the delta line's backward kernels, compiled offline (no GPU).

    python benchmarks/delta_bwd_regs.py [--arch 90] [--warps 8,4] [--dtype bf16] [--gates 0,1,2]

Compiles the state-gradient pass and the WY backward (no gate, scalar gate: the kernel that fuses it with the k kᵀ
pairs; a gate per key dim: the WY kernel alone) at K = V = 128, BT = 64 for ``GPUTarget("cuda", arch)`` and reads the cubin's resource usage with the cuobjdump Triton ships. The
counts come from this machine's Triton, which may differ from the GPU machine's; a guide, not a measurement.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import pathlib
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

log = logging.getLogger("delta_bwd_regs")


def compile_one(fn, consts, dt, arch, warps, stages, types=None):
    """``fn`` compiled offline for ``arch`` (``triton.compile`` to a GPUTarget, no GPU): constexprs not in ``consts``
    at their defaults, the pointers named below in ``dt`` and the others fp32 (``types``: more pointer element types
    by name), pointers 16-byte aligned. Shared with ``tests/lowering/test_gla_triton_compile.py``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    typed = {
        "q": dt,
        "k": dt,
        "v": dt,
        "w": dt,
        "do": dt,
        "dh": dt,
        "dvn": dt,
        "X": dt,
        "h": dt,
        "dv": dt,
        "dw": dt,
        "o": dt,
        "dko": dt,
        "hin": dt,
    }
    typed.update(types or {})
    consts = dict(consts)
    for name, prm in inspect.signature(fn.fn).parameters.items():  # constexpr flags not given: at their defaults
        if name not in consts and "constexpr" in str(prm.annotation) and prm.default is not inspect.Parameter.empty:
            consts[name] = prm.default
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in ("cu", "info", "chunk_off"):
            sig[name] = "*i32"
        elif name in ("SEG_S", "SEG_L", "S"):  # integer arguments
            sig[name] = "i32"
        else:
            sig[name] = "fp32" if name == "scale" else "*" + typed.get(name, "fp32")
    # pointers 16-byte aligned, as the launcher's specialization tells Triton (without it: scalar loads)
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if sig[n].startswith("*")}
    src = ASTSource(fn, sig, constexprs=consts, attrs=attrs)
    out = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages})
    return out


def usage(compiled) -> dict:
    """Registers and spill stores from ``ptxas -v`` on the kernel's PTX (the ptxas Triton used for the cubin, its
    ``--regAllocOptLevel=2`` workaround left out), and the shared memory Triton gives the kernel."""
    import triton

    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    arch = compiled.metadata.target.arch
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(compiled.asm["ptx"])
        text = ""
        for tool in ("ptxas-blackwell", "ptxas"):  # the PTX version of Triton 3.9 needs CUDA 13's
            cmd = [os.path.join(tools, tool), "-v", f"--gpu-name=sm_{arch}{'a' if arch >= 90 else ''}", src]
            text = subprocess.run(cmd + ["-o", os.path.join(tmp, "k.cubin")], capture_output=True, text=True).stderr
            if "Used" in text:
                break
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores", text)
    return {
        "regs": int(regs.group(1)) if regs else None,
        "spill": int(spill.group(1)) if spill else None,
        "shared": compiled.metadata.shared,
    }


def usage_row(head: str, fn, consts, dt, arch, warps, stages) -> str:
    """``head`` (a table row's first cells, ending in "|") and "regs | spill | shared |" of one offline compile;
    a failed compile gives its error in the row instead (one failure is a row, not a lost table)."""
    try:
        u = usage(compile_one(fn, consts, dt, arch, warps, stages))
        return f"{head} {u['regs']} | {u['spill']} | {u['shared']} |"
    except Exception as e:
        return f"{head} error: {type(e).__name__}: {str(e)[:80]} | | |"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser()
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--warps", default="8,4")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--gates", default="0,1,2")
    args = p.parse_args()
    from fla_compile.lowering.delta import triton_wy_bwd as kwb

    prec = "ieee" if args.dtype == "fp32" else "tf32"
    K = V = 128
    BT = 64
    rows = [
        "| kernel | gate | BK | BV | warps | regs | spill | shared |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for gid in (int(g) for g in args.gates.split(",")):
        dh = dict(H=16, G=1, K=K, V=V, BT=BT, GATE=gid, USE_DHT=True, STORE_DH0=True, PREC=prec)
        wy = dict(H=16, G=1, K=K, V=V, BT=BT, BV=64, GATE=gid, PREC=prec)
        jobs = [
            ("chunk_delta_dh_kernel", kwb.chunk_delta_dh_kernel, dict(dh, BK=128, BV=64)),
            ("chunk_wy_bwd_kernel", kwb.chunk_wy_bwd_kernel, dict(wy, BK=128)),
        ]
        if gid != 2:  # the WY backward fused with the pairs (no gate, scalar gate)
            jobs[1] = ("chunk_wy_pair_bwd_kernel", kwb.chunk_wy_pair_bwd_kernel, dict(wy, BK=64))
        for name, fn, consts in jobs:
            for warps in (int(w) for w in args.warps.split(",")):
                head = f"| {name} | {gid} | {consts['BK']} | {consts.get('BV', '-')} | {warps} |"
                row = usage_row(head, fn, consts, args.dtype, args.arch, warps, 2)
                rows.append(row)
                log.info(row)
    log.info("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Registers, spills and shared memory of the chunk kernels on fp32 inputs, per dot precision, compiled offline.

    python benchmarks/fp32_dot_regs.py [--arch 90] [--precs ieee,tf32,tf32x3] [--other-warps]
    python benchmarks/fp32_dot_regs.py --grid [--precs tf32x3]   # the launch options a fp32 table could take

fp32 inputs run every product at ``launch.prec``: "ieee" at torch's "highest" (Triton's FMA loops), "tf32" at
"high", and "tf32x3" (three tf32 products, ``common/dots.py``) once ``launch.FP32_HIGHEST`` takes it. This
compiles the heavy kernels of a gated_delta_rule forward and backward at K = V = 128, BT = 64 (scalar gate)
with the sm90 table's warps and stages (``--other-warps``: 8 for 4 and 4 for 8) and prints ptxas's counts
(``delta_bwd_regs.usage_row``). The counts come from this machine's Triton; a guide, not a measurement.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

log = logging.getLogger("fp32_dot_regs")


def jobs():
    from fla_compile.lowering.delta import triton_wy as dw
    from fla_compile.lowering.delta import triton_wy_bwd as db
    from fla_compile.lowering.gla import triton_kernels as gk

    base = dict(H=16, G=1, K=128, V=128, BT=64, GATE=1)
    return [  # name, kernel, constexprs (PREC / MERGE_PREC: the precision under test), warps, stages
        ("chunk_delta_h", dw.chunk_delta_h_kernel, dict(base, BK=128, BV=64, USE_H0=True, PREC=None), 4, 2),
        ("chunk_wu", dw.chunk_wu_kernel, dict(base, BK=64, BV=64, PREC=None), 4, 2),
        ("chunk_wy (solve only)", dw.chunk_wy_kernel,
         dict(base, BK=16, BV=16, LOAD_X=False, PREC=None, SOLVE_ONLY=True, MERGE_PREC=None), 2, 1),
        ("chunk_fwd_o", gk.chunk_fwd_o_kernel, dict(base, BK=64, BV=128, PREC=None, SA=64), 8, 3),
        ("chunk_delta_dh", db.chunk_delta_dh_kernel, dict(base, BK=128, BV=64, USE_DHT=True, STORE_DH0=True, PREC=None), 8, 2),
        ("chunk_bwd_dqk", gk.chunk_bwd_dqk_kernel, dict(base, BK=64, BV=64, PREC=None, DW=True), 4, 2),
        ("chunk_wy_pair_bwd", db.chunk_wy_pair_bwd_kernel, dict(base, BK=64, BV=64, PREC=None), 4, 1),
    ]  # fmt: skip


# --grid: per kernel, the values its launch options can take (the V block knobs BV_o, BV_h, BV_dh of the arch
# tables, warps, stages), each compiled at every precision asked
GRID = {
    "chunk_fwd_o": dict(BV=(64, 128), warps=(4, 8), stages=(1, 2, 3)),
    "chunk_delta_h": dict(BV=(32, 64), warps=(4, 8), stages=(1, 2)),
    "chunk_delta_dh": dict(BV=(32, 64), warps=(4, 8), stages=(1, 2)),
    "chunk_wu": dict(warps=(4, 8), stages=(1, 2)),
    "chunk_bwd_dqk": dict(warps=(4, 8), stages=(1, 2)),
    "chunk_wy_pair_bwd": dict(warps=(4, 8), stages=(1, 2)),
}


def grid_jobs(base_jobs):
    """(name, kernel, constexprs, warps, stages) over :data:`GRID` for the kernels it names."""
    for name, fn, consts, _, _ in base_jobs:
        g = GRID.get(name)
        if g is None:
            continue
        for bv in g.get("BV", (consts.get("BV"),)):
            for warps in g["warps"]:
                for stages in g["stages"]:
                    yield f"{name} BV {bv}", fn, dict(consts, BV=bv), warps, stages


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--precs", default="ieee,tf32,tf32x3")
    p.add_argument("--other-warps", action="store_true", help="8 warps where the table has 4, 4 where it has 8")
    p.add_argument("--grid", action="store_true", help="every launch option in GRID instead of the table's")
    args = p.parse_args()
    from delta_bwd_regs import usage_row

    rows = ["| kernel | prec | warps | stages | regs | spill | shared |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, fn, consts, warps, stages in grid_jobs(jobs()) if args.grid else jobs():
        if args.other_warps:
            warps = {4: 8, 8: 4}.get(warps, warps)
        for prec in args.precs.split(","):
            c = {k: (prec if v is None else v) for k, v in consts.items()}  # other flags: compile_one's defaults
            row = usage_row(f"| {name} | {prec} | {warps} | {stages} |", fn, c, "fp32", args.arch, warps, stages)
            rows.append(row)
            log.info(row)
    log.info("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One forward+backward of ours, then of flash-linear-attention's, for a kernel profiler (CUDA).

    ncu --clock-control none -k regex:"dh|dhu" --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats -c 4 python benchmarks/ncu_once.py --family delta_rule

Warm-up runs go first (compiles, FLA's autotuning) inside an NVTX range named ``warmup``; the measured
pair inside ``ours`` and ``fla`` ranges, so ``--nvtx --nvtx-include "ours/" --nvtx-include "fla/"``
profiles the measured launches alone.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from kernels import fla_op, fwd_bwd, inputs, ours  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--family", default="delta_rule")
    p.add_argument("--shape", default="8,2048,16,128")
    a = p.parse_args()
    shape = tuple(int(x) for x in a.shape.split(","))
    steps = {}
    for name, get in (("ours", ours), ("fla", fla_op)):
        try:
            steps[name] = fwd_bwd(get(a.family), inputs(a.family, *shape, grad=True))
        except Exception as e:  # FLA missing or refusing: profile ours alone
            print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr)
    with torch.cuda.nvtx.range("warmup"):
        for step in steps.values():
            step(), step()
    torch.cuda.synchronize()
    for name, step in steps.items():
        with torch.cuda.nvtx.range(name):
            step()
        torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())

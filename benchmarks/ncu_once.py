"""One forward+backward of ours, then of flash-linear-attention's, for a kernel profiler (CUDA).

    ncu --clock-control none -k regex:"delta_dh|dhu" --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats python benchmarks/ncu_once.py --family delta_rule

Two warm-up steps of each go first (compiles, FLA's autotuning), then one measured step of each: with
``-k`` naming kernels of both, the last launches ncu lists are the measured pair. (NVTX ranges do not help
here: the backward's kernels are launched from autograd's own thread, outside the caller's ranges.)
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
    for step in steps.values():
        step(), step()
    torch.cuda.synchronize()
    for step in steps.values():
        step()
        torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())

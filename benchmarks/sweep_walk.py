"""The one-pass forward (``gla.triton_launch.FWD_WALK``: each program walks a sequence's chunks with the state in
registers) against the two-pass one (state pass, then output kernel), per launch option (CUDA).

    python benchmarks/sweep_walk.py [--shapes "8,2048,16,128;8,2048,32,64"] [--kinds none,scalar,head] [--options table]

For each shape and gate kind (none: linear_attn; scalar: simple_gla; head: retention's one decay per head; vector:
gla, whose A kernel runs before either form) it times the forward's kernels (torch.profiler, ms) of the two-pass form
as shipped, then of the walk at each V block, warp count and stage count, and each walk's largest relative difference
from the two-pass outputs (o and the final state). Prints one table; the fastest walk per row is what a ``fwd_walk``
entry of ``configs/sm90.json`` would ship.
``--options table`` times only the table's own walk options, forced at every grid (where ``WALK_FILL`` should sit).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from kernels import device_ms  # noqa: E402
from sweep_gla_kernels import CONFIG_KIND, problem  # noqa: E402

from fla_compile.lowering.common.autotune import candidates  # noqa: E402
from fla_compile.lowering.gla import triton_launch as gla_triton  # noqa: E402
from tests.compare import rel  # noqa: E402

WALKS = [{"walk_BV": bv, "walk_warps": w, "walk_stages": s} for bv in (32, 64) for w in (4, 8) for s in (2, 3)]


def forward(kind, xs, cfg, walk: bool):
    q, k, v, g, h0 = xs[:5]
    gla_triton.FWD_WALK = walk
    try:
        with torch.no_grad():
            return gla_triton.chunk_forward(q, k, v, g, CONFIG_KIND[kind], 0.088, h0, None, config=cfg)
    finally:
        gla_triton.FWD_WALK = None


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="8,2048,16,128;2,8192,16,128;8,2048,32,64")
    p.add_argument("--kinds", default="none,scalar,head")
    p.add_argument("--options", choices=["grid", "table"], default="grid", help="the walk options timed")
    p.add_argument("--walks", default="", help="the grid's options instead, 'BV:warps:stages,...' (e.g. 64:8:1)")
    args = p.parse_args()
    walks = WALKS if args.options == "grid" else [{}]
    if args.walks and args.options == "grid":
        walks = [dict(zip(WALKS[0], map(int, w.split(":")))) for w in args.walks.split(",")]
    rows = ["| shape | kind | form | fwd kernels ms | vs two-pass |", "| --- | --- | --- | --- | --- |"]
    for shape in args.shapes.split(";"):
        B, T, H, D = (int(x) for x in shape.split(","))
        for kind in args.kinds.split(","):
            xs = problem(kind, B, T, H, D)
            base = dict(candidates("chunk", CONFIG_KIND[kind], "sm90", D, D)[0])
            ref = forward(kind, xs, base, False)
            ms = device_ms(lambda kind=kind, xs=xs, base=base: forward(kind, xs, base, False))
            rows.append(f"| {shape} | {kind} | two-pass | {ms:.3f} | |")
            print(rows[-1], flush=True)
            for opt in walks:
                cfg = {**base, **opt}
                try:
                    out = forward(kind, xs, cfg, True)
                    ms = device_ms(lambda kind=kind, xs=xs, cfg=cfg: forward(kind, xs, cfg, True))
                except Exception as e:  # an option the kernel cannot take: a row that says so
                    rows.append(f"| {shape} | {kind} | walk {opt or 'table'} | {type(e).__name__} | |")
                    continue
                err = max(rel(a, b) for a, b in zip(out, ref))
                form = (
                    f"walk {opt}" if opt else "walk (table: " + ", ".join(f"{k} {cfg.get(k)}" for k in WALKS[0]) + ")"
                )
                rows.append(f"| {shape} | {kind} | {form} | {ms:.3f} | {err:.1e} |")
                print(rows[-1], flush=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Retention's per-head decays formed in the kernels (gate id 3, ``gla/triton_launch.HEAD_DECAY``) against the scalar-
gate path (a [B, T, H] copy of the decays and its cumsum kernel) and FLA's ``chunk_retention``, on one CUDA device.

    python benchmarks/retention_head_decay.py [--shapes "8,2048,16,128;8,2048,32,64"] [--no-fla]

Per shape: forward and forward+backward, wall time (``do_bench`` of back-to-back calls) and kernel time, in ms, as
``benchmarks/kernels.py`` measures its rows.
"""

from __future__ import annotations

import argparse
import sys

sys.path.insert(0, "benchmarks")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="8,2048,16,128;8,2048,32,64")
    p.add_argument("--no-fla", action="store_true")
    args = p.parse_args(argv)
    import kernels

    from fla_compile.lowering.gla import triton_launch as gla_triton

    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
    variants = [("ours, decays in the kernels", True), ("ours, scalar-gate path", False)]
    if not args.no_fla:
        variants.append(("FLA chunk_retention", None))
    rows = []
    was = gla_triton.HEAD_DECAY
    try:
        for shape in shapes:
            for name, flag in variants:
                if flag is not None:
                    gla_triton.HEAD_DECAY = flag
                get = kernels.ours if flag is not None else kernels.fla_op
                times = [
                    kernels.time_fwd(get, "retention", shape)(),
                    kernels.time_fwd_bwd(get, "retention", shape)(),
                    kernels.time_fwd(get, "retention", shape, kernels.device_ms)(),
                    kernels.time_fwd_bwd(get, "retention", shape, kernels.device_ms)(),
                ]
                rows.append((shape, name, *times))
                print(f"{shape} {name}: " + " ".join(f"{t:.3f}" for t in times), flush=True)
    finally:
        gla_triton.HEAD_DECAY = was
    print("| shape | what | fwd wall | fwd+bwd wall | fwd kernels | fwd+bwd kernels |")
    print("| --- | --- | --- | --- | --- | --- |")
    for shape, name, *times in rows:
        print(f"| {shape} | {name} | " + " | ".join(f"{t:.3f}" for t in times) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

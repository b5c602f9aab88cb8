"""Registers, spills, shared memory and pipelined loads of hgrn's tile walk (triton_tile), compiled offline (no GPU).

    python benchmarks/scan_tile_regs.py [--arch 90] [--dtype bf16,fp32]

Compiles the forward and backward kernels for ``GPUTarget("cuda", arch)`` at the default launch options
(``triton_tile.CONFIG`` / ``BWD_CONFIG``) and the ``--sweep-tile`` options of benchmarks/scan_hgrn.py, and reads
ptxas's resource usage (benchmarks/delta_bwd_regs.py's ``usage``). ``cp.async`` counts the loads the software
pipeline turned asynchronous (0: the loop was not pipelined, each tile's loads wait in turn). The counts come
from this machine's Triton, which may differ from the GPU machine's; a guide, not a measurement.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

log = logging.getLogger("scan_tile_regs")


def compile_one(fn, consts, dt, arch, warps, stages):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name == "cu_seqlens":
            sig[name] = "*i64"
        elif name in ("T", "D"):
            sig[name] = "i32"
        elif name in ("h0", "ht", "dht", "dh0"):
            sig[name] = "*fp32"
        else:
            sig[name] = "*" + dt
    # pointers and D divisible by 16, as the launcher's specialization tells Triton for D % 16 == 0
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if sig[n][0] == "*" or n == "D"}
    src = ASTSource(fn, sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages})


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser()
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--dtype", default="bf16,fp32")
    args = p.parse_args()
    from delta_bwd_regs import usage
    from scan_hgrn import TILE_SWEEP

    from fla_compile.lowering.scan import triton_tile as TT

    rows = [
        "| kernel | dtype | BT | BD | warps | stages | regs | spill | shared | cp.async |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    options = [(TT.CONFIG, TT.BWD_CONFIG)] + [({**TT.CONFIG, **o}, {**TT.BWD_CONFIG, **o}) for o in TILE_SWEEP]
    seen = set()
    for dt in args.dtype.split(","):
        for fwd, bwd in options:
            jobs = [
                ("tile_fwd_kernel", TT.tile_fwd_kernel, fwd, {}),
                ("tile_bwd_kernel", TT.tile_bwd_kernel, bwd, {"USE_DHT": True}),
            ]
            for name, fn, cfg, extra in jobs:
                key = (name, dt, *sorted(cfg.items()))
                if key in seen:
                    continue
                seen.add(key)
                consts = dict(USE_H0=True, IS_VARLEN=False, BT=cfg["BT"], BD=cfg["BD"], NUM_STAGES=cfg["num_stages"])
                head = f"| {name} | {dt} | {cfg['BT']} | {cfg['BD']} | {cfg['num_warps']} | {cfg['num_stages']} |"
                try:
                    k = compile_one(fn, {**consts, **extra}, dt, args.arch, cfg["num_warps"], cfg["num_stages"])
                    u = usage(k)
                    ptx = k.asm["ptx"]
                    n_async = ptx.count("cp.async.cg") + ptx.count("cp.async.ca")
                    row = f"{head} {u['regs']} | {u['spill']} | {u['shared']} | {n_async} |"
                except Exception as e:  # noqa: BLE001 - one failed compile is a row, not a lost table
                    row = f"{head} error: {type(e).__name__}: {str(e)[:80]} | | | |"
                rows.append(row)
                log.info(row)
    log.info("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

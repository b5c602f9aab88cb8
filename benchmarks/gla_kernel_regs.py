"""Registers, spills and shared memory of the GLA line's chunk kernels (the state passes and the parallel ones),
compiled offline (no GPU), with and without a register cap (``<kernel>_maxnreg``).

    python benchmarks/gla_kernel_regs.py [--dims 64] [--warps 4] [--caps 128] [--gates 0,1,2,3,4] [--no-dg]

At 4 warps a kernel that takes 129-168 registers fits three programs a multiprocessor (65,536 registers) and one at
128 fits four: the output and dv kernels at K = V = 64 sit just above (RESULTS, fifteenth session). Counts come from
this machine's Triton for ``GPUTarget("cuda", 90)``, a guide for an H200 sweep, not a measurement. Every kernel as
the shipped tables launch it, both lines: ``benchmarks/launch_audit.py``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from delta_bwd_regs import compile_one, usage  # noqa: E402


def capped(cap):
    """A context in which ``triton.compile`` adds ``maxnreg=cap`` to its options (None: unchanged)."""
    import contextlib

    import triton

    @contextlib.contextmanager
    def ctx():
        orig = triton.compile
        if cap:
            triton.compile = lambda src, target=None, options=None: orig(
                src, target=target, options={**options, "maxnreg": cap}
            )
        try:
            yield
        finally:
            triton.compile = orig

    return ctx()


SM90_SHARED_PER_SM = 233472  # 228 KB of shared memory a Hopper multiprocessor holds
SM90_MAX_SHARED = 232448  # the most one program may ask (227 KB): more, and Triton refuses the launch


def programs_per_sm(regs: int, shared: int, warps: int) -> int:
    """Programs a Hopper multiprocessor holds at once: 65,536 registers handed out per warp in units of 256, 228 KB
    of shared memory with 1 KB reserved per program, at most 64 warps. An occupancy cliff (one program where a
    neighbouring config fits two) shows here before any GPU time is spent."""
    per_warp = -(-regs * 32 // 256) * 256
    by_regs = (65536 // per_warp) // warps
    by_shared = SM90_SHARED_PER_SM // (shared + 1024) if shared else 64
    return min(by_regs, by_shared, 64 // warps)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dims", type=int, default=64, help="K = V")
    p.add_argument("--warps", type=int, default=4)
    p.add_argument("--caps", default="128", help="register caps to try besides none")
    p.add_argument("--no-dg", action="store_true", help="dq/dk without the gate gradient (retention's fixed decays)")
    p.add_argument(
        "--gates",
        default="0,1,2,3",
        help="gate ids: none, scalar, vector, one decay per head, a scalar gate the kernels scan",
    )
    args = p.parse_args()
    from fla_compile.lowering.gla import triton_kernels as kern

    D = args.dims
    caps = [None] + [int(c) for c in args.caps.split(",") if c]
    print("| kernel | gate id | cap | registers | spill bytes | shared bytes | programs per SM |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for gate in (int(g) for g in args.gates.split(",")):
        base = dict(H=32, G=1, K=D, V=D, BT=64, BK=min(D, 64), BV=D, GATE=gate, PREC="tf32", SA=64)
        dqk = {k: v for k, v in base.items() if k != "SA"}
        dqk["BV"] = min(D, 64)
        dqk["DG"] = not args.no_dg
        state = {k: v for k, v in base.items() if k != "SA"}
        state["BK"] = min(D, 128)
        fwd_h = dict(state, USE_H0=True, STORE_H=True, STORE_HT=True)
        bwd_dh = dict(state, USE_DHT=True, STORE_DH0=True)
        for name, fn, consts, stages in (
            ("state", kern.chunk_fwd_h_kernel, fwd_h, 3),
            ("state gradient", kern.chunk_bwd_dh_kernel, bwd_dh, 3),
            ("output", kern.chunk_fwd_o_kernel, base, 2),
            ("dv", kern.chunk_bwd_dv_kernel, base, 3),
            ("dq/dk", kern.chunk_bwd_dqk_kernel, dqk, 3),
        ):
            for cap in caps:
                try:
                    with capped(cap):
                        u = usage(compile_one(fn, consts, "bf16", 90, args.warps, stages))
                    per_sm = programs_per_sm(u["regs"], u["shared"], args.warps)
                    row = f"{u['regs']} | {u['spill']} | {u['shared']} | {per_sm}"
                except Exception as e:  # a row, not a lost table
                    row = f"error: {type(e).__name__}: {str(e)[:80]} | | |"
                print(f"| {name} | {gate} | {cap or 'none'} | {row} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Launch shapes of the chunked selective-scan kernels (``lowering/scan/triton_chunk_selective.py``) on a GPU.

    python benchmarks/sweep_mamba_chunk.py          # the two mamba shapes of benchmarks/scan_hgrn.py, bf16
    python benchmarks/sweep_mamba_chunk.py --fwd    # the forward rows only (the three forward kernels)

Times the forward (``forward``) and the backward (``backward``: chunk states + reverse pass) alone for a
few (BT, BD, warps) choices, with the registers and spills of the compiled kernels, so the module's
defaults can be set from measurements. Every config's outputs are compared with the default's (a wrong
config shows as a large difference, never as a fast row).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from triton.testing import do_bench

SHAPES = [(4, 2048, 1536, 16), (1, 8192, 4096, 16)]
FWD = [(16, 16, 4), (16, 16, 2), (16, 8, 4), (8, 16, 4), (32, 16, 4), (16, 32, 4), (8, 32, 4)]
# the forward with the states on the lanes (``FWD_LANES``): warps split channels only
FWD_LANES = [(16, 16, 4), (16, 16, 2), (16, 32, 4), (16, 8, 2), (16, 32, 8), (8, 16, 4)]
# the forward with the states a compile-time size (``FWD_VEC``, N a power of two): warps split channels only
FWD_VEC = [(8, 32, 4), (8, 16, 2), (4, 32, 4), (4, 64, 8), (8, 64, 8), (16, 64, 8), (16, 32, 4), (2, 32, 4)]
# the backward on the vectorized layout (``BWD_VEC``): BT, the states passes' BD and warps, the gradient kernel's
# BD and warps, chunks a program
BWD_VEC = [
    (8, 32, 4, 32, 4, 8), (8, 32, 4, 32, 4, 4), (8, 32, 4, 32, 4, 16), (8, 32, 4, 32, 4, 32), (8, 32, 4, 16, 2, 8),
    (8, 16, 2, 32, 4, 8), (4, 32, 4, 32, 4, 8), (4, 32, 4, 32, 4, 16), (8, 64, 8, 64, 8, 8),
]  # fmt: skip
BWD = [(16, 16, 4, 4), (16, 16, 4, 8), (16, 8, 4, 4), (8, 16, 4, 4), (8, 16, 4, 8), (32, 16, 4, 8), (16, 32, 4, 8)]


def inputs(B, T, D, N, dtype=torch.bfloat16):
    gen = torch.Generator(device="cuda").manual_seed(0)
    u = torch.randn(B, T, D, device="cuda", dtype=dtype, generator=gen)
    dt = F.softplus(torch.randn(B, T, D, device="cuda", generator=gen) - 2).to(dtype)
    A = -torch.rand(D, N, device="cuda", generator=gen) * 8
    Bm, C = (torch.randn(B, T, N, device="cuda", dtype=dtype, generator=gen) for _ in range(2))
    dy = torch.randn(B, T, D, device="cuda", dtype=dtype, generator=gen)
    dht = torch.zeros(B, D, N, device="cuda")
    return (u, dt, A, Bm, C), dy, dht


def diff(a, b):
    return max(((x.double() - y.double()).norm() / y.double().norm().clamp_min(1e-30)).item() for x, y in zip(a, b))


def main(fwd_only: bool = False):
    from fla_compile.lowering.scan import triton_chunk_selective as TC

    print(torch.cuda.get_device_name())
    print("| B | T | D | N | kernel | BT | BD | warps | ms | vs default | regs/spills |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for B, T, D, N in SHAPES:
        xs, dy, dht = inputs(B, T, D, N)
        args = (*xs, None, None)
        saved = TC.BT_FWD, TC.BD_FWD, TC.WARPS_FWD, TC.BT_BWD, TC.BD_BWD, TC.WARPS_STATES, TC.WARPS_BWD
        lanes_shipped, vec_shipped, vec_launch = TC.FWD_LANES, TC.FWD_VEC, (TC.BT_VEC, TC.BD_VEC, TC.WARPS_VEC)
        bwd_vec_shipped = TC.BWD_VEC, *_bwd_vec_launch(TC)
        ref_y = TC.forward(*args)
        ref_g = TC.backward(*args, dy, dht)[:5]
        try:
            kernels = (
                ("fwd", False, False, FWD, TC.chunk_selective_fwd_kernel),
                ("fwd lanes", True, False, FWD_LANES, TC.chunk_selective_fwd_lanes_kernel),
                ("fwd vec", True, True, FWD_VEC, TC.chunk_selective_fwd_vec_kernel),
            )
            for name, lanes, vec, configs, kernel in kernels:
                TC.FWD_LANES, TC.FWD_VEC = lanes, vec
                for BT, BD, W in configs:
                    if vec:
                        TC.BT_VEC, TC.BD_VEC, TC.WARPS_VEC = BT, BD, W
                    else:
                        TC.BT_FWD, TC.BD_FWD, TC.WARPS_FWD = BT, BD, W
                    try:
                        got = TC.forward(*args)
                        ms = do_bench(lambda args=args: TC.forward(*args))
                        print(f"| {B} | {T} | {D} | {N} | {name} | {BT} | {BD} | {W} | {ms:.3f} | "
                              f"{diff(got, ref_y):.1e} | {_regs(kernel)} |")  # fmt: skip
                    except Exception as e:  # noqa: BLE001 - a failed config is a row with the error
                        print(
                            f"| {B} | {T} | {D} | {N} | {name} | {BT} | {BD} | {W} | error: {type(e).__name__}: {e} | | |"
                        )
            TC.FWD_LANES, TC.FWD_VEC = lanes_shipped, vec_shipped
            TC.BT_VEC, TC.BD_VEC, TC.WARPS_VEC = vec_launch
            TC.BT_FWD, TC.BD_FWD, TC.WARPS_FWD = saved[:3]
            for config in [] if fwd_only else BWD_VEC:
                _set_bwd_vec(TC, True, *config)
                row = " | ".join(str(c) for c in config)
                try:
                    got = TC.backward(*args, dy, dht)[:5]
                    ms = do_bench(lambda a=(*args, dy, dht): TC.backward(*a))
                    print(f"| {B} | {T} | {D} | {N} | bwd vec: BT, states BD, warps, BD, warps, G | {row} | "
                          f"{ms:.3f} | {diff(got, ref_g):.1e} | {_regs(TC.chunk_selective_bwd_vec_kernel)} |")  # fmt: skip
                except Exception as e:  # noqa: BLE001
                    print(f"| {B} | {T} | {D} | {N} | bwd vec | {row} | error: {type(e).__name__}: {e} | | |")
            _set_bwd_vec(TC, *bwd_vec_shipped)
            TC.BWD_VEC = False
            for BT, BD, WS, WB in [] if fwd_only else BWD:
                TC.BT_BWD, TC.BD_BWD, TC.WARPS_STATES, TC.WARPS_BWD = BT, BD, WS, WB
                try:
                    got = TC.backward(*args, dy, dht)[:5]
                    ms = do_bench(lambda a=(*args, dy, dht): TC.backward(*a))
                    print(f"| {B} | {T} | {D} | {N} | bwd | {BT} | {BD} | {WS}/{WB} | {ms:.3f} | "
                          f"{diff(got, ref_g):.1e} | {_regs(TC.chunk_selective_bwd_kernel)} |")  # fmt: skip
                except Exception as e:  # noqa: BLE001
                    print(
                        f"| {B} | {T} | {D} | {N} | bwd | {BT} | {BD} | {WS}/{WB} | error: {type(e).__name__}: {e} | | |"
                    )
        finally:
            (TC.BT_FWD, TC.BD_FWD, TC.WARPS_FWD, TC.BT_BWD, TC.BD_BWD, TC.WARPS_STATES, TC.WARPS_BWD) = saved
            TC.FWD_LANES, TC.FWD_VEC = lanes_shipped, vec_shipped
            TC.BT_VEC, TC.BD_VEC, TC.WARPS_VEC = vec_launch
            _set_bwd_vec(TC, *bwd_vec_shipped)


def _bwd_vec_launch(TC):
    return TC.BT_BWD_VEC, TC.BD_STATES_VEC, TC.WARPS_STATES_VEC, TC.BD_BWD_VEC, TC.WARPS_BWD_VEC, TC.CHUNKS_BWD_VEC


def _set_bwd_vec(TC, on, BT, BD_s, W_s, BD, W, G):
    TC.BWD_VEC = on
    TC.BT_BWD_VEC, TC.BD_STATES_VEC, TC.WARPS_STATES_VEC = BT, BD_s, W_s
    TC.BD_BWD_VEC, TC.WARPS_BWD_VEC, TC.CHUNKS_BWD_VEC = BD, W, G


def _regs(kernel) -> str:
    """Registers and spills of the kernel's most recently compiled variant (best effort: cache layouts vary)."""
    try:
        cache = kernel.device_caches[torch.cuda.current_device()][0]
        k = list(cache.values())[-1]
        return f"{k.n_regs}/{k.n_spills}"
    except Exception:  # noqa: BLE001 - informational only
        return "?"


if __name__ == "__main__":
    import sys

    main(fwd_only="--fwd" in sys.argv[1:])

"""Launch shapes of the chunked selective-scan kernels (``lowering/scan/triton_chunk_selective.py`` and
``triton_chunk_selective_vec.py``) on a GPU.

    python benchmarks/sweep_mamba_chunk.py          # the two mamba shapes of benchmarks/scan_hgrn.py, bf16
    python benchmarks/sweep_mamba_chunk.py --fwd    # the forward rows only
    python benchmarks/sweep_mamba_chunk.py --vec    # the vectorized kernels only

Times the forward (``forward``) and the backward (``backward``: chunk states + reverse pass) alone for a
few (BT, BD, warps) choices, with the registers and spills of the compiled kernels, so the module's
defaults can be set from measurements. Every config's outputs are compared with the default's (a wrong
config shows as a large difference, never as a fast row).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from triton.testing import do_bench

SHAPES = [(4, 2048, 1536, 16), (1, 8192, 4096, 16), (1, 2048, 1536, 16), (8, 2048, 2048, 16)]
FWD = [(16, 16, 4), (16, 16, 2), (16, 8, 4), (8, 16, 4), (32, 16, 4), (16, 32, 4), (8, 32, 4)]
# the forward with the states on the lanes (``FWD_LANES``): warps split channels only
FWD_LANES = [(16, 16, 4), (16, 16, 2), (16, 32, 4), (16, 8, 2), (16, 32, 8), (8, 16, 4)]
# the vectorized kernels: (module attribute, value) swaps of their launch shapes
# (``triton_chunk_selective_vec.Tiles(BT, BD, warps, states a thread)``; None: as shipped)
VEC_SWAPS = [
    ("FWD", None), ("FWD", (16, 16, 2, 4)), ("FWD", (32, 16, 4, 2)), ("FWD", (32, 8, 2, 2)), ("FWD", (16, 16, 1, 4)),
    ("FWD", (8, 32, 1, 4)), ("FWD_WIDE_FROM", 0), ("FWD_WIDE_FROM", 1 << 30), ("CHUNKS_FWD", 8),
    ("FWD_IN_SEGMENTS", (32, 16, 4, 2)),
    ("BWD", None), ("BWD", (8, 16, 2, 4)), ("BWD", (8, 8, 1, 4)), ("BWD", (2, 32, 1, 4)), ("CHUNKS_BWD", 16),
    ("CHUNKS_BWD", 64), ("SEG_BWD", (8, 16, 2, 4)), ("SEG_BWD", (16, 16, 1, 4)), ("SEG_BWD", (4, 32, 1, 4)),
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


def main(fwd_only: bool = False, vec_only: bool = False):
    from fla_compile.lowering.scan import triton_chunk_selective as TC

    print(torch.cuda.get_device_name())
    print("| B | T | D | N | kernel | BT | BD | warps | ms | vs default | regs/spills |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for B, T, D, N in SHAPES:
        xs, dy, dht = inputs(B, T, D, N)
        args = (*xs, None, None)
        _sweep_vec(B, T, D, N, args, dy, dht, fwd_only)
        if vec_only:
            continue
        saved = TC.BT_FWD, TC.BD_FWD, TC.WARPS_FWD, TC.BT_BWD, TC.BD_BWD, TC.WARPS_STATES, TC.WARPS_BWD
        lanes_shipped = TC.FWD_LANES
        ref_y = TC.forward(*args)
        ref_g = TC.backward(*args, dy, dht)[:5]
        try:
            for lanes, configs in ((False, FWD), (True, FWD_LANES)):
                TC.FWD_LANES = lanes
                kernel = TC.chunk_selective_fwd_lanes_kernel if lanes else TC.chunk_selective_fwd_kernel
                name = "fwd lanes" if lanes else "fwd"
                for BT, BD, W in configs:
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
            TC.FWD_LANES = lanes_shipped
            TC.BT_FWD, TC.BD_FWD, TC.WARPS_FWD = saved[:3]
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
            TC.FWD_LANES = lanes_shipped


def _sweep_vec(B, T, D, N, args, dy, dht, fwd_only):
    """The vectorized kernels' rows: each of ``VEC_SWAPS`` alone, against the shipped module's outputs. The forward's
    rows run the forward in segments (``FWD_IN_SEGMENTS``, ``CHUNKS_FWD``) where its grid is small, as shipped."""
    from fla_compile.lowering.scan import triton_chunk_selective_vec as TV

    ref_y, ref_g = TV.forward(*args), TV.backward(*args, dy, dht)[:5]
    for name, value in VEC_SWAPS:
        bwd = name in ("BWD", "SEG_BWD", "CHUNKS_BWD")
        if bwd and fwd_only:
            continue
        saved = getattr(TV, name)
        setattr(TV, name, TV.Tiles(*value) if isinstance(value, tuple) else saved if value is None else value)
        try:
            if bwd:
                fn, ref, kernel = lambda: TV.backward(*args, dy, dht)[:5], ref_g, TV.chunk_selective_bwd_vec_kernel
            else:
                fn, ref, kernel = lambda: TV.forward(*args), ref_y, TV.chunk_selective_fwd_vec_kernel
            got = fn()
            ms = do_bench(fn)
            row = f"vec {'bwd' if bwd else 'fwd'}: {name} | {_cells(value)} | {ms:.3f} | {diff(got, ref):.1e}"
            print(f"| {B} | {T} | {D} | {N} | {row} | {_regs(kernel)} |")
        except Exception as e:  # noqa: BLE001 - a failed config is a row with the error
            print(f"| {B} | {T} | {D} | {N} | vec: {name} | {_cells(value)} | error: {type(e).__name__}: {e} | | |")
        finally:
            setattr(TV, name, saved)


def _cells(value) -> str:
    """The table's BT, BD and warps cells for a swap: a Tiles' fields (warps with its states a thread), else the
    value in the first cell."""
    if isinstance(value, tuple):
        BT, BD, warps, vec = value
        return f"{BT} | {BD} | {warps}, {vec} states a thread"
    return f"{'shipped' if value is None else value} | |"


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

    main(fwd_only="--fwd" in sys.argv[1:], vec_only="--vec" in sys.argv[1:])

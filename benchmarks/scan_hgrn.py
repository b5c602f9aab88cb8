"""Benchmark of the scan line (hgrn, mamba) on a GPU: our Triton walks against the memory floor and FLA.

    python benchmarks/scan_hgrn.py                # B, T, D shapes below, bf16 and fp32; then mamba's
    python benchmarks/scan_hgrn.py --quick        # one small shape each
    python benchmarks/scan_hgrn.py --sweep-chunk  # the chunked scan's launch options (triton_chunk.CONFIG)
    python benchmarks/scan_hgrn.py --sweep-tile   # the tile walk's (triton_tile.CONFIG and BWD_CONFIG)
    python benchmarks/scan_hgrn.py --shapes 8x2048x2048 [--sweep-tile]  # only these B x T x D (no mamba rows)
    python benchmarks/scan_hgrn.py --mamba        # the mamba rows only

Rows: forward and forward+backward of ``fla_compile.ops.hgrn`` (autograd included; "ours" is what the
dispatch picks, the kernel named beside it; the other kernels (walk, chunk, tile) forced below it),
flash-linear-attention 0.6.0's ``fused_recurrent_hgrn`` and ``chunk_hgrn`` when importable, and the memory floor
(bytes moved over
the measured device-copy bandwidth: x, g read and o written forward; x, g, o, do read and dx, dg written
backward). Relative errors of o and of every gradient against the fp64 torch path are printed beside.
Mamba rows: ``fla_compile.ops.mamba`` forward and forward+backward at [B, T, D] x N by the path the dispatch
takes (the chunked kernels at these lengths: the vectorized ones for N = 16), by the other chunked kernels and by
the fused walk (both forced), with the floor of reading u, dt, B, C and writing y, and errors against the fp64
torch path.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run from a checkout
from tests.compare import rel  # noqa: E402

SHAPES = [(8, 2048, 2048), (4, 8192, 1024), (1, 16384, 4096), (64, 256, 4096)]
# the last: N not a power of two, so "chunked" runs the vectorized kernels on states padded to 16
MAMBA_SHAPES = [(4, 2048, 1536, 16), (1, 8192, 4096, 16), (1, 2048, 1536, 16), (4, 2048, 1536, 15), (4, 2048, 1536, 32)]


def copy_bandwidth() -> float:
    x = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x))
    return 2 * x.numel() / (ms * 1e-3)


def fla_fn(name):
    try:
        return getattr(importlib.import_module("fla.ops.hgrn"), name)
    except Exception:  # noqa: BLE001 - FLA absent or broken here: the row is skipped
        return None


def measure(fn, x, g, do, ref):
    """(forward ms, forward+backward ms, the largest relative error of o, dx, dg against ``ref``)."""
    o = fn(x, g)
    dx, dg = torch.autograd.grad(o, (x, g), do)
    err = max((rel(a, b) for a, b in zip((o, dx, dg), ref)), default=float("nan"))
    with torch.no_grad():
        fwd = do_bench(lambda: fn(x, g))
    both = do_bench(lambda: torch.autograd.grad(fn(x, g), (x, g), do))
    return fwd, both, err


def main():
    from fla_compile import ops
    from fla_compile.lowering.scan import dispatch, torch_path

    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sweep-chunk", action="store_true", help="time the chunked scan's launch options")
    p.add_argument("--sweep-tile", action="store_true", help="time the tile walk's launch options")
    p.add_argument("--shapes", help="comma-separated BxTxD to run instead of SHAPES (the mamba rows skipped)")
    p.add_argument("--mamba", action="store_true", help="the mamba rows only")
    args = p.parse_args()
    shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    if args.sweep_chunk:
        return sweep_chunk(shapes)
    if args.sweep_tile:
        return sweep_tile(shapes)
    bw = copy_bandwidth()
    print(f"device copy bandwidth {bw / 1e12:.2f} TB/s; {torch.cuda.get_device_name()}")
    if args.mamba:
        return mamba_rows(args.quick, bw)
    print("| B | T | D | dtype | what | fwd ms | fwd+bwd ms | floor fwd / fwd+bwd ms | max rel err |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for B, T, D in [(2, 512, 256)] if args.quick else shapes:
        for dtype in (torch.bfloat16, torch.float32):
            x = torch.randn(B, T, D, device="cuda", dtype=dtype, requires_grad=True)
            g = F.logsigmoid(torch.randn(B, T, D, device="cuda", dtype=dtype)).requires_grad_()
            do = torch.randn_like(x)
            n = x.numel() * x.element_size()
            floor = (3 * n / bw * 1e3, 9 * n / bw * 1e3)
            ro, _ = torch_path.scan_forward(x.detach().double(), g.detach().double())
            rdx, rdg, _ = torch_path.scan_backward(
                x.detach().double(), g.detach().double(), None, None, ro, do.double(), torch.zeros(B, D).cuda()
            )
            picked = dispatch.pick(x)
            rows = [(f"ours ({picked})", lambda x, g: ops.hgrn(x, g)[0], None)]
            for other in (k for k in dispatch.KERNELS if k != picked):
                rows.append((f"ours, {other} forced", lambda x, g: ops.hgrn(x, g)[0], other))
            for name in ("fused_recurrent_hgrn", "chunk_hgrn"):
                fn = fla_fn(name)
                if fn is not None:
                    rows.append((f"FLA {name}", lambda x, g, fn=fn: fn(x, g)[0], None))
            for what, fn, kernel in rows:
                try:
                    fwd, both, err = forced(kernel, measure, fn, x, g, do, (ro, rdx, rdg))
                    print(f"| {B} | {T} | {D} | {str(dtype)[6:]} | {what} | {fwd:.3f} | {both:.3f} | "
                          f"{floor[0]:.3f} / {floor[1]:.3f} | {err:.1e} |")  # fmt: skip
                except Exception as e:  # noqa: BLE001 - a failed row is a row with the error, never a lost table
                    print(f"| {B} | {T} | {D} | {str(dtype)[6:]} | {what} | error: {type(e).__name__}: {e} | | | |")
    if not args.shapes:
        mamba_rows(args.quick, bw)


def forced(kernel, fn, *args):
    """``fn(*args)`` with the scan dispatch forced to ``kernel`` ('walk', 'chunk', 'tile', or None: the rule)."""
    from fla_compile.lowering.scan import dispatch

    saved, dispatch.FORCE_KERNEL = dispatch.FORCE_KERNEL, kernel
    try:
        return fn(*args)
    finally:
        dispatch.FORCE_KERNEL = saved


CHUNK_SWEEP = [
    dict(BT=64, BD=32, num_warps=8),
    dict(BT=32, BD=32, num_warps=4),
    dict(BT=64, BD=32, num_warps=4),
    dict(BT=32, BD=64, num_warps=4),
    dict(BT=64, BD=64, num_warps=8),
    dict(BT=128, BD=32, num_warps=8),
    dict(BT=64, BD=16, num_warps=4),
    dict(BT=128, BD=16, num_warps=4),
    dict(BT=64, BD=32, num_warps=8, BC=64, BDC=32),
    dict(BT=64, BD=32, num_warps=8, BC=256, BDC=16),
]


# The tile walk's options (forward and backward set alike; the bwd column tells the backward's best apart).
TILE_SWEEP = [
    dict(BT=64, BD=32, num_warps=4, num_stages=3),  # the forward's default
    dict(BT=64, BD=32, num_warps=8, num_stages=3),  # the backward's default
    dict(BT=64, BD=32, num_warps=4, num_stages=2),
    dict(BT=64, BD=32, num_warps=4, num_stages=4),
    dict(BT=64, BD=32, num_warps=4, num_stages=1),  # no pipeline: what the stages buy
    dict(BT=64, BD=32, num_warps=8, num_stages=2),
    dict(BT=64, BD=64, num_warps=4, num_stages=3),
    dict(BT=64, BD=64, num_warps=8, num_stages=2),
    dict(BT=128, BD=32, num_warps=4, num_stages=2),
    dict(BT=128, BD=32, num_warps=8, num_stages=3),
    dict(BT=32, BD=32, num_warps=2, num_stages=4),
    dict(BT=32, BD=64, num_warps=4, num_stages=4),
    dict(BT=64, BD=16, num_warps=2, num_stages=3),
    dict(BT=128, BD=16, num_warps=4, num_stages=3),
    dict(BT=256, BD=16, num_warps=4, num_stages=2),
    dict(BT=256, BD=16, num_warps=8, num_stages=3),
]


def sweep_chunk(shapes=SHAPES):
    """Forward and forward+backward ms of the chunked scan (triton_chunk directly, bf16) for each launch option
    of ``CHUNK_SWEEP`` over ``SHAPES``;
    the fastest forward, backward and both per shape are marked. Errors against fp64 beside."""
    from fla_compile.lowering.scan import triton_chunk as TC

    def apply(opts):
        TC.CONFIG = {**base, **opts}

    def restore():
        TC.CONFIG = base

    base = dict(TC.CONFIG)
    _sweep(TC, CHUNK_SWEEP, apply, restore, shapes)


def sweep_tile(shapes=SHAPES):
    """As :func:`sweep_chunk` for the tile walk (triton_tile directly, bf16): the options of ``TILE_SWEEP`` set on
    both ``CONFIG`` and ``BWD_CONFIG``; bwd ms is fwd+bwd less fwd. Its dispatch needs one program per SM
    (dispatch.TILE_WAVES): shapes under that are timed too, to show where it would lose."""
    from fla_compile.lowering.scan import triton_tile as TT

    def apply(opts):
        TT.CONFIG, TT.BWD_CONFIG = {**base[0], **opts}, {**base[1], **opts}

    def restore():
        TT.CONFIG, TT.BWD_CONFIG = base

    base = (dict(TT.CONFIG), dict(TT.BWD_CONFIG))
    _sweep(TT, TILE_SWEEP, apply, restore, shapes)


def _sweep(K, options, apply, restore, shapes):
    from fla_compile.lowering.scan import torch_path

    print("| B | T | D | config | fwd ms | bwd ms | fwd+bwd ms | max rel err |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for B, T, D in shapes:
        x = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
        g = F.logsigmoid(torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16))
        do = torch.randn_like(x)
        ro, _ = torch_path.scan_forward(x.double(), g.double())
        zeros = torch.zeros(B, D, device="cuda", dtype=torch.float64)
        rdx, rdg, _ = torch_path.scan_backward(x.double(), g.double(), None, None, ro, do.double(), zeros)
        results = []
        for opts in options:
            apply(opts)
            try:
                results.append((opts, *_time_kernels(K, x, g, do, (ro, rdx, rdg))))
            except Exception as e:  # noqa: BLE001 - a failed option is a row with the error
                print(f"| {B} | {T} | {D} | {opts} | error: {type(e).__name__}: {e} | | | |")
            finally:
                restore()
        keys = (lambda r: r[1], lambda r: r[2] - r[1], lambda r: r[2])  # fwd, bwd, fwd+bwd
        best = [min(results, key=key, default=(None,))[0] for key in keys]
        for opts, fwd, both, err in results:
            mark = "".join(f" **best {w}**" for w, o in zip(("fwd", "bwd", "fwd+bwd"), best) if o is opts)
            print(f"| {B} | {T} | {D} | {opts}{mark} | {fwd:.3f} | {both - fwd:.3f} | {both:.3f} | {err:.1e} |")
        del ro, rdx, rdg


def _time_kernels(K, x, g, do, ref):
    """(fwd ms, fwd+bwd ms, max rel err) of module K's forward and backward under its current launch options."""
    o, _ = K.forward(x, g)
    dx, dg, _ = K.backward(x, g, None, None, o, do, None)
    err = max(rel(a, b) for a, b in zip((o, dx, dg), ref))
    fwd = do_bench(lambda: K.forward(x, g))
    both = do_bench(lambda: K.backward(x, g, None, None, K.forward(x, g)[0], do, None))
    return fwd, both, err


def mamba_rows(quick: bool, bw: float):
    from fla_compile.lowering.scan import dispatch

    print("| B | T | D | N | dtype | path | fwd ms | fwd+bwd ms | floor fwd ms | max rel err |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for B, T, D, N in [(2, 512, 256, 16)] if quick else MAMBA_SHAPES:
        for dtype in (torch.bfloat16, torch.float32):
            for path in ("chunked", "chunked, not vectorized", "walk"):
                min_t, vec = dispatch.SELECTIVE_CHUNK_MIN_T, dispatch.SELECTIVE_VEC
                dispatch.SELECTIVE_CHUNK_MIN_T = min_t if path.startswith("chunked") else 1 << 62
                dispatch.SELECTIVE_VEC = path == "chunked"
                try:
                    mamba_row(B, T, D, N, dtype, path, bw)
                finally:
                    dispatch.SELECTIVE_CHUNK_MIN_T, dispatch.SELECTIVE_VEC = min_t, vec


def mamba_row(B, T, D, N, dtype, path, bw):
    """One row: ops.mamba forward and forward+backward (autograd, dt * x included) by the dispatch as set."""
    from fla_compile import ops
    from fla_compile.lowering.scan import torch_path

    try:
        x = torch.randn(B, T, D, device="cuda", dtype=dtype, requires_grad=True)
        dt = F.softplus(torch.randn(B, T, D, device="cuda", dtype=dtype) - 2).requires_grad_()
        A = (-torch.rand(D, N, device="cuda") * 8).requires_grad_()
        Bm = torch.randn(B, T, N, device="cuda", dtype=dtype, requires_grad=True)
        C = torch.randn(B, T, N, device="cuda", dtype=dtype, requires_grad=True)
        xs = (x, dt, A, Bm, C)
        dy = torch.randn_like(x)
        y = ops.mamba(*xs)[0]
        grads = torch.autograd.grad(y, xs, dy)
        leaves = [t.detach().double().requires_grad_() for t in xs]
        ry, _ = torch_path.selective_forward(leaves[1] * leaves[0], *leaves[1:])
        want = torch.autograd.grad(ry, leaves, dy.double())
        err = max(rel(a, b) for a, b in zip((y, *grads), (ry, *want)))
        del leaves, ry, want
        fwd, both, _ = measure(lambda x, dt, xs=xs: ops.mamba(x, dt, *xs[2:])[0], x, dt, dy, ())
        floor = (3 * x.numel() * x.element_size() + 2 * Bm.numel() * Bm.element_size()) / bw * 1e3
        print(f"| {B} | {T} | {D} | {N} | {str(dtype)[6:]} | {path} | {fwd:.3f} | {both:.3f} | {floor:.3f} | "
              f"{err:.1e} |")  # fmt: skip
    except Exception as e:  # noqa: BLE001 - a failed row is a row with the error
        print(f"| {B} | {T} | {D} | {N} | {str(dtype)[6:]} | {path} | error: {type(e).__name__}: {e} | | | |")


if __name__ == "__main__":
    main()

"""Where a call's host time goes (CUDA): host syncs and the Python profile of one op's forward.

    python benchmarks/host_profile.py [--families linear_attn,simple_gla,retention] [--shape 8,2048,16,128]
    python benchmarks/host_profile.py --backward [--families ...]   # where a backward's host time goes

Per family (ours, and flash-linear-attention's with ``--fla``): the synchronizing CUDA calls of one forward
(``torch.cuda.set_sync_debug_mode``, with the line that made each), the wall time per call of 50 calls
launched back to back against the device time of one (``do_bench_cudagraph``), and the top of a
``cProfile`` of those 50 calls by own time. A call whose wall time is well above its device time while
no sync shows is host-bound: the profile says where.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
import traceback
import warnings

import torch

sys.path.insert(0, "benchmarks")
import kernels  # noqa: E402


def syncs(fn, xs) -> list[str]:
    """The synchronizing calls of one ``fn(*xs)``, each with the innermost fla_compile/fla frame that made it."""
    found = []

    def on_warning(message, category, filename, lineno, file=None, line=None):
        if str(message).startswith("Synchronization debug mode is a prototype"):  # the mode's own notice
            return
        stack = [f for f in traceback.extract_stack() if "fla" in f.filename and "host_profile" not in f.filename]
        where = (
            f"{stack[-1].filename.split('site-packages/')[-1]}:{stack[-1].lineno}" if stack else f"{filename}:{lineno}"
        )
        found.append(f"{str(message)[:80]} at {where}")

    old = warnings.showwarning
    warnings.showwarning = on_warning
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = on_warning
            fn(*xs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = old
    return found


def per_call(f, n: int = 50, warm: int = 3) -> float:
    """Wall microseconds per call of ``f`` over ``n`` calls back to back (after ``warm`` calls), one sync at the end."""
    for _ in range(warm):
        f()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        f()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6


def profile_top(f, top: int, n: int = 50) -> str:
    """The top ``top`` functions by own time of a ``cProfile`` of ``n`` calls of ``f``."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        f()
    prof.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(top)
    return "\n".join(s.getvalue().splitlines()[4 : 9 + top])


def backward_report(family, shape, top) -> str:
    """A backward's host time three ways (us per call, 50 back to back): through autograd (``autograd.grad`` on a
    kept graph, where CUDA backwards run on autograd's device thread), the op's backward called on this thread,
    and the kernels alone (a CUDA graph of the direct call); then the ``cProfile`` of the direct calls. The
    sixth session saw ~150 us per backward launch on the H200 box against ~50 per forward launch, unexplained."""
    import triton.testing

    fn, xs = kernels.ours(family), kernels.inputs(family, *shape, grad=True)
    wrt = [x for x in xs if isinstance(x, torch.Tensor) and x.requires_grad]
    o = fn(*xs)[0]
    up = torch.randn_like(o)

    def through_autograd():
        torch.autograd.grad(o, wrt, up, retain_graph=True, allow_unused=True)

    bwd = getattr(torch.ops.fla_compile, f"{family}_bwd").default
    q, k, v, *gates = (x.detach() for x in xs)
    scale = q.shape[-1] ** -0.5

    def direct():
        bwd(q, k, v, *gates, scale, None, None, up, None)

    a, d = per_call(through_autograd), per_call(direct)
    device = triton.testing.do_bench_cudagraph(direct) * 1e3
    head = f"\n### backward of {family} {shape}: autograd {a:.0f} us, direct {d:.0f} us, kernels {device:.0f} us"
    return head + "\n" + profile_top(direct, top), f"| {family} bwd | {a:.0f} | {d:.0f} | {device:.0f} |"


def main(argv=None) -> int:
    import triton.testing

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="linear_attn,simple_gla,retention")
    p.add_argument("--shape", default="8,2048,16,128")
    p.add_argument("--fla", action="store_true")
    p.add_argument("--top", type=int, default=18)
    p.add_argument("--backward", action="store_true", help="the backward of linear_attn, simple_gla or retention")
    args = p.parse_args(argv)
    shape = tuple(int(x) for x in args.shape.split(","))
    if args.backward:
        summary = ["| op | autograd us/call | direct us/call | kernels us |", "|---|---|---|---|"]
        for family in args.families.split(","):
            text, line = backward_report(family, shape, args.top)
            print(text)
            summary.append(line)
        print("\n" + "\n".join(summary))
        return 0
    summary = ["| op | wall us/call (50 back to back) | device us (graph) | syncs |", "|---|---|---|---|"]
    for family in args.families.split(","):
        impls = [("ours", kernels.ours)] + ([("fla", kernels.fla_op)] if args.fla else [])
        for who, get in impls:
            fn, xs = get(family), kernels.inputs(family, *shape)
            with torch.no_grad():
                call = lambda fn=fn, xs=xs: fn(*xs)  # noqa: E731
                wall = per_call(call)  # warmed up before the sync check below
                found = syncs(fn, xs)
                torch.cuda.synchronize()
                top = profile_top(call, args.top)
                device = triton.testing.do_bench_cudagraph(call) * 1e3
            print(f"\n### {who} {family} {args.shape}: {wall:.0f} us/call wall, {device:.0f} us device")
            for line in found:
                print(f"sync: {line}")
            print(top)
            summary.append(f"| {who} {family} | {wall:.0f} | {device:.0f} | {len(found)} |")
    print("\n" + "\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

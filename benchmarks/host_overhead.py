"""Our host time per op call: what Python and torch cost around the Triton launches.

    python benchmarks/host_overhead.py [--ops hgrn,gla] [--n 300] [--profile gla:bwd]    # CPU, kernels stubbed
    python benchmarks/host_overhead.py --device cuda [--dtype bfloat16] [--profile hgrn:bwd]   # real kernels
    python benchmarks/host_overhead.py --T 1 --ops gla,delta_rule    # a decoding step
    python benchmarks/host_overhead.py --device cuda --T 2048 --ops mamba,mamba_n15    # mamba, N = 16 and padded 15

On the CPU (the default) the kernels are stubbed out: ``FLA_COMPILE_TRITON=interpret TRITON_INTERPRET=1`` route
the inputs to the Triton launchers, and every ``*_kernel`` of the lines' kernel modules is replaced by a stub
whose ``[grid](...)`` only counts the launch. What is left is ours: checks, dispatch, config lookup,
allocations, metadata, the torch.library / autograd wrapping. On the H200 such host time shows wherever it
exceeds the kernels' device time (small batches, decoding; hgrn at (8, 2048, 2048): 0.51 ms of host per fwd+bwd
against 0.31 ms of kernels, 2026-11-30). With ``--device cuda`` the kernels are real (each wrapped to count its
launches) at the same tiny shape, so the GPU work is negligible and the time per call is the host's: ours plus
Triton's own launch cost, plus CUDA's (the autograd engine's device thread, the caching allocator).

Per op: ``fwd us`` (the public op, no grad), ``fwd+bwd us`` (``torch.autograd.grad`` of o), each the best of 7
rounds of ``--n`` calls back to back (one sync at the end of a round on CUDA); ``launches`` (Triton, fwd /
fwd+bwd); ``aten`` (torch ops that launch a device kernel on CUDA: fills, copies, casts, reductions; not views
or empty allocations). ``--profile op:fwd|bwd`` prints the top of a cProfile (``SORT=tottime`` to sort by own
time) instead; ``--trace op:fwd|bwd`` torch.profiler's host-side table, which sees into C++ (the autograd engine,
the dispatcher, CUDA's runtime calls) where cProfile does not. hgrn runs the tile walk (``dispatch.FORCE_KERNEL``), the H200's kernel at (8, 2048, 2048).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

SHAPE = dict(B=2, T=128, H=4, D=32)  # T past every line's decode threshold: the chunked paths run


class StubKernel:
    """A stand-in for a Triton kernel: ``kernel[grid](*args, **kwargs)`` counts the launch, and runs the real
    kernel only when ``run`` (the CUDA mode)."""

    launches = 0
    run = False
    trace = False

    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        StubKernel.launches += 1
        if StubKernel.trace:  # a named range around the launch: its host time in ``--trace``'s table
            return self._traced(grid)
        return self.fn[grid] if StubKernel.run else self._nothing

    def _traced(self, grid):
        import torch

        def launch(*args, **kwargs):
            with torch.profiler.record_function(f"triton launch: {getattr(self.fn, '__name__', 'kernel')}"):
                return self.fn[grid](*args, **kwargs) if StubKernel.run else None

        return launch

    def _nothing(self, *args, **kwargs):
        return None


def wrap_kernels(wrap) -> None:
    """Replace the ``*_kernel`` Triton functions of every kernel module of the lines (``lowering/*/triton_*.py``,
    found by walking the package: a new module is wrapped too) by ``wrap(module name, attribute, kernel)``."""
    import importlib
    import pkgutil

    from triton.runtime.jit import KernelInterface

    import fla_compile.lowering as lowering

    for info in pkgutil.walk_packages(lowering.__path__, "fla_compile.lowering."):
        if not info.name.rsplit(".", 1)[-1].startswith("triton_"):
            continue
        mod = importlib.import_module(info.name)
        for attr, value in list(vars(mod).items()):
            if attr.endswith("_kernel") and isinstance(value, KernelInterface):
                setattr(mod, attr, wrap(info.name, attr, value))


def stub_kernels() -> None:
    """Every kernel of the lines in a :class:`StubKernel`."""
    wrap_kernels(lambda module, name, kernel: StubKernel(kernel))


def make_cases(torch, device="cpu", dtype=None):
    """op name -> (forward callable, its inputs that take gradients)."""
    from fla_compile import ops

    B, T, H, D = SHAPE["B"], SHAPE["T"], SHAPE["H"], SHAPE["D"]
    V = SHAPE.get("V", D)  # v's head dim where it differs from q's and k's (launch_audit.py --dims K,V)
    gen = torch.Generator().manual_seed(0)
    dtype = dtype or torch.float32

    def t(*shape, gate=False):
        x = torch.randn(*shape, generator=gen)
        return (torch.nn.functional.logsigmoid(x) / 16 if gate else x).to(device, dtype).requires_grad_()

    q, k, v = t(B, T, H, D), t(B, T, H, D), t(B, T, H, V)
    beta = torch.rand(B, T, H, generator=gen).to(device, dtype).requires_grad_()
    x, gx = t(B, T, H * D), t(B, T, H * D, gate=True)
    g, gk = t(B, T, H, gate=True), t(B, T, H, D, gate=True)
    decay = torch.log(1 - 2.0 ** (-5.0 - torch.arange(H, dtype=torch.float32))).to(device)
    dt = (torch.rand(B, T, H * D, generator=gen) / 4).to(device, dtype).requires_grad_()
    A16, A15 = (-torch.rand(H * D, n, generator=gen).to(device).requires_grad_() for n in (16, 15))
    Bm16, C16, Bm15, C15 = t(B, T, 16), t(B, T, 16), t(B, T, 15), t(B, T, 15)
    u = t(H, D)  # rwkv6's bonus, drawn last: the other inputs stay those of earlier runs
    return {
        # N = 16: the vectorized chunked kernels (their forward in segments on a small grid, from T = 512 on CUDA);
        # N = 15: the same kernels on states padded to 16 (the pads and slices are host work)
        "mamba": (lambda: ops.mamba(x, dt, A16, Bm16, C16), (x, dt, A16, Bm16, C16)),
        "mamba_n15": (lambda: ops.mamba(x, dt, A15, Bm15, C15), (x, dt, A15, Bm15, C15)),
        "hgrn": (lambda: ops.hgrn(x, gx), (x, gx)),
        "gla": (lambda: ops.gla(q, k, v, gk), (q, k, v, gk)),
        "linear_attn": (lambda: ops.linear_attn(q, k, v), (q, k, v)),
        "retention": (lambda: ops.retention(q, k, v, decay), (q, k, v)),  # fixed decays, as RetNet's
        "simple_gla": (lambda: ops.simple_gla(q, k, v, g), (q, k, v, g)),
        "delta_rule": (lambda: ops.delta_rule(q, k, v, beta), (q, k, v, beta)),
        "gated_delta_rule": (lambda: ops.gated_delta_rule(q, k, v, g, beta), (q, k, v, g, beta)),
        "gated_delta_rule_l2": (  # Qwen3-Next's call: q and k L2-normed by the op
            lambda: ops.gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True),
            (q, k, v, g, beta),
        ),
        "kda": (lambda: ops.kda(q, k, v, gk, beta), (q, k, v, gk, beta)),
        "rwkv6": (lambda: ops.rwkv6(q, k, v, gk, u), (q, k, v, gk, u)),  # gla's kernels with the bonus u
    }


def count_aten(torch, fn) -> int:
    """The torch ops of one ``fn()`` that would launch a device kernel: the outermost aten ops (called from Python
    or our ops, not from another aten op), less views, metadata and empty allocations."""
    from torch.autograd.profiler import profile

    free = {"empty", "empty_strided", "new_empty", "new_empty_strided", "detach", "detach_", "alias", "lift_fresh"}
    free |= {"view", "reshape", "expand", "as_strided", "select", "slice", "unsqueeze", "squeeze", "permute"}
    free |= {"transpose", "t", "unbind", "split", "chunk", "narrow", "_unsafe_view", "result_type", "is_nonzero"}
    free |= {"contiguous", "to", "lift", "empty_like"}
    real = torch.autograd._profiler_enabled
    torch.autograd._profiler_enabled = lambda: False  # else the ops see a profiler and take the dispatcher's path
    try:
        with profile() as prof:
            fn()
    finally:
        torch.autograd._profiler_enabled = real
    n = 0
    for e in prof.function_events:
        parent = e.cpu_parent
        while parent is not None and parent.name.startswith("aten::") and parent.name[6:] in free:
            parent = parent.cpu_parent  # contiguous, to: count the copy they run, not the call
        if e.name.startswith("aten::") and e.name[6:] not in free and not (parent and parent.name.startswith("aten::")):
            n += 1
    return n


def best_us(fn, n: int, sync, rounds: int = 7) -> float:
    """Microseconds per call: the best of ``rounds`` rounds of ``n`` calls (the machine is shared: other
    processes only ever add time, so the fastest round is the closest to the calls' own cost)."""
    for _ in range(20):
        fn()
    sync()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / n * 1e6)
    return min(times)


def trace(torch, runners, spec: str, n: int, sync) -> None:
    """torch.profiler over ``n`` calls of ``op:fwd|bwd``: per call, the host time of each range (self and total,
    µs) and its calls, sorted by self time. Triton launches show as "triton launch: <kernel>", the custom op as
    ``fla_compile::<op>``, the backward's nodes as ``autograd::engine::evaluate_function: ...``, CUDA's runtime
    calls (cudaLaunchKernel, allocations) by their names: where the host time of a call goes that cProfile,
    blind to C++, cannot split. Under the profiler the ops take the dispatcher (``ops._library.eager_ok``: its
    trace keeps their events), not the direct path of an eager call, so their own rows are the dispatched form's;
    the launches' and CUDA's rows are the same either way."""
    from torch.profiler import ProfilerActivity, profile

    name, which = spec.split(":")
    fn = runners(name)[which == "bwd"]
    for _ in range(20):
        fn()
    sync()
    StubKernel.trace = True
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(n):
            fn()
        sync()
    StubKernel.trace = False
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    print(f"{spec}: host time per call over {n} calls (µs), sorted by self time")
    print(f"{'self':>8} {'total':>8} {'calls':>6}  range")
    for e in rows[:40]:
        print(f"{e.self_cpu_time_total / n:8.1f} {e.cpu_time_total / n:8.1f} {e.count / n:6.1f}  {e.key[:100]}")
    print(f"{sum(e.self_cpu_time_total for e in rows) / n:8.1f} (sum of self times)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", default="hgrn,gla,rwkv6,simple_gla,delta_rule,gated_delta_rule,kda")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: real kernels, counted")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--T", type=int, default=SHAPE["T"], help="steps: 1 for a decoding step (the fused recurrent path)")
    p.add_argument("--profile", default="", help="op:fwd or op:bwd: a cProfile of --n calls instead of the table")
    p.add_argument("--trace", default="", help="op:fwd or op:bwd: torch.profiler's host-side table of --n calls")
    args = p.parse_args(argv)
    SHAPE["T"] = args.T
    if args.device == "cpu":
        os.environ["FLA_COMPILE_TRITON"] = "interpret"
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from fla_compile.lowering.scan import dispatch

    torch.set_num_threads(1)
    dispatch.FORCE_KERNEL = "tile"  # the H200's kernel at (8, 2048, 2048)
    stub_kernels()
    StubKernel.run = args.device == "cuda"
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    cases = make_cases(torch, args.device, getattr(torch, args.dtype))

    def runners(name):
        fwd, wrt = cases[name]
        do = torch.ones_like(fwd()[0])  # given, as a training step's incoming gradient

        def f():
            with torch.no_grad():
                fwd()

        def fb():
            torch.autograd.grad(fwd()[0], wrt, do)

        return f, fb

    if args.profile:
        import cProfile
        import pstats

        name, which = args.profile.split(":")
        fn = runners(name)[which == "bwd"]
        for _ in range(20):
            fn()
        sync()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.n):
            fn()
        sync()
        prof.disable()
        pstats.Stats(prof, stream=sys.stdout).sort_stats(os.environ.get("SORT", "cumulative")).print_stats(45)
        return 0

    if args.trace:
        trace(torch, runners, args.trace, args.n, sync)
        return 0

    kernels = "real kernels" if args.device == "cuda" else "kernels stubbed"
    print(f"shape {SHAPE}, {args.dtype}, {args.device}, {kernels}; us per call (best of 7 rounds of {args.n})")
    print(f"{'op':<18} {'fwd us':>8} {'fwd+bwd us':>11} {'launches':>9} {'aten':>8}")
    for name in args.ops.split(","):
        f, fb = runners(name)
        counts = []
        for fn in (f, fb):
            StubKernel.launches = 0
            fn()
            counts.append(StubKernel.launches)
        aten = [count_aten(torch, fn) for fn in (f, fb)]
        t_f, t_fb = best_us(f, args.n, sync), best_us(fb, args.n, sync)
        print(f"{name:<18} {t_f:8.1f} {t_fb:11.1f} {counts[0]:>4}/{counts[1]:<4} {aten[0]:>3}/{aten[1]:<4}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

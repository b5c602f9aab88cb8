"""How much of a forward+backward's wall time is the host's, and what a CUDA graph gives back (CUDA).

    python benchmarks/host_bound.py [--families simple_gla,gated_delta_rule] [--shape 8,2048,16,128]

Per family, bf16, one process: ``host us`` is the host's enqueue time of one fwd+bwd (the ``fla_compile.ops``
function, then ``torch.autograd.grad`` of o), the best of 5 rounds of 8 calls back to back without a sync (fewer
launches than CUDA's queue holds, so none waits on the GPU); ``eager ms`` the same step's median wall time
(``triton.testing.do_bench``); ``graph ms`` one capture of that step (``torch.cuda.graph``, warmed up on a side
stream) replayed; ``kernels ms`` the summed kernel time of one step (``torch.profiler``). Where host time passes
the kernels', the eager step is host-bound and the replay runs at the kernels' time. On the H200 the host is
slow: a no-op ``autograd.Function`` round trip takes ~150 us there, a Triton launch 25-50 us.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from kernels import FAMILIES, fwd_bwd, inputs, ours  # noqa: E402


def host_us(step, calls: int = 8, rounds: int = 5) -> float:
    """The host's enqueue time of one ``step``, microseconds (best round)."""
    for _ in range(3):
        step()
    best = float("inf")
    for _ in range(rounds):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            step()
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    torch.cuda.synchronize()
    return best


def kernel_ms(step, n: int = 5) -> float:
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    cuda = torch.autograd.DeviceType.CUDA
    return sum(e.device_time_total for e in prof.events() if e.device_type == cuda) / n / 1e3


def graphed(step):
    """``step`` captured once in a CUDA graph: the graph's replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def main() -> int:
    import triton

    p = argparse.ArgumentParser()
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--shape", default="8,2048,16,128", help="B,T,H,D")
    args = p.parse_args()
    B, T, H, D = (int(x) for x in args.shape.split(","))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, Triton {triton.__version__}, bf16, {args.shape}")
    print("| family | host us | eager ms | graph ms | kernels ms |")
    print("| --- | --- | --- | --- | --- |")
    for family in args.families.split(","):
        try:
            step = fwd_bwd(ours(family), inputs(family, B, T, H, D, grad=True))
            host = host_us(step)
            eager = triton.testing.do_bench(step, quantiles=[0.5, 0.2, 0.8])[0]
            replay = triton.testing.do_bench(graphed(step), quantiles=[0.5, 0.2, 0.8])[0]
            row = f"{host:.0f} | {eager:.3f} | {replay:.3f} | {kernel_ms(step):.3f}"
        except Exception as e:  # a row with the error, never a lost table
            row = f"{type(e).__name__}: {str(e)[:80]} | | |"
        print(f"| {family} | {row} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

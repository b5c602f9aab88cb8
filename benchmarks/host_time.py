"""Host time against device time of each op (CUDA): is a small op's forward launch-bound?

    python benchmarks/host_time.py [--families linear_attn,simple_gla] [--shape 8,2048,16,128]

Per family, ours and flash-linear-attention's (when importable):

- ``host us``: microseconds per call at a tiny shape (B=1, T=64, H=16, D=128), 200 calls back to back
  and one sync: the device work is negligible, so this is the Python + launch cost of one call;
- ``do_bench`` and ``graph``: the median forward at ``--shape`` with ``triton.testing.do_bench``
  (launched from Python each time) and ``do_bench_cudagraph`` (one graph replayed: device time only).
  Where ``do_bench`` is well above ``graph``, the op is host-bound at that shape.

``--fwd-bwd``: the same question for a forward and backward (the ``fla_compile.ops`` function, then
``torch.autograd.grad`` of o) at ``--shape``, ours only: ``host us``, the host's enqueue time of one step (the best
of 5 rounds of 8 steps back to back without a sync: fewer launches than CUDA's queue holds, so none waits on the
GPU); ``eager ms``, its median wall time (``do_bench``); ``graph ms``, one capture of the step (``torch.cuda.graph``,
warmed up on a side stream) replayed; ``kernels ms``, its summed kernel time (``kernels.kernel_table``). Where
host time passes the kernels', the eager step is host-bound and the replay runs at the kernels' time. On the H200
the host is slow: a no-op ``autograd.Function`` round trip takes ~150 us there, a Triton launch 25-50 us.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # tests.cuda_graphs, from a checkout
sys.path.insert(0, "benchmarks")
import kernels  # noqa: E402
from host_profile import per_call  # noqa: E402

from tests.cuda_graphs import capture  # noqa: E402


def host_us(fn, xs, backward=False, n=200) -> float:
    def call():
        o = fn(*xs)[0]
        if backward:
            o.backward(torch.ones_like(o))

    return per_call(call, n, warm=5)


def cells(fn, family, shape) -> list[str]:
    """The row's four measurements; a failing one is its exception's name, never a lost table."""
    import triton.testing

    tiny = (1, 64, 16, 128)  # tiny work, head sizes as in the cached tuning of the issue shapes
    measures = [
        lambda: host_us(fn, kernels.inputs(family, *tiny)),
        lambda: host_us(fn, kernels.inputs(family, *tiny, grad=True), backward=True),
    ]
    xs = kernels.inputs(family, *shape)
    for bench in (triton.testing.do_bench, triton.testing.do_bench_cudagraph):
        measures.append(lambda bench=bench: bench(lambda: fn(*xs), quantiles=[0.5, 0.2, 0.8])[0])
    out = []
    for i, measure in enumerate(measures):
        try:
            with torch.no_grad() if i != 1 else torch.enable_grad():
                value = measure()
            out.append(f"{value:.0f}" if i < 2 else f"{value:.4f}")
        except Exception as e:
            out.append(f"{type(e).__name__}: {str(e)[:60]}")
    return out


def enqueue_us(step, calls: int = 8, rounds: int = 5) -> float:
    """The host's enqueue time of one ``step``, microseconds (best round; no sync inside a round)."""
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


def fwd_bwd_table(families, shape) -> list[str]:
    """``--fwd-bwd``'s rows: host enqueue, eager and graph-replay wall, kernels, of our fwd+bwd at ``shape``."""
    import triton.testing

    lines = [f"| family | host us | eager ms | graph ms | kernels ms | shape {','.join(map(str, shape))} |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for family in families:
        try:
            step = kernels.fwd_bwd(kernels.ours(family), kernels.inputs(family, *shape, grad=True))
            host = enqueue_us(step)
            eager = triton.testing.do_bench(step, quantiles=[0.5, 0.2, 0.8])[0]
            replay = triton.testing.do_bench(capture(step)[0].replay, quantiles=[0.5, 0.2, 0.8])[0]
            device = sum(ms for _, _, ms in kernels.kernel_table(step, iters=5))
            row = f"{host:.0f} | {eager:.3f} | {replay:.3f} | {device:.3f}"
        except Exception as e:  # a row with the error, never a lost table
            row = f"{type(e).__name__}: {str(e)[:80]} | | |"
        lines.append(f"| {family} | {row} | |")
        print(lines[-1], flush=True)
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="linear_attn,simple_gla,retention,gla,delta_rule,gated_delta_rule,kda")
    p.add_argument("--shape", default="8,2048,16,128")
    p.add_argument("--fwd-bwd", action="store_true", help="our forward+backward eager and as a CUDA-graph replay")
    args = p.parse_args(argv)
    shape = tuple(int(x) for x in args.shape.split(","))
    if args.fwd_bwd:
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16")
        print("\n".join(fwd_bwd_table(args.families.split(","), shape)))
        return 0
    lines = [
        f"| op | host us fwd | host us fwd+bwd | do_bench fwd ms | graph fwd ms | shape {args.shape} |",
        "|---|---|---|---|---|---|",
    ]
    for family in args.families.split(","):
        for who, get in [("ours", kernels.ours), ("fla", kernels.fla_op)]:
            lines.append(f"| {who} {family} | " + " | ".join(cells(get(family), family, shape)) + " | |")
            print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

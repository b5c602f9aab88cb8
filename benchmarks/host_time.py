"""Host time against device time of each op (CUDA): is a small op's forward launch-bound?

    python benchmarks/host_time.py [--families linear_attn,simple_gla] [--shape 8,2048,16,128]

Per family, ours and flash-linear-attention's (when importable):

- ``host us``: microseconds per call at a tiny shape (B=1, T=64, H=16, D=128), 200 calls back to back
  and one sync: the device work is negligible, so this is the Python + launch cost of one call;
- ``do_bench`` and ``graph``: the median forward at ``--shape`` with ``triton.testing.do_bench``
  (launched from Python each time) and ``do_bench_cudagraph`` (one graph replayed: device time only).
  Where ``do_bench`` is well above ``graph``, the op is host-bound at that shape.
"""

from __future__ import annotations

import argparse
import sys

import torch

sys.path.insert(0, "benchmarks")
import kernels  # noqa: E402
from host_profile import per_call  # noqa: E402


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="linear_attn,simple_gla,retention,gla,delta_rule,gated_delta_rule,kda")
    p.add_argument("--shape", default="8,2048,16,128")
    args = p.parse_args(argv)
    shape = tuple(int(x) for x in args.shape.split(","))
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

"""Gated slot attention (GSA) written as one naive loop carrying two memories, through ``@fla_compile.jit``
(split into mamba for the key memory and gla for the value memory), against flash-linear-attention's
``chunk_gsa`` (when importable) and the loop in eager. Prints each one's error against float64 eager at a
short length and median milliseconds (forward, forward + backward) at ``--shape``.

    python benchmarks/gsa.py [--shape 4,2048,4,64,64] [--dtype bfloat16]     # B,T,H,D,M (CUDA)
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, ".")
import fla_compile  # noqa: E402
from fla_compile.bench import median_ms  # noqa: E402
from tests.compare import rel  # noqa: E402
from tests.patterns.test_multistate import gsa_one_loop  # noqa: E402


def inputs(B, T, H, D, M, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, T, H, D, generator=gen) for _ in range(3)]
    xs += [torch.randn(B, T, H, M, generator=gen), F.logsigmoid(torch.randn(B, T, H, M, generator=gen))]
    return [x.to(device, dtype).requires_grad_() for x in xs]


def candidates():
    out = {"fla_compile.jit": fla_compile.jit(gsa_one_loop)}
    try:
        from fla.ops.gsa import chunk_gsa

        out["fla chunk_gsa"] = lambda q, k, v, s, g: chunk_gsa(q, k, v, s, g, scale=q.shape[-1] ** -0.5)[0]
    except Exception as e:  # noqa: BLE001 - FLA absent or refusing this GPU: measure ours alone
        print(f"flash-linear-attention's chunk_gsa not measured ({type(e).__name__}: {e})")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="4,2048,4,64,64", help="B,T,H,D,M")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    B, T, H, D, M = (int(x) for x in args.shape.split(","))
    dtype = getattr(torch, args.dtype)
    fns = candidates()
    small = inputs(2, 128, 2, D, M, dtype, args.device)
    ref = gsa_one_loop(*[x.detach().double() for x in small])
    xs = inputs(B, T, H, D, M, dtype, args.device)
    print(f"GSA B={B} T={T} H={H} D={D} M={M} {args.dtype} on {args.device}")
    for name, fn in fns.items():
        err = rel(fn(*small), ref)
        fwd = median_ms(lambda fn=fn: fn(*xs), args.device)
        both = median_ms(lambda fn=fn: fn(*xs).sum().backward(), args.device)
        print(f"{name:18s} err {err:.1e}  forward {fwd:8.3f} ms  forward+backward {both:8.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where ``@fla_compile.jit``'s as-written path spends its time at small T (CUDA or CPU).

    python benchmarks/jit_overhead.py [--device cuda] [--T 64]

RetNet's parallel form (benchmarks/small_work.py) below the cost table's crossover: @jit chooses the
function as written, compiled by Inductor (built on the first call, before the timing), so its time should be
the compiled function's plus the wrapper's few microseconds, below the function's own. Prints the
host time per call of the function and of the @jit wrapper (synchronized; rounds of 50 calls in alternating
order, medians over rounds, and the median of the per-round ratio), the wrapper's own key and lookup, then the
host-side profiler table (the ops each path dispatches) of one call of each.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from small_work import make_inputs, retnet_parallel  # noqa: E402

import fla_compile  # noqa: E402


def per_call(fn, args, device, n=200):
    out = []
    for _ in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(*args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1e3


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--rounds", type=int, default=21)
    a = p.parse_args()
    device = torch.device(a.device)
    args = make_inputs("parallel", 4, a.T, 8, 64, torch.float32, device)
    jitted = fla_compile.jit(retnet_parallel)
    with torch.no_grad():
        jitted(*args)
        for _ in range(20):
            retnet_parallel(*args)
            jitted(*args)
        # rounds in alternating order (the host's own drift shows up in both columns alike); the ratio's
        # median over rounds, and the wrapper's own work (key + lookup) timed alone
        rows = []
        for r in range(a.rounds):
            pair = [("fn", retnet_parallel), ("jit", jitted)]
            got = dict((name, per_call(fn, args, device, n=50)) for name, fn in (pair if r % 2 == 0 else pair[::-1]))
            rows.append(got)
        t_fn = statistics.median(g["fn"] for g in rows)
        t_jit = statistics.median(g["jit"] for g in rows)
        ratio = statistics.median(g["fn"] / g["jit"] for g in rows)
        n = 20000
        t0 = time.perf_counter()
        for _ in range(n):
            jitted._fast.get(jitted._fast_key(args))
        key_us = (time.perf_counter() - t0) / n * 1e6
        print(
            f"T={a.T} {device}: as written {t_fn:.4f} ms, @jit {t_jit:.4f} ms per call (medians of {a.rounds} rounds"
            f" of 50, alternating); as written / @jit per round, median {ratio:.3f}; the wrapper's key + lookup"
            f" {key_us:.1f} us"
        )
        from torch.profiler import ProfilerActivity, profile

        for name, fn in [("as written", retnet_parallel), ("@jit", jitted)]:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn(*args)
            print(f"\n### {name}\n")
            print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    sys.exit(main())

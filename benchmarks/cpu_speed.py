"""The compiled naive GLA loop against the eager loop on CPU, T=2048, B=2, H=4, D=64.

Prints one table: eager loop, backend="fla" (Inductor for the rest), @fla_compile.jit, and
the op called directly, each the median of several runs after a warm-up (the three fast rows
taken round-robin), plus the errors.

    python benchmarks/cpu_speed.py [--T 2048]
"""

import argparse
import statistics
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
from _loops import inputs, naive_gla  # noqa: E402

import fla_compile  # noqa: E402


def timed(fn, args, reps):
    fn(*args)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--reps", type=int, default=21)
    a = p.parse_args()
    args = inputs(2, a.T, 4, 64)
    with torch.no_grad():
        ref = naive_gla(*args)
        compiled = torch.compile(naive_gla, backend="fla")
        jitted = fla_compile.jit(naive_gla)
        q, k, v, gk = args

        def op(q, k, v, gk):
            return fla_compile.ops.gla(q, k, v, gk, output_final_state=True)

        rows = [
            ("eager loop", naive_gla, max(3, a.reps // 4)),
            ("backend='fla'", compiled, a.reps),
            ("@fla_compile.jit", jitted, a.reps),
            ("fla_compile.ops.gla", op, a.reps),
        ]
        errs = {}
        for name, fn, _ in rows:
            out = fn(*args)
            errs[name] = max(((o - r).norm() / r.norm()).item() for o, r in zip(out, ref))
        # the eager loop alone, then the fast rows round-robin: the machine's drift hits them alike
        times = {rows[0][0]: timed(rows[0][1], args, rows[0][2])}
        samples = {name: [] for name, _, _ in rows[1:]}
        for _ in range(a.reps):
            for name, fn, _ in rows[1:]:
                t0 = time.perf_counter()
                fn(*args)
                samples[name].append(time.perf_counter() - t0)
        times.update({name: statistics.median(ts) for name, ts in samples.items()})
        results = [(name, times[name], errs[name]) for name, _, _ in rows]
    base = results[0][1]
    print(f"T={a.T}, B=2, H=4, D=64, fp32, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| what | time (ms) | speed-up over eager | rel err vs eager |")
    print("| --- | --- | --- | --- |")
    for name, t, err in results:
        print(f"| {name} | {t * 1e3:.1f} | {base / t:.1f}x | {err:.1e} |")


if __name__ == "__main__":
    main()

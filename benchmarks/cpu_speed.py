"""The compiled naive GLA loop against the eager loop on CPU, T=2048, B=2, H=4, D=64.

Prints one table: eager loop, backend="fla" (Inductor for the rest), @fla_compile.jit, and
the op called directly, each the median of several runs after a warm-up (all rows taken
round-robin, the eager loop every 4th round), plus the errors.

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
import fla_compile.backend  # noqa: E402,F401  (registers "fla" where the package is not pip-installed)


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
            ("eager loop", naive_gla),
            ("backend='fla'", compiled),
            ("@fla_compile.jit", jitted),
            ("fla_compile.ops.gla", op),
        ]
        errs = {}
        for name, fn in rows:
            out = fn(*args)
            errs[name] = max(((o - r).norm() / r.norm()).item() for o, r in zip(out, ref))
        # all rows round-robin (the eager loop every 4th round): this VM's speed drifts from
        # minute to minute, and the drift must hit the rows alike for their ratio to mean anything
        for _, fn in rows:
            fn(*args)
        samples = {name: [] for name, _ in rows}
        for i in range(a.reps):
            for j, (name, fn) in enumerate(rows):
                if j == 0 and i % 4:
                    continue
                t0 = time.perf_counter()
                fn(*args)
                samples[name].append(time.perf_counter() - t0)
        times = {name: statistics.median(ts) for name, ts in samples.items()}
        results = [(name, times[name], errs[name]) for name, _ in rows]
    base = results[0][1]
    print(f"T={a.T}, B=2, H=4, D=64, fp32, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| what | time (ms) | speed-up over eager | rel err vs eager |")
    print("| --- | --- | --- | --- |")
    for name, t, err in results:
        print(f"| {name} | {t * 1e3:.1f} | {base / t:.1f}x | {err:.1e} |")


if __name__ == "__main__":
    main()

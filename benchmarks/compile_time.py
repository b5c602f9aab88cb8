"""Compile time of the naive GLA loop: backend="fla" against Dynamo alone (backend="eager").

Each measurement runs in a fresh process (no warm caches of Dynamo or of our passes), in
the same run. Prints one table: T, Dynamo alone, fla (inductor off and on), our added time
as a share of Dynamo's, and the first call of @fla_compile.jit.

    python benchmarks/compile_time.py [--T 256 1024 2048]
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, "benchmarks")
from _loops import naive_gla, inputs
import fla_compile
import fla_compile.backend  # noqa: F401  (registers "fla" where the package is not pip-installed)
T, mode = int(sys.argv[1]), sys.argv[2]
args = inputs(2, T, 4, 64)
t0 = time.perf_counter()
if mode == "jit":
    fla_compile.jit(naive_gla)(*args)
else:
    backend = "eager" if mode == "eager" else "fla"
    opts = {"inductor": mode == "fla+inductor"} if backend == "fla" else None
    torch.compile(naive_gla, backend=backend, options=opts)(*args)
dt = time.perf_counter() - t0
matched = [m.family for m in fla_compile.last_report().matches] if mode.startswith("fla") else []
print(json.dumps({"T": T, "mode": mode, "seconds": dt, "matched": matched}))
"""


def measure(T, mode):
    out = subprocess.run([sys.executable, "-c", CHILD, str(T), mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, nargs="+", default=[256, 1024, 2048])
    a = p.parse_args()
    rows = []
    for T in a.T:
        r = {m: measure(T, m) for m in ("eager", "fla", "fla+inductor", "jit")}
        rows.append(r)
        e = r["eager"]["seconds"]
        print(
            f"T={T}: dynamo {e:.2f} s | fla {r['fla']['seconds']:.2f} s (+{(r['fla']['seconds'] - e) / e:.0%}) | "
            f"fla+inductor {r['fla+inductor']['seconds']:.2f} s (+{(r['fla+inductor']['seconds'] - e) / e:.0%}) | "
            f"jit first call {r['jit']['seconds']:.2f} s | matched {r['fla']['matched']}",
            flush=True,
        )
    print("\n| T | Dynamo alone (s) | fla, aot_eager (s) | added | fla + Inductor (s) | added | @jit first call (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        e = r["eager"]["seconds"]
        f, fi, j = r["fla"]["seconds"], r["fla+inductor"]["seconds"], r["jit"]["seconds"]
        print(
            f"| {r['eager']['T']} | {e:.2f} | {f:.2f} | {(f - e) / e:+.0%} | {fi:.2f} | {(fi - e) / e:+.0%} | {j:.2f} |"
        )


if __name__ == "__main__":
    main()

"""Rewritten vs as written, for small and large work: never slower than the code as written.

For the loop spelling (flash-linear-attention's naive recurrent GLA) and the parallel spelling
(RetNet's parallel form with a decay per head) at T = 16, 64, 256, 2048, times:

  as written    the function, eager
  op forced     torch.compile(backend="fla") with the cost table off (every proven region rewritten)
  fla           torch.compile(backend="fla") as shipped: the cost table picks the op or the code
                as written (the "fla path" column, from the backend's report; Inductor compiles what it keeps)
  @jit          @fla_compile.jit, which makes the same choice per call (the "@jit path" column, from its
                explain): below the crossover it runs the function as written compiled by Inductor, built on
                its first call (the "@jit 1st call" column: probes, proof and that compile; not in the timings)

Each time is the median of several rounds taken round-robin over the rows, in an order that
rotates each round (this VM's speed drifts); the speed-ups are over "as written". Where the
shipped path is the op, "op forced" is the same compiled code as "fla" (their difference is
noise). Forward only, no autograd.

    python benchmarks/small_work.py                       # CPU: B=1, H=4, D=64, fp32
    python benchmarks/small_work.py --device cuda --B 4 --H 8 --D 64 --dtype bfloat16
"""

import argparse
import contextlib
import math
import statistics
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
from _loops import naive_gla  # noqa: E402

import fla_compile  # noqa: E402
from fla_compile import backend, costs  # noqa: E402
from fla_compile.jit import fresh_code  # noqa: E402


def retnet_parallel(q, k, v):
    """RetNet's parallel form: a gamma per head, the decay matrix from arange and pow."""
    B, T, H, D = q.shape
    q, k, v = (x.transpose(1, 2).float() for x in (q, k, v))
    gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float32, device=q.device))
    i = torch.arange(T, device=q.device)
    decay = gamma[:, None, None] ** (i[:, None] - i[None, :]).float()
    decay = decay.masked_fill(i[:, None] < i[None, :], 0)
    return (torch.matmul(torch.matmul(q, k.transpose(-1, -2)) * D**-0.5 * decay, v)).transpose(1, 2)


SPELLINGS = {"loop": naive_gla, "parallel": retnet_parallel}


def make_inputs(spelling, B, T, H, D, dtype, device):
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(B, T, H, D, generator=g).to(device, dtype) for _ in range(3))
    if spelling == "parallel":
        return q, k, v
    gk = torch.nn.functional.logsigmoid(torch.randn(B, T, H, D, generator=g)).div(16).to(device, dtype)
    return q, k, v, gk


def timer(device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(fn, args):
        sync()
        t0 = time.perf_counter()
        fn(*args)
        sync()
        return time.perf_counter() - t0

    return run


def compile_fla(fn, args, table):
    """torch.compile(fn, backend="fla") compiled on ``args`` under ``table`` (None: as shipped);
    returns the compiled function and the path its report names."""
    n = len(backend.REPORTS)
    # a code object of its own: two torch.compile's of one function share Dynamo's cache entries
    compiled = torch.compile(fresh_code(fn, "bench"), backend="fla", dynamic=False)
    with costs.use(table) if table is not None else contextlib.nullcontext():
        compiled(*args)
    matches = [m for r in backend.REPORTS[n:] for m in r.matches]
    path = ", ".join(m.path.replace("fla_compile.", "op ") for m in matches) or "nothing matched"
    return compiled, path


def first(x):
    return x[0] if isinstance(x, tuple) else x


def bench_one(spelling, T, a, run):
    fn = SPELLINGS[spelling]
    args = make_inputs(spelling, a.B, T, a.H, a.D, getattr(torch, a.dtype), a.device)
    with torch.no_grad():
        ref = first(fn(*args))
        shipped, path = compile_fla(fn, args, None)
        # where the shipped choice already runs the op, the forced row is the same compiled code
        forced = shipped if "op" in path else compile_fla(fn, args, [])[0]
        jitted = fla_compile.jit(fn)
        t0 = time.perf_counter()
        jitted(*args)
        first_call = time.perf_counter() - t0
        jit_path = ", ".join(m.path.replace("fla_compile.", "op ") for m in jitted.explain(*args).matches)
        rows = {"as written": fn, "op forced": forced, "fla": shipped, "@jit": jitted}
        err = max(((first(f(*args)).float() - ref.float()).norm() / ref.float().norm()).item() for f in rows.values())
        for f in rows.values():  # warm every path (first calls compile, tune, fill caches)
            f(*args)
        once = run(fn, args)
        rounds = max(5, min(a.rounds, int(a.budget / max(4 * once * len(rows), 1e-6))))
        samples = {name: [] for name in rows}
        order = list(rows.items())
        for i in range(rounds):  # the order rotates each round (drift reaches every row alike)
            for name, f in order[i % len(order) :] + order[: i % len(order)]:
                # a burst per row: one untimed call, then the median of three. What ran just before moves a
                # 0.1 ms call by up to 70% (after the op's path 160 µs, after eager 93), and in a rotation of
                # single calls each row has its own usual predecessor (@jit mostly followed the compiled row)
                f(*args)
                samples[name].append(statistics.median(run(f, args) for _ in range(3)))
    t = {name: statistics.median(s) for name, s in samples.items()}
    return t, path, err, rounds, jit_path or "nothing matched", first_call


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--T", default="16,64,256,2048")
    p.add_argument("--spellings", default="loop,parallel")
    p.add_argument("--rounds", type=int, default=31, help="at most this many rounds per row")
    p.add_argument("--budget", type=float, default=3.0, help="seconds of timing per (spelling, T)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    a.device = torch.device(a.device)
    run = timer(a.device)
    name = torch.cuda.get_device_name(a.device) if a.device.type == "cuda" else "cpu"
    print(
        f"{name} ({costs.device_kind(a.device)}), B={a.B} H={a.H} D={a.D} {a.dtype}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, fla_compile {fla_compile.__version__}"
    )
    print(
        "| spelling | T | as written (ms) | op forced (ms) | fla (ms) | @jit (ms) | fla path | @jit path | "
        "op forced / written | fla / written | @jit / written | rel err | @jit 1st call (s) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    worst = math.inf
    for spelling in a.spellings.split(","):
        for T in map(int, a.T.split(",")):
            t, path, err, rounds, jit_path, first_call = bench_one(spelling, T, a, run)
            w = t["as written"]
            worst = min(worst, w / t["fla"], w / t["@jit"])
            print(
                f"| {spelling} | {T} | {w * 1e3:.3f} | {t['op forced'] * 1e3:.3f} | {t['fla'] * 1e3:.3f} | "
                f"{t['@jit'] * 1e3:.3f} | {path} | {jit_path} | {w / t['op forced']:.2f}x | {w / t['fla']:.2f}x | "
                f"{w / t['@jit']:.2f}x | {err:.1e} | {first_call:.1f} |",
                flush=True,
            )
    print(f"lowest speed-up of the shipped paths (fla, @jit) over as written: {worst:.2f}x")


if __name__ == "__main__":
    main()

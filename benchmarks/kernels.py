"""Benchmark of the GLA-line kernels: one table from one run.

    python benchmarks/kernels.py                 # the table (issue 5 shapes, bf16)
    python benchmarks/kernels.py --sweep         # also time against T (512 .. 32768), CSV + PNG
    python benchmarks/kernels.py --sweep-only    # that alone (gla, retention: ours and FLA; SDPA)
    python benchmarks/kernels.py --quick         # small shapes, a smoke run
    python benchmarks/kernels.py --no-first-call --warm 300   # FLA autotuned first (one process per family)
    python benchmarks/kernels.py --from-log run.log   # the tables from the rows a run printed (one cut by a limit)
    python benchmarks/kernels.py --first-call-profile gla,kda   # where a fresh process's first call spends its seconds
    python benchmarks/kernels.py --first-call-profile gla,kda --first-call-ahead 0,1   # compiling ahead off, then on

FLA's autotune results from the H200 (fla-core 0.6.0, Triton 3.6.0; 100 entries: the delta families, gla, simple_gla,
linear_attn and retention at the three issue shapes, whose tuning keys hold no B or T) ship as ``benchmarks/fla_autotune_h200.tgz``: unpacked into
``$TRITON_CACHE_DIR`` they spare those shapes FLA's minutes of first-call tuning (``source benchmarks/h200_env.sh``
does that, and installs the carried FLA wheels, on the lent H200).

Rows: our forward and forward+backward (the ``fla_compile.ops`` functions, autograd included),
flash-linear-attention 0.6.0 when importable, softmax attention (SDPA, causal), the memory floor
of the forward (bytes of q, k, v, g, o over the measured device-copy bandwidth), the decode step
at B=64 next to its floor (state read + write), and the first call in a fresh process with a cold
and a warm tuning cache. Next to each wall time, the summed kernel time of one call (torch.profiler;
``--no-kernel-time`` skips it): the side-by-side table gives both ratios, since host time decides the wall
time of small calls and moves with the machine. Each row is measured in its own try/except: a failure is a row with the
error, never a lost table. With ``$OUT`` set, writes ``kernels.csv`` and ``kernels.md`` there
(and ``sweep.csv`` / ``sweep.png`` with ``--sweep``).
"""

from __future__ import annotations

import argparse
import collections
import csv
import datetime
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

SHAPES = [(8, 2048, 16, 128), (2, 8192, 16, 128), (8, 2048, 32, 64)]
QUICK_SHAPES = [(2, 512, 4, 64)]
FAMILIES = ["gla", "simple_gla", "linear_attn", "retention", "delta_rule", "gated_delta_rule", "kda"]
DELTA = ("delta_rule", "gated_delta_rule", "kda")
DELTA_GATES = {"delta_rule": "none", "gated_delta_rule": "scalar", "kda": "vector"}  # the decode kernel's gate kinds
FLA_OPS = {
    "gla": ("fla.ops.gla", "chunk_gla"),
    "simple_gla": ("fla.ops.simple_gla", "chunk_simple_gla"),
    "delta_rule": ("fla.ops.delta_rule", "chunk_delta_rule"),
    "gated_delta_rule": ("fla.ops.gated_delta_rule", "chunk_gated_delta_rule"),
    "kda": ("fla.ops.kda", "chunk_kda"),
    "rwkv6": ("fla.ops.rwkv6", "chunk_rwkv6"),
    "linear_attn": ("fla.ops.linear_attn", "chunk_linear_attn"),
    "retention": ("fla.ops.retention", "chunk_retention"),
}


def bench(fn) -> float:
    """Median milliseconds of ``fn`` (triton.testing.do_bench)."""
    import triton.testing

    return triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])[0]


def kernel_table(fn, iters: int = 3) -> list[tuple[str, int, float]]:
    """(kernel name, calls per iteration, mean ms per iteration) of the CUDA kernels ``fn`` launches."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    acc: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            acc[e.name][0] += 1
            acc[e.name][1] += e.device_time_total / 1e3
    rows = [(n[:70], int(c / iters), t / iters) for n, (c, t) in acc.items()]
    return sorted(rows, key=lambda r: -r[2])


def device_ms(fn, iters: int = 5) -> float:
    """The summed CUDA kernel time of one call of ``fn`` (mean over ``iters``): free of host time, which at small
    shapes decides the wall time (FLA's forward moved up to 2.9x between H200 boxes with it)."""
    return sum(ms for _, _, ms in kernel_table(fn, iters))


def copy_bandwidth() -> float:
    """Measured device-copy bandwidth in bytes/s (read + write of 1 GiB)."""
    x = torch.empty(2**28, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    return 2 * x.numel() * 4 / (ms * 1e-3)


def inputs(family, B, T, H, D, dtype=torch.bfloat16, grad=False, V=None):
    """The op's arguments at head dim D (v's head dim ``V`` where given)."""
    q, k = (torch.randn(B, T, H, D, device="cuda", dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, D if V is None else V, device="cuda", dtype=dtype)
    g = None
    if family in DELTA:  # unit-norm keys (the models' regime), beta in (0, 1), gates as the models make them
        k = F.normalize(k.float(), dim=-1).to(dtype)
        beta = torch.rand(B, T, H, device="cuda", dtype=dtype)
        g = {
            "delta_rule": None,
            "gated_delta_rule": F.logsigmoid(torch.randn(B, T, H, device="cuda")),
            "kda": F.logsigmoid(torch.randn(B, T, H, D, device="cuda")) / 16,
        }[family]
        xs = [q, k, v] + ([g] if g is not None else []) + [beta]
        return [x.requires_grad_() for x in xs] if grad else xs
    if family == "rwkv6":  # r, k, v, w (log decay), u (bonus [H, D]), as chunk_rwkv6 takes them
        xs = [q, k, v, F.logsigmoid(torch.randn(B, T, H, D, device="cuda")) / 16, torch.randn(H, D, device="cuda")]
        return [x.requires_grad_() for x in xs] if grad else xs
    if family == "gla":
        g = F.logsigmoid(torch.randn(B, T, H, D, device="cuda")) / 16
    elif family == "simple_gla":
        g = F.logsigmoid(torch.randn(B, T, H, device="cuda")) / 16
    elif family == "retention":
        g = torch.full((H,), -0.05, device="cuda")
    xs = [q, k, v] + ([g] if g is not None else [])
    if grad:
        xs = [x.requires_grad_() if x.dim() > 1 else x for x in xs]
    return xs


def ours(family):
    import fla_compile.ops as ops

    return getattr(ops, family)


def fla_op(family):
    import importlib

    module, name = FLA_OPS[family]
    fn = getattr(importlib.import_module(module), name)
    if family == "linear_attn":  # FLA normalizes by default; ours (and the comparison) is unnormalized
        return lambda q, k, v: fn(q, k, v, normalize=False)
    if family == "retention":  # FLA fixes the per-head decays itself (1 - 2^(-5-h)): same work, no g argument
        return lambda q, k, v, g: fn(q, k, v)
    return fn


def fwd_bwd(fn, xs):
    """One forward and backward of ``fn`` as a layer's activations see it: ``autograd.grad`` of the output (one
    fixed random upstream gradient) with respect to the inputs that require it. No ``.grad`` accumulation and no
    fill per step: ``o.backward(ones_like(o))`` timed both (an add kernel per input after the first step, 0.14 ms
    of 1.79 in delta_rule's fwd+bwd on the H200, ours and FLA's alike; before the tenth session's rows)."""
    wrt = [x for x in xs if isinstance(x, torch.Tensor) and x.requires_grad]
    upstream = []

    def step():
        o = fn(*xs)[0]
        if not upstream:
            upstream.append(torch.randn_like(o))
        torch.autograd.grad(o, wrt, upstream[0], allow_unused=True)  # an input the op ignores is no error

    return step


def outputs_and_grads(fn, xs):
    """The output and the inputs' gradients of one forward+backward (ones as the output's gradient), fp32 copies:
    what a variant of ours is checked against before it is timed, so a fast row that computes something else is
    marked, not taken for a win (dh at 4 warps / 1 stage timed fastest for delta_rule while its bf16 dk was wrong)."""
    wrt = [x for x in xs if isinstance(x, torch.Tensor) and x.requires_grad]
    o = fn(*xs)[0]
    grads = torch.autograd.grad(o, wrt, torch.ones_like(o), allow_unused=True)
    return [o.detach().float()] + [g.float() for g in grads if g is not None]


def max_rel(got, ref) -> float:
    """The largest relative difference (Frobenius, ``tests/compare.rel``) between matching tensors of two
    ``outputs_and_grads``."""
    from tests.compare import rel

    return max(rel(a, b) for a, b in zip(got, ref))


def time_fwd(get, family, shape, measure=None):
    """A row's measurement of the forward: ``measure`` (default ``bench``, wall time; ``device_ms``: kernels)."""

    def run():
        fn, xs = get(family), inputs(family, *shape)
        with torch.no_grad():
            return (measure or bench)(lambda: fn(*xs))

    return run


def time_fwd_bwd(get, family, shape, measure=None):
    def run():
        return (measure or bench)(fwd_bwd(get(family), inputs(family, *shape, grad=True)))

    return run


def sdpa(B, T, H, D, dtype=torch.bfloat16, grad=False):
    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=dtype, requires_grad=grad) for _ in range(3))

    def fwd(q=q, k=k, v=v):
        return (F.scaled_dot_product_attention(q, k, v, is_causal=True),)

    return fwd, [q, k, v]


def time_sdpa(shape, backward=True):
    def run():
        if not backward:
            with torch.no_grad():
                return bench(sdpa(*shape)[0])
        return bench(fwd_bwd(*sdpa(*shape, grad=True)))

    return run


def delta_decode_step(family, B, H, D):
    """One token's step of the delta line's decode kernel for B sequences, its state updated in place (a call)."""
    from fla_compile.lowering.delta import triton_launch as delta_triton

    state = torch.zeros(B, H, D, D, device="cuda")
    q, k, v, *g, beta = inputs(family, B, 1, H, D)
    g = g[0] if g else None
    kind = DELTA_GATES[family]
    return lambda: delta_triton.fused_recurrent(q, k, v, beta, g, kind, 0.1, state, None, False, state)


FIRST_CALL = r"""
import json, sys, time, torch
sys.path.insert(0, "benchmarks")
import kernels  # torch only: the op's module is imported under the clock
t0 = time.perf_counter()
from triton import knobs
compiles = []  # one dict a Triton compile: kernel, seconds per stage

def listener(*, src, times, **_):
    fn = getattr(src, "fn", None)
    stages = {"setup": times.ir_initialization / 1e6, **{s: us / 1e6 for s, us in times.lowering_stages}}
    compiles.append({"kernel": getattr(fn, "__name__", type(src).__name__), **stages})

if hasattr(knobs.compilation, "listener"):
    knobs.compilation.listener = listener
op = kernels.ours(sys.argv[1])
from fla_compile.lowering.common import launch
t1 = time.perf_counter()
launches = [0.0]  # the wall seconds of our Triton launches, each synchronized: compile, launcher, module load, run
real_fitted = launch.fitted

def fitted(*args, **kwargs):
    dry = launch.COMPILE_ONLY.get() is not None  # compiling ahead: submitted to threads, timed as the fwd's
    if not dry:
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = real_fitted(*args, **kwargs)
    if not dry:
        torch.cuda.synchronize()
        launches[0] += time.perf_counter() - t
    return out

launch.fitted = fitted
torch.zeros(1, device="cuda")
torch.cuda.synchronize()
t2 = time.perf_counter()
xs = kernels.inputs(sys.argv[1], 8, 2048, 16, 128, grad=True)
t3 = time.perf_counter()
o = op(*xs)[0]
torch.cuda.synchronize()
t4 = time.perf_counter()
o.sum().backward()  # as a training step's scalar loss: an explicit upstream gradient imports sympy (torch's cost)
torch.cuda.synchronize()
t5 = time.perf_counter()
print(json.dumps({"seconds": t5 - t0, "import": t1 - t0, "cuda init": t2 - t1, "fwd": t4 - t3, "bwd": t5 - t4,
                  "launches": launches[0], "compiles": compiles}))
"""


def first_call(cache_dir: str, family: str = "gla", env: dict | None = None) -> dict:
    """The first ``family`` call (forward + backward of a scalar loss, :func:`inputs` at B=8 T=2048 H=16 D=128) in
    a fresh process using ``cache_dir``, torch imported, ``env`` added to the environment: its seconds from
    ``import fla_compile.ops`` to the synchronized backward, where they went (import, CUDA init, forward,
    backward), the wall time of our Triton launches (each synchronized: what they take beyond their compiles is the
    launcher's setup, the module load and the kernel) and each Triton compile's stages
    (``triton.knobs.compilation.listener``; none listed where this Triton lacks it)."""
    if family not in FAMILIES:
        raise ValueError(f"first_call: family {family!r}: expected one of {', '.join(FAMILIES)}")
    # both caches live under cache_dir: the first call with a new one is cold (Triton compiles every kernel),
    # the second warm (compiled kernels and tuning results on disk), as a user's first and second process
    env = dict(os.environ, **(env or {}), FLA_COMPILE_CACHE_DIR=cache_dir,
               TRITON_CACHE_DIR=os.path.join(cache_dir, "triton"))  # fmt: skip
    root = pathlib.Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", FIRST_CALL, family], env=env, capture_output=True, text=True,
                         timeout=900, cwd=root)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def first_call_seconds(cache_dir: str, family: str = "gla", env: dict | None = None) -> float:
    """Seconds of :func:`first_call` (the table's first-call rows)."""
    return first_call(cache_dir, family, env)["seconds"]


def first_call_profile(families, ahead=("1",)) -> str:
    """Each family's first call as a markdown table of where the seconds went, and the cold calls' slowest
    compiles. Python's bytecode is kept under one prefix (``PYTHONPYCACHEPREFIX``) for all the runs: a package
    installer writes it, and an environment without it (the lent H200's) compiles every module's source in each
    fresh process, seconds that are not ours. The family's first run fills it and is its row "cold, no bytecode";
    then per ``FLA_COMPILE_AHEAD`` setting in ``ahead`` a cold call (an empty kernel cache) and a warm one."""
    lines = ["| family | ahead | cache | seconds | import | CUDA init | fwd | bwd | launches | compiles (warm: loads) "
             "| their seconds by stage |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    slowest = []

    def add(family, setting, cache, r):
        stages = collections.Counter()
        for c in r["compiles"]:
            stages.update({s: t for s, t in c.items() if s != "kernel"})
        by_stage = " / ".join(f"{s} {t:.2f}" for s, t in stages.items())
        lines.append(f"| {family} | {setting} | {cache} | {r['seconds']:.2f} | {r['import']:.2f} | "
                     f"{r['cuda init']:.2f} | {r['fwd']:.2f} | {r['bwd']:.2f} | {r['launches']:.2f} | "
                     f"{len(r['compiles'])}, {sum(stages.values()):.2f} s | {by_stage} |")  # fmt: skip
        if cache.startswith("cold"):
            took = [(sum(t for s, t in c.items() if s != "kernel"), c["kernel"]) for c in r["compiles"]]
            top = sorted(took, reverse=True)[:4]
            slowest.append(f"{family} ({setting}, {cache}): " + ", ".join(f"{name} {t:.2f} s" for t, name in top))

    with tempfile.TemporaryDirectory() as pyc:
        for family in families:
            with tempfile.TemporaryDirectory() as d:
                env = {"PYTHONPYCACHEPREFIX": pyc, "FLA_COMPILE_AHEAD": ahead[0]}
                add(family, ahead[0], "cold, no bytecode", first_call(d, family, env))
            for setting in ahead:
                env = {"PYTHONPYCACHEPREFIX": pyc, "FLA_COMPILE_AHEAD": setting}
                with tempfile.TemporaryDirectory() as d:
                    for cache in ("cold", "warm"):
                        add(family, setting, cache, first_call(d, family, env))
    return "\n".join(lines + [""] + slowest)


def emit(rows, r: dict) -> None:
    """Keep a row and print it at once (stderr), so a run cut by its limit still has it (``--from-log``)."""
    rows.append(r)
    print(f"| {r['row']} | {r['shape']} | {r['value']} | {r['unit']} | {r['note']} |", file=sys.stderr, flush=True)


def row(rows, name, shape, fn, unit="ms"):
    try:
        emit(rows, {"row": name, "shape": shape, "value": f"{fn():.4f}", "unit": unit, "note": ""})
    except Exception as e:  # one broken row must not lose the table
        emit(rows, {"row": name, "shape": shape, "value": "", "unit": unit, "note": f"{type(e).__name__}: {e}"[:160]})


def shapes_of(args) -> list[tuple]:
    """The (B, T, H, D) shapes of the table: ``--shapes``, else the issue's (``--quick``: one small one)."""
    if args.shapes:
        return [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
    return QUICK_SHAPES if args.quick else SHAPES


def table(args) -> list[dict]:
    rows: list[dict] = []
    bw = copy_bandwidth()
    emit(rows, {"row": "device copy bandwidth", "shape": "", "value": f"{bw / 1e12:.3f}", "unit": "TB/s", "note": ""})
    for B, T, H, D in shapes_of(args):
        shape = f"B={B} T={T} H={H} D={D}"
        for family in args.families:
            impls = [("ours", ours)] + ([("fla", fla_op)] if family in FLA_OPS else [])
            for who, get in impls:
                row(rows, f"{who} {family} fwd", shape, time_fwd(get, family, (B, T, H, D)))
                row(rows, f"{who} {family} fwd+bwd", shape, time_fwd_bwd(get, family, (B, T, H, D)))
                if args.kernel_time:
                    row(rows, f"{who} {family} fwd kernels", shape, time_fwd(get, family, (B, T, H, D), device_ms))
                    row(
                        rows,
                        f"{who} {family} fwd+bwd kernels",
                        shape,
                        time_fwd_bwd(get, family, (B, T, H, D), device_ms),
                    )
            n_gate = {"gla": D, "simple_gla": 1, "gated_delta_rule": 1, "kda": D, "rwkv6": D}.get(family, 0)
            floor = (B * T * H * (3 * D * 2 + n_gate * 4 + D * 2)) / bw * 1e3  # q,k,v bf16, g fp32, o bf16
            emit(
                rows,
                {
                    "row": f"memory floor {family} fwd",
                    "shape": shape,
                    "value": f"{floor:.4f}",
                    "unit": "ms",
                    "note": "bytes of q,k,v,g,o / copy bandwidth",
                },
            )
        row(rows, "sdpa causal fwd", shape, time_sdpa((B, T, H, D), backward=False))
        row(rows, "sdpa causal fwd+bwd", shape, time_sdpa((B, T, H, D)))
    for family in [f for f in args.families if f != "rwkv6"]:
        B, H, D = 64, 16 if not args.quick else 4, 128
        shape = f"decode B={B} H={H} D={D}"

        def decode(family=family, B=B, H=H, D=D):
            if family in DELTA:
                return bench(delta_decode_step(family, B, H, D))
            state = torch.zeros(B, H, D, D, device="cuda")
            from fla_compile.lowering.gla import triton_launch as gla_triton

            q, k, v, *g = inputs(family, B, 1, H, D)
            g = g[0] if g else None
            if family == "retention":
                g = g.reshape(1, 1, H).expand(B, 1, H)
            kind = {"gla": "vector", "simple_gla": "scalar", "retention": "scalar"}.get(family, "none")
            return bench(lambda: gla_triton.fused_recurrent(q, k, v, g, kind, 0.1, state, inplace_state=True))

        row(rows, f"ours {family} decode step", shape, decode)
        floor = B * H * D * D * 4 * 2 / bw * 1e3
        emit(
            rows,
            {
                "row": "decode floor (state read+write)",
                "shape": shape,
                "value": f"{floor:.4f}",
                "unit": "ms",
                "note": "",
            },
        )
    if not args.quick and not args.no_first_call:
        with tempfile.TemporaryDirectory() as d:
            row(rows, "first call, fresh process, cold cache", "gla B=8 T=2048", lambda: first_call_seconds(d), "s")
            row(rows, "first call, fresh process, warm cache", "gla B=8 T=2048", lambda: first_call_seconds(d), "s")
    return rows


def sweep(args, out: pathlib.Path | None) -> list[dict]:
    """Forward+backward time against T (B*T = 16384 tokens kept, H=16, D=128, bf16): gla and retention, ours
    and FLA's, and SDPA. The CSV and the plot are rewritten after each T (a cut run keeps what it measured)."""
    rows = []
    for T in [int(x) for x in args.sweep_T.split(",")]:
        B = max(1, 16384 // T)
        shape = (B, T, 16, 128)
        for name, fn in [
            ("ours gla", time_fwd_bwd(ours, "gla", shape)),
            ("fla gla", time_fwd_bwd(fla_op, "gla", shape)),
            ("ours retention", time_fwd_bwd(ours, "retention", shape)),
            ("fla retention", time_fwd_bwd(fla_op, "retention", shape)),
            ("sdpa causal", time_sdpa(shape)),
        ]:
            row(rows, name, f"T={T} B={B}", fn)
            rows[-1]["T"] = T
        if out is not None:
            write(out, "sweep", rows)
            plot_sweep(rows, out / "sweep.png")
    return rows


def plot_sweep(rows, path: pathlib.Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"no plot: {e}", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sorted({r["row"] for r in rows}):
        pts = [(r["T"], float(r["value"])) for r in rows if r["row"] == name and _is_number(r["value"])]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name, linestyle="--" if name.startswith("fla") else "-")
    ax.set(xscale="log", yscale="log", xlabel="T (B*T = 16384 tokens)", ylabel="forward+backward ms")
    ax.set_title("H200, H=16 D=128 bf16", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def side_by_side(rows) -> str:
    """Ours next to FLA per (op, shape) with ratio = FLA / ours (>= 1: ours faster), from the table's rows."""
    got = {(r["row"], r["shape"]): r for r in rows}

    def ratio(fla, ours) -> str:
        ok = fla is not None and ours is not None and _is_number(fla["value"]) and _is_number(ours["value"])
        return f"{float(fla['value']) / float(ours['value']):.2f}" if ok else ""

    lines = [
        "| op | shape | ours ms | FLA ms | FLA / ours | FLA / ours, kernel time |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if not r["row"].startswith("ours ") or r["unit"] != "ms" or "decode" in r["row"] or "kernels" in r["row"]:
            continue
        op = r["row"][len("ours ") :]
        fla = got.get((f"fla {op}", r["shape"]))
        if fla is None:
            continue
        kernels = ratio(got.get((f"fla {op} kernels", r["shape"])), got.get((f"ours {op} kernels", r["shape"])))
        fla_cell = fla["value"] or (fla["note"].split(":")[0] if fla["note"] else "")
        lines.append(f"| {op} | {r['shape']} | {r['value']} | {fla_cell} | {ratio(fla, r)} | {kernels} |")
    return "\n".join(lines)


def warm(families, shapes, timeout: float) -> None:
    """Fill FLA's autotune cache (and compile ours) before timing: one process per family, side by side. FLA
    autotunes each kernel on its first call for minutes with a cold cache; inside the timed table that time lands
    in whichever row calls it first, and one call's limit may end the run before the table does."""
    root = pathlib.Path(__file__).resolve()
    spec = ";".join(",".join(str(x) for x in s) for s in shapes)
    t0 = time.perf_counter()
    procs = {
        f: subprocess.Popen(
            [sys.executable, str(root), "--warm-one", f, "--shapes", spec],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for f in families
    }
    for f, p in procs.items():
        try:
            out, _ = p.communicate(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            out = f"{f}: warm-up cut at {timeout:.0f} s\n"
        for line in out.splitlines():
            if line.startswith("warm "):
                print(line, file=sys.stderr, flush=True)
    print(f"(warm-up {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)


def warm_one(family, shapes) -> None:
    """One forward and one forward+backward of ours and FLA's at each shape (a failure is a line, not an end)."""
    for shape in shapes:
        for who, get in [("ours", ours)] + ([("fla", fla_op)] if family in FLA_OPS else []):
            t = time.perf_counter()
            try:
                fn = get(family)
                with torch.no_grad():
                    fn(*inputs(family, *shape))
                fwd_bwd(fn, inputs(family, *shape, grad=True))()
                torch.cuda.synchronize()
                msg = "ok"
            except Exception as e:
                msg = f"{type(e).__name__}: {str(e)[:100]}"
            print(f"warm {who} {family} {shape}: {time.perf_counter() - t:.1f} s {msg}", flush=True)


def rows_from_log(text: str) -> list[dict]:
    """The rows a run printed as it went (``| row | shape | value | unit | note |``, one per line), so a run cut by
    its time limit still gives its side-by-side table (``--from-log``)."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[3] in ("ms", "s", "TB/s") and cells[0] not in ("row", "---"):
            rows.append(dict(zip(("row", "shape", "value", "unit", "note"), cells)))
    return rows


def markdown(rows) -> str:
    lines = ["| row | shape | value | unit | note |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['row']} | {r['shape']} | {r['value']} | {r['unit']} | {r['note']} |" for r in rows]
    return "\n".join(lines)


def header() -> str:
    import triton

    return (
        f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
        f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    )


def write(out, name, rows):
    keys = ["row", "shape", "value", "unit", "note"]
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    text = header() + "\n\n" + markdown(rows) + "\n"
    if name == "kernels":
        text += "\n" + side_by_side(rows) + "\n"
    (out / f"{name}.md").write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    p.add_argument("--shapes", default="", help="'B,T,H,D;B,T,H,D' instead of the issue shapes")
    p.add_argument("--no-first-call", action="store_true", help="skip the fresh-process first-call rows")
    p.add_argument("--first-call-profile", default="", metavar="FAMILIES",
                   help="no table: where the first call's seconds go (import, compiles by stage), cold and warm")  # fmt: skip
    p.add_argument("--first-call-ahead", default="1", metavar="SETTINGS",
                   help="the profile's FLA_COMPILE_AHEAD settings, e.g. 0,1 (compiling ahead off, then on)")  # fmt: skip
    p.add_argument("--no-kernel-time", dest="kernel_time", action="store_false",
                   help="skip the rows of summed kernel time (torch.profiler) next to the wall times")  # fmt: skip
    p.add_argument("--sweep", action="store_true", help="also time fwd+bwd against T, with a plot")
    p.add_argument("--sweep-only", action="store_true", help="the sweep alone (no side-by-side table)")
    p.add_argument("--sweep-T", default="512,1024,2048,4096,8192,16384,32768", help="the sweep's lengths")
    p.add_argument("--warm", type=float, default=0, metavar="S",
                   help="first fill FLA's autotune cache, one process per family side by side, for at most S s")  # fmt: skip
    p.add_argument("--warm-one", default="", help=argparse.SUPPRESS)
    p.add_argument("--from-log", default="", metavar="PATH",
                   help="no timing: the tables from the rows a (cut) run printed to PATH")  # fmt: skip
    args = p.parse_args(argv)
    if args.from_log:
        rows = rows_from_log(pathlib.Path(args.from_log).read_text())
        print(markdown(rows) + "\n\n" + side_by_side(rows))
        return 0
    args.families = args.families.split(",")
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run from a checkout
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA device", file=sys.stderr)
        return 1
    if args.first_call_profile:
        print(first_call_profile(args.first_call_profile.split(","), tuple(args.first_call_ahead.split(","))))
        return 0
    shapes = shapes_of(args)
    if args.warm_one:
        warm_one(args.warm_one, shapes)
        return 0
    out = pathlib.Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    t0 = time.perf_counter()
    if args.warm and not args.sweep_only:
        warm(args.families, shapes, args.warm)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    print(header())
    if not args.sweep_only:
        rows = table(args)
        print(markdown(rows))
        print("\n" + side_by_side(rows))
        if out is not None:
            write(out, "kernels", rows)
    if args.sweep or args.sweep_only:
        print(markdown(sweep(args, out)))
    print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

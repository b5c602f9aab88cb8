"""Per-kernel launch-option sweep of the GLA-line chunk kernels (CUDA): which warps / stages / blocks win.

    python benchmarks/sweep_gla_kernels.py [--shape 8,2048,16,128 | 8,2048,8,256,512] [--budget 300] [--kinds head]
        [--only heads_inner]

For each gate kind (vector: gla; scalar: simple_gla; head: retention's one decay per head, which the kernels
expand in-chunk, gate id 3, under the scalar kind's configs; none: linear_attn) it runs one chunked forward and
backward per variant under ``torch.profiler`` and records the time of every kernel. A variant changes one
kernel's options (``<kernel>_warps``, ``<kernel>_stages``, ``<kernel>_BK``, see ``gla_triton._opts``) or the shared
blocks (BT, BK, BV). A variant that launches as one timed before is skipped (``launch_forms``); the two or three
best variants of a kernel are then tried together (``merges``). The best option set of each kernel is kept, the
winners are combined, checked against the default config's outputs (every output and gradient) and timed as a
whole. Stops sweeping a gate kind after ``--budget`` seconds of it and reports what it has (each kind its own
budget: a shared one left the later kinds of ``--kinds`` none).
Prints a table per kernel and the combined configs as JSON (for ``lowering/common/configs/sm90.json``), and the
options that beat the shipped ones by more than 2% as a ``by_dims`` entry for the shape's head dims.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from launch_forms import launch_forms as forms_of  # noqa: E402

from fla_compile.lowering.common.autotune import candidates  # noqa: E402
from fla_compile.lowering.gla import triton_launch as gla_triton  # noqa: E402
from tests.compare import rel  # noqa: E402

NAMES = {
    "h": "chunk_fwd_h_kernel",
    "o": "chunk_fwd_o_kernel",
    "dh": "chunk_bwd_dh_kernel",
    "dv": "chunk_bwd_dv_kernel",
    "dqk": "chunk_bwd_dqk_kernel",
    "A": "chunk_gla_A_kernel",
    "intra": "chunk_gla_bwd_intra_kernel",
    "rc": "chunk_rc_add_kernel",
    "cumsum": "chunk_cumsum_kernel",
}
BIG = ("h", "o", "dh", "dv", "dqk")
CONFIG_KIND = {"vector": "vector", "scalar": "scalar", "head": "scalar", "none": "none"}  # sweep kinds -> table kinds
SMALL = ("A", "intra", "rc", "cumsum")


def problem(kind, B, T, H, D, V=None, seed=0):
    torch.manual_seed(seed)
    V = V or D
    q, k = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    v = torch.randn(B, T, H, V, device="cuda", dtype=torch.bfloat16)
    g = None
    if kind == "vector":
        g = F.logsigmoid(torch.randn(B, T, H, D, device="cuda")) / 16
    elif kind == "scalar":
        g = F.logsigmoid(torch.randn(B, T, H, device="cuda")) / 16
    elif kind == "head":  # retention: one decay per head, broadcast (the launchers hand the kernels gate id 3)
        g = F.logsigmoid(torch.randn(H, device="cuda") + 3).reshape(1, 1, H).expand(B, T, H)
    h0 = torch.randn(B, H, D, V, device="cuda")
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    return q, k, v, g, h0, do, dht


def run(kind, xs, cfg):
    q, k, v, g, h0, do, dht = xs
    need_dgate = kind != "head"  # retention's decays take no gradient (the op skips it: ``gate_grads``)
    kind = CONFIG_KIND[kind]
    o, ht = gla_triton.chunk_forward(q, k, v, g, kind, 0.088, h0, None, config=cfg)
    grads = gla_triton.chunk_backward(q, k, v, g, kind, 0.088, h0, None, do, dht, config=cfg, need_dgate=need_dgate)
    return (o, ht, *[x for x in grads if x is not None])


def launch_forms(kind, xs, cfg) -> list[tuple]:
    """What one fwd+bwd under ``cfg`` would launch, nothing run (``benchmarks/launch_forms.py``). A variant whose
    forms equal the shipped config's or an earlier variant's times nothing new: the sweep skips it."""
    return forms_of(lambda: run(kind, xs, cfg))


def kernel_ms(kind, xs, cfg, iters=3) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    run(kind, xs, cfg)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            run(kind, xs, cfg)
        torch.cuda.synchronize()
    acc: dict[str, float] = collections.defaultdict(float)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            acc[e.name] += e.device_time_total / 1e3 / iters
    return {key: acc.get(name, 0.0) for key, name in NAMES.items()}


def variants(kind, shipped):
    keys = (("A", "intra") + BIG) if kind == "vector" else BIG
    out = []
    for key in keys:
        if key in BIG:
            opts = [{"_BV": bv, "_warps": w, "_stages": s} for bv in (64, 128) for w in (4, 8) for s in (2, 3)]
            opts += [{"_BK": 128, "_warps": w, "_stages": 2} for w in (4, 8)]
            if key in ("h", "dh"):  # the sequential passes: FLA's state pass picks 4 stages for a scalar gate at K=128
                opts += [{"_BV": bv, "_warps": w, "_stages": 4} for bv in (64, 128) for w in (4, 8)]
            if key != "h" and key != "dh":  # the parallel kernels' launch order (``_heads_inner``), the other one
                opts.append({"_heads_inner": not shipped.get(f"{key}_heads_inner", shipped.get("heads_inner", False))})
            # a register cap (``_maxnreg``): at K = V = 64 on 4 warps the output and dv kernels take 133-142
            # registers (three programs a multiprocessor), 124-128 capped (four; offline sm_90: no spill for the
            # output kernel, 0-32 B for dv); FLA's retention output kernel takes 118 uncapped. dq/dk: 255 -> 168
            # (H200: retention's 0.200 -> 0.168 ms, simple_gla's 0.256 -> 0.269), and 128 (K = 128: 145-149 -> 128)
            opts += [{"_maxnreg": 168}, {"_maxnreg": 128}] if key == "dqk" else [{"_maxnreg": 128}]
        else:
            opts = [{"_warps": w, "_stages": s} for w in (2, 4, 8) for s in (1, 2)]
            if key in ("A", "intra"):
                opts += [{"_BK": bk, "_warps": w, "_stages": 1} for bk in (32, 128) for w in (4, 8)]
            if key == "A":  # a chunk's blocks side by side in launch order (they read the same rows)
                opts += [{"_pairs_inner": True, "_BK": bk} for bk in (64, 128)]
        # one decay per head reads ``<kernel>_head_<option>`` first (``gla_triton._option``): its variants set that
        # form, so a head-only entry of the table (``dqk_head_maxnreg``) does not mask them
        form = f"{key}_head" if kind == "head" else key
        out += [(key, {f"{form}{n}": v for n, v in o.items()}) for o in opts]
        if key in ("h", "dh"):
            # two programs an SM where fill_sms halves the pass's blocks (``<kernel>_fill_per_sm``: at one each pass
            # is a latency chain, ncu 6% occupancy at B=2 T=8192), on the table's warps, 4 or 8; each option under
            # both names (one decay per head reads ``<kernel>_head_fill_per_sm`` / ``<kernel>_fill_head_<option>``)
            for w in (None, 4, 8):
                opt = {f"{key}_fill_per_sm": 2, f"{key}_head_fill_per_sm": 2}
                if w:
                    opt.update({f"{key}_fill_warps": w, f"{key}_fill_head_warps": w})
                out.append((key, opt))
        if key == "h" and kind in ("scalar", "head"):
            # FLA's order for a scalar gate: v's rows decayed, not the keys' columns (``h_decay_rows``), at full
            # blocks, then where fill_sms halves them at one or two programs an SM, warps, stages (FLA's tiling at
            # B=2 T=8192: two an SM, 4 warps; the shipped scalar entry: that on 4 stages)
            out.append((key, {"h_decay_rows": True}))
            combos = [(2, 4, st) for st in (2, 3, 4, 5)] + [(2, 2, 4), (2, 8, 4), (1, 4, 3), (1, 4, 4), (1, 8, 4)]
            for per_sm, w, st in combos:
                opt = {"h_fill_per_sm": per_sm, "h_head_fill_per_sm": per_sm}
                for n, val in (("decay_rows", True), ("warps", w), ("stages", st)):
                    opt.update({f"h_fill_{n}": val, f"h_fill_head_{n}": val})
                out.append((key, opt))
    return out


def merges(ranked: list[dict], top: int = 3) -> list[dict]:
    """Option sets merged from one kernel's best single variants (``ranked``, best first): each pair of the first
    ``top``, then all of them, leaving out merges whose parts set one option two ways. One at a time the sweep
    misses wins that need two options together (retention's dq/dk at K 256 x V 512: heads side by side 0.743 ->
    0.639 ms, K blocks of 128 on 2 stages -> 0.535, both 0.471)."""
    best = ranked[:top]

    def merged(parts):
        out = {}
        for part in parts:
            if any(out.get(n, v) != v for n, v in part.items()):
                return None
            out.update(part)
        return out

    pairs = [merged((a, b)) for i, a in enumerate(best) for b in best[i + 1 :]]
    every = [merged(best)] if len(best) > 2 else []
    out = []
    for m in pairs + every:
        if m is not None and m not in out and m not in best:
            out.append(m)
    return out


def sweep(kind, xs, base, base_ms, only: str, deadline: float):
    """Each kernel's single-option variants over the shipped config ``base`` (those whose JSON holds ``only``), then
    its best ones merged (:func:`merges`), until ``deadline`` (``time.perf_counter``): (table rows, the best (ms,
    options) per kernel). A variant launching as one timed before is skipped (:func:`launch_forms`)."""
    wins = collections.defaultdict(list)  # kernel -> (ms, option set) of the variants that beat the shipped one
    rows = []
    timed = {repr(launch_forms(kind, xs, base)): "the shipped config"}  # launch forms -> the variant timing them

    def try_variant(what, key, opt):
        forms = repr(launch_forms(kind, xs, {**base, **opt}))
        if forms in timed:
            print(f"{kind} {key} {opt}: launches as {timed[forms]}, skipped", flush=True)
            return
        timed[forms] = json.dumps(opt)
        try:
            ms = kernel_ms(kind, xs, {**base, **opt})
        except Exception as e:  # an option a kernel cannot take (too much shared memory, ...)
            print(f"{kind} {key} {opt}: {type(e).__name__}: {str(e)[:100]}", flush=True)
            return
        rows.append((what, json.dumps(opt), ms))
        if ms[key] < base_ms[key]:
            wins[key].append((ms[key], opt))

    for key, opt in variants(kind, base):
        if not any(text in json.dumps(opt) for text in only.split("|")):
            continue
        if time.perf_counter() > deadline:
            print(f"budget reached at {key} {opt}", flush=True)
            break
        try_variant(key, key, opt)
    singles = {key: [o for _, o in sorted(won, key=lambda w: w[0])] for key, won in wins.items()}
    for key, ranked in singles.items():  # two or three winning options of one kernel together
        for opt in merges(ranked):
            if time.perf_counter() > deadline:  # said, not silent: a cut merge reads as a lost one otherwise
                print(f"budget reached before the merge {key} {opt}", flush=True)
                continue
            try_variant(f"{key} merged", key, opt)
    best = {key: min(wins[key], key=lambda w: w[0], default=(base_ms[key], {})) for key in NAMES}
    return rows, best


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="8,2048,16,128", help="B,T,H,D (K = V = D) or B,T,H,K,V")
    p.add_argument("--budget", type=float, default=300, help="seconds of sweeping per gate kind")
    p.add_argument("--kinds", default="vector,scalar")
    p.add_argument(
        "--only", default="", help="keep only the variants whose options' JSON holds this text (a|b: either)"
    )
    args = p.parse_args()
    B, T, H, D, *rest = (int(x) for x in args.shape.split(","))
    V = rest[0] if rest else D
    t0 = time.perf_counter()
    results, by_dims = {}, {}
    for kind in args.kinds.split(","):
        xs = problem(kind, B, T, H, D, V)
        base = dict(candidates("chunk", CONFIG_KIND[kind], "sm90", D, V)[0])  # as shipped at these dims
        base_ms = kernel_ms(kind, xs, base)
        rows = [("base", "", base_ms)]
        for blocks in candidates("chunk", CONFIG_KIND[kind], "sm90")[1:] if not args.only else []:
            ms = kernel_ms(kind, xs, dict(blocks))
            rows.append(("blocks", json.dumps(blocks), ms))
        swept, best = sweep(kind, xs, base, base_ms, args.only, time.perf_counter() + args.budget)
        rows += swept
        combined = dict(base)
        for _, opt in best.values():
            combined.update(opt)
        ms = kernel_ms(kind, xs, combined)
        ref = run(kind, xs, base)
        new = run(kind, xs, combined)
        again = run(kind, xs, combined)
        errs = [rel(a, b) for a, b in zip(new, ref)]
        det = all(torch.equal(a, b) for a, b in zip(new, again))
        print(f"\n## {kind}: per-kernel ms (base config {json.dumps(base)})")
        print("| variant | option | " + " | ".join(NAMES) + " | total |")
        print("| --- | --- | " + " | ".join("---" for _ in NAMES) + " | --- |")
        for what, opt, m in rows + [("combined", "", ms)]:
            print(f"| {what} | {opt} | " + " | ".join(f"{m[k]:.3f}" for k in NAMES) + f" | {sum(m.values()):.3f} |")
        print(f"combined config ({kind}): {json.dumps(combined)}")
        print(f"combined vs base: max rel diff {max(errs):.1e}; deterministic: {det}")
        results[kind] = {"combined": combined, "base_total": sum(base_ms.values()), "combined_total": sum(ms.values())}
        # only options that won by more than the run's noise (2%) over the shipped ones
        gain = {key: opt for key, (t, opt) in best.items() if opt and t < 0.98 * base_ms[key]}
        changes = {name: value for opt in gain.values() for name, value in opt.items() if base.get(name) != value}
        if changes and all(e < 1e-2 for e in errs) and det:  # bf16 outputs: rounding-level differences only
            by_dims.setdefault("chunk", {})[kind] = changes  # "head": merge by hand with "scalar"
    print(json.dumps(results, indent=1))
    if by_dims:  # what to merge into configs/sm90.json's "by_dims" for these head dims
        print(json.dumps({"by_dims": {f"K{D}V{V}": by_dims}}))
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Named sets of table options for the vector-gate (gla, rwkv6) forward, side by side in one process (CUDA).

    python benchmarks/gla_options.py --shapes "8,2048,16,128;8,2048,32,64" \\
        --variants '{"BK 32, [8, 3]": {"o_BK": 32, "o_stages": 3}, "v early": {"o_v_early": true}}'
    python benchmarks/gla_options.py --family rwkv6 --variants '{"old": {"o_BK": 64, "o_stages": 2}}'

Per shape: the forward through ``triton_launch.chunk_forward`` with the table's config ("table", first), then
with each variant's options laid over it (``null`` drops an option, e.g. a register cap; ``"switches": {"NAME":
value}`` sets module switches of ``triton_launch`` for that variant alone). Prints the summed kernel
time of the forward and the output, state and cumsum kernels' own, in ms, and each variant's outputs (o, final
state, the kept A) against the table's: "bitwise" or the max relative difference. Where ``sweep_gla_kernels.py``
searches one kernel's options, this times a handful of chosen combinations (twenty-seventh session: the output
kernel's K blocks and ``o_v_early``; twenty-eighth: register caps, RESULTS).
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import kernels as KB  # noqa: E402

from fla_compile.lowering.common import autotune  # noqa: E402
from fla_compile.lowering.gla import triton_launch as L  # noqa: E402


def _config(base: dict, options: dict) -> dict:
    cfg = dict(base, **options)
    return {k: v for k, v in cfg.items() if v is not None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--family", choices=("gla", "rwkv6"), default="gla")
    p.add_argument("--shapes", default="8,2048,16,128;2,8192,16,128;8,2048,32,64", help="B,T,H,D or B,T,H,K,V")
    p.add_argument("--variants", default="{}", help="JSON: name -> table options laid over the table's config")
    a = p.parse_args(argv)
    variants = json.loads(a.variants)
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise SystemExit("--variants: expected a JSON object of name -> object of table options")
    print("| shape | family | variant | fwd kernels | chunk_fwd_o | chunk_fwd_h | chunk_cumsum | against the table |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for shape in a.shapes.split(";"):
        B, T, H, K, *V = (int(x) for x in shape.split(","))
        V = V[0] if V else K
        torch.manual_seed(0)
        q, k, v, g = KB.inputs("gla", B, T, H, K, V=V)
        u = torch.randn(H, K, device="cuda") * 0.1 if a.family == "rwkv6" else None
        table = autotune.get_config("chunk", "vector", K, V, torch.bfloat16, T, q.device, line="gla")
        base = None
        for name, options in {"table": {}, **variants}.items():
            switches = options.get("switches", {})  # module switches of triton_launch for this variant
            unknown = [n for n in switches if not hasattr(L, n)]
            if unknown:
                raise SystemExit(f"--variants {name!r}: no switch {unknown} in triton_launch")
            saved = {n: getattr(L, n) for n in switches}
            options = {k: v for k, v in options.items() if k != "switches"}
            cfg, A = _config(table, options), L.saved_A_like(q, v)
            fwd = functools.partial(L.chunk_forward, q, k, v, g, "vector", K**-0.5, None, None, config=cfg, A_out=A,
                                    bonus=u)  # fmt: skip
            try:
                for n, value in switches.items():
                    setattr(L, n, value)
                out = fwd()
                torch.cuda.synchronize()
                kernels = KB.kernel_table(fwd, 10)
            except Exception as e:  # noqa: BLE001  (a variant that does not compile is a row, not a lost run)
                print(f"| {shape} | {a.family} | {name} | error: {type(e).__name__}: {str(e)[:100]} | | | | |")
                continue
            finally:  # the switches hold for this variant's launches only
                for n, value in saved.items():
                    setattr(L, n, value)
            got = [x.clone() for x in (out[0], out[1], A)]
            base = base or got
            same = all(torch.equal(x, y) for x, y in zip(got, base))
            diff = "bitwise" if same else f"{max(KB.max_rel(x.float(), y.float()) for x, y in zip(got, base)):.1e}"
            total = sum(ms for _, _, ms in kernels)
            each = [
                sum(ms for n, _, ms in kernels if n.startswith(k))
                for k in ("chunk_fwd_o", "chunk_fwd_h", "chunk_cumsum")
            ]
            cells = " | ".join(f"{ms:.4f}" for ms in each)
            print(f"| {shape} | {a.family} | {name} | {total:.4f} | {cells} | {diff} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

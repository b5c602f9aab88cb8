"""Which kernel faults, or computes a wrong result, with fp32 at "highest" split into three tf32 products at head
dims the split is fenced off from (``launch.FP32_SPLIT_DIMS``), on one CUDA device.

    python benchmarks/fp32_split_faults.py [--cases gated_delta_rule:16:8,gla-scalar:16:16]

Each case (a family, or ``gla-<gate kind>``, with K and V) runs its forward and backward against fp64 in a process
of its own (a fault ends the CUDA context), the split forced and ``CUDA_LAUNCH_BLOCKING=1``: the last launch before
a fault names the kernel. That kernel then runs with exact dots and the case again, until it runs through; a wrong
result is bisected by giving each launched kernel alone exact dots. Logs go to ``$OUT`` (default /tmp). On the H200
(Triton 3.6, 2026-12-01) the split was wrong at K = V = 16 (retention) and faulted at K = 16, V = 8.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

NAMES = ["dq", "dk", "dv", "db", "dg", "dh0"]
DEFAULT = "gated_delta_rule:16:8,gla-scalar:16:16,delta_rule:32:32,gla-none:32:32,kda:16:16"


def case(family: str, K: int, V: int, exact_for: list[str]) -> None:
    """One case in this process: prints each launch ("LAUNCH <kernel>") and the worst relative error ("ERR x")."""
    import torch

    sys.path.insert(0, "tests/lowering")  # the tests' input makers and fp64 references
    from fla_compile.lowering.common import launch

    launch.FP32_HIGHEST, launch.FP32_SPLIT_DIMS = "tf32x3", (1, 4096)
    fitted = launch.fitted

    def traced(kernel, grid, *args, **kw):
        name = getattr(getattr(kernel, "fn", None), "__name__", None) or getattr(kernel, "__name__", str(kernel))
        if name in exact_for:
            args = tuple("ieee" if a in ("tf32", "tf32x3") else a for a in args)
        print("LAUNCH", name, flush=True)
        out = fitted(kernel, grid, *args, **kw)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out

    launch.fitted = traced
    if family.startswith("gla-"):
        import test_gla_triton as TG

        from fla_compile.lowering.gla import triton_launch as gla_triton

        gla_triton.FP32_SPLIT = True
        kind = family[4:]
        q, k, v, g, h0, cu = TG.make(kind, T=150, B=2, H=4, HK=2, K=K, V=V)
        do, dht = torch.randn_like(v), torch.randn_like(h0)
        o, ht = gla_triton.chunk_forward(q, k, v, g, kind, 0.3, h0, cu)
        grads = [x for x in gla_triton.chunk_backward(q, k, v, g, kind, 0.3, h0, cu, do, dht) if x is not None]
        ro, rht, ref = TG.reference(q, k, v, g, kind, 0.3, h0, cu, do, dht)
        errs = [TG.rel(o, ro), TG.rel(ht, rht)] + [TG.rel(a, b) for a, b in zip(grads, ref)]
    else:
        import test_delta_triton as TD

        from fla_compile.lowering.delta import triton_launch as DT

        DT.FP32_SPLIT_VECTOR_GATE = True
        dev = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU under TRITON_INTERPRET=1: a dry run
        q, k, v, beta, g, h0 = TD.make(family, 2, 150, 2, 4, K, V, dtype=torch.float32, gate_scale=1.0, device=dev)
        do, dht = torch.randn_like(v), torch.randn_like(h0)
        gate = TD.FAMILY_GATE[family]
        o, ht = DT.chunk_forward(q, k, v, beta, g, gate, 0.125, h0)
        got = DT.chunk_backward(q, k, v, beta, g, gate, 0.125, h0, None, do, dht)
        ro, rs, ref = TD.torch_grads(family, q, k, v, beta, g, h0, do, dht, 0.125)
        errs = [TD.rel(o, ro), TD.rel(ht, rs)] + [TD.rel(x, ref[n]) for n, x in zip(NAMES, got) if x is not None]
    print("ERR", max(errs), flush=True)


def run(family: str, K: int, V: int, exact_for: list[str], out: str) -> tuple[str, str, list[str]]:
    """(result, the kernel last launched before a fault or "-", the kernels launched) of one case in a new process."""
    arg = json.dumps(dict(family=family, K=K, V=V, exact_for=exact_for))
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
    try:
        p = subprocess.run(
            [sys.executable, __file__, "--one", arg], capture_output=True, text=True, timeout=120, env=env
        )
        text = p.stdout + p.stderr
    except subprocess.TimeoutExpired:
        return "timeout", "-", []
    with open(os.path.join(out, f"split_{family}_{K}_{V}_{'+'.join(exact_for) or 'none'}.log"), "w") as f:
        f.write(text)
    launches = [line.split()[1] for line in text.splitlines() if line.startswith("LAUNCH")]
    errs = [float(line.split()[1]) for line in text.splitlines() if line.startswith("ERR")]
    if not errs:
        return "fault", launches[-1] if launches else "-", launches
    return ("ok" if errs[0] < 1e-5 else f"wrong {errs[0]:.1e}"), "-", launches


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=DEFAULT, help="family:K:V,...")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        a = json.loads(args.one)
        case(a["family"], a["K"], a["V"], a["exact_for"])
        return 0
    out = os.environ.get("OUT", "/tmp")
    rows = []
    for spec in args.cases.split(","):
        family, K, V = spec.split(":")[0], int(spec.split(":")[1]), int(spec.split(":")[2])
        exact_for: list[str] = []
        for _ in range(5):
            result, culprit, launches = run(family, K, V, exact_for, out)
            rows.append((family, K, V, "+".join(exact_for) or "-", result, culprit))
            print(rows[-1], flush=True)
            if result == "fault":
                exact_for = exact_for + [culprit]
                continue
            if result.startswith("wrong"):  # each launched kernel alone with exact dots: which one fixes it
                for name in dict.fromkeys(launches):
                    fixed, _, _ = run(family, K, V, exact_for + [name], out)
                    rows.append((family, K, V, "+".join(exact_for + [name]), fixed, "-"))
                    print(rows[-1], flush=True)
                    if fixed == "ok":
                        break
            break
    print("| case | K | V | kernels with exact dots | result | kernel at the fault |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

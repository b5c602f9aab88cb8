"""transformers' own torch reference functions, eager against ``backend="fla"``, on one device.

Issue 3's measurement: Qwen3-Next's ``torch_chunk_gated_delta_rule`` (and its recurrent
twin at a short length) compiled with ``backend="fla"`` against the same function eager,
at B=8, T=2048, H=16, D=128 fp32 by default. Prints what matched, the times and the error.

    python benchmarks/hf_reference.py [--B 8 --T 2048 --H 16 --D 128] [--device cuda]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def timed(fn, reps, device):
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--H", type=int, default=16)
    p.add_argument("--D", type=int, default=128)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run from a checkout
    import transformers
    from transformers.models.qwen3_next import modeling_qwen3_next as m

    import fla_compile
    import fla_compile.backend  # noqa: F401  (registers "fla" where the package is not pip-installed)

    dev = a.device
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(a.B, a.T, a.H, a.D, device=dev, generator=g) for _ in range(3))
    gate = F.logsigmoid(torch.randn(a.B, a.T, a.H, device=dev, generator=g))
    beta = torch.rand(a.B, a.T, a.H, device=dev, generator=g)

    def eager():
        return m.torch_chunk_gated_delta_rule(
            q, k, v, gate, beta, use_qk_l2norm_in_kernel=True, output_final_state=True
        )

    compiled_fn = torch.compile(m.torch_chunk_gated_delta_rule, backend="fla")

    def compiled():
        return compiled_fn(q, k, v, gate, beta, use_qk_l2norm_in_kernel=True, output_final_state=True)

    def op():
        return fla_compile.ops.gated_delta_rule(
            q, k, v, gate, beta, use_qk_l2norm_in_kernel=True, output_final_state=True, scale=a.D**-0.5
        )

    with torch.no_grad():
        ref = eager()
        out = compiled()
        report = fla_compile.last_report()
        err = max(((o - r).norm() / r.norm()).item() for o, r in zip(out, ref))
        rows = [
            (name, timed(fn, a.reps, dev)) for name, fn in [("eager", eager), ("backend='fla'", compiled), ("op", op)]
        ]
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    print(f"{name} | torch {torch.__version__} | transformers {transformers.__version__}")
    print(f"matched: {[m_.family for m_ in report.matches]}; rel err vs eager: {err:.2e}")
    print(f"torch_chunk_gated_delta_rule, B={a.B} T={a.T} H={a.H} D={a.D} fp32, l2norm in kernel")
    print("| what | ms | speed-up over eager |")
    print("| --- | --- | --- |")
    for n, t in rows:
        print(f"| {n} | {t:.2f} | {rows[0][1] / t:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""transformers' own torch reference functions, eager against ``backend="fla"``, on one device.

Qwen3-Next's ``torch_chunk_gated_delta_rule`` compiled with ``backend="fla"`` and our op, against the same
function eager, at B=8, T=2048, H=16, D=128 fp32 by default, under each of torch's fp32 matmul precisions (our
fp32 dots follow it: "highest" exact, "high" tf32; so do eager's matmuls). Prints what matched, the times, the
speed-up over eager at the same precision and at "highest", and every row's error against the function in fp64.

    python benchmarks/hf_reference.py [--B 8 --T 2048 --H 16 --D 128] [--precisions highest,high] [--device cuda]
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

log = logging.getLogger("hf_reference")


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
    p.add_argument("--precisions", default="highest,high", help="torch.set_float32_matmul_precision modes, in turn")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--fp32-highest", default="", choices=("", "ieee", "tf32x3", "bf16x6", "bf16x3"),
                   help="our dots for fp32 at 'highest' (launch.FP32_HIGHEST; default: as shipped)")  # fmt: skip
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run from a checkout
    import transformers
    from transformers.models.qwen3_next import modeling_qwen3_next as m

    import fla_compile
    import fla_compile.backend  # noqa: F401  (registers "fla" where the package is not pip-installed)
    from fla_compile.lowering.common import launch
    from fla_compile.reference import delta as delta_reference

    if a.fp32_highest:
        launch.FP32_HIGHEST = a.fp32_highest

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

    from kernels import max_rel as rel  # the largest relative difference over matching tensors

    before = torch.get_float32_matmul_precision()
    rows, matched = [], None
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            # the recurrence step by step in fp64 (transformers' function casts its inputs to fp32 itself)
            exact = delta_reference.gated_delta_rule(
                q.double(), k.double(), v.double(), gate.double(), beta.double(), scale=a.D**-0.5,
                output_final_state=True, use_qk_l2norm=True,
            )  # fmt: skip
            if dev == "cuda":
                torch.cuda.synchronize()  # the reference's steps are queued, not done, when the call returns
            log.info("fp64 reference: %.0f s", time.perf_counter() - t0)
            for mode in a.precisions.split(","):
                torch.set_float32_matmul_precision(mode)
                compiled()
                matched = [m_.family for m_ in fla_compile.last_report().matches]
                log.info("%s: compiled, matched %s (%.0f s)", mode, matched, time.perf_counter() - t0)
                for name, fn in [("eager", eager), ("backend='fla'", compiled), ("op", op)]:
                    rows.append((mode, name, timed(fn, a.reps, dev), rel(fn(), exact)))
                    log.info(
                        "%s %s: %.2f ms, rel err %.1e (%.0f s)", mode, name, *rows[-1][2:], time.perf_counter() - t0
                    )
    finally:
        torch.set_float32_matmul_precision(before)
    eager_ms = {mode: t for mode, name, t, _ in rows if name == "eager"}
    base = eager_ms.get("highest", rows[0][2])
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    print(f"{name} | torch {torch.__version__} | transformers {transformers.__version__}")
    print(f"matched: {matched}")
    print(f"torch_chunk_gated_delta_rule, B={a.B} T={a.T} H={a.H} D={a.D} fp32, l2norm in kernel")
    print(
        "| fp32 matmul precision | what | ms | eager (same precision) / this | eager (highest) / this | rel err vs fp64 |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for mode, n, t, err in rows:
        print(f"| {mode} | {n} | {t:.2f} | {eager_ms[mode] / t:.1f}x | {base / t:.1f}x | {err:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

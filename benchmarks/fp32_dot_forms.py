"""fp32 products on tensor cores, form by form: distance from fp64 and speed on one tile loop (CUDA).

    python benchmarks/fp32_dot_forms.py [--programs 1024] [--K 2048] [--reuse 1,8]

fp32 inputs at torch's "highest" need products near fp32's accuracy. Triton offers "ieee" (FMA loops), "tf32"
(one tensor-core product, ~2^-11), "tf32x3" and, since 3.5 or so, "bf16x3" / "bf16x6" (the operands split into
tf32 or bf16 parts, the parts' products summed). ``common/dots.py`` writes its own "tf32x3" (Triton's faulted in
the delta line's kernels on Triton 3.6) and "bf16x6" / "bf16x3". Each program here accumulates a 64 x 128 tile over
K in blocks of 32, each block's product ``--reuse`` times (8: the operands stay in registers, so the products'
cost shows rather than the loads'). Prints each form's distance from the fp64 product (Frobenius) and its time.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

log = logging.getLogger("fp32_dot_forms")

FORMS = [  # (ours: common/dots.py, else tl.dot's input_precision), precision
    (False, "ieee"), (False, "tf32"), (False, "tf32x3"), (False, "bf16x3"), (False, "bf16x6"),
    (True, "tf32x3"), (True, "bf16x3"), (True, "bf16x6"),
]  # fmt: skip


def tile_loop():
    import triton
    import triton.language as tl

    from fla_compile.lowering.common import dots

    @triton.jit
    def kernel(a, b, c, K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
               PREC: tl.constexpr, OURS: tl.constexpr, REUSE: tl.constexpr):  # fmt: skip
        pid = tl.program_id(0)
        rm, rn, rk = tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BK)
        acc = tl.zeros((BM, BN), tl.float32)
        for k0 in range(0, K, BK):
            x = tl.load(a + pid * BM * K + rm[:, None] * K + (k0 + rk)[None, :])
            y = tl.load(b + pid * K * BN + (k0 + rk)[:, None] * BN + rn[None, :])
            for _ in range(REUSE):
                if OURS:
                    acc = dots.dot(x, y, acc, PREC)
                else:
                    acc = tl.dot(x, y, acc, input_precision=PREC)
        tl.store(c + pid * BM * BN + rm[:, None] * BN + rn[None, :], acc)

    return kernel


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--programs", type=int, default=1024)
    p.add_argument("--K", type=int, default=2048, help="the reduction length of each program's tile")
    p.add_argument("--reuse", default="1,8", help="times each block's product is taken (comma-separated runs)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not torch.cuda.is_available():
        p.error("needs a CUDA device (the interpreter has no tensor cores to measure)")
    import triton

    kernel = tile_loop()
    P, BM, BN, BK = a.programs, 64, 128, 32
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(P, BM, a.K, device="cuda", generator=g)
    y = torch.randn(P, a.K, BN, device="cuda", generator=g)
    ref = torch.bmm(x.double(), y.double())
    rows = []
    for reuse in (int(r) for r in a.reuse.split(",")):
        for ours, prec in FORMS:
            name = f"{'dots.dot' if ours else 'tl.dot'} {prec}"
            c = torch.full((P, BM, BN), float("nan"), device="cuda")

            def run(c=c, prec=prec, ours=ours, reuse=reuse):
                kernel[(P,)](x, y, c, a.K, BM, BN, BK, prec, ours, reuse, num_warps=4, num_stages=3)

            try:
                run()
                torch.cuda.synchronize()
            except Exception as e:  # a form this Triton build lacks: say so, go on
                rows.append((name, reuse, f"failed: {type(e).__name__}", "", ""))
                continue
            err = ((c.double() / reuse - ref).norm() / ref.norm()).item()
            ms = triton.testing.do_bench(run)
            rows.append((name, reuse, f"{err:.2e}", f"{ms:.3f}", f"{2 * P * BM * BN * a.K * reuse / ms / 1e9:.0f}"))
            log.info("%s x%d: %s", name, reuse, rows[-1][2:])
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
    print(f"{P} programs, a 64 x 128 tile each over K = {a.K} in blocks of 32, 4 warps, 3 stages")
    print("| form | products per block | rel err vs fp64 | ms | TFLOP/s (fp32-equivalent) |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-kernel profile of our ops next to flash-linear-attention's, plus a float64 check (CUDA).

    python benchmarks/profile_ops.py --families gla,simple_gla --shape 8,2048,16,128 [--fla] [--check]

For each family: the median forward and forward+backward time (``do_bench``), then a
``torch.profiler`` table of the CUDA kernels of one forward+backward (mean over a few
iterations), ours and FLA's side by side; the registers, spills and shared memory of every
Triton kernel of ours that ran (from the compiled-kernel metadata); with ``--check`` the
relative error of o, the final state and every gradient against the float64 reference loop
at a small shape (fresh random inputs, outputs poisoned). Writes ``profile.md`` under ``$OUT``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from kernels import DELTA, bench, fla_op, fwd_bwd, inputs, kernel_table, ours  # noqa: E402

from tests.compare import rel  # noqa: E402

LINES: list[str] = []


def say(s: str = "") -> None:
    print(s, flush=True)
    LINES.append(s)


def triton_metadata() -> list[str]:
    """Registers / spills / shared memory of every compiled kernel of ours."""
    import triton

    from fla_compile.lowering.delta import triton_decode, triton_wy, triton_wy_bwd
    from fla_compile.lowering.gla import triton_intra as gla_triton_intra
    from fla_compile.lowering.gla import triton_kernels as gla_triton_kernels

    out = []
    for mod in (gla_triton_kernels, gla_triton_intra, triton_wy, triton_wy_bwd, triton_decode):
        for name in dir(mod):
            fn = getattr(mod, name)
            if not isinstance(fn, triton.runtime.jit.JITFunction):
                continue
            caches = getattr(fn, "device_caches", {})
            for dev_cache in caches.values():
                cache = dev_cache[0] if isinstance(dev_cache, tuple) else dev_cache
                for k in cache.values():
                    md = k.metadata
                    out.append(
                        f"| {name} | {getattr(k, 'n_regs', '?')} | {getattr(k, 'n_spills', '?')} | "
                        f"{getattr(md, 'shared', '?')} | {getattr(md, 'num_warps', '?')} | {getattr(md, 'num_stages', '?')} |"
                    )
    return out


def check(family: str, dtype=torch.bfloat16, B=2, T=333, H=4, D=128) -> str:
    """Relative errors of ours against the float64 loop at a small shape."""
    from fla_compile.lowering.gla import triton_launch as gla_triton
    from fla_compile.reference import gla as reference

    torch.manual_seed(1234)
    xs = inputs(family, B, T, H, D, dtype=dtype, grad=True)
    h0 = torch.randn(B, H, D, D, device="cuda", requires_grad=True)
    gla_triton.POISON = True
    try:
        o, ht = ours(family)(*xs, initial_state=h0, output_final_state=True)
    finally:
        gla_triton.POISON = False
    do, dht = torch.randn_like(o), torch.randn_like(ht)
    leaves = [x for x in xs if x.requires_grad] + [h0]
    grads = torch.autograd.grad((o, ht), leaves, (do, dht))
    ref_in = [x.detach().double().requires_grad_() for x in leaves]
    if family in DELTA:  # the op on float64 inputs runs its torch path (tested against the loops on the CPU)
        ro, rht = ours(family)(*ref_in[:-1], initial_state=ref_in[-1], output_final_state=True)
    else:
        fn = getattr(reference, family)
        args = ref_in[:-1]
        if family == "retention":
            args = ref_in[:3] + [xs[3].double()]
        ro, rht = fn(*args, initial_state=ref_in[-1], output_final_state=True)
    rgrads = torch.autograd.grad((ro, rht), ref_in, (do.double(), dht.double()), allow_unused=True)
    errs = [f"o {rel(o, ro):.1e}", f"ht {rel(ht, rht):.1e}"]
    names = ["dq", "dk", "dv", "dg", "dh0"] if len(leaves) == 5 else ["dq", "dk", "dv", "dh0"]
    if family in DELTA:
        names = ["dq", "dk", "dv"] + (["dg"] if len(leaves) == 6 else []) + ["dbeta", "dh0"]
    for n, g, r in zip(names, grads, rgrads):
        if r is not None:
            errs.append(f"{n} {rel(g, r):.1e}" + ("" if torch.isfinite(g).all() else " NaN!"))
    return ", ".join(errs)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--families", default="gla,simple_gla")
    p.add_argument("--shape", default="8,2048,16,128")
    p.add_argument("--fla", action="store_true")
    p.add_argument("--check", action="store_true")
    p.add_argument("--no-profile", action="store_true")
    args = p.parse_args()
    B, T, H, D = (int(x) for x in args.shape.split(","))
    summary = ["| family | impl | fwd ms | fwd+bwd ms |", "| --- | --- | --- | --- |"]
    for family in args.families.split(","):
        if args.check:
            say(f"check {family} bf16: {check(family)}")
        impls = [("ours", ours)] + ([("fla", fla_op)] if args.fla else [])
        for who, get in impls:
            # the forward, then the backward, each in its own try: FLA refuses some backwards on Hopper (its gated
            # ones under Triton < 3.7.1), and its forward's profile is still the one to compare kernel by kernel
            t_f = t_fb = "error"
            try:
                fn = get(family)
                xs = inputs(family, B, T, H, D)
                with torch.no_grad():
                    t_f = f"{bench(lambda fn=fn, xs=xs: fn(*xs)):.3f}"
                if not args.no_profile:
                    say(f"\n### {who} {family} fwd B={B} T={T} H={H} D={D}\n")
                    say("| kernel | calls | ms |\n| --- | --- | --- |")
                    with torch.no_grad():
                        for name, calls, ms in kernel_table(lambda fn=fn, xs=xs: fn(*xs)):
                            say(f"| {name} | {calls} | {ms:.3f} |")
                step = fwd_bwd(fn, inputs(family, B, T, H, D, grad=True))
                t_fb = f"{bench(step):.3f}"
                if not args.no_profile:
                    say(f"\n### {who} {family} fwd+bwd B={B} T={T} H={H} D={D}\n")
                    say("| kernel | calls | ms |\n| --- | --- | --- |")
                    for name, calls, ms in kernel_table(step):
                        say(f"| {name} | {calls} | {ms:.3f} |")
            except Exception as e:  # keep the rest of the table
                say(f"{who} {family}: {type(e).__name__}: {str(e)[:200]}")
            summary.append(f"| {family} | {who} | {t_f} | {t_fb} |")
    say("\n| kernel | regs | spills | shared | warps | stages |\n| --- | --- | --- | --- | --- | --- |")
    for line in triton_metadata():
        say(line)
    say("")
    for line in summary:
        say(line)
    if os.environ.get("OUT"):
        pathlib.Path(os.environ["OUT"], "profile.md").write_text("\n".join(LINES) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

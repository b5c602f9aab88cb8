"""A/B of one module switch of the kernels (a bool attribute), on against off, in one process on one CUDA device.

    python benchmarks/ab_switch.py fla_compile.lowering.common.chunks.HEADS_INNER \
        [--families retention,gated_delta_rule] [--shapes "8,2048,16,128;8,2048,32,64"] [--fla]

Per shape and family: forward and forward+backward through ``fla_compile.ops``, wall time (``do_bench`` of
back-to-back calls) and summed kernel time, in ms, as ``benchmarks/kernels.py`` measures its rows; with ``--fla``
FLA's op as a third row. The switch's two settings are checked against each other first (the output and every
input gradient, max relative difference), so a fast setting that computes something else shows as such.
Retention's ``HEAD_DECAY`` was decided this way (``gla.triton_launch.HEAD_DECAY``, RESULTS 2026-12-01).
"""

from __future__ import annotations

import argparse
import importlib
import sys

sys.path.insert(0, "benchmarks")


def _switch(path: str):
    """(module, attribute) of a dotted ``package.module.ATTR`` that holds a bool."""
    module, _, name = path.rpartition(".")
    mod = importlib.import_module(module)
    if not isinstance(getattr(mod, name, None), bool):
        raise SystemExit(f"{path}: expected a bool attribute of an importable module")
    return mod, name


def _outputs(family, shape):
    """The output and the input gradients of one forward+backward, fp32 copies, for comparing two settings."""
    import kernels
    import torch

    xs = kernels.inputs(family, *shape, grad=True)
    o = kernels.ours(family)(*xs)[0]
    wrt = [x for x in xs if x.requires_grad]
    grads = torch.autograd.grad(o, wrt, torch.ones_like(o))
    return [o.detach().float()] + [g.float() for g in grads]


def _max_rel(a, b) -> float:
    return max(((x - y).norm() / y.norm().clamp_min(1e-30)).item() for x, y in zip(a, b))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("switch", help="dotted path of a bool switch, e.g. fla_compile.lowering.common.chunks.HEADS_INNER")
    p.add_argument("--families", default="retention")
    p.add_argument("--shapes", default="8,2048,16,128;8,2048,32,64")
    p.add_argument("--fla", action="store_true", help="also FLA's op for each family")
    args = p.parse_args(argv)
    import kernels

    mod, name = _switch(args.switch)
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
    was = getattr(mod, name)
    rows = []
    try:
        for shape in shapes:
            for family in args.families.split(","):
                runs = {}
                for flag in (False, True):
                    setattr(mod, name, flag)
                    runs[flag] = _outputs(family, shape)
                diff = _max_rel(runs[True], runs[False])
                variants = [(f"ours, {name} off", False), (f"ours, {name} on", True)]
                variants += [("FLA", None)] if args.fla else []
                for label, flag in variants:
                    if flag is not None:
                        setattr(mod, name, flag)
                    get = kernels.ours if flag is not None else kernels.fla_op
                    try:
                        times = [
                            f"{kernels.time_fwd(get, family, shape)():.3f}",
                            f"{kernels.time_fwd_bwd(get, family, shape)():.3f}",
                            f"{kernels.time_fwd(get, family, shape, kernels.device_ms)():.3f}",
                            f"{kernels.time_fwd_bwd(get, family, shape, kernels.device_ms)():.3f}",
                        ]
                    except Exception as e:  # noqa: BLE001 - one failed row (FLA's refused backwards) keeps the table
                        times = [f"error: {type(e).__name__}: {str(e)[:80]}", "", "", ""]
                    rows.append((shape, family, label, *times, f"{diff:.1e}" if flag else ""))
                    print(f"{shape} {family} {label}: " + " ".join(times), flush=True)
    finally:
        setattr(mod, name, was)
    print("| shape | family | what | fwd wall | fwd+bwd wall | fwd kernels | fwd+bwd kernels | on vs off |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

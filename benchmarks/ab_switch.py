"""A/B of one module switch of the kernels, each of its settings in turn, in one process on one CUDA device.

    python benchmarks/ab_switch.py fla_compile.lowering.common.chunks.HEADS_INNER \
        [--families retention,gated_delta_rule] [--shapes "8,2048,16,128;8,2048,32,64"] [--fla]
    python benchmarks/ab_switch.py fla_compile.lowering.delta.triton_launch.SOLVE_DIAG \
        --values powers,steps --families gated_delta_rule,delta_rule --fp64 --beta-max 2

A bool switch takes False then True; another takes ``--values`` (the first is the baseline). Per shape and family:
forward and forward+backward through ``fla_compile.ops``, wall time (``do_bench`` of back-to-back calls) and
summed kernel time, in ms, as ``benchmarks/kernels.py`` measures its rows; with ``--fla`` FLA's op as a last row.
Each setting is checked against the first (the output and every input gradient, max relative difference), so a
fast setting that computes something else shows as such. Retention's ``HEAD_DECAY`` was decided this way
(``gla.triton_launch.HEAD_DECAY``, RESULTS 2026-12-01).
"""

from __future__ import annotations

import argparse
import importlib
import sys

sys.path.insert(0, "benchmarks")


def _switch(path: str, values: str):
    """(module, attribute, the settings to run) of a dotted ``package.module.ATTR``: False, True for a bool (or a
    bool override that is None; "none" among ``values`` leaves it unset), else ``values`` (comma-separated, in the
    attribute's type)."""
    module, _, name = path.rpartition(".")
    mod = importlib.import_module(module)
    if not hasattr(mod, name):
        raise SystemExit(f"{path}: expected an attribute of an importable module")
    current = getattr(mod, name)
    flag = isinstance(current, bool) or current is None  # None: a bool override left to the tables (HEADS_INNER)
    if flag and not values:
        return mod, name, [False, True]
    if not values:
        raise SystemExit(f"{path} is a {type(current).__name__}: give its settings with --values")

    def flag_value(v: str):  # "none": the override unset, the tables decide
        return None if v.lower() == "none" else v.lower() in ("1", "true", "on")

    kind = flag_value if flag else type(current)
    return mod, name, [kind(v) for v in values.split(",")]


def _max_rel(a, b) -> str:
    import kernels

    return "error" if a is None or b is None else f"{kernels.max_rel(a, b):.1e}"


def _ms(measure) -> str:
    """One measurement in ms, or its error: a failed one (FLA's refused backwards) is a cell, never a lost row."""
    try:
        return f"{measure():.3f}"
    except Exception as e:  # noqa: BLE001
        return f"error: {type(e).__name__}: {str(e)[:80]}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("switch", help="dotted path of a switch, e.g. fla_compile.lowering.common.chunks.HEADS_INNER")
    p.add_argument("--values", default="", help="comma-separated settings (a bool switch: False,True)")
    p.add_argument("--families", default="retention")
    p.add_argument("--shapes", default="8,2048,16,128;8,2048,32,64")
    p.add_argument("--fla", action="store_true", help="also FLA's op for each family")
    p.add_argument(
        "--fp64",
        action="store_true",
        help="also each setting's difference from fp64 (the op on fp64 copies of the inputs)",
    )
    p.add_argument(
        "--beta-max",
        type=float,
        default=1.0,
        help="the delta line's beta drawn in (0, this) (2: the solve's hardest inputs)",
    )
    args = p.parse_args(argv)
    import kernels
    import torch

    mod, name, settings = _switch(args.switch, args.values)
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
    was = getattr(mod, name)
    rows = []
    try:
        for shape in shapes:
            for family in args.families.split(","):
                outs = []
                torch.manual_seed(0)  # one set of inputs for every setting: the check compares like with like
                xs = kernels.inputs(family, *shape, grad=True)
                if family in kernels.DELTA and args.beta_max != 1.0:  # beta is the last input
                    xs[-1] = (xs[-1].detach() * args.beta_max).requires_grad_()
                ref = None
                if args.fp64:
                    x64 = [x.detach().double().requires_grad_(x.requires_grad) for x in xs]
                    ref = kernels.outputs_and_grads(kernels.ours(family), x64)
                for value in settings:
                    setattr(mod, name, value)
                    try:
                        outs.append(kernels.outputs_and_grads(kernels.ours(family), xs))
                    except Exception as e:  # noqa: BLE001 - a setting that fails is a row that says so
                        print(f"{shape} {family} {name} = {value!r}: {type(e).__name__}: {e}", flush=True)
                        outs.append(None)
                diffs = [_max_rel(o, outs[0]) for o in outs]
                errs = [_max_rel(o, ref) if ref is not None else "" for o in outs]
                variants = [(f"ours, {name} = {value!r}", i) for i, value in enumerate(settings)]
                variants += [("FLA", None)] if args.fla else []
                for label, i in variants:
                    if i is not None:
                        setattr(mod, name, settings[i])
                    get = kernels.ours if i is not None else kernels.fla_op
                    times = [
                        _ms(kernels.time_fwd(get, family, shape)),
                        _ms(kernels.time_fwd_bwd(get, family, shape)),
                        _ms(kernels.time_fwd(get, family, shape, kernels.device_ms)),
                        _ms(kernels.time_fwd_bwd(get, family, shape, kernels.device_ms)),
                    ]
                    rows.append((shape, family, label, *times, diffs[i] if i else "", errs[i] if i is not None else ""))
                    print(f"{shape} {family} {label}: " + " ".join(times), flush=True)
    finally:
        setattr(mod, name, was)
    print(
        "| shape | family | what | fwd wall | fwd+bwd wall | fwd kernels | fwd+bwd kernels | vs the first | vs fp64 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

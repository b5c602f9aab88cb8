"""``python -m fla_compile explain | tune | bench``: the command line, and nothing else.

Parsing and printing live here; what the commands do lives with what they use: the target and
its inputs in ``targets.py``, the timing in ``bench.py``, the cost table in ``costs.py``, the
kernels' tuning in ``lowering/gla/tuning.py``. Errors of the command line are ``UsageError`` (exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys

import torch

from . import costs
from .bench import FAMILIES, bench_family, bench_sdpa, bench_table
from .targets import UsageError, build_inputs, load_target, make_callable, target_name

log = logging.getLogger("fla_compile")

__all__ = ["FAMILIES", "UsageError", "main"]
EXPLAIN_SHAPE = (2, 16, 3, 8)  # distinct B, H, D so that a wrongly guessed layout fails instead of broadcasting
BENCH_SHAPE = {"cpu": (1, 256, 2, 32), "cuda": (4, 2048, 8, 64)}


def report_dict(report) -> dict:
    """A JSON-ready dict from a Report's public attributes (matches, misses, notes)."""

    def item(x):
        d = dataclasses.asdict(x) if dataclasses.is_dataclass(x) else dict(vars(x))
        d = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in d.items()}
        d["text"] = str(x)
        return d

    return {
        "matched": bool(report.matches),
        "matches": [item(m) for m in report.matches],
        "misses": [item(m) for m in report.misses],
        "notes": [str(n) for n in report.notes],
    }


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected four positive integers B,T,H,D, got {text!r}")
    return shape


def _parse_dtype(text: str) -> torch.dtype:
    dtype = getattr(torch, text, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise argparse.ArgumentTypeError(f"expected a float dtype (float32, bfloat16, float16, float64), got {text!r}")
    return dtype


def _device(text: str | None) -> torch.device:
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise UsageError(f"--device {text!r}: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {text}: CUDA is not available here")
    return device


EXPLAIN_EPILOG = """\
TARGET names a function, an nn.Module class (built with no arguments, or with --init) or an
nn.Module instance: path/to/file.py:name or package.module:name.

Inputs: if the target has an `example_inputs` attribute, or its file/module defines
`example_inputs()`, that is used (called with whichever of B, T, H, D, shape, dtype, device it
accepts by name; returning a tuple of arguments, one tensor or a dict of keyword arguments).
Otherwise every required positional parameter gets a random [B, T, H, D] tensor: parameters
named like gates (g, gk, gate, decay, ...) get logsigmoid(randn), beta gets sigmoid(randn), and
gates/beta are also tried per head as [B, T, H]; the first combination that runs is used.

Exit status: 0 when at least one region matched, 1 when none did, 2 on a usage error.
The function runs once, captured by Dynamo (a time loop is unrolled: keep T small)."""


def explain_main(argv) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fla_compile explain",
        description="Report which linear-attention regions fla_compile recognizes in a function or module.",
        epilog=EXPLAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="TARGET", help="path/to/file.py:name or package.module:name")
    p.add_argument(
        "--shape", type=_parse_shape, default=EXPLAIN_SHAPE, help="B,T,H,D of guessed inputs (default 2,16,3,8)"
    )
    p.add_argument("--dtype", type=_parse_dtype, default=torch.float32, help="dtype of the inputs (default float32)")
    p.add_argument(
        "--device", default=None, help="device of the inputs and module (default cuda if available, else cpu)"
    )
    p.add_argument("--init", default="{}", help="JSON keyword arguments for an nn.Module class's constructor")
    p.add_argument("--jit", action="store_true", help="explain through @fla_compile.jit (probe lengths, no unrolling)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the matchers do")
    args = p.parse_args(argv)
    _logging(args.verbose)
    device = _device(args.device)
    try:
        init_kwargs = json.loads(args.init)
    except json.JSONDecodeError as e:
        raise UsageError(f"--init must be a JSON object: {e}") from e
    if not isinstance(init_kwargs, dict):
        raise UsageError(f"--init must be a JSON object, got {args.init!r}")

    import fla_compile

    obj, module = load_target(args.target)
    fn = make_callable(obj, init_kwargs)
    if isinstance(fn, torch.nn.Module):
        fn = fn.to(device=device, dtype=args.dtype)
    call_args, call_kwargs, described = build_inputs(fn, module, args.shape, args.dtype, device)
    log.debug("explain %s with %s", target_name(fn), described)
    if args.jit:
        fn = fla_compile.jit(fn)
    report = fla_compile.explain(fn, *call_args, **call_kwargs)
    if args.json:
        d = report_dict(report)
        d.update(target=args.target, inputs=described)
        print(json.dumps(d, indent=2))
    else:
        print(f"{args.target} with inputs {described}")
        print(report)
        if not report.matches:
            print("no linear-attention region matched" + (" (see the misses above)" if report.misses else ""))
    return 0 if report.matches else 1


# ---------------------------------------------------------------------------------------------
# bench


def bench_main(argv) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fla_compile bench",
        description=(
            "Time fla_compile.ops.<family> against the naive time loop of fla_compile.reference.<family> "
            "(and, on CUDA, causal SDPA at the same shape); print one markdown table with the relative "
            "error of our op against the reference run in float64. Medians of --reps runs after a warm-up "
            "(CUDA events on CUDA, perf_counter on CPU). Exit status 1 when a family failed (its row says why)."
        ),
    )
    p.add_argument("--family", default="all", choices=FAMILIES + ["all"], help="which op (default all)")
    p.add_argument(
        "--shape", type=_parse_shape, default=None, help="B,T,H,D (default 1,256,2,32 on CPU, 4,2048,8,64 on CUDA)"
    )
    p.add_argument(
        "--dtype", type=_parse_dtype, default=None, help="q, k, v dtype (default float32 on CPU, bfloat16 on CUDA)"
    )
    p.add_argument("--device", default=None, help="default cuda if available, else cpu")
    p.add_argument("--backward", action="store_true", help="time forward + backward (errors include the input grads)")
    p.add_argument("--reps", type=int, default=5, help="timed runs per row (default 5)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    _logging(args.verbose)
    if args.reps < 1:
        raise UsageError("--reps must be at least 1")
    device = _device(args.device)
    shape = args.shape or BENCH_SHAPE["cuda" if device.type == "cuda" else "cpu"]
    dtype = args.dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    families = FAMILIES if args.family == "all" else [args.family]
    warmup = 2 if device.type == "cuda" else 1  # on CUDA the first call may also tune the kernels
    rows = []
    for family in families:
        try:
            rows.append(bench_family(family, shape, dtype, device, args.backward, args.reps, warmup))
        except Exception as e:  # one failing family is a row with the error, never a lost table
            log.debug("bench %s failed", family, exc_info=True)
            rows.append({"family": family, "error": f"{type(e).__name__}: {e}"[:160]})
    sdpa_ms = bench_sdpa(shape, dtype, device, args.backward, args.reps, warmup) if device.type == "cuda" else None
    B, T, H, D = shape
    what = "forward + backward" if args.backward else "forward"
    print(
        f"{what}, B={B} T={T} H={H} D={D}, {str(dtype).removeprefix('torch.')}, {_device_name(device)}, torch {torch.__version__}"
    )
    print(bench_table(rows, sdpa_ms))
    return 1 if any("error" in r for r in rows) else 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def tune_costs_main(argv) -> tuple[int | None, list[str]]:
    """The cost-table part of ``python -m fla_compile tune`` (``--costs``, ``--costs-only``); returns
    (an exit status, or None to go on to the kernel tuning; the arguments left for that)."""
    p = argparse.ArgumentParser(prog="python -m fla_compile tune", add_help=False)
    p.add_argument(
        "--costs",
        action="store_true",
        help="also measure where the op beats the code as written on this device (fla_compile/costs.py)",
    )
    p.add_argument("--costs-only", action="store_true", help="only the cost table (CPU or GPU), no kernel tuning")
    p.add_argument("--device", default=None, help="the device to measure (default: cuda if present, else cpu)")
    args, rest = p.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        p.print_help()
        return (0 if args.costs_only else None), rest
    if args.costs or args.costs_only:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        print(f"fla_compile tune: measuring the cost table on {costs.device_kind(device)}")
        from .bench import tune_costs

        tune_costs(device)
    return (0 if args.costs_only else None), rest


# ---------------------------------------------------------------------------------------------


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(name)s: %(message)s")


def main(argv=None) -> int:
    """Entry point of ``python -m fla_compile``; returns the exit status (argparse errors included)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m fla_compile", description="fla_compile command line")
    sub = p.add_subparsers(dest="command", required=True, metavar="{explain,tune,bench}")
    sub.add_parser(
        "explain", help="what fla_compile recognizes in a function or module (see 'explain --help')", add_help=False
    )
    sub.add_parser(
        "tune",
        help="pre-tune the Triton kernels; --costs, --costs-only: measure when the op beats the code as written "
        "(see 'tune --help')",
        add_help=False,
    )
    sub.add_parser("bench", help="time the ops against the naive reference loops (see 'bench --help')", add_help=False)
    try:
        args, _ = p.parse_known_args(argv[:1])
        rest = argv[1:]
        if args.command == "tune":  # the cost table (fla_compile/costs.py), then the Triton kernels
            status, rest = tune_costs_main(rest)
            if status is not None:
                return status
            from .lowering.gla.tuning import tune_main

            return tune_main(rest)
        return {"explain": explain_main, "bench": bench_main}[args.command](rest)
    except SystemExit as e:  # argparse: --help (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except UsageError as e:
        print(f"python -m fla_compile {argv[0]}: error: {e}", file=sys.stderr)
        return 2

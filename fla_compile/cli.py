"""``python -m fla_compile explain | tune | bench``: the command line.

The helpers here raise ``UsageError`` (exit 2) and return values; only ``main`` and the
``*_main`` functions print.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import inspect
import itertools
import json
import logging
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from .verify import rel_err

log = logging.getLogger("fla_compile")

FAMILIES = ["linear_attn", "retention", "simple_gla", "gla", "delta_rule", "gated_delta_rule", "kda"]
EXPLAIN_SHAPE = (2, 16, 3, 8)  # distinct B, H, D so that a wrongly guessed layout fails instead of broadcasting
BENCH_SHAPE = {"cpu": (1, 256, 2, 32), "cuda": (4, 2048, 8, 64)}
# positional parameters whose names say "gate" get logsigmoid(randn) (log space, so they decay);
# those that say "beta" get sigmoid(randn); everything else randn
GATE_NAMES = {"g", "gk", "gv", "gate", "gates", "log_gate", "log_gates", "decay", "log_decay", "alpha", "a", "w", "f"}
BETA_NAMES = {"b", "beta", "betas"}


class UsageError(Exception):
    """A bad command line, target or input: reported as one message, exit code 2."""


# ---------------------------------------------------------------------------------------------
# explain


def load_target(spec: str):
    """``path/to/file.py:name`` or ``package.module:name`` (``name`` may be dotted) -> (object, module)."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise UsageError(f"TARGET must be path/to/file.py:name or package.module:name, got {spec!r}")
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise UsageError(f"TARGET {spec!r}: no such file {where!r}")
        modname = "_fla_cli_" + "".join(c if c.isalnum() else "_" for c in path)
        mod_spec = importlib.util.spec_from_file_location(modname, path)
        if mod_spec is None or mod_spec.loader is None:
            raise UsageError(f"TARGET {spec!r}: {where!r} is not an importable Python file")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[modname] = module
        sys.path.insert(0, os.path.dirname(path))  # so the file can import its neighbours
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(modname, None)
            raise UsageError(f"TARGET {spec!r}: importing {where!r} failed: {type(e).__name__}: {e}") from e
        finally:
            sys.path.remove(os.path.dirname(path))
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise UsageError(f"TARGET {spec!r}: cannot import module {where!r}: {type(e).__name__}: {e}") from e
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise UsageError(f"TARGET {spec!r}: {where!r} has no {name!r} (callables there: {', '.join(names)})")
        obj = getattr(obj, part)
    return obj, module


def make_callable(obj, init_kwargs: dict):
    """A function, an nn.Module instance, or an nn.Module class built with ``cls(**init_kwargs)``."""
    if isinstance(obj, type):
        if not issubclass(obj, torch.nn.Module):
            raise UsageError(f"{obj.__name__} is a class but not an nn.Module; name a function or a module")
        try:
            return obj(**init_kwargs)
        except Exception as e:
            how = f"{obj.__name__}(**{init_kwargs})" if init_kwargs else f"{obj.__name__}()"
            raise UsageError(
                f"constructing {how} failed: {type(e).__name__}: {e} "
                "(pass constructor arguments with --init '{\"name\": value}')"
            ) from e
    if not callable(obj):
        raise UsageError(f"the target is a {type(obj).__name__}, not a function or an nn.Module")
    return obj


def _accepts(fn, names) -> dict[str, bool]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {n: False for n in names}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {n: var_kw or n in params for n in names}


def _user_example_inputs(fn, module, shape, dtype, device):
    """``fn``'s ``example_inputs`` attribute, else the file's ``example_inputs``, else None.

    A callable is called with those of ``B, T, H, D, shape, dtype, device, name`` it accepts by
    name (``name``: the target's name, for a file with several targets) and may return a
    tuple/list of arguments, one tensor, or a dict of keyword arguments. The file's
    ``example_inputs`` is skipped (with a debug log) when its result does not fit ``fn``'s
    signature, so one file can hold targets with different arguments.
    Returns ``(args, kwargs, placed, where)``; ``placed``: it took dtype and device itself.
    """
    own = getattr(fn, "example_inputs", None)
    source, where = (own, "the target's example_inputs") if own is not None else (None, "")
    if source is None and getattr(module, "example_inputs", None) is not None:
        source, where = module.example_inputs, f"{module.__name__}.example_inputs"
        if getattr(module, "__file__", None):
            where = f"{os.path.basename(module.__file__)}: example_inputs"
    if source is None:
        return None
    placed = False
    if callable(source):
        B, T, H, D = shape
        offer = {"B": B, "T": T, "H": H, "D": D, "shape": shape, "dtype": dtype, "device": device, "name": _name(fn)}
        ok = _accepts(source, offer)
        placed = ok["dtype"] and ok["device"]
        try:
            source = source(**{n: v for n, v in offer.items() if ok[n]})
        except Exception as e:
            raise UsageError(f"{where}() raised {type(e).__name__}: {e}") from e
    if isinstance(source, torch.Tensor):
        args, kwargs = (source,), {}
    elif isinstance(source, dict):
        args, kwargs = (), dict(source)
    elif isinstance(source, (tuple, list)):
        args, kwargs = tuple(source), {}
    else:
        raise UsageError(
            f"{where} must be (or return) a tuple, a list, a tensor or a dict, got {type(source).__name__}"
        )
    if own is None:
        try:
            inspect.signature(fn.forward if isinstance(fn, torch.nn.Module) else fn).bind(*args, **kwargs)
        except TypeError as e:
            log.debug("%s does not fit %s (%s); guessing inputs", where, _name(fn), e)
            return None
        except ValueError:
            pass
    return args, kwargs, placed, where


def _place(x, dtype, device):
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
    return x


def _required_positional(fn) -> list[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise UsageError(f"cannot read the parameters of {fn!r}; define example_inputs()") from e
    names = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            raise UsageError(f"{_name(fn)} takes *{p.name}: cannot guess its inputs; define example_inputs()")
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            names.append(p.name)
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            raise UsageError(f"{_name(fn)} has a required keyword-only argument {p.name!r}; define example_inputs()")
    return names


def _name(fn) -> str:
    if isinstance(fn, torch.nn.Module):
        return type(fn).__name__ + ".forward"
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _kind(name: str) -> str:
    n = name.lower()
    if n in BETA_NAMES or n.startswith("beta"):
        return "beta"
    if n in GATE_NAMES or "gate" in n or "decay" in n:
        return "gate"
    return "plain"


def guess_inputs(fn, shape, dtype, device, seed=0):
    """Candidate argument tuples for ``fn``'s required positional parameters, most likely first.

    Every parameter is a [B, T, H, D] tensor: randn, gates (names like g, gk, gate, decay)
    logsigmoid(randn) so that they decay, beta sigmoid(randn). Gates and beta may also be
    per head, [B, T, H]; the combinations are the later candidates.
    """
    names = _required_positional(fn.forward if isinstance(fn, torch.nn.Module) else fn)
    if not names:
        raise UsageError(f"{_name(fn)} takes no positional tensors; define example_inputs()")
    B, T, H, D = shape
    kinds = [_kind(n) for n in names]
    special = [i for i, k in enumerate(kinds) if k != "plain"]
    layouts = list(itertools.product((4, 3), repeat=len(special))) if len(special) <= 3 else [(4,) * len(special)]
    layouts.sort(key=lambda lay: [dim != (4 if kinds[i] == "gate" else 3) for i, dim in zip(special, lay)])
    for layout in layouts:
        dims = dict(zip(special, layout))
        gen = torch.Generator().manual_seed(seed)
        args = []
        for i, kind in enumerate(kinds):
            size = (B, T, H, D) if dims.get(i, 4) == 4 else (B, T, H)
            x = torch.randn(size, generator=gen)
            if kind == "gate":
                x = F.logsigmoid(x)
            elif kind == "beta":
                x = torch.sigmoid(x)
            args.append(x.to(device=device, dtype=dtype))
        described = ", ".join(f"{n}[{','.join(map(str, a.shape))}]" for n, a in zip(names, args))
        yield tuple(args), described


def _describe(args, kwargs) -> str:
    def one(x):
        return f"[{','.join(map(str, x.shape))}]" if isinstance(x, torch.Tensor) else repr(x)

    return ", ".join([one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()])


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def build_inputs(fn, module, shape, dtype, device):
    """Arguments that ``fn`` runs with (checked by one eager call): ``example_inputs``, or guessed
    [B, T, H, D] tensors. Returns ``(args, kwargs, description)``."""
    user = _user_example_inputs(fn, module, shape, dtype, device)
    if user is not None:
        args, kwargs, placed, where = user
        if not placed:
            args = tuple(_place(a, dtype, device) for a in args)
            kwargs = {k: _place(v, dtype, device) for k, v in kwargs.items()}
        described = f"{_describe(args, kwargs)} from {where}"
        try:
            with torch.no_grad():
                fn(*args, **kwargs)
        except Exception as e:
            raise UsageError(f"{_name(fn)} fails on its example inputs ({described}): {_first_line(e)}") from e
        return args, kwargs, described
    tried = []
    for args, described in guess_inputs(fn, shape, dtype, device):
        try:
            with torch.no_grad():
                fn(*args)
        except Exception as e:
            tried.append(f"({described}): {_first_line(e)}")
            continue
        return args, {}, described
    raise UsageError(
        f"cannot build inputs for {_name(fn)}: expected every required positional parameter to take a "
        f"[B, T, H, D] = {list(shape)} tensor (gates and beta may be [B, T, H]); every guess failed:\n  "
        + "\n  ".join(tried)
        + "\ndefine example_inputs() in the file (or as an attribute of the target) returning the arguments, "
        "or change --shape"
    )


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
    log.debug("explain %s with %s", _name(fn), described)
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


def family_inputs(family: str, shape, dtype, device, seed=0) -> list:
    """Inputs of ``fla_compile.ops.<family>`` (and of ``reference.<family>``), positional.

    q, k, v [B, T, H, D] randn (k L2-normalized for the delta rules, which need |k| <= 1);
    gates logsigmoid(randn) in log space ([B, T, H] per head, [B, T, H, D] per key);
    retention's decay log(1 - 2^(-5 - h)) per head; beta sigmoid(randn) [B, T, H].
    """
    B, T, H, D = shape
    gen = torch.Generator().manual_seed(seed)

    def randn(*s):
        return torch.randn(s, generator=gen)

    q, k, v = randn(B, T, H, D), randn(B, T, H, D), randn(B, T, H, D)
    if family in ("delta_rule", "gated_delta_rule", "kda"):
        k = F.normalize(k, dim=-1)
    extra = []
    if family == "retention":
        extra = [torch.log1p(-(2.0 ** (-5.0 - torch.arange(H, dtype=torch.float32))))]
    elif family in ("simple_gla", "gated_delta_rule"):
        extra = [F.logsigmoid(randn(B, T, H))]
    elif family in ("gla", "kda"):
        extra = [F.logsigmoid(randn(B, T, H, D))]
    if family in ("delta_rule", "gated_delta_rule", "kda"):
        extra.append(torch.sigmoid(randn(B, T, H)))
    qkv = [x.to(device=device, dtype=dtype) for x in (q, k, v)]
    return qkv + [x.to(device) for x in extra]  # gates and beta stay fp32, as the models keep them


def _timer(device: torch.device, warmup: int, reps: int):
    """Median milliseconds of ``fn()``: CUDA events on CUDA, perf_counter on CPU."""

    def run(fn) -> float:
        for _ in range(warmup):
            fn()
        ts = []
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                ts.append(start.elapsed_time(end))
        else:
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)

    return run


def _step(fn, xs, backward: bool):
    """A forward (no grad), or forward + backward of o.sum() into the grads of every input that takes one."""
    if not backward:

        def fwd():
            with torch.no_grad():
                return fn(*xs)[0]

        return fwd

    def fwd_bwd():
        for x in xs:
            x.grad = None
        o = fn(*xs)[0]
        o.backward(torch.ones_like(o))
        return o

    return fwd_bwd


def bench_family(family, shape, dtype, device, backward=False, reps=5, warmup=1) -> dict:
    """One row: ms of ``ops.<family>`` and of ``reference.<family>`` and the ops' rel err vs float64."""
    from . import ops
    from .reference import delta, gla

    ours = getattr(ops, family)
    ref = getattr(delta if family in ("delta_rule", "gated_delta_rule", "kda") else gla, family)
    xs = family_inputs(family, shape, dtype, device)
    if backward:
        xs = [x.requires_grad_() if x.dim() > 1 else x for x in xs]
    timer = _timer(device, warmup, reps)
    t_ours = timer(_step(ours, xs, backward))
    o = _step(ours, xs, backward)()
    got = [o] + ([x.grad for x in xs if x.requires_grad] if backward else [])
    t_ref = timer(_step(ref, xs, backward))
    x64 = [x.detach().double().requires_grad_(x.requires_grad) for x in xs]
    want = [_step(ref, x64, backward)()] + ([x.grad for x in x64 if x.requires_grad] if backward else [])
    err = max(rel_err(a, b) if a is not None else float("nan") for a, b in zip(got, want))
    return {"family": family, "ours_ms": t_ours, "reference_ms": t_ref, "rel_err": err}


def bench_sdpa(shape, dtype, device, backward=False, reps=5, warmup=1) -> float:
    """Milliseconds of causal softmax attention (SDPA) at the same B, T, H, D."""
    B, T, H, D = shape
    xs = [torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=backward) for _ in range(3)]
    return _timer(device, warmup, reps)(
        _step(lambda q, k, v: (F.scaled_dot_product_attention(q, k, v, is_causal=True),), xs, backward)
    )


def bench_table(rows, sdpa_ms=None) -> str:
    head = "| family | ours (ms) | reference (ms) | reference / ours | rel err vs fp64 |"
    rule = "| --- | --- | --- | --- | --- |"
    if sdpa_ms is not None:
        head += " SDPA causal (ms) |"
        rule += " --- |"
    lines = [head, rule]
    for r in rows:
        if "error" in r:
            cells = [r["family"], "—", "—", "—", r["error"]]
        else:
            cells = [
                r["family"],
                f"{r['ours_ms']:.3f}",
                f"{r['reference_ms']:.3f}",
                f"{r['reference_ms'] / r['ours_ms']:.1f}x",
                f"{r['rel_err']:.1e}",
            ]
        if sdpa_ms is not None:
            cells.append(f"{sdpa_ms:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
            from .costs import tune_main as costs_main

            status, rest = costs_main(rest)
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

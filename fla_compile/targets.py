"""What ``explain`` runs from the command line: a target loaded from ``path/to/file.py:name`` or
``package.module:name``, and inputs for it (its own ``example_inputs``, else guessed [B, T, H, D]
tensors, gates in log space, each guess checked by one eager call).

The helpers raise ``UsageError`` (the command line's exit 2) and return values; they print nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import logging
import os
import sys

import torch
import torch.nn.functional as F

log = logging.getLogger("fla_compile")

# positional parameters whose names say "gate" get logsigmoid(randn) (log space, so they decay);
# those that say "beta" get sigmoid(randn); everything else randn
GATE_NAMES = {"g", "gk", "gv", "gate", "gates", "log_gate", "log_gates", "decay", "log_decay", "alpha", "a", "w", "f"}
BETA_NAMES = {"b", "beta", "betas"}


class UsageError(Exception):
    """A bad command line, target or input: reported as one message, exit code 2."""


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
        offer = {
            "B": B,
            "T": T,
            "H": H,
            "D": D,
            "shape": shape,
            "dtype": dtype,
            "device": device,
            "name": target_name(fn),
        }
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
            log.debug("%s does not fit %s (%s); guessing inputs", where, target_name(fn), e)
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
            raise UsageError(f"{target_name(fn)} takes *{p.name}: cannot guess its inputs; define example_inputs()")
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            names.append(p.name)
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            raise UsageError(
                f"{target_name(fn)} has a required keyword-only argument {p.name!r}; define example_inputs()"
            )
    return names


def target_name(fn) -> str:
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
        raise UsageError(f"{target_name(fn)} takes no positional tensors; define example_inputs()")
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
            raise UsageError(f"{target_name(fn)} fails on its example inputs ({described}): {_first_line(e)}") from e
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
        f"cannot build inputs for {target_name(fn)}: expected every required positional parameter to take a "
        f"[B, T, H, D] = {list(shape)} tensor (gates and beta may be [B, T, H]); every guess failed:\n  "
        + "\n  ".join(tried)
        + "\ndefine example_inputs() in the file (or as an attribute of the target) returning the arguments, "
        "or change --shape"
    )

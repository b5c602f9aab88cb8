"""``fla_compile.explain``: what would be matched in a function or module, where, and why not."""

from __future__ import annotations

import re

import torch

from . import backend, passes
from .jit import JitFunction, JitModule, fresh_code
from .report import Report

_LIMIT = re.compile(r"recompile.?limit|cache.?size.?limit", re.IGNORECASE)
_MAX_REASONS = 5


def explain(fn_or_module, *args, options: dict | None = None, **kwargs) -> Report:
    """What ``torch.compile(fn_or_module, backend="fla", options=options)`` does with
    ``fn_or_module(*args, **kwargs)``: the same capture (Dynamo), the same passes with the same
    options (``backend.analyze``), and the union of the reports of every graph it captured.

    Nothing is compiled or rewritten for later calls; the function runs once as written. Whatever
    Dynamo did not hand to the matchers (graph breaks, frames it ran as written, nothing captured
    at all) is said in the report's notes, so an empty report is never silent. ``options`` are the
    backend's (verify, strict, inductor, costs); a ``@fla_compile.jit`` function or module is
    explained as ``@jit`` runs it (captured at probe lengths), and takes no options.
    """
    if isinstance(fn_or_module, (JitFunction, JitModule)):
        if options is not None:
            raise TypeError("explain: options are the backend's; a @fla_compile.jit object takes its own at jit(...)")
        return fn_or_module.explain(*args, **kwargs)
    opts = passes.Options.from_dict(options)
    report = Report()
    graphs = []

    def collect(gm, example_inputs):
        graphs.append(gm)
        forward = gm.forward  # the graph as captured: the passes may rewrite and recompile gm
        try:
            _, rep = backend.analyze(gm, opts)
        except Exception as e:  # said in the report too, in case Dynamo is set to suppress errors
            report.notes.append(f"the matchers failed on a captured graph: {type(e).__name__}: {e}")
            raise
        report.extend(rep)
        return forward

    before, compiled = _dynamo_counters(), _codes_with_entries()
    try:
        torch.compile(_capture_target(fn_or_module), backend=collect, dynamic=False)(*args, **kwargs)
    finally:
        _drop_entries_since(compiled)
    report.notes += _dynamo_notes(before, _dynamo_counters())
    if not graphs:
        name = getattr(fn_or_module, "__qualname__", type(fn_or_module).__name__)
        report.notes.append(
            f"Dynamo captured no graph from {name}: nothing was examined (no tensor operations it could trace, "
            "Dynamo disabled, or code already at its recompile limit: torch._dynamo.reset() clears Dynamo's caches)"
        )
    return report


def _capture_target(fn_or_module):
    """What to hand Dynamo so that its graph is the backend's: a function's own code (a copy under its
    own name: Dynamo's cache entries are per code object, and the chunked pass reads the frames, which
    must be the backend's), a module's forward bound to it when no hook would run around it, else a
    wrapper. The graph's inputs are then named by the user's parameters (a near
    miss that names a runtime value reads as the backend's does), not by a wrapper's ``*args``."""
    import types

    if isinstance(fn_or_module, types.FunctionType):
        return fresh_code(fn_or_module)
    forward = getattr(type(fn_or_module), "forward", None)
    if (
        isinstance(fn_or_module, torch.nn.Module)
        and isinstance(forward, types.FunctionType)
        and not _hooked(fn_or_module)
    ):
        return types.MethodType(fresh_code(forward), fn_or_module)

    def call(*a, **kw):
        return fn_or_module(*a, **kw)

    return fresh_code(call, "fla_explain")


def _hooked(module: torch.nn.Module) -> bool:
    from torch.nn.modules import module as nn_module

    own = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks)
    shared = (nn_module._global_forward_hooks, nn_module._global_forward_pre_hooks, nn_module._global_backward_hooks)
    return any(len(h) for h in own + shared)


def _codes_with_entries() -> set[int] | None:
    """Ids of the code objects Dynamo has compiled that hold cache entries now (None: unknown)."""
    try:
        from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list
        from torch._dynamo.convert_frame import input_codes

        codes = [ref() for ref in list(input_codes.seen)]
        return {id(c) for c in codes if c is not None and _debug_get_cache_entry_list(c)}
    except Exception:  # noqa: BLE001 - Dynamo internals moved: leave its caches alone
        return None


def _drop_entries_since(had_entries: set[int] | None) -> None:
    """Reset the code objects that got their first cache entries during this explain.

    Where the function graph-breaks, Dynamo compiles the code after the break (the function
    itself, a helper, ``Module.__call__``, resume functions) as frames of their own, and those
    code objects are shared between explains. Each explain's backend is new, so such entries are
    never reused; left in place they pile up until the recompile limit makes Dynamo run that code
    uncaptured, in later explains and in the user's own ``torch.compile`` alike. Code that held
    entries before (compiled by the user) is left as it is.
    """
    if had_entries is None:
        return
    try:
        from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list, reset_code
        from torch._dynamo.convert_frame import compile_lock, input_codes

        with compile_lock:
            for code in [ref() for ref in list(input_codes.seen)]:
                if code is not None and id(code) not in had_entries and _debug_get_cache_entry_list(code):
                    reset_code(code)
    except Exception:  # noqa: BLE001 - Dynamo internals moved: the notes still say what went uncaptured
        return


def _dynamo_counters() -> dict[str, dict]:
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - a torch without these internals: no notes
        return {}
    return {k: dict(counters.get(k, {})) for k in ("frames", "graph_break", "unimplemented")}


def _dynamo_notes(before: dict, after: dict) -> list[str]:
    """Notes on what Dynamo did not capture during one explain, from its counters' differences."""

    def new(key):
        old = before.get(key, {})
        return {k: n - old.get(k, 0) for k, n in after.get(key, {}).items() if n > old.get(k, 0)}

    def first_lines(msgs):
        out = list(dict.fromkeys(_reason(m) for m in msgs if str(m).strip()))
        more = f" (and {len(out) - _MAX_REASONS} more)" if len(out) > _MAX_REASONS else ""
        return "; ".join(out[:_MAX_REASONS]) + more

    notes = []
    unimplemented = new("unimplemented")
    limit = {m: n for m, n in unimplemented.items() if _LIMIT.search(str(m))}
    if limit:
        notes.append(
            "Dynamo hit its recompile limit (torch._dynamo.config.recompile_limit) on code this calls, compiled "
            "before explain, and ran that code as written, unexamined; torch._dynamo.reset() clears Dynamo's caches"
        )
    frames = new("frames")
    unexamined = frames.get("total", 0) - frames.get("ok", 0) - sum(limit.values())
    other = [m for m in unimplemented if m not in limit]
    if unexamined > 0 and other:
        notes.append(f"Dynamo ran {unexamined} frame(s) as written, unexamined: {first_lines(other)}")
    breaks = [m for m in new("graph_break") if not _LIMIT.search(str(m))]
    if breaks:
        notes.append(f"Dynamo graph break (a loop split across graphs cannot match): {first_lines(breaks)}")
    return notes


def _reason(msg) -> str:
    """A counter key of Dynamo's, shortened: its first line and, if it has one, its explanation."""
    lines = [line.strip() for line in str(msg).strip().splitlines()]
    why = next((line[len("Explanation:") :].strip() for line in lines if line.startswith("Explanation:")), "")
    text = f"{lines[0]} ({why})" if why else lines[0]
    return text if len(text) <= 200 else text[:197] + "..."

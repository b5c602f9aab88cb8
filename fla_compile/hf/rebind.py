"""Run a layer's own forward with some of the functions it calls swapped, per instance.

transformers' linear-attention layers call their recurrence as module-level functions
(``torch_chunk_gated_delta_rule(...)``, ``mamba2_chunk_scan(...)``, ``causal_conv1d_fn(...)``).
Rather than copying the forward, we make a copy of the forward *function* whose globals see
our functions under those names, and bind it to the instance. Everything else in the forward
(projections, conv, cache bookkeeping, gated norm) is transformers' own code, whatever its
version. Nothing global is mutated: other instances, and the module, keep the originals.

Older transformers hold the functions as instance attributes (``self.chunk_gated_delta_rule``);
those are swapped on the instance instead.
"""

from __future__ import annotations

import dis
import inspect
import types
from collections.abc import Callable, Mapping


def _loads(code) -> set[str]:
    """Names ``code`` loads as globals (not attributes, which share ``co_names``)."""
    return {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}


def wrapped(fn):
    """The function ``fn`` wraps: its ``__wrapped__`` (``functools.wraps``), else, when ``fn`` is a
    pass-through ``(self, *args, **kwargs)`` wrapper, the one function its closure holds (a
    decorator that did not use ``wraps``, e.g. transformers' ``force_accelerate_hooks`` in 5.15),
    else None. A function with a signature of its own is never looked through."""
    inner = getattr(fn, "__wrapped__", None)
    if inner is not None or not isinstance(fn, types.FunctionType) or not _pass_through(fn):
        return inner
    held = [c.cell_contents for c in fn.__closure__ or () if _cell_full(c)]
    funcs = [f for f in held if isinstance(f, types.FunctionType)]
    return funcs[0] if len(funcs) == 1 else None


def _pass_through(fn) -> bool:
    """Whether ``fn``'s parameters are only ``*args, **kwargs`` after positional ones (``self``)."""
    params = list(inspect.signature(fn, follow_wrapped=False).parameters.values())
    kinds = [p.kind for p in params]
    if kinds[-2:] != [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]:
        return False
    return all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params[:-2])


def global_names(fn) -> set[str]:
    """Global names read by ``fn`` and by the functions it wraps (``functools.wraps`` chains)."""
    names: set[str] = set()
    while isinstance(fn, types.FunctionType):
        names |= _loads(fn.__code__)
        fn = wrapped(fn)
    return names


def lookup_global(fn, name: str):
    """The value ``name`` has in the globals of ``fn`` or of a function it wraps."""
    while isinstance(fn, types.FunctionType):
        if name in _loads(fn.__code__) and name in fn.__globals__:
            return fn.__globals__[name]
        fn = wrapped(fn)
    return None


def rebind_globals(fn: types.FunctionType, overrides: Mapping[str, Callable]) -> types.FunctionType:
    """A copy of ``fn`` (and of each function it wraps) reading ``overrides`` as globals.

    The copied globals drop ``__name__`` so that Dynamo, when it inlines the copy, resolves
    globals in this dict rather than re-importing the module by name (which would find the
    originals).
    """
    inner = wrapped(fn)
    new_inner = rebind_globals(inner, overrides) if isinstance(inner, types.FunctionType) else inner
    glb = fn.__globals__
    if overrides.keys() & _loads(fn.__code__):
        glb = {k: v for k, v in glb.items() if k != "__name__"}
        glb.update(overrides)
    closure = fn.__closure__
    if closure is not None and new_inner is not inner:
        # only the cell holding the wrapped function is new; the others stay shared with ``fn``
        closure = tuple(types.CellType(new_inner) if _cell_holds(c, inner) else c for c in closure)
    new = types.FunctionType(fn.__code__, glb, fn.__name__, fn.__defaults__, closure)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__dict__.update(fn.__dict__)
    new.__qualname__ = fn.__qualname__
    new.__doc__ = fn.__doc__
    new.__module__ = fn.__module__
    if new_inner is not None and hasattr(fn, "__wrapped__"):
        new.__wrapped__ = new_inner
    return new


def _cell_full(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _cell_holds(cell, obj) -> bool:
    return _cell_full(cell) and cell.cell_contents is obj

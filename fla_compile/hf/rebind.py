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
    else, when ``fn`` is a module whose class forward is such a wrapper, the function it holds (the
    ``kernels`` package's function modules: transformers 5.25 makes ``torch_chunk_gated_delta_rule``
    one, so that a hub kernel can replace it), else None. A function whose code takes named
    parameters of its own is never looked through."""
    inner = getattr(fn, "__wrapped__", None)
    if inner is not None:
        return inner
    if not isinstance(fn, types.FunctionType):
        fn = getattr(type(fn), "forward", None) if _is_module(fn) else None
    return _held(fn) if isinstance(fn, types.FunctionType) and _pass_through(fn) else None


def _held(fn):
    """The one function ``fn``'s closure holds, else None."""
    held = [c.cell_contents for c in fn.__closure__ or () if _cell_full(c)]
    funcs = [f for f in held if isinstance(f, types.FunctionType)]
    return funcs[0] if len(funcs) == 1 else None


def _is_module(obj) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def _pass_through(fn) -> bool:
    """Whether ``fn``'s parameters are only ``*args, **kwargs`` after positional ones without defaults (``self``),
    read from its code: a wrapper may declare its wrapped function's signature (``__signature__``, as ``kernels``'
    function modules do) and still pass everything through."""
    code = fn.__code__
    var = inspect.CO_VARARGS | inspect.CO_VARKEYWORDS
    return code.co_flags & var == var and code.co_kwonlyargcount == 0 and not fn.__defaults__


def innermost(fn):
    """The innermost function of a chain of wrappers (``wrapped``): what the chain's signature describes."""
    seen = set()
    while (inner := wrapped(fn)) is not None and id(fn) not in seen:
        seen.add(id(fn))
        fn = inner
    return fn


def _chain(fn):
    """``fn`` and each function it wraps."""
    while isinstance(fn, types.FunctionType):
        yield fn
        fn = wrapped(fn)


def _callees(fn) -> dict[str, types.FunctionType]:
    """{global name: innermost function} of the functions of ``fn``'s own module that ``fn``'s code calls by a
    global name: transformers 5.25's layers call the conv through ``causal_conv1d_forward``, a module-level function
    (behind a ``kernels`` function module) that calls ``causal_conv1d_fn``."""
    out = {}
    for name in _loads(fn.__code__):
        value = fn.__globals__.get(name)
        if value is None or isinstance(value, (type, types.ModuleType)):
            continue
        inner = innermost(value)
        if isinstance(inner, types.FunctionType) and inner.__module__ == fn.__module__ and inner is not fn:
            out[name] = inner
    return out


def global_names(fn, _seen: set | None = None) -> set[str]:
    """Global names read by ``fn``, by the functions it wraps (``functools.wraps`` chains), and by the functions of
    their module they call (``_callees``), down the calls."""
    seen = set() if _seen is None else _seen
    names: set[str] = set()
    for f in _chain(fn):
        if id(f) in seen:
            continue
        seen.add(id(f))
        names |= _loads(f.__code__)
        for callee in _callees(f).values():
            names |= global_names(callee, seen)
    return names


def lookup_global(fn, name: str, _seen: set | None = None):
    """The value ``name`` has in the globals of ``fn``, of a function it wraps, or of a function of their module
    they call (the first found, the caller's before its callees')."""
    seen = set() if _seen is None else _seen
    chain = [f for f in _chain(fn) if id(f) not in seen]
    seen.update(id(f) for f in chain)
    for f in chain:
        if name in _loads(f.__code__) and f.__globals__.get(name) is not None:
            return f.__globals__[name]
    for f in chain:
        for callee in _callees(f).values():
            if (found := lookup_global(callee, name, seen)) is not None:
                return found
    return None


def rebind_globals(
    fn: types.FunctionType, overrides: Mapping[str, Callable], _stack: frozenset = frozenset()
) -> types.FunctionType:
    """A copy of ``fn`` (and of each function it wraps) reading ``overrides`` as globals; a function of its module
    that it calls and that reads one of them, down the calls, is read as such a copy too (its innermost function:
    a ``kernels`` function module's hub dispatch is left out with what it dispatched).

    The copied globals drop ``__name__`` so that Dynamo, when it inlines the copy, resolves
    globals in this dict rather than re-importing the module by name (which would find the
    originals).
    """
    stack = _stack | {id(fn)}
    inner = wrapped(fn)
    new_inner = rebind_globals(inner, overrides, stack) if isinstance(inner, types.FunctionType) else inner
    calls = {
        name: rebind_globals(callee, overrides, stack)
        for name, callee in _callees(fn).items()
        if name not in overrides and id(callee) not in stack and overrides.keys() & global_names(callee)
    }
    binds = {**overrides, **calls}
    glb = fn.__globals__
    if binds.keys() & _loads(fn.__code__):
        glb = {k: v for k, v in glb.items() if k != "__name__"}
        glb.update(binds)
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

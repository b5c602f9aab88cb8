"""Call our replacements the way the installed transformers calls the originals.

transformers renames arguments between versions (MiniMax's ``past_key_value`` ->
``past_key_values`` -> ``cache``, with a ``@deprecate_kwarg`` alias for the old name). A
replacement that takes its own fixed parameter names plus ``**kwargs`` would silently receive a
renamed state argument in ``kwargs`` and drop it. So at patch time we read the original's
signature (through decorators, ``__wrapped__``) and generate an adapter with exactly that
signature, which passes every argument to ours under the name ours uses for the same role.

A parameter of the original that ours does not take, that is not an alias of one it takes,
and that the binding did not declare harmless to ignore, makes ``adapt`` refuse: the layer is
left unpatched with the reason, never run with an argument dropped.
"""

from __future__ import annotations

import inspect
import keyword
import types
from collections.abc import Callable, Iterable

# names transformers has used, across versions, for the same argument; a parameter of the
# original and one of ours match when they are in the same group
ALIASES: tuple[tuple[str, ...], ...] = (
    ("cache", "past_key_values", "past_key_value", "cache_params", "layer_past"),
    ("attention_mask", "mask"),
)
_ROLE = {name: group[0] for group in ALIASES for name in group}

_POS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class Refused(Exception):
    """The original takes an argument that ours cannot be shown to honor."""


def role(name: str) -> str:
    return _ROLE.get(name, name)


def deprecated_aliases(fn) -> dict[str, str]:
    """{old name: new name} that transformers' ``@deprecate_kwarg`` wrappers around ``fn`` rename.

    Read from the wrappers' closures (``old_name`` / ``new_name``), so a rename transformers makes
    with a deprecation alias is followed without us knowing the names in advance.
    """
    from .rebind import wrapped

    out = {}
    seen = set()
    while isinstance(fn, types.FunctionType) and id(fn) not in seen:
        seen.add(id(fn))
        cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
        try:
            old, new = cells["old_name"].cell_contents, cells["new_name"].cell_contents
        except (KeyError, ValueError):
            old = new = None
        if isinstance(old, str) and isinstance(new, str):
            out[old] = new
        fn = wrapped(fn)
    return out


def _params(sig: inspect.Signature):
    named = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    var_pos = any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values())
    var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    return named, var_pos, var_kw


def is_catch_all(ours) -> bool:
    """A stand-in taking ``*args, **kwargs`` (it ignores every argument by design)."""
    _, var_pos, var_kw = _params(inspect.signature(ours))
    return var_pos and var_kw


def adapt(original, ours: Callable, *, ignore: Iterable[str] = (), what: str = "") -> Callable:
    """A function with ``original``'s signature that calls ``ours`` with each argument under ours' name.

    ``ignore``: parameters of the original that ours knows it does not need (e.g. rotary
    embeddings for a layer without rotary). Raises ``Refused`` when the original takes a
    parameter ours has no place for, or ours needs one the original does not pass.
    """
    what = what or getattr(original, "__qualname__", repr(original))
    from .rebind import innermost

    inner = innermost(original)  # what the chain of decorators' signature describes
    try:
        sig = inspect.signature(inner)
        ours_sig = inspect.signature(ours)
    except (TypeError, ValueError) as e:
        raise Refused(f"cannot read the signature of {what}: {e}") from None
    orig, orig_var_pos, orig_var_kw = _params(sig)
    mine, _, ours_var_kw = _params(ours_sig)
    ignore = set(ignore)
    if orig_var_pos:
        raise Refused(f"{what} takes *args, which we cannot map")
    by_role = {role(p.name): p for p in mine}
    if len(by_role) != len(mine):
        raise Refused(f"our replacement for {what} takes two parameters of one role")
    mapping: dict[str, str | None] = {}  # original name -> ours (None: ignored)
    for p in orig:
        if not p.name.isidentifier() or keyword.iskeyword(p.name):
            raise Refused(f"{what} has a parameter named {p.name!r}")
        if p.name in ignore:
            mapping[p.name] = None
            continue
        q = by_role.get(role(p.name))
        if q is None:
            raise Refused(f"{what} takes {p.name!r}, which our replacement does not know (a new transformers?)")
        mapping[p.name] = q.name
    passed = [q for q in mapping.values() if q is not None]
    if len(set(passed)) != len(passed):
        raise Refused(f"{what} takes two parameters of one role ({', '.join(mapping)})")
    for q in mine:
        if q.default is q.empty and q.name not in passed:
            raise Refused(f"our replacement for {what} needs {q.name!r}, which {what} does not take")
    if orig_var_kw and not ours_var_kw:
        raise Refused(f"{what} takes **kwargs, which our replacement would not receive")
    aliases = {old: new for old, new in deprecated_aliases(original).items() if new in mapping and old not in mapping}
    return _generate(sig, orig, mapping, aliases, orig_var_kw, ours, what)


def _generate(sig, orig, mapping, aliases, var_kw, ours, what):
    """exec the adapter: plain Python code, so Dynamo traces it like the original."""
    ns: dict = {"__ours": ours, "__defaults": {}}
    head, seen_kwonly = [], False
    for i, p in enumerate(orig):
        text = p.name
        if p.default is not p.empty:
            ns["__defaults"][p.name] = p.default
            text += f"=__defaults[{p.name!r}]"
        if p.kind is p.KEYWORD_ONLY and not seen_kwonly:
            head.append("*")
            seen_kwonly = True
        head.append(text)
        if p.kind is p.POSITIONAL_ONLY and (i + 1 == len(orig) or orig[i + 1].kind is not p.POSITIONAL_ONLY):
            head.append("/")
    head.append("**__kw")
    body = []
    for old, new in aliases.items():  # what the original's @deprecate_kwarg would rename
        body.append(f"    if {old!r} in __kw:\n        {new} = __kw.pop({old!r})")
    if not var_kw:
        body.append(
            "    if __kw:\n"
            f"        raise TypeError({what + '() got an unexpected keyword argument '!r} + repr(next(iter(__kw))))"
        )
    # a method's ``self`` keeps its place; everything else goes by ours' name
    lead = ["self"] if orig and orig[0].name == "self" and mapping["self"] == "self" else []
    named = [f"{mapping[p.name]}={p.name}" for p in orig if mapping[p.name] is not None and p.name not in lead]
    call = ", ".join([*lead, *named, "**__kw"])
    body.append(f"    return __ours({call})")
    src = f"def adapter({', '.join(head)}):\n" + "\n".join(body) + "\n"
    exec(compile(src, f"<fla_compile adapter of {what}>", "exec"), ns)
    fn = ns["adapter"]
    fn.__name__ = getattr(ours, "__name__", "adapter")
    fn.__qualname__ = getattr(ours, "__qualname__", fn.__name__)
    fn.__doc__ = getattr(ours, "__doc__", None)
    fn.__fla_compile_adapts__ = (ours, dict(mapping))
    fn.__fla_compile_takes__ = (frozenset(mapping) | frozenset(aliases), var_kw)
    return fn


def takes(fn, name: str) -> bool:
    """Whether a call of ``fn`` may pass ``name``: for an adapter, whether the original it stands
    for takes it (as a parameter, a deprecated alias, or through ``**kwargs``)."""
    known = getattr(fn, "__fla_compile_takes__", None)
    if known is not None:
        return name in known[0] or known[1]
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())

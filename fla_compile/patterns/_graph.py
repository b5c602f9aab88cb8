"""Normalization of captured graphs, shared by the matchers.

``to_ssa`` turns the in-place updates people write in naive code (``h += kv``,
``h.mul_(g)``, ``o[:, t] = x``) into value-producing nodes, so that a carried state is a
chain of nodes. It refuses (returns a reason) wherever aliasing would make that unsound:
an in-place update of a graph input, of a view, or a view read after its base changed.
The graph it returns is only analysed and rewritten when a match is proven; unmatched
graphs are compiled as they were.
"""

from __future__ import annotations

import operator
import os
import re

import torch
import torch.fx as fx

# Ops whose result may share storage with their first argument.
VIEW_METHODS = frozenset(
    "view reshape transpose permute unsqueeze squeeze expand expand_as narrow select t flatten unflatten "
    "movedim moveaxis split chunk unbind as_strided view_as reshape_as diagonal unfold contiguous to float "
    "double half bfloat16 type type_as detach swapaxes swapdims real imag __getitem__ mT T".split()
)
VIEW_FUNCTIONS = {
    operator.getitem,
    torch.reshape,
    torch.transpose,
    torch.permute,
    torch.unsqueeze,
    torch.squeeze,
    torch.narrow,
    torch.select,
    torch.flatten,
    torch.movedim,
    torch.moveaxis,
    torch.split,
    torch.chunk,
    torch.unbind,
    torch.t,
    torch.swapaxes,
    torch.swapdims,
    torch.diagonal,
    torch.detach,
    torch.as_strided,
}
INPLACE_OPERATORS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    operator.ipow: operator.pow,
    operator.imatmul: operator.matmul,
    operator.iand: operator.and_,
    operator.ior: operator.or_,
    operator.ixor: operator.xor,
}


# Calls that change interpreter-wide state (functorch transform levels, autocast) and are undone
# only by a matching later call: a region holding them must not be run on probes, since a probe
# that fails half-way would leave the state changed for everything compiled after it.
_GLOBAL_STATE_CALLS = ("_increment_nesting", "_decrement_nesting", "_add_batch_dim", "_remove_batch_dim", "autocast")


def changes_global_state(nodes) -> bool:
    """Whether any of ``nodes`` calls something that changes interpreter-wide state (see above)."""
    for n in nodes:
        if n.op == "call_function":
            name = getattr(n.target, "__name__", str(n.target))
            if any(c in name for c in _GLOBAL_STATE_CALLS):
                return True
    return False


# calls whose result is not a function of their arguments (random draws, uninitialized memory)
_NOT_CONSTANT = ("rand", "normal", "bernoulli", "dropout", "uniform", "multinomial", "poisson", "empty", "seed")
_CONSTANT_NODES = 64  # a constant built by more calls than this is not a literal (eye, arange, a mask)
_CONSTANT_NUMEL = 1 << 20


def constant_value(node: fx.Node) -> torch.Tensor | None:
    """The real value of a float tensor that ``node`` computes from literals alone (``torch.eye(K)``,
    ``torch.arange(H)`` powers, a mask), or None: anything it depends on is an input of the graph,
    a parameter, a random draw or uninitialized memory, or it is large.

    Sizes it is made from (``torch.eye(K)`` where Dynamo traced K as a symbol) take their current
    values: a graph with a rewrite has its sizes pinned by guards (``specialize_sizes``).

    Such a value is the same at every call of the compiled graph, so a step that reads it is probed
    with it, not with random numbers in its place (an identity matrix probed as noise hides a
    Householder transition (I - b k k^T) S).
    """
    order: list[fx.Node] = []
    seen: set = set()
    stack = [(node, False)]
    while stack:
        n, ready = stack.pop()
        if ready:
            if n not in seen:
                seen.add(n)
                order.append(n)
            continue
        if n in seen:
            continue
        if _is_size(n):  # a size (symbolic after a recompile): its value here, pinned on a rewrite
            seen.add(n)
            order.append(n)
            continue
        if n.op not in ("call_function", "call_method") or len(order) + len(stack) > _CONSTANT_NODES:
            return None
        name = getattr(n.target, "__name__", str(n.target)).lower()
        if any(c in name for c in _NOT_CONSTANT) or changes_global_state([n]):
            return None
        stack.append((n, True))
        stack += [(a, False) for a in n.all_input_nodes]
    env: dict = {}
    try:
        with torch.no_grad():
            for n in order:
                if _is_size(n):
                    env[n] = value_of(n)
                    continue
                args = fx.map_arg(n.args, lambda a: env[a])
                kwargs = fx.map_arg(n.kwargs, lambda a: env[a])
                if n.op == "call_function":
                    env[n] = n.target(*args, **kwargs)
                else:
                    env[n] = getattr(args[0], n.target)(*args[1:], **kwargs)
    except Exception:  # noqa: BLE001 - not evaluable here: probed as an input like any other
        return None
    v = env[node]
    if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.numel() > _CONSTANT_NUMEL:
        return None
    return v


def _is_size(n: fx.Node) -> bool:
    """A node whose value is an integer: a size or a number computed from sizes."""
    v = _recorded(n)
    return isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool)


def value_of(node: fx.Node):
    """The example value (fake or real) recorded on a node by Dynamo or make_fx, with concrete
    sizes: where Dynamo traced symbolic ones, a twin in the same fake mode with their current
    values (made once per node, guarding nothing: ``specialize_sizes`` pins them on a rewrite)."""
    v = _recorded(node)
    if isinstance(v, (torch.SymInt, torch.SymFloat)):
        return _hint(v)
    if isinstance(v, torch.Tensor) and _symbolic(v) and getattr(v, "fake_mode", None) is not None:
        if "fla_concrete" not in node.meta:
            with v.fake_mode:
                c = torch.empty_strided(
                    [_hint(d) for d in v.shape], [_hint(d) for d in v.stride()], dtype=v.dtype, device=v.device
                )
            node.meta["fla_concrete"] = c.requires_grad_(v.requires_grad)
        return node.meta["fla_concrete"]
    return v


def infer_values(nodes: list) -> None:
    """Example values of nodes a pass made (``pull.py``, ``push.py``), in the fake mode of their inputs: the
    classifier reads their shapes and dtypes. ValueError where no input has a fake value."""
    for n in nodes:
        ins = [value_of(a) for a in n.all_input_nodes]
        mode = next((v.fake_mode for v in ins if isinstance(v, torch._subclasses.FakeTensor)), None)
        if mode is None:
            raise ValueError("no fake mode")
        args, kwargs = torch.fx.node.map_arg((n.args, n.kwargs), value_of)
        fn = getattr(torch.Tensor, n.target) if n.op == "call_method" else n.target
        with mode:
            n.meta["example_value"] = fn(*args, **kwargs)


def _recorded(node: fx.Node):
    """The example value as Dynamo ("example_value") or make_fx ("val") recorded it."""
    return node.meta.get("example_value", node.meta.get("val"))


def _hint(d):
    """The current value of a size (or of a number computed from sizes), without guarding on it."""
    if not isinstance(d, (torch.SymInt, torch.SymFloat)):
        return d
    if d.node.hint is None:
        raise ValueError("a data-dependent size (no value known at compile time)")
    return type(d.node.hint)(d.node.hint)


def _symbolic(v: torch.Tensor) -> bool:
    return any(isinstance(d, torch.SymInt) for d in (*v.shape, *v.stride()))


def specialize_sizes(gm: fx.GraphModule) -> bool:
    """Pin every symbolic size of the graph's inputs to its current value; True if there was one.

    After a recompile Dynamo traces batch, head and feature sizes as symbols (automatic dynamic
    shapes). Our matchers prove regions on probes of concrete sizes and our lowerings are built
    for them, so we guard on those values, as Inductor does where it needs a size: a call with
    other sizes recompiles rather than running a graph built for these.
    """
    pinned = False
    for n in gm.graph.find_nodes(op="placeholder"):
        v = _recorded(n)
        sizes = [v] if isinstance(v, (torch.SymInt, torch.SymFloat)) else []
        if isinstance(v, torch.Tensor):
            sizes = [*v.shape, *v.stride(), v.storage_offset()]
        for d in sizes:
            if isinstance(d, (torch.SymInt, torch.SymFloat)):
                type(d.node.hint)(d)  # guards d == its current value
                pinned = True
    return pinned


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def source_line(node: fx.Node) -> str:
    """'file:line: code' of the user's code that produced ``node``, when recorded."""
    trace = node.meta.get("stack_trace") or ""
    # the code line is absent where the source is not on disk (stdin, exec): then file:line alone
    frames = re.findall(r'File "([^"]+)", line (\d+), in \S+(?:\n(?!\s*File ")\s*(.*))?', trace)
    if not frames:
        return ""
    # the innermost frame outside torch itself: a call into torch (flex_attention) that Dynamo
    # inlined is reported at the user's line that made it
    ours = [f for f in frames if not f[0].startswith(_TORCH_DIR)]
    path, line, code = (ours or frames)[-1]
    where = f"{path.rsplit('/', 1)[-1]}:{line}"
    return f"{where}: {code.strip()}" if code.strip() else where


def functional_setitem(buf: torch.Tensor, index, value) -> torch.Tensor:
    """``buf[index] = value`` without mutating ``buf``."""
    out = buf.clone()
    out[index] = value
    return out


class FunctionalInplace:
    """``dst.clone().<method>(...)``: an in-place update as a value, with its exact dtype rules.

    One instance per method or function (``of``), so that equal updates have equal targets.
    """

    _cache: dict = {}

    @classmethod
    def of(cls, method=None, fn=None) -> FunctionalInplace:
        key = (method, fn)
        if key not in cls._cache:
            cls._cache[key] = cls(method, fn)
        return cls._cache[key]

    def __init__(self, method=None, fn=None):
        self.method, self.fn = method, fn
        self.__name__ = f"functional_{method or getattr(fn, '__name__', 'op')}"

    def __call__(self, dst, *args, **kwargs):
        dst = dst.clone()
        if self.method is not None:
            return getattr(dst, self.method)(*args, **kwargs)
        return self.fn(dst, *args, **kwargs)

    def __repr__(self) -> str:
        return self.__name__


def _inplace_kind(node: fx.Node):
    """Return a functional replacement target if ``node`` mutates its first argument, else None."""
    t = node.target
    if node.op == "call_method" and isinstance(t, str) and t.endswith("_") and not t.startswith("__"):
        return FunctionalInplace.of(method=t)
    if node.op != "call_function":
        return None
    if t is operator.setitem:
        return functional_setitem
    if t in INPLACE_OPERATORS:
        return FunctionalInplace.of(fn=t)
    if isinstance(t, torch._ops.OpOverload):
        return "unsupported" if t._schema.is_mutable else None
    name = getattr(t, "__name__", "")
    if getattr(t, "__module__", None) == "_operator":  # operator.and_ / or_ / not_ are out of place
        name = ""
    if node.kwargs.get("inplace") is True or (name.endswith("_") and not name.startswith("_")):
        return "unsupported"
    return None


def _advanced_index(idx) -> bool:
    """An index that makes ``x[idx]`` a copy for certain: it holds a tensor of one dim or more, or a list.
    Anything unknown counts as basic, a view (the safe side: a view only ever adds refusals)."""
    items = idx if isinstance(idx, tuple) else (idx,)
    for i in items:
        if isinstance(i, list):
            return True
        v = i.meta.get("example_value") if isinstance(i, fx.Node) else i
        if isinstance(v, torch.Tensor) and v.dim() >= 1:
            return True
    return False


def _is_view(node: fx.Node) -> bool:
    getitem = (node.op == "call_function" and node.target is operator.getitem) or (
        node.op == "call_method" and node.target == "__getitem__"
    )
    if getitem and len(node.args) == 2 and _advanced_index(node.args[1]):
        return False  # x[idx] with a tensor index (a router's hidden[perm]): a new tensor
    if node.op == "call_method":
        return node.target in VIEW_METHODS
    if node.op == "call_function":
        if isinstance(node.target, torch._ops.OpOverload):
            return node.target.is_view
        return node.target in VIEW_FUNCTIONS
    return False


def _fresh_element(node: fx.Node) -> bool:
    """``node`` reads one element of an op's tuple of new tensors (``torch.return_types``: topk, sort,
    max(dim)...), read nowhere else than through such getitems: not a view of anything."""
    if node.op != "call_function" or node.target is not operator.getitem or len(node.args) != 2:
        return False
    src = node.args[0]
    if not isinstance(src, fx.Node) or not isinstance(node.args[1], int):
        return False
    ev = src.meta.get("example_value")
    fresh = type(ev).__module__ == "torch.return_types"
    return fresh and all(u.op == "call_function" and u.target is operator.getitem for u in src.users)


_SLICE_COPY = "slice copy"  # base[idx].copy_(src), rewritten as functional_setitem(base, idx, src)


def _basic_index(idx) -> bool:
    """An index whose getitem is a view (ints, slices of ints, ..., None), not a copy (tensors, lists)."""
    items = idx if isinstance(idx, tuple) else (idx,)
    ok = (int, type(None), type(Ellipsis))
    return all(
        isinstance(i, ok) or (isinstance(i, slice) and all(isinstance(x, ok) for x in (i.start, i.stop, i.step)))
        for i in items
    )


def _copy_into_slice(node: fx.Node, r: fx.Node, same_storage: set) -> bool:
    """``node`` is ``base[idx].copy_(src)`` with ``base`` the storage root itself, ``idx`` a basic index
    and the result unused: the same as ``base[idx] = src``."""
    if node.op != "call_method" or node.target != "copy_" or len(node.args) != 2 or node.kwargs or node.users:
        return False
    view = node.args[0]
    if view.op != "call_function" or view.target is not operator.getitem or len(view.args) != 2:
        return False
    base = view.args[0]
    return isinstance(base, fx.Node) and (base is r or base in same_storage) and _basic_index(view.args[1])


def to_ssa(gm: fx.GraphModule) -> tuple[fx.Graph | None, str]:
    """``gm``'s graph with in-place updates turned into values (edited in place), or (None, reason).

    Two phases: the analysis decides, without touching the graph, which reads must see which
    update (and refuses where aliasing makes that unsound); only then is the graph edited. No
    nodes are copied: on a long unrolled loop copying alone costs seconds.
    """
    graph = gm.graph
    root: dict[fx.Node, fx.Node] = {}  # node -> the storage root it may alias
    version: dict[fx.Node, int] = {}  # root -> number of in-place updates so far
    seen_at: dict[fx.Node, int] = {}  # view -> version of its root when it was made
    latest: dict[fx.Node, fx.Node] = {}  # root -> the in-place node holding its current value
    same_storage: set[fx.Node] = set()  # results of in-place ops: the root itself, not a view
    remap: dict[fx.Node, dict[fx.Node, fx.Node]] = {}  # node -> {argument: update it must read}
    updates: list[tuple[fx.Node, object]] = []
    elements: dict[tuple, fx.Node] = {}  # (tuple node, index) -> its first getitem

    def read(node: fx.Node, a: fx.Node) -> None:
        r = root.get(a, a)
        if a in seen_at and seen_at[a] != version.get(r, 0):
            raise _Refuse(f"'{a.name}' is a view read after its base was updated in place")
        if a is r or a in same_storage or a not in seen_at:
            m = latest.get(r)
            if m is not None and m is not a:
                remap.setdefault(node, {})[a] = m

    try:
        for node in graph.nodes:
            kind = _inplace_kind(node)
            if kind == "unsupported":
                raise _Refuse(f"in-place op {node.target} at '{node.name}' is not understood")
            for a in node.all_input_nodes:
                read(node, a)
            if kind is None:
                first = node.args[0] if node.args else None
                if _fresh_element(node):  # topk(...)[0]: its own storage, shared only with the same element
                    elem = elements.setdefault((first, node.args[1]), node)
                    if elem is not node:
                        root[node] = elem
                        same_storage.add(node)
                    continue
                if _is_view(node) and isinstance(first, fx.Node):
                    r = root.get(first, first)
                    root[node] = r
                    seen_at[node] = version.get(r, 0)
                continue
            target = node.args[0]
            if not isinstance(target, fx.Node):
                raise _Refuse(f"in-place op at '{node.name}' on a non-tensor")
            r = root.get(target, target)
            if r.op in ("placeholder", "get_attr"):
                raise _Refuse(f"'{node.name}' updates the input '{r.name}' in place")
            if target is not r and target not in same_storage:
                if not _copy_into_slice(node, r, same_storage):
                    raise _Refuse(f"'{node.name}' updates a view of '{r.name}' in place")
                # base[idx].copy_(src) is base[idx] = src: the update of the base, as a value
                read(node, target.args[0])
                kind = _SLICE_COPY
            updates.append((node, kind))
            root[node] = r
            same_storage.add(node)
            version[r] = version.get(r, 0) + 1
            latest[r] = node
    except _Refuse as e:
        return None, str(e)

    functional: dict[fx.Node, fx.Node] = {}
    for node, kind in updates:
        args, kwargs = node.args, node.kwargs
        if kind is _SLICE_COPY:
            view, kind = node.args[0], functional_setitem
            args, kwargs = (view.args[0], view.args[1], node.args[1]), {}
        with graph.inserting_before(node):
            f = graph.call_function(kind, args, kwargs)
        f.meta = dict(node.meta)
        if kind is functional_setitem:
            f.meta["example_value"] = _recorded(root[node])  # symbolic sizes kept: a rewrite may read them
        functional[node] = f
    for node, mapping in remap.items():
        user = functional.get(node, node)
        for a, m in mapping.items():
            user.replace_input_with(a, functional[m])
    for node, _ in updates:
        node.replace_all_uses_with(functional[node])
        graph.erase_node(node)
    return graph, ""


class _Refuse(Exception):
    pass

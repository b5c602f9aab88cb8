"""Normalization: ``torch.func.vmap`` calls inlined by Dynamo become the batched ops they stand for.

Dynamo traces a vmapped function as a bracket of interpreter-wide calls (``_vmap_increment_nesting``,
``_add_batch_dim`` on the inputs, the function's body on per-example values, ``_remove_batch_dim`` on the
outputs, ``_vmap_decrement_nesting``). No region holding them is run on probes (``changes_global_state``), so
a loop whose step is written for one head and vmapped over heads and batch was never proven. Each outermost
bracket is traced once with ``make_fx`` on its recorded example values: the batching rules apply and leave
plain aten ops on whole tensors, which replace the bracket. The rest of the pipeline then sees an ordinary
step, or, where the user's whole loop runs inside the vmap, an ordinary loop: the batching rules move an input's
vmapped dim first at each of its uses, and the splice computes such repeated work once, so that every step reads
one sequence. A bracket that cannot be traced is left as it is, and so is one that torch's own code opens (flex_attention
builds its block mask under vmap): its internals are not the user's step, and their in-place index_put_ would
keep the whole graph from being normalized.
"""

from __future__ import annotations

import logging
import os
import re

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from ._graph import _recorded, _symbolic, value_of

log = logging.getLogger("fla_compile")
_OPEN, _CLOSE = "_vmap_increment_nesting", "_vmap_decrement_nesting"
_FRAME = re.compile(r'File "([^"]+)", line \d+, in ')
_TORCH = os.path.dirname(os.path.realpath(torch.__file__)) + os.sep
_FUNCTORCH = os.path.join(_TORCH, "_functorch") + os.sep
_aten = torch.ops.aten
# in-place changes of a tensor's shape alone, and the ops that return the new shape instead
_RESHAPE_IN_PLACE = {
    _aten.squeeze_.dims: _aten.squeeze.dims,
    _aten.squeeze_.dim: _aten.squeeze.dim,
    _aten.squeeze_.default: _aten.squeeze.default,
    _aten.unsqueeze_.default: _aten.unsqueeze.default,
}


def _torch_opened(node: fx.Node) -> bool:
    """Whether the vmap that opened at ``node`` was called by torch's own code, not by the user's."""
    files = [os.path.realpath(f) for f in _FRAME.findall(node.meta.get("stack_trace") or "")]
    i = next((i for i, f in enumerate(files) if f.startswith(_FUNCTORCH)), None)
    return i is not None and i > 0 and files[i - 1].startswith(_TORCH)


def _name(n: fx.Node) -> str:
    return getattr(n.target, "__name__", str(n.target)) if n.op == "call_function" else ""


def brackets(graph: fx.Graph) -> list[list[fx.Node]]:
    """The outermost vmap brackets of ``graph``, each as its nodes in graph order."""
    out, depth, start = [], 0, []
    for n in graph.nodes:
        name = _name(n)
        if name == _OPEN:
            depth += 1
            if depth == 1:
                # the lazy_load_decompositions call Dynamo puts just before the bracket belongs to it
                prev = n.prev if _name(n.prev) == "lazy_load_decompositions" else None
                start = [prev] if prev is not None else []
        if depth:
            start.append(n)
        if name == _CLOSE:
            depth -= 1
            if depth < 0:
                return []  # unbalanced: not ours to touch
            if depth == 0:
                out.append(start)
    return out if depth == 0 else []


def _trace(nodes: list[fx.Node]):
    """(inputs, outputs, the bracket traced to aten ops), or None."""
    inside = set(nodes)
    inputs, outputs = [], []
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in inside and a not in inputs:
                inputs.append(a)
        if any(u not in inside for u in n.users):
            outputs.append(n)
    vals = [value_of(a) for a in inputs]
    if not outputs or not all(isinstance(v, torch.Tensor) for v in vals):
        return None
    if any(_symbolic(_recorded(a)) for a in inputs):
        return None  # traced sizes would be baked into a graph meant for other sizes too
    g = fx.Graph()
    env = {a: g.placeholder(f"in{i}") for i, a in enumerate(inputs)}
    for n in nodes:
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output(tuple(env[o] for o in outputs))
    sub = fx.GraphModule(torch.nn.Module(), g)
    mode = FakeTensorMode()
    with mode:  # example values without memory; traced in real mode: concrete sizes, no size queries left
        fakes = [torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=v.device) for v in vals]
    # zeros with the recorded strides, on the recorded device (a factory in the body keeps its device)
    real = [torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=v.device).zero_() for v in vals]
    traced = make_fx(sub, tracing_mode="real")(*real)
    for n in traced.graph.nodes:  # a view assumes the traced strides; a reshape is a view where they hold
        if n.target in (torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default):
            n.target = torch.ops.aten.reshape.default
        elif n.target in _RESHAPE_IN_PLACE and len(n.args[0].users) == 1 and n.args[0].op != "placeholder":
            n.target = _RESHAPE_IN_PLACE[n.target]  # matmul's squeeze_ of its own fresh result: seen by no one else
    traced.recompile()
    FakeTensorProp(traced, mode).propagate(*fakes)
    if any(n.op not in ("placeholder", "call_function", "output") for n in traced.graph.nodes):
        return None  # a constant tensor (get_attr) or a call we do not splice
    return inputs, outputs, traced


def devmap(graph: fx.Graph) -> int:
    """Replace every outermost vmap bracket of ``graph`` by the aten ops it traces to; how many were."""
    done = 0
    for nodes in brackets(graph):
        if _torch_opened(next(n for n in nodes if _name(n) == _OPEN)):
            continue
        try:
            found = _trace(nodes)
        except Exception as e:  # noqa: BLE001 - a bracket make_fx cannot trace stays as written
            log.debug("fla_compile: a vmap bracket at %s is kept (%s: %s)", nodes[0].name, type(e).__name__, e)
            continue
        if found is None:
            continue
        _splice(graph, nodes, *found)
        done += 1
    return done


def _pure(n: fx.Node) -> bool:
    """An aten op that writes nothing and draws no random numbers: one computation serves all its uses."""
    schema = getattr(n.target, "_schema", None)
    tags = getattr(n.target, "tags", ())
    return (
        n.op == "call_function"
        and schema is not None
        and not schema.is_mutable
        and (torch.Tag.nondeterministic_seeded not in tags)
    )


def _root(n: fx.Node) -> fx.Node:
    """The node that owns the memory ``n`` is a view of (``n`` itself where it is no view)."""
    while (
        _pure(n)
        and n.args
        and isinstance(n.args[0], fx.Node)
        and any(r.alias_info is not None for r in n.target._schema.returns)
    ):
        n = n.args[0]
    return n


def _written(traced: fx.GraphModule) -> set:
    """The roots of what the traced ops write in place (``o[:, t] = x`` in the vmapped function: ``o``)."""
    out = set()
    for n in traced.graph.nodes:
        schema = getattr(n.target, "_schema", None)
        if n.op != "call_function" or schema is None or not schema.is_mutable:
            continue
        for i, arg in enumerate(schema.arguments):
            if arg.alias_info is not None and arg.alias_info.is_write:
                x = n.args[i] if i < len(n.args) else n.kwargs.get(arg.name)
                if isinstance(x, fx.Node):
                    out.add(_root(x))
    return out


def _frozen(a):
    """A hashable form of a node's arguments, types kept (``mul(x, 1)`` is not ``mul(x, 1.0)``); TypeError if
    there is none."""
    if isinstance(a, (list, tuple)):
        return type(a).__name__, tuple(_frozen(x) for x in a)
    if isinstance(a, dict):
        return "dict", tuple((k, _frozen(v)) for k, v in a.items())
    hash(a)
    return type(a), a


def _shared(traced: fx.GraphModule) -> tuple[dict, set]:
    """(node -> the node it repeats, the nodes to compute first). The batching rules move an input's vmapped
    dim to the front at each use (``permute(q, [2, 0, 1, 3])`` once per ``q[:, t]`` of a loop written inside
    the vmapped function): the repeats of such work on the bracket's inputs alone are one computation, done
    before the rest, so every step's read ``select(permute(q), 2, t)`` reads the same sequence."""
    same, keys, invariant, written = {}, {}, set(), _written(traced)
    for n in traced.graph.nodes:
        if n.op == "placeholder":
            invariant.add(n)
            continue
        if n.op != "call_function" or not _pure(n) or not all(a in invariant for a in n.all_input_nodes):
            continue
        invariant.add(n)
        try:
            key = _frozen(
                (
                    n.target,
                    fx.node.map_arg(n.args, lambda a: same.get(a, a)),
                    fx.node.map_arg(n.kwargs, lambda a: same.get(a, a)),
                )
            )
        except TypeError:
            continue
        if key in keys and _root(n) not in written and _root(keys[key]) not in written:  # one result, never written
            same[n] = keys[key]
        elif key in keys:
            continue
        else:
            keys[key] = n
    first: set = set()
    todo = list(set(same.values()))
    while todo:  # a repeated computation and what it reads
        n = todo.pop()
        if n.op != "placeholder" and n not in first:
            first.add(n)
            todo.extend(n.all_input_nodes)
    return same, first


def _identity_permute(n: fx.Node) -> bool:
    """``permute(x, [0, 1, ..., n-1])`` (vmap moving an output's batch dim where it already is): ``x`` itself."""
    return n.target is torch.ops.aten.permute.default and list(n.args[1]) == list(range(len(n.args[1])))


def _splice(graph: fx.Graph, nodes: list[fx.Node], inputs: list, outputs: list, traced: fx.GraphModule) -> None:
    """Insert the traced ops before the bracket, rewire its outputs' users, erase the bracket."""
    # the traced ops' source: the user's line that called vmap (the opening's; its closing call has none)
    trace = next((n.meta["stack_trace"] for n in nodes if n.meta.get("stack_trace")), None)
    same, first = _shared(traced)
    env, it, news = {}, iter(inputs), ()
    for n in traced.graph.nodes:
        if n.op == "placeholder":
            env[n] = next(it)
    order = [n for n in traced.graph.nodes if n in first] + [
        n for n in traced.graph.nodes if n.op != "placeholder" and n not in first
    ]
    with graph.inserting_before(nodes[0]):
        for n in order:
            if n.op == "output":
                news = n.args[0]
            elif n in same:
                env[n] = env[same[n]]
            elif _identity_permute(n):
                env[n] = env[n.args[0]]
            else:
                env[n] = graph.node_copy(n, env.__getitem__)
                if "val" in n.meta:
                    env[n].meta["example_value"] = n.meta["val"]
                if trace:
                    env[n].meta["stack_trace"] = trace
    for old, new in zip(outputs, news):
        old.replace_all_uses_with(env[new])
    for n in reversed(nodes):
        graph.erase_node(n)

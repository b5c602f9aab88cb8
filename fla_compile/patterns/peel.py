"""A time loop whose first step is written apart: ``h = x[:, 0]`` before a loop over 1..T-1 of
``h = a[:, t] * h + x[:, t]`` (RG-LRU; ``if t == 0: h = x[:, 0]``; ``h = None`` then ``x if h is None else ...``).

Steps 1..T-1 are re-rolled as ``loop`` does (``loop.frame`` with the time shifted by one). Where step 0
equals the general step run on a zero state, proven on fresh float64 probes for the state and for every
per-step value a ``stack``/``cat`` after the loop collects, a copy of step 1 at t = 0 on a zero state goes
into the graph in place of step 0's uses: ``loop.find`` then sees an ordinary loop of T steps from zeros,
classified and proven as any other. A first step that is not the general step (``h = 2 * x[:, 0]``) is left
alone, with a reason. ``undo`` puts the graph back as written where the loop was not rewritten.
"""

from __future__ import annotations

import dataclasses
import operator
from collections import defaultdict

import torch
import torch.fx as fx

from ._graph import constant_value, source_line, value_of
from ._time import time_read, time_write
from .loop import _Mismatch, _same_target, find, frame

_MAX_PEEL = 64  # nodes computing step 0 apart: more is not a peeled step


@dataclasses.dataclass
class Peel:
    """One synthesized step 0: its nodes, and the inputs it took over, to give back on ``undo``."""

    new_nodes: list
    swaps: list  # (user, synthesized node, original node)
    peeled: list  # nodes of the written step 0, marked ``fla_peeled`` while the copy stands in


def _reindexed(n: fx.Node, t: int):
    """The arguments of the time read ``n`` with its step replaced by ``t``, or None."""
    r = time_read(n)
    a = list(n.args)
    if n.target is operator.getitem and isinstance(a[1], int):  # x.unbind(d)[t]
        a[1] = t
    elif n.target is operator.getitem:
        items = list(a[1]) if isinstance(a[1], tuple) else [a[1]]
        at = next((i for i, x in enumerate(items) if isinstance(x, int) and not isinstance(x, bool)), None)
        if at is not None:
            items[at] = t
        else:
            at = next((i for i, x in enumerate(items) if isinstance(x, slice) and x.start == r.index), None)
            if at is None:
                return None
            items[at] = slice(t, t + 1, items[at].step)
        a[1] = tuple(items) if isinstance(a[1], tuple) else items[0]
    elif len(a) >= 3 and a[2] == r.index:  # select / narrow / aten.slice
        a[2] = t
        if n.target is torch.ops.aten.slice.Tensor:
            a[3] = t + 1
    else:
        return None
    return tuple(a)


def _families(nodes, pos):
    by_src: dict[tuple, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    keys: dict[tuple, set] = defaultdict(set)
    for n in nodes:
        r = time_read(n)
        if r is not None and n.users:
            by_src[(r.src, r.dim)][r.index].append(min(pos[u] for u in n.users))
            keys[(r.src, r.dim)].add(r.key)
    return by_src, keys


def unpeel(graph: fx.Graph) -> tuple[list[Peel], list[tuple[str, str]]]:
    """Put a general step 0 in place of every proven peeled one. Returns (the peels, [(reason, source)])."""
    nodes = list(graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    by_src, keys = _families(nodes, pos)
    framed = [(pos[r.blocks[0][0]], pos[r.blocks[-1][-1]]) for r in find(graph)[0]]  # loops as they are: left be
    cands = []
    for (src, dim), idx in by_src.items():
        v = value_of(src)
        T = v.shape[dim] if isinstance(v, torch.Tensor) and dim < v.dim() else None
        if not isinstance(T, int) or T < 3 or not set(range(1, T)) <= set(idx) or set(idx) - set(range(T)):
            continue
        first = [min(idx[t]) for t in range(1, T)]
        L = first[1] - first[0]
        if L <= 0 or any(first[j] != first[0] + j * L for j in range(T - 1)):
            continue
        if 0 in idx and min(idx[0]) == first[0] - L:
            continue  # step 0 in step: an ordinary loop
        if not any(lo <= first[0] <= hi for lo, hi in framed):
            cands.append((first[0], T, L))
    peels, misses = [], []
    floor = -1
    for p1, T, L in sorted(set(cands)):
        if p1 <= floor:
            continue
        loop_keys = set().union(
            *[
                keys[f]
                for f, idx in by_src.items()
                if all(any(abs(p - (p1 + (t - 1) * L)) < L for p in idx.get(t, ())) for t in range(1, T))
            ]
        )
        s = p1
        while s - 1 > floor and s - 1 + L < len(nodes) and _same_target(nodes[s - 1], nodes[s - 1 + L]):
            if nodes[s - 1].op in ("placeholder", "get_attr", "output"):
                break
            s -= 1
        refused = []  # shrink from the left until a framing is a peeled loop (a read-out of step 0 may look
        for start in range(s, p1 + 1):  # like the block's first node)
            try:
                blocks, init = frame(nodes, pos, start, T - 1, L, loop_keys, t0=1)
                peels.append(_peel(graph, blocks, init, loop_keys, T))
            except _Mismatch:
                continue
            except _Refused as e:
                refused.append((e, blocks))
                continue
            floor = pos[blocks[-1][-1]]
            break
        else:
            said = [(e, b) for e, b in refused if e.say]
            if said:
                misses.append((str(said[0][0]), source_line(said[0][1][0][0])))
    return peels, misses


class _Refused(Exception):
    def __init__(self, msg: str, say: bool = False):
        super().__init__(msg)
        self.say = say  # a peeled step 0 that is not the general one: worth a near miss


def _peel(graph: fx.Graph, blocks, init: dict, loop_keys: set, T: int) -> Peel:
    if len(init) != 1:
        raise _Refused("not one carried state")
    ((i, P),) = init.items()
    if time_write(blocks[-1][i]) is not None:
        raise _Refused("a buffer is carried")
    inside = {n for b in blocks for n in b}
    outs = []  # (stack node, offset in a block, step 0's value)
    for j, b in enumerate(blocks):
        for o, n in enumerate(b):
            for u in n.users:
                if u in inside or (j == len(blocks) - 1 and o == i):
                    continue
                seq = u.args[0] if u.args else u.kwargs.get("tensors")
                ok = u.target in (torch.stack, torch.cat) and isinstance(seq, (list, tuple)) and len(seq) == T
                if not (ok and all(a is bb[o] for a, bb in zip(seq[1:], blocks))):
                    raise _Refused("a step's value is used after the loop other than stacked")
                if j == 0 and (u, o) not in [(x[0], x[1]) for x in outs]:
                    outs.append((u, o, seq[0]))
    if any(isinstance(x, fx.Node) and x in inside for _, _, x in outs):
        raise _Refused("step 0's output is computed in the loop")
    step, origins = _step_graph(blocks[0], P, loop_keys, [i, *[o for _, o, _ in outs]])
    peel_gm, peeled = _peel_graph([P, *[x for _, _, x in outs]], loop_keys, origins)
    _prove(step, peel_gm, origins, P)
    return _splice(graph, blocks, i, P, outs, loop_keys, peeled)


def _step_graph(block, P, loop_keys, wanted):
    """Step 1 as a graph (state, *inputs) -> (new state, *stacked values); inputs by origin."""
    g = fx.Graph()
    state = g.placeholder("state")
    env, origins = {}, {}

    def placeholder(origin, meta_node):
        if origin not in origins:
            ph = g.placeholder(f"x{len(origins)}")
            ph.meta["example_value"] = value_of(meta_node)
            origins[origin] = meta_node
            env[origin] = ph
        return env[origin]

    def lookup(a):
        if a in env:
            return env[a]
        if a is P:
            return state
        r = time_read(a)
        if r is not None and r.key in loop_keys:
            raise _Refused("a step's read is hoisted before the loop")
        v = value_of(a)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
        return placeholder(("global", a), a)

    for n in block:
        r = time_read(n)
        if r is not None and r.index == 1 and r.key in loop_keys:
            env[n] = placeholder(("read", r.key), n)
        else:
            env[n] = g.node_copy(n, lookup)
    g.output(tuple(env[block[o]] for o in wanted))
    return fx.GraphModule(torch.nn.Module(), g), origins


def _peel_graph(wanted, loop_keys, origins):
    """Step 0 as written, as a graph of the step's inputs (its reads at t = 0, the same values from before
    the loop); every other input a global. Returns the module and the nodes it copied."""
    g = fx.Graph()
    phs = {o: g.placeholder(f"x{k}") for k, o in enumerate(origins)}
    env, copied = {}, []

    def get(a):
        if not isinstance(a, fx.Node):
            return a
        if a in env:
            return env[a]
        r = time_read(a)
        if r is not None and r.index == 0 and r.key in loop_keys and ("read", r.key) in phs:
            env[a] = phs[("read", r.key)]
            copied.append(a)
        elif ("global", a) in phs:
            env[a] = phs[("global", a)]
        elif a.op in ("placeholder", "get_attr") or r is not None:
            raise _Refused("step 0 reads what the general step does not", say=True)
        else:
            v = value_of(a)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                env[a] = v
                return v
            if len(copied) >= _MAX_PEEL:
                raise _Refused("step 0 is too long to be a step")
            env[a] = g.node_copy(a, get)
            copied.append(a)
        return env[a]

    g.output(tuple(get(a) for a in wanted))
    return fx.GraphModule(torch.nn.Module(), g), copied


def _prove(step, peel_gm, origins: dict, P) -> None:
    """Step 0 as written == the general step on a zero state, on fresh float64 probes (every output)."""
    from ..numerics import rel_err
    from ..verify import NearMiss, probe, run_region

    metas, fixed = [], []
    for origin, node in origins.items():
        c = constant_value(node) if origin[0] == "global" else None
        metas.append(c.to(torch.float64) if c is not None else value_of(node))
        fixed.append(c is not None)
    state = value_of(P)
    if not isinstance(state, torch.Tensor) or any(
        not isinstance(m, torch.Tensor) or not m.is_floating_point() for m in metas
    ):
        raise _Refused("a value of the step is not a float tensor")
    gen = torch.Generator().manual_seed(2468)
    for kind in (None, "positive"):
        args = [m if f else probe(m.shape, gen, kind, m.device) for m, f in zip(metas, fixed)]
        try:
            general = run_region(
                step, [torch.zeros(tuple(state.shape), dtype=torch.float64, device=state.device), *args], widen=True
            )[0]
            written = run_region(peel_gm, args, widen=True)[0]
        except NearMiss as e:
            raise _Refused(str(e)) from e
        errs = [rel_err(a, b) for a, b in zip(general, written)]
        if not all(e <= 1e-9 for e in errs):
            raise _Refused(
                f"step 0, written apart from the loop, is not the loop's step on a zero state "
                f"(rel err {max(errs):.1e} on fresh inputs): the loop is left as written",
                say=True,
            )


def _splice(graph, blocks, i, P, outs, loop_keys, peeled) -> Peel:
    """Step 1 copied at t = 0 on a zero state before the loop; step 1 and the stacks take it in place of
    step 0 as written."""
    first = blocks[0]
    sv = value_of(P)
    new, env = [], {}
    with graph.inserting_before(first[0]):
        zeros = graph.call_function(torch.zeros, (tuple(sv.shape),), {"dtype": sv.dtype, "device": sv.device})
        zeros.meta["example_value"] = P.meta.get("example_value", P.meta.get("val"))
        new.append(zeros)
        for n in first:
            r = time_read(n)
            if r is not None and r.index == 1 and r.key in loop_keys:
                args = _reindexed(n, 0)
                if args is None:
                    for x in reversed(new):
                        graph.erase_node(x)
                    raise _Refused("a read not re-indexed")
                c = graph.create_node(n.op, n.target, args, dict(n.kwargs))
            else:
                c = graph.node_copy(n, lambda a: env.get(a, zeros if a is P else a))
            c.meta = dict(n.meta)
            c.meta.pop("fla_concrete", None)
            env[n] = c
            new.append(c)
    swaps = []
    for n in first:
        if P in n.all_input_nodes:
            n.replace_input_with(P, env[first[i]])
            swaps.append((n, env[first[i]], P))
    for u, o, x in outs:
        u.replace_input_with(x, env[first[o]])
        swaps.append((u, env[first[o]], x))
    for n in peeled:
        n.meta["fla_peeled"] = True
    return Peel(new, swaps, peeled)


def undo(peels: list[Peel]) -> None:
    """The graph as written again where a peeled loop was not rewritten (its synthesized step 0 stands)."""
    for p in peels:
        for n in p.peeled:
            n.meta.pop("fla_peeled", None)
        if any(getattr(n, "_erased", False) for n in p.new_nodes):
            continue  # rewritten: the lowering took the loop, step 0 included
        for user, new, old in p.swaps:
            user.replace_input_with(new, old)
        for n in reversed(p.new_nodes):
            if not n.users:
                n.graph.erase_node(n)

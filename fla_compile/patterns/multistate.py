"""A loop carrying several states, split into one recurrence per state (gated slot attention, GSA/ABC).

    Hk_t = Hk_{t-1} diag(e^{g_t}) + k_t s_t^T,  ok_t = softmax(Hk_t^T q_t)     (a value-gated slot memory)
    Hv_t = diag(e^{g_t}) Hv_{t-1} + s_t v_t^T,  o_t  = Hv_t^T ok_t             (gla, its query read from Hk)

A state is split off when its update reads no other state and everything else reads it through one value of
the step, its *cut* (here ok's matmul, before the softmax): the state's step (S, x_t) -> (S_t, cut_t) is then a
single-state loop, classified and proven on numbers like any other (``verify.classify_loop``, ``prove_loop``).
Its op runs once over the whole sequence, before the loop, and each step's cut becomes a read of the op's
output at t (``out[t]``); the state's nodes die. The next state may now read the first only through those
reads: a chain, split in order. The last state stays in the loop for the single-state path (its roles, the
softmax included, hoisted over the sequence there) unless its cut is not the loop's output (two memories
whose outputs are summed, an output per state): then it is split off too and the step code left (the sum)
runs once over the whole sequence under ``torch.vmap`` (``StepOutputs``); where it cannot (it reads a buffer
back), it stays in the graph as written.
States that read each other (a cycle), or a state read other than through one value, are left as written.
"""

from __future__ import annotations

import dataclasses
import logging
import operator

import torch
import torch.fx as fx

from .. import costs
from ..report import Match, Miss
from ..rewrite import LoopLowering, call_family, is_zeros, traced_dtype
from ..verify import NearMiss, classify_loop, prove_loop, step_inputs
from . import loop, loop_roles
from ._graph import source_line, value_of
from ._time import time_read, time_write

log = logging.getLogger("fla_compile")


def _step_sets(region: loop.LoopRegion, i: int):
    """In one step (block 1): the offsets that depend on state ``i`` and the offsets its update is made of."""
    blk, prev = region.blocks[1], region.blocks[0]
    index = {n: o for o, n in enumerate(blk)}

    def depends(blocked=None) -> set:
        dep = set()
        for o, n in enumerate(blk):
            if o != blocked and any(a is prev[i] or index.get(a) in dep for a in n.all_input_nodes):
                dep.add(o)
        return dep

    def ancestors(o: int) -> set:
        seen, todo = {o}, [o]
        while todo:
            for a in blk[todo.pop()].all_input_nodes:
                if a in index and index[a] not in seen:
                    seen.add(index[a])
                    todo.append(index[a])
        return seen

    return depends, ancestors


def cuts(region: loop.LoopRegion, i: int) -> list[int | None]:
    """Offsets through which alone the rest of the step reads state ``i`` (nearest the state first); [None]
    where nothing but its own update reads it."""
    depends, ancestors = _step_sets(region, i)
    dep = depends()
    update = ancestors(i) & dep
    rest = sorted(dep - update)
    if not rest:
        return [None]
    found = []
    for c in rest:
        above = ancestors(c)
        if (depends(blocked=c) & set(rest)) <= above:  # everything after c reads the state through c
            found.append(c)
    return found


def _sub_region(region: loop.LoopRegion, i: int, cut: int | None) -> loop.LoopRegion:
    """The single-state loop of state ``i`` whose per-step output is the value at ``cut``."""
    init = dict(zip(region.states, region.init_states))[i]
    return dataclasses.replace(
        region,
        state_offset=i,
        init_state=init,
        out_offset=cut,
        out_kind="stack" if cut is not None else "none",
        out_dim=0,
        out_target=None,
        final_state_used=i in region.finals_used,
        source=source_line(region.blocks[0][i]) or region.source,
        norm_offset=None,
        init_norm=None,
        states=(),
        init_states=(),
        finals_used=frozenset(),
        outputs=(),
    )


def _prove(sub: loop.LoopRegion, opts):
    """(Recurrence, proof error) of a sub-region's step, or raises NearMiss / ValueError."""
    step, _ = sub.step_graph()
    metas = step_inputs(step, sub.reads)
    state_meta = value_of(step.graph.find_nodes(op="placeholder")[0])
    rec = classify_loop(step, metas, state_meta)
    err = prove_loop(step, metas, state_meta, rec, call_family) if opts.verify else float("nan")
    rec = rec.replace(
        initial_state=None if is_zeros(sub.init_state) else sub.init_state,
        output_final_state=sub.final_state_used,
        source=sub.source,
    )
    return rec, err


def _fake_like(node: fx.Node, lead: int):
    v = node.meta.get("example_value", node.meta.get("val"))
    return v.new_empty((lead, *v.shape)) if v is not None else None


def _splice(region: loop.LoopRegion, sub: loop.LoopRegion, rec) -> list[fx.Node]:
    """Run the op of ``rec`` before the loop; each step's cut becomes a read ``out[t]`` of its output and the
    final state a result of the op. The state's nodes are left dead (``_erase_dead`` removes them)."""
    lowering = LoopLowering(rec)
    graph, first = region.graph, region.blocks[0][0]
    inside = {n for b in region.blocks for n in b}
    with graph.inserting_before(first):
        call = graph.call_function(lowering, tuple(lowering.args))
        out = graph.call_function(operator.getitem, (call, 0))
        final = graph.call_function(operator.getitem, (call, 1))
    last = region.blocks[-1][sub.state_offset]
    final.meta["example_value"] = last.meta.get("example_value", last.meta.get("val"))
    if sub.final_state_used:
        last.replace_all_uses_with(final, delete_user_cb=lambda u: u not in inside)
    else:
        graph.erase_node(final)
    if sub.out_offset is None:
        graph.erase_node(out)
        return []
    cut = [b[sub.out_offset] for b in region.blocks]
    out.meta["example_value"] = _fake_like(cut[0], region.T)
    made = []
    for t, c in enumerate(cut):
        with graph.inserting_before(first):
            read = graph.call_function(operator.getitem, (out, t))
        read.meta = {k: v for k, v in c.meta.items() if k in ("example_value", "val", "stack_trace")}
        c.replace_all_uses_with(read)
        made.append(read)
        if t == 0:
            r = time_read(read)
            region.reads[r.key] = r
    return made


def _erase_dead(region: loop.LoopRegion) -> None:
    """Erase the loop's nodes that nothing uses any more (the split states' updates), last first."""
    for b in reversed(region.blocks):
        for n in reversed(b):
            if not n.users and not n.is_impure():
                region.graph.erase_node(n)


def split(region: loop.LoopRegion, opts, report) -> set:
    """Split the states of ``region`` off one by one (see the module docstring). Returns the source lines of
    the loop's nodes where every state was split off (what is left carries none: it stays as written), else
    an empty set. The last state is left to the single-state path when its cut is the loop's output."""
    left = list(region.states)
    changed = False
    while left:
        why = {}
        for i in left:
            if len(left) == 1 and changed and _whole(region, i, opts):
                return _finish(region, changed)  # the single-state path takes it as a whole loop
            done = _try(region, i, opts, report, why, decide=not changed)
            if done is None:
                continue
            if not done:  # proven, kept as written by the cost table: leave the loop as it is
                return _finish(region, changed)
            left.remove(i)
            changed = True
            if not left:
                if _vectorize_rest(region):
                    return set()
                return _finish(region, changed, {source_line(n) for b in region.blocks for n in b})
            break
        else:
            names = ", ".join(loop._user_name(region.blocks[-1][i]) for i in left)
            reasons = "; ".join(f"{k}: {v}" for k, v in why.items())
            report.misses.append(
                Miss(
                    loop.SPELLING, f"the loop carries {len(left)} states ({names}) not split: {reasons}", region.source
                )
            )
            return _finish(region, changed)
    return _finish(region, changed)


def _whole(region, i: int, opts) -> bool:
    """The loop's output is the last state's read-out (GSA's o_t = Hv_t^T ok_t): a single-state loop."""
    if region.out_offset is None or region.out_offset not in cuts(region, i):
        return False
    try:
        _prove(_sub_region(region, i, region.out_offset), opts)
    except (NearMiss, ValueError):
        return False
    return True


def _finish(region, changed: bool, lines: set = frozenset()) -> set:
    if changed:
        _erase_dead(region)
        for n in reversed(getattr(region, "made", [])):  # reads of an op's output the loop no longer makes
            if not n.users:
                region.graph.erase_node(n)
    return lines


class StepOutputs:
    """The per-step code left after every state was split off (GSA's softmax, two read-outs summed), over the
    whole sequence: the step's computation of the output from its reads (the ops' outputs among them) under
    ``torch.vmap`` over time, laid out as the loop laid it out (stacked, concatenated, written into a buffer)."""

    def __init__(self, gm: fx.GraphModule, in_dims: tuple, posts: tuple, kind: str, dim: int, dtype):
        self.gm, self.in_dims, self.posts, self.kind, self.dim, self.dtype = gm, in_dims, posts, kind, dim, dtype
        self.__name__ = "fla_loop_rest"

    def __repr__(self) -> str:
        return self.__name__

    def same_call(self, other) -> bool:
        """The same code apart from lengths (``@jit`` merges two probe lengths)."""
        fields = ("in_dims", "posts", "kind", "dim", "dtype")
        return (
            isinstance(other, StepOutputs)
            and self.gm.code == other.gm.code
            and all(getattr(self, f) == getattr(other, f) for f in fields)
        )

    def _step(self, *xs):
        return self.gm(*[x if post is None else x[post] for x, post in zip(xs, self.posts)])[0]

    def __call__(self, *xs):
        v = torch.vmap(self._step, in_dims=self.in_dims, out_dims=0)(*xs).to(traced_dtype(self.dtype))
        if self.kind == "cat":
            d = self.dim if self.dim >= 0 else self.dim + v.dim() - 1
            return v.movedim(0, d).flatten(d, d + 1)
        d = self.dim if self.dim >= 0 else self.dim + v.dim()
        return v.movedim(0, d)


def _vectorize_rest(region: loop.LoopRegion) -> bool:
    """Replace a loop that carries no state any more by one ``StepOutputs`` call per output; False (nothing
    changed) where a step reads a carried value (a buffer read back) or an output's layout is not plain."""
    outputs = region.outputs or (
        ((region.out_kind, region.out_dim, region.out_offset, region.out_target),) if region.out_offset is not None
        else ())  # fmt: skip
    calls = []
    for kind, dim, _, target in outputs:
        origin, value = _value_origin(region, kind, target)
        if origin is None:
            return False
        try:
            gm, origins = region.role_graph([origin])
        except ValueError:
            return False
        step_val = value_of(value)
        whole = value_of(target)
        if kind == "buffer" and tuple(whole.shape) != tuple(_moved(step_val.shape, region.T, dim)):
            return False  # a value broadcast into its slot
        args, in_dims, posts = [], [], []
        for origin in origins:
            if origin[0] == "read":
                r = region.reads[origin[1]]
                args.append(r.src), in_dims.append(r.dim), posts.append(r.post)
            else:
                args.append(origin[1]), in_dims.append(None), posts.append(None)
        if all(d is None for d in in_dims):
            return False
        calls.append((StepOutputs(gm, tuple(in_dims), tuple(posts), kind, dim, whole.dtype), args, target))
    if not calls:
        return False
    graph, inside = region.graph, {n for b in region.blocks for n in b}
    first = region.blocks[0][0]
    for fn, args, target in calls:
        with graph.inserting_before(first):
            node = graph.call_function(fn, tuple(args))
        node.meta = {k: v for k, v in target.meta.items() if k in ("example_value", "val", "stack_trace")}
        target.replace_all_uses_with(node, delete_user_cb=lambda u, node=node: u not in inside and u is not node)
        if target not in inside:  # the stack or cat after the loop
            graph.erase_node(target)
    for b in reversed(region.blocks):
        for n in reversed(b):
            graph.erase_node(n)
    for n in reversed(getattr(region, "made", [])):
        if not n.users:
            graph.erase_node(n)
    return True


def _value_origin(region: loop.LoopRegion, kind: str, target: fx.Node):
    """Where step 1's output value comes from now, and that value: a node of the step, or a read (an op's output
    at t, where the loop's output was a state's cut); (None, None) where neither."""
    blk = region.blocks[1]
    if kind == "buffer":
        w = time_write(blk[blk.index(target) if target in blk else region.blocks[-1].index(target)])
        value = w.value if w is not None else None
    else:
        seq = target.args[0] if target.args else target.kwargs.get("tensors")
        value = seq[1]
    if value in blk:
        return ("offset", blk.index(value)), value
    r = time_read(value) if isinstance(value, fx.Node) else None
    return (("read", r.key), value) if r is not None and r.index == 1 and r.key in region.reads else (None, None)


def _moved(shape, T: int, dim: int) -> tuple:
    shape = [T, *shape]
    d = dim if dim >= 0 else dim + len(shape)
    shape.insert(d, shape.pop(0))
    return tuple(shape)


def _try(region, i: int, opts, report, why: dict, decide: bool = True):
    """Split state ``i`` off: True (spliced), False (proven but kept as written), None (not split; ``why``).
    The cost table decides at the first state only (``decide``): once one is split, the rest follow."""
    name = loop._user_name(region.blocks[-1][i])
    found = cuts(region, i)
    if not found:
        why[name] = "read by the rest of the step through more than one value"
        return None
    for cut in found[:4]:
        sub = _sub_region(region, i, cut)
        try:
            rec, err = _prove(sub, opts)
        except ValueError as e:  # the state's step reads another carried value
            why.setdefault(name, f"its step reads another state ({e})" if "carried" in str(e) else str(e))
            continue
        except NearMiss as e:  # the nearest cut's reason is the one to say
            why.setdefault(name, str(e))
            continue
        except Exception as e:  # a bug of ours: the graph is untouched by this state so far
            log.warning("fla_compile: splitting the loop at %s failed", region.source, exc_info=True)
            why[name] = f"internal error: {type(e).__name__}: {e}"
            return None
        kept, shape = (
            costs.decide(opts, rec.family.value, loop.SPELLING, costs.loop_shape, sub) if decide else ("", None)
        )
        if kept:
            report.matches.append(Match(rec.family.value, rec.spelling, rec.source, rec.op_name, err, kept, shape))
            return False
        try:
            rec, pinned = loop_roles.recurrence(sub, rec)
        except ValueError as e:
            why[name] = str(e)
            return None
        region.made = [*getattr(region, "made", []), *_splice(region, sub, rec)]
        if pinned:
            report.notes.append(loop_roles.pinned_note(rec, pinned))
        report.matches.append(Match(rec.family.value, rec.spelling, rec.source, rec.op_name, err, kept, shape))
        return True
    return None

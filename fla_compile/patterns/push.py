"""A read-out after the loop, pushed into the steps (the mirror of ``pull.py``).

mamba.py's sequential scan stacks every state, ``hs = torch.stack(hs, dim=1)`` [B, L, D, N], and reads them out
after the loop, ``(hs @ C.unsqueeze(-1)).squeeze(3)``: the loop itself is an elementwise scan over D x N (hgrn)
whose per-step output is its whole state, where the mamba op wants the read-out y_t = h_t C_t in the step. A
stacked output whose one reader is a ``matmul`` or a two-operand ``einsum`` with a sequence that runs along the same
time dim (a batch dim of the product, never contracted), optionally followed by a ``squeeze`` of another dim, is
time-local: step t of its result is the same product of h_t and step t of the sequence. ``push`` puts that product (and the squeeze) in every
step and stacks its results in place of the read-out; ``undo`` restores the code as written where the loop is not
rewritten with it. The loop's proof then covers the pushed read-out, as any read-out in a step.
"""

from __future__ import annotations

import dataclasses
import operator

import torch
import torch.fx as fx

from ._graph import infer_values
from ._region import shape_of

MATMUL = {torch.matmul, operator.matmul, "matmul", "__matmul__"}
SQUEEZE = {torch.squeeze, "squeeze"}
STACK = {torch.stack}


@dataclasses.dataclass
class Pushed:
    new_nodes: list  # the per-step nodes and the stack of their results, in graph order
    old: list  # the chain as written: (node, op, target, args, kwargs, meta) from the stack of states to the read-out
    stack: fx.Node  # the stack of the per-step read-outs, standing where the read-out was


def _stack_parts(s: fx.Node) -> tuple[list, int] | None:
    if s.target not in STACK or not s.args or not isinstance(s.args[0], (list, tuple)):
        return None
    dim = s.args[1] if len(s.args) > 1 else s.kwargs.get("dim", 0)
    return (list(s.args[0]), dim) if isinstance(dim, int) else None


def _squeeze_dim(n: fx.Node) -> int | None:
    if n.target not in SQUEEZE or len(n.args) != 2 or n.kwargs or not isinstance(n.args[1], int):
        return None
    return n.args[1]


def _readout(m: fx.Node, S: fx.Node, d: int, n: int) -> tuple | None:
    """How step t of the read-out ``m`` of the stacked states ``S`` (time along ``d`` of its ``n`` dims) is made:
    (the other operand X, X's time dim, the per-step op as (op, target, args of (h, x_t)), the result's time dim),
    or None where ``m`` is not a product of S with a sequence along the same time dim (never contracted)."""
    if m.target in MATMUL and len(m.args) == 2 and not m.kwargs and m.args[0] is S:
        X, sX, sS = m.args[1], shape_of(m.args[1]), shape_of(S)
        if not isinstance(X, fx.Node) or sX is None or len(sX) != n or d >= n - 2 or sX[d] != sS[d]:
            return None  # the time dim must be a batch dim of both operands of the product
        return X, d, lambda h, x: (m.op, m.target, (h, x)), d
    if m.target is torch.einsum and len(m.args) == 3 and not m.kwargs and isinstance(m.args[0], str):
        eq = m.args[0].replace(" ", "")
        if "->" not in eq or "." in eq or eq.count(",") != 1:
            return None
        (a, b), out = eq.split("->")[0].split(","), eq.split("->")[1]
        ops = m.args[1:]
        if ops[0] is S and ops[1] is not S:
            ls, lx, X = a, b, ops[1]
        elif ops[1] is S and ops[0] is not S:
            ls, lx, X = b, a, ops[0]
        else:
            return None
        if len(ls) != n or not isinstance(X, fx.Node):
            return None
        t = ls[d]
        if ls.count(t) != 1 or lx.count(t) != 1 or out.count(t) != 1:
            return None  # time summed, or a diagonal: not time-local
        step_eq = lambda x: x.replace(t, "")  # noqa: E731
        first = ops[0] is S
        sides = (step_eq(ls), step_eq(lx)) if first else (step_eq(lx), step_eq(ls))
        per_step = f"{sides[0]},{sides[1]}->{step_eq(out)}"
        return (
            X,
            lx.index(t),
            lambda h, x: ("call_function", torch.einsum, (per_step, h, x) if first else (per_step, x, h)),
            out.index(t),
        )  # noqa: E501
    return None


def push(graph: fx.Graph, region) -> Pushed | None:
    """Push the read-out of ``region``'s stacked output into its steps; None where it is not time-local."""
    S = region.out_target
    if region.out_kind != "stack" or S is None or len(S.users) != 1:
        return None
    parts = _stack_parts(S)
    (m,) = S.users
    sS = shape_of(S)
    if parts is None or sS is None:
        return None
    hs, d = parts
    if region.out_offset is None or hs != [b[region.out_offset] for b in region.blocks]:
        return None  # not exactly the steps' outputs, in order
    n = len(sS)
    d %= n
    how = _readout(m, S, d, n)
    if how is None:
        return None
    X, dx, step_op, od = how
    if X in hs or not _hoist(graph, X, region.blocks[0][0], region.blocks[-1][-1]):
        return None
    chain, tail, sq = [S, m], m, None
    no = len(shape_of(m) or ())
    if len(m.users) == 1 and no:
        (u,) = m.users
        k = _squeeze_dim(u)
        if k is not None and k % no != od:
            sq, chain, tail = k % no, [S, m, u], u
    old = [(c, c.op, c.target, c.args, c.kwargs, dict(c.meta)) for c in chain]
    made: list = []
    outs = []
    for i, h in enumerate(hs):
        with graph.inserting_after(h):
            xi = graph.call_function(operator.getitem, (X, (slice(None),) * dx + (i,)))
        op, target, args = step_op(h, xi)
        with graph.inserting_after(xi):
            yi = graph.create_node(op, target, args)
        made += [xi, yi]
        if sq is not None:
            with graph.inserting_after(yi):
                yi = graph.call_method("squeeze", (yi, sq - 1 if sq > od else sq))
            made.append(yi)
        outs.append(yi)
    with graph.inserting_after(tail):
        new = graph.call_function(torch.stack, (outs,), {"dim": od if sq is None or sq > od else od - 1})
    made.append(new)
    try:
        infer_values(made)
    except Exception:  # no fake mode to give the new nodes shapes: leave the code as written
        for x in reversed(made):
            graph.erase_node(x)
        return None
    if not _same(old, made, hs, X):
        for x in reversed(made):
            graph.erase_node(x)
        return None
    tail.replace_all_uses_with(new)
    for c in reversed(chain):
        graph.erase_node(c)
    return Pushed(made, old, new)


def _same(old: list, made: list, hs: list, X: fx.Node) -> bool:
    """The pushed steps, stacked, equal the read-out as written on float64 probes of the states and the sequence."""
    from ..numerics import rel_err
    from ..verify import probe

    gen = torch.Generator().manual_seed(113)
    env = {x: probe(shape_of(x), gen) for x in (*hs, X)}

    def run(node, op, target, args, kwargs):
        args, kwargs = torch.fx.node.map_arg((args, kwargs), env.__getitem__)
        fn = getattr(torch.Tensor, target) if op == "call_method" else target
        env[node] = fn(*args, **kwargs)
        return env[node]

    for n in made:
        pushed = run(n, n.op, n.target, n.args, n.kwargs)
    for orig, op, target, args, kwargs, _ in old:
        written = run(orig, op, target, args, kwargs)
    return pushed.shape == written.shape and rel_err(pushed, written) <= 1e-12


def _hoist(graph: fx.Graph, x: fx.Node, start: fx.Node, end: fx.Node) -> bool:
    """Move what ``x`` is made of after the loop (``C.unsqueeze(-1)`` written with the read-out) to before its first
    step, so that the steps can read it; False where it depends on the loop's own values."""
    pos = {n: i for i, n in enumerate(graph.nodes)}
    lo, hi = pos[start], pos[end]
    later, todo, seen = [], [x], set()
    while todo:
        n = todo.pop()
        if n in seen or pos[n] < lo:
            continue
        seen.add(n)
        if pos[n] <= hi or n.op in ("placeholder", "get_attr", "output"):
            return False  # made in the loop (or an input listed late): not a sequence from outside it
        later.append(n)
        todo += n.all_input_nodes
    for n in sorted(later, key=pos.__getitem__):
        start.prepend(n)
    return True


def undo(p: Pushed | None) -> None:
    """The read-out after the loop as written again, where the loop was not rewritten with it pushed in."""
    if p is None or any(getattr(x, "_erased", False) for x in p.new_nodes):
        return  # rewritten: the lowering took the loop and its pushed read-out
    graph, env, prev = p.stack.graph, {}, p.stack
    for orig, op, target, args, kwargs, meta in p.old:
        args, kwargs = torch.fx.node.map_arg((args, kwargs), lambda a: env.get(a, a))
        with graph.inserting_after(prev):
            node = graph.create_node(op, target, args, kwargs)
        node.meta.update(meta)
        env[orig], prev = node, node
    p.stack.replace_all_uses_with(prev)
    for x in reversed(p.new_nodes):
        graph.erase_node(x)

"""Time-local producers of a loop's per-step inputs, pulled into the step.

Mamba's reference scan makes ``deltaA = exp(einsum("bdl,dn->bdln", delta, A))`` and ``deltaB_u`` for the whole
sequence before the loop, then reads ``deltaA[:, :, i]``: the step sees an opaque decay (an elementwise scan
over D x N, hgrn) where the mamba op wants exp(dt A) and (dt u) B^T. A producer is time-local when step t of
its result is the same op on step t of its inputs: elementwise ops (broadcasts included) and einsums whose
time label is kept in the output (never summed). Each read of such a producer, in every step, becomes the op
on reads of its inputs (an einsum's operands with the same labels multiplied first, so dt u is a value of the
step); checked on float64 probes against the producer as written at the first and last step. A producer that
mixes steps (a cumsum over time, a flip, a transpose of the time dim) is never pulled. ``undo`` restores the
reads where the loop is not rewritten with it.
"""

from __future__ import annotations

import dataclasses
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from ._graph import infer_values, value_of
from ._time import time_read

UNARY = {
    torch.exp, torch.sigmoid, torch.tanh, torch.log, torch.neg, operator.neg, F.softplus, torch._C._nn.softplus,
    F.silu, F.logsigmoid, torch._C._nn.log_sigmoid, "exp", "sigmoid", "tanh", "log", "neg",
}  # fmt: skip
BINARY = {operator.mul, operator.add, operator.sub, operator.truediv, torch.mul, torch.add, torch.sub, torch.div}
_MAX = 16  # nodes pulled per read


@dataclasses.dataclass
class Pulled:
    swaps: list  # (read as written, its per-step computation's last node)
    new_nodes: list


class _No(Exception):
    pass


def _live_users(n: fx.Node) -> list:
    return [u for u in n.users if u.users or u.op == "output"]


def _pullable(n: fx.Node, dim: int) -> bool:
    """Every live use of ``n`` reads one step along ``dim``, with nothing after the pick: the whole-sequence
    tensor is needed by no one else."""
    users = _live_users(n)
    if not users:
        return False
    for u in users:
        r = time_read(u)
        if r is None or r.src is not n or r.dim != dim or r.post is not None:
            return False
    return _supported(n)


def _step_of(graph, node, d: int, i: int, T: int, made: list, top: bool, pullset: set):
    """A node computing step ``i`` (along ``d``) of ``node`` from steps of its inputs; ``top``: pull ``node``
    itself (its reads were checked), else only where it is in ``pullset`` (else a read of it)."""
    if not isinstance(node, fx.Node):
        return node
    if len(made) > _MAX:
        raise _No("too many nodes")
    v = value_of(node)
    if not isinstance(v, torch.Tensor):
        raise _No("not a tensor")
    if not (top or node in pullset):
        return _emit(made, graph, "call_function", operator.getitem, (node, (slice(None),) * d + (i,)), {})
    nout = v.dim()

    def operand(x):
        if not isinstance(x, fx.Node):
            if isinstance(x, (int, float)):
                return x
            raise _No("an operand that is not a number or a tensor")
        xv = value_of(x)
        if not isinstance(xv, torch.Tensor):
            raise _No("an operand that is not a tensor")
        p = d - (nout - xv.dim())
        if p < 0:
            return x
        if xv.shape[p] == T:
            return _step_of(graph, x, p, i, T, made, False, pullset)
        if xv.shape[p] == 1:
            return _emit(made, graph, "call_method", "squeeze", (x, p), {})
        raise _No("an operand with another size along time")

    t, a, kw = node.target, node.args, node.kwargs
    if any(isinstance(x, fx.Node) for x in kw.values()):
        raise _No("a tensor keyword argument")
    if t in UNARY:
        if len(a) != 1:
            raise _No("not unary")
        return _emit(made, graph, node.op, t, (operand(a[0]),), dict(kw))
    if t in BINARY:
        if len(a) != 2 or kw:
            raise _No("not binary")
        return _emit(made, graph, node.op, t, (operand(a[0]), operand(a[1])), {})
    if t is torch.einsum:
        return _einsum(graph, node, d, i, T, made, pullset)
    raise _No("not time-local")


def _supported(n) -> bool:
    return n.op in ("call_function", "call_method") and (
        n.target in UNARY or n.target in BINARY or n.target is torch.einsum
    )


def _pullset(srcs: set) -> set:
    """The producers to pull: the read sources, and inputs of them whose every use is pulled."""
    out = set(srcs)
    grew = True
    while grew:
        grew = False
        for x in list(out):
            for a in x.all_input_nodes:
                if a not in out and _supported(a) and all(u in out for u in _live_users(a)):
                    out.add(a)
                    grew = True
    return out


def _einsum(graph, node, d, i, T, made, pullset):
    eq, *ops = node.args
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = list(ops[0])
    if not isinstance(eq, str) or "..." in eq or "->" not in eq or node.kwargs:
        raise _No("an einsum this does not read")
    lhs, out = eq.replace(" ", "").split("->")
    ins = lhs.split(",")
    if len(ins) != len(ops) or d >= len(out):
        raise _No("an einsum this does not read")
    lab = out[d]
    groups: dict[str, list] = {}
    for spec, x in zip(ins, ops):
        if not isinstance(x, fx.Node) or len(set(spec)) != len(spec):
            raise _No("an einsum operand this does not read")
        if lab in spec:
            p = spec.index(lab)
            size = value_of(x).shape[p]
            if size == T:
                x = _step_of(graph, x, p, i, T, made, False, pullset)
            elif size == 1:
                x = _emit(made, graph, "call_method", "squeeze", (x, p), {})
            else:
                raise _No("an einsum operand with another size along time")
            spec = spec.replace(lab, "")
        if spec in groups:  # the same labels: multiplied first (dt * u of Mamba's dt B u)
            groups[spec] = _emit(made, graph, "call_function", operator.mul, (groups[spec], x), {})
        else:
            groups[spec] = x
    new_eq = ",".join(groups) + "->" + out.replace(lab, "")
    return _emit(made, graph, "call_function", torch.einsum, (new_eq, *groups.values()), {})


def _emit(made, graph, op, target, args, kwargs):
    n = graph.create_node(op, target, args, kwargs)
    made.append(n)
    return n


def pull(graph: fx.Graph, reads: list[fx.Node], T: int) -> Pulled | None:
    """Pull the producers of ``reads`` (a loop's read nodes, every step) into the steps; None where none is
    time-local or the per-step form differs from the producer as written on probes."""
    todo = [n for n in reads if (r := time_read(n)) is not None and _pullable(r.src, r.dim)]
    if not todo:
        return None
    pullset = _pullset({time_read(n).src for n in todo})
    done = Pulled([], [])
    try:
        for n in todo:
            r = time_read(n)
            made: list = []
            with graph.inserting_before(n):
                last = _step_of(graph, r.src, r.dim, r.index, T, made, True, pullset)
            for m in made:
                m.meta["fla_pulled_from"] = True
            done.new_nodes += made
            done.swaps.append((n, last))
        infer_values(done.new_nodes)
        _check(done, T)
    except Exception:
        undo([done])
        return None
    for n, last in done.swaps:  # the reads as written stay, dead, marked: ``loop.find`` frames them as reads
        n.replace_all_uses_with(last)
        n.meta["fla_pulled"] = True
    return done


def _check(done: Pulled, T: int) -> None:
    """Each pulled read equals the read as written, on float64 probes of the producers' inputs."""
    from ..numerics import rel_err
    from ..verify import probe

    gen = torch.Generator().manual_seed(97)
    env: dict = {}

    def val(a):
        if not isinstance(a, fx.Node):
            return a
        if a not in env:
            if a.op in ("placeholder", "get_attr") or not (
                a.target in UNARY
                or a.target in BINARY
                or a.target is torch.einsum
                or time_read(a) is not None
                or a.target == "squeeze"
                or a.meta.get("fla_pulled_from")
            ):
                v = value_of(a)
                env[a] = probe(v.shape, gen) if isinstance(v, torch.Tensor) else v
            else:
                args, kwargs = torch.fx.node.map_arg((a.args, a.kwargs), val)
                fn = getattr(torch.Tensor, a.target) if a.op == "call_method" else a.target
                env[a] = fn(*args, **kwargs)
        return env[a]

    for read, last in done.swaps:
        r = time_read(read)
        if r.index not in (0, T - 1):
            continue
        if rel_err(val(last), val(read)) > 1e-12:
            raise _No("the pulled step differs from the producer as written")


def undo(pulls: list) -> None:
    """The reads as written again, where the loop was not rewritten with its producers pulled in."""
    for p in pulls:
        if p is None or any(getattr(n, "_erased", False) for n in p.new_nodes):
            continue  # rewritten: the lowering took the loop
        for read, last in p.swaps:
            if read.meta.pop("fla_pulled", None):
                last.replace_all_uses_with(read)
        for n in reversed(p.new_nodes):
            if not n.users:
                n.graph.erase_node(n)

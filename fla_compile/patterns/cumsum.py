"""The ``cumsum`` spelling: prefix sums of outer products k (x) v along time, read by q.

    S = torch.cumsum(k[..., :, None] * v[..., None, :], dim=t);  o = einsum(q, S)

Structure proposes: a cumsum whose input is an outer product (a broadcast multiply, an
einsum or a matmul of a column by a row) and whose only reader contracts it with q over
the key dim (einsum, matmul, or multiply-and-sum). Dims are labelled by their position
in the outer product, so the cumsum dim is time, the dim only k spans is the key and the
dim only v spans is the value; a cumsum over the key or value dim is rejected. The region
from q, k, v to the read-out is then run on random float64 probes, the scale fitted, and
the binding proven against linear_attn on fresh probes before the read-out is replaced.

A normalizer ``den = q . cumsum(k)`` of the same q and k (up to views) is fused into the
numerator's call: v gets a ones column, whose output is the normalizer; the two are proven
together. Only the two read-outs are replaced, so what the code does with them (``+ eps``,
``.clamp(min=eps)``, the division) stays as written and is reproduced exactly. A
normalizer that cannot be fused stays as written (it is linear in T already).
"""

from __future__ import annotations

import copy
import math
import operator

import torch
import torch.fx as fx

from ..ir import Family
from ..report import Match, Miss, Report
from ..verify import NearMiss
from . import parallel as P
from ._graph import source_line, value_of

SPELLING = "cumsum"
MUL = {operator.mul, torch.mul, "mul", "__mul__"}
SUM = {torch.sum, "sum"}


def _dim(node: fx.Node, pos: int, default=None):
    return node.args[pos] if len(node.args) > pos else node.kwargs.get("dim", default)


def _broadcast_labels(x: fx.Node, full: tuple, labels: tuple) -> tuple | None:
    """Labels of ``x`` broadcast (right-aligned) against a value of shape ``full`` labelled ``labels``;
    None marks a size-1 dim that broadcasts."""
    sx = P.shape_of(x)
    if sx is None or len(sx) > len(full):
        return None
    off = len(full) - len(sx)
    out = []
    for i, n in enumerate(sx):
        if n == full[off + i]:
            out.append(labels[off + i])
        elif n == 1:
            out.append(None)
        else:
            return None
    return tuple(out)


def outer_operands(p: fx.Node) -> tuple | None:
    """((a, labels), (b, labels)) of an outer product, labelled by the positions of ``p``."""
    sp = P.shape_of(p)
    if sp is None:
        return None
    lp = tuple(range(len(sp)))
    if p.target in MUL and len(p.args) == 2 and all(isinstance(a, fx.Node) for a in p.args):
        la, lb = (_broadcast_labels(a, sp, lp) for a in p.args)
        return None if la is None or lb is None else ((p.args[0], la), (p.args[1], lb))
    c = P.contraction(p)
    if c is None:
        return None
    sa, sb = P.sizes(c.a, c.la), P.sizes(c.b, c.lb)
    to_p = dict(zip(c.lo, lp))
    for x in c.la + c.lb:
        if x not in to_p:
            if sa.get(x, 1) != 1 or sb.get(x, 1) != 1:
                return None  # a real contraction, not an outer product
            to_p[x] = None
    return (c.a, tuple(to_p[x] for x in c.la)), (c.b, tuple(to_p[x] for x in c.lb))


def readout(s: fx.Node) -> tuple | None:
    """(out node, q node, q labels, out labels, contracted label) of the one read of ``s`` by q,
    with labels in the positions of ``s``."""
    if len(s.users) != 1:
        return None
    (r,) = s.users
    ss = P.shape_of(s)
    ls = tuple(range(len(ss)))
    c = P.contraction(r)
    if c is not None:
        q, lq, lx = (c.b, c.lb, c.la) if c.a is s else (c.a, c.la, c.lb)
        if q is s:
            return None
        to_s = dict(zip(lx, ls))
        sq = P.sizes(q, lq)
        so = P.sizes(r, c.lo)
        for x in lq + c.lo:
            if x not in to_s:  # a dim S does not have: only a size-1 row or column may
                if sq.get(x, 1) != 1 or so.get(x, 1) != 1:
                    return None
                to_s[x] = None
        contracted = [to_s[x] for x in lq if x in lx and x not in c.lo]
        return r, q, tuple(to_s[x] for x in lq), tuple(to_s[x] for x in c.lo), contracted
    if r.target in MUL and len(r.args) == 2 and len(r.users) == 1:
        (red,) = r.users
        q = r.args[1] if r.args[0] is s else r.args[0]
        sr = P.shape_of(r)
        if not isinstance(q, fx.Node) or q is s or sr is None or len(sr) != len(ss) or red.target not in SUM:
            return None
        lq = _broadcast_labels(q, sr, ls)
        dims = _dim(red, 1)
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        keep = red.kwargs.get("keepdim", red.args[2] if len(red.args) > 2 else False)
        if lq is None or len(dims) != 1:
            return None
        d = dims[0] % len(sr)
        lo = tuple(None if (i == d and keep) else x for i, x in enumerate(ls) if i != d or keep)
        return red, q, lq, lo, [ls[d]] if lq[d] is not None else []
    return None


def match(cs: fx.Node, opts):
    """Bind, fit the scale and prove one cumsum region; raise NearMiss with the reason."""
    p = cs.args[0]
    dim = _dim(cs, 1)
    sp = P.shape_of(p)
    if not isinstance(p, fx.Node) or sp is None or not isinstance(dim, int):
        return None
    ops = outer_operands(p)
    if ops is None:
        return None
    (a, la), (b, lb) = ops
    only_a = [x for x in la if x is not None and x not in lb]
    only_b = [x for x in lb if x is not None and x not in la]
    if len(only_a) != 1 or len(only_b) != 1:
        return None
    read = readout(cs)
    if read is None:
        users = ", ".join(f"'{u.name}'" for u in cs.users)
        if len(cs.users) > 1:
            raise NearMiss(f"the prefix sum '{cs.name}' is also used by {users}; only a single read by q is rewritten")
        raise NearMiss(f"the prefix sum of k (x) v is not read by a contraction with q (read by {users})")
    out, q, lq, lo, contracted = read
    if len(contracted) != 1 or contracted[0] not in (only_a[0], only_b[0]):
        raise NearMiss("q does not contract the state over exactly one of its outer-product dims")
    (k, lk, dk), (v, lv, dv) = ((a, la, only_a[0]), (b, lb, only_b[0]))
    if contracted[0] == dv:
        (k, lk, dk), (v, lv, dv) = (v, lv, dv), (k, lk, dk)
    t = dim % len(sp)
    if t in (dk, dv):
        raise NearMiss(f"the cumsum runs over dim {dim}, the {'key' if t == dk else 'value'} dim of k (x) v, not time")
    if t not in lq or t not in lo or dv not in lo:
        raise NearMiss("q or the output has no time dim matching the cumsum")
    layouts = (P.Layout(lq, t, dk), P.Layout(lk, t, dk), P.Layout(lv, t, dv))
    out_layout = P.Layout(lo, t, dv)
    batch, bsizes = P.out_batch(out_layout, P.shape_of(out))
    region = P.cone(out, {q, k, v})
    why = P.inner_users(region, out, [q, k, v])
    if why:
        raise NearMiss(why)
    roles, slots = P.distinct([q, k, v])
    gm, _ = P.extract(out, roles)
    dtype = value_of(out).dtype
    low = P.Lowering(Family.LINEAR_ATTN, layouts, out_layout, batch, bsizes, 1.0, out_dtype=dtype, slots=slots)
    gen = torch.Generator().manual_seed(20261124)
    args = [P.probe(r, gen) for r in roles]
    with torch.no_grad():
        ref = gm(*args)
        scale = P.fit_scale(ref, low(*args, cast=False).to(ref.dtype))
    if not math.isfinite(scale) or scale == 0:
        raise NearMiss("the read-out is not a multiple of S_t^T q_t")
    low.scale = scale
    low, roles, err = P.prove(gm, roles, [low], {}, opts)
    norm = normalizer(cs, low, (q, k, v), out, opts)
    return norm or ((low, roles, err), (out,))


def run_pass(graph: fx.Graph, opts, report: Report) -> None:
    """Find, prove and rewrite every cumsum-of-outer-products read by q in ``graph``."""
    for cs in [n for n in graph.nodes if n.target in P.CUMSUM]:
        if cs not in set(graph.nodes):
            continue
        src = source_line(cs)
        try:
            found = match(cs, opts)
        except NearMiss as e:
            report.misses.append(Miss(SPELLING, str(e), src))
            continue
        except Exception as e:  # an unforeseen layout: leave it (the graph is untouched until the rewrite)
            report.misses.append(Miss(SPELLING, f"not analysed: {type(e).__name__}: {e}", src))
            continue
        if found is None:
            continue
        (low, roles, err), outs = found
        rewrite(outs, low, roles)
        report.matches.append(Match("linear_attn", SPELLING, src, "fla_compile.linear_attn", err))
        if len(outs) > 1:
            report.notes.append(f"cumsum at {src}: the normalizer is fused into the same call (v with a ones column)")


def rewrite(outs: tuple, low, args: list[fx.Node]) -> None:
    """Replace the read-out (and the normalizer) by one call; dead nodes go to dead-code elimination."""
    if len(outs) == 1:
        return P.rewrite(outs[0], low, args)
    graph = outs[0].graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    with graph.inserting_after(max(args, key=order.__getitem__)):
        call = graph.call_function(low, tuple(args))
    for i, o in reversed(list(enumerate(outs))):
        with graph.inserting_after(call):
            item = graph.call_function(operator.getitem, (call, i))
        item.meta = {k: v for k, v in o.meta.items() if k in ("example_value", "val", "stack_trace")}
        o.replace_all_uses_with(item)
    graph.eliminate_dead_code()


VIEWS = {
    operator.getitem,
    torch.unsqueeze,
    "unsqueeze",
    torch.transpose,
    "transpose",
    torch.permute,
    "permute",
    "view",
    "reshape",
    torch.reshape,
    "squeeze",
    torch.squeeze,
    "contiguous",
    "expand",
    "float",
    "to",
}


def root(n: fx.Node) -> fx.Node:
    """The value a role is a view of (``k[..., :, None]`` -> ``k``): the shared input of the
    numerator and the normalizer."""
    while n.target in VIEWS and len(n.all_input_nodes) == 1 and n.args and n.args[0] is n.all_input_nodes[0]:
        n = n.args[0]
    return n


class NormalizedLowering:
    """One linear_attn call on v with a ones column: the numerator and the normalizer q . cumsum(k)."""

    def __init__(self, num: P.Lowering, views: fx.GraphModule, v_dim: int, den: P.Layout, den_shape, den_dtype):
        self.num, self.views, self.v_dim, self.den, self.den_dtype = num, views, v_dim, den, den_dtype
        self.den_batch, self.den_bsizes = P.out_batch(den, den_shape)
        self.family = num.family
        self.den_ratio = 1.0  # the normalizer's scale over the numerator's
        self.__name__ = num.__name__ + "_normalized"

    def __repr__(self) -> str:
        return self.__name__

    def __eq__(self, other) -> bool:  # see Lowering.__eq__; the views must not hold lengths
        if not isinstance(other, NormalizedLowering) or self.num != other.num or self.views.code != other.views.code:
            return False
        same = (self.v_dim, self.den, self.den_batch, self.den_bsizes, self.den_dtype)
        return same == (other.v_dim, other.den, other.den_batch, other.den_bsizes, other.den_dtype) and math.isclose(
            self.den_ratio, other.den_ratio, rel_tol=1e-9
        )

    def __hash__(self) -> int:
        return hash(self.num)

    def __call__(self, *roots, cast=True):
        n = self.num
        q, k, v = self.views(*roots)
        v = torch.cat([v, torch.ones_like(v.narrow(self.v_dim, 0, 1))], self.v_dim)
        o = n.op(q, k, v)
        num = P.from_canon(o[..., :-1], n.out, n.batch, n.bsizes)
        den = P.from_canon(o[..., -1:], self.den, self.den_batch, self.den_bsizes)
        den = den * self.den_ratio if self.den_ratio != 1.0 else den
        if cast:
            num, den = num.to(n.out_dtype), den.to(self.den_dtype)
        return num, den


def normalizer(cs: fx.Node, low: P.Lowering, roles: tuple, out: fx.Node, opts):
    """Fuse a normalizer q . cumsum(k) of the same q and k into the numerator's call, or None."""
    q, k, v = roles
    rq, rk = root(q), root(k)
    for z in cs.graph.nodes:
        if z.target not in P.CUMSUM or z is cs or not isinstance(z.args[0], fx.Node) or root(z.args[0]) is not rk:
            continue
        read, dim = readout(z), _dim(z, 1)
        if read is None or not isinstance(dim, int):
            continue
        den, qd, lqd, lod, contracted = read
        t = dim % len(P.shape_of(z))
        if root(qd) is not rq or len(contracted) != 1 or t == contracted[0] or t not in lod:
            continue
        den_layout = P.Layout(lod, t, "den")
        if P.out_batch(den_layout, P.shape_of(den))[1] != low.bsizes:
            continue
        if P.inner_users(P.cone(den, {qd, z.args[0]}), den, [qd, z.args[0]]):
            continue
        try:
            return _fuse(low, roles, out, den, den_layout, opts)
        except Exception:  # not fusable: the normalizer stays as written
            continue
    return None


def _fuse(low: P.Lowering, roles: tuple, out: fx.Node, den: fx.Node, den_layout: P.Layout, opts):
    roots, _ = P.distinct([root(r) for r in roles])
    views, _ = P.extract(tuple(roles), roots)
    joint, _ = P.extract((out, den), roots)
    num = copy.copy(low)
    num.slots = (0, 1, 2, 3)
    lv = low.layouts[2]
    fused = NormalizedLowering(num, views, lv.labels.index(lv.feat), den_layout, P.shape_of(den), value_of(den).dtype)
    gen = torch.Generator().manual_seed(20261125)
    args = [P.probe(r, gen) for r in roots]
    with torch.no_grad():
        ref = joint(*args)
        ratio = P.fit_scale(ref[1], fused(*args, cast=False)[1].to(ref[1].dtype))
    if not math.isfinite(ratio) or ratio == 0:
        raise NearMiss("the normalizer is not a multiple of q . cumsum(k)")
    fused.den_ratio = ratio
    return P.prove(joint, roots, [fused], {}, opts), (out, den)

"""The ``cumsum`` spelling: prefix sums of outer products k (x) v along time, read by q.

    S = torch.cumsum(k[..., :, None] * v[..., None, :], dim=t);  o = einsum(q, S)

Structure proposes: a cumsum whose input is an outer product (a broadcast multiply, an
einsum or a matmul of a column by a row) and whose only reader contracts it with q over
the key dim (einsum, matmul, or multiply-and-sum). Dims are labelled by their position
in the outer product, so the cumsum dim is time, the dim only k spans is the key and the
dim only v spans is the value; a cumsum over the key or value dim is rejected. The region
from q, k, v to the read-out is then run on random float64 probes and the scale fitted; the
result is a linear_attn ``Recurrence`` (``layout``: a ``RegionLayout``), proven on fresh
probes (``verify.prove_region``) before the read-out is replaced (``rewrite.rewrite_form``).

A normalizer ``den = q . cumsum(k)`` of the same q and k (up to views) is fused into the
numerator's call (``extras["normalizer"]``): v gets a ones column, whose output is the
normalizer; the two are proven together. Only the two read-outs are replaced, so what the code does with them (``+ eps``,
``.clamp(min=eps)``, the division) stays as written and is reproduced exactly. A
normalizer that cannot be fused stays as written (it is linear in T already).
"""

from __future__ import annotations

import dataclasses
import math
import operator

import torch
import torch.fx as fx

from ..ir import Family, Layout, Normalizer, Recurrence, RegionLayout, out_batch
from ..report import Report
from ..rewrite import FormLowering, role_nodes
from ..verify import NearMiss, fit_scale, run_region
from . import _region as R
from ._graph import source_line, value_of

SPELLING = "cumsum"
MUL = {operator.mul, torch.mul, "mul", "__mul__"}
SUM = {torch.sum, "sum"}


def _broadcast_labels(x: fx.Node, full: tuple, labels: tuple) -> tuple | None:
    """Labels of ``x`` broadcast (right-aligned) against a value of shape ``full`` labelled ``labels``;
    None marks a size-1 dim that broadcasts."""
    sx = R.shape_of(x)
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
    sp = R.shape_of(p)
    if sp is None:
        return None
    lp = tuple(range(len(sp)))
    if p.target in MUL and len(p.args) == 2 and all(isinstance(a, fx.Node) for a in p.args):
        la, lb = (_broadcast_labels(a, sp, lp) for a in p.args)
        return None if la is None or lb is None else ((p.args[0], la), (p.args[1], lb))
    c = R.contraction(p)
    if c is None:
        return None
    sa, sb = R.sizes(c.a, c.la), R.sizes(c.b, c.lb)
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
    ss = R.shape_of(s)
    ls = tuple(range(len(ss)))
    c = R.contraction(r)
    if c is not None:
        q, lq, lx = (c.b, c.lb, c.la) if c.a is s else (c.a, c.la, c.lb)
        if q is s:
            return None
        to_s = dict(zip(lx, ls))
        sq = R.sizes(q, lq)
        so = R.sizes(r, c.lo)
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
        sr = R.shape_of(r)
        if not isinstance(q, fx.Node) or q is s or sr is None or len(sr) != len(ss) or red.target not in SUM:
            return None
        lq = _broadcast_labels(q, sr, ls)
        dims = R.dim_arg(red)
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        keep = red.kwargs.get("keepdim", red.args[2] if len(red.args) > 2 else False)
        if lq is None or len(dims) != 1:
            return None
        d = dims[0] % len(sr)
        lo = tuple(None if (i == d and keep) else x for i, x in enumerate(ls) if i != d or keep)
        return red, q, lq, lo, [ls[d]] if lq[d] is not None else []
    return None


def match(cs: fx.Node, opts, fuse: bool = True):
    """Bind, fit the scale and prove one cumsum region: (``Recurrence``, proof error, the output
    nodes it replaces), None if ``cs`` is no prefix sum of an outer product; NearMiss with the reason.
    ``fuse`` off: the numerator alone, no normalizer fused (``normalized`` reads it)."""
    p = cs.args[0]
    dim = R.dim_arg(cs)
    sp = R.shape_of(p)
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
    out_layout = Layout(lo, t, dv)
    batch, bsizes = out_batch(out_layout, R.shape_of(out))
    why = R.inner_users(R.cone(out, {q, k, v}), out, [q, k, v])
    if why:
        raise NearMiss(why)
    layout = RegionLayout(
        Layout(lq, t, dk),
        Layout(lk, t, dk),
        Layout(lv, t, dv),
        out_layout,
        batch,
        bsizes,
        out_dtype=value_of(out).dtype,
    )
    rec = Recurrence(Family.LINEAR_ATTN, q, k, v, layout=layout, spelling=SPELLING, source=source_line(cs))
    roles = role_nodes(rec)
    gm, _ = R.extract(out, roles)
    gen = torch.Generator().manual_seed(20261124)
    args = [R.probe_role(r, gen) for r in roles]
    ref, _ = run_region(gm, args, keep=())
    scale = fit_scale(ref, FormLowering(rec)(*args, cast=False).to(ref.dtype))
    if not math.isfinite(scale) or scale == 0:
        raise NearMiss("the read-out is not a multiple of S_t^T q_t")
    rec, err = R.prove(gm, [rec.replace(scale=scale)], opts)
    return (normalizer(cs, rec, out, opts) if fuse else None) or (rec, err, (out,))


def run_pass(graph: fx.Graph, opts, report: Report) -> None:
    """Find, prove and rewrite every cumsum-of-outer-products read by q in ``graph``."""
    for src, outs, kept in R.run_anchored(graph, R.CUMSUM, match, SPELLING, opts, report):
        if len(outs) > 1 and not kept:
            report.notes.append(f"cumsum at {src}: the normalizer is fused into the same call (v with a ones column)")


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


def normalizer(cs: fx.Node, rec: Recurrence, out: fx.Node, opts):
    """Fuse a normalizer q . cumsum(k) of the same q and k into the numerator's call: (the fused
    ``Recurrence``, its proof error, (numerator, normalizer)), or None."""
    q, k = rec.q, rec.k
    rq, rk = root(q), root(k)
    for z in cs.graph.nodes:
        if z.target not in R.CUMSUM or z is cs or not isinstance(z.args[0], fx.Node) or root(z.args[0]) is not rk:
            continue
        read, dim = readout(z), R.dim_arg(z)
        if read is None or not isinstance(dim, int):
            continue
        den, qd, lqd, lod, contracted = read
        t = dim % len(R.shape_of(z))
        if root(qd) is not rq or len(contracted) != 1 or t == contracted[0] or t not in lod:
            continue
        den_layout = Layout(lod, t, "den")
        if out_batch(den_layout, R.shape_of(den))[1] != rec.layout.bsizes:
            continue
        if R.inner_users(R.cone(den, {qd, z.args[0]}), den, [qd, z.args[0]]):
            continue
        try:
            return _fuse(rec, out, den, den_layout, opts)
        except Exception:  # not fusable: the normalizer stays as written
            continue
    return None


def _fuse(rec: Recurrence, out: fx.Node, den: fx.Node, den_layout: Layout, opts):
    roles = (rec.q, rec.k, rec.v)
    fused = rec.replace(q=root(rec.q), k=root(rec.k), v=root(rec.v))
    roots = role_nodes(fused)
    views, _ = R.extract(roles, roots)
    joint, _ = R.extract((out, den), roots)
    lv = rec.layout.v
    den_batch = out_batch(den_layout, R.shape_of(den))[0]
    norm = Normalizer(views, lv.labels.index(lv.feat), den_layout, den_batch, value_of(den).dtype)
    gen = torch.Generator().manual_seed(20261125)
    args = [R.probe_role(r, gen) for r in roots]
    ref, _ = run_region(joint, args, keep=())
    ratio = fit_scale(
        ref[1], FormLowering(fused.replace(extras={"normalizer": norm}))(*args, cast=False)[1].to(ref[1].dtype)
    )
    if not math.isfinite(ratio) or ratio == 0:
        raise NearMiss("the normalizer is not a multiple of q . cumsum(k)")
    fused = fused.replace(extras={"normalizer": dataclasses.replace(norm, ratio=ratio)})
    rec, err = R.prove(joint, [fused], opts)
    return rec, err, (out, den)

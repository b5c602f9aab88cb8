"""The ``parallel`` spelling with pairwise decays: the scores built elementwise before the time contraction,
``A_ts = sum_d q_td k_sd D_ts(d)``, with D = exp(G_t - G_s) and G a cumsum over time of log-gates:

    (q[:, :, None] * k[:, None] * torch.exp(G[:, :, None] - G[:, None])).sum(-1).tril() @ v   # gla (per key)
    torch.einsum("bthk,bshk,btshk->bhts", q, k, D)                                            # gla
    torch.einsum("bthn,bshn,bhts,bshp->bthp", C, B, torch.exp(segsum(A)), x)                   # simple_gla (SSD)

The form is read as a product of factors with einsum labels (a multi-operand einsum, or a sum over a
broadcast product, then a contraction with v): the factor holding t alone is q, s alone k, s and v's
feature v, t and s the decay. The decay's algebra is read from its graph: the exp of a difference of one
cumsum's values at t and at s, per key (the feature label among the decay's: gla) or per head
(simple_gla). Numbers decide the rest: the scale is fitted, and the binding proven against the op on fresh
probes (``_region.prove``) before the output is rewritten; a mask that is not causal, a sum instead of a
difference or a softmax between the scores and v fail the proof and leave the code as written.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import operator

import torch
import torch.fx as fx

from .. import costs
from ..ir import Family, Layout, Recurrence, RegionLayout, out_batch
from ..report import Match, Miss, Report
from ..rewrite import form_call, rewrite_form, role_nodes
from ..verify import NearMiss, fit_scale, run_region
from ._graph import source_line, value_of
from ._region import (
    CUMSUM,
    EINSUM,
    _einsum_labels,
    cone,
    constant_nodes,
    contraction,
    extract,
    inner_users,
    probe_role,
    prove,
    shape_of,
)
from .parallel import _undo_views

SPELLING = "parallel"
log = logging.getLogger("fla_compile")
MUL = {operator.mul, torch.mul, "mul", "__mul__"}
SUB = {operator.sub, torch.sub, "sub", "__sub__"}
SUM = {torch.sum, "sum"}
EXP = {torch.exp, "exp"}
UNARY_VIEWS = {"contiguous", "float", "clone"}
# linear, shape-keeping steps between the summed scores and the value contraction (a causal mask, a scale)
MASKING = {"tril", "triu", torch.tril, torch.triu, "masked_fill", torch.masked_fill, torch.where, "where"}


class NotAForm(NearMiss):
    """A product-sum that is no pairwise form (the scores alone, before the contraction with v): not a miss."""


@dataclasses.dataclass
class Form:
    """A pairwise form: its output node and labels, and its factors (node, labels) including v."""

    out: fx.Node
    lo: tuple
    factors: list


def _bcast(node, labels: tuple) -> tuple:
    """The labels of ``node`` broadcast (right-aligned) into a value labelled ``labels``; size-1 dims: None."""
    shape = shape_of(node)
    own = labels[len(labels) - len(shape) :]
    return tuple(x if s != 1 else None for x, s in zip(own, shape))


def _leaves(node: fx.Node, labels: tuple, const: set) -> list:
    """The factors of a product tree (multiplications, broadcasting), with their labels."""
    if node.target in MUL and node not in const and len(node.args) == 2 and not node.kwargs:
        out = []
        for a in node.args:
            if isinstance(a, fx.Node):
                if shape_of(a) is None:
                    return [(node, labels)]
                out += _leaves(a, _bcast(a, labels), const)
        return out
    return [(node, labels)]


def _index_back(idx, labels: tuple, rank_in: int) -> tuple | None:
    """The labels of ``x`` for ``x[idx]`` labelled ``labels``, when idx holds only ``:``, None and ``...``."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    if not all(e is None or e is Ellipsis or e == slice(None) for e in idx):
        return None
    n_real = sum(e is not None and e is not Ellipsis for e in idx)
    entries = []
    for e in idx:
        entries += [slice(None)] * (rank_in - n_real) if e is Ellipsis else [e]
    back, pos = [], 0
    for e in entries:
        if e is not None:
            back.append(labels[pos])
        pos += 1
    return tuple(back) + labels[pos:]


def _strip(node: fx.Node, labels: tuple) -> tuple[fx.Node, tuple]:
    """Walk back from ``node`` through views that add size-1 dims, transposes and casts, carrying labels."""
    while True:
        node, labels = _undo_views(node, labels)
        t, a0 = node.target, node.args[0] if node.args else None
        if not isinstance(a0, fx.Node) or shape_of(a0) is None:
            return node, labels
        if t in (torch.unsqueeze, "unsqueeze") and len(node.args) == 2:
            d = node.args[1] % len(labels)
            labels = labels[:d] + labels[d + 1 :]
        elif t is operator.getitem and len(node.args) == 2:
            back = _index_back(node.args[1], labels, len(shape_of(a0)))
            if back is None or len(back) != len(shape_of(a0)):
                return node, labels
            labels = back
        elif t in UNARY_VIEWS and len(node.args) == 1:
            pass
        else:
            return node, labels
        node = a0


def _through(p: fx.Node, const: set, ops: set) -> fx.Node:
    """Walk back from ``p`` through shape-keeping steps of ``ops`` whose one runtime input it is (a mask,
    a scale by a constant, a cast)."""
    while p.op in ("call_function", "call_method"):
        runtime = [a for a in p.all_input_nodes if a not in const]
        if len(runtime) != 1 or shape_of(runtime[0]) != shape_of(p) or p.target not in ops | UNARY_VIEWS:
            return p
        p = runtime[0]
    return p


def _term(node: fx.Node, lo: tuple, const: set) -> list | None:
    """The factors of ``node`` labelled so that its output is ``lo``: a multi-operand einsum or a sum
    over a broadcast product."""
    if node.target in EINSUM and isinstance(node.args[0], str):
        ops = node.args[1:]
        ops = tuple(ops[0]) if len(ops) == 1 and isinstance(ops[0], (list, tuple)) else ops
        if len(ops) < 3 or not all(isinstance(o, fx.Node) and shape_of(o) is not None for o in ops):
            return None
        parsed = _einsum_labels(node.args[0], [shape_of(o) for o in ops])
        if parsed is None:
            return None
        labels, out = parsed
        ren = dict(zip(out, lo))  # the einsum's output labels -> ours
        return [(o, tuple(ren.get(x, ("e", x)) for x in la)) for o, la in zip(ops, labels)]
    if node.target in SUM and node.args and isinstance(node.args[0], fx.Node):
        x = node.args[0]
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if shape_of(x) is None or node.kwargs.get("keepdim") or (len(node.args) > 2 and node.args[2]):
            return None
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        r = len(shape_of(x))
        red = {d % r for d in dims}
        if not red or len(lo) != r - len(red):
            return None
        it = iter(lo)
        labels = tuple(("sum", i) if i in red else next(it) for i in range(r))
        return _leaves(x, labels, const)
    return None


def find(node: fx.Node, const: set) -> Form | None:
    """The pairwise form computed at ``node``, or None."""
    shape = shape_of(node)
    if shape is None or node.op not in ("call_function", "call_method"):
        return None
    lo = tuple(("o", i) for i in range(len(shape)))
    factors = _term(node, lo, const)
    if factors is not None:
        return Form(node, lo, factors)
    c = contraction(node)
    if c is None:
        return None
    for p, v, lp, lv in ((c.a, c.b, c.la, c.lb), (c.b, c.a, c.lb, c.la)):
        term = _through(p, const, MASKING | MUL)
        factors = _term(term, lp, const) if shape_of(term) == shape_of(p) else None
        if factors is not None:
            return Form(node, c.lo, factors + [(v, lv)])
    return None


def _gate(decay: fx.Node, dl: tuple, stops: set, const: set, t, s):
    """(g, its labels or None, the time dims to try) of a decay exp(G_t - G_s), G = cumsum(g): read
    from the graph (a difference of one cumsum's values, the t side first), else the cumsum's input."""
    sums = [n for n in cone(decay, stops) if n.target in CUMSUM and n not in const]
    if len(sums) != 1:
        raise NearMiss("the decay holds no single cumulative sum of runtime values")
    G = sums[0]
    node, labels = _through(decay, const, EXP | MASKING | MUL), dl
    if node.target in SUB and len(node.args) == 2 and shape_of(node) == shape_of(decay):
        (a, la), (b, lb) = (_strip(x, _bcast(x, labels)) for x in node.args)
        if a is G and b is G:
            if t not in la or s not in lb:
                raise NearMiss("the decay is exp(G_s - G_t): a growth, not a decay")
            dim = G.args[1] if len(G.args) > 1 else G.kwargs.get("dim")
            if isinstance(dim, int) and la[dim % len(la)] == t:
                return G.args[0], la, [dim % len(la)]
    x = G.args[0]
    T = shape_of(G)[[i for i, lab in enumerate(dl) if lab == t][0]] if t in dl else None
    while isinstance(x, fx.Node) and shape_of(x) is not None and sum(n == T for n in shape_of(x)) >= 2:
        runtime = [a for a in x.all_input_nodes if a not in const]
        if len(runtime) != 1:
            raise NearMiss("the cumsum's input mixes several runtime values")
        x = runtime[0]
    x, _ = _strip(x, tuple(range(len(shape_of(x)))))
    return x, None, [i for i, n in enumerate(shape_of(x)) if n == T]


def _roles(form: Form, const: set, summed: set, sz: dict):
    """(v, q, k, decay factors, t, s, f, d): the one reading of the factors as v, q, k and a decay."""
    runtime = [(n, la) for n, la in form.factors if n not in const]
    for v, lv in reversed(runtime):  # the value contraction's v is the last factor
        ss = [x for x in lv if x in summed]
        feats = [x for x in form.lo if x in lv and sz.get(x, 1) > 1]
        if len(ss) != 1 or not feats:
            continue
        s, f = ss[0], feats[-1]
        for t in [x for x in form.lo if x not in lv and sz.get(x) == sz[s]]:
            rest = [(n, la) for n, la in runtime if n is not v]
            qs = [(n, la) for n, la in rest if t in la and s not in la]
            ks = [(n, la) for n, la in rest if s in la and t not in la]
            ds = [(n, la) for n, la in rest if s in la and t in la]
            if len(qs) != 1 or len(ks) != 1 or len(ds) != 1 or len(rest) != 3:
                continue
            feat = [x for x in qs[0][1] if x in ks[0][1] and x in summed and x != s]
            if len(feat) == 1:
                return (v, lv), qs[0], ks[0], ds[0], t, s, f, feat[0]
    raise NotAForm("the factors are not one q, one k, one v and one decay")


def match(form: Form, const: set, opts) -> tuple[Recurrence, float]:
    """Bind the roles of ``form``, read its decay, fit the scale and prove it: the Recurrence and its error."""
    sz = {}
    for n, labels in form.factors + [(form.out, form.lo)]:
        sz.update({lab: d for lab, d in zip(labels, shape_of(n)) if lab is not None and d != 1})
    summed = {lab for _, labels in form.factors for lab in labels if lab is not None and lab not in form.lo}
    (v, lv), (qf, lqf), (kf, lkf), (dn, dl), t, s, f, d = _roles(form, const, summed, sz)
    q, lq = _strip(qf, lqf)
    k, lk = _strip(kf, lkf)
    v, lv = _strip(v, lv)
    g, lg, gdims = _gate(dn, dl, {q, k, v}, const, t, s)
    per_key = d in dl
    lo = Layout(form.lo, t, f)
    batch, bsizes = out_batch(lo, shape_of(form.out))
    lay = RegionLayout(
        Layout(lq, t, d), Layout(lk, s, d), Layout(lv, s, f), lo, batch, bsizes, out_dtype=value_of(form.out).dtype
    )
    base = Recurrence(
        Family.GLA if per_key else Family.SIMPLE_GLA, q, k, v, gate=g, spelling=SPELLING, source=source_line(form.out)
    )
    if per_key:
        if lg is None:
            raise NearMiss("the per-key decay is not exp(G_t - G_s) of one cumsum G")
        tries = [base.replace(layout=dataclasses.replace(lay, gate_layout=Layout(lg, t, d)))]
        span = (-min(1.0, 20.0 / sz[t]), 0.0)  # |G| <= 20: exp of any difference stays finite
    else:
        tries = [base.replace(layout=dataclasses.replace(lay, gate_dim=i)) for i in gdims]
        span = "gate"
    region = cone(form.out, {q, k, v, g})
    why = inner_users(region, form.out, [q, k, v, g])
    if why:
        raise NearMiss(why)
    gm, _ = extract(form.out, role_nodes(base))
    gen = torch.Generator().manual_seed(20261130)
    args = [probe_role(r, gen, span if r is g else None) for r in role_nodes(base)]
    ref = run_region(gm, args, keep=())[0]
    scaled = []
    for rec in tries:
        try:
            c = fit_scale(ref.double(), form_call(rec, *args).double())
        except RuntimeError:
            continue
        if math.isfinite(c) and c != 0:
            scaled.append(rec.replace(scale=c))
    if not scaled:
        raise NearMiss("no binding of the pairwise form runs the op")
    return prove(gm, scaled, opts, {g: span})


def run_pass(graph: fx.Graph, opts, report: Report) -> None:
    """Find, prove and rewrite every pairwise form of ``graph``."""
    tried: set = set()
    while True:  # a rewrite removes nodes: look again
        const = constant_nodes(graph)
        form = next((f for n in graph.nodes if n not in tried for f in [find(n, const)] if f is not None), None)
        if form is None:
            return
        tried.add(form.out)
        _one(graph, form, const, opts, report)


def _one(graph: fx.Graph, form: Form, const: set, opts, report: Report) -> None:
    src = source_line(form.out)
    try:
        rec, err = match(form, const, opts)
    except NotAForm:
        return
    except NearMiss as e:
        report.misses.append(Miss(SPELLING, f"pairwise form: {e}", src, e.grade))
        return
    except Exception as e:  # noqa: BLE001 - an unforeseen layout: leave it as written
        report.misses.append(Miss(SPELLING, f"pairwise form not analysed: {type(e).__name__}: {e}", src))
        return
    kept, shape = costs.decide(opts, rec.family.value, SPELLING, costs.form_shape, rec, form.out)
    if not kept:
        rewrite_form((form.out,), rec)
    report.matches.append(Match(rec.family.value, SPELLING, src, rec.op_name, err, kept, shape))

"""The ``parallel`` spelling: the masked quadratic form ``((q k^T) * M) v``.

Structure only proposes: a contraction of a [.., T, T] matrix with v (the value
contraction) whose matrix comes elementwise from another contraction (the scores q k^T), or from one
einsum of q, k and the mask (``einsum("bhqd,bhkd,hqk->bhqk", q, k, M)``, FLA's naive retention).
Dims are tracked as einsum labels through both contractions, so matmul, bmm and einsum
spellings and [B,T,H,D] / [B,H,T,D] layouts read the same. Numbers decide the rest: the
region (the sub-DAG from the role nodes to the output) runs on random float64 probes; the
ratio of the masked to the raw scores is the mask M, which must not depend on q, k
(softmax does), must be zero above the diagonal (causal) and a constant on it (the scale);
then M is a constant (linear_attn), gamma^{i-j} (retention) or exp(c_i - c_j) of a cumsum
in the region (simple_gla, with the cumsum's input as the gate). A linear_attn whose q and k are
factored per-key decays, ``(q e^G)(k e^-G)^T`` with G a cumsum over time of per-key log-gates g, is gla
on q, k, v, g (``per_key_gla``: proven anew; its factors overflow at long T, the op does not). The result is a
``Recurrence`` (roles: nodes; ``layout``: a ``RegionLayout``), proven on fresh probes against
the family op (``verify.prove_region``) before the output node is replaced by one call
(``rewrite.rewrite_form``).

Softmax attention (scores through softmax or exp, sigmoid attention, and
``scaled_dot_product_attention``, ``flex_attention``) is recognised and reported as "not a recurrence", for
information: never rewritten, and no error under ``strict``.

The labels of contractions, the region extraction and the proof are shared with the ``cumsum``
spelling (``_region.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..ir import Family, Layout, Recurrence, RegionLayout, out_batch
from ..numerics import rel_err
from ..report import Grade, Miss, Report
from ..rewrite import head_canon, role_nodes, to_canon
from ..verify import TOL, NearMiss, NotARecurrence, run_region
from ._graph import source_line, value_of
from ._region import (
    CUMSUM,
    EINSUM,
    KEPT,
    Contraction,
    _einsum_labels,
    cone,
    constant_nodes,
    contraction,
    extract,
    inner_users,
    probe_role,
    prove,
    shape_of,
    sizes,
    take,
)

SPELLING = "parallel"
log = logging.getLogger("fla_compile")
SOFTMAX = {torch.softmax, F.softmax, "softmax", torch.exp, "exp", F.log_softmax, "log_softmax"}
SIGMOID = {torch.sigmoid, F.sigmoid, "sigmoid"}
UNSQUEEZE = {operator.getitem, torch.unsqueeze, "unsqueeze", "view", "reshape", torch.reshape}


# ---------------------------------------------------------------- the parallel form
@dataclasses.dataclass
class Candidate:
    out: fx.Node  # the value contraction
    scores: fx.Node  # the score contraction q k^T
    masked: fx.Node  # the score operand of the value contraction
    q: fx.Node
    k: fx.Node
    v: fx.Node
    layouts: tuple  # Layout of q, k, v (labels of the value contraction)
    out_layout: Layout
    t: object
    s: object
    T: int
    raw_eq: str | None = None  # the scores are masked in their own einsum: q k^T alone, by this equation


def _letters(*label_tuples) -> list[str]:
    """Einsum terms over letters for label tuples (any hashable labels)."""
    names: dict = {}
    return ["".join(names.setdefault(x, chr(97 + len(names))) for x in labels) for labels in label_tuples]


def _masked_scores(n: fx.Node) -> tuple[Contraction, str] | None:
    """A three-operand einsum whose third factor only multiplies elementwise (its labels all in the output,
    none summed), ``einsum("bhqd,bhkd,hqk->bhqk", q, k, M)`` as FLA's naive retention writes it: the
    contraction of the other two (the raw scores) and its equation."""
    if n.target not in EINSUM or n.kwargs or not n.args or not isinstance(n.args[0], str):
        return None
    ops = n.args[1:]
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = tuple(ops[0])
    if len(ops) != 3 or not all(isinstance(o, fx.Node) for o in ops):
        return None
    shapes = [shape_of(o) for o in ops]
    parsed = _einsum_labels(n.args[0], shapes) if None not in shapes else None
    if parsed is None:
        return None
    labels, lo = parsed
    for m in range(3):
        a, b = (i for i in range(3) if i != m)
        if set(labels[m]) <= set(lo) and len(set(labels[m])) == len(labels[m]):
            la, lb = labels[a], labels[b]
            ta, tb, to = _letters(la, lb, lo)
            return Contraction(ops[a], ops[b], la, lb, lo), f"{ta},{tb}->{to}"
    return None


def _scores_of(p: fx.Node, T: int, depth: int = 12) -> tuple[fx.Node, Contraction, str | None] | None:
    """The nearest contraction upstream of ``p`` with two free dims of size T (the scores), and the
    equation of q k^T where the scores node also applies the mask (``_masked_scores``)."""
    frontier, seen = [p], set()
    for _ in range(depth):
        nxt = []
        for n in frontier:
            if n in seen:
                continue
            seen.add(n)
            c = contraction(n)
            masked = None if c is not None else _masked_scores(n)
            if masked is not None:
                c = masked[0]
            if c is not None:
                free_a = [x for x in c.la if x not in c.lb and x in c.lo]
                free_b = [x for x in c.lb if x not in c.la and x in c.lo]
                so, sa = sizes(n, c.lo), sizes(c.a, c.la)
                summed = [x for x in c.la if x in c.lb and x not in c.lo and sa[x] > 1]  # not an outer product
                if len(free_a) == len(free_b) == len(summed) == 1 and so[free_a[0]] == so[free_b[0]] == T:
                    return n, c, masked[1] if masked else None
            nxt.extend(a for a in n.all_input_nodes if shape_of(a) is not None)
        frontier = nxt
    return None


def candidates(graph: fx.Graph) -> list[Candidate]:
    """Value contractions over a T x T matrix that comes from a score contraction."""
    found = []
    for node in graph.nodes:
        c = contraction(node)
        if c is None:
            continue
        for p, v, lp, lv in ((c.a, c.b, c.la, c.lb), (c.b, c.a, c.lb, c.la)):
            cand = _candidate(node, c, p, v, lp, lv)
            if cand is not None:
                found.append(cand)
                break
    return found


def _candidate(node, c, p, v, lp, lv) -> Candidate | None:
    contracted = [x for x in lp if x in lv and x not in c.lo]
    p_free = [x for x in lp if x not in lv]
    v_free = [x for x in lv if x not in lp]
    if len(contracted) != 1 or len(p_free) != 1 or len(v_free) != 1:
        return None
    s, t, f = contracted[0], p_free[0], v_free[0]
    sp = sizes(p, lp)
    if sp[s] != sp[t] or t not in c.lo or f not in c.lo:
        return None
    found = _scores_of(p, sp[s])
    if found is None:
        return None
    scores, sc, raw_eq = found
    ns, np_ = len(sc.lo), len(lp)
    if ns > np_:
        return None
    to_p = dict(zip(sc.lo, lp[np_ - ns :]))  # score labels -> labels of the masked scores (right-aligned)
    sa = sizes(sc.a, sc.la)
    summed = [x for x in sc.la if x in sc.lb and x not in sc.lo]
    (d,) = [x for x in summed if sa[x] > 1]  # _scores_of found exactly one
    d_new = ("qk", d)
    to_p.update({x: None for x in summed if x != d})  # size-1 contracted dims: dropped
    to_p[d] = d_new

    def relabel(labels):
        return tuple(to_p.get(x, "?") for x in labels)

    la, lb = relabel(sc.la), relabel(sc.lb)
    if "?" in la or "?" in lb:
        return None
    qa = t in la and s in lb
    qb = s in la and t in lb
    if not (qa or qb):
        return None
    (q, lq), (k, lk) = ((sc.a, la), (sc.b, lb)) if qa else ((sc.b, lb), (sc.a, la))
    return Candidate(
        out=node,
        scores=scores,
        masked=p,
        q=q,
        k=k,
        v=v,
        layouts=(Layout(lq, t, d_new), Layout(lk, s, d_new), Layout(lv, s, f)),
        out_layout=Layout(c.lo, t, f),
        t=t,
        s=s,
        T=sp[s],
        raw_eq=raw_eq,
    )


def _gate_source(cand: Candidate, const: set, T: int) -> tuple[fx.Node, list[int]] | None:
    """The input of a cumsum of runtime values that feeds the mask (the log-gates), with its
    candidate time dims; segsum-style [.., T, T] expansions are walked back to the [.., T] source."""
    region = cone(cand.masked, {cand.q, cand.k, cand.v})
    sums = [n for n in region if n.target in CUMSUM and n not in const]
    if not sums:
        return None
    if len(sums) > 1:
        raise NearMiss("the mask holds several cumulative sums of runtime values")
    cs = sums[0]
    x = cs.args[0]
    dim = cs.args[1] if len(cs.args) > 1 else cs.kwargs.get("dim")
    shape = shape_of(x)
    if shape is None or not isinstance(dim, int):
        raise NearMiss("the cumsum of the gate has no static shape or dim")
    direct = True
    while sum(s == T for s in shape) >= 2:
        runtime = [a for a in x.all_input_nodes if a not in const]
        if len(runtime) != 1:
            raise NearMiss(f"the cumsum's input '{x.name}' mixes several runtime values")
        x, direct = runtime[0], False
        shape = shape_of(x)
        if shape is None:
            raise NearMiss("the gate has no static shape")
    if direct:
        return x, [dim % len(shape)]
    while x.target in UNSQUEEZE and len(x.all_input_nodes) == 1 and 1 in shape:  # x[..., None] -> x
        inner = x.all_input_nodes[0]
        if shape_of(inner) is None or math.prod(shape_of(inner)) != math.prod(shape):
            break
        x, shape = inner, shape_of(inner)
    return x, [i for i, s in enumerate(shape) if s == T]


def _mask(cand: Candidate, outs, batch, bsizes, raw=None) -> torch.Tensor:
    """M = masked / raw scores, laid out as [N, T, S] (N: the output's batch dims, folded); ``raw``: the raw
    scores where the graph has none (``Candidate.raw_eq``)."""
    a, p = (outs[cand.scores] if raw is None else raw), outs[cand.masked]
    if not (isinstance(a, torch.Tensor) and isinstance(p, torch.Tensor)):
        raise NearMiss("the scores are not tensors")
    a = a.expand_as(p) if a.shape != p.shape else a
    m = p / a
    c = contraction(cand.out)
    labels = c.la if c.a is cand.masked else c.lb
    return to_canon(m, Layout(labels, cand.t, cand.s), batch, bsizes)[0].transpose(0, 1)


def classify(m1: torch.Tensor, m2: torch.Tensor) -> str:
    """'causal', or the reason the mask is not a causal decay."""
    if rel_err(m1, m2) > TOL:
        return "the masked scores are not linear in q k^T (softmax or another nonlinearity of the scores)"
    T = m1.shape[-1]
    upper = torch.ones(T, T, dtype=torch.bool, device=m1.device).triu(1)
    up, low = m1[..., upper], m1[..., ~upper]
    big = m1.abs().max().item()
    if not math.isfinite(big) or big == 0:
        raise NearMiss("the mask is zero or not finite")
    tiny = 1e-9 * big
    if (up.abs() <= tiny).all():
        diag = m1.diagonal(dim1=-2, dim2=-1)
        if (diag.abs() <= tiny).any():
            return "the mask is zero on the diagonal (strictly causal), which no family reads"
        return "causal"
    lower_strict = m1[..., torch.ones(T, T, dtype=torch.bool, device=m1.device).tril(-1)]
    if (lower_strict.abs() <= tiny).all():
        return "anti-causal mask (triu): the scores are masked below the diagonal"
    if (up.abs() > tiny).all() and (low.abs() > tiny).all():
        return "no causal mask: every score is kept (non-causal attention)"
    return "the mask is not causal: it keeps scores above the diagonal"


def _decay_source(cand: Candidate, T: int) -> fx.Node | None:
    """The one runtime value (not q, k, v) the mask reads, if it may be a per-head gamma or
    log-gamma (a parameter or buffer of RetNet-style code): no dim of size T."""
    leaves = [n for n in cone(cand.out, {cand.q, cand.k, cand.v}) if n.op in ("placeholder", "get_attr")]
    shape = shape_of(leaves[0]) if len(leaves) == 1 else None
    if shape is None or T in shape or not value_of(leaves[0]).is_floating_point():
        return None
    return leaves[0]


DECAY_SPANS = ((0.6, 0.95), (-0.3, -0.01))  # probes for a gamma, then for a log-gamma


def match(graph: fx.Graph, cand: Candidate, const: set, opts, alone: bool = True) -> tuple[Recurrence, float]:
    """Classify and prove one candidate: its ``Recurrence`` and the proof's error; NearMiss with the reason.
    ``alone`` off: the masked scores may have other users (a normalizer, see ``normalized``)."""
    region = cone(cand.out, {cand.q, cand.k, cand.v})
    for n in region:
        if n.target in SOFTMAX | SIGMOID and cand.scores in cone(n, {cand.q, cand.k, cand.v}):
            name = getattr(n.target, "__name__", n.target)
            kind = "sigmoid" if n.target in SIGMOID else "softmax"
            raise NotARecurrence(
                f"{kind} attention: not a linear recurrence (the scores pass through {name} at '{n.name}')"
            )
    why = inner_users(region, cand.out, [cand.q, cand.k, cand.v]) if alone else None
    if why:
        raise NearMiss(why)
    gate = _gate_source(cand, const, cand.T)
    decay = None if gate else _decay_source(cand, cand.T)
    base = Recurrence(
        Family.LINEAR_ATTN,
        cand.q,
        cand.k,
        cand.v,
        gate=gate[0] if gate else None,
        decay=decay,
        spelling=SPELLING,
        source=source_line(cand.out),
    )
    gm, env = extract(cand.out, role_nodes(base))
    spans = [{gate[0]: "gate"}] if gate else [{decay: s} for s in DECAY_SPANS] if decay is not None else [{}]
    reasons = []
    for span in spans:
        try:
            rec, err = _classify_and_prove(cand, gm, env, base, gate[1] if gate else [], span, opts)
        except NearMiss as e:
            reasons.append(str(e))
            continue
        return (per_key_gla(cand, rec, opts) if rec.family == Family.LINEAR_ATTN else None) or (rec, err)
    raise NearMiss(
        reasons[0] if len(set(reasons)) == 1 else "; ".join(f"probe {i}: {r}" for i, r in enumerate(reasons))
    )


def _classify_and_prove(cand, gm, env, base: Recurrence, gate_dims: list, span: dict, opts):
    """Read the family, scale and decay of ``base``'s region from its mask, then prove it."""
    T, lo = cand.T, cand.out_layout
    roles = role_nodes(base)
    batch, bsizes = out_batch(lo, shape_of(cand.out))
    gen = torch.Generator().manual_seed(20261123)
    args1 = [probe_role(r, gen, span.get(r)) for r in roles]
    args2 = [a if r in span else probe_role(r, gen) for r, a in zip(roles, args1)]  # same gate, new q, k, v
    keep = [env[cand.scores], env[cand.masked]]
    o1, rec1 = run_region(gm, args1, keep)
    _, rec2 = run_region(gm, args2, keep)
    if not torch.isfinite(o1).all():
        raise NearMiss("the region gives NaN or inf on random inputs")
    outs1 = {n: rec1[env[n]] for n in (cand.scores, cand.masked)}
    outs2 = {n: rec2[env[n]] for n in (cand.scores, cand.masked)}
    raw1 = raw2 = None
    if cand.raw_eq is not None:  # q k^T by itself, from the probes of q and k (in the contraction's order)
        sc = _scores_of(cand.masked, T)[1]
        raw1, raw2 = (torch.einsum(cand.raw_eq, a[roles.index(sc.a)], a[roles.index(sc.b)]) for a in (args1, args2))
    m1, m2 = _mask(cand, outs1, batch, bsizes, raw1), _mask(cand, outs2, batch, bsizes, raw2)
    kind = classify(m1, m2)
    if kind != "causal":
        raise NearMiss(kind)
    c = m1.diagonal(dim1=-2, dim2=-1)
    scale = c.flatten()[0].item()
    if rel_err(c, torch.full_like(c, scale)) > TOL:
        raise NearMiss("the mask's diagonal is not one constant scale")
    lay = RegionLayout(*cand.layouts, lo, batch, bsizes, out_dtype=value_of(cand.out).dtype)
    rec = base.replace(scale=scale, layout=lay)
    if base.gate is not None:
        tries = [rec.replace(family=Family.SIMPLE_GLA, layout=dataclasses.replace(lay, gate_dim=d)) for d in gate_dims]
    elif base.decay is None and rel_err(m1.tril(), torch.full_like(m1, scale).tril()) <= TOL:
        tries = [rec]
    else:
        gamma = m1[..., 1, 0] / scale if T > 1 else None
        if gamma is None or not (gamma > 0).all():
            raise NearMiss("the mask is causal but not a positive decay gamma^(i-j)")
        if base.decay is None:
            logs = tuple(gamma.reshape(-1).log().tolist())  # floats: a tensor constant would trip fake tracing
            tries = [rec.replace(family=Family.RETENTION, decay=logs)]
        else:
            x = head_canon(args1[roles.index(base.decay)], bsizes)
            kinds = [k for k, ref in (("gamma", x), ("log", x.exp())) if rel_err(gamma, ref) <= TOL]
            if not kinds:
                raise NearMiss(f"the mask reads '{base.decay.name}', which is neither the decay gamma nor its log")
            tries = [rec.replace(family=Family.RETENTION, layout=dataclasses.replace(lay, decay_form=kinds[0]))]
    return prove(gm, tries, opts, span)


# ---------------------------------------------------------------- per-key decays (gla)
MUL = {operator.mul, torch.mul, "mul", "__mul__"}
DIV = {operator.truediv, torch.div, torch.true_divide, "div", "__truediv__"}
NEG = {operator.neg, torch.neg, "neg", "__neg__"}
EXP = {torch.exp, "exp"}


def _dims(node: fx.Node) -> tuple:
    """The dim arguments of a transpose / permute node."""
    args = node.args[1:] or tuple(node.kwargs.values())
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else tuple(args)


def _undo_views(node: fx.Node, labels: tuple) -> tuple[fx.Node, tuple]:
    """Walk back from ``node`` through transposes, permutes and same-shape casts, carrying its labels
    to the value they view."""
    while isinstance(node, fx.Node) and node.args and isinstance(node.args[0], fx.Node):
        t, n = node.target, len(labels)
        if t in ("transpose", torch.transpose) and len(_dims(node)) == 2:
            a, b = (d % n for d in _dims(node))
            labels = tuple(labels[b] if i == a else labels[a] if i == b else x for i, x in enumerate(labels))
        elif t in ("permute", torch.permute) and len(_dims(node)) == n:
            back = [None] * n
            for i, d in enumerate(_dims(node)):
                back[d % n] = labels[i]
            labels = tuple(back)
        elif not (t in ("contiguous", "float") and len(node.args) == 1 and not node.kwargs):
            break
        node = node.args[0]
    return node, labels


def _exp_factor(node: fx.Node, sign: int):
    """(the role, G) of ``role * exp(sign * G)`` (``role / exp(G)`` for sign -1), shapes equal."""
    if not isinstance(node, fx.Node) or len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    pairs = [(a, b), (b, a)] if node.target in MUL else [(a, b)] if node.target in DIV and sign < 0 else []
    for role, e in pairs:
        if not (isinstance(role, fx.Node) and isinstance(e, fx.Node) and e.target in EXP and len(e.args) == 1):
            continue
        x = e.args[0]
        if node.target in MUL and sign < 0:
            x = x.args[0] if isinstance(x, fx.Node) and x.target in NEG and len(x.args) == 1 else None
        shapes = {shape_of(role), shape_of(node), shape_of(x) if isinstance(x, fx.Node) else None}
        if isinstance(x, fx.Node) and len(shapes) == 1 and None not in shapes:
            return role, x
    return None


def _unscaled(node) -> tuple:
    """(``node`` without multiplications or divisions by numbers, their product): ``q * e^G * K ** -0.5``
    is q e^G scaled, the number moves into the binding's scale (and the proof checks it)."""
    factor = 1.0
    while isinstance(node, fx.Node) and (node.target in MUL or node.target in DIV) and len(node.args) == 2:
        a, b = node.args
        if node.target in MUL and isinstance(a, (int, float)) and not isinstance(a, bool):
            a, b = b, a
        if node.kwargs or not isinstance(a, fx.Node) or not isinstance(b, (int, float)) or isinstance(b, bool):
            break
        if b == 0 or shape_of(a) != shape_of(node):
            break
        factor = factor * b if node.target in MUL else factor / b
        node = a
    return node, factor


def per_key_gla(cand: Candidate, lin: Recurrence, opts) -> tuple[Recurrence, float] | None:
    """GLA's factored parallel form: the proven linear_attn ``lin`` of ``(q e^G)(k e^-G)^T``, masked
    causally, with G the cumsum over time of per-key log-gates g, is gla on q, k, v, g (exact where the
    factors overflow, as they do at long T). None: not that form (``lin`` stands); it is proven anew."""
    lq, lk = cand.layouts[0].labels, cand.layouts[1].labels
    qm, lq = _undo_views(cand.q, lq)
    km, lk = _undo_views(cand.k, lk)
    (qm, cq), (km, ck) = _unscaled(qm), _unscaled(km)
    fq, fk = _exp_factor(qm, 1), _exp_factor(km, -1)
    if fq is None or fk is None or fq[1] is not fk[1] or fq[1].target not in CUMSUM:
        return None
    G = fq[1]
    g, dim = G.args[0], G.args[1] if len(G.args) > 1 else G.kwargs.get("dim")
    feat = cand.layouts[0].feat
    if not isinstance(g, fx.Node) or shape_of(g) != shape_of(G) or not isinstance(dim, int):
        return None
    if lq[dim % len(lq)] != cand.t or lk[dim % len(lk)] != cand.s or feat not in lq or lq.count(feat) != 1:
        return None
    (q, _), (k, _) = fq, fk
    lay = dataclasses.replace(
        lin.layout,
        q=Layout(lq, cand.t, feat),
        k=Layout(lk, cand.s, feat),
        gate_layout=Layout(lq, cand.t, feat),
    )
    rec = lin.replace(family=Family.GLA, q=q, k=k, gate=g, layout=lay, scale=lin.scale * cq * ck)
    try:
        region = cone(cand.out, set(role_nodes(rec)))
        why = inner_users(region, cand.out, role_nodes(rec))
        if why:
            raise NearMiss(why)
        gm, _ = extract(cand.out, role_nodes(rec))
        span = (-min(1.0, 20.0 / cand.T), 0.0)  # |G| <= 20: the factors e^{+-G} stay finite at any T
        return prove(gm, [rec], opts, {g: span})
    except NearMiss as e:
        log.debug("parallel at %s: per-key decays not proven (%s); matched as linear_attn", lin.source, e)
        return None


_ATTENTION_OPS = ("scaled_dot_product_attention", "flex_attention")


def _sdpa_misses(graph: fx.Graph, report: Report) -> None:
    """Softmax attention called as one op (``F.scaled_dot_product_attention``, ``flex_attention``):
    reported, for information."""
    for n in graph.nodes:
        name = str(getattr(n.target, "__name__", n.target))
        op = next((a for a in _ATTENTION_OPS if a in name), None) if n.op == "call_function" else None
        if op is not None:
            reason = f"softmax attention: not a linear recurrence ({op} at '{n.name}')"
            report.misses.append(Miss(SPELLING, reason, source_line(n), Grade.NOT_A_RECURRENCE))


def run_pass(graph: fx.Graph, opts, report: Report) -> None:
    """Find, prove and rewrite every masked quadratic form of ``graph``."""
    _sdpa_misses(graph, report)
    tried: set = set()
    while True:  # a rewrite changes the graph (a later form may read an earlier one): look again
        try:
            todo = [c for c in candidates(graph) if c.out not in tried and not c.out.meta.get(KEPT)]
        except Exception as e:  # a graph this matcher does not understand: leave it as it is
            report.notes.append(f"parallel: candidates not searched ({type(e).__name__}: {e})")
            return
        if not todo:
            return
        tried.add(todo[0].out)
        _one(graph, todo[0], opts, report)


def _one(graph: fx.Graph, cand: Candidate, opts, report: Report) -> None:
    """Match and rewrite one candidate, or record why it is left as it is."""

    def found():
        rec, err = match(graph, cand, constant_nodes(graph), opts)
        return rec, err, (cand.out,)

    take(found, source_line(cand.out), SPELLING, opts, report)

"""Normalized linear attention as whole-sequence forms: a causal linear attention divided by its normalizer.

    o_t = num_t / (den_t + eps),  num_t = sum_{s<=t} (q_t . k_s) v_s,  den_t = sum_{s<=t} q_t . k_s

q and k are feature-mapped (elu + 1, Based's Taylor map, Rebased's squared map): the maps stay in the graph,
for Inductor; the region from the mapped q, k (and v) to the division becomes one call of
``ops.normalized_linear_attn``. The numerator is any proven causal linear attention of the ``parallel``
(``tril(q k^T) v``) or ``cumsum`` (``q . cumsum(k v^T)``) spelling; the normalizer whatever the code wrote
(``A.sum(-1)`` of the same masked scores, ``q . cumsum(k)``, ...); the division a ``/`` or a ``*`` by a reciprocal
(Based's ``y * z[..., None]``, z = 1 / (den + eps)), with a literal ``+ eps`` or none. A parallel numerator whose
masked scores are no linear function of q . k but a polynomial of degree <= 2 in it (Based's quadratic reference,
``tril(1 + s + s^2 / 2)``) is the op on feature maps of q and k (``poly_scores``), which the rewrite adds to the
graph before the call; its proof probes the raw q and k of either sign too.

Structure proposes only: a division whose numerator is a proven linear attention and whose denominator is a
reduction (a sum or a contraction), plus a literal eps. Numbers decide: the region runs on fresh positive probes of
q and k at three magnitudes, so that eps dominates the normalizer at the smallest and vanishes at the largest, and
must equal the op at each. An eps in another place, a clamp, a normalizer summed over the query axis, one of another
key, or a non-causal mask differ somewhere, and the division is left as written with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import operator

import torch
import torch.fx as fx

from .. import costs, verify
from ..ir import Family, Recurrence, RegionLayout, out_batch
from ..numerics import rel_err
from ..ops.normalized import normalized_linear_attn
from ..report import Match, Miss, Report
from ..rewrite import (
    batch_split,
    from_bthd,
    from_canon,
    is_zeros,
    to_bthd,
    to_canon,
    traced_dtype,
)
from ..verify import (
    TOL,
    NearMiss,
    _outer_pairs,
    _probe_inputs,
    _readout,
    apply_recipe,
    loop_recurrence,
    probe,
    reshaped,
    run_region,
    step_inputs,
)
from . import _region as R
from . import cumsum, loop, loop_roles, parallel, poly_scores
from ._graph import source_line, value_of
from .loop import normalizer_message

log = logging.getLogger("fla_compile")

DIV = {operator.truediv, torch.div, torch.true_divide, "div", "true_divide", "__truediv__"}
MUL = {operator.mul, torch.mul, "mul", "__mul__"}
ADD = {operator.add, torch.add, "add", "__add__"}
RECIPROCAL = {torch.reciprocal, "reciprocal"}
POW = {operator.pow, torch.pow, "pow", "__pow__"}
SUM = {torch.sum, "sum"}
FAMILY = Family.NORMALIZED_LINEAR_ATTN


def _call(n: fx.Node, targets: set, nargs: int) -> bool:
    return n.op in ("call_function", "call_method") and n.target in targets and len(n.args) == nargs and not n.kwargs


def _reciprocal(r: fx.Node) -> fx.Node | None:
    """x of 1 / x, ``x.reciprocal()`` or ``x ** -1``."""
    if _call(r, RECIPROCAL, 1) and isinstance(r.args[0], fx.Node):
        return r.args[0]
    if _call(r, DIV, 2) and r.args[0] == 1 and isinstance(r.args[1], fx.Node):
        return r.args[1]
    if _call(r, POW, 2) and r.args[1] == -1 and isinstance(r.args[0], fx.Node):
        return r.args[0]
    return None


def division(n: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(numerator, denominator) of ``num / d`` or ``num * (1 / d)`` (the reciprocal possibly viewed)."""
    if _call(n, DIV, 2) and all(isinstance(a, fx.Node) for a in n.args):
        return n.args[0], n.args[1]
    if _call(n, MUL, 2) and all(isinstance(a, fx.Node) for a in n.args):
        for num, r in (n.args, n.args[::-1]):
            d = _reciprocal(cumsum.root(r))
            if d is not None:
                return num, d
    return None


def normalizer(d: fx.Node) -> tuple[fx.Node, float] | None:
    """(the reduction, eps) of a denominator ``den + eps`` or ``den`` (views around either), None where the
    denominator is no reduction (a clamp, a max: not this op's math)."""
    d, eps = cumsum.root(d), 0.0
    if _call(d, ADD, 2):
        a, b = d.args
        a, b = (a, b) if isinstance(a, fx.Node) else (b, a)
        if isinstance(a, fx.Node) and isinstance(b, (int, float)) and not isinstance(b, bool):
            d, eps = cumsum.root(a), float(b)
    if d.op in ("call_function", "call_method") and (d.target in SUM or R.contraction(d) is not None):
        return d, eps
    return None


def _cumsum_read_by(num: fx.Node) -> fx.Node | None:
    """The prefix sum of k (x) v that ``num`` reads out (by a contraction, or a multiply and sum)."""
    for a in num.all_input_nodes:
        for cs in (a, *a.all_input_nodes):
            if cs.target in R.CUMSUM:
                read = cumsum.readout(cs)
                if read is not None and read[0] is num:
                    return cs
    return None


class NormalizedLowering:
    """The callable that replaces a proven normalized form: the roots of q, k, v (the values the numerator's
    roles view) -> the numerator's views -> [1, T, N, D] -> ``normalized_linear_attn`` -> the output's layout."""

    def __init__(self, rec: Recurrence, views: fx.GraphModule):
        self.views, self.layout, self.scale, self.eps = views, rec.layout, rec.scale, rec.extras["eps"]
        self.__name__ = f"fla_{FAMILY.value}_{'x'.join(map(str, rec.layout.bsizes))}"

    def __repr__(self) -> str:
        return self.__name__

    def key(self) -> tuple:
        return (self.views.code, self.layout)

    def __eq__(self, other) -> bool:
        close = lambda a, b: math.isclose(a, b, rel_tol=1e-9)  # noqa: E731
        return (
            isinstance(other, NormalizedLowering)
            and self.key() == other.key()
            and close(self.scale, other.scale)
            and close(self.eps, other.eps)
        )

    def __hash__(self) -> int:
        return hash(self.key())

    def same_call(self, other) -> bool:
        """Whether ``other`` makes the same call apart from lengths (``@jit`` merges two probe lengths)."""
        return self == other

    def __call__(self, *roots, cast=True):
        lay = self.layout
        q, k, v = self.views(*roots)
        dt = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
        q, k, v = (to_canon(x.to(dt), lx, lay.batch, lay.bsizes) for x, lx in zip((q, k, v), (lay.q, lay.k, lay.v)))
        q = q * self.scale if self.scale != 1.0 else q  # o = c num / (c den + eps): the scores' scale c goes on q
        o, _ = normalized_linear_attn(q, k, v, eps=self.eps)
        o = from_canon(o, lay.out, lay.batch, lay.bsizes)
        return o.to(traced_dtype(lay.out_dtype)) if cast and lay.out_dtype is not None else o


def _numerator(graph: fx.Graph, num: fx.Node, cands: dict, const: set, opts) -> tuple[Recurrence, str] | None:
    """The proven linear attention that ``num`` is (roles: nodes), and its spelling; None where it is none."""
    if num in cands:
        rec, _ = parallel.match(graph, cands[num], const, opts, alone=False)
        return rec, parallel.SPELLING
    cs = _cumsum_read_by(num)
    found = cumsum.match(cs, opts, fuse=False) if cs is not None else None
    return (found[0], cumsum.SPELLING) if found is not None else None


def _region(div: fx.Node, num: fx.Node, eps: float, roles: tuple) -> tuple[list, fx.GraphModule]:
    """(the roots of q, k and v, the region from them to ``div``); NearMiss where it cannot be one op call."""
    if not (math.isfinite(eps) and eps >= 0):
        raise NearMiss(f"the normalizer's eps is {eps}; the op adds a non-negative eps")
    if R.shape_of(div) != R.shape_of(num):
        raise NearMiss("the division broadcasts the numerator to another shape")
    roots = list(dict.fromkeys(cumsum.root(x) for x in roles))
    why = R.inner_users(R.cone(div, set(roots)), div, roots)
    if why:
        raise NearMiss(why)
    try:
        gm, _ = R.extract(div, roots)
    except NearMiss as e:
        raise NearMiss(f"the normalizer does not read the numerator's q and k alone ({e})") from None
    return roots, gm


def match(div: fx.Node, num: fx.Node, eps: float, lin: Recurrence, opts):
    """Bind and prove the normalized form ending at ``div`` over the proven numerator ``lin``:
    (its ``Recurrence``, the lowering, the roots it is called on, the proof's error); NearMiss with the reason."""
    if lin.family != Family.LINEAR_ATTN:
        raise NearMiss(f"the numerator is {lin.family.value}; a normalizer is supported over linear_attn only")
    roles = (lin.q, lin.k, lin.v)
    roots, gm = _region(div, num, eps, roles)
    views, _ = R.extract(roles, roots)
    lay = dataclasses.replace(lin.layout, out_dtype=value_of(div).dtype)
    rec = lin.replace(family=FAMILY, layout=lay, source=source_line(div), extras={"eps": eps})
    low = NormalizedLowering(rec, views)
    T = R.shape_of(div)[lay.out.labels.index(lay.out.time)]
    K = R.shape_of(lin.q)[lay.q.labels.index(lay.q.feat)]
    err = prove(gm, roots, {cumsum.root(lin.q), cumsum.root(lin.k)}, rec, low, T * K, opts)
    return rec, low, roots, err


def prove(gm, roots, qk: set, rec: Recurrence, low: NormalizedLowering, TK: int, opts, call=None) -> float:
    """The region equals the op on fresh positive q, k at three magnitudes (den ~ |q||k| T K): where eps dominates
    the normalizer, where it is about one, where it vanishes. ``call``: the op on the roots where it is more than
    ``low`` (feature maps made by the rewrite); then q and k are raw and of either sign, and are probed so too.
    The worst error; NearMiss where one differs."""
    gen = torch.Generator().manual_seed(20261130)
    small = math.sqrt(max(low.eps, 1e-6) / max(TK, 1))
    probes = [("positive", lam) for lam in (1.0, small, 1e3)]
    if call is not None:
        probes.insert(0, (None, 1.0))  # a normalizer that differs on negative scores only (a clamp) shows here
    call = call or (lambda *a: low(*a, cast=False))
    worst = 0.0
    for kind, lam in probes:
        args = [R.probe_role(r, gen, kind if r in qk else None) * (lam if r in qk else 1.0) for r in roots]
        try:
            _, err = verify.prove_region(gm, args, [rec], lambda _, *a: call(*a), opts.verify)
        except NearMiss as e:
            raise NearMiss(
                f"a division num / (den + eps) over a linear attention, but not q_t . sum_(s<=t) k_s of the same q "
                f"and k plus a constant eps (the normalizer over another axis or key, eps elsewhere, a clamp; at "
                f"{kind or 'signed'} |q|, |k| ~ {lam:.1e}): {e}"
            ) from None
        if not opts.verify:
            return math.nan
        worst = max(worst, err)
    return worst


@dataclasses.dataclass
class Polynomial:
    """A proven normalized form over polynomial scores (``poly_scores``): the rewrite first inlines ``maps`` on the
    candidate's q and k, then calls ``low`` on the maps and v's root. ``rec``'s roles are the user's q, k and v."""

    rec: Recurrence
    low: NormalizedLowering
    maps: fx.GraphModule
    v_root: fx.Node
    err: float
    K: int  # the maps' feature size: the op's key dim, for the cost table

    def roots(self, div: fx.Node) -> list[fx.Node]:
        return [*poly_scores.insert(self.maps, self.rec.q, self.rec.k, div), self.v_root]

    def cost_rec(self) -> Recurrence:
        """``rec`` with a q of the maps' shape (a meta tensor): the op runs at K = ``K``, not at q's dim."""
        lay, shape = self.rec.layout.q, list(R.shape_of(self.rec.q))
        shape[lay.labels.index(lay.feat)] = self.K
        return self.rec.replace(q=torch.empty(shape, device="meta"))


def _map_views(v: fx.Node, v_root: fx.Node) -> fx.GraphModule:
    """(phi_q, phi_k, v's root) -> (phi_q, phi_k, v): the lowering's views where the feature maps are its q, k."""
    g = fx.Graph()
    pq, pk, pv = (g.placeholder(n) for n in ("phi_q", "phi_k", "v"))
    env = {v_root: pv}
    for n in R.cone(v, {v_root}):
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output((pq, pk, env[v]))
    return fx.GraphModule(torch.nn.Module(), g)


def match_polynomial(div: fx.Node, num: fx.Node, eps: float, cand, opts) -> Polynomial | None:
    """Bind and prove the normalized form ending at ``div`` whose numerator masks a polynomial of degree <= 2 in
    q . k (Based's Taylor scores): the op on the feature maps of ``poly_scores``. None where the scores are linear
    in q . k or no function of them alone; NearMiss with the reason."""
    coefs = poly_scores.fit(cand)
    if coefs is None:
        return None
    roots, gm = _region(div, num, eps, (cand.q, cand.k, cand.v))
    qk, _ = R.extract((cand.q, cand.k), roots)
    maps = poly_scores.feature_maps(cand, coefs)
    v_root = cumsum.root(cand.v)
    batch, bsizes = out_batch(cand.out_layout, R.shape_of(num))
    lay = RegionLayout(*cand.layouts, cand.out_layout, batch, bsizes, out_dtype=value_of(div).dtype)
    rec = Recurrence(FAMILY, cand.q, cand.k, cand.v, layout=lay, spelling=parallel.SPELLING, source=source_line(div))
    rec = rec.replace(extras={"eps": eps, "polynomial": coefs})
    low = NormalizedLowering(rec, _map_views(cand.v, v_root))
    iv = roots.index(v_root)

    def call(*args):
        return low(*maps(*qk(*args)), args[iv], cast=False)

    T = R.shape_of(div)[lay.out.labels.index(lay.out.time)]
    d = R.shape_of(cand.q)[lay.q.labels.index(lay.q.feat)]
    qk_roots = {cumsum.root(cand.q), cumsum.root(cand.k)}
    err = prove(gm, roots, qk_roots, rec, low, T * d, opts, call=call)
    K = (coefs[0] != 0) + (coefs[1] != 0) * d + (coefs[2] != 0) * d * d
    return Polynomial(rec, low, maps, v_root, err, K)


def run_pass(graph: fx.Graph, opts, report: Report) -> None:
    """Find, prove and rewrite every normalized form of ``graph`` (before the parallel and cumsum passes, which
    would otherwise take the numerator, or the numerator and the normalizer, apart)."""
    found = [(n, *d) for n in graph.nodes if (d := division(n)) is not None]
    todo = [(n, num, *z) for n, num, d in found if (z := normalizer(d)) is not None]
    if not todo:
        return
    cands = const = alive = None
    for div, num, _, eps in todo:
        if cands is None:  # (again) after a rewrite
            alive = set(graph.nodes)
            try:
                cands = {c.out: c for c in parallel.candidates(graph)}
            except Exception:  # a graph the parallel matcher does not understand: cumsum numerators only
                cands = {}
            const = R.constant_nodes(graph)
        if div not in alive:
            continue
        src, lin, poly = source_line(div), None, None
        try:
            try:
                lin = _numerator(graph, num, cands, const, opts)
            except NearMiss as e:  # no linear attention of q . k: of a polynomial of it (Based's Taylor scores)?
                if type(e) is NearMiss and num in cands:
                    poly = match_polynomial(div, num, eps, cands[num], opts)
                if poly is None:
                    raise
            if lin is None and poly is None:
                continue
            if poly is None:
                rec, low, roots, err = match(div, num, eps, lin[0], opts)
            else:
                rec, low, err = poly.rec, poly.low, poly.err
        except verify.NotARecurrence:  # softmax attention written out: the parallel pass says so
            continue
        except NearMiss as e:
            spelling = parallel.SPELLING if num in cands else cumsum.SPELLING
            report.misses.append(Miss(spelling, f"normalized linear attention: {e}", src, e.grade))
            continue
        except Exception as e:  # an unforeseen layout: leave it (the graph is untouched until the rewrite)
            report.misses.append(Miss(lin[1] if lin else "parallel", f"not analysed: {type(e).__name__}: {e}", src))
            continue
        spelling = parallel.SPELLING if poly else lin[1]
        region = poly.cost_rec() if poly else lin[0]
        kept, shape = costs.decide(opts, FAMILY.value, spelling, costs.form_shape, region, num)
        if not kept:
            rewrite(div, low, poly.roots(div) if poly else roots)
            cands = None
        else:  # proven and kept as written: the later passes leave its numerator alone (no miss about a piece)
            for n in R.cone(div, {cumsum.root(x) for x in (rec.q, rec.k, rec.v)}):
                n.meta[R.KEPT] = True
        report.matches.append(Match(FAMILY.value, spelling, src, rec.op_name, err, kept, shape))


def rewrite(div: fx.Node, low: NormalizedLowering, roots: list[fx.Node]) -> None:
    """Replace ``div`` by one call of ``low`` on the roots; the region left dead goes with dead-code elimination."""
    graph = div.graph
    with graph.inserting_after(div):
        call = graph.call_function(low, tuple(roots))
    call.meta = {k: v for k, v in div.meta.items() if k in ("example_value", "val", "stack_trace")}
    div.replace_all_uses_with(call, delete_user_cb=lambda u: u is not call)
    graph.eliminate_dead_code()


# ---------------------------------------------------------------- the loop spelling
# S_t = S_{t-1} + k_t v_t^T, z_t = z_{t-1} + k_t, o_t = S_t^T q_t / (z_t . q_t + eps): ``loop.find`` re-rolls the
# loop with z carried beside S (``LoopRegion.norm_offset``); the step is classified and proven here, on numbers.


def _dependent(step: fx.GraphModule) -> set:
    """The step's nodes that read the state or the normalizer."""
    dep: set = set()
    for n in step.graph.nodes:
        if (n.op == "placeholder" and n.name in ("state", "norm")) or any(a in dep for a in n.all_input_nodes):
            dep.add(n)
    return dep


def _role_values(step: fx.GraphModule, env: dict, rec: Recurrence) -> dict:
    by_origin = {n.meta["fla_origin"]: n for n in step.graph.nodes if "fla_origin" in n.meta}
    return {x: apply_recipe(env[by_origin[r.origin]], r.recipe, r.target) for x, r in zip("qkv", (rec.q, rec.k, rec.v))}


def classify_loop(step: fx.GraphModule, metas: list, S_meta, z_meta) -> Recurrence:
    """The roles q, k, v and eps of a step (state, norm, *inputs) -> (S_t, o_t, z_t); NearMiss with the reason."""
    *batch, X, Y = tuple(S_meta.shape)
    batch = tuple(batch)
    if tuple(z_meta.shape) != (*batch, X):
        raise NearMiss("the normalizer sums over the state's last dim (a state stored as [V, K])")
    out = step.graph.find_nodes(op="output")[0].args[0][1]
    if out is None:
        raise NearMiss("the loop has no per-step output")
    parts = division(cumsum.root(out))
    den = normalizer(parts[1]) if parts is not None else None
    if den is None:
        raise NearMiss("the output is not a division num / (den + eps) of the state's read-out by its normalizer's")
    num, eps = parts[0], den[1]
    gen = torch.Generator().manual_seed(1234)
    P = _probe_inputs(metas, gen, positive=True)  # feature-mapped keys and queries: positive
    Sa, za = (probe(m.shape, gen, device=m.device) for m in (S_meta, z_meta))
    (Fa, _, Za), env = run_region(step, [Sa, za, *P], widen=True)
    (F0, _, Z0), _ = run_region(step, [torch.zeros_like(Sa), torch.zeros_like(za), *P], widen=True)
    if rel_err(Fa - F0, Sa) > TOL or rel_err(Za - Z0, za) > TOL:
        raise NearMiss("the state or the normalizer decays; supported: S_t = S_{t-1} + k_t v_t^T, z_t = z_{t-1} + k_t")
    values = {n: v for n, v in env.items() if n not in _dependent(step) and n.op != "output"}
    pairs = _outer_pairs(values, F0, batch, X, Y)
    by_origin = {n.meta["fla_origin"]: n for n in step.graph.nodes if "fla_origin" in n.meta}
    kv = [(a, b) for a, b in pairs if rel_err(apply_recipe(env[by_origin[a.origin]], a.recipe, a.target), Z0) <= TOL]
    if not kv:
        raise NearMiss(
            "the normalizer sums other keys than the state's k_t v_t^T"
            if pairs
            else "the state update's additive term is not an outer product k v^T of step values"
        )
    read = _readout(values, env[num], Fa, Sa, batch, X, Y, False)
    if read is None or read[2]:
        raise NearMiss("the numerator is not S_t^T q_t for a value q_t of the step")
    q, scale, _ = read
    if not scale > 0:
        raise NearMiss(f"the numerator is S_t^T q_t times {scale:g}; a positive factor is supported")
    rec = loop_recurrence(FAMILY, q, kv[0][0], kv[0][1], None, None, 1.0, False, batch, True)
    return rec.replace(extras={**rec.extras, "eps": eps / scale})  # c num / (c den + eps) = num / (den + eps / c)


def _op_step(rec: Recurrence, vals: dict, S, z):
    """The op over one step from (S, z): (o [*batch, V], S_t, z_t)."""
    batch = rec.extras["batch"]
    q, k, v = (to_bthd(vals[x][None], batch) for x in "qkv")
    B, H = batch_split(batch)
    h0 = (reshaped(S, B, H, *S.shape[-2:]), reshaped(z, B, H, z.shape[-1]))
    o, (St, zt) = normalized_linear_attn(q, k, v, eps=rec.extras["eps"], initial_state=h0, output_final_state=True)
    return from_bthd(o, batch)[0], reshaped(St, *S.shape), reshaped(zt, *z.shape)


def prove_loop(step: fx.GraphModule, metas: list, S_meta, z_meta, rec: Recurrence, trials=2) -> float:
    """One step equals the op (T = 1, the probes as the initial state) on fresh probes: states at three
    magnitudes, and normalizers z that put q_t . z_t at 0.1, 1 and 10 times eps (where eps and a clamp tell)."""
    gen = torch.Generator().manual_seed(4321)
    e = max(rec.extras["eps"], 1e-6)
    worst = 0.0
    for _ in range(trials):
        P = _probe_inputs(metas, gen, positive=True)
        for mag in (1e-3, 1.0, 1e4):
            S, z = (probe(m.shape, gen, device=m.device) * mag for m in (S_meta, z_meta))
            _, env = run_region(step, [S, z, *P], widen=True)
            vals = _role_values(step, env, rec)
            q, k = vals["q"], vals["k"]
            for s in (None, 0.1 * e, e, 10 * e):
                zz = z if s is None else -k + s * q / (q * q).sum(-1, keepdim=True)  # (zz + k) . q = s
                (S1, o1, z1), _ = run_region(step, [S, zz, *P], widen=True)
                o, St, zt = _op_step(rec, vals, S, zz)
                err = max(rel_err(St, S1), rel_err(zt, z1), rel_err(o.reshape(o1.shape), o1))
                if not err <= TOL:
                    raise NearMiss(
                        f"the op differs from the step on fresh inputs (rel err {err:.1e}"
                        + (f" where z_t . q_t = {s:.1e}, eps = {rec.extras['eps']:.1e})" if s else ")")
                    )
                worst = max(worst, err)
    return worst


def loop_pass(region, opts, report: Report) -> None:
    """Classify, prove and rewrite a re-rolled loop carrying a normalizer beside its state."""
    try:
        step, _ = region.step_graph()
        # after the state: the normalizer's placeholder, then the step's inputs; the reads of one source at one step
        # through different indexing (``k[:, t, :, :, None]`` in S's update, ``k[:, t]`` in z's) see the same numbers
        metas = step_inputs(step, region.reads)[1:]
        S_meta, z_meta = (value_of(p) for p in step.graph.find_nodes(op="placeholder")[:2])
        rec = classify_loop(step, metas, S_meta, z_meta)
        err = prove_loop(step, metas, S_meta, z_meta, rec) if opts.verify else math.nan
    except (NearMiss, ValueError) as e:
        why = normalizer_message(region.blocks, region.state_offset, region.norm_offset, str(e))
        report.misses.append(Miss(loop.SPELLING, why, region.source))
        return
    except Exception as e:  # a bug of ours: the graph is untouched so far, so leave the loop as written
        log.warning("fla_compile: the loop at %s is left as written after an internal error", region.source,
                    exc_info=True)  # fmt: skip
        report.misses.append(
            Miss(loop.SPELLING, f"internal error, left as written: {type(e).__name__}: {e}", region.source)
        )
        return
    zero = is_zeros(region.init_state) and is_zeros(region.init_norm)  # else (S_0, z_0) both go to the op
    rec = rec.replace(
        initial_state=None if zero else region.init_state,
        output_final_state=region.final_state_used,
        source=region.source,
    )
    loop_roles.lower(region, rec, err, opts, report)

"""The ``chunked`` spelling: a whole reference function, such as transformers'
``torch_chunk_gated_delta_rule`` or Kimi's ``chunk_kimi_delta_attention``, inlined by Dynamo.

Such functions carry a state across a loop over chunks and do their own algebra inside
(UT transforms, in-place triangular solves); re-rolling their steps proves nothing. Instead
the function's nodes are found by the call frame Dynamo recorded on every node, its inputs
are bound to roles by shape (q, k [B,T,HK,K]; v [B,T,H,V]; log-gates; beta [B,T,H];
an initial state [B,H,K,V]; or every sequence input heads-first, [B,H,T,..], as torchscale's chunkwise
retention and FLA's ``delta_rule_chunkwise`` take them), and the whole region is run on fresh float64 inputs at its
traced shapes against each family op that the shapes allow (with and without in-kernel L2
normalization of q and k, the scale fitted). Only a proven binding is rewritten. This pass
runs before normalization, since the region is executed as written, in-place updates and all.

A function that makes its roles itself, elementwise from its inputs, before its chunk loop (Mamba2's SSD
reference: dt = softplus(dt_raw), v = x dt, the log-gate dt A) is tried once more with the region taken after
those values, which stay in the graph (``_try_derived``). A function that no family op reproduces may be a
chunked normalized linear attention (a division of q S + (q k^T * M) v by q z + (q k^T * M).sum(-1) + eps per
chunk): proposed by such a division, whose literal eps the op takes, and proven on positive probes of q and k at
three magnitudes (where eps dominates the normalizer and where it vanishes), the region taken after the feature
maps the function applies to its inputs first (``elu(q) + 1``): those stay in the graph, and the op reads the
mapped q and k.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import operator
import os
import re
from collections import defaultdict

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..ir import Family, Recurrence
from ..numerics import rel_err
from ..report import Match, Miss
from ..rewrite import FormLowering, FunctionLowering, run_function
from ..verify import TOL, fit_scale, probe, run_region
from . import cumsum, normalized
from ._graph import _inplace_kind, value_of

log = logging.getLogger("fla_compile")

SPELLING = "chunked"
MIN_NODES = 20  # a recurrence written as a function is never shorter than this
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


# the wrapper frames ``explain`` and ``@jit`` capture through (``jit.fresh_code(call, "fla_explain")``,
# ``@jit``'s probe and argument plumbing, ``torch.func.functional_call`` for a module): not the
# user's code. Left in, they made the user's whole function a nested call, which this pass then
# matched as a function ("gla (chunked)") where the backend, compiling the function itself, sees
# the loop ("gla (loop)").
_EXPLAIN_FRAME = re.compile(r"fla_explain_\d+$")
_WRAPPER_DIRS = tuple(
    os.path.dirname(os.path.realpath(f)) + os.sep for f in (torch.__file__, os.path.dirname(os.path.realpath(__file__)))
)


@functools.lru_cache(maxsize=1024)
def _is_wrapper_file(path: str) -> bool:
    return os.path.realpath(path).startswith(_WRAPPER_DIRS)


def _frames(node: fx.Node) -> list[tuple[str, int, str]]:
    frames = [(f, int(line), fn) for f, line, fn in _FRAME.findall(node.meta.get("stack_trace") or "")]
    while frames and (_EXPLAIN_FRAME.match(frames[0][2]) or _is_wrapper_file(frames[0][0])):
        frames = frames[1:]
    return frames


def function_regions(graph: fx.Graph, top_level: bool = False) -> list[tuple[str, list[fx.Node]]]:
    """Nodes grouped by the function call that made them, innermost calls first, with "file:function".
    ``top_level`` adds the compiled function itself (the outermost frame) as the last region."""
    groups: dict[tuple, list[fx.Node]] = defaultdict(list)
    for n in graph.nodes:
        if n.op != "call_function" and n.op != "call_method":
            continue
        frames = _frames(n)
        for d in range(0 if top_level else 1, len(frames)):
            groups[(tuple(frames[:d]), frames[d][0], frames[d][2])].append(n)
    out = [(key, nodes) for key, nodes in groups.items() if len(nodes) >= MIN_NODES]
    return [(f"{key[1].rsplit('/', 1)[-1]}:{key[2]}", nodes) for key, nodes in sorted(out, key=lambda x: -len(x[0][0]))]


def _boundary(region: list[fx.Node]):
    inside = set(region)
    inputs, outputs = [], []
    for n in region:
        for a in n.all_input_nodes:
            if a not in inside and a not in inputs:
                inputs.append(a)
        if any(u not in inside for u in n.users):
            outputs.append(n)
    return inputs, outputs


def _shape(n):
    v = value_of(n)
    return tuple(v.shape) if isinstance(v, torch.Tensor) and v.is_floating_point() else None


def _extract(region, inputs, outputs) -> fx.GraphModule:
    g = fx.Graph()
    env = {a: g.placeholder(f"in{i}") for i, a in enumerate(inputs)}
    for n in region:
        env[n] = g.node_copy(n, lambda a: env[a])
        if isinstance(n.target, FormLowering):  # a piece rewritten already: on float64 probes, not cast back to
            env[n].kwargs = {**n.kwargs, "cast": False}  # the traced dtype (bf16 would fail the whole's proof)
    g.output(tuple(env[o] for o in outputs))
    return fx.GraphModule(torch.nn.Module(), g)


# (family, gate role shape, has beta)
TEMPLATES = [
    (Family.GATED_DELTA_RULE, "bth", True),
    (Family.KDA, "bthk", True),
    (Family.DELTA_RULE, None, True),
    (Family.SIMPLE_GLA, "bth", False),
    (Family.GLA, "bthk", False),
    (Family.LINEAR_ATTN, None, False),
    (Family.RETENTION, None, False),  # a decay per head, read from the region (``_retention_decay``)
    (Family.RWKV6, "bthk", False),  # with its bonus u [H, K] among the inputs
]


def _heads_first(s):
    """A [B, H, T, ...] shape read as [B, T, H, ...] (and [B, H, T] as [B, T, H])."""
    return s if s is None or len(s) < 3 else (s[0], s[2], s[1], *s[3:])


def _assignments(inputs):
    """Role bindings the input shapes allow: dicts role -> input index; ``heads_first``: the sequence inputs
    are [B, H, T, ...] (torchscale's and FLA's chunkwise references), the initial state [B, H, K, V] either way."""
    for heads_first in (False, True):
        yield from _assignments_in(inputs, heads_first)


def _assignments_in(inputs, heads_first):
    states = [_shape(a) for a in inputs]
    shapes = [_heads_first(s) for s in states] if heads_first else states
    idx4 = [i for i, s in enumerate(shapes) if s is not None and len(s) == 4]
    idx3 = [i for i, s in enumerate(shapes) if s is not None and len(s) == 3]
    for q, k, v in itertools.permutations(idx4, 3):
        sq, sk, sv = shapes[q], shapes[k], shapes[v]
        if sq != sk or sv[:2] != sq[:2] or sv[2] % sq[2]:
            continue
        B, T, H, K, V = sq[0], sq[1], sv[2], sq[3], sv[3]
        if heads_first and T == H:
            continue  # the layout is ambiguous at these shapes: bound as [B, T, H, D] only
        rest = [i for i in range(len(inputs)) if i not in (q, k, v)]
        h0s = [i for i in rest if states[i] == (B, H, K, V)] + [None]
        for family, gate_kind, has_beta in TEMPLATES:
            gates = (
                [None]
                if gate_kind is None
                else [i for i in rest if shapes[i] == ((B, T, H) if gate_kind == "bth" else (B, T, H, K))]
            )
            betas = [i for i in idx3 if i in rest and shapes[i] == (B, T, H)] if has_beta else [None]
            bonuses = [i for i in rest if states[i] == (H, K)] if family == Family.RWKV6 else [None]
            for g, b, h0, u in itertools.product(gates, betas, h0s, bonuses):
                if g is not None and g == b:
                    continue
                used = {q, k, v, g, b, h0, u} - {None}
                if any(shapes[i] is not None and i not in used for i in range(len(inputs))):
                    continue  # every tensor input must have a role
                yield dict(family=family, q=q, k=k, v=v, gate=g, beta=b, h0=h0, bonus=u, heads_first=heads_first)


def _probe(inputs, roles, gen):
    vals = []
    for i, a in enumerate(inputs):
        s = _shape(a)
        x = probe(s, gen, device=value_of(a).device) if s is not None else value_of(a)
        if i == roles["k"]:  # norms in [0.5, 1]: delta rules stay well conditioned, l2norm stays visible
            x = F.normalize(x, dim=-1) * (0.5 + 0.5 * probe(s[:-1] + (1,), gen, (0.0, 1.0), x.device))
        elif i == roles["gate"]:
            x = -F.softplus(x) * 0.5
        elif i == roles["beta"]:
            x = torch.sigmoid(x)
        vals.append(x)
    return vals


def _op(roles, vals, l2norm, scale):
    q, k, v = (vals[roles[r]] for r in ("q", "k", "v"))
    g, b, h0, u = (vals[roles[r]] if roles[r] is not None else None for r in ("gate", "beta", "h0", "bonus"))
    return run_function(
        roles["family"], q, k, v, g, b, roles.get("decay"), scale, h0, l2norm, roles["heads_first"], bonus=u
    )


def _compare(outs, o, ht):
    """(index of o, index of the final state or None) if the region's outputs are (o, S_T) as the op says;
    a state returned as [B, H, V, K] (Mamba2's SSD) has its index negated, less one."""
    o_idx = s_idx = None
    for i, x in enumerate(outs):
        if not isinstance(x, torch.Tensor):
            continue
        if x.shape == o.shape and o_idx is None and rel_err(x, o) <= TOL:
            o_idx = i
        elif x.shape == ht.shape and s_idx is None and rel_err(x, ht) <= TOL:
            s_idx = i
        elif x.shape == ht.mT.shape and s_idx is None and rel_err(x, ht.mT) <= TOL:
            s_idx = -1 - i
    return o_idx, s_idx


def _run(gm, vals):
    """The region's outputs on probes, with float64 as the default dtype: a state made by a factory without a
    dtype (``torch.zeros(B, H, K, V)``) takes the probes' precision, as it takes the inputs' as written."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return run_region(gm, vals, keep=())[0]
    finally:
        torch.set_default_dtype(old)


def _retention_decay(gm, inputs, roles, gen) -> tuple | None:
    """Retention's log-decay per head, read from the region's response to one key: with k_0 = q_0 = q_1 = u
    and every other q, k zero, o_1 = gamma o_0 whatever the scale or normalization. None: no decay in (0, 1]."""
    vals = _probe(inputs, roles, gen)
    seq = (lambda x: x.transpose(1, 2)) if roles["heads_first"] else (lambda x: x)  # noqa: E731 - views
    q, k, v = (seq(vals[roles[r]]) for r in ("q", "k", "v"))
    u = k[:, :1].clone()
    q.zero_(), k.zero_()
    q[:, :2], k[:, :1] = u, u
    outs = _run(gm, vals)
    for x in outs if isinstance(outs, tuple) else (outs,):
        x = seq(x) if isinstance(x, torch.Tensor) and x.dim() >= 3 else x
        if isinstance(x, torch.Tensor) and x.shape[:3] == v.shape[:3] and x.shape[1] > 1:
            o0, o1 = x[:, 0].double(), x[:, 1].double()  # [B, H, V]
            gamma = (o1 * o0).sum((0, 2)) / (o0 * o0).sum((0, 2))
            if bool(((gamma > 0) & (gamma <= 1)).all()):
                return tuple(gamma.log().tolist())
    return None


def _large(vals, roles):
    """A draw with q, v (and the initial state) 100 times larger: every family is linear in them jointly, a
    region that saturates (a clamp, a tanh) beyond unit-sized values is not."""
    for r in ("q", "v", "h0"):
        if roles[r] is not None:
            vals[roles[r]] = vals[roles[r]] * 100
    return vals


def _small(vals, roles):
    """A draw with v (and the initial state) 1e-6 times as large: every output of every family shrinks with them,
    a constant the region adds to an output (``o + 1e-6``, under the tolerance at unit sizes) does not."""
    for r in ("v", "h0"):
        if roles[r] is not None:
            vals[roles[r]] = vals[roles[r]] * 1e-6
    return vals


def _prove(gm, inputs, outputs, roles, gen):
    """(l2norm, scale, o_idx, s_idx, err) if the region equals the op on four fresh draws (one large, one small)."""
    if roles["family"] == Family.RETENTION:
        roles["decay"] = _retention_decay(gm, inputs, roles, gen)
        if roles["decay"] is None:
            return None
    draws = [_probe(inputs, roles, gen) for _ in range(2)]
    draws += [_large(_probe(inputs, roles, gen), roles), _small(_probe(inputs, roles, gen), roles)]
    runs: dict = {}

    def out(i):  # run as written (in-place updates of its inputs: each run gets copies), once, when needed
        if i not in runs:
            runs[i] = _run(gm, [x.clone() if isinstance(x, torch.Tensor) else x for x in draws[i]])
        return runs[i]

    for l2norm in (False, True, "k"):
        o1, _ = _op(roles, draws[0], l2norm, 1.0)
        cands = [x for x in out(0) if isinstance(x, torch.Tensor) and x.shape == o1.shape]
        for x in cands:
            scale = fit_scale(x.double(), o1.double())
            if not math.isfinite(scale):
                continue
            errs, idx = [], None
            for i, d in enumerate(draws):
                o, ht = _op(roles, d, l2norm, scale)
                o_idx, s_idx = _compare(out(i), o, ht)
                if o_idx is None or (idx is not None and idx != (o_idx, s_idx)):
                    break
                idx = (o_idx, s_idx)
                errs.append(rel_err(out(i)[o_idx], o))
            else:
                if len(outputs) == 1 + (idx[1] is not None):
                    return l2norm, scale, idx[0], idx[1], max(errs)
    return None


def run_pass(graph: fx.Graph, opts, report, top_level: bool = False) -> None:
    """Match, prove and rewrite whole-function recurrences (innermost functions first).

    ``top_level`` also tries the compiled function itself: the fallback for a reference function
    compiled directly (``torch.compile(torch_chunk_gated_delta_rule)``) whose graph could not be
    normalized, run only when nothing matched (on a normalized graph ``run_whole_pass`` does this)."""
    done: set = set()
    for source, region in function_regions(graph, top_level):
        if not any(n in done for n in region) and _try_region(graph, source, region, opts, report):
            done.update(region)


def run_whole_pass(graph: fx.Graph, opts, report) -> None:
    """The compiled function itself as a chunked region, after the other spellings: a chunk loop written at
    the top level (a state carried over chunks, an intra-chunk masked form), which those passes miss or
    match piece by piece (one intra-chunk form per chunk). Tried only where they found no whole recurrence
    (no match, or several parallel pieces); a proven whole replaces the pieces, in the graph and the report."""
    pieces = list(report.matches)
    if len(pieces) == 1 or any(m.spelling != "parallel" for m in pieces):
        return
    if any(m.reason.startswith("internal error") for m in report.misses):
        return  # an analysis of ours failed here: the function stays as written
    region = [n for n in graph.nodes if n.op in ("call_function", "call_method")]
    frames = next((_frames(n) for n in region if _frames(n)), None)
    if len(region) < MIN_NODES or not frames:
        return
    source = f"{frames[0][0].rsplit('/', 1)[-1]}:{frames[0][2]}"
    before = len(report.matches)
    if _try_region(graph, source, region, opts, report):
        report.matches[:before] = [m for m in report.matches[:before] if m not in pieces]
        report.misses.clear()  # the whole proven: its parts' near misses (a piece's inner user) no longer apply


def _try_region(graph, source, region, opts, report) -> bool:
    """Prove and rewrite one function region (a family op on its inputs, or on the values it makes from them
    elementwise first, else normalized linear attention on its feature-mapped q and k); whether it was."""
    match = (
        _try_families(graph, source, region)
        or _try_derived(graph, source, region)
        or _try_normalized(graph, source, region, report)
    )
    if match is not None:
        report.matches.append(match)
        return True
    if any(n.op in ("call_function", "call_method") and "cumsum" in str(n.target) for n in region):
        report.misses.append(Miss(SPELLING, "a chunked function whose outputs no family op reproduces", source))
    return False


# elementwise ops a function may apply to its inputs before its chunk loop (Mamba2's SSD: dt = softplus(dt_raw),
# A = -exp(A_log), v = x * dt, the log-gate dt * A): the values they make are the roles
_ELEMENTWISE = {
    operator.mul, operator.add, operator.sub, operator.truediv, operator.neg, torch.mul, torch.add, torch.sub,
    torch.exp, torch.neg, torch.sigmoid, F.softplus, F.logsigmoid, F.silu,
    "mul", "add", "sub", "exp", "neg", "sigmoid", "softplus",
}  # fmt: skip


def _adds_axes(n: fx.Node) -> bool:
    """``x[..., None]``, ``x.unsqueeze(d)``: a view that only adds size-1 axes (a broadcast operand)."""
    if n.target in (torch.unsqueeze, "unsqueeze"):
        return True
    if n.target is operator.getitem and len(n.args) == 2:
        items = n.args[1] if isinstance(n.args[1], tuple) else (n.args[1],)
        return all(i is None or i is Ellipsis or (isinstance(i, slice) and i == slice(None)) for i in items)
    return False


def _derived(region, inputs) -> set:
    """The nodes of ``region`` that compute, elementwise, from its inputs alone (and each other): the values a
    function makes its roles from before its chunk loop. Left in the graph; the region after them is proven."""
    made, sources = set(), set(inputs)
    for n in region:
        ins = n.all_input_nodes
        if ins and all(a in sources or a in made for a in ins) and (n.target in _ELEMENTWISE or _adds_axes(n)):
            made.add(n)
    return made


def _try_derived(graph, source, region) -> Match | None:
    """A function region whose roles are made inside it, elementwise from its inputs (Mamba2's SSD reference: q, k
    = C, B; v = x dt; the log-gate dt A): the region after those values, proven as a family op on them."""
    if any(_inplace_kind(n) is not None for n in region):
        return None  # run as written: the op must see what the in-place updates would have left
    inputs, _ = _boundary(region)
    made = _derived(region, inputs)
    rest = [n for n in region if n not in made]
    if not made or len(rest) < MIN_NODES:
        return None
    return _try_families(graph, source, rest)


def _try_families(graph, source, region) -> Match | None:
    """Prove and rewrite one function region as a family op on its inputs: the match, or None."""
    inputs, outputs = _boundary(region)
    if not outputs or len(outputs) > 2:
        return None
    assignments = list(_assignments(inputs))
    if not assignments:
        return None
    try:
        gm = _extract(region, inputs, outputs)
    except Exception:  # noqa: BLE001 - an odd region is simply not a candidate
        return None
    gen = torch.Generator().manual_seed(7)
    for roles in assignments:
        try:
            proof = _prove(gm, inputs, outputs, roles, gen)
        except Exception:  # noqa: BLE001 - shapes the op refuses: not this binding
            proof = None
        if proof is None:
            continue
        l2norm, scale, o_idx, s_idx, err = proof
        rec = Recurrence(
            roles["family"],
            inputs[roles["q"]],
            inputs[roles["k"]],
            inputs[roles["v"]],
            gate=inputs[roles["gate"]] if roles["gate"] is not None else None,
            beta=inputs[roles["beta"]] if roles["beta"] is not None else None,
            decay=roles.get("decay"),
            scale=scale,
            initial_state=inputs[roles["h0"]] if roles["h0"] is not None else None,
            bonus=inputs[roles["bonus"]] if roles["bonus"] is not None else None,
            output_final_state=s_idx is not None,
            spelling=SPELLING,
            source=source,
            extras={
                "l2norm": l2norm,
                "heads_first": roles["heads_first"],
                "outputs": tuple(
                    ("o" if i == o_idx else "state" if s_idx >= 0 else "state_T", value_of(o).dtype)
                    for i, o in enumerate(outputs)
                ),
            },
        )
        _rewrite(graph, region, outputs, rec)
        return Match(rec.family.value, SPELLING, source, rec.op_name, err)
    return None


# ---------------------------------------------------------------- normalized linear attention in chunks
# o = (q S + (q k^T * M) v) / (q z + (q k^T * M).sum(-1) + eps) per chunk, with S += k^T v and z += sum k carried:
# ``normalized.py``'s numerator over normalizer, written as a chunk loop. q and k are feature-mapped, often by the
# function itself (``q, k = elu(q) + 1, elu(k) + 1`` first): the maps stay in the graph and the region proven
# starts after them, so the op takes the mapped values.
_NORMALIZED_SEED = 20261203


def _feature_maps(region, inputs) -> set:
    """The region's nodes that map an input, alone, to a value of its shape read by the rest in the input's place
    (``elu(q) + 1``, ``(gamma * k + beta) ** 2`` with gamma and beta smaller inputs, a cast): left to Inductor, as
    ``normalized.py`` leaves them. An input read both raw and mapped keeps its map inside the region, and a region
    with in-place updates keeps them all: the op must read the mapped values as the region would have."""
    if any(_inplace_kind(n) is not None for n in region):
        return set()
    inside, sources = set(region), set(inputs)
    origin: dict = {}  # node -> the one input it maps
    for n in region:
        shape = _shape(n)
        mapped, other = set(), False
        for a in n.all_input_nodes:
            if a in origin:
                mapped.add(origin[a])
            elif a in sources and _shape(a) == shape:
                mapped.add(a)
            elif not (a in sources and _shape(a) is not None and math.prod(_shape(a)) < math.prod(shape or (0,))):
                other = True  # only smaller inputs (a map's parameters) may join
        if shape is not None and len(mapped) == 1 and not other and _shape(next(iter(mapped))) == shape:
            origin[n] = next(iter(mapped))
    maps: set = set()
    for x in inputs:
        nodes = [n for n in region if origin.get(n) is x]
        cut = [c for c in (x, *nodes) if any(u in inside and origin.get(u) is not x for u in c.users)]
        if len(cut) == 1 and cut[0] is not x:
            maps.update(nodes)
    return maps


def _depends(region, inputs) -> dict:
    """node -> the indices of the inputs it reads, directly or not."""
    deps = {a: frozenset((i,)) for i, a in enumerate(inputs)}
    for n in region:
        deps[n] = frozenset().union(*(deps.get(a, frozenset()) for a in n.all_input_nodes))
    return deps


def _eps_literals(region, deps, roles) -> list[float]:
    """The eps of each division num / den whose numerator reads v and denominator q and k: the literal numbers
    the denominator's sum adds (``a + b + eps``, ``a + (b + eps)``; 0.0 where none), the op's eps as written.
    Structure proposes only."""
    q, k, v = roles["q"], roles["k"], roles["v"]
    found = []
    for n in region:
        parts = normalized.division(n)
        if parts is None or v not in deps.get(parts[0], ()) or not {q, k} <= deps.get(parts[1], frozenset()):
            continue
        eps = _added_literals(parts[1])
        if math.isfinite(eps) and eps >= 0 and eps not in found:  # the op adds a non-negative eps
            found.append(eps)
    return found


def _added_literals(n: fx.Node, budget: int = 64) -> float:
    """The sum of the literal numbers in the tree of additions (views around them too) that ``n`` heads; NaN for
    a tree larger than ``budget`` additions or an add with ``alpha`` (not a plain sum)."""
    total, todo = 0.0, [n]
    while todo:
        a = cumsum.root(todo.pop())
        if not (a.op in ("call_function", "call_method") and a.target in normalized.ADD and len(a.args) == 2):
            continue
        budget -= 1
        if a.kwargs or budget < 0:
            return math.nan
        total += sum(float(x) for x in a.args if isinstance(x, (int, float)) and not isinstance(x, bool))
        todo += [x for x in a.args if isinstance(x, fx.Node)]
    return total


def _normalized_probe(inputs, roles, gen, lam, v_mag):
    """Fresh inputs: q and k positive (feature-mapped) times ``lam``, v normal times ``v_mag``."""
    vals = []
    for i, a in enumerate(inputs):
        s = _shape(a)
        if s is None:
            vals.append(value_of(a))
        elif i in (roles["q"], roles["k"]):
            vals.append(probe(s, gen, "positive", value_of(a).device) * lam)
        else:
            vals.append(probe(s, gen, device=value_of(a).device) * v_mag)
    return vals


def _prove_normalized(gm, inputs, roles, eps, gen) -> tuple[float | None, tuple]:
    """(the worst error, ()) if the region equals ``normalized_linear_attn`` at three magnitudes of q and k (as
    ``normalized.prove``: eps dominates the normalizer, is about one of it, vanishes; v 100 times larger at the
    last, the op being linear in v) and with v tiny; else (None, (how many agreed, magnitude, error)) at the first that differs."""
    hf = roles["heads_first"]
    sq = _heads_first(_shape(inputs[roles["q"]])) if hf else _shape(inputs[roles["q"]])
    small = math.sqrt(max(eps, 1e-6) / (sq[1] * sq[3]))
    worst = 0.0
    # v 1e-6 as large at the last: the output shrinks with it, a constant added to it (num / den + eps) does not
    for i, (lam, v_mag) in enumerate(((1.0, 1.0), (small, 1.0), (1e3, 100.0), (1.0, 1e-6))):
        vals = _normalized_probe(inputs, roles, gen, lam, v_mag)
        q, k, v = (vals[roles[r]] for r in ("q", "k", "v"))
        o, _ = run_function(roles["family"], q, k, v, None, None, None, 1.0, None, False, hf, eps=eps)
        outs = _run(gm, vals)
        err = rel_err(outs[0], o) if len(outs) == 1 and isinstance(outs[0], torch.Tensor) else math.inf
        if not err <= TOL:
            return None, (i, lam, err)
        worst = max(worst, err)
    return worst, ()


def _try_normalized(graph, source, region, report) -> Match | None:
    """Prove and rewrite a chunked normalized linear attention, the region taken after the inputs' feature maps:
    the match, or None (with a miss where a division by a normalizer of q and k proposed it)."""
    if not any(normalized.division(n) for n in region):
        return None
    inputs, _ = _boundary(region)
    maps = _feature_maps(region, inputs)
    region = [n for n in region if n not in maps]
    inputs, outputs = _boundary(region)
    if len(outputs) != 1:
        return None
    deps = _depends(region, inputs)
    cands = []
    for roles in _assignments(inputs):
        if roles["family"] != Family.LINEAR_ATTN or roles["h0"] is not None:
            continue
        if not {roles["q"], roles["k"], roles["v"]} <= deps[outputs[0]]:
            continue
        cands += [({**roles, "family": Family.NORMALIZED_LINEAR_ATTN}, e) for e in _eps_literals(region, deps, roles)]
    if not cands:
        return None
    try:
        gm = _extract(region, inputs, outputs)
    except Exception:  # noqa: BLE001 - an odd region is simply not a candidate
        return None
    gen = torch.Generator().manual_seed(_NORMALIZED_SEED)
    closest = None
    for roles, eps in cands:
        try:
            err, where = _prove_normalized(gm, inputs, roles, eps, gen)
        except Exception as e:  # noqa: BLE001 - shapes the op refuses: not this binding
            log.debug("chunked normalized binding %s at %s refused: %s", roles, source, e)
            continue
        if err is None:
            if closest is None or (-where[0], where[2]) < (-closest[0], closest[2]):  # the binding that got furthest
                closest = (*where, eps)
            continue
        rec = Recurrence(
            roles["family"],
            inputs[roles["q"]],
            inputs[roles["k"]],
            inputs[roles["v"]],
            spelling=SPELLING,
            source=source,
            extras={
                "l2norm": False,
                "heads_first": roles["heads_first"],
                "eps": eps,
                "outputs": (("o", value_of(outputs[0]).dtype),),
            },
        )
        _rewrite(graph, region, outputs, rec)
        return Match(rec.family.value, SPELLING, source, rec.op_name, err)
    why = "normalized linear attention: a chunked function dividing by a normalizer of q and k"
    if closest is not None:
        _, lam, err, eps = closest
        why += (
            f" that is not the op's q_t . sum_(s<=t) k_s + {eps:g} on fresh positive q, k (rel err {err:.1e} at "
            f"|q|, |k| ~ {lam:.1e}): a term of the normalizer missing or over another axis, eps elsewhere, a clamp"
        )
    else:
        why += ", bound to no q, k, v the op takes"
    if not _explained(report, region):
        report.misses.append(Miss(SPELLING, why, source))
    return None


def _explained(report, region) -> bool:
    """Whether the loop pass's miss already names a line of ``region`` (a time loop with a normalizer, which it
    explains): the function's own miss would say the same thing less precisely."""
    lines = {(path.rsplit("/", 1)[-1], int(line)) for n in region for path, line, _ in _frames(n)}
    for m in report.misses:
        where = m.source.split(":", 2)
        if m.spelling == "loop" and len(where) >= 2 and where[1].isdigit() and (where[0], int(where[1])) in lines:
            return True
    return False


def _rewrite(graph, region, outputs, rec):
    lowering = FunctionLowering(rec)
    with graph.inserting_before(_insertion_point(graph, region, lowering.args)):
        call = graph.call_function(lowering, tuple(lowering.args))
        outs = [graph.call_function(operator.getitem, (call, i)) for i in range(len(outputs))]
    inside = set(region)
    for old, new in zip(outputs, outs):
        new.meta["example_value"] = value_of(old)
        old.replace_all_uses_with(new, delete_user_cb=lambda u: u not in inside)
    for n in reversed(region):
        graph.erase_node(n)


def _insertion_point(graph, region, args) -> fx.Node:
    """The first region node after every argument of the call: the region's first where its inputs come before it
    (a function's), a later one where the feature maps it starts after are interleaved with it."""
    pending, inside = set(args), set(region)
    for n in graph.nodes:
        pending.discard(n)
        if not pending and n in inside:
            return n
    return region[0]

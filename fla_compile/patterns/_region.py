"""Regions of a whole-sequence form (parallel, cumsum): the dims of contractions as einsum labels,
the sub-graph from the role nodes to an output (``cone``, ``extract``), probes for its roles, and its
proof against the op (``prove``). What the spellings share; each spelling module only finds.
"""

from __future__ import annotations

import dataclasses
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from .. import costs
from ..ir import Recurrence
from ..report import Match, Miss
from ..rewrite import form_call, rewrite_form, role_nodes
from ..verify import NearMiss, probe, prove_region
from ._graph import _recorded, source_line, value_of

EINSUM = {torch.einsum, "einsum"}
MATMUL = {torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm", "__matmul__"}
CUMSUM = {torch.cumsum, "cumsum"}
RANDOM = {torch.rand, torch.randn, torch.randint, torch.rand_like, torch.randn_like, torch.bernoulli, F.dropout}
RANDOM_METHODS = {"bernoulli", "bernoulli_", "uniform_", "normal_", "random_", "exponential_"}


# ---------------------------------------------------------------- labels of a contraction
@dataclasses.dataclass(frozen=True)
class Contraction:
    """A two-operand contraction as einsum labels (one label per dim, any hashable)."""

    a: fx.Node
    b: fx.Node
    la: tuple
    lb: tuple
    lo: tuple


def dim_arg(node: fx.Node, pos: int = 1, default=None):
    """The ``dim`` argument of a call (positional at ``pos``, or by keyword)."""
    return node.args[pos] if len(node.args) > pos else node.kwargs.get("dim", default)


def shape_of(node) -> tuple | None:
    """The static shape of a node's tensor value, or None (not a tensor, dynamic size)."""
    v = value_of(node) if isinstance(node, fx.Node) else None
    if not isinstance(v, torch.Tensor):
        return None
    try:
        return tuple(int(s) for s in v.shape)
    except (TypeError, ValueError):
        return None


def _einsum_labels(eq: str, shapes: list) -> tuple[list, tuple] | None:
    eq = eq.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        return None
    out_ell = 0
    labels = []
    for term, shape in zip(terms, shapes):
        explicit = term.replace("...", "")
        n_ell = len(shape) - len(explicit)
        if n_ell < 0 or (n_ell and "..." not in term):
            return None
        out_ell = max(out_ell, n_ell)
        pre, _, post = term.partition("...")
        labels.append(tuple(pre) + tuple(f"...{i}" for i in range(n_ell - 1, -1, -1)) + tuple(post))
    if "->" not in eq:
        counts: dict = {}
        for t in lhs.replace("...", "").replace(",", ""):
            counts[t] = counts.get(t, 0) + 1
        rhs = "..." + "".join(sorted(c for c, n in counts.items() if n == 1))
    pre, _, post = rhs.partition("...")
    out = tuple(pre) + (tuple(f"...{i}" for i in range(out_ell - 1, -1, -1)) if "..." in rhs else ()) + tuple(post)
    return labels, out


def contraction(node: fx.Node) -> Contraction | None:
    """``node`` as a two-operand einsum, for einsum, matmul, bmm and ``@``."""
    if node.op not in ("call_function", "call_method") or node.kwargs:
        return None
    t = node.target
    if t in EINSUM and node.args and isinstance(node.args[0], str):
        ops = node.args[1:]
        if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
            ops = tuple(ops[0])
        if len(ops) != 2 or not all(isinstance(o, fx.Node) for o in ops):
            return None
        shapes = [shape_of(o) for o in ops]
        if any(s is None for s in shapes):
            return None
        parsed = _einsum_labels(node.args[0], shapes)
        if parsed is None:
            return None
        (la, lb), lo = parsed
        return Contraction(ops[0], ops[1], la, lb, lo)
    if t in MATMUL and len(node.args) == 2 and all(isinstance(o, fx.Node) for o in node.args):
        a, b = node.args
        sa, sb = shape_of(a), shape_of(b)
        if sa is None or sb is None or len(sa) < 2 or len(sb) < 2:
            return None
        nb = max(len(sa), len(sb)) - 2
        batch = tuple(f"@{i}" for i in range(nb - 1, -1, -1))
        la = batch[nb - (len(sa) - 2) :] + ("@i", "@j")
        lb = batch[nb - (len(sb) - 2) :] + ("@j", "@k")
        return Contraction(a, b, la, lb, batch + ("@i", "@k"))
    return None


def sizes(node: fx.Node, labels: tuple) -> dict:
    """label -> size of ``node``'s value."""
    return dict(zip(labels, shape_of(node)))


# ---------------------------------------------------------------- regions
# factories whose values depend on their first argument's shape alone (a -inf fill for a mask made with
# ``torch.where(causal, x, torch.full_like(x, -inf))``), not on its values
SHAPE_ONLY = {torch.full_like, torch.zeros_like, torch.ones_like}


def constant_nodes(graph: fx.Graph) -> set:
    """Nodes whose value depends on no runtime value (inputs, attributes, random draws)."""
    const = set()
    for n in graph.nodes:
        if n.op in ("call_function", "call_method") and not is_random(n):
            ins = n.all_input_nodes[1:] if n.target in SHAPE_ONLY and n.args else n.all_input_nodes
            if all(a in const for a in ins):
                const.add(n)
    return const


def is_random(n: fx.Node) -> bool:
    return n.target in RANDOM or (n.op == "call_method" and n.target in RANDOM_METHODS)


def cone(out: fx.Node, stops: set) -> list[fx.Node]:
    """The nodes ``out`` depends on, stopping at ``stops``, in graph order."""
    seen, todo = set(), [out]
    while todo:
        n = todo.pop()
        if n in seen or n in stops:
            continue
        seen.add(n)
        todo.extend(n.all_input_nodes)
    return [n for n in out.graph.nodes if n in seen]


# meta key of the nodes of a region proven and kept as written (``costs``): later passes do not take it apart
KEPT = "fla_kept"


def extract(out, roles: list[fx.Node]) -> tuple[fx.GraphModule, dict]:
    """The region from the (distinct) role nodes to ``out`` (a node or a tuple of nodes) as a
    GraphModule with the roles as inputs, in order.

    Raises NearMiss if the region reads any other runtime value: it could not be recomputed."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for i, r in enumerate(dict.fromkeys(roles)):
        env[r] = g.placeholder(f"role{i}")
        env[r].meta = dict(r.meta)
    outs = out if isinstance(out, tuple) else (out,)
    region = dict.fromkeys(n for o in outs for n in cone(o, set(roles)))
    for n in [n for n in outs[0].graph.nodes if n in region]:
        if n.op == "placeholder" and isinstance(_recorded(n), (torch.SymInt, torch.SymFloat)):
            env[n] = value_of(n)  # a symbolic size (a mask of T x T): its value now; a rewrite pins it
            continue
        if n.op in ("placeholder", "get_attr"):
            raise NearMiss(f"the region depends on the runtime value '{n.name}' (not provable)")
        if is_random(n):
            raise NearMiss(f"the region draws random numbers at '{n.name}'")
        if n.op not in ("call_function", "call_method"):
            raise NearMiss(f"the region calls '{n.target}', which cannot be replayed")
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output(tuple(env[o] for o in outs) if isinstance(out, tuple) else env[out])
    return fx.GraphModule(torch.nn.Module(), g), env


def probe_role(node: fx.Node, gen: torch.Generator, kind=None) -> torch.Tensor:
    """Probe values for a role node (see ``verify.probe`` for ``kind``), on the role's device."""
    v = value_of(node)
    if not isinstance(v, torch.Tensor) or not v.is_floating_point():
        raise NearMiss(f"the role value '{node.name}' is not a float tensor")
    return probe(shape_of(node), gen, kind, v.device)


def inner_users(region: list[fx.Node], out: fx.Node, roles: list[fx.Node]) -> str | None:
    """A node of the region computed from the roles (other than the output) that is also used
    outside it: it would stay alive, and so would the work the rewrite is meant to remove."""
    inside = set(region)
    dep = set(roles)
    for n in region:
        if any(a in dep for a in n.all_input_nodes):
            dep.add(n)
    for n in region:
        if n is out or n not in dep or n in roles:
            continue
        for u in n.users:
            if u not in inside:
                return f"'{n.name}' is also used by '{u.name}' outside the region; rewriting would not remove it"
    return None


def prove(gm: fx.GraphModule, recs: list[Recurrence], opts, span=None) -> tuple[Recurrence, float]:
    """Prove bindings of the region ``gm`` (its inputs: the roles of ``recs``) on fresh probes."""
    gen = torch.Generator().manual_seed(11232026)
    args = [probe_role(r, gen, (span or {}).get(r)) for r in role_nodes(recs[0])]
    return prove_region(gm, args, recs, form_call, opts.verify)


def run_anchored(graph: fx.Graph, targets: set, match, spelling: str, opts, report) -> list:
    """Match, prove and rewrite the form anchored at each node of ``graph`` whose target is in ``targets``
    (``match(node, opts)``, as :func:`take` calls it). Returns [(source, output nodes, kept reason)] of the
    matches."""
    done = []
    for anchor in [n for n in graph.nodes if n.target in targets]:
        if not getattr(anchor, "_erased", False):  # not removed by an earlier rewrite
            src = source_line(anchor)
            taken = take(lambda a=anchor: match(a, opts), src, spelling, opts, report)
            done += [(src, *taken)] if taken else []
    return done


def take(match, src: str, spelling: str, opts, report) -> tuple | None:
    """One form: ``match()`` gives (Recurrence, proof error, its output nodes), None (not this form) or raises
    NearMiss (the reason it is left as written). The cost table decides the rewrite; the report says it.
    (output nodes, kept reason) of a match, else None."""
    try:
        found = match()
    except NearMiss as e:
        report.misses.append(Miss(spelling, str(e), src, e.grade))
        return None
    except Exception as e:  # an unforeseen layout: leave it (the graph is untouched until the rewrite)
        report.misses.append(Miss(spelling, f"not analysed: {type(e).__name__}: {e}", src))
        return None
    if found is None:
        return None
    rec, err, outs = found
    kept, shape = costs.decide(opts, rec.family.value, spelling, costs.form_shape, rec, outs[0])
    if not kept:
        rewrite_form(outs, rec)
    report.matches.append(Match(rec.family.value, spelling, src, rec.op_name, err, kept, shape))
    return outs, kept

"""The ``loss`` spelling: a cross entropy of a linear layer's logits, fused into one
``fla_compile.linear_cross_entropy`` call that never holds the [N, vocab] logits.

Structure proposes: a ``F.cross_entropy(x, labels)`` (``nn.CrossEntropyLoss``, transformers'
``ForCausalLMLoss`` and ``fixed_cross_entropy`` reach the graph as this call), or
``F.nll_loss(log_softmax(x), labels)``, where ``x`` [N, vocab] comes from a linear layer's
logits through token-only steps:

    logits = linear(h, W, b) | h @ X | matmul(h, X) | mm(h, X) | addmm(b, h, X)   # X = W.T
    x = logits (.float() | .to(dtype) | .contiguous() | .view/.reshape(..., V) | [..., :-1, :] | .flatten(0, 1))*

The steps act on the token dims only, so they can run on ``h`` instead (the view's last size V
becomes h's width); the fused op then takes the tokens [N, Hd]. Every node from the logits to
the loss must have no other user: logits also returned to the caller, or read by a z-loss term,
stay materialized, and the region is left as written (a near miss saying who else reads them).

Numbers decide: the region (the logits through the loss) and its replacement (the steps replayed
on ``h``, then the op) run on the same fresh float64 probes (labels drawn with ``ignore_index``
among them), twice; only an equal loss is rewritten. A softmax over another dim, class weights
or anything else the op does not compute fails there. A large region (151936 classes) is probed
with fewer tokens and a narrower ``h``, its steps being the same at any token count.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..numerics import rel_err
from ..report import Match, Miss, Report
from ..rewrite import traced_dtype
from ..verify import TOL, NearMiss, run_region
from ._graph import source_line, value_of
from ._region import extract

SPELLING = "loss"
OP = "fla_compile.linear_cross_entropy"
CROSS_ENTROPY = {F.cross_entropy}
NLL = {F.nll_loss}
LOG_SOFTMAX = {F.log_softmax, torch.log_softmax, "log_softmax"}
LINEAR = {torch._C._nn.linear, F.linear}
MATMUL = {operator.matmul, torch.matmul, torch.mm, "matmul", "__matmul__", "mm"}
CASTS = {"float", "double", "half", "bfloat16", "contiguous", "to", "type"}
VIEWS = {"view", "reshape", torch.reshape}
FLATTEN = {"flatten", torch.flatten}
PROBE_ELEMENTS = 1 << 24  # a region probed at its traced sizes holds at most this many fp64 logits
PROBE_ROWS, PROBE_WIDTH = (2, 16), 32  # else: leading token dims cut to 2 (the last to 16), h's width to 32


def _bound(fn, n: fx.Node) -> dict:
    args = n.args[1:] if n.op == "call_method" else n.args
    first = (n.args[0],) if n.op == "call_method" else ()
    ba = inspect.signature(fn).bind(*first, *args, **n.kwargs)
    ba.apply_defaults()
    return ba.arguments


def _is(n, names) -> bool:
    return isinstance(n, fx.Node) and n.op in ("call_function", "call_method") and n.target in names


# ---------------------------------------------------------------- the candidate
@dataclasses.dataclass
class Candidate:
    loss: fx.Node  # the cross_entropy or nll_loss call
    x: fx.Node  # its input, [N, V]
    labels: fx.Node
    hidden: fx.Node
    weight: fx.Node  # W [V, Hd] (linear) or X = W.T [Hd, V] (matmul)
    bias: fx.Node | None
    transposed: bool  # weight is X, the op gets X.T
    steps: list  # the nodes from the logits to x, logits first
    ignore_index: int
    smoothing: float
    reduction: str

    @property
    def roles(self) -> list[fx.Node]:
        return [r for r in (self.hidden, self.weight, self.bias, self.labels) if r is not None]


def _producer(n: fx.Node):
    """(hidden, weight, bias, transposed) when ``n`` is a linear layer's logits, else None."""
    if _is(n, LINEAR):  # linear(input, weight, bias=None): a builtin, no signature to bind
        a = dict(zip(("input", "weight", "bias"), n.args)) | dict(n.kwargs)
        return a["input"], a["weight"], a.get("bias"), False
    if _is(n, MATMUL) and len(n.args) == 2 and not n.kwargs:
        h, x = n.args
        return h, x, None, True
    if n.op == "call_function" and n.target is torch.addmm and len(n.args) == 3 and not n.kwargs:
        b, h, x = n.args
        return h, x, b, True
    return None


def _token_step(n: fx.Node) -> bool:
    """A step acting on the token dims only, keeping the class dim last (checked for views and
    indexing in ``_replay``; the proof checks the result)."""
    if _is(n, CASTS):
        if n.target == "to":
            return all(isinstance(a, torch.dtype) for a in n.args[1:]) and set(n.kwargs) <= {"dtype"}
        return n.target != "type" or all(isinstance(a, torch.dtype) for a in n.args[1:])
    return _is(n, VIEWS | FLATTEN) or (n.op == "call_function" and n.target is operator.getitem)


def find(graph: fx.Graph) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Cross entropies of a linear layer's logits, and the near misses (reason, source)."""
    cands, misses = [], []
    for n in graph.nodes:
        try:
            c = _candidate(n)
        except NearMiss as e:
            misses.append((str(e), source_line(n)))
            continue
        except Exception:  # noqa: BLE001 - a call we cannot read is not a candidate
            continue
        if c is not None:
            cands.append(c)
    return cands, misses


def _candidate(n: fx.Node) -> Candidate | None:
    if _is(n, CROSS_ENTROPY):
        a = _bound(F.cross_entropy, n)
        x, smoothing = a["input"], a["label_smoothing"]
        inner = [x]
    elif _is(n, NLL) and _is(n.args[0] if n.args else None, LOG_SOFTMAX):
        a = _bound(F.nll_loss, n)
        lsm = a["input"]
        x, smoothing = lsm.args[0], 0.0
        inner = [lsm, x]
    else:
        return None
    if not isinstance(x, fx.Node):
        return None
    steps, cur = [], x
    while _token_step(cur) and isinstance(cur.args[0], fx.Node):
        steps.append(cur)
        cur = cur.args[0]
    prod = _producer(cur)
    if prod is None:
        return None  # a cross entropy of logits that are not a linear layer's: nothing to fuse
    hidden, weight, bias, transposed = prod
    where = f"the cross entropy of the logits '{cur.name}'"
    for node in [cur, *reversed(steps), *inner[:-1]]:
        others = [u.name for u in node.users if u not in (*steps, *inner, n)]
        if others:
            raise NearMiss(
                f"{where}: '{node.name}' is also used by {', '.join(repr(o) for o in others)}; "
                "fusing would not remove the logits (left as written)"
            )
    if a["weight"] is not None:
        raise NearMiss(f"{where}: class weights are not fused (left as written)")
    if a["size_average"] is not None or a["reduce"] is not None:
        raise NearMiss(f"{where}: the legacy size_average/reduce arguments are not fused (use reduction=)")
    ii, red = a["ignore_index"], a["reduction"]
    if not isinstance(ii, int) or not isinstance(red, str) or not isinstance(smoothing, (int, float)):
        raise NearMiss(f"{where}: ignore_index, reduction and label_smoothing must be constants")
    xv, lv = value_of(x), value_of(a["target"])
    if not isinstance(a["target"], fx.Node) or lv.is_floating_point():
        raise NearMiss(f"{where}: soft (probability) targets are not fused")
    wv = value_of(weight)
    if xv.dim() != 2 or wv.dim() != 2 or xv.shape[1] != wv.shape[1 if transposed else 0]:
        raise NearMiss(f"{where}: the loss input is not [tokens, classes] of the linear layer's {tuple(wv.shape)}")
    steps = list(reversed(steps))
    _check_steps(steps, xv.shape[1])
    return Candidate(n, x, a["target"], hidden, weight, bias, transposed, steps, ii, float(smoothing), red)


# ---------------------------------------------------------------- the replacement
class LossLowering:
    """The fused op on tokens [N, Hd] (the steps already replayed on ``h``); the loss in ``dtype``."""

    def __init__(self, cand: Candidate, dtype: torch.dtype):
        self.ignore_index, self.smoothing, self.reduction = cand.ignore_index, cand.smoothing, cand.reduction
        self.transposed, self.dtype = cand.transposed, dtype
        self.__name__ = "fla_linear_cross_entropy"

    def __repr__(self) -> str:
        return self.__name__

    def __call__(self, hidden, weight, bias, labels):
        w = weight.t() if self.transposed else weight
        grad = torch.is_grad_enabled()
        need_h = grad and hidden.requires_grad
        need_w = grad and (w.requires_grad or (bias is not None and bias.requires_grad))
        loss = torch.ops.fla_compile.linear_cross_entropy(
            hidden, w, bias, labels, self.ignore_index, self.smoothing, self.reduction, need_h, need_w, 0
        )[0]
        return loss.to(traced_dtype(self.dtype))


def _replay(graph: fx.Graph, cand: Candidate, lookup, width: int) -> fx.Node:
    """Insert the replacement into ``graph`` (at its current insertion point): the token steps
    on the hidden states, then the fused op. ``lookup`` maps a node of the captured graph (a role,
    a size a step reads) to its node in ``graph``."""
    cur = lookup(cand.hidden)
    for s in cand.steps:
        if _is(s, CASTS):
            continue  # the op computes in fp32 whatever the logits' dtype
        rest = fx.map_arg(s.args[1:], lookup)
        if _is(s, VIEWS):  # the same view with h's width in place of the classes
            shape = _view_shape(rest)
            args = (cur, *shape[:-1], width)
        else:  # flatten of token dims, indexing of token dims
            args = (cur, *rest)
        cur = graph.create_node(s.op, s.target, args, fx.map_arg(dict(s.kwargs), lookup))
    bias = lookup(cand.bias) if cand.bias is not None else None
    low = LossLowering(cand, value_of(cand.loss).dtype)
    return graph.call_function(low, (cur, lookup(cand.weight), bias, lookup(cand.labels)))


def _view_shape(rest) -> list:
    return list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else list(rest)


def _check_steps(steps: list, V: int) -> None:
    """Each step must keep the class dim whole and last (NearMiss naming the step that does not)."""
    for s in steps:
        if _is(s, VIEWS):
            shape = _view_shape(s.args[1:])
            if not shape or shape[-1] != V:
                raise NearMiss(f"'{s.name}' does not keep the {V} classes as its last dim")
        elif _is(s, FLATTEN):
            nd = value_of(s.args[0]).dim()
            end = (list(s.args[2:3]) or [s.kwargs.get("end_dim", -1)])[0]
            if not isinstance(end, int) or end % nd == nd - 1:
                raise NearMiss(f"'{s.name}' flattens the class dim")
        elif s.op == "call_function" and s.target is operator.getitem:
            if not _keeps_last(s.args[1], value_of(s.args[0]).dim()):
                raise NearMiss(f"'{s.name}' indexes the class dim")


def _keeps_last(idx, nd: int) -> bool:
    """Whether indexing a tensor of ``nd`` dims by ``idx`` leaves its last dim whole and last."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    full = slice(None, None, None)
    if Ellipsis in idx:
        after = idx[idx.index(Ellipsis) + 1 :]
        return not after or (after[-1] == full and all(i is not None for i in after))
    dims = [i for i in idx if i is not None]
    return (
        len(dims) < nd
        and all(isinstance(i, (int, slice, fx.Node)) for i in dims)
        or (len(dims) == nd and dims[-1] == full)
    )


# ---------------------------------------------------------------- the proof
def _probes(cand: Candidate, gen: torch.Generator, small: bool, width: int) -> dict:
    """Fresh float64 hidden, weight and bias for the roles (fewer tokens when ``small``)."""
    h, w = value_of(cand.hidden), value_of(cand.weight)
    lead = list(h.shape[:-1])
    if small:
        lead = [min(d, PROBE_ROWS[1] if i == len(lead) - 1 else PROBE_ROWS[0]) for i, d in enumerate(lead)]
    V = w.shape[1] if cand.transposed else w.shape[0]
    dev = h.device
    out = {cand.hidden: torch.randn(*lead, width, generator=gen, dtype=torch.float64).to(dev)}
    wt = torch.randn(V, width, generator=gen, dtype=torch.float64) * width**-0.5 * 2  # logits of unit size
    out[cand.weight] = (wt.t() if cand.transposed else wt).to(dev)
    if cand.bias is not None:
        out[cand.bias] = torch.randn(V, generator=gen, dtype=torch.float64).to(dev)
    return out


def _labels(cand: Candidate, n: int, V: int, gen: torch.Generator, device) -> torch.Tensor:
    """Class indices with about a quarter of them ``ignore_index``; the labels' traced dtype."""
    y = torch.randint(0, V, (n,), generator=gen)
    y[torch.rand(n, generator=gen) < 0.25] = cand.ignore_index
    return y.to(value_of(cand.labels).dtype).to(device)


def prove(cand: Candidate) -> float:
    """The worst relative error of the replacement against the region on two fresh draws (NearMiss
    if they differ): both run in one graph, the region's nodes and the replacement's."""
    roles = cand.roles
    region, env = extract(cand.loss, roles)
    logits, _ = extract(cand.x, [r for r in roles if r is not cand.labels])
    small = value_of(cand.x).numel() + value_of(cand.weight).numel() > PROBE_ELEMENTS
    width = value_of(cand.hidden).shape[-1]
    width = min(width, PROBE_WIDTH) if small else width

    def lookup(n):
        if n not in env:
            raise NearMiss(f"the token steps read '{n.name}', which is not part of the loss region")
        return env[n]

    out = next(iter(region.graph.find_nodes(op="output")))
    with region.graph.inserting_before(out):
        rep = _replay(region.graph, cand, lookup, width)
    out.args = ((out.args[0], rep),)
    region.recompile()
    gen = torch.Generator().manual_seed(15)
    worst = 0.0
    for _ in range(2):
        vals = _probes(cand, gen, small, width)
        x = run_region(logits, [vals[r] for r in roles if r is not cand.labels], keep=())[0]
        vals[cand.labels] = _labels(cand, x.shape[0], x.shape[1], gen, x.device)
        ref, got = run_region(region, [vals[r] for r in roles], keep=())[0]
        err = rel_err(got.double(), ref.double())
        if not err <= TOL or not torch.isfinite(ref).all():
            raise NearMiss(
                f"the fused linear cross entropy differs from the region on fresh inputs (rel err {err:.1e})"
            )
        worst = max(worst, err)
    return worst


# ---------------------------------------------------------------- the pass
def run_pass(graph: fx.Graph, opts, report: Report) -> None:
    """Find, prove and rewrite every cross entropy of a linear layer's logits in ``graph``."""
    cands, misses = find(graph)
    report.misses += [Miss(SPELLING, reason, src) for reason, src in misses]
    for cand in cands:
        src = source_line(cand.loss)
        try:
            err = prove(cand) if opts.verify else math.nan
        except NearMiss as e:
            report.misses.append(Miss(SPELLING, str(e), src))
            continue
        except Exception as e:  # noqa: BLE001 - an unforeseen region: left as written
            report.misses.append(Miss(SPELLING, f"not analysed: {type(e).__name__}: {e}", src))
            continue
        kept = kept_reason(cand, opts)
        if not kept:
            _rewrite(graph, cand)
        report.matches.append(Match("linear_cross_entropy", SPELLING, src, OP, err, kept))


def kept_reason(cand: Candidate, opts) -> str:
    """Why the proven loss stays as written ("" where the fused op runs): memory decides.

    The fused op holds one chunk of fp32 logits (``chunk_rows``: 1 GiB of them), so where all N x V
    logits fit in one chunk it saves no memory, and Inductor's unfused loss (the logits in the model's
    dtype, the softmax fused into one pass) is the cheaper path: on the H200 at N 8192, vocab 32000,
    hidden 1024, bf16, 3.0 ms and 0.56 GiB against the fused op's 3.8 ms and 1.62 GiB (2026-11-30).
    Only with Inductor compiling the rest (``inductor``) and the cost model on (``costs``); sizes
    Dynamo keeps symbolic are fused (no one size to decide at).
    """
    if not (opts.costs and opts.inductor):
        return ""
    from ..lowering.loss import chunk_rows

    N, V = value_of(cand.x).shape
    if not (isinstance(N, int) and isinstance(V, int)):
        return ""
    if chunk_rows(N, V) < N:
        return ""
    return (
        f"kept as written: its {N} x {V} logits fit in one chunk of the fused op ({N * V * 4 / 2**30:.2f} GiB "
        "in fp32), where fusing saves no memory and Inductor's unfused loss is faster"
    )


def _rewrite(graph: fx.Graph, cand: Candidate) -> None:
    with graph.inserting_before(cand.loss):
        call = _replay(graph, cand, lambda n: n, value_of(cand.hidden).shape[-1])
    call.meta = {k: v for k, v in cand.loss.meta.items() if k in ("example_value", "val", "stack_trace")}
    cand.loss.replace_all_uses_with(call)
    graph.eliminate_dead_code()

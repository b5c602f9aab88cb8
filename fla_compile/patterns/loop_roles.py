"""A classified loop as the ``Recurrence`` its lowering reads: roles as small functions of the region's
inputs, and the output's and state's layouts in run-time shapes (an ``ir.LoopLayout``).

``verify.classify_loop`` binds each role to a value of one step (``verify.Role``: a node of the step, a
recipe, a target shape). ``recurrence`` turns each into an ``ir.RoleFn``: the per-step computation of
that value from the region's inputs (``LoopRegion.role_graph``), hoisted over the sequence (a role that
is a read is its source with time moved first; others run under ``torch.vmap`` over the time dims of
their reads), shaped to [T, *batch, D] with ``batch`` the state's leading dims at run time. The lowering
(``rewrite.LoopLowering``) reads only the ``Recurrence``; the step and the region stay here.

Sizes. Where Dynamo traced sizes as symbols (a recompile, ``dynamic=True``), the batch dims (the
state's leading dims) stay symbols: the lowering reads each from a dim of one of its arguments that
has the same symbol (the sequences the steps read, the initial state), as it does the output's. Pinned to this call's values (guarded, so other values
recompile): the state's own dims (K and V: the scale is a number fitted on probes, and a reduction
over K, ``x.mean(-1)``, would hold K in it; an elementwise scan's last dim where it reads out over it),
sizes the step reads as numbers (``K ** -0.5``: its graph holds their values), and any size of the
state or the output that no argument carries.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx

from .. import costs
from ..ir import Family, LoopLayout, Recurrence, RoleFn
from ..report import Match, Miss, Report
from ..rewrite import LoopLowering, rewrite_loop
from ..verify import Role, reshaped
from ._graph import value_of
from .loop import SPELLING, LoopRegion

ROLES = ("q", "k", "v", "gate", "beta", "bonus", "decay")


def _recorded(node: fx.Node):
    """The example value as traced: symbolic sizes where Dynamo traced symbols."""
    return node.meta.get("example_value", node.meta.get("val"))


def _hint(d):
    return type(d.node.hint)(d.node.hint) if isinstance(d, (torch.SymInt, torch.SymFloat)) else d


def _symbolic(d) -> bool:
    return isinstance(d, (torch.SymInt, torch.SymFloat)) and not d.node.expr.is_number


class _Pins:
    """Guards symbolic numbers to their current values (Dynamo then recompiles for other values)."""

    def __init__(self):
        self.what: list[str] = []

    def __call__(self, d, what: str):
        if _symbolic(d):
            type(d.node.hint)(d)  # int(d) / float(d) guards d == its value
            if what not in self.what:
                self.what.append(what)
        return _hint(d)


@dataclasses.dataclass(frozen=True)
class Shaper:
    """A ``verify.Role`` recipe at run-time shapes: the value (after ``lead`` leading time dims) to the
    role's target, whose first ``m`` dims are the state's batch dims and the rest ``tail`` (pinned).
    ``keep``: for a broadcast, the dims of the value the recipe keeps (the others are size-1 dims)."""

    kind: str  # "reshape", "broadcast", "unsqueeze" (without the target's next-to-last axis) or "insert"
    m: int
    tail: tuple
    keep: tuple = ()
    axis: int = -2  # "insert": the target's axis the value lacks, counted from the end

    def __call__(self, v: torch.Tensor, batch: tuple, lead: int) -> torch.Tensor:
        pre = tuple(v.shape[:lead])
        target = (*batch[: self.m], *self.tail)
        if self.kind == "reshape":
            return reshaped(v, *pre, *target)
        shape = tuple(v.shape[lead + i] for i in self.keep)
        if self.kind in ("unsqueeze", "insert"):  # Mamba's C_t [B, N] against the state [B, D, N]; B_t for H heads
            return reshaped(v, *pre, *shape).unsqueeze(self.axis).expand(*pre, *target)
        v = reshaped(v, *pre, *([1] * (len(target) - len(shape))), *shape)  # right-aligned, after the time dim
        return v.expand(*pre, *target)


def _kept_dims(value_shape: tuple, shape: tuple) -> tuple | None:
    """Indices of ``value_shape`` that are ``shape`` once size-1 dims are dropped (from the right), or None."""
    keep, j = [], len(shape) - 1
    for i in reversed(range(len(value_shape))):
        if j >= 0 and value_shape[i] == shape[j]:
            keep.append(i)
            j -= 1
        elif value_shape[i] != 1:
            return None
    return tuple(reversed(keep)) if j < 0 else None


def _shaper(role: Role, value_shape: tuple, batch: tuple, name: str) -> Shaper:
    target = role.target
    m = len(batch) if name != "decay" and tuple(target[: len(batch)]) == tuple(batch) else 0
    kind, tail = role.recipe[0], tuple(target[m:])
    if kind == "reshape":
        return Shaper(kind, m, tail)
    keep = _kept_dims(tuple(value_shape), tuple(role.recipe[1]))
    if keep is None:
        raise ValueError(f"the {name} role's recipe {role.recipe} does not fit its value {tuple(value_shape)}")
    return Shaper(kind, m, tail, keep, role.recipe[2] if kind == "insert" else -2)


class StepRole:
    """A role computed in the step, over the whole sequence: ``gm`` (the step's computation of it from
    reads and values from before the loop) under ``torch.vmap`` over the reads' time dims, or the read's
    source with time first where the role is a read, or broadcast over time where it reads no step."""

    def __init__(self, gm: fx.GraphModule, in_dims: tuple, posts: tuple, shaper: Shaper):
        self.gm, self.in_dims, self.posts, self.shaper = gm, in_dims, posts, shaper
        phs = gm.graph.find_nodes(op="placeholder")
        (out,) = gm.graph.find_nodes(op="output")
        # a read itself: no vmap of the step (vmap costs more than the op at short T)
        self.plain = list(out.args[0]) == phs and len(phs) == 1 and posts == (None,) and None not in in_dims

    def _step(self, *xs):
        return self.gm(*[x if post is None else x[post] for x, post in zip(xs, self.posts)])[0]

    def __call__(self, T, batch, *xs):
        if self.plain:
            v = xs[0].movedim(self.in_dims[0], 0)
        elif all(d is None for d in self.in_dims):
            v = self._step(*xs)
            v = v.unsqueeze(0).expand(T, *v.shape)
        else:
            v = torch.vmap(self._step, in_dims=self.in_dims, out_dims=0)(*xs)
        return self.shaper(v, batch, 1)


class GlobalRole:
    """A role that is a value from before the loop, the same at every step."""

    def __init__(self, shaper: Shaper):
        self.shaper = shaper

    def __call__(self, T, batch, x):
        v = self.shaper(x, batch, 0)
        return v.unsqueeze(0).expand(T, *v.shape)


def _step_shape(region: LoopRegion, origin: tuple, gm: fx.GraphModule) -> tuple:
    """The shape of one step's value at ``origin``: a read's is its source's at one step (``post`` applied)."""
    if origin[0] == "read":
        r = region.reads[origin[1]]
        x = torch.empty(tuple(value_of(r.src).shape), device="meta").select(r.dim, 0)
        return tuple((x if r.post is None else x[r.post]).shape)
    (out,) = gm.graph.find_nodes(op="output")
    return tuple(value_of(out.args[0][0]).shape)


def _pin_step_numbers(region: LoopRegion, pin: _Pins) -> None:
    """Pin sizes the step reads as numbers from before the loop (its graph holds their values)."""
    t = 1 if region.T > 1 else 0
    inside = set(region.blocks[t]) | (set(region.blocks[t - 1]) if t else set())
    for n in region.blocks[t]:
        for a in n.all_input_nodes:
            if a not in inside:
                pin(_recorded(a), f"'{a.name}', a size the step reads as a number")


def recurrence(region: LoopRegion, rec: Recurrence) -> tuple[Recurrence, list[str]]:
    """``rec`` (roles bound to the step's values by ``classify_loop``) with its roles as ``RoleFn``s of the
    region's inputs and a ``LoopLayout``; and what was pinned (see the module docstring). Call it only
    for a loop that is rewritten: its pins guard the compiled graph."""
    pin = _Pins()
    batch = tuple(rec.extras["batch"])
    nb = len(batch)
    state_sym = _recorded(region.init_state)
    state_sym = tuple(state_sym.shape) if isinstance(state_sym, torch.Tensor) else ()
    for i in range(len(state_sym)):
        if i >= nb or (rec.family == Family.HGRN and rec.q is not None and i == len(state_sym) - 1):
            pin(state_sym[i], f"the state's dim {i} ({_hint(state_sym[i])})")
    _pin_step_numbers(region, pin)

    inputs: dict = {}

    def arg(node) -> int:
        return inputs.setdefault(node, len(inputs))

    time = None
    roles = {}
    for name in ROLES:
        role = getattr(rec, name)
        if not isinstance(role, Role):
            continue
        if role.origin[0] == "global":
            node = role.origin[1]
            fn = GlobalRole(_shaper(role, tuple(value_of(node).shape), batch, name))
            roles[name] = RoleFn(fn, (arg(node),), role.log)
            continue
        gm, role_inputs = region.role_graph([role.origin])
        shaper = _shaper(role, _step_shape(region, role.origin, gm), batch, name)
        args, in_dims, posts = [], [], []
        for kind, ref in role_inputs:
            if kind == "read":
                r = region.reads[ref]
                args.append(arg(r.src))
                in_dims.append(r.dim)
                posts.append(r.post)
                time = time or (args[-1], r.dim)
            else:
                args.append(arg(ref))
                in_dims.append(None)
                posts.append(None)
        roles[name] = RoleFn(StepRole(gm, tuple(in_dims), tuple(posts), shaper), tuple(args), role.log)
    initial = arg(rec.initial_state) if rec.initial_state is not None else None
    init_norm = getattr(region, "init_norm", None)  # a normalizer carried beside the state (patterns/normalized.py)
    norm = arg(init_norm) if initial is not None and init_norm is not None else None
    recorded = [_recorded(n) for n in inputs]

    def dims(shape: tuple, what: str) -> tuple:
        """Each dim as (i, d), dim d of argument i at run time, where an input has it; else a pinned int."""
        out = []
        for d in shape:
            at = None
            if _symbolic(d):
                at = next(
                    (
                        (i, j)
                        for i, v in enumerate(recorded)
                        if isinstance(v, torch.Tensor)
                        for j, e in enumerate(v.shape)
                        if _symbolic(e) and e.node.expr == d.node.expr
                    ),
                    None,
                )
            out.append(at if at is not None else pin(d, what))
        return tuple(out)

    out_shape, out_dtype = (), None
    if region.out_kind == "buffer":
        buf = _recorded(region.out_target)
        slot = list(buf.shape)
        slot.pop(region.out_dim)  # the time dim: the run-time length
        out_shape, out_dtype = dims(tuple(slot), "the output buffer's shape"), buf.dtype
    elif region.out_offset is not None:
        o = _recorded(region.blocks[-1][region.out_offset])
        out_shape, out_dtype = dims(tuple(o.shape), "the per-step output's shape"), o.dtype
    final = value_of(region.blocks[-1][region.state_offset])
    layout = LoopLayout(
        inputs=tuple(inputs),
        initial=initial,
        batch=dims(state_sym[:nb], "the state's batch dims") if state_sym else tuple(final.shape[:nb]),
        state_tail=tuple(final.shape[nb:]),
        T=region.T,
        time=time,
        out_kind=region.out_kind,
        out_dim=region.out_dim,
        out_shape=out_shape,
        out_dtype=out_dtype,
        state_dtype=final.dtype,
        nodes=tuple(n for b in region.blocks for n in b),
        out_target=region.out_target,
        final_state=region.blocks[-1][region.state_offset],
        norm=norm,
        final_norm=region.blocks[-1][region.norm_offset] if region.final_norm_used else None,
    )
    return rec.replace(layout=layout, **roles), pin.what


def pinned_note(rec: Recurrence, pinned: list[str]) -> str:
    """The report's note on what a loop's rewrite pinned."""
    return f"symbolic sizes pinned for the loop at {rec.source} ({'; '.join(pinned)}): other values recompile"


def lower(region: LoopRegion, rec: Recurrence, err: float, opts, report: Report) -> None:
    """A proven loop's last step: ``costs.decide`` keeps it as written or it is rewritten to the op (its roles
    taken by :func:`recurrence`), and the report gets the match; a role whose layout cannot be taken at run time
    leaves the loop as written, a miss that says why."""
    kept, shape = costs.decide(opts, rec.family.value, SPELLING, costs.loop_shape, region)
    if not kept:
        try:
            rec, pinned = recurrence(region, rec)  # from here on, the Recurrence alone
        except ValueError as e:
            report.misses.append(Miss(SPELLING, str(e), region.source))
            return
        rewrite_loop(rec, LoopLowering(rec))
        if pinned:
            report.notes.append(pinned_note(rec, pinned))
    report.matches.append(Match(rec.family.value, rec.spelling, rec.source, rec.op_name, err, kept, shape))

"""Rewrite: a proven region becomes one call of its family op; the rest of the graph stays.

For a loop, the ``Recurrence`` alone says what to call too: its roles are ``RoleFn``s, the per-step
work that does not touch the state (gates, scales, feature maps) hoisted out as whole-sequence
tensors of the region's inputs (``patterns/loop_roles.py`` builds them); the op runs on [B, T, H, D]
views with the batch dims read from the state at run time, and the results are laid out as the
user's code laid them out (stacked, concatenated or written into a buffer; ``LoopLayout``). Layout
transposes are left for Inductor to fuse.

For a whole-sequence form (parallel, cumsum), the ``Recurrence`` alone says what to call:
its roles become the call's arguments, ``layout`` (a ``RegionLayout``) takes them to
[1, T, N, D] with every batch dim folded into the op's heads and brings the output back,
and a fused normalizer (``extras["normalizer"]``) adds a ones column to v.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from .ir import Family, Layout, LoopLayout, Recurrence, RoleFn
from .numerics import HALF
from .ops.dispatch import run_family
from .verify import reshaped

aten = torch.ops.aten
ZEROS = {
    torch.zeros,
    torch.zeros_like,
    "new_zeros",
    aten.zeros.default,
    aten.zeros_like.default,
    aten.new_zeros.default,
}


def is_zeros(node) -> bool:
    return isinstance(node, fx.Node) and node.target in ZEROS


def batch_split(batch: tuple) -> tuple[int, int]:
    """The state's leading dims as (B, H) for the op: the last is the heads (as ``verify`` binds per-head values,
    rwkv6's bonus, against it), the others fold into B; a single one is the heads of one sequence."""
    if len(batch) == 0:
        return 1, 1
    return math.prod(batch[:-1]), batch[-1]


def to_bthd(x: torch.Tensor, batch: tuple) -> torch.Tensor:
    """[T, *batch, (D)] -> [B, T, H, (D)]."""
    B, H = batch_split(batch)
    return _unviewed(reshaped(x, x.shape[0], B, H, *x.shape[1 + len(batch) :]).transpose(0, 1))


def _unviewed(x: torch.Tensor) -> torch.Tensor:
    """``x``'s base where ``x`` is a view of it with its very layout (the user's transpose to
    [B, H, T, D] undone by ours): the same tensor, and a traced lowering records no view ops."""
    if torch.compiler.is_dynamo_compiling():  # Dynamo tracing us (an outer torch.compile): views are free there
        return x
    base = x._base
    layout = (x.shape, x.stride(), x.storage_offset(), x.dtype, x.requires_grad)
    if (
        base is not None
        and (base.shape, base.stride(), base.storage_offset(), base.dtype, base.requires_grad) == layout
    ):
        return base
    return x


def from_bthd(x: torch.Tensor, batch: tuple) -> torch.Tensor:
    """[B, T, H, D] -> [T, *batch, D]."""
    return reshaped(x.transpose(0, 1), x.shape[1], *batch, x.shape[-1])


def log_gate(x: torch.Tensor, kind: str) -> torch.Tensor:
    x = x.float() if x.dtype != torch.float64 else x
    if kind == "exp":
        return x
    if kind == "sigmoid":
        return F.logsigmoid(x)
    # a decay given as a plain value was proven on positive probes; the ops take log-gates, so a
    # value <= 0 at run time has no lowering: stop loudly (traceable, no host sync on CUDA)
    torch._assert_async(
        (x > 0).all(),
        "fla_compile: this loop's decay is lowered through its log, and at run time it holds a value <= 0, "
        "which the linear-attention ops cannot represent; write the decay as exp(g) or sigmoid(g) of a "
        "log-space gate, or compile this loop without backend='fla'",
    )
    return torch.log(x)


LOOP_ROLES = ("q", "k", "v", "gate", "beta", "bonus", "decay")


def call_family(b: Recurrence, vals: dict, h0, batch: tuple | None = None):
    """Run the family op on role values [T, *batch, D] (gate [T, *batch(, K)]) and a state
    [*batch, X, Y]; return o [T, *batch, V] and the final state [*batch, X, Y]. ``batch``: the
    state's leading dims (hgrn: its shape) at run time; the classified ones (``extras["batch"]``) if None."""
    batch = tuple(b.extras["batch"]) if batch is None else batch
    if b.family == Family.HGRN:
        return _call_scan(b, vals, h0, batch)
    if b.family == Family.MAMBA:
        return _call_selective(b, vals, h0, batch)
    if b.family == Family.NORMALIZED_LINEAR_ATTN:
        return _call_normalized(b, vals, h0, batch)
    family = b.family
    q, k, v = (to_bthd(vals[n], batch) for n in ("q", "k", "v"))
    B, H = batch_split(batch)
    if h0 is not None:
        h0 = reshaped(h0, B, H, *h0.shape[-2:])
        h0 = h0.transpose(-1, -2) if b.state_transposed else h0
        h0 = h0.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
    gate = beta = None
    if b.beta is not None:
        beta = to_bthd(vals["beta"], batch)
    if b.gate is not None:
        gate = to_bthd(log_gate(vals["gate"], b.gate.log), batch)
    elif b.decay is not None and beta is not None:  # a literal constant decay of a gated delta rule
        gate = torch.full(beta.shape, b.decay, dtype=torch.float32, device=q.device)
    bonus = None
    if b.bonus is not None:  # rwkv6's u, constant over time and batch: [H, K]
        bonus = to_bthd(vals["bonus"], batch)[0, 0]
    o, ht = run_family(
        family, q, k, v, gate=gate, beta=beta, decay=b.decay, scale=b.scale, initial_state=h0, bonus=bonus
    )
    ht = ht.transpose(-1, -2) if b.state_transposed else ht
    return from_bthd(o, batch), reshaped(ht, *batch, *ht.shape[-2:])


def _call_normalized(b: Recurrence, vals: dict, h0, batch: tuple):
    """normalized_linear_attn on role values q, k, v [T, *batch, D] and a state (S [*batch, K, V],
    z [*batch, K]) or None; returns o [T, *batch, V] and the final state (S_T, z_T)."""
    from .ops.normalized import normalized_linear_attn

    q, k, v = (to_bthd(vals[x], batch) for x in "qkv")
    B, H = batch_split(batch)
    if h0 is not None:
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        S0, z0 = h0
        h0 = (reshaped(S0, B, H, *S0.shape[-2:]).to(acc), reshaped(z0, B, H, z0.shape[-1]).to(acc))
    o, (St, zt) = normalized_linear_attn(q, k, v, eps=b.extras["eps"], initial_state=h0, output_final_state=True)
    return from_bthd(o, batch), (reshaped(St, *batch, *St.shape[-2:]), reshaped(zt, *batch, zt.shape[-1]))


def _call_scan(b: Recurrence, vals: dict, h0, shape: tuple):
    """hgrn on role values [T, *shape] (shape: the state's, ``extras["batch"]``) and a state [*shape]:
    the last dim is the op's D, the others fold into its B ([T, B, D] -> [B, T, D], a view). With a
    read-out role ``q`` the states are contracted with it over their last axis (Mamba's y = h C)."""
    from .ops.hgrn import hgrn_decay

    x = vals["v"]
    T, N, D = x.shape[0], math.prod(shape[:-1]), shape[-1]
    x = x if x.dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16) else x.float()
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = reshaped(x, T, N, D).transpose(0, 1)
    h0 = reshaped(h0, N, D) if h0 is not None else None
    if b.gate is not None and b.gate.log == "log":  # a decay given as a plain value: resets (0) allowed
        a = reshaped(vals["gate"], T, N, D).transpose(0, 1)
        o, ht = hgrn_decay(x, a.to(acc), h0)
    else:
        if b.gate is not None:
            g = reshaped(log_gate(vals["gate"], b.gate.log).to(acc), T, N, D).transpose(0, 1)
        else:
            g = torch.full(x.shape, b.decay, dtype=acc, device=x.device)
        o, ht = run_family(Family.HGRN, None, None, x, gate=g, initial_state=h0)
    o = reshaped(o.transpose(0, 1), T, *shape)
    if b.q is not None:  # a read-out over the state's last axis: o_t = scale * sum_n h_t[..., n] q_t[..., n]
        o = (o * vals["q"].to(o.dtype)).sum(-1)
        o = o * b.scale if b.scale != 1.0 else o
    return o, reshaped(ht, *shape)


def _call_selective(b: Recurrence, vals: dict, h0, batch: tuple):
    """mamba on role values u, dt [T, *batch, D], B, C [T, *batch, N], A ([T,] D, N: the same at every step)
    and a state [*batch, D, N] (A [N, D] and the state [*batch, N, D] where ``state_transposed``); the batch dims
    fold into the op's B. With a role beta [T, *batch, D], the op's u is
    beta * v (an input term written (dt B) x)."""
    T, D, N = vals["v"].shape[0], vals["v"].shape[-1], vals["k"].shape[-1]
    Bn = math.prod(batch)

    def bt(x, d):
        return reshaped(x, T, Bn, d).transpose(0, 1)

    u, B, C = bt(vals["v"], D), bt(vals["k"], N), bt(vals["q"], N)
    if b.decay is None:  # a decay along a gla state's value axis (GSA): exp(dt A) with dt the log-gate and A = 1
        dt = bt(log_gate(vals["gate"], b.gate.log), D)
        A = torch.ones(D, N, dtype=dt.dtype, device=dt.device)
    else:
        dt = bt(vals["gate"], D)
        A = vals["decay"][0] if vals["decay"].dim() == 3 else vals["decay"]  # the lowering repeats a global over T
        A = A.transpose(-1, -2) if b.state_transposed else A  # stored [N, D] with its state
    if b.beta is not None:  # the input term written (dt B) x: the op's u is beta v (beta: dt as the input reads it)
        u = u * bt(vals["beta"], D).to(u.dtype)
    if h0 is not None:  # the user's state as [*batch, N, D] where it is stored transposed
        h0 = reshaped(h0.transpose(-1, -2) if b.state_transposed else h0, Bn, D, N)
    y, ht = run_family(Family.MAMBA, C, B, u, gate=dt, decay=A, initial_state=h0)
    y = reshaped(y.transpose(0, 1), T, *batch, D)
    ht = reshaped(ht, *batch, D, N)
    return (y * b.scale if b.scale != 1.0 else y), (ht.transpose(-1, -2) if b.state_transposed else ht)


_WIDENED: contextvars.ContextVar[bool] = contextvars.ContextVar("fla_compile_widened", default=False)


def traced_dtype(dtype: torch.dtype | None) -> torch.dtype | None:
    """The dtype a lowering casts a result to: the one the traced code produced; inside :func:`widened`, fp32 where
    that was bf16 / fp16."""
    # never widened under a compile: no context read there
    if dtype not in HALF or torch.compiler.is_compiling():
        return dtype
    return torch.float32 if _WIDENED.get() else dtype


@contextlib.contextmanager
def widened():
    """Lowerings keep fp32 where the traced code rounded to half precision: ``@jit`` runs a graph traced in bf16 /
    fp16 once more on fp32 probes to check it against the function (``jit._check_generalized``); without this its
    lowerings would round their results (a first loop's output read by a second) to the traced dtype there. A
    context variable: other threads running lowerings meanwhile keep their casts."""
    token = _WIDENED.set(True)
    try:
        yield
    finally:
        _WIDENED.reset(token)


class LoopLowering:
    """The callable that replaces a proven loop; it reads only the loop's ``Recurrence``: its roles are
    ``RoleFn``s of the region's inputs (the call's arguments, ``layout.inputs``), its ``LoopLayout`` lays
    the op's results out as the user's code laid them out. Sizes come from the run-time shapes of the
    arguments: the length from an input's time dim, the batch dims where an argument carries them."""

    def __init__(self, rec: Recurrence):
        self.family = rec.family
        self.rec = rec
        self.layout: LoopLayout = rec.layout
        self.roles = [(n, getattr(rec, n)) for n in LOOP_ROLES if isinstance(getattr(rec, n), RoleFn)]
        self.args = list(self.layout.inputs)
        self.__name__ = f"fla_{self.family.value}_loop"
        z = self.layout.final_norm  # its dtype read now: the rewrite clears the replaced nodes' meta
        self.norm_dtype = None if z is None else z.meta.get("example_value", z.meta.get("val")).dtype

    def __repr__(self) -> str:
        return self.__name__

    def same_call(self, other) -> bool:
        """Whether ``other`` makes the same call apart from lengths (``@jit`` merges two probe lengths;
        the wiring is compared node by node there, and the merged graph checked at a third length)."""
        eps = self.rec.extras.get("eps"), other.rec.extras.get("eps") if isinstance(other, LoopLowering) else None
        return (
            isinstance(other, LoopLowering)
            and self.family == other.family
            and (self.layout.initial is None) == (other.layout.initial is None)
            and (eps[0] == eps[1] or None not in eps and math.isclose(eps[0], eps[1], rel_tol=1e-9))
        )

    def __call__(self, *args):
        lay = self.layout
        # the length comes from the inputs: @jit reuses one lowering at any T
        T = args[lay.time[0]].shape[lay.time[1]] if lay.time is not None else lay.T
        batch = _sizes(lay.batch, args)
        vals = {name: role(args, T, batch) for name, role in self.roles}
        h0 = args[lay.initial] if lay.initial is not None else None
        if h0 is not None and lay.norm is not None:  # a normalized loop's state: (S, z)
            h0 = (h0, args[lay.norm])
        o, ht = call_family(self.rec, vals, h0, batch)
        zt = None
        if isinstance(ht, tuple):  # a normalized loop's final state: (S_T, z_T)
            ht, zt = ht
        out = self._layout_output(o, T, args), reshaped(ht, *batch, *lay.state_tail).to(traced_dtype(lay.state_dtype))
        return out if lay.final_norm is None else (*out, zt.to(traced_dtype(self.norm_dtype)))

    def _layout_output(self, o, T, args):
        lay = self.layout
        if lay.out_kind == "none":
            return None
        shape = _sizes(lay.out_shape, args)
        d = lay.out_dim
        # contiguous, as a fresh buffer, stack and cat are in eager: code after the loop may ``view`` it
        if lay.out_kind == "buffer":  # ``shape``: the buffer's without its time dim
            return reshaped(o, T, *shape).movedim(0, d).to(traced_dtype(lay.out_dtype)).contiguous()
        o = reshaped(o, T, *shape).to(traced_dtype(lay.out_dtype))
        if lay.out_kind == "stack":
            d = d if d >= 0 else d + len(shape) + 1
            return o.movedim(0, d).contiguous()
        d = d if d >= 0 else d + len(shape)
        return o.movedim(0, d).flatten(d, d + 1).contiguous()


def _sizes(spec: tuple, args) -> tuple:
    """Sizes of a ``LoopLayout``: an int, or (i, d) for dim d of argument i."""
    return tuple(args[d[0]].shape[d[1]] if isinstance(d, tuple) else d for d in spec)


def rewrite_loop(rec: Recurrence, lowering: LoopLowering) -> None:
    """Replace the loop of ``rec`` (its ``LoopLayout``'s nodes) in its graph by one call of ``lowering``."""
    lay = rec.layout
    graph = lay.nodes[0].graph
    inside = set(lay.nodes)
    with graph.inserting_after(lay.nodes[-1]):
        call = graph.call_function(lowering, tuple(lowering.args))
    with graph.inserting_after(call):
        o_node = graph.call_function(operator.getitem, (call, 0))
    with graph.inserting_after(o_node):
        s_node = graph.call_function(operator.getitem, (call, 1))
    outside = lambda u: u not in inside and u is not call  # noqa: E731
    if lay.out_target is not None:
        o_node.meta["example_value"] = lay.out_target.meta.get("example_value", lay.out_target.meta.get("val"))
        lay.out_target.replace_all_uses_with(o_node, delete_user_cb=outside)
    s_node.meta["example_value"] = lay.final_state.meta.get("example_value", lay.final_state.meta.get("val"))
    lay.final_state.replace_all_uses_with(s_node, delete_user_cb=outside)
    if lay.final_norm is not None:  # a normalized loop's last normalizer, used after the loop
        with graph.inserting_after(s_node):
            z_node = graph.call_function(operator.getitem, (call, 2))
        z_node.meta["example_value"] = lay.final_norm.meta.get("example_value", lay.final_norm.meta.get("val"))
        lay.final_norm.replace_all_uses_with(z_node, delete_user_cb=outside)
    if lay.out_kind in ("stack", "cat"):
        graph.erase_node(lay.out_target)
    for n in reversed(lay.nodes):
        if getattr(
            n, "_erased", False
        ):  # dead code (an unused last state) an earlier loop's rewrite cleared with its own
            continue
        graph.erase_node(n)
        n.meta.clear()  # an erased node stays named by the graph: let its example values go
    graph.eliminate_dead_code()


# ---------------------------------------------------------------- whole-sequence forms
ROLE_FIELDS = ("q", "k", "v", "gate", "decay", "beta")
FUNCTION_ROLES = ("q", "k", "v", "gate", "beta", "initial_state", "bonus")


@dataclasses.dataclass(frozen=True)
class Arg:
    """A role bound to the ``index``-th argument of a lowering's call."""

    index: int


def role_nodes(rec: Recurrence, fields: tuple = ROLE_FIELDS) -> list[fx.Node]:
    """The distinct nodes bound to roles, in role order: the arguments of the region and of its call."""
    return list(dict.fromkeys(getattr(rec, f) for f in fields if isinstance(getattr(rec, f), fx.Node)))


def bind_args(rec: Recurrence, fields: tuple = ROLE_FIELDS) -> tuple[Recurrence, list[fx.Node]]:
    """``rec`` with its node roles replaced by ``Arg``s, and the nodes in argument order."""
    nodes = role_nodes(rec, fields)
    slots = {f: Arg(nodes.index(getattr(rec, f))) for f in fields if isinstance(getattr(rec, f), fx.Node)}
    return rec.replace(**slots), nodes


def to_canon(x: torch.Tensor, lay: Layout, batch: tuple, bsizes: tuple) -> torch.Tensor:
    """A role value as [1, T, N, D] (all batch dims folded into the op's heads)."""
    drop = [i for i, lab in enumerate(lay.labels) if lab is None]
    labels = [lab for lab in lay.labels if lab is not None]
    for i in reversed(drop):
        x = x.squeeze(i)
    order = []
    for lab in (lay.time, *batch, lay.feat):
        if lab in labels:
            order.append(labels.index(lab))
        else:
            x = x.unsqueeze(-1)
            labels.append(lab)
            order.append(len(labels) - 1)
    x = x.permute(order)
    T, D = x.shape[0], x.shape[-1]
    return x.expand(T, *bsizes, D).reshape(1, T, math.prod(bsizes), D)


def from_canon(o: torch.Tensor, out: Layout, batch: tuple, bsizes: tuple) -> torch.Tensor:
    """[1, T, N, V] -> the output's own layout."""
    o = o[0].reshape(o.shape[1], *bsizes, o.shape[-1])
    have = [out.time, *batch, out.feat]
    if out.feat not in out.labels:  # an output without a feature dim (a normalizer)
        o, have = o[..., 0], have[:-1]
    o = o.permute([have.index(lab) for lab in out.labels if lab is not None])
    for i, lab in enumerate(out.labels):
        if lab is None:  # a size-1 dim of the output (e.g. a matmul's row)
            o = o.unsqueeze(i)
    return o


def gate_canon(g: torch.Tensor, dim: int, bsizes: tuple) -> torch.Tensor:
    """A per-head gate [.., T, ..] (time at ``dim``, batch dims right-aligned) as [1, T, N]."""
    g = g.movedim(dim, 0)
    rest = g.shape[1:]
    g = g.reshape(g.shape[0], *([1] * (len(bsizes) - len(rest))), *rest)
    return g.expand(g.shape[0], *bsizes).reshape(1, g.shape[0], math.prod(bsizes))


def head_canon(x: torch.Tensor, bsizes: tuple) -> torch.Tensor:
    """A per-head value ([H], [H, 1, 1], a scalar, ...; right-aligned to the batch dims) as [N]."""
    shape = list(x.shape)
    while len(shape) > len(bsizes) and shape[-1] == 1:
        shape.pop()
    x = x.reshape([1] * (len(bsizes) - len(shape)) + shape)
    return x.expand(*bsizes).reshape(math.prod(bsizes))


def form_op(rec: Recurrence, q, k, v, g=None) -> torch.Tensor:
    """The family op on role values in the region's layouts (``g``: the gate or decay role's
    value); o as [1, T, N, V]."""
    lay = rec.layout
    dt = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    q, k, v = (to_canon(x.to(dt), lx, lay.batch, lay.bsizes) for x, lx in zip((q, k, v), (lay.q, lay.k, lay.v)))
    acc = torch.float64 if dt == torch.float64 else torch.float32
    gate = decay = None
    if rec.family == Family.RETENTION and g is not None:  # a runtime gamma or log-gamma per head
        decay = head_canon(g.to(acc), lay.bsizes)
        decay = decay.log() if lay.decay_form == "gamma" else decay
    elif rec.family == Family.RETENTION:
        decay = rec.decay
    elif rec.family == Family.GLA:  # a per-key log-gate, laid out as q
        gate = to_canon(g.to(acc), lay.gate_layout, lay.batch, lay.bsizes)
    elif rec.family != Family.LINEAR_ATTN:
        gate = gate_canon(g.to(acc), lay.gate_dim, lay.bsizes)
    o, _ = run_family(rec.family, q, k, v, gate=gate, decay=decay, scale=rec.scale)
    return o


def scan_form(rec: Recurrence, log_x: torch.Tensor, log_gate: torch.Tensor) -> torch.Tensor:
    """hgrn on a log-space scan's roles in its output's layout (``patterns.log_scan``): x = exp(log_x), the
    log-gates with ``extras["gate_pad"]`` zeros in front along time, both right-aligned and broadcast to the
    output; the dims before time fold into the op's B, those after into its D."""
    t, n = rec.layout.out.time, len(rec.layout.out.labels)
    acc = torch.float64 if torch.float64 in (log_x.dtype, log_gate.dtype) else torch.float32
    lx, lg = (reshaped(v.to(acc), *([1] * (n - v.dim())), *v.shape) for v in (log_x, log_gate))
    pad = rec.extras.get("gate_pad", 0)
    if pad:
        lg = torch.cat([lg.new_zeros(*lg.shape[:t], pad, *lg.shape[t + 1 :]), lg], t)
    x, g = torch.broadcast_tensors(lx.exp(), lg)
    B, T, D = math.prod(x.shape[:t]), x.shape[t], math.prod(x.shape[t + 1 :])
    o, _ = run_family(Family.HGRN, None, None, x.reshape(B, T, D).contiguous(), gate=g.reshape(B, T, D).contiguous())
    return o.reshape(x.shape)


def _close(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


class FormLowering:
    """The callable that replaces a proven whole-sequence form: role values in their own layouts
    -> [1, T, N, D] -> the family op -> the output's layout (and a fused normalizer's)."""

    def __init__(self, rec: Recurrence):
        self.rec, self.args = bind_args(rec)
        self.family = rec.family
        self.norm = rec.extras.get("normalizer")
        heads = "x".join(map(str, rec.layout.bsizes))
        self.__name__ = f"fla_{rec.family.value}_{heads}" + ("_normalized" if self.norm else "")

    def __repr__(self) -> str:
        return self.__name__

    def key(self) -> tuple:
        """What the call does apart from its floats and lengths (``@jit`` merges two probe lengths)."""
        r = self.rec.replace(scale=0.0, decay=self.rec.decay if isinstance(self.rec.decay, Arg) else None, source="")
        n = self.norm
        return (r, n and dataclasses.replace(n, views=n.views.code, ratio=0.0))

    def __eq__(self, other) -> bool:
        if not isinstance(other, FormLowering) or self.key() != other.key():
            return False
        a, b = self.rec, other.rec
        ratios = self.norm is None or _close(self.norm.ratio, other.norm.ratio)
        return _close(a.scale, b.scale) and _close(a.decay, b.decay) and ratios

    def __hash__(self) -> int:
        return hash(self.key())

    def same_call(self, other) -> bool:
        """Whether ``other`` makes the same call apart from lengths (``@jit`` merges two probe lengths)."""
        return self == other

    def __call__(self, *args, cast=True):
        rec, lay, norm = self.rec, self.rec.layout, self.norm
        if rec.family == Family.HGRN:  # an elementwise scan, laid out as its output (the log-space form)
            o = scan_form(rec, args[rec.v.index], args[rec.gate.index])
            return o.to(traced_dtype(lay.out_dtype)) if cast and lay.out_dtype is not None else o
        g = next((args[r.index] for r in (rec.gate, rec.decay) if isinstance(r, Arg)), None)
        if norm is None:
            o = form_op(rec, *(args[r.index] for r in (rec.q, rec.k, rec.v)), g)
            o = from_canon(o, lay.out, lay.batch, lay.bsizes)
            return o.to(traced_dtype(lay.out_dtype)) if cast and lay.out_dtype is not None else o
        q, k, v = norm.views(*args)
        v = torch.cat([v, torch.ones_like(v.narrow(norm.v_dim, 0, 1))], norm.v_dim)
        o = form_op(rec, q, k, v)
        num = from_canon(o[..., :-1], lay.out, lay.batch, lay.bsizes)
        den = from_canon(o[..., -1:], norm.out, norm.batch, lay.bsizes)
        den = den * norm.ratio if norm.ratio != 1.0 else den
        if cast:
            num, den = num.to(traced_dtype(lay.out_dtype)), den.to(traced_dtype(norm.dtype))
        return num, den


def form_call(rec: Recurrence, *args):
    """The op of a whole-sequence ``rec`` on its role values, uncast: what ``verify.prove_region`` runs."""
    return FormLowering(rec)(*args, cast=False)


def rewrite_form(outs: tuple, rec: Recurrence) -> None:
    """Replace a proven form's output nodes (a read-out, and a fused normalizer) by one call of
    ``FormLowering(rec)``; dead nodes are left to dead-code elimination."""
    low = FormLowering(rec)
    graph = outs[0].graph
    keep = ("example_value", "val", "stack_trace")
    if len(outs) == 1:
        (out,) = outs
        with graph.inserting_after(out):
            call = graph.call_function(low, tuple(low.args))
        call.meta = {k: v for k, v in out.meta.items() if k in keep}
        out.replace_all_uses_with(call, delete_user_cb=lambda u: u is not call)
        graph.eliminate_dead_code()
        return
    order = {n: i for i, n in enumerate(graph.nodes)}
    with graph.inserting_after(max(low.args, key=order.__getitem__)):
        call = graph.call_function(low, tuple(low.args))
    for i, o in reversed(list(enumerate(outs))):
        with graph.inserting_after(call):
            item = graph.call_function(operator.getitem, (call, i))
        item.meta = {k: v for k, v in o.meta.items() if k in keep}
        o.replace_all_uses_with(item)
    graph.eliminate_dead_code()


# ---------------------------------------------------------------- whole functions (chunked)
def run_function(
    family, q, k, v, gate, beta, decay, scale, initial_state, l2norm, heads_first=False, bonus=None, eps=None
):
    """(o, final state) of the family op as a proven function region is replaced by it, and as its proof
    (``chunked._op``) runs it: the state in float32 (float64 beside float64 inputs), a gate in float32;
    ``decay`` retention's log-decay per head; ``l2norm`` "k" normalizes the keys alone (the op normalizes
    q and k, or neither); ``heads_first``: q, k, v, gate and beta are [B, H, T, ...], and so is o; ``bonus``
    rwkv6's u [H, K]; ``eps`` normalized linear attention's (whose final state is not returned: None)."""
    if heads_first:
        q, k, v, gate, beta = (x.transpose(1, 2) if x is not None else None for x in (q, k, v, gate, beta))
        o, ht = run_function(family, q, k, v, gate, beta, decay, scale, initial_state, l2norm, bonus=bonus, eps=eps)
        return o.transpose(1, 2).contiguous(), ht
    if family == Family.NORMALIZED_LINEAR_ATTN:  # the feature-mapped q, k as the region reads them
        from .ops.normalized import normalized_linear_attn

        return normalized_linear_attn(q * scale if scale != 1.0 else q, k, v, eps=eps)
    h0 = initial_state
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    if h0 is not None:
        h0 = h0.to(acc)
    if gate is not None and q.dtype != torch.float64:
        gate = gate.float()
    if bonus is not None:
        bonus = bonus.to(acc)
    if l2norm == "k":
        k, l2norm = F.normalize(k, dim=-1), False
    return run_family(
        family, q, k, v, gate=gate, beta=beta, decay=decay, scale=scale, initial_state=h0, l2norm=l2norm, bonus=bonus
    )


class FunctionLowering:
    """The callable that replaces a proven function region (the ``chunked`` spelling). It reads only the
    ``Recurrence``: its roles (q, k, v, gate, beta, initial state) are the region's inputs as the op takes
    them ([B, T, H, D]), the call's arguments; ``decay`` is retention's log-decay per head (numbers read
    from the region); ``extras["l2norm"]`` normalizes q and k in the op (True) or k alone ("k"), and
    ``extras["outputs"]`` lists the region's outputs in order, each ("o", "state" [B, H, K, V] or
    "state_T" [B, H, V, K], as Mamba2's SSD returns it; dtype); ``extras["eps"]`` is normalized linear
    attention's (its region returns o alone)."""

    def __init__(self, rec: Recurrence):
        self.rec, self.args = bind_args(rec, FUNCTION_ROLES)
        self.family = rec.family
        self.__name__ = f"fla_{rec.family.value}_function"

    def __repr__(self) -> str:
        return self.__name__

    def same_call(self, other) -> bool:
        """Whether ``other`` makes the same call apart from lengths (``@jit`` merges two probe lengths)."""
        return (
            isinstance(other, FunctionLowering)
            and self.rec.replace(scale=0.0) == other.rec.replace(scale=0.0)
            and self.rec.extras == other.rec.extras
        )

    def __call__(self, *args):
        r = self.rec
        q, k, v, g, b, h0, u = (
            args[x.index] if isinstance(x, Arg) else None
            for x in (r.q, r.k, r.v, r.gate, r.beta, r.initial_state, r.bonus)
        )
        x = r.extras
        o, ht = run_function(
            r.family, q, k, v, g, b, r.decay, r.scale, h0, x["l2norm"], x.get("heads_first", False), u, x.get("eps")
        )
        return tuple(
            (o if kind == "o" else ht if kind == "state" else ht.mT).to(dtype) for kind, dtype in r.extras["outputs"]
        )

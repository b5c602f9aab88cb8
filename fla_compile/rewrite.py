"""Rewrite: a proven region becomes one call of its family op; the rest of the graph stays.

For a loop, the per-step work that does not touch the state (gates, scales, feature maps)
is hoisted out as whole-sequence tensors with ``torch.vmap`` over the time dim of its
inputs, the op runs on [B, T, H, D] views, and the results are laid out as the user's
code laid them out (stacked, concatenated or written into a buffer). Layout transposes
are left for Inductor to fuse.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from .ir import Recurrence
from .ops.dispatch import run_family
from .patterns._graph import value_of
from .patterns.loop import LoopRegion
from .verify import Role, apply_recipe

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
    """The state's leading dims as (B, H) for the op: (B, H) stay, others fold."""
    if len(batch) == 0:
        return 1, 1
    if len(batch) == 1:
        return batch[0], 1
    return math.prod(batch[:-1]), batch[-1]


def to_bthd(x: torch.Tensor, batch: tuple) -> torch.Tensor:
    """[T, *batch, (D)] -> [B, T, H, (D)]."""
    B, H = batch_split(batch)
    return x.reshape(x.shape[0], B, H, *x.shape[1 + len(batch) :]).transpose(0, 1)


def from_bthd(x: torch.Tensor, batch: tuple) -> torch.Tensor:
    """[B, T, H, D] -> [T, *batch, D]."""
    return x.transpose(0, 1).reshape(x.shape[1], *batch, x.shape[-1])


def log_gate(x: torch.Tensor, kind: str) -> torch.Tensor:
    x = x.float() if x.dtype != torch.float64 else x
    if kind == "exp":
        return x
    if kind == "sigmoid":
        return F.logsigmoid(x)
    return torch.log(x)


def call_family(b: Recurrence, vals: dict, h0):
    """Run the family op on role values [T, *batch, D] (gate [T, *batch(, K)]) and a state
    [*batch, X, Y]; return o [T, *batch, V] and the final state [*batch, X, Y]."""
    family, batch = b.family, b.extras["batch"]
    q, k, v = (to_bthd(vals[n], batch) for n in ("q", "k", "v"))
    B, H = batch_split(batch)
    if h0 is not None:
        h0 = h0.reshape(B, H, *h0.shape[-2:])
        h0 = h0.transpose(-1, -2) if b.state_transposed else h0
        h0 = h0.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
    gate = beta = None
    if b.beta is not None:
        beta = to_bthd(vals["beta"], batch)
    if b.gate is not None:
        gate = to_bthd(log_gate(vals["gate"], b.gate.log), batch)
    elif b.decay is not None and beta is not None:  # a literal constant decay of a gated delta rule
        gate = torch.full(beta.shape, b.decay, dtype=torch.float32, device=q.device)
    o, ht = run_family(family, q, k, v, gate=gate, beta=beta, decay=b.decay, scale=b.scale, initial_state=h0)
    ht = ht.transpose(-1, -2) if b.state_transposed else ht
    return from_bthd(o, batch), ht.reshape(*batch, *ht.shape[-2:])


class LoopLowering:
    """The callable that replaces a loop region in the graph (see the module docstring)."""

    def __init__(self, region: LoopRegion, rec: Recurrence):
        self.family = rec.family
        self.rec = rec
        self.T = region.T
        roles = [("q", rec.q), ("k", rec.k), ("v", rec.v), ("gate", rec.gate), ("beta", rec.beta)]
        roles = [(n, r) for n, r in roles if r is not None]
        self.roles = roles
        self.step_origins = list(dict.fromkeys(r.origin for _, r in roles if r.origin[0] != "global"))
        self.role_gm, role_inputs = region.role_graph(self.step_origins) if self.step_origins else (None, [])
        args: list[fx.Node] = []
        self.in_dims: list = []
        self.posts: list = []
        for kind, ref in role_inputs:
            if kind == "read":
                r = region.reads[ref]
                args.append(r.src)
                self.in_dims.append(r.dim)
                self.posts.append(r.post)
            else:
                args.append(ref)
                self.in_dims.append(None)
                self.posts.append(None)
        self.n_role_args = len(args)
        self.global_roles = [r.origin[1] for _, r in roles if r.origin[0] == "global"]
        args += self.global_roles
        self.init_state = rec.initial_state
        if self.init_state is not None:
            args.append(self.init_state)
        self.args = args
        out_node = region.blocks[-1][region.out_offset] if region.out_offset is not None else None
        self.out_meta = value_of(out_node) if out_node is not None else None
        self.out_kind, self.out_dim = region.out_kind, region.out_dim
        if region.out_kind == "buffer":
            self.buffer_meta = value_of(region.out_target)
        self.state_meta = value_of(region.blocks[-1][region.state_offset])
        self.__name__ = f"fla_{self.family.value}_loop"

    def __repr__(self) -> str:
        return self.__name__

    def _hoist(self, role_args, T):
        """Whole-sequence values [T, *step shape] of the roles computed inside the step."""
        if not self.step_origins:
            return {}

        def step(*xs):
            return self.role_gm(*[x if post is None else x[post] for x, post in zip(xs, self.posts)])

        if all(d is None for d in self.in_dims):
            vals = [v.unsqueeze(0).expand(T, *v.shape) for v in step(*role_args)]
            return dict(zip(self.step_origins, vals))
        else:
            vals = torch.vmap(step, in_dims=tuple(self.in_dims), out_dims=0)(*role_args)
        return dict(zip(self.step_origins, vals))

    def __call__(self, *args):
        # the length comes from the inputs: @jit reuses one lowering at any T
        T = next((x.shape[d] for x, d in zip(args, self.in_dims) if d is not None), self.T)
        hoisted = self._hoist(args[: self.n_role_args], T)
        globals_ = dict(zip(self.global_roles, args[self.n_role_args : self.n_role_args + len(self.global_roles)]))
        h0 = args[-1] if self.init_state is not None else None

        def value(role: Role) -> torch.Tensor:
            if role.origin[0] != "global":
                return apply_recipe(hoisted[role.origin], role.recipe, role.target, lead=1)
            x = apply_recipe(globals_[role.origin[1]], role.recipe, role.target)
            return x.unsqueeze(0).expand(T, *x.shape)

        vals = {name: value(role) for name, role in self.roles}
        o, ht = call_family(self.rec, vals, h0)
        return self._layout_output(o, T), ht.reshape(self.state_meta.shape).to(self.state_meta.dtype)

    def _layout_output(self, o, T):
        if self.out_meta is None:
            return None
        if self.out_kind == "buffer":
            slot = list(self.buffer_meta.shape)
            d = self.out_dim
            slot.pop(d)
            o = o.reshape(T, *slot).movedim(0, d)
            return o.to(self.buffer_meta.dtype)
        o = o.reshape(T, *self.out_meta.shape).to(self.out_meta.dtype)
        d = self.out_dim
        if self.out_kind == "stack":
            d = d if d >= 0 else d + len(self.out_meta.shape) + 1
            return o.movedim(0, d)
        d = d if d >= 0 else d + len(self.out_meta.shape)
        return o.movedim(0, d).flatten(d, d + 1)


def rewrite_loop(region: LoopRegion, lowering: LoopLowering) -> None:
    """Replace ``region`` in its graph by one call of ``lowering``."""
    graph = region.graph
    inside = {n for b in region.blocks for n in b}
    last = region.blocks[-1][-1]
    with graph.inserting_after(last):
        call = graph.call_function(lowering, tuple(lowering.args))
    with graph.inserting_after(call):
        o_node = graph.call_function(operator.getitem, (call, 0))
    with graph.inserting_after(o_node):
        s_node = graph.call_function(operator.getitem, (call, 1))
    outside = lambda u: u not in inside and u is not call  # noqa: E731
    if region.out_target is not None:
        o_node.meta["example_value"] = value_of(region.out_target)
        region.out_target.replace_all_uses_with(o_node, delete_user_cb=outside)
    final_state = region.blocks[-1][region.state_offset]
    s_node.meta["example_value"] = value_of(final_state)
    final_state.replace_all_uses_with(s_node, delete_user_cb=outside)
    if region.out_kind in ("stack", "cat"):
        graph.erase_node(region.out_target)
    for n in reversed([n for b in region.blocks for n in b]):
        graph.erase_node(n)
    graph.eliminate_dead_code()

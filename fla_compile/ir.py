"""The Recurrence IR: what a matcher found, in roles, independent of how it was spelled.

Every stage after ``find`` (classify, verify, rewrite, report) consumes only this.
The state S of every family is a K x V matrix per batch and head, and the output reads
o_t = S_t^T q_t (or S_{t-1} for families with a bonus term, see ``reads_previous``); except hgrn, an
elementwise scan whose state is a vector and whose output is the state (roles: ``v`` is its input x,
``gate`` its decay; q and k are None, or q reads the state out over its last axis); and mamba, whose
state is [D, N] per sequence: ``v`` is u, ``k`` B, ``q`` C, ``gate`` the step size dt and ``decay`` A (None: ``gate``
is a log-gate per channel and A = 1, a gla state gated along its value axis, GSA's key memory).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class Family(str, enum.Enum):
    """The recurrences we lower, from the most special to the most general of a line.

    A more general family is always a correct (slower) lowering for a more special one.
    """

    LINEAR_ATTN = "linear_attn"  # S = S + k v^T
    RETENTION = "retention"  # S = gamma S + k v^T, gamma a constant per head
    SIMPLE_GLA = "simple_gla"  # S = exp(g_t) S + k v^T, g_t a scalar per step and head
    GLA = "gla"  # S = diag(exp(gk_t)) S + k v^T, gk_t a vector over K
    DELTA_RULE = "delta_rule"  # S = (I - b k k^T) S + b k v^T
    GATED_DELTA_RULE = "gated_delta_rule"  # S = exp(g_t)(I - b k k^T) S + b k v^T
    KDA = "kda"  # S = (I - b k k^T) diag(exp(gk_t)) S + b k v^T
    RWKV6 = "rwkv6"  # S = diag(exp(w_t)) S + k v^T, o = (S_{t-1} + diag(u) k v^T)^T r: gla with a bonus u
    HGRN = "hgrn"  # h = exp(g_t) * h + x_t, elementwise: the state is a vector, o_t = h_t
    MAMBA = "mamba"  # h = exp(dt_t A) * h + u_t B_t^T over [D, N], y_t = h_t C_t (Mamba's selective scan)
    NORMALIZED_LINEAR_ATTN = "normalized_linear_attn"  # linear_attn's o_t / (q_t . z_t + eps), z_t = z_{t-1} + k_t

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one value of a whole-sequence region (parallel, cumsum) maps to [T, *batch, D]: a label
    per dim (None: a size-1 dim to drop), and which labels are time and the feature."""

    labels: tuple
    time: object
    feat: object


def out_batch(out: Layout, shape: tuple) -> tuple[tuple, tuple]:
    """The output's batch labels (all but time, feature and size-1 dims) and their sizes."""
    batch = tuple(x for x in out.labels if x not in (out.time, out.feat, None))
    return batch, tuple(shape[out.labels.index(x)] for x in batch)


@dataclasses.dataclass(frozen=True)
class RegionLayout:
    """The layout of a whole-sequence region: q, k, v and the output in their own layouts, the
    output's batch labels (folded into the op's heads) and sizes, the time dim of a gate role, how
    a decay role holds retention's decay ("gamma" or its "log"), the output's dtype, and the layout of
    a per-key gate (gla: a vector over K per step, laid out as q)."""

    q: Layout
    k: Layout
    v: Layout
    out: Layout
    batch: tuple
    bsizes: tuple
    gate_dim: int | None = None
    decay_form: str = ""
    out_dtype: Any = None
    gate_layout: Layout | None = None


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """A normalizer q . cumsum(k) fused into a linear_attn call (v gets a ones column): the roles
    q, k, v are then the values the region's q, k, v are views of, and ``views`` (a GraphModule)
    recomputes those views; the normalizer comes out in layout ``out`` with batch labels
    ``batch``, as ``ratio`` times the ones column's output, in ``dtype``."""

    views: Any
    v_dim: int
    out: Layout
    batch: tuple
    dtype: Any
    ratio: float = 1.0


@dataclasses.dataclass(frozen=True)
class Recurrence:
    """One matched recurrence, with its tensors bound to roles.

    The role fields hold whatever the producing stage uses to name a value (an FX node in
    the backend, a tensor in tests); the IR does not interpret them. Layout of every role
    value handed to an op is [B, T, H, D] (``gate`` [B, T, H] for scalar gates).

    Attributes:
        family: which recurrence.
        q, k, v: query, key, value roles.
        gate: log-space gate: None (linear_attn), a scalar per step (simple_gla), a vector
            per step (gla, kda). For retention see ``decay``.
        decay: retention's constant log-decay (a float, a tuple of one per head, or a role holding
            one per head).
        beta: the delta-rule write strength, None for the GLA line; for mamba, a factor of the input term where
            the step never makes u = dt x as one value (the op's u is then beta * v).
        bonus: rwkv6's u (per head and key dim): the output reads S_{t-1} plus (q . (u k)) v.
        scale: the factor applied to q (o_t = scale * S_t^T q_t).
        initial_state: role of S_0 in [B, H, K, V], or None for zeros.
        output_final_state: whether S_T is used after the region.
        reads_previous: the output reads S_{t-1} instead of S_t.
        state_transposed: the user stored S as [V, K]; the rewrite transposes around the op.
        layout: how the role values reach the op's [B, T, H, D]: None when they are so already
            (chunked), a ``RegionLayout`` for parallel and cumsum, a ``LoopLayout`` for a loop, whose
            roles are then ``RoleFn``s of the region's inputs (``classify_loop`` gives step bindings,
            ``verify.Role``, with the state's leading dims in ``extras["batch"]``).
        spelling: which matcher found it ("loop", "parallel", "cumsum", "chunked", "hf").
        source: a short "file:line" pointing at the user's code, when known.
        extras: spelling-specific details: the loop's ``batch`` and ``positive``, chunked's
            ``l2norm``, cumsum's fused ``normalizer`` (a ``Normalizer``).
    """

    family: Family
    q: Any
    k: Any
    v: Any
    gate: Any = None
    decay: Any = None
    beta: Any = None
    bonus: Any = None
    scale: float = 1.0
    initial_state: Any = None
    output_final_state: bool = False
    reads_previous: bool = False
    state_transposed: bool = False
    layout: Any = None
    spelling: str = ""
    source: str = ""
    extras: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)

    @property
    def op_name(self) -> str:
        """Name of the op this recurrence lowers to (``torch.ops.fla_compile.<family>``)."""
        if self.family == Family.RETENTION and self.gate is not None:
            return "fla_compile.simple_gla"  # a decay held in a tensor: constant over time, per head or batch
        if self.family == Family.NORMALIZED_LINEAR_ATTN:
            return "fla_compile.linear_attn"  # on [v, 1] (ops.normalized_linear_attn): the division stays in the graph
        return f"fla_compile.{self.family.value}"

    def replace(self, **changes: Any) -> Recurrence:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True, eq=False)
class RoleFn:
    """A role as a small function of the region's inputs (a loop's): ``fn(T, batch, *xs)``, with ``xs`` the
    lowering's arguments at ``args``, gives the role's whole-sequence value [T, *batch, D] at run-time
    shapes (``batch``: the state's leading dims, which the op folds into its B and H). ``log``: how a gate
    role reaches the op's log-gate ("", "exp", "sigmoid", "log")."""

    fn: Any
    args: tuple
    log: str = ""

    def __call__(self, args: tuple, T, batch: tuple):
        return self.fn(T, batch, *(args[i] for i in self.args))


@dataclasses.dataclass(frozen=True, eq=False)
class LoopLayout:
    """How a re-rolled loop meets its op, in run-time shapes: the layout of a loop's ``Recurrence``.

    inputs: the region's inputs (FX nodes), the lowering's arguments in order: the sources the steps
        read, values from before the loop, and the initial state (at ``initial``; None: zeros);
    batch: the state's leading dims (folded into the op's B and H), state_tail: the rest of its shape;
    each size in ``batch`` and ``out_shape`` an int or (i, d): dim d of argument i at run time;
    T: the traced length, used where no input carries time; time: (argument, dim) of an input whose
        dim is time, or None;
    out_kind: "stack", "cat", "buffer" or "none"; out_dim: its time dim; out_shape: the per-step output's
        shape (stack, cat) or the buffer's without its time dim; out_dtype, state_dtype: the dtypes the
        user's code gives them;
    nodes, out_target, final_state: what the rewrite replaces (the region's nodes, the node after the
        loop holding the whole output, the last step's state);
    norm: a normalized loop's normalizer before the loop (the argument beside the initial state), or None;
    final_norm: its last value where it is used after the loop (the rewrite replaces it too), or None.
    """

    inputs: tuple
    initial: int | None
    batch: tuple
    state_tail: tuple
    T: int
    time: tuple | None
    out_kind: str
    out_dim: int
    out_shape: tuple
    out_dtype: Any
    state_dtype: Any
    nodes: tuple
    out_target: Any
    final_state: Any
    norm: int | None = None
    final_norm: Any = None

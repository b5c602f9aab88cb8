"""Classify and verify: read the roles of a candidate region from numbers, then prove it.

For a re-rolled loop, one step F(S, x_t) is run on random float64 probes:
  * F must be affine in S: F(S) = A(S) + B;
  * A is the transition: identity (linear_attn), a constant scalar (retention), a scalar
    or a per-key diagonal taken from a value of the step (simple_gla, gla);
  * B must be an outer product k v^T of two values of the step;
  * the output must be c * S_t^T q for a value q of the step and a constant c; or, with a per-key
    decay, c * (S_{t-1} + diag(u) k v^T)^T q for a value u from before the loop (rwkv6);
  * or the output is the new state itself (an elementwise scan, hgrn): A is an elementwise decay
    c (S of any shape, a vector included) and B a value x of the step, F(S) = c * S + x; a scan
    whose output contracts S_t's last axis with a value q (Mamba's y_t = h_t C_t) is one too, tried
    where the matrix families do not fit; and where its decay is exp(dt A) of a step value dt [*, D] and
    a value A [D, N] from before the loop, its input an outer product u B^T and its read-out h C, it is
    Mamba's selective scan (mamba), whose op never expands the decay to D x N per step;
  * a diagonal decay along the value axis (the axis the output keeps: GSA's key memory) is mamba too, each
    value column a scan of its own (dt the log-gate, A = 1).
Values are bound to roles by matching numbers against the step's own intermediate
values, so the spelling (einsum, matmul, broadcasting, transposed state) does not matter.
The binding is then proven on fresh probes against the family's op itself (T = 1, the
probe state as initial state). Anything that fails is a near miss with its reason; NaN
never passes.

The whole-sequence spellings (parallel, cumsum) bind their roles themselves and are proven
here too (``prove_region``): the region runs once on fresh probes at its traced shapes and
must equal the op of the ``Recurrence`` they produced. Every spelling draws its probes with
``probe`` and runs its region with ``run_region``, narrowing float casts widened (``NARROW``).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch
import torch.fx as fx
import torch.nn.functional as F

from .ir import Family, Recurrence
from .numerics import rel_err
from .patterns._graph import changes_global_state, source_line
from .report import Grade

aten = torch.ops.aten
log = logging.getLogger("fla_compile")
TOL = 1e-5  # relative, on float64 probes of code that may round through float32
SCALES = (1e-3, 1e4)  # state magnitudes probed besides unit size (linearity must hold at every one)
EXP = {torch.exp, "exp", aten.exp.default}
SIGMOID = {torch.sigmoid, "sigmoid", aten.sigmoid.default, F.sigmoid}


class NearMiss(Exception):
    """A region that looks like a recurrence but could not be proven; the message says why."""

    grade = Grade.NEAR_MISS


class NotARecurrence(NearMiss):
    """A region recognised as something else (softmax attention): reported, never an error."""

    grade = Grade.NOT_A_RECURRENCE


@dataclasses.dataclass(frozen=True)
class Role:
    """A step value bound to a role: where it comes from and how to shape it.

    origin: ("offset", i) for a node of the step block, ("global", node) for a value from
    before the loop. recipe: ("reshape",), ("broadcast", shape), ("unsqueeze", shape) or ("insert", shape, axis)
    to reach ``target``
    ([*batch, D] or [*batch]). log: how the op's log-gate is derived ("", "exp", "sigmoid", "log").
    """

    origin: tuple
    recipe: tuple
    target: tuple
    log: str = ""


def loop_recurrence(
    family, q, k, v, gate, decay, scale, transposed, batch, positive, beta=None, bonus=None
) -> Recurrence:
    """The IR of a classified loop step; roles are ``Role`` bindings, ``extras`` holds the state's
    leading dims (``batch``) and whether probes must be positive."""
    return Recurrence(
        family,
        q,
        k,
        v,
        gate=gate,
        decay=decay,
        beta=beta,
        bonus=bonus,
        scale=scale,
        reads_previous=bonus is not None,
        state_transposed=transposed,
        spelling="loop",
        extras={"batch": batch, "positive": positive},
    )


def probe(shape, gen: torch.Generator, kind=None, device=None) -> torch.Tensor:
    """Random float64 probe values: normal (``kind`` None), "positive" (|x|/2 + 1/4), "gate"
    (logsigmoid of a normal: log-gates) or uniform in a span ``(lo, hi)``. Drawn on the CPU (the
    same numbers everywhere), then moved to ``device``: the region's own constants (masks, decay
    tables made with ``device=q.device``) live on the device it was traced on."""
    if isinstance(kind, tuple):
        x = kind[0] + (kind[1] - kind[0]) * torch.rand(tuple(shape), generator=gen, dtype=torch.float64)
    else:
        x = torch.randn(tuple(shape), generator=gen, dtype=torch.float64)
        x = F.logsigmoid(x) if kind == "gate" else x.abs() * 0.5 + 0.25 if kind == "positive" else x
    return x if device is None else x.to(device)


CAST_METHODS = {"to", "type", "type_as", "float", "half", "bfloat16"}
CAST_FUNCTIONS = {aten._to_copy.default, torch.ops.prims.convert_element_type.default, aten.to.dtype,
                  aten.to.dtype_layout, aten.to.device, aten.to.other}  # fmt: skip
# The widening policy of every proof (loop steps and whole regions alike): the proof is about the math the
# user wrote, and rounding to a narrower float is not its structure. On float64 probes, a cast of a float
# to a narrower one of these (``x.to(q.dtype)``, ``.float()``) keeps its input's value, and a value made in
# one (``torch.arange(n, dtype=q.dtype)``, ``dtype=`` of a factory or a reduction) is made in float64. A
# cast that changes the math is run as written: to an integer, bool or complex dtype, to float8, between
# bfloat16 and float16 (neither holds the other), and rounding by arithmetic (``torch.round``).
NARROW = {torch.float32: 1, torch.bfloat16: 0, torch.float16: 0}  # a float widened to float64: its rank
RANK = {torch.float64: 2, **NARROW}


def _wider(src: torch.dtype, dst: torch.dtype) -> bool:
    """``dst`` is one of the ``NARROW`` floats and ``src`` a float that holds every value of it."""
    return dst in NARROW and RANK.get(src, -1) > NARROW[dst]


class _Recorder(fx.Interpreter):
    def __init__(self, gm, keep, widen=False):
        super().__init__(gm, garbage_collect_values=keep is not None)
        self.keep, self.kept, self.widen = keep, {}, widen

    def run_node(self, n):
        if self.widen and _made_narrow(n):
            with self._set_current_node(n):
                args, kwargs = self.fetch_args_kwargs_from_env(n)
                out = getattr(self, n.op)(n.target, args, {**kwargs, "dtype": torch.float64})
            _say_rounding(n, out, kwargs["dtype"])
        else:
            out = super().run_node(n)
            if self.widen and _narrowing(n, out, self.env):
                # its input's value, not its rounding; a copy, as the cast made one (the region may write to it)
                out = self.env[n.args[0]].clone()
        if self.keep is None or n in self.keep:
            self.kept[n] = out
        return out


_SAID: set = set()
_EXACT_INTS = {torch.bfloat16: 256, torch.float16: 2048, torch.float32: 1 << 24}  # consecutive integers held


def _say_rounding(n: fx.Node, wide: torch.Tensor, dtype: torch.dtype) -> None:
    """Widening is not silent where the narrow value would differ from the math: a warning, once per source
    line, when the region makes a value in ``dtype`` that ``dtype`` cannot hold on these probes (a decay
    ``1 - 2**-9`` is 1.0 in bfloat16), or integers by ``arange`` (positions: exact in bfloat16 below 256): the
    op computes the math, so on such inputs it differs from the code as written by more than rounding."""
    if dtype not in _EXACT_INTS or dtype == torch.float32:  # float32's rounding is what the proof tolerates
        return
    rounds = (
        isinstance(wide, torch.Tensor) and wide.is_floating_point() and not torch.equal(wide.to(dtype).double(), wide)
    )
    positions = n.target in (torch.arange, "arange", aten.arange.default, aten.arange.start, aten.arange.start_step)
    if not (rounds or positions):
        return
    where = source_line(n) or n.format_node()
    if where in _SAID:
        return
    _SAID.add(where)
    what = (
        f"values it cannot hold ({dtype} rounds them)"
        if rounds
        else f"integers by arange in {dtype} (exact only below {_EXACT_INTS[dtype]})"
    )
    log.warning(
        "fla_compile: %s makes %s; the proof and the rewritten op compute them exactly, so where %s rounds them "
        "the op's result can differ from the code as written by more than the inputs' rounding (it is closer to "
        "float64)",
        where, what, dtype,
    )  # fmt: skip


def _made_narrow(n: fx.Node) -> bool:
    """``n`` makes its value in a narrow float by a ``dtype=`` argument (a factory, ``.to(dtype=)``, a
    reduction), not a bit view (``x.view(dtype=)`` reinterprets the bits: run as written)."""
    d = n.kwargs.get("dtype")
    return (
        n.op in ("call_function", "call_method")
        and isinstance(d, torch.dtype)
        and d in NARROW
        and n.target not in ("view", aten.view.dtype)
    )


def _narrowing(n: fx.Node, out, env) -> bool:
    """``n`` casts a float to a narrower float (``x.to(torch.float32)``, ``.type(dtype)``, ``.float()``)."""
    cast = n.op == "call_method" and n.target in CAST_METHODS or n.op == "call_function" and n.target in CAST_FUNCTIONS
    if not cast or not n.args or not isinstance(n.args[0], fx.Node):
        return False
    x = env.get(n.args[0])
    return (
        isinstance(x, torch.Tensor)
        and isinstance(out, torch.Tensor)
        and x.is_floating_point()
        and _wider(x.dtype, out.dtype)
        and out.shape == x.shape
        and out.device == x.device
    )


def run_region(gm: fx.GraphModule, args: list, keep=None, widen=True) -> tuple:
    """Run a region (a loop step, a parallel, cumsum or chunked form, a whole function) on probes, without
    autograd; return its output and the values of its nodes in ``keep`` (of every node when None: float64
    T x T matrices are large, so a caller that reads a few names them). ``widen`` (every proof; see
    ``NARROW``): narrowing float casts keep the float64 value and narrow float factories make float64, so a
    region that rounds through float32 (``state.to(input_dtype)`` in transformers' Mamba scan) or builds its
    mask in bfloat16 (torchscale's ``gamma ** (n - m)`` in q's dtype) is read, and proven, as its math, and
    never mixes narrow floats with float64 probes in one matmul."""
    if changes_global_state(gm.graph.nodes):
        raise NearMiss("the region changes interpreter-wide state (vmap levels, autocast): not run on probes")
    rec = _Recorder(gm, None if keep is None else set(keep), widen)
    with torch.no_grad():
        out = rec.run(*args)
    return out, rec.kept


def fit_scale(o: torch.Tensor, ref: torch.Tensor) -> float:
    """The least-squares c of o = c * ref (NaN when ref is zero)."""
    den = (ref * ref).sum().item()
    return (o * ref).sum().item() / den if den > 0 else math.nan


def _state_dependent(gm: fx.GraphModule) -> set:
    dep = set()
    for n in gm.graph.nodes:
        if n.op == "placeholder" and n.name == "state":
            dep.add(n)
        elif any(a in dep for a in n.all_input_nodes):
            dep.add(n)
    return dep


def _fit(v: torch.Tensor, target: tuple):
    """A recipe that turns value ``v`` into shape ``target``, or None."""
    n = math.prod(target)
    if v.numel() == n:
        return ("reshape",)
    shape = list(v.shape)
    while len(shape) > len(target) and shape[-1] == 1:
        shape.pop()
    while len(shape) > len(target) and shape[0] == 1:
        shape.pop(0)
    try:
        torch.broadcast_shapes(tuple(shape), target)
    except RuntimeError:
        return None
    if torch.broadcast_shapes(tuple(shape), target) != torch.Size(target):
        return None
    return ("broadcast", tuple(shape))


def _inserts(v: torch.Tensor, target: tuple):
    """Recipes ("insert", shape, axis) that read ``v``, its size-1 dims dropped, as ``target`` without one inner
    axis (never the first, the batch, nor the last, the feature), broadcast along it: a value shared by the
    heads, Mamba2's B_t [B, N] against [B, H, N], written ``B[:, t, None, None, :]``. One per axis that fits:
    the probes tell equal sizes apart."""
    shape = tuple(d for d in v.shape if d != 1)
    for axis in range(1, len(target) - 1):
        if shape == tuple(target[:axis]) + tuple(target[axis + 1 :]):
            yield ("insert", shape, axis - len(target))


def reshaped(x: torch.Tensor, *shape) -> torch.Tensor:
    """``x.reshape(shape)``, or ``x`` itself where the shape is already that: a lowering traced
    into a graph then records no view op that does nothing (each costs a dispatch per call)."""
    return x if tuple(x.shape) == tuple(shape) else x.reshape(shape)


def apply_recipe(v: torch.Tensor, recipe: tuple, target: tuple, lead: int = 0) -> torch.Tensor:
    """Apply a recipe to ``v`` that may carry ``lead`` extra leading dims (time)."""
    pre = tuple(v.shape[:lead])
    if recipe[0] == "reshape":
        return reshaped(v, *pre, *target)
    if recipe[0] == "unsqueeze":  # without the target's next-to-last axis: Mamba's C_t [B, N] against [B, D, N]
        return reshaped(v, *pre, *recipe[1]).unsqueeze(-2).expand(*pre, *target)
    if recipe[0] == "insert":  # without the target's axis recipe[2] (counted from the end)
        return reshaped(v, *pre, *recipe[1]).unsqueeze(recipe[2]).expand(*pre, *target)
    return reshaped(v, *pre, *recipe[1]).expand(*pre, *target)


def _candidates(values: dict, target: tuple):
    for node, val in values.items():
        if isinstance(val, torch.Tensor) and val.is_floating_point():
            recipe = _fit(val, target)
            for r in [recipe] if recipe is not None else _inserts(val, target):
                yield node, r, apply_recipe(val, r, target)


def _origin(node: fx.Node):
    return node.meta["fla_origin"]


@dataclasses.dataclass(frozen=True)
class Fixed:
    """A step input that is the same at every call (``_graph.constant_value``: an identity matrix,
    a table of decays made from literals): probed with its value, not with random numbers."""

    value: torch.Tensor


@dataclasses.dataclass(frozen=True)
class StepRead:
    """A step input that is step t of a sequence made before the loop: probed through one draw per sequence and
    time dim with its own indexing applied, so reads of one step through different indexing
    (``k[:, :, t, :, None]`` beside ``k[:, :, t, None, :]``) see the same numbers, as at run time; in (0, 1)
    where a sigmoid made the sequence (minGRU's decay 1 - z is positive there, and only there)."""

    source: tuple  # (the sequence's node, its time dim): the draw's key
    base_shape: tuple  # one step of the sequence
    post: tuple | None  # the read's indexing after picking step t
    meta: torch.Tensor
    span: tuple | None = None  # (lo, hi) for a sigmoid's output


def step_inputs(step: fx.GraphModule, reads: dict | None = None) -> list:
    """What to probe each input of a loop step (after the state) with: its example value, or a
    ``Fixed`` value for a constant computed before the loop from literals alone. Given the region's ``reads``
    (``LoopRegion.reads``), its reads as a ``StepRead`` each: probed as they are at run time."""
    from .patterns._graph import constant_value, value_of

    out = []
    for n in list(step.graph.find_nodes(op="placeholder"))[1:]:
        origin = n.meta.get("fla_origin")
        fixed = constant_value(origin[1]) if origin and origin[0] == "global" else None
        meta = value_of(n)
        r = reads.get(origin[1]) if reads is not None and origin and origin[0] == "read" else None
        if r is not None and isinstance(meta, torch.Tensor) and meta.is_floating_point():
            shape = tuple(value_of(r.src).shape)
            sigmoid = r.src.op in ("call_function", "call_method") and r.src.target in SIGMOID
            out.append(StepRead((r.src, r.dim), shape[: r.dim] + shape[r.dim + 1 :], r.post, meta,
                                (0.02, 0.98) if sigmoid else None))  # fmt: skip
            continue
        out.append(Fixed(fixed) if fixed is not None else meta)
    return out


def _probe_inputs(metas, gen, positive=False):
    out, bases = [], {}
    for m in metas:
        if isinstance(m, StepRead):
            if m.source not in bases:
                kind = m.span or ("positive" if positive else None)
                bases[m.source] = probe(m.base_shape, gen, kind, m.meta.device)
            x = bases[m.source] if m.post is None else bases[m.source][m.post]
            if tuple(x.shape) == tuple(m.meta.shape):
                out.append(x)
                continue
            m = m.meta  # a read whose indexing this cannot replay: probes of its own
        if isinstance(m, Fixed):
            out.append(m.value.to(torch.float64))
            continue
        if not isinstance(m, torch.Tensor):
            raise NearMiss(f"a step input is not a tensor ({type(m).__name__})")
        if not m.is_floating_point():
            raise NearMiss(f"a step input has dtype {m.dtype}; only float inputs can be probed")
        out.append(probe(m.shape, gen, "positive" if positive else None, m.device))
    return out


class _NeedsPositive(NearMiss):
    pass


def classify_loop(step: fx.GraphModule, input_metas: list, state_meta: torch.Tensor) -> Recurrence:
    """Read the family and roles of one loop step (see the module docstring)."""
    if state_meta is None or state_meta.dim() < 1:
        raise NearMiss("the carried value is not a matrix state")
    try:
        return _classify(step, input_metas, state_meta, positive=False)
    except _NeedsPositive:  # a decay given as a plain value: probe it where it is a decay
        return _classify(step, input_metas, state_meta, positive=True)


def _classify(step, input_metas, state_meta, positive: bool) -> Recurrence:
    gen = torch.Generator().manual_seed(1234)
    dep = _state_dependent(step)
    for attempt in (positive, True):  # retry on positive inputs where e.g. a log needs them
        positive = attempt
        P = _probe_inputs(input_metas, gen, positive)
        Sa = probe(state_meta.shape, gen, device=state_meta.device)
        Sb = probe(state_meta.shape, gen, device=state_meta.device)
        (Fa, oa), env = run_region(step, [Sa, *P], widen=True)
        if torch.isfinite(Fa).all() and (oa is None or torch.isfinite(oa).all()):
            break
    else:
        raise NearMiss("the step gives NaN or inf on random inputs")
    (F0, o0), _ = run_region(step, [torch.zeros_like(Sa), *P], widen=True)
    (Fb, _), _ = run_region(step, [Sb, *P], widen=True)
    (Fab, _), _ = run_region(step, [Sa + 2 * Sb, *P], widen=True)
    if Fa.shape != Sa.shape:
        raise NearMiss(f"the state changes shape from {tuple(Sa.shape)} to {tuple(Fa.shape)}")
    Aa, Ab = Fa - F0, Fb - F0
    if rel_err(Fab - F0, Aa + 2 * Ab) > TOL:
        raise NearMiss("the state update is not linear in the state")
    for lam in SCALES:  # a clamp or saturation of the state that unit-sized probes never reach
        (Fl, ol), _ = run_region(step, [lam * Sa, *P], widen=True)
        if rel_err(Fl - F0, lam * Aa) > TOL:
            raise NearMiss("the state update is not linear in the state")
        if oa is not None and o0 is not None and rel_err(ol - o0, lam * (oa - o0)) > TOL:
            raise NearMiss("the output is not linear in the state")
    values = {n: v for n, v in env.items() if n not in dep and n.op != "output"}

    if oa is None:
        raise NearMiss("the loop has no per-step output")
    scan = _classify_scan(values, Sa, Aa, Sb, Ab, F0, Fa, oa, dep, positive)
    if scan is not None:
        return scan
    if Sa.dim() < 2:
        raise NearMiss("the carried value is a vector whose step output is not the state: not a matrix state")
    *batch, X, Y = tuple(state_meta.shape)
    batch = tuple(batch)
    # the transition A
    try:
        transition, gate_val = _transition(Sa, Aa, Sb, Ab)
    except NearMiss as plain:
        selective = _classify_selective(values, Sa, Aa, Sb, Ab, F0, Fa, oa, batch, X, Y)
        if selective is not None:
            return selective
        scan = _classify_scan(values, Sa, Aa, Sb, Ab, F0, Fa, oa, dep, positive, readout=True)
        return scan or _classify_delta(values, Sa, Aa, Sb, Ab, F0, Fa, oa, batch, dep, positive, plain)
    # the update B = k v^T (or v k^T for a transposed state)
    pairs = _outer_pairs(values, F0, batch, X, Y)
    if not pairs:
        scan = _classify_scan(values, Sa, Aa, Sb, Ab, F0, Fa, oa, dep, positive, readout=True)
        if scan is not None:  # an input made before the loop (Mamba's deltaB_u), read out over the last axis
            return scan
        raise NearMiss("the state update's additive term is not an outer product k v^T of step values")
    value_axis_gate = False
    for a, b in pairs:
        for transposed in (False, True):
            if transition == "diag_x" and transposed or transition == "diag_y" and not transposed:
                k, v = (b, a) if transposed else (a, b)
                rec = _value_gated(values, oa, Fa, Sa, q_k_v=(k, v), transition=transition, gate_val=gate_val,
                                   transposed=transposed, batch=batch, dep=dep, positive=positive)  # fmt: skip
                if rec is not None:
                    return rec
                value_axis_gate = True
                continue
            readout = _readout(values, oa, Fa, Sa, batch, X, Y, transposed)
            bonus = None
            if readout is None and o0 is not None and o0.abs().max() > 0:  # a term of the step alone: a bonus?
                # the state's part alone: against the decayed state A(S) (S_t minus its new term) or S_{t-1}
                readout = _readout(values, oa - o0, Fa - F0, Sa, batch, X, Y, transposed)
                if readout is None:
                    continue
                bonus = _bind_bonus(values, o0, F0, readout, transition, batch, X, Y, transposed)
            if readout is None:
                continue
            q, scale, reads_prev = readout
            if reads_prev and bonus is None:
                raise NearMiss("the output reads the state before the update (S_{t-1}); this family reads S_t")
            k, v = (b, a) if transposed else (a, b)
            gate, decay, family = _bind_gate(transition, gate_val, values, dep, positive)
            family = Family.RWKV6 if bonus is not None else family
            return loop_recurrence(family, q, k, v, gate, decay, scale, transposed, batch, positive, bonus=bonus)
    if value_axis_gate:
        raise NearMiss("the decay is diagonal along the value axis; our families gate the key axis")
    raise NearMiss("the output is not S_t^T q for a value q of the step")


def _value_gated(values, oa, Fa, Sa, q_k_v, transition, gate_val, transposed, batch, dep, positive):
    """A decay along the value axis (GSA's slot memory: S = S diag(e^{g_t}) + k s^T, o = S^T q over the slots),
    or None. Each value column is a scan of its own, so this is Mamba's selective scan with the value axis as
    its channels D and the key axis as its state N: h [D, N] = exp(dt A) h + u B^T, y = h C, with dt the
    log-gate, A = 1, u the value, B the key and C the query (``rewrite._call_selective``: ``decay`` None)."""
    X, Y = Sa.shape[-2:]
    readout = _readout(values, oa, Fa, Sa, batch, X, Y, transposed)
    if readout is None or readout[2]:  # none, or a read of S_{t-1}: not this family
        return None
    q, scale, _ = readout
    k, v = q_k_v
    gate, _, _ = _bind_gate(transition, gate_val, values, dep, positive)
    return loop_recurrence(Family.MAMBA, q, k, v, gate, None, scale, not transposed, batch, positive)


def _classify_scan(values, Sa, Aa, Sb, Ab, F0, Fa, oa, dep, positive, readout=False) -> Recurrence | None:
    """The elementwise scan (hgrn): h_t = c_t * h_{t-1} + x_t with c and x values of the step of the
    state's shape (or broadcast to it), and the output the new state itself; or, with ``readout``, its
    contraction over the last axis with a value q of the step, o_t = scale * sum_n h_t[..., n] q[..., n]
    (Mamba's selective scan with its decay and input made before the loop: y_t = h_t C_t). None where
    the output is neither.

    c is fitted per element from both probes (least squares), so an element where one probe is tiny
    does not spoil it; the fit must then hold on both probes as a whole."""
    shape = tuple(Sa.shape)
    q = scale = None
    if readout:
        found = _scan_readout(values, oa, Fa, shape)
        if found is None:
            return None
        q, scale = found
    elif oa.numel() != Fa.numel() or rel_err(oa.reshape(Fa.shape).to(Fa.dtype), Fa) > TOL:
        return None
    what = "the output reads the state over its last axis" if readout else "the output is the state"
    c = _elementwise_decay(Sa, Aa, Sb, Ab)
    if c is None:
        if readout:
            return None  # not a scan: the caller says what it is not
        raise NearMiss(f"{what}, but the state transition is not an elementwise decay")
    xs = [(n, r) for n, r, v in _candidates(values, shape) if rel_err(v, F0) <= TOL]
    if not xs:
        raise NearMiss(f"{what}, but the state update's additive term is not a value of the step")
    gate, decay, _ = _bind_gate("elementwise", c, values, dep, positive)
    x = Role(_origin(xs[0][0]), xs[0][1], shape)
    return loop_recurrence(
        Family.HGRN, q, None, x, gate, decay, 1.0 if scale is None else scale, False, shape, positive
    )


def _elementwise_decay(Sa, Aa, Sb, Ab):
    """The decay c with A(S) = c * S elementwise on both probes, or None."""
    den = Sa * Sa + Sb * Sb
    c = torch.where(den > 0, (Aa * Sa + Ab * Sb) / den.clamp_min(1e-300), torch.zeros_like(den))
    return c if rel_err(c * Sa, Aa) <= TOL and rel_err(c * Sb, Ab) <= TOL else None


def _classify_selective(values, Sa, Aa, Sb, Ab, F0, Fa, oa, batch, X, Y) -> Recurrence | None:
    """Mamba's selective scan with its discretization in the step, state [*batch, D, N]:
    h = exp(dt[..., :, None] * A) * h + u[..., :, None] * B[..., None, :], y = scale * h C, with dt, u, B
    and C values of the step and A ([D, N]) a value from before the loop; or all of it stored transposed (the
    state [*batch, N, D] and A [N, D]: ``state_transposed``, the decay role in the user's layout). None where it is
    not that (the caller goes on: a scan with a read-out takes the unfactored forms)."""
    for transposed in (False, True):
        if transposed:
            Sa, Aa, Sb, Ab, F0, Fa = (x.transpose(-1, -2) for x in (Sa, Aa, Sb, Ab, F0, Fa))
            X, Y = Y, X
        rec = _selective_layout(values, Sa, Aa, Sb, Ab, F0, Fa, oa, batch, X, Y, transposed)
        if rec is not None:
            return rec
    return None


def _selective_layout(values, Sa, Aa, Sb, Ab, F0, Fa, oa, batch, X, Y, transposed) -> Recurrence | None:
    """:func:`_classify_selective` on a state given as [*batch, X = D, Y = N]; ``transposed``: the user's is
    [*batch, N, D], and so is the rate A."""
    c = _elementwise_decay(Sa, Aa, Sb, Ab)
    if c is None or not (c > 0).all():
        return None
    logc = c.log()
    # A [D, N] ([N, D] transposed) from before the loop, or a view of it with unit dims added for a broadcast
    # (A[None, :, None, :])
    stored = (Y, X) if transposed else (X, Y)
    rates = [n for n, v in values.items() if _origin(n)[0] == "global" and isinstance(v, torch.Tensor)
             and tuple(d for d in v.shape if d != 1) == stored and v.is_floating_point()]  # fmt: skip

    def rate(a):
        return values[a].reshape(Y, X).transpose(0, 1) if transposed else values[a].reshape(X, Y)

    steps = [(n, r, v) for n, r, v in _candidates(values, (*batch, X))]
    factor = next(((a, (n, r)) for a in rates for n, r, v in steps
                   if rel_err(v[..., :, None] * rate(a), logc) <= TOL), None)  # fmt: skip
    if factor is None:
        return None
    pairs, factor_u = _outer_pairs(values, F0, batch, X, Y), None
    # u = dt x never made as one value: dt B first, then times x (transformers' Mamba slow path). The input term is
    # then (s x) B^T with s a value of the step (the step size as the input reads it): the role beta, u = beta v
    for ns, rs, sv in steps if not pairs else ():
        pairs = _outer_pairs(values, F0, batch, X, Y, scale=sv)
        if pairs:
            factor_u = Role(_origin(ns), rs, (*batch, X))
            break
    readout = _readout(values, oa, Fa, Sa, batch, X, Y, transposed=True)
    if not pairs or readout is None or readout[2]:
        return None
    (A, (dt, rdt)), (u, b), (q, scale, _) = factor, pairs[0], readout
    gate = Role(_origin(dt), rdt, (*batch, X))
    return Recurrence(Family.MAMBA, q, b, u, gate=gate, beta=factor_u, decay=Role(_origin(A), ("reshape",), stored),
                      scale=scale, spelling="loop", state_transposed=transposed,
                      extras={"batch": batch, "positive": False})  # fmt: skip


def _scan_readout(values, o, Snew, shape):
    """(q role, scale) with o = scale * sum over the last axis of S_t * q, q a value of the step of the
    state's shape, broadcast to it, or without the state's next-to-last axis ([B, N] against [B, D, N])."""
    if len(shape) < 1 or o.numel() != math.prod(shape[:-1]):
        return None
    o = o.reshape(shape[:-1]).to(Snew.dtype)
    for node, val in values.items():
        if not isinstance(val, torch.Tensor) or not val.is_floating_point():
            continue
        squeezed = list(val.shape)
        while len(squeezed) > len(shape) - 1 and squeezed[-1] == 1:
            squeezed.pop()  # a read kept as [B, N, 1] for a matmul
        if len(shape) >= 2 and tuple(squeezed) == shape[:-2] + shape[-1:]:
            recipe = ("unsqueeze", tuple(squeezed))
        else:
            recipe = _fit(val, shape)
            if recipe is None:
                continue
        q = apply_recipe(val, recipe, shape)
        ref = (Snew * q).sum(-1)
        c = fit_scale(o, ref)
        if math.isfinite(c) and rel_err(c * ref, o) <= TOL:
            return Role(_origin(node), recipe, shape), c
    return None


DELTA_FAMILY = {"identity": Family.DELTA_RULE, "scalar": Family.GATED_DELTA_RULE, "diag_x": Family.KDA}


def _classify_delta(values, Sa, Aa, Sb, Ab, F0, Fa, oa, batch, dep, positive, plain: NearMiss) -> Recurrence:
    """The delta line: A(S) = (I - b k k^T) D S with D = 1, a scalar or a diagonal, B = b k v^T.

    For each candidate key k and write strength b among the step's values, undo the
    projection with Sherman-Morrison, (I - b k k^T)^-1 = I + b / (1 - b |k|^2) k k^T, and
    require what is left to be a decay D as in the GLA line.
    """
    for transposed in (False, True):
        S1, A1, S2, A2, B0, S1new = (x.transpose(-1, -2) if transposed else x for x in (Sa, Aa, Sb, Ab, F0, Fa))
        K, V = S1.shape[-2], S1.shape[-1]
        keys = list(_candidates(values, (*batch, K)))
        betas = list(_candidates(values, batch))
        for nk, rk, k in keys:
            for nb, rb, b in betas:
                denom = 1 - b * (k * k).sum(-1)
                if (denom.abs() < 1e-3).any():
                    continue
                coef = (b / denom)[..., None, None]

                def undo(A, k=k, coef=coef):
                    return A + coef * k[..., :, None] * torch.einsum("...k,...kv->...v", k, A)[..., None, :]

                try:
                    kind, c = _transition(S1, undo(A1), S2, undo(A2))
                except NearMiss:
                    continue
                if kind not in DELTA_FAMILY:
                    continue
                vs = [
                    (n, r)
                    for n, r, v in _candidates(values, (*batch, V))
                    if rel_err(b[..., None, None] * k[..., :, None] * v[..., None, :], B0) <= TOL
                ]
                if not vs:
                    continue
                readout = _readout(values, oa, Fa, Sa, batch, *Sa.shape[-2:], transposed)
                if readout is None:
                    continue
                q, scale, reads_prev = readout
                if reads_prev:
                    raise NearMiss("the output reads the state before the update (S_{t-1}); this family reads S_t")
                gate, decay, _ = _bind_gate(kind, c, values, dep, positive) if kind != "identity" else (None,) * 3
                role = lambda n, r, t: Role(_origin(n), r, t)  # noqa: E731
                return loop_recurrence(
                    DELTA_FAMILY[kind],
                    q,
                    role(nk, rk, (*batch, K)),
                    role(vs[0][0], vs[0][1], (*batch, V)),
                    gate,
                    decay,
                    scale,
                    transposed,
                    batch,
                    positive,
                    beta=role(nb, rb, batch),
                )
    raise NearMiss(f"{plain}; nor a delta rule (I - b k k^T) D S + b k v^T with b and k values of the step")


def _transition(Sa, Aa, Sb, Ab):
    if rel_err(Aa, Sa) <= TOL and rel_err(Ab, Sb) <= TOL:
        return "identity", None
    for kind, dims in (("scalar", (-2, -1)), ("diag_x", (-1,)), ("diag_y", (-2,))):
        c = (Aa * Sa).sum(dims, keepdim=True) / (Sa * Sa).sum(dims, keepdim=True)
        if rel_err(c * Sa, Aa) <= TOL and rel_err(c * Sb, Ab) <= TOL:
            c = c.squeeze(-1).squeeze(-1) if kind == "scalar" else c.squeeze(dims[0])
            return kind, c
    raise NearMiss("the state transition is not a decay (identity, scalar or diagonal gate)")


def _outer_pairs(values, B, batch, X, Y, scale=None):
    """Up to four (a, b) role pairs of step values with B = a b^T (batched); with ``scale`` [*batch, X], B =
    (scale * a) b^T."""
    xs = list(_candidates(values, (*batch, X)))
    ys = list(_candidates(values, (*batch, Y)))
    found = []
    for na, ra, a in xs:
        a = a if scale is None else scale * a
        for nb, rb, b in ys:
            if rel_err(torch.einsum("...x,...y->...xy", a, b), B) <= TOL:
                found.append((Role(_origin(na), ra, (*batch, X)), Role(_origin(nb), rb, (*batch, Y))))
                if len(found) >= 4:
                    return found
    return found


def _readout(values, o, Snew, Sold, batch, X, Y, transposed):
    K, Vd = (Y, X) if transposed else (X, Y)
    if o.numel() != math.prod(batch) * Vd:
        return None
    o = o.reshape(*batch, Vd)
    for reads_prev, S in ((False, Snew), (True, Sold)):
        for node, recipe, q in _candidates(values, (*batch, K)):
            ref = torch.einsum("...xy,...y->...x", S, q) if transposed else torch.einsum("...xy,...x->...y", S, q)
            den = (ref * ref).sum().item()
            if den == 0:
                continue
            c = (o * ref).sum().item() / den
            if rel_err(c * ref, o) <= TOL:
                return Role(_origin(node), recipe, (*batch, K)), c, reads_prev
    return None


def _bind_bonus(values, o0, B0, readout, transition, batch, X, Y, transposed) -> Role:
    """rwkv6's bonus: the output's term of the step alone, o0, must be c (q . (u k)) v = c ((q u)^T k v^T), read
    with the state before the update, under a per-key decay, for a u from before the loop, one per head."""
    q_role, c, reads_prev = readout
    if not reads_prev:
        raise NearMiss(
            "the output reads S_t plus a term of the step alone; rwkv6's output reads S_{t-1} plus the bonus"
        )
    if transition != ("diag_y" if transposed else "diag_x"):
        raise NearMiss("the output reads S_{t-1} plus a bonus, but the decay is not per key dim (rwkv6's is)")
    K, Vd = (Y, X) if transposed else (X, Y)
    o0 = o0.reshape(*batch, Vd)
    q = next(val for n, r, val in _candidates(values, (*batch, K)) if (_origin(n), r) == (q_role.origin, q_role.recipe))
    kv = B0.transpose(-1, -2) if transposed else B0  # k v^T as [*batch, K, V]
    lead, target = batch[:-1], (*batch, K)
    for node, val in values.items():
        if not isinstance(val, torch.Tensor) or not val.is_floating_point() or _origin(node)[0] != "global":
            continue
        col = -2 if transposed else -1  # u may be spelled as a column of the state, [H, K, 1] (RWKV's time_first)
        for cand in (val, val.squeeze(col)) if val.dim() >= 2 and val.shape[col] == 1 else (val,):
            recipe = _fit(cand, target)
            if recipe is None:
                continue
            own = tuple(recipe[1]) if recipe[0] == "broadcast" else ()
            own = own[next((i for i, d in enumerate(own) if d != 1), len(own)) :]
            if (recipe[0] != "broadcast" or len(own) > 2) and math.prod(lead) != 1:
                continue  # one u per head: no batch dims of its own (RWKV-LM's u.view(1, H, K, 1) has none)
            u = apply_recipe(val, recipe, target)
            if rel_err(c * torch.einsum("...kv,...k->...v", kv, q * u), o0) <= TOL:
                return Role(_origin(node), recipe, target)
    raise NearMiss(
        "the output reads S_{t-1} plus a term of the step alone that is not rwkv6's bonus (q . (u k)) v "
        "with u one value per head and key dim from before the loop"
    )


def _bind_gate(transition, c, values, dep, positive):
    if transition == "identity":
        return None, None, Family.LINEAR_ATTN
    target = tuple(c.shape)
    matches = [(n, r) for n, r, v in _candidates(values, target) if rel_err(v, c) <= TOL]
    if matches:
        # prefer a gate written as exp(x) or sigmoid(x): its log is exact
        matches.sort(key=lambda m: 0 if m[0].target in EXP or m[0].target in SIGMOID else 1)
        node, recipe = matches[0]
        if node.target in EXP and isinstance(node.args[0], fx.Node) and node.args[0] not in dep:
            gate = Role(_origin(node.args[0]), recipe, target, "exp")
        elif node.target in SIGMOID and isinstance(node.args[0], fx.Node) and node.args[0] not in dep:
            gate = Role(_origin(node.args[0]), recipe, target, "sigmoid")
        else:
            if (c <= 0).any() or not positive:  # its log must exist wherever the probes go
                raise _NeedsPositive("the decay is not positive, so it has no log-space gate")
            gate = Role(_origin(node), recipe, target, "log")
        if transition in ("diag_x", "diag_y"):  # diagonal along the key axis (checked by the caller)
            return gate, None, Family.GLA
        # a decay that does not change over time is retention's, lowered as a constant simple_gla gate
        return gate, None, Family.RETENTION if gate.origin[0] == "global" else Family.SIMPLE_GLA
    # no step value holds it: a literal constant gamma (retention) or nothing we can bind
    if transition in ("scalar", "elementwise") and rel_err(c, torch.full_like(c, c.flatten()[0].item())) <= TOL:
        gamma = c.flatten()[0].item()
        if gamma > 0:
            return None, math.log(gamma), Family.RETENTION
    raise NearMiss("the decay is not a value computed in the step, nor a constant")


def prove_loop(step: fx.GraphModule, input_metas: list, state_meta, rec: Recurrence, op, trials: int = 2) -> float:
    """Prove one step equals the family op (T = 1) on fresh probes; return the worst error.

    ``op(rec, vals, h0)`` runs the op of ``rec`` on role values [T, *batch, D] and a state, and
    returns (o, final state) (``rewrite.call_family``): verify knows the IR, not how it is lowered."""
    by_origin = {n.meta["fla_origin"]: n for n in step.graph.nodes if "fla_origin" in n.meta}
    gen = torch.Generator().manual_seed(4321)
    worst = 0.0
    for _ in range(trials):
        P = _probe_inputs(input_metas, gen, rec.extras["positive"])
        S = probe(state_meta.shape, gen, device=state_meta.device)
        (S1, o1), env = run_region(step, [S, *P], widen=True)
        roles = {"q": rec.q, "k": rec.k, "v": rec.v, "gate": rec.gate, "beta": rec.beta, "bonus": rec.bonus}
        roles = {n: r for n, r in (*roles.items(), ("decay", rec.decay)) if isinstance(r, Role)}
        vals = {n: apply_recipe(env[by_origin[r.origin]], r.recipe, r.target)[None] for n, r in roles.items()}
        o, ht = op(rec, vals, S)
        err = max(rel_err(ht, S1), rel_err(o[0].reshape(o1.shape), o1))
        if not err <= TOL:
            raise NearMiss(f"the {rec.family.value} op differs from the step on fresh inputs (rel err {err:.1e})")
        worst = max(worst, err)
    return worst


def prove_region(gm: fx.GraphModule, args: list, recs: list[Recurrence], op, verify: bool = True) -> tuple:
    """The first of ``recs`` (bindings of one whole-sequence region, in the order to try) whose op
    equals the region ``gm`` on the fresh probes ``args`` (its roles, in order), with its error.

    ``op(rec, *args)`` runs the op of ``rec`` on the role values (``rewrite.form_call``).
    Unverified, the first binding the op accepts is taken (error NaN). None: a NearMiss with the errors.
    """
    ref = run_region(gm, args, keep=())[0] if verify else None
    errs = []
    for rec in recs:
        try:
            o = op(rec, *args)
        except RuntimeError as e:
            errs.append(f"{rec.family.value}: {str(e).splitlines()[0]}")
            continue
        if not verify:
            return rec, math.nan
        if isinstance(ref, tuple):
            err = max(rel_err(a.to(b.dtype), b) for a, b in zip(o, ref))
        else:
            err = rel_err(o.to(ref.dtype), ref)
        if err <= TOL:
            return rec, err
        errs.append(f"{rec.family.value} rel err {err:.1e}")
    raise NearMiss("the op differs from the region on fresh inputs: " + "; ".join(errs))

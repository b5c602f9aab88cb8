"""The ``loop`` spelling: a Python time loop that Dynamo (or make_fx) unrolled into T blocks.

Re-rolling, linear in the number of nodes:
  1. group the reads of one time step (``x[:, t]`` and kin, see ``_time``) by their source;
     sources read at every t = 0..T-1 at a constant stride of L nodes mark a loop;
  2. cut the graph into T blocks of L nodes and prove them isomorphic modulo the step
     index: every argument is a node of the same block, of the previous block (a carried
     value) or from before the loop (a global), at the same offsets in every block;
  3. classify the carried values (the state, and output buffers written at t) and the
     per-step output (a buffer write, or one ``stack``/``cat`` after the loop).
The result is a ``LoopRegion``: one step as a small graph plus the wiring. Whether the
step is a known recurrence is decided by ``classify`` on numbers, not here.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

import torch
import torch.fx as fx

from ._graph import source_line, value_of
from ._time import TimeRead, TimeWrite, time_read, time_write

SPELLING = "loop"
# the calls that collect the per-step outputs after the loop (aten's where a vmapped loop was traced)
COLLECT = {
    torch.stack: "stack",
    torch.ops.aten.stack.default: "stack",
    torch.cat: "cat",
    torch.ops.aten.cat.default: "cat",
}


@dataclasses.dataclass
class LoopRegion:
    """One re-rolled loop. Offsets index into a block of L nodes."""

    graph: fx.Graph
    blocks: list[list[fx.Node]]
    reads: dict[tuple, TimeRead]  # read key -> the read of step 0
    state_offset: int
    init_state: fx.Node  # value of the state before the loop
    out_offset: int | None  # offset of the per-step output value
    out_kind: str  # "stack", "cat", "buffer" or "none"
    out_dim: int
    out_target: fx.Node | None  # node after the loop to replace with the whole output
    final_state_used: bool
    source: str
    # a normalizer z_t = z_{t-1} + k_t carried beside the state (``patterns/normalized.py`` reads it): its offset
    # and its value before the loop; the step graph then takes (state, norm, *inputs) and returns z_t last
    norm_offset: int | None = None
    init_norm: fx.Node | None = None
    final_norm_used: bool = False  # the normalizer's last value is used after the loop (a state (S, z) returned)
    # a loop carrying several states (``patterns/multistate.py`` splits it): each state's offset, its value
    # before the loop, and the states whose final value is used after the loop; empty for one state
    states: tuple = ()
    init_states: tuple = ()
    finals_used: frozenset = frozenset()
    outputs: tuple = ()  # a loop carrying several states with several per-step outputs: (kind, dim, offset, target)

    @property
    def T(self) -> int:
        return len(self.blocks)

    def step_graph(self) -> tuple[fx.GraphModule, list]:
        """One step as a graph: (state, *inputs) -> (new state, output value or None).

        Every node carries meta["fla_origin"]: ("offset", i) for a node of the block,
        ("read", key) for the value of step t of a time read, ("global", node) for a value
        from before the loop. Returns the module and the origins of its inputs after the state.
        """
        out = ("offset", self.out_offset) if self.out_offset is not None else None
        norm = [("offset", self.norm_offset)] if self.norm_offset is not None else []
        return self._extract([("offset", self.state_offset), out, *norm], with_state=True)

    def role_graph(self, origins: list[tuple]) -> tuple[fx.GraphModule, list]:
        """The per-step computation of the values at ``origins`` from reads and globals only."""
        return self._extract(origins, with_state=False)

    def _extract(self, wanted: list, with_state: bool) -> tuple[fx.GraphModule, list]:
        t = 1 if self.T > 1 else 0
        block = self.blocks[t]
        index = {n: i for i, n in enumerate(block)}
        prev = {n: i for i, n in enumerate(self.blocks[0])} if t else {}
        g = fx.Graph()
        state = g.placeholder("state") if with_state else None
        if state is not None:
            state.meta["example_value"] = value_of(self.init_state)
        norm = g.placeholder("norm") if with_state and self.norm_offset is not None else None
        if norm is not None:
            norm.meta["example_value"] = value_of(self.init_norm)
        env: dict = {}
        origins: list = []

        def placeholder(origin, meta_node) -> fx.Node:
            if origin not in env:
                ph = g.placeholder(f"x{len(origins)}")
                ph.meta["example_value"] = value_of(meta_node)
                ph.meta["fla_origin"] = origin
                env[origin] = ph
                origins.append(origin)
            return env[origin]

        def lookup(a: fx.Node) -> fx.Node:
            if a in index:
                return build(index[a])
            if a in prev:
                if norm is not None and prev[a] == self.norm_offset:
                    return norm
                if not with_state or prev[a] != self.state_offset:
                    raise ValueError(f"the step reads a carried value other than the state ('{a.name}')")
                return state
            r = time_read(a)
            if r is not None and r.index == t and r.key in self.reads:
                return placeholder(("read", r.key), a)
            v = value_of(a)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return v  # a number computed from symbolic sizes (a scale K**-0.5): pinned on a rewrite
            return placeholder(("global", a), a)

        def build(i: int) -> fx.Node:
            if ("offset", i) in env:
                return env[("offset", i)]
            n = block[i]
            r = time_read(n)
            if r is not None and r.index == t and r.key in self.reads:
                env[("offset", i)] = placeholder(("read", r.key), n)
            else:
                new = g.node_copy(n, lookup)
                new.meta["fla_origin"] = ("offset", i)
                env[("offset", i)] = new
            return env[("offset", i)]

        def get(origin):
            if origin is None:
                return None
            if origin[0] == "offset":
                return build(origin[1])
            if origin[0] == "read":
                return placeholder(origin, self.reads[origin[1]].src)
            return placeholder(origin, origin[1])

        g.output(tuple(get(o) for o in wanted))
        return fx.GraphModule(torch.nn.Module(), g), origins


class _Mismatch(Exception):
    def __init__(self, msg: str, framing: bool = False, stateless: bool = False):
        super().__init__(msg)
        self.framing = framing  # the blocks do not fit the graph: says nothing about the loop
        self.stateless = stateless  # steps that fit and carry nothing: a loop over sequences, perhaps


def _entry(n: fx.Node, t: int, start: int, L: int, s: int, pos: dict, loop_keys: set, t0: int = 0) -> tuple:
    """Signature of node ``n`` of block ``t`` (time step ``t + t0``): op and arguments, relative to the block."""

    def norm(a):
        if isinstance(a, fx.Node):
            p = pos[a]
            if start <= p < start + L:
                return ("L", p - start)
            if t > 0 and start - L <= p < start:
                return ("C", p - (start - L))
            if p < s:
                r = time_read(a)
                if r is not None and r.index == t + t0 and r.key in loop_keys:
                    return ("read", ("G", r.src), r.dim, repr(r.post))
                return ("G", a)
            raise _Mismatch(f"'{n.name}' reads '{a.name}' from outside its block")
        if isinstance(a, (list, tuple)):
            return type(a)(norm(x) for x in a)
        if isinstance(a, slice):
            return ("slice", norm(a.start), norm(a.stop), norm(a.step))
        if isinstance(a, dict):
            return tuple(sorted((k, norm(v)) for k, v in a.items()))
        return a

    r = time_read(n)
    if r is not None and r.index == t + t0 and r.key in loop_keys:
        return ("read", norm(r.src), r.dim, repr(r.post))
    w = time_write(n)
    if w is not None and w.index == t + t0:
        return ("write", norm(w.buf), w.dim, norm(w.value), w.keepdim)
    return (n.op, n.target, norm(n.args), norm(n.kwargs))


def _unify(e0, e1, init: dict) -> bool:
    """Block 0 equals block 1 except that carried values ("C", i) come from globals."""
    if isinstance(e1, tuple) and len(e1) == 2 and e1[0] == "C" and isinstance(e1[1], int):
        if isinstance(e0, tuple) and len(e0) == 2 and e0[0] == "G":
            if init.setdefault(e1[1], e0[1]) is not e0[1]:
                return False
            return True
        return False
    if isinstance(e0, (list, tuple)) and isinstance(e1, (list, tuple)):
        return type(e0) is type(e1) and len(e0) == len(e1) and all(_unify(a, b, init) for a, b in zip(e0, e1))
    if isinstance(e0, fx.Node) or isinstance(e1, fx.Node):
        return e0 is e1
    try:
        return bool(e0 == e1)
    except Exception:
        return False


def _same_target(a: fx.Node, b: fx.Node) -> bool:
    return a.op == b.op and a.target == b.target


def find(graph: fx.Graph) -> tuple[list[LoopRegion], list[tuple[str, str]]]:
    """Re-roll every unrolled time loop of ``graph``. Returns (regions, [(reason, source)])."""
    nodes = list(graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    by_src: dict[tuple, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    keys: dict[tuple, set] = defaultdict(set)
    for n in nodes:
        r = time_read(n)
        if r is not None and n.users and not _peeled(n):
            # anchor a step at the first use of its reads: reads may be hoisted before the loop
            by_src[(r.src, r.dim)][r.index].append(min(pos[u] for u in n.users))
            keys[(r.src, r.dim)].add(r.key)
    families = []
    for (src, dim), idx in by_src.items():
        v = value_of(src)
        T = v.shape[dim] if isinstance(v, torch.Tensor) and dim < v.dim() else None
        if T is None or T < 2 or sorted(idx) != list(range(T)):
            continue
        first = [min(idx[t]) for t in range(T)]
        families.append((first[0], T, first, keys[(src, dim)], idx))
    families.sort(key=lambda f: f[0])
    # reads whose producer ``patterns/pull.py`` pulled into the steps: dead, still framed as reads
    pulled = {r.key for n in nodes if n.meta.get("fla_pulled") and (r := time_read(n)) is not None}
    regions, misses = [], []
    done_until = floor = -1
    stateless: list[tuple] = []  # (lo, T, L) of loops that carried no state: the loops inside them still tried
    for lo, T, first, *_ in families:
        if lo <= done_until:
            continue
        L = first[1] - first[0]
        if L <= 0 or any(first[t] != first[0] + t * L for t in range(T)):
            continue  # not a loop (an unbind into q, k, v whose last piece is used after the loop): blocks nothing
        if any(T == T0 and L == L0 and abs(lo - lo0) < L for lo0, T0, L0 in stateless):
            continue  # that loop again, anchored by another source
        before = done_until
        done_until = max(done_until, first[-1])  # one attempt per loop, whichever source anchors it
        # the sources of this loop: read at every step with the same period, starting in step 0
        keys = set().union(
            *[f[3] for f in families if f[1] == T and f[2][1] - f[2][0] == L and abs(f[0] - first[0]) < L],
            *[f[3] for f in families if f[1] == T and _read_in_steps(f[4], first, L)],  # read by two loops (GSA)
            pulled,
        )
        try:
            region = _reroll(nodes, pos, first[0], T, L, floor, keys)
        except _Mismatch as e:
            misses.append(
                (f"time loop at T={T} not re-rolled: {e}", source_line(nodes[first[0]]), lo if e.stateless else None)
            )
            if e.stateless:  # a loop over independent sequences: each may hold a time loop of its own
                stateless.append((lo, T, L))
                done_until = before
            continue
        regions.append(region)
        done_until = floor = max(done_until, pos[region.blocks[-1][-1]])
    # a loop over sequences whose own time loops were found is not a miss
    inner = [pos[r.blocks[0][0]] for r in regions]
    holding = {lo0 for lo0, T0, L0 in stateless if any(lo0 <= p < lo0 + T0 * L0 for p in inner)}
    return regions, [(why, src) for why, src, lo0 in misses if lo0 is None or lo0 not in holding]


def copied_sources(graph: fx.Graph) -> list[tuple[str, str]]:
    """Why a loop ``find`` did not anchor: its steps read time step t of their own copy of one computation
    (``x.transpose(1, 2)[:, :, t]`` at every step), so no sequence is read at every t. [(reason, source)]."""
    groups: dict[tuple, dict[int, set]] = defaultdict(lambda: defaultdict(set))
    first: dict[tuple, fx.Node] = {}
    for n in graph.nodes:
        r = time_read(n)
        if r is None or not n.users or r.src.op not in ("call_function", "call_method"):
            continue
        key = (r.src.target, repr(r.src.args), repr(r.src.kwargs), r.dim, repr(r.post))
        groups[key][r.index].add(r.src)
        first.setdefault(key, n)
    copies, T, where = [], 0, None
    for key, idx in groups.items():
        srcs = set().union(*idx.values())
        v = value_of(next(iter(srcs)))
        n = v.shape[key[3]] if isinstance(v, torch.Tensor) and key[3] < v.dim() else 0
        if len(srcs) > 1 and n >= 2 and sorted(idx) == list(range(n)) and all(len(s) == 1 for s in idx.values()):
            copies.append(f"{getattr(key[0], '__name__', key[0])}{key[1]}")
            if where is None:
                T, where = n, first[key]
    if not copies:
        return []
    return [
        (
            f"time loop at T={T} not re-rolled: each step reads step t of its own copy of {', '.join(copies)}, "
            "not one sequence read at every t (computed once before the loop, it would be)",
            source_line(where),
        )
    ]


def _peeled(n: fx.Node) -> bool:
    """A read of step 0 that only a peeled first step (``patterns/peel.py``) still uses: not a step's read."""
    return bool(n.meta.get("fla_peeled")) and all(u.meta.get("fla_peeled") for u in n.users)


def _read_in_steps(idx: dict, first: list, L: int) -> bool:
    """A source read at every step of the loop whose steps start at ``first`` (L nodes each), besides its
    reads elsewhere (a sequence two loops read, the first loop anchoring its family)."""
    return all(any(abs(p - first[t]) < L for p in idx[t]) for t in range(len(first)))


def _reroll(nodes, pos, p0, T, L, floor, loop_keys) -> LoopRegion:
    s = p0
    while s - 1 > floor and s - 1 + L < len(nodes) and _same_target(nodes[s - 1], nodes[s - 1 + L]):
        if nodes[s - 1].op in ("placeholder", "get_attr", "output"):
            break
        s -= 1
    # shrink from the left until block 0 fits (a prologue node may look like the block's end)
    errors = []
    for start in range(s, p0 + 1):
        try:
            return _build(nodes, pos, start, T, L, loop_keys)
        except _Mismatch as e:
            errors.append(e)
    # say what the widest framing that fits the graph found (a carried normalizer, a second
    # output), not that a narrower one ran into the graph's output
    raise next((e for e in errors if not e.framing), errors[0])


def frame(nodes, pos, s, T, L, loop_keys, t0: int = 0) -> tuple[list[list[fx.Node]], dict[int, fx.Node]]:
    """T blocks of L nodes from ``s`` (time steps t0..t0+T-1) proven isomorphic: (blocks, the carried values'
    offsets -> their values before the loop). Raises ``_Mismatch``."""
    end = s + T * L
    if end > len(nodes):
        raise _Mismatch("blocks run past the end of the graph", framing=True)
    blocks = [nodes[s + t * L : s + (t + 1) * L] for t in range(T)]
    if any(n.op in ("placeholder", "output", "get_attr") for b in blocks for n in b):
        raise _Mismatch("a block holds an input or the output", framing=True)
    sigs = [[_entry(n, t, s + t * L, L, s, pos, loop_keys, t0) for n in blocks[t]] for t in range(min(T, 2))]
    ref = sigs[-1]
    for t in range(2, T):
        for i, n in enumerate(blocks[t]):
            if _entry(n, t, s + t * L, L, s, pos, loop_keys, t0) != ref[i]:
                raise _Mismatch(f"step {t + t0} differs from step {1 + t0} at '{n.name}'")
    init: dict[int, fx.Node] = {}
    if T > 1 and not all(_unify(a, b, init) for a, b in zip(sigs[0], sigs[1])):
        raise _Mismatch("the first step differs from the others")
    return blocks, init


def _build(nodes, pos, s, T, L, loop_keys) -> LoopRegion:
    blocks, init = frame(nodes, pos, s, T, L, loop_keys)

    carried = sorted(init)
    writes = {i: time_write(blocks[-1][i]) for i in carried}
    buffers = {i for i, w in writes.items() if w is not None and w.index == T - 1 and w.buf is blocks[-2][i]}
    states = [i for i in carried if i not in buffers]
    norm = _normalizer_pair(blocks, states) if len(states) == 2 else None
    if norm is not None:  # S and a normalizer z: patterns/normalized.py classifies the step
        states, norm = [norm[0]], norm[1]
    if not states:
        raise _Mismatch("the loop carries no state", stateless=True)
    several = tuple(states) if len(states) > 1 else ()  # patterns/multistate.py splits them
    state = states[0]
    reads = {}
    for n in blocks[0]:
        for a in (n, *n.all_input_nodes):
            r = time_read(a)
            if r is not None and r.index == 0 and r.key in loop_keys:
                reads[r.key] = r

    # uses after the loop: the final state, the final buffer, or one stack/cat of a per-step value
    region_nodes = set(n for b in blocks for n in b)
    outs: dict[tuple, tuple[str, int, int, fx.Node]] = {}
    final_state_used = final_norm_used = False
    finals = set()
    for t, b in enumerate(blocks):
        for i, n in enumerate(b):
            for u in n.users:
                if u in region_nodes:
                    continue
                if t == T - 1 and i == state:
                    final_state_used = True
                    finals.add(i)
                elif t == T - 1 and i in several:
                    finals.add(i)
                elif t == T - 1 and i == norm:
                    final_norm_used = True
                elif t == T - 1 and i in buffers:
                    outs[("buffer", i)] = ("buffer", writes[i].dim, i, n)
                elif t == 0 and u.target in COLLECT and _collects(u, blocks, i):
                    dim = u.args[1] if len(u.args) > 1 else u.kwargs.get("dim", 0)
                    outs[(u,)] = (COLLECT[u.target], dim, i, u)
                elif t > 0 and u.target in COLLECT and _collects(u, blocks, i):
                    continue
                else:
                    raise _Mismatch(f"'{n.name}' of step {t} is used after the loop by '{u.name}'")
    if len(outs) > 1 and not several:
        raise _Mismatch(f"{len(outs)} per-step outputs; one is supported")
    if not outs and not finals:
        raise _Mismatch("nothing computed by the loop is used")

    def written(kind, dim, offset, target):  # a buffer's output: the offset of the value written at t
        if kind == "buffer":
            size = value_of(init[offset]).shape[dim]
            if size != T:
                raise _Mismatch(f"the output buffer has {size} steps along dim {dim} but the loop writes {T}")
            offset = pos[writes[offset].value] - (s + (T - 1) * L)
            if not 0 <= offset < L:
                raise _Mismatch("the written value is not computed in the step")
        return kind, dim, offset, target

    outputs = tuple(written(*o) for o in outs.values()) if len(outs) > 1 else ()
    # several outputs (one per state: a numerator and a normalizer): every state is split off, then the outputs
    out_kind, out_dim, out_offset, out_target = written(*next(iter(outs.values()))) if len(outs) == 1 else (
        "none", 0, None, None)  # fmt: skip
    return LoopRegion(
        graph=nodes[0].graph,
        blocks=blocks,
        reads=reads,
        state_offset=state,
        init_state=init[state],
        out_offset=out_offset,
        out_kind=out_kind,
        out_dim=out_dim,
        out_target=out_target,
        final_state_used=final_state_used,
        source=source_line(blocks[0][state]) or source_line(blocks[0][0]),
        norm_offset=norm,
        init_norm=init[norm] if norm is not None else None,
        final_norm_used=final_norm_used,
        states=several,
        init_states=tuple(init[i] for i in several),
        finals_used=frozenset(finals),
        outputs=outputs,
    )


def _user_name(n: fx.Node) -> str:
    """The user's variable name of a value: the target of the assignment on its source line
    (``z += k[:, t]`` -> ``z``), else Dynamo's node name (``z_3`` -> ``z``)."""
    code = source_line(n).partition(": ")[2]
    m = re.match(r"\s*([A-Za-z_]\w*)\s*(?:[-+*/@]?=)(?!=)", code)
    return m.group(1) if m else re.sub(r"_\d+$", "", n.name)


def _normalizer_pair(blocks, states: list[int]) -> tuple[int, int] | None:
    """(the state S, a normalizer z) among the carried ``states``: z a vector over S's key (or value) dim
    that is a running sum z_t = z_{t-1} + x_t; None where there is no such pair."""
    last = blocks[-1]
    vals = {i: value_of(last[i]) for i in states}
    shapes = {i: tuple(v.shape) for i, v in vals.items() if isinstance(v, torch.Tensor)}
    main = max(shapes, key=lambda i: len(shapes[i]), default=states[0])
    for i in states:
        if i == main or i not in shapes or main not in shapes:
            continue
        vector = len(shapes[i]) == len(shapes[main]) - 1 and shapes[i] in (
            shapes[main][:-1],
            shapes[main][:-2] + shapes[main][-1:],
        )
        if vector and _is_running_sum(last[i], blocks[-2][i]):
            return main, i
    return None


def normalizer_message(blocks, S: int, z: int, why: str = "") -> str:
    """Why a loop with a normalizer is left alone, in the user's terms."""
    Sn, zn = _user_name(blocks[-1][S]), _user_name(blocks[-1][z])
    return (
        f"a normalizer {zn}_t = {zn}_{{t-1}} + k_t, carried beside the state {Sn}, is not supported in a loop "
        f"yet{f' here ({why})' if why else ''}; supported: o_t = {Sn}_t^T q_t / ({zn}_t . q_t + eps), "
        f"{Sn}_t = {Sn}_{{t-1}} + k_t v_t^T (the loop is left as written)"
    )


def _is_running_sum(n: fx.Node, prev: fx.Node) -> bool:
    """``n`` is ``prev + x`` (or ``x + prev``): a running sum of per-step values."""
    name = str(getattr(n.target, "__name__", n.target))
    return ("add" in name or "iadd" in name) and prev in n.args[:2]


def _collects(u: fx.Node, blocks, i) -> bool:
    """``u`` is stack/cat of exactly the values at offset ``i`` of every block, in order."""
    seq = u.args[0] if u.args else u.kwargs.get("tensors")
    return isinstance(seq, (list, tuple)) and len(seq) == len(blocks) and all(a is b[i] for a, b in zip(seq, blocks))


def writes_of(region: LoopRegion) -> TimeWrite | None:
    """The buffer write of the last step, when the output is written into a buffer."""
    if region.out_kind != "buffer":
        return None
    return time_write(region.out_target)

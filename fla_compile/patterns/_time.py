"""Rules that recognise a read or a write of one time step, at the torch and the aten level.

One rule per spelling. A read is ``x[:, t]``, ``x[:, t, :, None]``, ``x.select(1, t)``, ``x[:, t:t+1]``,
``x.narrow(1, t, 1)``, ``x.unbind(1)[t]``, ``aten.select.int(x, 1, t)`` or
``aten.slice.Tensor(x, 1, t, t+1)``; a write is ``o[:, t] = y`` (after ``to_ssa``),
``aten.select_scatter(o, y, 1, t)`` or ``aten.slice_scatter(o, y, 1, t, t+1)``.
"""

from __future__ import annotations

import dataclasses
import operator

import torch
import torch.fx as fx

from ._graph import functional_setitem, infer_values, value_of

aten = torch.ops.aten


@dataclasses.dataclass(frozen=True)
class TimeRead:
    src: fx.Node  # the whole-sequence tensor
    dim: int  # non-negative time dim of src
    index: int
    post: tuple | None  # indexing applied after selecting step t (x[:, t, None] -> (slice(None), None))

    @property
    def key(self) -> tuple:
        """What identifies the read across steps: the source, the dim and the post-indexing."""
        return (self.src, self.dim, repr(self.post))


@dataclasses.dataclass(frozen=True)
class TimeWrite:
    buf: fx.Node
    dim: int
    index: int
    value: fx.Node
    keepdim: bool


def _ndim(node) -> int | None:
    v = value_of(node) if isinstance(node, fx.Node) else None
    return v.dim() if isinstance(v, torch.Tensor) else None


def _is_full(s) -> bool:
    return isinstance(s, slice) and s.start is None and s.stop is None and s.step is None


def parse_index(index, ndim: int | None):
    """(dim, t, post) if ``index`` picks one time step along one dim; ``post`` is the rest of
    the indexing (new axes, a kept size-1 dim) to apply to the selected step, or None."""
    items = index if isinstance(index, tuple) else (index,)
    if any(not (x is None or x is Ellipsis or isinstance(x, (int, slice))) or isinstance(x, bool) for x in items):
        return None
    if sum(x is Ellipsis for x in items) > 1:
        return None
    picks = [i for i, x in enumerate(items) if isinstance(x, int)][:1]  # x[:, t, :, 0]: the first int is time
    if not picks:
        picks = [
            i
            for i, x in enumerate(items)
            if isinstance(x, slice) and isinstance(x.start, int) and x.stop == x.start + 1 and x.step in (None, 1)
        ]
    if len(picks) != 1:
        return None
    p = picks[0]
    x = items[p]
    if isinstance(x, int):
        t, keep = x, False
    elif isinstance(x.start, int) and x.stop == x.start + 1 and x.step in (None, 1):
        t, keep = x.start, True
    else:
        return None
    if Ellipsis in items[:p]:
        if ndim is None:
            return None
        dim = ndim - sum(1 for y in items[p + 1 :] if y is not None and y is not Ellipsis) - 1
    else:
        dim = sum(1 for y in items[:p] if y is not None)
    rest = items[:p] + ((None,) if keep else ()) + items[p + 1 :]
    post = None if all(_is_full(y) or y is Ellipsis for y in rest) else rest
    return (dim, t, post) if t >= 0 else None


def _keep(dim: int) -> tuple:
    return (slice(None),) * dim + (None,)


def _norm_dim(dim, node):
    if not isinstance(dim, int):
        return None
    if dim >= 0:
        return dim
    nd = _ndim(node)
    return None if nd is None else dim + nd


def time_read(node: fx.Node) -> TimeRead | None:
    if node.op not in ("call_function", "call_method"):
        return None
    t, a = node.target, node.args
    if t is operator.getitem and len(a) == 2 and isinstance(a[0], fx.Node):
        src = a[0]
        if isinstance(a[1], int) and src.target in (torch.unbind, "unbind", aten.unbind.int):
            base = src.args[0]
            dim = src.args[1] if len(src.args) > 1 else src.kwargs.get("dim", 0)
            dim = _norm_dim(dim, base)
            return None if dim is None else TimeRead(base, dim, a[1], None)
        if not isinstance(value_of(src), torch.Tensor):
            return None
        parsed = parse_index(a[1], _ndim(src))
        return None if parsed is None else TimeRead(src, *parsed)
    if t in ("select", torch.select, aten.select.int) and len(a) == 3:
        dim = _norm_dim(a[1], a[0])
        return None if dim is None or not isinstance(a[2], int) else TimeRead(a[0], dim, a[2], None)
    if t in ("narrow", torch.narrow) and len(a) == 4 and a[3] == 1 and isinstance(a[2], int):
        dim = _norm_dim(a[1], a[0])
        return None if dim is None else TimeRead(a[0], dim, a[2], _keep(dim))
    if t is aten.slice.Tensor and len(a) >= 4 and isinstance(a[2], int) and a[3] == a[2] + 1:
        if len(a) > 4 and a[4] != 1:
            return None
        dim = _norm_dim(a[1], a[0])
        return None if dim is None else TimeRead(a[0], dim, a[2], _keep(dim))
    return None


def _strip_copy(value: fx.Node, buf: fx.Node) -> fx.Node:
    """aten writes copy the value into a view of the buffer first; the written value is the source."""
    if isinstance(value, fx.Node) and value.target is aten.copy.default:
        dst = value.args[0]
        if isinstance(dst, fx.Node) and dst.args and dst.args[0] is buf:
            return value.args[1]
    return value


def time_write(node: fx.Node) -> TimeWrite | None:
    if node.op != "call_function":
        return None
    t, a = node.target, node.args
    if t is functional_setitem and len(a) == 3 and isinstance(a[0], fx.Node):
        parsed = parse_index(a[1], _ndim(a[0]))
        if parsed is None or not isinstance(a[2], fx.Node):
            return None
        dim, t, post = parsed
        if post is not None and post != _keep(dim):
            return None
        return TimeWrite(a[0], dim, t, a[2], post is not None)
    if t is aten.select_scatter.default and len(a) == 4:
        dim = _norm_dim(a[2], a[0])
        return None if dim is None else TimeWrite(a[0], dim, a[3], _strip_copy(a[1], a[0]), False)
    if t is aten.slice_scatter.default and len(a) >= 5 and isinstance(a[3], int) and a[4] == a[3] + 1:
        dim = _norm_dim(a[2], a[0])
        return None if dim is None else TimeWrite(a[0], dim, a[3], _strip_copy(a[1], a[0]), True)
    return None


def split_leading_ints(graph: fx.Graph) -> int:
    """``x[b, t]`` (two leading ints) becomes ``x[b][t]``, one ``x[b]`` per source and b: a loop over sequences
    around a time loop (``for b: for t: k[b, t]``) then reads step t of one sequence ``x[b]`` at every step, as
    the time rules read it, where the first int (b) would frame the outer loop as time. The same values; a read
    ``x[t, 0]`` of a time-major input stays a read of step t. Returns the number of reads split."""
    made: dict[tuple, fx.Node] = {}
    split = 0
    inputs = [n for n in graph.nodes if n.op in ("placeholder", "get_attr")]
    for n in list(graph.nodes):
        if n.op != "call_function" or n.target is not operator.getitem or len(n.args) != 2:
            continue
        src, index = n.args
        if not (isinstance(src, fx.Node) and isinstance(index, tuple) and len(index) >= 2):
            continue
        if not all(type(i) is int for i in index[:2]) or not isinstance(value_of(src), torch.Tensor):
            continue
        outer = made.get((src, index[0]))
        if outer is None:
            # before the loops: after the source, or after the last input where it is one
            with graph.inserting_after(inputs[-1] if src.op in ("placeholder", "get_attr") else src):
                outer = graph.call_function(operator.getitem, (src, index[0]))
            try:
                infer_values([outer])
            except ValueError:
                graph.erase_node(outer)
                continue
            made[(src, index[0])] = outer
        n.args = (outer, index[1:] if len(index) > 2 else index[1])
        split += 1
    return split

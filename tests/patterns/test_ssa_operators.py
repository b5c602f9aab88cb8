"""to_ssa and Python's bitwise operators: ``a & b`` is out of place (not a refusal), ``a &= b`` is in place."""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from fla_compile.patterns._graph import to_ssa


def _and(a, b):
    return (a & b) | a  # operator.and_ / or_: their names end in "_", yet they do not mutate


def _iand_graph() -> fx.GraphModule:
    """r = a | b; r &= b (operator.iand, as Dynamo records it: fx's tracer has no in-place operators); (r, a)."""
    g = fx.Graph()
    a, b = g.placeholder("a"), g.placeholder("b")
    r = g.call_function(operator.or_, (a, b))
    r2 = g.call_function(operator.iand, (r, b))
    g.output((r2, a))
    return fx.GraphModule(torch.nn.Module(), g)


def test_out_of_place_bitwise_operators_are_not_refused():
    gm = fx.symbolic_trace(_and)
    graph, why = to_ssa(gm)
    assert graph is not None, why
    a, b = torch.tensor([True, False, True]), torch.tensor([True, True, False])
    assert torch.equal(fx.GraphModule(gm, graph)(a, b), _and(a, b))


def test_in_place_bitwise_operator_becomes_a_value():
    gm = _iand_graph()
    graph, why = to_ssa(gm)
    assert graph is not None, why
    assert not any(n.target is operator.iand for n in graph.nodes)
    a, b = torch.tensor([True, False, True, False]), torch.tensor([True, True, False, False])
    out = fx.GraphModule(gm, graph)(a.clone(), b)
    assert torch.equal(out[0], (a | b) & b) and torch.equal(out[1], a)


def _element_graph(op, update_index: int = 0) -> fx.GraphModule:
    """t = op(x); v = t[i]; v /= 2 (in place); w = t[i] again; return v + w, t[1 - i] (as Dynamo records a router's
    ``top_value /= top_value.sum()``); the tuple node carries its example value, as in a Dynamo graph."""
    g = fx.Graph()
    x = g.placeholder("x")
    t = g.call_function(op, (x, 2))
    x0 = torch.arange(8.0).reshape(2, 4)
    t.meta["example_value"] = op(x0, 2)
    v = g.call_function(operator.getitem, (t, update_index))
    v2 = g.call_function(operator.itruediv, (v, 2.0))
    w = g.call_function(operator.getitem, (t, update_index))
    other = g.call_function(operator.getitem, (t, 1 - update_index))
    g.output((g.call_function(operator.add, (v2, w)), other))
    return fx.GraphModule(torch.nn.Module(), g)


def _eager(op, x, i):
    t = op(x, 2)
    v = t[i]
    v /= 2.0
    return v + t[i], t[1 - i]


def test_an_element_of_topk_updated_in_place_becomes_a_value():
    gm = _element_graph(torch.topk)
    graph, why = to_ssa(gm)
    assert graph is not None, why
    x = torch.randn(3, 5)
    out, ref = fx.GraphModule(gm, graph)(x), _eager(torch.topk, x, 0)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


def test_an_element_of_a_tuple_of_views_updated_in_place_is_still_refused():
    """split's pieces are views of x: updating one in place updates x; that stays a refusal."""
    gm = _element_graph(torch.split)
    graph, why = to_ssa(gm)
    assert graph is None and "in place" in why


def _concat_by_copies(a, b):
    """Kimi-Linear's MLA key states: a new buffer filled through two slice views' copy_."""
    k = a.new_empty(*a.shape[:-1], a.shape[-1] + b.shape[-1])
    k[..., : a.shape[-1]].copy_(a)
    k[..., a.shape[-1] :].copy_(b)
    return k * 2


def _copy_into_a_gathered_copy(a, b):
    """k[idx] with a tensor index is a copy: copy_ into it leaves k as it was (not base[idx] = b)."""
    k = a.clone()
    k[torch.tensor([0, 1])].copy_(b)
    return k * 2


def _copy_then_read_the_view(a, b):
    k = a.clone()
    v = k[..., :2]
    v.copy_(b)
    return v * 2, k


def _ssa_of(fn, *args):
    """to_ssa of ``fn``'s Dynamo graph: (the normalized graph's outputs or None, the reason)."""
    seen = []

    def backend(gm, example_inputs):
        graph, why = to_ssa(gm)
        seen.append((None if graph is None else fx.GraphModule(gm, graph), why))
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    ((gm, why),) = seen
    return (None if gm is None else gm(*args)), why


def test_copy_into_slices_of_a_buffer_becomes_setitem():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 2)
    out, why = _ssa_of(_concat_by_copies, a, b)
    assert out is not None, why
    assert torch.equal(out[0] if isinstance(out, tuple) else out, _concat_by_copies(a, b))


def test_copy_into_an_advanced_index_leaves_the_base_as_it_was():
    a, b = torch.randn(3, 4), torch.randn(2, 4)
    out, why = _ssa_of(_copy_into_a_gathered_copy, a, b)
    assert out is not None, why
    assert torch.equal(out[0] if isinstance(out, tuple) else out, _copy_into_a_gathered_copy(a, b))


def _router_gather_masked(perm, x, w):
    """transformers' grouped-mm experts (5.17): ``h = hidden[perm]; h.masked_fill_(sentinel, 0)`` (perm first:
    Dynamo orders the inputs by first use)."""
    h = x[perm // 2]
    h.masked_fill_((perm >= 5).unsqueeze(-1), 0.0)
    return h @ w, x * 2


def _slice_masked(x, w):
    """The near miss: ``x[1:]`` is a view of the clone, so masked_fill_ on it updates the clone."""
    c = x.clone()
    h = c[1:]
    h.masked_fill_(h > 0, 0.0)
    return c @ w


def test_an_in_place_update_of_a_gathered_copy_becomes_a_value():
    x, w = torch.randn(4, 3), torch.randn(3, 2)
    perm = torch.tensor([7, 0, 3, 5, 1, 6, 2, 4])
    out, why = _ssa_of(_router_gather_masked, perm, x, w)
    assert out is not None, why
    ref = _router_gather_masked(perm, x, w)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    out, why = _ssa_of(_slice_masked, x, w)
    assert out is None and "view" in why


def test_a_view_read_after_its_base_was_updated_is_refused():
    a = torch.randn(3, 4)
    out, why = _ssa_of(_copy_then_read_the_view, a, torch.randn(3, 2))
    assert out is None and "view" in why

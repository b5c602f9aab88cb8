"""Time loops inside a Python loop over sequences (``for b: for t: ... k[b, t] ...``), as single-stream inference
demos run them, and one sequence's loop with no batch dim at all (state [H, K, V]).

``k[b, t]`` is read as ``k[b][t]`` (``_time.split_leading_ints``): each sequence's loop then reads step t of one
sequence, and the outer loop, which carries no state, no longer hides them. Each inner loop is proven and
rewritten on its own. A look-alike whose output reads the updated state plus the bonus stays as written.
"""

import torch

import fla_compile
from tests.compare import rel

B, T, H, K, V = 2, 6, 2, 4, 3


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    r, k = (torch.randn(B, T, H, K, generator=g) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g)
    w = torch.randn(B, T, H, K, generator=g) * 0.5 - 1.0
    u = torch.randn(H, K, generator=g)
    return [x.requires_grad_() for x in (r, k, v, w, u)]


def _rwkv6_step(rr, kk, vv, ww, u, state, after: bool = False):
    kv = kk.view(H, K, 1) @ vv.view(H, 1, V)
    new = kv + torch.exp(-torch.exp(ww)).view(H, K, 1) * state
    read = new if after else state  # rwkv6 reads the state before the update
    return (rr.view(H, 1, K) @ (u.view(H, K, 1) * kv + read)).view(H, V), new


def rwkv6_per_sequence(r, k, v, w, u):
    outs = []
    for b in range(r.shape[0]):
        state = torch.zeros(H, K, V)
        rows = []
        for t in range(r.shape[1]):
            o, state = _rwkv6_step(r[b, t], k[b, t], v[b, t], w[b, t], u, state)
            rows.append(o)
        outs.append(torch.stack(rows))
    return torch.stack(outs)


def rwkv6_one_sequence(r, k, v, w, u):
    """One sequence, no batch dim: the op's heads are the state's one leading dim (the bonus is per head)."""
    state = torch.zeros(H, K, V)
    rows = []
    for t in range(r.shape[0]):
        o, state = _rwkv6_step(r[t], k[t], v[t], w[t], u, state)
        rows.append(o)
    return torch.stack(rows)


def near_miss_reads_updated_state(r, k, v, w, u):
    outs = []
    for b in range(r.shape[0]):
        state = torch.zeros(H, K, V)
        rows = []
        for t in range(r.shape[1]):
            o, state = _rwkv6_step(r[b, t], k[b, t], v[b, t], w[b, t], u, state, after=True)
            rows.append(o)
        outs.append(torch.stack(rows))
    return torch.stack(outs)


def _run(fn, args):
    torch._dynamo.reset()
    out = torch.compile(fn, backend="fla", options={"inductor": False})(*args)
    return out, [m.family for m in fla_compile.last_report().matches]


def _check_eager(fn, args, out):
    ours = out if isinstance(out, tuple) else (out,)
    ref = fn(*args)
    ref = ref if isinstance(ref, tuple) else (ref,)
    for a, b in zip(ours, ref, strict=True):
        assert rel(a, b) < 1e-5
    gen = torch.Generator().manual_seed(1)
    proj = [torch.randn(o.shape, generator=gen) for o in ours]
    g1 = torch.autograd.grad(sum((o * p).sum() for o, p in zip(ours, proj)), args, allow_unused=True)
    g2 = torch.autograd.grad(sum((o * p).sum() for o, p in zip(ref, proj)), args, allow_unused=True)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        assert a is None or rel(a, b) < 1e-5


def test_rwkv6_loop_per_sequence():
    args = _inputs()
    out, fams = _run(rwkv6_per_sequence, args)
    assert fams == ["rwkv6"] * B  # one op call per sequence's loop
    assert not fla_compile.last_report().misses  # the outer loop, which carries no state, is no miss
    _check_eager(rwkv6_per_sequence, args, out)


def test_rwkv6_one_sequence_without_batch_dim():
    args = [x[0].detach().requires_grad_() for x in _inputs(1)[:4]] + [_inputs(1)[4]]
    out, fams = _run(rwkv6_one_sequence, args)
    assert fams == ["rwkv6"]
    _check_eager(rwkv6_one_sequence, args, out)


def test_near_miss_reads_the_updated_state():
    args = _inputs(3)
    out, fams = _run(near_miss_reads_updated_state, args)
    assert "rwkv6" not in fams
    _check_eager(near_miss_reads_updated_state, args, out)

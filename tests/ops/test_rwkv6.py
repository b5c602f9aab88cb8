"""The rwkv6 op on the torch chunked path: against the reference loop (fp64), gradients (du and dh0
included), GQA, packed sequences, strong decays, clear errors, and torch.library contracts."""

import pytest
import torch
import torch.nn.functional as F

from fla_compile import ops
from fla_compile.reference.rwkv6 import rwkv6 as ref
from tests.compare import rel


def make(B=2, T=37, HK=1, H=2, K=5, V=6, dtype=torch.float64, strength=1.0, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed * 7919 + T * 101 + H)
    r, k = (torch.randn(B, T, HK, K, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    w = F.logsigmoid(torch.randn(B, T, H, K, generator=g, dtype=dtype)) * strength
    u = torch.randn(H, K, generator=g, dtype=dtype)
    h0 = torch.randn(B, H, K, V, generator=g, dtype=dtype)
    xs = [r, k, v, w, u, h0]
    return [x.requires_grad_() for x in xs] if grad else xs


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("T", [1, 37, 130])
def test_matches_reference(dtype, tol, T):
    r, k, v, w, u, h0 = make(T=T, dtype=dtype)
    o, ht = ops.rwkv6(r, k, v, w, u, scale=0.4, initial_state=h0, output_final_state=True)
    o_ref, ht_ref = ref(*(x.double() for x in (r, k, v, w, u)), 0.4, h0.double(), True)
    assert o.dtype == v.dtype and rel(o, o_ref) < tol and rel(ht, ht_ref) < tol


def test_reads_the_previous_state():
    """The bonus is what tells rwkv6 from gla: with u = 1 its output is gla's minus the decay of the step."""
    r, k, v, w, u, h0 = make(T=1)
    o, _ = ops.rwkv6(r, k, v, w, torch.ones_like(u), initial_state=h0)
    o_gla, _ = ops.gla(r, k, v, torch.zeros_like(w), initial_state=h0)  # no decay: S_0 + k v^T
    assert rel(o, o_gla) < 1e-12


@pytest.mark.parametrize("strength", [20.0, 60.0])
def test_strong_decays_do_not_overflow(strength):
    """Strong decays in fp32: the exclusive cumsum is a shift of the inclusive one, never b - w, so the
    nearest (and largest) term's exponent is exactly 0 (b - w would leave eps |b| in it)."""
    r, k, v, w, u, _ = make(T=200, dtype=torch.float32, strength=strength)
    o, ht = ops.rwkv6(r, k, v, w, u, output_final_state=True)
    o_ref, ht_ref = ref(*(x.double() for x in (r, k, v, w, u)), None, None, True)
    assert torch.isfinite(o).all() and rel(o, o_ref) < 2e-6 and rel(ht, ht_ref) < 2e-6


def test_gradients():
    r, k, v, w, u, h0 = make(B=1, T=6, HK=1, H=2, K=3, V=2, grad=True)
    fn = lambda *xs: ops.rwkv6(*xs[:5], initial_state=xs[5], output_final_state=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (r, k, v, w, u, h0))


def test_packed_sequences_equal_separate_calls():
    r, k, v, w, u, h0 = make(B=1, T=40, dtype=torch.float32)
    cu = torch.tensor([0, 7, 7, 29, 40])
    h0 = torch.randn(4, *h0.shape[1:])
    o, ht = ops.rwkv6(r, k, v, w, u, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    for n, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        if s == e:
            assert torch.equal(ht[n], h0[n])
            continue
        o_n, ht_n = ops.rwkv6(
            r[:, s:e], k[:, s:e], v[:, s:e], w[:, s:e], u, initial_state=h0[n : n + 1], output_final_state=True
        )
        assert rel(o[:, s:e], o_n) < 1e-5 and rel(ht[n : n + 1], ht_n) < 1e-5


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(u=torch.randn(2, 3)), r"u must have shape \[H, K\]"),
        (dict(u=torch.randn(2, 4).int()), "u must be float32"),
        (dict(u=[1.0]), "u must be a tensor"),
        (dict(w=torch.randn(2, 8, 2)), "w must have shape"),
        (dict(r=torch.randn(2, 8, 2, 4)), "q and k must have the same shape"),
    ],
)
def test_clear_errors(bad, match):
    args = dict(
        r=torch.randn(2, 8, 1, 4),
        k=torch.randn(2, 8, 1, 4),
        v=torch.randn(2, 8, 2, 4),
        w=torch.randn(2, 8, 2, 4),
        u=torch.randn(2, 4),
    )
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        ops.rwkv6(**args)


def test_library_contracts_and_fullgraph_compile():
    r, k, v, w, u, h0 = make(B=1, T=9, K=3, V=2, grad=True)
    torch.library.opcheck(torch.ops.fla_compile.rwkv6.default, (r, k, v, w, u, 0.5, h0, None))
    fn = torch.compile(lambda *xs: ops.rwkv6(*xs)[0].sum(), backend="aot_eager", fullgraph=True)
    fn(r, k, v, w, u).backward()
    leaves = [x.detach().requires_grad_() for x in (r, k, v, w, u)]
    ref(*leaves)[0].sum().backward()
    for x, lf in zip((r, k, v, w, u), leaves):
        assert rel(x.grad, lf.grad) < 1e-10

"""The GLA-line ops on the torch chunked path: against the reference loops, gradients,
GQA, states, packed sequences, clear errors, and torch.library contracts."""

import pytest
import torch
import torch.nn.functional as F

from fla_compile import ops
from fla_compile.reference import gla as ref
from tests.compare import rel

FAMILIES = ["linear_attn", "retention", "simple_gla", "gla"]


def make(family, B=2, T=37, HK=1, H=2, K=5, V=6, dtype=torch.float64, strength=1.0, grad=False):
    seed = FAMILIES.index(family) * 10007 + T * 101 + H  # deterministic (hash() of strings is salted per process)
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, HK, K, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    gate = {
        "linear_attn": None,
        "retention": torch.tensor([-0.05, -0.3][:H] + [-0.1] * max(0, H - 2), dtype=dtype),
        "simple_gla": F.logsigmoid(torch.randn(B, T, H, generator=g, dtype=dtype)) * strength,
        "gla": F.logsigmoid(torch.randn(B, T, H, K, generator=g, dtype=dtype)) * strength,
    }[family]
    h0 = torch.randn(B, H, K, V, generator=g, dtype=dtype)
    xs = [q, k, v, gate, h0]
    if grad:
        xs = [x.requires_grad_() if x is not None else None for x in xs]
    return xs


def call_op(family, q, k, v, gate, **kw):
    fn = getattr(ops, family)
    return fn(q, k, v, **kw) if gate is None else fn(q, k, v, gate, **kw)


def call_ref(family, q, k, v, gate, **kw):
    if family == "linear_attn":
        return ref.linear_attn(q, k, v, **kw)
    if family == "retention":
        return ref.retention(q, k, v, gate, **kw)
    return getattr(ref, family)(q, k, v, gate, **kw)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("T", [1, 37, 130])
def test_matches_reference(family, dtype, tol, T):
    q, k, v, gate, h0 = make(family, T=T, dtype=dtype)
    o, ht = call_op(family, q, k, v, gate, scale=0.4, initial_state=h0, output_final_state=True)
    o_ref, ht_ref = call_ref(
        family,
        *(x.double() if x is not None else None for x in (q, k, v, gate)),
        scale=0.4,
        initial_state=h0.double(),
        output_final_state=True,
    )
    assert o.dtype == v.dtype and rel(o, o_ref) < tol and rel(ht, ht_ref) < tol


@pytest.mark.parametrize("family", ["simple_gla", "gla"])
def test_strong_gates_do_not_overflow(family):
    q, k, v, gate, _ = make(family, T=200, dtype=torch.float32)
    gate = -20 * torch.rand_like(gate)
    o, ht = call_op(family, q, k, v, gate, output_final_state=True)
    o_ref, ht_ref = call_ref(family, q.double(), k.double(), v.double(), gate.double(), output_final_state=True)
    assert torch.isfinite(o).all() and rel(o, o_ref) < 1e-5 and rel(ht, ht_ref) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients(family):
    xs = make(family, B=1, T=9, HK=1, H=2, K=3, V=2, grad=True)
    q, k, v, gate, h0 = xs
    if gate is None:
        fn = lambda q, k, v, h0: call_op(family, q, k, v, None, initial_state=h0, output_final_state=True)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (q, k, v, h0))
    else:
        fn = lambda q, k, v, g, h0: call_op(family, q, k, v, g, initial_state=h0, output_final_state=True)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (q, k, v, gate, h0))


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_sequences_equal_separate_calls(family):
    q, k, v, gate, h0 = make(family, B=1, T=40, dtype=torch.float32)
    cu = torch.tensor([0, 7, 29, 40])
    h0 = torch.randn(3, *h0.shape[1:])
    o, ht = call_op(family, q, k, v, gate, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    for n, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        g = gate if gate is None or family == "retention" else gate[:, s:e]
        o_n, ht_n = call_op(
            family, q[:, s:e], k[:, s:e], v[:, s:e], g, initial_state=h0[n : n + 1], output_final_state=True
        )
        assert rel(o[:, s:e], o_n) < 1e-5 and rel(ht[n : n + 1], ht_n) < 1e-5


def test_final_state_only_when_asked():
    q, k, v, gate, _ = make("gla")
    assert ops.gla(q, k, v, gate)[1] is None


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(q=torch.randn(2, 8, 2, 4)), "q and k must have the same shape"),
        (dict(q=torch.randn(2, 8, 2, 4), k=torch.randn(2, 8, 2, 4), v=torch.randn(2, 8, 3, 4)), "not a multiple"),
        (dict(gk=torch.randn(2, 8, 2)), "gk must have shape"),
        (dict(initial_state=torch.randn(2, 2, 4, 5)), "initial_state must be"),
        (dict(q=torch.randn(2, 8, 1, 4).int()), "float32, bfloat16"),
        (dict(cu_seqlens=torch.tensor([0, 8])), "batch size 1"),
    ],
)
def test_clear_errors(bad, match):
    args = dict(
        q=torch.randn(2, 8, 1, 4), k=torch.randn(2, 8, 1, 4), v=torch.randn(2, 8, 2, 4), gk=torch.randn(2, 8, 2, 4)
    )
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        ops.gla(**args)


def test_library_contracts_and_fullgraph_compile():
    q, k, v, gate, h0 = make("gla", B=1, T=9, K=3, V=2, grad=True)
    torch.library.opcheck(torch.ops.fla_compile.gla.default, (q, k, v, gate, 0.5, h0, None))
    fn = torch.compile(lambda q, k, v, g: ops.gla(q, k, v, g)[0].sum(), backend="aot_eager", fullgraph=True)
    fn(q, k, v, gate).backward()
    leaves = [x.detach().requires_grad_() for x in (q, k, v, gate)]
    ref.gla(*leaves[:3], gk=leaves[3])[0].sum().backward()
    for x, r in zip((q, k, v, gate), leaves):
        assert rel(x.grad, r.grad) < 1e-10


@pytest.mark.parametrize("family", ["retention", "simple_gla"])
def test_a_constant_gate_takes_no_gradient(family):
    """A gate that takes no gradient (RetNet's and Lightning's fixed decays) is skipped by the backward op
    (``gate_grads``): the gate's grad stays None, the other gradients equal the run that forms it, and the op's
    contracts (fake impl, autograd registration) hold either way, eager and under torch.compile."""
    q, k, v, gate, h0 = make(family, B=1, T=9, K=3, V=2, grad=True)
    fixed = gate.detach()
    call_op(family, q, k, v, fixed, initial_state=h0)[0].sum().backward()
    assert fixed.grad is None
    got = [x.grad for x in (q, k, v, h0)]
    leaves = [x.detach().requires_grad_() for x in (q, k, v, gate, h0)]
    call_op(family, *leaves[:4], initial_state=leaves[4])[0].sum().backward()
    assert leaves[3].grad is not None
    for a, b in zip(got, [leaves[i].grad for i in (0, 1, 2, 4)]):
        assert torch.equal(a, b)
    op = getattr(torch.ops.fla_compile, family).default
    for g in (fixed, gate):
        torch.library.opcheck(op, (q, k, v, g, 0.5, h0, None))
    fn = torch.compile(lambda q, k, v, g: call_op(family, q, k, v, g)[0].sum(), backend="aot_eager", fullgraph=True)
    for x in (q, k, v):
        x.grad = None
    fn(q, k, v, fixed).backward()
    assert fixed.grad is None and all(x.grad is not None for x in (q, k, v))

"""The hgrn op (elementwise scan) on its torch path: against the reference loop, fp64 gradcheck,
states, packed sequences, strong and -inf gates, clear errors, and torch.library contracts."""

import re

import pytest
import torch
import torch.nn.functional as F

from fla_compile import ops
from fla_compile.reference.hgrn import hgrn as ref
from tests.compare import rel


def make(B=2, T=37, D=6, dtype=torch.float64, strength=1.0, seed=0, grad=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=gen, dtype=dtype)
    g = F.logsigmoid(torch.randn(B, T, D, generator=gen, dtype=dtype)) * strength
    h0 = torch.randn(B, D, generator=gen, dtype=dtype)
    return [t.requires_grad_(grad) for t in (x, g, h0)]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_reference(dtype, tol, with_state):
    x, g, h0 = make(dtype=dtype)
    h0 = h0 if with_state else None
    o, ht = ops.hgrn(x, g, h0, output_final_state=True)
    ro, rh = ref(x.double(), g.double(), None if h0 is None else h0.double(), output_final_state=True)
    assert o.dtype == dtype and ht.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rel(o, ro) < tol and rel(ht, rh) < tol


def test_gradcheck_fp64():
    x, g, h0 = make(B=2, T=9, D=3, grad=True)
    assert torch.autograd.gradcheck(lambda *a: ops.hgrn(*a, output_final_state=True), (x, g, h0))
    assert torch.autograd.gradcheck(lambda x, g: ops.hgrn(x, g)[0], (x, g))


def test_gradcheck_packed():
    x, g, _ = make(B=1, T=14, D=3, grad=True)
    h0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 3, 3, 10, 14])
    assert torch.autograd.gradcheck(lambda *a: ops.hgrn(*a, output_final_state=True, cu_seqlens=cu), (x, g, h0))


def test_packed_equals_separate_calls():
    x, g, _ = make(B=1, T=30, D=4)
    h0 = torch.randn(4, 4, dtype=torch.float64)
    cu = torch.tensor([0, 7, 7, 20, 30])
    o, ht = ops.hgrn(x, g, h0, output_final_state=True, cu_seqlens=cu)
    for n in range(4):
        a, b = cu[n].item(), cu[n + 1].item()
        ro, rh = ref(x[:, a:b], g[:, a:b], h0[n : n + 1], output_final_state=True)
        torch.testing.assert_close(o[:, a:b], ro)
        torch.testing.assert_close(ht[n : n + 1], rh)


def test_strong_and_reset_gates_are_stable():
    """Gates of -20 per step (and -60) underflow the decay to 0 without NaN; -inf is a reset."""
    x, g, h0 = make(dtype=torch.float32, strength=20.0)
    g = g.detach().clone()
    g[:, 5] = -float("inf")
    g[:, 9] = -60.0
    o, ht = ops.hgrn(x, g, h0, output_final_state=True)
    ro, rh = ref(x.double(), g.double(), h0.double(), output_final_state=True)
    assert torch.isfinite(o).all() and rel(o, ro) < 1e-6 and rel(ht, rh) < 1e-6
    xs, gs, h0s = (t.detach().double().requires_grad_() for t in (x, g, h0))
    (ops.hgrn(xs, gs, h0s)[0] * torch.randn_like(xs)).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (xs, gs, h0s))
    assert (gs.grad[:, 5] == 0).all()  # d/dg of exp(g) h at g = -inf


def test_backward_matches_reference_autograd():
    x, g, h0 = make(grad=True)
    o, ht = ops.hgrn(x, g, h0, output_final_state=True)
    do, dht = torch.randn_like(o), torch.randn_like(ht)
    got = torch.autograd.grad((o, ht), (x, g, h0), (do, dht))
    ro, rh = ref(x, g, h0, output_final_state=True)
    want = torch.autograd.grad((ro, rh), (x, g, h0), (do, dht))
    for a, b in zip(got, want):
        assert rel(a, b) < 1e-12


@pytest.mark.parametrize("with_state", [False, True])
def test_empty_sequence(with_state):
    x, g, h0 = make(T=0)
    o, ht = ops.hgrn(x, g, h0 if with_state else None, output_final_state=True)
    assert o.shape == x.shape
    torch.testing.assert_close(ht, h0 if with_state else torch.zeros_like(h0))


def test_bf16_inputs_fp32_gate():
    x, g, h0 = make(dtype=torch.float32)
    o, ht = ops.hgrn(x.bfloat16(), g, h0, output_final_state=True)
    ro, rh = ref(x.bfloat16().double(), g.double(), h0.double(), output_final_state=True)
    assert o.dtype == torch.bfloat16 and ht.dtype == torch.float32
    assert rel(o, ro) < 1e-2 and rel(ht, rh) < 1e-5


def test_opcheck():
    x, g, h0 = make(B=2, T=5, D=3, grad=True)
    torch.library.opcheck(torch.ops.fla_compile.hgrn.default, (x, g, h0, None))
    torch.library.opcheck(torch.ops.fla_compile.hgrn.default, (x[:1], g[:1], None, torch.tensor([0, 2, 5])))


def test_compiled_fullgraph():
    x, g, h0 = make(dtype=torch.float32, grad=True)
    fn = torch.compile(lambda x, g, h0: ops.hgrn(x, g, h0, output_final_state=True), fullgraph=True, backend="eager")
    o, ht = fn(x, g, h0)
    ro, rh = ops.hgrn(x, g, h0, output_final_state=True)
    torch.testing.assert_close(o, ro)
    torch.testing.assert_close(ht, rh)


@pytest.mark.parametrize(
    "args,msg",
    [
        (lambda x, g, h0: (x[0], g[0]), "x must be [B, T, D]"),
        (lambda x, g, h0: (x, g[:, :3]), "g must have x's shape"),
        (lambda x, g, h0: (x, g.half()), "g is float16 but x is float64"),
        (lambda x, g, h0: (x, g, h0[:1]), "initial_state must be [N, D]"),
        (lambda x, g, h0: (x.long(), g), "x must be float32"),
    ],
)
def test_bad_input(args, msg):
    x, g, h0 = make()
    with pytest.raises(ValueError, match=r"fla_compile\.hgrn: " + re.escape(msg)):
        ops.hgrn(*args(x, g, h0))


def test_bad_cu_seqlens():
    x, g, _ = make(B=1, T=10)
    with pytest.raises(ValueError, match="cu_seqlens must end at T = 10"):
        ops.hgrn(x, g, cu_seqlens=torch.tensor([0, 4, 9]))

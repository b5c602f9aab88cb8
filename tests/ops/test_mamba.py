"""The mamba op (Mamba's selective scan) on its torch path: against the reference loop, fp64 gradcheck,
states, packed sequences, the public wrapper's dt bias / softplus / D / z, clear errors, torch.library."""

import pytest
import torch
import torch.nn.functional as F

from fla_compile import ops
from fla_compile.reference.mamba import selective_scan as ref
from tests.compare import rel


def make(B=2, T=11, D=5, N=3, dtype=torch.float64, seed=0, grad=False, strength=2.0):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(B, T, D, generator=gen, dtype=dtype)
    dt = F.softplus(torch.randn(B, T, D, generator=gen, dtype=dtype))
    A = -torch.rand(D, N, generator=gen, dtype=dtype) * strength
    Bm, C = (torch.randn(B, T, N, generator=gen, dtype=dtype) for _ in range(2))
    h0 = torch.randn(B, D, N, generator=gen, dtype=dtype)
    return [x.requires_grad_(grad) for x in (u, dt, A, Bm, C, h0)]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_matches_reference(dtype, tol):
    *xs, h0 = make(dtype=dtype)
    y, ht = torch.ops.fla_compile.mamba(*xs, h0, None)
    ry, rh = ref(*(x.double() for x in xs), h0.double(), output_final_state=True)
    assert y.dtype == dtype and rel(y, ry) < tol and rel(ht, rh) < tol


def test_gradcheck_fp64():
    xs = make(T=6, D=3, N=2, grad=True)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.fla_compile.mamba(*a, None), xs)


def test_gradcheck_packed():
    u, dt, A, Bm, C, _ = make(B=1, T=9, D=3, N=2, grad=True)
    h0 = torch.randn(3, 3, 2, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 4, 4, 9])
    assert torch.autograd.gradcheck(lambda *a: torch.ops.fla_compile.mamba(*a, cu), (u, dt, A, Bm, C, h0))


def test_strong_decay_is_stable():
    """dt A down to -40 per step (and a decay of exactly 0): no NaN, equal to the loop."""
    *xs, h0 = make(dtype=torch.float32, strength=40.0)
    xs[1] = xs[1] + 1.0
    y, ht = torch.ops.fla_compile.mamba(*xs, h0, None)
    ry, rh = ref(*(x.double() for x in xs), h0.double(), output_final_state=True)
    assert torch.isfinite(y).all() and rel(y, ry) < 1e-5 and rel(ht, rh) < 1e-5


def test_public_wrapper_bias_softplus_skip_gate():
    """``ops.mamba``: softplus(dt + bias), the scan of dt x, plus D x, times silu(z), as mamba_ssm's reference."""
    x, dt, A, Bm, C, h0 = make(grad=True)
    gen = torch.Generator().manual_seed(3)
    D, bias = torch.randn(5, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen, dtype=torch.float64)
    z = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    y, ht = ops.mamba(x, dt, A, Bm, C, D=D, z=z, dt_bias=bias, dt_softplus=True, initial_state=h0,
                      output_final_state=True)  # fmt: skip
    d = F.softplus(dt + bias)
    ry, rh = ref(d * x, d, A, Bm, C, h0, output_final_state=True)
    ry = (ry + x * D) * F.silu(z)
    assert rel(y, ry) < 1e-12 and rel(ht, rh) < 1e-12
    got = torch.autograd.grad(y.sum() + ht.sum(), (x, dt, A, Bm, C, h0))
    want = torch.autograd.grad(ry.sum() + rh.sum(), (x, dt, A, Bm, C, h0))
    assert all(rel(a, b) < 1e-10 for a, b in zip(got, want))


def test_empty_sequence():
    *xs, h0 = make(T=0)
    y, ht = torch.ops.fla_compile.mamba(*xs, h0, None)
    assert y.shape == xs[0].shape and torch.equal(ht, h0)


def test_opcheck():
    xs = make(T=4, D=3, N=2, grad=True)
    torch.library.opcheck(torch.ops.fla_compile.mamba.default, (*xs, None))


@pytest.mark.parametrize(
    "change,msg",
    [
        (lambda a: a.update(A=a["A"][:, None]), "A must be [D, N]"),
        (lambda a: a.update(B=a["B"][:, :3]), "B must be [B, T, N]"),
        (lambda a: a.update(dt=a["dt"][:, :2]), "dt must have x's shape"),
        (
            lambda a: a.update(initial_state=a["initial_state"][:1]),
            "initial_state must be a float tensor [N_seq, D, N]",
        ),
    ],
)
def test_bad_input(change, msg):
    x, dt, A, Bm, C, h0 = make()
    args = dict(x=x, dt=dt, A=A, B=Bm, C=C, initial_state=h0)
    change(args)
    with pytest.raises(ValueError, match=r"fla_compile\.mamba: " + msg.replace("[", r"\[")):
        ops.mamba(**args)

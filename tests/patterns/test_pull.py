"""Time-local producers of a loop's per-step inputs pulled into the step (``patterns/pull.py``): Mamba's reference
scan, discretized before the loop, runs as the mamba op; a producer that mixes steps is never pulled."""

import pytest
import torch
import torch.nn.functional as F

import fla_compile

B, D, N, T = 2, 4, 3, 6


def scan_ref_bdl(u, delta, A, Bm, Cm):
    """mamba_ssm's selective_scan_ref: [B, D, L], deltaA / deltaB_u for the whole sequence, ys stacked."""
    delta = F.softplus(delta)
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    dBu = torch.einsum("bdl,bnl,bdl->bdln", delta, Bm, u)
    x = A.new_zeros(u.shape[0], A.shape[0], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = dA[:, :, i] * x + dBu[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, Cm[:, :, i]))
    return torch.stack(ys, dim=2), x


def scan_minimal_bld(u, delta, A, Bm, Cm):
    """mamba-minimal: [B, L, D], the discretization by broadcasts before the loop."""
    u, delta, Bm, Cm = (t.transpose(1, 2) for t in (u, delta, Bm, Cm))
    dA = torch.exp(delta[..., None] * A)
    dBu = torch.einsum("bld,bln,bld->bldn", delta, Bm, u)
    x = torch.zeros(u.shape[0], u.shape[2], A.shape[1])
    ys = []
    for i in range(u.shape[1]):
        x = dA[:, i] * x + dBu[:, i]
        ys.append(torch.einsum("bdn,bn->bd", x, Cm[:, i, :]))
    return torch.stack(ys, dim=1)


def miss_input_cumsum(u, delta, A, Bm, Cm):
    """The input summed over time before the loop (a cumsum mixes steps): never pulled; still a scan (hgrn)."""
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    dBu = torch.einsum("bdl,bnl,bdl->bdln", delta, Bm, u).cumsum(2)
    x = A.new_zeros(u.shape[0], A.shape[0], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = dA[:, :, i] * x + dBu[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, Cm[:, :, i]))
    return torch.stack(ys, dim=2)


def decay_from_cumsum(u, delta, A, Bm, Cm):
    """The decay's step size a running sum of delta: the cumsum stays before the loop (read per step), the
    product and exp after it are pulled; exp(dt_t A) with dt_t = 0.1 cumsum_t is still Mamba's decay."""
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta.cumsum(-1) * 0.1, A))
    dBu = torch.einsum("bdl,bnl,bdl->bdln", delta, Bm, u)
    x = A.new_zeros(u.shape[0], A.shape[0], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = dA[:, :, i] * x + dBu[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, Cm[:, :, i]))
    return torch.stack(ys, dim=2)


def _inputs(requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(B, D, T, generator=gen)
    delta = torch.rand(B, D, T, generator=gen) * 0.5
    A = -torch.rand(D, N, generator=gen) - 0.5
    Bm, Cm = torch.randn(B, N, T, generator=gen), torch.randn(B, N, T, generator=gen)
    return [x.requires_grad_(requires_grad) for x in (u, delta, A, Bm, Cm)]


def _run(fn, args):
    torch._dynamo.reset()
    out = torch.compile(fn, backend="fla", options={"inductor": False, "costs": False})(*args)
    return out, fla_compile.last_report()


def _flat(x):
    return list(x) if isinstance(x, tuple) else [x]


@pytest.mark.parametrize(
    "fn, family",
    [(scan_ref_bdl, "mamba"), (scan_minimal_bld, "mamba"), (miss_input_cumsum, "hgrn"), (decay_from_cumsum, "mamba")],
)
def test_pulled_producers(fn, family):
    args = _inputs(requires_grad=True)
    out, report = _run(fn, args)
    assert [m.family for m in report.matches] == [family], report
    ref = fn(*args)
    for o, r in zip(_flat(out), _flat(ref)):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)
    w = [torch.randn_like(r) for r in _flat(ref)]
    go = torch.autograd.grad(sum((o * p).sum() for o, p in zip(_flat(out), w)), args)
    gr = torch.autograd.grad(sum((r * p).sum() for r, p in zip(_flat(ref), w)), args)
    for a, b in zip(go, gr):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

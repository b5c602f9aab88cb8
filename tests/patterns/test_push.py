"""A read-out after the loop pushed into the steps (``patterns/push.py``): mamba.py's sequential scan stacks every
state and reads them out after the loop; with the read-out pushed into the step it is the mamba op. Where the
read-out is not time-local, or the scan is not Mamba's, the code stays as written around an hgrn scan; outputs and
gradients equal eager in float64 either way."""

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from tests.compare import rel

B, L, D, N = 2, 8, 6, 4


@pytest.fixture(autouse=True)
def _reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _states(x, delta, A, Bm, decay=None):
    """mamba.py's sequential scan (inlined by Dynamo into each spelling below): every state, in a list."""
    deltaA = torch.exp(delta.unsqueeze(-1) * A) if decay is None else decay
    BX = delta.unsqueeze(-1) * Bm.unsqueeze(2) * x.unsqueeze(-1)
    h = torch.zeros(x.size(0), x.size(2), A.size(-1))
    hs = []
    for t in range(x.shape[1]):
        h = deltaA[:, t] * h + BX[:, t]
        hs.append(h)
    return hs


def mambapy_seq(x, delta, A, Bm, Cm, Dp):
    """mamba.py's ``selective_scan_seq``: every state stacked, read out by one matmul after the loop."""
    hs = torch.stack(_states(x, delta, A, Bm), dim=1)
    y = (hs @ Cm.unsqueeze(-1)).squeeze(3)
    return y + Dp * x


def states_einsum(x, delta, A, Bm, Cm, Dp):
    """The stacked states read out by an einsum, C first, time last in the result."""
    return torch.einsum("bln,bldn->bdl", Cm, torch.stack(_states(x, delta, A, Bm), dim=1))


def nm_einsum_sums_time(x, delta, A, Bm, Cm, Dp):
    """An einsum that sums the read-out over time: not time-local, left as written after an hgrn scan."""
    return torch.einsum("bldn,bln->bd", torch.stack(_states(x, delta, A, Bm), dim=1), Cm)


def nm_readout_constant_over_time(x, delta, A, Bm, Cm, Dp):
    """The states read out by one matrix for every step: not Mamba's C_t; the scan runs as hgrn, the read-out as
    written."""
    return (torch.stack(_states(x, delta, A, Bm), dim=1) @ Cm[0, 0].unsqueeze(-1)).squeeze(3)


def nm_decay_not_exp_dt_a(x, delta, A, Bm, Cm, Dp):
    """A decay that is no exp(dt A) (a sigmoid of dt alone): the read-out is pushed in, the mamba op is not proven,
    and the push is undone: an hgrn scan with the read-out as written."""
    decay = torch.sigmoid(delta).unsqueeze(-1).expand(-1, -1, -1, A.size(-1))
    return (torch.stack(_states(x, delta, A, Bm, decay), dim=1) @ Cm.unsqueeze(-1)).squeeze(3)


def _inputs():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, L, D, generator=gen)
    delta = F.softplus(torch.randn(B, L, D, generator=gen))
    A = -torch.rand(D, N, generator=gen) - 0.1
    Bm, Cm = torch.randn(B, L, N, generator=gen), torch.randn(B, L, N, generator=gen)
    Dp = torch.randn(D, generator=gen)
    return [a.requires_grad_() for a in (x, delta, A, Bm, Cm, Dp)]


def _exact(fn, args, out):
    xs = [a.detach().double().requires_grad_() for a in args]
    ref = fn(*xs)
    assert rel(out, ref) < 1e-5
    proj = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out * proj).sum(), args, allow_unused=True)
    ref_grads = torch.autograd.grad((ref * proj.double()).sum(), xs, allow_unused=True)
    for g, r in zip(grads, ref_grads):
        if r is not None:
            assert g is not None and rel(g, r) < 1e-5


@pytest.mark.parametrize(
    "fn,families",
    [
        (mambapy_seq, ["mamba"]),
        (states_einsum, ["mamba"]),
        (nm_einsum_sums_time, ["hgrn"]),
        (nm_readout_constant_over_time, ["hgrn"]),
        (nm_decay_not_exp_dt_a, ["hgrn"]),
    ],
    ids=["mambapy_seq", "states_einsum", "einsum_sums_time", "readout_constant_over_time", "decay_not_exp_dt_a"],
)
def test_readout_after_the_loop(fn, families):
    args = _inputs()
    out = torch.compile(fn, backend="fla", options={"inductor": False})(*args)
    assert [m.family for m in fla_compile.last_report().matches] == families, str(fla_compile.last_report())
    _exact(fn, args, out)

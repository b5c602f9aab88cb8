"""The elementwise scan written in log space (``patterns/log_scan.py``: Heinsen's parallel scan, minGRU's parallel
mode): the spellings recognized as hgrn and equal to eager in float64 (outputs and gradients), near misses left as
written, and the op's own edges (a padded gate, broadcast roles, channels-first time)."""

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from tests.compare import rel

B, T, D = 2, 11, 6


@pytest.fixture(autouse=True)
def _reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ---------------------------------------------------------------- spellings
def heinsen(log_a, log_b):
    """h_t = a_t h_{t-1} + b_t by one cumsum and one logcumsumexp over time."""
    a_star = log_a.cumsum(dim=1)
    log_h = a_star + torch.logcumsumexp(log_b - a_star, dim=1)
    return log_h.exp()


def _log_g(x):
    return torch.where(x >= 0, (F.relu(x) + 0.5).log(), -F.softplus(-x))


def mingru_parallel(k, h_tilde, h0):
    """minGRU's parallel mode as its paper writes it: the initial state as the first log value, the cumsum padded by
    one zero in front, the first output dropped."""
    log_z = -F.softplus(-k)
    log_coeffs = -F.softplus(k)
    log_values = torch.cat([_log_g(h0).unsqueeze(1), log_z + _log_g(h_tilde)], dim=1)
    a_star = F.pad(torch.cumsum(log_coeffs, dim=1), (0, 0, 1, 0))
    log_h0_plus_b_star = torch.logcumsumexp(log_values - a_star, dim=1)
    log_h = a_star + log_h0_plus_b_star
    return torch.exp(log_h)[:, 1:]


def channels_first_heads(log_a, log_b):
    """[B, H, D, T] with time last, and a log-gate shared by the heads ([B, 1, D, T], broadcast)."""
    a_star = torch.cumsum(log_a, dim=-1)
    return torch.exp(torch.logcumsumexp(log_b - a_star, dim=-1) + a_star)


class MinGRU(torch.nn.Module):
    """A minGRU layer in parallel mode: projections, the log-space scan, an output projection."""

    def __init__(self, d):
        super().__init__()
        self.to_hidden_and_gate = torch.nn.Linear(d, 2 * d, bias=False)
        self.to_out = torch.nn.Linear(d, d, bias=False)

    def forward(self, x):
        hidden, gate = self.to_hidden_and_gate(x).chunk(2, dim=-1)
        log_coeffs = -F.softplus(gate)
        log_values = -F.softplus(-gate) + _log_g(hidden)
        a_star = log_coeffs.cumsum(dim=1)
        h = (a_star + torch.logcumsumexp(log_values - a_star, dim=1)).exp()
        return self.to_out(h)


# ---------------------------------------------------------------- near misses
def nm_plus_a_star(log_a, log_b):
    """log_b + a_star inside: not the scan (the decays grow)."""
    a_star = log_a.cumsum(dim=1)
    return (a_star + torch.logcumsumexp(log_b + a_star, dim=1)).exp()


def nm_cumsum_other_dim(log_a, log_b):
    """The decays summed over the channels, not time."""
    a_star = log_a.cumsum(dim=2)
    return (a_star + torch.logcumsumexp(log_b - a_star, dim=1)).exp()


def nm_log_h(log_a, log_b):
    """The scan kept in log space: log h, not h."""
    a_star = log_a.cumsum(dim=1)
    return a_star + torch.logcumsumexp(log_b - a_star, dim=1)


def nm_padded_at_the_end(log_a, log_b):
    """The cumsum padded after the last step, not before the first."""
    a_star = F.pad(torch.cumsum(log_a, dim=1), (0, 0, 0, 1))
    return (a_star + torch.logcumsumexp(log_b - a_star, dim=1)).exp()


def _inputs(*shapes, seed=0, grad=True):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen, dtype=torch.float64).float().requires_grad_(grad) for s in shapes]


def _compiled(fn, args):
    out = torch.compile(fn, backend="fla", options={"inductor": False})(*args)
    return out, fla_compile.last_report()


def _assert_exact(fn, args, out):
    """Outputs and the gradients of a random projection equal eager's in float64."""
    xs = [a.detach().double().requires_grad_(a.requires_grad) for a in args]
    ref = fn(*xs)
    assert rel(out, ref) < 1e-5
    proj = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    wrt = [a for a in args if a.requires_grad]
    grads = torch.autograd.grad((out * proj).sum(), wrt)
    ref_grads = torch.autograd.grad((ref * proj.double()).sum(), [x for x in xs if x.requires_grad])
    for g, rg in zip(grads, ref_grads):
        assert torch.isfinite(g).all() and rel(g, rg) < 1e-5


@pytest.mark.parametrize(
    "fn,shapes",
    [
        (heinsen, [(B, T, D), (B, T, D)]),
        (mingru_parallel, [(B, T, D), (B, T, D), (B, D)]),
        (channels_first_heads, [(B, 1, D, T), (B, 3, D, T)]),
    ],
    ids=["heinsen", "mingru_parallel", "channels_first_heads"],
)
def test_log_space_scan_is_hgrn_and_exact(fn, shapes):
    args = _inputs(*shapes)
    out, report = _compiled(fn, args)
    assert [(m.family, m.spelling) for m in report.matches] == [("hgrn", "logcumsumexp")], str(report)
    _assert_exact(fn, args, out)


def test_mingru_module():
    torch.manual_seed(0)
    model = MinGRU(D)
    x = torch.randn(B, T, D)
    out = torch.compile(model, backend="fla", options={"inductor": False})(x)
    assert [m.family for m in fla_compile.last_report().matches] == ["hgrn"]
    ref = model.double()(x.double())
    assert rel(out, ref) < 1e-5


@pytest.mark.parametrize(
    "fn,reason",
    [
        (nm_plus_a_star, None),
        (nm_cumsum_other_dim, None),
        (nm_log_h, "kept in log space"),
        (nm_padded_at_the_end, None),
    ],
    ids=["plus_a_star", "cumsum_other_dim", "log_h", "padded_at_the_end"],
)
def test_near_miss_is_left_as_written(fn, reason):
    args = _inputs((B, T, D), (B, T, D), grad=False)
    if fn is nm_padded_at_the_end:
        args[1] = torch.randn(B, T + 1, D)
    out, report = _compiled(fn, args)
    assert not report.matches, str(report)
    if reason:
        assert any(reason in m.reason for m in report.misses), str(report)
    assert rel(out, fn(*args)) < 1e-6


def test_long_sequence_stays_accurate():
    """At T = 4096 with decays near 1 the code's exp(a_star + ...) rounds |a_star| ~ 1e3 in float32; the op keeps
    the log decays as they are: at least as close to float64 as the code."""
    gen = torch.Generator().manual_seed(2)
    log_a = -torch.rand(1, 4096, 4, generator=gen) * 0.5
    log_b = torch.randn(1, 4096, 4, generator=gen) * 0.5
    out, report = _compiled(heinsen, [log_a, log_b])
    assert [m.family for m in report.matches] == ["hgrn"]
    ref = heinsen(log_a.double(), log_b.double())
    assert rel(out, ref) <= rel(heinsen(log_a, log_b), ref) + 1e-6

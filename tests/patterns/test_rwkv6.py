"""rwkv6 spellings of the loop: recognised as rwkv6 (the output reads S_{t-1} plus the bonus u) and
equal to eager, outputs and gradients; look-alikes (the bonus on the new state, a bonus that changes
over time, a bonus along the value axis) left untouched with a reason."""

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from tests.compare import rel

B, T, H, K, V = 2, 8, 2, 4, 5


def rwkv6_fla_naive(r, k, v, w, u):
    """flash-linear-attention's naive recurrent rwkv6 ([B, H, T, D], log-space w, u [H, K])."""
    h = r.new_zeros(r.shape[0], r.shape[1], r.shape[-1], v.shape[-1])
    o = torch.zeros_like(v)
    for i in range(r.shape[2]):
        q_i = r[:, :, i, :] * r.shape[-1] ** -0.5
        kv_i = k[:, :, i, :, None] * v[:, :, i, None, :]
        o[:, :, i] = ((h + u[None, ..., None] * kv_i) * q_i[..., None]).sum(-2)
        h = h * w[:, :, i].exp()[..., None] + kv_i
    return o, h


def rwkv6_time_mix(r, k, v, w, u):
    """RWKV-6's own time-mix step, one token at a time: a = k @ v, x = r @ (u * a + s), s = a + w * s,
    with the decay w = exp(-exp(x)) and ``time_first`` u as [H, K, 1]; [B, T, H, D] inputs."""
    s = r.new_zeros(r.shape[0], r.shape[2], r.shape[3], v.shape[3])
    tf = u[..., None]
    out = []
    for t in range(r.shape[1]):
        a = k[:, t, :, :, None] @ v[:, t, :, None, :]
        out.append((r[:, t, :, None, :] @ (tf * a + s))[:, :, 0])
        s = a + torch.exp(-torch.exp(w[:, t]))[..., None] * s
    return torch.stack(out, 1)


class TimeMix(torch.nn.Module):
    """An RWKV-6-like layer: projections, a data-dependent decay and the bonus ``time_first`` as parameters."""

    def __init__(self):
        super().__init__()
        self.r, self.k, self.v, self.w = (torch.nn.Linear(H * K, H * K, bias=False) for _ in range(4))
        self.v = torch.nn.Linear(H * K, H * V, bias=False)
        self.time_first = torch.nn.Parameter(torch.randn(H, K))
        self.time_decay = torch.nn.Parameter(torch.randn(H, K))

    def forward(self, x):
        b, t = x.shape[:2]
        r, k = self.r(x).view(b, t, H, K), self.k(x).view(b, t, H, K)
        v = self.v(x).view(b, t, H, V)
        w = -torch.exp(self.time_decay + torch.tanh(self.w(x)).view(b, t, H, K))  # log-space decay
        s = x.new_zeros(b, H, K, V)
        out = []
        for i in range(t):
            kv = k[:, i, :, :, None] * v[:, i, :, None, :]
            out.append(torch.einsum("bhk,bhkv->bhv", r[:, i], s + self.time_first[..., None] * kv))
            s = s * w[:, i].exp()[..., None] + kv
        return torch.stack(out, 1).reshape(b, t, H * V)


def miss_bonus_on_new_state(r, k, v, w, u):
    """The bonus added to the state after the update (S_t + diag(u) k v^T): not rwkv6."""
    s = r.new_zeros(r.shape[0], r.shape[2], r.shape[3], v.shape[3])
    out = []
    for t in range(r.shape[1]):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]
        s = s * w[:, t].exp()[..., None] + kv
        out.append(torch.einsum("bhk,bhkv->bhv", r[:, t], s + u[..., None] * kv))
    return torch.stack(out, 1)


def miss_bonus_changes_over_time(r, k, v, w, u):
    """A 'bonus' read from the sequence (one per step): rwkv6's u is one per head."""
    s = r.new_zeros(r.shape[0], r.shape[2], r.shape[3], v.shape[3])
    out = []
    for t in range(r.shape[1]):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", r[:, t], s + torch.sigmoid(w[:, t])[..., None] * kv))
        s = s * w[:, t].exp()[..., None] + kv
    return torch.stack(out, 1)


def miss_bonus_on_value_axis(r, k, v, w, u):
    """The bonus scales the value axis (u of shape [H, V]): not (q . (u k)) v."""
    s = r.new_zeros(r.shape[0], r.shape[2], r.shape[3], v.shape[3])
    uv = u[:, :1, None] * torch.linspace(0.5, 1.5, v.shape[3])
    out = []
    for t in range(r.shape[1]):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", r[:, t], s + uv[:, None, :] * kv))
        s = s * w[:, t].exp()[..., None] + kv
    return torch.stack(out, 1)


def inputs(bhtd=False, seed=0, grad=False):
    gen = torch.Generator().manual_seed(seed)
    r, k = (torch.randn(B, T, H, K, generator=gen) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen)
    w = F.logsigmoid(torch.randn(B, T, H, K, generator=gen))
    u = torch.randn(H, K, generator=gen)
    xs = [r, k, v, w, u]
    if bhtd:
        xs = [x.transpose(1, 2).contiguous() for x in xs[:4]] + [u]
    return [x.requires_grad_(grad) for x in xs]


@pytest.fixture(autouse=True)
def _reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _outputs(x):
    return x if isinstance(x, tuple) else (x,)


@pytest.mark.parametrize("fn,bhtd", [(rwkv6_fla_naive, True), (rwkv6_time_mix, False)], ids=["fla_naive", "time_mix"])
def test_loop_is_rwkv6(fn, bhtd):
    args = inputs(bhtd, grad=True)
    out = _outputs(torch.compile(fn, backend="fla", options={"inductor": False})(*args))
    report = fla_compile.last_report()
    assert [m.family for m in report.matches] == ["rwkv6"], str(report)
    ref = _outputs(fn(*args))
    proj = [torch.randn_like(o) for o in out]
    grads = torch.autograd.grad(sum((o * p).sum() for o, p in zip(out, proj)), args)
    ref_grads = torch.autograd.grad(sum((o * p).sum() for o, p in zip(ref, proj)), args)
    for a, b in zip((*out, *grads), (*ref, *ref_grads)):
        assert rel(a, b) < 1e-5


def test_module_is_rwkv6_under_jit():
    torch.manual_seed(0)
    layer = TimeMix()
    x = torch.randn(B, 24, H * K)
    ref = layer(x)
    fast = fla_compile.jit(layer)
    out = fast(x)
    assert [m.family for m in fla_compile.last_report().matches] == ["rwkv6"], str(fla_compile.last_report())
    assert rel(out, ref) < 1e-5
    out.square().sum().backward()
    g = layer.time_first.grad.clone()
    layer.zero_grad()
    ref.square().sum().backward()
    assert rel(g, layer.time_first.grad) < 1e-5


@pytest.mark.parametrize(
    "fn,reason",
    [
        (miss_bonus_on_new_state, "rwkv6's output reads S_{t-1}"),
        (miss_bonus_changes_over_time, "not rwkv6's bonus"),
        (miss_bonus_on_value_axis, "not rwkv6's bonus"),
    ],
)
def test_near_miss_is_left_untouched(fn, reason):
    args = inputs()
    ref = fn(*args)
    out = torch.compile(fn, backend="fla", options={"inductor": False})(*args)
    report = fla_compile.last_report()
    assert not report.matches, str(report)
    assert any(reason in m.reason for m in report.misses), str(report)
    assert rel(out, ref) < 1e-6

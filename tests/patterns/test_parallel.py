"""The ``parallel`` spelling: masked quadratic forms are rewritten to their family op, equal to
eager in outputs and gradients; look-alikes are left untouched with a reason."""

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from tests.compare import rel

B, T, H, D = 2, 16, 2, 8


def bhtd(*xs):
    return [x.transpose(1, 2) for x in xs]


def linear_einsum_masked_fill(q, k, v):
    """[B,T,H,D] einsum, scale on the scores, masked_fill of the upper triangle."""
    s = torch.einsum("bthd,bshd->bhts", q, k) * D**-0.5
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    return torch.einsum("bhts,bshd->bthd", s.masked_fill(mask, 0), v)


def linear_matmul_tril_scores(q, k, v):
    """[B,H,T,D] matmul, scale on q, torch.tril of the scores."""
    q, k, v = bhtd(q, k, v)
    return torch.tril((q * 0.5) @ k.transpose(-1, -2)) @ v


def linear_einsum_bhtd(q, k, v):
    """[B,H,T,D] einsum with a scale on q and the output left in [B,H,T,D]."""
    q, k, v = bhtd(q * 0.3, k, v)
    s = torch.einsum("bhtd,bhsd->bhts", q, k)
    return torch.einsum("bhts,bhsd->bhtd", s * torch.tril(torch.ones(T, T)), v)


def linear_bmm_ones_mask(q, k, v):
    """Heads folded into the batch, bmm, a tril(ones) mask multiplied in."""
    q, k, v = (x.transpose(1, 2).reshape(B * H, T, D) for x in (q, k, v))
    m = torch.tril(torch.ones(T, T))
    o = torch.bmm(torch.bmm(q, k.transpose(1, 2)) * m, v)
    return o.reshape(B, H, T, D).transpose(1, 2)


def retention_per_head(q, k, v):
    """RetNet: a gamma per head, decay matrix from arange/pow/masked_fill, torch.matmul."""
    q, k, v = bhtd(q, k, v)
    gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float32))
    i = torch.arange(T)
    decay = gamma[:, None, None] ** (i[:, None] - i[None, :]).float()
    decay = decay.masked_fill(i[:, None] < i[None, :], 0)
    return torch.matmul(torch.matmul(q, k.transpose(-1, -2)) * decay, v)


def retention_scalar_einsum(q, k, v):
    """One literal gamma, decay matrix by tril, einsum in [B,T,H,D]."""
    i = torch.arange(T, dtype=torch.float32)
    decay = torch.tril(0.9 ** (i[:, None] - i[None, :]))
    s = torch.einsum("bthd,bshd->bhts", q, k)
    return torch.einsum("bhts,bshd->bthd", s * decay, v)


def simple_gla_matmul(q, k, v, g):
    """SSD / Mamba2 style: exp(c_i - c_j) of a cumsum of log-gates [B,T,H], tril, matmul."""
    c = torch.cumsum(g, dim=1).transpose(1, 2)
    L = torch.exp(c[..., :, None] - c[..., None, :]).tril()
    q, k, v = bhtd(q, k, v)
    return ((q @ k.transpose(-1, -2)) * L * D**-0.5) @ v


def simple_gla_einsum_neg_inf(q, k, v, g):
    """Gates [B,H,T], the decay masked with -inf before exp, einsum in [B,T,H,D]."""
    c = torch.cumsum(g.transpose(1, 2), dim=-1)
    seg = (c[..., :, None] - c[..., None, :]).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -torch.inf)
    s = torch.einsum("bthd,bshd->bhts", q, k) * torch.exp(seg)
    return torch.einsum("bhts,bshd->bthd", s, v)


def segsum(x):
    """Mamba2's stable segment sum: exp(segsum(a))[t, s] = exp(a[s+1] + ... + a[t]) below the diagonal."""
    x = x[..., None].repeat(*([1] * x.dim()), T)
    x = x.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1), 0)
    x = torch.cumsum(x, dim=-2)
    return x.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), -torch.inf)


def simple_gla_mamba2_segsum(q, k, v, g):
    """Mamba2 / SSD minimal reference: the decay from segsum of the [B,H,T] log-gates."""
    L = torch.exp(segsum(g.transpose(1, 2)))
    s = torch.einsum("bthd,bshd->bhts", q, k) * L
    return torch.einsum("bhts,bshd->bthd", s, v)


def linear_two_layers(q, k, v):
    """Two forms in one graph, the second reading the first: both rewritten."""
    q, k, v = bhtd(q, k, v)
    a = torch.tril(q @ k.transpose(-1, -2)) @ v
    return (torch.tril(a @ k.transpose(-1, -2)) @ v).transpose(1, 2)


class RetNetDecayBuffer(torch.nn.Module):
    """torchscale-style: log-decays per head as a buffer, the decay matrix as exp(decay * (i - j))."""

    def __init__(self):
        super().__init__()
        self.register_buffer("decay", torch.log(1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float32))))

    def forward(self, q, k, v):
        q, k, v = bhtd(q, k, v)
        i = torch.arange(T)
        diff = (i[:, None] - i[None, :]).float().masked_fill(i[:, None] < i[None, :], float("inf"))
        mask = torch.nan_to_num(torch.exp(diff * self.decay[:, None, None]))
        return ((q @ k.transpose(-1, -2)) * D**-0.5 * mask) @ v


class LearnedGamma(torch.nn.Module):
    """A learnable gamma per head, gamma ** (i - j) with tril: the gamma is a role and gets a gradient."""

    def __init__(self):
        super().__init__()
        self.gamma = torch.nn.Parameter(torch.tensor([0.8, 0.95]))

    def forward(self, q, k, v):
        i = torch.arange(T, dtype=torch.float32)
        mask = torch.tril(self.gamma[:, None, None] ** (i[:, None] - i[None, :]).clamp(min=0))
        return torch.einsum("bhts,bshd->bthd", torch.einsum("bthd,bshd->bhts", q, k) * mask, v)


POSITIVE = [
    (linear_einsum_masked_fill, "linear_attn", False),
    (linear_matmul_tril_scores, "linear_attn", False),
    (linear_einsum_bhtd, "linear_attn", False),
    (linear_bmm_ones_mask, "linear_attn", False),
    (retention_per_head, "retention", False),
    (retention_scalar_einsum, "retention", False),
    (simple_gla_matmul, "simple_gla", True),
    (simple_gla_einsum_neg_inf, "simple_gla", True),
    (simple_gla_mamba2_segsum, "simple_gla", True),
    (RetNetDecayBuffer(), "retention", False),
    (LearnedGamma(), "retention", False),
]


def softmax_attention(q, k, v):
    q, k, v = bhtd(q, k, v)
    s = (q @ k.transpose(-1, -2)).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -torch.inf)
    return torch.softmax(s, dim=-1) @ v


def exp_scores(q, k, v):
    q, k, v = bhtd(q, k, v)
    return torch.tril(torch.exp(q @ k.transpose(-1, -2) * 0.1)) @ v


def no_mask(q, k, v):
    s = torch.einsum("bthd,bshd->bhts", q, k)
    return torch.einsum("bhts,bshd->bthd", s, v)


def anti_causal(q, k, v):
    q, k, v = bhtd(q, k, v)
    return torch.triu(q @ k.transpose(-1, -2)) @ v


def random_mask_input(q, k, v, mask):
    q, k, v = bhtd(q, k, v)
    return ((q @ k.transpose(-1, -2)) * mask) @ v


def random_mask_inside(q, k, v):
    q, k, v = bhtd(q, k, v)
    mask = torch.tril(torch.rand(T, T) > 0.5).float()
    return ((q @ k.transpose(-1, -2)) * mask) @ v, mask


def random_lower_mask_constant(q, k, v):
    q, k, v = bhtd(q, k, v)
    i = torch.arange(T, dtype=torch.float32)
    mask = torch.tril((i[:, None] - i[None, :]) % 3 + 1)
    return ((q @ k.transpose(-1, -2)) * mask) @ v


def scores_returned(q, k, v):
    q, k, v = bhtd(q, k, v)
    s = torch.tril(q @ k.transpose(-1, -2))
    return s @ v, s


class MaskBuffer(torch.nn.Module):
    """The mask is module state, not a constant of the code: it could change, so it is not proven."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mask", torch.tril(torch.ones(T, T)))

    def forward(self, q, k, v):
        q, k, v = bhtd(q, k, v)
        return ((q @ k.transpose(-1, -2)) * self.mask) @ v


NEGATIVE = [
    (softmax_attention, "softmax"),
    (exp_scores, "softmax"),
    (no_mask, "non-causal"),
    (anti_causal, "anti-causal"),
    (random_mask_input, "runtime value"),
    (random_mask_inside, "random"),
    (random_lower_mask_constant, "differs"),
    (scores_returned, "also used"),
    (MaskBuffer(), "runtime value"),
]


def inputs(gate=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, T, H, D, generator=gen) for _ in range(3)]
    if gate:
        xs.append(F.logsigmoid(torch.randn(B, T, H, generator=gen)))
    return [x.requires_grad_() for x in xs]


def compile_fla(fn):
    torch._dynamo.reset()
    return torch.compile(fn, backend="fla", options={"inductor": False})


@pytest.mark.parametrize(
    "fn,family,gate", POSITIVE, ids=[getattr(p[0], "__name__", type(p[0]).__name__) for p in POSITIVE]
)
def test_parallel_matched(fn, family, gate):
    xs = inputs(gate)
    ref = fn(*xs)
    out = compile_fla(fn)(*xs)
    report = fla_compile.last_report()
    assert [(m.family, m.spelling) for m in report.matches] == [(family, "parallel")], str(report)
    assert report.matches[0].error < 1e-5
    assert not report.misses, str(report)
    params = list(fn.parameters()) if isinstance(fn, torch.nn.Module) else []
    check_equal_and_grads(out, ref, xs + params)


def check_equal_and_grads(out, ref, xs):
    assert rel(out, ref) < 1e-5
    proj = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * proj).sum(), xs, retain_graph=True)
    g_out = torch.autograd.grad((out * proj).sum(), xs)
    for a, b in zip(g_out, g_ref):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("fn,reason", NEGATIVE, ids=[getattr(n[0], "__name__", type(n[0]).__name__) for n in NEGATIVE])
def test_parallel_near_miss(fn, reason):
    xs = inputs()
    if fn is random_mask_input:
        xs.append(torch.tril(torch.rand(T, T)) > 0.5)
    torch.manual_seed(1)
    ref = fn(*xs)
    torch.manual_seed(1)
    out = compile_fla(fn)(*xs)
    report = fla_compile.last_report()
    assert not report.matches, str(report)
    assert any(m.spelling == "parallel" and reason in m.reason for m in report.misses), str(report)
    for a, b in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
        assert rel(a, b) < 1e-5


def test_parallel_two_in_a_row():
    xs = inputs()
    ref = linear_two_layers(*xs)
    out = compile_fla(linear_two_layers)(*xs)
    report = fla_compile.last_report()
    assert [(m.family, m.spelling) for m in report.matches] == [("linear_attn", "parallel")] * 2, str(report)
    check_equal_and_grads(out, ref, xs)


def retention_any_length(q, k, v):
    """The decay matrix built from the runtime length, so ``@fla_compile.jit`` can run it at any T."""
    n, h = q.shape[1], q.shape[2]
    q, k, v = bhtd(q, k, v)
    gamma = 1 - 2.0 ** (-5 - torch.arange(h, dtype=torch.float32))
    i = torch.arange(n)
    decay = (gamma[:, None, None] ** (i[:, None] - i[None, :]).float()).masked_fill(i[:, None] < i[None, :], 0)
    return (((q @ k.transpose(-1, -2)) * decay) @ v).transpose(1, 2)


def test_parallel_jit_any_length():
    """@jit traces at two short lengths; the two rewritten graphs must agree, so must the lowerings."""
    fn = fla_compile.jit(retention_any_length)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, 40, H, D, generator=gen).requires_grad_() for _ in range(3))
    out = fn(q, k, v)
    assert [m.family for m in fn.explain(q, k, v).matches] == ["retention"]
    ref = retention_any_length(q, k, v)
    assert rel(out, ref) < 1e-5
    proj = torch.randn(ref.shape, generator=gen)
    g_ref = torch.autograd.grad((ref * proj).sum(), (q, k, v))
    g_out = torch.autograd.grad((out * proj).sum(), (q, k, v))
    for a, b in zip(g_out, g_ref):
        assert rel(a, b) < 1e-5

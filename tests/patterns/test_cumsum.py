"""The ``cumsum`` spelling: prefix sums of k (x) v read by q become linear_attn, equal to eager in
outputs and gradients (a normalizer stays exact); look-alikes are left untouched with a reason."""

import pytest
import torch

import fla_compile
from tests.compare import rel

B, T, H, D = 2, 16, 2, 8


def einsum_bthd(q, k, v):
    """The textbook form: broadcast outer product, cumsum over time, einsum read-out."""
    S = torch.cumsum(k[..., :, None] * v[..., None, :], dim=1)
    return torch.einsum("bthk,bthkv->bthv", q, S)


def einsum_outer_bhtd(q, k, v):
    """[B,H,T,D], the outer product as an einsum, the read-out as multiply-and-sum, a scale."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    S = torch.einsum("bhtk,bhtv->bhtkv", k, v).cumsum(dim=2)
    return (q[..., None] * S).sum(-2) * D**-0.5


def matmul_rows(q, k, v):
    """Column-times-row outer product and a row-vector matmul read-out, negative time dim."""
    S = torch.cumsum(k.unsqueeze(-1) @ v.unsqueeze(-2), dim=-4)
    return (q.unsqueeze(-2) @ S).squeeze(-2)


def normalized_eps(q, k, v):
    """Linear attention with a normalizer: num / (q . z + eps)."""
    q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    S = torch.cumsum(torch.einsum("bthk,bthv->bthkv", k, v), dim=1)
    z = torch.cumsum(k, dim=1)
    num = torch.einsum("bthk,bthkv->bthv", q, S)
    den = torch.einsum("bthk,bthk->bth", q, z)
    return num / (den[..., None] + 1e-6)


def normalized_clamp(q, k, v):
    """The normalizer clamped from below."""
    q, k = q.sigmoid(), k.sigmoid()
    S = (k[..., :, None] * v[..., None, :]).cumsum(1)
    num = (q[..., :, None] * S).sum(-2)
    den = (q * k.cumsum(1)).sum(-1, keepdim=True)
    return num / den.clamp(min=1e-2)


def normalized_other_q(q, k, v):
    """A normalizer read by another q: the numerator is matched, the normalizer stays as written."""
    S = torch.cumsum(k[..., :, None] * v[..., None, :], dim=1)
    num = torch.einsum("bthk,bthkv->bthv", q, S)
    den = torch.einsum("bthk,bthk->bth", q.exp(), torch.cumsum(k.exp(), dim=1))
    return num / den[..., None]


POSITIVE = [einsum_bthd, einsum_outer_bhtd, matmul_rows, normalized_eps, normalized_clamp, normalized_other_q]


def cumsum_key_dim(q, k, v):
    S = torch.cumsum(k[..., :, None] * v[..., None, :], dim=-2)
    return torch.einsum("bthk,bthkv->bthv", q, S)


def cumsum_value_dim(q, k, v):
    S = torch.cumsum(k[..., :, None] * v[..., None, :], dim=-1)
    return torch.einsum("bthk,bthkv->bthv", q, S)


def state_returned(q, k, v):
    S = torch.cumsum(k[..., :, None] * v[..., None, :], dim=1)
    return torch.einsum("bthk,bthkv->bthv", q, S), S[:, -1]


def nonlinear_readout(q, k, v):
    S = torch.cumsum(k[..., :, None] * v[..., None, :], dim=1)
    return torch.einsum("bthk,bthkv->bthv", q, torch.tanh(S))


def previous_state(q, k, v):
    """Reads S_{t-1} (an exclusive prefix sum): not what linear_attn computes."""
    S = torch.cumsum(k[..., :, None] * v[..., None, :], dim=1) - k[..., :, None] * v[..., None, :]
    return torch.einsum("bthk,bthkv->bthv", q, S)


NEGATIVE = [
    (cumsum_key_dim, "key dim"),
    (cumsum_value_dim, "value dim"),
    (state_returned, "also used by"),
    (nonlinear_readout, "not read by a contraction"),
    (previous_state, "not read by a contraction"),
]


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, D, generator=gen).requires_grad_() for _ in range(3)]


def compile_fla(fn):
    torch._dynamo.reset()
    return torch.compile(fn, backend="fla", options={"inductor": False})


@pytest.mark.parametrize("fn", POSITIVE, ids=[f.__name__ for f in POSITIVE])
def test_cumsum_matched(fn):
    xs = inputs()
    ref = fn(*xs)
    out = compile_fla(fn)(*xs)
    report = fla_compile.last_report()
    # num / (den + eps) is normalized linear attention (tests/patterns/test_normalized.py); a clamped normalizer
    # is fused into the numerator's call; one of another q is a near miss of that family, the numerator matched
    family = "normalized_linear_attn" if fn.__name__ == "normalized_eps" else "linear_attn"
    assert [(m.family, m.spelling) for m in report.matches] == [(family, "cumsum")], str(report)
    assert report.matches[0].error < 1e-5
    assert all("normalized linear attention" in m.reason for m in report.misses), str(report)
    assert bool(report.misses) == (fn.__name__ == "normalized_other_q"), str(report)
    fused = any("ones column" in n for n in report.notes)
    assert fused == (fn.__name__ == "normalized_clamp"), str(report)
    assert rel(out, ref) < 1e-5
    proj = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * proj).sum(), xs)
    g_out = torch.autograd.grad((out * proj).sum(), xs)
    for a, b in zip(g_out, g_ref):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("fn,reason", NEGATIVE, ids=[n[0].__name__ for n in NEGATIVE])
def test_cumsum_near_miss(fn, reason):
    xs = inputs()
    ref = fn(*xs)
    out = compile_fla(fn)(*xs)
    report = fla_compile.last_report()
    assert not report.matches, str(report)
    assert any(m.spelling == "cumsum" and reason in m.reason for m in report.misses), str(report)
    for a, b in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
        assert rel(a, b) < 1e-5


def test_cumsum_jit_any_length():
    """@jit traces at two short lengths and runs the fused call (numerator and normalizer) at any T."""
    fn = fla_compile.jit(normalized_eps)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, 40, H, D, generator=gen).requires_grad_() for _ in range(3))
    out = fn(q, k, v)
    assert [m.spelling for m in fn.explain(q, k, v).matches] == ["cumsum"]
    assert [m.family for m in fn.explain(q, k, v).matches] == ["normalized_linear_attn"]
    ref = normalized_eps(q, k, v)
    assert rel(out, ref) < 1e-5
    proj = torch.randn(ref.shape, generator=gen)
    g_ref = torch.autograd.grad((ref * proj).sum(), (q, k, v))
    g_out = torch.autograd.grad((out * proj).sum(), (q, k, v))
    for a, b in zip(g_out, g_ref):
        assert rel(a, b) < 1e-5

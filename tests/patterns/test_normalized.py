"""Normalized linear attention, num / (den + eps), in its parallel and cumsum spellings, with the feature maps
people use (elu + 1, Based's Taylor map, Rebased's squared learnable map): rewritten to one
``ops.normalized_linear_attn`` call, equal to eager in outputs and gradients (the maps stay in the graph: their
parameters get their gradients); look-alikes whose math differs are left as written with the reason."""

import math

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from fla_compile.patterns import normalized
from tests.compare import rel

from . import spellings as S

B, T, H, D = 2, 8, 2, 4
EPS = 1e-6


def elu1(x):
    return F.elu(x) + 1


def taylor(x):
    """Based's feature map: the 2nd-order Taylor expansion of exp(q . k / sqrt(D)), [1, x / D^1/4, x x^T / sqrt(2D)]."""
    x2 = (x[..., :, None] * x[..., None, :]).flatten(-2) / math.sqrt(2)
    return torch.cat([torch.ones_like(x[..., :1]), x / D**0.25, x2 / D**0.5], -1)


def bhtd(*xs):
    return [x.transpose(1, 2) for x in xs]


# --- positive spellings -------------------------------------------------------------------------


def parallel_elu_bhtd(q, k, v):
    """Katharopoulos et al.'s causal form, [B, H, T, D]: tril of the scores, the row sums as normalizer."""
    q, k, v = bhtd(elu1(q), elu1(k), v)
    A = torch.tril(q @ k.transpose(-1, -2))
    return ((A @ v) / (A.sum(-1, keepdim=True) + EPS)).transpose(1, 2)


def parallel_elu_bthd_einsum(q, k, v):
    """[B, T, H, D] einsum, a masked_fill mask, a scale on the scores, the normalizer laid out back as [B, T, H, 1]."""
    q, k = elu1(q), elu1(k)
    A = torch.einsum("bthd,bshd->bhts", q, k) * D**-0.5
    n = q.shape[1]
    A = A.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=q.device).tril(), 0)
    num = torch.einsum("bhts,bshd->bthd", A, v)
    return num / (A.sum(-1).transpose(1, 2)[..., None] + EPS)


def parallel_based_taylor(q, k, v):
    """Based's quadratic reference: Taylor features, tril scores, the normalizer from a cumsum of the keys, and a
    multiply by its reciprocal."""
    q, k, v = bhtd(taylor(q), taylor(k), v)
    A = torch.tril(torch.einsum("bhnd,bhmd->bhnm", q, k))
    y = torch.einsum("bhnm,bhme->bhne", A, v)
    z = 1 / (torch.einsum("bhld,bhld->bhl", q, k.cumsum(2)) + EPS)
    return (y * z[..., None]).transpose(1, 2)


def parallel_rebased(q, k, v, gamma, beta):
    """Rebased's learnable squared map (gamma x + beta)^2 on normalized q and k, [B, H, T, D]."""
    q = (gamma * F.layer_norm(q, (D,)) + beta) ** 2
    k = (gamma * F.layer_norm(k, (D,)) + beta) ** 2
    q, k, v = bhtd(q, k, v)
    A = (q @ k.transpose(-1, -2)) * torch.tril(torch.ones(q.shape[-2], q.shape[-2], device=q.device))
    return ((A @ v) / (A.sum(-1, keepdim=True) + 1e-3)).transpose(1, 2)


def cumsum_elu(q, k, v):
    """The cumsum form: S = cumsum(k (x) v), z = cumsum(k), o = (q . S) / (q . z + eps)."""
    q, k = elu1(q), elu1(k)
    S = torch.cumsum(torch.einsum("bthk,bthv->bthkv", k, v), dim=1)
    z = torch.cumsum(k, dim=1)
    num = torch.einsum("bthk,bthkv->bthv", q, S)
    return num / (torch.einsum("bthk,bthk->bth", q, z)[..., None] + EPS)


def cumsum_taylor_broadcast(q, k, v):
    """Taylor features, broadcast outer products, multiply-and-sum read-outs, no eps."""
    q, k = taylor(q), taylor(k)
    S = (k[..., :, None] * v[..., None, :]).cumsum(1)
    num = (q[..., :, None] * S).sum(-2)
    return num / (q * k.cumsum(1)).sum(-1, keepdim=True)


POSITIVE = [
    (parallel_elu_bhtd, "parallel"),
    (parallel_elu_bthd_einsum, "parallel"),
    (parallel_based_taylor, "parallel"),
    (parallel_rebased, "parallel"),
    (cumsum_elu, "cumsum"),
    (cumsum_taylor_broadcast, "cumsum"),
]


# --- near misses: the math differs from the op's, left as written -------------------------------


def miss_normalizer_query_axis(q, k, v):
    """The scores summed over the query axis (A.sum(-2)): column sums, not each row's normalizer."""
    q, k, v = bhtd(elu1(q), elu1(k), v)
    A = torch.tril(q @ k.transpose(-1, -2))
    return ((A @ v) / (A.sum(-2)[..., None] + EPS)).transpose(1, 2)


def miss_non_causal(q, k, v):
    """No mask: every key attends (non-causal linear attention)."""
    q, k, v = bhtd(elu1(q), elu1(k), v)
    A = q @ k.transpose(-1, -2)
    return ((A @ v) / (A.sum(-1, keepdim=True) + EPS)).transpose(1, 2)


def miss_eps_inside_the_sum(q, k, v):
    """eps added to every score, masked ones included, before the row sum: T eps, not eps, and a sum over keys
    the numerator does not see."""
    q, k, v = bhtd(elu1(q), elu1(k), v)
    A = torch.tril(q @ k.transpose(-1, -2))
    return ((A @ v) / (A + 1e-2).sum(-1, keepdim=True)).transpose(1, 2)


def miss_other_key(q, k, v):
    """The normalizer sums other keys (exp(k)) than the numerator's (elu(k) + 1)."""
    q, kf = elu1(q), elu1(k)
    S = torch.cumsum(torch.einsum("bthk,bthv->bthkv", kf, v), dim=1)
    num = torch.einsum("bthk,bthkv->bthv", q, S)
    return num / (torch.einsum("bthk,bthk->bth", q, torch.cumsum(k.exp(), dim=1))[..., None] + EPS)


NEGATIVE = [
    (miss_normalizer_query_axis, "not q_t . sum_(s<=t) k_s"),
    (miss_non_causal, "no causal mask"),
    (miss_eps_inside_the_sum, "not q_t . sum_(s<=t) k_s"),
    (miss_other_key, "does not read the numerator's q and k"),
]


def inputs(fn, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, T, H, D, generator=gen) for _ in range(3)]
    if fn is parallel_rebased:
        xs += [1 + 0.1 * torch.randn(D, generator=gen), 0.1 * torch.randn(D, generator=gen)]
    return [x.requires_grad_() for x in xs]


def compile_fla(fn):
    torch._dynamo.reset()
    return torch.compile(fn, backend="fla", options={"inductor": False})


@pytest.fixture(autouse=True)
def _reset():
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("fn,spelling", POSITIVE, ids=[f.__name__ for f, _ in POSITIVE])
def test_normalized_form_is_rewritten_and_exact(fn, spelling):
    xs = inputs(fn)
    ref = fn(*xs)
    out = compile_fla(fn)(*xs)
    report = fla_compile.last_report()
    assert [(m.family, m.spelling) for m in report.rewritten] == [("normalized_linear_attn", spelling)], str(report)
    assert report.matches[0].error < 1e-5 and not report.misses, str(report)
    assert rel(out, ref) < 1e-5
    proj = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    g_ref = torch.autograd.grad((ref * proj).sum(), xs)
    g_out = torch.autograd.grad((out * proj).sum(), xs)
    for a, b in zip(g_out, g_ref):  # q, k, v, and Rebased's gamma and beta through the map left in the graph
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("fn,reason", NEGATIVE, ids=[f.__name__ for f, _ in NEGATIVE])
def test_normalized_near_miss_is_left_as_written(fn, reason):
    xs = [x.detach() for x in inputs(fn)]
    ref = fn(*xs)
    out = compile_fla(fn)(*xs)
    report = fla_compile.last_report()
    assert not [m for m in report.matches if m.family == "normalized_linear_attn"], str(report)
    assert any("normalized linear attention" in m.reason and reason in m.reason for m in report.misses), str(report)
    assert rel(out, ref) < 1e-5


# the cumsum spelling's @jit test is tests/patterns/test_cumsum.py's
@pytest.mark.parametrize("fn", [parallel_elu_bthd_einsum], ids=lambda f: f.__name__)
def test_jit_runs_the_normalized_op_at_any_length(fn):
    """@jit traces at two short lengths and runs the op at another; the fp32 result and gradients equal eager."""
    jitted = fla_compile.jit(fn)
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(B, 24, H, D, generator=gen).requires_grad_() for _ in range(3)]
    out = jitted(*xs)
    assert [m.family for m in jitted.explain(*xs).matches] == ["normalized_linear_attn"]
    ref = fn(*xs)
    assert rel(out, ref) < 1e-5
    g_ref = torch.autograd.grad(ref.sum(), xs)
    g_out = torch.autograd.grad(out.sum(), xs)
    for a, b in zip(g_out, g_ref):
        assert rel(a, b) < 1e-5


def test_jit_runs_a_normalized_loop_at_any_length():
    """@jit re-rolls the loop at two probe lengths (no unrolling at the call's length) and runs the op."""
    fn = S.normalized_elu_in_loop
    jitted = fla_compile.jit(fn)
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(1, 20, H, D, generator=gen).requires_grad_() for _ in range(3)]
    out = jitted(*xs)
    assert [(m.family, m.spelling) for m in jitted.explain(*xs).matches] == [("normalized_linear_attn", "loop")]
    ref = fn(*xs)
    assert rel(out, ref) < 1e-5
    for a, b in zip(torch.autograd.grad(out.sum(), xs), torch.autograd.grad(ref.sum(), xs)):
        assert rel(a, b) < 1e-5


PROOF_ONLY = [miss_normalizer_query_axis, miss_eps_inside_the_sum, S.miss_normalized_heads_swapped]


@pytest.mark.parametrize("fn", PROOF_ONLY, ids=lambda f: f.__name__)
def test_without_the_proof_it_is_miscompiled(fn, monkeypatch):
    """The meta-test: with the proofs stubbed, these near misses are rewritten and come out wrong; the proof is
    what stops each one."""
    monkeypatch.setattr(normalized.verify, "prove_region", lambda gm, args, recs, *_: (recs[0], 0.0))
    monkeypatch.setattr(normalized, "prove_loop", lambda *_, **__: 0.0)
    xs = [x.detach() for x in inputs(fn)]
    ref = fn(*xs)
    out = compile_fla(fn)(*xs)
    assert [m.family for m in fla_compile.last_report().rewritten] == ["normalized_linear_attn"]
    assert rel(out, ref) > 1e-3


def loop_with_initial_state(q, k, v, S0, z0):
    """A loop starting from a state and a normalizer passed in, the final state returned."""
    q, k = elu1(q), elu1(k)
    S, z = S0.clone(), z0.clone()
    outs = []
    for t in range(q.shape[1]):
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        z = z + k[:, t]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S) / ((q[:, t] * z).sum(-1, keepdim=True) + 1e-3))
    return torch.stack(outs, 1), S


def test_loop_with_initial_state_and_final_state():
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(B, T, H, D, generator=gen) for _ in range(3)] + [
        torch.rand(B, H, D, D, generator=gen),
        torch.rand(B, H, D, generator=gen),
    ]
    xs = [x.requires_grad_() for x in xs]
    out = compile_fla(loop_with_initial_state)(*xs)
    assert [m.family for m in fla_compile.last_report().rewritten] == ["normalized_linear_attn"]
    ref = loop_with_initial_state(*(x.double() for x in xs))
    for o, r in zip(out, ref):
        assert rel(o, r) < 1e-5
    g_out = torch.autograd.grad(sum(o.sum() for o in out), xs)
    g_ref = torch.autograd.grad(sum(r.sum() for r in ref), xs)
    for a, b in zip(g_out, g_ref):  # S0 and z0 included
        assert rel(a, b) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("triton", ["1", "0"])
@pytest.mark.parametrize("fn,spelling", POSITIVE, ids=[f.__name__ for f, _ in POSITIVE])
def test_normalized_form_on_cuda(fn, spelling, triton, monkeypatch):
    """CUDA fp32 inputs, Inductor on (the feature maps and the division fused around the op), against eager fp64."""
    monkeypatch.setenv("FLA_COMPILE_TRITON", triton)
    xs = [x.detach().cuda().requires_grad_() for x in inputs(fn)]
    x64 = [x.detach().double().requires_grad_() for x in xs]
    out = compile_fla_inductor(fn)(*xs)
    assert [m.family for m in fla_compile.last_report().rewritten] == ["normalized_linear_attn"]
    ref = fn(*x64)
    assert out.is_cuda and rel(out.cpu(), ref.cpu()) < 1e-4
    for a, b in zip(torch.autograd.grad(out.sum(), xs), torch.autograd.grad(ref.sum(), x64)):
        assert rel(a.cpu(), b.cpu()) < 1e-4


def compile_fla_inductor(fn):
    torch._dynamo.reset()
    return torch.compile(fn, backend="fla")

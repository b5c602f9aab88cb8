"""Normalized linear attention whose masked scores are a polynomial of degree <= 2 in q . k (Based's quadratic
reference, ``tril(1 + s + s^2 / 2)``): rewritten to one ``ops.normalized_linear_attn`` call on feature maps the
rewrite adds to the graph, equal to eager in outputs and gradients; look-alikes (a cubic term, exp, no mask, the
mask before the polynomial, a normalizer over the wrong axis or of other scores) are left as written."""

import math

import pytest
import torch

import fla_compile
from fla_compile.patterns import normalized
from tests.compare import rel
from tests.patterns.test_normalized import compile_fla

B, T, H, D, V = 1, 8, 2, 4, 4
EPS = 1e-6


def _scores(q, k):
    """[B, T, H, D] -> s [B, H, T, S], scaled by 1 / sqrt(D)."""
    return torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(q.shape[-1])


def _normalized(A, v):
    num = torch.einsum("bhij,bjhv->bihv", A, v)
    return num / (A.sum(-1).transpose(1, 2).unsqueeze(-1) + EPS)


# --- positive spellings -------------------------------------------------------------------------


def based_quadratic(q, k, v):
    """Based's reference: exp(s) replaced by its second-order Taylor polynomial, causally masked, row sums."""
    s = _scores(q, k)
    return _normalized(torch.tril(1 + s + 0.5 * s * s), v)


def shifted_quadratic_bhtd(q, k, v):
    """[B, H, T, D] matmuls, a negative linear coefficient, ``**``, a masked_fill mask and a multiply by the
    reciprocal of the normalizer."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    s = q @ k.transpose(-1, -2)
    n = s.shape[-1]
    A = (2 - 0.5 * s + 0.25 * s**2).masked_fill(~torch.ones(n, n, dtype=torch.bool, device=s.device).tril(), 0.0)
    z = 1 / (A.sum(-1, keepdim=True) + EPS)
    return ((A @ v) * z).transpose(1, 2)


def nm_squared_scores(q, k, v):
    """(q . k)^2 alone: a polynomial that reaches 0, so a row's normalizer can vanish where the maps' d^2 products
    cancel (fp32 on the Triton path: 1e-4 off at the first row of these inputs where eager is 1e-7 off)."""
    s = _scores(q, k)
    return _normalized(torch.tril(s.pow(2)), v)


POSITIVE = [based_quadratic, shifted_quadratic_bhtd]


# --- near misses --------------------------------------------------------------------------------


def nm_cubic(q, k, v):
    """A third-order Taylor polynomial: no feature map of dim 1 + d + d^2 gives it."""
    s = _scores(q, k)
    return _normalized(torch.tril(1 + s + s * s / 2 + s**3 / 6), v)


def nm_exp(q, k, v):
    """exp(s) itself: causal softmax attention written out, not a polynomial."""
    s = _scores(q, k)
    return _normalized(torch.tril(torch.exp(s)), v)


def nm_non_causal(q, k, v):
    """The polynomial without a mask: every key attends."""
    s = _scores(q, k)
    return _normalized(1 + s + 0.5 * s * s, v)


def nm_mask_before_polynomial(q, k, v):
    """tril(s) then 1 + s + s^2 / 2: the masked scores are 1, not 0, above the diagonal."""
    s = torch.tril(_scores(q, k))
    return _normalized(1 + s + 0.5 * s * s, v)


def nm_normalizer_query_axis(q, k, v):
    """The normalizer sums the scores over the query axis (column sums)."""
    A = torch.tril(1 + (s := _scores(q, k)) + 0.5 * s * s)
    num = torch.einsum("bhij,bjhv->bihv", A, v)
    return num / (A.sum(-2).transpose(1, 2).unsqueeze(-1) + EPS)


def nm_normalizer_clamped_scores(q, k, v):
    """The normalizer's scores clamped at zero where the numerator's are not: equal wherever q . k > 0, so only
    probes of either sign tell."""
    s = _scores(q, k)
    A = torch.tril(1 + s + 0.5 * s * s)
    den = torch.tril(1 + s.clamp(min=0) + 0.5 * s * s).sum(-1)
    num = torch.einsum("bhij,bjhv->bihv", A, v)
    return num / (den.transpose(1, 2).unsqueeze(-1) + EPS)


NEGATIVE = [
    (nm_cubic, "polynomial of degree <= 2"),
    (nm_exp, None),  # softmax attention: the parallel pass says so, no normalized miss
    (nm_non_causal, "not causal: scores above the diagonal are kept"),
    (nm_mask_before_polynomial, "constant term survives above the diagonal"),
    (nm_normalizer_query_axis, "not q_t . sum_(s<=t) k_s"),
    (nm_normalizer_clamped_scores, "at signed |q|, |k|"),
    (nm_squared_scores, "whose least value (0) is not at least"),
]


def inputs(seed=0, grad=True):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, T, H, D, generator=gen) for _ in range(2)] + [torch.randn(B, T, H, V, generator=gen)]
    return [x.requires_grad_(grad) for x in xs]


@pytest.fixture(autouse=True)
def _reset():
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("fn", POSITIVE, ids=lambda f: f.__name__)
def test_polynomial_scores_are_rewritten_and_exact(fn):
    xs = inputs()
    ref = fn(*xs)
    out = compile_fla(fn)(*xs)
    report = fla_compile.last_report()
    assert [(m.family, m.spelling) for m in report.rewritten] == [("normalized_linear_attn", "parallel")], str(report)
    assert report.matches[0].error < 1e-5 and not report.misses, str(report)
    assert rel(out, ref) < 1e-5
    proj = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    g_ref = torch.autograd.grad((ref * proj).sum(), xs)
    g_out = torch.autograd.grad((out * proj).sum(), xs)
    for a, b in zip(g_out, g_ref):
        assert rel(a, b) < 1e-5


def test_feature_maps_are_graph_nodes():
    """The maps are nodes before the op's call (Inductor fuses them): a cat of [1, q / 2, vec(q q^T) / 8] on the
    q side (the coefficients 1, 1 / sqrt(D), 1 / (2 D) carried there), of [1, k, vec(k k^T)] on the k side."""
    from fla_compile import backend

    seen = []
    analyze = backend.analyze

    def spy(gm, opts):
        new, report = analyze(gm, opts)
        seen.append(new)
        return new, report

    xs = inputs(grad=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backend, "analyze", spy)
        compile_fla(based_quadratic)(*xs)
    (gm,) = seen
    cats = [n for n in gm.graph.nodes if n.target is torch.cat]
    call = next(n for n in gm.graph.nodes if isinstance(n.target, normalized.NormalizedLowering))
    assert list(call.args[:2]) == cats
    assert [n.meta["example_value"].shape[-1] for n in cats] == [1 + D + D * D] * 2
    assert [m.family for m in fla_compile.last_report().matches] == ["normalized_linear_attn"]


@pytest.mark.parametrize("fn,reason", NEGATIVE, ids=[f.__name__ for f, _ in NEGATIVE])
def test_near_miss_is_left_as_written(fn, reason):
    xs = inputs(grad=False)
    ref = fn(*xs)
    out = compile_fla(fn)(*xs)
    report = fla_compile.last_report()
    assert not [m for m in report.matches if m.family == "normalized_linear_attn"], str(report)
    if reason is not None:
        assert any("normalized linear attention" in m.reason and reason in m.reason for m in report.misses), str(report)
    else:
        assert any("softmax attention" in m.reason for m in report.misses), str(report)
    assert rel(out, ref) < 1e-5


@pytest.mark.parametrize("fn", [nm_normalizer_query_axis, nm_normalizer_clamped_scores], ids=lambda f: f.__name__)
def test_without_the_proof_it_is_miscompiled(fn, monkeypatch):
    """With the proof stubbed these look-alikes are rewritten and come out wrong: the proof is what stops them."""
    monkeypatch.setattr(normalized.verify, "prove_region", lambda gm, args, recs, *_: (recs[0], 0.0))
    xs = inputs(grad=False)
    ref = fn(*xs)
    out = compile_fla(fn)(*xs)
    assert [m.family for m in fla_compile.last_report().rewritten] == ["normalized_linear_attn"]
    assert rel(out, ref) > 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fn", POSITIVE, ids=lambda f: f.__name__)
def test_polynomial_scores_on_cuda(fn):
    """CUDA fp32 inputs, Inductor on (the feature maps fused before the op), against eager fp64."""
    xs = [x.detach().cuda().requires_grad_() for x in inputs()]
    x64 = [x.detach().double().requires_grad_() for x in xs]
    torch._dynamo.reset()
    out = torch.compile(fn, backend="fla")(*xs)
    assert [m.family for m in fla_compile.last_report().rewritten] == ["normalized_linear_attn"]
    ref = fn(*x64)
    assert out.is_cuda and rel(out.cpu(), ref.cpu()) < 1e-4
    for a, b in zip(torch.autograd.grad(out.sum(), xs), torch.autograd.grad(ref.sum(), x64)):
        assert rel(a.cpu(), b.cpu()) < 1e-4

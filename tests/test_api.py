"""The public entry points: explain, jit's safe fallback, the registered backend."""

import warnings

import torch

import fla_compile

from .patterns import spellings as S


def test_backend_is_registered():
    assert "fla" in torch._dynamo.list_backends(exclude_tags=())


def test_explain_reports_matches_and_misses():
    q, k, v = torch.randn(2, 8, 2, 4), torch.randn(2, 8, 2, 4), torch.randn(2, 8, 2, 5)
    report = fla_compile.explain(S.linear_matmul_cat, q, k, v)
    assert [m.family for m in report.matches] == ["linear_attn"]
    assert "linear_attn" in str(report)
    report = fla_compile.explain(S.miss_nonlinear_in_state, q, k, v)
    assert not report.matches and report.misses


def test_jit_never_computes_something_else():
    q, k, v = torch.randn(2, 20, 2, 4), torch.randn(2, 20, 2, 4), torch.randn(2, 20, 2, 5)
    fn = fla_compile.jit(S.miss_nonlinear_in_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fn(q, k, v)
    assert torch.allclose(out, S.miss_nonlinear_in_state(q, k, v), rtol=1e-5, atol=1e-6)
    for spelling in (S.linear_matmul_cat, S.gla_sigmoid_gate):
        args = (q, k, v) if spelling is S.linear_matmul_cat else (q, k, v, torch.randn(2, 20, 2, 4))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fla_compile.jit(spelling)(*args)
        ref = spelling(*args)
        assert ((out - ref).norm() / ref.norm()) < 1e-5

"""Polynomial scores (``patterns/poly_scores.py``) on the Triton path, fp32, against float64.

The rewrite computes q . k again through feature maps (d^2 products on the k side), which cancel where q . k is
near 0. Based's polynomial is bounded away from zero, so its normalizer is too, and the op matches eager's own
accuracy. (q . k)^2 is not: a row whose scores lie near 0 had its output 1e-4 and its gradients 6e-3 off on this
path, where eager was 1e-7 off (the interpreter here, and the H200): such a region is left as written. Interpreted
on CPU (``FLA_COMPILE_TRITON=interpret``); on CUDA the same check is ``test_taylor_scores.py``'s GPU test.
"""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("interpreter tests (the CUDA one is in tests/patterns/test_taylor_scores.py)", allow_module_level=True)
if type(triton.language.standard.cdiv).__name__ != "InterpretedFunction":
    pytest.skip("triton was imported before TRITON_INTERPRET was set", allow_module_level=True)

import fla_compile  # noqa: E402
from tests.compare import rel  # noqa: E402
from tests.patterns.test_taylor_scores import POSITIVE, inputs, nm_squared_scores  # noqa: E402


def _errors(fn, compiled: bool):
    """(output, worst input gradient) relative errors against float64, fp32 inputs; ``compiled``: through the
    backend with the cost table off (the op runs at this size) and the kernels interpreted."""
    xs = inputs()
    x64 = [x.detach().double().requires_grad_() for x in xs]
    if compiled:
        torch._dynamo.reset()
        fn32 = torch.compile(fn, backend="fla", options={"inductor": False, "costs": False})
    else:
        fn32 = fn
    out, ref = fn32(*xs), fn(*x64)
    g, g64 = torch.autograd.grad(out.sum(), xs), torch.autograd.grad(ref.sum(), x64)
    return rel(out, ref), max(rel(a, b) for a, b in zip(g, g64))


@pytest.mark.parametrize("fn", POSITIVE, ids=lambda f: f.__name__)
def test_rewritten_scores_keep_eager_accuracy(fn, monkeypatch):
    monkeypatch.setenv("FLA_COMPILE_TRITON", "interpret")
    out_err, grad_err = _errors(fn, compiled=True)
    assert [m.family for m in fla_compile.last_report().rewritten] == ["normalized_linear_attn"]
    eager_out, eager_grad = _errors(fn, compiled=False)
    assert out_err < max(10 * eager_out, 1e-6) and grad_err < max(10 * eager_grad, 1e-6), (
        out_err, grad_err, eager_out, eager_grad
    )  # fmt: skip


def test_scores_that_reach_zero_are_left_as_written(monkeypatch):
    monkeypatch.setenv("FLA_COMPILE_TRITON", "interpret")
    out_err, grad_err = _errors(nm_squared_scores, compiled=True)
    assert not fla_compile.last_report().rewritten
    assert out_err < 1e-6 and grad_err < 1e-5

"""The chunked spelling: transformers' own torch fallbacks, compiled unchanged with backend="fla"."""

import importlib

import pytest
import torch
import torch.nn.functional as F

import fla_compile
from fla_compile.hf.rebind import innermost
from fla_compile.patterns import chunked

B, T, H, K, V = 1, 70, 2, 16, 8

CASES = [
    ("qwen3_next", "torch_chunk_gated_delta_rule", "gated_delta_rule", "bth"),
    ("qwen3_next", "torch_recurrent_gated_delta_rule", "gated_delta_rule", "bth"),
    ("kimi_linear", "chunk_kimi_delta_attention", "kda", "bthk"),
]


def reference_function(model, name):
    try:
        mod = importlib.import_module(f"transformers.models.{model}.modeling_{model}")
    except ImportError:
        pytest.skip(f"transformers has no {model}")
    if not hasattr(mod, name):
        pytest.skip(f"transformers' {model} has no {name}")
    # transformers >= 5.17 wraps its torch fallbacks in a dispatcher that calls flash-linear-attention
    # when it is importable, and 5.25 that in a kernels function module: the torch function is the one
    # they wrap
    return innermost(getattr(mod, name))


def inputs(gate_kind, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(
        torch.randn(B, T, H, generator=gen) if gate_kind == "bth" else torch.randn(B, T, H, K, generator=gen)
    )
    return q, k, v, g, torch.rand(B, T, H, generator=gen)


@pytest.fixture(autouse=True)
def _reset():
    torch._dynamo.reset()


@pytest.mark.parametrize("model,name,family,gate_kind", CASES)
def test_transformers_fallback_is_recognized_unchanged(model, name, family, gate_kind):
    """Outputs and every input's gradient through the rewrite, against transformers' own function in fp64."""
    fn = reference_function(model, name)
    h0 = torch.randn(B, H, K, V, generator=torch.Generator().manual_seed(1))
    args = [x.requires_grad_() for x in (*inputs(gate_kind), h0)]
    kw = dict(output_final_state=True, use_qk_l2norm_in_kernel=True)
    out = torch.compile(fn, backend="fla", options={"inductor": False})(*args[:-1], initial_state=args[-1], **kw)
    report = fla_compile.last_report()
    assert [m.family for m in report.matches] == [family], str(report)
    xs = [x.detach().double().requires_grad_() for x in args]
    ref = fn(*xs[:-1], initial_state=xs[-1], **kw)
    gen = torch.Generator().manual_seed(2)
    proj = [torch.randn(r.shape, generator=gen, dtype=torch.float64) for r in ref]
    grads = torch.autograd.grad(sum((o * p.float()).sum() for o, p in zip(out, proj)), args)
    ref_grads = torch.autograd.grad(sum((r * p).sum() for r, p in zip(ref, proj)), xs)
    for o, r in zip((*out, *grads), (*ref, *ref_grads)):
        assert ((o.double() - r).norm() / r.norm()) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("model,name,family,gate_kind", CASES)
def test_transformers_fallback_through_jit(model, name, family, gate_kind, dtype):
    """``@jit`` on transformers' fallback as the models call it, final state off: it returns ``(o, None)``, and the
    captured graph returns ``o`` alone (before, every such call failed the jit's check and ran as written). The
    same structure, ``o`` against the function in fp64; bf16 no further from it than the function's own bf16
    result (or 2e-2)."""
    fn = reference_function(model, name)
    args = [x.to(dtype) for x in inputs(gate_kind)]
    jitted = fla_compile.jit(fn, strict=True)  # strict: raises if it would run the function as written
    out = jitted(*args)
    assert [m.family for m in jitted.explain(*args).matches] == [family]
    theirs = fn(*args)
    assert len(out) == 2 and out[1] is None and theirs[1] is None and out[0].dtype == theirs[0].dtype
    exact = fn(*[x.double() for x in args])[0]
    ours_err, theirs_err = (((x.double() - exact).norm() / exact.norm()).item() for x in (out[0], theirs[0]))
    assert ours_err < (1e-5 if dtype == torch.float32 else max(theirs_err, 2e-2)), (ours_err, theirs_err)


def decoy(q, k, v, g, beta):
    """Shaped like a gated delta rule (same inputs, a cumsum of gates) but softmax attention."""
    c = g.float().cumsum(1)
    scores = torch.einsum("bthk,bshk->bhts", q, k) + (c[:, :, None, :] - c[:, None, :, :]).permute(0, 3, 1, 2)
    mask = torch.ones(q.shape[1], q.shape[1], dtype=torch.bool).triu(1)
    for _ in range(chunked.MIN_NODES):  # enough nodes to be a candidate of the chunked pass
        scores = scores * 1.0
    p = scores.masked_fill(mask, float("-inf")).softmax(-1)
    return torch.einsum("bhts,bshv->bthv", p, v * beta[..., None])


def test_a_lookalike_function_is_left_alone():
    def outer(q, k, v, g, beta):
        return decoy(q, k, v, g, beta)

    args = inputs("bth")
    ref = outer(*args)
    out = torch.compile(outer, backend="fla", options={"inductor": False})(*args)
    report = fla_compile.last_report()
    assert not report.matches, str(report)
    # it is a candidate of the chunked pass (a gated delta rule's inputs, a cumsum, enough nodes),
    # bound and run against the family ops, and refused because none reproduces it
    assert any(
        m.spelling == "chunked" and "no family op reproduces" in m.reason and "decoy" in m.source for m in report.misses
    ), str(report)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_an_outer_nonlinearity_stays_outside():
    fn = reference_function("qwen3_next", "torch_chunk_gated_delta_rule")

    def not_quite(q, k, v, g, beta):
        o, s = fn(q, k, v, g, beta, output_final_state=True, use_qk_l2norm_in_kernel=True)
        return torch.tanh(o), s

    args = inputs("bth")
    ref = not_quite(*args)
    out = torch.compile(not_quite, backend="fla", options={"inductor": False})(*args)
    report = fla_compile.last_report()
    # the inner function is still recognized; the tanh stays outside it, and the result is unchanged
    assert [(m.family, m.spelling) for m in report.matches] == [("gated_delta_rule", "chunked")], str(report)
    for o, r in zip(out, ref):
        assert ((o - r).norm() / r.norm()) < 1e-5

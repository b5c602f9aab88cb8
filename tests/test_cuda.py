"""CUDA tensors end to end (run on the GPU box; skipped without CUDA).

The torch chunked path must work on GPU tensors as well as CPU ones (it is the reference of
the kernels and the fallback with ``FLA_COMPILE_TRITON=0``), and the backend must recognise a
naive loop fed CUDA tensors and run it through the ops.
"""

import pytest
import torch

import fla_compile
from tests.compare import rel

from .ops import test_delta as D
from .ops import test_gla as G
from .patterns import spellings as S
from .patterns import test_chunked as C
from .patterns.test_loop import POSITIVE, as_tuple, make_inputs
from .short_conv import ShortConvDelta

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _grads(call, xs, device, dtype):
    leaves = [None if x is None else x.detach().to(device, dtype).requires_grad_() for x in xs]
    o, ht = call(leaves)
    torch.autograd.backward((o, ht), (torch.ones_like(o), torch.ones_like(ht)))
    return [o, ht] + [x.grad for x in leaves if x is not None]


@pytest.mark.parametrize("family", G.FAMILIES)
def test_torch_path_gla_line_on_cuda(family, monkeypatch):
    monkeypatch.setenv("FLA_COMPILE_TRITON", "0")
    q, k, v, gate, h0 = G.make(family, B=2, T=150, HK=1, H=2, K=16, V=8)

    def call(xs):
        q, k, v, gate, h0 = xs
        return G.call_op(family, q, k, v, gate, initial_state=h0, output_final_state=True)

    xs = [q, k, v, gate, h0]
    for a, b in zip(_grads(call, xs, "cuda", torch.float32), _grads(call, xs, "cpu", torch.float64)):
        assert a.is_cuda
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("family", D.FAMILIES)
def test_torch_path_delta_line_on_cuda(family, monkeypatch):
    monkeypatch.setenv("FLA_COMPILE_TRITON", "0")
    q, k, v, g, b, h0 = D.make(family, T=150)

    def call(xs):
        q, k, v, g, b, h0 = xs
        return D.call_op(family, q, k, v, g, b, initial_state=h0, output_final_state=True)

    xs = [q, k, v, g, b, h0]
    for x, y in zip(_grads(call, xs, "cuda", torch.float32), _grads(call, xs, "cpu", torch.float64)):
        assert x.is_cuda
        assert rel(x, y) < 1e-4


# these spellings make their state or decays with CPU factories (torch.zeros(...) without a
# device): eager itself refuses CUDA inputs there, so they are CPU-only programs
CPU_ONLY = {"linear_outer_single_head", "retention_inplace_einsum", "retention_per_head_gamma"}


@pytest.mark.parametrize("triton", ["1", "0"])
@pytest.mark.parametrize("name", sorted(set(POSITIVE) - CPU_ONLY))
def test_backend_on_cuda_inputs(name, triton, monkeypatch):
    monkeypatch.setenv("FLA_COMPILE_TRITON", triton)
    torch._dynamo.reset()
    fn = getattr(S, name)
    torch.manual_seed(0)
    args = [x.cuda() for x in make_inputs(fn)]
    ref = as_tuple(fn(*(x.double() for x in args)))
    out = as_tuple(torch.compile(fn, backend="fla")(*args))
    report = fla_compile.last_report()
    assert [m.family for m in report.matches] == [POSITIVE[name]], str(report)
    for o, r in zip(out, ref):
        assert o.is_cuda
        assert rel(o, r) < 1e-4


@pytest.mark.parametrize("triton", ["1", "0"])
@pytest.mark.parametrize("model,name,family,gate_kind", C.CASES)
def test_transformers_fallbacks_on_cuda(model, name, family, gate_kind, triton, monkeypatch):
    """Their masks are made with device=query.device, so the proof must probe on that device."""
    monkeypatch.setenv("FLA_COMPILE_TRITON", triton)
    torch._dynamo.reset()
    fn = C.reference_function(model, name)
    args = [x.cuda() for x in C.inputs(gate_kind)]
    h0 = torch.randn(C.B, C.H, C.K, C.V, device="cuda")
    kw = dict(initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    ref = fn(*(x.double() for x in args), **{**kw, "initial_state": h0.double()})
    out = torch.compile(fn, backend="fla")(*args, **kw)
    report = fla_compile.last_report()
    assert [m.family for m in report.matches] == [family], str(report)
    for o, r in zip(out, ref):
        assert o.is_cuda
        assert rel(o, r) < 1e-4


@pytest.mark.parametrize("triton", ["1", "0"])
def test_loop_serves_other_batch_sizes_on_cuda(triton, monkeypatch):
    """dynamic=True: one graph of a rewritten loop (Inductor around the op) serves several batch and head
    counts, forward and gradients equal fp64 eager."""
    from fla_compile.backend import REPORTS

    monkeypatch.setenv("FLA_COMPILE_TRITON", triton)
    torch._dynamo.reset()
    fn = S.gla_fla_naive
    compiled = torch.compile(fn, backend="fla", dynamic=True)
    seen = len(REPORTS)
    for i, (B, H) in enumerate([(2, 3), (4, 5), (3, 2)]):
        gen = torch.Generator().manual_seed(i)
        xs = [torch.randn(B, 64, H, 32, generator=gen) for _ in range(3)]
        xs.append(torch.nn.functional.logsigmoid(torch.randn(B, 64, H, 32, generator=gen)) / 4)
        xs = [x.cuda().requires_grad_() for x in xs]
        x64 = [x.detach().double().requires_grad_() for x in xs]
        out, ref = compiled(*xs)[0], fn(*x64)[0]
        out.square().sum().backward()
        ref.square().sum().backward()
        assert rel(out, ref) < 1e-4, (B, H)
        for x, r in zip(xs, x64):
            assert rel(x.grad, r.grad) < 1e-4, (B, H)
    assert len(REPORTS) - seen == 1, [str(r) for r in REPORTS[seen:]]


def test_backend_cudagraphs_training_steps():
    """``options={"cudagraphs": True}``: training steps under Inductor's cudagraph trees give eager's gradients,
    and an eager call after them still does (the op's cached chunk metadata is never made in the graphs' pool:
    the trees refused such a tensor, "Detected 3 tensor(s) in the cudagraph pool not tracked as outputs")."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(ShortConvDelta(), ShortConvDelta()).cuda()
    x = torch.randn(2, 200, 128, device="cuda")

    def grads(fn):
        model.zero_grad(set_to_none=True)
        fn(x).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    eager = grads(model)
    compiled = torch.compile(model, backend="fla", fullgraph=True, options={"cudagraphs": True})
    for _ in range(4):  # warmup, record, replays
        torch.compiler.cudagraph_mark_step_begin()
        got = grads(compiled)
        bad = [rel(a, b) for a, b in zip(got, eager) if not rel(a, b) < 1e-3]
        assert not bad, bad
    again = grads(model)  # the conv's weight gradient may sum in another order: not bit for bit
    assert all(rel(a, b) < 1e-5 for a, b in zip(again, eager))

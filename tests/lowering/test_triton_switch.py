"""Which path the ops take: ``FLA_COMPILE_TRITON`` switches both lines (GLA and delta) the same way,
and float64 anywhere among the inputs takes the torch path. Checked on the CPU with stand-ins for
CUDA tensors (only ``is_cuda``, ``dtype`` and ``shape`` are read), and through the ops with the
Triton entry points replaced by recorders."""

from __future__ import annotations

import types

import pytest
import torch

from fla_compile.lowering import gla_triton_enabled
from fla_compile.lowering.delta import dispatch as delta_dispatch


def cuda_like(*shape, dtype=torch.float32):
    return types.SimpleNamespace(is_cuda=True, dtype=dtype, shape=torch.Size(shape))


def delta_inputs(dtype=torch.float32, gate_dtype=torch.float32, beta_dtype=torch.float32, h0_dtype=torch.float32):
    qkv = [cuda_like(1, 8, 2, 16, dtype=dtype) for _ in range(3)]
    beta, gate = cuda_like(1, 8, 2, dtype=beta_dtype), cuda_like(1, 8, 2, dtype=gate_dtype)
    return (*qkv, beta, gate, cuda_like(2, 16, 16, dtype=h0_dtype))


@pytest.mark.parametrize("mode,expected", [(None, True), ("1", True), ("0", False)])
def test_switch_on_cuda_inputs(mode, expected, monkeypatch):
    if mode is None:
        monkeypatch.delenv("FLA_COMPILE_TRITON", raising=False)
    else:
        monkeypatch.setenv("FLA_COMPILE_TRITON", mode)
    assert delta_dispatch._use_triton(*delta_inputs()) is expected
    q, k, v, _, g, h0 = delta_inputs()
    assert gla_triton_enabled(q, k, v, g, h0) is expected


@pytest.mark.parametrize("which", ["q", "beta", "gate", "initial_state"])
def test_float64_takes_the_torch_path(which, monkeypatch):
    """A float64 operand anywhere (verification probes on CUDA) never reaches the kernels."""
    monkeypatch.delenv("FLA_COMPILE_TRITON", raising=False)
    kw = {"q": "dtype", "beta": "beta_dtype", "gate": "gate_dtype", "initial_state": "h0_dtype"}[which]
    xs = delta_inputs(**{kw: torch.float64})
    assert not delta_dispatch._use_triton(*xs)
    q, k, v, beta, g, h0 = xs
    if which != "beta":  # the GLA line has no beta
        assert not gla_triton_enabled(q, k, v, g, h0)


BF16, FP32 = torch.bfloat16, torch.float32


def _takes(line, K, V, dtype):
    """Whether ``line``'s kernels take q, k of head dim K and v of head dim V in ``dtype`` on CUDA."""
    qk, v = cuda_like(1, 8, 2, K, dtype=dtype), cuda_like(1, 8, 2, V, dtype=dtype)
    if line == "gla":
        return gla_triton_enabled(qk, qk, v)
    beta, gate = cuda_like(1, 8, 2, dtype=dtype), cuda_like(1, 8, 2, dtype=FP32)
    return delta_dispatch._use_triton(qk, qk, v, beta, gate, None)


@pytest.mark.parametrize(
    "line,K,V,dtype,expected",
    # the GLA line: K and V up to 512 in half precision (the GLA and RetNet papers' 256 x 512 heads, checked against
    # fp64 and timed on the H200), fp32 up to 256 (past it the kernels' exact dots were not timed against the torch
    # path)
    [("gla", 256, 512, BF16, True), ("gla", 512, 512, BF16, True), ("gla", 273, 64, torch.float16, True),
     ("gla", 513, 64, BF16, False), ("gla", 64, 513, BF16, False), ("gla", 256, 256, FP32, True),
     ("gla", 256, 512, FP32, False), ("gla", 273, 64, FP32, False)]
    # the delta line: K up to 256 (the whole K in one block: Gated DeltaNet's 256 x 512 heads, checked against fp64
    # and timed on the H200) and V up to 512 (tiled) in half precision, fp32 up to 128
    + [("delta", 256, 512, BF16, True), ("delta", 128, 128, FP32, True), ("delta", 256, 512, torch.float16, True),
       ("delta", 257, 64, BF16, False), ("delta", 64, 513, BF16, False), ("delta", 512, 512, BF16, False),
       ("delta", 256, 512, FP32, False), ("delta", 128, 129, FP32, False)],
)  # fmt: skip
def test_head_dims(line, K, V, dtype, expected, monkeypatch):
    """Each line's kernels take the head dims they were checked at; larger heads take the torch path."""
    monkeypatch.delenv("FLA_COMPILE_TRITON", raising=False)
    assert _takes(line, K, V, dtype) is expected


def test_cpu_tensors_take_the_torch_path_unless_interpreting(monkeypatch):
    q = torch.zeros(1, 8, 2, 16)
    args = (q, q, q, q[..., 0], None, None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for mode, expected in [("1", False), ("0", False), ("interpret", True)]:
        monkeypatch.setenv("FLA_COMPILE_TRITON", mode)
        assert delta_dispatch._use_triton(*args) is expected, mode
        assert gla_triton_enabled(q, q, q) is expected, mode


@pytest.mark.parametrize("mode", ["interpret", "0"])
@pytest.mark.parametrize("T", [4, 40], ids=["decode", "chunked"])
def test_delta_ops_follow_the_switch(mode, T, monkeypatch):
    """Through the public op: the forward and the backward go where the switch says."""
    from fla_compile import ops
    from fla_compile.lowering.delta import triton_launch as delta_triton

    calls = []

    def recorder(name, real):
        def run(*a, **kw):
            calls.append(name)
            return real(*a, **kw)

        return run

    real = delta_dispatch.delta_line_forward

    def torch_forward(q, k, v, beta, gate, gate_kind, scale, h0, cu, l2, **kw):
        return real(q, k, v, beta, gate, gate_kind, scale, h0, cu, l2)

    # the kernels stand in as the torch path, recorded: only the choice is under test
    monkeypatch.setattr(delta_triton, "fused_recurrent", recorder("triton", torch_forward))
    monkeypatch.setattr(delta_triton, "chunk_forward", recorder("triton", torch_forward))
    monkeypatch.setattr(
        delta_triton, "chunk_backward", lambda q, k, v, beta, g, *a, **kw: calls.append("triton_bwd") or (
            torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), torch.zeros_like(beta),
            torch.zeros_like(g), None)
    )  # fmt: skip
    monkeypatch.setattr(delta_dispatch, "delta_line_forward", recorder("torch", real))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("FLA_COMPILE_TRITON", mode)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, T, 2, 8, generator=gen, requires_grad=True) for _ in range(3))
    g = (-torch.rand(1, T, 2, generator=gen)).requires_grad_()
    beta = torch.rand(1, T, 2, generator=gen).requires_grad_()
    o, _ = ops.gated_delta_rule(q, k, v, g, beta)
    o.sum().backward()
    if mode == "0":
        assert calls == ["torch", "torch"], calls  # forward, then the backward's recompute
    else:
        assert calls == ["triton", "triton_bwd"], calls


@pytest.mark.parametrize("learned", [True, False], ids=["learned-decay", "fixed-decay"])
def test_gla_kernels_told_whether_the_gate_takes_a_gradient(learned, monkeypatch):
    """Through the public op: the Triton backward hears ``need_dgate`` from autograd (a fixed decay: False, so the
    dq/dk kernel skips the gate gradient), and the op gives the decay a gradient exactly when it asked for one."""
    from fla_compile import ops
    from fla_compile.lowering.gla import triton_launch as gla_triton

    heard = []

    def backward(q, k, v, gate, kind, scale, h0, cu, do, dht, A=None, bonus=None, need_dgate=True):
        heard.append(need_dgate)
        return (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v),
                torch.zeros_like(gate) if need_dgate else None, None)  # fmt: skip

    monkeypatch.setattr(gla_triton, "chunk_backward", backward)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("FLA_COMPILE_TRITON", "interpret")
    state = torch.zeros(1, 2, 8, 8)
    monkeypatch.setattr(gla_triton, "forward", lambda q, k, v, *a, **kw: (torch.zeros_like(v), state))
    q, k, v = (torch.randn(1, 40, 2, 8, requires_grad=True) for _ in range(3))
    decay = torch.tensor([-0.1, -0.5], requires_grad=learned)
    o, _ = ops.retention(q, k, v, decay)
    o.sum().backward()
    assert heard == [learned]
    assert (decay.grad is not None) == learned


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["1", "0"])
@pytest.mark.parametrize("family", ["gla", "gated_delta_rule"])
def test_switch_on_cuda(family, mode, monkeypatch):
    """On real CUDA tensors: '0' never enters a Triton launcher (they raise here), '1' does."""
    from fla_compile import ops
    from fla_compile.lowering.delta import triton_launch as delta_triton
    from fla_compile.lowering.gla import triton_launch as gla_triton

    entered = []
    module = gla_triton if family == "gla" else delta_triton
    names = ["forward", "chunk_backward"] if family == "gla" else ["fused_recurrent", "chunk_forward", "chunk_backward"]
    for name in names:
        real = getattr(module, name)

        def launcher(*a, _real=real, _name=name, **kw):
            if mode == "0":
                raise AssertionError(f"{_name} ran with FLA_COMPILE_TRITON=0")
            entered.append(_name)
            return _real(*a, **kw)

        monkeypatch.setattr(module, name, launcher)
    monkeypatch.setenv("FLA_COMPILE_TRITON", mode)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 70, 2, 16, device="cuda", generator=gen, requires_grad=True) for _ in range(3))
    if family == "gla":
        gk = torch.nn.functional.logsigmoid(torch.randn(1, 70, 2, 16, device="cuda", generator=gen)).requires_grad_()
        o, _ = ops.gla(q, k, v, gk)
    else:
        g = (-torch.rand(1, 70, 2, device="cuda", generator=gen)).requires_grad_()
        beta = torch.rand(1, 70, 2, device="cuda", generator=gen).requires_grad_()
        o, _ = ops.gated_delta_rule(q, k, v, g, beta)
    o.sum().backward()
    assert bool(entered) == (mode == "1"), entered


def test_fp32_dot_precision_follows_torch():
    """fp32 inputs: three tf32 products (near fp32) at torch's default "highest", tf32 tensor cores at "high" (as torch's matmuls)."""
    pytest.importorskip("triton")
    from fla_compile.lowering.common import launch

    old = torch.get_float32_matmul_precision()
    try:
        assert launch.prec(torch.float32, 128, 64) == launch.FP32_HIGHEST == "tf32x3"
        assert launch.prec(torch.float32, 16, 16) == launch.prec(torch.float32, 256, 128) == "ieee"  # unchecked dims
        assert launch.prec(torch.float32, 128, 128, split=False) == "ieee"  # a line's kernels unchecked with it
        torch.set_float32_matmul_precision("high")
        assert launch.prec(torch.float32, 16, 16) == "tf32"
        assert launch.prec(torch.bfloat16, 128, 128) == "tf32"
    finally:
        torch.set_float32_matmul_precision(old)

"""The gla op keeps its forward's intra-chunk matrix A for the backward (issue 11, item 3).

On a CPU machine the kernels run through the Triton interpreter (``FLA_COMPILE_TRITON=interpret``),
at T = 70 so the chunked path runs, with BT = 16 / 32 configs. Checked: gradients against the float64
reference loop; the backward launches no A kernel when the forward's A is kept; an A kept for another
chunk size (or no longer tagged) is recomputed, never used; opcheck, fake shapes (without tuning or
CUDA), torch.compile(fullgraph=True) and export through the op.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not INTERPRET:
    pytest.skip("interpreter tests (the CUDA ones are in test_gla_triton_gpu.py)", allow_module_level=True)
if type(triton.language.standard.cdiv).__name__ != "InterpretedFunction":
    pytest.skip(
        "triton was imported before TRITON_INTERPRET was set; see test_gla_triton_child.py", allow_module_level=True
    )

import fla_compile.ops as ops  # noqa: E402
from fla_compile.lowering.common import autotune  # noqa: E402
from fla_compile.lowering.gla import triton_launch as gla_triton  # noqa: E402
from fla_compile.reference import gla as reference  # noqa: E402
from tests.compare import rel  # noqa: E402

CFG16 = {"BT": 16, "BK": 16, "BV": 16, "num_warps": 4, "num_stages": 1}
CFG32 = dict(CFG16, BT=32)


@pytest.fixture
def kernels(monkeypatch):
    """The ops run the kernels on CPU tensors; ``kernels.configs`` is the list of configs handed out by
    get_config, one per call (the last one repeats); ``kernels.A_calls`` counts launches of the A kernel."""

    class State:
        configs = [CFG16]
        A_calls = 0
        served = []

    monkeypatch.setenv("FLA_COMPILE_TRITON", "interpret")

    def get_config(kernel, *args, **kw):
        cfg = State.configs[min(len(State.served), len(State.configs) - 1)]
        State.served.append(cfg["BT"])
        return cfg

    monkeypatch.setattr(autotune, "get_config", get_config)
    real_A = gla_triton._gla_A

    def counted_A(*args, **kw):
        State.A_calls += 1
        return real_A(*args, **kw)

    monkeypatch.setattr(gla_triton, "_gla_A", counted_A)
    return State


def make(T=70, B=1, H=2, HK=1, K=16, V=32, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*s):
        return torch.randn(*s, generator=gen)

    q, k, v = rnd(B, T, HK, K), rnd(B, T, HK, K), rnd(B, T, H, V)
    g = F.logsigmoid(rnd(B, T, H, K) + 1)
    h0 = rnd(B, H, K, V)
    do, dht = rnd(B, T, H, V), rnd(B, H, K, V)
    return [x.to(dtype) for x in (q, k, v)] + [g, h0, do, dht]


def grads(fn, q, k, v, g, h0, do, dht):
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, g, h0)]
    o, ht = fn(*leaves)
    torch.autograd.backward((o, ht), (do.to(o.dtype), dht.to(ht.dtype)))
    return [o, ht, *[x.grad for x in leaves]]


def op(q, k, v, g, h0):
    return ops.gla(q, k, v, g, scale=0.25, initial_state=h0, output_final_state=True)


def ref_loop(q, k, v, g, h0):  # the fp64 time loop; q and k have fewer heads (GQA)
    return reference.gla(q, k, v, gk=g, scale=0.25, initial_state=h0, output_final_state=True)


def check_against_reference(got, args, tol=1e-5):
    want = grads(ref_loop, *[x.double() for x in args])
    for name, a, b in zip(["o", "ht", "dq", "dk", "dv", "dg", "dh0"], got, want):
        assert torch.isfinite(a).all(), name
        assert rel(a, b) < tol, f"{name}: relative error {rel(a, b):.2e}"


@pytest.mark.parametrize("BT", [16, 32])
def test_backward_reuses_A(kernels, BT):
    """(a) gradients equal the fp64 loop; (b) one A kernel per forward+backward: the forward's."""
    kernels.configs = [dict(CFG16, BT=BT)]
    args = make()
    got = grads(op, *args)
    assert kernels.served == [BT, BT]  # forward, backward: same chunk size
    assert kernels.A_calls == 1
    check_against_reference(got, args)


def test_mismatched_A_is_recomputed(kernels):
    """(c) A kept for BT = 16, backward with BT = 32: recomputed (two A kernels), gradients still right."""
    kernels.configs = [CFG16, CFG32]
    args = make()
    got = grads(op, *args)
    assert kernels.served == [16, 32]
    assert kernels.A_calls == 2
    check_against_reference(got, args)


def test_chunk_level_reuse_is_bitwise_and_mismatch_never_read(kernels):
    """Reusing the kept A gives the recomputing backward's results bit for bit; a kept A of another
    chunk size, even one full of NaN, is not read; a copy (no tag) is recomputed."""
    q, k, v, g, h0, do, dht = make()
    A = gla_triton.saved_A_like(q, v)
    gla_triton.forward(q, k, v, g, "vector", 0.25, h0, None, A_out=A)
    assert kernels.A_calls == 1 and gla_triton.saved_A_valid(A, 1, 70, 2, 16, v.dtype, v.device)

    def bwd(A, config=CFG16):
        return gla_triton.chunk_backward(q, k, v, g, "vector", 0.25, h0, None, do, dht, config=config, A=A)

    fresh = bwd(None)
    assert kernels.A_calls == 2
    reused = bwd(A)
    assert kernels.A_calls == 2  # not recomputed
    for a, b in zip(reused, fresh):
        assert torch.equal(a, b)
    poisoned = A.clone().fill_(float("nan"))
    setattr(poisoned, gla_triton._A_TAG, 16)
    assert not torch.isfinite(bwd(poisoned)[2]).all()  # same BT: the tag is what makes it read (dv reads A)
    other = bwd(None, CFG32)
    for A_other in (A, poisoned):  # tagged for BT = 16, backward with BT = 32
        for a, b in zip(bwd(A_other, CFG32), other):
            assert torch.equal(a, b)
    calls = kernels.A_calls
    bwd(A.clone())  # a copy carries no tag
    assert kernels.A_calls == calls + 1


def test_decode_length_has_no_A(kernels):
    """T <= DECODE_MAX_T: the fused recurrent forward writes no A; the backward computes it."""
    args = make(T=40)
    got = grads(op, *args)
    assert kernels.A_calls == 1  # the backward's
    check_against_reference(got, args)


def test_torch_path_keeps_an_empty_tensor(monkeypatch):
    monkeypatch.setenv("FLA_COMPILE_TRITON", "0")
    q, k, v, g, h0, do, dht = make()
    o, ht, A = torch.ops.fla_compile.gla(q, k, v, g, 0.25, h0, None)
    assert A.shape == (0,)
    check_against_reference(grads(op, q, k, v, g, h0, do, dht), (q, k, v, g, h0, do, dht))


def test_fake_shapes_without_tuning_or_cuda(monkeypatch):
    """The fake impl gives A's shape from the inputs only: [B, T, H, 64] in v's dtype where the kernels would
    run (CUDA tensors; CPU ones in interpret mode), an empty tensor elsewhere. No config is asked for."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    def no_config(*a, **k):
        raise AssertionError("the fake impl must not ask for a config")

    monkeypatch.setattr(autotune, "get_config", no_config)

    def fake_A(device, dtype=torch.bfloat16):
        with FakeTensorMode():
            q, k = (torch.empty(2, 300, 2, 16, device=device, dtype=dtype) for _ in range(2))
            v = torch.empty(2, 300, 4, 32, device=device, dtype=dtype)
            g = torch.empty(2, 300, 4, 16, device=device)
            o, ht, A = torch.ops.fla_compile.gla(q, k, v, g, 0.25, None, None)
            return tuple(A.shape), A.dtype

    monkeypatch.setenv("FLA_COMPILE_TRITON", "1")
    assert fake_A("cuda") == ((2, 300, 4, 64), torch.bfloat16)
    assert fake_A("cpu") == ((0,), torch.bfloat16)
    monkeypatch.setenv("FLA_COMPILE_TRITON", "interpret")
    assert fake_A("cpu", torch.float32) == ((2, 300, 4, 64), torch.float32)
    monkeypatch.setenv("FLA_COMPILE_TRITON", "0")
    assert fake_A("cuda") == ((0,), torch.bfloat16)


@pytest.mark.parametrize("T", [70, 40], ids=["chunked", "decode"])
def test_opcheck(kernels, T):
    q, k, v, g, h0, _, _ = make(T=T)
    args = [x.requires_grad_() for x in (q, k, v, g, h0)]
    torch.library.opcheck(torch.ops.fla_compile.gla.default, (*args[:4], 0.25, args[4], None))


def test_compile_fullgraph_and_export_reuse_A(kernels):
    """Through torch.compile(fullgraph=True) the backward still reuses the forward's A; export sees the
    same outputs as a call."""
    args = make()
    eager = grads(op, *args)
    assert kernels.A_calls == 1
    compiled = torch.compile(op, backend="aot_eager", fullgraph=True)
    got = grads(compiled, *args)
    assert kernels.A_calls == 2  # one more forward, no backward A
    for a, b in zip(got, eager):
        assert torch.equal(a, b)

    class M(torch.nn.Module):
        def forward(self, q, k, v, g, h0):
            return torch.ops.fla_compile.gla(q, k, v, g, 0.25, h0, None)

    ep = torch.export.export(M(), tuple(args[:5]))
    outs = ep.module()(*args[:5])
    assert tuple(outs[2].shape) == (1, 70, 2, 64) and torch.equal(outs[0], eager[0])


@pytest.mark.parametrize("family", ["gla", "delta_rule"])
def test_no_grad_direct_call_keeps_nothing_and_equals_the_op(kernels, family):
    """Without a gradient the public op runs the implementation directly and makes no saved buffer (gla's A,
    the delta ops' X): the same outputs, bit for bit, as the op, which fills one."""
    q, k, v, g, h0, _, _ = make(HK=2)
    gates = (g,) if family == "gla" else (torch.rand(1, 70, 2, generator=torch.Generator().manual_seed(1)),)
    flags = () if family == "gla" else (False,)
    with torch.no_grad():
        o, ht = getattr(ops, family)(q, k, v, *gates, scale=0.25, initial_state=h0, output_final_state=True)
        o_op, ht_op, saved = getattr(torch.ops.fla_compile, family)(q, k, v, *gates, 0.25, h0, None, *flags)
    assert saved.numel() > 0  # the op kept its buffer; the direct call made none
    assert torch.equal(o, o_op) and torch.equal(ht, ht_op)

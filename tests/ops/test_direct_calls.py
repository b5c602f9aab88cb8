"""Eager calls run the ops' implementations directly (``_library.call``): the same outputs and gradients as
through the dispatcher, bit for bit, and the op itself wherever something must see it (modes, fake tensors)."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from fla_compile import ops
from fla_compile.ops import _library


def _inputs(family, seed=0):
    gen = torch.Generator().manual_seed(seed)
    B, T, H, D = 2, 11, 2, 4

    def r(*shape, gate=False):
        x = torch.randn(*shape, generator=gen)
        return (F.logsigmoid(x) if gate else x).requires_grad_()

    if family == "hgrn":
        return (r(B, T, D), r(B, T, D, gate=True), r(B, D))
    if family == "mamba":  # x, dt, A, B, C; the initial state [B, D, N] goes by keyword
        return (r(B, T, D), F.softplus(r(B, T, D)), -r(D, 3).exp(), r(B, T, 3), r(B, T, 3), r(B, D, 3))
    q, k, v, h0 = r(B, T, H, D), r(B, T, H, D), r(B, T, H, D), r(B, H, D, D)
    beta = torch.rand(B, T, H, generator=gen).requires_grad_()
    if family == "gla":
        return (q, k, v, r(B, T, H, D, gate=True), None, h0)
    if family == "simple_gla":
        return (q, k, v, r(B, T, H, gate=True), None, h0)
    if family == "delta_rule":
        return (q, k, v, beta, None, h0)
    return (q, k, v, r(B, T, H, gate=True), beta, None, h0)  # gated_delta_rule


FAMILIES = ["hgrn", "mamba", "gla", "simple_gla", "delta_rule", "gated_delta_rule"]


def _run(family, xs, use_state):
    if family == "mamba":
        o, ht = ops.mamba(*xs[:5], initial_state=xs[5], output_final_state=True)
    else:
        o, ht = getattr(ops, family)(*xs, output_final_state=True)
    loss = (o * torch.linspace(-1, 1, o.shape[-1])).sum() + (ht.square().sum() if use_state else 0)
    wrt = [x for x in xs if isinstance(x, torch.Tensor)]
    return [o, ht, *torch.autograd.grad(loss, wrt)], type(o.grad_fn).__name__


@pytest.mark.parametrize("use_state", [False, True], ids=["o_only", "o_and_state"])
@pytest.mark.parametrize("family", FAMILIES)
def test_direct_equals_op(family, use_state, monkeypatch):
    xs = _inputs(family)
    direct, node = _run(family, xs, use_state)
    assert "direct" in node.lower(), node  # the eager call skipped the dispatcher
    monkeypatch.setattr(_library, "eager_ok", lambda *args: False)  # every call through the op, as before
    via_op, node = _run(family, xs, use_state)
    assert "GeneratedBackwardFor_fla_compile" in node, node
    for a, b in zip(direct, via_op):
        assert torch.equal(a, b)


def test_no_grad_call_and_state_only_gradient():
    x, g, h0 = _inputs("hgrn")
    with torch.no_grad():
        o, ht = ops.hgrn(x, g, h0, output_final_state=True)
    assert o.grad_fn is None and ht.grad_fn is None
    _, ht = ops.hgrn(x, g, h0, output_final_state=True)  # do is None in the backward: zeros are made for it
    dx, dg, dh0 = torch.autograd.grad(ht.sum(), (x, g, h0))
    assert dx[:, -1].eq(1).all() and torch.isfinite(dg).all() and torch.isfinite(dh0).all()


class _Seen(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("family", ["hgrn", "gla"])
def test_modes_profiler_and_fake_tensors_see_the_op(family):
    xs = _inputs(family)
    with _Seen() as seen:
        getattr(ops, family)(*xs)
    assert f"fla_compile.{family}.default" in seen.ops
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        getattr(ops, family)(*xs)
    assert f"fla_compile::{family}" in [e.name for e in prof.events()]  # a trace still names the op
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in xs]
        o, _ = getattr(ops, family)(*fake)
    assert type(o).__name__ == "FakeTensor" and o.shape == xs[2 if family != "hgrn" else 0].shape


@pytest.mark.parametrize("family", FAMILIES)
def test_backward_op_without_dht_equals_zeros(family):
    """dht None (the final state took no gradient) gives what zeros gave, without making them."""
    xs = [x.detach() if isinstance(x, torch.Tensor) else x for x in _inputs(family)]
    if family == "hgrn":
        x, g, h0 = xs
        o, ht = torch.ops.fla_compile.hgrn(x, g, h0, None)
        args, extra = (x, g, h0, None, o, torch.randn_like(o)), ()
    elif family == "mamba":
        o, ht = torch.ops.fla_compile.mamba(*xs, None)
        args, extra = (*xs, None, torch.randn_like(o)), ()
    else:
        scale = xs[0].shape[-1] ** -0.5
        gates, h0 = [x for x in xs[3:-1] if x is not None], xs[-1]
        flags = (False,) if "delta" in family else ()
        o, ht, *extra = getattr(torch.ops.fla_compile, family)(*xs[:3], *gates, scale, h0, None, *flags)
        args = (*xs[:3], *gates, scale, h0, None, *flags, torch.randn_like(o))
    bwd = getattr(torch.ops.fla_compile, f"{family}_bwd")
    for a, b in zip(bwd(*args, None, *extra), bwd(*args, torch.zeros_like(ht), *extra)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_parameters_take_the_direct_path():
    """An nn.Parameter input (mamba's A, rwkv6's u in a model) is a plain tensor to the op: no detour."""
    x, dt, A, B, C, _ = _inputs("mamba")
    A = torch.nn.Parameter(A.detach())
    y, _ = ops.mamba(x, dt, A, B, C)
    assert "direct" in type(y.grad_fn).__name__.lower()
    (dA,) = torch.autograd.grad(y.sum(), A)
    assert dA.shape == A.shape and torch.isfinite(dA).all()


def test_forward_ad_takes_the_op():
    """Under forward-mode AD the op handles dual tensors as it always did (no tangent through our Python)."""
    import torch.autograd.forward_ad as fwAD

    x, g, _ = [t.detach() for t in _inputs("hgrn")]
    with fwAD.dual_level():
        o, _ = ops.hgrn(fwAD.make_dual(x, torch.ones_like(x)), g)
        via_op, _ = torch.ops.fla_compile.hgrn(fwAD.make_dual(x, torch.ones_like(x)), g, None, None)
        assert (fwAD.unpack_dual(o).tangent is None) == (fwAD.unpack_dual(via_op).tangent is None)

"""The elementwise scan op: hgrn, h_t = exp(g_t) * h_{t-1} + x_t, o_t = h_t.

Its state is a vector per sequence, not a K x V matrix, so it has its own schema beside the
``OpSpec`` table of the matrix families (``_library.py``):

    hgrn(Tensor x, Tensor g, Tensor? initial_state, Tensor? cu_seqlens) -> (Tensor o, Tensor final_state)
    hgrn_bwd(<same inputs>, Tensor o, Tensor do, Tensor? dht) -> (dx, dg, dh0)

with fake impls and the backward registered as the forward's autograd formula (an opaque op too).
The backward reads the forward's output o (the states h_t), which autograd keeps: dg_t = dh_t h_{t-1}
exp(g_t) needs h_{t-1}, and recomputing it would cost a second forward. ``dht`` None: the final state took
no gradient (the usual case: only o is used), read as zeros without making them (the kernels skip the load).
"""

from __future__ import annotations

import torch

from ..lowering import FAMILIES
from ._checks import FLOAT_DTYPES, _name, check_cu_seqlens, fail
from ._library import LIB, backward_call, call, cast, register_direct, state_dtype

_HGRN = FAMILIES["hgrn"]
_INPUTS = "Tensor x, Tensor g, Tensor? initial_state, Tensor? cu_seqlens"
LIB.define(f"hgrn({_INPUTS}) -> (Tensor, Tensor)")
LIB.define(f"hgrn_bwd({_INPUTS}, Tensor o, Tensor do, Tensor? dht) -> Tensor[]")


def _n_states(x, cu):
    return x.shape[0] if cu is None else cu.shape[0] - 1


def _fwd_impl(x, g, h0, cu):
    if cu is not None and type(cu) is torch.Tensor and cu.device.type == "cpu":  # free on the CPU: see _checks
        check_cu_seqlens("hgrn", cu, x.shape[0], x.shape[1], cu.device, read_values=True)
    if x.shape[0] == 0 or x.shape[1] == 0:  # no step: the initial state (or zeros) passes through
        N, D = _n_states(x, cu), x.shape[-1]
        ht = h0.to(state_dtype(x), copy=True) if h0 is not None else x.new_zeros(N, D, dtype=state_dtype(x))
        return x.new_empty(x.shape), ht.contiguous()
    o, ht = _HGRN.forward(x, g, h0, cu)
    return o.contiguous(), cast(ht, state_dtype(x))


def _fwd_fake(x, g, h0, cu):
    return x.new_empty(x.shape), x.new_empty(_n_states(x, cu), x.shape[-1], dtype=state_dtype(x))


def _bwd_impl(x, g, h0, cu, o, do, dht):
    dense = torch.contiguous_format
    if x.shape[0] == 0 or x.shape[1] == 0:
        dh0 = x.new_empty(0)
        if h0 is not None:
            dh0 = (
                torch.zeros_like(h0, memory_format=dense)
                if dht is None
                else dht.to(h0.dtype, memory_format=dense, copy=True)
            )
        return [torch.zeros_like(x, memory_format=dense), torch.zeros_like(g, memory_format=dense), dh0]
    dx, dg, dh0 = _HGRN.backward(x, g, h0, cu, o, do, dht)
    dh0 = cast(dh0, h0.dtype) if h0 is not None else x.new_empty(0)
    return [cast(dx, x.dtype), cast(dg, g.dtype), dh0]


def _bwd_fake(x, g, h0, cu, o, do, dht):
    dense = torch.contiguous_format
    dh0 = torch.empty_like(h0, memory_format=dense) if h0 is not None else x.new_empty(0)
    return [torch.empty_like(x, memory_format=dense), torch.empty_like(g, memory_format=dense), dh0]


LIB.impl("hgrn", _fwd_impl, "CompositeExplicitAutograd")
LIB.impl("hgrn_bwd", _bwd_impl, "CompositeExplicitAutograd")
torch.library.register_fake("fla_compile::hgrn", _fwd_fake, lib=LIB)
torch.library.register_fake("fla_compile::hgrn_bwd", _bwd_fake, lib=LIB)


def _setup_context(ctx, inputs, output):
    x, g, h0, cu = inputs
    ctx.has_h0 = h0 is not None
    ctx.set_materialize_grads(False)  # an unused final state gets no zeros: dht None (the kernels skip it)
    ctx.save_for_backward(x, g, h0, cu, output[0])


def _backward(ctx, do, dht):
    x, g, h0, cu, o = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(o)
    dx, dg, dh0 = backward_call(_bwd_impl, torch.ops.fla_compile.hgrn_bwd, (x, g, h0, cu, o, do, dht))
    return dx, dg, dh0 if ctx.has_h0 else None, None


torch.library.register_autograd("fla_compile::hgrn", _backward, setup_context=_setup_context, lib=LIB)


register_direct("hgrn", _fwd_impl, _setup_context, _backward)


def hgrn(x, g, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Elementwise gated recurrence (HGRN, RG-LRU, LRU-style diagonal scans):
    h_t = exp(g_t) * h_{t-1} + x_t over each channel, o_t = h_t.

    Args:
        x: [B, T, D] float32, bfloat16, float16 or float64 (heads folded into D). Any strides.
        g: [B, T, D] log-space decay (a decay a_t in [0, 1] is g_t = log a_t; -inf resets), in x's dtype
            or float32.
        initial_state: [N, D], any float dtype (N = B, or the number of packed sequences).
        output_final_state: also return the state after the last step.
        cu_seqlens: int32/int64 [N + 1] offsets of packed sequences, non-decreasing from 0 to T; B must be 1.

    Returns:
        ``(o, final_state)``: o [B, T, D] in x's dtype; final_state [N, D] float32 (float64 for float64
        inputs), or None unless ``output_final_state``.

    Raises:
        ValueError: ``fla_compile.hgrn: ...`` naming the argument, for a wrong shape, dtype or device.
    """
    for name, t in (("x", x), ("g", g)):
        if not isinstance(t, torch.Tensor):
            fail("hgrn", f"{name} must be a tensor [B, T, D], got {type(t).__name__}")
        if t.dim() != 3:
            fail("hgrn", f"{name} must be [B, T, D] (3 dims; fold heads into D), got shape {tuple(t.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        fail("hgrn", f"x must be float32, bfloat16, float16 or float64, got {x.dtype}")
    if g.shape != x.shape:
        fail("hgrn", f"g must have x's shape [B, T, D] = {tuple(x.shape)}, got {tuple(g.shape)}")
    if g.dtype not in (x.dtype, torch.float32):
        fail("hgrn", f"g is {_name(g.dtype)} but x is {_name(x.dtype)}: g must be {_name(x.dtype)} or float32")
    if g.device != x.device:
        fail("hgrn", f"g is on {g.device} but x is on {x.device}")
    if cu_seqlens is not None:
        check_cu_seqlens("hgrn", cu_seqlens, x.shape[0], x.shape[1], x.device)
    if initial_state is not None:
        N, D = _n_states(x, cu_seqlens), x.shape[-1]
        if not isinstance(initial_state, torch.Tensor) or not initial_state.is_floating_point():
            fail("hgrn", f"initial_state must be a float tensor [N, D] = {(N, D)} or None")
        if tuple(initial_state.shape) != (N, D):
            fail("hgrn", f"initial_state must be [N, D] = {(N, D)}, got {tuple(initial_state.shape)}")
        if initial_state.device != x.device:
            fail("hgrn", f"initial_state is on {initial_state.device} but x is on {x.device}")
    o, ht = call("hgrn", x, g, initial_state, cu_seqlens)
    return o, (ht if output_final_state else None)


class _DecayScan(torch.autograd.Function):
    """h_t = a_t h_{t-1} + x_t with the decay a >= 0 given as a value (a probability, RG-LRU's a_t),
    not its log. The forward is the op on log(a) (a = 0, a reset, is g = -inf: exact); the gradient of a
    is dh_t h_{t-1}, taken from the op's dx (= dh_t) and output, which stays finite where a = 0 (the chain
    through log, dg / a, would give 0 / 0 there)."""

    @staticmethod
    def forward(x, a, h0):
        return torch.ops.fla_compile.hgrn(x, a.log(), h0, None)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, a, h0 = inputs
        ctx.has_h0 = h0 is not None
        ctx.save_for_backward(x, a, h0, output[0])

    @staticmethod
    def backward(ctx, do, dht):
        x, a, h0, o = ctx.saved_tensors
        B, T, D = x.shape
        if do is None:
            do = torch.zeros_like(o)
        dx, _, dh0 = torch.ops.fla_compile.hgrn_bwd(x, a.log(), h0, None, o, do, dht)
        first = h0.to(o.dtype) if h0 is not None else o.new_zeros(B, D)
        hprev = torch.cat([first[:, None], o], 1)[:, :T]
        return dx, (dx.to(a.dtype) * hprev.to(a.dtype)), dh0 if ctx.has_h0 else None


def hgrn_decay(x, a, initial_state=None):
    """(o, final state) of h_t = a_t h_{t-1} + x_t over [B, T, D], the decay ``a`` >= 0 given as a value
    (fp32 or fp64) rather than a log-gate: what a loop writing its decay as a plain tensor lowers to.
    A negative decay has no log-space gate: it stops with an error (checked on the device, no sync)."""
    torch._assert_async(
        (a >= 0).all(),
        "fla_compile: this loop's decay is lowered through its log, and at run time it holds a negative value, "
        "which the hgrn op cannot represent; compile this loop without backend='fla'",
    )
    return _DecayScan.apply(x, a, initial_state)

"""Mamba's selective scan as an op: ``mamba``, h_t = exp(dt_t A) * h_{t-1} + u_t B_t^T, y_t = h_t C_t.

    mamba(Tensor u, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? initial_state, Tensor? cu_seqlens)
        -> (Tensor y, Tensor final_state)
    mamba_bwd(<same inputs>, Tensor do, Tensor dht) -> (du, ddt, dA, dB, dC, dh0)

u = dt * x is the input already scaled by the step size; the public :func:`mamba` applies dt's bias and
softplus, the skip D x and the z gate around the op (elementwise work Inductor fuses), so the opaque op
is the recurrence only. On CUDA both directions are chunked Triton scans for T >= 64 and N <= 64
(``lowering/scan/triton_chunk_selective_vec.py``, N padded to a power of two) and fused walks for shorter
inputs or more states (``triton_scan.py``); elsewhere the torch path runs the hgrn scan over the
expanded D * N elements. Layout [B, T, D] for u, dt, y; A [D, N]; B, C [B, T, N] (one group); the state
[N_seq, D, N] fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..lowering import FAMILIES
from ._checks import FLOAT_DTYPES, check_cu_seqlens, fail
from ._library import LIB, backward_call, call, cast, register_direct, state_dtype

_MAMBA = FAMILIES["mamba"]
_INPUTS = "Tensor u, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? initial_state, Tensor? cu_seqlens"
LIB.define(f"mamba({_INPUTS}) -> (Tensor, Tensor)")
LIB.define(f"mamba_bwd({_INPUTS}, Tensor do, Tensor? dht) -> Tensor[]")  # dht None: no gradient, no zeros


def _n_seq(u, cu):
    return u.shape[0] if cu is None else cu.shape[0] - 1


def _fwd_impl(u, dt, A, B, C, h0, cu):
    if cu is not None and type(cu) is torch.Tensor and cu.device.type == "cpu":
        check_cu_seqlens("mamba", cu, u.shape[0], u.shape[1], cu.device, read_values=True)
    if u.shape[0] == 0 or u.shape[1] == 0:
        shape = (_n_seq(u, cu), u.shape[-1], A.shape[-1])
        ht = h0.to(state_dtype(u), copy=True) if h0 is not None else u.new_zeros(shape, dtype=state_dtype(u))
        return u.new_empty(u.shape), ht.contiguous()
    y, ht = _MAMBA.forward(u, dt, A, B, C, h0, cu)
    return y.contiguous(), cast(ht, state_dtype(u))


def _fwd_fake(u, dt, A, B, C, h0, cu):
    return u.new_empty(u.shape), u.new_empty(_n_seq(u, cu), u.shape[-1], A.shape[-1], dtype=state_dtype(u))


def _bwd_impl(u, dt, A, B, C, h0, cu, do, dht):
    inputs = (u, dt, A, B, C)
    if u.shape[0] == 0 or u.shape[1] == 0:
        grads = [torch.zeros_like(x, memory_format=torch.contiguous_format) for x in inputs]
        if h0 is None:
            return grads + [u.new_empty(0)]
        return grads + [torch.zeros_like(h0) if dht is None else dht.to(h0.dtype, copy=True)]
    *grads, dh0 = _MAMBA.backward(u, dt, A, B, C, h0, cu, do, dht)
    out = [cast(g, x.dtype) for g, x in zip(grads, inputs)]
    return out + [cast(dh0, h0.dtype) if h0 is not None else u.new_empty(0)]


def _bwd_fake(u, dt, A, B, C, h0, cu, do, dht):
    grads = [torch.empty_like(x, memory_format=torch.contiguous_format) for x in (u, dt, A, B, C)]
    return grads + [torch.empty_like(h0, memory_format=torch.contiguous_format) if h0 is not None else u.new_empty(0)]


LIB.impl("mamba", _fwd_impl, "CompositeExplicitAutograd")
LIB.impl("mamba_bwd", _bwd_impl, "CompositeExplicitAutograd")
torch.library.register_fake("fla_compile::mamba", _fwd_fake, lib=LIB)
torch.library.register_fake("fla_compile::mamba_bwd", _bwd_fake, lib=LIB)


def _setup_context(ctx, inputs, output):
    ctx.has_h0 = inputs[5] is not None
    ctx.set_materialize_grads(False)  # an unused final state gets no zeros: dht None (the kernels skip it)
    ctx.save_for_backward(*inputs)


def _backward(ctx, dy, dht):
    u, dt, A, B, C, h0, cu = ctx.saved_tensors
    dy = torch.zeros_like(u) if dy is None else dy
    *grads, dh0 = backward_call(_bwd_impl, torch.ops.fla_compile.mamba_bwd, (u, dt, A, B, C, h0, cu, dy, dht))
    return (*grads, dh0 if ctx.has_h0 else None, None)


torch.library.register_autograd("fla_compile::mamba", _backward, setup_context=_setup_context, lib=LIB)


register_direct("mamba", _fwd_impl, _setup_context, _backward)


def _check(u, dt, A, B, C, initial_state, cu_seqlens):
    for name, x, dims in (("x", u, "[B, T, D]"), ("dt", dt, "[B, T, D]"), ("A", A, "[D, N]"),
                          ("B", B, "[B, T, N]"), ("C", C, "[B, T, N]")):  # fmt: skip
        if not isinstance(x, torch.Tensor):
            fail("mamba", f"{name} must be a tensor {dims}, got {type(x).__name__}")
        if x.dim() != dims.count(",") + 1:
            fail("mamba", f"{name} must be {dims}, got shape {tuple(x.shape)}")
        if x.dtype not in FLOAT_DTYPES:
            fail("mamba", f"{name} must be a float tensor, got {x.dtype}")
        if x.device != u.device:
            fail("mamba", f"{name} is on {x.device} but x is on {u.device}")
    Bsz, T, D = u.shape
    N = A.shape[-1]
    if dt.shape != u.shape:
        fail("mamba", f"dt must have x's shape [B, T, D] = {tuple(u.shape)}, got {tuple(dt.shape)}")
    if A.shape[0] != D:
        fail("mamba", f"A must be [D, N] with D = {D}, got {tuple(A.shape)}")
    for name, x in (("B", B), ("C", C)):
        if tuple(x.shape) != (Bsz, T, N):
            fail("mamba", f"{name} must be [B, T, N] = {(Bsz, T, N)} (N from A), got {tuple(x.shape)}")
    if cu_seqlens is not None:
        check_cu_seqlens("mamba", cu_seqlens, Bsz, T, u.device)
    if initial_state is not None:
        shape = (_n_seq(u, cu_seqlens), D, N)
        if not isinstance(initial_state, torch.Tensor) or tuple(initial_state.shape) != shape:
            got = (
                tuple(initial_state.shape) if isinstance(initial_state, torch.Tensor) else type(initial_state).__name__
            )
            fail("mamba", f"initial_state must be a float tensor [N_seq, D, N] = {shape}, got {got}")
        if initial_state.device != u.device:
            fail("mamba", f"initial_state is on {initial_state.device} but x is on {u.device}")


def mamba(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None,
          output_final_state=False, cu_seqlens=None):  # fmt: skip
    """Mamba's selective scan (S6): per channel d and state n,
    h_t[d, n] = exp(dt_t[d] A[d, n]) h_{t-1}[d, n] + dt_t[d] x_t[d] B_t[n], y_t[d] = sum_n C_t[n] h_t[d, n]
    + D[d] x_t[d], times silu(z_t[d]) when z is given; dt is first softplus(dt + dt_bias) as asked.

    Args:
        x, dt: [B, T, D] (time before channels, unlike mamba_ssm's [B, D, T]); float dtypes.
        A: [D, N] (negative for a decay); B, C: [B, T, N], one group shared by every channel.
        D: [D] skip, z: [B, T, D] gate, dt_bias: [D]; dt_softplus: apply softplus to dt (after the bias).
        initial_state: [N_seq, D, N]; output_final_state: also return the state after the last step.
        cu_seqlens: int32/int64 [N_seq + 1] offsets of packed sequences (B must be 1).

    Returns:
        ``(y, final_state)``: y [B, T, D] in x's dtype; final_state [N_seq, D, N] float32 (float64 for
        float64 inputs), or None unless ``output_final_state``.

    Raises:
        ValueError: ``fla_compile.mamba: ...`` naming the argument, for a wrong shape, dtype or device.
    """
    _check(x, dt, A, B, C, initial_state, cu_seqlens)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    y, ht = call("mamba", dt * x, dt, A, B, C, initial_state, cu_seqlens)
    if D is not None:
        y = y + x * D.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y, (ht if output_final_state else None)

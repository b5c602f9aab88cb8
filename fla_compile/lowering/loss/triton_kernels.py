"""Triton kernel of a cross-entropy chunk's softmax and its gradient: the elementwise passes over the
[C, V] fp32 logits that the torch chunk runs as six kernels (``logsumexp``, gather, ``sub_``/``exp_``,
``scatter_add_``, smoothing ``sub_``, ``mul_``, then a cast to the weight's dtype for each of the two
products) done in one, which reads the logits twice and writes their gradient once in the weight's dtype.

One program per row, a loop over the vocabulary in blocks of ``BLOCK_V``:

1. pass 1: the running max and sum of exponentials (rescaled when the max grows) -> lse; the target's
   logit (one load); the row sum of the logits when smoothing -> the row loss
   ``lse - z_y`` (smoothing eps: ``(1 - eps) (lse - z_y) + eps (lse - mean z)``);
2. pass 2 (``GRADS``): ``dz = (exp(z - lse) - (1 - eps) [j == y] - eps / V) * scale`` stored in the
   output's dtype (bf16 / fp16 for the half products; fp32 for fp32 products, or where the caller sums
   dz's columns for a bias's gradient).

Bytes per logit: 4 + 4 read, 2 written (bf16), against ~60 for the torch chunk (``logsumexp`` alone ~24).
The bias, where given, is added on load (fp32 [V]), so the logits stay unbiased in their buffer.
Targets come clamped (ignored rows: any valid index) and ``scale`` is 0 on ignored rows; their loss is
masked by the caller. Logits of -inf (a -inf bias) count as probability 0, as in ``torch.logsumexp``.

``kl_softmax_grad_kernel`` does the same for the distillation loss KL(p_t || p_s) of tempered softmaxes
over a chunk's student and teacher logits: pass 1 the two online log-sum-exps and, rescaled with the
teacher's, sum_j e^{t_j - m_t} (t_j - s_j), so KL = sum_j p_t (t_j - s_j) - lse_t + lse_s in one read of
each; pass 2 ``dz = (p_s - p_t) * scale / T``. Teacher logits of -inf (p_t = 0) add nothing to the KL.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Launch options, read at every call: BLOCK_V logits per step of a row's loop and the warps of a program.
# Memory-bound: 4096 x 8 warps is 16 fp32 per thread per load (benchmarks/fused_loss.py --softmax-grad).
CONFIG = {"BLOCK_V": 4096, "num_warps": 8}


@triton.jit
def _lse_step(b_m, b_s, b_z):
    """One block of an online log-sum-exp: the running max and sum of e^(z - max), rescaled when the max grows
    (a row all -inf so far keeps the sum 0: exp(-inf - 0), not nan)."""
    b_new = tl.maximum(b_m, tl.max(b_z, axis=0))
    b_ref = tl.where(b_new == -float("inf"), 0.0, b_new)
    return b_new, b_s * tl.exp(b_m - b_ref) + tl.sum(tl.exp(b_z - b_ref), axis=0)


@triton.jit
def ce_softmax_grad_kernel(
    z,
    stride_z,
    bias,
    target,
    scale,
    lse,
    loss,
    dz,
    stride_dz,
    V,
    eps,
    HAS_BIAS: tl.constexpr,
    SMOOTH: tl.constexpr,
    GRADS: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    i_r = tl.program_id(0).to(tl.int64)
    p_z = z + i_r * stride_z
    o_v = tl.arange(0, BLOCK_V)
    # pass 1: online max / sum of exponentials; the row sum of the logits when smoothing
    b_m = -float("inf")
    b_s = 0.0
    b_sum = 0.0
    for v0 in range(0, V, BLOCK_V):
        o = v0 + o_v
        m_v = o < V
        # [BLOCK_V]
        b_z = tl.load(p_z + o, mask=m_v, other=-float("inf")).to(tl.float32)
        if HAS_BIAS:
            b_z += tl.load(bias + o, mask=m_v, other=0).to(tl.float32)
        b_m, b_s = _lse_step(b_m, b_s, b_z)
        if SMOOTH:
            b_sum += tl.sum(tl.where(m_v, b_z, 0.0), axis=0)
    b_lse = b_m + tl.log(b_s)
    i_y = tl.load(target + i_r)
    b_zy = tl.load(p_z + i_y).to(tl.float32)
    if HAS_BIAS:
        b_zy += tl.load(bias + i_y).to(tl.float32)
    b_loss = b_lse - b_zy
    if SMOOTH:
        b_loss = (1 - eps) * b_loss + eps * (b_lse - b_sum / V)
    tl.store(lse + i_r, b_lse)
    tl.store(loss + i_r, b_loss)
    if GRADS:
        # pass 2: the gradient of scale * loss wrt the row's logits
        b_w = tl.load(scale + i_r).to(tl.float32)
        p_dz = dz + i_r * stride_dz
        for v0 in range(0, V, BLOCK_V):
            o = v0 + o_v
            m_v = o < V
            b_z = tl.load(p_z + o, mask=m_v, other=0).to(tl.float32)
            if HAS_BIAS:
                b_z += tl.load(bias + o, mask=m_v, other=0).to(tl.float32)
            b_g = tl.exp(b_z - b_lse) - tl.where(o == i_y, 1 - eps, 0.0)
            if SMOOTH:
                b_g -= eps / V
            tl.store(p_dz + o, (b_g * b_w).to(dz.dtype.element_ty), mask=m_v)


def ce_softmax_grad(
    z: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    scale: torch.Tensor | None,
    smoothing: float,
    dz: torch.Tensor | None,
    block_v: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lse [C], row loss [C]) of the logits ``z`` [C, V] (fp32, unit column stride) plus ``bias``
    [V] against ``target`` [C] (int64, in range); with ``scale`` [C] and ``dz`` [C, V] (unit column
    stride, any float dtype), also writes into ``dz`` the gradient of sum(scale * row loss) wrt ``z``."""
    C, V = z.shape
    assert z.stride(1) == 1 and target.shape == (C,) and (dz is None) == (scale is None)
    assert dz is None or (dz.shape == (C, V) and dz.stride(1) == 1)
    lse = torch.empty(C, dtype=torch.float32, device=z.device)
    loss = torch.empty_like(lse)
    if C == 0:
        return lse, loss
    grads = dz is not None
    ce_softmax_grad_kernel[(C,)](
        z,
        z.stride(0),
        bias if bias is not None else z,
        target,
        scale if grads else lse,
        lse,
        loss,
        dz if grads else z,
        dz.stride(0) if grads else 0,
        V,
        float(smoothing),
        HAS_BIAS=bias is not None,
        SMOOTH=bool(smoothing),
        GRADS=grads,
        BLOCK_V=block_v or CONFIG["BLOCK_V"],
        num_warps=CONFIG["num_warps"],
    )
    return lse, loss


@triton.jit
def kl_softmax_grad_kernel(
    zs,
    stride_zs,
    zt,
    stride_zt,
    scale,
    loss,
    dz,
    stride_dz,
    V,
    inv_t,
    GRADS: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    i_r = tl.program_id(0).to(tl.int64)
    p_s = zs + i_r * stride_zs
    p_t = zt + i_r * stride_zt
    o_v = tl.arange(0, BLOCK_V)
    # pass 1: online log-sum-exps of s = zs / T and t = zt / T; sum e^{t - m_t} (t - s) rescaled with m_t
    b_ms = -float("inf")
    b_ss = 0.0
    b_mt = -float("inf")
    b_st = 0.0
    b_at = 0.0
    for v0 in range(0, V, BLOCK_V):
        o = v0 + o_v
        m_v = o < V
        # [BLOCK_V]
        b_s = tl.load(p_s + o, mask=m_v, other=0).to(tl.float32) * inv_t
        b_t = tl.load(p_t + o, mask=m_v, other=-float("inf")).to(tl.float32) * inv_t
        b_ms, b_ss = _lse_step(b_ms, b_ss, tl.where(m_v, b_s, -float("inf")))
        # the teacher's by hand: its rescaling also applies to the KL sum
        b_new = tl.maximum(b_mt, tl.max(b_t, axis=0))
        b_ref = tl.where(b_new == -float("inf"), 0.0, b_new)
        b_alpha = tl.exp(b_mt - b_ref)
        b_e = tl.exp(b_t - b_ref)
        b_st = b_st * b_alpha + tl.sum(b_e, axis=0)
        b_at = b_at * b_alpha + tl.sum(b_e * tl.where(b_e > 0, b_t - b_s, 0.0), axis=0)  # p_t = 0: no term
        b_mt = b_new
    b_lse_s = b_ms + tl.log(b_ss)
    b_lse_t = b_mt + tl.log(b_st)
    tl.store(loss + i_r, b_at / b_st - b_lse_t + b_lse_s)
    if GRADS:
        # pass 2: d (scale * KL) / d zs = (p_s - p_t) * scale / T
        b_w = tl.load(scale + i_r).to(tl.float32) * inv_t
        p_dz = dz + i_r * stride_dz
        for v0 in range(0, V, BLOCK_V):
            o = v0 + o_v
            m_v = o < V
            b_s = tl.load(p_s + o, mask=m_v, other=0).to(tl.float32) * inv_t
            b_t = tl.load(p_t + o, mask=m_v, other=0).to(tl.float32) * inv_t
            b_g = tl.exp(b_s - b_lse_s) - tl.exp(b_t - b_lse_t)
            tl.store(p_dz + o, (b_g * b_w).to(dz.dtype.element_ty), mask=m_v)


def kl_softmax_grad(
    zs: torch.Tensor,
    zt: torch.Tensor,
    temperature: float,
    scale: torch.Tensor | None,
    dz: torch.Tensor | None,
    block_v: int = 0,
) -> torch.Tensor:
    """Row KL(softmax(zt / T) || softmax(zs / T)) [C] of the fp32 logits ``zs``, ``zt`` [C, V] (unit
    column stride); with ``scale`` [C] and ``dz`` [C, V], also writes into ``dz`` the gradient of
    sum(scale * row KL) wrt ``zs``."""
    C, V = zs.shape
    assert zs.stride(1) == 1 and zt.shape == (C, V) and zt.stride(1) == 1 and (dz is None) == (scale is None)
    assert dz is None or (dz.shape == (C, V) and dz.stride(1) == 1)
    loss = torch.empty(C, dtype=torch.float32, device=zs.device)
    if C == 0:
        return loss
    grads = dz is not None
    kl_softmax_grad_kernel[(C,)](
        zs,
        zs.stride(0),
        zt,
        zt.stride(0),
        scale if grads else loss,
        loss,
        dz if grads else zs,
        dz.stride(0) if grads else 0,
        V,
        1.0 / temperature,
        GRADS=grads,
        BLOCK_V=block_v or CONFIG["BLOCK_V"],
        num_warps=CONFIG["num_warps"],
    )
    return loss

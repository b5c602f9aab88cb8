"""Triton kernels of the delta ops' optional L2 norm of q and k (``use_qk_l2norm``): both tensors in one launch.

In torch ops the norm is ~7 kernels per tensor forward (cast, square, sum, add, rsqrt, multiply, cast back) and
~6 more backward, each a pass over q or k and each a host launch; the backward also recomputes the forward's
norm. Here one program normalizes BR rows of q (program axis 1 = 0) or of k (= 1): the forward writes
y = x rsqrt(|x|² + 1e-6) in the kernels' dtype and r = rsqrt(.) in fp32; the backward takes x and r (y is
recomputed, x r in fp32 as the forward had it) and writes dx = r (dy - y (y . dy)) in x's dtype.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _rows(N, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """This program's rows, the mask of their [BR, BD] tile and its offsets into [N, D]."""
    o_r = tl.program_id(0) * BR + tl.arange(0, BR)
    o_d = tl.arange(0, BD)
    m = (o_r[:, None] < N) & (o_d[None, :] < D)
    return o_r, m, o_r[:, None].to(tl.int64) * D + o_d[None, :]


@triton.jit
def l2norm_qk_fwd_kernel(q, k, qn, kn, rq, rk, N, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """q, k [N, D] -> qn, kn [N, D] (their own dtype), rq, rk [N] fp32."""
    i_t = tl.program_id(1)
    o_r, m, p = _rows(N, D, BR, BD)
    if i_t == 0:
        x = tl.load(q + p, mask=m, other=0.0).to(tl.float32)
    else:
        x = tl.load(k + p, mask=m, other=0.0).to(tl.float32)
    r = tl.rsqrt(tl.sum(x * x, 1) + 1e-6)
    y = x * r[:, None]
    if i_t == 0:
        tl.store(qn + p, y.to(qn.dtype.element_ty), mask=m)
        tl.store(rq + o_r, r, mask=o_r < N)
    else:
        tl.store(kn + p, y.to(kn.dtype.element_ty), mask=m)
        tl.store(rk + o_r, r, mask=o_r < N)


@triton.jit
def l2norm_qk_bwd_kernel(
    q, k, rq, rk, dqn, dkn, dq, dk, N, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr
):  # fmt: skip
    """The gradients dqn, dkn [N, D] (fp32) of the normalized q, k -> dq, dk [N, D] (their own dtype)."""
    i_t = tl.program_id(1)
    o_r, m, p = _rows(N, D, BR, BD)
    if i_t == 0:
        x = tl.load(q + p, mask=m, other=0.0).to(tl.float32)
        r = tl.load(rq + o_r, mask=o_r < N, other=0.0)
        dy = tl.load(dqn + p, mask=m, other=0.0).to(tl.float32)
    else:
        x = tl.load(k + p, mask=m, other=0.0).to(tl.float32)
        r = tl.load(rk + o_r, mask=o_r < N, other=0.0)
        dy = tl.load(dkn + p, mask=m, other=0.0).to(tl.float32)
    y = x * r[:, None]
    dx = r[:, None] * (dy - y * tl.sum(y * dy, 1)[:, None])
    if i_t == 0:
        tl.store(dq + p, dx.to(dq.dtype.element_ty), mask=m)
    else:
        tl.store(dk + p, dx.to(dk.dtype.element_ty), mask=m)

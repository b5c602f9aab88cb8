"""The matrix product every chunk kernel calls: ``tl.dot`` at a precision, or fp32 from three tf32 products.

``prec`` is the launchers' ``launch.prec(dtype, K, V, split)``: "tf32" (half inputs; fp32 at torch's "high"),
"ieee" (exact fp32 FMA loops on CUDA cores), or "tf32x3": each fp32 operand split into a high part (its top 11
significant bits, truncated: exact in tf32) and the remainder (|lo| < 2^-10 |x|), and a b = a_lo b_hi + a_hi b_lo + a_hi b_hi
on tensor cores, the small terms first: the dropped a_lo b_lo and the remainders' own tf32 rounding are each
under 2^-20 of |a| |b| per term, against one tf32 product's 2^-11. Written here with plain tf32 products rather than
Triton's own "tf32x3", which hit an illegal memory access in the delta line's fp32 kernels on the H200 (Triton
3.6, 2026-12-01). The split met one there too, in the state-gradient pass at a V block of 16 (the launcher keeps
32 or more), and wrong outputs at head dims of 16: ``launch.FP32_SPLIT_DIMS`` bounds where it runs. For "tf32"
and "ieee" this is ``tl.dot``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tf32_high(x):
    """x with its 13 low mantissa bits cleared: exact as a tf32 operand, and x - it is exact in fp32."""
    return (x.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def dot(a, b, acc=None, prec: tl.constexpr = "tf32"):
    """``acc + a b`` (fp32) at ``prec`` (see the module docstring); ``acc=None``: ``a b``."""
    if prec == "tf32x3":  # fp32 inputs at "highest": their kernels' operands are fp32
        a = a.to(tl.float32)
        b = b.to(tl.float32)
        a_hi = _tf32_high(a)
        b_hi = _tf32_high(b)
        a_lo = a - a_hi
        b_lo = b - b_hi
        c = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
        c = tl.dot(a_hi, b_lo, c, input_precision="tf32")
        c = tl.dot(a_hi, b_hi, c, input_precision="tf32")
    else:
        c = tl.dot(a, b, acc, input_precision=prec)
    return c

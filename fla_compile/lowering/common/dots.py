"""The matrix product every chunk kernel calls: ``tl.dot`` at a precision, or fp32 from split products.

``prec`` is the launchers' ``launch.prec(dtype, K, V, split)``: "tf32" (half inputs; fp32 at torch's "high"),
"ieee" (exact fp32 FMA loops on CUDA cores), or "tf32x3": each fp32 operand split into a high part (its top 11
significant bits, truncated: exact in tf32) and the remainder (|lo| < 2^-10 |x|), and a b = a_lo b_hi + a_hi b_lo +
a_hi b_hi on tensor cores, the small terms first: the dropped a_lo b_lo and the remainders' own tf32 rounding are
each under 2^-20 of |a| |b| per term, against one tf32 product's 2^-11. Written here with plain tf32 products rather
than Triton's own "tf32x3", which hit an illegal memory access in the delta line's fp32 kernels on the H200 (Triton
3.6, 2026-12-01). The split met one there too, in the state-gradient pass at a V block of 16 (the launcher keeps 32
or more), and wrong outputs at head dims of 16: ``launch.FP32_SPLIT_DIMS`` bounds where it runs. For "tf32" and
"ieee" this is ``tl.dot``.

"bf16x6" and "bf16x3" (measured, not shipped: ``benchmarks/fp32_dot_forms.py``, RESULTS thirty-fourth session):
each fp32 operand as bf16 parts x1 + x2 + x3 (x1 = x rounded, x2 and x3 the rounded remainders), and the products
x_i y_j with i + j <= 4 (six; near fp32) or <= 3 (three; ~2^-16). bf16 products run at twice tf32's rate. As in
Triton's own split forms, no tensor-core product sees ``acc``: the small products are summed from zero, ``x1 y1`` is
taken onto their sum, and ``acc`` is added last by an fp32 add. On the H200 a product chained into a large
accumulator loses its low bits (a tile loop of 2048 terms, bf16x6: all chained 1.4e-5 from fp64, the small ones
apart but ``x1 y1`` onto ``acc`` 2.1e-6, Triton's order 1.6e-7; RESULTS, thirty-fourth and thirty-fifth sessions).
"tf32x3" keeps ``acc`` in its chain: the shipped kernels call it from zero in their long loops (``b_h += dot``), and
an ``acc`` apart keeps one more fp32 tile live in kernels that already spill. Under the interpreter (``TRITON_INTERPRET=1``, whose bf16 dots are wrong) the parts' products run as exact
fp32 dots: what a bf16 tensor core computes for them.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

_INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def _tf32_high(x):
    """x with its 13 low mantissa bits cleared: exact as a tf32 operand, and x - it is exact in fp32."""
    return (x.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def _bf16_parts(x):
    """x (fp32) as bf16 parts x1 + x2 + r: x1 = x rounded to bf16, x2 = the remainder rounded; both subtractions are
    exact in fp32, and |r| <= 2^-17 |x|."""
    x1 = x.to(tl.bfloat16)
    r1 = x - x1.to(tl.float32)
    x2 = r1.to(tl.bfloat16)
    return x1, x2, r1 - x2.to(tl.float32)


@triton.jit
def _bf16_dot(x, y, acc):
    """``acc + x y`` for bf16 parts: a bf16 tensor-core product; exact fp32 products under the interpreter."""
    if _INTERPRETED:
        c = tl.dot(x.to(tl.float32), y.to(tl.float32), acc, input_precision="ieee")
    else:
        c = tl.dot(x, y, acc)
    return c


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
    elif prec == "bf16x6" or prec == "bf16x3":  # fp32 operands as bf16 parts: the small products apart, from zero
        a1, a2, ar = _bf16_parts(a.to(tl.float32))
        b1, b2, br = _bf16_parts(b.to(tl.float32))
        small = None
        if prec == "bf16x6":  # the terms of 2^-16 |a| |b| first
            small = _bf16_dot(a2, b2, None)
            small = _bf16_dot(ar.to(tl.bfloat16), b1, small)
            small = _bf16_dot(a1, br.to(tl.bfloat16), small)
        small = _bf16_dot(a2, b1, small)
        small = _bf16_dot(a1, b2, small)
        c = _bf16_dot(a1, b1, small)
        if acc is not None:
            c = c + acc
    else:
        c = tl.dot(a, b, acc, input_precision=prec)
    return c

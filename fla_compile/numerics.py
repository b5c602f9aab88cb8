"""How fla_compile measures a result against its reference: one relative error, for the proofs, the patched-layer
checks, the tuner's screen and the test suite alike."""

from __future__ import annotations

import math

import torch

HALF = (torch.bfloat16, torch.float16)  # the half-precision dtypes: an fp32 result may round to them


def rel_err(ours, ref) -> float:
    """||ours - ref|| / ||ref|| (Frobenius), computed in float64 (the difference too: subtracting in the inputs'
    precision would round it away), on the CPU when the two live on different devices.

    Tuples and lists compare pairwise and give the largest; None matches only None. A shape or structure mismatch, or
    a non-finite difference, is infinite; a zero reference divides by 1e-300, so anything nonzero against it fails a
    bound.
    """
    if isinstance(ref, (tuple, list)):
        if not isinstance(ours, (tuple, list)) or len(ours) != len(ref):
            return math.inf
        return max((rel_err(a, b) for a, b in zip(ours, ref)), default=0.0)
    if ref is None or ours is None:
        return 0.0 if ref is None and ours is None else math.inf
    if ours.shape != ref.shape:
        return math.inf
    a, b = ours.detach().double(), ref.detach().double()
    if a.device != b.device:
        a, b = a.cpu(), b.cpu()
    num = (a - b).norm().item()
    if not math.isfinite(num):
        return math.inf
    return num / max(b.norm().item(), 1e-300)

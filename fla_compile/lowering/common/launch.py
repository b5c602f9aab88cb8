"""Launch helpers of every line's Triton kernels: the dtypes they take, block sizes, dot precision."""

from __future__ import annotations

import torch
import triton

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def supported(max_head_dim: int, *tensors: torch.Tensor) -> bool:
    """Whether a line's kernels take these inputs: every dtype in :data:`DTYPES` and every head dim (the
    last dim) at most ``max_head_dim``; otherwise (fp64, larger heads) the line uses its torch path."""
    return all(x.dtype in DTYPES and x.shape[-1] <= max_head_dim for x in tensors)


def pow2(n: int, lo: int = 16) -> int:
    """The block size that covers ``n``: its next power of two, at least ``lo``."""
    return max(lo, triton.next_power_of_2(n))


def prec(dtype) -> str:
    """``tl.dot``'s input precision for operands of ``dtype``. fp32 follows torch's
    ``torch.set_float32_matmul_precision``: "highest" (torch's default) exact fp32 dots ("ieee"), "high" or
    "medium" tensor-core tf32 ones, as torch's own fp32 matmuls. Other dtypes: "tf32" (it only applies where a
    kernel feeds fp32 operands to a dot, e.g. fp32 intermediates of bf16 inputs)."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"

"""The fused linear losses (cross entropy, KL divergence for distillation): chunked over rows so
that the [N, vocab] logits are never all in memory (:mod:`.torch_path`, CPU and GPU alike; on CUDA
with half weights a chunk's softmax and its gradient by one kernel of :mod:`.triton_kernels`)."""

from .torch_path import (
    chunk_rows,
    cross_entropy_backward,
    cross_entropy_forward,
    gemm_mode,
    kl_div_backward,
    kl_div_forward,
)

__all__ = [
    "chunk_rows",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "gemm_mode",
    "kl_div_backward",
    "kl_div_forward",
]

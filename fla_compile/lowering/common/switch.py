"""The ``FLA_COMPILE_TRITON`` switch: whether a line's Triton kernels may run the inputs at all."""

from __future__ import annotations

import os

import torch


def triton_mode() -> str:
    """``FLA_COMPILE_TRITON``: '1' (default: the kernels run CUDA tensors), '0' (off: the torch path
    everywhere) or 'interpret' (with ``TRITON_INTERPRET=1``, the kernels also run CPU tensors)."""
    return os.environ.get("FLA_COMPILE_TRITON", "1")


def triton_wanted(q, *others) -> bool:
    """Whether ``FLA_COMPILE_TRITON`` and the inputs let a family's Triton kernels run at all: CUDA tensors
    (or CPU ones in interpret mode), and no float64 among ``q`` and ``others`` (gates, beta, the initial
    state; None entries are skipped). float64 (verification probes, gradcheck) always takes the torch path:
    the kernels compute in fp32 and some do not compile for fp64 operands."""
    mode = os.environ.get("FLA_COMPILE_TRITON", "1")  # triton_mode(), inline: this runs on every op call
    if mode == "0" or not (q.is_cuda or (mode == "interpret" and os.environ.get("TRITON_INTERPRET") == "1")):
        return False
    if q.dtype is torch.float64:
        return False
    for x in others:
        if x is not None and x.dtype is torch.float64:
            return False
    return True

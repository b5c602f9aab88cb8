"""Without a GPU, run Triton kernels through the interpreter (TRITON_INTERPRET must be set before
the kernels are defined; fla_compile imports its kernel modules lazily, so setting it here, at
collection of this folder, is early enough). With a GPU, nothing changes."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

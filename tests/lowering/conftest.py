"""Without a GPU, run Triton kernels through the interpreter (TRITON_INTERPRET must be set before
the kernels are defined; fla_compile imports its kernel modules lazily, so setting it here, at
collection of this folder, is early enough). With a GPU the kernels run on it, and the interpreter-written files
listed below are marked ``gpu``."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# Files written for the interpreter that run on CUDA as they are (all their tests passed on the H200, 2026-12-01):
# marked ``gpu`` on a machine with CUDA, so that ``pytest -m gpu`` takes them there too. Without CUDA nothing
# changes: they run interpreted, as CI runs them.
ON_CUDA_TOO = ("test_gla_triton.py",)


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        return
    for item in items:
        if item.path.name in ON_CUDA_TOO:
            item.add_marker(pytest.mark.gpu)

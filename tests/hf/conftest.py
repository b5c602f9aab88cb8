"""Fixtures for the transformers tests: tiny random models saved and loaded back, op counting."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

transformers = pytest.importorskip("transformers")

from .archs import TOKENS, Arch  # noqa: E402


def config_of(arch: Arch):
    cls = getattr(transformers, arch.config, None)
    if cls is None or getattr(transformers, arch.model, None) is None:
        pytest.skip(f"transformers {transformers.__version__} has no {arch.name}")
    if arch.composite is not None:
        return cls(text_config={**TOKENS, **arch.kwargs, "initializer_range": 0.1}, vision_config=arch.composite)
    return cls(**TOKENS, **arch.kwargs, initializer_range=0.1)


def load_tiny(arch: Arch, path):
    """A random tiny model of ``arch``, saved with save_pretrained and loaded back (fp32, eval)."""
    config = config_of(arch)  # skips when this transformers lacks the architecture
    torch.manual_seed(0)
    model = getattr(transformers, arch.model)(config)
    model.save_pretrained(path)
    return reload(arch, path)


def reload(arch: Arch, path):
    model = getattr(transformers, arch.model).from_pretrained(path, dtype=torch.float32)
    return model.eval()


class OpCalls(TorchDispatchMode):
    """Records the fla_compile ops that run: (op name, T of the call)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name.startswith("fla_compile.") and not name.endswith("_bwd") and len(args) > 2:
            op = name.split(".")[1]
            seq = args[0] if op in ("hgrn", "mamba") else args[2]  # the scan line's x / u [B, T, D]
            self.calls.append((op, seq.shape[1]))
        return func(*args, **(kwargs or {}))

    def count(self, T: int | None = None) -> int:
        return sum(1 for _, t in self.calls if T is None or t == T)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster than waking workers (and deterministic)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

"""What a step would launch, nothing run: the sweeps' test for a variant that changes no launch.

A sweep variant is an option name and value; if no launcher reads that name for the family and gate at hand (a
``dqk_head_BK`` the GLA line's launchers once ignored, a kda-only switch timed on delta_rule), its row times the
shipped launches again and reads as "no gain" instead of "no effect". ``launch_forms(step)`` runs ``step`` with
``launch.fitted`` (through which every chunked launch of both kernel lines goes) recording each launch instead of
running it: the kernel, grid, scalars and constexprs (tensors by dtype) and launch options. Host code around the
launches still runs (allocations, casts); no kernel does, so outputs are garbage and nothing synchronizes.
"""

from __future__ import annotations

import torch


def _form(a):
    return ("tensor", a.dtype) if isinstance(a, torch.Tensor) else a


def launch_forms(step) -> list[tuple]:
    """The launches of ``step()`` (a zero-argument callable), in order, none run."""
    from fla_compile.lowering.common import launch

    forms = []

    def record(kernel, grid, *args, num_stages, avoid=(), **kwargs):
        name = launch._kernel_name(kernel)
        named = tuple(sorted((n, _form(a)) for n, a in kwargs.items()))
        forms.append((name, tuple(grid), tuple(_form(a) for a in args), num_stages, tuple(avoid), named))

    real, launch.fitted = launch.fitted, record
    try:
        step()
    finally:
        launch.fitted = real
    return forms

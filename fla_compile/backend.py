"""The ``fla`` torch.compile backend: match and rewrite recurrences, hand the rest to Inductor."""

from __future__ import annotations

import logging

import torch

from . import passes
from .report import Report

log = logging.getLogger("fla_compile")
REPORTS: list[Report] = []  # one per compiled graph, newest last


class FlaCompileError(RuntimeError):
    """Raised under ``strict=True`` when a region looks like a recurrence but is not proven (a near miss)."""


def fla_backend(gm: torch.fx.GraphModule, example_inputs, options: dict | None = None, **_unused):
    """torch.compile(fn, backend="fla", options={"verify": True, "strict": False, "inductor": True})."""
    opts = passes.Options.from_dict(options)
    new_gm, report = passes.run(gm, opts)
    REPORTS.append(report)
    for m in report.matches:
        log.info("fla_compile matched %s", m)
    for m in report.misses:
        log.info("fla_compile missed %s", m)
    if opts.strict and report.near_misses:  # not on what was recognised as something else (softmax attention)
        raise FlaCompileError(str(report))
    if opts.inductor:
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(new_gm, example_inputs)
    return torch._dynamo.lookup_backend("aot_eager")(new_gm, example_inputs)


def last_report() -> Report | None:
    """The report of the most recently compiled graph."""
    return REPORTS[-1] if REPORTS else None


def register() -> None:
    from torch._dynamo.backends.registry import _BACKENDS, register_backend

    if "fla" not in _BACKENDS:
        register_backend(name="fla")(fla_backend)

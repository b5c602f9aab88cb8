"""The ``fla`` torch.compile backend: match and rewrite recurrences, hand the rest to Inductor."""

from __future__ import annotations

import dataclasses
import logging
import operator

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
    new_gm, report = analyze(gm, opts)
    REPORTS.append(report)
    if opts.strict and report.near_misses:  # not on what was recognised as something else (softmax attention)
        raise FlaCompileError(str(report))
    if opts.inductor and (opts.cudagraphs or work_for_inductor(new_gm)):
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(new_gm, example_inputs, config_patches=inductor_config(new_gm, opts))
    return torch._dynamo.lookup_backend("aot_eager")(new_gm, example_inputs)


def inductor_config(gm: torch.fx.GraphModule, opts: passes.Options) -> dict:
    """Inductor options: CUDA graphs where asked (``opts.cudagraphs``); for a graph that runs our ops, its layout
    optimization off.

    With a convolution in the graph (the short conv of Qwen3-Next, Kimi-Linear, Mamba), Inductor prefers
    channels-last strides for the 4-D tensors around it, ours included: it saves q, k, v and the delta ops' X
    for the backward transposed, and copies each back to the dense layout our ops take, in the forward and in
    the backward; the copy of X also drops the tag by which the backward knows it (it then recomputes X).
    Channels-last pays for 2-D convolutions in CNNs, not for a depthwise 1-D conv."""
    patches = {"triton.cudagraphs": True} if opts.cudagraphs else {}
    if any(n.op == "call_function" and _is_ours(n.target) for n in gm.graph.nodes):
        patches["layout_optimization"] = False
    return patches


def analyze(gm: torch.fx.GraphModule, opts: passes.Options) -> tuple[torch.fx.GraphModule, Report]:
    """What the backend does with one captured graph, short of compiling it: the passes, and the
    report of every choice made (``explain`` calls this too, so both say the same).

    Returns the rewritten graph and its report. ``gm`` itself may be changed.
    """
    new_gm, report = passes.run(gm, opts)
    if opts.inductor and any(m.kept for m in report.matches) and (opts.cudagraphs or work_for_inductor(new_gm)):
        # a region kept as written is part of the graph Inductor compiles: the report says so, as @jit's does
        report.matches = [dataclasses.replace(m, compiled=True) if m.kept else m for m in report.matches]
    for m in report.matches:
        log.info("fla_compile matched %s", m)
    for m in report.misses:
        log.info("fla_compile missed %s", m)
    if opts.inductor and not opts.cudagraphs and report.matches and not work_for_inductor(new_gm):
        report.notes.append(
            "the rest of the graph is layout and casts around our ops: run as is, without "
            "Inductor's cold compile (it would generate no kernel worth it)"
        )
    if opts.strict and report.near_misses:
        report.notes.append("strict=True: the backend raises FlaCompileError on this graph's near misses")
    return new_gm, report


# What Inductor has nothing to fuse in: views and layout, dtype casts, tuple reads, and our
# own lowerings (each runs one opaque op).
_LAYOUT_METHODS = frozenset(
    "transpose permute view reshape unsqueeze squeeze flatten unflatten expand contiguous t size dim "
    "float double half bfloat16 to type_as".split()
)
_LAYOUT_FUNCTIONS = frozenset(
    [operator.getitem, torch.transpose, torch.permute, torch.reshape, torch.unsqueeze, torch.squeeze, torch.flatten]
)


def work_for_inductor(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """The nodes of a rewritten graph that Inductor could generate code for (empty: none)."""
    work = []
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "output", "get_attr"):
            continue
        if n.op == "call_method" and n.target in _LAYOUT_METHODS:
            continue
        if n.op == "call_function" and (n.target in _LAYOUT_FUNCTIONS or _is_ours(n.target)):
            continue
        work.append(n)
    return work


def _is_ours(target) -> bool:
    """A lowering callable of ours, or one of our torch.library ops (an overload or its packet)."""
    op = getattr(target, "default", target)
    return type(target).__module__.startswith("fla_compile.") or getattr(op, "namespace", None) == "fla_compile"


def last_report() -> Report | None:
    """The report of the most recently compiled graph."""
    return REPORTS[-1] if REPORTS else None


def register() -> None:
    from torch._dynamo.backends.registry import _BACKENDS, register_backend

    if "fla" not in _BACKENDS:
        register_backend(name="fla")(fla_backend)


register()  # torch.compile(backend="fla") works once this module is loaded (the entry point covers the rest)

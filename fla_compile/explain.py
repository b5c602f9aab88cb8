"""``fla_compile.explain``: what would be matched in a function or module, where, and why not."""

from __future__ import annotations

import torch

from . import passes
from .jit import JitFunction, JitModule
from .report import Report


def explain(fn_or_module, *args, **kwargs) -> Report:
    """Capture ``fn_or_module(*args, **kwargs)`` with Dynamo, run the matchers, return the report.

    Nothing is compiled or rewritten for later calls; the function runs once as written.
    """
    if isinstance(fn_or_module, (JitFunction, JitModule)):
        return fn_or_module.explain(*args, **kwargs)
    report = Report()

    def collect(gm, example_inputs):
        _, rep = passes.run(gm, passes.Options(inductor=False))
        report.extend(rep)
        return gm.forward

    def call(*a, **kw):
        return fn_or_module(*a, **kw)

    torch.compile(call, backend=collect, dynamic=False)(*args, **kwargs)
    return report

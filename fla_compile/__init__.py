"""fla_compile: a compiler for linear attention.

torch.compile(model, backend="fla")   # the backend (also registered as an entry point)
@fla_compile.jit                       # recognise a reference function once, run the op at any length
fla_compile.patch(hf_model)            # transformers' linear-attention layers on our ops
fla_compile.explain(fn, *inputs)       # what was matched, where, and why not
"""

from . import ops
from .backend import FlaCompileError, fla_backend, last_report
from .backend import register as _register_backend
from .explain import explain
from .ir import Family, Recurrence
from .jit import jit

__version__ = "0.1.0"
__all__ = ["Family", "FlaCompileError", "Recurrence", "explain", "fla_backend", "jit", "last_report", "ops"]

try:  # the HF registry needs nothing from transformers at import time
    from .hf import patch, unpatch  # noqa: F401

    __all__ += ["patch", "unpatch"]
except ImportError:  # pragma: no cover
    pass

_register_backend()

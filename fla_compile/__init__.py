"""fla_compile: a compiler for linear attention.

torch.compile(model, backend="fla")   # the backend (also registered as an entry point)
@fla_compile.jit                       # recognise a reference function once, run the op at any length
fla_compile.patch(hf_model)            # transformers' linear-attention layers on our ops
fla_compile.explain(fn, *inputs)       # what was matched, where, and why not

Only ``ops`` is imported eagerly: the compiler's modules (Dynamo, the matchers, sympy) load on
first use, so a process that calls the ops by hand (or a patched model) does not pay for them
(they are most of a warm first call's time). ``torch.compile(backend="fla")`` finds the backend
through the ``torch_dynamo_backends`` entry point, or once ``fla_compile.backend`` is imported.
"""

import importlib
import sys
import types

from . import ops
from .ir import Family, Recurrence

__version__ = "0.1.0"
__all__ = ["Family", "FlaCompileError", "Recurrence", "explain", "fla_backend", "jit", "last_report", "ops"]
__all__ += ["patch", "unpatch"]

_LAZY = {
    "FlaCompileError": "backend",
    "fla_backend": "backend",
    "last_report": "backend",
    "explain": "explain",
    "jit": "jit",
    "patch": "hf",
    "unpatch": "hf",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fla_compile' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """Importing a submodule sets it as an attribute of the package: ``fla_compile.jit`` (the module)
    would then hide ``fla_compile.jit`` (the decorator) once anything imported the module first.
    The export of that name wins, as ``from .jit import jit`` made it win before."""

    def __setattr__(self, name, value):
        if name in _LAZY and isinstance(value, types.ModuleType) and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if "torch._dynamo" in sys.modules:  # Dynamo is loaded already: registering costs nothing
    from .backend import register as _register_backend

    _register_backend()

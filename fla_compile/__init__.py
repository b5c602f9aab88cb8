"""fla_compile: a compiler for linear attention."""

from . import ops
from .backend import FlaCompileError, fla_backend, last_report
from .backend import register as _register_backend
from .ir import Family, Recurrence

__version__ = "0.1.0"
__all__ = ["Family", "FlaCompileError", "Recurrence", "fla_backend", "last_report", "ops"]

_register_backend()

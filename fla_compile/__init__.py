"""fla_compile: a compiler for linear attention."""

from . import ops
from .ir import Family, Recurrence

__version__ = "0.1.0"
__all__ = ["Family", "Recurrence", "ops"]

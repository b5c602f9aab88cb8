"""How the suite measures a result against its reference: the library's one relative error (``fla_compile.numerics``)."""

from fla_compile.numerics import rel_err as rel

__all__ = ["rel"]

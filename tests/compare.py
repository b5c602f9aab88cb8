"""How the suite measures a result against its reference: the library's one relative error (``fla_compile.numerics``)."""

from fla_compile.numerics import rel_err as rel

__all__ = ["flat", "rel"]


def flat(x) -> list:
    """The tensors of a result, nested tuples and lists flattened (an output beside a state pair, ``(o, (S, z))``),
    Nones dropped (a final state not asked for)."""
    if isinstance(x, (tuple, list)):
        return [t for y in x for t in flat(y)]
    return [] if x is None else [x]

"""The family ops' shared docstring: one template of arguments, returns and raises for both lines."""

from __future__ import annotations

_TEMPLATE = """
    Args:
        q, k: [B, T, HK, K]; v: [B, T, H, V] with H a multiple of HK (GQA). One dtype for the three:
            float32, bfloat16, float16 or float64. Any strides (views are fine).{gate}{before}
        scale: a number; defaults to K ** -0.5{scale_note}.
        initial_state: [N, H, K, V], any float dtype (N = B, or the number of packed sequences).
        output_final_state: also return the state after the last step.
        cu_seqlens: int32/int64 [N + 1] offsets of packed sequences, non-decreasing from 0 to T
            (a sequence of length 0 is allowed and passes its initial state through); B must be 1.{after}

    Returns:
        ``(o, final_state)``: o [B, T, H, V] in v's dtype; final_state [N, H, K, V] float32 (float64
        for float64 inputs), or None unless ``output_final_state``. With T = 0, o is empty and the final
        state is the initial state (zeros without one).

    Raises:
        ValueError: ``fla_compile.{op}: ...`` naming the argument, for a wrong shape, dtype or device,
            q, k and v of different dtypes, or ``cu_seqlens`` that do not run from 0 up to T.
"""


def _lines(*lines: str) -> str:
    return "".join(f"\n        {line}" for line in lines if line)


def documented(summary: str, gate: str = "", before: tuple[str, ...] = (), after: tuple[str, ...] = (), scale_note=""):
    """Give an op the shared docstring: ``summary`` (the recurrence), then args, returns, raises.

    ``gate`` and ``before`` are argument lines after q, k, v; ``after`` come after cu_seqlens.
    """

    def set_doc(fn):
        fn.__doc__ = (
            summary
            + "\n"
            + _TEMPLATE.format(
                op=fn.__name__, gate=_lines(gate), before=_lines(*before), after=_lines(*after), scale_note=scale_note
            )
        )
        return fn

    return set_doc

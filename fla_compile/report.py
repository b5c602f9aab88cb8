"""What fla_compile did with a graph: the regions it matched and the misses, graded, with reasons."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


@dataclasses.dataclass
class Match:
    """A region proven to be a recurrence: rewritten into one op call, or, where the op would be
    the slower path for this size (``fla_compile.costs``), kept as written (``kept`` says why)."""

    family: str
    spelling: str
    source: str
    op: str
    error: float = 0.0  # relative error of the proof on fresh probes
    kept: str = ""  # "kept as written: ..." where the region runs as written; "" where the op runs
    shape: Any = dataclasses.field(default=None, repr=False, compare=False)  # its costs.Shape, if read
    compiled: bool = False  # kept, and ``@jit`` runs the code as written compiled by Inductor

    @property
    def path(self) -> str:
        """What runs: the op's name, "as written", or "as written (compiled)" (``@jit``: by Inductor)."""
        if not self.kept:
            return self.op
        return "as written (compiled)" if self.compiled else "as written"

    def __str__(self) -> str:
        where = f" at {self.source}" if self.source else ""
        runs = self.kept or self.op
        return f"{self.family} ({self.spelling}){where} -> {runs} [proof rel err {self.error:.1e}]"


class Grade(str, enum.Enum):
    """How close a miss came. Only near misses make ``strict=True`` raise."""

    NEAR_MISS = "near miss"  # the structure of a recurrence, but a role could not be bound or the proof failed
    NOT_A_RECURRENCE = "not a recurrence"  # recognised as something else (softmax attention): for information

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass
class Miss:
    """A region that looked like a recurrence (or like attention) and was left untouched.

    ``count``: how many times the same miss (spelling, source line, reason) was found. Dynamo
    unrolls a loop into one copy of its body per step, so a construct inside the body that a
    whole-sequence matcher looks at is found once per step: the report says it once, with the count.
    """

    spelling: str
    reason: str
    source: str = ""
    grade: Grade = Grade.NEAR_MISS
    count: int = 1

    @property
    def near_miss(self) -> bool:
        return self.grade == Grade.NEAR_MISS

    @property
    def key(self) -> tuple:
        """What makes two misses the same line of a report."""
        return (self.grade, self.spelling, self.source, self.reason)

    def __str__(self) -> str:
        where = f" at {self.source}" if self.source else ""
        times = f" ({self.count} times: once per unrolled step or call of this line)" if self.count > 1 else ""
        return f"[{self.grade}] {self.spelling}{where}: {self.reason}{times}"


def merged(misses: list[Miss]) -> list[Miss]:
    """``misses`` with the same miss said once, its counts added, in order of first appearance."""
    out: dict[tuple, Miss] = {}
    for m in misses:
        if m.key in out:
            first = out[m.key]
            out[m.key] = dataclasses.replace(first, count=first.count + m.count)
        else:
            out[m.key] = m
    return list(out.values())


@dataclasses.dataclass
class Report:
    matches: list[Match] = dataclasses.field(default_factory=list)
    misses: list[Miss] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def extend(self, other: Report) -> None:
        """Add ``other``'s findings (another graph of the same compile): misses said once, with counts."""
        self.matches += other.matches
        self.misses = merged(self.misses + other.misses)
        self.notes += [n for n in other.notes if n not in self.notes]

    def dedup(self) -> Report:
        """Say each miss once, with the number of times it was found; returns self."""
        self.misses = merged(self.misses)
        return self

    @property
    def rewritten(self) -> list[Match]:
        """The matches whose region runs as one op call (not those kept as written)."""
        return [m for m in self.matches if not m.kept]

    @property
    def near_misses(self) -> list[Miss]:
        """The misses ``strict=True`` raises on (not those recognised as something else)."""
        return [m for m in self.misses if m.near_miss]

    def __bool__(self) -> bool:
        return bool(self.matches)

    def __str__(self) -> str:
        near = len(self.near_misses)
        other = len(self.misses) - near
        kept = len(self.matches) - len(self.rewritten)
        head = f"fla_compile report: {len(self.matches)} matched"
        head += f" ({kept} kept as written, the cheaper path at this size), " if kept else ", "
        head += f"{near} near misses"
        if other:
            head += f", {other} not a recurrence" if other == 1 else f", {other} not recurrences"
        lines = [head]
        lines += [f"  matched  {m}" for m in self.matches]
        lines += [f"  missed   {m}" for m in self.misses]
        lines += [f"  note     {n}" for n in self.notes]
        return "\n".join(lines)

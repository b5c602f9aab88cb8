"""What fla_compile did with a graph: the regions it matched and the misses, graded, with reasons."""

from __future__ import annotations

import dataclasses
import enum


@dataclasses.dataclass
class Match:
    """A region rewritten into one op call."""

    family: str
    spelling: str
    source: str
    op: str
    error: float = 0.0  # relative error of the proof on fresh probes

    def __str__(self) -> str:
        where = f" at {self.source}" if self.source else ""
        return f"{self.family} ({self.spelling}){where} -> {self.op} [proof rel err {self.error:.1e}]"


class Grade(str, enum.Enum):
    """How close a miss came. Only near misses make ``strict=True`` raise."""

    NEAR_MISS = "near miss"  # the structure of a recurrence, but a role could not be bound or the proof failed
    NOT_A_RECURRENCE = "not a recurrence"  # recognised as something else (softmax attention): for information

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass
class Miss:
    """A region that looked like a recurrence (or like attention) and was left untouched."""

    spelling: str
    reason: str
    source: str = ""
    grade: Grade = Grade.NEAR_MISS

    @property
    def near_miss(self) -> bool:
        return self.grade == Grade.NEAR_MISS

    def __str__(self) -> str:
        where = f" at {self.source}" if self.source else ""
        return f"[{self.grade}] {self.spelling}{where}: {self.reason}"


@dataclasses.dataclass
class Report:
    matches: list[Match] = dataclasses.field(default_factory=list)
    misses: list[Miss] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def extend(self, other: Report) -> None:
        self.matches += other.matches
        self.misses += other.misses
        self.notes += other.notes

    @property
    def near_misses(self) -> list[Miss]:
        """The misses ``strict=True`` raises on (not those recognised as something else)."""
        return [m for m in self.misses if m.near_miss]

    def __bool__(self) -> bool:
        return bool(self.matches)

    def __str__(self) -> str:
        near = len(self.near_misses)
        other = len(self.misses) - near
        head = f"fla_compile report: {len(self.matches)} matched, {near} near misses"
        if other:
            head += f", {other} not a recurrence" if other == 1 else f", {other} not recurrences"
        lines = [head]
        lines += [f"  matched  {m}" for m in self.matches]
        lines += [f"  missed   {m}" for m in self.misses]
        lines += [f"  note     {n}" for n in self.notes]
        return "\n".join(lines)

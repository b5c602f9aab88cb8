"""What fla_compile did with a graph: the regions it matched and the near misses, with reasons."""

from __future__ import annotations

import dataclasses


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


@dataclasses.dataclass
class Miss:
    """A region that looked like a recurrence and was left untouched."""

    spelling: str
    reason: str
    source: str = ""

    def __str__(self) -> str:
        where = f" at {self.source}" if self.source else ""
        return f"{self.spelling}{where}: {self.reason}"


@dataclasses.dataclass
class Report:
    matches: list[Match] = dataclasses.field(default_factory=list)
    misses: list[Miss] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def extend(self, other: Report) -> None:
        self.matches += other.matches
        self.misses += other.misses
        self.notes += other.notes

    def __bool__(self) -> bool:
        return bool(self.matches)

    def __str__(self) -> str:
        lines = [f"fla_compile report: {len(self.matches)} matched, {len(self.misses)} near misses"]
        lines += [f"  matched  {m}" for m in self.matches]
        lines += [f"  missed   {m}" for m in self.misses]
        lines += [f"  note     {n}" for n in self.notes]
        return "\n".join(lines)

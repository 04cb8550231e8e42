"""The verifier's findings model and its shared context (floor 2).

One :class:`Finding` type for everything verification says (store checks,
witness checks, deletions, limits); one :class:`Report` per run. Trust side:
messages are made from validated tokens (numbers, qube names, fixed words).
"""

from dataclasses import dataclass, field

from ...core.errors import StoreError

ERROR, WARNING, INFO = "error", "warning", "info"


class WrongKey(StoreError):
    """The verification key authenticates nothing in this store (exit 2, not 'tampered')."""


@dataclass(frozen=True)
class Finding:
    """One result of verification, located as precisely as the evidence allows."""

    severity: str  # "error" | "warning" | "info"
    qube: str | None  # None: the store as a whole
    segment: int | None
    first_line: int | None  # 1-based record lines of the segment file as it is now
    last_line: int | None
    message: str

    @property
    def place(self) -> str:
        """``work/00000003 lines 5-8``, ``work``, or ``store``."""
        if self.qube is None:
            return "store"
        where = self.qube if self.segment is None else f"{self.qube}/{self.segment:08d}"
        if self.first_line is None:
            return where
        if self.last_line is None:
            return f"{where} line {self.first_line} onwards"
        if self.last_line == self.first_line:
            return f"{where} line {self.first_line}"
        return f"{where} lines {self.first_line}-{self.last_line}"

    def __str__(self) -> str:
        return f"{self.severity}: {self.place}: {self.message}"


@dataclass(frozen=True)
class Deletion:
    """Segments a tombstone (or a compacted summary) says were deleted."""

    qube: str
    first: int
    last: int
    records: int | None  # None: not recorded (compacted version-1 tombstones)
    nbytes: int | None
    reason: str  # quota, age, global, dispvm; "unknown" for version-1 tombs
    epoch: int | None  # the epoch of the deletion
    #: With the witness: the dom0 time by which that epoch was over (the witness
    #: heard a later one then), when it did.
    witnessed: str | None = None

    def __str__(self) -> str:
        segs = (
            f"segment {self.first}"
            if self.first == self.last
            else (f"segments {self.first}-{self.last}")
        )
        what = f"{segs} deleted, reason {self.reason}"
        if self.records is not None:
            what += f", {self.records} records, {self.nbytes} bytes"
        if self.epoch is not None:
            what += f", in epoch {self.epoch}"
        if self.witnessed is not None:
            what += f" (before dom0 time {self.witnessed}: the witness heard a later epoch then)"
        return what


@dataclass
class Report:
    """Everything verification found, plus what it covered."""

    findings: list[Finding] = field(default_factory=list)
    deletions: list[Deletion] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)
    qubes: int = 0
    segments: int = 0
    bytes_hashed: int = 0

    @property
    def errors(self) -> list[Finding]:
        """The findings that make verification fail."""
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        """Findings that need a look but do not fail verification."""
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def ok(self) -> bool:
        """True when nothing is wrong (warnings allowed)."""
        return not self.errors

    def deletions_for(self, qube: str) -> list[Deletion]:
        """The deletions reported for one qube."""
        return [d for d in self.deletions if d.qube == qube]

    def add(
        self,
        severity: str,
        qube: str | None,
        message: str,
        segment: int | None = None,
        first: int | None = None,
        last: int | None = None,
    ) -> None:
        """Record one finding."""
        self.findings.append(Finding(severity, qube, segment, first, last, message))

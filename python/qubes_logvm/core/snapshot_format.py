"""The framing of outside verification: snapshot, verifier input, verdict (floor 1).

Three byte streams, specified in docs/snapshot-format.md:

- the **snapshot** ``logvm.Export`` writes in the LogVM: header lines, some
  followed by exactly the number of payload bytes they announce;
- the **verifier input** dom0 writes into the DispVM: its own short header
  (the verification key, the witness's records, a byte limit), then the
  snapshot exactly as the LogVM sent it (dom0 never reads it);
- the **verdict** the DispVM writes back: a status line, at most
  :data:`MAX_FINDINGS` finding lines of printable ASCII, an ``end`` line.

Every header line is at most :data:`MAX_HEADER` bytes and matches one exact
pattern; a payload length is checked against its own bound before anything
is read. Trust side: the snapshot comes from the LogVM (hostile once it is
compromised); the verdict comes from the DispVM, which read hostile data, so
dom0 parses it with the same care. Pure: no I/O, stdlib only.
"""

import re
from dataclasses import dataclass, field

from .errors import ProtocolError

SNAPSHOT_MAGIC = b"logvm-snapshot-v1"
INPUT_MAGIC = b"logvm-verify-input-v1"
VERDICT_MAGIC = b"logvm-verdict-v1"

#: Longest header line, newline included.
MAX_HEADER = 128
#: store.json is small (keystate reads at most 4 KiB of it).
MAX_STORE_JSON = 4096
#: The verification key text.
MAX_KEY_TEXT = 256
#: The witness's records for one LogVM (two 16 MiB generations by default).
MAX_WITNESS_BYTES = 256 << 20
#: One stored file (a segment is at most 64 MiB by default; a qube's quota bounds it).
MAX_FILE_BYTES = 1 << 40
#: Finding lines a verdict carries, and the length of each.
MAX_FINDINGS = 20
MAX_FINDING_CHARS = 200
#: The most bytes dom0 reads of a verdict.
MAX_VERDICT_BYTES = 64 + (MAX_FINDINGS + 2) * (MAX_FINDING_CHARS + 16)

STATUSES = ("ok", "failed", "error")

_NAME = rb"[A-Za-z][A-Za-z0-9_.-]{0,30}"
_COUNT = rb"(0|[1-9][0-9]{0,18})"
FILE_NAME = re.compile(rb"[0-9]{8}\.(log|log\.zst|seal)|tombstones\.seal")
#: Store-wide files of state/ a snapshot carries (format 2's epoch seals), and their bound.
STATE_FILE = re.compile(rb"epochs\.seal|epoch-leaves")
MAX_STATE_FILE = 1 << 20
_FRAMES = {
    b"store": re.compile(rb"store " + _COUNT),
    b"qube": re.compile(rb"qube (" + _NAME + rb")"),
    b"file": re.compile(rb"file ([0-9a-z.]{1,20}) " + _COUNT),
    b"epoch": re.compile(rb"epoch " + _COUNT),
    b"state": re.compile(rb"state (epochs\.seal|epoch-leaves) " + _COUNT),
    b"end": re.compile(rb"end " + _COUNT + rb" " + _COUNT + rb" " + _COUNT),
    b"key": re.compile(rb"key " + _COUNT),
    b"witness": re.compile(rb"witness " + _COUNT),
    b"limit": re.compile(rb"limit " + _COUNT),
}
_VERDICT = re.compile(
    VERDICT_MAGIC
    + rb" (ok|failed|error) errors="
    + _COUNT
    + rb" warnings="
    + _COUNT
    + rb" qubes="
    + _COUNT
    + rb" segments="
    + _COUNT
    + rb" bytes="
    + _COUNT
)
_FINDING = re.compile(rb"[\x20-\x7e]{1,%d}" % MAX_FINDING_CHARS)
_VERDICT_END = re.compile(rb"end " + _COUNT)


@dataclass(frozen=True)
class Frame:
    """One parsed header line: its word and its fields (payload length last)."""

    word: bytes
    fields: tuple[bytes, ...]

    def number(self, index: int) -> int:
        """A numeric field."""
        return int(self.fields[index])


def parse_header(untrusted_line: bytes, allowed: tuple[bytes, ...]) -> Frame:
    """Parse one header line (newline stripped); ProtocolError unless it is one of ``allowed``."""
    word = untrusted_line.split(b" ", 1)[0]
    pattern = _FRAMES.get(word)
    if word not in allowed or pattern is None:
        shown = untrusted_line[:40].decode("ascii", "backslashreplace")
        raise ProtocolError(f"unexpected frame {shown!r} (expected {_words(allowed)})")
    match = pattern.fullmatch(untrusted_line)
    if match is None:
        raise ProtocolError(f"malformed {word.decode()} frame")
    return Frame(word, match.groups())


def _words(allowed: tuple[bytes, ...]) -> str:
    return " or ".join(w.decode() for w in allowed)


def header(word: str, *fields: int | str) -> bytes:
    """A header line (the writer's side)."""
    line = " ".join([word, *map(str, fields)]).encode("ascii") + b"\n"
    if len(line) > MAX_HEADER:
        raise ProtocolError(f"{word} frame too long")
    return line


def input_prefix(verification_key: str, witness_records: bytes, limit: int) -> bytes:
    """What dom0 writes into the DispVM before the LogVM's snapshot."""
    key = verification_key.strip().encode("ascii")
    if len(key) > MAX_KEY_TEXT or len(witness_records) > MAX_WITNESS_BYTES:
        raise ProtocolError("verification key or witness records too large")
    return b"".join(
        (
            INPUT_MAGIC + b"\n",
            header("limit", limit),
            header("key", len(key)),
            key,
            header("witness", len(witness_records)),
            witness_records,
        )
    )


@dataclass
class Verdict:
    """The DispVM's answer: status, counts, a few finding lines."""

    status: str
    errors: int = 0
    warnings: int = 0
    qubes: int = 0
    segments: int = 0
    hashed: int = 0  # bytes of records hashed
    findings: list[str] = field(default_factory=list)
    more: int = 0  # findings not carried

    @property
    def exit_code(self) -> int:
        """0 intact, 1 tampered, 2 could not verify (as ``logvm verify``)."""
        return STATUSES.index(self.status)

    def counts(self) -> str:
        """``errors=1 warnings=0 qubes=3 segments=7 bytes=123``."""
        return (
            f"errors={self.errors} warnings={self.warnings} qubes={self.qubes} "
            f"segments={self.segments} bytes={self.hashed}"
        )

    def to_bytes(self) -> bytes:
        """The verdict as the DispVM writes it; findings are cut and made ASCII here."""
        lines = [f"{VERDICT_MAGIC.decode()} {self.status} {self.counts()}"]
        kept = [ascii_line(f) for f in self.findings[:MAX_FINDINGS]]
        lines += kept
        lines.append(f"end {len(self.findings) - len(kept) + self.more}")
        return "\n".join(lines).encode("ascii") + b"\n"


def ascii_line(text: str) -> str:
    """One finding as printable ASCII of at most MAX_FINDING_CHARS characters."""
    safe = "".join(c if " " <= c <= "~" else f"\\x{ord(c) & 0xFF:02x}" for c in text)
    if len(safe) > MAX_FINDING_CHARS:
        safe = safe[: MAX_FINDING_CHARS - 3] + "..."
    return safe or "-"


def parse_verdict(untrusted: bytes) -> Verdict:
    """dom0's strict reading of a verdict; ProtocolError naming what is wrong."""
    if len(untrusted) > MAX_VERDICT_BYTES:
        raise ProtocolError(f"verdict longer than {MAX_VERDICT_BYTES} bytes")
    if not untrusted.endswith(b"\n"):
        raise ProtocolError("verdict incomplete (no final newline)")
    lines = untrusted[:-1].split(b"\n")
    match = _VERDICT.fullmatch(lines[0])
    if match is None:
        raise ProtocolError("not a verdict (bad first line)")
    end = _VERDICT_END.fullmatch(lines[-1]) if len(lines) > 1 else None
    if end is None:
        raise ProtocolError("verdict incomplete (no end line)")
    findings = lines[1:-1]
    if len(findings) > MAX_FINDINGS:
        raise ProtocolError(f"verdict carries more than {MAX_FINDINGS} findings")
    for line in findings:
        if _FINDING.fullmatch(line) is None:
            raise ProtocolError("verdict finding line not printable ASCII or too long")
    errors, warnings, qubes, segments, hashed = (int(g) for g in match.groups()[1:])
    return Verdict(
        match.group(1).decode(),
        errors=errors,
        warnings=warnings,
        qubes=qubes,
        segments=segments,
        hashed=hashed,
        findings=[f.decode() for f in findings],
        more=int(end.group(1)),
    )

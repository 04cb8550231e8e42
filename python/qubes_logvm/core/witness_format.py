"""What the LogVM says to the witness, and the witness's rules (floor 1).

The ``logvm.Witness`` service (see docs/witness.md) reads one message per
line from the LogVM and answers each with one line. Messages:

- ``register <store_id: 32 hex> <K0: 64 hex> [<epoch seconds> [<created>]]``:
  the verification key, trusted on first use, with the store's epoch length
  (the witness then caps epochs by it, and exports it for the verifier) and
  its creation time from store.json (``YYYY-MM-DDTHH:MM:SSZ``, exported for
  the verifier: store.json itself is the LogVM's word);
- a seal line exactly as in docs/store-format.md (``v1 <kind> <qube> <seq>
  <epoch> <lines> <nbytes> <head> <prev> <mac>``, not ``tomb``): a
  checkpoint, the newest seal of one qube;
- a tombstone line (``t1 tomb ...``, :mod:`.tomb`): a deletion, reported as
  it happens (deletions take a qube's oldest segment first, so the newest
  tomb of a qube stands for every deletion before it);
- a store-wide epoch line of format 2 (``v2 epoch ...``, :mod:`.epochseal`),
  sent every epoch: the Merkle root over every chain's state at its end;
- a settings note ``s1 settings <epoch> <digest> <mac>``: the digest of the
  retention settings the collector runs with, sealed with ``K[epoch]``, sent
  at start and after every reload;
- a cost note ``k1 cost <qube> <epoch> <seq> <disk> <plain> <mac>``: what
  the qube counted (charged disk bytes, plain text bytes, with the batch it
  was about to store) when the collector deleted its segments up to ``seq``
  for its quota, sealed with ``K[epoch]`` and sent with the deletion.

Answers: ``ok <word>`` or ``err <word>`` (the words are listed in
:data:`REPLIES`). The witness stores accepted checkpoints as
``cp <witness time> <seal line>`` lines, deletions as ``del <witness
time> <tomb line>`` lines, epoch lines as ``ep <witness time> <epoch
line>``, settings notes as ``set ...`` and cost notes as ``cost ...``
(the witness's time is dom0's clock when it accepted the line); an export file is a header line
``logvm-witness-export-v1 <logvm> <store_id>`` followed by such lines.

Trust side: everything parsed here comes from the LogVM, which may be
compromised; parsing is exact (lengths, characters) and never repairs.
Pure: no I/O, stdlib only.
"""

import re
from dataclasses import dataclass
from typing import ClassVar

from .epochseal import EpochLine, parse_epoch_line
from .errors import ProtocolError, StoreError
from .retire import Retire, parse_retire
from .seal import ZERO, MacLine, Seal, parse_seal
from .seal_line import ascii_line
from .tomb import Tomb, parse_tomb

#: Longest message line, newline included; a seal line is at most ~330 bytes.
MAX_LINE_BYTES = 512

#: Every answer the witness gives, and what it means.
REPLIES = {
    "ok registered": "the key was registered now (first use)",
    "ok known": "the same key was already registered",
    "ok stored": "the checkpoint was appended and fsynced",
    "ok seen": "identical to the newest checkpoint of that qube (heartbeat): nothing stored",
    "err too-long": "the line exceeded the byte limit (the rest up to the newline is skipped)",
    "err malformed": "not a message of the grammar (binary, wrong field, wrong length)",
    "err kind": "v1 tomb, summary and v2 gap lines are not messages",
    "err key-mismatch": "a different key is registered: refused and reported",
    "err not-registered": "no key yet: checkpoints cannot be checked",
    "err bad-mac": "the MAC is wrong under the registered key for that epoch",
    "err stale": "older than the newest checkpoint of that qube (replay, rollback, epoch back)",
    "err fork": "same position as the newest checkpoint, different chain head or counts",
    "err closed": "the segment was closed by an earlier checkpoint",
    "err too-many-qubes": "the witness holds its limit of qubes for this LogVM",
    "err rate-limit": "too many messages: not processed, send again later",
    "err busy": "key derivation budget spent (epoch jump too large for now): send again later",
    "err epoch-jump": "the epoch cannot exist yet by the witness's clock: send again later",
    "err call-limit": "the call lasted its limit (time or messages): not processed, the call ends",
    "err reset": "an admin reset this LogVM's key meanwhile: the connection ends",
    "err locked": "another connection of this LogVM holds the state: the connection ends",
}

_SECONDS = rb"((?:0|[1-9][0-9]{0,8})(?:\.[0-9]{1,6})?)"
#: A store's creation time as store.json and the registration carry it.
CREATED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_CREATED = b"(" + CREATED.pattern.encode("ascii") + b")"
_REGISTER = re.compile(
    rb"register ([0-9a-f]{32}) ([0-9a-f]{64})(?: " + _SECONDS + rb"(?: " + _CREATED + rb")?)?"
)
_CP_LINE = re.compile(rb"cp (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (v1 .*)")
_DEL_LINE = re.compile(rb"del (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (t1 .*)")
_EP_LINE = re.compile(rb"ep (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (v2 .*)")
_RET_LINE = re.compile(rb"ret (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (r1 .*)")
_EXPORT_HEADER = re.compile(
    rb"logvm-witness-export-v1 ([A-Za-z][A-Za-z0-9_.-]{0,30}) ([0-9a-f]{32})"
    rb"(?: epoch-seconds=" + _SECONDS + rb")?(?: created=" + _CREATED + rb")?"
)
EXPORT_MAGIC = b"logvm-witness-export-v1"
#: An export's line with the retention policy dom0 deployed (Salt), hex of its JSON.
POLICY_PREFIX = b"policy "
#: Largest deployed policy file the witness passes on.
MAX_POLICY_BYTES = 64 << 10


SETTINGS_DOMAIN = b"logvm-settings-v1\0"
_SETTINGS = re.compile(r"s1 settings (0|[1-9][0-9]{0,17}) ([0-9a-f]{64}) ([0-9a-f]{64})")
_SET_LINE = re.compile(rb"set (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (s1 .*)")


@dataclass(frozen=True)
class SettingsLine(MacLine):
    """The collector's note of the retention settings in force (their digest)."""

    DOMAIN: ClassVar[bytes] = SETTINGS_DOMAIN
    epoch: int
    digest: bytes
    mac: bytes = ZERO

    def body(self) -> bytes:
        """The MACed part: the line without its final field."""
        return f"s1 settings {self.epoch} {self.digest.hex()}".encode("ascii")


def parse_settings_line(line: bytes) -> SettingsLine:
    """Parse a settings note (without newline); StoreError if malformed."""
    match = _SETTINGS.fullmatch(ascii_line(line, "settings line"))
    if match is None:
        raise StoreError("malformed settings line")
    epoch, digest, mac = match.groups()
    return SettingsLine(int(epoch), bytes.fromhex(digest), bytes.fromhex(mac))


COST_DOMAIN = b"logvm-cost-v1\0"
_NUM = r"(0|[1-9][0-9]{0,17})"
_COST = re.compile(
    r"k1 cost ([A-Za-z][A-Za-z0-9_.-]{0,30}) " + " ".join([_NUM] * 4) + r" ([0-9a-f]{64})"
)
_COST_HELD = re.compile(rb"cost (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (k1 .*)")


@dataclass(frozen=True)
class CostLine(MacLine):
    """What a qube counted when the collector deleted its segments for its quota.

    ``disk``/``plain`` are the qube's cost (:class:`qubes_logvm.store.usage.Cost`)
    with the batch it was about to store: what made the collector delete
    segments up to ``seq``. The verifier judges quota deletions by it.
    """

    DOMAIN: ClassVar[bytes] = COST_DOMAIN
    qube: str
    epoch: int
    seq: int  # the newest segment deleted for this cost
    disk: int
    plain: int
    mac: bytes = ZERO

    def body(self) -> bytes:
        """The MACed part: the line without its final field."""
        return (f"k1 cost {self.qube} {self.epoch} {self.seq} {self.disk} {self.plain}").encode(
            "ascii"
        )


def parse_cost_line(line: bytes) -> CostLine:
    """Parse a cost note (without newline); StoreError if malformed."""
    match = _COST.fullmatch(ascii_line(line, "cost line"))
    if match is None:
        raise StoreError("malformed cost line")
    qube, epoch, seq, disk, plain, mac = match.groups()
    if int(seq) < 1:
        raise StoreError("cost line: bad segment number")
    return CostLine(qube, int(epoch), int(seq), int(disk), int(plain), bytes.fromhex(mac))


@dataclass(frozen=True)
class Register:
    """A key registration message."""

    store_id: str
    key0: bytes
    epoch_seconds: float | None = None  # the store's epoch length (newer collectors send it)
    created: str | None = None  # store.json's creation time (newer ones send it too)


def format_seconds(seconds: float) -> str:
    """An epoch length as the messages carry it (decimal, at most 6 places)."""
    return f"{seconds:.6f}".rstrip("0").rstrip(".")


Message = Register | Seal | Tomb | EpochLine | SettingsLine | CostLine | Retire
#: What the witness holds: a checkpoint, a deletion, a store-wide epoch line,
#: a settings note, a cost note.
Held = Seal | Tomb | EpochLine | SettingsLine | CostLine | Retire


def parse_message(untrusted_line: bytes) -> Message:
    """Parse one message (without its newline); raise ProtocolError(reason word)."""
    if len(untrusted_line) >= MAX_LINE_BYTES:
        raise ProtocolError("too-long")
    match = _REGISTER.fullmatch(untrusted_line)
    if match is not None:
        seconds = float(match.group(3)) if match.group(3) else None
        if seconds is not None and seconds <= 0:
            raise ProtocolError("malformed")
        created = match.group(4).decode("ascii") if match.group(4) else None
        return Register(
            match.group(1).decode("ascii"),
            bytes.fromhex(match.group(2).decode()),
            seconds,
            created,
        )
    try:
        line = _parse_line(untrusted_line)
    except StoreError as err:
        raise ProtocolError("malformed") from err
    # Lines the LogVM keeps to itself (compaction, gaps, v1 tombs) are not messages.
    if isinstance(line, EpochLine | Tomb) and line.kind not in ("epoch", "tomb"):
        raise ProtocolError("kind")
    if isinstance(line, Seal) and line.kind == "tomb":
        raise ProtocolError("kind")
    return line


def _parse_line(untrusted_line: bytes) -> Held:
    """A sealed line of any kind, by its version prefix; StoreError if malformed."""
    if untrusted_line.startswith(b"k1 "):
        return parse_cost_line(untrusted_line)
    if untrusted_line.startswith(b"s1 "):
        return parse_settings_line(untrusted_line)
    if untrusted_line.startswith(b"v2 "):
        return parse_epoch_line(untrusted_line)
    if untrusted_line.startswith(b"t1 "):
        return parse_tomb(untrusted_line)
    if untrusted_line.startswith(b"r1 "):
        return parse_retire(untrusted_line)
    return parse_seal(untrusted_line)


def judge_checkpoint(held: Seal | None, new: Seal) -> str | None:
    """Compare a MAC-checked checkpoint with the newest one held for its qube.

    Returns None to store it, ``"seen"`` for an identical one, otherwise an
    ``err`` word. Positions only move forward: a later segment, or the same
    segment with no fewer lines and bytes; epochs never go back.
    """
    if held is None or new == held:
        return None if held is None else "seen"
    if new.epoch < held.epoch or new.seq < held.seq:
        return "stale"
    if new.seq > held.seq:
        return None
    same_bytes = new.nbytes == held.nbytes
    # Checked in order; the first that holds is the verdict.
    rules = (
        (held.is_final, "closed"),
        (new.kind == "open", "fork"),
        (new.lines < held.lines or new.nbytes < held.nbytes, "stale"),
        # Every seal advances the head, even over no new bytes (a tick), so
        # only counts can contradict each other at one position.
        (same_bytes and new.lines != held.lines, "fork"),
        (not same_bytes and new.head == held.head, "fork"),
    )
    return next((verdict for broken, verdict in rules if broken), None)


def judge_deletion(held: Tomb | None, new: Tomb) -> str | None:
    """Compare a MAC-checked deletion with the newest one held for its qube.

    None to store it, ``"seen"`` for the same one again, else an ``err`` word:
    deletions only move forward (oldest segment first).
    """
    if held is None or new.last > held.last:
        return None if held is None or new.epoch >= held.epoch else "stale"
    return "seen" if new == held else "stale"


def judge_retire(held: Retire | None, new: Retire) -> str | None:
    """Compare a MAC-checked retirement with the newest one held for its qube: None
    to store it (the qube's earlier checkpoints, deletions and cost notes are then
    dropped: a name reused later starts a new chain), ``"seen"``, or ``"stale"``."""
    if held is None or new.epoch > held.epoch:
        return None
    return "seen" if new == held else "stale"


def judge_epoch(held: EpochLine | None, new: EpochLine) -> str | None:
    """Compare a MAC-checked epoch line with the newest one held: epochs only go forward."""
    if held is None or new.epoch > held.epoch:
        return None
    if new == held:
        return "seen"
    return "fork" if new.epoch == held.epoch else "stale"


def judge_settings(held: SettingsLine | None, new: SettingsLine) -> str | None:
    """None to store a settings note (a change), ``"seen"`` for the same settings again."""
    if held is not None and new.digest == held.digest:
        return "seen"
    if held is not None and new.epoch < held.epoch:
        return "stale"
    return None


def judge_cost(held: CostLine | None, new: CostLine) -> str | None:
    """None to store a cost note, ``"seen"`` for the same one again, else ``"stale"``:
    each goes with later deletions than the one before (oldest segment first)."""
    if held is None or (new.seq > held.seq and new.epoch >= held.epoch):
        return None
    return "seen" if new == held else "stale"


def format_ep_line(stamp: bytes, line: EpochLine) -> bytes:
    """A stored epoch line: ``ep <witness time> <epoch line>\n``."""
    return b"ep " + stamp + b" " + line.to_line()


def format_held_line(stamp: bytes, held: Held) -> bytes:
    """Any held record as stored (``cp``, ``del`` or ``ep``)."""
    if isinstance(held, Tomb):
        return format_del_line(stamp, held)
    if isinstance(held, EpochLine):
        return format_ep_line(stamp, held)
    if isinstance(held, SettingsLine):
        return b"set " + stamp + b" " + held.to_line()
    if isinstance(held, CostLine):
        return b"cost " + stamp + b" " + held.to_line()
    if isinstance(held, Retire):
        return b"ret " + stamp + b" " + held.to_line()
    return format_cp_line(stamp, held)


def format_del_line(stamp: bytes, tomb: Tomb) -> bytes:
    """A stored deletion: ``del <witness time> <tomb line>\n``."""
    return b"del " + stamp + b" " + tomb.to_line()


def parse_held_line(line: bytes) -> tuple[bytes, Held]:
    """A stored checkpoint, deletion or epoch line (without newline); StoreError if bad."""
    if line.startswith(b"cost "):
        match = _COST_HELD.fullmatch(line)
        if match is None:
            raise StoreError("malformed cost line")
        return match.group(1), parse_cost_line(match.group(2))
    if line.startswith(b"set "):
        match = _SET_LINE.fullmatch(line)
        if match is None:
            raise StoreError("malformed settings line")
        return match.group(1), parse_settings_line(match.group(2))
    if line.startswith(b"ep "):
        match = _EP_LINE.fullmatch(line)
        if match is None:
            raise StoreError("malformed epoch line")
        epoch_line = parse_epoch_line(match.group(2))
        if epoch_line.kind != "epoch":
            raise StoreError("a held epoch line is never a gap")
        return match.group(1), epoch_line
    if line.startswith(b"ret "):
        match = _RET_LINE.fullmatch(line)
        if match is None:
            raise StoreError("malformed retire line")
        return match.group(1), parse_retire(match.group(2))
    if line.startswith(b"del "):
        match = _DEL_LINE.fullmatch(line)
        if match is None:
            raise StoreError("malformed deletion line")
        return match.group(1), parse_tomb(match.group(2))
    return parse_cp_line(line)


def format_cp_line(stamp: bytes, seal: Seal) -> bytes:
    """A stored checkpoint: ``cp <witness time> <seal line>\\n``."""
    return b"cp " + stamp + b" " + seal.to_line()


def parse_cp_line(line: bytes) -> tuple[bytes, Seal]:
    """Inverse of :func:`format_cp_line` (line without newline); StoreError if bad."""
    match = _CP_LINE.fullmatch(line)
    if match is None:
        raise StoreError("malformed checkpoint line")
    return match.group(1), parse_seal(match.group(2))


def format_policy_line(policy: bytes) -> bytes:
    """The export line carrying the deployed policy (dom0 passes it on, never reads it)."""
    return POLICY_PREFIX + policy.hex().encode("ascii") + b"\n"


def parse_policy_line(line: bytes) -> bytes:
    """The policy bytes of an export's policy line (without newline); StoreError if bad."""
    try:
        data = bytes.fromhex(line[len(POLICY_PREFIX) :].decode("ascii"))
    except (UnicodeDecodeError, ValueError) as err:
        raise StoreError("malformed policy line") from err
    if len(data) > MAX_POLICY_BYTES:
        raise StoreError("policy line too long")
    return data


def format_export_header(
    logvm: str, store_id: str, epoch_seconds: float | None = None, created: str | None = None
) -> bytes:
    """First line of an export file (with the epoch length and creation time the
    LogVM registered, if it did)."""
    extra = "" if epoch_seconds is None else f" epoch-seconds={format_seconds(epoch_seconds)}"
    extra += "" if epoch_seconds is None or created is None else f" created={created}"
    return b"%s %s %s%s\n" % (EXPORT_MAGIC, logvm.encode(), store_id.encode(), extra.encode())


def parse_export_header(line: bytes) -> tuple[str, str, float | None, str | None]:
    """(LogVM name, store id, registered epoch length, registered creation time) of an
    export; StoreError if bad."""
    match = _EXPORT_HEADER.fullmatch(line)
    if match is None:
        raise StoreError("not a logvm-witness export (bad first line)")
    seconds = float(match.group(3)) if match.group(3) else None
    created = match.group(4).decode("ascii") if match.group(4) else None
    return match.group(1).decode("ascii"), match.group(2).decode("ascii"), seconds, created

"""One LogVM's state at the witness: key, checkpoints, events (programs floor).

Runs in dom0. Directory ``<root>/<logvm>/``:

- ``key``: ``logvm-vk1:<store id>:<K0>``, written once (trust on first use);
- ``checkpoints.<gen>``: accepted checkpoints (``cp <time> <seal line>``),
  deletions (``del <time> <tomb line>``) and format-2 store-wide epoch lines
  (``ep <time> <epoch line>``), settings notes (``set``) and cost notes
  (``cost``), appended and fsynced; ``<time>`` is dom0's
  clock when the line was accepted. When one passes ``max_log_bytes`` a new
  generation starts with the newest checkpoint, deletion and cost note of
  each qube and the newest epoch line and settings note, and generations older than
  the previous one are removed, so the directory stays within
  :meth:`Limits.storage_bound` whatever the LogVM sends;
- ``events``/``events.1``: registrations and refusals (bounded, rotated);
- ``refused-key``: the last different key offered (shown by ``list``);
- ``epoch-seconds``: the store's epoch length, when the registration gave
  it (written once with the key): the epoch cap's minimum epoch;
- ``created``: the store's creation time, when the registration gave it
  (written once with the key, exported for the verifier);
- ``bounds``, ``keys``: the hashing budget, epoch anchor and key cache kept
  across calls (:mod:`.bounds`);
- ``lock``: one connection per LogVM at a time.

Trust side: the files are the witness's own; what goes into them is only
validated tokens (hex, decimal, qube names) from parsed messages.
"""

import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..core.epochseal import EpochLine
from ..core.errors import LogvmError, ProtocolError, StoreError
from ..core.records import format_timestamp
from ..core.retire import Retire
from ..core.seal import EpochKeys, Seal, format_verification_key, parse_verification_key
from ..core.tomb import Tomb
from ..core.witness_format import (
    CREATED,
    CostLine,
    Held,
    Message,
    Register,
    SettingsLine,
    format_held_line,
    format_seconds,
    judge_checkpoint,
    judge_cost,
    judge_deletion,
    judge_epoch,
    judge_retire,
    judge_settings,
    parse_held_line,
    parse_message,
)
from .bounds import MAX_KEYS, Bounds, load_keys, save_keys

logger = logging.getLogger(__name__)

LOCK_WAIT_SECONDS = 10.0
_GEN = re.compile(r"checkpoints\.([1-9][0-9]{0,8})")
_MAX_KEY_FILE = 256
#: Bytes one stored checkpoint, deletion or cost line can take (for the storage bound).
CP_LINE_MAX = 440
#: Lines per qube a new generation starts with: checkpoint, deletion, cost note.
HELD_PER_QUBE = 3
#: Bytes one stored retirement can take (a tomb line inside it).
RET_LINE_MAX = 640

Clock = Callable[[], float]
#: The lines the witness holds one of per qube.
_PerQube = TypeVar("_PerQube", Seal, Tomb, CostLine)


@dataclass(frozen=True)
class Limits:
    """Bounds on what one LogVM can make the witness do."""

    rate: float = 50.0  # messages per second, per connection
    burst: float = 500.0
    hash_rate: float = 100_000.0  # key derivations per second
    hash_burst: float = float(1 << 23)  # enough to catch up ~8M epochs at once
    max_log_bytes: int = 16 << 20  # per checkpoint generation (two are kept)
    max_event_bytes: int = 256 << 10  # per events file (two are kept)
    max_qubes: int = 4096
    #: Retired names held (each carried into every generation); past it the
    #: oldest retirement is forgotten. None: as many as ``max_qubes``.
    max_retired: int | None = None
    max_refusals: int = 10_000  # per connection, then the witness hangs up
    max_events_per_connection: int = 100
    min_epoch_seconds: float = 1.0  # the epoch cap: no epoch is shorter
    max_call_seconds: float = 3600.0  # then ``err call-limit`` and the call ends
    max_call_messages: int = 200_000

    @property
    def retired_cap(self) -> int:
        """Retired names held at most."""
        return self.max_qubes if self.max_retired is None else self.max_retired

    def held_bytes(self) -> int:
        """The most a new generation starts with: a checkpoint, a deletion and a cost
        note per qube, and every retirement held."""
        return HELD_PER_QUBE * self.max_qubes * CP_LINE_MAX + self.retired_cap * RET_LINE_MAX

    def check(self) -> None:
        """Refuse settings under which the storage bound would not hold."""
        if self.retired_cap < 1:
            raise LogvmError("max-retired must be at least 1")
        if self.max_log_bytes < 2 * self.held_bytes():
            raise LogvmError(
                f"max-log-bytes must be at least 2 * ({HELD_PER_QUBE} * max-qubes * "
                f"{CP_LINE_MAX} + max-retired * {RET_LINE_MAX})"
            )
        if not self.min_epoch_seconds > 0:
            raise LogvmError("min-epoch-seconds must be positive")

    def storage_bound(self) -> int:
        """The most bytes one LogVM's directory can hold."""
        return 2 * self.max_log_bytes + 2 * self.held_bytes() + 2 * self.max_event_bytes


def fsync_dir(path: Path) -> None:
    """Make a directory entry change durable.

    A copy of :func:`qubes_logvm.daemon_support.fsync_dir`: the witness imports
    only the core and the stdlib (it runs in dom0), so it keeps its own.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, *, exclusive: bool) -> None:
    """Write a whole file durably; exclusive: fail if it exists."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def _append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _generations(path: Path) -> list[int]:
    gens = []
    for name in os.listdir(path):
        match = _GEN.fullmatch(name)
        if match:
            gens.append(int(match.group(1)))
    return sorted(gens)


def read_key(path: Path) -> tuple[str, bytes] | None:
    """The registered (store id, K0) of one LogVM directory, or None."""
    try:
        with open(path / "key", "rb") as f:
            data = f.read(_MAX_KEY_FILE)
    except FileNotFoundError:
        return None
    return parse_verification_key(data.decode("ascii", "replace"))


def _registered(path: Path, name: str) -> str | None:
    """A small file the registration wrote with the key (None: not given)."""
    try:
        with open(path / name, "rb") as f:
            return f.read(32).decode("ascii", "replace").strip()
    except FileNotFoundError:
        return None


def read_epoch_seconds(path: Path) -> float | None:
    """The epoch length the LogVM registered with its key (None: not given)."""
    try:
        seconds = float(_registered(path, "epoch-seconds") or "")
    except ValueError:
        return None
    return seconds if 0 < seconds < 1e9 else None


def read_created(path: Path) -> str | None:
    """The creation time the LogVM registered with its key (None: not given)."""
    text = _registered(path, "created")
    return text if text is not None and CREATED.fullmatch(text) else None


def read_checkpoints(path: Path) -> Iterator[tuple[bytes, Held]]:
    """Every checkpoint and deletion held (older generation first), torn or bad lines skipped.

    One at a time: a call keeps only the newest per qube (bounded by max_qubes).
    """
    for gen in _generations(path)[-2:]:
        with open(path / f"checkpoints.{gen}", "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn by a crash mid-append: never acknowledged
                try:
                    yield parse_held_line(line[:-1])
                except StoreError:
                    logger.warning("%s: skipping a malformed checkpoint line", path)


class WitnessState:
    """One LogVM's directory, held by one connection at a time."""

    def __init__(self, path: Path, limits: Limits, clock: Clock) -> None:
        self.path = path
        self.limits = limits
        self.clock = clock
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._ino = os.stat(path).st_ino
        self._lock_fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.key = read_key(path)
        self.keys = load_keys(path, self.key[1]) if self.key else None
        self._keys_saved = 0  # self.keys.hashes when the cache was last written
        self.latest: dict[str, tuple[bytes, Seal]] = {}
        self.deleted: dict[str, tuple[bytes, Tomb]] = {}
        self.epoch_line: tuple[bytes, EpochLine] | None = None
        self.settings: tuple[bytes, SettingsLine] | None = None
        self.costs: dict[str, tuple[bytes, CostLine]] = {}
        self.retired: dict[str, tuple[bytes, Retire]] = {}
        for stamp, held in read_checkpoints(path):
            if isinstance(held, Retire):
                self._forget(held.qube)
                self.retired[held.qube] = (stamp, held)
            elif isinstance(held, CostLine):
                self.costs[held.qube] = (stamp, held)
            elif isinstance(held, Tomb):
                self.deleted[held.qube] = (stamp, held)
            elif isinstance(held, EpochLine):
                self.epoch_line = (stamp, held)
            elif isinstance(held, SettingsLine):
                self.settings = (stamp, held)
            else:
                self.latest[held.qube] = (stamp, held)
        gens = _generations(path)
        self.gen = gens[-1] if gens else 1
        self._repair_tail()
        # Epochs are never shorter than the store's own length (the collector's
        # timer never catches up), when the registration said what it is.
        shortest = max(limits.min_epoch_seconds, read_epoch_seconds(path) or 0.0)
        self.bounds = Bounds.load(path, limits.hash_rate, limits.hash_burst, shortest, clock())
        self.counts = {"stored": 0, "refused": 0, "suppressed": 0}
        self._events_written = 0

    def lock(self) -> bool:
        """Take this LogVM's lock, waiting a little for a closing connection."""
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.1)

    def close(self) -> None:
        """Keep the key cache, release the lock."""
        try:
            if self.keys is not None and self.keys.hashes > self._keys_saved:
                self._save_keys()
        finally:
            os.close(self._lock_fd)

    def _save_keys(self) -> None:
        if self.keys is not None and not self.was_reset():
            save_keys(self.path, self.keys)
            self._keys_saved = self.keys.hashes

    @property
    def cp_path(self) -> Path:
        """The current checkpoint generation."""
        return self.path / f"checkpoints.{self.gen}"

    def _repair_tail(self) -> None:
        # A crash mid-append leaves a line without newline, never acknowledged:
        # cut it so that the next append starts a clean line.
        try:
            with open(self.cp_path, "r+b") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
                    os.fsync(f.fileno())
                self.cp_size = f.seek(0, os.SEEK_END)
        except FileNotFoundError:
            self.cp_size = 0

    def was_reset(self) -> bool:
        """True when an admin moved this directory away (``reset-key``)."""
        try:
            return os.stat(self.path).st_ino != self._ino
        except FileNotFoundError:
            return True

    def stamp(self) -> bytes:
        """The witness's time, as stored."""
        return format_timestamp(self.clock())

    def event(self, word: str, *, always: bool = False, **fields: str | int) -> None:
        """Record a refusal or registration (values are validated tokens only)."""
        self._event(word, fields, always=always)

    def _event(self, word: str, fields: Mapping[str, str | int], *, always: bool = False) -> None:
        if not always and self._events_written >= self.limits.max_events_per_connection:
            self.counts["suppressed"] += 1
            return
        self._events_written += 1
        pairs = "".join(f" {k}={v}" for k, v in fields.items())
        line = self.stamp() + f" {word}{pairs}\n".encode("ascii")
        events = self.path / "events"
        try:
            size = os.stat(events).st_size
        except FileNotFoundError:
            size = 0
        if size + len(line) > self.limits.max_event_bytes:
            os.replace(events, self.path / "events.1")
        _append(events, line)

    def handle(self, untrusted_line: bytes) -> str:
        """Answer one message (newline stripped)."""
        if self.was_reset():
            return "err reset"
        try:
            message = parse_message(untrusted_line)
        except ProtocolError as err:
            return f"err {err}"
        return self._answer(message)

    def _answer(self, message: Message) -> str:
        """The answer to one parsed message."""
        if isinstance(message, Register):
            return self.register(message)
        return self._answer_held(message)

    def _answer_held(self, message: Held) -> str:
        if isinstance(message, Tomb):
            return self.deletion(message)
        if isinstance(message, EpochLine):
            return self.epoch(message)
        if isinstance(message, SettingsLine):
            return self.settings_note(message)
        if isinstance(message, CostLine):
            return self.cost_note(message)
        if isinstance(message, Retire):
            return self.retirement(message)
        return self.checkpoint(message)

    def register(self, message: Register) -> str:
        """Trust on first use; a different key later is refused and reported."""
        offered = format_verification_key(message.store_id, message.key0)
        if self.key is not None:
            if self.key == (message.store_id, message.key0):
                return "ok known"
            logger.warning("%s offered a different verification key: refused", self.path.name)
            write_file(
                self.path / "refused-key",
                self.stamp() + b" " + offered.encode() + b"\n",
                exclusive=False,
            )
            self.event("key-mismatch", store=message.store_id)
            return "err key-mismatch"
        if message.epoch_seconds is not None:
            seconds = format_seconds(message.epoch_seconds).encode("ascii") + b"\n"
            write_file(self.path / "epoch-seconds", seconds, exclusive=False)
            self.bounds.min_epoch_seconds = max(
                self.bounds.min_epoch_seconds, message.epoch_seconds
            )
        if message.created is not None:
            write_file(self.path / "created", message.created.encode() + b"\n", exclusive=False)
        write_file(self.path / "key", offered.encode("ascii") + b"\n", exclusive=True)
        self.key = (message.store_id, message.key0)
        self.keys = EpochKeys(message.key0, max_keys=MAX_KEYS)
        self.event("registered", store=message.store_id)
        logger.info(
            "%s registered its verification key (store %s)", self.path.name, message.store_id
        )
        return "ok registered"

    def checkpoint(self, seal: Seal) -> str:
        """Check a checkpoint (:meth:`_judged`); store it if it moves forward."""
        return self._per_qube(
            seal,
            self.latest,
            judge_checkpoint,
            qube=seal.qube,
            seq=seal.seq,
            lines=seal.lines,
            epoch=seal.epoch,
        )

    def deletion(self, tomb: Tomb) -> str:
        """Check a deletion like a checkpoint; store it if it is newer than the one held."""
        return self._per_qube(
            tomb, self.deleted, judge_deletion, qube=tomb.qube, deleted=tomb.last, epoch=tomb.epoch
        )

    def retirement(self, line: Retire) -> str:
        """A qube whose segments were all deleted and whose directory the LogVM
        removed: held (carried into each new generation), and the qube's
        checkpoints, deletions and cost notes dropped (the older generations and
        the export keep them; a name reused later starts a new chain)."""
        held = self.retired.get(line.qube)

        def keep(stamp: bytes) -> None:
            self._forget(line.qube)
            if line.qube not in self.retired and len(self.retired) >= self.limits.retired_cap:
                # Bounded (a compromised LogVM holds the key and may retire any
                # number of names): the oldest retirement is forgotten. Its
                # qube's checkpoints went with it already; the name is unknown.
                oldest = next(iter(self.retired))
                del self.retired[oldest]
                self.event("retirement-forgotten", qube=oldest)
            self.retired[line.qube] = (stamp, line)

        verdict = judge_retire(held[1] if held else None, line)
        return self._judged(line, verdict, {"qube": line.qube, "epoch": line.epoch}, keep)

    def _qubes_held(self) -> int:
        """Qubes the witness holds a checkpoint, deletion or cost note of (each of
        the three is bounded by ``max_qubes`` only through this count)."""
        return len(self.latest.keys() | self.deleted.keys() | self.costs.keys())

    def _forget(self, qube: str) -> None:
        self.latest.pop(qube, None)
        self.deleted.pop(qube, None)
        self.costs.pop(qube, None)

    def cost_note(self, line: CostLine) -> str:
        """What a qube counted when the collector deleted for its quota (the newest per
        qube is carried into each new generation; the export keeps the history)."""
        return self._per_qube(
            line, self.costs, judge_cost, qube=line.qube, deleted=line.seq, epoch=line.epoch
        )

    def _per_qube(
        self,
        line: _PerQube,
        table: dict[str, tuple[bytes, _PerQube]],
        judge: Callable[[_PerQube | None, _PerQube], str | None],
        **fields: str | int,
    ) -> str:
        """A line of one qube, judged against the newest of its kind held in ``table``
        (``fields``: what a refusal's event says)."""
        held = table.get(line.qube)

        def keep(stamp: bytes) -> None:
            table[line.qube] = (stamp, line)

        known = line.qube in self.latest or line.qube in self.deleted or line.qube in self.costs
        verdict = judge(held[1] if held else None, line)
        return self._judged(line, verdict, fields, keep, None if known else line.qube)

    def epoch(self, line: EpochLine) -> str:
        """Check a store-wide epoch line like a checkpoint; store it if its epoch is newer."""
        verdict = judge_epoch(self.epoch_line[1] if self.epoch_line else None, line)

        def keep(stamp: bytes) -> None:
            self.epoch_line = (stamp, line)

        return self._judged(line, verdict, {"store_epoch": line.epoch}, keep)

    def settings_note(self, line: SettingsLine) -> str:
        """A change of the collector's settings, kept with dom0's time (the newest is
        carried into each new generation)."""
        verdict = judge_settings(self.settings[1] if self.settings else None, line)

        def keep(stamp: bytes) -> None:
            self.settings = (stamp, line)

        return self._judged(line, verdict, {"settings_epoch": line.epoch}, keep)

    def _judged(
        self,
        line: Held,
        verdict: str | None,
        fields: Mapping[str, str | int],
        keep: Callable[[bytes], None],
        new_qube: str | None = None,
    ) -> str:
        """What every message but a registration goes through, once judged against
        the newest line of its kind held (``verdict``, from the core's ``judge_*``).

        In order, everything that needs no key first: registered; ``seen``, or
        a refusal recorded as an event with ``fields``; the per-LogVM limit of
        qubes when the line is the first of ``new_qube`` the witness holds;
        then the epoch cap, the hashing budget and the MAC
        (:meth:`_mac_refusal`); then stored with dom0's time and handed to
        ``keep`` to hold as the newest.
        """
        if self.keys is None:
            return "err not-registered"
        if verdict == "seen":
            return "ok seen"
        if verdict is not None:
            self._event(verdict, fields)
            return f"err {verdict}"
        if new_qube is not None and self._qubes_held() >= self.limits.max_qubes:
            self.event("too-many-qubes", qube=new_qube)
            return "err too-many-qubes"
        refusal = self._mac_refusal(line)
        if refusal is not None:
            return refusal
        stamp = self.stamp()
        self._store(format_held_line(stamp, line))
        keep(stamp)
        self._accepted(line.epoch)
        return "ok stored"

    def _accepted(self, epoch: int) -> None:
        if self.keys is None:
            return
        self.bounds.accepted(epoch, self.clock(), self.keys.hashes)
        if self.keys.hashes - self._keys_saved >= EpochKeys.STRIDE:
            self._save_keys()  # a long walk is not repeated by the next call

    def _store(self, line: bytes) -> None:
        if self.cp_size + len(line) > self.limits.max_log_bytes:
            self._next_generation()
        _append(self.cp_path, line)
        self.cp_size += len(line)
        self.counts["stored"] += 1

    def _mac_refusal(self, seal: Held) -> str | None:
        """Epoch cap, hashing budget, then the MAC (a compromised LogVM chooses epochs)."""
        if self.keys is None:
            return "err not-registered"
        now = self.clock()
        qube = "-" if isinstance(seal, EpochLine | SettingsLine) else seal.qube
        if self.bounds.too_far(seal.epoch, now):
            self.event("epoch-jump", qube=qube, epoch=seal.epoch)
            return "err epoch-jump"
        if not self.bounds.take(self.keys.cost(seal.epoch), now, self.keys.hashes):
            return "err busy"
        if not seal.mac_ok(self.keys.key(seal.epoch)):
            self.event("bad-mac", qube=qube, epoch=seal.epoch)
            return "err bad-mac"
        return None

    def _next_generation(self) -> None:
        """Start a new file with the newest checkpoint of each qube; drop the oldest."""
        held: list[tuple[bytes, Held]] = [
            *self.retired.values(),  # first: reading one back forgets the qube's older lines
            *self.latest.values(),
            *self.deleted.values(),
            *self.costs.values(),
        ]
        if self.epoch_line is not None:
            held.append(self.epoch_line)
        if self.settings is not None:
            held.append(self.settings)
        snapshot = b"".join(format_held_line(stamp, line) for stamp, line in held)
        new = self.path / f"checkpoints.{self.gen + 1}"
        tmp = self.path / f"checkpoints.{self.gen + 1}.tmp"
        write_file(tmp, snapshot, exclusive=False)
        os.replace(tmp, new)
        fsync_dir(self.path)
        self.gen += 1
        self.cp_size = len(snapshot)
        for gen in _generations(self.path)[:-2]:
            os.unlink(self.path / f"checkpoints.{gen}")

"""What one LogVM may make the witness compute, kept across calls (programs floor).

Runs in dom0. A compromised LogVM holds the current key, so it can send
validly MACed checkpoints for any epoch it likes, on as many calls as it
likes. Two files in the LogVM's directory bound what that costs dom0:

- ``bounds``: ``logvm-witness-bounds-v1 <tokens> <stamp> <anchor> <hashes>``:
  the hashing budget (a token bucket: tokens left at dom0 time ``stamp``),
  the epoch anchor (``<epoch>@<dom0 time>`` of the first record accepted,
  or ``none``) and the hashes spent so far, all calls together;
- ``keys``: the key cache (:class:`~..core.seal.KeyLadder`, at most
  :data:`MAX_KEYS` keys), so a new call does not walk from ``K[0]`` again.

The checks, made after the grammar, the registration, the position and the
per-qube limit and before any key is derived (:class:`.state.WitnessState`):

1. **epoch jump**: an epoch must be one that can exist by dom0's clock, at
   most ``anchor epoch + (now - anchor time) / min_epoch_seconds * 1.01 +
   64`` (epochs last at least ``min_epoch_seconds``; 1% for clock drift, 64
   for what was sealed just before the anchor); beyond: ``err epoch-jump``;
2. **budget**: the hashes the lookup costs (:meth:`EpochKeys.cost`) must be
   in the bucket, else ``err busy``; the bucket is debited and written
   before the hashing starts, so ending the call does not refill it.

Trust side: the files are dom0's own (written tmp + fsync + rename); a file
that does not parse is ignored with a warning (the budget then starts full,
the cache empty: bounded either way).
"""

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..core.ratelimit import TokenBucket
from ..core.seal import EpochKeys, KeyLadder

logger = logging.getLogger(__name__)

#: Most keys the witness holds per LogVM (memory and the ``keys`` file).
MAX_KEYS = 1024
#: Slack on the epoch cap: clock drift (relative) and epochs (absolute).
CLOCK_SLACK = 1.01
EPOCH_SLACK = 64
_MAX_FILE = 256 << 10
_NUM = r"(0|[1-9][0-9]{0,17})"
_FLOAT = r"([0-9]{1,16}(?:\.[0-9]{1,9})?)"
_BOUNDS = re.compile(
    rf"logvm-witness-bounds-v1 {_FLOAT} {_FLOAT} (?:none|{_NUM}@{_FLOAT}) {_NUM}\n"
)
_KEYS_HEAD = re.compile(rf"logvm-witness-keys-v1 {_NUM} {_NUM} ([0-9a-f]{{64}})")
_MARK = re.compile(r"m ([0-9a-f]{64})")
_RECENT = re.compile(rf"r {_NUM} ([0-9a-f]{{64}})")


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(_MAX_FILE).decode("ascii", "replace")
    except FileNotFoundError:
        return None


@dataclass
class Bounds:
    """One LogVM's hashing budget and epoch anchor, as kept in ``bounds``."""

    path: Path
    budget: TokenBucket
    min_epoch_seconds: float
    anchor: tuple[int, float] | None = None
    hashes: int = 0  # spent by earlier calls

    @classmethod
    def load(
        cls, path: Path, rate: float, burst: float, min_epoch_seconds: float, now: float
    ) -> "Bounds":
        """The kept state of ``path`` (a LogVM's directory), or a fresh one."""
        text = _read(path / "bounds")
        match = _BOUNDS.fullmatch(text) if text is not None else None
        if text is not None and match is None:
            logger.warning("%s/bounds does not parse: starting a fresh budget", path)
        if match is None:
            return cls(path / "bounds", TokenBucket(rate, burst, now), min_epoch_seconds)
        tokens, stamp, epoch, when, hashes = match.groups()
        budget = TokenBucket(rate, burst, float(stamp), tokens=float(tokens))
        anchor = None if epoch is None else (int(epoch), float(when))
        return cls(path / "bounds", budget, min_epoch_seconds, anchor, int(hashes))

    def epoch_cap(self, now: float) -> int | None:
        """The highest epoch that can exist now by dom0's clock (None: no record yet)."""
        if self.anchor is None:
            return None
        epoch, since = self.anchor
        elapsed = max(0.0, now - since)
        return epoch + int(elapsed / self.min_epoch_seconds * CLOCK_SLACK) + EPOCH_SLACK

    def too_far(self, epoch: int, now: float) -> bool:
        """True when ``epoch`` cannot exist yet (``err epoch-jump``)."""
        cap = self.epoch_cap(now)
        return cap is not None and epoch > cap

    def take(self, cost: int, now: float, spent_now: int) -> bool:
        """Debit ``cost`` hashes (written before they are computed); False: ``err busy``."""
        if cost == 0:
            return True
        if not self.budget.take(cost, now):
            return False
        self.save(now, spent_now + cost)
        return True

    def accepted(self, epoch: int, now: float, spent_now: int) -> None:
        """A record of ``epoch`` was stored: the first one anchors the epoch cap."""
        if self.anchor is None:
            self.anchor = (epoch, now)
            self.save(now, spent_now)

    def save(self, now: float, spent_now: int) -> None:
        """Write the state (``spent_now``: hashes this process computed or is about to)."""
        tokens, stamp = self.budget.state(now)
        anchor = "none" if self.anchor is None else f"{self.anchor[0]}@{self.anchor[1]:.6f}"
        spent = self.hashes + spent_now
        line = f"logvm-witness-bounds-v1 {tokens:.3f} {stamp:.6f} {anchor} {spent}\n"
        _replace(self.path, line.encode("ascii"))


def load_keys(path: Path, key0: bytes) -> EpochKeys:
    """The kept key cache of a LogVM's directory, or a fresh one from ``K[0]``."""
    text = _read(path / "keys")
    if text is None:
        return EpochKeys(key0, max_keys=MAX_KEYS)
    try:
        return EpochKeys.resume(key0, _parse_keys(text), max_keys=MAX_KEYS)
    except ValueError:
        logger.warning("%s/keys does not fit the registered key: starting afresh", path)
        return EpochKeys(key0, max_keys=MAX_KEYS)


def _parse_keys(text: str) -> KeyLadder:
    lines = text.split("\n")
    head = _KEYS_HEAD.fullmatch(lines[0])
    if head is None or lines[-1] != "":
        raise ValueError("bad key cache")
    marks: list[bytes] = []
    recent: list[tuple[int, bytes]] = []
    for line in lines[1:-1]:
        mark, near = _MARK.fullmatch(line), _RECENT.fullmatch(line)
        if mark is not None:
            marks.append(bytes.fromhex(mark.group(1)))
        elif near is not None:
            recent.append((int(near.group(1)), bytes.fromhex(near.group(2))))
        else:
            raise ValueError("bad key cache line")
    stride, top = int(head.group(1)), int(head.group(2))
    return KeyLadder(stride, tuple(marks), top, bytes.fromhex(head.group(3)), tuple(recent))


def save_keys(path: Path, keys: EpochKeys) -> None:
    """Write the key cache of a LogVM's directory (``keys``)."""
    ladder = keys.ladder()
    out = [f"logvm-witness-keys-v1 {ladder.stride} {ladder.top_epoch} {ladder.top_key.hex()}"]
    out += [f"m {mark.hex()}" for mark in ladder.marks]
    out += [f"r {epoch} {key.hex()}" for epoch, key in ladder.recent]
    _replace(path / "keys", ("\n".join(out) + "\n").encode("ascii"))


def kept_summary(path: Path) -> str:
    """What ``logvm-witness list`` shows of a LogVM's bounds."""
    text = _read(path / "bounds")
    match = _BOUNDS.fullmatch(text) if text is not None else None
    keys = _read(path / "keys")
    held = 0 if keys is None else keys.count("\n")
    spent = match.group(5) if match is not None else "0"
    anchor = "none yet" if match is None or match.group(3) is None else f"epoch {match.group(3)}"
    return f"hashes spent {spent}, keys cached {held} (max {MAX_KEYS}), epoch anchor {anchor}"

"""What one verification run knows while it walks the store (floor 2).

Trust side: the only trusted input is ``K[0]``; the key file's epoch bounds
which keys are derived (a forged huge epoch must not make the verifier hash
for hours) and is read again while the run goes on, so seals a running
collector makes meanwhile are never taken for forgeries (issue 18).
"""

import hashlib
from dataclasses import dataclass, field

from ...core.errors import SealError, StoreError
from ...core.retire import Retire
from ...core.seal import EpochKeys
from ...core.tomb import Tomb
from ..files import read_regular
from ..keystate import _RECORD_LEN, StoreInfo, _decode
from ..layout import StoreLayout
from .findings import Report

#: Without a usable key file, seal epochs above this are not derived:
#: ~21 years of 10 s epochs.
MAX_EPOCH = 1 << 26
#: Times the key file is read again during one run (it moves once an epoch).
_MAX_REREADS = 64
#: Most epochs walked forward from the last key file reading.
_MAX_WALK = 1 << 20


@dataclass
class VerifyRun:
    """The state of one run."""

    layout: StoreLayout
    store_id: str
    keys: EpochKeys
    report: Report
    info: StoreInfo | None = None
    max_epoch: int = MAX_EPOCH
    key_epoch: int | None = None  # the key file's epoch when the run started
    rereads: int = 0
    tomb_lines: dict[str, list[Tomb]] = field(default_factory=dict)  # valid, per qube
    newest_segment: dict[str, int] = field(default_factory=dict)  # per qube (0: none)
    #: Per qube: (segment, first seal's epoch, last epoch) of every segment checked.
    segment_epochs: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    epoch_jumps: bool = False  # format 2: a seal's epoch may jump (no tick seals)
    #: Per (qube, segment): the first record received before the store was
    #: created, as the last reading of the segment found it (verify/created.py).
    before_created: dict[tuple[str, int], tuple[int, bytes]] = field(default_factory=dict)
    retired: dict[str, Retire] = field(default_factory=dict)  # valid, the newest per qube
    #: Per epoch: the fast path's prepared HMAC inner and outer states
    #: (verify/fast.py), kept across segments: every qube's seals share the
    #: store's epochs.
    mac_inner: dict[int, "hashlib._Hash"] = field(default_factory=dict)
    mac_outer: dict[int, "hashlib._Hash"] = field(default_factory=dict)

    def add(self, severity: str, qube: str | None, message: str, *where: int | None) -> None:
        """Record one finding (``where``: segment, first and last line, as Report.add)."""
        self.report.add(severity, qube, message, *where)

    def key(self, epoch: int) -> bytes | None:
        """``K[epoch]``, walking on from the last lookup; None beyond what may exist."""
        if epoch > self.max_epoch and not self._moved_on(epoch):
            return None
        return self.keys.key(epoch)

    def read_key_file(self) -> tuple[int, bytes] | None:
        """(epoch, key) from state/sealkey when it derives from ``K[0]``; None if not."""
        try:
            raw = read_regular(self.layout.sealkey, _RECORD_LEN)
            store_id, epoch, key = _decode(raw, self.layout.sealkey)
        except (OSError, StoreError, SealError):
            return None
        if store_id != self.store_id or epoch > MAX_EPOCH:
            return None
        return epoch, bytes(key)

    def _moved_on(self, epoch: int) -> bool:
        """A running collector moved its key on: allow epochs up to the new one."""
        if self.key_epoch is None or self.rereads >= _MAX_REREADS:
            return False
        self.rereads += 1
        found = self.read_key_file()
        if found is None or not self.max_epoch < found[0] <= self.max_epoch + _MAX_WALK:
            return False
        if self.keys.key(found[0]) != found[1]:
            return False
        self.max_epoch = found[0]
        return epoch <= self.max_epoch

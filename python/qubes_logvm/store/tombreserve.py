"""The space a tombstone needs, kept aside so a full store can still delete (floor 2).

Deletion writes the segment's tombstone first and unlinks after (a crash
between leaves "a deletion cut short", :mod:`.remnant`), so deleting needs
a few bytes of free space before it frees any. On a filesystem the logs
(or anything else) filled, that write fails with ENOSPC and the store could
never free itself, even after the admin lowers a cap. The collector
therefore keeps ``state/tomb-reserve``, a preallocated file of
:data:`RESERVE_BYTES`: when a tombstone write fails with ENOSPC the reserve
is released and the write tried once more; once the segment is gone (space
freed) the reserve is made again.

The reserve holds no data; any program may remove it (it is re-made at the
collector's next start or deletion). Verify and the snapshot tools ignore
``state/`` apart from the key file.
"""

import logging
import os

from .layout import StoreLayout

log = logging.getLogger(__name__)

#: Enough for many tombstone lines and a compaction's summary file (a few
#: filesystem blocks each).
RESERVE_BYTES = 64 * 1024
RESERVE_NAME = "tomb-reserve"


class TombReserve:
    """The store's reserve file for tombstone writes."""

    def __init__(self, layout: StoreLayout) -> None:
        self.path = layout.state_dir / RESERVE_NAME

    def ensure(self) -> bool:
        """Make the reserve if it is missing; False when there is no room yet."""
        try:
            if os.lstat(self.path).st_size >= RESERVE_BYTES:
                return True
        except FileNotFoundError:
            pass
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            self.path.unlink(missing_ok=True)
            log.debug("no tombstone reserve yet: %s", err)
            return False
        return True

    def release(self) -> bool:
        """Give the reserve's space back for a tombstone write; False if there was none."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning("the store's filesystem is full: tombstone written in the reserved space")
        return True

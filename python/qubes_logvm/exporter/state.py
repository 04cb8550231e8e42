"""Durable source positions (journal cursor, file offsets) in the state dir.

Trust side: files written by this exporter only, but read back with a byte
limit and type checks (a half-written or hand-edited file must not crash the
daemon: it is reported and the source starts fresh).

Positions are saved only for acknowledged records; each save is atomic
(write to a temporary file, fsync, rename, fsync the directory).
"""

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..core.errors import LogvmError

log = logging.getLogger(__name__)

MAX_STATE_BYTES = 4 << 20


class StateError(LogvmError):
    """The state directory cannot be used."""


class StateDir:
    """A directory of small JSON documents, one per source."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as err:
            raise StateError(f"state dir {path}: {err.strerror}") from err

    def load(self, name: str) -> dict[str, Any]:
        """The saved document ``name`` (empty when missing or unusable)."""
        target = self.path / f"{name}.json"
        try:
            with target.open("rb") as handle:
                data = handle.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise StateError(f"{target}: cannot read: {err.strerror}") from err
        if len(data) > MAX_STATE_BYTES:
            log.warning("%s: too large, ignored (starting fresh)", target)
            return {}
        try:
            doc = json.loads(data)
        except ValueError:
            log.warning("%s: not valid JSON, ignored (starting fresh)", target)
            return {}
        if not isinstance(doc, dict):
            log.warning("%s: not a JSON object, ignored (starting fresh)", target)
            return {}
        return doc

    def save(self, name: str, doc: dict[str, Any]) -> None:
        """Replace document ``name`` atomically and durably."""
        target = self.path / f"{name}.json"
        temp = self.path / f".{name}.json.tmp"
        data = json.dumps(doc, sort_keys=True).encode("utf-8")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, target)
            dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as err:
            raise StateError(f"{target}: cannot save: {err.strerror}") from err

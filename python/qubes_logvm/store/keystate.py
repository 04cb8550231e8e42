"""The store's identity and its forward-secure sealing key (floor 2).

Trust side: runs in the LogVM. The key file holds only the *current* epoch's
key; each :meth:`KeyState.advance` overwrites it in place (same blocks, no
rename) and zeroes the old key in memory, so a later intruder finds no key
of an earlier epoch. ``K[0]``, the verification key, is never written here:
:func:`setup_keys` stores ``K[1]`` and returns ``K[0]`` to be shown once.

Known limit (documented in docs/threat-model.md): Python may keep copies of
key bytes in freed memory, and flash or copy-on-write filesystems may keep
old blocks; in-place overwrite is the best a portable daemon can do.
"""

import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import SealError, StoreError
from ..core.seal import evolve, format2_store_id, format_verification_key, valid_store_id
from .files import read_regular
from .layout import STORE_FORMAT, STORE_FORMATS, StoreLayout

_RECORD_LEN = 160
_STORE_JSON_MAX = 4096
_MAGIC = "logvm-sealkey-v1"


@dataclass(frozen=True)
class StoreInfo:
    """Contents of store.json."""

    store_id: str
    epoch_seconds: float
    created: str
    format: int = STORE_FORMAT


def read_store_info(layout: StoreLayout) -> StoreInfo:
    """Read store.json; StoreError if missing or malformed."""
    try:
        # Never follows a link or blocks on a FIFO (an intruder's store.json).
        data = json.loads(read_regular(layout.store_json, _STORE_JSON_MAX))
    except FileNotFoundError as err:
        raise StoreError(f"{layout.root}: no store here (run `logvm setup-keys`)") from err
    except (OSError, ValueError, StoreError) as err:
        raise StoreError(f"{layout.store_json}: unreadable: {err}") from err
    if not isinstance(data, dict) or data.get("format") not in STORE_FORMATS:
        raise StoreError(f"{layout.store_json}: not a store of format 1 or 2")
    store_id = data.get("store_id")
    epoch_seconds = data.get("epoch_seconds")
    if not isinstance(store_id, str) or not valid_store_id(store_id):
        raise StoreError(f"{layout.store_json}: bad store_id")
    if not isinstance(epoch_seconds, int | float) or epoch_seconds <= 0:
        raise StoreError(f"{layout.store_json}: bad epoch_seconds")
    return StoreInfo(
        store_id, float(epoch_seconds), str(data.get("created", "")), int(data["format"])
    )


def _encode(store_id: str, epoch: int, key: bytes) -> bytes:
    body = f"{_MAGIC} {store_id} {epoch:020d} {key.hex()}"
    check = hashlib.sha256(body.encode("ascii")).hexdigest()[:16]
    return f"{body} {check}\n".encode("ascii").ljust(_RECORD_LEN, b" ")


def _decode(raw: bytes, path: Path) -> tuple[str, int, bytearray]:
    damaged = SealError(f"{path}: sealing key file is damaged")
    try:
        magic, store_id, epoch, key_hex, check = raw.decode("ascii").split()
        body = f"{magic} {store_id} {epoch} {key_hex}"
        key = bytearray.fromhex(key_hex)
        number = int(epoch)
    except ValueError as err:
        raise damaged from err
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    if magic != _MAGIC or len(key) != 32 or digest != check:
        raise damaged
    return store_id, number, key


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def setup_keys(
    layout: StoreLayout, *, epoch_seconds: float = 10.0, store_format: int = STORE_FORMAT
) -> str:
    """Create a new store identity and sealing state; return the verification key.

    Refuses if the store already has sealing state: replacing a key would
    make every earlier seal unverifiable and is what an intruder would do.
    """
    if store_format not in STORE_FORMATS:
        raise SealError(f"no store format {store_format}")
    if layout.sealkey.exists() or layout.store_json.exists():
        raise SealError(f"{layout.root}: sealing state exists already; refusing to replace it")
    import secrets  # here: readers of the key state (logvm.Export) start without these

    from ..daemon_support import fsync_dir

    layout.root.mkdir(parents=True, exist_ok=True)
    layout.state_dir.mkdir(mode=0o700, exist_ok=True)
    layout.qubes_dir.mkdir(exist_ok=True)
    key0 = secrets.token_bytes(32)
    store_id = format2_store_id(key0) if store_format >= 2 else secrets.token_hex(16)
    _write_new_file(layout.sealkey, _encode(store_id, 1, evolve(key0)), 0o600)
    info = {
        "format": store_format,
        "store_id": store_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "epoch_seconds": epoch_seconds,
    }
    _write_new_file(layout.store_json, json.dumps(info, indent=1).encode() + b"\n", 0o644)
    fsync_dir(layout.state_dir)
    fsync_dir(layout.root)
    return format_verification_key(store_id, key0)


class KeyState:
    """The current epoch key, held by the one process that seals (the collector).

    Opening takes an exclusive lock on the key file, so a second collector on
    the same store fails instead of forking the key.
    """

    def __init__(self, layout: StoreLayout) -> None:
        self.layout = layout
        self.info = read_store_info(layout)
        try:
            self._fd = os.open(layout.sealkey, os.O_RDWR)
        except FileNotFoundError as err:
            raise SealError(f"{layout.sealkey}: no sealing key (run `logvm setup-keys`)") from err
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(self._fd)
            raise SealError(f"{layout.root}: another process holds the sealing key") from err
        raw = os.pread(self._fd, _RECORD_LEN, 0)
        store_id, self._epoch, self._key = _decode(raw, layout.sealkey)
        if store_id != self.info.store_id:
            os.close(self._fd)
            raise SealError(f"{layout.sealkey}: belongs to another store")

    @property
    def store_id(self) -> str:
        """The store's identity."""
        return self.info.store_id

    @property
    def epoch(self) -> int:
        """The current epoch number."""
        return self._epoch

    @property
    def key(self) -> bytes:
        """The current epoch's key."""
        return bytes(self._key)

    def advance(self) -> None:
        """Move to the next epoch: persist ``K[e+1]``, erase ``K[e]``.

        The key evolves in memory even when the file cannot be written (the
        error is raised after): forward security never waits for the disk;
        the next epoch's write persists the newer key.
        """
        new_key = bytearray(evolve(bytes(self._key)))
        record = _encode(self.store_id, self._epoch + 1, bytes(new_key))
        problem = None
        try:
            if os.pwrite(self._fd, record, 0) != len(record):
                problem = "short write"
            else:
                os.fdatasync(self._fd)
        except OSError as err:
            problem = err.strerror or str(err)
        old = self._key
        self._key, self._epoch = new_key, self._epoch + 1
        old[:] = bytes(len(old))
        if problem is not None:
            raise SealError(
                f"{self.layout.sealkey}: cannot persist epoch {self._epoch}: {problem} "
                "(the key evolved in memory)"
            )

    def close(self) -> None:
        """Release the lock and forget the key."""
        self._key[:] = bytes(len(self._key))
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_epoch(layout: StoreLayout) -> int | None:
    """The key state's current epoch number (never the key), or None without a usable file."""
    try:
        raw = read_regular(layout.sealkey, _RECORD_LEN)
        _, epoch, key = _decode(raw, layout.sealkey)
    except (OSError, StoreError):
        return None
    key[:] = bytes(len(key))
    return epoch


def encode_key_record(store_id: str, epoch: int, key: bytes) -> bytes:
    """A key file's bytes (for rebuilding a store copy's key file from ``K[0]``)."""
    return _encode(store_id, epoch, key)

"""The key registration waiting for the witness: ``state/witness-register`` (floor 2).

Trust side: runs in the LogVM. ``logvm setup-keys`` calls
:func:`queue_registration` with the store root and the ``logvm-vk1:...`` text
that :func:`~.keystate.setup_keys` returned; it writes the registration line
(0600, fsynced). The collector's witness sender
(:mod:`qubes_logvm.collector.witness_sender`) reads it with
:func:`read_registration`, sends it first on every connection until the
witness answers ``ok registered``/``ok known``, then calls
:func:`erase_registration`, which overwrites and deletes it: from then on
``K[0]`` exists nowhere in the LogVM.

The line's grammar is the ``register`` message of
:mod:`qubes_logvm.core.witness_format`.
"""

import contextlib
import os
from pathlib import Path

from ..core.errors import ProtocolError, SealError, StoreError
from ..core.seal import parse_verification_key
from ..core.witness_format import CREATED, Register, format_seconds, parse_message
from ..daemon_support import fsync_dir
from .keystate import read_store_info
from .layout import StoreLayout

PENDING_NAME = "witness-register"


def pending_path(store_root: Path | str) -> Path:
    """Where a key registration waits to be sent."""
    return StoreLayout(store_root).state_dir / PENDING_NAME


def queue_registration(store_root: Path | str, verification_key: str) -> Path:
    """Write the registration for the sender to deliver first (then erase)."""
    store_id, key0 = parse_verification_key(verification_key)
    line = f"register {store_id} {key0.hex()}"
    # Without store.json yet the witness caps epochs by its own minimum.
    with contextlib.suppress(StoreError):
        info = read_store_info(StoreLayout(store_root))
        line += " " + format_seconds(info.epoch_seconds)
        if CREATED.fullmatch(info.created):
            line += " " + info.created
    path = pending_path(store_root)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, f"{line}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
    return path


def read_registration(path: Path) -> bytes | None:
    """The queued registration line (without newline), or None."""
    try:
        with open(path, "rb") as f:
            line = f.read(256).rstrip(b"\n")
    except FileNotFoundError:
        return None
    try:
        if not isinstance(parse_message(line), Register):
            raise SealError(f"{path}: not a registration")
    except ProtocolError as err:
        raise SealError(f"{path}: damaged key registration") from err
    return line


def erase_registration(path: Path) -> None:
    """Overwrite the queued key in place, then remove the file."""
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, bytes(os.fstat(fd).st_size), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        path.unlink()
        fsync_dir(path.parent)

"""A small filesystem of its own for a test, and filling it (disk-full cases).

Real tmpfs mounts (root only: the test is skipped otherwise), so ENOSPC and
inode exhaustion come from the kernel, not from a stand-in.
"""

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(parent: Path, options: str = "size=4m") -> Iterator[Path]:
    """A tmpfs at ``parent/fs`` with mount ``options``, lazily unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem needs root")
    mount = parent / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write zeros to ``path`` until its filesystem is full, to the last block."""
    with path.open("wb") as stream, contextlib.suppress(OSError):
        while True:
            stream.write(b"\0" * 65536)
            stream.flush()

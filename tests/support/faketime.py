"""A process's clocks stepped by the test through libfaketime (test-only).

The offset lives in a file the test rewrites (``+0``, ``-1h``, ``+691200``);
libfaketime reads it on every clock call (``FAKETIME_NO_CACHE``). By default
only the wall clock moves, as when an admin or NTP steps it; with
``monotonic=True`` the monotonic clock moves with it, which lets a test
decide when the collector's epoch timer (on the monotonic clock) fires.
"""

from pathlib import Path

import pytest

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


def faketime_env(offset: Path, *, monotonic: bool = False) -> dict[str, str]:
    """The environment that steps a process's clock by the offset in ``offset`` (now ``+0``)."""
    if not FAKETIME_LIB.exists():
        pytest.skip("libfaketime is not installed (make deps: faketime)")
    offset.write_text("+0\n")
    env = {
        "LD_PRELOAD": str(FAKETIME_LIB),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
    }
    if not monotonic:
        env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
    return env


def step(offset: Path, seconds: float) -> None:
    """Set the clock's offset from the real time, in seconds (``+`` or ``-``)."""
    offset.write_text(f"{seconds:+.0f}\n")

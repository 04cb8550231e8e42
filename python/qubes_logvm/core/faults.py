"""Failure points for fault-injection tests (floor 0).

A test starts a daemon with ``LOGVM_FAIL_POINT=NAME`` (and optionally
``LOGVM_FAIL_AFTER=N``, default 1) in its environment; the N-th time the
code passes :func:`fail_point` with that name the process is SIGKILLed
(``LOGVM_FAIL_SIGNAL=SIGTERM``: sent SIGTERM, as systemd stops it) there,
at a moment no timing luck would hit reliably. Only the daemon's own
environment sets it (an admin or a test), never anything a sender controls;
without the variable a call costs one dictionary lookup.
"""

import os
import signal

_hits: dict[str, int] = {}


def fail_point(name: str) -> None:
    """SIGKILL (or SIGTERM) this process here when the environment asks for it."""
    if os.environ.get("LOGVM_FAIL_POINT") != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    try:
        after = int(os.environ.get("LOGVM_FAIL_AFTER", "1"))
    except ValueError:
        after = 1
    if _hits[name] >= after:
        term = os.environ.get("LOGVM_FAIL_SIGNAL") == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM if term else signal.SIGKILL)

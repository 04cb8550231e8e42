"""Where the tests find the project's programs: one way for every test (test-only).

The console scripts (``logvm``, ``logvm-collector``, ``logvm-exporter``,
``logvm-send``, ``logvm-rotate``, ``logvm-witness``) are installed next to
the interpreter that runs the tests (``make venv``: ``.venv/bin``).
"""

import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def program(name: str) -> Path:
    """The console script ``name`` of the checkout under test."""
    return BIN / name

"""The pager for ``logvm show`` on a terminal, as journalctl does it (floor 3).

Only when standard output is a terminal and neither ``--no-pager`` nor
``-f`` is given. The command is ``$LOGVM_PAGER``, else ``$PAGER``, else
``less`` (an empty value or ``cat`` means no pager), split like a shell
word list (no shell runs). As journalctl does (systemd's
``src/shared/pager.c``, ``pager_open``), ``LESS`` defaults to ``FRSXMK``:
quit if one screen, raw colour sequences (only ours reach it, see
:mod:`.render`), chop long lines, keep the screen, long prompt, quit on
Ctrl-C; ``LESSCHARSET`` defaults to ``utf-8``.
"""

import contextlib
import os
import shlex
from collections.abc import Iterator, Mapping
from typing import BinaryIO, cast

from .common import UsageError

DEFAULT_LESS = "FRSXMK"


def pager_command(environ: Mapping[str, str]) -> list[str] | None:
    """The pager to run, or None for none."""
    for name in ("LOGVM_PAGER", "PAGER"):
        if name in environ:
            value = environ[name].strip()
            if not value or value == "cat":
                return None
            try:
                return shlex.split(value)
            except ValueError as err:
                raise UsageError(f"${name}: cannot split {value!r}: {err}") from err
    return ["less"]


@contextlib.contextmanager
def paged(command: list[str], environ: Mapping[str, str]) -> Iterator[BinaryIO | None]:
    """A stream into the pager (None if it cannot start: print directly)."""
    env = dict(environ)
    env.setdefault("LESS", DEFAULT_LESS)
    env.setdefault("LESSCHARSET", "utf-8")
    import subprocess  # only a terminal gets a pager

    try:
        pager = subprocess.Popen(command, stdin=subprocess.PIPE, env=env)
    except OSError:
        yield None
        return
    stream = cast(BinaryIO, pager.stdin)  # stdin=PIPE: never None
    try:
        yield stream
    finally:
        with contextlib.suppress(OSError):
            stream.close()
        while True:
            try:
                pager.wait()
                break
            except KeyboardInterrupt:
                continue  # Ctrl-C is for the pager (LESS has K); wait for it to end


def use_pager(*, isatty: bool, no_pager: bool, follow: bool) -> bool:
    """Whether ``show`` pages its output."""
    return isatty and not no_pager and not follow and os.environ.get("TERM") != "dumb"

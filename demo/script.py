"""The demo's script: what the simulated qubes log, how it reads the results, how it talks.

Not product code (see :mod:`demo.run`).
"""

import os
import re
import sys
import textwrap
from pathlib import Path

QUBES = ("work", "personal", "disp4711")
MAX_LINE = 4096  # the collector's cap here (default 64 KiB), so a demo-sized line is cut
LONG_LINE = "upload payload=" + "A" * 6000
HOSTILE = "\x1b[2J\x1b[1;32mlogvm verify: all seals OK\x1b[0m\x1b]0;owned\x07 (escape sequences)"
TAMPER_FROM, TAMPER_TO = b"from 10.137.0.5", b"from 10.137.0.9"
# (tool, tag, priority, message). Every tag starts with its qube's name: that
# is the journal filter that makes each exporter ship only "its" qube's lines.
MESSAGES: dict[str, list[tuple[str, str, str, str]]] = {
    "work": [
        ("logger", "work-sshd", "auth.info", "Accepted publickey for user from 10.137.0.5"),
        ("systemd-cat", "work-sudo", "notice", "user : USER=root ; COMMAND=/usr/bin/apt update"),
        ("systemd-cat", "work-app", "warning", HOSTILE),
        ("systemd-cat", "work-app", "info", LONG_LINE),
        ("logger", "work-sshd", "auth.info", "Disconnected from user user 10.137.0.5"),
    ],
    "personal": [
        ("systemd-cat", "personal-firefox", "info", "Downloaded holiday-photos.zip (12 MB)"),
        ("systemd-cat", "personal-thunderbird", "err", "IMAP connection to mail.example lost"),
        ("logger", "personal-backup", "user.notice", "backup of /home/user finished"),
    ],
    "disp4711": [
        ("systemd-cat", "disp4711-evince", "info", "opened invoice-2026-11.pdf (view only)"),
        ("systemd-cat", "disp4711-evince", "warning", "invoice-2026-11.pdf: JavaScript ignored"),
        ("systemd-cat", "disp4711-shutdown", "notice", "last words before poweroff"),
    ],
}  # fmt: skip


def say(text: str, *, gap: bool = True) -> None:
    """Print one paragraph of explanation, wrapped (``gap``: after a blank line)."""
    wrapped = textwrap.fill(text, 78, break_on_hyphens=False, break_long_words=False)
    print(("\n" if gap else "") + wrapped, flush=True)


def step(number: int, title: str) -> None:
    """Print a step's heading."""
    print(f"\n\n=== {number}. {title} ===", flush=True)


def shown(path: Path | str) -> str:
    """A path as the user would type it from the current directory."""
    text = str(path)
    cwd = os.getcwd() + os.sep
    return text[len(cwd) :] if text.startswith(cwd) else text


def print_output(text: str, limit: int = 200) -> None:
    """Indent a program's output; very long lines keep their start and end (the demo says so)."""
    for line in text.rstrip("\n").split("\n"):
        if len(line) > limit:
            hidden = len(line) - limit
            line = f"{line[: limit - 60]}<{hidden} characters not shown by the demo>{line[-60:]}"  # noqa: PLW2901
        print(f"    {line}")
    sys.stdout.flush()


def describe(message: str) -> str:
    """A message as the demo prints it (escapes visible, long lines shortened)."""
    text = message.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 70 else f"{text[:40]}... ({len(message)} bytes)"


def stored_lines(store: Path, qube: str) -> list[bytes]:
    """The qube's stored record lines, segments in order (plain segments only)."""
    lines: list[bytes] = []
    for path in sorted((store / "qubes" / qube).glob("*.log")):
        lines.extend(path.read_bytes().splitlines())
    return lines


def sent_count(store: Path, qube: str) -> int:
    """How many of the qube's own lines (kind L or P) are stored."""
    return sum(1 for line in stored_lines(store, qube) if line[28:29] in (b"L", b"P"))


def names_damage(out: str, qube: str, seq: str, line: int) -> bool:
    """Whether verify's report names the qube, the segment and (a range holding) the line."""
    for text in out.splitlines():
        if qube not in text or seq not in text:
            continue
        for match in re.finditer(r"lines? (\d+)(?:\s*(?:-|\.\.|to)\s*(\d+))?", text):
            first = int(match.group(1))
            last = int(match.group(2) or first)
            if first <= line <= last:
                return True
    return False

"""On a real terminal (tmux): sender escapes never change the screen; the pager.

Each case runs the installed ``logvm`` in a private tmux server (its own
socket), with the real ``less`` as pager where one is used, then reads the
screen back with its attributes (``capture-pane -e``): the only escape
sequences on it are colours (SGR), the line printed before ``logvm`` is
still there (no clear screen), the pane title is unchanged (no OSC), and the
sender's ESC shows as the text ``\\x1b``.
"""

import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.collected import Collected, build_collected
from support.programs import program

LOGVM = program("logvm")
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Collected:
    return build_collected(tmp_path_factory.mktemp("collected"))


class Tmux:
    """A private tmux server with one 200x100 window."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", str(self.socket), "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return done.stdout

    def run(self, command: str) -> None:
        self("new-session", "-d", "-x", "200", "-y", "100", "-s", "t", command)

    def kill(self) -> None:
        subprocess.run(
            ["tmux", "-S", str(self.socket), "kill-server"],
            capture_output=True,
            timeout=20,
            check=False,
        )

    def screen(self) -> str:
        return self("capture-pane", "-p", "-e", "-t", "t", "-S", "-", "-E", "-")

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            if "(END)" in screen:
                # less 590 does not quit by itself (-F) when -S chopped a line
                # wider than the screen (journalctl's pager does the same):
                # quit as a user would; -X keeps what it showed.
                self("send-keys", "-t", "t", "q")
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared:\n{self.screen()}")


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    server = Tmux(tmp_path / "tmux.sock")
    yield server
    server.kill()


def _script(store: Path, logvm_args: str, env: str = "") -> str:
    inner = (
        "printf 'BEFORE-LOGVM\\n'; "
        f"env {env} TERM=xterm-256color {LOGVM} {logvm_args} --store {shlex.quote(str(store))}; "
        "printf 'AFTER-LOGVM\\n'; sleep 60"
    )
    return f"sh -c {shlex.quote(inner)}"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fmt", ["short", "short-precise", "short-iso", "cat", "json", "raw"])
def test_sender_escapes_never_change_the_screen(
    collected: Collected, tmux: Tmux, fmt: str
) -> None:
    tmux.run(_script(collected.root, f"show --all -o {fmt}", "-u PAGER -u LOGVM_PAGER"))
    screen = tmux.wait_for("AFTER-LOGVM")
    assert "BEFORE-LOGVM" in screen  # not cleared
    assert "owned" not in tmux("display-message", "-p", "-t", "t", "#{pane_title}")
    sequences = re.findall(r"\x1b[^a-zA-Z]*[a-zA-Z]?", screen)
    assert all(re.fullmatch(r"\x1b\[[0-9;]*m", s) for s in sequences), sequences
    if fmt != "json":
        assert "\\x1b[2J\\x1b]0;owned\\x07" in screen
    if fmt in ("short", "cat"):
        assert re.search(r"\x1b\[[0-9;]*31m", screen)  # err in red: our colour


@pytest.mark.timeout(90)
def test_pager_only_on_a_terminal(collected: Collected, tmux: Tmux, tmp_path: Path) -> None:
    marker = tmp_path / "paged"
    pager = tmp_path / "pager"
    pager.write_text(f'#!/bin/sh\necho "LESS=$LESS" >> {marker}\nexec cat\n')
    pager.chmod(0o755)
    tmux.run(_script(collected.root, "show --all", f"LOGVM_PAGER={pager} PAGER=false"))
    tmux.wait_for("AFTER-LOGVM")
    assert marker.read_text() == "LESS=FRSXMK\n"
    marker.unlink()
    done = subprocess.run(
        [str(LOGVM), "show", "--all", "--store", str(collected.root)],
        env={"LOGVM_PAGER": str(pager), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert b"work error 0" in done.stdout and not marker.exists()  # a pipe: no pager
    for index, args in enumerate(("show --all --no-pager", "follow work")):
        other = Tmux(tmp_path / f"other{index}.sock")
        try:
            command = _script(collected.root, args, f"LOGVM_PAGER={pager}")
            other.run(command.replace(f"{LOGVM} follow", f"timeout -s INT 2 {LOGVM} follow"))
            other.wait_for("AFTER-LOGVM")
        finally:
            other.kill()
    assert not marker.exists()


@pytest.mark.timeout(90)
def test_long_lines_chopped_by_the_pager(collected: Collected, tmux: Tmux) -> None:
    tmux.run(_script(collected.root, "show personal -o cat", "-u PAGER -u LOGVM_PAGER"))
    screen = tmux.wait_for("AFTER-LOGVM")
    plain = [re.sub(r"\x1b\[[0-9;]*m", "", x) for x in screen.splitlines()]
    long = [x for x in plain if x.startswith("xxxx")]
    assert len(long) == 1 and len(long[0]) <= 200
    assert "[truncated 904 bytes]" not in screen  # chopped, not wrapped onto the next rows

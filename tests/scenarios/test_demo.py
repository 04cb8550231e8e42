"""``make demo`` end to end: the demo as a subprocess, its exit code and what it reports."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.journald import unavailable_reason

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]


def _leftovers(marker: str) -> list[str]:
    """Command lines of processes that still mention the demo's work directory."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in text:
            found.append(text)
    return found


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"the demo runs a real journald: {reason}")
    workdir = tmp_path / "demo-run"
    result = subprocess.run(
        [sys.executable, "-m", "demo.run", "--workdir", str(workdir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    # A newcomer's first run: no Python warning or traceback anywhere, in
    # the demo's output or in the logs of the programs it started.
    logs = "".join(p.read_text(errors="replace") for p in workdir.glob("*.log"))
    for text in (out, logs):
        assert "Traceback" not in text and "Warning:" not in text, text[-3000:]
    assert not re.search(r"^WARNING ", logs, re.M), logs[-3000:]
    for qube in ("work", "personal", "disp4711"):
        assert re.search(rf"^    {qube}: \d+ segments", out, re.M), out
    assert len(re.findall(r"^\$ logvm verify --key ", out, re.M)) == 2, out
    assert "OK: intact, 0 warning(s); 3 qubes" in out  # before the tamper
    said = re.search(r"in line (\d+) of\s+\S+\s+\(work's\s+segment\s+(\d{8})\)", out)
    assert said, out
    tampered, seq = int(said.group(1)), said.group(2)
    verify_failed = re.findall(rf"^    error: work/{seq} lines (\d+)-(\d+): .*$", out, re.M)
    assert verify_failed, out
    first, last = (int(n) for n in verify_failed[0])
    assert first <= tampered <= last
    assert "FAILED: 1 error(s)" in out and "(exit code 1)" in out
    assert "[truncated " in out  # the over-long line's marker, shown by logvm show
    assert "\x1b" not in out  # the hostile line's escapes never reach the terminal
    assert out.count("(exit code 126)") == 2  # the two calls the policy refuses
    assert _leftovers(str(workdir)) == []

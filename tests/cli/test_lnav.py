"""The shipped lnav format (lnav/qubes_logvm.json) read by the real lnav."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from support.collected import Collected, build_collected

REPO = Path(__file__).resolve().parents[2]
FORMAT = REPO / "lnav" / "qubes_logvm.json"
pytestmark = pytest.mark.skipif(shutil.which("lnav") is None, reason="lnav not installed")


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Collected:
    return build_collected(tmp_path_factory.mktemp("collected"))


def lnav_sql(tmp_path: Path, query: str, files: list[Path]) -> list[dict[str, object]]:
    """Run a SQL query in lnav (no UI) with only the shipped format installed."""
    config = tmp_path / "config"
    (config / "formats" / "qubes-logvm").mkdir(parents=True, exist_ok=True)
    shutil.copy(FORMAT, config / "formats" / "qubes-logvm" / FORMAT.name)
    (tmp_path / "home").mkdir(exist_ok=True)
    done = subprocess.run(
        ["lnav", "-n", "-I", str(config), "-c", query, "-c", ":write-json-to -", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "TERM": "dumb"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows: list[dict[str, object]] = json.loads(done.stdout)
    return rows


@pytest.mark.timeout(120)
def test_lnav_reads_segments_with_fields_levels_and_times(
    collected: Collected, tmp_path: Path
) -> None:
    files = sorted((collected.root / "qubes").glob("*/0000000?.log*"))
    assert any(f.name.endswith(".zst") for f in files)  # compressed segments too
    query = (
        ";SELECT log_level, kind, cut, ident, pid, unit, event, log_body"
        " FROM qubes_logvm ORDER BY log_line"
    )
    rows = lnav_sql(tmp_path, query, files)
    stored = sum(f.read_bytes().count(b"\n") for f in files if f.suffix == ".log")
    assert len(rows) == stored + 3  # and work/1's three lines, read from .zst
    levels = [r["log_level"] for r in rows]
    assert levels.count("error") == 3 and levels.count("critical") == 1
    assert levels.count("warning") == 3 and levels.count("debug") == 3
    sshd = [r for r in rows if r["ident"] == "sshd"]
    assert sshd and all(r["pid"] == "[812]" and r["unit"] == "sshd.service" for r in sshd)
    notes = [r for r in rows if r["kind"] == "C"]
    assert {r["event"] for r in notes} == {"segment-start", "segment-end"}
    plain = [r for r in rows if r["log_body"] == "plain line 0 from disp7"]
    assert plain and plain[0]["ident"] is None  # a foreign line: no claimed fields
    assert [str(r["cut"]) for r in rows if r["kind"] == "Lt"] == ["904"]
    times = lnav_sql(tmp_path, ";SELECT log_time FROM qubes_logvm", files)
    stamps = [str(t["log_time"]) for t in times]
    assert stamps == sorted(stamps)

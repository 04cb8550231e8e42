"""File source: the real daemon follows files across each rotation style."""

import os
import signal
from pathlib import Path

import pytest
from exporter.helpers import ExporterProcess, FakeCollector, MakeExporter, wait_for, write_config

pytestmark = pytest.mark.timeout(60)


def _append(path: Path, *lines: str) -> None:
    with open(path, "a") as handle:
        handle.writelines(line + "\n" for line in lines)


def _start(
    tmp_path: Path, collector: FakeCollector, make_exporter: MakeExporter, pattern: str
) -> ExporterProcess:
    sources = {"journal": {"enabled": False}, "files": [{"path": pattern, "tag": "app"}]}
    config = write_config(
        tmp_path / "exporter.yaml", collector.command, tmp_path / "state", sources=sources
    )
    return make_exporter(config).start()


def _got(collector: FakeCollector, count: int) -> list[str]:
    wait_for(lambda: len(collector.lines()) >= count, what=f"{count} lines")
    return collector.messages()


@pytest.mark.parametrize("style", ["rename", "copytruncate", "delete"])
def test_rotation_styles(
    tmp_path: Path, collector: FakeCollector, make_exporter: MakeExporter, style: str
) -> None:
    log = tmp_path / "app.log"
    _append(log, "one", "two")
    exporter = _start(tmp_path, collector, make_exporter, str(log))
    assert _got(collector, 2) == ["one", "two"]
    _append(log, "three")
    if style == "rename":  # logrotate's default: the writer keeps its descriptor a moment
        os.rename(log, tmp_path / "app.log.1")
        _append(tmp_path / "app.log.1", "four (late write to the old file)")
    elif style == "copytruncate":
        wait_for(lambda: "three" in collector.messages(), what="three")
        (tmp_path / "app.log.1").write_bytes(log.read_bytes())
        os.truncate(log, 0)
        _append(log, "four")
    else:
        os.unlink(log)
        _append(tmp_path / "elsewhere", "ignored")
    _append(log, "five")
    got = _got(collector, 5 if style != "delete" else 4)
    assert exporter.stop() == 0
    expected = {
        "rename": ["one", "two", "three", "four (late write to the old file)", "five"],
        "copytruncate": ["one", "two", "three", "four", "five"],
        "delete": ["one", "two", "three", "five"],
    }[style]
    assert got == expected
    assert all(r.ident == "app" for r in collector.records())


def test_glob_restart_resumes_at_saved_offsets(
    tmp_path: Path, collector: FakeCollector, make_exporter: MakeExporter
) -> None:
    (tmp_path / "logs").mkdir()
    a, b = tmp_path / "logs/a.log", tmp_path / "logs/b.log"
    _append(a, "a1")
    exporter = _start(tmp_path, collector, make_exporter, str(tmp_path / "logs/*.log"))
    assert _got(collector, 1) == ["a1"]
    _append(b, "b1")  # a new file matching the glob
    _got(collector, 2)
    assert exporter.stop() == 0
    _append(a, "a2")
    _append(b, "b2")
    exporter.start()
    _got(collector, 4)
    exporter.stop(signal.SIGTERM)
    got = collector.messages()
    assert sorted(got) == ["a1", "a2", "b1", "b2"]  # each once: offsets were saved
    assert got.index("a1") < got.index("a2") and got.index("b1") < got.index("b2")


def test_partial_and_overlong_lines(
    tmp_path: Path, collector: FakeCollector, make_exporter: MakeExporter
) -> None:
    log = tmp_path / "app.log"
    exporter = _start(tmp_path, collector, make_exporter, str(log))
    with open(log, "ab") as handle:
        handle.write(b"no newline yet")
        handle.flush()
        wait_for(lambda: collector.connections() >= 1)
        handle.write(b" - now complete\n" + b"y" * 100_000 + b"\nafter\x00nul\n")
    got = _got(collector, 3)
    assert exporter.stop() == 0
    assert got[0] == "no newline yet - now complete"
    assert got[1].startswith("y" * 1000) and got[1].endswith("bytes cut]")
    assert collector.records()[2].message == b"after\x00nul"


def test_sighup_does_not_kill_the_exporter(
    tmp_path: Path, collector: FakeCollector, make_exporter: MakeExporter
) -> None:
    # The unit has no reload; a stray SIGHUP is logged and ignored.
    log = tmp_path / "app.log"
    _append(log, "before")
    exporter = _start(tmp_path, collector, make_exporter, str(log))
    assert _got(collector, 1) == ["before"]
    exporter.send_signal(signal.SIGHUP)
    _append(log, "after")
    assert _got(collector, 2) == ["before", "after"]
    assert exporter.stop() == 0

"""A sender cannot make its lines look like the collector's notes or markers
in ``logvm show`` (issue 10, item 7): notes and markers sit in the LogVM's
part of the line (the qube token), which sender text never reaches; ``-o
cat`` prints sender text only. Through the real collector."""

import io
import re
from pathlib import Path

import pytest
from collector.helpers import connect

from qubes_logvm.cli import main
from support.collected import collecting, end_sender

#: What a hostile qube sends to pass as the collector: a note, a fake session
#: boundary, and lines ending in the markers the LogVM adds.
FORGED = [
    b"[logvm] mimic: dropped count=1532 reason=rate-limit",
    b"[logvm] dropped count=1532 reason=rate-limit",
    b"segment-end seq=1 reason=disconnect",
    b"hello [truncated 65536 bytes]",
    b"bye [partial]",
]


def _show(root: Path, *argv: str) -> list[str]:
    out, err = io.BytesIO(), io.StringIO()
    assert main(["show", "mimic", *argv, "--store", str(root)], stdout=out, stderr=err) == 0
    return out.getvalue().decode().splitlines()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with collecting(tmp_path_factory.mktemp("imitation"), {"max_line_bytes": 64}) as collector:
        sock = connect(collector.socket, "mimic")
        sock.sendall(b"".join(line + b"\n" for line in FORGED))
        sock.sendall(b"y" * 100 + b"\n" + b"no newline at the end")  # a real cut and partial
        end_sender(sock)
    return collector.store


@pytest.mark.timeout(60)
def test_forged_notes_and_markers_show_as_the_senders_text(store: Path) -> None:
    lines = _show(store, "--utc")
    token = re.compile(r"^\S+ \d+ \S+ (\S+) ")  # time, then the LogVM's qube token
    owners = [m.group(1) for m in map(token.match, lines) if m]
    assert len(owners) == len(lines)
    notes = [x for x, o in zip(lines, owners, strict=True) if o == "[logvm]"]
    # The real notes only: segment-start and segment-end, both the collector's.
    assert [re.sub(r" .*", "", x.split("[logvm] mimic: ")[1]) for x in notes] == [
        "segment-start",
        "segment-end",
    ]
    for forged in FORGED:  # each shown once, after the qube's own token
        assert sum(x.endswith(" mimic " + forged.decode()) for x in lines) == 1, forged
    # The collector's real markers stick to the qube's name.
    assert any(re.search(r" mimic\[truncated 36 bytes\] y{64}$", x) for x in lines), lines
    assert any(x.endswith(" mimic[partial] no newline at the end") for x in lines), lines


@pytest.mark.timeout(60)
def test_cat_is_sender_text_only(store: Path) -> None:
    lines = _show(store, "-o", "cat")
    assert lines == [x.decode() for x in FORGED] + ["y" * 64, "no newline at the end"]

"""``logvm show --console``: what dom0 delivered for a qube, in that qube's timeline.

The store is written by the real collector: ``work`` and ``personal`` send
their own exporter records while dom0 delivers their consoles
(``logvm.Send+for.<qube>``, records as dom0's exporter makes them from
``/var/log/xen/console/guest-<qube>.log``: identifier ``console``, no
priority). Each line goes out once the one before is stored, so receive
times interleave in the order sent.
"""

import io
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from collector.helpers import Collector, connect

from qubes_logvm.cli import main
from qubes_logvm.exporter.record import format_record
from support.collected import HOSTILE, await_ack, collecting, end_sender

STAMP = b"2026-12-02T12:00:00.000000+00:00"
#: (stream, message) in the order sent: "work"/"personal" are the qubes' own
#: calls, "console:work"/"console:personal" dom0's deliveries for them.
SENT = [
    ("work", b"work own 1"),
    ("console:work", b"[    0.000000] Linux version 6.6 (work console 1)"),
    ("personal", b"personal own 1"),
    ("work", b"work own 2"),
    ("console:personal", b"personal console 1"),
    ("console:work", b"work console 2 panic " + HOSTILE),
    ("work", b"work own 3"),
]


def _line(stream: str, message: bytes) -> bytes:
    if stream.startswith("console:"):
        # dom0's exporter: a followed file tagged "console", no priority, no unit.
        return format_record(STAMP, b"dom0", None, None, "console", None, message)
    return format_record(STAMP, b"claimed-host", 6, "app.service", "app", 7, message)


@dataclass
class Store:
    """The running collector's store and a way to send more lines."""

    root: Path
    socks: dict[str, socket.socket]
    sent: dict[str, int]

    def send(self, stream: str, message: bytes) -> None:
        """One line on ``stream``, returned once the collector stored it."""
        self.socks[stream].sendall(_line(stream, message))
        self.sent[stream] += 1
        await_ack(self.socks[stream], self.sent[stream], stream)


def _open(collector: Collector, stream: str) -> socket.socket:
    if stream.startswith("console:"):
        qube = stream.split(":", 1)[1]
        return connect(collector.socket, "", b"logvm.Send+for.%s dom0\0" % qube.encode())
    return connect(collector.socket, stream)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    workdir = tmp_path_factory.mktemp("console")
    with collecting(workdir, {"session_linger": 0}) as collector:
        streams = ("work", "personal", "console:work", "console:personal")
        built = Store(collector.store, {s: _open(collector, s) for s in streams}, {})
        built.sent = dict.fromkeys(streams, 0)
        for stream, message in SENT:
            built.send(stream, message)
        yield built
        for sock in built.socks.values():
            end_sender(sock)


def show(store: Store, *args: str, **edges: object) -> tuple[int, str, str]:
    out, err = io.BytesIO(), io.StringIO()
    code = main([*args, "--store", str(store.root)], stdout=out, stderr=err, **edges)  # type: ignore[arg-type]
    return code, out.getvalue().decode("utf-8"), err.getvalue()


def objects(out: str) -> list[dict[str, object]]:
    return [o for o in map(json.loads, out.splitlines()) if o["kind"] != "note"]


def sent_to(*qubes: str) -> list[bytes]:
    """What was sent for ``qubes`` (own and delivered), in the order sent."""
    return [m for s, m in SENT if s.split(":")[-1] in qubes]


def text(message: bytes) -> str | list[int]:
    """A message as -o json gives it: text, or its bytes when it is not UTF-8."""
    try:
        return message.decode("utf-8")
    except UnicodeDecodeError:
        return list(message)


@pytest.mark.timeout(60)
def test_console_lines_interleave_with_the_qubes_own_by_receive_time(store: Store) -> None:
    code, out, _ = show(store, "show", "work", "--console", "-o", "json")
    assert code == 0
    got = objects(out)
    assert [o["message"] for o in got] == [text(m) for m in sent_to("work")]
    origins = [o["origin"] for o in got]
    assert origins == ["dom0" if s == "console:work" else "qube" for s, _ in SENT if "work" in s]
    # The qube is the LogVM's word for both; the delivered line's fields are
    # dom0's exporter's (identifier console, no priority), never the qube's.
    assert {o["qube"] for o in got} == {"work"}
    console = [o for o in got if o["origin"] == "dom0"]
    assert all(o["sender"]["identifier"] == "console" for o in console)  # type: ignore[index]
    assert all(o["priority"] is None for o in console)
    # Without --console: the qube's own lines only.
    _, own, _ = show(store, "show", "work", "-o", "cat")
    assert own.splitlines() == ["work own 1", "work own 2", "work own 3"]


@pytest.mark.timeout(60)
def test_merged_view_tags_deliveries_with_dom0_before_the_qube(store: Store) -> None:
    _, out, _ = show(store, "show", "--all", "--console", "--utc")
    lines = [x for x in out.splitlines() if " [logvm] " not in x]
    assert len(lines) == len(SENT)
    for (stream, message), line in zip(SENT, lines, strict=True):
        qube = stream.split(":")[-1]
        if stream.startswith("console:"):
            assert f" [dom0] {qube} console: " in line
        else:
            assert f" {qube} app[7]: " in line and "[dom0]" not in line
        assert line.endswith(message.decode("utf-8", "replace")) or b"panic" in message
    # The console's escape sequences are shown as text, never sent to the terminal.
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args, expect",
    [
        # -n counts delivered lines with the qube's own, newest last; -r flips them.
        (["-n", "2"], sent_to("work")[-2:]),
        (["-n", "3", "-r"], sent_to("work")[::-1][:3]),
        # filters see the delivered record's fields: its identifier and message.
        (["-t", "console"], [m for s, m in SENT if s == "console:work"]),
        (["-g", "PANIC", "-i"], [SENT[5][1]]),
        # a priority filter: console lines have none, so they never match one.
        (["-p", "info"], [m for s, m in SENT if s == "work"]),
    ],
)
def test_options_apply_to_delivered_lines(
    store: Store, args: list[str], expect: list[bytes]
) -> None:
    code, out, _ = show(store, "show", "work", "--console", "-o", "json", *args)
    assert code == 0
    assert [o["message"] for o in objects(out)] == [text(m) for m in expect]


@pytest.mark.timeout(60)
def test_follow_console_prints_new_deliveries(store: Store) -> None:
    news = [("console:work", b"work console while following"), ("work", b"work own after")]
    calls: list[int] = []

    def step(_: float) -> None:
        # The first poll interval: dom0 delivers a line, then the qube sends one.
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        for stream, message in news:
            store.send(stream, message)

    code, out, _ = show(store, "follow", "work", "--console", "-n", "1", "-o", "cat", sleep=step)
    assert code == 0
    assert out.splitlines() == ["work own 3", *[m.decode() for _, m in news]]

"""dom0's deliveries (``logvm.Send+for.<qube>``) through a real collector.

What dom0 delivers for a qube (its console, dom0's per-qube logs) goes into
that qube's chain as ``D`` records: never confusable with the qube's own
``L`` lines, shown with them by ``logvm show --console``, counted against the
qube's quota. Only dom0 may use the argument (the source is qrexec's word).
"""

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from collector.helpers import Collector, records, send, verify_errors

from qubes_logvm.cli import main as logvm_main
from qubes_logvm.store.layout import StoreLayout

StartCollector = Callable[..., Collector]

# What X prints on its console, pretending to be a collector note, a logvm.Send
# record of its own, a dom0 record, and a terminal attack.
FORGERIES = [
    b"2026-11-28T17:58:35.000020Z C dropped count=1 reason=quota",
    b"2026-11-28T17:58:35.000020Z L forged own line",
    b"2026-11-28T18:05:26.123456+01:00 work info sshd.service sshd[812]: Accepted",
    b"\x1b[2J[logvm] work: segment-start",
]


def _delivery(qube: str) -> bytes:
    """The descriptor qrexec writes for ``qrexec-client -d LOGVM ... logvm.Send+for.QUBE dom0``."""
    return b"logvm.Send+for.%s dom0\0" % qube.encode()


def _console_record(text: bytes) -> bytes:
    # What dom0's exporter sends: its own record with the console text as message.
    return b"2026-12-02T12:00:00.000000+00:00 dom0 - - console: " + text.replace(b"\x1b", b"\\x1b")


def _show(store: Path, *args: str) -> list[str]:
    out, err = io.BytesIO(), io.StringIO()
    code = logvm_main([*args, "--store", str(store)], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    return out.getvalue().decode("utf-8").splitlines()


@pytest.mark.timeout(60)
def test_delivery_lands_in_the_qubes_chain_marked_as_dom0s(
    start_collector: StartCollector,
) -> None:
    collector = start_collector()
    own = b"my own line\n"
    assert send(collector.socket, "work", own)[-1] == 1
    console = b"".join(_console_record(f) + b"\n" for f in FORGERIES)
    # Raw forgeries too: dom0 never parses, so whatever it forwards is a D line.
    console += b"".join(f + b"\n" for f in FORGERIES)
    acks = send(collector.socket, "", console, descriptor=_delivery("work"))
    assert acks[-1] == 2 * len(FORGERIES)
    stored = [r for r in records(collector.store, "work") if r.kind != "C"]
    assert [r.kind for r in stored] == ["L"] + ["D"] * (2 * len(FORGERIES))
    # Nothing went to dom0's own chain: dom0 did not speak for itself.
    assert "dom0" not in StoreLayout(collector.store).qubes()
    assert verify_errors(collector.store, collector.vkey) == []

    # Default show: the qube's own lines only; --console adds dom0's deliveries.
    plain = _show(collector.store, "show", "work", "-o", "cat")
    assert not any("console" in line or "forged" in line for line in plain)
    assert "my own line" in plain
    shown = _show(collector.store, "show", "work", "--console", "--utc")
    delivered = [line for line in shown if " [dom0] work " in line]
    assert len(delivered) == 2 * len(FORGERIES)
    # The dom0 marker sits before the qube name, where no sender writes.
    assert all(line.split(" ")[3] == "[dom0]" for line in delivered)
    assert not any(" [logvm] " in line for line in delivered)
    assert all("\x1b" not in line for line in shown)
    objs = [
        json.loads(x) for x in _show(collector.store, "show", "work", "--console", "-o", "json")
    ]
    origins = [(o["origin"], o["kind"]) for o in objs if o["kind"] != "note"]
    assert origins[0] == ("qube", "line")
    assert origins[1 : 1 + len(FORGERIES)] == [("dom0", "record")] * len(FORGERIES)
    assert {o["origin"] for o in objs if o["kind"] == "note"} == {"logvm"}
    assert all(o["event"] is None for o in objs if o["origin"] == "dom0")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "descriptor",
    [
        b"logvm.Send+for.work work\0",  # a qube naming another chain
        b"logvm.Send+for.other work\0",
        b"logvm.Send+anything work\0",  # any argument from a qube
        b"logvm.Send+for.dom0 dom0\0",  # dom0 speaks for itself without argument
        b"logvm.Send+for.-bad dom0\0",  # not a qube name
        b"logvm.Send+console.work dom0\0",  # not an argument we define
    ],
)
def test_arguments_refused_unless_dom0_delivers(
    start_collector: StartCollector, descriptor: bytes
) -> None:
    collector = start_collector()
    assert send(collector.socket, "", b"forged delivery\n", descriptor=descriptor) == []
    assert StoreLayout(collector.store).qubes() == []


@pytest.mark.timeout(60)
def test_console_flood_counts_against_the_qube_not_dom0(
    start_collector: StartCollector,
) -> None:
    limit = 64 << 10
    collector = start_collector(
        {
            "segment": {"max_bytes": 16 << 10},
            "quota": {"default": "64M", "qubes": {"work": limit}},
            "global": {"keep_free": 0},
            "rate_limit": {"qubes": {"work": {"lines_per_second": 0}}},
        }
    )
    send(collector.socket, "dom0", b"dom0 journal line\n")
    flood = b"".join(b"console flood line %06d %s\n" % (i, b"x" * 80) for i in range(5000))
    send(collector.socket, "", flood, descriptor=_delivery("work"))
    layout = StoreLayout(collector.store)
    used = sum(p.stat().st_size for p in (layout.root / "qubes" / "work").iterdir())
    assert used <= limit + (16 << 10) + 4096
    dom0 = [r for r in records(collector.store, "dom0") if r.kind != "C"]
    assert [r.payload for r in dom0] == [b"dom0 journal line"]
    assert verify_errors(collector.store, collector.vkey) == []

"""Collector behaviour through a real process: sessions, acks, limits, signals."""

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from collector.helpers import (
    COLLECTOR,
    Collector,
    connect,
    make_store,
    notes,
    read_acks,
    records,
    send,
    sent_lines,
    verify_errors,
    wait_for,
)

from qubes_logvm.store.epochfile import epochs_path, leaves_path
from qubes_logvm.store.keystate import read_epoch
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.sealfile import read_seal_file
from qubes_logvm.store.tombstones import read_tomb_file

StartCollector = Callable[..., Collector]


@pytest.mark.timeout(60)
def test_two_connections_of_one_qube_interleave_only_whole_lines(
    start_collector: StartCollector,
) -> None:
    collector = start_collector()
    # Each sender writes long lines in small pieces, so reads split lines.
    texts = {tag: [f"{tag}-{i}-" + tag * 300 for i in range(300)] for tag in ("a", "b")}

    def stream(tag: str, out: dict[str, list[int]]) -> None:
        data = "".join(t + "\n" for t in texts[tag]).encode()
        with connect(collector.socket, "shared") as sock:
            for i in range(0, len(data), 777):
                sock.sendall(data[i : i + 777])
            sock.shutdown(socket.SHUT_WR)
            out[tag] = read_acks(sock)

    acks: dict[str, list[int]] = {}
    threads = [threading.Thread(target=stream, args=(t, acks)) for t in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert acks["a"][-1] == acks["b"][-1] == 300
    stored = [p.decode() for kind, p, _ in sent_lines(collector.store, "shared")]
    assert sorted(stored) == sorted(texts["a"] + texts["b"])
    for tag in texts:  # each connection's order is kept
        assert [s for s in stored if s.startswith(tag)] == texts[tag]
    # one session: one segment for both connections
    assert len(StoreLayout(collector.store).segments("shared")) == 1


@pytest.mark.timeout(60)
def test_acks_rise_and_cover_every_line(start_collector: StartCollector) -> None:
    collector = start_collector()
    with connect(collector.socket, "acker") as sock:
        for batch in range(20):
            sock.sendall(b"".join(b"line %d %d\n" % (batch, i) for i in range(500)))
        sock.shutdown(socket.SHUT_WR)
        acks = read_acks(sock)
    assert acks == sorted(set(acks)) and acks[-1] == 10000
    assert len(sent_lines(collector.store, "acker")) == 10000


@pytest.mark.timeout(60)
def test_rate_limit_drops_are_noted_and_acked(start_collector: StartCollector) -> None:
    collector = start_collector({"rate_limit": {"lines_per_second": 10, "burst": 100}})
    acks = send(collector.socket, "flood", b"".join(b"x%d\n" % i for i in range(5000)))
    assert acks[-1] == 5000  # dropped lines count as handled
    stored = sent_lines(collector.store, "flood")
    dropped = sum(int(n.fields()["count"]) for n in notes(collector.store, "flood", "dropped"))
    assert 100 <= len(stored) < 200
    assert len(stored) + dropped == 5000
    assert {n.fields()["reason"] for n in notes(collector.store, "flood", "dropped")} == {
        "rate-limit"
    }
    assert [p for _, p, _ in stored] == [b"x%d" % i for i in range(len(stored))]


@pytest.mark.timeout(60)
def test_per_qube_connection_limit(start_collector: StartCollector) -> None:
    collector = start_collector({"max_connections_per_qube": 2})
    held = [connect(collector.socket, "greedy") for _ in range(2)]
    for sock in held:
        sock.sendall(b"hello\n")
    assert wait_for(lambda: len(sent_lines(collector.store, "greedy")) == 2)
    assert send(collector.socket, "greedy", b"refused\n") == []
    for sock in held:
        sock.shutdown(socket.SHUT_WR)
        assert read_acks(sock) == [1]
        sock.close()
    refused = notes(collector.store, "greedy", "refused")
    assert refused and refused[0].fields()["reason"] == "too-many-connections"
    assert b"refused" not in [p for _, p, _ in sent_lines(collector.store, "greedy")]


@pytest.mark.timeout(60)
def test_sigterm_seals_acks_and_exits(start_collector: StartCollector) -> None:
    collector = start_collector()
    sock = connect(collector.socket, "work")
    sock.sendall(b"one\ntwo\nunfinished")
    assert wait_for(lambda: len(sent_lines(collector.store, "work")) >= 2)
    collector.signal(signal.SIGTERM)
    acks = read_acks(sock)
    sock.close()
    assert collector.proc is not None and collector.proc.wait(20) == 0
    assert acks[-1] == 2  # the unfinished line is stored but not acknowledged
    assert sent_lines(collector.store, "work") == [
        ("L", b"one", 0),
        ("L", b"two", 0),
        ("P", b"unfinished", 0),
    ]
    [segment] = StoreLayout(collector.store).segments("work")
    assert segment.seal is not None
    assert read_seal_file(segment.seal).seals[-1].kind == "close"
    assert verify_errors(collector.store, collector.vkey) == []


@pytest.mark.timeout(60)
def test_every_epoch_is_sealed_while_connected(start_collector: StartCollector) -> None:
    collector = start_collector()
    with connect(collector.socket, "idle") as sock:
        sock.sendall(b"hi\n")
        assert wait_for(lambda: len(sent_lines(collector.store, "idle")) == 1)

        layout = StoreLayout(collector.store)
        first = read_epoch(layout)
        assert first is not None

        def sealed() -> int:
            # Format 2: one store-wide line per epoch, its leaves naming the qube.
            if not leaves_path(layout).exists():
                return -1
            lines = epochs_path(layout).read_bytes().splitlines()
            newest = int(lines[-1].split()[2]) if lines else 0
            idle = b"\nidle " in b"\n" + leaves_path(layout).read_bytes()
            return newest - first if idle else -1

        assert wait_for(lambda: sealed() >= 2, timeout=10)
        sock.shutdown(socket.SHUT_WR)
        assert read_acks(sock) == [1]
    assert collector.stop() == 0
    assert verify_errors(collector.store, collector.vkey) == []


@pytest.mark.timeout(60)
def test_new_session_new_segment(start_collector: StartCollector) -> None:
    collector = start_collector()
    send(collector.socket, "disp42", b"first life\n")
    send(collector.socket, "disp42", b"second life\n")
    segments = StoreLayout(collector.store).segments("disp42")
    assert len(segments) == 2
    sessions = {n.fields()["session"] for n in notes(collector.store, "disp42", "segment-start")}
    assert len(sessions) == 2


@pytest.mark.timeout(60)
def test_sighup_reloads_rate_limit_without_dropping_connections(
    start_collector: StartCollector,
) -> None:
    collector = start_collector({"rate_limit": {"lines_per_second": 1, "burst": 1}})
    with connect(collector.socket, "reload") as sock:
        sock.sendall(b"a\nb\n")
        assert wait_for(lambda: len(notes(collector.store, "reload", "dropped")) == 1)
        collector.write_config({"rate_limit": {"lines_per_second": 0}})
        collector.signal(signal.SIGHUP)
        wait_for(lambda: False, timeout=0.5)  # let the reload happen
        sock.sendall(b"".join(b"z%d\n" % i for i in range(100)))
        sock.shutdown(socket.SHUT_WR)
        assert read_acks(sock)[-1] == 102
    stored = [p for _, p, _ in sent_lines(collector.store, "reload")]
    assert stored[-100:] == [b"z%d" % i for i in range(100)]


@pytest.mark.timeout(60)
def test_quota_keeps_a_flooding_qube_within_quota_plus_a_segment(
    start_collector: StartCollector,
) -> None:
    quota = 256 * 1024
    collector = start_collector(
        # (With the default 1 MiB pending_bytes a first batch can be bigger
        # than the quota: written in parts of the roll size, it makes room.)
        {"segment": {"max_bytes": "64K"}, "quota": {"default": quota}, "housekeeping_seconds": 0.5}
    )
    line = b"y" * 200 + b"\n"
    with connect(collector.socket, "hog") as sock:
        for _ in range(60):
            sock.sendall(line * 100)  # 1.2 MB in all
        sock.shutdown(socket.SHUT_WR)
        assert read_acks(sock)[-1] == 6000
    usage = sum(p.stat().st_size for p in (collector.store / "qubes" / "hog").iterdir())
    assert usage <= quota + 64 * 1024 + 4096
    tombs = collector.store / "qubes" / "hog" / "tombstones.seal"
    assert tombs.exists() and read_tomb_file(tombs).tombs
    assert verify_errors(collector.store, collector.vkey) == []


@pytest.mark.timeout(30)
def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(COLLECTOR), "--socket", str(tmp_path / "s"), "--store", str(tmp_path / "none")],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 1
    assert b"setup-keys" in result.stderr


@pytest.mark.timeout(30)
def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    make_store(tmp_path / "store")
    (tmp_path / "c.yaml").write_text("rate_limit:\n  lines_per_sekond: 3\n")
    result = subprocess.run(
        [str(COLLECTOR), "--store", str(tmp_path / "store"), "--config", str(tmp_path / "c.yaml")],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 1
    assert b"rate_limit.lines_per_sekond" in result.stderr


@pytest.mark.timeout(60)
def test_socket_activation(tmp_path: Path) -> None:
    make_store(tmp_path / "store")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "act.sock"))
    listener.listen(8)
    os.set_inheritable(listener.fileno(), True)
    # LISTEN_PID must be the collector's own pid: set it in a shell that execs.
    script = f'exec 3<&{listener.fileno()}; LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"'
    proc = subprocess.Popen(
        [
            "bash",
            "-c",
            script,
            "bash",
            str(COLLECTOR),
            "--store",
            str(tmp_path / "store"),
            "--socket",
            str(tmp_path / "unused.sock"),
            "--config",
            "/dev/null",
        ],
        pass_fds=[listener.fileno()],
        stderr=subprocess.PIPE,
    )
    try:
        listener.close()
        assert send(tmp_path / "act.sock", "activated", b"via systemd\n") == [1]
        assert not (tmp_path / "unused.sock").exists()
    finally:
        proc.terminate()
        code = proc.wait(20)
        assert proc.stderr is not None
        assert code == 0, proc.stderr.read().decode()
    assert sent_lines(tmp_path / "store", "activated") == [("L", b"via systemd", 0)]
    assert records(tmp_path / "store", "activated")


def test_module_runs_with_python_m() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qubes_logvm.collector.daemon", "--help"],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0 and b"--store" in result.stdout

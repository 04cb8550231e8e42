"""The ``logvm`` CLI: through the installed console script and in-process ``main()``."""

import io
import json
import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from qubes_logvm.cli import SUBCOMMANDS, build_parser, command_of, main
from qubes_logvm.core.records import format_timestamp, line_record, note_record, parse_timestamp
from qubes_logvm.store.keystate import read_store_info
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.reader import iter_segment
from qubes_logvm.store.verify_results import load_results, results_path
from qubes_logvm.store.writer import Store
from support.programs import program
from support.storebuilder import Built
from support.tamper import ATTACKS, hostile_escape, other_key

LOGVM = program("logvm")


@pytest.fixture
def keyfile(store: Built, tmp_path: Path) -> Path:
    path = tmp_path / "vk"
    path.write_text(store.key + "\n")
    return path


def run(args: list[str], *, stdin: str = "", **edges: object) -> tuple[int, str, str]:
    """In-process main() with captured output."""
    out, err = io.BytesIO(), io.StringIO()
    code = main(args, stdout=out, stderr=err, stdin=io.StringIO(stdin), **edges)  # type: ignore[arg-type]
    return code, out.getvalue().decode("utf-8"), err.getvalue()


def run_process(args: list[str], *, stdin: str = "") -> tuple[int, str, str]:
    """The installed console script as a real process."""
    done = subprocess.run(
        [str(LOGVM), *args], input=stdin.encode(), capture_output=True, timeout=60, check=False
    )
    return done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8")


Runner = Callable[..., tuple[int, str, str]]
RUNNERS: dict[str, Runner] = {"process": run_process, "main": run}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_untouched_store_verifies_exit_0(store: Built, keyfile: Path, runner: str) -> None:
    code, out, _ = RUNNERS[runner](["verify", "--store", str(store.root), "--key", str(keyfile)])
    assert code == 0, out
    assert "OK: intact, 0 warning(s); 3 qubes, 7 segments" in out
    assert "info: work/00000001: segment 1 deleted, reason quota, 15 records" in out
    # The result is kept for logvm-browser's Verified column (this user's state file).
    known = load_results(results_path(), store.root)
    assert sorted(known) == sorted(StoreLayout(store.root).qubes())
    assert all(r.ok and r.errors == 0 for r in known.values())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("runner", sorted(RUNNERS))
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_tamper_matrix_exit_1_names_place(
    store: Built, keyfile: Path, attack: str, runner: str
) -> None:
    expect = ATTACKS[attack](store)
    args = ["verify", "--store", str(store.root), "--key", str(keyfile)]
    code, out, err = RUNNERS[runner](args)
    assert code == 1, out + err
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert errors
    assert out.splitlines()[-1].startswith("FAILED: ")
    located = [line for line in errors if f"error: {expect.place}" in line]
    assert located, out
    qube = expect.place.split("/")[0].split(":")[0]
    known = load_results(results_path(), store.root)
    assert qube not in known or not known[qube].ok  # the damaged qube is not kept as "ok"
    if expect.line is not None:
        ranges = [re.search(r" lines? (\d+)(?:-(\d+))?", line) for line in located]
        assert any(
            m and int(m.group(1)) <= expect.line <= int(m.group(2) or m.group(1)) for m in ranges
        ), out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_wrong_key_from_stdin_exit_2(store: Built, runner: str) -> None:
    args = ["verify", "--store", str(store.root), "--key", "-"]
    code, out, err = RUNNERS[runner](args, stdin=other_key(store))
    assert code == 2
    assert "logvm verify: this key does not belong to this store" in err
    assert "forged" not in out + err


@pytest.mark.timeout(30)
def test_unsealed_tail_newest_open_warns_exit_0_closed_fails(store: Built, keyfile: Path) -> None:
    stamp = format_timestamp(1.8e9)
    with store.log("work", 4).open("ab") as stream:
        stream.write(line_record(stamp, b"not sealed yet"))
    code, out, _ = run(["verify", "--store", str(store.root), "--key", str(keyfile)])
    assert code == 0
    assert "warning: work/00000004 line 14: unsealed tail" in out
    with store.log("work", 3).open("ab") as stream:
        stream.write(line_record(stamp, b"appended later"))
    code, out, _ = run(["verify", "--store", str(store.root), "--key", str(keyfile)])
    assert code == 1
    assert "error: work/00000003 line 16: data after the final seal" in out


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "args, message",
    [
        (["verify", "--key", "/nonexistent"], "cannot read"),  # key file missing
        (["show", "work", "--since", "last tuesday"], "cannot read time"),
        (["show", "work", "--grep", "("], "not a regular expression"),
        (["show", "nosuch"], "no qube"),
        (["open", "work", "x1"], "segment must be a number"),
    ],
)
def test_usage_and_store_errors_exit_2(store: Built, args: list[str], message: str) -> None:
    code, _, err = run([*args, "--store", str(store.root)])
    assert code == 2
    assert message in err


@pytest.mark.timeout(30)
def test_bad_key_text_and_missing_store_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("hello")
    code, _, err = run_process(["verify", "--store", str(tmp_path), "--key", str(bad)])
    assert code == 2
    assert "not a verification key" in err
    good = tmp_path / "good"
    good.write_text("logvm-vk1:" + "a" * 32 + ":" + "b" * 64)
    code, _, err = run(["verify", "--store", str(tmp_path / "none"), "--key", str(good)])
    assert code == 2
    assert "no store here" in err


@pytest.mark.timeout(30)
@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_hostile_bytes_never_reach_the_terminal(store: Built, runner: str) -> None:
    hostile_escape(store)
    for extra in ([], ["--raw"], ["--grep", "red"]):
        code, out, _ = RUNNERS[runner](["show", "work", "--store", str(store.root), *extra])
        assert code == 0
        assert "\x1b" not in out
        assert "\x07" not in out
        assert "\r" not in out
        assert "\\x1b]0;pwned" in out
    code, out, _ = RUNNERS[runner](["list", "--store", str(store.root)])
    assert "\x1b" not in out


@pytest.mark.timeout(30)
def test_show_decorates_and_reads_compressed(store: Built) -> None:
    stamp = format_timestamp(1.9e9)
    with store.log("work", 4).open("ab") as stream:
        stream.write(line_record(stamp, b"long", cut=70000))
        stream.write(line_record(stamp, b"last words", partial=True))
        stream.write(b"garbage line\n")
    args = ["show", "work", "--store", str(store.root), "-o", "short-iso", "--utc"]
    code, out, _ = run(args)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].endswith(" [logvm] work: segment-start seq=2 session=s2")
    when = datetime.fromtimestamp(1.9e9, UTC).isoformat(timespec="microseconds")
    assert f"{when} work[truncated 70000 bytes] long" in lines
    assert f"{when} work[partial] last words" in lines
    assert f"{when} work[malformed line] garbage line" in lines
    code, out, _ = run(["show", "personal", "--store", str(store.root), "--raw"])
    assert len(out.splitlines()) == 45  # 15 of them from the compressed segment
    assert " C segment-start seq=1 " in out.splitlines()[0]


@pytest.mark.timeout(30)
def test_show_since_until_grep_last(store: Built) -> None:
    root = str(store.root)
    _, everything, _ = run(["show", "work", "--store", root, "--raw"])
    stamps = [line[:27] for line in everything.splitlines()]
    middle = stamps[len(stamps) // 2]
    code, out, _ = run(["show", "work", "--store", root, "--raw", "--since", middle])
    assert code == 0
    assert all(line[:27] >= middle for line in out.splitlines())
    assert 0 < len(out.splitlines()) < len(stamps)
    _, out, _ = run(["show", "work", "--store", root, "--raw", "--until", middle])
    assert all(line[:27] <= middle for line in out.splitlines())
    _, out, _ = run(["show", "work", "--store", root, "--grep", r"seg 3 batch 1 rec [02]"])
    assert len(out.splitlines()) == 2
    _, out, _ = run(["show", "work", "--store", root, "-n", "3", "--raw"])
    assert out.splitlines() == everything.splitlines()[-3:]
    _, out, _ = run(["show", "work", "--store", root, "--since", "2999-01-01"])
    assert out == ""


@pytest.mark.timeout(30)
def test_follow_in_process_sees_new_lines_and_new_segments(store: Built) -> None:
    polls = []

    def sleep(_: float) -> None:
        polls.append(1)
        writer = Store(store.root)
        chain = writer.chain("work")  # recovers work/4, then a new session
        stamp = format_timestamp(2e9)
        if len(polls) == 1:
            chain.open_segment(writer.keys)
            chain.append(line_record(stamp, b"fresh \x1b line"), 1)
            chain.seal(writer.keys)
            writer.keys.close()
            return
        writer.keys.close()
        raise KeyboardInterrupt

    code, out, _ = run(["follow", "work", "--store", str(store.root), "-n", "2"], sleep=sleep)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) >= 4
    assert "work seg 4 batch 2 rec 3" in lines[1]
    assert any("[logvm] work: segment-start seq=5" in line for line in lines)
    assert lines[-1].endswith("fresh \x1b line".replace("\x1b", "\\x1b"))


@pytest.mark.timeout(60)
def test_follow_process_prints_appended_lines(store: Built) -> None:
    proc = subprocess.Popen(
        [str(LOGVM), "show", "-f", "work", "--store", str(store.root), "-n", "1", "--raw"],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert b"work seg 4 batch 2 rec 3" in proc.stdout.readline()  # it runs: now write
        writer = Store(store.root)
        chain = writer.chain("work")  # a restarted collector: work/4 recovered, a new session
        chain.open_segment(writer.keys)
        chain.append(line_record(format_timestamp(2e9), b"followed line"), 1)
        chain.seal(writer.keys)
        assert b" C segment-start seq=5" in proc.stdout.readline()
        assert proc.stdout.readline().endswith(b" L followed line\n")
        chain.close(writer.keys)
        writer.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.timeout(30)
def test_list_shows_segments_counts_and_times(store: Built) -> None:
    code, out, _ = run_process(["list", "--store", str(store.root), "--utc"])
    assert code == 0
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), out
    assert lines[0].startswith("disp12: 1 segments, ")
    assert " 15 records, " in lines[0]
    personal = lines[lines.index(next(x for x in lines if x.startswith("personal:"))) + 1]
    assert "00000001 compressed" in personal
    assert " 15  " in personal
    # The compressed segment's last receive time, from its trailer (not decompressed).
    [seg] = [s for s in store.layout.segments("personal") if s.seq == 1]
    last = iter_segment(seg)
    *_, final = last
    when = datetime.fromtimestamp(parse_timestamp(final.data[:27]), UTC)
    assert personal.endswith(when.strftime("%b %d %H:%M:%S"))
    work = [x for x in lines if x.startswith("  0000000") and "open" in x]
    assert work
    assert " 13  " in work[0]
    code, out, _ = run(["list", "--store", str(store.root), "--json", "personal"])
    [obj] = [json.loads(line) for line in out.splitlines()]
    assert obj["segment_list"][0]["last"] == final.data[:27].decode()
    assert (obj["qube"], obj["segments"], obj["records"]) == ("personal", 3, 45)


@pytest.mark.timeout(30)
def test_stats_uses_quota_from_config(store: Built, tmp_path: Path) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text("quota:\n  default: 1G\n  qubes:\n    work: 64M\n")
    code, out, _ = run(["stats", "--store", str(store.root), "--config", str(config)])
    assert code == 0, out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["work"][3:5] == ["64.0", "MiB"]
    assert rows["work"][-3:] == ["43", "14", "1"]  # records, drops (2 x 7), evictions
    assert rows["personal"][-5] == "4.5x" or rows["personal"][-4].endswith("x")
    bad = tmp_path / "bad.yaml"
    bad.write_text("quota:\n  defualt: 1G\n")
    code, _, err = run(["stats", "--store", str(store.root), "--config", str(bad)])
    assert code == 2
    assert "defualt" in err


VIEWER = """#!/bin/sh
[ "$1" = --view-only ] || exit 3
cp "$2" "{dest}"
stat -c %a "$2" > "{dest}.mode"
exit {code}
"""


def _viewer(tmp_path: Path, code: int) -> tuple[list[str], Path]:
    dest = tmp_path / "viewed"
    script = tmp_path / "fake-qvm-open-in-dvm"
    script.write_text(VIEWER.format(dest=dest, code=code))
    script.chmod(0o755)
    return [str(script), "--view-only"], dest


@pytest.mark.timeout(30)
def test_open_hands_a_safe_private_copy(store: Built, tmp_path: Path) -> None:
    hostile_escape(store)
    command, dest = _viewer(tmp_path, 0)
    code, _, err = run(["open", "work", "4", "--store", str(store.root)], open_command=command)
    assert code == 0, err
    copy = dest.read_bytes()
    assert b"\x1b" not in copy
    assert b"\\x1b]0;pwned" in copy
    assert dest.with_name("viewed.mode").read_text().strip() == "600"
    code, _, _ = run(["open", "personal", "--store", str(store.root)], open_command=command)
    assert code == 0
    assert dest.read_bytes().count(b"\n") == 45  # all segments, compressed one decompressed


@pytest.mark.timeout(30)
def test_open_missing_or_refused_viewer(store: Built, tmp_path: Path) -> None:
    missing = ["/nonexistent/qvm-open-in-dvm", "--view-only"]
    code, _, err = run(["open", "work", "--store", str(store.root)], open_command=missing)
    assert code == 2
    assert "not found" in err
    refused, _ = _viewer(tmp_path, 126)
    code, _, err = run(["open", "work", "--store", str(store.root)], open_command=refused)
    assert code == 2
    assert "refused" in err


@pytest.mark.timeout(30)
def test_setup_keys_prints_key_once_and_it_verifies(tmp_path: Path) -> None:
    root = tmp_path / "new"
    code, out, err = run_process(["setup-keys", "--store", str(root), "--epoch-seconds", "5"])
    assert code == 0
    # stdout is no terminal: the key alone there (`> vk.txt`), the rest on stderr
    [key] = re.findall(r"logvm-vk1:[0-9a-f]{32}:[0-9a-f]{64}", out)
    assert out == key + "\n"
    assert "OUTSIDE" in err
    assert "No witness configured" in err
    assert read_store_info(StoreLayout(root)).epoch_seconds == 5
    assert key.split(":")[2] not in "".join(p.read_text() for p in root.rglob("*") if p.is_file())
    writer = Store(root)
    chain = writer.chain("work")
    chain.open_segment(writer.keys)
    chain.append(note_record(format_timestamp(2e9), "dropped", count=1, reason="quota"), 1)
    writer.close()
    code, out, _ = run_process(["verify", "--store", str(root), "--key", "-"], stdin=key)
    assert code == 0, out
    code, _, err = run_process(["setup-keys", "--store", str(root)])
    assert code == 2
    assert "refusing" in err


@pytest.mark.timeout(30)
def test_setup_keys_queues_for_a_configured_witness(tmp_path: Path) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text("witness:\n  target: dom0\n")
    root = tmp_path / "store"
    code, _, out = run(["setup-keys", "--store", str(root), "--config", str(config)])
    assert code == 0
    assert "Queued for the witness (dom0)" in out
    assert (root / "state" / "witness-register").read_text().startswith("register ")


def _witness_export(store: Built, path: Path) -> None:
    """What `logvm-witness export` writes: the newest seal of each segment."""
    from qubes_logvm.store.sealfile import read_seal_file

    store_id = store.key.split(":")[1]
    lines = [f"logvm-witness-export-v1 sys-log {store_id}\n".encode()]
    for seal_path in sorted(store.root.glob("qubes/*/0*.seal")):
        last = read_seal_file(seal_path).seals[-1]
        lines.append(b"cp 2026-11-28T18:00:00.000000Z " + last.to_line())
    path.write_bytes(b"".join(lines))


@pytest.mark.timeout(30)
def test_verify_with_witness_catches_cut_back_tail(
    store: Built, keyfile: Path, tmp_path: Path
) -> None:
    export = tmp_path / "export"
    _witness_export(store, export)
    args = ["verify", "--store", str(store.root), "--key", str(keyfile), "--witness", str(export)]
    code, out, _ = run_process(args)
    assert code == 0, out
    seal = store.seal("disp12", 1)  # cut back to before its close: locally looks like a crash
    kept = seal.read_bytes().splitlines(keepends=True)[:-1]
    seal.write_bytes(b"".join(kept))
    code, out, _ = run_process(args)
    assert code == 1
    assert "error: disp12/00000001: witness: truncated" in out
    code, _, err = run(
        [
            "verify",
            "--store",
            str(store.root),
            "--key",
            str(keyfile),
            "--witness",
            str(tmp_path / "none"),
        ]
    )
    assert code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["show", "work", "-n", "5", "--since=-1h"],
        ["--store", "/s", "show", "--all", "-p", "err"],
        ["--sto", "list", "list", "--json"],  # an abbreviated --store whose value is a command
        ["--store=/s", "--config", "/c", "follow", "work"],
        ["verify", "--key", "-", "work"],
        ["setup-keys", "--format", "1"],
        ["stats"],
        ["open", "work", "3"],
    ],
)
def test_parser_for_one_subcommand_reads_it_as_the_whole_one(argv: list[str]) -> None:
    # main() builds the options of the named subcommand only (start-up time);
    # what it parses is what the whole parser parses.
    command = command_of(argv)
    assert command == argv[[i for i, w in enumerate(argv) if w in SUBCOMMANDS][-1]]
    assert build_parser(command).parse_args(argv) == build_parser().parse_args(argv)


@pytest.mark.parametrize("argv", [[], ["--store", "/s"], ["--help"], ["shw", "work"], ["--", "x"]])
def test_no_known_subcommand_builds_the_whole_parser(argv: list[str]) -> None:
    assert command_of(argv) is None

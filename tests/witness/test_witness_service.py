"""``logvm-witness serve`` as qrexec runs it: a real process on real pipes.

Hostile input from the LogVM (oversized, malformed, binary, replayed,
too frequent) is refused, and the witness's storage stays within its bound.
"""

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from witness.conftest import (
    KEY0,
    LOGVM,
    STORE_ID,
    WITNESS,
    WitnessCall,
    dir_bytes,
    line_of,
    make_seal,
    register_line,
)

from qubes_logvm.core.seal import format_verification_key
from qubes_logvm.core.tomb import Tomb
from support.keys import key_for_epoch

pytestmark = pytest.mark.timeout(60)
Open = Callable[..., WitnessCall]


def admin(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(WITNESS), "--dir", str(root), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def registered(open_call: Open) -> WitnessCall:
    call = open_call()
    assert call.send(register_line()) == "ok registered"
    return call


def test_register_checkpoint_list_export(open_call: Open, witness_dir: Path) -> None:
    call = registered(open_call)
    assert call.send(line_of(make_seal())) == "ok stored"
    assert call.send(line_of(make_seal(lines=5, nbytes=50, epoch=1))) == "ok stored"
    assert call.send(register_line()) == "ok known"
    assert call.close() == 0

    listing = admin(witness_dir, "list").stdout
    assert f"{LOGVM}: store {STORE_ID}" in listing
    assert "work" in listing and " 5 " in listing
    key = admin(witness_dir, "export-key", LOGVM).stdout.strip()
    assert key == format_verification_key(STORE_ID, KEY0)
    export = admin(witness_dir, "export", LOGVM).stdout.splitlines()
    assert export[0] == f"logvm-witness-export-v1 {LOGVM} {STORE_ID}"
    assert export[2].endswith(line_of(make_seal(lines=5, nbytes=50, epoch=1)).decode())


def test_identity_comes_from_qrexec_only(open_call: Open, witness_dir: Path) -> None:
    call = open_call(logvm="other-logvm")
    assert call.send(register_line()) == "ok registered"
    call.close()
    assert (witness_dir / "other-logvm" / "key").exists()
    assert not (witness_dir / LOGVM).exists()
    bad = open_call(logvm="../etc")
    assert bad.send_raw(register_line() + b"\n") == []
    assert bad.proc.returncode != 0
    assert not (witness_dir.parent / "etc").exists()


def test_different_key_refused_and_reported(open_call: Open, witness_dir: Path) -> None:
    registered(open_call).close()
    call = open_call()
    assert call.send(register_line(key0=b"\x07" * 32)) == "err key-mismatch"
    assert call.send(register_line(store_id="f" * 32)) == "err key-mismatch"
    call.close()
    assert admin(witness_dir, "export-key", LOGVM).stdout.strip().endswith(KEY0.hex())
    assert "WARNING: a different key was offered" in admin(witness_dir, "list").stdout
    assert "key-mismatch" in (witness_dir / LOGVM / "events").read_text()


def test_reset_key_allows_a_new_registration(open_call: Open, witness_dir: Path) -> None:
    call = registered(open_call)
    assert call.send(line_of(make_seal())) == "ok stored"
    assert admin(witness_dir, "reset-key", LOGVM).returncode == 0
    # The running call notices and ends; a new call trusts the next key.
    assert call.send(line_of(make_seal(lines=1, nbytes=10))) == "err reset"
    call.close()
    fresh = open_call()
    assert fresh.send(register_line(key0=b"\x07" * 32)) == "ok registered"
    fresh.close()
    assert any(p.name.startswith(f"{LOGVM}.reset-") for p in witness_dir.iterdir())
    assert LOGVM in admin(witness_dir, "list").stdout


def test_checkpoints_refused(open_call: Open, witness_dir: Path) -> None:
    early = open_call()
    assert early.send(line_of(make_seal())) == "err not-registered"
    early.close()
    call = registered(open_call)
    assert call.send(line_of(make_seal(lines=3, nbytes=30, epoch=2))) == "ok stored"
    size = dir_bytes(witness_dir / LOGVM / "checkpoints.1")
    forged = make_seal(lines=4, nbytes=40, epoch=2, key0=b"\x01" * 32)
    refused = {
        line_of(make_seal(lines=3, nbytes=30, epoch=2)): "ok seen",  # heartbeat, same line
        line_of(make_seal(lines=2, nbytes=20, epoch=2)): "err stale",  # replay of an older one
        line_of(make_seal(lines=4, nbytes=40, epoch=1)): "err stale",  # epoch goes back
        line_of(forged): "err bad-mac",  # made without the key
        line_of(make_seal(lines=4, nbytes=30, epoch=3)): "err fork",
    }
    for line, reply in refused.items():
        assert call.send(line) == reply
    assert dir_bytes(witness_dir / LOGVM / "checkpoints.1") == size
    assert call.close() == 0


@pytest.mark.parametrize(
    "junk",
    [
        b"\x00" * 100,  # binary
        b"\x1b]0;pwned\x07\x1b[2J",  # terminal escapes
        b"x" * 100_000,  # oversized, then more on the same line
        b"v1 batch work 1 0 1 5",  # truncated seal line
        "v1 open wörk 1 0 0 0".encode(),  # non-ASCII
        b"register " + b"0" * 32,  # missing key
    ],
)
def test_hostile_lines_refused_without_storage(
    open_call: Open, witness_dir: Path, junk: bytes
) -> None:
    registered(open_call).close()
    before = dir_bytes(witness_dir)
    replies = open_call().send_raw(junk + b"\n" + line_of(make_seal()) + b"\n" + b"tail")
    assert replies[0] in ("err malformed", "err too-long")
    assert replies[1] == "ok stored"  # the stream resynchronises at the newline
    assert replies[2] == "err malformed"  # a last line without newline is not a message
    assert len(replies) == 3
    assert dir_bytes(witness_dir) - before < 1024  # one checkpoint and an event or two


def test_too_frequent_refused(open_call: Open, witness_dir: Path) -> None:
    registered(open_call).close()
    lines = [line_of(make_seal(lines=n, nbytes=n * 10)) for n in range(1, 41)]
    replies = open_call("--rate", "0.001", "--burst", "10").send_raw(b"\n".join(lines) + b"\n")
    assert replies[:10] == ["ok stored"] * 10
    assert replies[10:] == ["err rate-limit"] * 30
    held = (witness_dir / LOGVM / "checkpoints.1").read_bytes().count(b"\n")
    assert held == 10


def test_epoch_jump_budgeted(open_call: Open) -> None:
    call = open_call("--hash-burst", "4050", "--hash-rate", "1e-9")
    assert call.send(register_line()) == "ok registered"
    assert call.send(line_of(make_seal(epoch=4000))) == "ok stored"  # 4000 hashes
    # Within the epoch cap (64 past the first epoch) but beyond the 50 hashes left.
    assert call.send(line_of(make_seal(seq=2, epoch=4060))) == "err busy"
    assert call.send(line_of(make_seal(seq=2, epoch=4040))) == "ok stored"


def test_too_many_qubes(open_call: Open) -> None:
    call = open_call("--max-qubes", "3", "--max-log-bytes", "12000")
    assert call.send(register_line()) == "ok registered"
    for qube in ("a", "b", "c"):
        assert call.send(line_of(make_seal(qube))) == "ok stored"
    assert call.send(line_of(make_seal("d"))) == "err too-many-qubes"
    assert call.send(line_of(make_seal("a", lines=1, nbytes=10))) == "ok stored"


def test_too_many_qubes_counts_deletions_and_cost_notes(open_call: Open) -> None:
    # A compromised LogVM holds the key: deletions (or cost notes) of made-up
    # qubes it never checkpointed count toward the same limit (they were held
    # without bound: only checkpointed qubes were counted).
    call = open_call("--max-qubes", "3", "--max-log-bytes", "12000")
    assert call.send(register_line()) == "ok registered"
    assert call.send(line_of(make_seal("a"))) == "ok stored"
    for qube in ("b", "c"):
        assert call.send(_tomb(1, 0, qube=qube)) == "ok stored"
    assert call.send(_tomb(1, 0, qube="d")) == "err too-many-qubes"
    assert call.send(line_of(make_seal("d"))) == "err too-many-qubes"
    # A qube held by its deletion alone is known: its checkpoint is taken.
    assert call.send(line_of(make_seal("b", seq=2))) == "ok stored"


@pytest.mark.slow
def test_storage_bounded_under_endless_valid_checkpoints(
    open_call: Open, witness_dir: Path
) -> None:
    # A compromised LogVM holds the current key and may send valid checkpoints forever.
    registered(open_call).close()
    lines = [
        line_of(make_seal(f"q{n % 4}", lines=n + 1, nbytes=(n + 1) * 10)) for n in range(3000)
    ]
    call = open_call("--max-qubes", "4", "--max-log-bytes", "16000", "--rate", "1e9")
    replies = call.send_raw(b"\n".join(lines) + b"\n")
    assert replies == ["ok stored"] * 3000
    state = witness_dir / LOGVM
    gens = sorted(p.name for p in state.glob("checkpoints.*"))
    assert len(gens) == 2
    # Two generations, each starting with what is held (3 lines a qube, a retirement
    # a qube: max-retired is max-qubes), and two event files.
    assert dir_bytes(state) <= 2 * 16000 + 2 * (3 * 4 * 440 + 4 * 640) + 2 * (256 << 10)
    # The newest checkpoint of every qube survives compaction.
    export = admin(witness_dir, "export", LOGVM).stdout
    for n in range(2996, 3000):
        assert line_of(make_seal(f"q{n % 4}", lines=n + 1, nbytes=(n + 1) * 10)).decode() in export


def test_one_call_at_a_time(open_call: Open, witness_dir: Path) -> None:
    first = registered(open_call)
    second = open_call()
    # The second waits for the lock, then gives up with a clear answer.
    assert second.send_raw(b"") == ["err locked"]
    first.close()


def test_not_a_qrexec_call(witness_dir: Path) -> None:
    done = subprocess.run(
        [str(WITNESS), "--dir", str(witness_dir), "serve"],
        input=b"",
        capture_output=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1
    assert b"QREXEC_REMOTE_DOMAIN" in done.stderr


def _tomb(
    seq: int, epoch: int, kind: str = "tomb", key0: bytes = KEY0, qube: str = "work"
) -> bytes:
    tomb = Tomb(
        kind,
        qube,
        1 if kind == "summary" else seq,
        seq,
        epoch,
        epoch,
        5,
        50,
        90,
        "quota" if kind == "tomb" else "compacted",
        bytes(32),
        bytes(32),
    )
    return tomb.signed(key_for_epoch(key0, epoch)).to_line().rstrip(b"\n")


def test_deletions_are_held_in_order_and_exported(open_call: Open, witness_dir: Path) -> None:
    call = registered(open_call)
    assert call.send(_tomb(1, 3)) == "ok stored"
    assert call.send(_tomb(1, 3)) == "ok seen"
    assert call.send(_tomb(2, 4)) == "ok stored"
    assert call.send(_tomb(1, 5)) == "err stale"  # deletions go oldest first, never back
    assert call.send(_tomb(3, 2)) == "err stale"  # nor back in epochs
    assert call.send(_tomb(4, 5, key0=bytes(32))) == "err bad-mac"
    assert call.send(_tomb(9, 6, kind="summary")) == "err kind"  # compaction is local
    call.close()
    export = admin(witness_dir, "export", LOGVM).stdout
    dels = [line for line in export.splitlines() if line.startswith("del ")]
    assert [line.split(" ")[2:6] for line in dels] == [
        ["t1", "tomb", "work", "1"],
        ["t1", "tomb", "work", "2"],
    ]


def test_settings_notes_held_when_they_change(open_call: Open, witness_dir: Path) -> None:
    from qubes_logvm.core.witness_format import SettingsLine

    def note(epoch: int, digest: bytes, key0: bytes = KEY0) -> bytes:
        line = SettingsLine(epoch, digest).signed(key_for_epoch(key0, epoch))
        return line.to_line().rstrip(b"\n")

    call = registered(open_call)
    assert call.send(note(2, b"\x01" * 32)) == "ok stored"
    assert call.send(note(3, b"\x01" * 32)) == "ok seen"  # a restart with the same settings
    assert call.send(note(4, b"\x02" * 32)) == "ok stored"  # a reload that changed them
    assert call.send(note(1, b"\x03" * 32)) == "err stale"
    assert call.send(note(5, b"\x03" * 32, key0=bytes(32))) == "err bad-mac"
    call.close()
    export = admin(witness_dir, "export", LOGVM).stdout
    assert len([line for line in export.splitlines() if line.startswith("set ")]) == 2


def test_cost_notes_held_in_order_and_carried(open_call: Open, witness_dir: Path) -> None:
    from qubes_logvm.core.witness_format import CostLine

    def note(seq: int, epoch: int, disk: int = 300_000, key0: bytes = KEY0) -> bytes:
        line = CostLine("work", epoch, seq, disk, disk).signed(key_for_epoch(key0, epoch))
        return line.to_line().rstrip(b"\n")

    call = registered(open_call)
    assert call.send(note(1, 2)) == "ok stored"
    assert call.send(note(1, 2)) == "ok seen"
    assert call.send(note(3, 2)) == "ok stored"  # with later deletions
    assert call.send(note(2, 4)) == "err stale"  # deletions never go back
    assert call.send(note(3, 4, disk=1)) == "err stale"  # nor is one re-told
    assert call.send(note(5, 1)) == "err stale"  # nor back in epochs
    assert call.send(note(5, 4, key0=bytes(32))) == "err bad-mac"
    assert call.send(b"k1 cost work 4 0 1 1 " + b"0" * 64) == "err malformed"  # segment 0
    call.close()
    export = admin(witness_dir, "export", LOGVM).stdout
    costs = [line.split(" ")[3:7] for line in export.splitlines() if line.startswith("cost ")]
    assert costs == [["cost", "work", "2", "1"], ["cost", "work", "2", "3"]]


def _retire(qube: str, epoch: int) -> bytes:
    from qubes_logvm.core.retire import Retire
    from qubes_logvm.core.tomb import parse_tomb

    tomb = parse_tomb(_tomb(1, 0, qube=qube))
    line = Retire(epoch, tomb, bytes(32)).signed(key_for_epoch(KEY0, epoch))
    return line.to_line().rstrip(b"\n")


def test_retired_names_bounded_under_endless_valid_retirements(
    open_call: Open, witness_dir: Path
) -> None:
    # A compromised LogVM holds the key and may retire any number of names, each
    # a valid line; every retirement held is carried into each new generation.
    # The witness holds at most max-retired (the oldest forgotten, an event), so
    # what it keeps stays bounded.
    registered(open_call).close()
    count = 2000
    call = open_call(
        "--max-qubes", "2", "--max-retired", "3", "--max-log-bytes", "10000", "--rate", "1e9"
    )
    replies = call.send_raw(b"\n".join(_retire(f"q{n}", 1) for n in range(count)) + b"\n")
    assert replies == ["ok stored"] * count
    call.close()
    state = witness_dir / LOGVM
    assert dir_bytes(state) <= 2 * 10000 + 2 * (3 * 2 * 440 + 3 * 640) + 2 * (256 << 10)
    events = (state / "events").read_text()
    assert "retirement-forgotten qube=q0" in events
    newest = max(state.glob("checkpoints.*"), key=lambda p: int(p.suffix[1:]))
    held = [line.split(" ", 2)[2] for line in newest.read_text().splitlines()]
    # Only the newest three are carried (generations since hold what came after).
    carried = [line.split(" ")[5] for line in held if line.startswith("r1 retire ")]
    assert len(set(carried)) == len(carried) and carried[-1] == f"q{count - 1}"
    assert len(carried) <= 3 + 10000 // 600
    # A retired name the witness forgot is unknown again: its new chain is stored.
    call = open_call("--max-qubes", "2", "--max-retired", "3", "--max-log-bytes", "10000")
    assert call.send(line_of(make_seal("q0", seq=1, lines=1, nbytes=10, epoch=2))) == "ok stored"


def test_max_log_bytes_must_hold_what_a_generation_starts_with(witness_dir: Path) -> None:
    # 4 qubes and 100 retirements start a generation with up to 69,280 bytes.
    limits = ["--max-qubes", "4", "--max-retired", "100", "--max-log-bytes", "16000"]
    done = subprocess.run(
        [str(WITNESS), "--dir", str(witness_dir), "serve", *limits],
        input=b"",
        capture_output=True,
        timeout=30,
        check=False,
        env={**os.environ, "QREXEC_REMOTE_DOMAIN": LOGVM},
    )
    assert done.returncode != 0
    assert b"max-log-bytes must be at least 2 * (3 * max-qubes * 440 + max-retired * 640)" in (
        done.stderr
    )


def test_retirement_held_and_a_reused_name_starts_again(
    open_call: Open, witness_dir: Path
) -> None:
    from qubes_logvm.core.retire import Retire, parse_retire
    from qubes_logvm.core.tomb import parse_tomb

    def retire(epoch: int, key0: bytes = KEY0) -> bytes:
        tomb = parse_tomb(_tomb(2, 4))
        line = Retire(epoch, tomb, bytes(32)).signed(key_for_epoch(key0, epoch))
        return line.to_line().rstrip(b"\n")

    call = registered(open_call)
    assert call.send(line_of(make_seal(seq=2, lines=5, nbytes=50, epoch=3))) == "ok stored"
    assert call.send(_tomb(2, 4)) == "ok stored"
    assert call.send(retire(5, key0=bytes(32))) == "err bad-mac"
    assert call.send(retire(5)) == "ok stored"
    assert call.send(retire(5)) == "ok seen"
    assert call.send(retire(4)) == "err stale"
    # The name's new chain starts at segment 1 again: not stale after the retirement.
    assert call.send(line_of(make_seal(seq=1, lines=1, nbytes=10, epoch=6))) == "ok stored"
    assert call.send(_tomb(1, 7)) == "ok stored"
    call.close()
    export = admin(witness_dir, "export", LOGVM).stdout
    rets = [line for line in export.splitlines() if line.startswith("ret ")]
    assert len(rets) == 1
    assert parse_retire(rets[0].split(" ", 2)[2].encode()).epoch == 5

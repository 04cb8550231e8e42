"""A compromised LogVM wearing the witness down (issue 10 item 6), through real processes.

The LogVM holds the current key, so its checkpoints are validly MACed at any
epoch it picks, on as many calls as it likes. What dom0 spends is asserted by
counts the witness keeps (hashes spent, keys cached; ``logvm-witness list``
and the ``bounds``/``keys`` files), never by timing.
"""

import hashlib
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from witness.conftest import (
    KEY0,
    LOGVM,
    WITNESS,
    WitnessCall,
    line_of,
    make_seal,
    register_line,
)

from qubes_logvm.core.seal import ZERO, Seal, genesis
from qubes_logvm.witness.bounds import MAX_KEYS

pytestmark = pytest.mark.timeout(120)
Open = Callable[..., WitnessCall]
NO_REFILL = ("--hash-rate", "1e-9")  # the budget does not refill during a test


def spent(root: Path) -> tuple[int, int]:
    """(hashes spent, keys cached) as ``logvm-witness list`` shows them."""
    listing = subprocess.run(
        [str(WITNESS), "--dir", str(root), "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    match = re.search(r"hashes spent (\d+), keys cached (\d+) \(max 1024\)", listing)
    assert match is not None, listing
    return int(match.group(1)), int(match.group(2))


def forged(epoch: int, seq: int = 2) -> bytes:
    """A checkpoint with a made-up MAC (no key needed to send it)."""
    seal = Seal("open", "work", seq, epoch, 0, 0, genesis("0" * 32, "work"), ZERO, b"\x5a" * 32)
    return line_of(seal)


def test_huge_epoch_jumps_refused_before_any_key_is_derived(
    open_call: Open, witness_dir: Path
) -> None:
    call = open_call(*NO_REFILL)
    assert call.send(register_line()) == "ok registered"
    assert call.send(line_of(make_seal(epoch=10))) == "ok stored"  # anchors the cap
    # Validly MACed, but epoch 100,000 cannot exist a moment after epoch 10.
    assert call.send(line_of(make_seal(seq=2, epoch=100_000))) == "err epoch-jump"
    assert call.send(forged(10**15)) == "err epoch-jump"  # no key needed to try
    assert call.send(forged(10**15, seq=1)) == "err fork"  # the position is checked first
    assert call.send(line_of(make_seal(seq=2, epoch=74))) == "ok stored"  # 64 epochs slack
    assert call.close() == 0
    assert spent(witness_dir)[0] == 74  # K[10] then K[74]: nothing for the refused ones
    assert "epoch-jump qube=work epoch=100000" in (witness_dir / LOGVM / "events").read_text()


def test_hashing_budget_is_kept_across_calls(open_call: Open, witness_dir: Path) -> None:
    budget = ("--hash-burst", "5000", *NO_REFILL, "--min-epoch-seconds", "1e-12")
    first = open_call(*budget)
    assert first.send(register_line()) == "ok registered"
    assert first.send(line_of(make_seal(epoch=4000))) == "ok stored"
    first.close()
    # Many short calls: each used to start with a full budget.
    for seq in range(2, 22):
        call = open_call(*budget)
        assert call.send(forged(9000 + seq, seq=seq)) == "err busy"
        assert call.close() == 0
    last = open_call(*budget)
    assert last.send(forged(4500)) == "err bad-mac"  # 500 hashes: within what is left
    assert last.send(line_of(make_seal(seq=2, epoch=4900))) == "ok stored"  # 400 more
    assert last.send(line_of(make_seal(seq=3, epoch=5100))) == "err busy"
    last.close()
    assert spent(witness_dir)[0] == 4900


def _key_at(epoch: int, start: tuple[int, bytes]) -> bytes:
    at, key = start
    for _ in range(epoch - at):
        key = hashlib.sha256(b"logvm-evolve-v1\0" + key).digest()
    return key


@pytest.mark.slow
def test_key_cache_bounded_and_kept(open_call: Open, witness_dir: Path) -> None:
    far = 1_200_000  # 1171 marks of 1024 epochs: past the cache's bound
    key = _key_at(far, (0, KEY0))
    call = open_call()
    assert call.send(register_line()) == "ok registered"
    seal = Seal("open", "work", 1, far, 0, 0, genesis("0" * 32, "work"), ZERO).signed(key)
    # The first record has no anchor yet: only the budget (2^23) bounds it.
    assert call.send(line_of(seal)) == "ok stored"
    assert call.close() == 0
    hashes, keys = spent(witness_dir)
    assert hashes == far
    assert keys <= MAX_KEYS
    assert (witness_dir / LOGVM / "keys").stat().st_size < MAX_KEYS * 70
    # The next call starts from the kept cache: one more epoch is one more hash.
    again = open_call()
    nxt = Seal("open", "work", 2, far + 1, 0, 0, genesis("0" * 32, "work"), ZERO)
    assert again.send(line_of(nxt.signed(_key_at(far + 1, (far, key))))) == "ok stored"
    # An old epoch (another qube) costs less than the doubled stride, from the marks.
    old = make_seal("other", epoch=5000)
    assert again.send(line_of(old)) == "ok stored"
    assert again.close() == 0
    hashes_after, keys_after = spent(witness_dir)
    assert far + 1 < hashes_after <= far + 1 + 4096
    assert keys_after <= MAX_KEYS


def test_call_ends_after_its_message_limit(open_call: Open, witness_dir: Path) -> None:
    call = open_call("--max-call-messages", "5")
    lines = [register_line()] + [line_of(make_seal(lines=n, nbytes=n * 10)) for n in range(1, 8)]
    replies = call.send_raw(b"\n".join(lines) + b"\n")
    assert replies == ["ok registered"] + ["ok stored"] * 4 + ["err call-limit"]
    assert call.proc.returncode == 0
    assert "call-limit messages=5" in (witness_dir / LOGVM / "events").read_text()


def test_call_ends_after_its_time_limit(open_call: Open) -> None:
    call = open_call("--max-call-seconds", "0")
    assert call.send_raw(register_line() + b"\n" + register_line() + b"\n") == ["err call-limit"]
    assert call.proc.returncode == 0


def test_unparsable_bounds_file_starts_bounded(open_call: Open, witness_dir: Path) -> None:
    first = open_call()
    assert first.send(register_line()) == "ok registered"
    first.close()
    (witness_dir / LOGVM / "bounds").write_bytes(b"junk\n")
    (witness_dir / LOGVM / "keys").write_bytes(b"junk\n")
    call = open_call("--hash-burst", "100", *NO_REFILL)
    assert call.send(line_of(make_seal(epoch=50))) == "ok stored"
    assert call.send(line_of(make_seal(seq=2, epoch=110))) == "err busy"
    assert call.close() == 0
    assert os.path.getsize(witness_dir / LOGVM / "bounds") > 0


def test_registered_epoch_length_caps_epochs(open_call: Open, witness_dir: Path) -> None:
    # The store said at registration (before any compromise) that epochs last 10 s:
    # the cap takes that over a looser --min-epoch-seconds.
    call = open_call("--min-epoch-seconds", "1e-9")
    assert call.send(register_line() + b" 10 2026-12-02T19:00:00Z") == "ok registered"
    assert call.send(line_of(make_seal(epoch=10))) == "ok stored"
    assert call.send(line_of(make_seal(seq=2, epoch=10 + 64 + 5))) == "err epoch-jump"
    assert call.send(line_of(make_seal(seq=2, epoch=10 + 64))) == "ok stored"
    assert call.close() == 0
    export = subprocess.run(
        [str(WITNESS), "--dir", str(witness_dir), "export", LOGVM],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert export.splitlines()[0].endswith(" epoch-seconds=10 created=2026-12-02T19:00:00Z")

"""Chain and seal maths: known answers, domain separation, strict parsing."""

import hashlib
import hmac

import pytest

from qubes_logvm.core.errors import SealError, StoreError
from qubes_logvm.core.seal import (
    EpochKeys,
    Seal,
    chain_step,
    evolve,
    format_verification_key,
    genesis,
    parse_seal,
    parse_verification_key,
)
from support.keys import key_for_epoch

pytestmark = pytest.mark.inprocess

STORE_ID = "00112233445566778899aabbccddeeff"


def test_known_answers() -> None:
    # Independent recomputation from the spec in docs/store-format.md.
    g = hashlib.sha256(b"logvm-genesis-v1\0" + STORE_ID.encode() + b"\0work").digest()
    assert genesis(STORE_ID, "work") == g
    assert chain_step(g, b"x\n") == hashlib.sha256(b"logvm-chain-v1\0" + g + b"x\n").digest()
    assert evolve(b"k" * 32) == hashlib.sha256(b"logvm-evolve-v1\0" + b"k" * 32).digest()
    assert genesis(STORE_ID, "work").hex() == (
        hashlib.sha256(b"logvm-genesis-v1\x00" + STORE_ID.encode() + b"\x00work").hexdigest()
    )


def test_domains_are_separated() -> None:
    # The same input under two domains never gives the same output.
    data = b"\0" * 32
    assert chain_step(data, b"") != evolve(data)
    assert genesis(STORE_ID, "a") != genesis(STORE_ID + "", "b")


def test_key_ladder_matches_direct_derivation() -> None:
    key0 = bytes(range(32))
    ladder = EpochKeys(key0)
    for epoch in (0, 1, 5, 5, 9, 3, 12):
        assert ladder.key(epoch) == key_for_epoch(key0, epoch)


def test_seal_round_trip_and_mac() -> None:
    key = b"\x07" * 32
    seal = Seal("batch", "work", 3, 17, 120, 9000, b"\x01" * 32, b"\x02" * 32).signed(key)
    line = seal.to_line()
    assert line.endswith(b"\n")
    parsed = parse_seal(line[:-1])
    assert parsed == seal
    assert parsed.mac_ok(key)
    assert not parsed.mac_ok(evolve(key))  # a later key does not verify an earlier seal
    expected = hmac.new(key, b"logvm-seal-v1\0" + seal.body(), hashlib.sha256).digest()
    assert seal.mac == expected


@pytest.mark.parametrize(
    "line",
    [
        b"v1 batch work 3 17 120 9000 " + b"a" * 64 + b" " + b"b" * 64,  # no mac
        b"v2 batch work 3 17 120 9000 " + b" ".join([b"a" * 64] * 3),  # unknown version
        b"v1 bogus work 3 17 120 9000 " + b" ".join([b"a" * 64] * 3),  # unknown kind
        b"v1 batch ../x 3 17 120 9000 " + b" ".join([b"a" * 64] * 3),  # bad qube name
        b"v1 batch work 03 17 120 9000 " + b" ".join([b"a" * 64] * 3),  # leading zero
        b"v1 batch work 3 17 120 9000 " + b" ".join([b"A" * 64] * 3),  # uppercase hex
        b"v1  batch work 3 17 120 9000 " + b" ".join([b"a" * 64] * 3),  # double space
        b"v1 batch work 3 17 120 9000 " + b" ".join([b"a" * 64] * 3) + b"\xff",
    ],
)
def test_parse_seal_is_strict(line: bytes) -> None:
    with pytest.raises(StoreError):
        parse_seal(line)


def test_verification_key_round_trip() -> None:
    text = format_verification_key(STORE_ID, b"\xab" * 32)
    assert parse_verification_key(text + "\n") == (STORE_ID, b"\xab" * 32)
    with pytest.raises(SealError):
        parse_verification_key("logvm-vk1:nothex:" + "ab" * 32)


def test_bounded_key_ladder_doubles_its_stride_and_resumes() -> None:
    key0 = bytes(range(32))
    ladder = EpochKeys(key0, max_keys=40)  # 40 - 16 recent - top: 23 marks
    assert ladder.key(50 * 1024) == key_for_epoch(key0, 50 * 1024)
    assert ladder.held <= 40
    assert ladder.ladder().stride == 4096  # 51 marks, halved twice
    for epoch in (50 * 1024 - 1, 50 * 1024 - 16, 4096 * 3 + 5, 7):
        assert ladder.key(epoch) == key_for_epoch(key0, epoch)
    assert ladder.cost(50 * 1024 - 3) == 0  # the recent window below the top
    assert ladder.cost(4096 * 3 + 5) == 5
    again = EpochKeys.resume(key0, ladder.ladder(), max_keys=40)
    assert again.cost(50 * 1024 + 1) == 1
    assert again.key(50 * 1024 + 1) == key_for_epoch(key0, 50 * 1024 + 1)
    with pytest.raises(ValueError):
        EpochKeys.resume(b"\x01" * 32, ladder.ladder(), max_keys=40)  # another K[0]


def test_epoch_keys_walk_on_from_the_previous_lookup_below_the_top() -> None:
    # One key derivation for every verifier: a verifier reading a qube's
    # seals in order after an earlier qube moved the top on pays one hash per
    # epoch, and cost() says exactly what key() will spend.
    key0 = bytes(range(32))
    naive = [key0]
    for _ in range(5000):
        naive.append(evolve(naive[-1]))
    keys = EpochKeys(key0)
    assert keys.key(5000) == naive[5000]
    # (a mark every 1024 epochs: the nearer start wins, however far the
    # previous lookup lies below)
    for epoch, cost in [(3000, 3000 - 2048), (3010, 10), (3070, 60), (3074, 3074 - 3072),
                        (3100, 26), (3200, 100), (3900, 700), (2990, 2990 - 2048), (4999, 0),
                        (0, 0)]:  # fmt: skip
        assert keys.cost(epoch) == cost, epoch
        spent = keys.hashes
        assert keys.key(epoch) == naive[epoch]
        assert keys.hashes - spent == cost, epoch
    # A verifier's finer marks: a first lookup below the top costs under 64.
    fine = EpochKeys(key0, stride=EpochKeys.FINE_STRIDE)
    assert fine.key(5000) == naive[5000]
    for epoch, cost in [(3000, 3000 - 2944), (3001, 1), (1000, 1000 - 960), (4999, 0)]:
        assert fine.cost(epoch) == cost, epoch
        spent = fine.hashes
        assert fine.key(epoch) == naive[epoch]
        assert fine.hashes - spent == cost, epoch
    with pytest.raises(ValueError, match="stride"):
        EpochKeys(key0, stride=0)


def test_a_verifier_keeps_the_keys_its_walks_to_the_top_passed() -> None:
    # keep=N: every key of the last N epochs below the top, from the walks to
    # it (one or several), so lookups below it cost no hash; older epochs
    # fall back on the marks, and cost() says so.
    key0 = bytes(range(32))
    naive = [key0]
    for _ in range(3000):
        naive.append(evolve(naive[-1]))
    keys = EpochKeys(key0, stride=EpochKeys.FINE_STRIDE, keep=1000)
    assert keys.key(700) == naive[700]  # two walks to the top, the kept keys continue
    assert keys.key(1500) == naive[1500]
    assert keys.hashes == 1500
    for epoch in (500, 501, 1499, 1000, 777):
        assert keys.cost(epoch) == 0
        assert keys.key(epoch) == naive[epoch]
    assert keys.hashes == 1500
    assert keys.cost(499) == 499 - 448  # below the kept ones: from the mark
    assert keys.key(499) == naive[499]
    assert keys.key(2999) == naive[2999]  # a walk longer than keep: kept afresh
    assert (keys.cost(1999), keys.cost(1998)) == (0, 1998 - 1984)
    assert keys.key(1999) == naive[1999] and keys.key(2998) == naive[2998]
    assert keys.held == 3000 // 64 + 1 + EpochKeys.RECENT + 1000 + 1
    verifier = EpochKeys.for_verifier(key0)
    assert verifier.key(3000) == naive[3000] and verifier.cost(1) == 0
    # Without keep (the witness, also once resumed) nothing more is held.
    plain = EpochKeys(key0)
    plain.key(3000)
    assert plain.cost(1) == 1 and plain.held == 3 + EpochKeys.RECENT + 1
    resumed = EpochKeys.resume(key0, plain.ladder(), max_keys=None)
    assert resumed.cost(1) == 1 and resumed.key(1) == naive[1]

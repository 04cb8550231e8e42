"""The verifier's fast path: taken for intact segments, left for the general one on damage."""

import hmac
from collections.abc import Callable
from pathlib import Path

import pytest

from qubes_logvm.core.seal import SEAL_DOMAIN, EpochKeys, parse_verification_key
from qubes_logvm.store.layout import SegmentFiles, StoreLayout
from qubes_logvm.store.verify import verify_store
from qubes_logvm.store.verify.context import VerifyRun
from qubes_logvm.store.verify.fast import fast_segment
from qubes_logvm.store.verify.findings import Report
from support.storebuilder import Built

pytestmark = pytest.mark.inprocess


def _ctx(store: Built) -> VerifyRun:
    store_id, key0 = parse_verification_key(store.key)
    return VerifyRun(StoreLayout(store.root), store_id, EpochKeys(key0), Report())


def _closed(store: Built) -> SegmentFiles:
    return next(s for s in store.layout.segments("work") if s.log is not None)


@pytest.mark.timeout(30)
def test_intact_segment_takes_the_fast_path(store: Built) -> None:
    ctx = _ctx(store)
    files = _closed(store)
    result = fast_segment(ctx, files, None, 0, newest=False)
    assert result is not None
    assert files.log is not None
    assert ctx.report.bytes_hashed == files.log.stat().st_size


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("what", ["log", "seal"])
def test_damage_leaves_the_fast_path_and_is_reported(store: Built, what: str) -> None:
    files = _closed(store)
    assert files.log is not None and files.seal is not None
    path = files.log if what == "log" else files.seal
    _flip(path, path.stat().st_size - 10)
    assert fast_segment(_ctx(store), files, None, 0, newest=False) is None
    report = verify_store(store.root, store.key)
    assert not report.ok
    assert any(f.qube == "work" and f.segment == files.seq for f in report.errors)


def test_prepared_mac_equals_the_seal_mac() -> None:
    # The fast path's HMAC from prepared inner/outer states is core.seal's.
    import os

    from qubes_logvm.core.seal import evolve, seal_mac
    from qubes_logvm.store.verify.fast import _Keys

    class _Ctx:
        def __init__(self) -> None:
            self.mac_inner: dict[int, object] = {}
            self.mac_outer: dict[int, object] = {}

        def key(self, epoch: int) -> bytes:
            return evolve(bytes([epoch]) * 32)

    keys = _Keys(_Ctx())  # type: ignore[arg-type]
    for epoch in range(1, 5):
        bodies = [os.urandom(size) for size in (0, 1, 55, 64, 150, 300)]
        made = list(keys.macs((epoch,) * len(bodies), bodies))
        assert made == [seal_mac(_Ctx().key(epoch), body) for body in bodies]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("spelled", ["0{n}", "+{n}", "{n}_0"])
def test_numbers_off_the_grammar_leave_the_fast_path(store: Built, spelled: str) -> None:
    # The final seal re-made with its epoch's key, its line count spelled as
    # int() would still read it: not the grammar, so never taken as intact.
    from support.keys import key_for_epoch

    files = _closed(store)
    assert files.seal is not None
    lines = files.seal.read_bytes().splitlines(keepends=True)
    fields = lines[-1].decode().split(" ")
    fields[5] = spelled.format(n=fields[5])
    body = " ".join(fields[:-1])
    key = key_for_epoch(parse_verification_key(store.key)[1], int(fields[4]))
    mac = hmac.digest(key, SEAL_DOMAIN + body.encode(), "sha256").hex()
    lines[-1] = f"{body} {mac}\n".encode()
    files.seal.write_bytes(b"".join(lines))
    assert fast_segment(_ctx(store), files, None, 0, newest=False) is None


@pytest.mark.timeout(30)
def test_small_pieces_and_windows_take_the_fast_path(
    store: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seal lines taken a few at a time and segment bytes read in small
    # windows: every neighbour pair across a boundary is still checked.
    from qubes_logvm.store.verify import fast

    monkeypatch.setattr(fast, "_PIECE", 700)
    monkeypatch.setattr(fast, "_READ", 300)
    files = _closed(store)
    assert files.seal is not None and files.seal.read_bytes().count(b"\n") > 3
    ctx = _ctx(store)
    assert fast_segment(ctx, files, None, 0, newest=False) is not None
    assert files.log is not None
    assert ctx.report.bytes_hashed == files.log.stat().st_size


@pytest.mark.timeout(30)
@pytest.mark.parametrize("what", ["log", "seal"])
def test_damage_across_small_pieces_leaves_the_fast_path(
    store: Built, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    from qubes_logvm.store.verify import fast

    monkeypatch.setattr(fast, "_PIECE", 700)
    monkeypatch.setattr(fast, "_READ", 300)
    files = _closed(store)
    assert files.log is not None and files.seal is not None
    path = files.log if what == "log" else files.seal
    for offset in range(0, path.stat().st_size, 97):
        _flip(path, offset)
        assert fast_segment(_ctx(store), files, None, 0, newest=False) is None, offset
        _flip(path, offset)
    assert fast_segment(_ctx(store), files, None, 0, newest=False) is not None


def _remade(store: Built, files: SegmentFiles, edit: Callable[[int, list[str]], None]) -> None:
    """The seal file with ``edit(index, fields)`` applied to every line's fields but
    the MAC, each line then MACed again with its epoch's key and linked to the
    line before: only the grammar is off, never a MAC or a link."""
    from support.keys import key_for_epoch

    assert files.seal is not None
    key0 = parse_verification_key(store.key)[1]
    out, prev = [], None
    for index, line in enumerate(files.seal.read_bytes().decode().splitlines()):
        fields = line.split(" ")[:-1]
        epoch = int(fields[4])
        if prev is not None:
            fields[8] = prev
        edit(index, fields)
        body = " ".join(fields)
        mac = hmac.digest(key_for_epoch(key0, epoch), SEAL_DOMAIN + body.encode(), "sha256")
        prev = mac.hex()
        out.append(f"{body} {prev}\n")
    files.seal.write_text("".join(out))


def _upper_head(index: int, fields: list[str]) -> None:
    if index == 2:
        fields[7] = fields[7].upper()


def _upper_open_head(index: int, fields: list[str]) -> None:
    # The open seal's head: compared with no hash of this segment's.
    if index == 0:
        assert fields[7] != fields[7].upper()
        fields[7] = fields[7].upper()


def _eleven_then_nine(index: int, fields: list[str]) -> None:
    # As many spaces as ten fields a line have, but not a line at a time.
    if index == 1:
        fields.insert(3, "1")
    if index == 2:
        del fields[0]


def _other_version(index: int, fields: list[str]) -> None:
    if index == 2:
        fields[0] = "v2"


def _broken_link(index: int, fields: list[str]) -> None:
    # A valid MAC over a line whose prev is not the line before's MAC.
    if index == 2:
        fields[8] = "ab" * 32


def _empty_field(index: int, fields: list[str]) -> None:
    if index == 1:
        fields[2:2] = [""]
        del fields[3]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "edit",
    [_upper_head, _upper_open_head, _eleven_then_nine, _other_version, _empty_field, _broken_link],
)
def test_lines_off_the_grammar_with_valid_macs_leave_the_fast_path(
    store: Built, monkeypatch: pytest.MonkeyPatch, edit: Callable[[int, list[str]], None]
) -> None:
    # The fast path cuts the seal file at spaces once (not line by line): a
    # line with a field too many next to one with a field too few, another
    # version, an empty field or an upper-case hash is still not the grammar,
    # and the general
    # path (core.seal) reports it.
    files = _closed(store)
    assert files.seal is not None and files.seal.read_bytes().count(b"\n") > 3
    _remade(store, files, edit)
    assert fast_segment(_ctx(store), files, None, 0, newest=False) is None
    report = verify_store(store.root, store.key)
    assert any(f.qube == "work" and f.segment == files.seq for f in report.errors)


@pytest.mark.timeout(30)
def test_upper_case_macs_leave_the_fast_path(store: Built) -> None:
    # Every MAC written in upper case, each next line's prev too: the same
    # values, not the grammar.
    files = _closed(store)

    def upper(index: int, fields: list[str]) -> None:
        if index > 0:
            fields[8] = fields[8].upper()

    _remade(store, files, upper)
    assert files.seal is not None
    text = files.seal.read_text().splitlines()
    upper_macs = [" ".join([*line.split(" ")[:-1], line.split(" ")[-1].upper()]) for line in text]
    files.seal.write_text("".join(f"{line}\n" for line in upper_macs))
    assert fast_segment(_ctx(store), files, None, 0, newest=False) is None
    assert not verify_store(store.root, store.key).ok


@pytest.mark.timeout(30)
def test_remade_seal_file_as_written_takes_the_fast_path(store: Built) -> None:
    # The remaking itself leaves an intact file intact (the cases above fail
    # for their edit alone).
    files = _closed(store)
    _remade(store, files, lambda index, fields: None)
    assert fast_segment(_ctx(store), files, None, 0, newest=False) is not None
    assert verify_store(store.root, store.key).ok

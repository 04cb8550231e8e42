"""The verifier's memory stays bounded: long spans are hashed in pieces (issue 10).

The attack matrix (tests/attacks/test_matrix.py) runs the real ``logvm
verify`` on gigabyte sparse files and bounds its peak RSS; here the piece
size is made tiny so every span of the test store is "long", and the same
verdicts come out of the piecewise path.
"""

from pathlib import Path

import pytest

from qubes_logvm.store.verify import data, fast, verify_store
from support.storebuilder import Built

pytestmark = pytest.mark.inprocess


@pytest.fixture
def tiny_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every span longer than a piece: the fast path leaves them, data hashes in pieces."""
    monkeypatch.setattr(fast, "_SPAN", 1)
    monkeypatch.setattr(data, "_CHUNK", 7)


@pytest.mark.timeout(60)
def test_an_intact_store_verifies_the_same_in_pieces(store: Built, tiny_pieces: None) -> None:
    whole = verify_store(store.root, store.key)
    assert whole.ok, whole.errors
    assert whole.bytes_hashed > 0


@pytest.mark.timeout(60)
def test_a_changed_byte_in_a_long_span_names_its_seal_line(
    store: Built, tiny_pieces: None
) -> None:
    files = next(s for s in store.layout.segments("work") if s.log is not None)
    assert files.log is not None
    raw = bytearray(files.log.read_bytes())
    raw[5] ^= 0x01
    files.log.write_bytes(bytes(raw))
    report = verify_store(store.root, store.key)
    found = [f.message for f in report.errors if (f.qube, f.segment) == ("work", files.seq)]
    assert any(
        "seal line 2 seals" in m and "the file's bytes do not match it" in m for m in found
    ), found


@pytest.mark.timeout(60)
def test_a_long_span_cut_short_is_truncated(store: Built, tiny_pieces: None) -> None:
    files = next(s for s in store.layout.segments("work") if s.log is not None)
    assert files.log is not None
    size = files.log.stat().st_size
    with Path(files.log).open("r+b") as stream:
        stream.truncate(size - 3)
    report = verify_store(store.root, store.key)
    found = [f.message for f in report.errors if (f.qube, f.segment) == ("work", files.seq)]
    assert any(
        "truncated: the seals cover" in m and "3 sealed bytes are missing" in m for m in found
    ), found

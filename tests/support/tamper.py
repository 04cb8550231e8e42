"""What an intruder does to a store, one function per attack (for the tamper matrix).

Each attack edits a store built by :mod:`support.storebuilder` and returns
what ``logvm verify`` must name: the qube, the segment and, when the damage
is inside a segment, a line the reported range must include.
"""

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zstandard

from qubes_logvm.core.seal import ZERO, Seal, chain_step, parse_verification_key
from qubes_logvm.store.sealfile import read_seal_file
from support.keys import key_for_epoch
from support.storebuilder import Built


@dataclass(frozen=True)
class Expect:
    """Where the verifier must point."""

    qube: str
    seq: int | None = None
    line: int | None = None
    words: str = ""  # a word the message must contain

    @property
    def place(self) -> str:
        return self.qube if self.seq is None else f"{self.qube}/{self.seq:08d}"


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def changed_byte(b: Built) -> Expect:
    path = b.log("work", 2)
    lines = read_lines(path)
    lines[6] = lines[6].replace(b"rec", b"reC", 1)  # line 7
    write_lines(path, lines)
    return Expect("work", 2, 7, "changed")


def changed_byte_compressed(b: Built) -> Expect:
    path = b.log("personal", 1)
    plain = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
    lines = plain.splitlines(keepends=True)
    lines[10] = lines[10].replace(b"ok", b"OK")  # line 11
    path.write_bytes(zstandard.ZstdCompressor().compress(b"".join(lines)))
    return Expect("personal", 1, 11, "changed")


def inserted_line(b: Built) -> Expect:
    path = b.log("work", 3)
    lines = read_lines(path)
    lines.insert(7, lines[7][:27] + b" L Accepted password for root\n")  # new line 8
    write_lines(path, lines)
    return Expect("work", 3, 8, "inserted")


def removed_line(b: Built) -> Expect:
    path = b.log("personal", 2)
    lines = read_lines(path)
    del lines[6]  # line 7 goes; the report names the span around it
    write_lines(path, lines)
    return Expect("personal", 2, 6, "removed")


def reordered_lines(b: Built) -> Expect:
    path = b.log("work", 2)
    lines = read_lines(path)
    lines[6], lines[7] = lines[7], lines[6]  # lines 7 and 8
    write_lines(path, lines)
    return Expect("work", 2, 7, "swapped")


def removed_middle_segment(b: Built) -> Expect:
    b.log("personal", 2).unlink()
    b.seal("personal", 2).unlink()
    return Expect("personal", 2, None, "missing")


def removed_first_segment(b: Built) -> Expect:
    b.log("personal", 1).unlink()  # the compressed one, no tombstone written
    b.seal("personal", 1).unlink()
    return Expect("personal", 1, None, "missing")


def removed_tombstones(b: Built) -> Expect:
    (b.root / "qubes" / "work" / "tombstones.seal").unlink()
    return Expect("work", 1, None, "missing")


def truncated_tail(b: Built) -> Expect:
    path = b.log("disp12", 1)
    lines = read_lines(path)
    write_lines(path, lines[:-2])
    return Expect("disp12", 1, 14, "truncated")


def _resealed(b: Built, qube: str, seq: int, data: bytes) -> None:
    """Re-make every seal of a segment from its first data seal on with the current key."""
    _, key0 = parse_verification_key(b.key)
    raw = (b.root / "state" / "sealkey").read_bytes().split()
    epoch = int(raw[2])
    key = key_for_epoch(key0, epoch)  # what an intruder finds on disk
    assert key.hex() == raw[3].decode()
    seals = read_seal_file(b.seal(qube, seq)).seals
    out = [seals[0]]
    for seal in seals[1:]:
        before = out[-1]
        head = chain_step(before.head, data[before.nbytes : seal.nbytes])
        remade = Seal(
            seal.kind, qube, seq, epoch, seal.lines, seal.nbytes, head, before.mac
        ).signed(key)
        out.append(remade)
    b.seal(qube, seq).write_bytes(b"".join(s.to_line() for s in out))


def resealed_later_key(b: Built) -> Expect:
    path = b.log("work", 2)
    lines = read_lines(path)
    lines[6] = lines[6].replace(b"ok", b"no")
    write_lines(path, lines)
    _resealed(b, "work", 2, b"".join(lines))
    if b.format == 1:  # seal epochs jump: every epoch has a tick seal
        return Expect("work", 2, None, "epoch")
    # Format 2 has no ticks: the next segment's open seal no longer links.
    return Expect("work", 3, None, "segment before it was removed or replaced")


def segment_without_seal(b: Built) -> Expect:
    b.seal("personal", 3).unlink()
    return Expect("personal", 3, 1, "no seal file")


def seal_file_deleted_middle(b: Built) -> Expect:
    b.seal("work", 2).unlink()
    return Expect("work", 2, 1, "no seal file")


def store_without_seals(b: Built) -> Expect:
    for path in (b.root / "qubes").glob("*/*.seal"):
        path.unlink()
    return Expect("work", 4, 1, "no seal file")


def seal_line_removed(b: Built) -> Expect:
    path = b.seal("work", 3)
    lines = read_lines(path)
    del lines[3]
    write_lines(path, lines)
    return Expect("work", 3, None, "link breaks")


def seal_files_swapped(b: Built) -> Expect:
    first, second = b.seal("work", 2), b.seal("personal", 2)
    tmp = first.with_name("swap")
    shutil.move(first, tmp)
    shutil.move(second, first)
    shutil.move(tmp, second)
    return Expect("work", 2, None, "another segment")


def store_id_changed(b: Built) -> Expect:
    path = b.root / "store.json"
    info = json.loads(path.read_text())
    info["store_id"] = "0" * 32
    path.write_text(json.dumps(info))
    return Expect("store", None, None, "store id")


def appended_after_close(b: Built) -> Expect:
    path = b.log("disp12", 1)
    lines = read_lines(path)
    with path.open("ab") as stream:
        stream.write(lines[3])
    return Expect("disp12", 1, 16, "after the final seal")


def open_segment_truncated_seals(b: Built) -> Expect:
    """Cut the newest open segment back to an early seal, with the key gone on."""
    path = b.seal("work", 4)
    seals = read_seal_file(path).seals
    keep = 3
    write_lines(path, read_lines(path)[:keep])
    with b.log("work", 4).open("r+b") as stream:
        stream.truncate(seals[keep - 1].nbytes)
    if b.format == 1:  # the tick seals stop before the key file's epoch
        return Expect("work", 4, None, "seals stop")
    return Expect("work", 4, None, "newest records or segments removed")  # the epoch seal


def hostile_escape(b: Built) -> None:
    """Raw terminal escapes written straight into a segment."""
    path = b.log("work", 4)
    with path.open("ab") as stream:
        stream.write(b"2027-01-01T00:00:00.000000Z L \x1b]0;pwned\x07\x1b[2J\x1b[31mred\r\n")


ATTACKS: dict[str, Callable[[Built], Expect]] = {
    "changed-byte": changed_byte,
    "changed-byte-compressed": changed_byte_compressed,
    "inserted-line": inserted_line,
    "removed-line": removed_line,
    "reordered-lines": reordered_lines,
    "removed-middle-segment": removed_middle_segment,
    "removed-first-segment": removed_first_segment,
    "removed-tombstones": removed_tombstones,
    "truncated-tail": truncated_tail,
    "resealed-later-key": resealed_later_key,
    "segment-without-seal": segment_without_seal,
    "seal-file-deleted": seal_file_deleted_middle,
    "store-without-seals": store_without_seals,
    "seal-line-removed": seal_line_removed,
    "seal-files-swapped": seal_files_swapped,
    "store-id-changed": store_id_changed,
    "appended-after-close": appended_after_close,
}


def other_key(b: Built) -> str:
    """A well-formed verification key for the same store id, but another K[0]."""
    store_id, _ = parse_verification_key(b.key)
    return f"logvm-vk1:{store_id}:{os.urandom(32).hex()}"


__all__ = ["ATTACKS", "ZERO", "Expect", "hostile_escape", "other_key"]

"""Segments and stores for the rotation, eviction and quota tests: build stores, check chains."""

import os
from dataclasses import dataclass
from pathlib import Path

import yaml
import zstandard

from qubes_logvm.config.schema import Section
from qubes_logvm.config.storage_policy import RetentionConfig, parse_retention
from qubes_logvm.core.records import format_timestamp, line_record
from qubes_logvm.core.seal import EpochKeys, genesis, parse_verification_key
from qubes_logvm.store.keystate import read_store_info, setup_keys
from qubes_logvm.store.layout import SegmentFiles, StoreLayout
from qubes_logvm.store.sealfile import read_seal_file
from qubes_logvm.store.tombstones import read_tomb_file
from qubes_logvm.store.verify.chain import ChainCheck
from qubes_logvm.store.writer import Store

LOGHUB = Path("/work/shared/data/loghub")


def new_store(root: Path) -> bytes:
    """Create a store; return K[0] (the verification key)."""
    _, key0 = parse_verification_key(setup_keys(StoreLayout(root), epoch_seconds=1))
    return key0


def config(text: str) -> RetentionConfig:
    """Parse rotation settings from YAML text (the other collector keys are not allowed)."""
    section = Section(yaml.safe_load(text), "")
    cfg = parse_retention(section)
    section.done()
    return cfg


#: The receive time of the tests' made-up records (2027-01-15).
STAMP = format_timestamp(1_800_000_000.0)


def numbered(n: int, text: bytes) -> bytes:
    """``n`` record lines received at :data:`STAMP`, each ``text % i``."""
    return b"".join(line_record(STAMP, text % i) for i in range(n))


def sample_lines(n: int, tag: str = "line", width: int = 80) -> bytes:
    """``n`` record lines of about ``width`` bytes each."""
    return numbered(n, tag.encode() + b" %d " + b"x" * max(0, width - 50))


def loghub_text(min_bytes: int) -> bytes:
    """Real log text (loghub samples, else generated), repeated to ``min_bytes``."""
    parts = [p.read_bytes() for p in sorted(LOGHUB.glob("*.log"))] if LOGHUB.is_dir() else []
    if not parts:
        parts = [sample_lines(20000, "generated sshd[812]: Accepted publickey for user")]
    blob = b"".join(parts)
    return blob * (min_bytes // len(blob) + 1)


def as_records(text: bytes, start: int = 0) -> bytes:
    """Raw text lines turned into record lines (printable ASCII kept as is)."""
    stamp = format_timestamp(1_800_000_000.0 + start)
    return b"".join(
        line_record(stamp, line.replace(b"\\", b"\\\\").decode("ascii", "replace").encode())
        for line in text.splitlines()
    )


def write_segment(
    store: Store,
    qube: str,
    data: bytes,
    *,
    session: str = "s1",
    reason: str = "connect",
    close: bool = True,
    batches: int = 3,
) -> int:
    """Open a segment, append ``data`` in a few sealed batches, close it; return its seq."""
    chain = store.chain(qube)
    chain.open_segment(store.keys, session=session, reason=reason)
    lines = data.splitlines(keepends=True)
    step = max(1, len(lines) // batches)
    for i in range(0, len(lines), step):
        part = b"".join(lines[i : i + step])
        chain.append(part, len(lines[i : i + step]))
        chain.seal(store.keys)
    if close:
        chain.close(store.keys, reason="disconnect")
    return chain.seq


def set_closed_at(layout: StoreLayout, qube: str, seq: int, when: float) -> None:
    """Pretend a segment closed at ``when`` (its seal file's mtime).

    Compression goes by this; deletion ages go by the sealed epoch count
    (``EpochClock``), which the eviction rule tests stand in for with
    :class:`MtimeClock`.
    """
    os.utime(layout.segment_seal(qube, seq), (when, when))


@dataclass(frozen=True)
class MtimeClock:
    """A ``SegmentClock`` for the eviction rule tests: close time = seal file mtime.

    The rules (retention, DispVM sessions) are tested with ages set per
    segment; how ages are measured in the product (epochs) is tested apart.
    """

    now: float

    def closed_at(self, files: SegmentFiles) -> float | None:
        """The seal file's mtime."""
        if files.seal is None:
            return None
        try:
            return os.stat(files.seal).st_mtime
        except FileNotFoundError:
            return None


def segment_bytes(path: Path) -> bytes:
    """The plain bytes of a segment file, plain or compressed."""
    data = path.read_bytes()
    if path.name.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def check_qube(root: Path, key0: bytes, qube: str) -> list[int]:
    """Verify a qube's chain like `logvm verify` (tombstones accepted); return live seqs.

    Raises AssertionError naming the segment on any mismatch.
    """
    layout = StoreLayout(root)
    ladder = EpochKeys(key0)
    head = genesis(read_store_info(layout).store_id, qube)
    tomb_path = layout.tombstones(qube)
    tombs = {}  # every deleted seq -> the tomb (or compaction summary) covering it
    for _, tomb in read_tomb_file(tomb_path).tombs:
        assert tomb.mac_ok(ladder.key(tomb.epoch)), f"{qube}: bad tomb MAC {tomb.last}"
        tombs.update(dict.fromkeys(range(tomb.first, tomb.last + 1), tomb))
    segments = {s.seq: s for s in layout.segments(qube)}
    top = max([*segments, *tombs, 0])
    for seq in range(1, top + 1):
        if seq in tombs and seq not in segments:
            head = tombs[seq].head
            continue
        assert seq in segments, f"{qube}/{seq:08d}: missing, no tombstone"
        files = segments[seq]
        assert files.log is not None and files.seal is not None, f"{files.name}: incomplete"
        parsed = read_seal_file(files.seal)
        assert not parsed.bad_lines and not parsed.torn_tail, f"{files.name}: bad seal file"
        seals = parsed.seals
        assert seals[0].head == head, f"{files.name}: open head does not continue the chain"
        for seal in seals:
            assert seal.mac_ok(ladder.key(seal.epoch)), f"{files.name}: bad MAC"
        check = ChainCheck(files.name, seals)
        check.feed(segment_bytes(files.log))
        check.finish()
        head = seals[-1].head
    return sorted(segments)


def product_env() -> dict[str, str]:
    """Environment for product subprocesses: this checkout's package first.

    A ``.deb`` installed system-wide by the packaging tests must not shadow
    the code under test (the venv sees the system site-packages).
    """
    env = dict(os.environ)
    source = str(Path(__file__).resolve().parents[2] / "python")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    return env

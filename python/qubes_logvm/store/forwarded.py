"""A central server's copy of forwarded logs, rebuilt as a store to verify (floor 2).

``logvm verify --forwarded FILE`` reads the server's file (one RFC 5424
message a line, docs/forwarding.md), keeps the messages of the store the
verification key belongs to, and writes their content back into a store
directory: ``store.json``, each segment's record lines and seal lines at
their line numbers, the tomb lines. The store's own verifier then checks
it, so a record changed, dropped, inserted or reordered anywhere between the
LogVM and the verifier fails exactly as it would in the LogVM.

What the copy adds to check: a line number that never arrived (a hole), two
different texts for one place (an edit hidden behind the at-least-once
duplicates), damaged messages of ours. Duplicates with the same text are
what the forwarder's resend window produces, and are fine.

Trust side: the file is untrusted (it passed through a forwarder qube, the
network and the central server). Lines are bounded; memory holds one
fingerprint per line only for the most recent lines of each segment.
"""

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..core.errors import StoreError
from ..core.syslog5424 import MAX_LINE, ForwardFormatError, Message, decode_line
from .layout import StoreLayout

#: How far back a duplicate may reach (the forwarder's window is smaller).
REPLAY_WINDOW = 1 << 18


@dataclass
class _File:
    """One rebuilt file: written in line order, with the recent lines' fingerprints."""

    path: Path
    stream: BinaryIO | None = None
    next_line: int = 1
    recent: "OrderedDict[int, bytes]" = field(default_factory=OrderedDict)

    def put(self, line: int, text: bytes, problems: list[str], where: str) -> None:
        print_hash = hashlib.sha256(text).digest()[:16]
        if line < self.next_line:
            seen = self.recent.get(line)
            if seen is None:
                problems.append(f"{where} line {line}: sent again too long after the first copy")
            elif seen != print_hash:
                problems.append(f"{where} line {line}: two different copies")
            return
        if line > self.next_line:
            last = line - 1
            span = (
                f"line {self.next_line}"
                if last == self.next_line
                else (f"lines {self.next_line}-{last}")
            )
            problems.append(f"{where} {span}: never arrived at the server")
        if self.stream is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.stream = self.path.open("ab" if self.next_line > 1 else "wb")
        self.stream.write(text + b"\n")
        self.next_line = line + 1
        self.recent[line] = print_hash
        while len(self.recent) > REPLAY_WINDOW:
            self.recent.popitem(last=False)


@dataclass
class Rebuilt:
    """What the rebuild found besides the files it wrote."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    messages: int = 0
    foreign: int = 0


def read_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """Numbered lines of the central file, each bounded."""
    number = 0
    while True:
        raw = stream.readline(MAX_LINE + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = stream.readline(MAX_LINE + 1)
            yield number, b"\xff" * (MAX_LINE + 1)  # too long: reported by the caller
            continue
        yield number, raw.rstrip(b"\n")


def rebuild(lines: Iterable[tuple[int, bytes]], store_id: str, dest: Path) -> Rebuilt:
    """Write the forwarded copy of store ``store_id`` as a store under ``dest``."""
    layout = StoreLayout(dest)
    result = Rebuilt()
    files: dict[tuple[str, int, str], _File] = {}
    tombs: dict[str, dict[tuple[int, int, str], bytes]] = {}
    for number, untrusted_line in lines:
        try:
            message = decode_line(untrusted_line)
        except ForwardFormatError as err:
            if b"qubes-logvm@" in untrusted_line[:4096]:
                result.problems.append(f"central line {number}: {err}")
            continue
        if message is None or message.fields.get("store") != store_id:
            result.foreign += message is not None
            continue
        result.messages += 1
        try:
            _place(message, layout, files, tombs, result)
        except (StoreError, ValueError) as err:
            result.problems.append(f"central line {number}: {err}")
    for file in files.values():
        if file.stream is not None:
            file.stream.close()
    for qube, tomb_lines in tombs.items():
        path = layout.tombstones(qube)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(line + b"\n" for line in _tomb_file(tomb_lines)))
    if not layout.store_json.exists():
        result.problems.append(f"no store message for store {store_id} in the central copy")
    return result


def _place(
    message: Message,
    layout: StoreLayout,
    files: dict[tuple[str, int, str], _File],
    tombs: dict[str, dict[tuple[int, int, str], bytes]],
    result: Rebuilt,
) -> None:
    fields = message.fields
    if message.msgid == "store":
        data = json.loads(message.text.decode("ascii"))
        if not isinstance(data, dict):
            raise StoreError("store message is not a JSON object")
        if not layout.store_json.exists():
            layout.root.mkdir(parents=True, exist_ok=True)
            layout.store_json.write_text(json.dumps(data), encoding="ascii")
        return
    qube, seq = fields.get("qube", ""), int(fields.get("seg", "0"))
    if message.msgid == "tomb":
        last = int(fields.get("last", str(seq)))
        tombs.setdefault(qube, {})[(seq, last, fields.get("kind", "tomb"))] = message.text
        return
    if message.msgid == "gap":
        result.notes.append(f"{qube}: {message.text.decode('ascii', 'replace')}")
        return
    line = int(fields.get("line", "0"))
    if seq < 1 or line < 1:
        raise StoreError(f"{message.msgid} message without a place")
    where = f"{qube}/{seq:08d}"
    if message.msgid == "rec":
        key, path = (qube, seq, "log"), layout.segment_log(qube, seq)
        text = b"%s %s %s" % (
            fields.get("rt", "").encode("ascii"),
            fields.get("kind", "").encode("ascii"),
            message.text,
        )
    else:
        key, path, text = (qube, seq, "seal"), layout.segment_seal(qube, seq), message.text
        where += " seal"
    file = files.get(key)
    if file is None:
        file = files[key] = _File(path)
    file.put(line, text, result.problems, where)
    if len(files) > 4096:
        _close_idle(files)


def _tomb_file(lines: dict[tuple[int, int, str], bytes]) -> list[bytes]:
    """The tombstone file as the LogVM had it: the newest compaction summary,
    then the tombs written after it (those it covers were replaced by it)."""
    summaries = [key for key in lines if key[2] == "summary"]
    newest = max(summaries, key=lambda key: key[1]) if summaries else None
    keep = [newest] if newest is not None else []
    keep += sorted(
        (key for key in lines if key[2] != "summary" and (newest is None or key[0] > newest[1])),
        key=lambda key: key[0],
    )
    return [lines[key] for key in keep]


def _close_idle(files: dict[tuple[str, int, str], _File]) -> None:
    """Keep few files open: segments arrive one after the other."""
    for file in list(files.values())[:-64]:
        if file.stream is not None:
            file.stream.close()
            file.stream = None

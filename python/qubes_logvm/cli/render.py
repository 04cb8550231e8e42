"""How ``logvm show`` prints an entry: the ``-o`` formats and colours (floor 3).

Every format puts the LogVM's word first and the sender's claims after it:

- ``short`` (default): ``Nov 28 18:05:26 work sshd[812]: message``: the
  receive time and the qube are the LogVM's; ``sshd[812]`` (identifier,
  or unit, and pid) and the message are what the qube claims. A note of the
  collector shows ``[logvm]`` where a qube's line shows the qube, then the
  qube: ``Nov 28 18:05:26 [logvm] work: segment-start seq=3 ...``; qube
  names cannot contain ``[``, so no sender can forge that position;
- ``short-precise``: the same with microseconds; ``short-iso``: ISO 8601
  receive time with offset (``2026-11-28T18:05:26.123456+01:00``);
- ``cat``: what the qubes sent and nothing else (like ``journalctl -o cat``):
  no notes of the collector and no markers, so every line of it is sender
  text; ``raw``: the stored line as it is on disk;
- ``json``: one object per entry (see :func:`json_object`), ASCII only.

Markers the LogVM adds (truncation, partial, display cut...) stick to the
qube's name, ``work[truncated 904 bytes] sshd[812]: ...``: like ``[logvm]``
they sit where the LogVM's word is, before the first space after the qube,
which no sender text reaches (issue 10: the collector's notes and markers
cannot be imitated, by construction). On a terminal they are coloured as
ours. Colours (by priority, like journalctl) are added after the text was
made terminal-safe, so they are the only escape sequences ever written.
"""

from collections.abc import Callable
from datetime import UTC, tzinfo

from ..core.entries import Understood
from ..store.timeline import Entry
from .common import stamp_moment

FORMATS = ("short", "short-precise", "short-iso", "cat", "json", "raw")
Parts = list[tuple[bytes, str | None]]  # (text, SGR style or None)

# journalctl's choices: emerg..err red and bold, warning yellow, notice
# bold, debug grey; ours (markers, notes) cyan.
_STYLE = {0: "1;31", 1: "1;31", 2: "1;31", 3: "31", 4: "33", 5: "1", 7: "90"}
OURS = "36"


def _local_zone(utc: bool) -> tzinfo | None:
    """UTC, or None: local time at each moment (:func:`.common.stamp_moment`)."""
    return UTC if utc else None


_SECONDS_KEPT = 4096


def _local_second(stamp: bytes, zone: tzinfo | None) -> bytes | None:
    """``Dec 02 16:10:42`` for a stored stamp's second in ``zone`` (None: not a time)."""
    try:
        moment = stamp_moment(stamp, zone)
    except ValueError:
        return None
    return moment.strftime("%b %d %H:%M:%S").encode("ascii")


class Renderer:
    """Turns entries into output parts for one ``-o`` format."""

    def __init__(self, fmt: str, *, utc: bool) -> None:
        self.fmt = fmt
        self.zone = _local_zone(utc)
        self._seconds: dict[bytes, bytes | None] = {}  # stamp[:19] -> "Dec 02 16:10:42"
        self._render: Callable[[Entry], Parts | None] = {
            "cat": self._cat,
            "json": self._json,
            "raw": self._raw,
        }.get(fmt, self._short)

    def parts(self, entry: Entry) -> Parts | None:
        """The line for one entry, in pieces with their styles (None: not shown)."""
        return self._render(entry)

    def _time(self, entry: Entry) -> bytes:
        if not entry.when:
            return b"-"
        if self.fmt == "short-iso":
            try:
                moment = stamp_moment(entry.when, self.zone)
            except ValueError:
                return entry.when
            return moment.isoformat(timespec="microseconds").encode("ascii")
        # One conversion per second of receive time, not per line (what
        # `show --since` spends its time on otherwise): the zone offset
        # never changes the microseconds.
        second = entry.when[:19]
        if second not in self._seconds:
            if len(self._seconds) > _SECONDS_KEPT:
                self._seconds.clear()
            self._seconds[second] = _local_second(entry.when, self.zone)
        shown = self._seconds[second]
        if shown is None:
            return entry.when
        return shown + b"." + entry.when[20:26] if self.fmt == "short-precise" else shown

    def _short(self, entry: Entry) -> Parts:
        what = entry.what
        head = self._time(entry) + b" "
        qube = entry.qube.encode("ascii", "replace")
        if what.is_note:
            return [(head, None), (b"[logvm] " + qube + b": " + what.message, OURS)]
        if what.delivered:
            head += b"[dom0] "
        parts: Parts = [(head + qube, None), *_markers(entry), (b" ", None)]
        sender = what.sender
        if sender is not None:
            name = (sender.ident or sender.unit or "-").encode("utf-8", "backslashreplace")
            if sender.pid is not None:
                name += b"[%d]" % sender.pid
            parts.append((name + b": ", None))
        parts.append(
            (_message(what), _STYLE.get(what.severity if what.severity is not None else 6))
        )
        return parts

    def _cat(self, entry: Entry) -> Parts | None:
        what = entry.what
        if what.is_note:
            return None  # sender text only: see the module's docstring
        style = _STYLE.get(what.severity if what.severity is not None else 6)
        return [(_message(what), style)]

    def _raw(self, entry: Entry) -> Parts:
        return [(entry.stored.data, None)]

    def _json(self, entry: Entry) -> Parts:
        import json  # only -o json needs it (show's start: issue 13's bench)

        text = json.dumps(json_object(entry, self.zone), ensure_ascii=True, sort_keys=True)
        return [(text.encode("ascii"), None)]


def _message(what: Understood) -> bytes:
    return what.message


def _markers(entry: Entry) -> Parts:
    what, stored = entry.what, entry.stored
    marks = []
    if what.kind == "malformed":
        marks.append(b"[malformed line]")
    if what.partial:
        marks.append(b"[partial]")
    if what.cut:
        marks.append(b"[truncated %d bytes]" % what.cut)
    if stored.overlong:
        marks.append(b"[display cut: %d more bytes]" % stored.overlong)
    if not stored.complete:
        marks.append(b"[incomplete]")
    return [(m, OURS) for m in marks]


def _text(value: bytes) -> str | list[int]:
    """A message for JSON: a string if it is UTF-8, else its bytes (as journalctl does)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return list(value)


def json_object(entry: Entry, zone: tzinfo | None = UTC) -> dict[str, object]:
    """One entry as a JSON object; ``sender`` holds the qube's claims, or null."""
    what = entry.what
    sender = what.sender
    receive = None
    if entry.what.stamp:
        moment = stamp_moment(entry.what.stamp, zone)
        receive = moment.isoformat(timespec="microseconds")
    return {
        "receive_time": receive,
        "receive_stamp": entry.what.stamp.decode("ascii", "replace") or None,
        "qube": entry.qube,
        "segment": entry.segment,
        "line": entry.line,
        "session": entry.session or None,
        "kind": what.kind,
        "origin": what.origin,
        "priority": what.priority,
        "message": _text(what.message),
        "event": what.event or None,
        "fields": what.note_fields() or None,
        "cut": what.cut,
        "partial": what.partial,
        "sender": None
        if sender is None
        else {
            "time": sender.time,
            "host": sender.host or None,
            "unit": sender.unit or None,
            "identifier": sender.ident or None,
            "pid": sender.pid,
            "priority": sender.priority if sender.priority != "-" else None,
        },
    }

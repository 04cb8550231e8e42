"""Turning stored text into inert display strings (floor 4).

Everything a qube sent is shown through :func:`qubes_logvm.core.escape.escape`
(controls, bidi overrides, zero-width characters and invalid bytes become
visible ``\\xHH``) and cut to a bound, and the result only ever goes to
plain-text APIs (``Pango.Layout.set_text``, ``Gtk.Label.set_text``,
``Gtk.TextBuffer.set_text``): never markup, never a link.
"""

import time
from datetime import datetime

from ..core.escape import escape
from ..core.records import format_timestamp, parse_timestamp
from ..core.timespec import parse_timespec
from ..store.timeline import Entry

#: Characters of a message shown in a list row; the detail pane shows more.
ROW_CHARS = 2000
DETAIL_BYTES = 64 << 10
PRIORITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


def visible(untrusted: bytes, limit: int) -> str:
    """Raw sender bytes as a printable string of at most about ``limit`` bytes."""
    shown = escape(untrusted[:limit]).decode("utf-8", "replace")
    if len(untrusted) > limit:
        shown += f" [... {len(untrusted) - limit} more bytes]"
    return shown


def local_time(stamp: bytes, *, precise: bool = True) -> str:
    """A stored receive time in the local zone (``Nov 28 18:05:26.123456``)."""
    if not stamp:
        return "-"
    try:
        moment = datetime.fromtimestamp(parse_timestamp(stamp)).astimezone()
    except ValueError:
        return stamp.decode("ascii", "replace")
    return moment.strftime("%b %d %H:%M:%S.%f" if precise else "%b %d %H:%M:%S")


def columns(entry: Entry) -> tuple[str, str, str, str, str]:
    """receive time, source time, priority, unit[pid], message: one row's cells."""
    what = entry.what
    sender = what.sender
    prio = what.priority or "-"
    if what.is_note:
        return (local_time(what.stamp), "-", prio, "[logvm]", visible(what.message, ROW_CHARS))
    if sender is None:
        message = what.message
        if what.kind == "malformed":
            message = b"[malformed line] " + message
        who = "[dom0]" if what.delivered else "-"
        return (local_time(what.stamp), "-", prio, who, visible(message, ROW_CHARS))
    # A "[" of the sender's own shows escaped: "[logvm]" and "[dom0]" are ours alone.
    name = visible((sender.ident or sender.unit or "-").encode("utf-8", "replace"), 128)
    name = name.replace("[", "\\x5b")
    if sender.pid is not None:
        name += f"[{sender.pid}]"
    if what.delivered:
        name = "[dom0] " + name
    return (
        local_time(what.stamp),
        visible(sender.time.encode("utf-8", "replace"), 64),
        prio,
        name,
        visible(what.message, ROW_CHARS),
    )


def as_text(entry: Entry) -> str:
    """One row as a line of plain text (what *Copy* puts on the clipboard)."""
    return "  ".join(columns(entry))


def details(entry: Entry) -> str:
    """Every field of a record, one per line, escaped bytes visible."""
    what, stored = entry.what, entry.stored
    lines = [
        f"qube:          {entry.qube}  (the LogVM's word)",
        f"receive time:  {local_time(what.stamp)}  ({what.stamp.decode('ascii', 'replace')})",
        f"segment:       {entry.segment:08d}  line {entry.line}",
        f"session:       {entry.session or '-'}",
        f"kind:          {what.kind}",
        f"origin:        {what.origin}  (dom0: delivered by dom0 for this qube)",
        f"priority:      {what.priority or '-'}",
    ]
    sender = what.sender
    if sender is not None:
        lines += [
            "sender's claims:",
            f"  time:        {visible(sender.time.encode('utf-8', 'replace'), 256)}",
            f"  host:        {visible(sender.host.encode('utf-8', 'replace'), 256)}",
            f"  unit:        {visible(sender.unit.encode('utf-8', 'replace'), 256)}",
            f"  identifier:  {visible(sender.ident.encode('utf-8', 'replace'), 256)}",
            f"  pid:         {sender.pid if sender.pid is not None else '-'}",
        ]
    if what.cut:
        lines.append(f"truncated:     {what.cut} bytes cut by the collector")
    if what.partial:
        lines.append("partial:       the sender's stream ended without a newline")
    if stored.overlong:
        lines.append(f"display cut:   {stored.overlong} more bytes on disk")
    lines += ["message:", visible(what.message, DETAIL_BYTES)]
    return "\n".join(lines)


def stamp_of(text: str) -> bytes | None:
    """A time range entry (journalctl's syntax, as ``logvm show``) as a stored stamp."""
    text = text.strip()
    return format_timestamp(parse_timespec(text, now=time.time())) if text else None

"""RFC 5424 messages of ``logvm-forward`` and their RFC 5425 framing (floor 1).

One definition of the forwarded format, used by the forwarder (to write it)
and by ``logvm verify --forwarded`` (to read the central server's copy back):

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [qubes-logvm@PEN k="v" ...] MSG

- ``MSGID`` says what the message carries: ``rec`` (a stored record line),
  ``seal`` (a line of a segment's seal file), ``tomb`` (a line of a qube's
  tombstone file), ``store`` (the store's identity, ``store.json``), ``gap``
  (segments rotation deleted before they were forwarded).
- the structured data names the place in the store: ``qube``, ``seg``,
  ``line`` (1-based line of that file), ``kind`` and ``rt`` (the record's
  kind and receive time), ``session``;
- ``MSG`` is the stored text exactly: for ``rec`` the record's payload (so
  ``rt + " " + kind + " " + MSG`` is the stored line, byte for byte), for
  ``seal``/``tomb`` the seal line, for ``store`` the JSON of ``store.json``.

So a central copy holds every byte the seals cover, and the store's own
verifier checks it (docs/forwarding.md).

Trust side: formatting takes store content (already escaped: no control
character but TAB); parsing reads a central server's file, which anyone
between the LogVM and the verifier may have edited, so it is strict and
bounded and raises :class:`ForwardFormatError` on anything else.
"""

import functools
import re
from dataclasses import dataclass, replace

from .errors import StoreError
from .records import TIMESTAMP_LEN
from .sender_record import SEVERITIES, parse_sender_record

#: Our SD-ID: ``qubes-logvm@`` + an IANA private enterprise number; 32473 is
#: the one RFC 5612 reserves for documentation, replaced by the admin's own.
DEFAULT_PEN = 32473
SD_NAME = "qubes-logvm"
MSGIDS = ("rec", "seal", "tomb", "store", "gap")
#: Longest central line read back (a record is at most 4 x 64 KiB escaped).
MAX_LINE = 1 << 20
_PRINTUSASCII = re.compile(r"[\x21-\x7e]+")
_SD_SPECIAL = re.compile(r'["\\\]]')
_SD_PARAM = re.compile(r' ([a-z]{1,16})="((?:[^"\\\]]|\\["\\\]])*)"')
_HEADER = re.compile(
    r"<([0-9]{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) \[" + SD_NAME + r"@([0-9]{1,10})((?:"
    r' [a-z]{1,16}="(?:[^"\\\]]|\\["\\\]])*")*)\](?: (.*))?',
    re.DOTALL,
)


class ForwardFormatError(StoreError):
    """A line of a central copy is not a message this format defines."""


@dataclass(frozen=True)
class Message:
    """One forwarded message, as written and as read back."""

    msgid: str
    fields: dict[str, str]
    text: bytes  # MSG, exactly
    severity: int = 6
    app: str = "-"
    procid: str = "-"
    timestamp: str = "-"
    hostname: str = "-"
    pen: int = DEFAULT_PEN


def _sd_value(value: str) -> str:
    if _SD_SPECIAL.search(value) is None:
        return value  # the common case: ids, numbers, times
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _sd_unvalue(value: str) -> str:
    return re.sub(r"\\([\"\\\]])", r"\1", value)


@functools.lru_cache(maxsize=4096)
def _header_token(value: str, limit: int) -> str:
    """A header field: printable US-ASCII, bounded; ``-`` when empty or not."""
    return value[:limit] if value and _PRINTUSASCII.fullmatch(value[:limit]) else "-"


def encode(message: Message, *, facility: int = 1) -> bytes:
    """The message with its RFC 5425 octet count (``LEN SP MSG``)."""
    params = _params(message.fields)
    header = (
        f"<{facility * 8 + message.severity}>1 {_header_token(message.timestamp, 64)} "
        f"{_header_token(message.hostname, 255)} {_header_token(message.app, 48)} "
        f"{_header_token(message.procid, 128)} {message.msgid} "
        f"[{SD_NAME}@{message.pen}{params}]"
    ).encode("ascii")
    body = header + b" " + message.text if message.text else header
    return b"%d %s" % (len(body), body)


def record_header(payload: bytes) -> tuple[int, str, str]:
    """Severity, APP-NAME and PROCID of a record the exporter formatted.

    Lines in another format (any sender may send free text) get ``info`` and
    ``-``: the header is a convenience for the central side; the sender's
    claims stay inside MSG exactly as stored.
    """
    try:
        record = parse_sender_record(payload)
    except ValueError:
        return 6, "-", "-"
    severity = record.severity
    procid = str(record.pid) if record.pid is not None else "-"
    return 6 if severity is None else severity, record.ident or "-", procid


def decode_line(untrusted_line: bytes) -> Message | None:
    """Parse one line of a central file (RFC 5424, as rsyslog's
    ``RSYSLOG_SyslogProtocol23Format`` writes it, without the newline).

    Returns None for a message that is not ours (other hosts' logs share the
    file); raises :class:`ForwardFormatError` for one of ours that is damaged.
    """
    if len(untrusted_line) > MAX_LINE:
        raise ForwardFormatError(f"line longer than {MAX_LINE} bytes")
    marker = f"[{SD_NAME}@".encode("ascii")
    if marker not in untrusted_line[:4096]:
        return None
    # latin-1 maps bytes one to one, so offsets in the text are offsets in the line.
    match = _HEADER.fullmatch(untrusted_line.decode("latin-1"))
    if match is None or not match.group(0)[: match.start(9) if match.group(9) else None].isascii():
        raise ForwardFormatError("not a well-formed qubes-logvm message header")
    pri, timestamp, hostname, app, procid, msgid, pen, params, _ = match.groups()
    if msgid not in MSGIDS:
        raise ForwardFormatError(f"unknown MSGID {msgid!r}")
    fields = {k: _sd_unvalue(v) for k, v in _SD_PARAM.findall(params)}
    return Message(
        msgid=msgid,
        fields=fields,
        text=untrusted_line[match.start(9) :] if match.group(9) is not None else b"",
        severity=int(pri) % 8,
        app=app,
        procid=procid,
        timestamp=timestamp,
        hostname=hostname,
        pen=int(pen),
    )


_SEVERITY = {name.encode("ascii"): n for n, name in enumerate(SEVERITIES)}
_RECORD_HEAD = re.compile(
    rb"\S+ \S+ (emerg|alert|crit|err|warning|notice|info|debug|-) \S+ "
    rb"([^ \[\]:]+)(?:\[([0-9]{1,10})\])?: "
)
_PRINTABLE_B = re.compile(rb"[\x21-\x7e]+")
_STAMP_B = re.compile(rb"[\x21-\x7e]{1,64}")


class RecordFramer:
    """RFC 5425 frames for the stored record lines of one segment, with bytes
    operations only: the same bytes :func:`encode` makes of the record's
    :class:`Message` (a test holds the two equal), at a fraction of the cost.

    Everything but line number, kind, receive time and the sender's header
    fields is constant for a segment (store, qube, seg, session), so it is
    formatted once; a line the fast path cannot prove plain (an escaped
    APP-NAME, an odd time or kind) goes through :func:`encode`.
    """

    def __init__(self, hostname: str, pen: int, facility: int, fields: dict[str, str]) -> None:
        self.hostname, self.pen, self.facility = hostname, pen, facility
        self.fields = dict(fields)
        self._host = _header_token(hostname, 255).encode("ascii")
        self._pri = [b"<%d>1 " % (facility * 8 + s) for s in range(8)]
        self._sd = (f"rec [{SD_NAME}@{pen}" + _params(fields) + ' line="').encode("ascii")
        self._session = b""
        self.session = ""

    def set_session(self, session: str) -> None:
        """The session of the lines that follow (from a segment-start note)."""
        self.session = session
        self._session = f' session="{_sd_value(session)}"'.encode("ascii") if session else b""

    def frame(self, raw: bytes, line: int) -> bytes:
        """The frame of one stored line (``TIME KIND PAYLOAD``), line ``line`` of its file."""
        stamp = raw[:TIMESTAMP_LEN]
        kind, _, payload = raw[TIMESTAMP_LEN + 1 :].partition(b" ")
        if _STAMP_B.fullmatch(stamp) is None or _PRINTABLE_B.fullmatch(kind) is None:
            return self._slow(raw, line)
        severity, app, procid = 5, b"-", b"-"
        if kind != b"C":
            match = _RECORD_HEAD.match(payload)
            if match is None:
                severity = 6
            else:
                ident, pid = match.group(2), match.group(3)
                if b"\\" in ident:
                    return self._slow(raw, line)
                severity = _SEVERITY.get(match.group(1), 6)
                app = ident[:48] if _PRINTABLE_B.fullmatch(ident[:48]) else b"-"
                if pid is not None:
                    procid = pid if pid[:1] != b"0" or len(pid) == 1 else b"%d" % int(pid)
        parts = [self._pri[severity], stamp, b" ", self._host, b" ", app, b" ", procid, b" ",
                 self._sd, b"%d" % line, b'" kind="', kind, b'" rt="', stamp, b'"',
                 self._session, b"]"]  # fmt: skip
        if payload:
            parts += (b" ", payload)
        body = b"".join(parts)
        return b"%d %s" % (len(body), body)

    def _slow(self, raw: bytes, line: int) -> bytes:
        message = record_message(raw, line, self.fields, self.session)
        message = replace(message, hostname=self.hostname, pen=self.pen)
        return encode(message, facility=self.facility)


def record_message(raw: bytes, line: int, fields: dict[str, str], session: str) -> Message:
    """The message of one stored line (``TIME KIND PAYLOAD``): MSG is the payload."""
    stamp = raw[:TIMESTAMP_LEN].decode("ascii", "replace")
    kind_b, _, payload = raw[TIMESTAMP_LEN + 1 :].partition(b" ")
    kind = kind_b.decode("ascii", "replace")
    severity, app, procid = record_header(payload) if kind != "C" else (5, "-", "-")
    fields = {**fields, "line": str(line), "kind": kind, "rt": stamp}
    if session:
        fields["session"] = session
    return Message("rec", fields, payload, severity, app, procid, stamp)


def _params(fields: dict[str, str]) -> str:
    return "".join([f' {k}="{_sd_value(v)}"' for k, v in fields.items()])

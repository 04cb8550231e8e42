"""Time input as journalctl takes it (floor 1).

Accepted, after systemd.time(7) as ``journalctl --since/--until`` reads it:

- absolute: ``2026-11-28 18:34:05``, ``2026-11-28 18:34``, ``2026-11-28``,
  ISO 8601 with ``T``, fractions, ``Z`` or an offset (``+01:00``);
- a time of day today: ``18:34``, ``18:34:05``;
- words: ``now``, ``today``, ``yesterday``, ``tomorrow`` (midnight), also
  followed by a time of day (``yesterday 10:00``);
- relative: ``-1h``, ``+30min``, ``1 hour ago``, ``2h 30m ago``, ``-1d12h``
  (units ``us ms s sec second(s) m min minute(s) h hr hour(s) d day(s) w
  week(s) M month(s) y year(s)``; a month is 30.44 days, a year 365.25 as
  in systemd), and ``2h`` alone meaning two hours ago;
- ``@1764612000`` (Unix seconds).

Times without an offset are local time, or UTC with ``utc=True`` (the
``--utc`` option). Pure: the current time is a parameter.
"""

import re
from datetime import UTC, date, datetime, timedelta, tzinfo

from .errors import LogvmError

_UNITS = {
    "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3,
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
    "M": 2629800, "month": 2629800, "months": 2629800,
    "y": 31557600, "year": 31557600, "years": 31557600,
}  # fmt: skip
_SPAN_PART = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]+)")
_DAY_WORDS = {"today": 0, "yesterday": -1, "tomorrow": 1}
_CLOCK = re.compile(r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2})(\.[0-9]{1,6})?)?")
HELP = "2026-11-28 18:34, 18:34, today, yesterday 10:00, -1h, '1 hour ago', now"


class TimeSpecError(LogvmError):
    """A time the user typed cannot be read."""


def parse_span(text: str) -> float | None:
    """``1h 30min`` -> 5400.0; None if ``text`` is not a time span."""
    position, total, found = 0, 0.0, False
    while position < len(text):
        match = _SPAN_PART.match(text, position)
        if match is None or match.group(2) not in _UNITS:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position, found = match.end(), True
    return total if found else None


def _zone(utc: bool) -> tzinfo:
    if utc:
        return UTC
    local = datetime.now().astimezone().tzinfo
    return local if local is not None else UTC


def _at_clock(day: date, clock: str, zone: tzinfo) -> datetime | None:
    match = _CLOCK.fullmatch(clock)
    if match is None:
        return None
    hour, minute = int(match.group(1)), int(match.group(2))
    second = int(match.group(3) or 0)
    micro = int((match.group(4) or ".0")[1:].ljust(6, "0"))
    try:
        naive = datetime(day.year, day.month, day.day, hour, minute, second, micro)
    except ValueError:
        return None
    return _localize(naive, zone)


def _localize(naive: datetime, zone: tzinfo) -> datetime:
    if zone is UTC:
        return naive.replace(tzinfo=UTC)
    return naive.astimezone()  # the process's local zone, DST-aware


def _relative(text: str, now: float) -> float | None:
    if text.endswith(" ago"):
        span = parse_span(text[:-4])
        return None if span is None else now - span
    if text[:1] in "+-":
        span = parse_span(text[1:])
        return None if span is None else now + span * (1 if text[0] == "+" else -1)
    span = parse_span(text)
    return None if span is None else now - span


def parse_timespec(text: str, *, now: float, utc: bool = False) -> float:
    """Unix seconds for a journalctl-style time; raise TimeSpecError."""
    word = " ".join(text.split())
    zone = _zone(utc)
    today = datetime.fromtimestamp(now, zone).date()
    result: float | None = None
    if word == "now":
        result = now
    elif word.startswith("@"):
        result = _number(word[1:])
    elif word.split(" ", 1)[0] in _DAY_WORDS:
        head, _, clock = word.partition(" ")
        day = today + timedelta(days=_DAY_WORDS[head])
        moment = _at_clock(day, clock or "00:00", zone)
        result = moment.timestamp() if moment is not None else None
    elif _CLOCK.fullmatch(word):
        moment = _at_clock(today, word, zone)
        result = moment.timestamp() if moment is not None else None
    else:
        result = _relative(word, now)
        if result is None:
            result = _absolute(word, zone)
    if result is None:
        raise TimeSpecError(f"cannot read time {text!r}: use {HELP}")
    return result


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _absolute(text: str, zone: tzinfo) -> float | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = _localize(moment, zone)
    return moment.timestamp()

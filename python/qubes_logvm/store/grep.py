"""Which stored lines of a block may match a pattern, found at C speed (floor 2).

The one matcher behind ``logvm show --grep`` and the browser's search. A
pattern is matched on a record's *unescaped message*
(:attr:`qubes_logvm.core.entries.Understood.message`, decoded as UTF-8);
this module only narrows down which lines need that exact check, by
scanning a whole block of stored lines at once instead of one line at a
time. Every line it leaves out cannot match; the lines it yields are
candidates the caller still parses and tests (no second definition of a
match).

Why leaving a line out is safe:

- a line without a backslash was not escaped, so its message is a
  substring of it: a pattern that cannot see outside its match (no anchors,
  word boundaries or lookarounds, :func:`whole_line_safe`) that finds
  nothing in the line finds nothing in the message;
- a line with a backslash (escaped, or written by someone else than the
  collector) is always a candidate;
- ignoring case, ASCII lowering is exact on ASCII lines (the characters
  Unicode folds onto ASCII letters, such as the Kelvin sign, are not ASCII),
  so only lines holding a non-ASCII byte are tried whole;
- a regular expression whose every match holds a literal text
  (:func:`required_literal`: ``no such \\w+ anywhere`` holds `` anywhere``)
  cannot match a message without that text, so the block is first searched
  for the literal as bytes (lowered when ignoring case), and the regex runs
  once over the few lines that hold it (the rules above apply to those:
  anchored patterns are not tried on lines at all).

Trust side: blocks are untrusted bytes from segments; nothing here parses
them, and a line of invalid UTF-8 (a tampered segment) is always a candidate.
"""

import re
from collections.abc import Callable, Iterator
from typing import AnyStr, cast

_CONTEXT_SENSITIVE = re.compile(r"[\^$]|\\[AZbBzG]|\(\?[=!<]")
# Outside a character set, these have a meaning in a regular expression.
_META = frozenset(".^$*+?{}[]|()\\")
_NON_ASCII = re.compile(rb"[\x80-\xff]")
_INVALID = re.compile("[\udc80-\udcff]")
_FLAGS_OK = re.IGNORECASE | re.UNICODE
# A quantifier in braces (a superset of what re reads as one: dropping text is safe).
_BRACES = re.compile(r"\{[0-9]*,?[0-9]*\}")
# Escapes of one character that stand for a class, an anchor or a control.
_SHORT_ESCAPES = frozenset("dDwWsSbBAZafnrtv")


def whole_line_safe(pattern: "re.Pattern[str]") -> bool:
    """True when a match in the message is also a match in the whole line (and back)."""
    return _CONTEXT_SENSITIVE.search(pattern.pattern) is None


def literal_of(pattern: "re.Pattern[str]") -> str | None:
    """The text a pattern without metacharacters stands for (``re.escape``'s too)."""
    found = literals_of(pattern)
    return found[0] if found is not None and len(found) == 1 else None


def literals_of(pattern: "re.Pattern[str]") -> list[str] | None:
    """The texts of a pattern that is literals joined by ``|`` (``a b|c-d``), else None."""
    if pattern.flags & ~_FLAGS_OK:
        return None
    found = [_literal_text(part) for part in _alternatives(pattern.pattern)]
    return None if None in found else cast(list[str], found)


def _alternatives(text: str) -> list[str]:
    """``text`` split at each ``|`` that is not escaped."""
    parts, start, chars = [], 0, enumerate(text)
    for index, char in chars:
        if char == "\\":
            next(chars, None)
        elif char == "|":
            parts.append(text[start:index])
            start = index + 1
    return [*parts, text[start:]]


def _literal_text(text: str) -> str | None:
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            escaped = next(chars, "")
            if not escaped or escaped.isalnum() or not escaped.isascii():
                return None  # \d, \n, \1...: a class, a control or a reference
            out.append(escaped)
        elif char in _META:
            return None
        else:
            out.append(char)
    return "".join(out) or None


def required_literal(pattern: "re.Pattern[str]") -> str | None:
    """The longest text every match of ``pattern`` holds, None when none is sure.

    A conservative reading of the pattern's top level: runs of literal
    characters between anything else (groups, sets, escapes of classes,
    anchors, ``.``); a quantified character leaves its run; a ``|`` outside
    a group means no text is sure. Ignoring case, only ASCII characters are
    kept (a non-ASCII one may fold onto an ASCII letter: the Kelvin sign).
    Leaving text out is always safe; only text that every match holds, in
    that order and next to each other, is ever kept.
    """
    if pattern.flags & re.VERBOSE:
        return None  # whitespace and # would not be text
    fold = bool(pattern.flags & re.IGNORECASE)
    runs: list[str] = []
    run: list[str] = []
    for kind, char in _top_level(pattern.pattern):
        if kind == "|":
            return None  # an alternative at the top: no text in all of them
        if kind == "quantifier" and run:
            run.pop()  # the quantified character may be absent
        if kind == "text" and not _unsure(char, fold):
            run.append(char)
        else:
            runs.append("".join(run))
            run = []
    runs.append("".join(run))
    return max(runs, key=len) or None


def _unsure(char: str, fold: bool) -> bool:
    """True when a literal ``char`` in the pattern may match other bytes than its own."""
    return (fold and not char.isascii()) or char == "\ufffd" or "\ud800" <= char <= "\udfff"


def _top_level(text: str) -> Iterator[tuple[str, str]]:
    """The pattern's top-level items: ``("text", char)``, ``("quantifier", "")``, ``("|", "")``
    or ``("other", "")`` (a group, a set, an anchor, ``.``, an escape that is no character)."""
    at = 0
    while at < len(text):
        char, end = text[at], at + 1
        if char in "|)":
            yield "|", ""  # a stray ")" does not compile: as unsure as a bar
        elif char in "*+?":
            yield "quantifier", ""
        elif char == "{":
            braces = _BRACES.match(text, at)
            end = braces.end() if braces is not None else end
            yield ("quantifier" if braces is not None else "other"), ""
        elif char in "([":
            end = _group_end(text, at) if char == "(" else _set_end(text, at)
            yield "other", ""
        elif char in ".^$":
            yield "other", ""
        elif char == "\\":
            escaped, end = text[at + 1 : at + 2], _escape_end(text, at)
            is_text = bool(escaped) and not (escaped.isascii() and escaped.isalnum())
            yield ("text" if is_text else "other"), escaped
        else:
            yield "text", char
        at = end


def _escape_end(text: str, at: int) -> int:
    """The end of the escape at ``at`` (its digits, hex or ``{name}`` included)."""
    escaped = text[at + 1 : at + 2]
    end = at + 2
    if not escaped.isascii() or not escaped.isalnum() or escaped in _SHORT_ESCAPES:
        return end
    if escaped == "N" and text[end : end + 1] == "{":
        close = text.find("}", end)
        return len(text) if close < 0 else close + 1
    while end < len(text) and text[end].isalnum():  # \x41, \u00e9, \12: may leave text out
        end += 1
    return end


def _set_end(text: str, at: int) -> int:
    """The end of the set ``[...]`` starting at ``at``."""
    end = at + 1
    if text[end : end + 1] == "^":
        end += 1
    if text[end : end + 1] == "]":
        end += 1  # a "]" first is a member
    while end < len(text):
        if text[end] == "\\":
            end += 2
        elif text[end] == "]":
            return end + 1
        else:
            end += 1
    return len(text)


def _group_end(text: str, at: int) -> int:
    """The end of the group ``(...)`` starting at ``at`` (sets, escapes, comments skipped)."""
    if text.startswith("(?#", at):
        close = text.find(")", at)
        return len(text) if close < 0 else close + 1
    depth, end = 0, at
    while end < len(text):
        char = text[end]
        if char == "\\":
            end += 2
            continue
        if char == "[":
            end = _set_end(text, end)
            continue
        if text.startswith("(?#", end):
            end = _group_end(text, end)
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return end + 1
        end += 1
    return len(text)


class LineMatcher:
    """Candidate lines of blocks of stored lines for one pattern (None: every line)."""

    def __init__(self, pattern: "re.Pattern[str] | None") -> None:
        self.pattern = pattern
        self.fold = bool(pattern is not None and pattern.flags & re.IGNORECASE)
        self.needles = _needles(pattern, fold=self.fold)
        literal = required_literal(pattern) if pattern is not None and not self.needles else None
        required = literal.encode("utf-8") if literal else b""
        self.required = required.lower() if self.fold else required  # folding: ASCII only
        self.line_safe = pattern is not None and whole_line_safe(pattern)
        self.every = pattern is None or not (self.needles or self.required or self.line_safe)

    def candidates(self, block: bytes) -> Iterator[tuple[int, bytes]]:
        """``(index, line)`` of each line of ``block`` that may match.

        ``block`` holds whole lines, each ending in ``\\n``; ``index`` counts
        from 0; ``line`` is without its newline.
        """
        if self.every:
            yield from enumerate(block.split(b"\n")[:-1])
        elif self.needles:
            yield from self._literal(block, self.needles)
        elif self.required:
            yield from self._prefiltered(block)
        else:
            yield from self._regex(block)

    def _prefiltered(self, block: bytes) -> Iterator[tuple[int, bytes]]:
        """The lines holding the required literal, then the regex over just those."""
        found = list(self._literal(block, [self.required]))
        if not self.line_safe or not found:
            yield from found
            return
        joined = b"\n".join(line for _, line in found) + b"\n"
        for index, line in self._regex(joined):
            yield found[index][0], line

    def _literal(self, block: bytes, needles: list[bytes]) -> Iterator[tuple[int, bytes]]:
        hay = block.lower() if self.fold else block
        finders = [_Hits(_finder(hay, needle)) for needle in needles]
        finders.append(_Hits(lambda pos: block.find(b"\\", pos)))
        if self.fold and not block.isascii():
            finders.append(_Hits(lambda pos: _start(_NON_ASCII.search(block, pos))))
        yield from _lines_at(block, block, finders)

    def _regex(self, block: bytes) -> Iterator[tuple[int, bytes]]:
        pattern = self.pattern
        if pattern is None:
            yield from enumerate(block.split(b"\n")[:-1])
            return
        # Each invalid byte becomes one lone surrogate: the text of a valid line
        # is its strict decoding, and encoding back gives the stored bytes.
        text = block.decode("utf-8", "surrogateescape")
        finders = [
            _Hits(lambda pos: _start(pattern.search(text, pos))),
            _Hits(lambda pos: text.find("\\", pos)),
        ]
        if not block.isascii():  # a line with invalid bytes is tried whole
            finders.append(_Hits(lambda pos: _start(_INVALID.search(text, pos))))
        yield from _lines_at(text, block if len(text) == len(block) else None, finders)


def _needles(pattern: "re.Pattern[str] | None", *, fold: bool) -> list[bytes]:
    """The bytes to find when the pattern is literals (lowered when folding), else []."""
    literals = literals_of(pattern) if pattern is not None else None
    if not literals:
        return []
    # U+FFFD stands for invalid bytes; a non-ASCII text folds in ways bytes do not.
    if any("\ufffd" in text or (fold and not text.isascii()) for text in literals):
        return []
    encoded = [text.encode("utf-8") for text in literals]
    return [needle.lower() for needle in encoded] if fold else encoded


def _finder(hay: bytes, needle: bytes) -> Callable[[int], int]:
    return lambda pos: hay.find(needle, pos)


def _start(found: "re.Match[str] | re.Match[bytes] | None") -> int:
    return found.start() if found is not None else -1


class _Hits:
    """One kind of hit (a match, a backslash...): the next one at or after a position."""

    def __init__(self, find: Callable[[int], int]) -> None:
        self.find = find
        self.hit = -2  # not asked yet

    def after(self, pos: int) -> int:
        """The first hit at or after ``pos`` (-1: none); asks again only when needed."""
        if self.hit == -2 or 0 <= self.hit < pos:
            self.hit = self.find(pos)
        return self.hit


def _lines_at(hay: AnyStr, raw: bytes | None, finders: list[_Hits]) -> Iterator[tuple[int, bytes]]:
    """The lines holding the finders' hits, each once.

    ``hay`` is the block, or its decoded text; ``raw``: the block when its
    offsets are the text's, else a line is encoded back (exact: invalid bytes
    were decoded as surrogates).
    """
    newline = cast(AnyStr, "\n" if isinstance(hay, str) else b"\n")
    pos = counted = index = 0
    while (hit := _first(finders, pos)) >= 0:
        start = hay.rfind(newline, pos, hit) + 1 or pos
        end = hay.find(newline, hit)
        if end < 0:
            return  # after the last newline: not a line of the block
        index += hay.count(newline, counted, start)
        counted = start
        if raw is not None:
            yield index, raw[start:end]
        elif isinstance(hay, str):
            yield index, hay[start:end].encode("utf-8", "surrogateescape")
        pos = end + 1


def _first(finders: list[_Hits], pos: int) -> int:
    hits = [h for h in (f.after(pos) for f in finders) if h >= 0]
    return min(hits) if hits else -1

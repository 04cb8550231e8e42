"""The block matcher never leaves out a line whose message matches (store/grep.py)."""

import random
import re

import pytest

from qubes_logvm.core.entries import classify
from qubes_logvm.core.escape import escape
from qubes_logvm.core.records import line_record, note_record
from qubes_logvm.exporter.record import format_record
from qubes_logvm.store.grep import LineMatcher, literal_of, literals_of, required_literal

STAMP = b"2026-11-28T18:00:00.000000Z"

MESSAGES = [
    b"plain connection refused",
    b"Connection REFUSED loudly",
    b"back\\slash refused",  # escaped twice on the way
    b"esc \x1b[2J refused",  # a control byte: escaped
    b"bidi \xe2\x80\xaerefused",  # a refused character: escaped
    b"\xe2\x84\xaaernel kelvin",  # U+212A folds onto k
    b"caf\xc3\xa9 au lait",  # non-ASCII, passed as is
    b"broken \xff\xfe utf-8",  # invalid bytes: escaped
    b"nothing to see",
    b"a  spaced   out line",
    b"dom0 header word: sshd",
]


def stored_lines() -> list[bytes]:
    lines = []
    for index, message in enumerate(MESSAGES):
        record = format_record(STAMP, b"host", 3, "sshd.service", "sshd", index, message)
        lines.append(line_record(STAMP, escape(record[:-1]))[:-1])
        lines.append(line_record(STAMP, escape(message))[:-1])  # a plain line
    lines.append(note_record(STAMP, "dropped", count=3, reason="rate-limit")[:-1])
    lines.append(b"not a record at all \\ refused")
    lines.append(b"raw \xff invalid in the store kernel")  # a tampered segment
    lines.append(STAMP + b" L \\x6bernel written as an escape")  # not the collector's escaping
    return lines


def reference(lines: list[bytes], pattern: "re.Pattern[str]") -> set[int]:
    found = set()
    for index, line in enumerate(lines):
        message = classify(line).message.decode("utf-8", "replace")
        if pattern.search(message):
            found.add(index)
    return found


@pytest.mark.parametrize(
    ("text", "flags", "narrows"),
    [
        ("refused", re.IGNORECASE, True),  # literal, folded: ASCII lowering
        ("REFUSED", 0, True),  # literal, exact bytes
        ("kernel", re.IGNORECASE, False),  # Kelvin sign: non-ASCII lines tried whole
        ("café", 0, True),  # non-ASCII literal, exact
        (re.escape("a  spaced"), re.IGNORECASE, True),  # the browser's plain search
        (re.escape("\x1b[2J"), 0, True),  # controls: not a literal of the stored bytes
        (r"conn\w+ refused", re.IGNORECASE, True),  # a regex: on decoded text
        (r"\\", 0, False),  # a backslash: escaped lines always tried
        (r"^plain", 0, False),  # anchored: every line
        (r"refused\b", 0, False),  # word boundary: every line
        (r"\s+out", 0, True),  # may span a newline in the block
        ("rate-limit", 0, True),  # a collector note
        ("\ufffd", 0, False),  # what invalid bytes decode to
        ("refused|kernel", re.IGNORECASE, False),  # literals, folded: non-ASCII lines whole
        ("REFUSED|nothing to", 0, True),  # literals joined by |: each found as bytes
        ("spaced|\\|x", 0, True),  # an escaped | is part of a literal
        ("sshd|conn.*", 0, False),  # one alternative is a regex: the regex path
        (r"conn\w+ refused", re.IGNORECASE, True),  # " refused" first, then the regex
        (r"^plain conn", 0, True),  # anchored, but "plain conn" is in every match
        (r"refused\b", re.IGNORECASE, True),  # a boundary: the literal alone narrows
        (r"k\w+el", re.IGNORECASE, False),  # "el", folded: the Kelvin line is tried whole
        (r"caf\w", 0, True),  # non-ASCII lines hold "caf" as bytes
        (r"(?i)REFUSED\s+l", 0, True),  # the flag inline: the literal is lowered
        (r"esc.*refused", 0, True),  # the escaped line: a backslash makes it a candidate
    ],
)
def test_candidates_hold_every_match(text: str, flags: int, narrows: bool) -> None:
    lines = stored_lines()
    block = b"\n".join(lines) + b"\n"
    pattern = re.compile(text, flags)
    got = list(LineMatcher(pattern).candidates(block))
    indexes = [index for index, _ in got]
    assert indexes == sorted(set(indexes))  # each line once, in order
    assert all(lines[index] == line for index, line in got)  # the exact stored bytes
    expected = reference(lines, pattern)
    assert expected <= set(indexes)
    if narrows:
        assert len(indexes) < len(lines)


def test_every_line_without_a_pattern() -> None:
    lines = stored_lines()
    got = list(LineMatcher(None).candidates(b"\n".join(lines) + b"\n"))
    assert [line for _, line in got] == lines


@pytest.mark.parametrize(
    ("pattern", "literal"),
    [
        (re.escape("a b-c:d"), "a b-c:d"),
        ("plain words", "plain words"),
        (r"a\.b", "a.b"),
        (r"a.b", None),  # a metacharacter
        (r"\d+", None),  # a class
        (r"\n", None),  # a control
        ("", None),
    ],
)
def test_literal_of(pattern: str, literal: str | None) -> None:
    assert literal_of(re.compile(pattern)) == literal
    assert literal_of(re.compile(pattern, re.VERBOSE)) is None  # spaces would not count


@pytest.mark.parametrize(
    ("pattern", "literals"),
    [
        ("error: reset|Failed password", ["error: reset", "Failed password"]),
        (r"a\|b|c", ["a|b", "c"]),  # an escaped bar is text
        ("a||b", None),  # an empty alternative matches everywhere
        ("a|b+", None),  # one alternative is not a literal
        ("(a|b)", None),  # a group
    ],
)
def test_literals_of(pattern: str, literals: list[str] | None) -> None:
    assert literals_of(re.compile(pattern)) == literals


@pytest.mark.parametrize(
    ("pattern", "flags", "literal"),
    [
        (r"no such \w+ anywhere", re.IGNORECASE, " anywhere"),  # the longest run
        ("abc*d", 0, "ab"),  # a quantified character leaves its run
        ("a{2}bc", 0, "bc"),  # braces are a quantifier
        ("a{x}bc", 0, "x}bc"),  # braces that are not a quantifier are text
        ("x{|y", 0, None),  # the bar is at the top
        (r"\x41bc", 0, None),  # the escape's digits are not text
        (r"a\.b\*c", 0, "a.b*c"),  # escaped punctuation is text
        ("(a|b)cde", 0, "cde"),  # a bar inside a group
        ("[]|(]cd", 0, "cd"),  # a set holding ] | (
        ("xyz(?#()|abc", 0, None),  # a comment ends at its first )
        (r"^Failed password for \S+ from", 0, "Failed password for "),
        ("cafés", re.IGNORECASE, "caf"),  # ignoring case: ASCII only
        ("cafés", 0, "cafés"),
        ("(?i)Foo", 0, "Foo"),  # lowered by the matcher (the flag is the pattern's)
        ("a b", re.VERBOSE, None),  # spaces are no text
        (r"\N{LATIN SMALL LETTER A}bc", 0, "bc"),
        ("a.b", 0, "a"),
        (r"\d+", 0, None),
    ],
)
def test_required_literal(pattern: str, flags: int, literal: str | None) -> None:
    assert required_literal(re.compile(pattern, flags)) == literal


def test_required_literal_is_in_every_match() -> None:
    # Random patterns over a small alphabet, each against random texts: every
    # text the pattern matches holds the literal (folded when ignoring case).
    rng = random.Random(14)
    pieces = ["a", "b", "A", "\\.", ".", "b*", "a+", "c?", "[ab]", "(a|bc)", "(?:b)?", "x{2}"]
    pieces += ["\\w", "^", "$", "\\b", "\u212a", "k", "(?#)|)", "{", "\\x61", "a{1,2}?"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        flags = rng.choice([0, re.IGNORECASE])
        try:
            pattern = re.compile(text, flags)
        except re.error:
            continue
        literal = required_literal(pattern)
        if literal is None:
            continue
        for _ in range(40):
            hay = "".join(rng.choice("aAbBckK.x\u212a ") for _ in range(rng.randint(0, 12)))
            if not pattern.search(hay):
                continue
            if not pattern.flags & re.IGNORECASE:
                assert literal in hay, (text, hay)
            elif hay.isascii():  # the matcher tries non-ASCII lines whole when folding
                assert literal.encode().lower() in hay.encode().lower(), (text, hay)

"""Qrexec policy (R4.1+ format) for the qrexec stand-in: tokens, files, parsing.

Test-only code: the product never imports it. It plays dom0's policy daemon
for ``fake-qrexec-client-vm``, so it must refuse what the real one refuses
(evaluation is in :mod:`support.qrexec_eval`).
Semantics follow QubesOS/qubes-core-qrexec ``qrexec/policy/parser.py``
(current master, R4.2): token classes and where each may appear, parameter
checks, first match wins, ``@default`` resolution, loopback refusal, and the
all-or-nothing file-name check of the policy directory. Nothing is copied
from it; the behaviour is re-implemented and cited per function.

Trust side: policy files are trusted (dom0's); the request fields (service
name, requested target) come from the calling qube and are checked here.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: Characters allowed in service names and arguments (qrexec/__init__.py).
RPCNAME_CHARS = frozenset(string.ascii_letters + string.digits + "+-._")
#: Characters allowed in policy file names (parser.py FILENAME_ALLOWED_CHARSET).
FILENAME_CHARS = frozenset(string.digits + string.ascii_lowercase + "_.-")
POLICY_SUFFIX = ".policy"

# Where each keyword may appear (parser.py: the VMToken subclasses inherit
# Source/Target/Redirect/IntendedTarget). "*" is WildcardVM (Source, Target).
_EXACT = {
    "*": {"source", "target"},
    "@adminvm": {"source", "target", "redirect", "intended"},
    "@anyvm": {"source", "target"},
    "@default": {"target", "intended"},
    "@dispvm": {"target", "redirect", "intended"},
}
# Order matters: "@dispvm:@tag:x" first tries "@dispvm:" (value starts with
# "@", so it falls through) and then "@dispvm:@tag:".
_PREFIXES = (
    ("@type:", {"source", "target"}),
    ("@tag:", {"source", "target"}),
    ("@dispvm:", {"source", "target", "redirect", "intended"}),
    ("@dispvm:@tag:", {"source", "target"}),
)
_ACTION_PARAMS = {
    "allow": {"target", "user", "notify", "autostart"},
    "deny": {"notify"},
    "ask": {"target", "default_target", "user", "notify", "autostart"},
}


class PolicyError(Exception):
    """The policy cannot be used; real qrexec then refuses every call."""


class PolicySyntaxError(PolicyError):
    """A policy line is invalid (parser.py PolicySyntaxError)."""

    def __init__(self, path: str, lineno: int, message: str) -> None:
        super().__init__(f"{path}:{lineno}: {message}")


class UnsupportedByStandIn(PolicyError):
    """Valid for real qrexec, but this stand-in does not implement it."""


@dataclass(frozen=True)
class Token:
    """A source/target/redirect specification: ``kind`` is the keyword or prefix."""

    text: str
    kind: str  # "name", an exact keyword, or a prefix such as "@tag:"
    value: str = ""  # the part after the prefix, for prefixed tokens

    def __str__(self) -> str:
        return self.text


def parse_token(raw: str, context: str, where: str = "<request>", lineno: int = 0) -> Token:
    """Classify ``raw`` for ``context`` (source, target, redirect, intended).

    As VMToken.__new__: ``dom0`` is an alias of ``@adminvm``; a plain word is a
    qube name (not checked for existence); a keyword outside its allowed
    contexts, or an empty prefixed value, is a syntax error.
    """
    text = "@adminvm" if raw == "dom0" else raw
    if not (text.startswith("@") or text == "*"):
        return Token(text, "name")
    if text in _EXACT and context in _EXACT[text]:
        return Token(text, text)
    for prefix, contexts in _PREFIXES:
        if context not in contexts or not text.startswith(prefix):
            continue
        value = text[len(prefix) :]
        if not value:
            raise PolicySyntaxError(where, lineno, f"invalid empty {prefix} token: {text!r}")
        if value.startswith("@"):
            continue
        return Token(text, prefix, value)
    raise PolicySyntaxError(where, lineno, f"invalid {context} token: {raw!r}")


@dataclass(frozen=True)
class QubeInfo:
    """What the policy needs to know of a qube (qrexec's system_info entry)."""

    name: str
    type: str = "AppVM"
    tags: tuple[str, ...] = ()
    running: bool = True
    default_dispvm: str | None = None
    template_for_dispvms: bool = False


@dataclass
class Rule:
    """One policy line (parser.py Rule)."""

    service: str | None  # None for "*"
    argument: str | None  # None for "*"
    source: Token
    target: Token
    action: str
    params: dict[str, str]
    path: str
    lineno: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.lineno}"

    @property
    def redirect(self) -> Token | None:
        raw = self.params.get("target")
        return None if raw is None else parse_token(raw, "redirect", self.path, self.lineno)

    def flag(self, name: str, default: bool) -> bool:
        raw = self.params.get(name)
        return default if raw is None else raw == "yes"


def _check_service_argument(service: str, argument: str, path: str, lineno: int) -> None:
    """validate_service_and_argument: charset, leading ``+``, no argument for ``*``."""
    if service != "*":
        bad = sorted(set(service) - (RPCNAME_CHARS - {"+"}))
        if bad:
            raise PolicySyntaxError(path, lineno, f"service {service!r} has invalid chars {bad}")
    if argument == "*":
        return
    bad = sorted(set(argument) - RPCNAME_CHARS)
    if bad:
        raise PolicySyntaxError(path, lineno, f"argument {argument!r} has invalid chars {bad}")
    if not argument.startswith("+"):
        raise PolicySyntaxError(path, lineno, f"argument {argument!r} does not start with +")
    if service == "*":
        raise PolicySyntaxError(path, lineno, "only * argument allowed for * service")


def _parse_params(action: str, raw: list[str], path: str, lineno: int) -> dict[str, str]:
    """``key=value`` parameters; unknown keys, repeats and bad booleans are errors."""
    params: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep:
            raise PolicySyntaxError(path, lineno, f"invalid action parameter syntax: {item!r}")
        if key in params:
            raise PolicySyntaxError(path, lineno, f"parameter given twice: {key!r}")
        if key in ("notify", "autostart") and value not in ("yes", "no"):
            raise PolicySyntaxError(path, lineno, f"{key!r} is {value!r}, but can be only yes/no")
        params[key] = value
    unknown = sorted(set(params) - _ACTION_PARAMS[action])
    if unknown:
        raise PolicySyntaxError(path, lineno, f"invalid parameters for action {action}: {unknown}")
    for key in ("target", "default_target"):
        if key in params:
            parse_token(params[key], "redirect", path, lineno)
    return params


def parse_rule(line: str, path: str, lineno: int) -> Rule:
    """Parse one non-comment policy line (Rule.from_line)."""
    fields = line.split()
    if len(fields) < 5:
        raise PolicySyntaxError(path, lineno, "wrong number of fields")
    service, argument, source, target, action, *raw_params = fields
    _check_service_argument(service, argument, path, lineno)
    if action not in _ACTION_PARAMS:
        raise PolicySyntaxError(path, lineno, f"invalid action: {action}")
    rule = Rule(
        service=None if service == "*" else service,
        argument=None if argument == "*" else argument,
        source=parse_token(source, "source", path, lineno),
        target=parse_token(target, "target", path, lineno),
        action=action,
        params=_parse_params(action, raw_params, path, lineno),
        path=path,
        lineno=lineno,
    )
    if rule.target.kind == "@default" and action == "allow" and "target" not in rule.params:
        raise PolicySyntaxError(
            path, lineno, "allow action for @default rule must specify target= option"
        )
    return rule


def parse_policy_text(text: str, path: str) -> list[Rule]:
    """Rules of one file, in order; comments (``#`` first) and blank lines skipped.

    ``#`` is a comment only at the start of a line, as in the real parser: a
    trailing ``# note`` is a malformed parameter. ``!include*`` and
    ``!compat-4.0`` are valid upstream but not implemented here.
    """
    rules: list[Rule] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("!"):
            directive = line.split()[0]
            if directive in ("!include", "!include-dir", "!include-service", "!compat-4.0"):
                raise UnsupportedByStandIn(f"{path}:{lineno}: {directive} is not supported")
            raise PolicySyntaxError(path, lineno, "invalid directive")
        rules.append(parse_rule(line, path, lineno))
    return rules


def policy_files(dirs: Iterable[Path]) -> list[Path]:
    """Files qrexec reads, in order (filter_filepaths + load_policy_dirs).

    Per directory: regular files ending in ``.policy`` not starting with a
    dot; if one of them has a name outside ``[0-9a-z_.-]`` the whole policy is
    refused. A name seen in an earlier directory hides later ones; the result
    is sorted by file name (C locale: names are ASCII by then).
    """
    seen: dict[str, Path] = {}
    for directory in dirs:
        try:
            entries = sorted(directory.iterdir())
        except OSError as err:
            raise PolicyError(f"failed to load {directory}: {err}") from err
        candidates = [
            p
            for p in entries
            if p.is_file() and p.suffix == POLICY_SUFFIX and not p.name.startswith(".")
        ]
        for path in candidates:
            if not set(path.name) <= FILENAME_CHARS:
                raise PolicyError(f"invalid filename: {path}")
        for path in candidates:
            seen.setdefault(path.name, path)
    return [seen[name] for name in sorted(seen)]


def load_policy(dirs: Iterable[Path]) -> list[Rule]:
    """All rules of a policy directory set; any error makes the whole policy unusable."""
    rules: list[Rule] = []
    for path in policy_files(dirs):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise PolicyError(f"failed to load {path}: {err}") from err
        rules.extend(parse_policy_text(text, str(path)))
    return rules

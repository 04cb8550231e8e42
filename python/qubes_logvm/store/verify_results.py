"""The last ``logvm verify`` result per qube, as the LogVM's user last saw it (floor 2).

``logvm verify`` (inside the LogVM) writes one small JSON file in the
user's state directory (``$XDG_STATE_HOME/qubes-logvm/verify-results.json``,
default ``~/.local/state/...``); ``logvm-browser`` shows it in its
*Verified* column. It is the result known *in the LogVM*: a compromised
LogVM can write any of it, so it is a convenience, never the verdict that
counts (that is dom0's, ``logvm-witness verify``; docs/verifying.md).

Trust side: the file is the user's own; it is still read bounded and
parsed defensively (a bad file reads as "nothing known").
"""

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the verifier is not imported to read results (the browser's start)
    from .verify.findings import Report

_MAX_BYTES = 1 << 20
_MAX_QUBES = 10_000


@dataclass(frozen=True)
class QubeResult:
    """One qube's outcome in one run."""

    when: float  # Unix time of the run
    ok: bool
    errors: int
    warnings: int


def results_path(environ: "os._Environ[str] | dict[str, str] | None" = None) -> Path:
    """Where the results live for this user."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "/")) / ".local" / "state")
    return Path(base) / "qubes-logvm" / "verify-results.json"


def outcome(report: "Report", qubes: list[str], when: float) -> dict[str, QubeResult]:
    """Each verified qube's result; a store-wide error counts against every qube."""
    shared = [f for f in report.findings if f.qube is None]
    found = {}
    for qube in qubes:
        mine = [f for f in report.findings if f.qube == qube] + shared
        errors = sum(1 for f in mine if f.severity == "error")
        warnings = sum(1 for f in mine if f.severity == "warning")
        found[qube] = QubeResult(when, errors == 0, errors, warnings)
    return found


def save_results(path: Path, store: Path, results: dict[str, QubeResult]) -> None:
    """Merge a run's results into the file (atomically: a temporary file renamed)."""
    known = _read_all(path)
    entry = known.setdefault(str(store.resolve()), {})
    for qube, result in results.items():
        entry[qube] = [result.when, result.ok, result.errors, result.warnings]
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".verify-results-")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(known, stream)
    os.replace(temp, path)


def load_results(path: Path, store: Path) -> dict[str, QubeResult]:
    """The results known for a store ({} when none or unreadable)."""
    entry = _read_all(path).get(str(store.resolve()), {})
    found = {}
    for qube, value in list(entry.items())[:_MAX_QUBES]:
        match value:
            case [int() | float() as when, bool() as ok, int() as errors, int() as warnings]:
                found[qube] = QubeResult(float(when), ok, errors, warnings)
            case _:
                continue  # not what save_results writes
    return found


def describe(result: QubeResult | None) -> str:
    """The *Verified* cell: ``ok Dec 02 15:04``, ``FAILED (2) Dec 02 15:04``, ``unknown``."""
    if result is None:
        return "unknown"
    stamp = time.strftime("%b %d %H:%M", time.localtime(result.when))
    return f"ok {stamp}" if result.ok else f"FAILED ({result.errors}) {stamp}"


def _read_all(path: Path) -> dict[str, dict[str, list[object]]]:
    try:
        with path.open("rb") as stream:
            data = stream.read(_MAX_BYTES + 1)
    except OSError:
        return {}
    if len(data) > _MAX_BYTES:
        return {}
    try:
        parsed = json.loads(data)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {k: v for k, v in parsed.items() if isinstance(k, str) and isinstance(v, dict)}

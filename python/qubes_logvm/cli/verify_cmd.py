"""``logvm verify`` and ``logvm setup-keys`` (floor 3).

Trust side: the verification key comes from the admin (a file kept outside
the LogVM, or stdin); the store is untrusted. Findings are printed one per
line, each naming qube, segment and line range; the exit status is 1 when
any is an error.
"""

import logging
import os
import pwd
import tempfile
import time
from pathlib import Path

from ..config.collector import load_collector_config
from ..core.errors import ConfigError, LogvmError, SealError
from ..core.seal import parse_verification_key
from ..core.sizes import human_size
from ..store.forwarded import read_lines as read_forwarded
from ..store.forwarded import rebuild
from ..store.keystate import setup_keys
from ..store.verify import Report, verify_store
from ..store.verify_results import outcome, results_path, save_results
from ..store.witness_pending import queue_registration
from .common import Env, UsageError

log = logging.getLogger(__name__)
_MAX_KEY_FILE = 4096


def read_key(env: Env, source: str) -> str:
    """The ``logvm-vk1:...`` text from a file or ``-`` (stdin)."""
    try:
        if source == "-":
            text = env.stdin.read(_MAX_KEY_FILE)
        else:
            with Path(source).open(encoding="ascii", errors="replace") as stream:
                text = stream.read(_MAX_KEY_FILE)
    except OSError as err:
        raise UsageError(f"--key {source}: cannot read: {err.strerror}") from err
    # A file saved from `logvm setup-keys` on a terminal holds explanations
    # too: the key is the one logvm-vk1: word in it.
    words = [w for w in text.split() if w.startswith("logvm-vk1:")]
    key = words[0] if len(words) == 1 else text.strip()
    parse_verification_key(key)  # a clear error now rather than later
    return key


def run_verify(
    env: Env,
    qubes: list[str],
    key_source: str,
    witness: str | None,
    forwarded: str | None = None,
) -> int:
    """Verify the store (or a central server's forwarded copy); print findings;
    0 intact, 1 tampered, 2 wrong key or unreadable."""
    key = read_key(env, key_source)
    if forwarded is not None:
        if witness is not None:
            raise UsageError("--forwarded and --witness: one at a time")
        return _verify_forwarded(env, qubes, key, forwarded)
    report = verify_store(env.layout.root, key, qubes or None, witness)
    _remember(env, report, qubes or env.layout.qubes())
    return _print_report(env, report, [])


def _remember(env: Env, report: Report, qubes: list[str]) -> None:
    """Keep each qube's result for logvm-browser's Verified column (this user's file)."""
    path = results_path()
    try:
        save_results(path, env.layout.root, outcome(report, qubes, time.time()))
    except OSError as err:
        env.err.write(f"logvm verify: result not kept in {path}: {err.strerror}\n")


def _verify_forwarded(env: Env, qubes: list[str], key: str, central: str) -> int:
    """Rebuild the copy in a temporary store, then verify it like the store itself."""
    store_id, _ = parse_verification_key(key)
    try:
        stream = Path(central).open("rb")  # noqa: SIM115 (closed by the with below)
    except OSError as err:
        raise UsageError(f"--forwarded {central}: cannot read: {err.strerror}") from err
    with stream, tempfile.TemporaryDirectory(prefix="logvm-forwarded-") as tmp:
        rebuilt = rebuild(read_forwarded(stream), store_id, Path(tmp))
        if not rebuilt.messages:
            raise UsageError(f"{central}: no forwarded message of store {store_id}")
        env.out.line(f"Forwarded copy: {rebuilt.messages} messages of store {store_id}.")
        for note in rebuilt.notes:
            env.out.line(f"info: forwarded: {note}")
        report = verify_store(tmp, key, qubes or None, copy=True)
        return _print_report(env, report, [f"error: forwarded: {p}" for p in rebuilt.problems])


def _print_report(env: Env, report: Report, problems: list[str]) -> int:
    for line in problems:
        env.out.line(line)
    for finding in report.findings:
        env.out.line(str(finding))
    for limit in report.limits:
        env.out.line(f"limit: {limit}")
    errors, warnings = len(report.errors) + len(problems), len(report.warnings)
    summary = (
        f"{report.qubes} qubes, {report.segments} segments, "
        f"{human_size(report.bytes_hashed)} of records hashed, "
        f"{len(report.deletions)} deletion(s)"
    )
    if errors:
        env.out.line(f"FAILED: {errors} error(s), {warnings} warning(s); {summary}")
        return 1
    env.out.line(f"OK: intact, {warnings} warning(s); {summary}")
    return 0


def run_setup_keys(env: Env, epoch_seconds: float, store_format: int) -> int:
    """Create the sealing state and show the verification key once."""
    if epoch_seconds <= 0:
        raise UsageError("--epoch-seconds must be more than 0")
    _refuse_foreign_owner(env.layout.root)
    key = setup_keys(env.layout, epoch_seconds=epoch_seconds, store_format=store_format)
    store_id, _ = parse_verification_key(key)
    if not env.out.terminal:
        # As `journalctl --setup-keys`: only the key on stdout (`> vk.txt`),
        # the explanations on stderr.
        env.out.line(key)
        env.out.flush()
        env.err.write(f"logvm setup-keys: store {store_id} created in {env.layout.root}; ")
        env.err.write("the verification key went to stdout: keep it OUTSIDE this qube.\n")
        env.err.write(f"logvm setup-keys: {_register(env, key)}\n")
        return 0
    out = env.out
    out.line(f"Sealing state created in {env.layout.root} (store {store_id}).")
    out.line(f"Seals evolve their key every {epoch_seconds:g} seconds.")
    out.line()
    out.line("The verification key (shown only this once):")
    out.line()
    out.line(f"    {key}")
    out.line()
    out.line("Keep it OUTSIDE this qube (a vault qube, a password manager, on paper):")
    out.line("anyone who controls this qube later must not have it. Verify with")
    out.line("    logvm verify --key FILE      (or --key - to paste it)")
    out.line("The key now sits in this terminal's scrollback, inside the LogVM: once you")
    out.line("have copied it, clear it (`clear && printf '\\e[3J'`) or close the terminal.")
    out.line(_register(env, key))
    return 0


def _refuse_foreign_owner(root: Path) -> None:
    """Root must not create key files the collector's user cannot read."""
    if os.geteuid() != 0:
        return
    try:
        owner = root.stat().st_uid
    except FileNotFoundError:
        return
    if owner != 0:
        try:
            name = pwd.getpwuid(owner).pw_name
        except KeyError:
            name = str(owner)
        raise UsageError(
            f"{root} belongs to {name}: files created by root here would be unreadable "
            f"for the collector; run: sudo -u {name} logvm setup-keys"
        )


def _register(env: Env, key: str) -> str:
    """Queue the key for the witness when one is configured."""
    try:
        witness = load_collector_config(*env.configs).witness
    except ConfigError as err:
        return f"Witness not registered: the collector configuration is wrong: {err}"
    if witness.target is None and not witness.command:
        return "No witness configured (collector.yaml witness.target): nothing registered."
    try:
        queue_registration(env.layout.root, key)
    except (LogvmError, OSError) as err:
        raise SealError(f"could not queue the key for the witness: {err}") from err
    return (
        f"Queued for the witness ({witness.target or 'custom command'}): the collector "
        "registers it and then erases it from this qube."
    )

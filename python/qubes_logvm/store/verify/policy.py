"""Deletions against the retention policy dom0 deployed (floor 2).

The Salt formula writes the collector settings it deployed for a LogVM to
the witness (``/etc/qubes-logvm/witness-policy/<logvm>.json``); ``logvm-witness
export`` passes the file on unread as the export's ``policy`` line. The
LogVM's local ``collector.yaml`` may keep *less* than that policy would,
never delete what it would keep. So every tomb whose reason is a rule of
the policy must be one that policy allows (:mod:`..eviction` applies the
same rules; a retired qube's last deletion is its retire line's tomb):

- ``age``: the segment was at least the qube's ``max_age`` old when deleted
  (epochs between its final seal and the deletion, times the store's epoch
  length, one epoch of slack), and the deployed policy has an age limit for
  that qube at all;
- ``dispvm``: the deployed policy deletes closed DispVM sessions
  (``dispvm_delete_after_close``), the qube is of the ``dispvm`` class, and
  the segment had been closed at least that long.

- ``quota``: the qube was over the deployed quota (or its plain-bytes cap)
  by what it counted when the collector deleted. The collector sends, with
  its quota deletions, a sealed cost note (:class:`~...core.witness_format.CostLine`):
  the qube's cost with the batch it was about to store (at append time) or
  its cost when housekeeping planned the deletion, and the newest segment
  deleted for it. A quota tomb is judged by the first note for its segment
  or a later one (the sender keeps the newest note per qube: a later note
  stands for the deletions before it). A quota tomb no note covers is an
  error once the LogVM sends cost notes at all (a deletion made in or after
  the epoch of the first note the witness heard, more than one epoch before
  the witness's newest record); older ones are shown, not judged.

Global-cap deletions depend on the whole disk, which the witness does not
see: they are shown, not judged (a limit verify prints).

The collector's settings notes (sealed digests of the settings it ran with,
at start and after every reload) are listed with dom0's time, each saying
whether it is the deployed policy.

Trust side: the policy bytes come from dom0 through the witness export (the
export's MAC-checked records vouch for the file as a whole only in that it
came with them); parsed with the collector's own strict config parser.
"""

import json

from ...config.schema import Section
from ...config.storage_policy import (
    DISPVM_CLASS,
    RetentionConfig,
    class_of,
    max_age_for,
    parse_retention,
    plain_quota_for,
    quota_for,
    settings_digest,
)
from ...core.errors import ConfigError
from ...core.sizes import human_size
from ...core.tomb import Tomb
from ...core.witness_format import CostLine, SettingsLine
from ..usage import Cost, over
from .context import VerifyRun
from .findings import ERROR, INFO
from .retired import retired_tombs

QUOTA_NOT_JUDGED = (
    "global-cap deletions, and quota deletions made before the witness heard the "
    "LogVM's first cost note, are shown, not judged against the deployed policy"
)
#: Cost notes the witness heard, per qube: (dom0 time, note).
Costs = dict[str, list[tuple[bytes, CostLine]]]


def parse_policy(data: bytes) -> RetentionConfig:
    """The deployed policy (the collector section of the pillar, as JSON); ConfigError if bad."""
    try:
        tree = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"not JSON: {err}") from err
    return parse_retention(Section(tree, "policy"))


def check_policy(
    ctx: VerifyRun,
    data: bytes,
    registered: float | None = None,
    costs: Costs | None = None,
    newest_epoch: int = 0,
) -> None:
    """Every age, DispVM or quota deletion in the store must be one the deployed policy makes.

    Ages are reckoned with the epoch length the store registered with the
    witness when there is one (else store.json's, the LogVM's word); quota
    deletions by the cost notes the witness heard (``costs``).
    """
    try:
        cfg = parse_policy(data)
    except ConfigError as err:
        ctx.add(ERROR, None, f"witness: the deployed policy in the witness file: {err}")
        return
    seconds = registered or (ctx.info.epoch_seconds if ctx.info is not None else None)
    if seconds is None:
        return
    quota = _QuotaJudge(cfg, costs or {}, newest_epoch)
    # A retired qube's directory is gone: its last deletion is its retire line's.
    gone = {qube: [tomb] for qube, tomb in retired_tombs(ctx).items()}
    for qube, tombs in sorted({**gone, **ctx.tomb_lines}.items()):
        for tomb in tombs:
            if tomb.version >= 2 and tomb.kind == "tomb":
                why = _refused(cfg, qube, tomb, seconds) or quota.refused(qube, tomb)
                if why is not None:
                    ctx.add(
                        ERROR,
                        qube,
                        f"witness: deleted for {tomb.reason} (epoch {tomb.epoch}), but {why}: "
                        "a deletion dom0's policy would not make",
                        tomb.last,
                    )
    ctx.report.limits.append(QUOTA_NOT_JUDGED)


def _refused(cfg: RetentionConfig, qube: str, tomb: Tomb, seconds: float) -> str | None:
    """Why the deployed policy would not have made this deletion (None: it would)."""
    age = (tomb.epoch - tomb.close_epoch + 1) * seconds  # one epoch of slack
    if tomb.reason == "age":
        limit = max_age_for(cfg, qube)
        if limit <= 0:
            return "the deployed policy keeps this qube's segments until the quota needs room"
        if age < limit:
            return f"the segment was about {age:.0f} s old, the deployed max_age is {limit:.0f} s"
    if tomb.reason == "dispvm":
        after = cfg.dispvm_delete_after_close
        if after is None or class_of(cfg, qube) != DISPVM_CLASS:
            return "the deployed policy does not delete this qube's closed sessions"
        if age < after:
            return f"it had been closed about {age:.0f} s, the deployed policy waits {after:.0f} s"
    return None


class _QuotaJudge:
    """Quota deletions against the cost notes the witness heard."""

    def __init__(self, cfg: RetentionConfig, costs: Costs, newest_epoch: int) -> None:
        self.cfg = cfg
        self.costs = {q: sorted(notes, key=lambda n: n[1].seq) for q, notes in costs.items()}
        self.newest_epoch = newest_epoch
        # The LogVM sends cost notes from this epoch on (None: never heard one).
        self.first = min((n.epoch for notes in costs.values() for _, n in notes), default=None)

    def refused(self, qube: str, tomb: Tomb) -> str | None:
        """Why the deployed quota would not have made this quota deletion (None: it would,
        or it cannot be judged)."""
        if tomb.reason != "quota":
            return None
        heard = next(
            (
                (stamp, note)
                for stamp, note in self.costs.get(qube, [])
                if note.seq >= tomb.last and note.epoch >= tomb.epoch
            ),
            None,
        )
        if heard is None:
            if (
                self.first is None
                or tomb.epoch < self.first
                or tomb.epoch + 1 >= self.newest_epoch
            ):
                return None  # made before the LogVM sent cost notes, or just now
            return (
                "the witness heard no cost note for it (the collector sends one with every "
                "quota deletion)"
            )
        stamp, note = heard
        if over(self.cfg, qube, Cost(note.disk, 0, note.plain)):
            return None
        return (
            f"the qube counted {human_size(note.disk)} ({human_size(note.plain)} of text) then "
            f"(cost note the witness heard at {stamp.decode()}), within the deployed quota of "
            f"{human_size(quota_for(self.cfg, qube))} "
            f"({human_size(plain_quota_for(self.cfg, qube))} of text)"
        )


def report_settings(
    ctx: VerifyRun, notes: list[tuple[bytes, SettingsLine]], policy: bytes | None
) -> None:
    """One info line per settings note the witness kept (a start or a reload)."""
    deployed = None
    if policy is not None:
        try:
            deployed = settings_digest(parse_policy(policy))
        except ConfigError:
            deployed = None  # reported by check_policy
    for stamp, note in notes:
        if deployed is None:
            judged = ""
        elif note.digest == deployed:
            judged = ", as dom0 deployed"
        else:
            judged = ", NOT the policy dom0 deployed"
        ctx.add(
            INFO,
            None,
            f"witness: the collector's retention settings from dom0 time {stamp.decode()} "
            f"(epoch {note.epoch}): {note.digest.hex()[:16]}{judged}",
        )

"""What the qube list shows: per-qube figures from the shared store summaries (floor 4).

The same figures as ``logvm list`` and ``logvm stats``
(:mod:`qubes_logvm.store.summary`, :func:`store.eviction.qube_report`):
cheap ones at once, drops (a scan of every segment) in a second pass the
window runs off the main loop. Trust side: unverified figures from disk.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from ..config.collector import load_collector_config
from ..config.storage_policy import RetentionConfig
from ..core.errors import LogvmError
from ..core.sizes import human_size
from ..store.eviction import qube_report
from ..store.layout import StoreLayout
from ..store.summary import count_drops, qube_summary, segment_info
from ..store.verify_results import describe, load_results, results_path
from .text import local_time

#: Classes the retention config gives DispVM sessions (``disp1234``); by name otherwise.
_DISPVM_CLASSES = ("dispvm", "disposable")
_DISPVM_NAME = re.compile(r"disp[0-9]+")


@dataclass
class QubeFacts:
    """One row of the qube list."""

    name: str
    qube_class: str
    size: int
    quota: int
    records: int
    first: str
    last: str
    deletions: int
    drops: int | None = None  # None: not counted yet
    verified: str = "unknown"

    @property
    def is_session(self) -> bool:
        """True for a DispVM session (grouped under one node)."""
        return self.qube_class in _DISPVM_CLASSES or bool(_DISPVM_NAME.fullmatch(self.name))

    @property
    def quota_use(self) -> float:
        """Usage as a fraction of the quota."""
        return self.size / self.quota if self.quota > 0 else 0.0


def retention_config(configs: tuple[Path, ...]) -> RetentionConfig | None:
    """The collector's retention settings (None when they cannot be read)."""
    try:
        return load_collector_config(*configs).retention
    except (LogvmError, OSError):
        return None


def qube_facts(layout: StoreLayout, cfg: RetentionConfig | None, qube: str) -> QubeFacts:
    """The cheap figures of one qube."""
    rows = [segment_info(s) for s in layout.segments(qube)]
    summary = qube_summary(qube, rows)
    if cfg is not None:
        report = qube_report(layout, cfg, qube)
        usage, quota = report["usage"], report["quota"]
        klass, deletions = report["qube_class"] or "AppVM", report["evictions"]
    else:
        usage, quota, klass, deletions = int(str(summary["size"])), 0, "?", 0
    if qube == "dom0":
        klass = "dom0"
    return QubeFacts(
        qube,
        klass,
        usage,
        quota,
        int(str(summary["records"])),
        str(summary["first"] or "-"),
        str(summary["last"] or "-"),
        int(deletions),
    )


def all_facts(
    layout: StoreLayout, cfg: RetentionConfig | None, results: Path | None = None
) -> list[QubeFacts]:
    """Every qube's cheap figures, by name, with its last ``logvm verify`` result."""
    known = load_results(results or results_path(), layout.root)
    found = [qube_facts(layout, cfg, q) for q in layout.qubes()]
    for facts in found:
        facts.verified = describe(known.get(facts.name))
    return found


def drops_of(layout: StoreLayout, qube: str) -> int:
    """Records the collector dropped for the qube (its drop notes summed)."""
    return sum(count_drops(s) for s in layout.segments(qube))


def qube_row(facts: QubeFacts) -> list[object]:
    """The qube list's cells for one qube (browser.ui's qube_store columns)."""
    quota = f"{100 * facts.quota_use:.0f}% of {human_size(facts.quota)}" if facts.quota else "-"
    return [
        facts.name,
        facts.qube_class,
        human_size(facts.size),
        quota,
        str(facts.records),
        local_time(facts.first.encode(), precise=False) if facts.first != "-" else "-",
        local_time(facts.last.encode(), precise=False) if facts.last != "-" else "-",
        "…" if facts.drops is None else str(facts.drops),
        str(facts.deletions),
        facts.verified,
        True,
    ]

"""The qube list's figures that come after the first paint (floor 4).

Class, quota use and deletions need the collector's config (YAML) and the
eviction rules (:func:`qubes_logvm.store.eviction.qube_report`, as
``logvm stats``); the last verification comes from ``logvm verify``'s
results file; drops from a scan of every segment. The window imports this
module in its background thread once the window is drawn, so neither the
imports nor the reading delay the first paint. Trust side: unverified
figures from disk.
"""

from dataclasses import replace
from pathlib import Path

from ..config.collector import load_collector_config
from ..config.storage_policy import RetentionConfig
from ..core.errors import LogvmError
from ..store.eviction import qube_report
from ..store.layout import StoreLayout
from ..store.summary import count_drops
from ..store.verify_results import describe, load_results, results_path
from .qubes import QubeFacts


def retention_config(configs: tuple[Path, ...]) -> RetentionConfig | None:
    """The collector's retention settings (None when they cannot be read)."""
    try:
        return load_collector_config(*configs).retention
    except (LogvmError, OSError):
        return None


class PolicyFacts:
    """What completes the cheap figures: config, eviction report, verify results."""

    def __init__(
        self, layout: StoreLayout, configs: tuple[Path, ...], results: Path | None = None
    ) -> None:
        self.layout = layout
        self.cfg = retention_config(configs)
        self.known = load_results(results or results_path(), layout.root)

    def complete(self, facts: QubeFacts) -> QubeFacts:
        """``facts`` with class, usage, quota, deletions and the last verification."""
        verified = describe(self.known.get(facts.name))
        if self.cfg is None:
            return replace(facts, qube_class="?", deletions=0, verified=verified)
        report = qube_report(self.layout, self.cfg, facts.name)
        klass = "dom0" if facts.name == "dom0" else report["qube_class"] or "AppVM"
        return replace(
            facts,
            qube_class=klass,
            size=int(report["usage"]),
            quota=int(report["quota"]),
            deletions=int(report["evictions"]),
            verified=verified,
        )


def drops_of(layout: StoreLayout, qube: str) -> int:
    """Records the collector dropped for the qube (its drop notes summed)."""
    return sum(count_drops(s) for s in layout.segments(qube))

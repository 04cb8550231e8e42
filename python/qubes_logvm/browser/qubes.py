"""What the qube list shows: per-qube figures from the shared store summaries (floor 4).

The same figures as ``logvm list`` and ``logvm stats``
(:mod:`qubes_logvm.store.summary`, :func:`store.eviction.qube_report`).
Before the window's first paint only the cheap ones (:func:`all_facts`:
sizes, record counts, times from the seal files and segment ends); class,
quota, deletions and the last verification (which need the collector's
config and the verifier's results, :mod:`.policyfacts`) and drops (a scan of
every segment) come after it, off the main loop. Trust side: unverified
figures from disk.
"""

import re
from dataclasses import dataclass

from ..core.sizes import human_size
from ..store.layout import StoreLayout
from ..store.summary import qube_totals
from .text import local_time

#: Classes the retention config gives DispVM sessions (``disp1234``); by name otherwise.
_DISPVM_CLASSES = ("dispvm", "disposable")
_DISPVM_NAME = re.compile(r"disp[0-9]+")
#: A cell not known yet (filled in after the first paint).
PENDING = "…"


@dataclass
class QubeFacts:
    """One row of the qube list (None: not known yet)."""

    name: str
    qube_class: str
    size: int
    quota: int
    records: int
    first: str
    last: str
    deletions: int | None = None
    drops: int | None = None
    verified: str = PENDING

    @property
    def is_session(self) -> bool:
        """True for a DispVM session (grouped under one node)."""
        return self.qube_class in _DISPVM_CLASSES or bool(_DISPVM_NAME.fullmatch(self.name))

    @property
    def quota_use(self) -> float:
        """Usage as a fraction of the quota."""
        return self.size / self.quota if self.quota > 0 else 0.0


def qube_facts(layout: StoreLayout, qube: str) -> QubeFacts:
    """The cheap figures of one qube (size: its segment and seal files)."""
    summary = qube_totals(qube, layout.segments(qube))
    return QubeFacts(
        qube,
        "dom0" if qube == "dom0" else PENDING,
        int(str(summary["size"])),
        0,
        int(str(summary["records"])),
        str(summary["first"] or "-"),
        str(summary["last"] or "-"),
    )


def all_facts(layout: StoreLayout) -> list[QubeFacts]:
    """Every qube's cheap figures, by name."""
    return [qube_facts(layout, q) for q in layout.qubes()]


def qube_row(facts: QubeFacts) -> list[object]:
    """The qube list's cells for one qube (browser.ui's qube_store columns)."""
    if facts.quota:
        quota = f"{100 * facts.quota_use:.0f}%"
    else:
        quota = PENDING if facts.deletions is None else "-"
    return [
        facts.name,
        facts.qube_class,
        human_size(facts.size),
        quota,
        str(facts.records),
        _time(facts.first),
        _time(facts.last),
        PENDING if facts.drops is None else str(facts.drops),
        PENDING if facts.deletions is None else str(facts.deletions),
        facts.verified,
        True,
    ]


def qube_details(facts: QubeFacts) -> str:
    """Every figure of one qube, a line each (the label under the list; plain text)."""
    quota = f"{100 * facts.quota_use:.0f}% of {human_size(facts.quota)}" if facts.quota else ""
    cells = qube_row(facts)
    figures = (
        ("Qube", facts.name),
        ("Class", facts.qube_class),
        ("Size", f"{cells[2]}" + (f" ({quota} quota)" if quota else "")),
        ("Records", cells[4]),
        ("First", cells[5]),
        ("Last", cells[6]),
        ("Dropped", cells[7]),
        ("Deleted", f"{cells[8]} segments"),
        ("Verified", facts.verified),
    )
    return "\n".join(f"{title}: {value}" for title, value in figures)


def _time(stamp: str) -> str:
    return local_time(stamp.encode(), precise=False) if stamp != "-" else "-"

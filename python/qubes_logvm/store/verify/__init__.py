"""Verification: one engine, one findings model (floor 2).

``verify_store(root, key, qubes=None, witness=None)`` checks a store
directory (any copy of one: in the LogVM, or a snapshot in a DispVM) against
its verification key and, when given, the witness's exported records, and
returns a :class:`Report`. Modules: :mod:`.engine` (the store, qube
directories), :mod:`.tombs` (deletions), :mod:`.segment` and :mod:`.data`
(one segment's seals and bytes), :mod:`.witness` (against the witness),
:mod:`.chain` (a whole segment against its seals, also used by rotation),
:mod:`.remnant` (what a crash may leave), :mod:`.findings`.
"""

from .engine import verify_store
from .findings import ERROR, INFO, WARNING, Deletion, Finding, Report, WrongKey

__all__ = [
    "ERROR",
    "INFO",
    "WARNING",
    "Deletion",
    "Finding",
    "Report",
    "WrongKey",
    "verify_store",
]

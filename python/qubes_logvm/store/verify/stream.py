"""Verify a store copy qube by qube, as its qubes arrive (floor 2).

The streaming entry point of the one engine, for a copy being written while
it is verified (``logvm.VerifySnapshot`` in a DispVM, snapshot/check.py):
``QubeStream(root, key, qubes, witness)`` once ``store.json`` and the key
file are in place, :meth:`QubeStream.qube` for each qube directory as soon
as it is complete, :meth:`QubeStream.finish` for the :class:`Report`.

The findings are exactly those of :func:`~.engine.verify_store` on the
finished copy: the same store checks, the same per-qube walk
(``engine._verify_qube``), the same witness check, in the same order. Qubes
are verified on arrival only while that is the order ``verify_store`` would
take (every qube: ascending names; named qubes: the order named) and while
the key file authenticates under the key (so no seal probing across qubes
is needed). A format-2 store's epoch seals span every qube: they are
checked at the end and their findings put where ``verify_store`` puts them.
Anything else, an honest LogVM never sends; it makes
:meth:`finish` verify the whole copy with ``verify_store`` instead, so a
hostile order can cost time but never change the verdict.
"""

import os
from pathlib import Path

from ...core.errors import InvalidQubeName
from ...core.names import validate_qube_name
from ...core.seal import EpochKeys, parse_verification_key
from ..files import irregular
from ..layout import StoreLayout
from .context import VerifyRun
from .engine import _check_store_json, _verify_qube, conclude, format2, verify_store
from .epochs import check_epochs
from .findings import ERROR, Report


class QubeStream:
    """One verification of a copy whose qube directories appear one after another."""

    def __init__(
        self,
        root: Path | str,
        verification_key: str,
        qubes: list[str] | None = None,
        witness: Path | str | None = None,
    ) -> None:
        store_id, key0 = parse_verification_key(verification_key)
        self.root, self.key = Path(root), verification_key
        self.requested = list(qubes) if qubes else None
        self.witness = Path(witness) if witness is not None else None
        self.ctx = VerifyRun(StoreLayout(root), store_id, EpochKeys.for_verifier(key0), Report())
        self.done: list[str] = []  # qubes verified or reported missing, in order
        self.verified: list[str] = []
        self.store_checks = (0, 0)  # findings and limits before the first qube's
        self.streaming = self._plain_names() and self._start()

    def _plain_names(self) -> bool:
        """Named qubes each valid and named once (else the engine's own wording applies)."""
        if self.requested is None:
            return True
        try:
            for name in self.requested:
                validate_qube_name(name)
        except InvalidQubeName:
            return False
        return len(set(self.requested)) == len(self.requested)

    def _start(self) -> bool:
        """The store checks ``verify_store`` makes first; False unless the key file is good."""
        ctx = self.ctx
        try:
            if irregular(ctx.layout.sealkey) is not None:
                return False
        except FileNotFoundError:
            return False
        found = ctx.read_key_file()
        if found is None or ctx.keys.key(found[0]) != found[1]:
            return False  # the engine's probing and wording apply: verified at the end
        _check_store_json(ctx)
        ctx.key_epoch = ctx.max_epoch = found[0]  # as engine._check_key_file does
        format2(ctx)
        self.store_checks = (len(ctx.report.findings), len(ctx.report.limits))
        return True

    def qube(self, name: str) -> None:
        """``qubes/NAME`` is complete: verify it now if the order allows."""
        if not self.streaming:
            return
        if self.requested is None:
            if self.done and name <= self.done[-1]:
                self.streaming = False
                return
            self._verify(name)
            return
        if name not in self.requested[len(self.done) :]:
            self.streaming = name not in self.requested  # not asked for: ignored, as there
            return
        for missing in self.requested[len(self.done) : self.requested.index(name, len(self.done))]:
            self.ctx.add(ERROR, missing, "no such qube in the store")  # as verify_store says
            self.done.append(missing)
        self._verify(name)

    def _verify(self, name: str) -> None:
        self.ctx.report.qubes += 1
        _verify_qube(self.ctx, name)
        self.done.append(name)
        self.verified.append(name)

    def _complete(self) -> bool:
        """Every qube directory of the finished copy was verified, none twice."""
        try:
            present = sorted(os.listdir(self.ctx.layout.qubes_dir))
        except OSError:
            return False
        wanted = present if self.requested is None else [q for q in self.requested if q in present]
        return self.verified == wanted

    def finish(self) -> Report:
        """The report on the finished copy (the whole copy verified if streaming stopped)."""
        if not (self.streaming and self._complete()):
            return verify_store(self.root, self.key, self.requested, self.witness)
        ctx = self.ctx
        if self.requested is not None:
            for missing in self.requested[len(self.done) :]:
                ctx.add(ERROR, missing, "no such qube in the store")
        if ctx.epoch_jumps:
            self._epoch_checks()
        conclude(ctx, self.witness, self.requested, False)
        return ctx.report

    def _epoch_checks(self) -> None:
        """Format 2: the store-wide epoch seals over every qube, placed where
        ``verify_store`` puts them (after the store checks, before the qubes)."""
        ctx, report = self.ctx, self.ctx.report
        ctx.report = Report()
        try:
            check_epochs(ctx, sorted(os.listdir(ctx.layout.qubes_dir)), self.requested)
        finally:
            found, ctx.report = ctx.report, report
        at_finding, at_limit = self.store_checks
        report.findings[at_finding:at_finding] = found.findings
        report.limits[at_limit:at_limit] = found.limits

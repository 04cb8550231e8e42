"""The qube list (left): a tree of qubes, DispVM sessions grouped, with a filter (floor 4).

Cells come from :mod:`.qubes` (cheap figures, before the first paint) and
:mod:`.policyfacts` (class, quota, deletions, verification, drops: in a
thread started by the window's first draw); every cell is set as text
(``text=``, never ``markup=``).
"""

import threading
from collections.abc import Callable
from pathlib import Path

import gi

gi.require_version("Gtk", "3.0")
from gi.repository import GLib, GObject, Gtk, Pango  # noqa: E402

from ..core.errors import LogvmError  # noqa: E402
from ..store.layout import StoreLayout  # noqa: E402
from .qubes import QubeFacts, all_facts, qube_details, qube_row  # noqa: E402

#: The columns shown: title, qube_store column, and whether the cell may be cut
#: short (with "…"; the label under the list shows it whole). First and last
#: times, drops and deletions are in that label only: the list fits the left
#: pane at 1280x800 and grows with the font.
QUBE_COLUMNS = (
    ("Qube", 0, True),
    ("Class", 1, False),
    ("Size", 2, False),
    ("Quota", 3, False),
    ("Records", 4, False),
    ("Verified", 9, True),
)
SESSIONS = "DispVM sessions"


class QubeList:
    """The list's widgets (from browser.ui), the figures shown and how they are kept."""

    def __init__(
        self,
        builder: Gtk.Builder,
        layout: StoreLayout,
        configs: tuple[Path, ...],
        on_chosen: Callable[[str], None],
    ) -> None:
        self.layout = layout
        self.configs = configs
        self.on_chosen = on_chosen
        self.store: Gtk.TreeStore = builder.get_object("qube_store")
        self.filter: Gtk.TreeModelFilter = builder.get_object("qube_filter")
        self.view: Gtk.TreeView = builder.get_object("qube_view")
        self.entry: Gtk.SearchEntry = builder.get_object("qube_filter_entry")
        self.details: Gtk.Label = builder.get_object("qube_details")
        self.facts: dict[str, QubeFacts] = {}
        self.chosen: str | None = None
        self._late_pending: list[str] = []  # qubes whose late figures are not asked for yet
        self._generation = 0  # of the list: late figures of an older one are dropped
        self.figures_complete = False  # every late figure of this list is shown
        self.on_figures: list[Callable[[], None]] = []  # told when a figure changes
        self._chosen_handler = 0

    def setup(self) -> None:
        """Columns and signals."""
        for title, index, cut in QUBE_COLUMNS:
            cell = Gtk.CellRendererText()
            if cut:
                cell.set_property("ellipsize", Pango.EllipsizeMode.END)
                cell.set_property("width-chars", 8)
            column = Gtk.TreeViewColumn(title, cell, text=index)  # text=, never markup=
            column.set_resizable(True)
            column.set_expand(index == 0)
            self.view.append_column(column)
        self.filter.set_visible_column(10)
        self._chosen_handler = self.view.get_selection().connect("changed", self._selected)
        self.entry.connect("search-changed", lambda *_: self._apply_filter())

    def refresh(self) -> None:
        """Read the qube list again (F5); keeps the chosen qube.

        Only the cheap figures before the window is drawn; the rest
        (:mod:`.policyfacts`) in a thread started by the next draw.
        """
        chosen = self.chosen
        self.facts = {f.name: f for f in all_facts(self.layout)}
        self._generation += 1
        self.figures_complete = False
        self._fill_list()
        self._late_pending = list(self.facts)
        if chosen in self.facts:
            self.choose(chosen)
        self._tell_figures()

    def _fill_list(self) -> None:
        self.store.clear()
        sessions = None
        for facts in self.facts.values():
            parent = None
            if facts.is_session:
                if sessions is None:
                    sessions = self.store.append(None, [SESSIONS] + [""] * 9 + [True])
                parent = sessions
            self.store.append(parent, qube_row(facts))
        self._apply_filter()

    def after_draw(self) -> bool:
        """The window was drawn: start the late figures (once per list)."""
        # The late figures import the config and eviction code and scan every
        # segment for drops, holding the GIL in long stretches: they start
        # after a draw, not before the first one.
        names, self._late_pending = self._late_pending, []
        if names:
            work = (names, self._generation)
            threading.Thread(target=self._late_figures, args=work, daemon=True).start()
        return False

    def _late_figures(self, names: list[str], generation: int) -> None:
        from .policyfacts import PolicyFacts, drops_of  # here: not before the first paint

        cheap = dict(self.facts)
        try:
            policy: PolicyFacts | None = PolicyFacts(self.layout, self.configs)
        except (LogvmError, OSError):
            policy = None
        completed = []
        for name in names:
            try:
                completed.append(policy.complete(cheap[name]) if policy else cheap[name])
            except (LogvmError, OSError, KeyError):
                continue
        GLib.idle_add(self._set_facts, completed, generation)
        for name in names:
            try:
                count = drops_of(self.layout, name)
            except (LogvmError, OSError):
                continue
            GLib.idle_add(self._set_drops, name, count, generation)
        GLib.idle_add(self._late_done, generation)

    def _set_facts(self, completed: list[QubeFacts], generation: int) -> bool:
        if generation != self._generation:
            return False
        regroup = False
        for facts in completed:
            old = self.facts.get(facts.name)
            if old is not None:
                regroup = regroup or old.is_session != facts.is_session
                self.facts[facts.name] = facts
        if regroup:  # a session known by its class only: the list is built again
            with GObject.signal_handler_block(self.view.get_selection(), self._chosen_handler):
                self._fill_list()
                if self.chosen is not None:
                    self.choose(self.chosen)
        else:
            for facts in completed:
                self._each_row(lambda it, f=facts: self.store.set_row(it, qube_row(f)), facts.name)
            self._apply_filter()
        self._show_details()
        self._tell_figures()
        return False

    def _tell_figures(self) -> None:
        for listener in list(self.on_figures):
            listener()

    def _set_drops(self, name: str, count: int, generation: int) -> bool:
        if generation == self._generation and name in self.facts:
            self.facts[name].drops = count
            self._each_row(lambda it: self.store.set_value(it, 7, str(count)), name)
            if name == self.chosen:
                self._show_details()
        return False

    def _late_done(self, generation: int) -> bool:
        self.figures_complete = generation == self._generation
        return False

    def _each_row(self, action: "object", name: str) -> None:
        def visit(model: Gtk.TreeModel, _path: object, it: Gtk.TreeIter) -> bool:
            if model.get_value(it, 0) == name:
                action(it)  # type: ignore[operator]
            return False

        self.store.foreach(visit)

    def _apply_filter(self) -> None:
        text = self.entry.get_text().lower()

        def visit(model: Gtk.TreeModel, _path: object, it: Gtk.TreeIter) -> bool:
            name = model.get_value(it, 0)
            shown = (
                name == SESSIONS or text in name.lower() or text in model.get_value(it, 1).lower()
            )
            if model.get_value(it, 10) != shown:
                model.set_value(it, 10, shown)
            return False

        self.store.foreach(visit)
        self.view.expand_all()

    def choose(self, name: str) -> None:
        """Select a qube in the list (as a click does)."""
        found: list[Gtk.TreePath] = []

        def visit(model: Gtk.TreeModel, path: Gtk.TreePath, it: Gtk.TreeIter) -> bool:
            if model.get_value(it, 0) == name:
                found.append(path.copy())
                return True
            return False

        self.filter.foreach(visit)
        if found:
            self.view.get_selection().select_path(found[0])

    def _selected(self, selection: Gtk.TreeSelection) -> None:
        model, it = selection.get_selected()
        name = model.get_value(it, 0) if it is not None else None
        if name is None or name not in self.facts:
            return
        self.chosen = name
        self._show_details()
        self.on_chosen(name)

    def _show_details(self) -> None:
        facts = self.facts.get(self.chosen) if self.chosen is not None else None
        self.details.set_text(qube_details(facts) if facts is not None else "")  # plain text

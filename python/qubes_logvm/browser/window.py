"""The main window: construction from the .ui file, then setup (floor 4).

As Qubes' own GTK tools do (qubes-desktop-linux-manager's
``qubes_config/global_config/global_config.py``, ``perform_setup``): the
window is built from a GtkBuilder file, and the store is read in
:meth:`BrowserWindow.setup`, separate from construction, so tests can build
a window on any store and drive its widgets.
"""

import re
import threading
from pathlib import Path

import gi

gi.require_version("Gtk", "3.0")
gi.require_version("Gdk", "3.0")
from gi.repository import Gdk, GLib, Gtk  # noqa: E402

from ..core.errors import LogvmError  # noqa: E402
from ..store.layout import StoreLayout  # noqa: E402
from ..store.timeline import Entry  # noqa: E402
from ..store.viewcopy import OPEN_COMMAND, open_in_dispvm  # noqa: E402
from .actions import (  # noqa: E402
    COPY_COMMAND,
    SCOPES,
    StorageChart,
    export,
    qvm_copy,
    stored_lines,
)
from .model import QubeRows  # noqa: E402
from .qubelist import QubeList  # noqa: E402
from .qubes import QubeFacts  # noqa: E402
from .recordview import RecordView  # noqa: E402
from .search import Pattern, find  # noqa: E402
from .text import as_text, details, local_time, stamp_of  # noqa: E402

FOLLOW_MS = 500
_HERE = Path(__file__).resolve().parent  # browser.ui and browser.css ship next to us


def load_builder() -> Gtk.Builder:
    """The window's widgets from browser.ui (shipped in the package)."""
    builder = Gtk.Builder()
    builder.add_from_file(str(_HERE / "browser.ui"))
    return builder


def load_css() -> None:
    """Our style sheet, for the whole screen."""
    provider = Gtk.CssProvider()
    provider.load_from_path(str(_HERE / "browser.css"))
    screen = Gdk.Screen.get_default()
    if screen is not None:
        Gtk.StyleContext.add_provider_for_screen(
            screen, provider, Gtk.STYLE_PROVIDER_PRIORITY_APPLICATION
        )


class BrowserWindow:
    """The window and its behaviour; ``setup`` reads the store."""

    def __init__(
        self,
        app: Gtk.Application | None,
        layout: StoreLayout,
        configs: tuple[Path, ...],
        open_command: tuple[str, ...] = OPEN_COMMAND,
        copy_command: tuple[str, ...] = COPY_COMMAND,
    ) -> None:
        self.open_command = open_command
        self.copy_command = copy_command
        self.layout = layout
        self.configs = configs
        self.builder = load_builder()
        self.window: Gtk.ApplicationWindow = self.builder.get_object("main_window")
        if app is not None:
            self.window.set_application(app)
        self.qubes = QubeList(self.builder, layout, configs, self._qube_chosen)
        self.store, self.filter = self.qubes.store, self.qubes.filter
        self.records = RecordView()
        self.builder.get_object("record_slot").pack_start(self.records, True, True, 0)
        self.records.show_all()
        self.detail: Gtk.TextView = self.builder.get_object("detail_view")
        self.status: Gtk.Label = self.builder.get_object("status_label")
        self.qube: str | None = None
        self.rows: QubeRows | None = None
        self.range: tuple[bytes | None, bytes | None] = (None, None)
        self.cancel = threading.Event()
        self.searching = False
        self.last_search: int | None = None
        self._follow_source = 0

    # -- setup ---------------------------------------------------------
    def setup(self) -> None:
        """Columns, signals, shortcuts; then read the qube list."""
        self.qubes.setup()
        get = self.builder.get_object
        get("search_entry").connect("activate", lambda *_: self.search(forward=True))
        get("next_button").connect("clicked", lambda *_: self.search(forward=True))
        get("prev_button").connect("clicked", lambda *_: self.search(forward=False))
        get("cancel_button").connect("clicked", lambda *_: self.cancel.set())
        get("range_apply").connect("clicked", lambda *_: self.apply_range())
        get("range_clear").connect("clicked", lambda *_: self.clear_range())
        get("follow_toggle").connect("toggled", self._follow_toggled)
        get("copy_button").connect("clicked", lambda *_: self.copy_selection())
        get("open_button").connect("clicked", self._open_menu)
        get("export_button").connect("clicked", lambda *_: self.export_dialog())
        get("storage_button").connect("clicked", lambda *_: self.storage_dialog())
        self.open_items = self._build_open_menu()
        self.records.on_select = self._show_detail
        self.records.on_error = self.status.set_text
        self.window.connect_after("draw", lambda *_: self.qubes.after_draw())
        self._shortcuts()
        self.refresh()

    def _shortcuts(self) -> None:
        group = Gtk.AccelGroup()
        get = self.builder.get_object
        keys = {
            "<Control>f": lambda: get("search_entry").grab_focus(),
            "<Control>l": lambda: get("range_button").set_active(True),
            "F5": self.refresh,
            "<Control>o": lambda: self.open_in_dispvm(
                "selection" if self.records.selection() else "range"
            ),
        }
        for accel, action in keys.items():
            key, mods = Gtk.accelerator_parse(accel)
            group.connect(key, mods, Gtk.AccelFlags.VISIBLE, lambda *_a, act=action: act() or True)
        self.window.add_accel_group(group)

    # -- qube list -----------------------------------------------------
    @property
    def facts(self) -> dict[str, QubeFacts]:
        """The qube list's figures, by qube."""
        return self.qubes.facts

    @property
    def figures_complete(self) -> bool:
        """True once every figure of the qube list is shown (the late ones too)."""
        return self.qubes.figures_complete

    def refresh(self) -> None:
        """Read the qube list again (F5); keeps the chosen qube."""
        self.qubes.refresh()
        self.status.set_text(f"{len(self.facts)} qubes in {self.layout.root}")

    def choose_qube(self, name: str) -> None:
        """Select a qube in the list (as a click does)."""
        self.qubes.choose(name)

    def _qube_chosen(self, name: str) -> None:
        self.qube = name
        self.rows = QubeRows(self.layout, name)
        self.show_range()

    # -- records -------------------------------------------------------
    def show_range(self) -> None:
        """Show the chosen qube's rows within the time range."""
        rows = self.rows
        if rows is None:
            return
        since, until = self.range
        if since is None and until is None:
            self._show_span(rows, 0, None)
            return
        # Finding the rows bisects by receive time, reading (and maybe
        # decompressing) rows all over the qube: in a thread.
        self.status.set_text(f"{self.qube}: finding the time range…")

        def work() -> None:
            try:
                first = rows.row_at_time(since) if since else 0
                end = rows.row_at_time(until + b"~") if until else None
            except LogvmError as err:
                GLib.idle_add(self.status.set_text, f"Time range: {err}")
                return
            GLib.idle_add(self._show_span, rows, first, end)

        threading.Thread(target=work, daemon=True).start()

    def _show_span(self, rows: QubeRows, first: int, end: int | None) -> bool:
        if rows is not self.rows:  # another qube was chosen meanwhile
            return False
        self.records.show_rows(rows, first, end)
        if self.builder.get_object("follow_toggle").get_active():
            self.records.scroll_to_end()
        self.status.set_text(f"{self.qube}: {self.records.shown} of {rows.count} records shown")
        return False

    def apply_range(self) -> None:
        """Read the time range entries (journalctl's time syntax, as ``logvm show``)."""
        get = self.builder.get_object
        try:
            since = stamp_of(get("since_entry").get_text())
            until = stamp_of(get("until_entry").get_text())
        except (LogvmError, ValueError) as err:
            self.status.set_text(f"Time range: {err}")
            return
        self.range = (since, until)
        label = (
            f"{local_time(since, precise=False) if since else 'start'} .. "
            f"{local_time(until, precise=False) if until else 'now'}"
        )
        get("range_button").set_label(label if since or until else "All time")
        get("range_popover").popdown()
        self.show_range()

    def clear_range(self) -> None:
        """All time again."""
        get = self.builder.get_object
        get("since_entry").set_text("")
        get("until_entry").set_text("")
        self.apply_range()

    def _show_detail(self, entry: Entry | None) -> None:
        self.detail.get_buffer().set_text(details(entry) if entry else "")  # plain text

    def copy_selection(self) -> None:
        """The selected rows as plain text on the clipboard (read in a thread: up
        to 100,000 rows; the clipboard is set on the main loop)."""
        rows, chosen = self.rows, self.records.selection()
        if rows is None or chosen is None:
            return
        first, end = chosen[0], min(chosen[1], chosen[0] + 100_000)
        self.status.set_text(f"Copying {end - first} records…")

        def work() -> None:
            try:
                text = "\n".join(as_text(e) for e in rows.rows(first, end))
            except (OSError, LogvmError) as err:
                GLib.idle_add(self.status.set_text, f"Copy: {err}")
                return
            GLib.idle_add(self._copied, text, end - first)

        threading.Thread(target=work, daemon=True).start()

    def _copied(self, text: str, count: int) -> bool:
        if text:
            Gtk.Clipboard.get(Gdk.SELECTION_CLIPBOARD).set_text(text, -1)
        self.status.set_text(f"Copied {count} records")
        return False

    # -- actions -------------------------------------------------------
    def _build_open_menu(self) -> dict[str, Gtk.MenuItem]:
        self.open_menu = Gtk.Menu()
        titles = {
            "selection": "Selected records",
            "range": "Records shown (time range)",
            "segment": "The selected record's segment",
            "qube": "The whole qube",
        }
        items = {}
        for scope in SCOPES:
            item = Gtk.MenuItem(label=titles[scope])
            item.connect("activate", lambda _i, sc=scope: self.open_in_dispvm(sc))
            self.open_menu.append(item)
            items[scope] = item
        self.open_menu.show_all()
        return items

    def _open_menu(self, button: Gtk.Button) -> None:
        self.open_menu.popup_at_widget(
            button, Gdk.Gravity.SOUTH_EAST, Gdk.Gravity.NORTH_EAST, None
        )

    def scope_rows(self, scope: str) -> tuple[int, int] | None:
        """The rows ``[first, end)`` an action on ``scope`` covers."""
        rows, view = self.rows, self.records
        chosen = view.selection()
        if rows is None:
            return None
        if scope == "selection":
            return chosen
        if scope == "range":
            return view.first_row, view.end_row
        if scope == "segment":
            if chosen is None:
                return None
            seg, _ = rows.locate(chosen[0])
            start = rows.segment_start(seg.files.seq)
            return start, start + seg.count
        return 0, rows.count

    def open_in_dispvm(self, scope: str) -> None:
        """Open rows read-only in a DispVM, as ``logvm open`` does (in a thread)."""
        rows, span = self.rows, self.scope_rows(scope)
        if rows is None or span is None or self.qube is None:
            self.status.set_text("Open in DispVM: select a qube (and records) first")
            return
        name = f"{self.qube}-{scope}"
        lines = list(stored_lines(rows, *span)) if scope == "selection" else None
        self.status.set_text(f"Opening {span[1] - span[0]} records in a disposable qube…")

        def work() -> None:
            try:
                open_in_dispvm(self.open_command, name, lines or stored_lines(rows, *span))
                message = f"Viewer closed ({span[1] - span[0]} records)"
            except LogvmError as err:
                message = f"Open in DispVM: {err}"
            GLib.idle_add(self.status.set_text, message)

        threading.Thread(target=work, daemon=True).start()

    def export_dialog(self) -> Gtk.FileChooserDialog | None:
        """Save the selection (or the records shown) to a file; optionally qvm-copy it."""
        span = self.scope_rows("selection") or self.scope_rows("range")
        if self.rows is None or span is None:
            return None
        dialog = Gtk.FileChooserDialog(
            title="Export records", transient_for=self.window, action=Gtk.FileChooserAction.SAVE
        )
        dialog.add_buttons("Cancel", Gtk.ResponseType.CANCEL, "Export", Gtk.ResponseType.OK)
        dialog.set_do_overwrite_confirmation(True)
        dialog.set_current_name(f"{self.qube}.log")
        send = Gtk.CheckButton(label="Then send it to another qube (qvm-copy)")
        dialog.set_extra_widget(send)

        def answered(_dialog: Gtk.Dialog, response: int) -> None:
            name = dialog.get_filename()
            if response == Gtk.ResponseType.OK and name:
                self.export_to(Path(name), span, send=send.get_active())
            dialog.destroy()

        dialog.connect("response", answered)
        dialog.set_modal(True)
        dialog.show_all()
        return dialog

    def export_to(self, path: Path, span: tuple[int, int], *, send: bool) -> None:
        """Write the rows to ``path`` (a new file), then qvm-copy it if asked: in a
        thread (a whole qube's rows take a while, and qvm-copy waits until the
        user has answered dom0's question), the window stays responsive."""
        rows = self.rows
        if rows is None:
            return
        count = span[1] - span[0]
        self.status.set_text(f"Exporting {count} records to {path}…")

        def work() -> None:
            try:
                path.unlink(missing_ok=True)  # the dialog confirmed an overwrite
                export(rows, *span, path)
            except (OSError, LogvmError) as err:
                GLib.idle_add(self.status.set_text, f"Export: {err}")
                return
            message = f"Exported {count} records to {path}"
            if send:
                GLib.idle_add(self.status.set_text, message + "; qvm-copy: dom0 asks where to…")
                code = qvm_copy(path, self.copy_command)
                message += "; qvm-copy " + ("done" if code == 0 else f"failed (exit {code})")
            GLib.idle_add(self.status.set_text, message)

        threading.Thread(target=work, daemon=True).start()

    def storage_dialog(self) -> Gtk.Dialog:
        """Usage per qube against its quota, as a bar chart.

        Opened before the late figures (usage, quota) are in, it shows the
        cheap ones and redraws when the late ones arrive (or on F5).
        """
        dialog = Gtk.Dialog(title="Storage", transient_for=self.window, modal=False)
        dialog.add_button("Close", Gtk.ResponseType.CLOSE)
        dialog.connect("response", lambda d, _r: d.destroy())
        scroll = Gtk.ScrolledWindow(min_content_height=300, min_content_width=700)
        chart = StorageChart(list(self.facts.values()))

        def update() -> None:
            chart.show_facts(list(self.facts.values()))

        self.qubes.on_figures.append(update)
        dialog.connect("destroy", lambda *_: self.qubes.on_figures.remove(update))
        scroll.add(chart)
        dialog.get_content_area().pack_start(scroll, True, True, 0)
        dialog.show_all()
        return dialog

    # -- search --------------------------------------------------------
    def search(self, *, forward: bool) -> None:
        """Find the next (previous) match from the selection, in a thread."""
        rows, get = self.rows, self.builder.get_object
        text = get("search_entry").get_text()
        if rows is None or not text or self.searching:
            return
        pattern = Pattern(text, get("regex_check").get_active(), get("case_check").get_active())
        try:
            pattern.compiled()
        except re.error as err:
            self.status.set_text(f"Search: not a valid regular expression: {err}")
            return
        chosen = self.records.selection()
        start = (
            chosen[0]
            if chosen
            else (self.records.first_row - 1 if forward else self.records.end_row)
        )
        bounds = (self.records.first_row, self.records.end_row)
        self.cancel = threading.Event()
        self.searching = True
        get("search_progress").set_fraction(0.0)
        get("search_progress").show()
        get("cancel_button").show()
        cancel = self.cancel

        def work() -> None:
            progress = lambda f: GLib.idle_add(self._progress, f)  # noqa: E731
            try:
                found = find(
                    rows, pattern, start, bounds, forward=forward, cancel=cancel, progress=progress
                )
            except (LogvmError, OSError, KeyError) as err:  # a segment went away (rotation)
                GLib.idle_add(self._found, None, cancel, f"Search stopped: {err}")
                return
            GLib.idle_add(self._found, found, cancel)

        threading.Thread(target=work, daemon=True).start()

    def _progress(self, fraction: float) -> bool:
        self.builder.get_object("search_progress").set_fraction(fraction)
        return False

    def _found(self, row: int | None, cancel: threading.Event, error: str = "") -> bool:
        get = self.builder.get_object
        self.searching = False
        get("search_progress").hide()
        get("cancel_button").hide()
        self.last_search = row
        if cancel.is_set() or error:  # Cancel pressed before the result showed: it wins
            self.status.set_text(error or "Search cancelled")
        elif row is None:
            self.status.set_text("No more matches")
        else:
            self.records.matches = {row}
            self.records.select(row)
            self.status.set_text(f"Match at record {row + 1}")
        return False

    # -- follow --------------------------------------------------------
    def _follow_toggled(self, toggle: Gtk.ToggleButton) -> None:
        if toggle.get_active() and not self._follow_source:
            self._follow_source = GLib.timeout_add(FOLLOW_MS, self._follow_tick)
            self.records.scroll_to_end()
        elif not toggle.get_active() and self._follow_source:
            GLib.source_remove(self._follow_source)
            self._follow_source = 0

    def _follow_tick(self) -> bool:
        rows = self.rows
        if rows is not None and self.range[1] is None:
            try:
                changed = rows.refresh()
            except LogvmError as err:
                self.status.set_text(f"Follow: {err}")
                return True
            if changed:
                self.records.grow(rows.count)
                self.status.set_text(f"{self.qube}: {rows.count} records (following)")
        return True

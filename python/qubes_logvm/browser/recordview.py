"""The record view: a virtual list drawn row by row (floor 4).

A ``Gtk.TreeView`` builds a node per row when given a model, which makes 10
million records slow to open; this view asks its :class:`.model.QubeRows`
only for the rows on screen. Rows deep in a compressed segment are
decompressed by a thread (:meth:`.model.QubeRows.prepare`) while the view
draws "reading…" rows, so scrolling never waits for zstd. The scroll position is a row number (the
scrollbar's adjustment), the selection a row range. Text goes to Pango with
``set_text`` only (never markup); row height follows the font, so the view
scales with the desktop's font size.
"""

from collections.abc import Callable

import gi

gi.require_version("Gtk", "3.0")
gi.require_version("Gdk", "3.0")
gi.require_version("PangoCairo", "1.0")
gi.require_foreign("cairo")  # a draw handler gets a cairo context: python3-gi-cairo
from gi.repository import Gdk, GLib, Gtk, Pango, PangoCairo  # noqa: E402

from ..core.errors import LogvmError  # noqa: E402
from ..store.timeline import Entry  # noqa: E402
from .model import QubeRows  # noqa: E402
from .text import columns  # noqa: E402

#: Column titles and widths in characters (the message takes the rest).
HEADERS = ("Received", "Source time", "Priority", "Unit[pid]", "Message")
WIDTHS = (23, 19, 8, 16)
#: Row colours by severity (journalctl's choices): red, yellow, bold-ish, grey.
COLOURS = {0: (0.75, 0.0, 0.0), 1: (0.75, 0.0, 0.0), 2: (0.75, 0.0, 0.0), 3: (0.8, 0.1, 0.1)}
COLOURS |= {4: (0.6, 0.45, 0.0), 7: (0.5, 0.5, 0.5)}
NOTE_COLOUR = (0.0, 0.45, 0.55)


class RecordView(Gtk.Grid):
    """Rows of one qube, drawn lazily, with a selection and a scrollbar."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: QubeRows | None = None
        self.first_row = 0  # the range shown: rows [first_row, end_row) of the qube
        self.end_row = 0
        self.selected: tuple[int, int] | None = None  # (anchor, cursor), rows of the qube
        self.matches: set[int] = set()
        self.on_select: Callable[[Entry | None], None] = lambda entry: None
        self.on_error: Callable[[str], None] = lambda message: None
        self.placeholders = 0  # draws that showed "reading…" rows (while a thread decompresses)
        self.drawn = 0  # draws that showed rows of a qube
        self._char = Pango.SCALE  # a digit's width (Pango units), measured when drawn
        self.area = Gtk.DrawingArea(hexpand=True, vexpand=True, can_focus=True)
        self.area.set_name("record-area")
        self.area.add_events(
            Gdk.EventMask.BUTTON_PRESS_MASK
            | Gdk.EventMask.SCROLL_MASK
            | Gdk.EventMask.KEY_PRESS_MASK
        )
        self.adjustment = Gtk.Adjustment(
            value=0, lower=0, upper=0, step_increment=1, page_increment=10
        )
        self.scrollbar = Gtk.Scrollbar(
            orientation=Gtk.Orientation.VERTICAL, adjustment=self.adjustment
        )
        self.attach(self.area, 0, 0, 1, 1)
        self.attach(self.scrollbar, 1, 0, 1, 1)
        self.area.connect("draw", self._draw)
        self.area.connect("button-press-event", self._click)
        self.area.connect("scroll-event", self._scroll)
        self.area.connect("key-press-event", self._key)
        self.area.connect("size-allocate", lambda *_: self._update_adjustment())
        self.adjustment.connect("value-changed", lambda *_: self.area.queue_draw())

    # -- what is shown -------------------------------------------------
    def show_rows(self, rows: QubeRows | None, first: int = 0, end: int | None = None) -> None:
        """Show rows ``[first, end)`` of a qube (end None: to the end, growing)."""
        self.rows = rows
        self.first_row = first
        self.end_row = end if end is not None else (rows.count if rows else 0)
        self.selected = None
        self.matches = set()
        self._update_adjustment()
        self.adjustment.set_value(0)
        self.area.queue_draw()
        self.on_select(None)

    @property
    def shown(self) -> int:
        """How many rows the view holds."""
        return max(0, self.end_row - self.first_row)

    def row_height(self) -> int:
        """Pixels per row: the font's line height."""
        layout = self.area.create_pango_layout("Xg")
        return max(1, int(layout.get_pixel_size()[1]) + 2)

    def visible_rows(self) -> int:
        """Rows that fit below the header."""
        height = self.area.get_allocated_height()
        return max(1, int(height) // self.row_height() - 1)

    def _update_adjustment(self) -> None:
        page = self.visible_rows()
        self.adjustment.configure(
            min(self.adjustment.get_value(), max(0, self.shown - page)),
            0,
            self.shown,
            1,
            page,
            page,
        )

    def grow(self, end: int) -> None:
        """More rows arrived (follow): extend, keep the scroll unless at the bottom."""
        at_bottom = self.adjustment.get_value() >= self.shown - self.visible_rows()
        self.end_row = end
        self._update_adjustment()
        if at_bottom:
            self.scroll_to_end()
        self.area.queue_draw()

    def scroll_to_end(self) -> None:
        """Show the last rows."""
        self.adjustment.set_value(max(0, self.shown - self.visible_rows()))

    def top(self) -> int:
        """The first row on screen (row of the qube)."""
        return self.first_row + int(self.adjustment.get_value())

    def select(self, row: int, *, extend: bool = False) -> None:
        """Select a row of the qube (``extend``: from the anchor); scroll it into view."""
        row = max(self.first_row, min(row, self.end_row - 1))
        anchor = self.selected[0] if extend and self.selected else row
        self.selected = (anchor, row)
        top, page = self.top(), self.visible_rows()
        if row < top:
            self.adjustment.set_value(row - self.first_row)
        elif row >= top + page:
            self.adjustment.set_value(row - self.first_row - page + 1)
        self.area.queue_draw()
        self._tell_selected()

    def _tell_selected(self) -> bool:
        """Hand the selected row to ``on_select`` (once it is read without waiting)."""
        row = self.selected[1] if self.selected else None
        rows = self.rows
        if row is None or rows is None:
            self.on_select(None)
        elif rows.ready(row, row + 1):
            try:
                entry = rows.rows(row, row + 1)
            except LogvmError as err:  # a segment went away or is damaged
                self.on_error(f"{err}; press F5 to read the store again")
                entry = []
            self.on_select(entry[0] if entry else None)
        else:
            self.on_select(None)
            rows.prepare(row, row + 1, lambda: GLib.idle_add(self._tell_selected))
        return False

    def _prepared(self) -> bool:
        self.area.queue_draw()
        return False

    def selection(self) -> tuple[int, int] | None:
        """The selected rows ``[first, last)``."""
        if self.selected is None:
            return None
        low, high = sorted(self.selected)
        return low, high + 1

    # -- drawing -------------------------------------------------------
    def _draw(self, widget: Gtk.Widget, cr: "object") -> bool:
        style = widget.get_style_context()
        width = widget.get_allocated_width()
        Gtk.render_background(style, cr, 0, 0, width, widget.get_allocated_height())
        height = self.row_height()
        layout = widget.create_pango_layout("")
        char = layout.get_context().get_metrics(None, None).get_approximate_digit_width()
        self._char = max(1, char)
        xs = [4]
        for chars in WIDTHS:
            xs.append(xs[-1] + (chars + 1) * char // Pango.SCALE)
        self._draw_row(cr, layout, xs, width, 0, HEADERS, (0.3, 0.3, 0.3), header=True)
        if self.rows is None:
            return True
        top = self.top()
        span = (top, min(top + self.visible_rows() + 1, self.end_row))
        if not self.rows.ready(*span):  # deep in a compressed segment: decompressed in a thread
            self.rows.prepare(*span, lambda: GLib.idle_add(self._prepared))
            self.placeholders += 1
            for index in range(span[1] - span[0]):
                cells = ("…", "", "", "", "reading…")
                self._draw_row(cr, layout, xs, width, (index + 1) * height, cells, (0.5, 0.5, 0.5))
            return True
        try:
            entries = self.rows.rows(*span)
            self.drawn += 1
        except LogvmError as err:  # a segment went away (rotation): say so, draw nothing
            self.on_error(f"{err}; press F5 to read the store again")
            return True
        for index, entry in enumerate(entries):
            y = (index + 1) * height
            row = top + index
            chosen = self.selection()
            if chosen and chosen[0] <= row < chosen[1]:
                cr.set_source_rgb(0.75, 0.85, 1.0)  # type: ignore[attr-defined]
                cr.rectangle(0, y, width, height)  # type: ignore[attr-defined]
                cr.fill()  # type: ignore[attr-defined]
            elif row in self.matches:
                cr.set_source_rgb(1.0, 0.95, 0.6)  # type: ignore[attr-defined]
                cr.rectangle(0, y, width, height)  # type: ignore[attr-defined]
                cr.fill()  # type: ignore[attr-defined]
            what = entry.what
            colour = (
                NOTE_COLOUR if what.is_note else COLOURS.get(what.severity or 6, (0.1, 0.1, 0.1))
            )
            self._draw_row(cr, layout, xs, width, y, columns(entry), colour)
        return True

    def _draw_row(
        self,
        cr: "object",
        layout: Pango.Layout,
        xs: list[int],
        width: int,
        y: int,
        cells: tuple[str, ...],
        colour: tuple[float, float, float],
        header: bool = False,
    ) -> None:
        cr.set_source_rgb(*colour)  # type: ignore[attr-defined]
        for index, text in enumerate(cells):
            x = xs[index]
            end = xs[index + 1] - 6 if index + 1 < len(xs) else width - 4
            # No more than fits (a monospace font): Pango shapes all it is given.
            fit = (end - x) * Pango.SCALE // self._char + 2
            layout.set_text(text[:fit], -1)  # plain text: never markup
            layout.set_width(max(1, end - x) * Pango.SCALE)
            layout.set_ellipsize(Pango.EllipsizeMode.END)
            layout.set_single_paragraph_mode(True)
            layout.set_attributes(_BOLD if header else None)
            cr.move_to(x, y + 1)  # type: ignore[attr-defined]
            PangoCairo.show_layout(cr, layout)

    # -- input ---------------------------------------------------------
    def _click(self, widget: Gtk.Widget, event: Gdk.EventButton) -> bool:
        widget.grab_focus()
        index = int(event.y // self.row_height()) - 1
        if index >= 0 and self.rows is not None:
            extend = bool(event.state & Gdk.ModifierType.SHIFT_MASK)
            self.select(self.top() + index, extend=extend)
        return True

    def _scroll(self, _widget: Gtk.Widget, event: Gdk.EventScroll) -> bool:
        step = 3.0
        if event.direction == Gdk.ScrollDirection.UP:
            delta = -step
        elif event.direction == Gdk.ScrollDirection.DOWN:
            delta = step
        else:
            delta = event.delta_y * step
        self.adjustment.set_value(self.adjustment.get_value() + delta)
        return True

    def _key(self, _widget: Gtk.Widget, event: Gdk.EventKey) -> bool:
        if self.rows is None or not self.shown:
            return False
        cursor = self.selected[1] if self.selected else self.top() - 1
        page = self.visible_rows()
        moves = {
            Gdk.KEY_Down: 1,
            Gdk.KEY_Up: -1,
            Gdk.KEY_Page_Down: page,
            Gdk.KEY_Page_Up: -page,
        }
        extend = bool(event.state & Gdk.ModifierType.SHIFT_MASK)
        if event.keyval in moves:
            self.select(cursor + moves[event.keyval], extend=extend)
        elif event.keyval == Gdk.KEY_Home:
            self.select(self.first_row, extend=extend)
        elif event.keyval == Gdk.KEY_End:
            self.select(self.end_row - 1, extend=extend)
        else:
            return False
        return True


def _bold() -> Pango.AttrList:
    attrs = Pango.AttrList()
    attrs.insert(Pango.attr_weight_new(Pango.Weight.BOLD))
    return attrs


_BOLD = _bold()

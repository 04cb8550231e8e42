"""What leaves the window: open in a DispVM, export, qvm-copy, storage chart (floor 4).

Opening reuses ``logvm open``'s path (:func:`qubes_logvm.store.viewcopy.open_in_dispvm`):
a decompressed, terminal-safe temporary copy opened with
``qvm-open-in-dvm --view-only``. The viewer call blocks until the DispVM
closes, so it runs in a thread. Exports are written the same terminal-safe
way; ``qvm-copy`` then sends the file to a qube dom0 asks the user for.
"""

import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import gi

gi.require_version("Gtk", "3.0")
gi.require_version("PangoCairo", "1.0")
from gi.repository import Gtk, Pango, PangoCairo  # noqa: E402

from ..core.sizes import human_size  # noqa: E402
from ..store.viewcopy import write_view_copy  # noqa: E402
from .model import QubeRows  # noqa: E402
from .qubes import QubeFacts  # noqa: E402

SCOPES = ("selection", "range", "segment", "qube")
COPY_COMMAND = ("qvm-copy", "--without-progress")
_BLOCK = 4096


def stored_lines(rows: QubeRows, first: int, end: int) -> Iterator[bytes]:
    """The stored lines of rows ``[first, end)``, read block by block."""
    for start in range(first, end, _BLOCK):
        for entry in rows.rows(start, min(end, start + _BLOCK)):
            yield entry.stored.data


def export(rows: QubeRows, first: int, end: int, path: Path) -> None:
    """Write rows to a new file, terminal-safe (as the DispVM copy)."""
    write_view_copy(path, stored_lines(rows, first, end))


def qvm_copy(path: Path, command: Sequence[str] = COPY_COMMAND) -> int:
    """Send a file to another qube (dom0 asks which); the exit status."""
    try:
        return subprocess.run([*command, str(path)], check=False).returncode
    except FileNotFoundError:
        return 127


class StorageChart(Gtk.DrawingArea):
    """Usage per qube against its quota, as horizontal bars (plain text labels)."""

    def __init__(self, facts: list[QubeFacts]) -> None:
        super().__init__()
        self.set_name("storage-chart")
        self.facts: list[QubeFacts] = []
        self.connect("draw", self._draw)
        self.show_facts(facts)

    def show_facts(self, facts: list[QubeFacts]) -> None:
        """Draw these figures, largest first (again when the late ones arrive)."""
        self.facts = sorted(facts, key=lambda f: -f.size)
        line = self.create_pango_layout("Xg").get_pixel_size()[1]
        self.set_size_request(640, (len(self.facts) + 1) * (line + 10) + 20)
        self.queue_draw()

    def _draw(self, widget: Gtk.Widget, cr: "object") -> bool:
        width = widget.get_allocated_width()
        layout = widget.create_pango_layout("")
        line = int(layout.get_pixel_size()[1]) or 16
        height = line + 10
        label_w, bar_x = 200, 210
        bar_w = max(50, width - bar_x - 260)
        for index, facts in enumerate(self.facts):
            y = 10 + index * height
            layout.set_text(facts.name, -1)  # plain text
            layout.set_width(label_w * Pango.SCALE)
            layout.set_ellipsize(Pango.EllipsizeMode.END)
            cr.set_source_rgb(0.1, 0.1, 0.1)  # type: ignore[attr-defined]
            cr.move_to(4, y)  # type: ignore[attr-defined]
            PangoCairo.show_layout(cr, layout)
            cr.set_source_rgb(0.9, 0.9, 0.9)  # type: ignore[attr-defined]
            cr.rectangle(bar_x, y, bar_w, line)  # type: ignore[attr-defined]
            cr.fill()  # type: ignore[attr-defined]
            use = min(1.0, facts.quota_use)
            red = use > 0.9
            cr.set_source_rgb(0.8 if red else 0.22, 0.2 if red else 0.45, 0.2 if red else 0.85)  # type: ignore[attr-defined]
            cr.rectangle(bar_x, y, bar_w * use, line)  # type: ignore[attr-defined]
            cr.fill()  # type: ignore[attr-defined]
            quota = human_size(facts.quota) if facts.quota else "?"
            text = f"{human_size(facts.size)} of {quota}, {facts.deletions} deleted"
            layout.set_width(-1)
            layout.set_text(text, -1)
            cr.set_source_rgb(0.1, 0.1, 0.1)  # type: ignore[attr-defined]
            cr.move_to(bar_x + bar_w + 8, y)  # type: ignore[attr-defined]
            PangoCairo.show_layout(cr, layout)
        return True

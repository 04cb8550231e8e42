"""Driving real GTK windows in tests: run the main loop, take screenshots."""

import shutil
import time
from collections.abc import Callable
from pathlib import Path

SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"


def pump(until: Callable[[], bool] | None = None, timeout: float = 10.0) -> bool:
    """Run the GTK main loop until ``until()`` holds (or once through, if None)."""
    from gi.repository import Gtk

    deadline = time.monotonic() + timeout
    while True:
        while Gtk.events_pending():
            Gtk.main_iteration_do(False)
        if until is None or until():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def screenshot(window: object, path: Path) -> Path:
    """Save the window as a PNG (also copied to build/screenshots/)."""
    from gi.repository import Gdk

    end = time.monotonic() + 0.5
    pump(lambda: time.monotonic() > end)  # let the frame clock paint
    gdk = window.get_window()  # type: ignore[attr-defined]
    width, height = gdk.get_width(), gdk.get_height()
    pixbuf = Gdk.pixbuf_get_from_window(gdk, 0, 0, width, height)
    pixbuf.savev(str(path), "png", [], [])
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)
    return path

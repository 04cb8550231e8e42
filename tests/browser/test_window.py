"""logvm-browser driven through its widgets on a store the real collector wrote."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.collected import Collected, build_collected
from support.gtkui import pump, screenshot


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Collected:
    return build_collected(tmp_path_factory.mktemp("collected"))


@pytest.fixture
def browser(display: str, collected: Collected) -> Iterator[object]:
    from qubes_logvm.browser.window import BrowserWindow, load_css
    from qubes_logvm.store.layout import StoreLayout

    load_css()
    win = BrowserWindow(None, StoreLayout(collected.root), ())
    win.setup()
    win.window.present()
    pump(lambda: win.window.get_window() is not None and win.window.get_window().is_viewable())
    yield win
    win.window.destroy()
    pump()


def qube_names(win: object) -> list[str]:
    names: list[str] = []
    win.filter.foreach(lambda m, p, it: names.append(m.get_value(it, 0)) and False)  # type: ignore[attr-defined]
    return names


def click_row(win: object, index: int) -> None:
    """A real button press on the record area, ``index`` rows below the header."""
    from gi.repository import Gdk

    area = win.records.area  # type: ignore[attr-defined]
    event = Gdk.Event.new(Gdk.EventType.BUTTON_PRESS)
    event.button.window = area.get_window()
    event.button.button = 1
    event.button.x = 40.0
    event.button.y = (index + 1.5) * win.records.row_height()  # type: ignore[attr-defined]
    event.button.device = Gdk.Display.get_default().get_default_seat().get_pointer()
    area.event(event)
    pump()


def test_qube_list_and_records(browser: object, tmp_path: Path) -> None:
    win = browser
    assert sorted(n for n in qube_names(win) if n != "DispVM sessions") == [
        "disp7",
        "personal",
        "work",
    ]
    win.choose_qube("work")  # type: ignore[attr-defined]
    pump()
    view = win.records  # type: ignore[attr-defined]
    assert view.shown == win.rows.count > 10  # type: ignore[attr-defined]
    click_row(win, 2)
    text = win.detail.get_buffer().get_property("text")  # type: ignore[attr-defined]
    assert "qube:          work" in text and "receive time:" in text
    screenshot(win.window, tmp_path / "browser-records.png")  # type: ignore[attr-defined]


def test_filter_box(browser: object) -> None:
    entry = browser.builder.get_object("qube_filter_entry")  # type: ignore[attr-defined]
    entry.set_text("pers")
    pump(lambda: "work" not in qube_names(browser))
    assert [n for n in qube_names(browser) if n != "DispVM sessions"] == ["personal"]

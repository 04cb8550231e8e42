"""logvm-browser driven through its widgets on a store the real collector wrote."""

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from support.collected import Collected, build_collected
from support.gtkui import pump, screenshot

FAKE_OPEN = Path(__file__).resolve().parents[1] / "support" / "fake-qvm-open-in-dvm"


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
    win.filter.foreach(lambda m, p, it: names.append(m.get_value(it, 0)) and False)  # type: ignore[attr-defined, func-returns-value]
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
    # Class, quota, drops, deletions and verification come after the first draw.
    assert pump(lambda: win.figures_complete)  # type: ignore[attr-defined]
    rows: list[list[str]] = []
    win.store.foreach(lambda m, p, it: rows.append(list(m[it])[:10]) and False)  # type: ignore[attr-defined, func-returns-value]
    for row in rows:
        assert "…" not in row, row
    assert {r[0]: r[1] for r in rows}["disp7"] == "dispvm"
    click_row(win, 2)
    text = win.detail.get_buffer().get_property("text")  # type: ignore[attr-defined]
    assert "qube:          work" in text and "receive time:" in text
    shot = screenshot(win.window, tmp_path / "browser-records.png")  # type: ignore[attr-defined]
    width = win.window.get_window().get_width()  # type: ignore[attr-defined]
    assert width <= 1280  # fits 1280x800
    assert_list_fits(win)  # ... and so does the qube list
    details = win.qubes.details.get_text()  # type: ignore[attr-defined]
    assert "Qube: work" in details and "Deleted: 0 segments" in details
    # The rows are really drawn, errors in red and warnings in yellow (priority colours).
    colours = area_colours(shot, win.records.area)  # type: ignore[attr-defined]
    assert any(r > 150 and g < 60 and b < 60 for r, g, b in colours)  # err, crit
    assert any(r > 120 and 70 < g < 140 and b < 40 for r, g, b in colours)  # warning


def assert_list_fits(win: object) -> None:
    """No column of the qube list is beyond the pane's edge (no sideways scrolling)."""
    pump()
    across = win.qubes.view.get_parent().get_hadjustment()  # type: ignore[attr-defined]
    assert across.get_upper() <= across.get_page_size() + 1, across.get_upper()


def area_colours(shot: Path, widget: object) -> set[tuple[int, int, int]]:
    """The colours of the screenshot's pixels inside ``widget``."""
    from gi.repository import GdkPixbuf

    pixbuf = GdkPixbuf.Pixbuf.new_from_file(str(shot))
    x0, y0 = widget.translate_coordinates(widget.get_toplevel(), 0, 0)  # type: ignore[attr-defined]
    alloc = widget.get_allocation()  # type: ignore[attr-defined]
    pixels, stride, step = pixbuf.get_pixels(), pixbuf.get_rowstride(), pixbuf.get_n_channels()
    found = set()
    for y in range(y0, min(pixbuf.get_height(), y0 + alloc.height), 2):
        for x in range(x0, min(pixbuf.get_width(), x0 + alloc.width), 2):
            at = y * stride + x * step
            found.add((pixels[at], pixels[at + 1], pixels[at + 2]))
    return found


def test_filter_box(browser: object) -> None:
    entry = browser.builder.get_object("qube_filter_entry")  # type: ignore[attr-defined]
    entry.set_text("pers")
    pump(lambda: "work" not in qube_names(browser))
    assert [n for n in qube_names(browser) if n != "DispVM sessions"] == ["personal"]


def test_time_range_picker(browser: object, collected: Collected) -> None:
    from qubes_logvm.core.records import parse_timestamp

    win = browser
    win.choose_qube("work")  # type: ignore[attr-defined]
    pump()
    rows = win.rows  # type: ignore[attr-defined]
    everything = win.records.shown  # type: ignore[attr-defined]
    middle = rows.stamp_at(everything // 2)
    since = datetime.fromtimestamp(parse_timestamp(middle)).strftime("%Y-%m-%d %H:%M:%S.%f")
    get = win.builder.get_object  # type: ignore[attr-defined]
    get("range_button").clicked()  # Ctrl+L does the same
    get("since_entry").set_text(since)
    get("range_apply").clicked()
    assert pump(lambda: win.records.first_row > 0)  # type: ignore[attr-defined]
    shown = rows.rows(win.records.first_row, win.records.end_row)  # type: ignore[attr-defined]
    assert 0 < len(shown) < everything
    assert all(e.when >= middle for e in shown if e.when)
    assert rows.stamp_at(win.records.first_row - 1) < middle  # type: ignore[attr-defined]
    get("range_clear").clicked()
    pump()
    assert win.records.shown == everything  # type: ignore[attr-defined]


def test_search_next_previous_and_regex(browser: object, tmp_path: Path) -> None:
    win = browser
    get = win.builder.get_object  # type: ignore[attr-defined]
    win.choose_qube("work")  # type: ignore[attr-defined]
    pump()
    entry = get("search_entry")
    entry.set_text("WORK ERROR")  # plain, any case
    get("next_button").clicked()
    assert pump(lambda: "Match at" in win.status.get_text())  # type: ignore[attr-defined]
    first = win.records.selection()[0]  # type: ignore[attr-defined]
    assert "work error 0" in win.detail.get_buffer().get_property("text")  # type: ignore[attr-defined]
    get("next_button").clicked()
    assert pump(lambda: win.records.selection()[0] > first)  # type: ignore[attr-defined]
    assert "work error 1" in win.detail.get_buffer().get_property("text")  # type: ignore[attr-defined]
    screenshot(win.window, tmp_path / "browser-search.png")  # type: ignore[attr-defined]
    assert win.window.get_window().get_width() <= 1280  # type: ignore[attr-defined]
    get("prev_button").clicked()
    assert pump(lambda: win.records.selection()[0] == first)  # type: ignore[attr-defined]
    get("case_check").set_active(True)
    get("next_button").clicked()
    assert pump(lambda: "No more matches" in win.status.get_text())  # type: ignore[attr-defined]
    get("case_check").set_active(False)
    get("regex_check").set_active(True)
    entry.set_text(r"\x1b\[2J")  # on the unescaped text the qube sent, as logvm show -g
    get("next_button").clicked()
    assert pump(lambda: "Match at" in win.status.get_text())  # type: ignore[attr-defined]
    assert "\\x1b[2J" in win.detail.get_buffer().get_property("text")  # type: ignore[attr-defined]


def test_open_in_dispvm_hands_a_safe_copy(
    display: str, collected: Collected, tmp_path: Path
) -> None:
    from qubes_logvm.browser.window import BrowserWindow
    from qubes_logvm.store.layout import StoreLayout

    record = tmp_path / "calls"
    os.environ["FAKE_OPEN_RECORD"] = str(record)
    win = BrowserWindow(None, StoreLayout(collected.root), (), (str(FAKE_OPEN), "--view-only"))
    win.setup()
    win.window.present()
    try:
        win.choose_qube("work")
        pump()
        click_row(win, 1)
        # The viewer stays open in the DispVM a while: the window answers meanwhile.
        closed = tmp_path / "closed"
        os.environ["FAKE_OPEN_HOLD"] = str(closed)
        win.open_items["qube"].activate()  # the Open in DispVM menu
        assert pump(lambda: bool(list(record.glob("call-*.json"))))
        assert "Opening" in win.status.get_text(), win.status.get_text()
        win.choose_qube("personal")
        assert pump(lambda: win.qube == "personal")
        [call] = [json.loads(p.read_text()) for p in record.glob("call-*.json")]
        assert Path(call["argv"][1]).exists()  # the copy stays while the viewer is open
        closed.touch()
        assert pump(lambda: "Viewer closed" in win.status.get_text()), win.status.get_text()
        win.choose_qube("work")
        pump()
        assert call["argv"][0] == "--view-only" and call["name"] == "work-qube.log"
        assert call["mode"] == 0o600 and call["dir_mode"] == 0o700
        content = call["content"].encode("latin-1")
        assert b"\x1b" not in content and b"\\x1b[2J" in content
        assert content.count(b"\n") == win.rows.count  # type: ignore[union-attr]
        assert not Path(call["argv"][1]).exists()  # removed when the viewer returned
        click_row(win, 1)
        win.open_items["selection"].activate()
        assert pump(lambda: len(list(record.glob("call-*.json"))) == 2)
    finally:
        win.window.destroy()
        del os.environ["FAKE_OPEN_RECORD"]
        os.environ.pop("FAKE_OPEN_HOLD", None)


def test_open_stand_in_refuses_what_the_real_tool_refuses(tmp_path: Path) -> None:
    env = {**os.environ, "FAKE_OPEN_RECORD": str(tmp_path)}
    run = [str(FAKE_OPEN)]
    assert subprocess.run([*run, "--dispvm=x", "f"], env=env, check=False).returncode == 2
    assert subprocess.run([*run, "--view-only"], env=env, check=False).returncode == 1


def test_storage_chart(browser: object, tmp_path: Path) -> None:
    win = browser
    win.refresh()  # type: ignore[attr-defined]  # the late figures are asked for again
    assert not win.figures_complete  # type: ignore[attr-defined]
    win.builder.get_object("storage_button").clicked()  # type: ignore[attr-defined]
    [dialog] = [w for w in win.window.list_toplevels() if w.get_title() == "Storage"]  # type: ignore[attr-defined]
    chart = dialog.get_content_area().get_children()[0].get_child().get_child()
    assert all(f.quota == 0 for f in chart.facts)  # opened before the quotas came: "?"
    # The chart redraws with the late figures (usage, quota) when they arrive.
    assert pump(lambda: win.figures_complete)  # type: ignore[attr-defined]
    pump(lambda: dialog.get_window() is not None and dialog.get_window().is_viewable())
    facts = win.facts  # type: ignore[attr-defined]
    assert [(f.name, f.size, f.quota) for f in chart.facts] == sorted(
        ((n, f.size, f.quota) for n, f in facts.items()), key=lambda t: -t[1]
    )
    assert all(f.quota > 0 for f in chart.facts)
    screenshot(dialog, tmp_path / "browser-storage.png")
    dialog.destroy()
    pump()
    assert win.qubes.on_figures == []  # type: ignore[attr-defined]  # a closed chart is not told
    win.refresh()  # type: ignore[attr-defined]
    assert pump(lambda: win.figures_complete)  # type: ignore[attr-defined]


def test_verified_column_shows_the_last_logvm_verify(
    display: str, collected: Collected, tmp_path: Path
) -> None:
    import io

    from qubes_logvm.browser.window import BrowserWindow
    from qubes_logvm.cli import main
    from qubes_logvm.store.layout import StoreLayout

    key = tmp_path / "vk"
    key.write_text(collected.key + "\n")
    out = io.BytesIO()
    args = ["verify", "--store", str(collected.root), "--key", str(key), "work"]
    assert main(args, stdout=out, stderr=io.StringIO(), stdin=io.StringIO()) == 0
    win = BrowserWindow(None, StoreLayout(collected.root), ())
    win.setup()
    win.window.present()
    try:
        # The cheap figures first; the verification (with class and quota) after the first draw.
        cells: dict[str, str] = {}
        win.store.foreach(lambda m, p, it: cells.update({m.get_value(it, 0): m.get_value(it, 9)}))
        assert cells["work"] == "…"
        assert pump(lambda: win.figures_complete)
        win.store.foreach(lambda m, p, it: cells.update({m.get_value(it, 0): m.get_value(it, 9)}))
        assert cells["work"].startswith("ok ")  # verified just now, with the date
        pump(lambda: win.window.get_window() is not None and win.window.get_window().is_viewable())
        assert_list_fits(win)  # the date is cut short in the list (whole below it)
        assert cells["personal"] == "unknown"  # not in that run
    finally:
        win.window.destroy()


FAKE_COPY = Path(__file__).resolve().parents[1] / "support" / "fake-qvm-copy"


def press(win: object, accel: str) -> bool:
    """A shortcut through the window's accelerators, as a key press reaches them."""
    from gi.repository import Gtk

    key, mods = Gtk.accelerator_parse(accel)
    handled = Gtk.accel_groups_activate(win.window, key, mods)  # type: ignore[attr-defined]
    pump()
    return bool(handled)


def test_shortcuts(browser: object) -> None:
    win = browser
    get = win.builder.get_object  # type: ignore[attr-defined]
    win.choose_qube("work")  # type: ignore[attr-defined]
    pump()
    assert press(win, "<Control>f")
    assert get("search_entry").has_focus()
    assert press(win, "<Control>l")
    assert pump(lambda: get("range_popover").get_visible())
    get("range_popover").popdown()
    assert press(win, "F5")
    assert win.qube == "work" and win.records.shown > 0  # type: ignore[attr-defined]
    assert press(win, "<Control>o")  # nothing selected: the records shown
    status = win.status  # type: ignore[attr-defined]
    assert pump(lambda: "disposable qube" in status.get_text() or "DispVM" in status.get_text())


def test_copy_and_export_with_qvm_copy(display: str, collected: Collected, tmp_path: Path) -> None:
    from gi.repository import Gdk, Gtk

    from qubes_logvm.browser.window import BrowserWindow
    from qubes_logvm.store.layout import StoreLayout

    os.environ["FAKE_COPY_RECORD"] = str(tmp_path / "copies")
    win = BrowserWindow(
        None, StoreLayout(collected.root), (), copy_command=(str(FAKE_COPY), "--without-progress")
    )
    win.setup()
    win.window.present()
    try:
        win.choose_qube("work")
        pump()
        click_row(win, 4)  # an error record
        win.builder.get_object("copy_button").clicked()
        assert pump(lambda: "Copied 1 records" in win.status.get_text()), win.status.get_text()
        pasted = Gtk.Clipboard.get(Gdk.SELECTION_CLIPBOARD).wait_for_text()
        assert pasted is not None and "work error 0" in pasted and "\n" not in pasted

        def export(name: str) -> None:
            win.builder.get_object("export_button").clicked()
            pump()
            [dialog] = [
                w for w in Gtk.Window.list_toplevels() if w.get_title() == "Export records"
            ]
            dialog.set_current_folder(str(tmp_path))
            dialog.set_current_name(name)
            dialog.get_extra_widget().set_active(True)  # then qvm-copy it
            pump()
            dialog.response(Gtk.ResponseType.OK)

        # qvm-copy waits while dom0 asks the user where to: the window does not.
        answer = tmp_path / "answer"
        os.environ["FAKE_COPY_HOLD"] = str(answer)
        export("exported.log")
        assert pump(lambda: "dom0 asks" in win.status.get_text()), win.status.get_text()
        win.choose_qube("personal")  # the window still answers meanwhile
        assert pump(lambda: win.qube == "personal")
        answer.write_text("allow")
        assert pump(lambda: "qvm-copy done" in win.status.get_text()), win.status.get_text()
        exported = (tmp_path / "exported.log").read_bytes()
        assert b"work error 0" in exported and exported.count(b"\n") == 1
        [call] = [json.loads(p.read_text()) for p in (tmp_path / "copies").glob("copy-*.json")]
        assert call["argv"] == ["--without-progress", str(tmp_path / "exported.log")]
        assert call["files"][str(tmp_path / "exported.log")].encode("latin-1") == exported
        # Denied by dom0 (qrexec's 126): said so; the file stays exported.
        answer.write_text("deny")
        win.choose_qube("work")
        pump()
        click_row(win, 4)
        export("again.log")
        assert pump(lambda: "failed (exit 126)" in win.status.get_text()), win.status.get_text()
        assert (tmp_path / "again.log").read_bytes() == exported
    finally:
        win.window.destroy()
        del os.environ["FAKE_COPY_RECORD"]
        os.environ.pop("FAKE_COPY_HOLD", None)


def test_search_can_be_cancelled(browser: object) -> None:
    win = browser
    get = win.builder.get_object  # type: ignore[attr-defined]
    win.choose_qube("work")  # type: ignore[attr-defined]
    pump()
    get("search_entry").set_text("work error")
    get("next_button").clicked()
    assert get("search_progress").get_visible() and get("cancel_button").get_visible()
    get("cancel_button").clicked()  # before the result is shown
    assert pump(lambda: "Search cancelled" in win.status.get_text())  # type: ignore[attr-defined]
    assert win.records.selection() is None  # type: ignore[attr-defined]
    assert not get("search_progress").get_visible() and not get("cancel_button").get_visible()
    get("next_button").clicked()  # a new search runs again
    assert pump(lambda: "Match at" in win.status.get_text())  # type: ignore[attr-defined]


def test_search_reports_a_segment_gone_meanwhile(display: str, tmp_path: Path) -> None:
    import shutil

    from qubes_logvm.browser.window import BrowserWindow

    (tmp_path / "own").mkdir()
    collected = build_collected(tmp_path / "own")  # this test removes a segment
    win = BrowserWindow(None, collected.layout, ())
    win.setup()
    win.window.present()
    try:
        win.choose_qube("work")
        pump()
        gone = next(s for s in collected.layout.segments("work") if s.compressed)
        assert gone.log is not None
        shutil.move(gone.log, tmp_path / "moved")  # as rotation's deletion would
        win.builder.get_object("search_entry").set_text("work error")
        win.builder.get_object("next_button").clicked()
        assert pump(lambda: "Search stopped" in win.status.get_text()), win.status.get_text()
        assert not win.builder.get_object("search_progress").get_visible()
        assert not win.searching  # the next search can run
        # The open segment goes too; its rows cannot be drawn (the compressed
        # one's still can: the view holds it open).
        newest = collected.layout.segments("work")[-1].log
        assert newest is not None and not newest.name.endswith(".zst")
        shutil.move(newest, tmp_path / "moved-newest")
        win.records.scroll_to_end()
        win.records.area.queue_draw()
        assert pump(lambda: "press F5" in win.status.get_text()), win.status.get_text()
    finally:
        win.window.destroy()

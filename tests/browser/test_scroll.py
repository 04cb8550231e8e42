"""Scrolling deep into a compressed segment never waits for zstd on the main loop."""

from pathlib import Path

import pytest

from qubes_logvm.core.records import line_record
from qubes_logvm.store.compress import compress_segment
from qubes_logvm.store.keystate import setup_keys
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.writer import Store
from support.gtkui import pump

BATCH = 4096


def stamp_of_batch(batch: int) -> bytes:
    """Receive times rise by a second a batch."""
    return b"2026-11-28T10:%02d:%02d.000000Z" % divmod(batch, 60)


def big_store(root: Path, batches: int) -> StoreLayout:
    """One qube: a compressed segment of ``batches`` sealed batches, then a plain one."""
    layout = StoreLayout(root)
    setup_keys(layout, epoch_seconds=3600)
    store = Store(root)
    chain = store.chain("work")
    try:
        chain.open_segment(store.keys, session="s1")
        for batch in range(batches):
            first = batch * BATCH
            stamp = stamp_of_batch(batch)
            data = b"".join(
                line_record(stamp, b"filler record %08d %s" % (first + i, b"x" * 60))
                for i in range(BATCH)
            )
            chain.append(data, BATCH)
            chain.seal(store.keys)
        chain.close(store.keys)
        chain.open_segment(store.keys, session="s2")
        chain.append(line_record(stamp_of_batch(batches), b"the plain segment"), 1)
        chain.close(store.keys)
    finally:
        store.close()
    compress_segment(layout, layout.segments("work")[0])
    return layout


@pytest.mark.timeout(120)
def test_deep_rows_of_a_compressed_segment_are_read_off_the_main_loop(
    display: str, tmp_path: Path
) -> None:
    from gi.repository import GLib

    from qubes_logvm.browser.window import BrowserWindow

    layout = big_store(tmp_path / "store", batches=80)  # ~33 MiB of plain text
    assert layout.segments("work")[0].compressed
    win = BrowserWindow(None, layout, ())
    win.setup()
    win.window.present()
    try:
        win.choose_qube("work")
        view, rows = win.records, win.rows
        assert rows is not None
        pump(lambda: view.area.get_window() is not None and view.area.get_window().is_viewable())
        ticks: list[bool] = []  # the main loop's own timer: was a thread decompressing?

        def tick() -> bool:
            ticks.append(rows._preparing)
            return True

        source = GLib.timeout_add(2, tick)
        target = rows.count - 1000  # near the end of the compressed segment
        view.adjustment.set_value(target - view.first_row)
        top = view.top()
        assert pump(lambda: view.placeholders > 0)  # the draw handed the rows to a thread
        assert pump(lambda: rows.ready(top, top + view.visible_rows()) and not rows._preparing)
        pump()
        GLib.source_remove(source)
        assert any(ticks)  # the main loop ran while the segment was decompressed
        view.select(top)  # the detail pane shows the row now read (row 0: segment-start)
        detail = win.detail.get_buffer()
        wanted = "filler record %08d" % (top - 1)
        assert pump(lambda: wanted in detail.get_property("text"))
    finally:
        win.window.destroy()
        pump()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", ["cut", "empty", "garbage"])
def test_prepare_ends_on_a_damaged_segment(tmp_path: Path, damage: str) -> None:
    import threading

    from qubes_logvm.browser.model import QubeRows
    from qubes_logvm.core.errors import StoreError

    layout = big_store(tmp_path / "store", batches=8)
    log = layout.segments("work")[0].log
    assert log is not None and log.name.endswith(".zst")
    data = log.read_bytes()
    half = len(data) // 2
    damaged = {"cut": data[:half], "empty": b"", "garbage": data[:half] + b"\xff" * half}
    log.write_bytes(damaged[damage])
    rows = QubeRows(layout, "work")
    deep = rows.count - 100
    done = threading.Event()
    rows.prepare(deep, deep + 10, done.set)
    assert done.wait(30)
    assert rows.ready(deep, deep + 10)  # no endless asking again
    try:
        got = rows.rows(deep, deep + 10)
    except StoreError:  # damaged zstd data, said so
        got = []
    assert len(got) < 10  # the rows are not there (logvm verify says why)


@pytest.mark.timeout(120)
def test_a_time_range_is_found_off_the_main_loop(display: str, tmp_path: Path) -> None:
    from datetime import datetime

    from qubes_logvm.browser.window import BrowserWindow
    from qubes_logvm.core.records import parse_timestamp

    layout = big_store(tmp_path / "store", batches=80)
    win = BrowserWindow(None, layout, ())
    win.setup()
    win.window.present()
    try:
        win.choose_qube("work")
        pump()
        since = stamp_of_batch(70)  # deep in the compressed segment
        local = datetime.fromtimestamp(parse_timestamp(since)).strftime("%Y-%m-%d %H:%M:%S")
        get = win.builder.get_object
        get("since_entry").set_text(local)
        get("range_apply").clicked()
        assert "finding the time range" in win.status.get_text()  # the click returned at once
        assert pump(lambda: win.records.first_row > 0, 60)
        rows = win.rows
        assert rows is not None
        assert rows.stamp_at(win.records.first_row) == since
        assert rows.stamp_at(win.records.first_row - 1) < since
    finally:
        win.window.destroy()
        pump()

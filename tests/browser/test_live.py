"""logvm-browser on a running collector: follow mode, and hostile text shown inert."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from collector.helpers import Collector, connect, make_store, wait_for

from support.gtkui import pump, screenshot

HOSTILE = [
    b'<span foreground="red" size="xx-large">big red</span>',
    b'<a href="https://evil.example/">click me</a> &amp; <b>bold</b>',
    b"bidi \xe2\x80\xaeevil\xe2\x80\xac and zero\xe2\x80\x8bwidth",
    b"\x1b]8;;https://evil.example/\x07link\x1b]8;;\x07 \x1b[2J",
]


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    running = Collector(tmp_path, {"max_line_bytes": 1 << 20})
    running.vkey = make_store(running.store)
    running.start()
    yield running
    running.kill()


def open_window(display: str, store: Path) -> object:
    from qubes_logvm.browser.window import BrowserWindow
    from qubes_logvm.store.layout import StoreLayout

    win = BrowserWindow(None, StoreLayout(store), ())
    win.setup()
    win.window.present()
    pump(lambda: win.window.get_window() is not None)
    return win


def test_follow_shows_new_records_and_keeps_the_scroll(
    display: str, collector: Collector, tmp_path: Path
) -> None:
    sock = connect(collector.socket, "work")
    sock.sendall(b"".join(b"early line %d\n" % i for i in range(200)))
    layout_dir = collector.store / "qubes" / "work"
    assert wait_for(lambda: layout_dir.is_dir())
    win = open_window(display, collector.store)
    try:
        assert pump(lambda: (win.refresh() or True) and "work" in win.facts, 20)  # type: ignore[attr-defined]
        win.choose_qube("work")  # type: ignore[attr-defined]
        assert pump(lambda: win.rows.refresh() or win.rows.count >= 201, 20)  # type: ignore[attr-defined]
        win.show_range()  # type: ignore[attr-defined]
        view = win.records  # type: ignore[attr-defined]
        win.builder.get_object("follow_toggle").clicked()  # type: ignore[attr-defined]
        pump()
        at_end = view.adjustment.get_value()
        assert at_end > 0  # follow starts at the bottom
        before = view.shown
        sock.sendall(b"fresh record while following\n")
        assert pump(lambda: view.shown > before, 20)
        assert view.adjustment.get_value() > at_end  # at the bottom: it moves along
        last = view.rows.rows(view.end_row - 1, view.end_row)[0]
        assert last.what.message == b"fresh record while following"
        view.adjustment.set_value(10)  # the user scrolled up: stay there
        grown = view.shown
        sock.sendall(b"another one\n")
        assert pump(lambda: view.shown > grown, 20)
        assert view.adjustment.get_value() == 10
    finally:
        sock.close()
        win.window.destroy()  # type: ignore[attr-defined]


def test_hostile_text_is_shown_literally(
    display: str, collector: Collector, tmp_path: Path
) -> None:
    sock = connect(collector.socket, "evil")
    sock.sendall(b"\n".join(HOSTILE) + b"\n" + b"L" * (1 << 20) + b"\n")
    assert wait_for(lambda: (collector.store / "qubes" / "evil").is_dir())
    time.sleep(0.5)
    win = open_window(display, collector.store)
    try:
        win.choose_qube("evil")  # type: ignore[attr-defined]
        pump()
        view = win.records  # type: ignore[attr-defined]
        texts = []
        for row in range(view.first_row, view.end_row):
            view.select(row)
            pump()
            texts.append(win.detail.get_buffer().get_property("text"))  # type: ignore[attr-defined]
        joined = "\n".join(texts)
        assert '<span foreground="red" size="xx-large">big red</span>' in joined
        assert '<a href="https://evil.example/">click me</a> &amp; <b>bold</b>' in joined
        assert "bidi \\xe2\\x80\\xaeevil\\xe2\\x80\\xac and zero\\xe2\\x80\\x8bwidth" in joined
        assert "\\x1b]8;;https://evil.example/\\x07link" in joined
        assert not any(c in joined for c in "\x1b\u202e\u200b\x07")
        long = max(texts, key=len)
        assert "more bytes]" in long and len(long) < 70_000  # 1 MiB line capped
        view.select(view.first_row + 1)
        screenshot(win.window, tmp_path / "browser-hostile.png")  # type: ignore[attr-defined]
    finally:
        sock.close()
        win.window.destroy()  # type: ignore[attr-defined]

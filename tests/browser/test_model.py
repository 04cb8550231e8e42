"""The lazy rows over plain and compressed segments equal what the shared reader reads."""

import pytest

from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.reader import iter_segment
from support.collected import Collected, build_collected


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Collected:
    return build_collected(tmp_path_factory.mktemp("collected"))


def test_rows_in_any_order_match_the_reader(collected: Collected) -> None:
    from qubes_logvm.browser.model import QubeRows

    layout = StoreLayout(collected.root)
    segments = [s for s in layout.segments("work") if s.log is not None]
    assert any(s.compressed for s in segments)  # the first session was compressed
    expected = [line.data for s in segments for line in iter_segment(s)]
    rows = QubeRows(layout, "work")
    assert rows.count == len(expected)
    order = [*range(len(expected) - 1, -1, -1), 0, len(expected) // 2, 1]
    assert [rows.rows(r, r + 1)[0].stored.data for r in order] == [expected[r] for r in order]
    assert [e.stored.data for e in rows.rows(0, rows.count)] == expected
    blocks = [
        line
        for _seg, _row, piece in rows.blocks(0, rows.count)
        for line in piece.data.split(b"\n")[:-1]
    ]
    assert blocks == expected


def test_blocks_start_where_asked(collected: Collected) -> None:
    from qubes_logvm.browser.model import QubeRows

    rows = QubeRows(StoreLayout(collected.root), "work")
    for first in range(rows.count):
        seg, row, piece = next(rows.blocks(first, rows.count))
        assert row <= first  # the block holds the first row asked for

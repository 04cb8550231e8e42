"""The qube totals the browser opens on equal logvm list's summary of every segment."""

from pathlib import Path

import pytest

from qubes_logvm.store.summary import qube_summary, qube_totals, segment_info
from support.collected import build_collected


@pytest.mark.timeout(120)
def test_totals_read_at_the_ends_equal_the_summary_of_every_segment(tmp_path: Path) -> None:
    collected = build_collected(tmp_path)
    layout = collected.layout
    assert any(s.compressed for q in layout.qubes() for s in layout.segments(q))
    for qube in layout.qubes():
        segments = layout.segments(qube)
        want = qube_summary(qube, [segment_info(s) for s in segments])
        assert qube_totals(qube, segments) == want
        # A first segment without records (torn, emptied): the next one's time counts.
        first = segments[0].log
        assert first is not None
        if not segments[0].compressed:
            kept = first.read_bytes()
            first.write_bytes(b"")
            want = qube_summary(qube, [segment_info(s) for s in segments])
            assert qube_totals(qube, segments) == want
            first.write_bytes(kept)

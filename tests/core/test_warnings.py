"""RepeatedWarning: a lasting condition is logged once per interval, repeats counted."""

import logging

import pytest

from qubes_logvm.core.warnings import RepeatedWarning


def test_repeats_within_the_interval_are_held_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    warning = RepeatedWarning(logging.getLogger("t"), interval=300.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        assert warning.warn("q", "pressure %d", 1)
        for second in range(1, 60):  # every 5 s pass for five minutes
            now[0] = second * 5.0
            assert not warning.warn("q", "pressure %d", 1)
        assert warning.warn("other", "witness refused %s", "x")  # keys are separate
        now[0] = 300.0
        assert warning.warn("q", "pressure %d", 2)
        warning.clear("q")
        assert warning.warn("q", "pressure %d", 3)  # over and back: said at once
    assert caplog.messages == [
        "pressure 1",
        "witness refused x",
        "pressure 2 (59 more like it in the last 300s)",
        "pressure 3",
    ]

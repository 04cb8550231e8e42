"""Warnings that would repeat, logged at most once per interval (floor 0).

A condition that lasts (global pressure nothing can relieve, a witness that
keeps refusing) must not fill the journal with one line per pass: the first
occurrence is logged at once, repeats within ``interval`` seconds are only
counted, and the next logged line says how many were held back.
"""

import logging
import time
from collections.abc import Callable


class RepeatedWarning:
    """One kind of warning, rate-limited per key (e.g. per qube)."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warn(self, key: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``key`` was logged within the interval.

        Returns True when it was logged.
        """
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        held = self._held.pop(key, 0)
        self._last[key] = now
        if held:
            message += " (%d more like it in the last %.0fs)"
            args = (*args, held, now - last if last is not None else 0.0)
        self.logger.warning(message, *args)
        return True

    def clear(self, key: str) -> None:
        """The condition is over: the next occurrence is logged at once."""
        self._last.pop(key, None)
        self._held.pop(key, None)

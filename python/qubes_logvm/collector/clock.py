"""Receive times of one qube, monotonic over a wall clock that may step.

Trust side: runs in the collector; the wall clock is the LogVM's own (a
test injects one through ``StoreAccess(clock=...)``).
"""

from collections.abc import Callable

#: A step back of the wall clock this large (seconds) is noted (``clock-step``).
CLOCK_STEP = 1.0


class ReceiveClock:
    """One qube's receive times: never below the last one handed out.

    When the wall clock steps back, stamps stay at the last one until it
    catches up, and the step (the largest gap seen, once per step of at
    least :data:`CLOCK_STEP`) waits in :attr:`stepped_back` for a note.
    ``last`` starts at the qube's newest stored stamp, so this holds across
    restarts of the collector too.
    """

    def __init__(self, wall: Callable[[], float], last: float = 0.0) -> None:
        self._wall = wall
        self.last = last  # the qube's newest stamp so far (the store's, at start)
        self.stepped_back = 0.0  # seconds, to be noted (0: nothing)
        self._noted = 0.0

    def now(self) -> float:
        """The receive time to use now."""
        wall = self._wall()
        if wall >= self.last:
            self.last, self._noted = wall, 0.0
            return wall
        behind = self.last - wall
        if behind >= self._noted + CLOCK_STEP:
            self.stepped_back = self._noted = behind
        return self.last

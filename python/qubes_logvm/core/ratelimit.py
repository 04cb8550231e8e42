"""The token bucket: the one rate limit of the collector and the witness (floor 1).

The collector limits each qube's lines (:meth:`TokenBucket.take_up_to`: as
many lines as there are tokens pass); the witness limits messages per call
and key-derivation work (:meth:`TokenBucket.take`: all or nothing; the
hashing budget is kept across calls, :meth:`TokenBucket.state`).

Trust side: counts what untrusted peers send; pure arithmetic on a monotonic
clock that the caller passes in on every call.
"""


class TokenBucket:
    """``rate`` tokens per second sustained, up to ``burst`` at once (rate 0: unlimited)."""

    def __init__(
        self, rate: float, burst: float, now: float, *, tokens: float | None = None
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst) if tokens is None else min(float(burst), max(0.0, tokens))
        self._stamp = now

    def state(self, now: float) -> tuple[float, float]:
        """(tokens, stamp) as of ``now``, to go on from in another process (the witness)."""
        self._refill(now)
        return self._tokens, self._stamp

    def configure(self, rate: float, burst: float) -> None:
        """Apply a reloaded configuration, keeping the tokens earned so far."""
        self.rate = rate
        self.burst = burst
        self._tokens = min(self._tokens, float(burst))

    def _refill(self, now: float) -> None:
        # A clock set back earns nothing until it passes the stamp again.
        elapsed = max(0.0, now - self._stamp)
        self._stamp = max(self._stamp, now)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)

    def take(self, amount: float, now: float) -> bool:
        """Spend ``amount`` tokens if there are that many; False (nothing spent) if not."""
        if self.rate <= 0:
            return True
        self._refill(now)
        if amount > self._tokens:
            return False
        self._tokens -= amount
        return True

    def take_up_to(self, count: int, now: float) -> int:
        """Spend up to ``count`` whole tokens; return how many were spent."""
        if self.rate <= 0:
            return count
        self._refill(now)
        allowed = min(count, int(self._tokens))
        self._tokens -= allowed
        return allowed

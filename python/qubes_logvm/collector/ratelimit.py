"""A token bucket per qube (the collector's rate limit).

Trust side: counts lines from an untrusted qube; pure arithmetic on a
monotonic clock that the caller passes in.
"""


class TokenBucket:
    """``rate`` lines per second sustained, up to ``burst`` at once (rate 0: unlimited)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def configure(self, rate: float, burst: int) -> None:
        """Apply a reloaded configuration, keeping the tokens earned so far."""
        self.rate = rate
        self.burst = burst
        self._tokens = min(self._tokens, float(burst))

    def take(self, count: int, now: float) -> int:
        """Take up to ``count`` tokens; return how many lines may pass."""
        if self.rate <= 0:
            return count
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        allowed = min(count, int(self._tokens))
        self._tokens -= allowed
        return allowed

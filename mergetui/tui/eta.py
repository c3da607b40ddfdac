"""The Run screen's throughput and ETA, measured so that the first estimate is already sane.

Dividing the bytes written by the time since `r` counts the start-up (planning, opening the
checkpoints, the first tensor's reads) as if it were merging time, and the first ETA came out five
times the real one. Here the rate is measured from the first progress report on (what came before it
is start-up, never repeated), and nothing is estimated until the merge has run for a while and
written a share of its bytes since then: the screen shows "—" rather than a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

# No estimate before this many seconds and this share of the total since the first progress report.
MIN_SECONDS = 2.0
MIN_FRACTION = 0.01


@dataclass
class RateEstimate:
    """Bytes per second of a running merge, from its own progress reports (times from one clock)."""

    total: int
    origin: tuple[float, int] | None = None  # (time, bytes) of the first report with bytes
    last: tuple[float, int] | None = None  # the latest report

    def observe(self, now: float, done: int) -> None:
        """A progress report: `done` bytes written at time `now`."""
        if done <= 0:
            return
        if self.origin is None:
            self.origin = (now, done)
        if self.last is None or done >= self.last[1]:
            self.last = (now, done)

    def rate(self, now: float) -> float | None:
        """Bytes per second since the first report, or None while that says too little."""
        if self.origin is None or self.last is None:
            return None
        seconds = max(now, self.last[0]) - self.origin[0]
        written = self.last[1] - self.origin[1]
        if seconds < MIN_SECONDS or written <= 0 or written < MIN_FRACTION * self.total:
            return None
        return written / seconds

    def eta(self, now: float) -> float | None:
        """Seconds left at the measured rate, or None while there is no rate yet."""
        rate = self.rate(now)
        if rate is None or self.last is None:
            return None
        return max(0, self.total - self.last[1]) / rate

"""Per-second rates from counter samples, and the bounded history the charts draw. Pure: the
caller passes the time of every sample."""

from collections import deque


class CounterRates:
    """Rates between consecutive samples of monotonically increasing counters.

    A counter that went down was reset (its daemon restarted, or another master became the
    source): it has no rate for that interval rather than a negative one.
    """

    def __init__(self):
        self._last: tuple[float, dict[str, float]] | None = None

    def reset(self) -> None:
        self._last = None

    def update(self, t: float, counters: dict[str, float]) -> dict[str, float] | None:
        """Rates since the previous sample, or None for the first one (or a clock that went back)."""
        last, self._last = self._last, (t, dict(counters))
        if last is None or t <= last[0]:
            return None
        dt = t - last[0]
        return {
            name: (value - last[1][name]) / dt
            for name, value in counters.items()
            if name in last[1] and value >= last[1][name]
        }


class History:
    """The last `size` points, oldest first: what a freshly opened page draws at once."""

    def __init__(self, size: int):
        self._points: deque[dict] = deque(maxlen=size)

    @property
    def size(self) -> int:
        return self._points.maxlen

    def add(self, point: dict) -> None:
        self._points.append(point)

    def last(self, n: int) -> list[dict]:
        return list(self._points)[-n:] if n > 0 else []

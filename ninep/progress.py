"""The progress bar and summary of `ninefs cp` (ninep/copy.py): bytes, rate and time left."""

from __future__ import annotations

import shutil
import time
from collections import deque
from typing import IO

__all__ = ["Progress", "human_size"]


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 10 else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02}:{s % 60:02}" if s >= 3600 else f"{s // 60}:{s % 60:02}"


class Progress:
    """Bytes done of the total, the rate over the last few seconds and the time left, redrawn
    on one line of `stream` at most ten times a second (`stream` None: count only)."""

    def __init__(self, stream: IO[str] | None) -> None:
        self.stream = stream
        self.total = self.done = self.files = self.dirs = 0
        self.started = time.monotonic()
        self._drawn = 0.0
        self._samples: deque[tuple[float, int]] = deque()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.stream is not None and now - self._drawn >= 0.1:
            self.draw(now)

    def rate(self, now: float) -> float:
        samples = self._samples
        samples.append((now, self.done))
        while len(samples) > 2 and now - samples[0][0] > 3.0:
            samples.popleft()
        t0, b0 = samples[0]
        if now - t0 < 0.05:
            t0, b0 = self.started, 0
        return (self.done - b0) / (now - t0) if now > t0 else 0.0

    def line(self, now: float) -> str:
        rate = self.rate(now)
        total = max(self.total, self.done)
        share = self.done / total if total else 1.0
        left = (total - self.done) / rate if rate > 0 else None
        eta = "ETA " + (_clock(left) if left is not None else "--:--")
        numbers = f"{human_size(self.done)} / {human_size(total)} {share:4.0%}  {human_size(rate)}/s  {eta}"
        width = shutil.get_terminal_size((80, 24)).columns - 1
        bar = width - len(numbers) - 3
        if bar < 10:
            return numbers[:width]
        filled = int(bar * share)
        return f"[{'#' * filled}{'-' * (bar - filled)}] {numbers}"

    def draw(self, now: float | None = None) -> None:
        assert self.stream is not None
        now = time.monotonic() if now is None else now
        self._drawn = now
        self.stream.write("\r" + self.line(now))
        self.stream.flush()

    def finish(self, complete: bool) -> None:
        """Draw the last state and end the line, so what follows starts on a line of its own
        (after a failure, only if a bar was drawn: a bar of nothing done says nothing)."""
        if self.stream is not None and (complete or self._drawn):
            self.draw()
            self.stream.write("\n")
            self.stream.flush()

    def summary(self) -> str:
        took = time.monotonic() - self.started
        files = f"{self.files} file{'' if self.files == 1 else 's'}"
        if self.dirs:
            files += f" in {self.dirs} director{'y' if self.dirs == 1 else 'ies'}"
        rate = human_size(self.done / took) + "/s" if took > 0 else "-"
        return f"copied {files}, {human_size(self.done)} in {took:.1f} s, {rate}"

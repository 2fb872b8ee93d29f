"""A small progress bar for long work (stderr, only on a terminal unless forced)."""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


class Progress:
    """``with Progress(total, "replay") as bar: bar.update(n)``; silent when stderr is not a terminal."""

    def __init__(self, total: Optional[int] = None, desc: str = "", enabled: Optional[bool] = None,
                 stream=None):
        self.total = total
        self.desc = desc
        self.n = 0
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = os.environ.get("MMSB_PROGRESS", "") == "1" or (
                hasattr(self.stream, "isatty") and self.stream.isatty() and os.environ.get("MMSB_PROGRESS") != "0")
        self.enabled = enabled
        self._t0 = time.perf_counter()
        self._last = 0.0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.1 or (self.total and self.n >= self.total)):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = now - self._t0
        if self.total:
            frac = min(1.0, self.n / self.total)
            bar = "#" * int(frac * 30)
            line = f"\r{self.desc:<22} [{bar:<30}] {self.n}/{self.total} {elapsed:6.1f}s"
        else:
            line = f"\r{self.desc:<22} {self.n} {elapsed:6.1f}s"
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable: Iterable[T], total: Optional[int] = None, desc: str = "") -> Iterator[T]:
    """Iterate ``iterable`` with a progress bar."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc) as bar:
        for item in iterable:
            yield item
            bar.update()

"""A tiny text progress bar on stderr (used when :mod:`mmsb.progress` is not there)."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TextIO, TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], total: Optional[int] = None, desc: str = "", file: Optional[TextIO] = None,
             width: int = 30, interval: float = 0.1) -> Iterator[T]:
    """Yield from ``iterable`` while drawing ``desc [#####.....] i/total rate`` on stderr (at most 10 Hz)."""
    out = file if file is not None else sys.stderr
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    t0 = last = time.perf_counter()
    i = 0

    def draw(final: bool = False) -> None:
        el = time.perf_counter() - t0
        rate = i / el if el > 0 else 0.0
        if total:
            fill = int(width * min(i, total) / total)
            bar = f"[{'#' * fill}{'.' * (width - fill)}] {i}/{total}"
        else:
            bar = f"{i}"
        out.write(f"\r{desc + ' ' if desc else ''}{bar} {rate:,.1f}/s {el:,.1f}s" + ("\n" if final else ""))
        out.flush()

    draw()
    for item in iterable:
        yield item
        i += 1
        now = time.perf_counter()
        if now - last >= interval:
            last = now
            draw()
    draw(final=True)

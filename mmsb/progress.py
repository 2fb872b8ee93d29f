"""Progress bars for long work, drawn by tqdm on stderr, and only for a person at a terminal.

A bar is shown when standard output and the bar's stream are both terminals; ``MMSB_PROGRESS=0`` keeps every bar
off, ``MMSB_PROGRESS=1`` turns them on even without a terminal. Without tqdm installed, or when off, the classes
below count silently, so callers never check.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


def enabled_for(stream: Any = None) -> bool:
    """Whether a bar drawn on ``stream`` (default stderr) would be shown (see the module docstring)."""
    env = os.environ.get("MMSB_PROGRESS", "")
    if env == "0":
        return False
    if env == "1":
        return True
    stream = stream if stream is not None else sys.stderr

    def tty(s: Any) -> bool:
        try:
            return bool(s.isatty())
        except (AttributeError, ValueError):
            return False

    return tty(sys.stdout) and tty(stream)


def _tqdm(**kw: Any) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency; a stripped install still works, silently
        return None
    return tqdm(**kw)


class Progress:
    """``with Progress(total, "replay") as bar: bar.update(n)``: a counted bar (``total=None``: a running count).

    ``n`` counts the updates whether the bar is shown or not. The bar is removed from the terminal when it closes
    unless ``leave=True``.
    """

    def __init__(self, total: Optional[int] = None, desc: str = "", enabled: Optional[bool] = None,
                 stream: Any = None, leave: bool = False, unit: str = "it"):
        self.total = total
        self.desc = desc
        self.n = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled_for(self.stream) if enabled is None else bool(enabled)
        self._bar = _tqdm(total=total, desc=desc, file=self.stream, leave=leave, dynamic_ncols=True,
                          mininterval=0.1, unit=unit) if self.enabled else None

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        """Draw the final state once and release the terminal line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class phase:
    """``with phase("initial closure"): ...``: a one-line timer for one long step that has no count.

    Shows ``desc: elapsed`` and keeps the time moving from a helper thread (the step itself may be a single long
    call). Silent under the same rules as :class:`Progress`; ``seconds`` holds the step's duration afterwards.
    """

    def __init__(self, desc: str, enabled: Optional[bool] = None, stream: Any = None, refresh: float = 0.2):
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled_for(self.stream) if enabled is None else bool(enabled)
        self.refresh = refresh
        self.seconds = 0.0
        self._bar: Any = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "phase":
        self._t0 = time.perf_counter()
        if self.enabled:
            self._bar = _tqdm(total=None, desc=self.desc, file=self.stream, leave=False,
                              bar_format="{desc}: {elapsed}", mininterval=0.1)
        if self._bar is not None:
            self._thread = threading.Thread(target=self._tick, name=f"mmsb-progress-{self.desc}", daemon=True)
            self._thread.start()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(self.refresh):
            self._bar.refresh()

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.close()


def progress(iterable: Iterable[T], total: Optional[int] = None, desc: str = "") -> Iterator[T]:
    """Iterate ``iterable`` with a progress bar."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc) as bar:
        for item in iterable:
            yield item
            bar.update()

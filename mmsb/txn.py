"""Optimistic transactions: private writes, per-element read sets and intents, validation at commit."""
from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, TypeVar

import numpy as np

from mmsb._sets import unique
from mmsb.errors import ConflictError, InvalidDeltaError, MMSBError
from mmsb.observe import observed

if TYPE_CHECKING:  # pragma: no cover
    from mmsb.buffer import Buffer
    from mmsb.pages import Page

T = TypeVar("T")


def region_of(page: "Page", index: Any = None, mask: Any = None) -> Optional[np.ndarray]:
    """A region of ``page`` as sorted unique flat positions, or None for the whole page."""
    if mask is not None:
        m = np.asarray(mask, dtype=bool).reshape(-1)
        if m.size != page.size:
            raise InvalidDeltaError(f"page {page.name!r}: intent mask has {m.size} entries, page has {page.size}")
        return np.flatnonzero(m).astype(np.int64)
    if index is None:
        return None
    if page.kind == "matrix":
        return unique(page.keys(index))
    if isinstance(index, range) or isinstance(index, slice):
        sl = index if isinstance(index, slice) else slice(index.start, index.stop, index.step)
        return np.arange(page.size, dtype=np.int64)[sl]
    idx = np.asarray(index).reshape(-1)
    if idx.size and idx.dtype.kind not in "iu":
        raise InvalidDeltaError(f"page {page.name!r}: an index must be integer, got {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= page.size):
        raise InvalidDeltaError(f"page {page.name!r}: index out of range [0, {page.size})")
    return unique(idx)


def overlap(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """Positions in both regions (None = whole page); None when one side is the whole page and the other is."""
    if a is None and b is None:
        return None
    if a is None:
        return b
    if b is None:
        return a
    return np.intersect1d(a, b, assume_unique=True)


def _describe(region: Optional[np.ndarray]) -> str:
    if region is None:
        return "the whole page"
    head = ", ".join(str(i) for i in region[:8].tolist())
    return f"positions [{head}{', ...' if region.size > 8 else ''}]"


class Transaction:
    """An optimistic transaction on a buffer (see :meth:`mmsb.buffer.Buffer.transaction`).

    ``read`` records what it read; ``write`` keeps the change private; ``commit`` validates that nothing read
    or reserved (``intents``) was changed by a commit after the transaction began, then commits atomically.
    """

    def __init__(self, buf: "Buffer", intents: Optional[Iterable] = None, track_reads: bool = True):
        self._buf = buf
        self.start_epoch = buf.epoch
        self.reads: list[tuple[str, Optional[np.ndarray]]] = []
        self.intents: list[tuple[str, Optional[np.ndarray]]] = []
        self.ops: list = []
        self.state = "open"
        self.track_reads = track_reads
        for item in intents or ():
            try:
                page, index = item
            except (TypeError, ValueError):
                raise InvalidDeltaError(f"an intent is (page, index or None), got {item!r}") from None
            p = buf._page(page)
            self.intents.append((p.name, region_of(p, index)))
        buf._txn_open(self)

    # -- operations -------------------------------------------------------------------------------------------
    @observed(op="transaction.read")
    def read(self, page: Any, index: Any = None) -> np.ndarray:
        """Read ``page`` (or flat positions ``index``) as this transaction sees it; records the read set."""
        self._check_open()
        p = self._buf._page(page)
        region = region_of(p, index)
        if self.track_reads:
            self.reads.append((p.name, region))
        return self._buf._read_in_txn(p, index, self)

    @observed(op="transaction.write")
    def write(self, page: Any, values: Any, index: Any = None, mask: Any = None, accumulate: bool = False,
              source: Optional[str] = None, metadata: Optional[dict] = None) -> None:
        """Stage a delta (validated now; applied only at commit)."""
        self._check_open()
        p = self._buf._page(page)
        self.ops.append(self._buf._prepare(p, values, index, mask, accumulate, source, metadata))

    @observed(op="transaction.commit")
    def commit(self) -> int:
        """Validate and commit; returns the epoch. Raises :class:`ConflictError` on a conflicting overlap."""
        self._check_open()
        try:
            epoch = self._buf._pipe.commit(self.ops, self)
        except BaseException:
            self.state = "aborted"
            self._buf._txn_close(self)
            raise
        self.state = "committed"
        self._buf._txn_close(self)
        return epoch

    def abort(self) -> None:
        """Drop every staged change; nothing is applied, logged or propagated."""
        if self.state == "open":
            self.state = "aborted"
            self.ops.clear()
            self._buf._txn_close(self)

    def _check_open(self) -> None:
        if self.state != "open":
            raise MMSBError(f"transaction is {self.state}")

    def __enter__(self) -> "Transaction":
        self._buf._push_current(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._buf._pop_current(self)
        if exc_type is not None:
            self.abort()
        elif self.state == "open":
            self.commit()

    # -- validation (called by the buffer under its commit lock) ----------------------------------------------
    def validate(self, history: list[tuple[int, dict]]) -> None:
        """Raise :class:`ConflictError` if a region read or reserved changed after the transaction began."""
        watched = self.reads + self.intents
        if not watched:
            return
        for epoch, changed in history:
            if epoch <= self.start_epoch:
                continue
            for name, region in watched:
                if name not in changed:
                    continue
                hit = overlap(region, changed[name])
                if hit is None or hit.size:
                    raise ConflictError(f"conflict on page {name!r}: {_describe(hit)} changed by the commit of "
                                        f"epoch {epoch} after this transaction began at epoch {self.start_epoch}",
                                        page=name, epoch=epoch)

    def intents_overlap(self, other: "Transaction") -> Optional[str]:
        for name, region in self.intents:
            for oname, oregion in other.intents:
                if name == oname:
                    hit = overlap(region, oregion)
                    if hit is None or hit.size:
                        return f"page {name!r} ({_describe(hit)})"
        return None


def backoff_delays(retries: int, base: float = 0.0005, cap: float = 0.05) -> Iterable[float]:
    """Exponential backoff with full jitter, each wait capped at ``cap`` seconds."""
    for attempt in range(retries):
        yield random.uniform(0, min(cap, base * (2 ** attempt)))


def retry_call(fn: Callable[[], T], retries: int = 5, base: float = 0.0005, cap: float = 0.05) -> T:
    """Call ``fn``; on a retryable :class:`~mmsb.errors.MMSBError` wait (backoff, jitter) and try again."""
    delays = iter(backoff_delays(retries, base, cap))
    while True:
        try:
            return fn()
        except MMSBError as exc:
            if not exc.retryable:
                raise
            delay = next(delays, None)
            if delay is None:
                raise
            time.sleep(delay)


def with_transaction(buf: "Buffer", fn: Callable[[Transaction], T], retries: int = 5, backoff: float = 0.0005,
                     intents: Optional[Iterable] = None) -> T:
    """Run ``fn(tx)`` in a transaction and commit; retry on :class:`ConflictError` up to ``retries`` times.

    Waits back off exponentially with jitter, each capped at 50 ms. Returns what ``fn`` returned.
    """

    def attempt() -> T:
        tx = buf.transaction(intents=intents)
        try:
            result = fn(tx)
        except BaseException:
            tx.abort()
            raise
        if tx.state == "open":
            tx.commit()
        return result

    return retry_call(attempt, retries=retries, base=backoff)

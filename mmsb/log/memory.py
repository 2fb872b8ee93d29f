"""In-memory log with the DurableLog API (for ``mmsb.open(None)``): keeps Txn objects, no files."""
from __future__ import annotations

import bisect
import threading
from typing import Iterator, Optional

from mmsb.log.base import LogBase
from mmsb.delta import Txn
from mmsb.errors import ClosedError


class MemoryLog(LogBase):
    """The log of an in-memory buffer: committed :class:`Txn` objects kept as they are (history in memory)."""

    durability = "none"
    readonly = False

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._txns: list[Txn] = []
        self._epochs: list[int] = []
        self._marks: list[int] = []
        self._last_epoch = 0
        self._closed = False
        self._stats = dict(records=0, transactions=0, bytes=0, raw_bytes=0, encoded_bytes=0, fsyncs=0,
                           group_commit_batches=0, torn_tail_bytes=0, segments=0)

    def append(self, txn: Txn, commit: bool = True) -> int:
        with self._lock:
            if self._closed:
                raise ClosedError("the log is closed")
            if int(txn.epoch) <= self._last_epoch:
                raise ValueError(f"epoch {txn.epoch} does not follow the last committed epoch {self._last_epoch}")
            if not commit:
                return len(self._txns)
            t = Txn(epoch=int(txn.epoch), txid=int(txn.txid), ops=list(txn.ops))
            for op in t.ops:
                if hasattr(op, "values") and getattr(op, "epoch", None) is None:
                    op.epoch = t.epoch
            self._txns.append(t)
            self._epochs.append(t.epoch)
            self._last_epoch = t.epoch
            self._stats["transactions"] += 1
            self._stats["records"] += len(t.ops) + 1
            return len(self._txns)

    def sync(self, token: Optional[int] = None) -> None:
        if self._closed:
            raise ClosedError("the log is closed")

    def commit(self, txn: Txn) -> int:
        return self.append(txn)

    def mark_checkpoint(self, epoch: int) -> int:
        with self._lock:
            self._marks.append(int(epoch))
            return len(self._txns)

    def txns(self, since: Optional[int] = None, until: Optional[int] = None) -> Iterator[Txn]:
        with self._lock:
            lo = 0 if since is None else bisect.bisect_right(self._epochs, since)
            hi = len(self._epochs) if until is None else bisect.bisect_right(self._epochs, until)
            sel = self._txns[lo:hi]
        return iter(sel)

    def drop_segments_before(self, epoch: int) -> int:
        """Forget transactions with epoch <= ``epoch`` (all but what a checkpoint covers); returns how many."""
        with self._lock:
            k = bisect.bisect_right(self._epochs, epoch)
            del self._txns[:k]
            del self._epochs[:k]
            return k

    def stats(self) -> dict:
        with self._lock:
            st = dict(self._stats)
            st["last_epoch"] = self._last_epoch
            st["first_epoch"] = self._epochs[0] if self._epochs else None
            st["compression_ratio"] = 1.0
            st["durability"] = "memory"
            st["poisoned"] = False
            return st

    def close(self) -> None:
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

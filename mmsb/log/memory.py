"""In-memory log with the DurableLog API (for ``mmsb.open(None)``): keeps committed transactions, no files.

History costs memory for as long as the buffer lives, so the common record is kept compact: a transaction that
only creates one page without metadata (what ``create_page`` commits) is stored as the page's name (the very
string the buffer keys the page by), its epoch and transaction id in ``array('q')`` columns, and an index into a
small table of shared page specs (shape, dtype, semiring, device, fill bytes). A transaction of deltas without
metadata (what a write commits) is stored as a tuple of tuples of the deltas' fields: strings, numbers and
arrays, which the garbage collector stops tracking, so that a long history costs no collection time on every
later commit. :meth:`MemoryLog.txns` rebuilds the same :class:`~mmsb.delta.Txn`, :class:`~mmsb.delta.Delta` and
:class:`~mmsb.delta.SchemaOp` the buffer appended, on demand.
"""
from __future__ import annotations

import bisect
import threading
from array import array
from typing import Any, Iterator, Optional

import numpy as np

from mmsb.delta import Delta, SchemaOp, Txn
from mmsb.errors import ClosedError
from mmsb.log.base import LogBase


class MemoryLog(LogBase):
    """The log of an in-memory buffer: committed transactions kept in memory (history in memory).

    ``_entries[k]`` is a :class:`Txn`, the packed deltas of one (a tuple, :func:`_pack`) or, for a compact page
    creation, the page's name; ``_epochs[k]``, ``_txids[k]`` and ``_spec[k]`` (-1 unless a page creation) are the
    matching columns.
    """

    durability = "none"
    readonly = False
    keeps_deltas = True

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: list[Any] = []
        self._epochs = array("q")
        self._txids = array("q")
        self._spec = array("i")
        self._specs: list[tuple] = []            # (shape, dtype str, semiring, device, fill bytes)
        self._spec_ids: dict[tuple, int] = {}
        self._marks: list[int] = []
        self._last_epoch = 0
        self._closed = False
        self._stats = dict(records=0, transactions=0, bytes=0, raw_bytes=0, encoded_bytes=0, fsyncs=0,
                           group_commit_batches=0, torn_tail_bytes=0, segments=0)

    def append(self, txn: Txn, commit: bool = True) -> int:
        ops = txn.ops
        if commit and len(ops) == 1 and type(ops[0]) is SchemaOp and ops[0].kind == "page_created" \
                and ops[0].payload.get("metadata") is None:
            pl = ops[0].payload
            fill = ops[0].arrays["fill"]
            return self.append_page_created(int(txn.epoch), int(txn.txid), pl["name"], tuple(pl["shape"]),
                                            fill.dtype, pl["semiring"], pl["device"], fill[0])
        epoch, txid = txn.epoch, txn.txid
        if type(epoch) is not int or type(txid) is not int:
            epoch, txid = int(epoch), int(txid)
        with self._lock:
            if self._closed:
                raise ClosedError("the log is closed")
            if epoch <= self._last_epoch:
                raise ValueError(f"epoch {epoch} does not follow the last committed epoch {self._last_epoch}")
            if not commit:
                return len(self._entries)
            packed = _pack(ops)                 # (its deltas come back with this epoch)
            if packed is None:
                for op in ops:
                    if type(op) is Delta:
                        if op.epoch is None:
                            op.epoch = epoch
                    elif hasattr(op, "values") and getattr(op, "epoch", None) is None:
                        op.epoch = epoch
            self._entries.append(packed if packed is not None else Txn(epoch, txid, list(ops)))
            self._epochs.append(epoch)
            self._txids.append(txid)
            self._spec.append(-1)
            self._last_epoch = epoch
            stats = self._stats
            stats["transactions"] += 1
            stats["records"] += len(ops) + 1
            return len(self._entries)

    def append_page_created(self, epoch: int, txid: int, name: str, shape: tuple, dtype: np.dtype, semiring: str,
                            device: str, fill: Any) -> int:
        """Commit the transaction ``[SchemaOp("page_created", ...)]`` of a page without metadata, compactly.

        ``fill`` is a scalar of ``dtype``; it is kept as its bytes, so NaN payloads and -0.0 come back exactly.
        """
        if isinstance(fill, np.generic) and fill.dtype == dtype:
            fb = fill.tobytes()
        else:
            fb = np.asarray(fill, dtype=dtype).tobytes()
        return self._append_spec(epoch, txid, name, (shape, dtype.str, semiring, device, fb))

    def _append_spec(self, epoch: int, txid: int, name: str, key: tuple) -> int:
        """Keep a page creation as its name and an index into the table of shared specs ``key``."""
        with self._lock:
            if self._closed:
                raise ClosedError("the log is closed")
            if epoch <= self._last_epoch:
                raise ValueError(f"epoch {epoch} does not follow the last committed epoch {self._last_epoch}")
            sid = self._spec_ids.get(key)
            if sid is None:
                sid = self._spec_ids[key] = len(self._specs)
                self._specs.append(key)
            self._entries.append(name)
            self._epochs.append(epoch)
            self._txids.append(txid)
            self._spec.append(sid)
            self._last_epoch = epoch
            self._stats["transactions"] += 1
            self._stats["records"] += 2
            return len(self._entries)

    def _txn(self, k: int) -> Txn:
        """Entry ``k`` as a Txn (lock held); a compact page creation is rebuilt as a fresh Txn."""
        e = self._entries[k]
        if type(e) is tuple:
            epoch = self._epochs[k]
            return Txn(epoch, self._txids[k], [Delta(page, values, index=index, mask=mask, accumulate=accumulate,
                                                     source=source, derived=derived, epoch=epoch,
                                                     normalized=normalized, fold_op=fold_op)
                                               for page, values, index, mask, accumulate, source, derived,
                                               normalized, fold_op in e])
        if type(e) is not str:
            return e
        shape, dts, semiring, device, fill = self._specs[self._spec[k]]
        dt = np.dtype(dts)
        op = SchemaOp("page_created", {"name": e, "shape": list(shape), "dtype": dts, "semiring": semiring,
                                       "device": device, "metadata": None},
                      {"fill": np.frombuffer(fill, dtype=dt).copy()})
        return Txn(epoch=self._epochs[k], txid=self._txids[k], ops=[op])

    def sync(self, token: Optional[int] = None) -> None:
        if self._closed:
            raise ClosedError("the log is closed")

    def mark_checkpoint(self, epoch: int) -> int:
        with self._lock:
            self._marks.append(int(epoch))
            return len(self._entries)

    def _range(self, since: Optional[int], until: Optional[int]) -> tuple[int, int]:
        lo = 0 if since is None else bisect.bisect_right(self._epochs, since)
        hi = len(self._epochs) if until is None else bisect.bisect_right(self._epochs, until)
        return lo, hi

    def txns(self, since: Optional[int] = None, until: Optional[int] = None) -> Iterator[Txn]:
        """Committed transactions with ``since < epoch <= until``, oldest first (a snapshot taken now)."""
        with self._lock:
            lo, hi = self._range(since, until)
            sel = [self._txn(k) for k in range(lo, hi)]
        return iter(sel)

    def data_txns(self, since: Optional[int] = None, until: Optional[int] = None) -> Iterator[Txn]:
        """Like :meth:`txns` but without the compact page creations (they hold no deltas): for ``log.query``."""
        with self._lock:
            lo, hi = self._range(since, until)
            sel = [self._txn(k) for k in range(lo, hi) if type(self._entries[k]) is not str]
        return iter(sel)

    def drop_segments_before(self, epoch: int) -> int:
        """Forget transactions with epoch <= ``epoch`` (all but what a checkpoint covers); returns how many."""
        with self._lock:
            k = bisect.bisect_right(self._epochs, epoch)
            del self._entries[:k]
            del self._epochs[:k]
            del self._txids[:k]
            del self._spec[:k]
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


def _pack(ops: list) -> Optional[tuple]:
    """The deltas ``ops`` as a tuple of field tuples (None where an op is not a delta or carries metadata)."""
    out = []
    for op in ops:
        if type(op) is not Delta or op.metadata is not None:
            return None
        out.append((op.page, op.values, op.index, op.mask, op.accumulate, op.source, op.derived, op.normalized,
                    op.fold_op))
    return tuple(out)

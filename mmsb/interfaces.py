"""The small typed interfaces the buffer and its commit pipeline work against.

- :class:`Log`: the committed history (:class:`~mmsb.log.MemoryLog` in memory, :class:`~mmsb.log.DurableLog` on
  disk).
- :class:`Store`: the files behind a durable buffer (:class:`mmsb.store.Store`): checkpoints, compaction, the
  snapshots time travel starts from, the writer lock.
- :class:`~mmsb.engines.PropagationEngine` (in :mod:`mmsb.engines`) and
  :class:`~mmsb.devices.DeviceBackend` (in :mod:`mmsb.devices`) complete the set; engines and device families
  register there.

They are ``typing.Protocol`` classes (checkable with ``isinstance``): an implementation needs the methods, not a
base class. Tests check that the built-in implementations satisfy them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Optional, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from mmsb.buffer import Buffer
    from mmsb.delta import Txn


@runtime_checkable
class Log(Protocol):
    """Append-only committed transactions, in epoch order."""

    #: ``"fsync"``, ``"flush"`` or ``"none"``
    durability: str
    #: True when the log keeps the Delta objects it is given (a sparse delta may arrive unsorted)
    keeps_deltas: bool
    #: whether :meth:`sync` can have anything left to do once :meth:`append` returned (fsync durability)
    sync_needed: bool
    #: why the log refuses commits (a failed write or fsync), or None
    poisoned: Optional[str]

    def append(self, txn: "Txn") -> Any:
        """Add a committed transaction; returns a token for :meth:`sync`."""
        ...

    def sync(self, token: Any = None) -> None:
        """Return once everything up to ``token`` is as durable as the log's durability promises."""
        ...

    def txns(self, since: Optional[int] = None, until: Optional[int] = None) -> Iterator["Txn"]:
        """The kept transactions with ``since < epoch <= until``, in order."""
        ...

    def data_txns(self, since: Optional[int] = None, until: Optional[int] = None) -> Iterator["Txn"]:
        """The transactions that can hold deltas (for ``log.query``)."""
        ...

    def drop_segments_before(self, epoch: int) -> int:
        """Forget history before ``epoch`` (compaction); returns how much was dropped."""
        ...

    def index_skipped(self) -> None:
        """Index what was left unread at open (a no-op for logs that read everything)."""
        ...

    def stats(self) -> dict:
        """Figures for ``buf.stats()["log"]``."""
        ...

    def close(self) -> None:
        """Flush and release the log's resources."""
        ...


@runtime_checkable
class Store(Protocol):
    """The files of a durable buffer."""

    root: str

    def checkpoint(self, buf: "Buffer", compress: Optional[bool] = None) -> int:
        """Write a snapshot of ``buf`` at its epoch; returns the epoch."""
        ...

    def compact(self, buf: "Buffer", keep: int) -> int:
        """Checkpoint and drop history older than ``keep`` epochs; returns the new horizon."""
        ...

    def snapshot_at(self, epoch: int) -> Optional[tuple]:
        """``(epoch, pages, rules)`` of the newest valid snapshot at or before ``epoch``, or None."""
        ...

    def stats(self) -> dict:
        """Figures for ``buf.stats()["store"]``."""
        ...

    def close(self) -> None:
        """Release the writer lock (and whatever the store holds)."""
        ...

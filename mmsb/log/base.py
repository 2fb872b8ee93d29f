"""What the durable and the in-memory log share: the committed epochs in order and the checkpoint marks."""
from __future__ import annotations

from typing import Iterator, Optional


class LogBase:
    """Subclasses keep ``_lock``, ``_epochs`` (committed epochs, ascending), ``_marks`` and ``_last_epoch``."""

    _epochs: list
    _marks: list
    _last_epoch: int
    #: True when the log keeps the Delta objects it is given (in memory): a sparse delta may then be appended in
    #: the order the user gave it and sorted only when read back (``Delta.normalize``)
    keeps_deltas: bool = False
    #: why the log refuses commits (a failed write or fsync), or None. A buffer whose log is poisoned may hold a
    #: commit in memory that never became durable: it refuses reads too (docs/reliability.md). A plain attribute
    #: (read on every write), set once by the log that fails.
    poisoned: Optional[str] = None
    #: whether ``sync(token)`` can have anything to do (a durable log with durability="fsync"): where it is False
    #: a committer may skip the call (an append that failed has raised and poisoned the log already)
    sync_needed: bool = False

    @property
    def last_epoch(self) -> int:
        """Epoch of the last committed transaction (0 for an empty log)."""
        return self._last_epoch

    @property
    def first_epoch(self) -> Optional[int]:
        """Epoch of the oldest kept transaction, or None."""
        with self._lock:
            return self._epochs[0] if self._epochs else None

    @property
    def checkpoint_marks(self) -> list[int]:
        """Epochs of the checkpoints recorded in the log."""
        return list(self._marks)

    def __len__(self) -> int:
        return len(self._epochs)

    def data_txns(self, since: Optional[int] = None, until: Optional[int] = None) -> Iterator:
        """The transactions that can hold deltas, for ``log.query`` (all of them unless a log keeps others
        apart)."""
        return self.txns(since=since, until=until)

    def index_skipped(self) -> None:
        """Index whatever was left unread at open (nothing, unless a log skips some of itself)."""
        return None

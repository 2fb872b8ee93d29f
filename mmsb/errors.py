"""The mmsb error taxonomy: every error derives from :class:`MMSBError` and, where one fits, a builtin.

Errors marked ``retryable = True`` are transient (a conflict, a busy lock); :func:`mmsb.retry.retry_call`
retries them with backoff. Fatal ones (corruption, a failed fsync) are never retried.
"""
from __future__ import annotations

from typing import Optional


class MMSBError(Exception):
    """Base class of every error raised by mmsb."""

    retryable = False


class PageNotFoundError(MMSBError, KeyError):
    """No page of that name exists."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class PageExistsError(MMSBError, ValueError):
    """A page of that name already exists."""


class InvalidDeltaError(MMSBError, ValueError):
    """A delta does not fit its page (index range, shape, dtype, NaN, derived page...)."""


class CycleError(MMSBError, ValueError):
    """A rule would close a cycle in the dependency graph."""

    def __init__(self, message: str, cycle: Optional[list] = None):
        super().__init__(message)
        self.cycle = list(cycle or [])


class DependencyError(MMSBError, ValueError):
    """A page cannot be dropped or changed because rules depend on it."""


class ConflictError(MMSBError):
    """An optimistic transaction read or reserved data that a later commit changed."""

    retryable = True

    def __init__(self, message: str, page: Optional[str] = None, epoch: Optional[int] = None):
        super().__init__(message)
        self.page = page
        self.epoch = epoch


class CorruptionError(MMSBError, OSError):
    """A checksum, length or format check failed while reading a store file."""

    def __init__(self, message: str, file: Optional[str] = None, offset: Optional[int] = None,
                 what: Optional[str] = None):
        where = ""
        if file is not None:
            where = f" [{file}" + (f" @ {offset}" if offset is not None else "") + "]"
        super().__init__(message + where)
        self.file = file
        self.offset = offset
        self.what = what or message

    def __str__(self) -> str:
        return self.args[0]


class StoreLockedError(MMSBError, BlockingIOError):
    """Another process holds the store's writer lock."""

    retryable = True

    def __str__(self) -> str:
        return self.args[0]


class ReadOnlyError(MMSBError, PermissionError):
    """A write was attempted on a read-only buffer or view."""

    def __str__(self) -> str:
        return self.args[0]


class SemiringError(MMSBError, ValueError):
    """An unknown semiring, a law that fails, or an operation the semiring does not support."""


class PropagationError(MMSBError):
    """A derive function or a semiring's ⊕/⊗ raised during propagation; the commit was rolled back.

    ``page`` is the derived page being computed, ``rule`` the rule's kind; the original exception is chained as
    ``__cause__``.
    """

    def __init__(self, message: str, page: Optional[str] = None, rule: Optional[str] = None):
        super().__init__(message)
        self.page = page
        self.rule = rule

    def __reduce__(self):      # keep page and rule when a Dask worker sends it to the driver
        return (type(self), (self.args[0] if self.args else "", self.page, self.rule))


class PluginError(MMSBError, ImportError):
    """A semiring plugin failed to load or to register."""


class DeviceError(MMSBError, RuntimeError):
    """A device is unknown or unavailable."""


class MemoryBudgetError(MMSBError, MemoryError):
    """The memory limit cannot be met (every page that could be spilled is pinned)."""


class ClosedError(MMSBError, ValueError):
    """The buffer is closed."""


class HistoryError(MMSBError, ValueError):
    """The epoch asked for is not in the kept history."""


class LogPoisonedError(MMSBError, OSError):
    """A previous fsync or write failed; the log refuses every later commit."""

    def __str__(self) -> str:
        return self.args[0]


class DeviceFallbackWarning(UserWarning):
    """A device operation failed and the affected pages moved to the CPU."""


class TornWriteWarning(UserWarning):
    """A record cut short at the end of the log was truncated on open."""


__all__ = [
    "MMSBError", "PageNotFoundError", "PageExistsError", "InvalidDeltaError", "CycleError", "DependencyError", "ConflictError",
    "CorruptionError", "PropagationError", "StoreLockedError", "ReadOnlyError", "SemiringError", "PluginError", "DeviceError",
    "MemoryBudgetError", "ClosedError", "HistoryError", "LogPoisonedError", "DeviceFallbackWarning",
    "TornWriteWarning",
]

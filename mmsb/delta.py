"""Deltas (changes to one page) and committed transactions (what the log records)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np


_FULL_MAX = 1 << 20          # whole-page masks shared up to this many entries (the arange then takes 8 MiB)
_FULL: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def full_mask(n: int) -> np.ndarray:
    """An all-True mask of ``n`` entries for a whole-page delta: shared and read-only for pages of up to 2^20
    entries (so that such deltas cost no mask of their own), a fresh array above that."""
    hit = _FULL.get(n)
    if hit is not None:
        return hit[0]
    m = np.ones(n, dtype=bool)
    if n > _FULL_MAX:
        return m
    if len(_FULL) >= 16:
        _FULL.clear()
    a = np.arange(n, dtype=np.int64)
    m.flags.writeable = False
    a.flags.writeable = False
    m, a = m.view(), a.view()           # views of read-only bases: they cannot be made writable again
    _FULL[n] = (m, a)
    return m


def is_full_mask(mask: Optional[np.ndarray]) -> bool:
    """True when ``mask`` is the shared whole-page mask of its size."""
    if mask is None:
        return False
    hit = _FULL.get(mask.size)
    return hit is not None and mask is hit[0]


def covers_page(mask: Optional[np.ndarray]) -> bool:
    """True when a dense delta's ``mask`` selects every position: the shared whole-page mask, or (for large
    pages, whose masks are not shared, and masks decoded from the log) one that is all True."""
    if mask is None:
        return False
    return is_full_mask(mask) or (mask.size > 4096 and bool(mask.all()))


def full_index(n: int) -> np.ndarray:
    """``arange(n)`` as int64: the shared read-only one of a whole-page mask's size where there is one."""
    hit = _FULL.get(n)
    return hit[1] if hit is not None else np.arange(n, dtype=np.int64)


@dataclass(slots=True)
class Delta:
    """A change to one page.

    Sparse: ``index`` (int64 flat positions, sorted and unique once committed) and ``values`` of the same length.
    Dense: ``mask`` (bool, flat, one entry per page element) and ``values`` holding the masked entries in order.
    ``accumulate``: ``page[i] = page[i] ⊕ v``; otherwise assign (last writer wins). ``derived``: produced by
    propagation, not by a user. ``epoch`` is the commit that holds it (None until committed).
    ``normalized``: a sparse delta's indices are sorted and unique. A user's delta is kept in the order it was
    given in until something needs it sorted (duplicates fold in order either way, as the semantics say):
    :meth:`normalize` sorts it and folds duplicates with ``fold_op`` (a kernel op code of ``mmsb._ops``).
    """

    page: str
    values: np.ndarray
    index: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    accumulate: bool = False
    source: Optional[str] = None
    metadata: Optional[dict] = None
    derived: bool = False
    epoch: Optional[int] = None
    normalized: bool = True
    fold_op: int = -1

    @property
    def kind(self) -> str:
        """``"sparse"`` or ``"dense"``."""
        return "dense" if self.mask is not None else "sparse"

    @property
    def nnz(self) -> int:
        """Number of entries the delta touches (duplicates counted)."""
        return int(self.mask.sum()) if self.mask is not None else int(self.values.size)

    def sparse(self) -> tuple[np.ndarray, np.ndarray]:
        """The delta as ``(index, values)`` (a dense delta restricted to its mask)."""
        if self.mask is None:
            return self.index, self.values
        hit = _FULL.get(self.mask.size)
        if hit is not None and self.mask is hit[0]:
            return hit[1], self.values
        return np.flatnonzero(self.mask).astype(np.int64, copy=False), self.values

    def normalize(self) -> "Delta":
        """Sort a sparse delta's indices and fold duplicates (in order) in place; returns the delta."""
        if not self.normalized and self.index is not None:
            from mmsb import _kernels

            dt = self.values.dtype
            kv = self.values.view(np.uint8) if dt == np.bool_ else self.values
            self.index, vals = _kernels.merge.normalize(self.index, kv, self.fold_op)
            self.values = vals.view(dt)
        self.normalized = True
        return self

    def __repr__(self) -> str:
        op = "accumulate" if self.accumulate else "assign"
        tag = ", derived" if self.derived else ""
        return f"Delta(page={self.page!r}, epoch={self.epoch}, {self.kind}, {op}, nnz={self.nnz}{tag})"


@dataclass
class SchemaOp:
    """A schema change inside a transaction: page created/dropped, rule added/removed, function bound.

    ``payload`` is JSON-able; ``arrays`` holds named numpy arrays (e.g. a rule's CSR matrix).
    """

    kind: str
    payload: dict
    arrays: dict = field(default_factory=dict)


SCHEMA_KINDS = ("page_created", "page_dropped", "rule_added", "rule_removed")

Op = Union[Delta, SchemaOp]


@dataclass(slots=True)
class Txn:
    """A committed transaction: its epoch, a transaction id and its operations in order."""

    epoch: int
    txid: int
    ops: list = field(default_factory=list)

    def deltas(self) -> list[Delta]:
        return [op for op in self.ops if isinstance(op, Delta)]


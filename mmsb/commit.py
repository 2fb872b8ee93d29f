"""The commit pipeline: the one path every commit takes.

A write, a batch, a transaction, a schema change, a deferred wave and a device wave all become one call of
:meth:`CommitPipeline.commit`. It owns the epoch and transaction-id counters, validation against the history of
open transactions, apply with undo, the propagation wave (eager, deferred or given by a device), the log append and
sync, the conflict history, the counters, memory enforcement and the after-commit hooks. A failure at any step
rolls every earlier step back: the buffer, the log and the counters are exactly as before.

The cheaper strategies for the same commit are chosen here and nowhere else (docs/architecture.md): a commit whose
changed positions nobody needs is logged first and merged in place (:meth:`CommitPipeline._blind`), a whole-page
assignment nobody reads is two copies (:meth:`CommitPipeline._apply`), and a write of a few float64 values to a
page that rules read takes the point kernel before the engine's ordinary wave (:meth:`CommitPipeline._point`).
The pipeline owns the buffer's lock (:class:`BufferLock`); a write calls nothing in the buffer (schema operations and
errors do).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

import numpy as np

from mmsb import _kernels, _ops
from mmsb.delta import Delta, Txn, covers_page
from mmsb.devices import CPU, POINT_VALUES, backend_of
from mmsb.errors import InvalidDeltaError, MMSBError, PageNotFoundError
from mmsb.propagate import Change, UndoLog
from mmsb.scratch import ScratchPool

if TYPE_CHECKING:  # pragma: no cover
    from mmsb.buffer import Buffer
    from mmsb.txn import Transaction

_F64 = np.dtype(np.float64)
_POINT = POINT_VALUES   # a write of at most this many values may take the point strategy (CommitPipeline._point)

#: a device wave: given the undo log, run the wave on the device and return ``{page name: Change}``
DeviceWave = Callable[[UndoLog], dict]


class ConflictHistory:
    """What each commit changed (``{page: positions or None}``), kept only while a transaction that tracks reads
    or holds intents is open, so that such a transaction can be validated at its commit."""

    __slots__ = ("entries", "tracking")

    def __init__(self) -> None:
        self.entries: list[tuple[int, dict]] = []
        self.tracking = 0

    def record(self, epoch: int, changed: dict) -> None:
        if self.tracking:
            self.entries.append((epoch, changed))

    def trim(self, oldest_start: Optional[int]) -> None:
        """Forget what no open tracking transaction can conflict with."""
        if oldest_start is None:
            self.entries.clear()
        else:
            self.entries = [h for h in self.entries if h[0] > oldest_start]


class PendingWave:
    """Deferred propagation: the changes and forced recomputes waiting for :meth:`Buffer.propagate`."""

    __slots__ = ("changes", "force")

    def __init__(self) -> None:
        self.changes: dict[str, Change] = {}
        self.force: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.changes or self.force)

    def add(self, changes: dict, force: Iterable[str], undo: UndoLog, reads: Callable[[str], bool]) -> None:
        """Queue ``changes`` (of pages that ``reads`` says rules read) and ``force``; ``undo`` restores."""
        saved_changes, saved_force = dict(self.changes), set(self.force)

        def restore() -> None:
            self.changes, self.force = saved_changes, saved_force

        undo.action(restore)
        for name, ch in changes.items():
            if reads(name):
                self.changes[name] = self.changes[name].merged_after(ch) if name in self.changes else ch
        self.force |= set(force)

    def take(self, undo: UndoLog) -> tuple[dict, set]:
        """Everything queued (the queue is empty after it; ``undo`` puts it back)."""
        changes, force = self.changes, self.force
        self.changes, self.force = {}, set()

        def restore() -> None:
            self.changes, self.force = changes, force

        undo.action(restore)
        return changes, force

    def targets(self, rules_from: Callable[[str], list]) -> list[str]:
        """The pages a full recompute must refresh to apply everything queued (for a checkpoint to record)."""
        out = set(self.force)
        for name in self.changes:
            out.update(r.dst for r in rules_from(name))
        return sorted(out)

    def forget_page(self, name: str) -> None:
        """A dropped page is neither an input nor a target of a wave any more."""
        self.changes.pop(name, None)
        self.force.discard(name)


class BufferLock:
    """``with lock:`` takes the buffer's RLock, counting a wait in ``counters["lock_waits"]`` when it was not free
    at once. The commit pipeline owns it; the buffer's readers and schema changes take the same lock."""

    __slots__ = ("rlock", "_counters")

    def __init__(self, counters: dict) -> None:
        self.rlock = threading.RLock()
        self._counters = counters

    def __enter__(self) -> None:
        lock = self.rlock
        if not lock.acquire(blocking=False):
            self._counters["lock_waits"] += 1
            lock.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.rlock.release()


class _Commit(UndoLog):
    """The state of one commit in flight; it is its own undo log (:class:`~mmsb.propagate.UndoLog`: what a step
    changed, to restore if the commit fails)."""

    __slots__ = ("epoch", "changes", "force", "logged", "n_user", "released")

    def __init__(self, epoch: int) -> None:
        self.steps: list[Callable[[], None]] = []
        self.pool = None
        self.epoch = epoch
        self.changes: dict[str, Change] = {}
        self.force: set[str] = set()
        self.logged: list = []
        self.n_user = 0
        self.released: list = []


class CommitPipeline:
    """The commit path of one :class:`~mmsb.buffer.Buffer` (see the module docstring)."""

    def __init__(self, buf: "Buffer", eager: bool = True) -> None:
        self.buf = buf
        self.eager = eager
        self.epoch = 0
        self.txid = 0
        self.history = ConflictHistory()
        self.pending = PendingWave()
        self.counters = {"commits": 0, "conflicts": 0, "aborts": 0, "lock_waits": 0, "deltas": 0,
                         "torn_tail_bytes": 0}
        self.after_commit: list[Callable[[int], None]] = []
        self.lock = BufferLock(self.counters)
        self.scratch = ScratchPool()        # whole-page old values of the general path (see _apply)

    # -- the pipeline ---------------------------------------------------------------------------------------
    def commit(self, ops: list, tx: Optional["Transaction"] = None, *, propagate: bool = False,
               device_wave: Optional[DeviceWave] = None, skip_empty: bool = False) -> int:
        """Commit ``ops`` (deltas and schema operations) atomically at a new epoch and return it.

        ``propagate``: run the queued deferred wave. ``device_wave``: the derived changes come from a device
        (a GPU graph wave) instead of the engine. ``skip_empty``: a commit that would log nothing takes no epoch
        (the current one is returned). Nothing is left applied, logged or counted if any step fails.
        """
        buf = self.buf
        lock = self.lock.rlock                  # (BufferLock, inline: this is every write's path)
        if not lock.acquire(blocking=False):
            self.counters["lock_waits"] += 1
            lock.acquire()
        try:
            if buf._closed or buf._readonly or buf._log.poisoned is not None:
                buf._check_writable()           # (raises the error that says which)
            if tx is not None and self.history.tracking:
                try:
                    tx.validate(self.history.entries)
                except MMSBError:
                    self.counters["conflicts"] += 1
                    raise
            c = _Commit(self.epoch + 1)
            point = len(ops) == 1 and tx is None and device_wave is None and not propagate \
                and type(ops[0]) is Delta and buf._graph.has_rules_from(ops[0].page)
            blind = self._blind(ops) if ops and not point else None
            if blind is not None:
                token = self._log_then_apply(c, ops, blind)
            elif point and (token := self._point(c, ops[0])) is not None:
                pass
            else:
                try:
                    self._apply(ops, c)
                    derived = self._wave(c, propagate, device_wave)
                    pages = buf._pages
                    for name, ch in derived.items():
                        page = pages[name]
                        vals = ch.new if ch.new is not None else backend_of(page).values_at(buf, page, ch.idx)
                        c.logged.append(Delta(name, vals, index=ch.idx, derived=True))
                    if skip_empty and not c.logged:
                        c.rollback()
                        return self.epoch
                    token = self._append(c)
                except BaseException:
                    c.rollback()
                    raise
                self._publish(c, derived)
        finally:
            lock.release()
        log = buf._log
        if log.sync_needed:                     # (only an fsync log has work left once append returned)
            log.sync(token)
        for hook in self.after_commit:
            hook(c.epoch)
        return c.epoch

    def _blind(self, ops: list) -> Optional[list]:
        """The strategy for a commit whose changed positions nobody needs: every op a delta to a CPU page that no
        rule reads, no transaction tracking reads, nothing queued, no cluster. Then ``[(page, array), ...]`` (the
        pages' storage, loaded now so that nothing can fail once the log has the commit), else None."""
        buf = self.buf
        pending = self.pending
        if self.history.tracking or pending.changes or pending.force or buf._cluster is not None \
                or type(ops[0]) is not Delta:
            return None
        if len(ops) > 1 and buf._memory.limit is not None:
            return None                     # (loading one page may evict another one held here)
        graph = buf._graph
        out = []
        for op in ops:
            if type(op) is not Delta:
                return None
            page = buf._pages.get(op.page)
            if page is None or graph.has_rules_from(op.page) or graph.is_derived(op.page) \
                    or backend_of(page) is not CPU:
                return None
            if op.accumulate and page.ops is None:
                return None
            out.append((page, buf._memory.array(page)))
        return out

    def _point(self, c: _Commit, op: Any) -> Optional[int]:
        """The strategy for a few float64 values written to a resident CPU page that rules read (eager, nothing
        queued, no transaction tracking, no memory limit, no cluster): the point merge kernel, then the engine's
        wave, the log and the publication as in the general path. Returns the log token, or None (nothing done)
        where the general path must run."""
        buf = self.buf
        if type(op) is not Delta or op.index is None or not 0 < op.index.size <= _POINT or not op.normalized \
                or not self.eager or self.pending.changes or self.pending.force or self.history.tracking \
                or buf._cluster is not None \
                or buf._memory.limit is not None:
            return None
        page = buf._pages.get(op.page)
        if page is None or page.backend is not None or page.device != "cpu":
            return None
        arr = page._data
        if arr is None or arr.dtype != _F64 or op.values.dtype != _F64 \
                or buf._graph.is_derived(op.page):
            return None
        if op.accumulate:
            codes = page.ops
            if codes is None:
                return None
            code = codes[0]
        else:
            code = _ops.OP_ASSIGN
        idx = op.index
        old, moved, count = _kernels.point.apply_few(arr, idx, op.values, code)
        c.n_user = 1
        c.logged.append(op)
        try:
            if count == idx.size:
                ch = Change(idx, old)
            else:
                moved = moved.view(np.bool_)
                ch = Change(idx[moved], old[moved]) if count else None
            derived = buf._engine.point_wave(page.name, ch, c) if ch is not None else {}
            if derived:
                pages = buf._pages
                for name, dch in derived.items():
                    dst = pages[name]
                    data = dst._data if dst.backend is None and dst.device == "cpu" else None
                    vals = data[dch.idx] if data is not None else backend_of(dst).values_at(buf, dst, dch.idx)
                    # (positional, as Buffer._prepare: page values index mask accumulate source metadata derived)
                    c.logged.append(Delta(name, vals, dch.idx, None, False, None, None, True))
            token = self._append(c)
        except BaseException:
            c.rollback()
            arr[idx] = old
            raise
        if ch is not None:
            c.changes[page.name] = ch
        self._publish(c, derived)
        return token

    def _log_then_apply(self, c: _Commit, ops: list, targets: list) -> int:
        """Log first, then merge each delta in place with no undo log, no old values and no wave (the pages'
        storage is resident and the deltas are validated: applying them cannot fail). Returns the log token."""
        buf = self.buf
        c.logged = list(ops)
        c.n_user = len(ops)
        if not buf._log.keeps_deltas:               # a log that encodes deltas stores them sorted
            for op in ops:
                op.normalize()
        token = self._append(c)
        for (page, arr), op in zip(targets, ops):
            CPU.apply_blind(page, op, arr)
        self._publish(c, {})
        return token

    def _apply(self, ops: list, c: _Commit) -> None:
        """Apply every operation in order, recording undo steps; collect the changed positions per page.

        Whole-page old values (of a page written entirely, or of a link target recomputed in full by the wave)
        go to arrays of the pipeline's scratch pool, reused once nothing references them, unless a memory limit
        is set (the pool's arrays are not counted against it)."""
        buf = self.buf
        graph = buf._graph
        if buf._memory.limit is None:
            c.pool = self.scratch
        pre = {}
        if len(ops) > 1:
            for op in ops:
                if type(op) is Delta and not op.normalized:
                    op.normalize()
            pre = self._device_batches(ops, c)
        for op in ops:
            if type(op) is Delta:
                c.n_user += 1
                page = buf._pages.get(op.page)
                if page is None:
                    raise PageNotFoundError(f"no page named {op.page!r}")
                name = page.name
                if graph.is_derived(name):
                    raise InvalidDeltaError(f"page {name!r} became derived; the write is refused")
                if not op.normalized:
                    op.normalize()
                if id(op) in pre:
                    ch = pre.pop(id(op))
                elif not op.accumulate and backend_of(page) is CPU and not self.history.tracking \
                        and not graph.has_rules_from(name) and covers_page(op.mask):
                    # nobody needs the changed positions: two copies instead of the per-element kernel
                    ch = CPU.overwrite(buf, page, op.values, c)
                else:
                    ch = backend_of(page).apply_delta(buf, page, op, c)
                if ch is not None:
                    c.changes[name] = c.changes[name].merged_after(ch) if name in c.changes else ch
            else:
                buf._apply_schema(op, c)
            c.logged.append(op)

    def _device_batches(self, ops: list, undo: UndoLog) -> dict:
        """Deltas that a device applies together (one launch per group): ``{id(delta): Change or None}``."""
        from mmsb import devices

        out: dict = {}
        for fam, backend in devices.loaded().items():
            if fam != "cpu":
                out.update(backend.apply_batch(self.buf, ops, undo))
        return out

    def _wave(self, c: _Commit, propagate: bool, device_wave: Optional[DeviceWave]) -> dict:
        """The derived changes of this commit: from the engine (eager, or the deferred queue) or a device."""
        buf = self.buf
        if device_wave is not None:
            return device_wave(c)
        pending = self.pending
        if propagate or (self.eager and (pending.changes or pending.force)):
            changes, force = self.pending.take(c)
            for name, ch in c.changes.items():
                changes[name] = changes[name].merged_after(ch) if name in changes else ch
            force |= c.force
            return buf._engine.wave(changes, c, force)
        if self.eager:
            if not c.changes and not c.force:
                return {}                   # (a schema change that moves nothing: no wave to run)
            return buf._engine.wave(c.changes, c, c.force)
        self.pending.add(c.changes, c.force, c, buf._graph.has_rules_from)
        return {}

    def _append(self, c: _Commit) -> int:
        """Log the transaction (user operations, then derived deltas); the txid is taken only on success."""
        epoch = c.epoch
        for op in c.logged:
            if type(op) is Delta:
                op.epoch = epoch
        token = self.buf._log.append(Txn(epoch, self.txid + 1, c.logged))
        self.txid += 1
        return token

    def _publish(self, c: _Commit, derived: dict) -> None:
        """The commit is logged: make it visible (epoch, page epochs, history, counters, memory)."""
        buf = self.buf
        epoch = c.epoch
        for page in c.released:
            buf._memory.release(page)
        self.epoch = epoch
        pages = buf._pages
        for op in c.logged:
            if type(op) is Delta:
                page = pages.get(op.page)
                if page is not None:
                    page.epoch = epoch
        if self.history.tracking:
            rec = {n: ch.idx for n, ch in c.changes.items()}
            rec.update({n: ch.idx for n, ch in derived.items()})
            rec.update({n: None for n in c.force})
            self.history.record(epoch, rec)
        self.counters["commits"] += 1
        self.counters["deltas"] += c.n_user + len(derived)
        if buf._memory.limit is not None:
            buf._memory.enforce()

    # -- transactions -----------------------------------------------------------------------------------------
    def track(self, step: int) -> None:
        """An open transaction that tracks reads or holds intents starts (+1) or ends (-1)."""
        self.history.tracking += step

    # -- recovery ---------------------------------------------------------------------------------------------
    def replayed(self, epoch: int, txid: int) -> None:
        """A transaction of the log was replayed (open, time travel): the counters follow it."""
        self.epoch = epoch
        if txid > self.txid:
            self.txid = txid

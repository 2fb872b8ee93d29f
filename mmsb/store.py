"""A store directory: the writer lock, open modes, recovery (checkpoint + log replay), checkpoints, compaction.

Layout (mmsb.layout, docs/FORMAT.md): ``LOCK`` (the writer's OS lock, no data), ``STORE`` (identity, mmsb.identity),
``log/`` (segments), ``checkpoints/`` and ``spill/`` (cold pages while the buffer is open).
"""
from __future__ import annotations

import fcntl
import mmap
import os
import uuid
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

import numpy as np

from mmsb import _kernels
from mmsb.buffer import Buffer, _NullLog
from mmsb.checkpoint import (checkpoint_digest, checkpoint_path, checkpoint_refs, checkpoint_store_id,
                             list_checkpoints, load_checkpoint, remove_checkpoint, write_checkpoint)
from mmsb.container import PageRef
from mmsb.errors import ClosedError, CorruptionError, HistoryError, StoreLockedError
from mmsb.fileio import fsync_dir
from mmsb.identity import STORE_VERSION, is_store, read_store_file, write_store_file
from mmsb.layout import LOCK_FILE, LOG_DIR, MANIFEST_FILE, SPILL_DIR, STORE_FILE, cleanup_temp
from mmsb.log import DurableLog
from mmsb.log import segment as S
from mmsb.manifest import Manifest, new_manifest, read_manifest, reconcile
from mmsb.memory import default_block_cache


# Automatic checkpoints (issue #16.11): after a commit, once the log written since the newest checkpoint holds
# AUTO_CHECKPOINT (a factor, default 1.0) times the bytes of the pages, and at least AUTO_CHECKPOINT_MIN_BYTES,
# the store checkpoints, so that a reopen replays at most about one state's worth of log whatever the history's
# length. MMSB_AUTO_CHECKPOINT=off (or 0) turns it off; a number sets the factor (open(..., auto_checkpoint=...)
# per store); MMSB_AUTO_CHECKPOINT_MIN_BYTES sets the floor.
AUTO_CHECKPOINT_MIN_BYTES = int(os.environ.get("MMSB_AUTO_CHECKPOINT_MIN_BYTES", 8 * 2**20))
# Automatic checkpoints are incremental: a page unchanged since the newest checkpoint (same page epoch) is not
# copied or written again; the new checkpoint borrows its chunks from the file that holds them (container version
# 3). The background thread writes with no worker pools, whole chunks per call, so that it takes the GIL rarely
# (a committing thread that has to wait for it would lose more than the pools gain). It runs at the process's
# priority: lowering it (nice) made commits wait for the GIL while the lowered thread, holding it, was not
# scheduled.
_COPY_BLOCK = 2**20          # pages of this size or more are copied into resident copy buffers (see below)
# The copy of a changed large page is taken under the buffer lock, so it is on the committing thread's clock: it
# runs on the kernels' threads (merge.copy_into, 2-3x a single-threaded copy on 2 cores). It goes into a resident
# buffer (mmap'd, faulted in when made) that the store keeps from one automatic checkpoint to the next: a copy into
# fresh or lazily freed memory (MADV_FREE, the allocator's block cache) costs page faults or page-table updates
# for every 4 KiB, about as much again as the copy itself. The first buffers are made by a helper thread once the
# log holds half the threshold, so that even the first copy faults nothing. They are held while the store is open
# with the policy on (at most one copy of the large pages, within the allocator's budget for freed blocks,
# spare_budget; none under a memory limit, where the allocator's blocks are used as before) and released at close.
_PACE_BYTES = 4 * 2**20      # the background flush writes the log back this many bytes at a time (fileio)
# A clean close checkpoints (incrementally) when the log since the newest checkpoint holds at least
# SHUTDOWN_CHECKPOINT_MIN_BYTES and SHUTDOWN_CHECKPOINT_FRACTION x the page bytes, as PostgreSQL writes a shutdown
# checkpoint: the next open then replays almost nothing. A crash leaves the tail the automatic policy bounds. On
# whenever automatic checkpoints are (MMSB_SHUTDOWN_CHECKPOINT=off turns it off alone).
SHUTDOWN_CHECKPOINT = os.environ.get("MMSB_SHUTDOWN_CHECKPOINT", "on").strip().lower() not in (
    "off", "0", "false", "no")
SHUTDOWN_CHECKPOINT_MIN_BYTES = int(os.environ.get("MMSB_SHUTDOWN_CHECKPOINT_MIN_BYTES", 2**20))
SHUTDOWN_CHECKPOINT_FRACTION = 0.05


def spare_budget() -> int:
    """The most bytes of copy buffers a store keeps between automatic checkpoints: the allocator's budget for
    freed large blocks (``MMSB_BLOCK_CACHE``, :func:`mmsb.memory.default_block_cache`; 0 keeps none)."""
    return default_block_cache()


def resident_buffer(nbytes: int) -> np.ndarray:
    """A page-aligned, writable uint8 array of ``nbytes`` in its own anonymous mapping, faulted in now where the
    platform can (MAP_POPULATE; the mapping call releases the GIL), released when the array is dropped."""
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    if flags:
        m = mmap.mmap(-1, nbytes, flags=flags | getattr(mmap, "MAP_POPULATE", 0))
    else:                                             # pragma: no cover - Windows: an anonymous mapping
        m = mmap.mmap(-1, nbytes)
    return np.frombuffer(m, np.uint8, nbytes)


def auto_checkpoint_factor(value: Any = None) -> Optional[float]:
    """The policy's factor from ``value`` (None: env MMSB_AUTO_CHECKPOINT, default on = 1.0); None when off."""
    if value is None:
        value = os.environ.get("MMSB_AUTO_CHECKPOINT", "on")
    if value is True:
        return 1.0
    if value is False:
        return None
    v = str(value).strip().lower()
    if v in ("on", "1", "true", "yes", ""):
        return 1.0
    if v in ("off", "0", "false", "no", "none"):
        return None
    try:
        f = float(v)
    except ValueError:
        raise ValueError(f"auto checkpoint setting must be on, off or a positive factor, got {value!r}") from None
    if not f > 0:
        raise ValueError(f"auto checkpoint factor must be positive, got {value!r}")
    return f


class Store:
    """The files behind a durable :class:`~mmsb.buffer.Buffer`."""

    def __init__(self, root: str, writable: bool):
        self.root = root
        self.writable = writable
        self._lock_fd: Optional[int] = None
        self.horizon = 0
        self.manifest: Optional[Manifest] = None    # None: a store written before the MANIFEST (STORE v1)
        self.store_id: Optional[str] = None
        self.checkpoints: list = []                 # the checkpoints this store uses (listed in the MANIFEST)
        self._log: Optional[DurableLog] = None
        self.before_unlock: Optional[Callable[[], None]] = None   # run by close() before the lock is released
        self._pins: dict = {}         # a reader's open descriptors of its checkpoints (kept through compactions)
        self.auto_factor: Optional[float] = auto_checkpoint_factor()
        self._ckpt_log_end = 0        # the log's logical end when the newest checkpoint was taken
        self.auto_checkpoints = 0
        self.auto_checkpoint_error: Optional[str] = None
        self._bg: Optional[threading.Thread] = None   # an automatic checkpoint being written
        # the newest checkpoint written or loaded: (epoch, {page name: (page epoch, PageRef)}), what an incremental
        # checkpoint may borrow from (None: nothing known, the next automatic checkpoint is full)
        self._layout: Optional[tuple] = None
        self.incremental_checkpoints = 0
        self.borrowed_pages = 0
        self.shutdown_checkpoints = 0
        self._alloc = None          # allocator whose blocks the copies use under a memory limit
        self._spares: list = []     # resident copy buffers (uint8 arrays) the next automatic checkpoint reuses
        self._spare_lock = threading.Lock()
        self._spare_cap = 0         # bytes of the large pages at the newest automatic checkpoint
        self._prep: Optional[threading.Thread] = None   # the helper that makes the first copy buffers

    @property
    def lost_ranges(self) -> list:
        """[(first, last)] epoch ranges whose history ``recovery="truncate"`` cut out: ``at(e)`` there (and
        any ``at(e)`` that would have to replay across one) raises HistoryError."""
        return list(self._log.gaps) if self._log is not None else []

    # -- lock -------------------------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the exclusive, non-blocking writer lock on ``LOCK``; raise StoreLockedError if held."""
        fd = os.open(os.path.join(self.root, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(f"store {self.root!r} is locked by another writer; open it with mode='r' "
                                   "to read beside it") from None
        self._lock_fd = fd

    def pin_checkpoints(self) -> None:
        """A reader opens every checkpoint it may use now, and reads through those descriptors later: a
        compaction beside it then cannot take them away."""
        for e in self.checkpoints:
            if e not in self._pins:
                self._pins[e] = os.open(checkpoint_path(self.root, e), os.O_RDONLY)

    def checkpoint_fd(self, epoch: int) -> Optional[int]:
        """The descriptor a reader pinned for checkpoint ``epoch`` (None: a writer, or not pinned: open the file)."""
        return self._pins.get(epoch)

    def close(self) -> None:
        """Release the writer lock -- after the files only this writer may touch (its spill files) are gone, so
        that a writer opening right after never sees them removed under it."""
        try:
            self.wait_background()
            self._drop_spares()
            if self.before_unlock is not None:
                hook, self.before_unlock = self.before_unlock, None
                hook()
        finally:
            for fd in self._pins.values():
                os.close(fd)
            self._pins = {}
            if self._lock_fd is not None:
                try:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                finally:
                    os.close(self._lock_fd)
                    self._lock_fd = None

    # -- checkpoints and history ------------------------------------------------------------------------------
    def checkpoint(self, buf: Buffer, compress: Optional[bool] = None) -> int:
        self.wait_background()
        epoch = buf.epoch
        if epoch in self.checkpoints:
            return epoch
        # live views are safe under the buffer lock unless a memory limit may spill (and reuse) blocks meanwhile
        _, pages, rules = buf._snapshot(copy=buf._memory.limit is not None)
        fsync = buf._log.durability != "none"
        buf._log.flush(fsync)             # the log must be on disk up to the checkpoint before it is published
        # what the new checkpoint supersedes (older checkpoints, closed log segments) is cold from now on: let the
        # kernel drop its clean cached pages, so that writing the checkpoint reuses them instead of new memory
        self._drop_cold_cache(buf)
        self._publish(buf._log, epoch, pages, rules, self._extra(buf), fsync, compress)
        self._ckpt_log_end = buf._log.logical_end
        return epoch

    def loaded(self, snap) -> None:
        """The checkpoint ``snap`` (mmsb.checkpoint.Snapshot) was loaded at open: the next automatic checkpoint
        may borrow its unchanged pages' chunks."""
        epochs = {m.get("name"): m.get("epoch") for m, _ in snap.pages if isinstance(m, dict)}
        self._layout = (snap.epoch, {n: (epochs.get(n), ref) for n, ref in snap.layout.items()
                                     if isinstance(epochs.get(n), int)})

    def _extra(self, buf: Buffer) -> dict:
        extra = {"txid": buf._txid, "pending": buf._pipe.pending.targets(buf._graph.rules_from)}
        if self.store_id is not None:
            extra["store_id"] = self.store_id
        return extra

    def _publish(self, log: DurableLog, epoch: int, pages, rules, extra: dict, fsync: bool,
                 compress: Optional[bool], background: bool = False) -> None:
        """Write the checkpoint, list it in the MANIFEST once durable (a crash before: an unlisted leftover),
        and record a CHECKPOINT_MARK in the log. ``pages`` may hold PageRefs (borrowed chunks)."""
        info: dict = {}
        path = write_checkpoint(self.root, epoch, pages, rules, extra=extra, fsync=fsync, compress=compress,
                                info=info, background=background)
        if self.manifest is not None:
            self.manifest.add_checkpoint(epoch, checkpoint_digest(path))
        self.checkpoints = sorted(set(self.checkpoints) | {epoch})
        man = info.get("manifest")
        if man is not None and (self._layout is None or epoch > self._layout[0]):
            layout = {}
            for ent in man["pages"]:
                meta = ent["meta"]
                if isinstance(meta.get("epoch"), int):
                    layout[meta["name"]] = (meta["epoch"], PageRef(ent["dtype"], list(ent["shape"]),
                                                                   [dict(c, ref=c.get("ref", epoch))
                                                                    for c in ent["chunks"]]))
            self._layout = (epoch, layout)
        try:
            log.mark_checkpoint(epoch)
        except ClosedError:
            pass                          # the mark only records the publication; the log closed meanwhile

    def wait_background(self) -> None:
        """Wait for an automatic checkpoint being written in the background."""
        t = self._bg
        if t is not None:
            t.join()
            self._bg = None

    def after_commit(self, buf: Buffer, epoch: int) -> None:
        """The automatic checkpoint policy, called after each commit (outside the buffer lock): once the log
        written since the newest checkpoint outweighs the pages (see AUTO_CHECKPOINT_MIN_BYTES), copy the state
        under the buffer lock and write the checkpoint on a background thread (one at a time), so that commits
        go on meanwhile. A failure there leaves the previous checkpoints as they were (``stats()``)."""
        f = self.auto_factor
        if f is None or not self.writable:
            return
        log = buf._log
        since = log.logical_end - self._ckpt_log_end
        if since < AUTO_CHECKPOINT_MIN_BYTES or (self._bg is not None and self._bg.is_alive()):
            return
        pages = list(buf._pages.values())
        state = sum(p.nbytes for p in pages)
        if not all(p.checkpointable for p in pages):
            return          # (a sharded page, mmsb.dask, is not checkpointed: its history is the log)
        if since < f * state:
            if 2 * since >= f * state:
                self._prepare_spares(buf, pages)
            return
        with buf._locked():
            if buf._closed or buf.epoch in self.checkpoints or (self._bg is not None and self._bg.is_alive()):
                return
            ep = buf.epoch
            lent: list = []
            pages, rules = self._incremental_snapshot(buf, lent=lent)
            extra = self._extra(buf)
            self._ckpt_log_end = log.logical_end
            fsync = log.durability != "none"
            # started under the buffer lock: every join (checkpoint, compact, close, here) holds it too
            self.wait_background()
            self._bg = threading.Thread(target=self._run_auto, args=(log, ep, pages, rules, extra, fsync, lent),
                                        name="mmsb-auto-checkpoint", daemon=True)
            self._bg.start()

    def shutdown_checkpoint(self, buf: Buffer) -> None:
        """Called by a clean close while the log is still open (under the buffer lock): wait for the automatic
        checkpoint in flight, then, when the policy is on and the log since the newest checkpoint is long enough
        (SHUTDOWN_CHECKPOINT_*), write an incremental checkpoint in the foreground. A failure leaves the store
        as it was (its previous checkpoints and the whole log) and is reported with a RuntimeWarning."""
        self.wait_background()
        log = buf._log
        if self.auto_factor is None or not SHUTDOWN_CHECKPOINT or not self.writable or buf._closed \
                or log.poisoned is not None or buf.epoch in self.checkpoints:
            return
        since = log.logical_end - self._ckpt_log_end
        pages = list(buf._pages.values())
        state = sum(p.nbytes for p in pages)
        if since < SHUTDOWN_CHECKPOINT_MIN_BYTES or since < SHUTDOWN_CHECKPOINT_FRACTION * state:
            return
        if not all(p.checkpointable for p in pages):
            return          # a sharded page (mmsb.dask) is not checkpointed: its history is the log
        try:
            pages, rules = self._incremental_snapshot(buf, copy=False)
            fsync = log.durability != "none"
            log.flush(fsync)
            self._publish(log, buf.epoch, pages, rules, self._extra(buf), fsync, None)
            self.shutdown_checkpoints += 1
        except Exception as exc:          # noqa: BLE001 - the store stays as it was; closing goes on
            import warnings

            self.auto_checkpoint_error = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"mmsb: the shutdown checkpoint of {self.root} failed ({exc}); the next open replays "
                          "the log since the previous checkpoint", RuntimeWarning, stacklevel=2)

    def _incremental_snapshot(self, buf: Buffer, copy: bool = True, lent: Optional[list] = None) -> tuple:
        """``(pages, rules)`` of the committed state for an automatic checkpoint (under the buffer lock): a page
        whose epoch is the one the newest checkpoint recorded for it (no logged delta touched it since: every
        change to a page is a logged delta, which sets its epoch) is a PageRef to the chunks that hold it; the
        others are copied (``copy=False``: live views, for a caller that holds the buffer lock until the
        checkpoint is written and no memory limit is set). Large ones are copied into the store's resident copy
        buffers, which are appended to ``lent`` (the caller hands them back with :meth:`_return_spares` once the
        checkpoint is written), or, under a memory limit or without ``lent``, into allocator blocks. A spilled,
        unchanged page is not reloaded."""
        base = self._layout[1] if self._layout is not None and self._layout[0] in self.checkpoints else {}
        pages = []
        matrices = []
        cap = 0
        for p in buf._pages.values():
            if p.kind == "matrix":
                matrices.append(p.to_schema())
                continue
            meta = buf._page_meta(p)
            backend = getattr(p, "backend", None)
            if backend is not None:
                # a page of another kind (sharded: mmsb.dask) copies itself, and is never borrowed: its derived
                # values are recomputed, not logged, so its epoch does not show every change
                pages.append((meta, backend.host_copy(p).reshape(p.shape)))
                continue
            if lent is not None and p.nbytes >= _COPY_BLOCK:
                cap += p.nbytes
            prev = base.get(p.name)
            if prev is not None and prev[0] == p.epoch and prev[1].dtype == meta["dtype"] \
                    and list(prev[1].shape) == list(meta["shape"]) and prev[1].files <= set(self.checkpoints):
                pages.append((meta, prev[1]))
                continue
            arr = buf._memory.array(p)
            if not copy and buf._memory.limit is None:
                out = arr.reshape(p.shape)
            elif arr.nbytes >= _COPY_BLOCK and lent is not None and buf._memory.limit is None:
                block = self._take_spare(arr.nbytes)
                lent.append(block)
                out = block.view(arr.dtype).reshape(p.shape)
                _kernels.merge.copy_into(out.reshape(-1), arr.reshape(-1))
            elif arr.nbytes >= _COPY_BLOCK:
                if self._alloc is None:
                    self._alloc = _kernels.alloc.Allocator()
                handle, out = self._alloc.alloc_view(arr.nbytes, arr.dtype, tuple(p.shape))
                self._alloc.free(handle)       # the view keeps the block until the write drops it (then cached)
                _kernels.merge.copy_into(out.reshape(-1), arr.reshape(-1))
            else:
                out = arr.reshape(p.shape).copy()
            pages.append((meta, out))
        rules = matrices + [r.to_schema() for r in buf._graph.rules()]
        if lent is not None:
            self._spare_cap = cap
        return pages, rules

    def _run_auto(self, log: DurableLog, ep: int, pages, rules, extra: dict, fsync: bool, lent: list) -> None:
        """The background half of an automatic checkpoint; ``lent``: the copy buffers that hold ``pages``, handed
        back once the checkpoint is written (nothing reads them after that)."""
        try:
            try:
                # the log on disk up to the checkpoint before it is published; paced, so that a commit that rolls
                # a segment meanwhile does not wait behind the whole log's writeback
                log.flush(fsync, paced=_PACE_BYTES)
            except ClosedError:
                pass                      # closing synced it (unless poisoned: checked next)
            if log.poisoned is not None:
                return
            self._publish(log, ep, pages, rules, extra, fsync, None, background=True)
            self.auto_checkpoints += 1
            borrowed = sum(1 for _, a in pages if isinstance(a, PageRef))
            if borrowed:
                self.incremental_checkpoints += 1
                self.borrowed_pages += borrowed
        except Exception as exc:          # noqa: BLE001 - reported in stats; the previous checkpoints stand
            self.auto_checkpoint_error = f"{type(exc).__name__}: {exc}"
        finally:
            self._return_spares(lent)

    # -- resident copy buffers --------------------------------------------------------------------------------
    def _take_spare(self, nbytes: int) -> np.ndarray:
        """A resident copy buffer of ``nbytes`` bytes: a kept one, or a new one (faulted in now)."""
        with self._spare_lock:
            for i, b in enumerate(self._spares):
                if b.nbytes == nbytes:
                    return self._spares.pop(i)
        return resident_buffer(nbytes)

    def _return_spares(self, lent: list) -> None:
        """Keep the buffers an automatic checkpoint used for the next one, and of the others kept (pages that
        checkpoint did not copy) as many as fit beside them in one copy of the large pages (``_spare_cap``), all
        within :func:`spare_budget`."""
        if not lent:
            return
        cap = min(self._spare_cap, spare_budget())
        with self._spare_lock:
            keep = []
            total = 0
            for b in list(lent) + self._spares:
                if total + b.nbytes <= cap:
                    keep.append(b)
                    total += b.nbytes
            self._spares = keep

    def _prepare_spares(self, buf: Buffer, pages: list) -> None:
        """Once per store, make the first copy buffers on a helper thread (no memory limit; the large pages of
        the host that have none yet), so that the first automatic checkpoint's copy faults in nothing."""
        if self._prep is not None or buf._memory.limit is not None:
            return
        with self._spare_lock:
            have = [b.nbytes for b in self._spares]
        sizes = []
        for p in pages:
            if p.kind == "matrix" or getattr(p, "backend", None) is not None or p.nbytes < _COPY_BLOCK:
                continue
            if p.nbytes in have:
                have.remove(p.nbytes)
            else:
                sizes.append(p.nbytes)
        if sum(sizes) > spare_budget():
            return

        def make() -> None:
            made = []
            try:
                made = [resident_buffer(n) for n in sizes]
            except (MemoryError, OSError):
                pass                      # the copies are then made into new buffers, as without this helper
            with self._spare_lock:
                self._spares.extend(made)

        self._prep = threading.Thread(target=make, name="mmsb-checkpoint-buffers", daemon=True)
        self._prep.start()

    def _drop_spares(self) -> None:
        """Release the copy buffers (at close)."""
        if self._prep is not None:
            self._prep.join()
        with self._spare_lock:
            self._spares = []

    def _drop_cold_cache(self, buf: Buffer) -> None:
        if not hasattr(os, "posix_fadvise"):
            return
        paths = [checkpoint_path(self.root, e) for e in list_checkpoints(self.root)]
        paths += buf._log.closed_segment_paths()
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def compact(self, buf: Buffer, keep: int) -> int:
        """Checkpoint, then drop the history older than ``keep`` epochs before now: the new horizon is exactly
        ``now - keep`` (a checkpoint of that epoch is written when none exists), so ``at(now - keep)`` works."""
        if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or keep < 0:
            raise HistoryError(f"compact(keep={keep!r}): keep must be a non-negative number of epochs")
        self.checkpoint(buf)
        target = buf.epoch - int(keep)
        if target <= self.horizon:
            return self.horizon
        if target not in self.checkpoints:
            self._checkpoint_past(buf, target)
        ckpts = self.checkpoints
        base = max((e for e in ckpts if e <= target), default=min(ckpts))
        # older checkpoints that kept (incremental) ones borrow chunks from stay, as data only: the horizon is
        # the base, and reopening finds it again (the first checkpoint the log follows)
        needed: set = set()
        todo = [e for e in ckpts if e >= base]
        while todo:                   # (and what those borrow from in turn: every listed checkpoint stays whole)
            refs = set(checkpoint_refs(checkpoint_path(self.root, todo.pop()))) - needed
            needed |= refs
            todo += refs
        old = [e for e in ckpts if e < base and e not in needed]
        if old and self.manifest is not None:       # unlisted first: a crash then leaves leftovers, not holes
            self.manifest.remove_checkpoints(old)
        for e in old:
            remove_checkpoint(self.root, e)
        self.checkpoints = [e for e in ckpts if e not in old]
        buf._log.drop_segments_before(base)
        self.horizon = base
        return base

    def _checkpoint_past(self, buf: Buffer, epoch: int) -> None:
        """Write (and list) a checkpoint of the committed state at a past ``epoch``, rebuilt as ``at(epoch)``."""
        view = buf._view(epoch)
        _, pages, rules = view._snapshot(copy=False)
        extra = {"txid": buf._txid}
        if self.store_id is not None:
            extra["store_id"] = self.store_id
        fsync = buf._log.durability != "none"
        path = write_checkpoint(self.root, epoch, pages, rules, extra=extra, fsync=fsync)
        if self.manifest is not None:
            self.manifest.add_checkpoint(epoch, checkpoint_digest(path))
        self.checkpoints = sorted(set(self.checkpoints) | {epoch})

    def snapshot_at(self, epoch: int) -> Optional[tuple]:
        """``(epoch, pages, rules)`` of the newest valid checkpoint at or before ``epoch`` (None if there is
        none): the base that time travel replays the log onto. HistoryError where that history is gone."""
        try:
            snap = load_checkpoint(self.root, max_epoch=epoch, epochs=[e for e in self.checkpoints
                                                                        if e >= self.horizon],
                                   fd_of=self.checkpoint_fd)
        except FileNotFoundError:
            raise HistoryError(f"epoch {epoch}: the checkpoint it needs was removed by a compaction") from None
        start = snap.epoch if snap is not None else 0
        for a, b in self.lost_ranges:
            if a <= epoch and b > start:
                raise HistoryError(f"epoch {epoch} cannot be rebuilt: the history of epochs {a}..{b} was cut "
                                   "out by recovery='truncate'")
        return None if snap is None else (snap.epoch, snap.pages, snap.rules)

    def stats(self) -> dict:
        return {"root": self.root, "checkpoints": list(self.checkpoints), "horizon": self.horizon,
                "lost_ranges": self.lost_ranges, "auto_checkpoint": self.auto_factor,
                "auto_checkpoints": self.auto_checkpoints, "auto_checkpoint_error": self.auto_checkpoint_error,
                "incremental_checkpoints": self.incremental_checkpoints, "borrowed_pages": self.borrowed_pages,
                "shutdown_checkpoints": self.shutdown_checkpoints}


def _wipe(root: str) -> None:
    for name in os.listdir(root):
        if name == LOCK_FILE:
            continue
        path = os.path.join(root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def _segment_has_records(path: str) -> bool:
    """Whether an unlisted segment holds any valid record, or a header naming another epoch (else it is what an
    interrupted roll left: a durable header, zeros at most)."""
    try:
        res = S.scan_segment(path)
    except OSError:
        return False
    if res.header is None:
        return False
    return bool(res.records) or res.header.base_epoch != S.parse_segment_name(os.path.basename(path))


def _segment_misnamed(path: str) -> bool:
    """A reader's view of an unlisted segment newer than its MANIFEST: a writer may be filling it (records are
    fine); only a header that names another epoch is damage."""
    try:
        with open(path, "rb") as f:
            hdr = S.parse_header(f.read(S.HEADER_SIZE), path)
    except (OSError, CorruptionError):
        return False
    return hdr.base_epoch != S.parse_segment_name(os.path.basename(path))


def _store_files(root: str, manifest: Optional[Manifest], writable: bool, strict: bool = True):
    """The segments ([(base, path)]) and checkpoints ([epoch]) of the store, checked against its MANIFEST:
    damage (a missing, unlisted, foreign or replaced file) raises CorruptionError; leftovers of an interrupted
    roll, checkpoint or compaction are removed by a writer and ignored by a reader."""
    segs = S.iter_segments(os.path.join(root, LOG_DIR))
    ckpts = list_checkpoints(root)
    if manifest is None:
        return segs, ckpts
    rec = reconcile(root, manifest, segs, [(e, checkpoint_path(root, e)) for e in ckpts],
                    segment_has_records=_segment_has_records if writable else _segment_misnamed,
                    checkpoint_store_id=checkpoint_store_id, checkpoint_digest=checkpoint_digest,
                    strict_unlisted=writable)
    if rec.problems:
        raise rec.problems[0]
    if writable and rec.leftovers:
        for path in rec.leftovers:
            os.unlink(path)
        for d in {os.path.dirname(p) for p in rec.leftovers}:
            fsync_dir(d)
    return [(b, p) for b, p, _ in rec.segments], rec.checkpoints


def open_store(root: str, mode: str, *, durability: str, memory_limit: Optional[int], device: str,
               propagation: str, cluster: Any, recovery: str, functions: Optional[dict[str, Callable]],
               segment_bytes: int, auto_checkpoint: Any = None) -> Buffer:
    """Open (or create) the store at ``root`` and recover its committed state.

    A reader (``mode="r"``) that finds the files changing under it (a compaction beside it) retries."""
    attempts = 8 if mode == "r" else 1
    for k in range(attempts):
        seen: dict = {}
        try:
            return _open_store(root, mode, durability=durability, memory_limit=memory_limit, device=device,
                               propagation=propagation, cluster=cluster, recovery=recovery, functions=functions,
                               segment_bytes=segment_bytes, seen=seen, auto_checkpoint=auto_checkpoint)
        except (CorruptionError, FileNotFoundError):
            if k == attempts - 1 or not _manifest_moved(root, seen.get("generation")):
                raise


def _manifest_moved(root: str, before: Optional[int]) -> bool:
    """A reader's open failed: did a writer change the store's file set meanwhile (then it may retry)?"""
    try:
        gen = read_manifest(root).generation
    except (OSError, CorruptionError):
        return False
    return before is not None and gen != before


def _open_store(root: str, mode: str, *, durability: str, memory_limit: Optional[int], device: str,
                propagation: str, cluster: Any, recovery: str, functions: Optional[dict[str, Callable]],
                segment_bytes: int, seen: dict, auto_checkpoint: Any = None) -> Buffer:
    exists = is_store(root)
    if mode in ("r", "r+") and not exists:
        raise FileNotFoundError(f"no mmsb store at {root!r}")
    if mode == "x" and os.path.exists(root) and (exists or os.listdir(root)):
        raise FileExistsError(f"{root!r} already exists")
    if os.path.exists(root) and not os.path.isdir(root):
        raise FileExistsError(f"{root!r} exists and is not a store directory")
    if not exists and os.path.isdir(root) and [n for n in os.listdir(root) if n not in (LOCK_FILE, MANIFEST_FILE)
                                               and not n.startswith((f".{STORE_FILE}.tmp-", f".{MANIFEST_FILE}.tmp-"))]:
        # (MANIFEST and ".STORE.tmp-*" are what a creation cut before STORE was renamed in place leaves: not
        # foreign files)
        raise FileExistsError(f"{root!r} is a non-empty directory that is not an mmsb store")
    writable = mode != "r"
    store = Store(root, writable)
    store.auto_factor = auto_checkpoint_factor(auto_checkpoint)
    log = None
    if writable:
        os.makedirs(root, exist_ok=True)
        store.lock()
    try:
        if writable and (mode == "w" or not exists):
            _wipe(root)
            # the MANIFEST first: STORE, written last, is what makes the directory a store
            sid = uuid.uuid4().hex
            manifest = new_manifest(root, sid)
            info = write_store_file(root, {"store_id": sid}, version=STORE_VERSION)
            fsync_dir(root)
        else:
            info = read_store_file(root)
            manifest = None
            if info["version"] >= 2:
                try:
                    manifest = read_manifest(root)
                except FileNotFoundError:
                    raise CorruptionError("the store's MANIFEST is missing", file=os.path.join(root, MANIFEST_FILE),
                                          offset=0, what="missing manifest") from None
                seen["generation"] = manifest.generation
        if writable:
            cleanup_temp(root)
        store.manifest = manifest
        store.store_id = info.get("store_id")
        seg_files, ckpts = _store_files(root, manifest, writable)
        store.checkpoints = list(ckpts)
        if not writable:
            store.pin_checkpoints()

        def open_log() -> DurableLog:
            # segments wholly covered by the newest checkpoint are not read now (indexed lazily; verify checks
            # them); the rest is scanned and checked, and the tail after the checkpoint decoded, while the
            # checkpoint loads
            lg = DurableLog(root, durability=durability, segment_bytes=segment_bytes, readonly=not writable,
                            recovery=recovery, skip_before=ckpts[-1] if ckpts else None, manifest=manifest,
                            segments=seg_files, checkpoint_epoch=ckpts[-1] if ckpts else None)
            if ckpts:
                try:
                    lg.predecode(ckpts[-1])
                except BaseException:
                    lg.close()
                    raise
            return lg

        buf = Buffer(log=_NullLog(), store=store, readonly=False, propagation=propagation,
                     memory_limit=memory_limit, spill_dir=os.path.join(root, SPILL_DIR) if writable else None,
                     device=device, functions=functions, cluster=cluster)
        if ckpts:
            with ThreadPoolExecutor(1) as ex:
                fut = ex.submit(open_log)
                try:
                    # a corrupt newest checkpoint: the next older valid one (+ a longer replay), with a warning
                    snap = load_checkpoint(root, blocks=buf._memory.block_loader(), fallback=True, epochs=ckpts,
                                           fd_of=store.checkpoint_fd)
                except BaseException:
                    try:
                        fut.result().close()
                    except BaseException:
                        pass
                    raise
                try:
                    log = fut.result()
                except BaseException:
                    if snap is not None and snap.blocks is not None:
                        snap.blocks.discard()
                    raise
        else:
            log = open_log()
            snap = None
        store._log = log
        buf._log = log
        if writable:
            store.before_unlock = buf._memory.close       # the spill directory goes while the lock is held
            log.before_close = _shutdown_hook(store, buf)
        if snap is not None:     # (a writer beside a reader may have published a newer one meanwhile: fine)
            store.loaded(snap)
            buf._load_snapshot(snap.epoch, snap.pages, snap.rules, blocks=snap.blocks)
            buf._txid = int((snap.extra or {}).get("txid", 0))
            pending = (snap.extra or {}).get("pending") or []
            buf._pipe.pending.force.update(n for n in pending if isinstance(n, str) and n in buf._pages)
        start = snap.epoch if snap is not None else 0
        first = log.first_epoch_hint
        if first is None and log.segment_bases:
            first = log.segment_bases[0]
        if first is not None and first > start + 1 and not _gap_covers(log.gaps, start + 1, first - 1):
            what = f"the history from epoch {start + 1} to {first - 1} is missing"
            raise CorruptionError(f"log corrupt: {what}", file=os.path.join(root, LOG_DIR), offset=0, what=what)
        if manifest is not None and log.last_epoch < start and recovery == "strict":
            what = f"the log ends at epoch {log.last_epoch}, before the checkpoint at {start}"
            raise CorruptionError(f"log corrupt: {what}", file=os.path.join(root, LOG_DIR), offset=0, what=what)
        expect = start + 1
        for txn in log.txns(since=start):
            if manifest is not None and txn.epoch != expect and not _gap_covers(log.gaps, expect, txn.epoch - 1):
                what = f"epoch {txn.epoch} does not follow the checkpoint at {start}"
                raise CorruptionError(f"log corrupt: {what}", file=os.path.join(root, LOG_DIR), offset=0, what=what)
            expect = txn.epoch + 1
            buf._replay(txn)
        log.release_scan()
        buf._recompute_sharded()           # sharded pages log no derived deltas (mmsb.dask): recompute them
        first = log.first_epoch_hint
        if ckpts and (first is None or first > 1):
            # compaction dropped the log before the oldest checkpoint it follows (older ones are kept only as
            # data that incremental checkpoints borrow)
            bases = [e for e in ckpts if first is not None and e >= first - 1]
            store.horizon = min(bases) if bases else max(ckpts)
        buf._horizon = store.horizon
        store._ckpt_log_end = log.logical_end - log.bytes_after(start)
        buf._readonly = not writable
        buf._place_pages()
        buf._counters["torn_tail_bytes"] = log.torn_tail_bytes
        return buf
    except BaseException:
        if log is not None:
            try:
                log.close()
            except Exception:
                pass
        store.close()
        raise


def _shutdown_hook(store: Store, buf: Buffer) -> Callable[[], None]:
    """The log's before-close hook: the store's shutdown checkpoint of ``buf`` (held weakly: no reference cycle,
    so that a buffer dropped without close() is still closed at once by its finalizer)."""
    import weakref

    ref = weakref.ref(buf)

    def hook() -> None:
        b = ref()
        if b is not None:
            store.shutdown_checkpoint(b)

    return hook


def _gap_covers(gaps, first: int, last: int) -> bool:
    """Whether epochs first..last are a recorded gap of lost history."""
    return any(a <= first and last <= b for a, b in gaps)

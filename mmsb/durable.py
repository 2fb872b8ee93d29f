"""A store directory: the writer lock, open modes, recovery (checkpoint + log replay), checkpoints, compaction.

Layout (docs/FORMAT.md): ``LOCK`` (the writer's OS lock, no data), ``STORE`` (identity and format version),
``log/`` (segments), ``checkpoints/`` and ``spill/`` (cold pages while the buffer is open).
"""
from __future__ import annotations

import fcntl
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

from mmsb.buffer import Buffer, _NullLog
from mmsb.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, remove_checkpoint, write_checkpoint
from mmsb.errors import StoreLockedError
from mmsb.log import DurableLog

STORE_FILE = "STORE"
LOCK_FILE = "LOCK"


def is_store(root: str) -> bool:
    return os.path.isfile(os.path.join(root, STORE_FILE))


class Store:
    """The files behind a durable :class:`~mmsb.buffer.Buffer`."""

    def __init__(self, root: str, writable: bool):
        self.root = root
        self.writable = writable
        self._lock_fd: Optional[int] = None
        self.horizon = 0

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

    def close(self) -> None:
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    # -- checkpoints and history ------------------------------------------------------------------------------
    def checkpoint(self, buf: Buffer, compress: Optional[bool] = None) -> int:
        epoch = buf.epoch
        if epoch in list_checkpoints(self.root):
            return epoch
        # live views are safe under the buffer lock unless a memory limit may spill (and reuse) blocks meanwhile
        _, pages, rules = buf._snapshot(copy=buf._memory.limit is not None)
        fsync = buf._log.durability != "none"
        buf._log.flush(fsync)             # the log must be on disk up to the checkpoint before it is published
        # what the new checkpoint supersedes (older checkpoints, closed log segments) is cold from now on: let the
        # kernel drop its clean cached pages, so that writing the checkpoint reuses them instead of new memory
        self._drop_cold_cache(buf)
        write_checkpoint(self.root, epoch, pages, rules, extra={"txid": buf._txid,
                         "pending": buf._pipe.pending.targets(buf._graph.rules_from)}, fsync=fsync, compress=compress)
        buf._log.mark_checkpoint(epoch)
        return epoch

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
        self.checkpoint(buf)
        target = buf.epoch - max(0, int(keep))
        ckpts = list_checkpoints(self.root)
        base = max((e for e in ckpts if e <= target), default=min(ckpts))
        for e in ckpts:
            if e < base:
                remove_checkpoint(self.root, e)
        buf._log.drop_segments_before(base)
        self.horizon = base
        return base

    def snapshot_at(self, epoch: int) -> Optional[tuple]:
        """``(epoch, pages, rules)`` of the newest valid checkpoint at or before ``epoch`` (None if there is
        none): the base that time travel replays the log onto."""
        snap = load_checkpoint(self.root, max_epoch=epoch)
        return None if snap is None else (snap.epoch, snap.pages, snap.rules)

    def stats(self) -> dict:
        return {"root": self.root, "checkpoints": list_checkpoints(self.root), "horizon": self.horizon}


def _wipe(root: str) -> None:
    for name in os.listdir(root):
        if name == LOCK_FILE:
            continue
        path = os.path.join(root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def open_store(root: str, mode: str, *, durability: str, memory_limit: Optional[int], device: str,
               propagation: str, cluster: Any, recovery: str, functions: Optional[dict[str, Callable]],
               segment_bytes: int) -> Buffer:
    """Open (or create) the store at ``root`` and recover its committed state."""
    from mmsb.checkpoint import read_store_file, write_store_file

    exists = is_store(root)
    if mode in ("r", "r+") and not exists:
        raise FileNotFoundError(f"no mmsb store at {root!r}")
    if mode == "x" and os.path.exists(root) and (exists or os.listdir(root)):
        raise FileExistsError(f"{root!r} already exists")
    if os.path.exists(root) and not os.path.isdir(root):
        raise FileExistsError(f"{root!r} exists and is not a store directory")
    if not exists and os.path.isdir(root) and [n for n in os.listdir(root)
                                               if n != LOCK_FILE and not n.startswith(".STORE.tmp-")]:
        # (a ".STORE.tmp-*" is what a creation cut before STORE was renamed in place leaves: not a foreign file)
        raise FileExistsError(f"{root!r} is a non-empty directory that is not an mmsb store")
    writable = mode != "r"
    store = Store(root, writable)
    log = None
    if writable:
        os.makedirs(root, exist_ok=True)
        store.lock()
    try:
        if writable and (mode == "w" or not exists):
            _wipe(root)
            write_store_file(root)
            from mmsb.log.durable import fsync_dir

            fsync_dir(root)
        else:
            read_store_file(root)
        ckpts = list_checkpoints(root)

        def open_log() -> DurableLog:
            # segments wholly covered by the newest checkpoint are not read now (indexed lazily; verify checks
            # them); the rest is scanned and checked while the checkpoint loads
            return DurableLog(root, durability=durability, segment_bytes=segment_bytes, readonly=not writable,
                              recovery=recovery, skip_before=ckpts[-1] if ckpts else None)

        buf = Buffer(log=_NullLog(), store=store, readonly=False, propagation=propagation,
                     memory_limit=memory_limit, spill_dir=os.path.join(root, "spill") if writable else None,
                     device=device, functions=functions, cluster=cluster)
        if ckpts:
            with ThreadPoolExecutor(1) as ex:
                fut = ex.submit(open_log)
                try:
                    snap = load_checkpoint(root, blocks=buf._memory.block_loader())
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
        buf._log = log
        if snap is not None:     # (a writer beside a reader may have published a newer one meanwhile: fine)
            buf._load_snapshot(snap.epoch, snap.pages, snap.rules, blocks=snap.blocks)
            buf._txid = int((snap.extra or {}).get("txid", 0))
            pending = (snap.extra or {}).get("pending") or []
            buf._pipe.pending.force.update(n for n in pending if isinstance(n, str) and n in buf._pages)
        for txn in log.txns(since=snap.epoch if snap is not None else 0):
            buf._replay(txn)
        first = log.first_epoch_hint
        if ckpts and (first is None or first > 1):
            store.horizon = min(ckpts)          # compaction dropped the log before the oldest checkpoint
        buf._horizon = store.horizon
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

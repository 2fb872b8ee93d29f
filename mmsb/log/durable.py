"""The durable, segmented, checksummed transaction log (root/log/<first epoch:020d>.seg).

Concurrency: ``append`` serialises writers on one lock; ``sync`` implements group commit (one leader fsyncs,
the other waiters sleep on a condition and return once the leader's fsync covered their token). A single
writer (one thread appending for a while, no other append in flight, everything before it already durable)
writes its transaction with ``RWF_DSYNC`` instead (Linux): one system call that returns once the bytes are on
disk, and its ``sync`` has nothing left to do.
A failed write or fsync poisons the log: that call and every later append/sync raise LogPoisonedError.

Write path: :func:`encode_txn` turns a transaction into its framed records (small deltas in one pass here, the
rest through :mod:`mmsb.log.records`; the framing and CRC32C in the ``logframe`` kernel), outside the lock;
``append`` writes them with one ``writev``. ``poisoned`` and ``logical_end`` are plain attributes.
"""
from __future__ import annotations

import bisect
import errno
import os
import struct
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from mmsb import _kernels
from mmsb import codecs as C
from mmsb.log.base import LogBase
from mmsb.fileio import fsync_dir, write_back_paced
from mmsb.layout import LOCK_FILE, LOG_DIR
from mmsb.delta import Delta, Txn
from mmsb.errors import CorruptionError, LogPoisonedError, ReadOnlyError, TornWriteWarning, ClosedError
from mmsb.log import records as R
from mmsb.log import segment as S

SEGMENT_BYTES = 64 * 2**20     # a segment is closed once it holds this many bytes (the default)
DURABILITY = ("fsync", "flush", "none")
RECOVERY = ("strict", "truncate")


def _iov_max() -> int:
    try:
        n = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):
        n = -1
    return 1024 if n <= 0 else min(n, 1024)


_IOV_MAX = _iov_max()         # buffers per gathered write
_JOIN_BYTES = 4096     # a commit up to this size is written as one joined buffer
# pwritev2(fd, iov, -1, RWF_DSYNC): write at the file position and return once the bytes are durable
_RWF_DSYNC = getattr(os, "RWF_DSYNC", 0) if hasattr(os, "pwritev") and sys.platform.startswith("linux") else 0
_DSYNC_AFTER = 16            # appends in a row from one thread before it writes with RWF_DSYNC
_PREALLOC = 1 << 20          # fsync mode: zeros written and synced ahead of the commits that overwrite them
_SETTLE_READS = 16           # reads of a reader's last segment while a failure in it keeps moving (a write in flight)
_KEEP_SCANNED = 512 * 2**20  # bytes of transactions the open scan keeps for the replay that follows it


def _gathered(bufs: list, write, done: int = 0) -> None:
    """Hand ``bufs`` in order to ``write(list of buffers) -> bytes taken`` (a gathered write, at most _IOV_MAX
    buffers a call), resuming after a short write in the middle of a buffer. ``done``: bytes of ``bufs``
    already written (a short first write): they are skipped."""
    todo = [b for b in bufs if len(b)]
    n = done
    while n:
        if n >= len(todo[0]):
            n -= len(todo.pop(0))
        else:
            todo[0] = memoryview(todo[0]).cast("B")[n:]
            n = 0
    while todo:
        n = write(todo[:_IOV_MAX])
        if n <= 0:
            raise OSError("short write")
        i = 0
        while i < len(todo) and n >= len(todo[i]):
            n -= len(todo[i])
            i += 1
        todo = todo[i:]
        if n:
            todo[0] = memoryview(todo[0]).cast("B")[n:]


# ------------------------------------------------------------ one transaction's bytes

#: encode deltas without a mask or metadata in :func:`encode_txn` itself (False: every operation through
#: :func:`mmsb.log.records.op_pieces`, the general encoder; the bytes are the same either way)
FAST_ENCODE = True

_BQ = struct.Struct("<BQ")           # a u8 + u64: a codec part's head, a 1-d shape
_H = struct.Struct("<H")
_B = struct.Struct("<B")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_frame = _kernels.logframe.frame_records   # (records, epoch, txid, salt) -> (buffers, total): segment.frame_records
_small = _kernels.logframe.small_delta     # the payload of a DELTA record whose values are stored raw
_SHAPES = {nd: struct.Struct(f"<B{nd}Q") for nd in range(R.MAX_NDIM + 1)}
_NDARRAY = np.ndarray
_INT64 = np.dtype(np.int64)
_MAX_STR = 0xFFFF
_RAW, _INDEX_DELTA_PACK, _BLOSC2 = C.RAW, C.INDEX_DELTA_PACK, C.BLOSC2
_DTYPES: dict = {}           # dtype -> (dtype.str, its u8 length + ascii) for an allowed little-endian dtype, or None


def _dtype_head(dt: np.dtype) -> Optional[tuple[str, bytes]]:
    """``(dtype.str, the dtype part of a values header)`` for a dtype stored as it is; None for any other
    (a big-endian dtype to convert, one that cannot be stored: the general encoder's cases)."""
    ds = dt.str
    got = (ds, _B.pack(len(ds)) + ds.encode("ascii")) if ds in C.ALLOWED_DTYPES else None
    if len(_DTYPES) >= 64:
        _DTYPES.clear()
    _DTYPES[dt] = got
    return got


def encode_txn(ops: list, epoch: int, txid: int, salt: Optional[bytes], commit: bool = True
               ) -> tuple[list, int, int, int, list]:
    """One transaction as the records docs/FORMAT.md specifies: ``(buffers, total, raw, encoded, records)``.

    ``buffers`` (``total`` bytes) are the framed records in order (each: header, payload buffers, CRC trailer),
    then the COMMIT record when ``commit``; ``raw``/``encoded``: the bytes of the arrays before and after their
    codecs; ``records``: ``[(record type, payload buffers)]``, to frame again under another segment's salt
    (``salt=None``: not framed, ``buffers`` is empty). Raw values are views of the deltas' arrays: write them
    before these change.

    A delta without a mask or metadata (a sparse write, a derived delta, a whole-value delta) whose values have
    an allowed little-endian dtype and fit one blosc2 chunk is encoded here, in one pass and without a call
    into another module: the bytes of :func:`mmsb.log.records.delta_pieces`, the same codec choices
    (:func:`mmsb.codecs.encode_index`, :class:`mmsb.codecs.AdaptiveValues` with its state) and the same
    statistics. Every other operation goes through the general encoder (and raises there what it refuses).
    The records are framed by the log framing kernel (``mmsb._kernels.logframe``, as
    :func:`mmsb.log.segment.frame_records`)."""
    bq = _BQ.pack
    fast = FAST_ENCODE and C._LITTLE
    av = R._VALUES
    miss_of = av._miss
    small_bytes, max_ndim, chunk = C.SMALL, R.MAX_NDIM, C.BLOSC_CHUNK
    f_acc, f_der, f_src, f_sparse, delta_rec = R.F_ACCUMULATE, R.F_DERIVED, R.F_SOURCE, R.F_SPARSE, R.DELTA
    records: list = []
    raw = enc = 0
    for op in ops:
        simple = False
        if fast and type(op) is Delta and op.mask is None and op.metadata is None:
            a, idx, src = op.values, op.index, op.source
            if type(a) is not _NDARRAY:
                a = np.asarray(a)
            if idx is not None and (type(idx) is not _NDARRAY or idx.dtype != _INT64):
                idx = np.asarray(idx, dtype=np.int64)
            name = op.page.encode("utf-8")
            if src is not None:
                src = str(src).encode("utf-8")
            dt = _DTYPES.get(a.dtype, False)
            if dt is False:
                dt = _dtype_head(a.dtype)
            simple = (dt is not None and a.ndim <= max_ndim and a.nbytes <= chunk
                      and len(name) <= _MAX_STR and (src is None or len(src) <= _MAX_STR)
                      and (idx is None or idx.ndim <= max_ndim))
        if not simple:
            rtype, pieces, r, e = R.op_pieces(op)
            raw += r
            enc += e
            records.append((rtype, pieces))
            continue
        # name, flags, source (records._delta_head)
        flags = (f_acc if op.accumulate else 0) | (f_der if op.derived else 0)
        if src is not None:
            flags |= f_src
        if idx is not None:
            flags |= f_sparse
        nbytes = a.nbytes
        if nbytes < small_bytes and a.ndim == 1 and a.flags.c_contiguous and (idx is None or (
                idx.ndim == 1 and idx.flags.c_contiguous)):
            # values stored raw (too small to try a codec) and 1-d arrays: the whole payload in one compiled call
            packed = None
            if idx is not None and idx.size > 1:
                try:
                    packed = C._k.encode_index(idx)
                except ValueError:                  # not non-decreasing: stored raw
                    pass
            payload, nidx = _small(name, flags, src, idx, packed, dt[1], a, _RAW, _INDEX_DELTA_PACK)
            key = (op.page, dt[0])
            miss_of[key] = miss_of.get(key, 0) + 1     # (a raw store is a miss of the adaptive codec)
            raw += nbytes
            enc += nbytes + nidx
            if idx is not None:
                raw += idx.nbytes
            records.append((delta_rec, [payload]))
            continue
        head = _H.pack(len(name)) + name + _B.pack(flags)
        if src is not None:
            head += _H.pack(len(src)) + src
        # index: shape, then delta-bitpacked when sorted and smaller, else raw (codecs.encode_index; the packed
        # form of 0 or 1 entries is never the smaller: b"" against b"", 9 bytes against 8)
        if idx is not None:
            data = None
            if idx.size > 1:
                flat = np.ascontiguousarray(idx).reshape(-1)
                try:
                    packed = C._k.encode_index(flat)      # ValueError: not non-decreasing, stored raw
                except ValueError:
                    packed = None
                if packed is not None and len(packed) < flat.nbytes:
                    cid, data = _INDEX_DELTA_PACK, packed
            if data is None:
                cid, data = _RAW, idx.tobytes()
            shape = bq(1, idx.shape[0]) if idx.ndim == 1 else _SHAPES[idx.ndim].pack(idx.ndim, *idx.shape)
            head += shape + bq(cid, len(data)) + data
            raw += idx.nbytes
            enc += len(data)
        # values: dtype, shape, then blosc2 when the page's stream is worth trying and it saves, else raw: a copy
        # when small, else a view (records.values_pieces, codecs.AdaptiveValues.encode, codecs.encode_values)
        small = nbytes < small_bytes
        if small:
            data = a.tobytes()
        else:
            if not a.flags.c_contiguous:
                a = np.ascontiguousarray(a)
            data = memoryview(a.reshape(-1)).cast("B").toreadonly()
        cid = _RAW
        key = (op.page, dt[0])
        miss = av._miss.get(key, 0)
        if miss >= av.misses and miss % av.probe:
            av._miss[key] = miss + 1
        else:
            if not small:
                bl = C._blosc2_module if C._blosc2_module is not None else C._blosc2()
                c = bl.compress2(data, typesize=a.dtype.itemsize, clevel=5, codec=bl.Codec.LZ4,
                                 filters=[bl.Filter.SHUFFLE],
                                 nthreads=C.NTHREADS if nbytes >= C.PARALLEL_BYTES else 1)
                if len(c) < nbytes and len(c) + 12 <= nbytes:         # one chunk: u32 count, u64 length
                    cid, data = _BLOSC2, _U32.pack(1) + _U64.pack(len(c)) + c
            av._miss[key] = 0 if cid != _RAW and len(data) <= (1.0 - av.min_saving) * nbytes else miss + 1
        shape = bq(1, a.shape[0]) if a.ndim == 1 else _SHAPES[a.ndim].pack(a.ndim, *a.shape)
        head += dt[1] + shape + bq(cid, len(data))
        raw += nbytes
        enc += len(data)
        records.append((delta_rec, [head, data]))
    if commit:
        records.append((R.COMMIT, [_U32.pack(len(ops))]))
    if salt is None:
        return [], 0, raw, enc, records
    bufs, total = _frame(records, epoch, txid, salt)
    return bufs, total, raw, enc, records


def _read_head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(S.HEADER_SIZE)


def _writer_active(root: str) -> bool:
    """Whether a writer holds the store's LOCK now (probed with a shared, non-blocking flock; creates nothing)."""
    import fcntl

    try:
        fd = os.open(os.path.join(root, LOCK_FILE), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)           # closing drops a lock taken here
    return False


@dataclass
class _Seg:
    base: int
    path: str
    salt: bytes
    size: int            # bytes on disk + buffered
    start: int           # logical offset of byte 0
    last_epoch: Optional[int] = None
    txns: int = 0
    lazy: bool = False   # not scanned at open (wholly covered by the checkpoint); indexed on first need


@dataclass(slots=True)
class _Entry:
    epoch: int
    txid: int
    seg: _Seg
    start: int           # file offset of the first record of the transaction
    end: int             # file offset just past its COMMIT


assemble = S.assemble


class DurableLog(LogBase):
    """Append-only log of committed transactions. See docs/FORMAT.md for the bytes."""

    def __init__(self, root: str, durability: str = "fsync", segment_bytes: int = SEGMENT_BYTES,
                 readonly: bool = False, recovery: str = "strict", skip_before: Optional[int] = None,
                 manifest=None, segments: Optional[list] = None, checkpoint_epoch: Optional[int] = None):
        """``manifest`` (mmsb.manifest.Manifest, None for a store written before it): the segment list it
        keeps current; ``segments``: [(base, path)] to read (default: every segment file in root/log);
        ``checkpoint_epoch``: the newest checkpoint's epoch (damage to history it covers is cut out as a gap
        by ``recovery="truncate"`` instead of cutting the log there)."""
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {DURABILITY}")
        if recovery not in RECOVERY:
            raise ValueError(f"recovery must be one of {RECOVERY}")
        self.root = os.fspath(root)
        self.dir = os.path.join(self.root, LOG_DIR)
        self.durability = durability
        self.segment_bytes = int(segment_bytes)
        self.readonly = readonly
        self.recovery = recovery
        self._lock = threading.RLock()
        self._cond = threading.Condition(threading.Lock())
        self._segs: list[_Seg] = []
        self._index: list[_Entry] = []
        self._epochs: list[int] = []
        self._marks: list[int] = []
        self._fd: Optional[int] = None
        self._alloc_end = 0
        self._old_fds: list[int] = []
        self._rfds: dict[str, int] = {}
        self.poisoned: Optional[str] = None   # why the log refuses commits (LogBase.poisoned)
        self.logical_end = 0     # bytes written to the log so far (all segments, as one stream)
        self._closed = False
        self._syncing = False
        self._synced = 0
        self._appending = 0      # append calls in flight (waiting for the lock included), under _count_lock
        self._count_lock = threading.Lock()
        self._last_thread = 0    # the thread that appended last, and how many appends from that one thread
        self._same_thread = 0    # in a row: RWF_DSYNC only once one thread has had the log to itself a while
        self._dsync = bool(_RWF_DSYNC) and durability == "fsync"
        self.sync_needed = durability == "fsync" and not readonly
        self._stats = dict(records=0, transactions=0, bytes=0, raw_bytes=0, encoded_bytes=0, fsyncs=0,
                           group_commit_batches=0, synced_commits=0, torn_tail_bytes=0, truncated_bytes=0,
                           appended_transactions=0, appended_bytes=0, dropped_segments=0)
        if not readonly:
            os.makedirs(self.dir, exist_ok=True)
        self._manifest = manifest
        self._seg_files = segments
        # a reader beside a live writer: an unfinished tail is the writer's transaction in flight, not damage
        self.quiet_tail = readonly and _writer_active(self.root)
        self._ckpt_epoch = checkpoint_epoch
        self.gaps: list = [tuple(g) for g in (manifest.gaps if manifest is not None else [])]
        self.lost: list = []     # epoch ranges this open cut out of the history (recovery="truncate")
        self._lazy_bound = 0     # every epoch in a lazy segment is <= this (the next segment's base - 1)
        self.before_close = None  # called once by close() while the log is still open (a clean shutdown)
        self._scanned: dict = {}  # epoch -> (TxnSpan, _Seg): transactions read and checked by the open scan
        self._decoded: dict = {}  # epoch -> Txn decoded ahead of the replay (predecode)
        self._open_scan(skip_before if recovery == "strict" else None)

    # ------------------------------------------------------------ open / recovery

    @staticmethod
    def _tail_has_data(path: str, offset: int) -> bool:
        """True when bytes after ``offset`` are not all zero (zeros are space reserved by a writer)."""
        with open(path, "rb") as f:
            f.seek(offset)
            while True:
                block = f.read(1 << 20)
                if not block:
                    return False
                if any(block):
                    return True

    def _truncate(self, path: str, size: int) -> None:
        if self.readonly:
            return
        with open(path, "r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())

    def _remove(self, path: str) -> None:
        if not self.readonly:
            os.unlink(path)
            fsync_dir(self.dir)

    def _open_scan(self, skip_before: Optional[int] = None) -> None:
        """Scan and check the segments; with ``skip_before`` (the epoch of the checkpoint the opener loads),
        segments that hold only epochs <= it are not read (only their 44-byte header is checked): nothing in
        them is replayed. They are scanned and fully checked on first need (time travel before the checkpoint,
        ``txns``/``query`` over their epochs, ``stats``, compaction); ``mmsb.verify`` always checks them.
        Every segment goes through :func:`mmsb.log.segment.check_segment`; this method only applies the
        opener's policy (repair a torn tail, raise, or cut with ``recovery="truncate"``)."""
        segs = list(self._seg_files) if self._seg_files is not None else S.iter_segments(self.dir)
        salts = dict(self._manifest.segments) if self._manifest is not None else {}
        contiguous = self._manifest is not None
        logical = 0
        nskip = 0
        if skip_before is not None:
            # segment k holds epochs < base of segment k+1: wholly covered when that base <= skip_before + 1;
            # the last segment is always scanned (torn-tail repair)
            while nskip < len(segs) - 1 and segs[nskip + 1][0] <= int(skip_before) + 1:
                nskip += 1
        for base, path in segs[:nskip]:
            head = os.pread(self._rfd(path), S.HEADER_SIZE, 0) if self.readonly else _read_head(path)
            hdr = S.parse_header(head, path)          # raises CorruptionError
            if hdr.base_epoch != base:
                raise CorruptionError("segment header epoch does not match its name", file=path, offset=32,
                                      what="segment base epoch")
            if base in salts and hdr.salt != salts[base]:
                raise CorruptionError("segment salt does not match the MANIFEST (a foreign or replaced segment)",
                                      file=path, offset=16, what="segment salt")
            size = os.fstat(self._rfd(path)).st_size if self.readonly else os.path.getsize(path)
            self._segs.append(_Seg(base, path, hdr.salt, size, logical, lazy=True))
            logical += size
        prev: Optional[int] = None
        kept = 0
        if nskip:
            self._lazy_bound = segs[nskip][0] - 1
            prev = self._lazy_bound
        last_epoch = prev or 0
        stop = False                  # recovery="truncate" cut the log: later segments go
        changed = False               # the segment list changed (the MANIFEST follows)
        rest = segs[nskip:]
        for i, (base, path) in enumerate(rest):
            is_last = i == len(rest) - 1
            next_base = rest[i + 1][0] if not is_last else None
            if stop:
                self._stats["truncated_bytes"] += os.path.getsize(path)
                self._remove(path)
                changed = True
                continue
            chk = S.check_segment(self._pinned(path), base, prev, salts.get(base), skip_epoch=skip_before,
                                  gaps=self.gaps, contiguous=contiguous)
            chk.path = path
            if is_last and self.readonly and chk.error is not None and not chk.torn:
                chk = self._settle_tail(chk, base, prev, salts.get(base), skip_before, contiguous)
            size = chk.size
            err = chk.error
            if err is None and chk.dangling and not is_last:
                err = (chk.good_end, "uncommitted records before a later segment")
            if err is not None and not (is_last and chk.torn):
                if self.recovery != "truncate":
                    raise CorruptionError(f"log corrupt: {err[1]}", file=path, offset=err[0], what=err[1])
                stop = self._cut_damage(chk, err, prev, next_base, rest[i + 1:])
                changed = True
                if not chk.header_ok:
                    continue
            elif err is not None and not chk.header_ok:          # a torn new segment (its header half-written)
                warnings.warn(TornWriteWarning(f"mmsb: removing torn segment {path} ({size} bytes)"))
                self._stats["torn_tail_bytes"] += size
                self._remove(path)
                changed = True
                continue
            seg = _Seg(base, path, chk.salt, size, logical)
            for ep in chk.marks:
                self._marks.append(ep)
            for t in chk.txns:
                self._index.append(_Entry(t.epoch, t.txid, seg, t.start, t.end))
                self._epochs.append(t.epoch)
                self._stats["records"] += len(t.records) + 1
                self._stats["transactions"] += 1
                # what the open replays next was just read and checked: keep it (up to a budget) so that the
                # replay neither reads nor checksums it again
                if (skip_before is None or t.epoch > skip_before) and kept < _KEEP_SCANNED:
                    self._scanned[t.epoch] = (t, seg)
                    kept += t.end - t.start
            if chk.txns:
                seg.last_epoch = last_epoch = prev = chk.txns[-1].epoch
                seg.txns = len(chk.txns)
            elif prev is None or prev < base - 1:
                prev = base - 1 if contiguous else prev
            good_end = chk.good_end
            if size != good_end:
                if is_last and err is not None and chk.torn:
                    if not self.quiet_tail:
                        warnings.warn(TornWriteWarning(f"mmsb: torn write at the end of {path}: "
                                                       f"{size - good_end} bytes dropped at offset {good_end}"))
                    self._stats["torn_tail_bytes"] += size - good_end
                elif is_last and chk.dangling and not stop:
                    if not self.quiet_tail:
                        warnings.warn(TornWriteWarning(
                            f"mmsb: incomplete transaction at the end of {path}: {size - good_end} bytes dropped "
                            f"at offset {good_end}"))
                    self._stats["torn_tail_bytes"] += size - good_end
                self._truncate(path, good_end)
                if not self.readonly:
                    seg.size = good_end
            self._segs.append(seg)
            logical += seg.size
        end = max(last_epoch, self._lazy_bound, (self._segs[-1].base - 1) if self._segs else 0)
        if self.recovery == "truncate" and self._ckpt_epoch is not None and end < self._ckpt_epoch:
            # the log no longer reaches the checkpoint: the epochs in between are gone from the history
            self._lose(end + 1, int(self._ckpt_epoch))
            changed = True
        if changed and not self.readonly and self._manifest is not None:
            self._manifest.gaps = list(self.gaps)
            self._manifest.set_segments([(s.base, s.salt) for s in self._segs])
        self._last_epoch = end
        self._stats["bytes"] = sum(s.size for s in self._segs)
        self._synced = logical
        self.logical_end = logical

    def _settle_tail(self, chk, base: int, prev: Optional[int], salt: Optional[bytes],
                     skip_before: Optional[int], contiguous: bool):
        """A reader (mode="r") found a failure with valid records after it in the last segment of its listing:
        damage, or a read racing the live writer's append. A read copies the file page by page without the
        writer's lock, so it can copy a page before the writer fills it (the zeros the writer reserved ahead, or
        half a record) and a later page after: a hole with complete records behind it, which is no torn tail.
        The writer writes in file order, so every byte before a record the reader saw complete was written
        before the read ended: read again, a write in flight is there and the failure moves on (or goes);
        damage reads the same. The check is repeated until the failure either goes (the result is then the
        reader's snapshot) or reads the same twice (damage: the caller raises). A failure that keeps moving
        (a writer appending faster than the reader reads) was a write in flight each time: the reader's
        snapshot ends at the last complete transaction before the newest one (as at a torn tail)."""
        path = chk.path
        for _ in range(_SETTLE_READS):
            again = S.check_segment(self._pinned(path), base, prev, salt, skip_epoch=skip_before, gaps=self.gaps,
                                    contiguous=contiguous)
            again.path = path
            if again.error is None or again.torn or again.error == chk.error or again.error[0] < chk.error[0]:
                if again.error != chk.error:
                    self.quiet_tail = True       # the bytes changed under the reader: a writer is appending
                return again
            self.quiet_tail = True
            chk = again
        chk.torn = True
        return chk

    def _lose(self, first: int, last: int) -> None:
        """Record that epochs first..last were cut out of the history (warned; ``at()`` there raises)."""
        if last < first:
            return
        self.lost.append((first, last))
        self.gaps.append((first, last))
        warnings.warn(TornWriteWarning(f"mmsb: recovery='truncate' dropped the committed history of epochs "
                                       f"{first}..{last}"))

    def _cut_damage(self, chk, err: tuple, prev: Optional[int], next_base: Optional[int], later: list) -> bool:
        """recovery="truncate": cut the damaged segment at its last good transaction (remove it when its header
        is bad). Damage to history that the newest checkpoint covers (every epoch it can hold is <= that
        checkpoint) costs only that history: later segments stay. Otherwise everything after it goes.
        Returns whether the later segments must be removed."""
        path, size = chk.path, chk.size
        last_good = chk.txns[-1].epoch if chk.txns else (prev if prev is not None else chk.base - 1)
        covered = (next_base is not None and self._ckpt_epoch is not None and next_base - 1 <= self._ckpt_epoch
                   and self._manifest is not None)
        if covered:
            hi = next_base - 1
        else:
            hi = last_good
            for base, p in later:                 # what the cut costs: every epoch after the damage
                try:
                    c = S.check_segment(p, base, contiguous=False)
                except OSError:
                    continue
                hi = max(hi, c.last_epoch or base - 1, base)
            if next_base is None:
                hi = max(hi, last_good + 1)       # at least the damaged transaction
        if not chk.header_ok:
            self._stats["truncated_bytes"] += size
            self._remove(path)
        else:
            self._stats["truncated_bytes"] += size - chk.good_end
        if covered:
            self._lose(last_good + 1, hi)
        else:
            warnings.warn(TornWriteWarning(
                f"mmsb: recovery='truncate' cut the log at {path} offset {err[0]} ({err[1]}): the commits after "
                f"epoch {last_good} (up to epoch {hi}) are lost"))
            self.lost.append((last_good + 1, hi))
        return not covered

    def index_skipped(self) -> None:
        """Index the segments skipped at open, reading them without holding the log's lock (commits go on
        meanwhile); only the final bookkeeping takes the lock. A no-op once everything is indexed."""
        with self._lock:
            lazy = [s.path for s in self._segs if s.lazy]
        if not lazy:
            return
        scanned = {}
        for path in lazy:            # closed segments do not change; a file gone meanwhile is left to the check
            try:
                scanned[path] = S.read_segment(self._pinned(path))
            except OSError:
                pass
        with self._lock:
            self._ensure_index(scanned)

    def _ensure_index(self, scanned: Optional[dict] = None) -> None:
        """Scan and index the segments skipped at open (see ``_open_scan``); call with ``_lock`` held.
        ``scanned``: segment bytes already read (by :meth:`index_skipped`), by path.

        The same checks as at open apply: any failure is a CorruptionError naming file and offset (these
        segments are never the last one, so nothing in them is a torn tail)."""
        lazy = [s for s in self._segs if s.lazy]
        if not lazy:
            return
        entries: list = []
        marks: list = []
        records = 0
        prev: Optional[int] = None
        contiguous = self._manifest is not None
        later = self._segs[len(lazy)] if len(self._segs) > len(lazy) else None
        for k, seg in enumerate(lazy):
            data = None
            if scanned and seg.path in scanned:
                data = scanned[seg.path]
            elif self.readonly:
                data = S.read_segment(self._pinned(seg.path))
            chk = S.check_segment(seg.path, seg.base, prev, seg.salt, gaps=self.gaps, data=data,
                                  contiguous=contiguous)
            err = chk.error
            if err is None and chk.dangling:
                err = (chk.good_end, "uncommitted records before a later segment")
            nxt = lazy[k + 1].base if k + 1 < len(lazy) else (later.base if later is not None else None)
            if err is None and chk.txns and nxt is not None and contiguous and chk.txns[-1].epoch != nxt - 1 \
                    and not S._in_gap(self.gaps, chk.txns[-1].epoch + 1, nxt - 1):
                err = (chk.txns[-1].end, f"segment ends at epoch {chk.txns[-1].epoch}, the next one starts at "
                                         f"{nxt}")
            if err is None and chk.txns and nxt is not None and chk.txns[-1].epoch >= nxt:
                err = (chk.txns[-1].start, f"epoch {chk.txns[-1].epoch} is not below the next segment's first "
                                           f"epoch {nxt}")
            if err is not None:
                raise CorruptionError(f"log corrupt: {err[1]}", file=seg.path, offset=err[0], what=err[1])
            for t in chk.txns:
                entries.append(_Entry(t.epoch, t.txid, seg, t.start, t.end))
                records += len(t.records) + 1
            marks += chk.marks
            seg.last_epoch, seg.txns = chk.last_epoch, len(chk.txns)
            if chk.txns:
                prev = chk.txns[-1].epoch
        for seg in lazy:          # all checked: commit the index (zeros after the last record are left as is)
            seg.lazy = False
        self._index[:0] = entries
        self._epochs[:0] = [e.epoch for e in entries]
        self._marks[:0] = marks
        self._stats["records"] += records
        self._stats["transactions"] += len(entries)
        if entries:
            self._last_epoch = max(self._last_epoch, entries[-1].epoch)

    # ------------------------------------------------------------ writing

    def _check_writable(self) -> None:
        if self._closed:
            raise ClosedError("the log is closed")
        if self.readonly:
            raise ReadOnlyError("the log is open read-only")
        if self.poisoned is not None:
            raise LogPoisonedError(f"the log is poisoned by an earlier failure: {self.poisoned}")

    def _poison(self, what: str, exc: BaseException) -> LogPoisonedError:
        self.poisoned = f"{what}: {exc}"
        with self._cond:
            self._cond.notify_all()
        return LogPoisonedError(f"mmsb log: {what} failed ({exc}); the log refuses further commits")

    def _write_buffers(self, bufs: list, total: int) -> None:
        """Write ``bufs`` (``total`` bytes) in order with gathered writes: no joined copy of a large commit."""
        if self.durability == "fsync":
            self._reserve(total)
        fd = self._fd
        if total <= _JOIN_BYTES:                # a small commit: one joined copy costs less than the iovecs
            bufs = [b"".join(bufs)]
            done = os.write(fd, bufs[0])
        else:
            done = os.writev(fd, bufs) if len(bufs) <= _IOV_MAX else 0
        if done != total:
            _gathered(bufs, lambda iov: os.writev(fd, iov), done)

    def _dsync_alone(self) -> bool:
        """fsync mode, lock held: this append may sync itself: the last ``_DSYNC_AFTER`` appends came from this
        thread, no other append is in flight, no fsync is running and every byte before it is durable. Commits
        from several threads keep group commit (where one thread's append overlaps another's fsync)."""
        if not self._dsync:
            return False
        tid = threading.get_ident()
        if tid != self._last_thread:
            self._last_thread, self._same_thread = tid, 0
            return False
        if self._same_thread < _DSYNC_AFTER:
            self._same_thread += 1
            return False
        with self._cond:
            return self._appending == 1 and not self._syncing and self._synced >= self.logical_end

    def _write_durably(self, bufs: list, total: int) -> bool:
        """Write ``bufs`` at the file position with RWF_DSYNC (returns once durable); False, having written
        nothing, when the kernel refuses the flag (it is then not tried again)."""
        self._reserve(total)
        fd = self._fd
        calls = 0

        def write(iov: list) -> int:
            nonlocal calls
            calls += 1
            return os.pwritev(fd, iov, -1, _RWF_DSYNC)

        try:
            _gathered(bufs, write)
        except OSError as exc:
            if calls == 1 and exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self._dsync = False
                return False
            raise
        return True

    def _reserve(self, nbytes: int) -> None:
        """fsync mode: make sure the next ``nbytes`` land on zeros written and synced ahead of time, so that a
        commit overwrites allocated blocks and its fsync flushes data, not a growing file's metadata."""
        pos = self._segs[-1].size                 # the file position: records are appended at the segment's end
        if pos + nbytes <= self._alloc_end:
            return
        if nbytes >= _PREALLOC // 4:
            # A large record: zeros ahead of it would double its bytes on disk, while the file-size update its
            # fsync then carries is small beside the data. Append it; reserve again for the small ones after.
            self._alloc_end = pos + nbytes
            return
        start = max(pos, self._alloc_end)
        size = max(_PREALLOC, pos + nbytes - start)
        os.pwrite(self._fd, bytes(size), start)
        os.fsync(self._fd)
        self._stats["fsyncs"] += 1
        self._alloc_end = start + size

    def _trim(self, fd: int, size: int) -> None:
        """Drop the zeros reserved past ``size`` (a closed segment ends at its last record)."""
        if self._alloc_end > size:
            os.ftruncate(fd, size)
        self._alloc_end = 0

    def _write_fd(self, data, reserve: bool = True) -> None:
        if reserve and self.durability == "fsync":
            self._reserve(len(data))
        mv = memoryview(data)
        while mv.nbytes:
            n = os.write(self._fd, mv)
            if n <= 0:
                raise OSError("short write")
            mv = mv[n:]

    def _roll(self, epoch: int) -> None:
        cur = self._segs[-1] if self._segs else None
        if cur is not None and self._fd is not None:
            self._trim(self._fd, cur.size)
            if self.durability == "fsync":
                os.fsync(self._fd)
                self._stats["fsyncs"] += 1
            self._old_fds.append(self._fd)
            self._fd = None
        path = os.path.join(self.dir, S.segment_name(epoch))
        if os.path.exists(path):
            raise FileExistsError(path)
        salt = os.urandom(16)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        header = S.build_header(salt, epoch)
        self._fd = fd
        self._write_fd(header, reserve=False)      # the header is made durable before any space is reserved
        self._alloc_end = len(header)
        if self.durability == "fsync":
            os.fsync(fd)
            self._stats["fsyncs"] += 1
        fsync_dir(self.dir)
        if self._manifest is not None:             # listed only once its header is durable
            self._manifest.add_segment(epoch, salt)
        start = (cur.start + cur.size) if cur is not None else 0
        self._segs.append(_Seg(epoch, path, salt, len(header), start))
        self.logical_end = start + len(header)
        self._stats["segments_created"] = self._stats.get("segments_created", 0) + 1

    def _open_current(self) -> None:
        """Open the last segment for appending (lazily, after recovery)."""
        seg = self._segs[-1]
        self._fd = os.open(seg.path, os.O_WRONLY)
        os.lseek(self._fd, seg.size, os.SEEK_SET)
        self._alloc_end = os.fstat(self._fd).st_size

    def append(self, txn: Txn, commit: bool = True) -> int:
        """Write the transaction's records and its COMMIT; returns a token for :meth:`sync`.

        ``commit=False`` writes the records without a COMMIT (for tests of recovery: they are never replayed).

        The records are encoded and framed outside the lock, under the salt of the segment being appended to
        (framed again under the new salt when a roll comes first); under the lock they go out in one gathered
        write (fsync mode: or one ``RWF_DSYNC`` write, see the module docstring)."""
        epoch, txid = int(txn.epoch), int(txn.txid)
        segs = self._segs
        seg = segs[-1] if segs else None
        bufs, total, raw, enc, records = encode_txn(txn.ops, epoch, txid, None if seg is None else seg.salt, commit)
        counted = self._dsync                 # appends in flight matter only to a log that may write RWF_DSYNC
        if counted:
            with self._count_lock:
                self._appending += 1
        try:
            with self._lock:
                if self._closed or self.readonly or self.poisoned is not None:
                    self._check_writable()
                if epoch <= self._last_epoch:
                    raise ValueError(f"epoch {epoch} does not follow the last committed epoch {self._last_epoch}")
                try:
                    if seg is None or seg.size >= self.segment_bytes or seg is not self._segs[-1]:
                        if not self._segs or self._segs[-1].size >= self.segment_bytes:
                            self._roll(epoch)
                        seg = self._segs[-1]
                        bufs, total = _frame(records, epoch, txid, seg.salt)
                    if self._fd is None:
                        self._open_current()
                    start = seg.size
                    synced = commit and self._dsync and self._dsync_alone() and self._write_durably(bufs, total)
                    if not synced:
                        self._write_buffers(bufs, total)
                except OSError as exc:
                    raise self._poison("log write", exc) from exc
                seg.size += total
                self.logical_end = seg.start + seg.size
                st = self._stats
                if synced:
                    with self._cond:
                        self._synced = max(self._synced, self.logical_end)
                        st["fsyncs"] += 1
                st["bytes"] += total
                st["appended_bytes"] += total
                st["raw_bytes"] += raw
                st["encoded_bytes"] += enc
                if commit:
                    st["records"] += len(records)
                    st["transactions"] += 1
                    st["appended_transactions"] += 1
                    self._last_epoch = epoch
                    self._index.append(_Entry(epoch, txid, seg, start, seg.size))
                    self._epochs.append(epoch)
                    seg.last_epoch = epoch
                    seg.txns += 1
                return self.logical_end
        finally:
            if counted:
                with self._count_lock:
                    self._appending -= 1

    def append_abort(self, epoch: int, txid: int) -> int:
        """Write an ABORT record (closes an uncommitted transaction explicitly)."""
        return self._standalone(R.ABORT, epoch, txid)

    def mark_checkpoint(self, epoch: int) -> int:
        """Record that a checkpoint at ``epoch`` was published."""
        tok = self._standalone(R.CHECKPOINT_MARK, epoch, 0)
        self._marks.append(int(epoch))
        return tok

    def _standalone(self, rtype: int, epoch: int, txid: int) -> int:
        with self._lock:
            self._check_writable()
            try:
                if not self._segs:
                    self._roll(max(int(epoch), self._last_epoch + 1))
                elif self._fd is None:
                    self._open_current()
                seg = self._segs[-1]
                data = S.build_record(rtype, int(epoch), int(txid), b"", seg.salt)
                self._write_buffers([data], len(data))
            except OSError as exc:
                raise self._poison("log write", exc) from exc
            seg.size += len(data)
            self._stats["bytes"] += len(data)
            self._stats["records"] += 1
            self.logical_end = seg.start + seg.size
            return self.logical_end

    def flush(self, fsync: bool = True, paced: int = 0) -> None:
        """With ``fsync``, make every record written so far durable (e.g. before a checkpoint is published):
        the segment being appended to and the segments rolled since the last flush (under durability "flush"
        and "none" a roll does not sync the closed segment). Records reach the OS as they are appended, in
        every durability mode.

        The fsyncs run on duplicates of the descriptors taken under the append lock and release it: commits go on
        while the disk catches up (an automatic checkpoint's flush would otherwise stall every commit behind it).
        ``paced``: write the cached data back that many bytes at a time before each fsync (a background flush:
        the small synchronous writes of a segment roll beside it then do not queue behind all of it)."""
        with self._lock:
            self._check_writable()
            if not fsync:
                return
            rolled, self._old_fds = self._old_fds, []
            try:
                fds = [os.dup(fd) for fd in rolled + ([self._fd] if self._fd is not None else [])]
            except OSError as exc:
                self._old_fds = rolled + self._old_fds
                raise self._poison("log flush", exc) from exc
        try:
            for fd in fds:
                if paced:
                    write_back_paced(fd, paced)
                os.fsync(fd)
                self._stats["fsyncs"] += 1
        except OSError as exc:
            raise self._poison("log flush", exc) from exc
        finally:
            for fd in fds + rolled:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def sync(self, token: Optional[int] = None) -> None:
        """Make everything up to ``token`` (default: everything) durable as the durability mode promises."""
        if self.poisoned is not None:
            raise LogPoisonedError(f"the log is poisoned by an earlier failure: {self.poisoned}")
        if self.durability != "fsync":
            return
        if token is None:
            token = self.logical_end
        with self._cond:
            while True:
                if self.poisoned is not None:
                    raise LogPoisonedError(f"the log is poisoned by an earlier failure: {self.poisoned}")
                if self._synced >= token:
                    self._stats["synced_commits"] += 1
                    return
                if not self._syncing:
                    self._syncing = True
                    break
                self._cond.wait()
        # leader
        try:
            with self._lock:
                fd = self._fd
                target = self.logical_end
            if fd is not None:
                os.fsync(fd)
        except OSError as exc:
            with self._cond:
                self._syncing = False
            raise self._poison("fsync", exc) from exc
        with self._cond:
            self._syncing = False
            if target > self._synced:
                self._synced = target
            self._stats["fsyncs"] += 1
            self._stats["group_commit_batches"] += 1
            self._stats["synced_commits"] += 1
            self._cond.notify_all()
        if self._synced < token:  # pragma: no cover - the target always covers the token
            self.sync(token)

    # ------------------------------------------------------------ reading

    def _pinned(self, path: str) -> str:
        """A reader reads every segment through the descriptor it opened first (its *pin*): a compaction beside
        it may unlink the file, the reader keeps reading what it opened (Linux: through /proc/self/fd)."""
        if not self.readonly:
            return path
        fd = self._rfd(path)
        proc = f"/proc/self/fd/{fd}"
        return proc if os.path.exists(proc) else path

    def _rfd(self, path: str) -> int:
        fd = self._rfds.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            self._rfds[path] = fd
        return fd

    def txns(self, since: Optional[int] = None, until: Optional[int] = None) -> Iterator[Txn]:
        """Committed transactions in log order with ``since < epoch <= until``."""
        with self._lock:
            if since is None or since < self._lazy_bound:
                self._ensure_index()
            lo = 0 if since is None else bisect.bisect_right(self._epochs, since)
            hi = len(self._epochs) if until is None else bisect.bisect_right(self._epochs, until)
            entries = self._index[lo:hi]
        for e in entries:
            yield self._read_txn(e)

    def predecode(self, since: int, budget: int = 512 * 2**20) -> int:
        """Decode ahead the transactions after epoch ``since`` that the open scan kept (a reopen calls this on
        the thread that opened the log, while the checkpoint loads on another); at most ``budget`` bytes of
        records. Returns how many."""
        n = used = 0
        for ep in sorted(self._scanned):
            if ep <= since:
                continue
            span, seg = self._scanned[ep]
            if used + span.end - span.start > budget:
                break
            self._decoded[ep] = self._decode_span(span, seg)
            used += span.end - span.start
            n += 1
        return n

    def release_scan(self) -> None:
        """Forget what the open scan kept (called once the open replayed it)."""
        self._scanned = {}
        self._decoded = {}

    def _decode_span(self, span, seg: _Seg) -> Txn:
        ops = []
        for rec in span.records:
            if rec.rtype in (R.DELTA, R.SCHEMA):
                try:
                    ops.append(R.decode_op(rec.rtype, rec.payload, span.epoch))
                except CorruptionError as exc:
                    raise CorruptionError(f"log record undecodable: {exc}", file=seg.path, offset=rec.offset,
                                          what=exc.what) from None
        return Txn(epoch=span.epoch, txid=span.txid, ops=ops)

    def _read_txn(self, e: _Entry) -> Txn:
        got = self._decoded.pop(e.epoch, None)            # (each is replayed once, by the open)
        kept = self._scanned.pop(e.epoch, None)
        if kept is not None and kept[1] is e.seg and kept[0].start == e.start:
            return got if got is not None else self._decode_span(kept[0], e.seg)
        with self._lock:
            fd = self._rfd(e.seg.path)
        data = os.pread(fd, e.end - e.start, e.start)
        if len(data) != e.end - e.start:
            raise CorruptionError("log segment shrank under the reader", file=e.seg.path, offset=e.start,
                                  what="short read")
        mv = memoryview(data)
        pos = 0
        ops = []
        while pos < len(mv):
            rec, why = S.record_at(mv, pos, e.seg.salt)
            if rec is None:
                raise CorruptionError(f"log corrupt: {why}", file=e.seg.path, offset=e.start + pos, what=why)
            if rec.rtype in (R.DELTA, R.SCHEMA):
                try:
                    ops.append(R.decode_op(rec.rtype, rec.payload, e.epoch))
                except CorruptionError as exc:
                    raise CorruptionError(f"log record undecodable: {exc}", file=e.seg.path,
                                          offset=e.start + pos, what=exc.what) from None
            pos = rec.end
        return Txn(epoch=e.epoch, txid=e.txid, ops=ops)

    # ------------------------------------------------------------ maintenance

    @property
    def first_epoch(self) -> Optional[int]:
        """Epoch of the oldest kept transaction, or None (indexes segments skipped at open)."""
        with self._lock:
            self._ensure_index()
            return self._epochs[0] if self._epochs else None

    @property
    def first_epoch_hint(self) -> Optional[int]:
        """A lower bound of ``first_epoch`` that reads nothing: the first segment's base epoch while segments
        skipped at open are not indexed yet (the first committed epoch of a log is its first segment's base)."""
        with self._lock:
            if self._segs and self._segs[0].lazy:
                return self._segs[0].base
            return self._epochs[0] if self._epochs else None

    @property
    def checkpoint_marks(self) -> list[int]:
        with self._lock:
            self._ensure_index()
            return list(self._marks)

    def __len__(self) -> int:
        with self._lock:
            self._ensure_index()
            return len(self._epochs)

    def closed_segment_paths(self) -> list[str]:
        """Paths of every segment but the one being appended to."""
        with self._lock:
            return [s.path for s in self._segs[:-1]]

    def bytes_after(self, epoch: int) -> int:
        """Bytes of the indexed transactions with an epoch after ``epoch`` (what a reopen would replay)."""
        with self._lock:
            lo = bisect.bisect_right(self._epochs, epoch)
            return sum(e.end - e.start for e in self._index[lo:])

    @property
    def segment_bases(self) -> list:
        """The base epoch of every segment, ascending."""
        with self._lock:
            return [s.base for s in self._segs]

    @property
    def torn_tail_bytes(self) -> int:
        return self._stats["torn_tail_bytes"]

    @property
    def lazy_segments(self) -> int:
        """How many segments are not indexed yet (skipped at open)."""
        return sum(1 for s in self._segs if s.lazy)

    def drop_segments_before(self, epoch: int) -> int:
        """Remove whole segments (never the current one) whose every transaction has epoch <= ``epoch``."""
        with self._lock:
            self._check_writable()
            self._ensure_index()
            removed = 0
            keep = []
            drop = []
            for i, seg in enumerate(self._segs):
                if i < len(self._segs) - 1 and removed == i and (seg.last_epoch is None or seg.last_epoch <= epoch):
                    drop.append(seg)
                    removed += 1
                    continue
                keep.append(seg)
            if drop and self._manifest is not None:   # unlisted first: a crash then leaves leftovers, not holes
                self._manifest.set_segments([(s.base, s.salt) for s in keep])
            for seg in drop:
                fd = self._rfds.pop(seg.path, None)
                if fd is not None:
                    os.close(fd)
                os.unlink(seg.path)
                self._stats["bytes"] -= seg.size
            if removed:
                fsync_dir(self.dir)
                gone = set(id(s) for s in self._segs) - set(id(s) for s in keep)
                self._index = [e for e in self._index if id(e.seg) not in gone]
                self._epochs = [e.epoch for e in self._index]
                self._segs = keep
                self._stats["dropped_segments"] += removed
            return removed

    def stats(self) -> dict:
        self.index_skipped()
        with self._lock:
            self._ensure_index()
            st = dict(self._stats)
            st["segments"] = len(self._segs)
            st["last_epoch"] = self._last_epoch
            st["first_epoch"] = self._epochs[0] if self._epochs else None
            st["checkpoint_marks"] = len(self._marks)
            st["durability"] = self.durability
            st["poisoned"] = self.poisoned is not None
            enc = st["encoded_bytes"]
            st["compression_ratio"] = (st["raw_bytes"] / enc) if enc else 1.0
            sc = st["synced_commits"]
            st["commits_per_fsync"] = (sc / st["group_commit_batches"]) if st["group_commit_batches"] else 0.0
            return st

    def close(self) -> None:
        hook, self.before_close = self.before_close, None
        if hook is not None and not self._closed and self.poisoned is None:
            hook()                   # (the store's shutdown checkpoint: it needs the log still open)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            err = None
            try:
                if self._fd is not None and self.poisoned is None:
                    self._trim(self._fd, self._segs[-1].size)
                    if self.durability != "none":
                        os.fsync(self._fd)
                        self._stats["fsyncs"] += 1
            except OSError as exc:
                err = exc
            for fd in [self._fd] + self._old_fds + list(self._rfds.values()):
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self._fd = None
            self._old_fds = []
            self._rfds = {}
            if err is not None:
                raise self._poison("close", err) from err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

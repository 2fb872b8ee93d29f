"""The checksummed container format, shared by checkpoints (mmsb.checkpoint) and spill files (mmsb.spill).

A container is ONE file::

    header (32 bytes) | chunk data, contiguous, no gaps | manifest (JSON) | trailer (64 bytes)

Every byte is covered by a checksum: the header and trailer carry their own CRC32C, the manifest is covered by
the CRC32C and SHA-256 in the trailer, and every chunk by the CRC32C and SHA-256 listed in the manifest; the
chunks must tile the data region exactly. Parts are addressed by offset inside the file (no paths), so a
manifest cannot point outside the store. Publication is atomic: a temporary file in the same directory is
written, fsynced, renamed over the final name, and the directory is fsynced. The magic in the header names the
kind of file. A version-3 container (an incremental checkpoint) may borrow chunks of older containers beside it
(:class:`PageRef`). Byte-level layouts: docs/FORMAT.md.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import crc32c as _crc
import numpy as np

from mmsb import codecs
from mmsb.codecs import NTHREADS
from mmsb.delta import SchemaOp
from mmsb.errors import CorruptionError
from mmsb.fileio import fsync_dir as _fsync_dir
from mmsb.fileio import start_writeback
from mmsb.layout import temp_path
from mmsb.log.records import MAX_ELEMS, loads_json
from mmsb.log.records import dumps as _dumps
from mmsb.log.segment import mask_crc

FORMAT_VERSION = 2            # containers without borrowed chunks; 1 (chunks strictly back to back) is still read
REF_VERSION = 3               # a container that borrows chunks of older ones (an incremental checkpoint)
READ_VERSIONS = (1, 2, 3)
ALIGN = 4096                  # version 2: a RAW chunk of ALIGN_MIN bytes or more starts at a multiple of ALIGN
ALIGN_MIN = 64 * 2**10        # (the bytes skipped to get there are zero), so that it can be written with O_DIRECT
DIRECT_PIECE = 4 * 2**20      # O_DIRECT writes of this size, DIRECT_DEPTH of them in flight
DIRECT_DEPTH = 4
END_MAGIC = b"MMSBEND\0"
CHUNK_BYTES = 16 * 2**20
MAX_FRACTION = 0.8   # compress a chunk only when blosc2 saves at least 20% (raw chunks load fastest)
FLUSH_BYTES = 64 * 2**20   # fsync mode without sync_file_range: a background fdatasync after this many bytes
# MMSB_DIRECT_IO=0 keeps every container write in the page cache (leaves a fresh checkpoint cached for a reopen)
DIRECT_IO = os.environ.get("MMSB_DIRECT_IO", "1") not in ("0", "off", "false", "no")
_HEAD = struct.Struct("<8sHHIQI")      # magic, version, flags, reserved, epoch, reserved2 (28) + crc
HEAD_SIZE = _HEAD.size + 4             # 32
_TRAIL = struct.Struct("<QQI32s8s")    # manifest offset, length, crc32c, sha256, END magic (60) + crc
TRAIL_SIZE = _TRAIL.size + 4           # 64
_U32 = struct.Struct("<I")
_mask = mask_crc                       # LevelDB's CRC mask, one definition (mmsb.log.segment)


def _crc32c(b) -> int:
    return _crc.crc32c(b)


@dataclass
class PageRef:
    """A page whose bytes older containers already hold, for :func:`write_container` (an incremental checkpoint
    lists its chunks instead of writing them again). ``chunks``: array-entry chunks, each with ``ref`` = the
    epoch of the container file that holds its bytes (``offset``, ``length``, ``codec``, ``n``, ``crc32c``,
    ``sha256`` as there). :func:`mmsb.checkpoint.load_checkpoint` gives one per page in ``Snapshot.layout``."""
    dtype: str
    shape: list
    chunks: list

    @property
    def files(self) -> set:
        return {int(c["ref"]) for c in self.chunks}


# ====================================================================== container writer

WRITE_PIECE = 512 * 2**10  # chunks are written and hashed in pieces of this size (hashed while cache-hot)


class _Inline:
    """An executor that runs each task at once in the caller's thread (a background writer's mode: no pools)."""

    def submit(self, fn, *args):
        from concurrent.futures import Future

        f: Future = Future()
        try:
            f.set_result(fn(*args))
        except BaseException as exc:        # noqa: BLE001 - handed over through the future, as a pool would
            f.set_exception(exc)
        return f


class _Writer:
    """Lays chunks out back to back (offsets are known once each chunk's codec is chosen) and hands each to a
    pool of NTHREADS workers that ``pwrite`` it in WRITE_PIECE pieces, straight from the caller's memory for
    RAW chunks, and feed every piece to CRC32C and SHA-256 right after writing it, while it is still in the
    CPU cache (pwrite, crc32c and hashlib release the GIL): the data crosses the memory bus about as often as
    with a plain write, on two cores. In fsync mode the disk starts early, so that the final fsync waits for
    little: each chunk's writeback is started as soon as it is written (``sync_file_range``), or where that is
    unavailable a background ``fdatasync`` runs every ``FLUSH_BYTES``. Publication stays: temp file, fsync,
    rename, fsync of the directory."""

    def __init__(self, fd: int, pool: ThreadPoolExecutor, flusher: Optional[ThreadPoolExecutor],
                 direct: Optional[tuple] = None, piece: int = WRITE_PIECE, chunk: int = CHUNK_BYTES,
                 direct_piece: int = DIRECT_PIECE):
        self.fd = fd
        self.piece = piece
        self.direct_piece = direct_piece
        self.chunk = chunk
        self.direct = direct         # (O_DIRECT descriptor, I/O pool) or None
        self.pos = HEAD_SIZE
        self.raw_bytes = 0
        self.encoded_bytes = 0
        self.pool = pool
        self.flusher = flusher
        self._lock = threading.Lock()
        self._unflushed = 0
        self._flushes: list = []
        self._pending: list = []     # (chunk dict, future of (crc, sha))

    def _put_direct(self, data, offset: int) -> Optional[tuple[int, str]]:
        """Worker: write an aligned RAW chunk with O_DIRECT (the disk reads page memory itself: no copy into
        the page cache) on the I/O pool, while this thread hashes it; a tail of less than ALIGN bytes goes
        through the page cache. None (nothing written) when the memory is not aligned or O_DIRECT was refused."""
        mv = memoryview(data).cast("B")
        n = mv.nbytes
        body = n - n % ALIGN
        dfd, io = self.direct
        if offset % ALIGN or np.frombuffer(mv[:1], np.uint8).ctypes.data % ALIGN:
            return None
        step = self.direct_piece
        futs = [io.submit(_pwrite_all, dfd, mv[p:min(p + step, body)], offset + p) for p in range(0, body, step)]
        crc = 0
        sha = hashlib.sha256()
        for p in range(0, n, self.piece):
            piece = mv[p:p + self.piece]
            crc = _crc.crc32c(piece, crc)
            sha.update(piece)
        if body < n:
            _pwrite_all(self.fd, mv[body:], offset + body)
        refused = False
        for f in futs:
            exc = f.exception()
            if exc is None:
                continue
            if isinstance(exc, OSError) and exc.errno == errno.EINVAL:
                refused = True               # this file system takes no O_DIRECT after all
            else:
                raise exc
        if refused:
            self.direct = None
            for p in range(0, body, step):
                _pwrite_all(self.fd, mv[p:min(p + step, body)], offset + p)
        return crc, sha.hexdigest()

    def _put(self, data, offset: int) -> tuple[int, str]:
        """Worker: write ``data`` at ``offset`` piece by piece, hashing each piece right after it."""
        if self.direct is not None and memoryview(data).nbytes >= ALIGN_MIN and not isinstance(data, bytes):
            got = self._put_direct(data, offset)
            if got is not None:
                return got
        mv = memoryview(data).cast("B")
        crc = 0
        sha = hashlib.sha256()
        pos = 0
        n = mv.nbytes
        while pos < n:
            piece = mv[pos:pos + self.piece]
            done = 0
            while done < piece.nbytes:
                done += os.pwrite(self.fd, piece[done:], offset + pos + done)
            crc = _crc.crc32c(piece, crc)
            sha.update(piece)
            pos += piece.nbytes
        if self.flusher is not None and not start_writeback(self.fd, offset, n):
            with self._lock:
                self._unflushed += n
                if self._unflushed >= FLUSH_BYTES and (not self._flushes or self._flushes[-1].done()):
                    self._unflushed = 0
                    self._flushes.append(self.flusher.submit(os.fdatasync, self.fd))
        return crc, sha.hexdigest()

    def write_at(self, data, offset: int) -> None:
        """Write small metadata (header, manifest, trailer) synchronously."""
        mv = memoryview(data).cast("B")
        done = 0
        while done < mv.nbytes:
            done += os.pwrite(self.fd, mv[done:], offset + done)

    def array(self, arr: np.ndarray, compress: bool) -> dict:
        a = np.asarray(arr)
        if not a.flags.c_contiguous:
            a = np.array(a, order="C")
        dts = codecs.dtype_str(a.dtype)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        flat = a.reshape(-1)
        per = max(1, self.chunk // max(1, a.dtype.itemsize))
        chunks = []
        for start in range(0, max(1, flat.size), per):
            piece = flat[start:start + per]
            cid, data = codecs.encode_values(piece, allow_compress=compress, max_fraction=MAX_FRACTION,
                                             view=True)
            ln = memoryview(data).nbytes
            if cid == codecs.RAW and ln >= ALIGN_MIN:
                self.pos = _align(self.pos)  # the gap stays a hole of the fresh file: zeros
            ch = {"offset": self.pos, "length": ln, "codec": cid, "n": piece.size, "crc32c": 0, "sha256": ""}
            self._pending.append((ch, self.pool.submit(self._put, data, self.pos)))
            chunks.append(ch)
            self.pos += ln
            self.raw_bytes += piece.size * a.dtype.itemsize
            self.encoded_bytes += ln
        return {"dtype": dts, "shape": list(a.shape), "chunks": chunks}

    def finish(self) -> None:
        """Wait for every chunk (raising the first failure) and fill in the checksums."""
        try:
            for ch, fut in self._pending:
                ch["crc32c"], ch["sha256"] = fut.result()
        finally:
            for _, fut in self._pending:
                fut.cancel()
            for _, fut in self._pending:
                if not fut.cancelled():
                    fut.exception()          # wait: nothing may still write to the file after this returns
            self._pending = []
            flushes, self._flushes = self._flushes, []
            errs = [f.exception() for f in flushes]
        for e in errs:
            if e is not None:
                raise e                      # an fdatasync failure fails the checkpoint


def _align(pos: int) -> int:
    return -(-pos // ALIGN) * ALIGN


def _pwrite_all(fd: int, mv, offset: int) -> None:
    done = 0
    while done < mv.nbytes:
        done += os.pwrite(fd, mv[done:], offset + done)


def _open_direct(path: str) -> Optional[int]:
    """A second, O_DIRECT descriptor on the file being written, or None where the platform or file system has
    none."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_WRONLY | flag)
    except OSError:
        return None


def _hash(data) -> tuple[int, str]:
    mv = memoryview(data).cast("B")
    return _crc.crc32c(mv), hashlib.sha256(mv).hexdigest()


def _ref_entry(ref: PageRef) -> dict:
    """The array entry of a page held by older checkpoints (its chunks carry ``ref``)."""
    chunks = []
    for c in ref.chunks:
        chunks.append({"ref": int(c["ref"]), "offset": int(c["offset"]), "length": int(c["length"]),
                       "codec": int(c["codec"]), "n": int(c["n"]), "crc32c": int(c["crc32c"]),
                       "sha256": str(c["sha256"])})
    return {"dtype": ref.dtype, "shape": [int(x) for x in ref.shape], "chunks": chunks}


def write_container(final: str, magic: bytes, epoch: int, pages, rules, extra, fsync: bool,
                    compress: bool = True, *, kind: str, ref_digest: Callable[[int], str] | None = None,
                    background: bool = False, chunk: int | None = None) -> dict:
    """Write and publish one container; returns its manifest. ``magic`` names the kind of file, ``kind`` is
    recorded in the manifest. ``pages``: [(meta, array or :class:`PageRef`)]; a PageRef borrows chunks of older
    containers beside ``final``, named by epoch, whose manifest digests ``ref_digest(epoch)`` gives (None: this
    container may borrow nothing). ``chunk``: bytes per chunk (default CHUNK_BYTES). ``background``: the caller
    is a low-priority thread beside running commits: no worker pools, whole chunks per call (the writer then
    takes the GIL a few times per chunk instead of several times per 512 KiB piece, which would make the
    committing thread wait for it)."""
    if chunk is None:
        chunk = CHUNK_BYTES
    refs = sorted({e for _, a in pages if isinstance(a, PageRef) for e in a.files})
    if refs and ref_digest is None:
        raise ValueError("only a checkpoint of a store can borrow chunks of older checkpoints")
    if any(e >= int(epoch) for e in refs):
        raise ValueError(f"checkpoint {epoch} can only borrow chunks of older checkpoints, not of {refs}")
    # the files borrowed from, named by the SHA-256 of their manifest: a replaced one is detected on load
    ref_list = [{"epoch": e, "sha256": ref_digest(e)} for e in refs]
    version = REF_VERSION if refs else FORMAT_VERSION
    d = os.path.dirname(final) or "."
    tmp = temp_path(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    # fsync mode: large RAW chunks bypass the page cache (O_DIRECT); without fsync a buffered write returns sooner
    dfd = _open_direct(tmp) if fsync and DIRECT_IO else None
    ok = False
    try:
        with contextlib.ExitStack() as stack:
            if background:
                pool = flusher = io = _Inline()
            else:
                pool = stack.enter_context(ThreadPoolExecutor(NTHREADS))
                flusher = stack.enter_context(ThreadPoolExecutor(1))
                io = stack.enter_context(ThreadPoolExecutor(DIRECT_DEPTH))
            # background: each chunk in one pwrite, one CRC32C and one SHA-256 call (three GIL releases)
            w = _Writer(fd, pool, flusher if fsync else None, (dfd, io) if dfd is not None else None,
                        piece=CHUNK_BYTES if background else WRITE_PIECE, chunk=chunk,
                        direct_piece=CHUNK_BYTES if background else DIRECT_PIECE)
            try:
                head = _HEAD.pack(magic, version, 0, 0, int(epoch), 0)
                w.write_at(head + _U32.pack(_mask(_crc32c(head))), 0)
                man_pages = []
                borrowed = 0
                for meta, arr in pages:
                    if isinstance(arr, PageRef):
                        ent = _ref_entry(arr)
                        borrowed += sum(c["length"] for c in ent["chunks"])
                    else:
                        ent = w.array(np.asarray(arr), compress)
                    ent["meta"] = meta
                    man_pages.append(ent)
                man_rules = []
                for op in rules or []:
                    arrays = {str(k): w.array(np.asarray(v), compress) for k, v in op.arrays.items()}
                    man_rules.append({"kind": op.kind, "payload": op.payload, "arrays": arrays})
            finally:
                w.finish()
        manifest = {"format": version, "kind": kind, "epoch": int(epoch), "created": time.time(),
                    "data_start": HEAD_SIZE, "data_end": w.pos, "pages": man_pages, "rules": man_rules,
                    "extra": extra, "raw_bytes": w.raw_bytes, "encoded_bytes": w.encoded_bytes}
        if refs:
            manifest["refs"] = ref_list
            manifest["borrowed_bytes"] = borrowed
        mb = _dumps(manifest)
        moff = w.pos
        tr = _TRAIL.pack(moff, len(mb), _crc32c(mb), hashlib.sha256(mb).digest(), END_MAGIC)
        w.write_at(mb + tr + _U32.pack(_mask(_crc32c(tr))), moff)
        if fsync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, final)
        if fsync:
            _fsync_dir(d)
        ok = True
        return manifest
    finally:
        if dfd is not None:
            os.close(dfd)
        if fd >= 0:
            os.close(fd)
        if not ok:
            try:
                os.unlink(tmp)
            except OSError:
                pass


# ====================================================================== container reader

def corrupt(msg: str, path: str, offset=None, what=None) -> CorruptionError:
    """The CorruptionError that names ``path``, the ``offset`` of the damage and ``what`` is damaged."""
    return CorruptionError(msg, file=path, offset=offset, what=what or msg)


def read_container_manifest(fd: int, path: str, magic: bytes) -> tuple[int, dict]:
    """(manifest offset, manifest) of the container open at ``fd``, after checking its header, trailer and the
    manifest's checksums and its agreement with the header."""
    size = os.fstat(fd).st_size
    if size < HEAD_SIZE + TRAIL_SIZE:
        raise corrupt("file too short", path, 0, "container size")
    head = os.pread(fd, HEAD_SIZE, 0)
    mg, ver, flags, res, epoch, res2 = _HEAD.unpack_from(head)
    if mg != magic:
        raise corrupt("bad magic", path, 0, "magic")
    if _mask(_crc32c(head[:_HEAD.size])) != _U32.unpack_from(head, _HEAD.size)[0]:
        raise corrupt("header checksum mismatch", path, 0, "header crc")
    if ver not in READ_VERSIONS or flags or res or res2:
        raise corrupt(f"unsupported format version {ver} / flags", path, 8, "version")
    tr = os.pread(fd, TRAIL_SIZE, size - TRAIL_SIZE)
    if _mask(_crc32c(tr[:_TRAIL.size])) != _U32.unpack_from(tr, _TRAIL.size)[0]:
        raise corrupt("trailer checksum mismatch", path, size - TRAIL_SIZE, "trailer crc")
    moff, mlen, mcrc, msha, endm = _TRAIL.unpack_from(tr)
    if endm != END_MAGIC or moff < HEAD_SIZE or moff + mlen != size - TRAIL_SIZE:
        raise corrupt("bad trailer", path, size - TRAIL_SIZE, "trailer")
    mb = os.pread(fd, mlen, moff)
    if len(mb) != mlen or _crc32c(mb) != mcrc or hashlib.sha256(mb).digest() != msha:
        raise corrupt("manifest checksum mismatch", path, moff, "manifest checksum")
    man = loads_json(mb, "manifest json", path, moff)
    if not isinstance(man, dict) or man.get("format") != ver or man.get("epoch") != epoch:
        raise corrupt("manifest does not match the header", path, moff, "manifest")
    if man.get("data_start") != HEAD_SIZE or man.get("data_end") != moff:
        raise corrupt("manifest data range is wrong", path, moff, "manifest")
    return moff, man


def _array_plan(ent, path: str, cursor: list, moff: int, gaps: Optional[list] = None,
                refs: Optional[dict] = None):
    """Validate one array entry of a manifest; returns (dtype, shape, chunks). ``gaps`` (version 2): RAW chunks
    of ALIGN_MIN bytes or more start at the next multiple of ALIGN, and the ``(offset, length)`` of the bytes
    skipped (which must be zero) are appended to it; otherwise (version 1) chunks lie strictly back to back.
    ``refs`` (version 3: {epoch: end of the bytes borrowed so far}): a chunk with ``ref`` lies in that older
    checkpoint's data region, not in this file's (it takes no part in the tiling)."""
    try:
        dt = codecs.parse_dtype(ent["dtype"])
        shape = tuple(int(s) for s in ent["shape"])
        chunks = ent["chunks"]
        if any(s < 0 for s in shape) or not isinstance(chunks, list):
            raise ValueError
        big = 1
        for s in shape:      # exact (no int64 wrap-around), and a 0 dim must not hide a huge one
            big *= max(s, 1)
        if big > MAX_ELEMS:
            raise ValueError
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        total = 0
        for c in chunks:
            if "ref" in c:
                r, off, ln = c["ref"], c["offset"], c["length"]
                if refs is None or type(r) is not int or r not in refs or type(off) is not int \
                        or type(ln) is not int or off < HEAD_SIZE or ln < 0 or type(c["n"]) is not int \
                        or c["n"] < 0 or c["codec"] not in (codecs.RAW, codecs.BLOSC2) \
                        or type(c["crc32c"]) is not int or not isinstance(c["sha256"], str) \
                        or len(c["sha256"]) != 64:
                    raise ValueError
                if c["codec"] == codecs.RAW and ln != c["n"] * dt.itemsize:
                    raise ValueError
                refs[r] = max(refs[r], off + ln)
                total += c["n"]
                continue
            if gaps is not None and c["codec"] == codecs.RAW and c["length"] >= ALIGN_MIN:
                start = _align(cursor[0])
                if start > cursor[0]:
                    gaps.append((cursor[0], start - cursor[0]))
                cursor[0] = start
            if c["offset"] != cursor[0] or c["length"] < 0 or c["n"] < 0 or c["codec"] not in (
                    codecs.RAW, codecs.BLOSC2) or not isinstance(c["sha256"], str) or len(c["sha256"]) != 64:
                raise ValueError
            if c["codec"] == codecs.RAW and c["length"] != c["n"] * dt.itemsize:
                raise ValueError
            cursor[0] += c["length"]
            total += c["n"]
            if cursor[0] > moff:
                raise ValueError
        if total != n and not (n == 0 and total == 0):
            raise ValueError
    except (KeyError, TypeError, ValueError, CorruptionError):
        raise corrupt("manifest entry is malformed", path, moff, "manifest entry") from None
    return dt, shape, chunks


READ_PIECE = 2 * 2**20   # raw chunks are read and checksummed in pieces of this size, while cache-hot


class _Job:
    """One chunk to read, check and decode into ``dst`` (a flat slice of the destination array); ``src``: the
    (descriptor, path) of the file that holds it (None: the container being read)."""
    __slots__ = ("c", "dst", "dt", "src")

    def __init__(self, c: dict, dst: np.ndarray, dt: np.dtype, src: Optional[tuple] = None):
        self.c, self.dst, self.dt, self.src = c, dst, dt, src


def _run_job(fd: int, path: str, job: _Job, strong: bool) -> None:
    if job.src is not None:
        fd, path = job.src
    """Read one chunk, check its CRC32C (and SHA-256 when ``strong``), decode it into ``job.dst``.

    RAW chunks are read straight into the destination in READ_PIECE pieces, each checksummed right after it
    arrived (preadv and crc32c release the GIL). A compressed chunk is decoded only after its checksum passed.
    Raises CorruptionError."""
    c, dst, dt = job.c, job.dst, job.dt
    ln, off = c["length"], c["offset"]
    sha = hashlib.sha256() if strong else None
    crc = 0
    if c["codec"] == codecs.RAW:
        mv = memoryview(dst).cast("B") if ln else memoryview(b"")
        pos = 0
        while pos < ln:
            piece = mv[pos:pos + READ_PIECE]
            got = os.preadv(fd, [piece], off + pos)
            if got != piece.nbytes:
                raise corrupt("chunk is short", path, off, "chunk length")
            crc = _crc.crc32c(piece, crc)
            if sha is not None:
                sha.update(piece)
            pos += got
        ok = crc == c["crc32c"] and (sha is None or sha.hexdigest() == c["sha256"])
        if not ok:
            raise corrupt("chunk checksum mismatch", path, off, "chunk checksum")
        if dt.kind == "b" and dst.size and (dst.view(np.uint8) > 1).any():
            raise corrupt("bool chunk holds bytes other than 0/1", path, off, "chunk")
        return
    data = os.pread(fd, ln, off)
    if len(data) != ln:
        raise corrupt("chunk is short", path, off, "chunk length")
    if strong:
        crc2, sha_hex = _hash(data)
        ok = crc2 == c["crc32c"] and sha_hex == c["sha256"]
    else:
        ok = _crc32c(data) == c["crc32c"]
    if not ok:
        raise corrupt("chunk checksum mismatch", path, off, "chunk checksum")
    try:
        codecs.decode_values(codecs.BLOSC2, data, dt, c["n"], out=dst, nthreads=1)
    except CorruptionError as exc:
        raise corrupt(f"chunk does not decode ({exc.what})", path, off, "chunk") from None


def _jobs_for(out: np.ndarray, dt: np.dtype, chunks: list, sources: Optional[dict] = None) -> list:
    flat = out.reshape(-1)
    jobs = []
    pos = 0
    for c in chunks:
        src = sources[c["ref"]] if "ref" in c else None
        jobs.append(_Job(c, flat[pos:pos + c["n"]], dt, src))
        pos += c["n"]
    return jobs


def _run_jobs(fd: int, path: str, jobs: list, strong: bool) -> None:
    """Run the chunk jobs on NTHREADS threads (each takes the next chunk); the first failure stops the rest and
    is raised."""
    if not jobs:
        return
    if NTHREADS == 1 or len(jobs) == 1:
        for j in jobs:
            _run_job(fd, path, j, strong)
        return
    it = iter(jobs)
    lock = threading.Lock()
    failed: list = []

    def worker() -> None:
        while True:
            with lock:
                if failed:
                    return
                j = next(it, None)
            if j is None:
                return
            try:
                _run_job(fd, path, j, strong)
            except BaseException as exc:     # noqa: BLE001 - handed to the caller
                with lock:
                    failed.append(exc)
                return

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(NTHREADS, len(jobs)) - 1)]
    for t in threads:
        t.start()
    worker()
    for t in threads:
        t.join()
    if failed:
        raise failed[0]



def read_container(path: str, magic: bytes, strong: bool = True, blocks=None, fd: Optional[int] = None,
                   ref_fd=None, borrowed_path: Callable[[int], str] | None = None,
                   check: Callable[[list, list, str, int], None] | None = None):
    """Read and validate a container: (manifest, pages [(meta, array)], rules [SchemaOp]). Loading checks every
    CRC32C; ``strong`` adds SHA-256 (verify).

    ``blocks`` (a memory.BlockLoader, optional) gives the destination arrays of the pages: every chunk is read or
    decoded straight into them; nothing is returned (and the blocks are freed) unless every check passed.
    ``fd``: read through this open descriptor (a reader's pin; left open) instead of opening ``path``, which
    then only names the file in errors. A version-3 container's borrowed chunks are read from the containers
    ``borrowed_path(epoch)`` names (None: a container of this kind borrows nothing, and one that says it does is
    corrupt); ``ref_fd(epoch)`` may give a pinned descriptor for one. ``check(plans, rule_plans, path,
    manifest offset)``: the kind's own checks of the validated manifest entries, before any chunk is read."""
    own = fd is None
    if own:
        fd = os.open(path, os.O_RDONLY)
    opened: list = []
    try:
        moff, man = read_container_manifest(fd, path, magic)
        cursor = [HEAD_SIZE]
        gaps: Optional[list] = [] if man["format"] >= 2 else None
        refs = declared_refs(man, path, moff, borrowed_path is not None)
        ref_ends = {e: 0 for e in refs} if refs is not None else None
        try:
            pages_in = man["pages"]
            rules_in = man["rules"]
            plans = []
            for p in pages_in:
                plans.append((p["meta"], _array_plan(p, path, cursor, moff, gaps, ref_ends)))
            rplans = []
            for r in rules_in:
                if not isinstance(r["kind"], str) or not isinstance(r["payload"], dict):
                    raise ValueError
                rplans.append((r["kind"], r["payload"],
                               [(str(k), _array_plan(v, path, cursor, moff, gaps))
                                for k, v in r["arrays"].items()]))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise corrupt("manifest is malformed", path, moff, "manifest") from None
        sources = _open_refs(path, refs or {}, ref_ends or {}, ref_fd, opened, borrowed_path)
        if cursor[0] != moff:
            raise corrupt("chunks do not cover the data region", path, cursor[0], "manifest coverage")
        if check is not None:
            check(plans, rplans, path, moff)
        for off, ln in gaps or ():        # alignment padding: covered by no checksum, so it must be zeros
            pad = os.pread(fd, ln, off)
            if len(pad) != ln or pad.count(0) != ln:
                raise corrupt("alignment padding is not zero", path, off, "padding")
        try:
            jobs: list = []
            pages = []
            for meta, (dt, shape, chunks) in plans:
                n = int(np.prod(shape, dtype=np.int64)) if shape else 1
                out = (blocks(dt, n) if blocks is not None else np.empty(n, dtype=dt)).reshape(shape)
                jobs += _jobs_for(out, dt, chunks, sources)
                pages.append((meta, out))
            rules = []
            for k, pl, arrs in rplans:
                arrays = {}
                for name, (dt, shape, chunks) in arrs:
                    out = np.empty(shape, dtype=dt)
                    jobs += _jobs_for(out, dt, chunks)
                    arrays[name] = out
                rules.append(SchemaOp(kind=k, payload=pl, arrays=arrays))
            _run_jobs(fd, path, jobs, strong)
        except BaseException:
            discard = getattr(blocks, "discard", None)      # (a plain callable hands out no blocks to free)
            if discard is not None:
                discard()
            raise
        return man, pages, rules
    finally:
        for rfd in opened:
            os.close(rfd)
        if own:
            os.close(fd)


def declared_refs(man: dict, path: str, moff: int, borrows: bool) -> Optional[dict]:
    """Version 3: {epoch: manifest digest} of the older checkpoints this one borrows chunks from (None for
    earlier versions, which borrow nothing). ``borrows``: whether a container of this kind may borrow."""
    if man["format"] < REF_VERSION:
        if "refs" in man:
            raise corrupt("manifest lists borrowed checkpoints in a container version without them", path, moff,
                       "manifest refs")
        return None
    refs: dict = {}
    try:
        if not borrows:
            raise ValueError
        for r in man["refs"]:
            e, dg = r["epoch"], r["sha256"]
            if type(e) is not int or not 0 <= e < man["epoch"] or e in refs or not isinstance(dg, str) \
                    or len(bytes.fromhex(dg)) != 32:
                raise ValueError
            refs[e] = dg
        if not refs:
            raise ValueError
    except (KeyError, TypeError, ValueError, AttributeError):
        raise corrupt("manifest list of borrowed checkpoints is malformed", path, moff, "manifest refs") from None
    return refs


def _open_refs(path: str, refs: dict, ends: dict, ref_fd, opened: list, borrowed_path) -> dict:
    """{epoch: (descriptor, path)} of the checkpoints a version-3 container borrows chunks from, each checked to
    be the very file it was written against (its manifest's SHA-256) and to hold the bytes borrowed (they lie in
    its data region). Files are named by ``borrowed_path(epoch)``; ``ref_fd(epoch)`` may give an open descriptor (a
    reader's pin). Descriptors this opens are appended to ``opened`` (the caller closes them)."""
    out = {}
    for e, digest in refs.items():
        rpath = borrowed_path(e)
        rfd = ref_fd(e) if ref_fd is not None else None
        if rfd is None:
            try:
                rfd = os.open(rpath, os.O_RDONLY)
            except FileNotFoundError:
                raise corrupt(f"checkpoint {e}, which holds chunks of {os.path.basename(path)}, is missing", rpath,
                           None, "borrowed checkpoint missing") from None
            opened.append(rfd)
        data_end, got = trailer_info(rfd, rpath)
        if got != digest:
            raise corrupt(f"checkpoint {e} is not the one {os.path.basename(path)} borrows chunks from (its "
                       "manifest digest differs)", rpath, None, "borrowed checkpoint digest")
        if ends.get(e, 0) > data_end:
            raise corrupt(f"{os.path.basename(path)} borrows bytes past the data of checkpoint {e}", path, None,
                       "borrowed chunk range")
        out[e] = (rfd, rpath)
    return out


def trailer_info(fd: int, path: str) -> tuple[int, str]:
    """(manifest offset = end of the data region, SHA-256 hex of the manifest) from a container's trailer, whose
    own CRC is checked."""
    size = os.fstat(fd).st_size
    if size < HEAD_SIZE + TRAIL_SIZE:
        raise corrupt("file too short", path, 0, "container size")
    tr = os.pread(fd, TRAIL_SIZE, size - TRAIL_SIZE)
    if len(tr) != TRAIL_SIZE or _mask(_crc32c(tr[:_TRAIL.size])) != _U32.unpack_from(tr, _TRAIL.size)[0]:
        raise corrupt("trailer checksum mismatch", path, size - TRAIL_SIZE, "trailer crc")
    moff, mlen, _, msha, endm = _TRAIL.unpack_from(tr)
    if endm != END_MAGIC or moff < HEAD_SIZE or moff + mlen != size - TRAIL_SIZE:
        raise corrupt("bad trailer", path, size - TRAIL_SIZE, "trailer")
    return moff, msha.hex()


__all__ = ["ALIGN", "ALIGN_MIN", "CHUNK_BYTES", "END_MAGIC", "FORMAT_VERSION", "HEAD_SIZE", "READ_VERSIONS",
           "REF_VERSION", "TRAIL_SIZE", "PageRef", "corrupt", "declared_refs", "read_container",
           "read_container_manifest", "trailer_info", "write_container"]

"""Page memory: storage from the arena allocator, a resident-bytes budget, LRU spill to disk and reload.

Value pages and matrix pages share the budget and the LRU order. A value page's storage is an allocator block;
a matrix page's is the numpy arrays of its CSRs (:func:`mmsb.spill.held_bytes`), measured when the budget is
checked, since writes, transposes and views change it. A spilled matrix reloads on the first read of one of its
arrays (:class:`mmsb.spill.SpilledCSR`) or on :meth:`MemoryManager.use_matrix`."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Union

import numpy as np

from mmsb import _kernels
from mmsb.errors import CorruptionError, MemoryBudgetError, PageNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    from mmsb.matrix import MatrixPage
    from mmsb.pages import Page

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_bytes(value: Union[int, str, None]) -> Optional[int]:
    """``2**30``, ``"2GB"``, ``"512 MiB"`` -> bytes (binary units); None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        if value <= 0:
            raise ValueError(f"memory_limit must be positive, got {value}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot parse memory size {value!r} (use bytes or e.g. '2GB', '512MiB')")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def default_block_cache() -> int:
    """Bytes of freed large page blocks kept for reuse (see ``mmsb._ext.alloc``): ``MMSB_BLOCK_CACHE`` (e.g.
    ``"2GiB"``, ``0`` turns it off), else an eighth of physical memory, at most 4 GiB."""
    env = (os.environ.get("MMSB_BLOCK_CACHE") or "").strip()
    if env == "0":
        return 0
    if env:
        try:
            return int(parse_bytes(env))
        except ValueError:
            warnings.warn(f"mmsb: MMSB_BLOCK_CACHE={env!r} is not a size (e.g. '2GiB' or 0); using the default",
                          RuntimeWarning, stacklevel=2)
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        phys = 8 * 2**30
    return int(min(phys // 8, 4 * 2**30))


_kernels.alloc.block_cache_limit(default_block_cache())

_MALLOC_TRIM: Any = None


def _unlink(path: Optional[str]) -> None:
    if path is not None:
        try:
            os.remove(path)
        except OSError:
            pass


def _stamp(path: str) -> Optional[tuple]:
    """(inode, size, mtime) of a file, None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _crc32c(mv) -> int:
    import crc32c

    return crc32c.crc32c(mv)


def _raw_crcs(data: np.ndarray, chunks: list) -> list:
    """[(elements, CRC32C of their bytes)] per chunk of a spill file just read into ``data``: a RAW chunk's is the
    one its manifest lists (the read checked it), a compressed chunk's is computed from the decoded values."""
    flat = data.reshape(-1)
    out = []
    pos = 0
    for c in chunks:
        n = int(c["n"])
        crc = int(c["crc32c"]) if c["codec"] == 0 else _crc32c(memoryview(flat[pos:pos + n]).cast("B"))
        out.append((n, crc))
        pos += n
    return out


def _chunk_crcs(data: np.ndarray, chunks: list) -> bool:
    """Whether ``data`` (a flat page array) still holds what it held when it was reloaded: [(elements, CRC32C of
    their bytes)] per chunk of its spill file (see :func:`_raw_crcs`)."""
    flat = data.reshape(-1)
    pos = 0
    for n, crc in chunks:
        if _crc32c(memoryview(flat[pos:pos + n]).cast("B")) != crc:
            return False
        pos += n
    return pos == flat.size


def _signature(parts: list) -> tuple:
    """What a matrix's CSRs are: which ones, and their versions (bumped by every entry update)."""
    return tuple((part, id(c), c.version) for part, c in parts)


def _trim_heap() -> None:
    """Hand freed page memory back to the OS: the block cache is emptied, and glibc (which keeps freed blocks of
    every thread's arena mapped) is asked to ``malloc_trim``. The latter is a no-op elsewhere."""
    global _MALLOC_TRIM
    _kernels.alloc.block_cache_clear()
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        try:
            import ctypes
            import ctypes.util

            _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            pass
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


class MatrixSpill(NamedTuple):
    """Where a spilled matrix page is and what it held (``MatrixPage._mspill``)."""

    path: str
    nbytes: int           # the bytes it held (held_bytes), freed by the spill
    nnz: int
    page_nbytes: int      # its own CSR's bytes (MatrixPage.nbytes)
    layout: tuple         # ((part, shape, dtype, index dtype), ...) of the CSRs in the file


class MemoryManager:
    """Allocates page storage and keeps resident page bytes under ``limit`` by spilling cold pages."""

    def __init__(self, limit: Optional[int], spill_dir: Optional[str]):
        self.limit = limit
        self.allocator = _kernels.alloc.Allocator()
        self._spill_root = spill_dir
        self._own_tmp: Optional[str] = None
        self._lru: "OrderedDict[str, Page]" = OrderedDict()     # least recently used first
        self._page_bytes = 0          # resident value pages (matrix pages are measured: see resident_bytes)
        self._matrices: dict[str, "MatrixPage"] = {}     # matrix pages held here, resident or spilled
        self._mclean: dict[str, tuple] = {}   # name -> (page, file, signature, CRC32Cs, stamp) of a reloaded matrix
        self.spilled_bytes = 0
        self.evictions = 0
        self.reloads = 0
        self.spill_seconds = 0.0
        self.reload_seconds = 0.0
        self._gen = 0
        self.spill_writes = 0         # spill files written (evicting an unchanged, reloaded page writes none)
        self._clean: dict[str, tuple] = {}   # name -> (page, file, epoch, chunk CRC32Cs, stamp) of a reloaded page
        self._lock = threading.RLock()
        self._trim_due = False        # evictions freed memory that _settle has not looked at yet
        self._ghost: "OrderedDict[str, int]" = OrderedDict()   # pages read through their spill file lately
        self._ghost_bytes = 0
        self.read_throughs = 0

    @property
    def resident_bytes(self) -> int:
        """Bytes of the resident value pages and matrix pages."""
        return self._page_bytes + sum(self._matrix_bytes().values())

    def _matrix_bytes(self) -> dict:
        """name -> bytes held, of every resident matrix page."""
        from mmsb.spill import held_bytes

        return {n: held_bytes(M) for n, M in self._matrices.items() if M._mspill is None}

    # -- storage --------------------------------------------------------------------------------------------
    def allocate(self, page: "Page", fill: Any) -> None:
        """Give ``page`` resident storage filled with ``fill`` (None: left uninitialised for the caller)."""
        nbytes = page.size * page.dtype.itemsize
        if self.limit is not None:
            self.make_room(nbytes)
        handle, arr = self.allocator.alloc_view(nbytes or 1, page.dtype, (page.size,))
        if fill is not None:
            arr.fill(fill)
        page._handle, page._data = handle, arr
        self._page_bytes += nbytes
        if self.limit is not None:
            self._lru[page.name] = page
            self._settle()

    def block_loader(self) -> Optional["BlockLoader"]:
        """Fresh allocator blocks for a checkpoint being loaded (None under a memory limit: pages are then
        allocated one by one, which may spill earlier ones)."""
        if self.limit is not None:
            return None
        return BlockLoader(self)

    def adopt(self, page: "Page", handle: int, arr: np.ndarray) -> None:
        """Make a block filled by a :class:`BlockLoader` the storage of ``page`` (no copy)."""
        page._handle, page._data = handle, arr
        self._page_bytes += page.nbytes

    def release(self, page: "Page") -> None:
        """Free ``page``'s storage (resident or spilled)."""
        if page.kind == "matrix":
            self._release_matrix(page)
            return
        if page.device != "cpu":                  # GPU page: device memory goes back to mmsb.gpu's pool
            page._data = None
            self._lru.pop(page.name, None)
            return
        with self._lock:
            if page._data is not None:
                page._data = None
                self.allocator.free(page._handle)
                page._handle = None
                self._page_bytes -= page.nbytes
            if page._spill is not None:
                self._remove_spill(page)
            ent = self._clean.get(page.name)
            if ent is not None and ent[0] is page:
                del self._clean[page.name]
                _unlink(ent[1])
            self._lru.pop(page.name, None)
            nb = self._ghost.pop(page.name, None)
            if nb is not None:
                self._ghost_bytes -= nb

    def read(self, page: "Page") -> np.ndarray:
        """A flat copy of the page's content (``page.read()``). Under a memory limit, a read of a spilled page goes
        straight from its spill file into the copy (checksummed, as a reload is), without making the page
        resident or evicting another, unless the page was read that way recently: 2Q's admission (Johnson &
        Shasha), so that a scan over more pages than fit does not evict the hot ones or turn every read into an
        eviction plus a reload. ``read_throughs`` counts those reads (``reloads`` counts them too: every load of
        spilled data)."""
        if page.device == "cpu" and self.limit is not None:
            with self._lock:
                if page._data is None and page._spill is not None and not page._pins and not self._admit(page):
                    return self._read_through(page)
        return self.array(page).copy()

    def _admit(self, page: "Page") -> bool:
        """Whether a read of spilled ``page`` makes it resident: only when its name is in the ghost queue of pages
        read through their spill file lately (up to half the limit's bytes, oldest dropped first); otherwise it
        enters that queue."""
        ghost = self._ghost
        if ghost.pop(page.name, None) is not None:
            return True
        ghost[page.name] = page.nbytes
        self._ghost_bytes += page.nbytes
        while ghost and self._ghost_bytes > self.limit // 2:
            _, nb = ghost.popitem(last=False)
            self._ghost_bytes -= nb
        return False

    def _read_through(self, page: "Page") -> np.ndarray:
        from mmsb.spill import read_blob_file

        t0 = time.perf_counter()
        out = np.empty(page.size, dtype=page.dtype)

        def into(dtype: Any, n: int) -> np.ndarray:
            if np.dtype(dtype) != page.dtype or int(n) != page.size:
                from mmsb.errors import CorruptionError

                raise CorruptionError(f"spill file of page {page.name!r} holds {n} {np.dtype(dtype)}, "
                                      f"expected {page.size} {page.dtype}", file=page._spill, what="blob")
            return out

        read_blob_file(page._spill, blocks=into)
        self.read_throughs += 1
        self.reloads += 1               # (a load of spilled data, though not into residency)
        self.reload_seconds += time.perf_counter() - t0
        return out

    def array(self, page: "Page") -> np.ndarray:
        """The page's flat, writable storage, reloaded if it was spilled."""
        if page.device != "cpu":                  # GPU page: a numpy copy (not host-resident, never spilled)
            from mmsb.gpu import host_copy

            return host_copy(page)
        data = page._data
        if data is None:
            with self._lock:
                if page._data is None:
                    self._reload(page)
                data = page._data
        if self.limit is not None:
            lru = self._lru
            if lru.pop(page.name, None) is not None or page._data is not None:
                lru[page.name] = page
        return data

    # -- budget -----------------------------------------------------------------------------------------------
    def make_room(self, nbytes: int) -> None:
        """Evict cold pages so that ``nbytes`` more fit under the limit; raise if pinned pages prevent it."""
        if self.limit is None:
            return
        with self._lock:
            if nbytes > self.limit:
                raise MemoryBudgetError(f"a page of {nbytes} bytes cannot fit a memory_limit of {self.limit} bytes")
            mbytes = self._matrix_bytes()
            resident = self._page_bytes + sum(mbytes.values())
            evictable = sum(mbytes[p.name] if p.kind == "matrix" else p.nbytes
                            for p in self._lru.values() if self._evictable(p))
            if resident - evictable + nbytes > self.limit:
                raise MemoryBudgetError(
                    f"memory_limit of {self.limit} bytes cannot be met: {resident - evictable} bytes "
                    f"are pinned and {nbytes} more are needed")
            self._evict(resident, nbytes, mbytes)

    def enforce(self) -> None:
        """Spill cold, unpinned pages until resident bytes are within the limit (best effort)."""
        if self.limit is None:
            return
        with self._lock:
            mbytes = self._matrix_bytes()
            resident = self._page_bytes + sum(mbytes.values())
            if resident <= self.limit:
                return
            self._evict(resident, 0, mbytes)
            self._settle()

    @staticmethod
    def _evictable(p: "Page") -> bool:
        """Whether ``p`` is resident and not pinned."""
        if p._pins:
            return False
        return p._mspill is None if p.kind == "matrix" else p._data is not None

    def _evict(self, resident: int, nbytes: int, mbytes: dict, keep: Optional["Page"] = None) -> None:
        """Spill resident, unpinned pages (value and matrix pages alike), least recently used first, until
        ``resident`` (bytes now) plus ``nbytes`` fit the limit or none is left; never ``keep``."""
        for name in list(self._lru):
            if resident + nbytes <= self.limit:
                break
            p = self._lru[name]
            if p is keep or not self._evictable(p):
                continue
            if p.kind == "matrix":
                self._spill_matrix(p, mbytes[name])
                resident -= mbytes[name]
            else:
                self._spill(p)
                resident -= p.nbytes

    def _settle(self) -> None:
        """After evictions and the allocation they made room for: the blocks they freed stay in the allocator's
        block cache (a reload of a page of the same size takes one at once, without the page faults of fresh
        memory) only while resident plus cached bytes fit the limit; otherwise the cache is emptied and the C
        heap trimmed, so that the process's RSS, not only the count, stays bounded."""
        with self._lock:
            if not self._trim_due:
                return
            self._trim_due = False
            if self.resident_bytes + _kernels.alloc.block_cache_stats()["bytes"] > self.limit:
                _trim_heap()

    # -- spill ------------------------------------------------------------------------------------------------
    def _dir(self) -> str:
        if self._spill_root is None:
            if self._own_tmp is None:
                self._own_tmp = tempfile.mkdtemp(prefix="mmsb-spill-")
            return self._own_tmp
        os.makedirs(self._spill_root, exist_ok=True)
        return self._spill_root

    def _spill(self, page: "Page") -> None:
        from mmsb.spill import write_blob_file

        t0 = time.perf_counter()
        path = self._clean_copy(page)
        if path is None:                  # changed since it was last reloaded (or never spilled): write it
            self._gen += 1
            path = os.path.join(self._dir(), f"{self._gen:012d}.spill")
            write_blob_file(path, page._data, {"page": page.name, "dtype": page.dtype.str, "size": page.size})
            self.spill_writes += 1
        page._spill = path
        self.allocator.free(page._handle)
        page._data, page._handle = None, None
        self._page_bytes -= page.nbytes
        self.spilled_bytes += page.nbytes
        self.evictions += 1
        self._trim_due = True         # _settle: keep the freed block for the allocation this makes room for
        self.spill_seconds += time.perf_counter() - t0

    def _clean_copy(self, page: "Page") -> Optional[str]:
        """The spill file that still holds exactly ``page``'s content (reloaded from it, the page not changed
        since -- same epoch, same CRC32C -- and the file untouched -- same inode, size and mtime), else None (a
        stale one is removed)."""
        ent = self._clean.pop(page.name, None)
        if ent is None:
            return None
        owner, path, epoch, crcs, stamp = ent
        if owner is page and page.epoch == epoch and _stamp(path) == stamp and _chunk_crcs(page._data, crcs):
            return path
        _unlink(path)
        return None

    def _reload(self, page: "Page") -> None:
        from mmsb.spill import read_blob_file

        t0 = time.perf_counter()
        self._lru.pop(page.name, None)
        self.make_room(page.nbytes)
        handle = self.allocator.alloc(max(page.nbytes, 1))
        try:
            arr = self.allocator.view(handle, page.dtype, (page.size,))
            advise_hugepages(arr)          # a fresh block: huge pages make filling it cheap (as numpy does)

            def into(dtype: Any, n: int) -> np.ndarray:     # the blob is read straight into the page's block
                if np.dtype(dtype) != page.dtype or int(n) != page.size:
                    from mmsb.errors import CorruptionError

                    raise CorruptionError(f"spill file of page {page.name!r} holds {n} {np.dtype(dtype)}, "
                                          f"expected {page.size} {page.dtype}", file=page._spill, what="blob")
                return arr

            info: dict = {}
            read_blob_file(page._spill, blocks=into, info=info)
        except BaseException:
            self.allocator.free(handle)
            raise
        finally:
            self._settle()
        path = page._spill
        page._spill = None
        self.spilled_bytes -= page.nbytes
        # the file stays: evicting the page again while unchanged writes nothing. What it holds is known from
        # the checks the read just passed: each chunk's element count and CRC32C (no second pass over the page)
        self._clean[page.name] = (page, path, page.epoch, _raw_crcs(arr, info["manifest"]["pages"][0]["chunks"]),
                                  _stamp(path))
        page._handle, page._data = handle, arr
        self._page_bytes += page.nbytes
        self.reloads += 1
        self._lru[page.name] = page
        self.reload_seconds += time.perf_counter() - t0

    def _remove_spill(self, page: "Page") -> None:
        _unlink(page._spill)
        page._spill = None
        self.spilled_bytes -= page.nbytes

    # -- matrix pages -----------------------------------------------------------------------------------------
    def track_matrix(self, M: "MatrixPage") -> None:
        """Count matrix page ``M`` (just made) in the budget; under a limit, make room for it (best effort: a
        matrix is never refused, since its bytes already exist) and make it the most recently used."""
        with self._lock:
            self._matrices[M.name] = M
            if self.limit is not None:
                self._lru.pop(M.name, None)
                self._lru[M.name] = M
                mbytes = self._matrix_bytes()
                self._evict(self._page_bytes + sum(mbytes.values()), 0, mbytes, keep=M)
                self._settle()

    def use_matrix(self, M: "MatrixPage") -> None:
        """``M`` is about to be used (a wave's step through a rule that reads it, before the step holds any page
        array; a write; a read): reload it if it was spilled, making room for it, and make it the most recently
        used."""
        if self.limit is None or self._matrices.get(M.name) is not M:
            return
        if M._mspill is not None:
            self.load_matrix(M, evict=True)
            return
        lru = self._lru
        lru.pop(M.name, None)
        lru[M.name] = M

    def _read_matrix_spill(self, M: "MatrixPage", info: Optional[dict] = None) -> dict:
        """The checked arrays of spilled ``M``'s spill file (part -> (indptr, indices, data)); a damaged, foreign
        or missing file is a CorruptionError naming the matrix."""
        from mmsb.spill import read_matrix_spill

        rec = M._mspill
        try:
            pl, arrays = read_matrix_spill(rec.path, info)
            layout = tuple((c["part"], tuple(c["shape"]), c["dtype"], c["index"]) for c in pl["csrs"])
            if pl.get("matrix") != M.name or layout != rec.layout:
                raise CorruptionError("it holds another matrix or other CSRs than were spilled", what="matrix spill")
        except FileNotFoundError:
            raise CorruptionError(f"matrix {M.name!r}: its spill file is missing; the matrix cannot be reloaded",
                                  file=rec.path, what="matrix spill") from None
        except CorruptionError as exc:
            raise CorruptionError(f"matrix {M.name!r}: its spill file does not read back ({exc})",
                                  file=rec.path, what="matrix spill") from None
        return arrays

    def spilled_csr(self, M: "MatrixPage") -> Any:
        """The own CSR of spilled ``M`` read from its spill file, without making ``M`` resident (a checkpoint's
        copy of its entries)."""
        from mmsb.csr import CSR

        with self._lock:
            if M._mspill is None:
                return M.csr
            indptr, indices, data = self._read_matrix_spill(M)["A"]
            return CSR(M.shape, indptr, indices, data, free=M.csr.free)

    def load_matrix(self, M: "MatrixPage", evict: bool = False) -> None:
        """Reload spilled matrix page ``M``: its spill file is read and checked first (a damaged or missing one is
        a CorruptionError naming the matrix, and ``M`` stays spilled), then every CSR it held gets its arrays
        back, exactly as they were. ``evict``: make room for it first, as a value page's reload does, and make it
        the most recently used; without (the first read of an array of a spilled CSR, maybe in the middle of a
        wave's step, which may hold page arrays that an eviction would take away) nothing is evicted, it becomes
        the *least* recently used (the first to go when that step needs room), and the end of the commit
        restores the limit (:meth:`enforce`)."""
        from mmsb.spill import matrix_parts, restore

        with self._lock:
            rec = M._mspill
            if rec is None:
                return
            if self._matrices.get(M.name) is not M:
                raise PageNotFoundError(f"matrix {M.name!r} is no longer in the buffer (dropped or closed)")
            t0 = time.perf_counter()
            parts = list(matrix_parts(M))
            info: dict = {}
            arrays = self._read_matrix_spill(M, info)
            if evict:
                mbytes = self._matrix_bytes()
                self._evict(self._page_bytes + sum(mbytes.values()), rec.nbytes, mbytes, keep=M)
            restore(parts, arrays)
            M._mspill = None
            self.spilled_bytes -= rec.nbytes
            # the file stays: evicting the matrix again while unchanged writes nothing (see _clean_matrix_copy)
            crcs = {part: [_raw_crcs(a, ch) for a, ch in zip(arrays[part], info["chunks"][part])]
                    for part, _ in parts}
            self._mclean[M.name] = (M, rec.path, _signature(parts), crcs, _stamp(rec.path))
            self.reloads += 1
            self._lru.pop(M.name, None)
            self._lru[M.name] = M
            if evict:
                self._settle()
            else:       # in the middle of a step: the first to go when a page it holds needs room, not that page
                self._lru.move_to_end(M.name, last=False)
            self.reload_seconds += time.perf_counter() - t0

    def _spill_matrix(self, M: "MatrixPage", nbytes: int) -> None:
        """Write ``M``'s CSRs to a spill file (none when its last one still holds them) and drop their arrays."""
        from mmsb.spill import hollow, matrix_parts, write_matrix_spill

        t0 = time.perf_counter()
        parts = list(matrix_parts(M))
        path = self._clean_matrix_copy(M, parts)
        if path is None:
            self._gen += 1
            path = os.path.join(self._dir(), f"{self._gen:012d}.spill")
            write_matrix_spill(path, M, parts)
            self.spill_writes += 1
        layout = tuple((part, tuple(int(x) for x in c.shape), c.data.dtype.str, c.indices.dtype.str)
                       for part, c in parts)
        M._mspill = MatrixSpill(path, nbytes, M.csr.nnz, M.nbytes, layout)
        hollow(M, parts)
        self.spilled_bytes += nbytes
        self.evictions += 1
        self.spill_seconds += time.perf_counter() - t0

    def _clean_matrix_copy(self, M: "MatrixPage", parts: list) -> Optional[str]:
        """The spill file ``M`` was reloaded from, when it still holds exactly ``M``'s CSRs (the same CSR objects
        at the same versions, every array's CRC32C unchanged, the file untouched), else None (a stale one is
        removed)."""
        ent = self._mclean.pop(M.name, None)
        if ent is None:
            return None
        owner, path, sig, crcs, stamp = ent
        if owner is M and sig == _signature(parts) and _stamp(path) == stamp \
                and all(_chunk_crcs(a, cr) for part, c in parts
                        for a, cr in zip((c.indptr, c.indices, c.data), crcs[part])):
            return path
        _unlink(path)
        return None

    def _release_matrix(self, M: "MatrixPage") -> None:
        with self._lock:
            rec = M._mspill                 # (its own spill file goes even when a new page took its name)
            if rec is not None:
                _unlink(rec.path)
                self.spilled_bytes -= rec.nbytes
                M._mspill = None
            ent = self._mclean.get(M.name)
            if ent is not None and ent[0] is M:
                del self._mclean[M.name]
                _unlink(ent[1])
            if self._matrices.get(M.name) is not M:
                return
            del self._matrices[M.name]
            self._lru.pop(M.name, None)

    def close(self) -> None:
        if self._own_tmp is not None:
            shutil.rmtree(self._own_tmp, ignore_errors=True)
            self._own_tmp = None
        elif self._spill_root is not None and os.path.isdir(self._spill_root):
            shutil.rmtree(self._spill_root, ignore_errors=True)

    def stats(self) -> dict:
        mbytes = self._matrix_bytes()
        return {"limit": self.limit, "resident_bytes": self._page_bytes + sum(mbytes.values()),
                "matrix_bytes": sum(mbytes.values()),
                "matrices_spilled": sum(1 for M in self._matrices.values() if M._mspill is not None),
                "spilled_bytes": self.spilled_bytes,
                "evictions": self.evictions, "reloads": self.reloads, "spill_writes": self.spill_writes,
                "read_throughs": self.read_throughs,
                "spill_seconds": self.spill_seconds,
                "reload_seconds": self.reload_seconds}


_MADVISE: Any = None
_HUGE_MIN = 4 * 2**20


def advise_hugepages(arr: np.ndarray) -> None:
    """Ask for transparent huge pages on a large, not yet touched block (as numpy does for its own arrays):
    filling 1 GiB then takes ~500 page faults instead of ~260,000. Linux only; best effort, a no-op elsewhere."""
    global _MADVISE
    if arr.nbytes < _HUGE_MIN:
        return
    if _MADVISE is None:
        _MADVISE = False
        try:
            import ctypes
            import mmap
            import sys

            if sys.platform.startswith("linux") and hasattr(mmap, "MADV_HUGEPAGE"):
                fn = ctypes.CDLL(None, use_errno=True).madvise
                fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                fn.restype = ctypes.c_int
                _MADVISE = (fn, mmap.MADV_HUGEPAGE, mmap.PAGESIZE)
        except (OSError, AttributeError):
            pass
    if _MADVISE:
        fn, advice, ps = _MADVISE
        start = (arr.ctypes.data + ps - 1) // ps * ps
        end = (arr.ctypes.data + arr.nbytes) // ps * ps
        if end > start:
            fn(start, end - start, advice)      # failure (e.g. THP off) is harmless


class BlockLoader:
    """Hands out fresh allocator blocks (flat arrays) to the checkpoint reader; a page adopts its block only once
    the whole checkpoint checked out (:meth:`take`); :meth:`discard` frees whatever was not taken."""

    def __init__(self, mm: MemoryManager):
        self._mm = mm
        self._blocks: dict[int, tuple[int, np.ndarray]] = {}

    def __call__(self, dtype: Any, n: int) -> np.ndarray:
        dt = np.dtype(dtype)
        alloc = self._mm.allocator
        handle = alloc.alloc(max(int(n) * dt.itemsize, 1))
        try:
            arr = alloc.view(handle, dt, (int(n),))
        except BaseException:
            alloc.free(handle)
            raise
        self._blocks[arr.ctypes.data] = (handle, arr)
        advise_hugepages(arr)
        return arr

    def take(self, arr: np.ndarray) -> Optional[tuple[int, np.ndarray]]:
        """(handle, flat array) of the block behind ``arr`` (a view of a whole block), or None."""
        ent = self._blocks.get(arr.ctypes.data) if isinstance(arr, np.ndarray) else None
        if ent is None or ent[1].nbytes != arr.nbytes:
            return None
        del self._blocks[arr.ctypes.data]
        return ent

    def discard(self) -> None:
        blocks, self._blocks = self._blocks, {}
        for handle, _ in blocks.values():
            self._mm.allocator.free(handle)


class ResidentArrays:
    """``name -> flat, writable storage`` of the pages in ``pages`` (the propagation engine's view of them): a
    resident CPU page's array straight away when no limit applies (no LRU to keep), else
    :meth:`MemoryManager.array` (which reloads a spilled page and copies a GPU page to the host)."""

    __slots__ = ("pages", "memory")

    def __init__(self, pages: dict, memory: MemoryManager):
        self.pages = pages
        self.memory = memory

    def __call__(self, name: str) -> np.ndarray:
        page = self.pages[name]
        data = page._data
        if data is None or page.device != "cpu" or self.memory.limit is not None:
            return self.memory.array(page)
        return data

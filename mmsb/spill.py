"""Spill files: what the memory limit evicts (mmsb.memory), in a container (mmsb.container), read back, every chunk
checked, when it is used again.

* A value page's spill file (a *blob*) holds its array and a JSON meta.
* A matrix page's spill file (a *matrix spill*, format :data:`MATRIX_SPILL_FORMAT`) holds the CSR arrays the
  matrix held: its own, its transpose once built, the views kept for rules in other semirings and their
  transposes. While a matrix is spilled, those CSR objects stay where the rules hold them, *hollow*: their arrays
  are gone and their class is :class:`SpilledCSR`, whose first read of an array reloads the matrix. A spilled
  matrix therefore cannot be used by mistake: any code that reaches its arrays (the engine through a rule, a
  write, a read, a checkpoint) reloads it first, and code that never does pays nothing.

Spill files live in ``root/spill/`` of a store (or a temporary directory) only while the buffer is open.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np

from mmsb.container import corrupt, read_container, write_container
from mmsb.csr import CSR

if TYPE_CHECKING:  # pragma: no cover
    from mmsb.matrix import MatrixPage

BLOB_MAGIC = b"MMSBBLB\0"
# smaller chunks than a checkpoint's, so that a reload reads and checks them on NTHREADS threads
BLOB_CHUNK_BYTES = 4 * 2**20


def write_blob_file(path: str, array, meta: dict | None = None, fsync: bool = False,
                    compress: bool = True) -> str:
    """Write one array (+ JSON meta) as a self-checksummed file, atomically (temp + rename)."""
    write_container(os.fspath(path), BLOB_MAGIC, 0, [(meta or {}, np.asarray(array))], [], None, fsync,
                    compress, kind="blob", chunk=BLOB_CHUNK_BYTES)
    return os.fspath(path)


def read_blob_file(path: str, blocks=None, info: dict | None = None) -> tuple[dict, np.ndarray]:
    """Read and validate a blob file: (meta, array). CorruptionError when any check fails. ``blocks`` (a
    callable ``(dtype, n) -> flat array``, as the checkpoint reader's): the array is read straight into it.
    ``info``: a dict that receives the validated container manifest (``info["manifest"]``)."""
    man, pages, _ = read_container(os.fspath(path), BLOB_MAGIC, strong=False, blocks=blocks)
    if len(pages) != 1:
        raise corrupt("blob file must hold one array", path, None, "blob")
    if info is not None:
        info["manifest"] = man
    return pages[0]


# -- matrix spill files -------------------------------------------------------------------------------------------
#: the version of a matrix spill file's layout (the ``format`` of its ``matrix_spill`` entry); see docs/FORMAT.md
MATRIX_SPILL_FORMAT = 1
MATRIX_SPILL_KIND = "matrix_spill"
_ARRAYS = ("indptr", "indices", "data")


def matrix_parts(M: "MatrixPage") -> Iterator[tuple[str, CSR]]:
    """``(part, CSR)`` of every CSR a matrix page holds: ``"A"`` (its own), ``"A.T"`` (its transpose, once built),
    ``"view/<semiring>/<dtype>"`` (a view kept for rules in another semiring or dtype) and ``"view/....T"``."""
    A = M.csr
    yield "A", A
    if A._t is not None:
        yield "A.T", A._t
    for (sr, dt), (v, _, _) in M._views.items():
        yield f"view/{sr}/{dt}", v
        if v._t is not None:
            yield f"view/{sr}/{dt}.T", v._t


def held_bytes(M: "MatrixPage") -> int:
    """Bytes of every array the resident matrix page holds: its CSR (free slots included), the transpose, the
    magnitude transpose, the views and their transposes (an array shared by two of them counted once)."""
    seen: set = set()
    total = 0
    for _, c in matrix_parts(M):
        for x in (c, c._abs_t):
            if x is None:
                continue
            for a in (x.indptr, x.indices, x.data):
                if id(a) not in seen:
                    seen.add(id(a))
                    total += a.nbytes
    return total


class SpilledCSR(CSR):
    """A CSR of a spilled matrix page: its arrays are in the page's spill file. Reading ``indptr``, ``indices`` or
    ``data`` reloads the page (every CSR of it comes back, as it was) and returns the array; everything else
    (shape, ``free``, ``version``, the cached range and finiteness flags) stays readable without a reload."""

    def __getattr__(self, name: str) -> Any:
        if name in _ARRAYS:
            M = self.__dict__.get("_spilled_of")
            if M is not None:
                M._buf._memory.load_matrix(M)
                return object.__getattribute__(self, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __reduce_ex__(self, protocol: Any) -> Any:       # (pickled or copied: as the resident CSR it reloads to)
        self.indptr  # noqa: B018 - reloads
        return CSR.__reduce_ex__(self, protocol)

    def __repr__(self) -> str:
        return f"CSR(shape={self.shape}, spilled)"


def hollow(M: "MatrixPage", parts: list) -> None:
    """Drop the arrays of every CSR in ``parts`` (written to the spill file first) and their magnitude
    transposes (rebuilt on use); each becomes a :class:`SpilledCSR` that reloads ``M``."""
    for _, c in parts:
        d = c.__dict__
        for a in _ARRAYS:
            d.pop(a, None)
        c._abs_t = None
        d["_spilled_of"], d["_spilled_cls"] = M, type(c)
        c.__class__ = SpilledCSR


def restore(parts: list, arrays: dict) -> None:
    """Give the hollow CSRs of ``parts`` their arrays back (``arrays``: part -> (indptr, indices, data))."""
    for part, c in parts:
        d = c.__dict__
        d["indptr"], d["indices"], d["data"] = arrays[part]
        d.pop("_spilled_of", None)
        c.__class__ = d.pop("_spilled_cls", CSR)


def write_matrix_spill(path: str, M: "MatrixPage", parts: list, fsync: bool = False) -> str:
    """Write the CSRs ``parts`` (:func:`matrix_parts`) of matrix page ``M`` as a matrix spill file, atomically."""
    csrs, arrays = [], {}
    for i, (part, c) in enumerate(parts):
        csrs.append({"part": part, "shape": [int(c.shape[0]), int(c.shape[1])], "dtype": c.data.dtype.str,
                     "index": c.indices.dtype.str, "free": c.free is not None})
        for a in _ARRAYS:
            arrays[f"{i}.{a}"] = getattr(c, a)
    from mmsb.delta import SchemaOp

    payload = {"format": MATRIX_SPILL_FORMAT, "matrix": M.name, "shape": [int(M.shape[0]), int(M.shape[1])],
               "dtype": M.dtype.str, "semiring": M.semiring.name, "csrs": csrs}
    write_container(os.fspath(path), BLOB_MAGIC, 0, [], [SchemaOp(MATRIX_SPILL_KIND, payload, arrays)], None,
                    fsync, True, kind="blob", chunk=BLOB_CHUNK_BYTES)
    return os.fspath(path)


def read_matrix_spill(path: str, info: Optional[dict] = None, strong: bool = False) -> tuple[dict, dict]:
    """Read and validate a matrix spill file: ``(payload, {part: (indptr, indices, data)})``. Every chunk's
    CRC32C, the layout version, every array's dtype and length, the row pointers (from 0, non-decreasing, ending
    at the entry count) and the column indices (inside the shape) are checked; CorruptionError when one fails.
    ``info``: a dict that receives ``{part: [per-array chunk lists]}`` of the manifest (``info["chunks"]``).
    ``strong``: check every chunk's SHA-256 too (verify)."""
    path = os.fspath(path)
    man, pages, rules = read_container(path, BLOB_MAGIC, strong=strong)
    return _matrix_spill(path, man, pages, rules, info)


def _matrix_spill(path: str, man: dict, pages: list, rules: list, info: Optional[dict]) -> tuple[dict, dict]:
    if pages or len(rules) != 1 or rules[0].kind != MATRIX_SPILL_KIND:
        raise corrupt("not a matrix spill file (it must hold one matrix_spill entry and no page)", path, None,
                      "matrix spill")
    pl, arrs = rules[0].payload, rules[0].arrays
    if pl.get("format") != MATRIX_SPILL_FORMAT:
        raise corrupt(f"matrix spill format {pl.get('format')!r} is not {MATRIX_SPILL_FORMAT}", path, None,
                      "matrix spill")
    out: dict = {}
    chunks: dict = {}
    try:
        csrs = pl["csrs"]
        if not isinstance(csrs, list) or set(arrs) != {f"{i}.{a}" for i in range(len(csrs)) for a in _ARRAYS}:
            raise ValueError("its arrays are not those of its CSR list")
        ents = man["rules"][0]["arrays"]
        for i, c in enumerate(csrs):
            part = str(c["part"])
            n, m = (int(x) for x in c["shape"])
            indptr, indices, data = (arrs[f"{i}.{a}"] for a in _ARRAYS)
            if part in out or n < 0 or m < 0:
                raise ValueError(f"part {part!r} is repeated or has a negative shape")
            if indptr.dtype != np.int64 or indptr.shape != (n + 1,) or indices.ndim != 1 or data.ndim != 1 \
                    or indices.dtype.str != c["index"] or indices.dtype.kind != "i" or data.dtype.str != c["dtype"]:
                raise ValueError(f"part {part!r}: an array has the wrong dtype or shape")
            if indptr[0] != 0 or indptr[-1] != indices.size or indices.size != data.size \
                    or (indptr.size > 1 and bool((indptr[1:] < indptr[:-1]).any())):
                raise ValueError(f"part {part!r}: the row pointers do not fit its entries")
            if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= m):
                raise ValueError(f"part {part!r}: a column index is outside its shape")
            out[part] = (indptr, indices, data)
            chunks[part] = [ents[f"{i}.{a}"]["chunks"] for a in _ARRAYS]
    except (KeyError, TypeError, ValueError) as exc:
        raise corrupt(f"matrix spill entry is malformed ({exc})", path, None, "matrix spill") from None
    if info is not None:
        info["chunks"] = chunks
    return pl, out


def check_spill_file(path: str) -> None:
    """Read and validate a spill file of either kind (``mmsb verify``); CorruptionError when a check fails."""
    path = os.fspath(path)
    man, pages, rules = read_container(path, BLOB_MAGIC, strong=True)
    if len(pages) == 1 and not rules:
        return
    _matrix_spill(path, man, pages, rules, None)


__all__ = ["BLOB_CHUNK_BYTES", "BLOB_MAGIC", "MATRIX_SPILL_FORMAT", "SpilledCSR", "check_spill_file", "held_bytes",
           "hollow", "matrix_parts", "read_blob_file", "read_matrix_spill", "restore", "write_blob_file",
           "write_matrix_spill"]

"""mmsb's codec interface: codec ids (u8), encoders that pick the smallest encoding, checked decoders.

Every decoder raises :class:`mmsb.errors.CorruptionError` on bad input (never another exception, never a crash,
never an allocation larger than the declared element count, which callers take from checksummed headers).

Codec ids (stable, part of the file format; see docs/FORMAT.md):

====  ==================  ==============================================================
 id    name                payload
====  ==================  ==============================================================
 0     RAW                 the array's bytes, little-endian, C order (index: int64; mask: 1 byte per entry)
 1     INDEX_DELTA_PACK    delta-of-index + bit-pack (kernels ``encode_index``)
 2     MASK_RLE            first value + LEB128 run lengths (kernels ``encode_mask_rle``)
 3     MASK_BITPACK        1 bit per entry, LSB first (kernels ``encode_bitpack``)
 4     BLOSC2              u32 chunk count, u64 compressed length per chunk, then blosc2 chunks
                           (shuffle by itemsize, LZ4 or ZSTD; each chunk <= 64 MiB of raw data)
====  ==================  ==============================================================
"""
from __future__ import annotations

import os
import struct
import threading
from typing import Any, Optional

import numpy as np

try:
    from mmsb import _kernels
    _k = _kernels.codecs
except ImportError:  # pragma: no cover - sibling kernels missing during development
    if os.environ.get("MMSB_PUREPYTHON") == "1":
        from mmsb._ref import codecs as _k
    else:
        try:
            from mmsb._ext import codecs as _k
        except ImportError:
            from mmsb._ref import codecs as _k

from mmsb.errors import CorruptionError

_blosc2_module: Any = None


def _blosc2() -> Any:
    """blosc2, imported on first use (it costs ~0.2 s and brings pydantic, httpx and rich with it).

    blosc2 keeps the GIL during (de)compression unless told otherwise; released, the checkpoint loader decodes its
    chunks on several threads at once (2 threads: ~1.9x). Process-wide, and harmless for other blosc2 callers.
    """
    global _blosc2_module
    if _blosc2_module is None:
        import blosc2

        if hasattr(blosc2, "set_releasegil"):
            blosc2.set_releasegil(True)
        _blosc2_module = blosc2
    return _blosc2_module

RAW = 0
INDEX_DELTA_PACK = 1
MASK_RLE = 2
MASK_BITPACK = 3
BLOSC2 = 4

CODECS = {
    RAW: "raw",
    INDEX_DELTA_PACK: "index-delta-bitpack",
    MASK_RLE: "mask-rle",
    MASK_BITPACK: "mask-bitpack",
    BLOSC2: "blosc2",
}

#: dtypes a page or value array may have (numpy ``dtype.str`` in little-endian form).
ALLOWED_DTYPES = frozenset(np.dtype(t).newbyteorder("<").str for t in (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128"))

BLOSC_CHUNK = 64 * 2**20
SMALL = 256  # below this many raw bytes values are stored raw
NTHREADS = max(1, min(8, os.cpu_count() or 1))
PARALLEL_BYTES = 4 * 2**20
SAMPLE_BYTES = 256 * 2**10

_U32 = struct.Struct("<I")


class CodecStats:
    """Thread-safe running totals of raw vs encoded bytes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.raw_bytes = 0
        self.encoded_bytes = 0

    def add(self, raw: int, encoded: int) -> None:
        with self._lock:
            self.raw_bytes += raw
            self.encoded_bytes += encoded

    def as_dict(self) -> dict:
        with self._lock:
            r, e = self.raw_bytes, self.encoded_bytes
        return {"raw_bytes": r, "encoded_bytes": e, "compression_ratio": (r / e) if e else 1.0}


#: process-wide totals (the log keeps its own as well)
STATS = CodecStats()


def dtype_str(dtype) -> str:
    """The canonical little-endian dtype string of an allowed dtype (ValueError otherwise)."""
    dt = np.dtype(dtype)
    s = dt.newbyteorder("<").str if dt.byteorder not in ("|",) else dt.str
    if s not in ALLOWED_DTYPES:
        raise ValueError(f"dtype {dt} cannot be stored")
    return s


def parse_dtype(s: str) -> np.dtype:
    """Inverse of :func:`dtype_str`; CorruptionError for anything else."""
    if not isinstance(s, str) or s not in ALLOWED_DTYPES:
        raise CorruptionError(f"unknown dtype {s!r}", what="dtype")
    return np.dtype(s)


def _le(arr: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(arr)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and not _LITTLE):
        a = a.astype(a.dtype.newbyteorder("<"))
    return a


_LITTLE = np.little_endian


# ---------------------------------------------------------------- index

def encode_index(idx) -> tuple[int, bytes]:
    a = np.ascontiguousarray(idx, dtype=np.int64).reshape(-1)
    raw = _le(a).tobytes()
    if a.size > 1 and not (a[1:] >= a[:-1]).all():
        return RAW, raw
    enc = _k.encode_index(a)
    return (INDEX_DELTA_PACK, enc) if len(enc) < len(raw) else (RAW, raw)


def decode_index(codec_id: int, buf, n: int) -> np.ndarray:
    n = _count(n)
    if codec_id == RAW:
        return _raw(buf, np.dtype("<i8"), n).astype(np.int64, copy=False)
    if codec_id == INDEX_DELTA_PACK:
        return _k.decode_index(buf, n)
    raise CorruptionError(f"codec {codec_id} is not an index codec", what="codec id")


# ---------------------------------------------------------------- mask

def encode_mask(mask) -> tuple[int, bytes]:
    m = np.ascontiguousarray(mask, dtype=bool).reshape(-1)
    if m.size and (m.all() if m[0] else not m.any()):      # one run (e.g. a whole-page write): RLE wins
        return MASK_RLE, _k.encode_mask_rle(m)
    best = (MASK_BITPACK, _k.encode_bitpack(m))
    rle = _k.encode_mask_rle(m)
    if len(rle) < len(best[1]):
        best = (MASK_RLE, rle)
    if m.size < len(best[1]):
        best = (RAW, m.view(np.uint8).tobytes())
    return best


def decode_mask(codec_id: int, buf, n: int) -> np.ndarray:
    n = _count(n)
    if codec_id == MASK_BITPACK:
        return _k.decode_bitpack(buf, n)
    if codec_id == MASK_RLE:
        return _k.decode_mask_rle(buf, n)
    if codec_id == RAW:
        u = _raw(buf, np.dtype(np.uint8), n)
        if (u > 1).any():
            raise CorruptionError("raw mask byte other than 0/1", what="mask")
        return u.view(bool)
    raise CorruptionError(f"codec {codec_id} is not a mask codec", what="codec id")


# ---------------------------------------------------------------- values

def encode_values(arr, *, codec: str = "lz4", clevel: int = 5, nthreads: Optional[int] = None,
                  allow_compress: bool = True, max_fraction: float = 1.0, view: bool = False) -> tuple[int, Any]:
    """Encode a flat array's bytes: blosc2 (shuffle by itemsize) when that is smaller than
    ``max_fraction`` x raw (< 1.0 trades a little size for faster loads), else raw.

    With ``max_fraction < 1`` large arrays are probed first: samples (start, middle, end) are compressed and the
    whole array is compressed only when they save enough. ``view=True`` returns RAW data as a read-only
    memoryview of the (little-endian) array instead of a bytes copy: use it before the array changes."""
    if view and not allow_compress and type(arr) is np.ndarray and arr.size and arr.flags.c_contiguous \
            and (arr.dtype.byteorder in "|<" or (arr.dtype.byteorder == "=" and _LITTLE)):
        return RAW, memoryview(arr).cast("B").toreadonly()      # the commit path's case, without the steps below
    a = _le(np.asarray(arr))
    mv = memoryview(a.reshape(-1)).cast("B") if a.size else memoryview(b"")
    nbytes = mv.nbytes

    def raw():
        return RAW, (mv.toreadonly() if view else mv.tobytes())

    if not allow_compress or nbytes < SMALL:
        return raw()
    if nthreads is None:  # blosc2 threads cost ~80 us to wake: only worth it for large buffers
        nthreads = NTHREADS if nbytes >= PARALLEL_BYTES else 1
    if nbytes >= SAMPLE_BYTES * 4 and max_fraction < 1.0:
        # skip incompressible data cheaply: try samples first
        item = a.dtype.itemsize
        part = (SAMPLE_BYTES // 2) // item * item
        total = 0
        for off in (0, (nbytes // 2) // item * item, nbytes - part):
            smp = _blosc_encode(mv[off:off + part], item, codec, clevel, 1)
            if smp is None:
                return raw()
            total += len(smp)
        if total > max_fraction * 3 * part:
            return raw()
    enc = _blosc_encode(mv, a.dtype.itemsize, codec, clevel, nthreads)
    if enc is None or len(enc) > max_fraction * nbytes:
        return raw()
    return BLOSC2, enc


class AdaptiveValues:
    """Chooses per stream (e.g. a page) whether to try blosc2 on the commit path: after ``misses`` encodings in a
    row that did not save ``min_saving`` (a fifth), only every ``probe``-th encoding tries again, so nearly
    incompressible data (random floats save ~12%) costs no compression time."""

    def __init__(self, misses: int = 4, probe: int = 64, min_saving: float = 0.2):
        self.misses = misses
        self.probe = probe
        self.min_saving = min_saving
        self._miss: dict = {}

    def encode(self, key, arr, view: bool = False) -> tuple[int, Any]:
        miss = self._miss.get(key, 0)
        if miss >= self.misses and miss % self.probe:
            self._miss[key] = miss + 1
            return encode_values(arr, allow_compress=False, view=view)
        cid, data = encode_values(arr, view=view)
        saved = cid != RAW and len(data) <= (1.0 - self.min_saving) * np.asarray(arr).nbytes
        self._miss[key] = 0 if saved else miss + 1
        return cid, data


def _blosc_encode(mv: memoryview, typesize: int, codec: str, clevel: int, nthreads: int) -> Optional[bytes]:
    blosc2 = _blosc2()
    cd = blosc2.Codec.ZSTD if codec == "zstd" else blosc2.Codec.LZ4
    chunks = []
    total = 0
    for off in range(0, mv.nbytes, BLOSC_CHUNK):
        piece = mv[off:off + BLOSC_CHUNK]
        c = blosc2.compress2(piece, typesize=typesize, clevel=clevel, codec=cd,
                             filters=[blosc2.Filter.SHUFFLE], nthreads=nthreads)
        chunks.append(c)
        total += len(c)
        if total >= mv.nbytes:
            return None
    return struct.pack(f"<I{len(chunks)}Q", len(chunks), *map(len, chunks)) + b"".join(chunks)


def decode_values(codec_id: int, buf, dtype, n: int, out: Optional[np.ndarray] = None,
                  nthreads: Optional[int] = None) -> np.ndarray:
    """Decode ``n`` values of ``dtype``; into ``out`` (a flat contiguous array of that dtype/size) if given."""
    n = _count(n)
    dt = parse_dtype(dtype) if isinstance(dtype, str) else np.dtype(dtype)
    if codec_id == RAW:
        a = _raw(buf, dt, n)
        if dt.kind == "b" and (a.view(np.uint8) > 1).any():
            raise CorruptionError("bool value byte other than 0/1", what="values")
        if out is not None:
            out[...] = a
            return out
        return a
    if codec_id == BLOSC2:
        return _blosc_decode(buf, dt, n, out, nthreads or NTHREADS)
    raise CorruptionError(f"codec {codec_id} is not a values codec", what="codec id")


def _blosc_decode(buf, dt: np.dtype, n: int, out, nthreads: int) -> np.ndarray:
    blosc2 = _blosc2()
    mv = memoryview(buf).cast("B")
    L = mv.nbytes
    expect = n * dt.itemsize
    if L < 4:
        raise CorruptionError("blosc2: buffer too short", what="blosc2 header")
    nch = _U32.unpack_from(mv, 0)[0]
    if nch == 0 or 4 + 8 * nch > L or nch != max(1, -(-expect // BLOSC_CHUNK)):
        raise CorruptionError(f"blosc2: bad chunk count {nch}", what="blosc2 header")
    lens = struct.unpack_from(f"<{nch}Q", mv, 4)
    pos = 4 + 8 * nch
    if pos + sum(lens) != L:
        raise CorruptionError("blosc2: chunk lengths do not match the buffer", what="blosc2 header")
    p = pos
    for i, ln in enumerate(lens):     # every chunk's own header must declare its share before anything is allocated
        want = min(BLOSC_CHUNK, expect - i * BLOSC_CHUNK)
        if ln < 16:
            raise CorruptionError("blosc2: chunk shorter than its header", what="blosc2 header")
        nbytes, _, cbytes = struct.unpack_from("<iii", mv, p + 4)
        if nbytes != want or cbytes != ln:
            raise CorruptionError(f"blosc2: chunk {i} declares {nbytes} bytes in {cbytes}, expected {want} in {ln}",
                                  what="blosc2 header")
        p += ln
    if out is None:
        try:
            out = np.empty(n, dtype=dt)
        except (MemoryError, ValueError):
            raise CorruptionError(f"blosc2: {expect} decoded bytes declared, more than can be allocated",
                                  what="blosc2 size") from None
    dst = memoryview(out.reshape(-1)).cast("B") if n else memoryview(bytearray(0))
    if dst.nbytes != expect:
        raise ValueError("decode_values: out has the wrong size")
    raw_off = 0
    for i, ln in enumerate(lens):
        chunk = mv[pos:pos + ln]
        want = min(BLOSC_CHUNK, expect - raw_off)
        try:
            nbytes, cbytes, _bs = blosc2.get_cbuffer_sizes(chunk)
        except Exception as exc:
            raise CorruptionError(f"blosc2: bad chunk header ({exc})", what="blosc2 chunk") from None
        if nbytes != want or cbytes != ln:
            raise CorruptionError("blosc2: chunk sizes do not match", what="blosc2 chunk")
        try:
            got = blosc2.decompress2(chunk, dst=dst[raw_off:raw_off + want], nthreads=nthreads)
        except Exception as exc:
            raise CorruptionError(f"blosc2: decompression failed ({exc})", what="blosc2 chunk") from None
        if got is not None and got != want and not isinstance(got, (bytes, bytearray)):
            raise CorruptionError("blosc2: short decompression", what="blosc2 chunk")
        pos += ln
        raw_off += want
    if dt.kind == "b" and n and (out.reshape(-1).view(np.uint8) > 1).any():
        raise CorruptionError("bool value byte other than 0/1", what="values")
    return out


# ---------------------------------------------------------------- helpers

def _count(n) -> int:
    n = int(n)
    if n < 0:
        raise CorruptionError(f"negative element count {n}", what="count")
    return n


def _raw(buf, dt: np.dtype, n: int) -> np.ndarray:
    mv = memoryview(buf).cast("B")
    if mv.nbytes != n * dt.itemsize:
        raise CorruptionError(f"raw: {mv.nbytes} bytes for {n} x {dt}", what="raw length")
    return np.frombuffer(mv, dtype=dt.newbyteorder("<") if dt.itemsize > 1 else dt, count=n)


__all__ = ["RAW", "INDEX_DELTA_PACK", "MASK_RLE", "MASK_BITPACK", "BLOSC2", "CODECS", "CodecStats", "STATS",
           "encode_index", "decode_index", "encode_mask", "decode_mask", "encode_values", "decode_values",
           "dtype_str", "parse_dtype", "ALLOWED_DTYPES"]

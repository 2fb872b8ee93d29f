"""Pure-numpy twin of :mod:`mmsb._ext.codecs` (same API, byte-identical output).

Formats (see docs/FORMAT.md, "Codecs"):

* index (delta-of-index + bit-pack): ``b""`` for n == 0; otherwise ``u8 w`` + ``i64 first`` (little-endian) +
  the n-1 non-negative gaps packed with ``w`` bits each, LSB-first, padding bits zero. ``w`` is the minimal bit
  width of the largest gap, at least 1 when n > 1 (so n is bounded by the buffer size), and 0 when n == 1.
* mask RLE: ``b""`` for n == 0; otherwise ``u8 first value`` (0/1) + LEB128 run lengths (each >= 1, canonical).
* mask bit-pack: ``ceil(n/8)`` bytes, LSB-first, padding bits zero.

Decoders validate every length and count before allocating and raise :class:`mmsb.errors.CorruptionError`.
"""
from __future__ import annotations

import numpy as np

from mmsb.errors import CorruptionError

__all__ = ["encode_index", "decode_index", "encode_mask_rle", "decode_mask_rle", "encode_bitpack",
           "decode_bitpack"]

_U64 = np.uint64


def _buf(buf) -> np.ndarray:
    return np.frombuffer(memoryview(buf).cast("B"), dtype=np.uint8)


def _check_n(n) -> int:
    n = int(n)
    if n < 0:
        raise CorruptionError(f"negative element count {n}", what="count")
    return n


def _pack_bits(vals: np.ndarray, w: int) -> bytes:
    """Pack uint64 ``vals`` with ``w`` bits each, LSB-first."""
    if vals.size == 0:
        return b""
    shifts = np.arange(w, dtype=_U64)
    bits = ((vals[:, None] >> shifts) & _U64(1)).astype(np.uint8).reshape(-1)
    return np.packbits(bits, bitorder="little").tobytes()


def _unpack_bits(data: np.ndarray, count: int, w: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=_U64)
    bits = np.unpackbits(data, count=count * w, bitorder="little").reshape(count, w).astype(_U64)
    return (bits << np.arange(w, dtype=_U64)).sum(axis=1, dtype=_U64)


def encode_index(idx) -> bytes:
    a = np.ascontiguousarray(idx, dtype=np.int64).reshape(-1)
    n = a.size
    if n == 0:
        return b""
    if n == 1:
        return bytes([0]) + a[:1].astype("<i8").tobytes()
    if (a[1:] < a[:-1]).any():
        raise ValueError("encode_index needs a non-decreasing index")
    u = a.view(_U64)
    gaps = u[1:] - u[:-1]  # wraps correctly for int64 spans beyond 2**63
    w = max(1, int(gaps.max()).bit_length())
    return bytes([w]) + a[:1].astype("<i8").tobytes() + _pack_bits(gaps, w)


def decode_index(buf, n) -> np.ndarray:
    n = _check_n(n)
    b = _buf(buf)
    L = b.size
    if n == 0:
        if L != 0:
            raise CorruptionError(f"index: {L} bytes for 0 entries", what="index length")
        return np.zeros(0, dtype=np.int64)
    if L < 9:
        raise CorruptionError(f"index: buffer of {L} bytes is too short", what="index length")
    w = int(b[0])
    first = b[1:9].view("<i8")[0]
    if n == 1:
        if w != 0 or L != 9:
            raise CorruptionError("index: bad header for a single entry", what="index header")
        return np.array([first], dtype=np.int64)
    if w < 1 or w > 64:
        raise CorruptionError(f"index: bit width {w} out of range", what="index bit width")
    if n - 1 > (L - 9) * 8:
        raise CorruptionError(f"index: {n} entries cannot fit in {L} bytes", what="index count")
    nbits = (n - 1) * w
    if L != 9 + (nbits + 7) // 8:
        raise CorruptionError(f"index: {L} bytes for {n} entries of {w} bits", what="index length")
    data = b[9:]
    if nbits % 8 and (int(data[-1]) >> (nbits % 8)):
        raise CorruptionError("index: non-zero padding bits", what="index padding")
    gaps = _unpack_bits(data, n - 1, w)
    out = np.empty(n, dtype=_U64)
    out[0] = np.int64(first).view(_U64)
    np.cumsum(gaps, dtype=_U64, out=out[1:])
    out[1:] += out[0]
    res = out.view(np.int64)
    if (res[1:] < res[:-1]).any():
        raise CorruptionError("index: gaps overflow int64", what="index overflow")
    return res


def _varints(v: np.ndarray) -> bytes:
    v = v.astype(_U64)
    bl = np.zeros(v.size, dtype=np.int64)
    t = v.copy()
    while True:
        nz = t != 0
        if not nz.any():
            break
        bl += nz
        t >>= _U64(1)
    nb = np.maximum(1, (bl + 6) // 7)
    k = np.arange(10)
    digits = ((v[:, None] >> (7 * k).astype(_U64)) & _U64(0x7F)).astype(np.uint8)
    digits |= np.where(k[None, :] < (nb[:, None] - 1), 0x80, 0).astype(np.uint8)
    return digits[k[None, :] < nb[:, None]].tobytes()


def encode_mask_rle(mask) -> bytes:
    m = np.ascontiguousarray(mask, dtype=bool).reshape(-1)
    n = m.size
    if n == 0:
        return b""
    change = np.flatnonzero(m[1:] != m[:-1]) + 1
    bounds = np.concatenate(([0], change, [n]))
    runs = np.diff(bounds)
    return bytes([1 if m[0] else 0]) + _varints(runs)


def decode_mask_rle(buf, n) -> np.ndarray:
    n = _check_n(n)
    b = _buf(buf)
    L = b.size
    if n == 0:
        if L != 0:
            raise CorruptionError(f"rle: {L} bytes for 0 entries", what="rle length")
        return np.zeros(0, dtype=bool)
    if L < 2:
        raise CorruptionError("rle: buffer too short", what="rle length")
    first = int(b[0])
    if first > 1:
        raise CorruptionError(f"rle: bad first value {first}", what="rle header")
    d = b[1:]
    if d[-1] & 0x80:
        raise CorruptionError("rle: truncated varint", what="rle varint")
    ends = np.flatnonzero(d < 0x80)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lens = ends - starts + 1
    if (lens > 10).any():
        raise CorruptionError("rle: varint longer than 10 bytes", what="rle varint")
    if ((lens > 1) & (d[ends] == 0)).any():
        raise CorruptionError("rle: non-canonical varint", what="rle varint")
    if ((lens == 10) & (d[ends] > 1)).any():
        raise CorruptionError("rle: varint overflows 64 bits", what="rle varint")
    pos = np.arange(d.size) - np.repeat(starts, lens)
    parts = (d & 0x7F).astype(_U64) << (7 * pos).astype(_U64)
    runs = np.add.reduceat(parts, starts)
    if (runs == 0).any():
        raise CorruptionError("rle: zero-length run", what="rle run")
    if (runs > _U64(n)).any():
        raise CorruptionError("rle: run longer than the mask", what="rle run")
    total = runs.sum(dtype=np.float64)  # exact enough to reject, checked exactly below
    if total > n + 1 or int(runs.sum(dtype=_U64)) != n:
        raise CorruptionError(f"rle: runs sum to {int(total)}, expected {n}", what="rle count")
    vals = (np.arange(runs.size) % 2 == 0) == bool(first)
    return np.repeat(vals, runs.astype(np.int64))


def encode_bitpack(mask) -> bytes:
    m = np.ascontiguousarray(mask, dtype=bool).reshape(-1)
    return np.packbits(m, bitorder="little").tobytes()


def decode_bitpack(buf, n) -> np.ndarray:
    n = _check_n(n)
    b = _buf(buf)
    if b.size != (n + 7) // 8:
        raise CorruptionError(f"bitpack: {b.size} bytes for {n} bits", what="bitpack length")
    if n % 8 and (int(b[-1]) >> (n % 8)):
        raise CorruptionError("bitpack: non-zero padding bits", what="bitpack padding")
    return np.unpackbits(b, count=n, bitorder="little").view(bool)

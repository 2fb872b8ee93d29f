# cython: language_level=3
"""Compiled codecs: delta-of-index bit-pack, mask RLE (LEB128 runs) and mask bit-pack.

Byte-identical to the numpy twin :mod:`mmsb._ref.codecs`; formats in docs/FORMAT.md. Decoders validate every
length and count before they allocate and raise :class:`mmsb.errors.CorruptionError` on malformed input.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport uint8_t, uint64_t, int64_t
from libc.string cimport memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

from mmsb.errors import CorruptionError

cnp.import_array()


cdef inline int _bitlen(uint64_t v) noexcept nogil:
    cdef int r = 0
    while v:
        r += 1
        v >>= 1
    return r


cdef inline void _put_bits(uint8_t* out, Py_ssize_t pos, uint64_t v, int w) noexcept nogil:
    cdef int take, off
    while w > 0:
        off = pos & 7
        take = 8 - off
        if take > w:
            take = w
        out[pos >> 3] |= <uint8_t>((v & ((<uint64_t>1 << take) - 1)) << off)
        v >>= take
        pos += take
        w -= take


cdef inline uint64_t _get_bits(const uint8_t* data, Py_ssize_t pos, int w) noexcept nogil:
    cdef uint64_t v = 0
    cdef int got = 0, off, take
    while got < w:
        off = pos & 7
        take = 8 - off
        if take > w - got:
            take = w - got
        v |= (<uint64_t>((data[pos >> 3] >> off) & ((1 << take) - 1))) << got
        got += take
        pos += take
    return v


def encode_index(idx):
    cdef cnp.ndarray a
    if cnp.PyArray_CheckExact(idx) and cnp.PyArray_TYPE(<cnp.ndarray>idx) == cnp.NPY_INT64 \
            and cnp.PyArray_NDIM(<cnp.ndarray>idx) == 1 and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>idx) \
            and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>idx):
        a = <cnp.ndarray>idx                # (the common case: the delta's own index, taken as it is)
    else:
        a = np.ascontiguousarray(idx, dtype=np.int64).reshape(-1)
    cdef Py_ssize_t n = cnp.PyArray_DIM(a, 0), i
    cdef const int64_t* p
    cdef uint64_t g, mx = 0
    cdef int w
    cdef bytes out
    cdef uint8_t* o
    cdef int64_t first
    if n == 0:
        return b""
    p = <const int64_t*>cnp.PyArray_DATA(a)
    first = p[0]
    if n == 1:
        out = PyBytes_FromStringAndSize(NULL, 9)
        o = <uint8_t*>PyBytes_AS_STRING(out)
        o[0] = 0
        for i in range(8):
            o[1 + i] = <uint8_t>((<uint64_t>first) >> (8 * i))
        return out
    for i in range(1, n):
        if p[i] < p[i - 1]:
            raise ValueError("encode_index needs a non-decreasing index")
        g = <uint64_t>p[i] - <uint64_t>p[i - 1]
        if g > mx:
            mx = g
    w = _bitlen(mx)
    if w < 1:
        w = 1
    cdef Py_ssize_t nbytes = 9 + ((n - 1) * w + 7) // 8
    out = PyBytes_FromStringAndSize(NULL, nbytes)      # (a fresh bytes object: filled here before anyone sees it)
    o = <uint8_t*>PyBytes_AS_STRING(out)
    memset(o, 0, nbytes)
    o[0] = <uint8_t>w
    for i in range(8):
        o[1 + i] = <uint8_t>((<uint64_t>first) >> (8 * i))
    with nogil:
        for i in range(1, n):
            _put_bits(o + 9, (i - 1) * w, <uint64_t>p[i] - <uint64_t>p[i - 1], w)
    return out


def decode_index(buf, Py_ssize_t n):
    cdef const uint8_t[::1] b = memoryview(buf).cast("B")
    cdef Py_ssize_t L = b.shape[0], i, nbits
    cdef int w, k
    cdef uint64_t first = 0, cur, nxt
    cdef cnp.ndarray[int64_t, ndim=1] out
    cdef int64_t* o
    cdef const uint8_t* data
    cdef bint bad = 0
    if n < 0:
        raise CorruptionError(f"negative element count {n}", what="count")
    if n == 0:
        if L != 0:
            raise CorruptionError(f"index: {L} bytes for 0 entries", what="index length")
        return np.zeros(0, dtype=np.int64)
    if L < 9:
        raise CorruptionError(f"index: buffer of {L} bytes is too short", what="index length")
    w = b[0]
    for k in range(8):
        first |= (<uint64_t>b[1 + k]) << (8 * k)
    if n == 1:
        if w != 0 or L != 9:
            raise CorruptionError("index: bad header for a single entry", what="index header")
        return np.array([<int64_t>first], dtype=np.int64)
    if w < 1 or w > 64:
        raise CorruptionError(f"index: bit width {w} out of range", what="index bit width")
    if n - 1 > (L - 9) * 8:
        raise CorruptionError(f"index: {n} entries cannot fit in {L} bytes", what="index count")
    nbits = (n - 1) * w
    if L != 9 + (nbits + 7) // 8:
        raise CorruptionError(f"index: {L} bytes for {n} entries of {w} bits", what="index length")
    data = &b[9]
    if nbits % 8 and (data[L - 10] >> (nbits % 8)):
        raise CorruptionError("index: non-zero padding bits", what="index padding")
    out = np.empty(n, dtype=np.int64)
    o = <int64_t*>cnp.PyArray_DATA(out)
    with nogil:
        cur = first
        o[0] = <int64_t>first
        for i in range(1, n):
            nxt = cur + _get_bits(data, (i - 1) * w, w)
            if <int64_t>nxt < <int64_t>cur:
                bad = 1
                break
            o[i] = <int64_t>nxt
            cur = nxt
    if bad:
        raise CorruptionError("index: gaps overflow int64", what="index overflow")
    return out


def encode_mask_rle(mask):
    cdef cnp.ndarray[cnp.npy_bool, ndim=1] m = np.ascontiguousarray(mask, dtype=bool).reshape(-1)
    cdef Py_ssize_t n = m.shape[0], i, nruns = 0, pos
    cdef const uint8_t* p
    cdef uint8_t prev
    cdef uint64_t run
    cdef bytearray out
    cdef uint8_t* o
    if n == 0:
        return b""
    p = <const uint8_t*>cnp.PyArray_DATA(m)
    # worst case: one 1-byte varint per element (runs of 1), runs up to n need <= 10 bytes
    nruns = 1
    with nogil:
        for i in range(1, n):
            if (p[i] != 0) != (p[i - 1] != 0):
                nruns += 1
    out = bytearray(1 + 10 * nruns if nruns < n else 1 + n)
    o = out
    o[0] = 1 if p[0] else 0
    pos = 1
    with nogil:
        prev = p[0] != 0
        run = 1
        for i in range(1, n + 1):
            if i < n and (p[i] != 0) == prev:
                run += 1
                continue
            while run >= 0x80:
                o[pos] = <uint8_t>((run & 0x7F) | 0x80)
                pos += 1
                run >>= 7
            o[pos] = <uint8_t>run
            pos += 1
            if i < n:
                prev = p[i] != 0
                run = 1
    return bytes(out[:pos])


def decode_mask_rle(buf, Py_ssize_t n):
    cdef const uint8_t[::1] b = memoryview(buf).cast("B")
    cdef Py_ssize_t L = b.shape[0], pos, j
    cdef uint64_t total = 0, run
    cdef int shift, nb
    cdef uint8_t c
    cdef int err = 0
    cdef uint8_t first, val
    cdef cnp.ndarray out
    cdef uint8_t* o
    if n < 0:
        raise CorruptionError(f"negative element count {n}", what="count")
    if n == 0:
        if L != 0:
            raise CorruptionError(f"rle: {L} bytes for 0 entries", what="rle length")
        return np.zeros(0, dtype=bool)
    if L < 2:
        raise CorruptionError("rle: buffer too short", what="rle length")
    first = b[0]
    if first > 1:
        raise CorruptionError(f"rle: bad first value {first}", what="rle header")
    # pass 1: validate
    pos = 1
    with nogil:
        while pos < L:
            run = 0
            shift = 0
            nb = 0
            while True:
                if pos >= L:
                    err = 1
                    break
                c = b[pos]
                pos += 1
                nb += 1
                if nb > 10:
                    err = 2
                    break
                if nb == 10 and c > 1:
                    err = 3
                    break
                run |= (<uint64_t>(c & 0x7F)) << shift
                shift += 7
                if c < 0x80:
                    if nb > 1 and c == 0:
                        err = 4
                    break
            if err:
                break
            if run == 0:
                err = 5
                break
            if run > <uint64_t>n - total:
                err = 6
                break
            total += run
    if err == 1:
        raise CorruptionError("rle: truncated varint", what="rle varint")
    if err == 2:
        raise CorruptionError("rle: varint longer than 10 bytes", what="rle varint")
    if err == 3:
        raise CorruptionError("rle: varint overflows 64 bits", what="rle varint")
    if err == 4:
        raise CorruptionError("rle: non-canonical varint", what="rle varint")
    if err == 5:
        raise CorruptionError("rle: zero-length run", what="rle run")
    if err == 6:
        raise CorruptionError("rle: run longer than the mask", what="rle run")
    if total != <uint64_t>n:
        raise CorruptionError(f"rle: runs sum to {total}, expected {n}", what="rle count")
    out = np.empty(n, dtype=bool)
    o = <uint8_t*>cnp.PyArray_DATA(out)
    pos = 1
    j = 0
    val = first
    with nogil:
        while pos < L:
            run = 0
            shift = 0
            while True:
                c = b[pos]
                pos += 1
                run |= (<uint64_t>(c & 0x7F)) << shift
                shift += 7
                if c < 0x80:
                    break
            memset(o + j, val, run)
            j += run
            val = 1 - val
    return out


def encode_bitpack(mask):
    cdef cnp.ndarray[cnp.npy_bool, ndim=1] m = np.ascontiguousarray(mask, dtype=bool).reshape(-1)
    cdef Py_ssize_t n = m.shape[0], i
    cdef const uint8_t* p = <const uint8_t*>cnp.PyArray_DATA(m)
    cdef bytearray out = bytearray((n + 7) // 8)
    cdef uint8_t* o = out
    with nogil:
        for i in range(n):
            if p[i]:
                o[i >> 3] |= <uint8_t>(1 << (i & 7))
    return bytes(out)


def decode_bitpack(buf, Py_ssize_t n):
    cdef const uint8_t[::1] b = memoryview(buf).cast("B")
    cdef Py_ssize_t L = b.shape[0], i
    cdef cnp.ndarray out
    cdef uint8_t* o
    if n < 0:
        raise CorruptionError(f"negative element count {n}", what="count")
    if L != (n + 7) // 8:
        raise CorruptionError(f"bitpack: {L} bytes for {n} bits", what="bitpack length")
    if n % 8 and (b[L - 1] >> (n % 8)):
        raise CorruptionError("bitpack: non-zero padding bits", what="bitpack padding")
    out = np.empty(n, dtype=bool)
    o = <uint8_t*>cnp.PyArray_DATA(out)
    with nogil:
        for i in range(n):
            o[i] = (b[i >> 3] >> (i & 7)) & 1
    return out

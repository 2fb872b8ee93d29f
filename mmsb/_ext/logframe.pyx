# cython: language_level=3
"""Compiled log framing: the records of one transaction framed with their masked CRC32C checksums in one call.

Record layout (docs/FORMAT.md, :mod:`mmsb.log.segment`)::

    u32 payload length | u8 type | u64 epoch | u64 txid | u32 masked CRC32C(those 21 bytes + salt)
    payload
    u32 masked CRC32C(25-byte header + payload + salt)

CRC32C (Castagnoli, the ``crc32c`` package's convention: ``crc32c(data, value)`` continues ``value``) runs here:
the SSE4.2 instruction where the CPU has it (checked at import), else slicing-by-8 tables. Buffers of 64 KiB and
more go to the ``crc32c`` package (which interleaves three streams and releases the GIL). Twin:
:mod:`mmsb._ref.logframe` (same API, same bytes).
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from crc32c import crc32c as _package_crc

__all__ = ["crc32c", "frame_records", "hardware", "small_delta"]

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    #include <nmmintrin.h>
    #define MMSB_CRC_HW 1
    #endif

    static uint32_t mmsb_crc_table[8][256];
    static int mmsb_crc_hw = 0;

    static void mmsb_crc_init(void) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
            mmsb_crc_table[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; i++)
            for (int t = 1; t < 8; t++)
                mmsb_crc_table[t][i] = (mmsb_crc_table[t - 1][i] >> 8) ^ mmsb_crc_table[0][mmsb_crc_table[t - 1][i] & 0xFF];
    #ifdef MMSB_CRC_HW
        __builtin_cpu_init();
        mmsb_crc_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    #endif
    }

    /* raw CRC update (no pre/post inversion) with slicing-by-8 */
    static uint32_t mmsb_crc_soft(uint32_t c, const uint8_t *p, size_t n) {
        while (n >= 8) {
            uint32_t lo, hi;
            memcpy(&lo, p, 4);
            memcpy(&hi, p + 4, 4);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
            lo = __builtin_bswap32(lo);
            hi = __builtin_bswap32(hi);
    #endif
            lo ^= c;
            c = mmsb_crc_table[7][lo & 0xFF] ^ mmsb_crc_table[6][(lo >> 8) & 0xFF] ^
                mmsb_crc_table[5][(lo >> 16) & 0xFF] ^ mmsb_crc_table[4][lo >> 24] ^
                mmsb_crc_table[3][hi & 0xFF] ^ mmsb_crc_table[2][(hi >> 8) & 0xFF] ^
                mmsb_crc_table[1][(hi >> 16) & 0xFF] ^ mmsb_crc_table[0][hi >> 24];
            p += 8;
            n -= 8;
        }
        while (n--) c = (c >> 8) ^ mmsb_crc_table[0][(c ^ *p++) & 0xFF];
        return c;
    }

    #ifdef MMSB_CRC_HW
    __attribute__((target("sse4.2")))
    static uint32_t mmsb_crc_sse42(uint32_t c, const uint8_t *p, size_t n) {
        uint64_t c64 = c;
        while (n >= 8) {
            uint64_t v;
            memcpy(&v, p, 8);
            c64 = _mm_crc32_u64(c64, v);
            p += 8;
            n -= 8;
        }
        c = (uint32_t)c64;
        while (n--) c = _mm_crc32_u8(c, *p++);
        return c;
    }
    #endif

    /* crc32c(data, value) as the crc32c package computes it; soft != 0 forces the tables */
    static uint32_t mmsb_crc32c(uint32_t value, const uint8_t *p, size_t n, int soft) {
        uint32_t c = ~value;
    #ifdef MMSB_CRC_HW
        if (mmsb_crc_hw && !soft) return ~mmsb_crc_sse42(c, p, n);
    #endif
        return ~mmsb_crc_soft(c, p, n);
    }

    static int mmsb_crc_hardware(void) { return mmsb_crc_hw; }
    """
    void mmsb_crc_init() nogil
    uint32_t mmsb_crc32c(uint32_t value, const uint8_t *p, size_t n, int soft) nogil
    int mmsb_crc_hardware() nogil

mmsb_crc_init()

cdef Py_ssize_t _LARGE = 1 << 16      # bytes from which a buffer's CRC goes to the crc32c package
cdef uint64_t _MAX_PAYLOAD = 0xFFFFFFFF


def hardware() -> bool:
    """Whether CRC32C runs on the SSE4.2 instruction here (else on tables)."""
    return bool(mmsb_crc_hardware())


def crc32c(data, unsigned int value=0, bint soft=False) -> int:
    """CRC32C of ``data`` continuing ``value`` (``crc32c.crc32c``'s convention); ``soft``: the tables even where
    the instruction is there (for tests)."""
    cdef Py_buffer view
    cdef uint32_t c
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            c = mmsb_crc32c(value, <const uint8_t *>view.buf, <size_t>view.len, soft)
    finally:
        PyBuffer_Release(&view)
    return c


cdef inline uint32_t _mask(uint32_t c) noexcept nogil:
    return ((c >> 15) | (c << 17)) + 0xA282EAD8u


cdef inline void _put32(uint8_t *o, uint32_t v) noexcept nogil:
    o[0] = v & 0xFF
    o[1] = (v >> 8) & 0xFF
    o[2] = (v >> 16) & 0xFF
    o[3] = v >> 24


cdef inline void _put64(uint8_t *o, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        o[i] = (v >> (8 * i)) & 0xFF


cdef uint32_t _crc_piece(uint32_t c, object piece) except? 0xFFFFFFFF:
    cdef Py_buffer view
    PyObject_GetBuffer(piece, &view, PyBUF_SIMPLE)
    try:
        if view.len >= _LARGE:
            c = _package_crc(piece, c)
        else:
            c = mmsb_crc32c(c, <const uint8_t *>view.buf, <size_t>view.len, 0)
    finally:
        PyBuffer_Release(&view)
    return c


def frame_records(list records, uint64_t epoch, uint64_t txid, bytes salt) -> tuple:
    """``records``: ``[(record type, [payload buffers])]`` of one transaction. Returns ``(buffers, total)``: per
    record its 25-byte header, its payload buffers (the same objects) and its 4-byte trailer, in order, and
    their total length. ValueError for a payload over 4 GiB or a type outside 0..255."""
    cdef list out = []
    cdef Py_ssize_t total = 0
    cdef uint64_t n
    cdef uint32_t c
    cdef uint8_t head[25]
    cdef uint8_t tail[4]
    cdef Py_buffer view
    cdef const uint8_t *s = <const uint8_t *>salt
    cdef size_t ns = len(salt)
    cdef int rtype
    for rec in records:
        rt, pieces = rec
        rtype = rt
        if rtype < 0 or rtype > 255:
            raise ValueError(f"record type {rtype} out of range")
        n = 0
        for p in pieces:
            PyObject_GetBuffer(p, &view, PyBUF_SIMPLE)
            n += <uint64_t>view.len
            PyBuffer_Release(&view)
        if n > _MAX_PAYLOAD:
            raise ValueError("record payload larger than 4 GiB")
        _put32(head, <uint32_t>n)
        head[4] = <uint8_t>rtype
        _put64(head + 5, epoch)
        _put64(head + 13, txid)
        c = mmsb_crc32c(mmsb_crc32c(0, head, 21, 0), s, ns, 0)
        _put32(head + 21, _mask(c))
        c = mmsb_crc32c(0, head, 25, 0)
        out.append(PyBytes_FromStringAndSize(<char *>head, 25))
        for p in pieces:
            c = _crc_piece(c, p)
            out.append(p)
        c = mmsb_crc32c(c, s, ns, 0)
        _put32(tail, _mask(c))
        out.append(PyBytes_FromStringAndSize(<char *>tail, 4))
        total += <Py_ssize_t>n + 29
    return out, total


cdef inline char *_put_part(char *out, uint8_t code, uint64_t n) noexcept:
    """A u8 + u64 little-endian (a 1-d shape, or a codec part's head)."""
    out[0] = <char>code
    _put64(<uint8_t *>out + 1, n)
    return out + 9


def small_delta(bytes name, int flags, src, idx, packed, bytes dt_head, values, int raw_code,
                int packed_code) -> tuple:
    """The payload of one DELTA record (docs/FORMAT.md, :func:`mmsb.log.records.delta_pieces`) of a delta whose
    values are stored raw, in one bytes object: name, ``flags``, ``src`` (bytes or None), the index when ``idx``
    is not None (a 1-d int64 array: ``packed``, its delta-bitpacked bytes, where given and smaller, else raw),
    then ``dt_head`` (the dtype part of the values header) and the 1-d ``values``, raw. ``raw_code`` and
    ``packed_code`` are the codec ids. Returns ``(payload, encoded bytes of the index)``."""
    cdef Py_buffer iv, vv
    cdef Py_ssize_t nname = len(name), nsrc = 0, ndt = len(dt_head), total, nidx = 0, ndata = 0
    cdef bint has_src = src is not None, has_idx = idx is not None, use_packed = False, got_idx = False
    cdef Py_ssize_t nvals = len(values)
    cdef bytes src_b, out
    cdef char *o
    if nname > 0xFFFF:
        raise ValueError("name longer than 65535 bytes")
    if has_src:
        src_b = <bytes?>src
        nsrc = len(src_b)
        if nsrc > 0xFFFF:
            raise ValueError("source longer than 65535 bytes")
    PyObject_GetBuffer(values, &vv, PyBUF_SIMPLE)
    try:
        if has_idx:
            PyObject_GetBuffer(idx, &iv, PyBUF_SIMPLE)
            got_idx = True
            nidx = iv.len // 8
            use_packed = packed is not None and len(<bytes?>packed) < iv.len
            ndata = len(<bytes>packed) if use_packed else iv.len
        total = 2 + nname + 1 + (2 + nsrc if has_src else 0) + (18 + ndata if has_idx else 0) + ndt + 18 + vv.len
        out = PyBytes_FromStringAndSize(NULL, total)
        o = PyBytes_AS_STRING(out)
        o[0] = <char>(nname & 0xFF)
        o[1] = <char>(nname >> 8)
        memcpy(o + 2, <char *>name, nname)
        o += 2 + nname
        o[0] = <char>flags
        o += 1
        if has_src:
            o[0] = <char>(nsrc & 0xFF)
            o[1] = <char>(nsrc >> 8)
            memcpy(o + 2, <char *>src_b, nsrc)
            o += 2 + nsrc
        if has_idx:
            o = _put_part(o, 1, <uint64_t>nidx)
            o = _put_part(o, <uint8_t>(packed_code if use_packed else raw_code), <uint64_t>ndata)
            if use_packed:
                memcpy(o, <char *>(<bytes>packed), ndata)
            else:
                memcpy(o, <char *>iv.buf, ndata)
            o += ndata
        memcpy(o, <char *>dt_head, ndt)
        o += ndt
        o = _put_part(o, 1, <uint64_t>nvals)
        o = _put_part(o, <uint8_t>raw_code, <uint64_t>vv.len)
        memcpy(o, <char *>vv.buf, vv.len)
    finally:
        PyBuffer_Release(&vv)
        if got_idx:
            PyBuffer_Release(&iv)
    return out, ndata

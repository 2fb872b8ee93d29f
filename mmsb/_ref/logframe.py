"""Pure-Python twin of the log framing kernel in ``mmsb._ext.logframe`` (same API, same bytes).

A record (docs/FORMAT.md): u32 payload length | u8 type | u64 epoch | u64 txid | u32 masked CRC32C(those 21 bytes
+ salt), the payload, then u32 masked CRC32C(25-byte header + payload + salt). CRC32C from the ``crc32c`` package.
"""
from __future__ import annotations

import struct

import crc32c as _crc

__all__ = ["crc32c", "frame_records", "hardware", "small_delta"]

_RHEAD = struct.Struct("<IBQQ")
_U32 = struct.Struct("<I")
_H = struct.Struct("<H")
_BQ = struct.Struct("<BQ")
_MAX_PAYLOAD = (1 << 32) - 1
_MAX_U64 = (1 << 64) - 1


def hardware() -> bool:
    """Whether CRC32C runs on a CPU instruction (the crc32c package's own choice)."""
    return bool(getattr(_crc, "hardware_based", False))


def crc32c(data, value: int = 0, soft: bool = False) -> int:
    """CRC32C of ``data`` continuing ``value``; ``soft`` is accepted for the kernel's API (no effect here)."""
    if not 0 <= value <= 0xFFFFFFFF:
        raise OverflowError("value out of range")
    return _crc.crc32c(data, value)


def _mask(c: int) -> int:
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def frame_records(records: list, epoch: int, txid: int, salt: bytes) -> tuple:
    """``records``: ``[(record type, [payload buffers])]`` of one transaction. Returns ``(buffers, total)``: per
    record its 25-byte header, its payload buffers (the same objects) and its 4-byte trailer, in order, and
    their total length. ValueError for a payload over 4 GiB or a type outside 0..255."""
    if not (0 <= epoch <= _MAX_U64 and 0 <= txid <= _MAX_U64):
        raise OverflowError("epoch and txid must fit in 64 bits")
    crc = _crc.crc32c
    out: list = []
    total = 0
    for rtype, pieces in records:
        if not 0 <= rtype <= 255:
            raise ValueError(f"record type {rtype} out of range")
        n = 0
        for p in pieces:
            n += memoryview(p).nbytes
        if n > _MAX_PAYLOAD:
            raise ValueError("record payload larger than 4 GiB")
        h = _RHEAD.pack(n, rtype, epoch, txid)
        head = h + _U32.pack(_mask(crc(salt, crc(h))))
        c = crc(head)
        for p in pieces:
            c = crc(p, c)
        out.append(head)
        out += pieces
        out.append(_U32.pack(_mask(crc(salt, c))))
        total += n + 29
    return out, total


def small_delta(name: bytes, flags: int, src, idx, packed, dt_head: bytes, values, raw_code: int,
                packed_code: int) -> tuple:
    """The payload of one DELTA record of a delta whose values are stored raw, in one bytes object (see the
    compiled kernel): ``(payload, encoded bytes of the index)``."""
    if len(name) > 0xFFFF:
        raise ValueError("name longer than 65535 bytes")
    if src is not None and len(src) > 0xFFFF:
        raise ValueError("source longer than 65535 bytes")
    out = [_H.pack(len(name)), name, bytes((flags,))]
    if src is not None:
        out += [_H.pack(len(src)), bytes(src)]
    ndata = 0
    if idx is not None:
        raw = memoryview(idx).cast("B").tobytes()
        data, code = (packed, packed_code) if packed is not None and len(packed) < len(raw) else (raw, raw_code)
        ndata = len(data)
        out += [_BQ.pack(1, len(idx)), _BQ.pack(code, ndata), data]
    vals = memoryview(values).cast("B").tobytes()
    out += [dt_head, _BQ.pack(1, len(values)), _BQ.pack(raw_code, len(vals)), vals]
    return b"".join(out), ndata

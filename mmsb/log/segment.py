"""Segment files: header, record framing, and a validating scanner (shared by the log, replay and verify).

Segment header (44 bytes)::

    magic b"MMSBLOG\\0" | u16 version | u16 flags | u32 reserved (0) | 16-byte salt | u64 base epoch |
    u32 masked CRC32C of the 40 bytes before it

Record::

    u32 payload length | u8 type | u64 epoch | u64 txid | u32 masked CRC32C(those 21 bytes + salt)   (25 bytes)
    payload
    u32 masked CRC32C(25-byte header + payload + salt)

Masking as LevelDB: ``((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32)``.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Optional

import crc32c as _crc

from mmsb import _kernels
from mmsb.errors import CorruptionError
from mmsb.layout import EPOCH_DIGITS
from mmsb.log.records import ABORT, CHECKPOINT_MARK, COMMIT, DELTA, RECORD_TYPES, SCHEMA

MAGIC = b"MMSBLOG\0"
VERSION = 1
HEADER = struct.Struct("<8sHHI16sQ")   # 40 bytes, then u32 crc
HEADER_SIZE = HEADER.size + 4          # 44
RHEAD = struct.Struct("<IBQQ")         # 21 bytes, then u32 crc
RHEAD_SIZE = RHEAD.size + 4            # 25
TRAILER_SIZE = 4
MAX_PAYLOAD = (1 << 32) - 1
_U32 = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


def crc32c(data, value: int = 0) -> int:
    return _crc.crc32c(data, value)


def mask_crc(c: int) -> int:
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def segment_name(epoch: int) -> str:
    return f"{epoch:0{EPOCH_DIGITS}d}.seg"


def parse_segment_name(name: str) -> Optional[int]:
    if len(name) == 24 and name.endswith(".seg") and name[:20].isdigit():
        return int(name[:20])
    return None


def build_header(salt: bytes, base_epoch: int, flags: int = 0) -> bytes:
    h = HEADER.pack(MAGIC, VERSION, flags, 0, salt, base_epoch)
    return h + _U32.pack(mask_crc(crc32c(h)))


@dataclass
class SegmentHeader:
    version: int
    flags: int
    salt: bytes
    base_epoch: int


def parse_header(buf, file: str = None) -> SegmentHeader:
    if len(buf) < HEADER_SIZE:
        raise CorruptionError("segment header is short", file=file, offset=0, what="segment header")
    h = bytes(buf[:HEADER.size])
    (crc,) = _U32.unpack_from(buf, HEADER.size)
    magic, version, flags, reserved, salt, base = HEADER.unpack(h)
    if magic != MAGIC:
        raise CorruptionError("bad segment magic", file=file, offset=0, what="segment magic")
    if mask_crc(crc32c(h)) != crc:
        raise CorruptionError("segment header checksum mismatch", file=file, offset=0, what="segment header")
    if version != VERSION:
        raise CorruptionError(f"unsupported segment format version {version}", file=file, offset=8,
                              what="segment version")
    if reserved != 0 or flags != 0:
        raise CorruptionError("unknown segment flags", file=file, offset=10, what="segment flags")
    return SegmentHeader(version, flags, salt, base)


def build_record(rtype: int, epoch: int, txid: int, payload: bytes, salt: bytes) -> bytes:
    pieces, _ = frame_record(rtype, epoch, txid, [payload], salt)
    return b"".join(pieces)


def frame_record(rtype: int, epoch: int, txid: int, payload: list, salt: bytes) -> tuple[list, int]:
    """A record as buffers to write in order (header, the payload's buffers, CRC trailer) and its length."""
    return _kernels.logframe.frame_records([(rtype, payload)], epoch, txid, salt)


def frame_records(records: list, epoch: int, txid: int, salt: bytes) -> tuple[list, int]:
    """:func:`frame_record` for several ``(rtype, payload buffers)`` of one transaction: all buffers in order
    and their total length (the log framing kernel, ``mmsb._kernels.logframe``)."""
    return _kernels.logframe.frame_records(records, epoch, txid, salt)


@dataclass
class Record:
    offset: int      # of the record header within the file
    rtype: int
    epoch: int
    txid: int
    payload: memoryview
    end: int         # offset just past the record


def _header_ok(mv, pos: int, salt: bytes):
    """The record header at pos if its CRC holds (length, type, epoch, txid), else None."""
    if pos + RHEAD_SIZE > len(mv):
        return None
    h = mv[pos:pos + RHEAD.size]
    (hc,) = _U32.unpack_from(mv, pos + RHEAD.size)
    if mask_crc(crc32c(salt, crc32c(h))) != hc:
        return None
    return RHEAD.unpack(h)


def record_at(mv, pos: int, salt: bytes, check_payload: bool = True) -> tuple[Optional[Record], str]:
    """Parse and fully check the record at pos: (record, "") or (None, reason). ``check_payload=False`` checks
    only the header CRC (the payload was not read: see ``scan_segment(skip_epoch=...)``)."""
    size = len(mv)
    if pos + RHEAD_SIZE > size:
        return None, "short header"
    hd = _header_ok(mv, pos, salt)
    if hd is None:
        return None, "record header checksum mismatch"
    length, rtype, epoch, txid = hd
    end = pos + RHEAD_SIZE + length + TRAILER_SIZE
    if end > size:
        return None, "past end of file"
    if rtype not in RECORD_TYPES:
        return None, f"unknown record type {rtype}"
    if not check_payload:
        return Record(pos, rtype, epoch, txid, mv[pos + RHEAD_SIZE:pos + RHEAD_SIZE + length], end), ""
    c = crc32c(mv[pos:pos + RHEAD_SIZE + length])
    c = crc32c(salt, c)
    (stored,) = _U32.unpack_from(mv, end - TRAILER_SIZE)
    if mask_crc(c) != stored:
        return None, "record checksum mismatch"
    return Record(pos, rtype, epoch, txid, mv[pos + RHEAD_SIZE:pos + RHEAD_SIZE + length], end), ""


def valid_record_after(mv, pos: int, salt: bytes) -> Optional[int]:
    """Offset of the first fully valid record strictly after pos (resynchronisation), or None.

    Candidates are filtered with numpy (plausible type byte and length) before any CRC is computed.
    """
    import numpy as np
    size = len(mv)
    start = pos + 1
    last = size - RHEAD_SIZE - TRAILER_SIZE   # last possible record start
    if last < start:
        return None
    a = np.frombuffer(mv, dtype=np.uint8)
    cand = np.arange(start, last + 1, dtype=np.int64)
    t = a[cand + 4]
    cand = cand[(t >= 1) & (t <= 5)]
    if cand.size:
        lens = (a[cand].astype(np.int64) | (a[cand + 1].astype(np.int64) << 8)
                | (a[cand + 2].astype(np.int64) << 16) | (a[cand + 3].astype(np.int64) << 24))
        cand = cand[cand + RHEAD_SIZE + lens + TRAILER_SIZE <= size]
    for p in cand.tolist():
        if _header_ok(mv, p, salt) is not None:
            rec, _ = record_at(mv, p, salt)
            if rec is not None:
                return p
    return None


@dataclass
class ScanResult:
    """What a scan of one segment found."""
    path: str
    header: Optional[SegmentHeader]
    records: list = field(default_factory=list)   # [Record] (payload views into the data)
    good_end: int = 0          # end of the last valid record
    clean_end: int = 0         # end of the last record that closes a transaction (or standalone)
    error: Optional[str] = None
    error_offset: Optional[int] = None
    torn: bool = False         # the error can be a torn write (nothing valid after it)
    trailing_zero: bool = False  # bytes after the last record are all zero


def scan_segment(path: str, data=None, skip_epoch: Optional[int] = None) -> ScanResult:
    """Scan one segment file. Never raises for bad content: the result says what is wrong and where.

    ``skip_epoch`` (the epoch of the checkpoint an opener loads): the payloads of the DELTA/SCHEMA records at the
    start of the segment whose epoch is <= it are not read (their header CRC is checked; their payload CRC is
    checked when they are read for time travel or a query, and by verify). Those records are never replayed: the
    checkpoint holds their effect. Under durability "fsync" they were on disk before it was published; under
    "flush"/"none" a power loss may have torn them, which shows when that history is read."""
    unchecked: set = set()
    if data is None:
        if skip_epoch is not None:
            data, unchecked = _read_sparse(path, int(skip_epoch))
        else:
            data = _read_all(path)
    mv = memoryview(data)
    try:
        hdr = parse_header(mv, path)
    except CorruptionError as exc:
        res = ScanResult(path, None, error=exc.what, error_offset=0)
        res.torn = len(mv) < HEADER_SIZE or not any(mv[HEADER_SIZE:])
        return res
    res = ScanResult(path, hdr, good_end=HEADER_SIZE, clean_end=HEADER_SIZE)
    pos = HEADER_SIZE
    size = len(mv)
    while pos < size:
        rec, why = record_at(mv, pos, hdr.salt, pos not in unchecked)
        if rec is None:
            res.error, res.error_offset = why, pos
            rest = mv[pos:]
            if not any(rest):
                res.trailing_zero = True
                res.error = None
                res.torn = False
            else:
                res.torn = valid_record_after(mv, pos, hdr.salt) is None
            break
        res.records.append(rec)
        res.good_end = rec.end
        if rec.rtype not in (DELTA, SCHEMA):
            res.clean_end = rec.end
        pos = rec.end
    return res


def assemble(records, path: str = ""):
    """Group a segment's records into committed transactions.

    Yields ("txn", epoch, txid, [records], start, end), ("mark", epoch, rec) or ("error", offset, what).
    Records of a transaction that never commits (or that an ABORT closes) are skipped.
    """
    pending: list = []
    for rec in records:
        if rec.rtype in (DELTA, SCHEMA):
            if pending and (pending[0].txid != rec.txid or pending[0].epoch != rec.epoch):
                pending = []     # an abandoned (uncommitted) transaction
            pending.append(rec)
        elif rec.rtype == COMMIT:
            if len(rec.payload) != 4:
                yield ("error", rec.offset, "bad COMMIT payload")
                return
            (count,) = _U32.unpack(rec.payload)
            if pending and (pending[0].txid != rec.txid or pending[0].epoch != rec.epoch):
                pending = []
            if count != len(pending):
                yield ("error", rec.offset, f"COMMIT says {count} records, found {len(pending)}")
                return
            start = pending[0].offset if pending else rec.offset
            yield ("txn", rec.epoch, rec.txid, pending, start, rec.end)
            pending = []
        elif rec.rtype == ABORT:
            pending = []
        elif rec.rtype == CHECKPOINT_MARK:
            if len(rec.payload) != 0:
                yield ("error", rec.offset, "bad CHECKPOINT_MARK payload")
                return
            pending = []
            yield ("mark", rec.epoch, rec)


@dataclass
class TxnSpan:
    """One committed transaction found in a segment."""
    epoch: int
    txid: int
    records: list      # its DELTA/SCHEMA records (payload views)
    start: int         # file offset of its first record
    end: int           # file offset just past its COMMIT


@dataclass
class SegmentCheck:
    """Everything a reader needs to know about one segment: the ONE validator behind open, the lazy index and
    verify (each applies its own policy: repair a torn tail, cut, raise, or report).

    ``error`` is the first failure (offset, what) -- framing, checksum, transaction structure, identity (base
    epoch, salt) or epoch order; the transactions and marks before it are valid. ``torn``: the failure may be a
    torn write (nothing valid after it). ``dangling``: valid records of a transaction that never committed
    follow the last complete one (no failure)."""
    path: str
    base: int
    salt: Optional[bytes] = None
    size: int = 0
    txns: list = field(default_factory=list)     # [TxnSpan]
    marks: list = field(default_factory=list)    # [epoch]
    good_end: int = 0
    error: Optional[tuple] = None
    torn: bool = False
    dangling: bool = False
    trailing_zero: int = 0
    header_ok: bool = False

    @property
    def last_epoch(self) -> Optional[int]:
        return self.txns[-1].epoch if self.txns else None


def _in_gap(gaps, first: int, last: int) -> bool:
    """Whether epochs first..last lie inside one recorded gap of lost history."""
    return any(a <= first and last <= b for a, b in gaps)


def check_segment(path: str, base: int, prev_epoch: Optional[int] = None, salt: Optional[bytes] = None,
                  skip_epoch: Optional[int] = None, gaps: tuple = (), data=None,
                  contiguous: bool = True) -> SegmentCheck:
    """Scan and check one segment named for epoch ``base``. Never raises for bad content (OSError for a file
    that cannot be read).

    Checks beyond the framing: the header's base epoch equals the name's; ``salt`` (from the MANIFEST) matches;
    the segment's first transaction has epoch ``base`` and follows ``prev_epoch`` (the last epoch before this
    segment, when known) by exactly 1; every later one follows its predecessor by exactly 1, except across a
    recorded gap of lost history ``gaps`` = [(first lost, last lost)]. ``contiguous=False`` (stores written
    before the MANIFEST) only asks for increasing epochs."""
    res = scan_segment(path, data=data, skip_epoch=skip_epoch)
    try:
        size = os.path.getsize(path) if data is None else len(data)
    except OSError:
        size = 0
    chk = SegmentCheck(path, base, size=size, good_end=0)
    if res.header is None:
        chk.error, chk.torn = (0, res.error or "segment header"), res.torn
        return chk
    chk.salt = res.header.salt
    chk.good_end = HEADER_SIZE
    if res.header.base_epoch != base:
        chk.error = (32, f"segment header epoch {res.header.base_epoch} does not match its name ({base})")
        return chk
    if salt is not None and res.header.salt != salt:
        chk.error = (16, "segment salt does not match the MANIFEST (a foreign or replaced segment)")
        return chk
    chk.header_ok = True
    gapset = {(int(a), int(b)) for a, b in gaps}
    expect = None if prev_epoch is None else prev_epoch + 1
    for item in assemble(res.records, path):
        if item[0] == "error":
            chk.error = (item[1], item[2])
            break
        if item[0] == "mark":
            chk.marks.append(item[1])
            chk.good_end = item[2].end
            continue
        _, epoch, txid, recs, start, end = item
        if not chk.txns and epoch != base and contiguous and not _in_gap(gapset, base, epoch - 1):
            chk.error = (start, f"first transaction has epoch {epoch}, the segment's base is {base}")
            break
        if expect is not None and (epoch < expect if not contiguous else
                                   epoch != expect and not _in_gap(gapset, expect, epoch - 1)):
            chk.error = (start, f"epoch {epoch} does not follow {expect - 1}")
            break
        chk.txns.append(TxnSpan(epoch, txid, recs, start, end))
        chk.good_end = end
        expect = epoch + 1
    if chk.error is None and res.error is not None:
        chk.error = (res.error_offset, res.error)
        chk.torn = res.torn
    elif chk.error is None:
        if res.clean_end < res.good_end:
            chk.dangling = True
        elif res.trailing_zero:
            chk.trailing_zero = size - res.good_end
    return chk


def read_segment(path: str) -> memoryview:
    """A segment's bytes (see :func:`check_segment`'s ``data``)."""
    return _read_all(path)


def _read_all(path: str) -> memoryview:
    """The file's bytes, read into a numpy buffer (large ones get transparent huge pages: reading a 64 MiB
    segment then costs a copy, not ~16,000 page faults)."""
    import numpy as np
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        buf = np.empty(size, dtype=np.uint8)
        mv = memoryview(buf)
        got = 0
        while got < size:
            n = f.readinto(mv[got:])
            if not n:
                break
            got += n
        return mv[:got]


def _read_sparse(path: str, skip_epoch: int):
    """Read a segment, leaving out the payloads of its leading DELTA/SCHEMA records with epoch <= skip_epoch
    (their bytes in the returned buffer are never touched); returns (buffer view, offsets of those records)."""
    import numpy as np
    unchecked = set()
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        buf = np.empty(size, dtype=np.uint8)
        mv = memoryview(buf)

        def fill(a: int, b: int) -> int:
            got = os.preadv(fd, [mv[a:b]], a) if b > a else 0
            return a + got

        pos = fill(0, min(HEADER_SIZE, size))
        if pos < HEADER_SIZE:
            return mv[:pos], unchecked
        try:
            salt = parse_header(mv).salt
        except CorruptionError:
            salt = None
        while salt is not None and pos + RHEAD_SIZE <= size:
            if fill(pos, pos + RHEAD_SIZE) != pos + RHEAD_SIZE:
                break
            hd = _header_ok(mv, pos, salt)
            if hd is None:
                break
            length, rtype, epoch, _ = hd
            end = pos + RHEAD_SIZE + length + TRAILER_SIZE
            if end > size or epoch > skip_epoch:
                break
            if rtype in (DELTA, SCHEMA):
                unchecked.add(pos)           # header checked; payload left unread
            elif fill(pos + RHEAD_SIZE, end) != end:
                break
            pos = end
        end = size
        while pos < end:                     # the rest is read (and checked) in full
            got = os.preadv(fd, [mv[pos:end]], pos)
            if got <= 0:
                return mv[:pos], unchecked
            pos += got
        return mv, unchecked


def iter_segments(logdir: str) -> list[tuple[int, str]]:
    """(base epoch, path) of every segment file in logdir, ascending."""
    out = []
    try:
        names = os.listdir(logdir)
    except FileNotFoundError:
        return []
    for n in names:
        e = parse_segment_name(n)
        if e is not None:
            out.append((e, os.path.join(logdir, n)))
    out.sort()
    return out


__all__ = ["MAGIC", "VERSION", "HEADER_SIZE", "RHEAD_SIZE", "TRAILER_SIZE", "build_header", "parse_header",
           "build_record", "frame_record", "frame_records", "record_at", "scan_segment", "ScanResult", "Record", "segment_name",
           "parse_segment_name", "iter_segments", "mask_crc", "crc32c", "valid_record_after",
           "DELTA", "SCHEMA", "COMMIT", "ABORT", "CHECKPOINT_MARK", "assemble", "check_segment", "SegmentCheck",
           "TxnSpan"]

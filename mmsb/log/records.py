"""Serialisation of log operations (Delta, SchemaOp) to record payloads and back. No pickle: JSON + codecs.

Payload layouts are specified byte by byte in docs/FORMAT.md ("Delta payload", "Schema payload").
"""
from __future__ import annotations

import json
import struct
from typing import Any, Optional

import numpy as np

from mmsb import codecs
from mmsb.delta import Delta, SchemaOp, is_full_mask
from mmsb.errors import CorruptionError

# record types
DELTA = 1
SCHEMA = 2
COMMIT = 3
ABORT = 4
CHECKPOINT_MARK = 5
RECORD_TYPES = {DELTA: "DELTA", SCHEMA: "SCHEMA", COMMIT: "COMMIT", ABORT: "ABORT",
                CHECKPOINT_MARK: "CHECKPOINT_MARK"}

# delta flags
F_ACCUMULATE = 1
F_DERIVED = 2
F_DENSE = 4
F_SPARSE = 8
F_SOURCE = 16
F_METADATA = 32
_KNOWN_FLAGS = 63

MAX_NDIM = 32
MAX_ELEMS = 1 << 48


# ---------------------------------------------------------------- JSON (±inf / NaN round trip)

def _default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


def dumps(obj: Any) -> bytes:
    """JSON with ``Infinity``, ``-Infinity`` and ``NaN`` tokens for non-finite floats (Python's json dialect)."""
    return json.dumps(obj, allow_nan=True, separators=(",", ":"), default=_default,
                      ensure_ascii=False).encode("utf-8")


MAX_JSON_DEPTH = 64          # nesting deeper than this in any stored JSON is refused as corrupt


def _json_depth_ok(obj: Any, limit: int) -> bool:
    """True when ``obj`` nests at most ``limit`` containers deep (iterative: no recursion)."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            if d > limit:
                return False
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return True


def loads_json(b, what: str = "json", path: Optional[str] = None, offset: Optional[int] = None) -> Any:
    """Parse stored JSON; anything malformed, or nested deeper than MAX_JSON_DEPTH, is a CorruptionError."""
    try:
        obj = json.loads(bytes(b).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptionError(f"bad {what}: {str(exc)[:200]}", file=path, offset=offset, what=what) from None
    if not _json_depth_ok(obj, MAX_JSON_DEPTH):
        raise CorruptionError(f"bad {what}: nested deeper than {MAX_JSON_DEPTH}", file=path, offset=offset,
                              what=what)
    return obj


def loads(b, what: str = "json") -> Any:
    return loads_json(b, what)


# ---------------------------------------------------------------- reader

class Reader:
    """Bounds-checked little-endian reader over a buffer; every overrun is a CorruptionError."""

    __slots__ = ("mv", "pos", "end")

    def __init__(self, buf, pos: int = 0, end: int | None = None):
        self.mv = memoryview(buf).cast("B")
        self.pos = pos
        self.end = self.mv.nbytes if end is None else end

    def take(self, n: int, what: str = "field") -> memoryview:
        if n < 0 or self.pos + n > self.end:
            raise CorruptionError(f"payload too short for {what}", offset=self.pos, what=what)
        b = self.mv[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self, what="u8") -> int:
        return self.take(1, what)[0]

    def u16(self, what="u16") -> int:
        return struct.unpack("<H", self.take(2, what))[0]

    def u32(self, what="u32") -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what="u64") -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def text(self, n: int, what: str) -> str:
        try:
            return bytes(self.take(n, what)).decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptionError(f"bad utf-8 in {what}", offset=self.pos, what=what) from None

    def done(self, what: str) -> None:
        if self.pos != self.end:
            raise CorruptionError(f"{self.end - self.pos} unexpected bytes after {what}", offset=self.pos,
                                  what=what)


# ---------------------------------------------------------------- array parts

def _shape_bytes(shape) -> bytes:
    """u8 ndim + one u64 per dimension."""
    nd = len(shape)
    if nd > MAX_NDIM:
        raise ValueError("too many dimensions")
    return struct.pack(f"<B{nd}Q", nd, *map(int, shape))


def _read_shape(r: Reader) -> tuple:
    nd = r.u8("ndim")
    if nd > MAX_NDIM:
        raise CorruptionError(f"ndim {nd} out of range", offset=r.pos, what="ndim")
    shape = tuple(r.u64("dim") for _ in range(nd))
    total = 1
    for d in shape:
        total *= max(d, 1)   # 0 dims skipped: (0, 2**40, 2**40) must not pass (numpy refuses the reshape)
        if total > MAX_ELEMS:
            raise CorruptionError("array too large", offset=r.pos, what="shape")
    return shape


_PART = struct.Struct("<BQ")


def _part(codec_id: int, data: bytes) -> bytes:
    return _PART.pack(codec_id, len(data)) + data


def _read_part(r: Reader, what: str) -> tuple[int, memoryview]:
    cid = r.u8(what + " codec")
    if cid not in codecs.CODECS:
        raise CorruptionError(f"unknown codec {cid} for {what}", offset=r.pos - 1, what="codec id")
    n = r.u64(what + " length")
    return cid, r.take(n, what)


def _str16(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 0xFFFF:
        raise ValueError("string too long")
    return struct.pack("<H", len(b)) + b


_VALUES = codecs.AdaptiveValues()
_HEADS: dict[tuple, bytes] = {}          # (dtype, shape) -> dtype + shape header of a values part


def values_pieces(arr: np.ndarray, stream=None) -> tuple[list, int, int]:
    """dtype + shape + values codec part as buffers to write in order; returns (buffers, raw_bytes,
    encoded_bytes). Raw values are a view of ``arr``: write them before it changes.

    ``stream`` (e.g. the page name) lets incompressible streams skip the compression attempt."""
    a = np.asarray(arr)
    key = (a.dtype, a.shape)
    head = _HEADS.get(key)
    if head is None:
        ds = codecs.dtype_str(a.dtype).encode("ascii")
        head = struct.pack("<B", len(ds)) + ds + _shape_bytes(a.shape)
        if len(_HEADS) >= 256:
            _HEADS.clear()
        _HEADS[key] = head
    if stream is None:
        cid, data = codecs.encode_values(a, view=True)
    else:
        cid, data = _VALUES.encode((stream, a.dtype.str), a, view=True)
    return [head + _PART.pack(cid, len(data)), data], a.nbytes, len(data)


def encode_values_part(arr: np.ndarray, stream=None) -> tuple[bytes, int, int]:
    """dtype + shape + values codec part; returns (bytes, raw_bytes, encoded_bytes)."""
    pieces, raw, enc = values_pieces(arr, stream)
    return b"".join(pieces), raw, enc


def decode_values_part(r: Reader, what: str = "values") -> np.ndarray:
    ds = r.text(r.u8("dtype length"), "dtype")
    dt = codecs.parse_dtype(ds)
    shape = _read_shape(r)
    cid, data = _read_part(r, what)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    return codecs.decode_values(cid, data, dt, n).reshape(shape)


# ---------------------------------------------------------------- ops

def encode_op(op) -> tuple[int, bytes, int, int]:
    """Serialise a Delta or SchemaOp: (record type, payload, raw bytes, encoded bytes)."""
    rtype, pieces, raw, enc = op_pieces(op)
    return rtype, b"".join(pieces), raw, enc


def op_pieces(op) -> tuple[int, list, int, int]:
    """:func:`encode_op` with the payload as buffers to write in order (a delta's raw values are a view)."""
    if isinstance(op, Delta):
        return (DELTA,) + delta_pieces(op)
    if isinstance(op, SchemaOp):
        payload, raw, enc = encode_schema(op)
        return SCHEMA, [payload], raw, enc
    raise TypeError(f"cannot log {type(op).__name__}")


def decode_op(rtype: int, payload, epoch: int | None = None):
    if rtype == DELTA:
        return decode_delta(payload, epoch)
    if rtype == SCHEMA:
        return decode_schema(payload)
    raise CorruptionError(f"record type {rtype} holds no operation", what="record type")


_FULL_MASK_PARTS: dict[int, tuple[bytes, int]] = {}     # size -> encoded whole-page mask part


def encode_delta(d: Delta) -> tuple[bytes, int, int]:
    """A delta's record payload: (bytes, raw bytes, encoded bytes)."""
    pieces, raw, enc = delta_pieces(d)
    return b"".join(pieces), raw, enc


def delta_pieces(d: Delta) -> tuple[list, int, int]:
    """:func:`encode_delta` as buffers to write in order (raw values are a view of ``d.values``)."""
    flags = 0
    if d.accumulate:
        flags |= F_ACCUMULATE
    if d.derived:
        flags |= F_DERIVED
    if d.mask is not None:
        flags |= F_DENSE
    elif d.index is not None:
        flags |= F_SPARSE
    if d.source is not None:
        flags |= F_SOURCE
    if d.metadata is not None:
        flags |= F_METADATA
    if d.mask is not None and not flags & (F_SOURCE | F_METADATA) and is_full_mask(d.mask):
        # a whole-page delta: everything before the values is the same for every write to that page
        key = (d.page, flags, d.mask.size, d.values.dtype, d.values.shape)
        prefix = _WHOLE_PAGE_PREFIX.get(key)
        vp, vr, ve = values_pieces(d.values, d.page)
        if prefix is None:
            out, raw, enc = _delta_head(d, flags)
            prefix = (b"".join(out), raw, enc)
            if len(_WHOLE_PAGE_PREFIX) >= 1024:
                _WHOLE_PAGE_PREFIX.clear()
            _WHOLE_PAGE_PREFIX[key] = prefix
        return [prefix[0] + vp[0], vp[1]], prefix[1] + vr, prefix[2] + ve
    out, raw, enc = _delta_head(d, flags)
    vp, vr, ve = values_pieces(d.values, d.page)
    out.append(vp[0])
    return [b"".join(out), vp[1]], raw + vr, enc + ve        # the small parts joined, then the values


_WHOLE_PAGE_PREFIX: dict[tuple, tuple[bytes, int, int]] = {}   # (page, flags, size, dtype, shape) -> head


def _delta_head(d: Delta, flags: int) -> tuple[list, int, int]:
    """The parts of a delta record before its values: name, flags, source, metadata, index or mask."""
    out = [_str16(d.page), struct.pack("<B", flags)]
    if d.source is not None:
        out.append(_str16(str(d.source)))
    if d.metadata is not None:
        m = dumps(d.metadata)
        out.append(struct.pack("<I", len(m)) + m)
    raw = enc = 0
    if d.index is not None and d.mask is None:
        idx = np.asarray(d.index, dtype=np.int64)
        cid, data = codecs.encode_index(idx)
        out.append(_shape_bytes(idx.shape) + _part(cid, data))
        raw += idx.nbytes
        enc += len(data)
    if d.mask is not None:
        full = is_full_mask(d.mask)
        part = _FULL_MASK_PARTS.get(d.mask.size) if full else None
        if part is None:
            m = np.asarray(d.mask, dtype=bool)
            cid, data = codecs.encode_mask(m)
            part = (_shape_bytes(m.shape) + _part(cid, data), len(data))
            if full:
                if len(_FULL_MASK_PARTS) >= 64:
                    _FULL_MASK_PARTS.clear()
                _FULL_MASK_PARTS[d.mask.size] = part
        out.append(part[0])
        raw += d.mask.size
        enc += part[1]
    return out, raw, enc


def decode_delta(payload, epoch: int | None = None) -> Delta:
    r = Reader(payload)
    page = r.text(r.u16("name length"), "page name")
    flags = r.u8("flags")
    if flags & ~_KNOWN_FLAGS or (flags & F_DENSE and flags & F_SPARSE):
        raise CorruptionError(f"bad delta flags {flags:#x}", offset=r.pos - 1, what="delta flags")
    source = r.text(r.u16("source length"), "source") if flags & F_SOURCE else None
    metadata = loads(r.take(r.u32("metadata length"), "metadata"), "delta metadata") \
        if flags & F_METADATA else None
    index = mask = None
    if flags & F_SPARSE:
        shape = _read_shape(r)
        cid, data = _read_part(r, "index")
        index = codecs.decode_index(cid, data, int(np.prod(shape, dtype=np.int64))).reshape(shape)
    if flags & F_DENSE:
        shape = _read_shape(r)
        cid, data = _read_part(r, "mask")
        mask = codecs.decode_mask(cid, data, int(np.prod(shape, dtype=np.int64))).reshape(shape)
    values = decode_values_part(r)
    r.done("delta payload")
    return Delta(page=page, values=values, index=index, mask=mask, accumulate=bool(flags & F_ACCUMULATE),
                 source=source, metadata=metadata, derived=bool(flags & F_DERIVED), epoch=epoch)


def encode_schema(s: SchemaOp) -> tuple[bytes, int, int]:
    p = dumps(s.payload)
    out = [_str16(s.kind), struct.pack("<I", len(p)), p, struct.pack("<H", len(s.arrays))]
    raw = enc = 0
    for name, arr in s.arrays.items():
        vb, vr, ve = encode_values_part(np.asarray(arr))
        out.append(_str16(str(name)) + vb)
        raw += vr
        enc += ve
    return b"".join(out), raw, enc


def decode_schema(payload) -> SchemaOp:
    r = Reader(payload)
    kind = r.text(r.u16("kind length"), "schema kind")
    body = loads(r.take(r.u32("payload length"), "schema payload"), "schema payload")
    if not isinstance(body, dict):
        raise CorruptionError("schema payload is not an object", what="schema payload")
    arrays = {}
    for _ in range(r.u16("array count")):
        name = r.text(r.u16("array name length"), "array name")
        arrays[name] = decode_values_part(r, "schema array")
    r.done("schema payload")
    check_schema(kind, body, arrays)
    return SchemaOp(kind=kind, payload=body, arrays=arrays)


def _bad_schema(kind: str, why: str) -> CorruptionError:
    return CorruptionError(f"schema record {kind!r}: {why}", what="schema payload")


def check_page_meta(pl: dict, kind: str = "page_created") -> tuple:
    """Validate a page's stored description (name, shape, dtype, semiring); returns (shape, dtype).

    The shape is a list of at most MAX_NDIM non-negative ints whose product is at most MAX_ELEMS (0 dimensions
    counted as 1); the dtype is one of the allowed ones (never object)."""
    name = pl.get("name")
    if not isinstance(name, str) or not name:
        raise _bad_schema(kind, f"bad page name {name!r}"[:200])
    shape = pl.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or \
            not all(type(n) is int and 0 <= n < 2**63 for n in shape):
        raise _bad_schema(kind, f"page {name!r}: bad shape {shape!r}"[:200])
    total = 1
    for n in shape:
        total *= max(n, 1)
    if total > MAX_ELEMS:
        raise _bad_schema(kind, f"page {name!r}: shape {shape!r} has more than {MAX_ELEMS} elements")
    try:
        ds = pl.get("dtype")
        if not isinstance(ds, str) or len(ds) > 32:
            raise TypeError(ds)
        dt = codecs.parse_dtype(np.dtype(ds).str)
    except (CorruptionError, TypeError, ValueError):
        raise _bad_schema(kind, f"page {name!r}: dtype {pl.get('dtype')!r} is not allowed"[:200]) from None
    if not isinstance(pl.get("semiring"), str):
        raise _bad_schema(kind, f"page {name!r}: bad semiring {pl.get('semiring')!r}"[:200])
    return tuple(shape), dt


def check_schema(kind: str, pl: dict, arrays: dict) -> None:
    """Validate a schema operation's shape before anything acts on it: CorruptionError when malformed."""
    if kind == "page_created":
        _, dt = check_page_meta(pl, kind)
        fill = arrays.get("fill")
        if fill is None or fill.size < 1 or fill.dtype != dt:
            raise _bad_schema(kind, f"page {pl['name']!r}: bad fill array")
    elif kind == "matrix_created":
        shape, dt = check_page_meta(pl, kind)
        if len(shape) != 2:
            raise _bad_schema(kind, f"matrix {pl['name']!r}: shape {list(shape)} is not (nrows, ncols)")
        if "epoch" in pl and (type(pl["epoch"]) is not int or pl["epoch"] < 0):
            raise _bad_schema(kind, f"matrix {pl['name']!r}: bad epoch")
        keys, vals = arrays.get("keys"), arrays.get("values")
        if arrays and (keys is None or vals is None or keys.dtype != np.int64 or vals.dtype != dt
                       or keys.ndim != 1 or keys.size != vals.size):
            raise _bad_schema(kind, f"matrix {pl['name']!r}: bad entry arrays")
        if keys is not None and keys.size:
            total = shape[0] * shape[1]
            if int(keys.min()) < 0 or int(keys.max()) >= total or (keys.size > 1 and
                                                                   not bool((keys[1:] > keys[:-1]).all())):
                raise _bad_schema(kind, f"matrix {pl['name']!r}: entry keys are not sorted positions of it")
    elif kind == "rule_added":
        mp = pl.get("matrix_page")
        if mp is not None and (not isinstance(mp, str) or not mp):
            raise _bad_schema(kind, f"bad matrix page {mp!r}"[:200])
        shape = pl.get("shape")
        if shape is not None and (not isinstance(shape, list) or len(shape) != 2 or
                                  not all(type(n) is int and 0 <= n <= MAX_ELEMS for n in shape)):
            raise _bad_schema(kind, f"bad matrix shape {shape!r}"[:200])
    elif kind in ("page_dropped", "rule_removed"):
        pass
    else:
        raise _bad_schema(kind[:100], "unknown schema operation")

"""The durable log's one-pass transaction encoder (``mmsb.log.durable.encode_txn``) against the general encoder,
and the compiled log framing kernel (``mmsb._ext.logframe``) against its twin (``mmsb._ref.logframe``).

The fast path (deltas without a mask or metadata) must write exactly the bytes of the general encoder
(``records.op_pieces`` framed by ``segment.frame_records``), make the same codec choices and leave the same
adaptive-compression state; what it writes must decode to the transaction it was given; damaged bytes must
decode to a CorruptionError only.
"""
import os

import crc32c as crc_package
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmsb._ref import logframe as ref_logframe
from mmsb.delta import Delta, SchemaOp, Txn
from mmsb.errors import CorruptionError
from mmsb.log import DurableLog
from mmsb.log import durable as LD
from mmsb.log import records as R
from mmsb.log import segment as S

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
          "float32", "float64", "complex64", "complex128"]
SALT = bytes(range(16))
FIXTURE = HealthCheck.function_scoped_fixture     # adaptive_state: saved once, put back once (on purpose)


def _values(rng, dt: str, n: int, compressible: bool) -> np.ndarray:
    if compressible:
        v = np.repeat(rng.integers(0, 3, max(1, n // 16)), 16)[:n]
        v = np.resize(v, n)
    else:
        v = rng.random(n) * 1000
    if dt == "bool":
        return (v.astype(np.int64) % 2).astype(bool)
    if dt.startswith("complex"):
        return (v + 1j * v[::-1]).astype(dt)
    return v.astype(dt)


@st.composite
def deltas(draw) -> Delta:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    dt = draw(st.sampled_from(DTYPES))
    n = draw(st.sampled_from([0, 1, 3, 17, 40, 300, 5000]))
    kind = draw(st.sampled_from(["sparse", "sparse", "sorted", "sorted", "sorted", "dense", "full", "values"]))
    values = _values(rng, dt, n, draw(st.booleans()))
    if draw(st.integers(0, 5)) == 0 and n > 1:
        values = values.astype(values.dtype.newbyteorder(">"))        # stored little-endian by both paths
    if draw(st.integers(0, 3)) == 0 and n > 1:
        values = np.repeat(values, 2)[::2]                             # not contiguous
    index = mask = None
    if kind == "sparse":
        index = rng.integers(0, 10 * n + 1, n)
        if draw(st.booleans()):
            index = index.astype(np.int32)
        elif draw(st.booleans()):
            index = index.tolist()
    elif kind == "sorted":
        index = np.cumsum(rng.integers(0, 5, n)).astype(np.int64)
    elif kind in ("dense", "full"):
        mask = np.ones(n, bool) if kind == "full" else rng.random(n) < 0.5
        values = values[:int(mask.sum())]
    elif kind == "values" and n in (40, 300) and draw(st.booleans()):
        values = values.reshape(-1, 4 if n == 40 else 3)
    source = draw(st.sampled_from([None, "user", "rule:ü→x", 7]))
    metadata = draw(st.sampled_from([None] * 4 + [{"k": 1, "inf": float("inf")}, {"who": ["a", np.int64(3)]}]))
    name = draw(st.sampled_from(["p", "dist", "päge/ü", "x" * 300]))
    if draw(st.integers(0, 7)) == 0 and values.ndim == 1:
        values = values.tolist()                                       # made an array by both paths
    return Delta(name, values, index=index, mask=mask, accumulate=draw(st.booleans()), source=source,
                 metadata=metadata, derived=draw(st.booleans()))


SCHEMA_OPS = [
    SchemaOp("page_created", {"name": "x", "shape": [3], "dtype": "<f8", "semiring": "min_plus", "device": "cpu"},
             {"fill": np.array([np.inf])}),
    SchemaOp("rule_added", {"kind": "link", "dst": "a", "srcs": ["x"]},
             {"indptr": np.array([0, 1, 2]), "data": np.arange(100.0)}),
    SchemaOp("page_dropped", {"name": "x"}),
]


@st.composite
def transactions(draw) -> list:
    ops = draw(st.lists(deltas(), min_size=0, max_size=4))
    for op in draw(st.lists(st.sampled_from(SCHEMA_OPS), max_size=1)):
        ops.insert(draw(st.integers(0, len(ops))), op)
    return ops


def _general(ops: list, epoch: int, txid: int, salt: bytes, commit: bool = True) -> tuple[bytes, int, int]:
    """The general encoder, framed by the pure-Python framing (the twin): (bytes, raw, encoded)."""
    records, raw, enc = [], 0, 0
    for op in ops:
        rt, pieces, r, e = R.op_pieces(op)
        records.append((rt, pieces))
        raw += r
        enc += e
    if commit:
        records.append((R.COMMIT, [len(ops).to_bytes(4, "little")]))
    bufs, total = ref_logframe.frame_records(records, epoch, txid, salt)
    data = b"".join(bytes(b) for b in bufs)
    assert len(data) == total
    return data, raw, enc


def _fast(ops: list, epoch: int, txid: int, salt: bytes, commit: bool = True) -> tuple[bytes, int, int]:
    bufs, total, raw, enc, _ = LD.encode_txn(ops, epoch, txid, salt, commit)
    data = b"".join(bytes(b) for b in bufs)
    assert len(data) == total
    return data, raw, enc


@pytest.fixture
def adaptive_state():
    """The adaptive-compression state (per page and dtype), saved and put back around a test."""
    saved = dict(R._VALUES._miss)
    yield R._VALUES._miss
    R._VALUES._miss.clear()
    R._VALUES._miss.update(saved)


def _both(ops, epoch, txid, commit=True):
    """The fast and the general encoding of ``ops`` from the same adaptive state; the states after them agree."""
    state = dict(R._VALUES._miss)
    general = _general(ops, epoch, txid, SALT, commit)
    after_general = dict(R._VALUES._miss)
    R._VALUES._miss.clear()
    R._VALUES._miss.update(state)
    fast = _fast(ops, epoch, txid, SALT, commit)
    assert R._VALUES._miss == after_general
    return fast, general


def _decode(data: bytes, n_ops: int, epoch: int, txid: int) -> list:
    mv = memoryview(data)
    pos, ops = 0, []
    while pos < len(mv):
        rec, why = S.record_at(mv, pos, SALT)
        assert rec is not None, why
        assert (rec.epoch, rec.txid) == (epoch, txid)
        if rec.rtype != R.COMMIT:
            ops.append(R.decode_op(rec.rtype, rec.payload, epoch))
        else:
            assert bytes(rec.payload) == n_ops.to_bytes(4, "little")
        pos = rec.end
    return ops


def _same(op, back) -> None:
    assert type(op) is type(back)
    if isinstance(op, SchemaOp):
        assert (op.kind, op.payload.keys()) == (back.kind, back.payload.keys())
        return
    assert (op.page, op.accumulate, op.derived) == (back.page, back.accumulate, back.derived)
    assert back.source == (None if op.source is None else str(op.source))
    v = np.asarray(op.values)
    assert back.values.dtype == v.dtype.newbyteorder("<") and back.values.shape == v.shape
    np.testing.assert_array_equal(back.values, v)
    if op.index is not None:
        np.testing.assert_array_equal(back.index, np.asarray(op.index, dtype=np.int64))
    else:
        assert back.index is None
    if op.mask is not None:
        np.testing.assert_array_equal(back.mask, op.mask)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, FIXTURE])
@given(ops=transactions(), epoch=st.integers(1, 2**63 - 1), txid=st.integers(0, 2**64 - 1),
       commit=st.booleans(), fresh=st.booleans())
def test_fast_bytes_equal_general(adaptive_state, ops, epoch, txid, commit, fresh):
    if fresh:
        adaptive_state.clear()           # every stream tries blosc2 again (else many have given up by now)
    (fast, fr, fe), (general, gr, ge) = _both(ops, epoch, txid, commit)
    assert fast == general
    assert (fr, fe) == (gr, ge)
    back = _decode(fast, len(ops), epoch, txid)
    assert len(back) == len(ops)
    for op, b in zip(ops, back):
        _same(op, b)


def test_fast_path_taken_for_small_sparse_deltas(monkeypatch, adaptive_state):
    """A user's and a derived sparse delta go through the one-pass encoder, not the general one."""
    def general(op):
        raise AssertionError("the general encoder was used")

    monkeypatch.setattr(R, "op_pieces", general)
    ops = [Delta("src", np.array([0.0]), index=np.array([7]), accumulate=True),
           Delta("dist", np.arange(5000.0), index=np.arange(0, 10000, 2), derived=True, source="closure")]
    bufs, total, raw, enc, records = LD.encode_txn(ops, 3, 4, SALT)
    assert total == sum(len(b) for b in bufs) and len(records) == 3
    assert raw == 8 + 8 + 5000 * 16 and enc < raw          # the derived index delta-packs
    monkeypatch.undo()
    assert _decode(b"".join(bytes(b) for b in bufs), 2, 3, 4)[1].values.size == 5000


def test_flag_off_uses_the_general_encoder(monkeypatch):
    seen = []
    real = R.op_pieces
    monkeypatch.setattr(R, "op_pieces", lambda op: seen.append(op) or real(op))
    monkeypatch.setattr(LD, "FAST_ENCODE", False)
    ops = [Delta("src", np.array([0.0]), index=np.array([7]))]
    LD.encode_txn(ops, 1, 1, SALT)
    assert seen == ops


@pytest.mark.parametrize("dt", DTYPES)
def test_adaptive_sequence_same_bytes(adaptive_state, dt):
    """A stream of writes to one page: the adaptive compression state (try blosc2, skip after misses, probe
    again) makes the same choices on both paths, write after write."""
    rng = np.random.default_rng(1)
    for k in range(150):
        n = int(rng.integers(1, 600))
        ops = [Delta("seq", _values(rng, dt, n, k % 37 == 0), index=np.sort(rng.integers(0, 10**6, n)),
                     derived=True)]
        (fast, *_), (general, *_) = _both(ops, k + 1, k + 1)
        assert fast == general


@pytest.mark.parametrize("fast", [True, False])
def test_log_files_identical(tmp_path, monkeypatch, adaptive_state, fast):
    """Whole segment files written with the fast path on and off are byte-identical (same salt)."""
    monkeypatch.setattr(os, "urandom", lambda n: bytes(n))
    rng = np.random.default_rng(2)
    txns = []
    for e in range(1, 40):
        n = int(rng.integers(1, 400))
        txns.append(Txn(e, e, [Delta("a", rng.random(1), index=[int(rng.integers(0, 100))], accumulate=True),
                               Delta("b", np.round(rng.random(n), 1), index=np.sort(rng.choice(10**5, n, False)),
                                     derived=True)]))
    files = {}
    state = dict(R._VALUES._miss)
    for flag in (True, False):
        R._VALUES._miss.clear()
        R._VALUES._miss.update(state)
        monkeypatch.setattr(LD, "FAST_ENCODE", flag)
        root = tmp_path / str(flag)
        with DurableLog(str(root), durability="flush", segment_bytes=20_000) as log:
            for t in txns:
                log.append(t)
            stats = log.stats()
        files[flag] = ({p.name: p.read_bytes() for p in sorted((root / "log").iterdir())},
                       {k: stats[k] for k in ("records", "bytes", "raw_bytes", "encoded_bytes")})
    assert len(files[True][0]) > 1                   # rolled: re-framed under a new segment's salt
    assert files[True] == files[False]
    with DurableLog(str(tmp_path / "True"), readonly=True) as log:
        back = list(log.txns())
    assert [t.epoch for t in back] == list(range(1, 40))
    for t, b in zip(txns, back):
        for op, o in zip(t.ops, b.ops):
            _same(op, o)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, FIXTURE])
@given(ops=st.lists(deltas(), min_size=1, max_size=2), data=st.data())
def test_damaged_fast_payload_raises_corruption_only(adaptive_state, ops, data):
    """A fast-encoded delta payload with bytes changed, cut or appended decodes or raises CorruptionError:
    never another exception."""
    adaptive_state.clear()               # the bytes (and so the draws below) depend on the inputs alone
    records = LD.encode_txn(ops, 1, 1, None)[4]
    rtype, pieces = records[data.draw(st.integers(0, len(ops) - 1))]
    payload = bytearray(b"".join(bytes(p) for p in pieces))
    how = data.draw(st.sampled_from(["flip", "cut", "extend"]))
    if how == "flip" and payload:
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(payload) - 1))
            payload[i] = data.draw(st.integers(0, 255))
    elif how == "cut":
        payload = payload[:data.draw(st.integers(0, max(0, len(payload) - 1)))]
    else:
        payload += bytes(data.draw(st.binary(min_size=1, max_size=9)))
    try:
        R.decode_op(rtype, bytes(payload), 1)
    except CorruptionError:
        pass


def test_refused_values_raise_as_before(adaptive_state):
    """What the general encoder refuses (an object dtype, a name too long) is refused the same way."""
    with pytest.raises(ValueError):
        LD.encode_txn([Delta("p", np.array(["a"], dtype=object))], 1, 1, SALT)
    with pytest.raises(ValueError):
        LD.encode_txn([Delta("p" * 70_000, np.zeros(1))], 1, 1, SALT)


# ------------------------------------------------------------------ the framing kernel and its twin

KERNELS = [ref_logframe]
try:
    from mmsb._ext import logframe as ext_logframe
    KERNELS.append(ext_logframe)
except ImportError:                      # not built: the twin alone (its tests below still run)
    ext_logframe = None

LARGE = 1 << 16


@st.composite
def framed(draw) -> tuple:
    records = []
    for _ in range(draw(st.integers(0, 4))):
        pieces = []
        for _ in range(draw(st.integers(0, 3))):
            n = draw(st.sampled_from([0, 1, 3, 8, 9, 31, 200, LARGE - 1, LARGE, LARGE + 13]))
            b = bytes(draw(st.binary(min_size=min(n, 64), max_size=min(n, 64)))) * (n // 64 + 1)
            b = b[:n] if len(b) >= n else b + bytes(n - len(b))
            pieces.append(memoryview(b) if draw(st.booleans()) else b)
        records.append((draw(st.integers(0, 255)), pieces))
    salt = draw(st.sampled_from([bytes(16), bytes(range(16)), b"", b"salty"]))
    return records, draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**64 - 1)), salt


def _reference_frames(records, epoch, txid, salt) -> tuple[bytes, int]:
    """The record layout of docs/FORMAT.md written out with struct and the crc32c package."""
    import struct

    def mask(c):
        return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF

    out = b""
    for rtype, pieces in records:
        payload = b"".join(bytes(p) for p in pieces)
        h = struct.pack("<IBQQ", len(payload), rtype, epoch, txid)
        h += struct.pack("<I", mask(crc_package.crc32c(h + salt)))
        out += h + payload + struct.pack("<I", mask(crc_package.crc32c(h + payload + salt)))
    return out, len(out)


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=framed())
def test_frame_records_matches_the_format(kernel, case):
    records, epoch, txid, salt = case
    bufs, total = kernel.frame_records(records, epoch, txid, salt)
    assert (b"".join(bytes(b) for b in bufs), total) == _reference_frames(records, epoch, txid, salt)
    pieces = [p for _, ps in records for p in ps]
    assert sum(1 for b in bufs if any(b is p for p in pieces)) == len(pieces)     # payloads are not copied


@pytest.mark.skipif(ext_logframe is None, reason="compiled kernels not built")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=framed())
def test_frame_kernel_equals_twin(case):
    records, epoch, txid, salt = case
    a, ta = ext_logframe.frame_records(records, epoch, txid, salt)
    b, tb = ref_logframe.frame_records(records, epoch, txid, salt)
    assert ta == tb and [bytes(x) for x in a] == [bytes(x) for x in b]


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.__name__)
@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), value=st.integers(0, 2**32 - 1), soft=st.booleans())
def test_crc32c_matches_the_package(kernel, data, value, soft):
    assert kernel.crc32c(data, value, soft) == crc_package.crc32c(data, value)


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.__name__)
def test_crc32c_long_and_unaligned(kernel):
    data = np.random.default_rng(5).integers(0, 256, 200_003, dtype=np.uint8).tobytes()
    for start in range(9):
        for soft in (False, True):
            assert kernel.crc32c(memoryview(data)[start:], 7, soft) == crc_package.crc32c(data[start:], 7)


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.__name__)
def test_frame_records_refuses_what_does_not_fit(kernel):
    with pytest.raises(ValueError, match="record type"):
        kernel.frame_records([(256, [b"x"])], 1, 1, SALT)
    with pytest.raises(ValueError, match="record type"):
        kernel.frame_records([(-1, [b"x"])], 1, 1, SALT)
    with pytest.raises(OverflowError):
        kernel.frame_records([(1, [b"x"])], -1, 1, SALT)
    with pytest.raises(OverflowError):
        kernel.frame_records([(1, [b"x"])], 1, 2**64, SALT)


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.__name__)
@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 31), k=st.integers(0, 12), packed=st.booleans(),
       src=st.sampled_from([None, b"", b"user", "rule:ü".encode()]), flags=st.integers(0, 255),
       name=st.sampled_from([b"p", "päge".encode(), b"x" * 300]))
def test_small_delta_matches_the_record_codec(kernel, seed, n, k, packed, src, flags, name):
    """One small DELTA payload in one call: the bytes the record codec writes, field by field (docs/FORMAT.md)."""
    rng = np.random.default_rng(seed)
    values = rng.random(n)
    idx = None if k == 0 else np.cumsum(rng.integers(0, 9, k)).astype(np.int64)
    pk = None
    if idx is not None and packed:
        pk = bytes(rng.integers(0, 256, int(rng.integers(0, 12 * k)), dtype=np.uint8))
    payload, nidx = kernel.small_delta(name, flags, src, idx, pk, b"\x03<f8", values, 0, 1)
    expect = len(name).to_bytes(2, "little") + name + bytes((flags,))
    if src is not None:
        expect += len(src).to_bytes(2, "little") + src
    if idx is not None:
        use = pk is not None and len(pk) < idx.nbytes
        data = pk if use else idx.tobytes()
        expect += bytes((1,)) + k.to_bytes(8, "little") + bytes((1 if use else 0,)) + len(data).to_bytes(8, "little")
        expect += data
        assert nidx == len(data)
    else:
        assert nidx == 0
    expect += b"\x03<f8" + bytes((1,)) + n.to_bytes(8, "little") + bytes((0,)) + values.nbytes.to_bytes(8, "little")
    assert payload == expect + values.tobytes()

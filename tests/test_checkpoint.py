"""Checkpoints, spill blobs and the STORE file: round trips, corruption detection, atomic publication."""
import os

import numpy as np
import pytest

from mmsb import checkpoint as C
from mmsb import container as K
from mmsb import identity as ID
from mmsb import layout as LY
from mmsb import spill as SP
from mmsb.delta import SchemaOp
from mmsb.errors import CorruptionError


def pages(seed=0):
    rng = np.random.default_rng(seed)
    return [
        ({"name": "dense", "shape": [50, 40], "dtype": "float64", "semiring": "plus_times", "device": "cpu",
          "metadata": {"inf": float("inf")}, "epoch": 3}, rng.random((50, 40))),
        ({"name": "zeros", "shape": [100000], "dtype": "int32"}, np.zeros(100000, np.int32)),
        ({"name": "flags", "shape": [33]}, rng.random(33) < 0.5),
        ({"name": "empty", "shape": [0]}, np.zeros(0, np.float32)),
        ({"name": "c", "shape": [4]}, np.array([1 + 2j, np.inf, np.nan, -1], np.complex128)),
    ]


RULES = [SchemaOp("rule_added", {"kind": "link", "dst": "a", "src": "b"},
                  {"indptr": np.array([0, 1, 3]), "indices": np.array([0, 0, 1]), "data": np.array([1.0, 2, 3])})]


def check_same(snap, ps, rules=RULES):
    assert len(snap.pages) == len(ps)
    for (m1, a1), (m2, a2) in zip(snap.pages, ps):
        assert repr(m1) == repr(m2)
        assert a1.dtype == a2.dtype and a1.shape == a2.shape
        np.testing.assert_array_equal(a1, a2)
    assert [r.kind for r in snap.rules] == [r.kind for r in rules]
    for r1, r2 in zip(snap.rules, rules):
        assert r1.payload == r2.payload
        for k in r2.arrays:
            np.testing.assert_array_equal(r1.arrays[k], r2.arrays[k])


def test_round_trip_and_listing(tmp_path):
    ps = pages()
    C.write_checkpoint(tmp_path, 3, ps, RULES, extra={"graph": [1, 2]})
    C.write_checkpoint(tmp_path, 7, pages(1), [], extra=None)
    assert C.list_checkpoints(tmp_path) == [3, 7]
    snap = C.load_checkpoint(tmp_path, epoch=3)
    assert snap.epoch == 3 and snap.extra == {"graph": [1, 2]}
    check_same(snap, ps)
    assert C.load_checkpoint(tmp_path).epoch == 7
    assert C.load_checkpoint(tmp_path, max_epoch=6).epoch == 3
    assert C.load_checkpoint(tmp_path, max_epoch=2) is None
    assert C.load_checkpoint(tmp_path, epoch=5) is None
    C.remove_checkpoint(tmp_path, 7)
    assert C.list_checkpoints(tmp_path) == [3]


def test_multi_chunk_pages(tmp_path, monkeypatch):
    monkeypatch.setattr(K, "CHUNK_BYTES", 4096)
    ps = [({"name": "big"}, np.random.default_rng(0).random(10000)),
          ({"name": "ramp"}, np.arange(20000, dtype=np.int64))]
    C.write_checkpoint(tmp_path, 1, ps, [])
    check_same(C.load_checkpoint(tmp_path), ps, [])


def test_every_flipped_byte_detected(tmp_path):
    ps = [({"name": "a"}, np.arange(64.0)), ({"name": "z"}, np.zeros(2000)), ({"name": "b"}, np.ones(3, bool))]
    path = C.write_checkpoint(tmp_path, 1, ps, RULES)
    data = open(path, "rb").read()
    positions = range(len(data)) if len(data) < 3000 else np.random.default_rng(0).integers(0, len(data), 400)
    for pos in positions:
        b = bytearray(data)
        b[int(pos)] ^= 0x10
        open(path, "wb").write(b)
        with pytest.raises(CorruptionError):
            C.load_checkpoint(tmp_path, epoch=1)
    open(path, "wb").write(data)
    assert C.load_checkpoint(tmp_path, epoch=1) is not None
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        open(path, "wb").write(data[:cut])
        with pytest.raises(CorruptionError):
            C.load_checkpoint(tmp_path, epoch=1)


def test_fallback_to_older(tmp_path):
    C.write_checkpoint(tmp_path, 1, pages(), RULES)
    p2 = C.write_checkpoint(tmp_path, 2, pages(2), RULES)
    b = bytearray(open(p2, "rb").read())
    b[100] ^= 1
    open(p2, "wb").write(b)
    with pytest.raises(CorruptionError):
        C.load_checkpoint(tmp_path)
    with pytest.raises(CorruptionError):
        C.load_checkpoint(tmp_path, max_epoch=5)
    with pytest.warns(RuntimeWarning):
        snap = C.load_checkpoint(tmp_path, max_epoch=5, fallback=True)
    assert snap.epoch == 1


def test_atomic_publish_crash_before_rename(tmp_path, monkeypatch):
    ps = pages()
    C.write_checkpoint(tmp_path, 1, ps, RULES)

    def crash(src, dst):
        raise KeyboardInterrupt("simulated crash between temp write and rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        C.write_checkpoint(tmp_path, 2, pages(5), RULES)
    monkeypatch.undo()
    assert C.list_checkpoints(tmp_path) == [1]
    check_same(C.load_checkpoint(tmp_path), ps)
    # a temp file left by a hard crash is ignored by listing and removed by cleanup_temp
    tmp = os.path.join(C.checkpoint_dir(tmp_path), f".{2:020d}.ckpt.tmp-abcdef")
    open(tmp, "wb").write(b"partial")
    assert C.list_checkpoints(tmp_path) == [1]
    assert LY.cleanup_temp(tmp_path) == 1


def test_overwrite_same_epoch_is_atomic(tmp_path):
    C.write_checkpoint(tmp_path, 4, pages(), RULES)
    C.write_checkpoint(tmp_path, 4, pages(9), [])
    check_same(C.load_checkpoint(tmp_path, epoch=4), pages(9), [])


def test_blob_round_trip_and_corruption(tmp_path):
    p = str(tmp_path / "blob")
    for arr in (np.arange(1000.0).reshape(10, 100), np.zeros(5, np.uint16), np.array(3.5)):
        SP.write_blob_file(p, arr, {"name": "x", "epoch": 2})
        meta, out = SP.read_blob_file(p)
        assert meta == {"name": "x", "epoch": 2}
        np.testing.assert_array_equal(out, arr)
        assert out.shape == arr.shape
    data = open(p, "rb").read()
    for pos in range(0, len(data), 7):
        b = bytearray(data)
        b[pos] ^= 4
        open(p, "wb").write(b)
        with pytest.raises(CorruptionError):
            SP.read_blob_file(p)


def test_store_file(tmp_path):
    info = ID.write_store_file(tmp_path)
    assert ID.read_store_file(tmp_path) == info
    path = tmp_path / "STORE"
    data = path.read_bytes()
    for pos in range(len(data)):
        b = bytearray(data)
        b[pos] ^= 1
        path.write_bytes(b)
        with pytest.raises(CorruptionError):
            ID.read_store_file(tmp_path)
    with pytest.raises(FileNotFoundError):
        ID.read_store_file(tmp_path / "nope")


# ---------------------------------------------------------------- version 2: aligned RAW chunks, O_DIRECT writes

def aligned_pages(seed=0):
    rng = np.random.default_rng(seed)
    return [({"name": "tiny"}, np.arange(5, dtype=np.int8)),               # leaves the cursor unaligned
            ({"name": "big"}, rng.random(3 * K.ALIGN_MIN // 8 + 5)),        # RAW, >= 64 KiB: aligned
            ({"name": "smooth"}, np.repeat(np.arange(100.0), 200)),         # compressed: not aligned
            ({"name": "big2"}, rng.random(K.ALIGN_MIN // 8))]


def test_large_raw_chunks_start_aligned_and_padding_must_be_zero(tmp_path):
    ps = aligned_pages()
    path = C.write_checkpoint(tmp_path, 1, ps, RULES)
    man = C.read_checkpoint_file(path)[0]
    assert man["format"] == 2
    chunks = {p["meta"]["name"]: p["chunks"] for p in man["pages"]}
    for name in ("big", "big2"):
        assert all(c["codec"] == K.codecs.RAW and c["offset"] % K.ALIGN == 0 for c in chunks[name])
    pad_start = chunks["tiny"][0]["offset"] + chunks["tiny"][0]["length"]
    pad_end = chunks["big"][0]["offset"]
    assert pad_end - pad_start > 0
    check_same(C.load_checkpoint(tmp_path, epoch=1), ps)
    data = open(path, "rb").read()
    assert data[pad_start:pad_end] == bytes(pad_end - pad_start)
    for pos in (pad_start, (pad_start + pad_end) // 2, pad_end - 1):       # padding has no checksum of its own
        b = bytearray(data)
        b[pos] ^= 0x01
        open(path, "wb").write(b)
        with pytest.raises(CorruptionError, match="padding"):
            C.load_checkpoint(tmp_path, epoch=1)
    open(path, "wb").write(data)
    assert C.verify_checkpoint(path)["pages"] == 4


@pytest.fixture
def direct_fds(monkeypatch):
    """The O_DIRECT descriptors checkpoint writers open (None where the file system refuses O_DIRECT)."""
    opened = []
    real = K._open_direct

    def spy(path):
        fd = real(path)
        opened.append(fd)
        return fd

    monkeypatch.setattr(K, "_open_direct", spy)
    return opened


@pytest.mark.parametrize("direct", [True, False])
def test_direct_and_buffered_writes_give_the_same_container(tmp_path, monkeypatch, direct_fds, direct):
    monkeypatch.setattr(K, "DIRECT_IO", direct)
    ps = aligned_pages(3)
    path = C.write_checkpoint(tmp_path, 2, ps, RULES, fsync=True)
    assert bool(direct_fds) == direct
    man = C.read_checkpoint_file(path)[0]
    ref = C.write_checkpoint(tmp_path / "ref", 2, ps, RULES, fsync=False)   # never direct
    man_ref = C.read_checkpoint_file(ref)[0]
    assert [p["chunks"] for p in man["pages"]] == [p["chunks"] for p in man_ref["pages"]]
    check_same(C.load_checkpoint(tmp_path, epoch=2), ps)


def test_direct_write_refused_or_unaligned_falls_back(tmp_path, monkeypatch, direct_fds):
    import errno

    real = os.pwrite

    def pwrite(fd, data, offset):
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "no O_DIRECT on this file system")
        return real(fd, data, offset)

    monkeypatch.setattr(K.os, "pwrite", pwrite)
    rng = np.random.default_rng(5)
    unaligned = np.empty(K.ALIGN_MIN // 8 + 9)[1:]                 # 8-byte aligned memory: never direct
    unaligned[...] = rng.random(unaligned.size)
    ps = aligned_pages(4) + [({"name": "unaligned"}, unaligned)]
    C.write_checkpoint(tmp_path, 3, ps, RULES, fsync=True)
    check_same(C.load_checkpoint(tmp_path, epoch=3), ps)
    assert C.verify_checkpoint(C.checkpoint_path(tmp_path, 3))["pages"] == 5


def test_version_1_containers_still_load(tmp_path, monkeypatch):
    """A version-1 writer (chunks back to back) is emulated by turning alignment off: the reader takes it."""
    ps = aligned_pages(6)
    monkeypatch.setattr(K, "FORMAT_VERSION", 1)
    monkeypatch.setattr(K, "ALIGN_MIN", 1 << 62)
    path = C.write_checkpoint(tmp_path, 4, ps, RULES)
    monkeypatch.undo()
    man = C.read_checkpoint_file(path)[0]
    assert man["format"] == 1
    offs = [c["offset"] for p in man["pages"] for c in p["chunks"]]
    assert offs[1] % K.ALIGN != 0                                  # not aligned, yet valid in version 1
    check_same(C.load_checkpoint(tmp_path, epoch=4), ps)

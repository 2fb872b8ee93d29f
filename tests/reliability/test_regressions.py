"""Regression tests for the defects the reliability suite found (see docs/reliability.md)."""
import errno
import os

import pytest

import mmsb
import mmsb.log.durable as LD

pytestmark = pytest.mark.reliability


def test_close_releases_lock_when_final_fsync_fails(tmp_path, monkeypatch):
    """mmsb/buffer.py: Buffer.close() skipped Store.close() (the writer lock) when the log's final fsync raised,
    so the store stayed locked (StoreLockedError) for the rest of the process."""
    path = str(tmp_path / "s")
    buf = mmsb.open(path, "w")
    buf.create_page("x", 4)

    class OS:
        def __getattr__(self, n):
            return getattr(os, n)

        def fsync(self, fd):
            raise OSError(errno.EIO, "injected")
    monkeypatch.setattr(LD, "os", OS())
    with pytest.raises(OSError):
        buf.close()
    monkeypatch.undo()
    with mmsb.open(path, "a") as again:         # was StoreLockedError
        assert "x" in again


def test_creation_cut_before_store_rename_can_be_reopened(tmp_path):
    """mmsb/store.py: a creation interrupted after writing .STORE.tmp-* (before the rename) left a directory
    that every later open refused as "a non-empty directory that is not an mmsb store"."""
    path = tmp_path / "s"
    path.mkdir()
    (path / "LOCK").write_bytes(b"")
    (path / ".STORE.tmp-0123456789ab").write_bytes(b"MMSBSTOR partial")
    with mmsb.open(str(path), "a") as buf:
        buf.create_page("x", 4)
    assert mmsb.verify(str(path)).ok


def test_zero_dim_beside_huge_dim_is_corruption():
    """mmsb/log/records.py: a shape like (0, 2**62) passed the size check (the product is 0) and reshape then
    raised numpy's ValueError instead of CorruptionError (found by the atheris harness)."""
    import base64

    from mmsb.errors import CorruptionError
    from mmsb.log import records as R

    data = base64.b64decode("/wAAABgAAAQAAAAnAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABAAAAAAAAAAAAAAAAAAAA")
    with pytest.raises(CorruptionError):
        R.decode_op(R.DELTA, data[2:], 1)


def test_new_segment_header_is_durable_before_space_is_reserved(tmp_path):
    """mmsb/log/durable.py: the fsync-mode log reserves zeroed space ahead of its commits. A power cut during the
    first reservation of a new segment garbled that space together with the not-yet-synced header, and the
    segment was then refused as corrupt. Now the header is fsynced first, so only the reserved space can be
    garbage: a torn tail, recovered to the last commit of the previous segment."""
    import numpy as np

    from mmsb.log import segment as S
    from mmsb.errors import TornWriteWarning

    path = str(tmp_path / "s")
    writes = []
    with mmsb.open(path, "w", segment_bytes=4096) as buf:
        p = buf.create_page("x", 64)
        while len(S.iter_segments(os.path.join(path, "log"))) < 2:
            writes.append(buf.write(p, np.arange(64.0) + len(writes)))
        seg = S.iter_segments(os.path.join(path, "log"))[-1][1]
        header = open(seg, "rb").read(S.HEADER_SIZE)
    last_before = writes[-2]                 # the last write committed in the previous segment
    with open(seg, "wb") as f:               # the reserve was cut: header durable, the rest garbage
        f.write(header + np.random.default_rng(0).integers(0, 256, 1 << 16, dtype=np.uint8).tobytes())
    with pytest.warns(TornWriteWarning):
        with mmsb.open(path, "a") as buf:
            assert buf.epoch == last_before
            np.testing.assert_array_equal(buf["x"].read(), np.arange(64.0) + len(writes) - 2)
    assert mmsb.verify(path).ok


def _last_segment(path):
    from mmsb.log import segment as S
    base, seg = S.iter_segments(os.path.join(path, "log"))[-1]
    return base, seg, S.check_segment(seg, base)


def test_reader_racing_an_append_sees_no_corruption(tmp_path, monkeypatch):
    """mmsb/log/durable.py: a mode="r" reader whose read of the writer's current segment raced an append (the
    kernel copies a read page by page: a page copied before the writer filled it -- the zeros the writer
    reserved ahead -- and a later one after) saw a hole with a complete transaction behind it, which is no torn
    tail, and raised "log corrupt: record header checksum mismatch" on a healthy store (the stress test, under
    load). Reading again shows the hole filled: the reader now treats such a failure as a write in flight."""
    from mmsb.log import segment as S
    path = str(tmp_path / "s")
    buf = mmsb.open(path, "w")
    p = buf.create_page("x", 64)
    for k in range(6):
        buf.write(p, [float(k + 1)] * 4, index=[k, k + 8, k + 16, k + 24])
    base, seg, chk = _last_segment(path)
    assert len(chk.txns) >= 2 and chk.error is None
    with open(seg, "rb") as f:
        racy = bytearray(f.read())
    hole = chk.txns[-2]
    racy[hole.start:hole.end] = bytes(hole.end - hole.start)   # what the racing read copied: not written yet
    real_scan = S.scan_segment
    raced = []

    def scan(p_, data=None, skip_epoch=None):
        if data is None and not raced and os.path.realpath(p_) == os.path.realpath(seg):
            raced.append(p_)
            return real_scan(p_, data=memoryview(bytes(racy)))
        return real_scan(p_, data=data, skip_epoch=skip_epoch)
    monkeypatch.setattr(S, "scan_segment", scan)
    with mmsb.open(path, "r") as ro:                 # was CorruptionError
        assert raced
        assert ro.epoch == buf.epoch
        assert list(ro["x"].read()) == list(p.read())
    buf.close()


def test_reader_still_reports_a_hole_that_stays(tmp_path):
    """The other side of the test above: a hole in the last segment with committed transactions behind it that
    reads the same every time is damage, and a mode="r" open raises CorruptionError for it."""
    path = str(tmp_path / "s")
    with mmsb.open(path, "w") as buf:
        p = buf.create_page("x", 64)
        for k in range(6):
            buf.write(p, [float(k + 1)] * 4, index=[k, k + 8, k + 16, k + 24])
    base, seg, chk = _last_segment(path)
    hole = chk.txns[-2]
    with open(seg, "r+b") as f:
        f.seek(hole.start)
        f.write(bytes(hole.end - hole.start))
    with pytest.raises(mmsb.errors.CorruptionError):
        mmsb.open(path, "r")

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
    """mmsb/durable.py: a creation interrupted after writing .STORE.tmp-* (before the rename) left a directory
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

"""File helpers: starting writeback early leaves the file's bytes as written."""
import os
import sys

from mmsb.fileio import fsync_dir, start_writeback


def test_start_writeback_is_a_hint(tmp_path):
    path = tmp_path / "f"
    data = os.urandom(3 * 2**20 + 17)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        ok = start_writeback(fd, 0, len(data))
        assert ok is (sys.platform.startswith("linux")) or ok is False
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(str(tmp_path))
    assert path.read_bytes() == data


def test_start_writeback_on_a_closed_descriptor_is_refused(tmp_path):
    fd = os.open(tmp_path / "g", os.O_RDWR | os.O_CREAT, 0o644)
    os.close(fd)
    assert start_writeback(fd, 0, 1) is False

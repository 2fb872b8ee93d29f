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


def test_paced_writeback_covers_the_file_piece_by_piece(tmp_path, monkeypatch):
    """Each piece is written back and waited for (WAIT_BEFORE | WRITE | WAIT_AFTER) in order, covering the file;
    the bytes stay as written."""
    import mmsb.fileio as F

    path = tmp_path / "f"
    data = os.urandom(5 * 4096 + 100)
    calls = []
    real = F._sync_file_range()
    monkeypatch.setattr(F, "_sync_file_range",
                        lambda: (lambda fd, off, n, flags: calls.append((off, n, flags)) or
                                 (real(fd, off, n, flags) if real else 0)))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        F.write_back_paced(fd, 2 * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert calls == [(0, 8192, 7), (8192, 8192, 7), (16384, 8192, 7)]
    assert path.read_bytes() == data


def test_paced_writeback_leaves_errors_to_fsync(tmp_path, monkeypatch):
    import mmsb.fileio as F

    fd = os.open(tmp_path / "g", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"x" * 10000)
    os.close(fd)
    F.write_back_paced(fd, 4096)                       # a closed descriptor: nothing, no error
    monkeypatch.setattr(F, "_sync_file_range", lambda: False)
    F.write_back_paced(0, 4096)                         # no sync_file_range here: nothing

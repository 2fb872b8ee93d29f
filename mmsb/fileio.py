"""Small file-system helpers shared by the log, checkpoints and the store."""
from __future__ import annotations

import os
import sys
from typing import Any


def fsync_dir(path: str) -> None:
    """fsync a directory, so that a file created, renamed or removed in it survives power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNC_FILE_RANGE: Any = None
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT = 1 | 2 | 4      # WAIT_BEFORE | WRITE | WAIT_AFTER


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Ask the kernel to start writing ``[offset, offset + length)`` of ``fd`` to disk now, without waiting for
    it (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``), so that a later fsync finds little left to do. Returns
    False where that is unavailable or refused. It is a hint: only fsync makes data durable."""
    fn = _sync_file_range()
    if not fn:
        return False
    return fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE) == 0


def write_back_paced(fd: int, step: int) -> None:
    """Write ``fd``'s dirty cached pages to disk ``step`` bytes at a time, waiting for each piece (Linux
    ``sync_file_range``; nothing elsewhere): a background flush then keeps at most ``step`` bytes in the disk's
    queue, so that a small synchronous write beside it (a log segment's roll) does not wait behind all of it. A
    hint before fsync, which alone makes data durable; errors are left to that fsync."""
    fn = _sync_file_range()
    if not fn:
        return
    try:
        size = os.fstat(fd).st_size
    except OSError:
        return
    for off in range(0, size, step):
        if fn(fd, off, step, _SYNC_FILE_RANGE_WAIT) != 0:
            return


def _sync_file_range() -> Any:
    """libc's sync_file_range (ctypes releases the GIL during the call), or False where there is none."""
    global _SYNC_FILE_RANGE
    if _SYNC_FILE_RANGE is None:
        _SYNC_FILE_RANGE = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).sync_file_range
                fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                fn.restype = ctypes.c_int
                _SYNC_FILE_RANGE = fn
            except (OSError, AttributeError):
                pass
    return _SYNC_FILE_RANGE

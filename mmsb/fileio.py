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


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Ask the kernel to start writing ``[offset, offset + length)`` of ``fd`` to disk now, without waiting for
    it (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``), so that a later fsync finds little left to do. Returns
    False where that is unavailable or refused. It is a hint: only fsync makes data durable."""
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
    if not _SYNC_FILE_RANGE:
        return False
    return _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE) == 0

"""Small file-system helpers shared by the log, checkpoints and the store."""
from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    """fsync a directory, so that a file created, renamed or removed in it survives power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

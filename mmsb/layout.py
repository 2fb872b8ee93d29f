"""A store directory's layout: the names of its files and directories, and the temporary files of atomic writes.

::

    root/STORE                          identity and format version (mmsb.identity)
    root/LOCK                           the writer's OS lock, no data
    root/MANIFEST                       the live segments and checkpoints (mmsb.manifest)
    root/log/<first epoch:020d>.seg     log segments (mmsb.log)
    root/checkpoints/<epoch:020d>.ckpt  checkpoints (mmsb.checkpoint)
    root/spill/                         cold pages while the buffer is open (mmsb.spill)
    .<name>.tmp-<hex>                   an atomic write in progress (or interrupted), in any of the above

Byte layouts: docs/FORMAT.md.
"""
from __future__ import annotations

import os
import uuid

from mmsb.fileio import fsync_dir

STORE_FILE = "STORE"
LOCK_FILE = "LOCK"
MANIFEST_FILE = "MANIFEST"
LOG_DIR = "log"
CKPT_DIR = "checkpoints"
SPILL_DIR = "spill"
CKPT_SUFFIX = ".ckpt"
EPOCH_DIGITS = 20   # epochs in file names: zero-padded to this many digits


def checkpoint_name(epoch: int) -> str:
    """The file name of the checkpoint of ``epoch``: ``<epoch:020d>.ckpt``."""
    return f"{int(epoch):0{EPOCH_DIGITS}d}{CKPT_SUFFIX}"


def parse_checkpoint_name(name: str) -> int | None:
    """The epoch a checkpoint file name holds, or None when ``name`` is not one."""
    if len(name) == EPOCH_DIGITS + len(CKPT_SUFFIX) and name.endswith(CKPT_SUFFIX) \
            and name[:EPOCH_DIGITS].isdigit():
        return int(name[:EPOCH_DIGITS])
    return None


def temp_path(final: str) -> str:
    """A fresh temporary name beside ``final`` (``.<name>.tmp-<12 hex>``) to write before renaming it over."""
    d, name = os.path.split(final)
    return os.path.join(d, f".{name}.tmp-{uuid.uuid4().hex[:12]}")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file of an atomic write."""
    return name.startswith(".") and ".tmp-" in name


def cleanup_temp(root: str) -> int:
    """Remove the temporary files interrupted atomic writes left (``.<name>.tmp-<hex>``) in the store's root,
    ``checkpoints/`` and ``log/``; returns how many. Called when a writer opens (it holds the lock)."""
    root = os.fspath(root)
    n = 0
    for d in (root, os.path.join(root, CKPT_DIR), os.path.join(root, LOG_DIR)):
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            continue
        gone = 0
        for name in names:
            if is_temp_name(name):
                try:
                    os.unlink(os.path.join(d, name))
                    gone += 1
                except FileNotFoundError:
                    pass
        if gone:
            fsync_dir(d)
        n += gone
    return n


__all__ = ["CKPT_DIR", "LOCK_FILE", "LOG_DIR", "MANIFEST_FILE", "SPILL_DIR", "STORE_FILE", "checkpoint_name",
           "cleanup_temp", "is_temp_name", "parse_checkpoint_name", "temp_path"]

"""Spill files: one page's array (+ JSON meta) in a container (mmsb.container), written when the memory limit
evicts a page (mmsb.memory) and read back, every chunk checked, when it is used again.

Spill files live in ``root/spill/`` of a store (or a temporary directory) only while the buffer is open.
"""
from __future__ import annotations

import os

import numpy as np

from mmsb.container import corrupt, read_container, write_container

BLOB_MAGIC = b"MMSBBLB\0"
# smaller chunks than a checkpoint's, so that a reload reads and checks them on NTHREADS threads
BLOB_CHUNK_BYTES = 4 * 2**20


def write_blob_file(path: str, array, meta: dict | None = None, fsync: bool = False,
                    compress: bool = True) -> str:
    """Write one array (+ JSON meta) as a self-checksummed file, atomically (temp + rename)."""
    write_container(os.fspath(path), BLOB_MAGIC, 0, [(meta or {}, np.asarray(array))], [], None, fsync,
                    compress, kind="blob", chunk=BLOB_CHUNK_BYTES)
    return os.fspath(path)


def read_blob_file(path: str, blocks=None, info: dict | None = None) -> tuple[dict, np.ndarray]:
    """Read and validate a blob file: (meta, array). CorruptionError when any check fails. ``blocks`` (a
    callable ``(dtype, n) -> flat array``, as the checkpoint reader's): the array is read straight into it.
    ``info``: a dict that receives the validated container manifest (``info["manifest"]``)."""
    man, pages, _ = read_container(os.fspath(path), BLOB_MAGIC, strong=False, blocks=blocks)
    if len(pages) != 1:
        raise corrupt("blob file must hold one array", path, None, "blob")
    if info is not None:
        info["manifest"] = man
    return pages[0]


__all__ = ["BLOB_CHUNK_BYTES", "BLOB_MAGIC", "read_blob_file", "write_blob_file"]

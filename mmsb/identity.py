"""The STORE identity file: what makes a directory an mmsb store, its format version and its store id.

``root/STORE`` and ``root/MANIFEST`` (mmsb.manifest) are small root files with one framing, :data:`FRAME`::

    magic (8) | u16 version | u16 reserved (0) | u32 json length | json | u32 masked CRC32C of all before it

Byte layout: docs/FORMAT.md.
"""
from __future__ import annotations

import os
import struct
import time
import uuid

import crc32c as _crc

from mmsb.errors import CorruptionError
from mmsb.fileio import fsync_dir
from mmsb.layout import STORE_FILE, temp_path
from mmsb.log.records import dumps, loads_json
from mmsb.log.segment import mask_crc

STORE_MAGIC = b"MMSBSTOR"
STORE_VERSION = 2            # written; 2 = the store has a MANIFEST (mmsb/manifest.py); 1 (none) is still read
STORE_READ_VERSIONS = (1, 2)
STORE_MAX_BYTES = 1 << 20    # a STORE file is small; a larger one is refused before it is read
FRAME = struct.Struct("<8sHHI")   # magic, version, reserved, json length; then json; then u32 masked crc
_U32 = struct.Struct("<I")


def seal(magic: bytes, version: int, body: bytes) -> bytes:
    """A framed root file: :data:`FRAME` header, ``body`` (JSON bytes), masked CRC32C of both."""
    data = FRAME.pack(magic, int(version), 0, len(body)) + body
    return data + _U32.pack(mask_crc(_crc.crc32c(data)))


def seal_ok(data: bytes) -> bool:
    """Whether the CRC at the end of a framed root file covers the bytes before it."""
    return mask_crc(_crc.crc32c(data[:-4])) == _U32.unpack_from(data, len(data) - 4)[0]


def _bad(msg: str, path: str, offset: int, what: str) -> CorruptionError:
    return CorruptionError(msg, file=path, offset=offset, what=what)


def write_store_file(root: str, info: dict | None = None, fsync: bool = True, version: int = 1) -> dict:
    """Write root/STORE (atomically): identity JSON with format version, a store id and creation time.

    ``version=2`` (what :func:`mmsb.open` writes) declares that the store keeps a MANIFEST, which the caller
    writes first; version 1 (the default, for tools that lay a store out by hand) declares none."""
    if version not in STORE_READ_VERSIONS:
        raise ValueError(f"STORE version must be one of {STORE_READ_VERSIONS}")
    body = {"format": "mmsb", "version": int(version), "store_id": uuid.uuid4().hex, "created": time.time()}
    if info:
        body.update(info)
    data = seal(STORE_MAGIC, body["version"], dumps(body))
    root = os.fspath(root)
    final = os.path.join(root, STORE_FILE)
    tmp = temp_path(final)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, final)
    if fsync:
        fsync_dir(root)
    return body


def read_store_file(root: str) -> dict:
    """Read and validate root/STORE; FileNotFoundError when absent, CorruptionError when damaged."""
    path = os.path.join(os.fspath(root), STORE_FILE)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size > STORE_MAX_BYTES:
            raise _bad(f"STORE file larger than {STORE_MAX_BYTES} bytes", path, 0, "store size")
        data = f.read()
    if len(data) < FRAME.size + 4:
        raise _bad("STORE file too short", path, 0, "store size")
    magic, ver, res, ln = FRAME.unpack_from(data)
    if magic != STORE_MAGIC:
        raise _bad("bad STORE magic", path, 0, "store magic")
    if len(data) != FRAME.size + ln + 4:
        raise _bad("STORE length mismatch", path, 12, "store length")
    if not seal_ok(data):
        raise _bad("STORE checksum mismatch", path, len(data) - 4, "store crc")
    if ver not in STORE_READ_VERSIONS or res:
        raise _bad(f"unsupported STORE version {ver}", path, 8, "store version")
    body = loads_json(data[FRAME.size:-4], "store json", path, FRAME.size)
    if not isinstance(body, dict) or body.get("format") != "mmsb" or body.get("version") != ver \
            or not isinstance(body.get("store_id"), str):
        raise _bad("STORE body is not an mmsb identity", path, FRAME.size, "store json")
    return body


def is_store(root: str) -> bool:
    """Whether ``root`` holds a STORE file."""
    return os.path.isfile(os.path.join(root, STORE_FILE))


__all__ = ["FRAME", "STORE_MAGIC", "STORE_READ_VERSIONS", "STORE_VERSION", "is_store", "read_store_file", "seal",
           "seal_ok", "write_store_file"]

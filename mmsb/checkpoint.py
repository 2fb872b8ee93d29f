"""Checkpoint files: one container (mmsb.container) per checkpoint, ``root/checkpoints/<epoch:020d>.ckpt``.

A checkpoint holds every page (meta + array) and every rule of a store at one epoch. Written atomically; a
version-3 (incremental) checkpoint borrows the chunks of pages that did not change from older checkpoints of the
same store (:class:`~mmsb.container.PageRef`). Byte-level layout: docs/FORMAT.md.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

from mmsb.container import (PageRef, corrupt, declared_refs, read_container, read_container_manifest,
                            trailer_info, write_container)
from mmsb.errors import CorruptionError
from mmsb.fileio import fsync_dir as _fsync_dir
from mmsb.layout import CKPT_DIR, checkpoint_name, parse_checkpoint_name
from mmsb.log.records import check_page_meta, check_schema

CKPT_MAGIC = b"MMSBCKP\0"
# Checkpoint page compression ("on", "off", "auto"; env MMSB_CHECKPOINT_COMPRESS; default on). Every 16 MiB chunk
# is probed and kept raw when blosc2 saves less than 20%. blosc2 (LZ4 + shuffle) decodes at ~3 GB/s per core while
# a raw read from a warm page cache runs at memory speed (~10 GB/s): on machines with fewer than
# AUTO_COMPRESS_CPUS cores a raw checkpoint of compressible data reloads faster from cache (but is far larger on
# disk and slower to read cold); "auto" writes raw there, "off" always.
CHECKPOINT_COMPRESS = os.environ.get("MMSB_CHECKPOINT_COMPRESS", "on")
AUTO_COMPRESS_CPUS = 4


def checkpoint_compression() -> bool:
    """Whether ``buf.checkpoint()`` compresses pages by default (see CHECKPOINT_COMPRESS)."""
    mode = str(CHECKPOINT_COMPRESS).lower()
    if mode in ("1", "on", "true", "yes"):
        return True
    if mode in ("0", "off", "false", "no"):
        return False
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return cpus >= AUTO_COMPRESS_CPUS


@dataclass
class Snapshot:
    """A loaded checkpoint."""
    epoch: int
    pages: list = field(default_factory=list)    # [(meta dict, numpy array)]
    rules: list = field(default_factory=list)    # [SchemaOp]
    extra: Any = None
    path: Optional[str] = None
    blocks: Any = None     # the memory.BlockLoader whose blocks hold the page arrays (None: plain arrays)
    layout: dict = field(default_factory=dict)   # page name -> PageRef: where each page's chunks lie on disk


def _check_described(plans: list, rplans: list, path: str, moff: int) -> None:
    """A checkpoint's page descriptions (name, shape, dtype, semiring) must be valid and agree with the arrays
    that hold them; its rules must be well formed (CorruptionError naming the page otherwise)."""
    for meta, (dt, shape, _) in plans:
        if not isinstance(meta, dict):
            raise corrupt("manifest: page description is not an object", path, moff, "manifest page")
        name = meta.get("name")
        if "shape" in meta or "dtype" in meta:
            desc = {"semiring": "", "name": name if name else "?", "shape": meta.get("shape", list(shape)),
                    "dtype": meta.get("dtype", dt.str)}
            try:
                mshape, mdt = check_page_meta(desc, "checkpoint page")
            except CorruptionError as exc:
                raise corrupt(f"manifest: {exc}", path, moff, "manifest page") from None
            if mshape != tuple(shape) or mdt != dt:
                raise corrupt(f"manifest: page {name!r} is described as {list(mshape)} {mdt.str} but its array "
                              f"is {list(shape)} {dt.str}", path, moff, "manifest page")
    for kind, pl, _ in rplans:
        try:
            check_schema(kind, pl, {})
        except CorruptionError as exc:
            raise corrupt(f"manifest: {exc}", path, moff, "manifest rule") from None


def read_checkpoint_file(path: str, strong: bool = True, blocks=None, fd: int | None = None, ref_fd=None):
    """Read and validate one checkpoint file: (container manifest, pages [(meta, array)], rules [SchemaOp]).
    ``strong`` adds SHA-256 to the CRC32C checks; ``blocks``, ``fd``, ``ref_fd``: as
    :func:`mmsb.container.read_container`. The chunks it borrows are read from the checkpoints beside it."""
    d = os.path.dirname(path)
    return read_container(path, CKPT_MAGIC, strong=strong, blocks=blocks, fd=fd, ref_fd=ref_fd,
                          borrowed_path=lambda e: os.path.join(d, checkpoint_name(e)), check=_check_described)


def checkpoint_dir(root: str) -> str:
    return os.path.join(os.fspath(root), CKPT_DIR)


def checkpoint_path(root: str, epoch: int) -> str:
    return os.path.join(checkpoint_dir(root), checkpoint_name(epoch))


def write_checkpoint(root: str, epoch: int, pages, rules, extra=None, fsync: bool = True,
                     compress: Optional[bool] = True, info: Optional[dict] = None, background: bool = False) -> str:
    """Write and atomically publish the checkpoint of ``epoch``; returns its path.

    ``pages``: list of (meta, array) — meta is JSON-able (name, shape, dtype, semiring, device, metadata, epoch);
    the array may be a :class:`PageRef` (a page older checkpoints of ``root`` hold: an incremental checkpoint,
    container version 3; those checkpoints must be kept while this one is).
    ``rules``: list of SchemaOp. ``extra``: any JSON-able value. ``compress``: try blosc2 on each chunk
    (kept only where it saves >= 20%); None: :func:`checkpoint_compression`. ``info``: a dict that receives the
    written container manifest (``info["manifest"]``). ``background``: written by a low-priority thread beside
    running commits (one thread, whole chunks per call; see :func:`mmsb.container.write_container`).
    """
    if compress is None:
        compress = checkpoint_compression()
    d = checkpoint_dir(root)
    os.makedirs(d, exist_ok=True)
    final = checkpoint_path(root, epoch)
    man = write_container(final, CKPT_MAGIC, epoch, pages, rules, extra, fsync, compress, kind="checkpoint",
                          ref_digest=lambda e: checkpoint_digest(checkpoint_path(root, e)), background=background)
    if info is not None:
        info["manifest"] = man
    return final


def list_checkpoints(root: str) -> list[int]:
    try:
        names = os.listdir(checkpoint_dir(root))
    except FileNotFoundError:
        return []
    return sorted(e for e in map(parse_checkpoint_name, names) if e is not None)


def load_checkpoint(root: str, epoch: Optional[int] = None, max_epoch: Optional[int] = None,
                    fallback: bool = False, blocks=None, epochs: Optional[list] = None,
                    fd_of=None) -> Optional[Snapshot]:
    """Load (after validating every checksum) the checkpoint of ``epoch``, or the newest one <= ``max_epoch``
    (the newest overall if both are None). Returns None when there is none. A corrupt one raises
    CorruptionError, unless ``fallback=True``: then the next older valid one is returned with a warning.
    ``blocks`` (memory.BlockLoader): page arrays are loaded into its fresh blocks (``Snapshot.blocks``).
    ``epochs``: the checkpoints to consider (the store's MANIFEST list; default: every checkpoint file);
    ``fd_of(epoch)``: an open descriptor to read each one through (a reader's pin, or None: open the file);
    errors and warnings name the checkpoint's path either way."""
    eps = sorted(epochs) if epochs is not None else list_checkpoints(root)
    if epoch is not None:
        if int(epoch) not in eps:
            return None
        cands = [int(epoch)]
    else:
        cands = [e for e in eps if max_epoch is None or e <= max_epoch]
    if epoch is not None and fallback:
        cands = [e for e in eps if e <= int(epoch)]
    first_err = None
    for e in reversed(cands):
        path = checkpoint_path(root, e)
        try:
            man, pages, rules = read_checkpoint_file(path, strong=False, blocks=blocks,
                                                     fd=fd_of(e) if fd_of is not None else None, ref_fd=fd_of)
        except CorruptionError as exc:
            if not fallback:
                raise
            warnings.warn(f"mmsb: checkpoint {path} is corrupt ({exc}); falling back to an older one",
                          RuntimeWarning, stacklevel=2)
            first_err = first_err or exc
            continue
        if man["epoch"] != e:
            if blocks is not None:
                blocks.discard()
            raise corrupt("checkpoint epoch does not match its name", path, 0, "epoch")
        return Snapshot(epoch=e, pages=pages, rules=rules, extra=man.get("extra"), path=path, blocks=blocks,
                        layout=_layout(man, e))
    return None


def _layout(man: dict, epoch: int) -> dict:
    """page name -> PageRef of a (validated) checkpoint manifest: where each page's chunks physically lie."""
    out = {}
    for p in man["pages"]:
        name = p["meta"].get("name") if isinstance(p["meta"], dict) else None
        if isinstance(name, str):
            out[name] = PageRef(p["dtype"], list(p["shape"]),
                                [dict(c, ref=c.get("ref", epoch)) for c in p["chunks"]])
    return out


def checkpoint_refs(path: str) -> list[int]:
    """The epochs of the older checkpoints a checkpoint file borrows chunks from ([] for a full one); its
    manifest is checked (CorruptionError)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        moff, man = read_container_manifest(fd, path, CKPT_MAGIC)
        return sorted(declared_refs(man, path, moff, True) or ())
    finally:
        os.close(fd)


def checkpoint_digest(path: str) -> str:
    """The SHA-256 (hex) of a container's manifest, read from its trailer (the MANIFEST records it); the
    trailer's own CRC is checked. CorruptionError when the file is not a valid container."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return trailer_info(fd, path)[1]
    finally:
        os.close(fd)


def checkpoint_store_id(path: str) -> Optional[str]:
    """The store id a checkpoint was written for (its manifest's ``extra.store_id``); None when the file cannot
    be read (gone, damaged), "" when it names no store or its file name is not the epoch it holds."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        _, man = read_container_manifest(fd, path, CKPT_MAGIC)
    except CorruptionError:
        return None
    finally:
        os.close(fd)
    if man.get("epoch") != parse_checkpoint_name(os.path.basename(path)):
        return ""                        # copied under another epoch's name: no store's leftover
    extra = man.get("extra")
    sid = extra.get("store_id") if isinstance(extra, dict) else None
    return sid if isinstance(sid, str) else ""


def verify_checkpoint(path: str) -> dict:
    """Fully validate one checkpoint file (raises CorruptionError); returns a summary."""
    man, pages, rules = read_checkpoint_file(path)
    return {"epoch": man["epoch"], "pages": len(pages), "rules": len(rules), "raw_bytes": man.get("raw_bytes"),
            "encoded_bytes": man.get("encoded_bytes"), "path": path, "format": man["format"],
            "refs": [r["epoch"] for r in man.get("refs", [])], "borrowed_bytes": man.get("borrowed_bytes", 0)}


def remove_checkpoint(root: str, epoch: int) -> None:
    path = checkpoint_path(root, epoch)
    os.unlink(path)
    _fsync_dir(checkpoint_dir(root))


__all__ = ["CKPT_MAGIC", "PageRef", "Snapshot", "checkpoint_compression", "checkpoint_digest", "checkpoint_dir",
           "checkpoint_path", "checkpoint_refs", "checkpoint_store_id", "list_checkpoints", "load_checkpoint",
           "parse_checkpoint_name", "read_checkpoint_file", "remove_checkpoint", "verify_checkpoint",
           "write_checkpoint"]

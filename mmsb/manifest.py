"""The store's MANIFEST: the list of log segments and checkpoints that make up its state (as RocksDB's MANIFEST).

``root/MANIFEST`` names every live log segment (base epoch + the segment's 16-byte salt) and every checkpoint
(epoch + the SHA-256 of its container manifest). It is replaced atomically (temporary file, fsync, rename, fsync
of the directory) whenever that set changes: *after* a new segment or checkpoint file is durable, *before* a
compaction or a truncating recovery removes one. So a file listed here and missing, a listed segment whose salt
differs (another store's, a recycled one), a listed checkpoint whose digest differs, or a file not listed in
the middle of the listed range is damage; an unlisted file *outside* the listed range is what an interrupted
roll, checkpoint or compaction leaves (a note; a writer removes it on open). Byte layout: docs/FORMAT.md.

Stores whose STORE file has version 1 predate the MANIFEST and are read without it.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from mmsb.errors import CorruptionError
from mmsb.fileio import fsync_dir
from mmsb.identity import FRAME, seal, seal_ok
from mmsb.layout import CKPT_DIR, LOG_DIR, MANIFEST_FILE, checkpoint_name, temp_path
from mmsb.log.segment import segment_name

MAGIC = b"MMSBMANI"
VERSION = 1
MAX_BYTES = 64 * 2**20          # a MANIFEST is small; a larger one is refused before it is read


@dataclass
class Manifest:
    """The live files of a store. ``segments``: [(base epoch, salt bytes)] ascending; ``checkpoints``:
    {epoch: sha256 hex of the container manifest}."""
    root: str
    store_id: str
    segments: list = field(default_factory=list)
    checkpoints: dict = field(default_factory=dict)
    gaps: list = field(default_factory=list)     # [(first, last)] epochs cut out by recovery="truncate"
    generation: int = 0
    fsync: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def path(self) -> str:
        return os.path.join(self.root, MANIFEST_FILE)

    # -- changes (each one is published atomically before it returns) ------------------------------------------
    def add_segment(self, base: int, salt: bytes) -> None:
        with self._lock:
            self.segments = sorted([s for s in self.segments if s[0] != int(base)] + [(int(base), bytes(salt))])
            self._save()

    def set_segments(self, segments: list) -> None:
        with self._lock:
            self.segments = sorted((int(b), bytes(s)) for b, s in segments)
            self._save()

    def add_checkpoint(self, epoch: int, digest: str) -> None:
        with self._lock:
            self.checkpoints[int(epoch)] = str(digest)
            self._save()

    def remove_checkpoints(self, epochs) -> None:
        with self._lock:
            for e in epochs:
                self.checkpoints.pop(int(e), None)
            self._save()

    def save(self) -> None:
        with self._lock:
            self._save()

    def _save(self) -> None:
        from mmsb.log.records import dumps

        self.generation += 1
        body = {"store_id": self.store_id, "generation": self.generation,
                "segments": [{"base": b, "salt": s.hex()} for b, s in self.segments],
                "checkpoints": [{"epoch": e, "sha256": d} for e, d in sorted(self.checkpoints.items())],
                "gaps": [[int(a), int(b)] for a, b in self.gaps]}
        data = seal(MAGIC, VERSION, dumps(body))
        tmp = temp_path(self.path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            mv = memoryview(data)
            while mv.nbytes:
                n = os.write(fd, mv)
                if n <= 0:
                    raise OSError("short write")
                mv = mv[n:]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        os.close(fd)
        os.replace(tmp, self.path)
        if self.fsync:
            fsync_dir(self.root)


def _bad(msg: str, path: str, offset: int, what: str) -> CorruptionError:
    return CorruptionError(msg, file=path, offset=offset, what=what)


def read_manifest(root: str, fsync: bool = True) -> Manifest:
    """Read and validate root/MANIFEST. FileNotFoundError when absent, CorruptionError when damaged."""
    from mmsb.log.records import loads_json

    path = os.path.join(os.fspath(root), MANIFEST_FILE)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_BYTES:
            raise _bad(f"MANIFEST of {size} bytes is larger than {MAX_BYTES}", path, 0, "manifest size")
        data = f.read()
    if len(data) < FRAME.size + 4:
        raise _bad("MANIFEST too short", path, 0, "manifest size")
    magic, ver, res, ln = FRAME.unpack_from(data)
    if magic != MAGIC:
        raise _bad("bad MANIFEST magic", path, 0, "manifest magic")
    if len(data) != FRAME.size + ln + 4:
        raise _bad("MANIFEST length mismatch", path, 12, "manifest length")
    if not seal_ok(data):
        raise _bad("MANIFEST checksum mismatch", path, len(data) - 4, "manifest crc")
    if ver != VERSION or res:
        raise _bad(f"unsupported MANIFEST version {ver}", path, 8, "manifest version")
    body = loads_json(data[FRAME.size:-4], path=path, offset=FRAME.size)
    try:
        if not isinstance(body, dict):
            raise TypeError("not an object")
        sid, gen = body["store_id"], body["generation"]
        if not isinstance(sid, str) or type(gen) is not int:
            raise TypeError("bad store_id or generation")
        segs = []
        for s in body["segments"]:
            b, salt = s["base"], bytes.fromhex(s["salt"])
            if type(b) is not int or b < 0 or b >= 2**64 or len(salt) != 16:
                raise ValueError(f"bad segment entry {s!r}")
            segs.append((b, salt))
        ckpts = {}
        for c in body["checkpoints"]:
            e, d = c["epoch"], c["sha256"]
            if type(e) is not int or e < 0 or e >= 2**64 or not isinstance(d, str) or len(bytes.fromhex(d)) != 32:
                raise ValueError(f"bad checkpoint entry {c!r}")
            ckpts[e] = d
        gaps = []
        for g in body.get("gaps", []):
            a, b = g
            if type(a) is not int or type(b) is not int or not 0 < a <= b < 2**64:
                raise ValueError(f"bad gap {g!r}")
            gaps.append((a, b))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _bad(f"MANIFEST content is malformed ({exc})", path, FRAME.size, "manifest json") from None
    if [b for b, _ in segs] != sorted(set(b for b, _ in segs)):
        raise _bad("MANIFEST segments are not in ascending order", path, FRAME.size, "manifest json")
    return Manifest(os.fspath(root), sid, segs, ckpts, gaps, gen, fsync)


def new_manifest(root: str, store_id: str, fsync: bool = True) -> Manifest:
    """Write an empty MANIFEST for a new store."""
    m = Manifest(os.fspath(root), store_id, fsync=fsync)
    m.save()
    return m


@dataclass
class Reconciled:
    """The files of a store checked against its MANIFEST."""
    segments: list            # [(base, path, salt)] listed, present
    checkpoints: list         # [epoch] listed, present
    leftovers: list           # paths of unlisted files an interrupted roll/checkpoint/compaction left
    problems: list            # CorruptionError, one per damage found


def reconcile(root: str, man: Manifest, segment_files: list, checkpoint_files: list,
              segment_has_records=None, checkpoint_store_id=None, checkpoint_digest=None,
              strict_unlisted: bool = True) -> Reconciled:
    """Check the files present against ``man``.

    ``segment_files``: [(base, path)] found in root/log; ``checkpoint_files``: [(epoch, path)] found in
    root/checkpoints. ``segment_has_records(path) -> bool`` decides whether an unlisted segment newer than every
    listed one is an interrupted roll (no record: a leftover) or data the MANIFEST does not know (a problem).
    ``checkpoint_store_id(path) -> str | None`` tells whether an unlisted checkpoint is this store's (an
    interrupted publication or compaction: a leftover) or foreign (a problem); with ``strict_unlisted=False`` (a
    reader beside a writer) an unlisted checkpoint that cannot be read (removed meanwhile) is ignored."""
    problems: list = []
    leftovers: list = []
    on_disk = dict(segment_files)
    listed = dict(man.segments)
    segs = []
    for base, salt in man.segments:
        path = on_disk.get(base)
        if path is None:
            problems.append(_bad(f"log segment {segment_name(base)} listed in the MANIFEST is missing",
                                 os.path.join(root, LOG_DIR, segment_name(base)), 0, "missing segment"))
            continue
        segs.append((base, path, salt))
    lo = man.segments[0][0] if man.segments else None
    hi = man.segments[-1][0] if man.segments else None
    for base, path in segment_files:
        if base in listed:
            continue
        if lo is not None and base < lo:
            leftovers.append(path)                       # compaction removed it from the MANIFEST, then stopped
        elif (hi is None or base > hi) and segment_has_records is not None and not segment_has_records(path):
            leftovers.append(path)                       # a roll created it, then stopped before listing it
        else:
            problems.append(_bad("log segment is not listed in the MANIFEST (foreign, duplicated or renamed)",
                                 path, 0, "unlisted segment"))
    ck_disk = dict(checkpoint_files)
    ckpts = []
    for e in sorted(man.checkpoints):
        if e not in ck_disk:
            problems.append(_bad(f"checkpoint {e} listed in the MANIFEST is missing",
                                 os.path.join(root, CKPT_DIR, checkpoint_name(e)), 0, "missing checkpoint"))
            continue
        if checkpoint_digest is not None:
            try:
                d = checkpoint_digest(ck_disk[e])
            except CorruptionError as exc:
                problems.append(exc)
                continue
            if d != man.checkpoints[e]:
                problems.append(_bad("checkpoint differs from the one the MANIFEST lists (foreign or replaced)",
                                     ck_disk[e], 0, "checkpoint digest"))
                continue
        ckpts.append(e)
    for e, path in checkpoint_files:
        if e in man.checkpoints:
            continue
        sid = checkpoint_store_id(path) if checkpoint_store_id is not None else None
        if sid == man.store_id:
            leftovers.append(path)       # ours, cut before it was listed or after a compaction unlisted it
        elif sid is None and not strict_unlisted:
            leftovers.append(path)                       # a reader: gone or half-read under a compaction
        else:
            problems.append(_bad("checkpoint is not listed in the MANIFEST (foreign or copied)", path, 0,
                                 "unlisted checkpoint"))
    return Reconciled(segs, ckpts, leftovers, problems)


__all__ = ["MANIFEST_FILE", "Manifest", "read_manifest", "new_manifest", "reconcile", "Reconciled"]

"""A fault-injecting file layer for the store's modules.

``FaultFS(...)`` replaces the ``os`` module (and the builtin ``open``) seen by mmsb's file-writing modules with a
proxy that counts write / fsync / rename (rename and replace) / dirfsync (fsync of a directory) calls, fails the
N-th call of one kind with ``OSError(EIO)``, or "loses power" at the N-th call of any kind (raises
:class:`PowerLoss`, a BaseException that no ``except OSError`` can swallow). It tracks, per file, the length last
made durable by an fsync and the directory operations (create, rename) not yet made durable by an fsync of
their directory, so that :meth:`FaultFS.power_cut` can afterwards truncate or garble every unsynced byte and undo
unsynced creations and renames, as a power loss may.
"""
from __future__ import annotations

import builtins
import errno
import os as _os
import random
import stat

import mmsb.checkpoint
import mmsb.container
import mmsb.fileio
import mmsb.identity
import mmsb.layout
import mmsb.log.durable
import mmsb.manifest
import mmsb.memory
import mmsb.spill
import mmsb.store

MODULES = (mmsb.log.durable, mmsb.container, mmsb.checkpoint, mmsb.spill, mmsb.identity, mmsb.layout, mmsb.store,
           mmsb.memory, mmsb.fileio, mmsb.manifest)
KINDS = ("write", "fsync", "rename", "dirfsync")


class PowerLoss(BaseException):
    """The simulated machine stopped here."""


class _OSProxy:
    def __init__(self, fs):
        self._fs = fs

    def __getattr__(self, name):
        return getattr(_os, name)

    # -- wrapped calls ------------------------------------------------------------------------------------
    def open(self, path, flags, mode=0o777, *a, **k):
        fs = self._fs
        existed = _os.path.exists(path)
        fd = _os.open(path, flags, mode, *a, **k)
        fs.fds[fd] = _os.path.abspath(path)
        if (flags & _os.O_CREAT) and not existed:
            fs.created(_os.path.abspath(path))
        return fd

    def close(self, fd):
        self._fs.fds.pop(fd, None)
        return _os.close(fd)

    def write(self, fd, data):
        self._fs.tick("write")
        return _os.write(fd, data)

    def writev(self, fd, buffers):
        self._fs.tick("write")
        return _os.writev(fd, buffers)

    def pwritev(self, fd, buffers, offset, flags=0):
        fs = self._fs
        fs.tick("write")
        dsync = bool(flags & getattr(_os, "RWF_DSYNC", 0))
        if dsync:
            fs.tick("fsync")            # a durable write is a write and an fsync of its range
        n = _os.pwritev(fd, buffers, offset, flags)
        if dsync:
            path = fs.fds.get(fd)
            if path is not None:
                end = (_os.lseek(fd, 0, _os.SEEK_CUR) if offset < 0 else offset + n)
                fs.synced[path] = max(fs.synced.get(path, 0), end)
        return n

    def fsync(self, fd):
        fs = self._fs
        isdir = stat.S_ISDIR(_os.fstat(fd).st_mode)
        fs.tick("dirfsync" if isdir else "fsync")
        _os.fsync(fd)
        path = fs.fds.get(fd)
        if path is None:
            try:
                path = _os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return
        if isdir:
            fs.dir_synced(path)
        else:
            fs.synced[path] = _os.fstat(fd).st_size

    def rename(self, src, dst):
        self._fs.tick("rename")
        self._fs.renaming(src, dst)
        return _os.rename(src, dst)

    def replace(self, src, dst):
        self._fs.tick("rename")
        self._fs.renaming(src, dst)
        return _os.replace(src, dst)


class FaultFS:
    def __init__(self, fail_kind=None, fail_n=None, crash_at=None, seed=0):
        self.fail_kind, self.fail_n, self.crash_at = fail_kind, fail_n, crash_at
        self.counts = dict.fromkeys(KINDS, 0)
        self.total = 0
        self.injected = 0
        self.fds: dict = {}
        self.synced: dict = {}          # path -> durable length (files written through the proxy)
        self.pending: list = []         # directory operations not yet fsynced: (dir, op, ...)
        self.rng = random.Random(seed)
        self._saved: list = []

    # -- bookkeeping ------------------------------------------------------------------------------------------
    def tick(self, kind):
        self.counts[kind] += 1
        self.total += 1
        if self.crash_at is not None and self.total >= self.crash_at:
            self.injected += 1
            raise PowerLoss(f"power lost at {kind} #{self.counts[kind]}")
        if kind == self.fail_kind and self.counts[kind] == self.fail_n:
            self.injected += 1
            raise OSError(errno.EIO, f"injected {kind} failure #{self.fail_n}")

    def created(self, path):
        self.synced.setdefault(path, 0)
        self.pending.append((_os.path.dirname(path), "create", path))

    def renaming(self, src, dst):
        src, dst = _os.path.abspath(src), _os.path.abspath(dst)
        old = None
        if _os.path.isfile(dst):
            with builtins.open(dst, "rb") as f:
                old = f.read()
        self.pending.append((_os.path.dirname(dst), "rename", src, dst, old, self.synced.get(dst)))
        if src in self.synced:
            self.synced[dst] = self.synced.pop(src)

    def dir_synced(self, d):
        d = _os.path.abspath(d)
        self.pending = [p for p in self.pending if p[0] != d]

    def _open(self, file, mode="r", *a, **k):
        f = builtins.open(file, mode, *a, **k)
        if isinstance(file, (str, bytes, _os.PathLike)) and any(c in mode for c in "wax+"):
            path = _os.path.abspath(file)
            if "w" in mode or "x" in mode:
                self.created(path) if path not in self.synced else None
                self.synced.setdefault(path, 0)
            self.fds[f.fileno()] = path
        return f

    # -- installation -----------------------------------------------------------------------------------------
    def install(self, monkeypatch=None):
        proxy = _OSProxy(self)
        for m in MODULES:
            self._saved.append((m, "os", m.os, True))
            had = "open" in vars(m)
            self._saved.append((m, "open", vars(m).get("open"), had))
            m.os = proxy
            m.open = self._open
        return self

    def uninstall(self):
        for m, name, val, had in reversed(self._saved):
            if had:
                setattr(m, name, val)
            else:
                delattr(m, name)
        self._saved = []

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        self.uninstall()

    # -- the power cut ----------------------------------------------------------------------------------------
    def power_cut(self, how="drop"):
        """Lose what was not durable: undo unsynced renames/creations, then cut or garble unsynced bytes.

        ``how``: "drop" (truncate to the synced length, undo directory operations), "garble" (overwrite the
        unsynced bytes with random ones, keep directory operations), or "partial" (keep a random prefix of the
        unsynced bytes, undo directory operations at random). Returns the number of bytes lost or garbled."""
        lost = 0
        undo = how == "drop" or (how == "partial")
        for op in reversed(self.pending):
            if not undo or (how == "partial" and self.rng.random() < 0.5):
                continue
            if op[1] == "rename":
                _, _, src, dst, old, old_synced = op
                if _os.path.exists(dst):
                    _os.rename(dst, src)
                    self.synced[src] = self.synced.pop(dst, 0)
                if old is not None:
                    with builtins.open(dst, "wb") as f:
                        f.write(old)
                    self.synced[dst] = len(old) if old_synced is None else old_synced
            elif op[1] == "create":
                path = op[2]
                if _os.path.exists(path):
                    lost += _os.path.getsize(path)
                    _os.remove(path)
                self.synced.pop(path, None)
        for path, n in self.synced.items():
            if not _os.path.isfile(path):
                continue
            size = _os.path.getsize(path)
            if size <= n:
                continue
            if how == "garble":
                with builtins.open(path, "r+b") as f:
                    f.seek(n)
                    f.write(bytes(self.rng.getrandbits(8) for _ in range(size - n)))
            else:
                keep = n if how == "drop" else self.rng.randint(n, size)
                with builtins.open(path, "r+b") as f:
                    f.truncate(keep)
            lost += size - n
        return lost


def abandon(buf) -> None:
    """Drop an open buffer the way a killed process would: close its descriptors without any flush or fsync."""
    log = buf._log
    fds = [getattr(log, "_fd", None)] + list(getattr(log, "_old_fds", [])) + list(getattr(log, "_rfds", {}).values())
    for fd in fds:
        if fd is not None:
            try:
                _os.close(fd)
            except OSError:
                pass
    if hasattr(log, "_fd"):
        log._fd = None
        log._old_fds = []
        log._rfds = {}
        log._closed = True
    if buf._store is not None:
        buf._store.close()
    buf._closed = True

"""Opening a buffer: in memory, or a store directory (the Store itself, its lock, modes and recovery: mmsb.store)."""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

from mmsb.buffer import Buffer
from mmsb.log.durable import DURABILITY, RECOVERY, SEGMENT_BYTES
from mmsb.memory import parse_bytes

MODES = ("r", "r+", "a", "w", "x")


def open(path: Union[str, "os.PathLike[str]", None] = None, mode: str = "a", *, durability: str = "fsync",
         memory_limit: Union[int, str, None] = None, device: str = "cpu", propagation: str = "eager",
         cluster: Any = None, recovery: str = "strict", functions: Optional[dict[str, Callable]] = None,
         segment_bytes: int = SEGMENT_BYTES, auto_checkpoint: Union[bool, float, str, None] = None) -> Buffer:
    """Open a buffer: in memory (``path=None``) or the store directory at ``path``.

    ``mode`` as h5py: ``"r"`` read-only, ``"r+"`` read/write (must exist), ``"a"`` read/write (create if
    missing), ``"w"`` create (truncate), ``"x"`` create (fail if it exists). ``durability``: ``"fsync"``,
    ``"flush"`` or ``"none"``. ``propagation``: ``"eager"`` or ``"deferred"``. ``recovery="truncate"`` opens a
    store whose log is corrupt by stopping at the last good committed transaction (``"strict"`` raises).
    ``functions`` re-binds derive rules by name. ``auto_checkpoint`` (stores): the automatic checkpoint policy,
    True/"on" (factor 1.0), False/"off", or a factor: a checkpoint is taken after a commit once the log written
    since the newest checkpoint holds that many times the bytes of the pages (at least 8 MiB); None follows env
    ``MMSB_AUTO_CHECKPOINT`` (default on). Also a context manager that closes the buffer.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if durability not in DURABILITY:
        raise ValueError(f"durability must be one of {DURABILITY}, got {durability!r}")
    if recovery not in RECOVERY:
        raise ValueError(f"recovery must be 'strict' or 'truncate', got {recovery!r}")
    limit = parse_bytes(memory_limit)
    if path is None:
        from mmsb.log import MemoryLog

        return Buffer(log=MemoryLog(), memory_limit=limit, propagation=propagation, device=device,
                      functions=functions, cluster=cluster)
    from mmsb.store import open_store

    return open_store(os.fspath(path), mode, durability=durability, memory_limit=limit, device=device,
                      propagation=propagation, cluster=cluster, recovery=recovery, functions=functions,
                      segment_bytes=segment_bytes, auto_checkpoint=auto_checkpoint)

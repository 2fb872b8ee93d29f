"""Device backends: where a page's values live and how deltas, reads and propagation steps run there.

The buffer, the commit pipeline and the propagation engine never test ``page.device`` themselves: they ask
:func:`backend_for` for the page's backend and call it. ``"cpu"`` is built in; ``"cuda"`` is registered lazily
(``mmsb.gpu`` and CuPy are imported on the first GPU page), as dask registers its array backends. A third party
can register another device family with :func:`register` or :func:`register_lazy`.
"""
from __future__ import annotations

import importlib
import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from mmsb.errors import DeviceError

if TYPE_CHECKING:  # pragma: no cover
    from mmsb.buffer import Buffer
    from mmsb.delta import Delta
    from mmsb.pages import Page
    from mmsb.propagate import Change, Engine, UndoLog


class DeviceBackend(ABC):
    """What a device family provides. Every method takes the page it works on; ``Change`` is numpy on all."""

    #: the family name: the part of a device string before ``":"`` (``"cpu"``, ``"cuda"``)
    family: str = ""

    @abstractmethod
    def apply_delta(self, buf: "Buffer", page: "Page", delta: "Delta", undo: Optional["UndoLog"]) \
            -> Optional["Change"]:
        """Merge ``delta`` into ``page``; record the old values in ``undo``; return what changed (or None)."""

    @abstractmethod
    def values_at(self, buf: "Buffer", page: "Page", idx: np.ndarray) -> np.ndarray:
        """A numpy copy of the flat positions ``idx``."""

    @abstractmethod
    def read(self, buf: "Buffer", page: "Page", index: Any) -> np.ndarray:
        """``page.read(index)``: a numpy copy (the whole page in its shape when ``index`` is None)."""

    def read_device(self, buf: "Buffer", page: "Page") -> Any:
        """The page as an array of its device (numpy here)."""
        return self.read(buf, page, None)

    @abstractmethod
    def move(self, buf: "Buffer", page: "Page", device: str) -> None:
        """Move ``page`` from this family to ``device`` (or from the CPU to this family)."""

    def apply_batch(self, buf: "Buffer", ops: list, undo: "UndoLog") -> dict:
        """Apply several deltas of one commit at once where the device gains from it: ``{id(delta): Change}``
        for the deltas it applied (the others are applied one by one)."""
        return {}

    def update_page(self, engine: "Engine", page: "Page", rules: list, inputs: dict, full: bool,
                    undo: "UndoLog") -> Optional["Change"]:
        """One propagation step into ``page`` (None: the engine's CPU step runs)."""
        return None

    def host_copy(self, page: "Page") -> np.ndarray:
        """A flat numpy copy of the page (for spilling and checkpoints)."""
        raise DeviceError(f"page {page.name!r}: device {page.device!r} has no host copy")

    def stats(self, buf: "Buffer") -> dict:
        """Figures for ``buf.stats()["device"]``."""
        return {}


class CPUBackend(DeviceBackend):
    """Pages in host memory (numpy arrays from the buffer's allocator)."""

    family = "cpu"

    def apply_delta(self, buf: "Buffer", page: "Page", delta: "Delta", undo: Optional["UndoLog"]) \
            -> Optional["Change"]:
        return buf._apply_host_delta(page, delta, undo)

    def values_at(self, buf: "Buffer", page: "Page", idx: np.ndarray) -> np.ndarray:
        return buf._memory.array(page)[idx]

    def read(self, buf: "Buffer", page: "Page", index: Any) -> np.ndarray:
        arr = buf._memory.array(page)
        if index is None:
            return arr.reshape(page.shape).copy()
        return arr[buf._index(page, index)]

    def move(self, buf: "Buffer", page: "Page", device: str) -> None:
        backend_for(device).move(buf, page, device)

    def host_copy(self, page: "Page") -> np.ndarray:
        return page._buf._memory.array(page).copy()

    def stats(self, buf: "Buffer") -> dict:
        from mmsb import _kernels

        return _kernels.cpu.features()


_lock = threading.Lock()
_backends: dict[str, DeviceBackend] = {"cpu": CPUBackend()}
_lazy: dict[str, str] = {"cuda": "mmsb.gpu.backend:CudaBackend"}


def register(family: str, backend: DeviceBackend) -> None:
    """Register ``backend`` for device strings ``family`` and ``family:N``."""
    with _lock:
        _backends[family] = backend
        _lazy.pop(family, None)


def register_lazy(family: str, target: str) -> None:
    """Register ``"module:Class"`` for ``family``; the module is imported on the first page of that family."""
    with _lock:
        if family not in _backends:
            _lazy[family] = target


def family_of(device: str) -> str:
    """``"cuda"`` for ``"cuda:1"``, ``"cpu"`` for ``"cpu"``."""
    return device.split(":", 1)[0]


def backend_for(device: str) -> DeviceBackend:
    """The backend of a device string; imports a lazily registered one on first use."""
    fam = device if device == "cpu" else family_of(device)
    b = _backends.get(fam)
    if b is not None:
        return b
    with _lock:
        b = _backends.get(fam)
        if b is None:
            target = _lazy.get(fam)
            if target is None:
                raise DeviceError(f"unknown device {device!r} (use 'cpu', 'cuda' or 'cuda:N')")
            mod, _, cls = target.partition(":")
            b = _backends[fam] = getattr(importlib.import_module(mod), cls)()
            del _lazy[fam]
        return b


def loaded() -> dict[str, DeviceBackend]:
    """The backends imported so far (a device family nobody used is not imported for stats)."""
    return dict(_backends)


def normalize(device: Optional[str]) -> str:
    """``"cpu"``, or ``"family:N"`` for a registered family (``"cuda"`` means ``"cuda:0"``)."""
    if device is None or device == "cpu":
        return "cpu"
    if isinstance(device, str):
        fam, _, num = device.partition(":")
        if fam in _backends or fam in _lazy:
            if not num:
                return f"{fam}:0"
            if num.isdigit():
                return device
    raise DeviceError(f"unknown device {device!r} (use 'cpu', 'cuda' or 'cuda:N')")

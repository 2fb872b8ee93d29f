"""Device backends: where a page's values live and how deltas, reads and propagation steps run there.

The buffer, the commit pipeline and the propagation engine never test ``page.device`` themselves: they ask
:func:`backend_for` for the page's backend and call it. ``"cpu"`` is built in; ``"cuda"`` is registered lazily
(``mmsb.gpu`` and CuPy are imported on the first GPU page), as dask registers its array backends. A third party
can register another device family with :func:`register` or :func:`register_lazy`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from mmsb import _kernels, _ops
from mmsb.delta import covers_page
from mmsb.errors import DeviceError
from mmsb.registry import LazyRegistry

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
        """Merge ``delta`` with the merge kernel; the positions that changed and their old values."""
        from mmsb.propagate import Change

        arr = buf._memory.array(page)
        if delta.mask is not None and covers_page(delta.mask) and arr.dtype in _DENSE_DTYPES:
            codes = page.semiring.codes_for(page.dtype) if delta.accumulate else None
            if codes is not None or not delta.accumulate:
                return self._merge_all(buf, page, arr, delta.values, codes[0] if codes else _ops.OP_ASSIGN, undo)
        idx, vals = delta.sparse()
        old, changed = merge_into(arr, idx, vals, page.semiring, delta.accumulate)
        if undo is not None:
            undo.record(_storage(buf, page.name), idx, old)
        moved = int(np.count_nonzero(changed))
        if moved == 0:
            return None
        if moved == changed.size:
            return Change(idx, old)
        return Change(idx[changed], old[changed])

    @staticmethod
    def _merge_all(buf: "Buffer", page: "Page", arr: np.ndarray, values: np.ndarray, op: int,
                   undo: Optional["UndoLog"]) -> Optional["Change"]:
        """A whole-page delta (assigned, or merged with the op code ``op``) whose changed positions are needed: one
        streaming pass of the dense merge kernel keeps the old values and counts the changes, not an indexed merge
        over every position. The old values go to an array of the undo log's pool (kept faulted in across
        commits) when nothing else holds it."""
        from mmsb.delta import full_index
        from mmsb.propagate import Change, changed_positions

        old = undo.scratch(arr) if undo is not None else np.empty_like(arr)
        count = _kernels.merge.merge_dense(arr, values.reshape(arr.shape), op, old)
        if undo is not None:
            undo.record(_storage(buf, page.name), slice(None), old)
        if count == 0:
            return None
        if count == arr.size:
            return Change(full_index(arr.size), old)
        idx = np.flatnonzero(changed_positions(arr, old))
        return Change(idx, old[idx])

    def overwrite(self, buf: "Buffer", page: "Page", values: np.ndarray, undo: Optional["UndoLog"]) -> "Change":
        """Replace the whole page with ``values`` (flat, the page dtype) by two copies; every position counts as
        changed (the commit pipeline chooses this where nobody reads the changed positions)."""
        from mmsb.delta import full_index
        from mmsb.propagate import Change

        arr = buf._memory.array(page)
        old = undo.scratch(arr) if undo is not None else np.empty_like(arr)
        np.copyto(old, arr)
        np.copyto(arr, values.reshape(arr.shape))
        if undo is not None:
            undo.record(_storage(buf, page.name), slice(None), old)
        return Change(full_index(page.size), old)

    def apply_blind(self, page: "Page", delta: "Delta", arr: np.ndarray) -> None:
        """Merge ``delta`` into the page's storage ``arr`` in place, keeping nothing (no old values): sparse
        deltas in the order given (duplicates fold in order), dense ones from their packed values."""

        codes = page.semiring.codes_for(page.dtype)
        op = codes[0] if delta.accumulate else _ops.OP_ASSIGN
        if delta.mask is None:
            _kernels.merge.scatter(_kview(arr), delta.index, _kview(delta.values), op, delta.normalized)
        elif op == _ops.OP_ASSIGN and covers_page(delta.mask):
            np.copyto(arr, delta.values)
        else:
            _kernels.packed.merge_packed(_kview(arr), delta.mask.view(np.uint8), _kview(delta.values), op)

    def values_at(self, buf: "Buffer", page: "Page", idx: np.ndarray) -> np.ndarray:
        arr = buf._memory.array(page)
        return arr.copy() if idx.size == arr.size else arr[idx]     # (sorted, unique: all of them)

    def read(self, buf: "Buffer", page: "Page", index: Any) -> np.ndarray:
        if index is None:
            return buf._memory.read(page).reshape(page.shape)     # (a spilled page may be read from its file)
        arr = buf._memory.array(page)
        return arr[buf._index(page, index)]

    def move(self, buf: "Buffer", page: "Page", device: str) -> None:
        backend_for(device).move(buf, page, device)

    def host_copy(self, page: "Page") -> np.ndarray:
        return page._buf._memory.array(page).copy()

    def stats(self, buf: "Buffer") -> dict:
        return _kernels.cpu.features()


_DENSE_DTYPES = frozenset(np.dtype(t) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                                 np.uint32, np.uint64, np.float32, np.float64))
"""Page dtypes of the dense merge kernel (``_kernels.merge.merge_dense``)."""

POINT_VALUES = 16   # a sparse merge of at most this many float64 values takes the point kernel


def merge_into(arr: np.ndarray, idx: np.ndarray, vals: np.ndarray, sr: Any, accumulate: bool) \
        -> tuple[np.ndarray, np.ndarray]:
    """Merge the sparse values ``(idx, vals)`` (sorted, unique; ``arr``'s dtype) into the flat array ``arr``:
    assigned, or ⊕-merged with ``sr`` when ``accumulate``. Returns the old values at ``idx`` and a bool mask of
    the positions that changed (the merge kernel; the semiring's own ⊕ where it has no kernel op)."""
    codes = sr.codes_for(arr.dtype)
    if codes is not None or not accumulate:
        op = codes[0] if accumulate else _ops.OP_ASSIGN
        if idx.size <= POINT_VALUES and arr.dtype == np.float64 and idx.dtype == np.int64 and idx.flags.c_contiguous \
                and vals.flags.c_contiguous:
            old, changed, _ = _kernels.point.apply_few(arr, idx, vals, op)
            return old, changed.view(np.bool_)
        if arr.dtype == np.bool_:
            old, changed = _kernels.merge.apply_normalized(arr.view(np.uint8), idx, vals.view(np.uint8), op)
            return old.view(np.bool_), changed.view(np.bool_)
        old, changed = _kernels.merge.apply_normalized(arr, idx, vals, op)
        return old, changed.view(np.bool_)
    from mmsb.propagate import changed_positions

    old = arr[idx].copy()
    arr[idx] = sr.add_arrays(old, vals)
    return old, changed_positions(arr[idx], old)


def _kview(a: np.ndarray) -> np.ndarray:
    """Kernels see bool arrays as uint8."""
    return a.view(np.uint8) if a.dtype == np.bool_ else a


def _storage(buf: "Buffer", name: str) -> Any:
    """The current storage of page ``name`` (looked up when an undo step runs: a spill may have moved it)."""
    memory, pages = buf._memory, buf._pages
    return lambda: memory.array(pages[name])


CPU = CPUBackend()

_registry: LazyRegistry[DeviceBackend] = LazyRegistry({"cpu": CPU}, {"cuda": "mmsb.gpu.backend:CudaBackend"},
                                                     make=lambda cls: cls())


def register(family: str, backend: DeviceBackend) -> None:
    """Register ``backend`` for device strings ``family`` and ``family:N``."""
    _registry.register(family, backend)


def register_lazy(family: str, target: str) -> None:
    """Register ``"module:Class"`` for ``family``; the module is imported on the first page of that family."""
    _registry.register_lazy(family, target)


def family_of(device: str) -> str:
    """``"cuda"`` for ``"cuda:1"``, ``"cpu"`` for ``"cpu"``."""
    return device.split(":", 1)[0]


def backend_for(device: str) -> DeviceBackend:
    """The backend of a device string; imports a lazily registered one on first use."""
    if device == "cpu":
        return CPU
    b = _registry.get(family_of(device))
    if b is None:
        raise DeviceError(f"unknown device {device!r} (use 'cpu', 'cuda' or 'cuda:N')")
    return b


def backend_of(page: "Page") -> DeviceBackend:
    """The backend that holds ``page``: its kind's (a matrix page's entries) or else its device family's."""
    own = page.backend
    return own if own is not None else backend_for(page.device)


def loaded() -> dict[str, DeviceBackend]:
    """The backends imported so far (a device family nobody used is not imported for stats)."""
    return _registry.loaded()


def normalize(device: Optional[str]) -> str:
    """``"cpu"``, or ``"family:N"`` for a registered family (``"cuda"`` means ``"cuda:0"``)."""
    if device is None or device == "cpu":
        return "cpu"
    if isinstance(device, str):
        fam, _, num = device.partition(":")
        if _registry.known(fam):
            if not num:
                return f"{fam}:0"
            if num.isdigit():
                return device
    raise DeviceError(f"unknown device {device!r} (use 'cpu', 'cuda' or 'cuda:N')")

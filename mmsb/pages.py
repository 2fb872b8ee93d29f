"""The :class:`Page`: a named, fixed-shape, typed array with a semiring, a device, an epoch and metadata."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np

from mmsb.observe import observed
from mmsb.semiring import Semiring

if TYPE_CHECKING:  # pragma: no cover
    from mmsb.buffer import Buffer


class Page:
    """A page of a :class:`~mmsb.buffer.Buffer`. Read it with :meth:`read` or ``np.asarray(page)``."""

    #: what kind of page this is (``"array"``; a matrix page says ``"matrix"``)
    kind = "array"
    #: the backend that holds a page of another kind (None: the page's device family holds it)
    backend = None
    #: whether a checkpoint can hold the page (a sharded page's history is the log)
    checkpointable = True

    __slots__ = ("_buf", "name", "shape", "dtype", "semiring", "ops", "device", "_metadata", "epoch", "size",
                 "_data", "_handle", "_spill", "_pins", "__weakref__")

    def __init__(self, buf: "Buffer", name: str, shape: tuple, dtype: np.dtype, semiring: Semiring, device: str,
                 metadata: Optional[dict], epoch: int):
        self._buf = buf
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.semiring = semiring
        #: the kernel op codes ``(⊕, ⊗)`` of the semiring on the page's dtype; None for a numpy-only semiring
        self.ops = semiring.codes_for(dtype)
        self.device = device
        self._metadata = metadata or None        # None until asked for: most pages have no metadata
        self.epoch = epoch
        self.size = math.prod(shape)
        self._data: Optional[np.ndarray] = None
        self._handle: Any = None
        self._spill: Optional[str] = None
        self._pins = 0

    @property
    def metadata(self) -> dict:
        """The page's JSON-able metadata (an empty dict when it has none)."""
        if self._metadata is None:
            self._metadata = {}
        return self._metadata

    @metadata.setter
    def metadata(self, value: Optional[dict]) -> None:
        self._metadata = value

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @observed(op="page.read")
    def read(self, index: Any = None) -> np.ndarray:
        """A numpy copy of the page (or of the flat positions ``index``), as of the last commit."""
        return self._buf._read(self, index)

    @observed(op="page.read_device")
    def read_device(self) -> Any:
        """The page on its device (a CuPy array for a GPU page, numpy otherwise)."""
        return self._buf._read_device(self)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read()
        return out if dtype is None else out.astype(dtype, copy=False)

    @observed(op="page.to")
    def to(self, device: str) -> "Page":
        """Move the page to ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``); returns the page."""
        self._buf._move(self, device)
        return self

    @contextmanager
    def pin(self) -> Iterator["Page"]:
        """Keep the page resident (never spilled) inside the block."""
        self._buf._pin(self, +1)
        try:
            yield self
        finally:
            self._buf._pin(self, -1)

    def __repr__(self) -> str:
        return (f"Page({self.name!r}, shape={self.shape}, dtype={self.dtype.name}, semiring={self.semiring.name}, "
                f"device={self.device!r}, epoch={self.epoch})")

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 1

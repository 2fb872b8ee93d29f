"""The ``cuda`` device backend: GPU pages through CuPy (registered lazily by :mod:`mmsb.devices`)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from mmsb.devices import DeviceBackend
from mmsb.gpu import _engine, _pages


class CudaBackend(DeviceBackend):
    """Pages on CUDA devices (``"cuda:N"``); kernels in :mod:`mmsb.gpu.kernels`, CPU fallback on failure."""

    family = "cuda"

    def apply_delta(self, buf: Any, page: Any, delta: Any, undo: Any) -> Any:
        return _pages.apply_delta(buf, page, delta, undo)

    def values_at(self, buf: Any, page: Any, idx: np.ndarray) -> np.ndarray:
        return _pages.values_at(page, idx)

    def read(self, buf: Any, page: Any, index: Any) -> np.ndarray:
        return _pages.read_host(buf, page, index)

    def read_device(self, buf: Any, page: Any) -> Any:
        return _pages.read_device(buf, page)

    def move(self, buf: Any, page: Any, device: str) -> None:
        _pages.move_page(buf, page, device)

    def apply_batch(self, buf: Any, ops: list, undo: Any) -> dict:
        return _pages.apply_batch(buf, ops, undo)

    def update_page(self, engine: Any, page: Any, rules: list, inputs: dict, full: bool,
                    undo: Any) -> Optional[Any]:
        return _engine.update_page(engine, page, rules, inputs, full, undo)

    def host_copy(self, page: Any) -> np.ndarray:
        return _pages.host_copy(page)

    def stats(self, buf: Any) -> dict:
        from mmsb import gpu

        return gpu.stats(buf)

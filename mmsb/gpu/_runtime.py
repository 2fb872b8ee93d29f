"""CuPy access (imported lazily), the device memory pool, pinned staging, failure injection and figures.

Nothing here imports CuPy at module import time: :func:`cupy` does, the first time a GPU page is used.
"""
from __future__ import annotations

import os
import threading
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import numpy as np

from mmsb.errors import DeviceError, DeviceFallbackWarning

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")     # never NVLink multicast (see docs/gpu.md)

_lock = threading.RLock()
_cp: Any = None
_cp_error: Optional[str] = None
_pools: dict = {}
_pinned_pool: Any = None
_inject: dict = {}

#: process-wide switches (also ``MMSB_CUDA_GRAPHS=0``, ``MMSB_GPU_POOL_LIMIT=8GiB``)
config = {
    "cuda_graphs": os.environ.get("MMSB_CUDA_GRAPHS", "1") != "0",
    "pool_limit": os.environ.get("MMSB_GPU_POOL_LIMIT"),
    "pinned_staging": True,
}

counters = {"kernel_launches": 0, "h2d_bytes": 0, "d2h_bytes": 0, "graph_captures": 0, "graph_replays": 0,
            "batches": 0, "batched_deltas": 0, "cpu_fallback_ops": 0, "peer_copies": 0, "prefetches": 0,
            "nccl_calls": 0}


class InjectedFailure(RuntimeError):
    """A CUDA failure injected by a test (see :func:`inject_failure`)."""


def cupy() -> Any:
    """The ``cupy`` module; DeviceError when it cannot be imported or no device is visible."""
    global _cp, _cp_error
    if _inject.get("no_cupy"):
        raise DeviceError("CuPy is not available (injected)")
    if _cp is not None:
        return _cp
    if _cp_error is not None:
        raise DeviceError(_cp_error)
    with _lock:
        if _cp is not None:
            return _cp
        try:
            import cupy as cp  # noqa: PLC0415 - lazy on purpose

            n = cp.cuda.runtime.getDeviceCount()
            if n < 1:
                raise RuntimeError("no CUDA device is visible")
        except Exception as exc:  # ImportError, CUDARuntimeError, ...
            _cp_error = f"CUDA is unavailable: {type(exc).__name__}: {exc}"
            raise DeviceError(_cp_error) from exc
        _cp = cp
        return cp


def available() -> bool:
    """True when CuPy imports and at least one CUDA device is visible."""
    try:
        cupy()
        return True
    except DeviceError:
        return False


def device_count() -> int:
    return cupy().cuda.runtime.getDeviceCount() if available() else 0


def device_id(device: str) -> int:
    if device == "cuda":
        return 0
    return int(device.split(":", 1)[1])


def _parse_limit(v: Any) -> Optional[int]:
    if v is None:
        return None
    from mmsb.memory import parse_bytes

    return parse_bytes(v)


def pool(dev: int) -> Any:
    """The one device memory pool of device ``dev`` (a ``cupy.cuda.MemoryPool``, limited by pool_limit)."""
    cp = cupy()
    p = _pools.get(dev)
    if p is None:
        with _lock:
            p = _pools.get(dev)
            if p is None:
                p = cp.cuda.MemoryPool()
                lim = _parse_limit(config["pool_limit"])
                if lim:
                    with cp.cuda.Device(dev):
                        p.set_limit(size=lim)
                _pools[dev] = p
    return p


def set_pool_limit(limit: Any) -> None:
    """Limit every device pool (bytes or e.g. ``"8GiB"``); None lifts the limit."""
    config["pool_limit"] = limit
    lim = _parse_limit(limit) or 0
    for dev, p in _pools.items():
        with cupy().cuda.Device(dev):
            p.set_limit(size=lim)


@contextmanager
def on(dev: int) -> Iterator[Any]:
    """Run CuPy code on device ``dev`` with mmsb's pool as the allocator; yields cupy."""
    cp = cupy()
    with cp.cuda.Device(dev), cp.cuda.using_allocator(pool(dev).malloc):
        yield cp


def check_injected(what: str) -> None:
    """Raise the failure a test injected for ``what`` ("alloc", "launch", "any")."""
    for key in (what, "any"):
        n = _inject.get(key)
        if n:
            _inject[key] = n - 1
            if _inject[key] <= 0:
                _inject.pop(key, None)
            raise InjectedFailure(f"injected CUDA failure ({key})")


def inject_failure(kind: str = "any", times: int = 1) -> None:
    """Make the next ``times`` CUDA operations of ``kind`` fail ("alloc" = OOM, "launch", "any"), or, with
    ``kind="no_cupy"``, behave as if CuPy were missing (``times=0`` clears it). For tests."""
    if times <= 0:
        _inject.pop(kind, None)
    else:
        _inject[kind] = times


def clear_injected() -> None:
    _inject.clear()


def is_cuda_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a CUDA failure that should move the affected pages to the CPU."""
    if isinstance(exc, (InjectedFailure, DeviceError, MemoryError)):
        return True
    mod = type(exc).__module__ or ""
    return mod.startswith("cupy") or mod.startswith("cupy_backends")


# -- pinned staging -------------------------------------------------------------------------------------------
def _pinned(nbytes: int) -> np.ndarray:
    global _pinned_pool
    cp = cupy()
    if _pinned_pool is None:
        _pinned_pool = cp.cuda.PinnedMemoryPool()
    mem = _pinned_pool.malloc(max(int(nbytes), 1))
    return np.frombuffer(mem, dtype=np.uint8, count=max(int(nbytes), 1)), mem


def to_device(arr: np.ndarray, dev: int) -> Any:
    """Upload a host array to device ``dev`` through pinned staging (returns a new CuPy array)."""
    arr = np.ascontiguousarray(arr)
    check_injected("alloc")
    with on(dev) as cp:
        out = cp.empty(arr.shape, dtype=arr.dtype)
        if arr.nbytes:
            if config["pinned_staging"] and arr.nbytes >= 1 << 16:
                buf, mem = _pinned(arr.nbytes)
                staged = buf[:arr.nbytes].view(arr.dtype).reshape(arr.shape)
                staged[...] = arr
                out.set(staged)
                del mem
            else:
                out.set(arr)
        counters["h2d_bytes"] += arr.nbytes
        return out


def to_host(a: Any) -> np.ndarray:
    """Download a CuPy array into a new numpy array (through pinned staging for large ones)."""
    cp = cupy()
    nbytes = int(a.nbytes)
    counters["d2h_bytes"] += nbytes
    if config["pinned_staging"] and nbytes >= 1 << 16:
        with cp.cuda.Device(a.device.id):
            a = cp.ascontiguousarray(a)
            buf, mem = _pinned(nbytes)
            staged = buf[:nbytes].view(a.dtype).reshape(a.shape)
            a.get(out=staged)
            out = staged.copy()
            del mem
            return out
    return cp.asnumpy(a)


# -- fallbacks and figures ------------------------------------------------------------------------------------
_fallbacks: "dict[int, list]" = {}


def record_fallback(buf: Any, page: str, device: str, reason: str) -> None:
    """Remember (per buffer) that ``page`` left ``device`` for the CPU, and warn."""
    _fallbacks.setdefault(id(buf), []).append({"page": page, "from": device, "reason": reason})
    warnings.warn(f"page {page!r}: {device} unavailable ({reason}); the page is on the CPU now",
                  DeviceFallbackWarning, stacklevel=4)


def fallbacks(buf: Any) -> list:
    return list(_fallbacks.get(id(buf), []))


def pool_stats() -> dict:
    out: dict = {}
    for dev, p in _pools.items():
        out[f"cuda:{dev}"] = {"used_bytes": int(p.used_bytes()), "total_bytes": int(p.total_bytes()),
                              "free_bytes": int(p.free_bytes()), "limit": int(p.get_limit())}
    if _pinned_pool is not None:
        out["pinned_free_blocks"] = int(_pinned_pool.n_free_blocks())
    return out

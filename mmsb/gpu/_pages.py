"""GPU page storage: moves, reads, delta application (single and command buffer), fallback to the CPU.

A GPU page keeps a flat CuPy array in ``page._data`` (from mmsb's device pool) and ``page._handle = None``; the
memory manager does not count it as host-resident and never spills it. Reads return numpy copies.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np

from mmsb.errors import DeviceError
from mmsb.gpu import _runtime as rt
from mmsb.gpu import kernels as K

_warned_cpu: set = set()


def _dev(page: Any) -> int:
    return rt.device_id(page.device)


def _check_device(device: str) -> int:
    cp = rt.cupy()
    d = rt.device_id(device)
    n = cp.cuda.runtime.getDeviceCount()
    if d >= n:
        raise DeviceError(f"{device} does not exist ({n} CUDA device(s) visible)")
    return d


def move_page(buf: Any, page: Any, device: str) -> None:
    """Move ``page`` to ``device``; a CUDA failure keeps (or puts) it on the CPU with DeviceFallbackWarning."""
    src = page.device
    if device == src:
        return
    if device == "cpu":
        host = rt.to_host(page._data)
        _to_cpu(buf, page, host)
        return
    try:
        d = _check_device(device)
        if src == "cpu":
            host = buf._memory.array(page)
            arr = rt.to_device(host, d)
            buf._memory.release(page)
            page._data, page._handle = arr, None
            page.device = device
        else:
            rt.check_injected("alloc")
            with rt.on(d) as cp:
                arr = cp.empty_like(page._data)
                arr.data.copy_from_device(page._data.data, page._data.nbytes)    # peer copy
                rt.counters["peer_copies"] += 1
            page._data, page.device = arr, device
    except Exception as exc:
        if not rt.is_cuda_failure(exc):
            raise
        if src != "cpu":
            fallback(buf, page, str(exc))
        else:
            rt.record_fallback(buf, page.name, device, str(exc))


def _to_cpu(buf: Any, page: Any, host: np.ndarray) -> None:
    page._data, page._handle = None, None
    page.device = "cpu"
    buf._memory.allocate(page, 0)
    buf._memory.array(page)[...] = host.reshape(-1)


def fallback(buf: Any, page: Any, reason: str) -> None:
    """Move a GPU page to the CPU after a CUDA failure (DeviceFallbackWarning; recorded in stats)."""
    dev = page.device
    if dev == "cpu":
        return
    host = rt.cupy().asnumpy(page._data)
    _to_cpu(buf, page, host)
    rt.record_fallback(buf, page.name, dev, reason)


def host_copy(page: Any) -> np.ndarray:
    """A flat numpy copy of a GPU page."""
    return rt.to_host(page._data)


def read_host(buf: Any, page: Any, index: Any = None) -> np.ndarray:
    """``page.read(index)`` for a GPU page: gathers on the device, returns numpy."""
    with buf._locked():
        buf._check_open()
        if page.device == "cpu":
            return buf._read(page, index)
        if index is None:
            return rt.to_host(page._data).reshape(page.shape)
        idx = buf._index(page, index)
        with rt.on(_dev(page)):
            flat = idx.reshape(-1)
            out = rt.to_host(page._data[rt.to_device(flat, _dev(page))])
        return out.reshape(idx.shape)


def values_at(page: Any, idx: np.ndarray) -> np.ndarray:
    with rt.on(_dev(page)):
        return rt.to_host(page._data[rt.to_device(np.asarray(idx, dtype=np.int64), _dev(page))])


def read_device(buf: Any, page: Any) -> Any:
    """A CuPy copy of the page in its shape (``__cuda_array_interface__`` / DLPack for zero-copy interop)."""
    with buf._locked():
        buf._check_open()
        with rt.on(_dev(page)):
            return page._data.reshape(page.shape).copy()


def _restore(buf: Any, name: str, idx: np.ndarray, old: np.ndarray) -> None:
    page = buf._pages.get(name)
    if page is None:
        return
    if page.device == "cpu":
        buf._memory.array(page)[idx] = old
        return
    d = _dev(page)
    with rt.on(d):
        page._data[rt.to_device(idx, d)] = rt.to_device(old, d)


def _record(buf: Any, page: Any, idx: np.ndarray, old: np.ndarray, undo: Any) -> None:
    if undo is not None and idx.size:
        undo.action(lambda n=page.name, i=idx, o=old: _restore(buf, n, i, o))


def apply_delta(buf: Any, page: Any, d: Any, undo: Any) -> Any:
    """Buffer._apply_delta for a GPU page: the same Change (numpy idx/old) as the CPU path."""
    from mmsb.propagate import Change

    idx, vals = d.sparse()
    ops = _ops_of(page, d.accumulate)
    if ops is None:
        return _apply_on_host(buf, page, d, undo)
    try:
        dev = _dev(page)
        with rt.on(dev):
            di = rt.to_device(np.asarray(idx, dtype=np.int64), dev)
            dv = rt.to_device(np.asarray(vals).astype(page.dtype, copy=False).view(ops.kview()), dev)
            old_d, ch_d = K.apply_normalized(ops, page._data, di, dv, not d.accumulate)
            old = rt.to_host(old_d).view(page.dtype)
            changed = rt.to_host(ch_d).view(bool)
    except Exception as exc:
        if not rt.is_cuda_failure(exc):
            raise
        fallback(buf, page, f"{type(exc).__name__}: {exc}")
        return buf._apply_delta(page, d, undo)
    ci, co = idx[changed], old[changed]
    _record(buf, page, ci, co, undo)
    if not ci.size:
        return None
    return Change(ci, co)


def _ops_of(page: Any, accumulate: bool) -> Optional[K.Ops]:
    if page.dtype.name not in K.CTYPES:
        return None
    return K.ops_for(page.semiring, page.dtype) if accumulate else K.Ops.for_codes(page.dtype, -1)


def _warn_cpu(sr: Any) -> None:
    if sr.name not in _warned_cpu:
        _warned_cpu.add(sr.name)
        warnings.warn(f"semiring {sr.name!r} has no GPU kernels (no op codes, no cuda_add/cuda_mul); its GPU pages "
                      "are updated on the CPU", RuntimeWarning, stacklevel=4)


def _apply_on_host(buf: Any, page: Any, d: Any, undo: Any) -> Any:
    from mmsb.propagate import Change, changed_positions

    if d.accumulate:
        _warn_cpu(page.semiring)
    rt.counters["cpu_fallback_ops"] += 1
    idx, vals = d.sparse()
    dev = _dev(page)
    with rt.on(dev):
        di = rt.to_device(np.asarray(idx, dtype=np.int64), dev)
        old = rt.to_host(page._data[di])
        new = page.semiring.add_arrays(old, vals) if d.accumulate else np.asarray(vals).astype(page.dtype)
        changed = changed_positions(new, old)
        page._data[di] = rt.to_device(new, dev)
    ci, co = idx[changed], old[changed]
    _record(buf, page, ci, co, undo)
    return Change(ci, co) if ci.size else None


def apply_batch(buf: Any, ops_list: list, undo: Any) -> dict:
    """Pre-apply, through the command buffer, the first delta of each GPU page in a commit's ops.

    Groups by (device, dtype, op) and launches one kernel per group; returns {id(delta): Change or None}."""
    from mmsb.delta import Delta
    from mmsb.propagate import Change

    if len(ops_list) < 2 or not all(isinstance(o, Delta) for o in ops_list):
        return {}
    seen: set = set()
    groups: dict = {}
    for op in ops_list:
        page = buf._pages.get(op.page)
        if page is None or page.device == "cpu" or op.page in seen or buf._graph.is_derived(op.page):
            continue
        seen.add(op.page)
        ops = _ops_of(page, op.accumulate)
        if ops is None:
            continue
        key = (page.device, page.dtype.str, ops.add, ops.mul if op.accumulate else "", op.accumulate)
        groups.setdefault(key, (ops, []))[1].append((page, op))
    out: dict = {}
    for (device, _, _, _, acc), (ops, items) in groups.items():
        if len(items) < 2:
            continue
        pages = [p for p, _ in items]
        sparse = [o.sparse() for _, o in items]
        try:
            offs, old, changed = K.batch_apply(ops, [p._data for p in pages], [s[0] for s in sparse],
                                               [s[1] for s in sparse], [not acc] * len(items), rt.device_id(device))
        except Exception as exc:
            if not rt.is_cuda_failure(exc):
                raise
            for p in pages:
                fallback(buf, p, f"{type(exc).__name__}: {exc}")
            continue
        rt.counters["batches"] += 1
        rt.counters["batched_deltas"] += len(items)
        for k, (page, op) in enumerate(items):
            o = old[offs[k]:offs[k + 1]].view(page.dtype)
            c = changed[offs[k]:offs[k + 1]].view(bool)
            ci, co = sparse[k][0][c], o[c]
            _record(buf, page, ci, co, undo)
            out[id(op)] = Change(ci, co) if ci.size else None
    return out


def page_stats(buf: Any) -> dict:
    pages: dict = {}
    for p in list(buf._pages.values()):
        if p.device != "cpu":
            e = pages.setdefault(p.device, {"pages": 0, "bytes": 0})
            e["pages"] += 1
            e["bytes"] += p.nbytes
    return pages


def optional(page: Any) -> Optional[Any]:
    return page._data if page.device != "cpu" else None

"""Several GPUs: NCCL collectives (cupy.cuda.nccl) for delta exchange between pages on cuda:0..N-1.

* :func:`allreduce_pages` — the pages are replicas of one logical page, one per device, each holding its own
  accumulated delta on top of a common base; after the call every replica holds base ⊕ all deltas (plus -> sum,
  min/max semirings -> min/max all-reduce). One NCCL group call, in place.
* :func:`allgather_pages` — the pages are the shards of one logical page (one per device); returns, on each
  device, the full concatenated array.

NVLink multicast (NVLS) is never used: NCCL_NVLS_ENABLE=0 is set before NCCL is loaded.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from mmsb import _ops
from mmsb.gpu import _runtime as rt

os.environ["NCCL_NVLS_ENABLE"] = "0"

_comms: dict = {}
_NCCL_T = {"int8": "NCCL_INT8", "uint8": "NCCL_UINT8", "int32": "NCCL_INT32", "uint32": "NCCL_UINT32",
           "int64": "NCCL_INT64", "uint64": "NCCL_UINT64", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
           "bool": "NCCL_UINT8"}


def nccl() -> Any:
    rt.cupy()
    from cupy.cuda import nccl as n  # noqa: PLC0415

    if not n.available:
        raise rt.DeviceError("NCCL is not available in this CuPy build")
    return n


def communicators(devices: tuple) -> list:
    """One NCCL communicator per device (single process, cached)."""
    devices = tuple(devices)
    c = _comms.get(devices)
    if c is None:
        c = _comms[devices] = nccl().NcclCommunicator.initAll(list(devices))
    return c


def _reduce_op(sr: Any, dtype: np.dtype) -> Any:
    n = nccl()
    codes = sr.codes_for(dtype)
    if codes is None:
        raise rt.DeviceError(f"semiring {sr.name!r} has no NCCL reduction")
    return {_ops.OP_PLUS: n.NCCL_SUM, _ops.OP_MIN: n.NCCL_MIN, _ops.OP_MAX: n.NCCL_MAX,
            _ops.OP_TIMES: n.NCCL_PROD}[codes[0]]


def allreduce_arrays(arrays: list, op: Any) -> None:
    """In-place all-reduce of one CuPy array per device (one NCCL group)."""
    n = nccl()
    cp = rt.cupy()
    devs = tuple(a.device.id for a in arrays)
    comms = communicators(devs)
    dt = getattr(n, _NCCL_T[arrays[0].dtype.name])
    n.groupStart()
    for a, c in zip(arrays, comms):
        with cp.cuda.Device(a.device.id):
            c.allReduce(a.data.ptr, a.data.ptr, a.size, dt, op, cp.cuda.get_current_stream().ptr)
    n.groupEnd()
    for a in arrays:
        with cp.cuda.Device(a.device.id):
            cp.cuda.get_current_stream().synchronize()
    rt.counters["nccl_calls"] += 1


def allgather_arrays(arrays: list) -> list:
    """All-gather equal-size shards (one per device); returns the concatenation on every device."""
    n = nccl()
    cp = rt.cupy()
    devs = tuple(a.device.id for a in arrays)
    comms = communicators(devs)
    dt = getattr(n, _NCCL_T[arrays[0].dtype.name])
    outs = []
    for a in arrays:
        with rt.on(a.device.id):
            outs.append(cp.empty(a.size * len(arrays), dtype=a.dtype))
    n.groupStart()
    for a, o, c in zip(arrays, outs, comms):
        with cp.cuda.Device(a.device.id):
            c.allGather(a.data.ptr, o.data.ptr, a.size, dt, cp.cuda.get_current_stream().ptr)
    n.groupEnd()
    for a in arrays:
        with cp.cuda.Device(a.device.id):
            cp.cuda.get_current_stream().synchronize()
    rt.counters["nccl_calls"] += 1
    return outs


def allreduce_pages(buf: Any, pages: list, base: Any = None) -> int:
    """Exchange accumulate deltas between replicas of one page (one page per GPU) and commit the result.

    Each replica ``i`` holds ``base ⊕ d_i``; afterwards each holds ``base ⊕ d_1 ⊕ ... ⊕ d_n``. For plus, ``base``
    (a numpy array; default: the replicas' value at their last common epoch is unknown, so the caller passes it,
    or None meaning zero) is subtracted before and added after the sum. For idempotent ⊕ no base is needed.
    The new values are committed as deltas of one epoch (logged like any write); returns that epoch.
    """
    ps = [buf._page(p) for p in pages]
    sr = ps[0].semiring
    op = _reduce_op(sr, ps[0].dtype)
    work = []
    for p in ps:
        with rt.on(rt.device_id(p.device)):
            a = p._data.copy()
            if base is not None and not sr.idempotent:
                a -= rt.to_device(np.asarray(base, dtype=p.dtype).reshape(-1), rt.device_id(p.device))
            work.append(a)
    allreduce_arrays(work, op)
    host = rt.to_host(work[0])
    if base is not None and not sr.idempotent:
        host = host + np.asarray(base, dtype=ps[0].dtype).reshape(-1)
    with buf.batch():
        for p in ps:
            buf.write(p, host.reshape(p.shape))
    return buf.epoch


def allgather_pages(buf: Any, pages: list) -> list:
    """The full logical page, gathered from its shards (one per GPU, equal sizes), as CuPy arrays on each."""
    ps = [buf._page(p) for p in pages]
    return allgather_arrays([p._data for p in ps])

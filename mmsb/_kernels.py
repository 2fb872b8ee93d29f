"""Chooses the compiled kernels (mmsb._ext, at a SIMD level this CPU runs) or their pure-numpy twins (mmsb._ref).

``MMSB_PUREPYTHON=1`` selects the twins; if the extensions were not built, the twins are used with a warning.

SIMD dispatch: the hot kernels (merge, spmv, codecs) are built once per level (setup.py): ``sse2`` (the x86-64
baseline, ``mmsb._ext``), ``avx2`` (``mmsb._ext._avx2``) and ``avx512`` (``mmsb._ext._avx512``). At import the
first level of ``PREFERENCE`` that was built and that the CPU runs is used; ``MMSB_SIMD=sse2|avx2|avx512`` pins
one (a RuntimeWarning and the default choice when it was not built or the CPU lacks it). ``SIMD`` names the level
in use, ``SIMD_LEVELS`` the usable ones; ``cpu.features()`` (``buf.stats()["device"]["cpu"]``) reports it too.

Threads: ``MMSB_THREADS=N`` caps the OpenMP threads of one kernel call (default: the CPUs of this process's
affinity mask, lowered to a cgroup CPU quota where one is set). While other processes keep the machine's CPUs
busy a kernel uses fewer (``MMSB_ADAPT_THREADS=0`` turns that off); idle threads sleep (``OMP_WAIT_POLICY=passive``
unless the user set it). ``set_threads`` changes both at run time.
"""
from __future__ import annotations

import importlib
import math
import os
import types
import warnings
from typing import Optional

PREFERENCE = ("avx512", "avx2", "sse2")
_PACKAGES = {"sse2": "mmsb._ext", "avx2": "mmsb._ext._avx2", "avx512": "mmsb._ext._avx512"}
_HOT = ("merge", "spmv", "codecs")


def _cgroup_cpus() -> Optional[int]:
    """CPUs allowed by a cgroup v2 (cpu.max) or v1 (cfs quota) CPU quota, rounded up; None where there is none."""
    for quota_file, period_file in (("/sys/fs/cgroup/cpu.max", None),
                                    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            with open(quota_file, encoding="ascii") as fh:
                parts = fh.read().split()
            if period_file is not None:
                with open(period_file, encoding="ascii") as fh:
                    parts.append(fh.read().strip())
        except OSError:
            continue
        if len(parts) >= 2 and parts[0] not in ("max", "-1"):
            try:
                quota, period = int(parts[0]), int(parts[1])
            except ValueError:
                return None
            if quota > 0 and period > 0:
                return max(1, math.ceil(quota / period))
        return None
    return None


def default_threads() -> int:
    """The default thread cap: the CPUs this process may run on (affinity mask, cgroup quota)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpus()
    return max(1, min(n, quota) if quota else n)


def _env_threads() -> int:
    raw = os.environ.get("MMSB_THREADS", "").strip()
    if not raw:
        return default_threads()
    try:
        n = int(raw)
    except ValueError:
        warnings.warn(f"mmsb: MMSB_THREADS={raw!r} is not an integer; using {default_threads()}", RuntimeWarning,
                      stacklevel=3)
        return default_threads()
    return n if n >= 1 else default_threads()


def _load_level(level: str) -> Optional[types.SimpleNamespace]:
    """The hot kernel modules of one SIMD level, or None when that level was not built."""
    try:
        mods = {name: importlib.import_module(f"{_PACKAGES[level]}.{name}") for name in _HOT}
    except ImportError:
        return None
    return types.SimpleNamespace(level=level, **mods)


THREADS = 1
ADAPT = True
SIMD = "none"
SIMD_LEVELS: list[str] = []
_LEVELS: dict[str, types.SimpleNamespace] = {}

KIND = "python"
if os.environ.get("MMSB_PUREPYTHON") == "1":
    from mmsb._ref import alloc, codecs, cpu, logframe, merge, packed, point, repair, spmv
else:
    try:
        from mmsb._ext import alloc, codecs, cpu, logframe, merge, packed, point, repair, spmv
        KIND = "compiled"
    except ImportError as exc:  # pragma: no cover - only on a broken install
        warnings.warn(f"mmsb: compiled kernels unavailable ({exc}); using the numpy reference kernels",
                      RuntimeWarning, stacklevel=2)
        from mmsb._ref import alloc, codecs, cpu, logframe, merge, packed, point, repair, spmv


def compiled_levels() -> dict[str, types.SimpleNamespace]:
    """The SIMD levels built and runnable here, each a namespace with ``merge``, ``spmv`` and ``codecs``."""
    return dict(_LEVELS)


def set_threads(n: Optional[int] = None, adapt: Optional[bool] = None) -> int:
    """Cap the threads of one kernel call at ``n`` (None: the default) and turn the busy-machine fallback on or
    off (None: keep); returns the cap."""
    global THREADS, ADAPT
    THREADS = default_threads() if n is None else max(1, int(n))
    if adapt is not None:
        ADAPT = bool(adapt)
    cpus = os.cpu_count() or THREADS
    for ns in _LEVELS.values():
        for mod in (ns.merge, ns.spmv):
            mod.set_threads(THREADS, cpus, ADAPT)
    if KIND == "compiled":                  # the matrix-page kernels (one build, no SIMD levels)
        point.set_threads(THREADS, cpus, ADAPT)
        repair.set_threads(THREADS, cpus, ADAPT)
    return THREADS


def threads_now() -> int:
    """The number of threads a parallel kernel would use at this moment."""
    return spmv.threads() if KIND == "compiled" else 1


def _choose(levels: dict[str, types.SimpleNamespace]) -> str:
    pinned = os.environ.get("MMSB_SIMD", "").strip().lower()
    if pinned:
        if pinned in levels:
            return pinned
        if pinned not in _PACKAGES:
            reason = f"unknown level (expected one of {', '.join(_PACKAGES)})"
        elif not cpu.level_supported(pinned):
            reason = "this CPU does not support it"
        else:
            reason = "it was not built"
        warnings.warn(f"mmsb: MMSB_SIMD={pinned!r} cannot be used ({reason}); using the default level",
                      RuntimeWarning, stacklevel=3)
    return next(level for level in PREFERENCE if level in levels)


if KIND == "compiled":
    for _level in PREFERENCE:
        if _level == "sse2":
            _LEVELS[_level] = types.SimpleNamespace(level="sse2", merge=merge, spmv=spmv, codecs=codecs)
        elif cpu.level_supported(_level):
            _ns = _load_level(_level)
            if _ns is not None:
                _LEVELS[_level] = _ns
    SIMD = _choose(_LEVELS)
    SIMD_LEVELS = [level for level in ("sse2", "avx2", "avx512") if level in _LEVELS]
    merge, spmv, codecs = _LEVELS[SIMD].merge, _LEVELS[SIMD].spmv, _LEVELS[SIMD].codecs
    ADAPT = os.environ.get("MMSB_ADAPT_THREADS", "1") != "0"
    set_threads(_env_threads())
    cpu.set_dispatch(SIMD, SIMD_LEVELS, threads_now)

__all__ = ["KIND", "SIMD", "SIMD_LEVELS", "THREADS", "alloc", "codecs", "compiled_levels", "cpu", "default_threads",
           "logframe", "merge", "packed", "point", "repair", "set_threads", "spmv", "threads_now"]

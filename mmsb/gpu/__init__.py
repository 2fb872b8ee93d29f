"""GPU pages with CuPy. Imported on first use of a GPU page; ``import mmsb`` never imports this or CuPy.

Public API: :func:`available`, :func:`device_count`, :data:`config` (``cuda_graphs``, ``pool_limit``),
:func:`set_pool_limit`, :func:`prefetch`, :class:`GraphWave`, :func:`propagate`, :func:`inject_failure`,
the kernels in :mod:`mmsb.gpu.kernels`, and the NCCL collectives in :mod:`mmsb.gpu.multi`.
The buffer calls the hooks :func:`move_page`, :func:`read_device`, :func:`read_host`, :func:`host_copy`,
:func:`values_at`, :func:`apply_delta`, :func:`apply_batch`, :func:`update_page` and :func:`stats`.
See docs/gpu.md.
"""
from __future__ import annotations

from typing import Any, Optional

from mmsb.gpu._engine import GraphWave, update_page
from mmsb.gpu._engine import prefetch as _prefetch
from mmsb.gpu._pages import (apply_batch, apply_delta, fallback, host_copy, move_page, read_device, read_host,
                             values_at)
from mmsb.gpu._runtime import (available, clear_injected, config, counters, device_count, inject_failure,
                               set_pool_limit)
from mmsb.gpu import _pages, _runtime

__all__ = ["GraphWave", "available", "config", "counters", "device_count", "inject_failure", "clear_injected",
           "prefetch", "propagate", "set_pool_limit", "stats", "move_page", "read_device", "read_host",
           "host_copy", "values_at", "apply_delta", "apply_batch", "update_page", "fallback"]

_waves: dict = {}


def prefetch(buf: Any, names: Optional[list] = None) -> None:
    """Upload the rule matrices of the GPU pages ``names`` (default: all derived GPU pages) ahead of a wave."""
    if names is None:
        names = [n for n, p in buf._pages.items() if p.device != "cpu" and buf._graph.is_derived(n)]
    _prefetch(buf._engine, [buf._page(n).name for n in names])


def propagate(buf: Any) -> int:
    """Recompute the link-derived GPU pages with a (cached, captured) :class:`GraphWave` and commit the changes."""
    w = _waves.get(id(buf))
    if w is None or w.buf is not buf:
        w = _waves[id(buf)] = GraphWave(buf)
    return w.commit()


def stats(buf: Any) -> dict:
    """``buf.stats()["device"]["gpu"]``: availability, pages per device, pool figures, counters, fallbacks."""
    out: dict = {"available": _runtime._cp is not None, "pages": _pages.page_stats(buf),
                 "counters": dict(_runtime.counters), "fallbacks": _runtime.fallbacks(buf),
                 "cuda_graphs": bool(_runtime.config["cuda_graphs"])}
    if _runtime._cp is not None:
        out["devices"] = _runtime.device_count()
        out["pool"] = _runtime.pool_stats()
    else:
        out["error"] = _runtime._cp_error
    return out

"""Propagation engines behind one small interface, chosen when a buffer opens.

The in-process :class:`~mmsb.propagate.Engine` is built in (``"local"``); the Dask engine is registered lazily
(``"dask"``: :mod:`mmsb.dask` and distributed are imported only for a buffer opened with ``cluster=``), as dask
registers its array backends. A factory takes the buffer and the cluster argument and returns the engine and,
for a cluster, a handle with ``after_commit(epoch)``, ``stats()`` and ``close()`` (None in-process).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, runtime_checkable

from mmsb.registry import LazyRegistry

if TYPE_CHECKING:  # pragma: no cover
    from mmsb.buffer import Buffer
    from mmsb.propagate import Change, UndoLog, WaveStats


@runtime_checkable
class PropagationEngine(Protocol):
    """What the commit pipeline needs of an engine."""

    stats: "WaveStats"

    def wave(self, changes: dict[str, "Change"], undo: "UndoLog", force: Optional[set] = None) \
            -> dict[str, "Change"]:
        """Push ``changes`` (and full recomputes of ``force``) down the rules; return the derived changes."""
        ...

    def point_wave(self, name: str, ch: "Change", undo: "UndoLog") -> dict[str, "Change"]:
        """``wave({name: ch}, undo)`` for a change of a few values (an engine may take a shorter path)."""
        ...


Factory = Callable[["Buffer", Any], tuple]


def _local(buf: "Buffer", cluster: Any) -> tuple:
    from mmsb.memory import ResidentArrays
    from mmsb.propagate import Engine

    pages = buf._pages
    return Engine(buf._graph, ResidentArrays(pages, buf._memory), lambda n: pages[n].shape,
                  lambda n: pages[n].semiring, pages=pages.__getitem__), None


_registry: LazyRegistry[Factory] = LazyRegistry({"local": _local}, {"dask": "mmsb.dask:attach_cluster"})


def register(name: str, factory: Factory) -> None:
    """Register an engine factory ``factory(buf, cluster) -> (engine, handle or None)``."""
    _registry.register(name, factory)


def register_lazy(name: str, target: str) -> None:
    """Register ``"module:function"`` as the factory ``name``; imported on first use."""
    _registry.register_lazy(name, target)


def factory(name: str) -> Factory:
    """The factory registered as ``name`` (importing a lazy one)."""
    f = _registry.get(name)
    if f is None:
        raise KeyError(f"no propagation engine named {name!r}")
    return f


def create(buf: "Buffer", cluster: Any = None) -> tuple:
    """The engine for ``buf``: in-process, or the Dask engine when ``cluster`` is given."""
    return factory("local" if cluster is None else "dask")(buf, cluster)

"""Dask integration: propagation on a ``distributed`` cluster, dask.array interop and batch replays.

``mmsb.open(path, cluster=client_or_address)`` runs every propagation wave on the cluster's workers (see
:mod:`mmsb.dask.engine`); ``from_dask_array`` / ``to_dask_array`` move data between pages and dask arrays;
``run_batch`` (CLI ``mmsb batch``) applies a file of deltas, or replays a store's log, on a cluster.
Importing ``mmsb`` never imports Dask; importing ``mmsb.dask`` (or passing ``cluster=``) does.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import dask  # noqa: F401  (the integration needs it; fail here with a clear ImportError)
import distributed

from mmsb.dask._errors import ClusterError
from mmsb.dask.array import from_dask_array, to_dask_array
from mmsb.dask.engine import ClusterHandle, DistributedEngine
from mmsb.dask.partition import cut_fraction, partition



def connect(cluster: Any, timeout: Optional[str] = None) -> tuple:
    """``(client, owned)`` for a ``distributed.Client``, a cluster object or a scheduler address string."""
    if isinstance(cluster, distributed.Client):
        if cluster.status not in ("running", "connecting", "newly-created"):
            raise ClusterError(f"the Dask client is {cluster.status}")
        return cluster, False
    if isinstance(cluster, str) or hasattr(cluster, "scheduler_address"):
        where = cluster if isinstance(cluster, str) else cluster.scheduler_address
        try:
            client = distributed.Client(cluster, timeout=timeout or os.environ.get("MMSB_DASK_CONNECT_TIMEOUT", "10s"),
                                         set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(f"cannot connect to the Dask scheduler at {where!r}: {exc}") from exc
        return client, True
    raise TypeError(f"cluster must be a distributed.Client or a scheduler address, got {type(cluster).__name__}")


def attach_cluster(buf: Any, cluster: Any) -> tuple:
    """The ``"dask"`` engine factory (see :mod:`mmsb.engines`): a :class:`DistributedEngine` for ``buf`` on
    ``cluster`` and the handle the buffer keeps (commit hook, stats, close)."""
    client, owned = connect(cluster)
    try:
        engine = DistributedEngine(buf, client, owned)
    except BaseException:
        if owned:
            client.close()
        raise
    return engine, ClusterHandle(engine)


def place(buf: Any, page: Any, worker: Optional[str]) -> None:
    """Pin a page (and with it, by default, its component) to a worker address; None unpins. Applies next wave."""
    if buf._cluster is None:
        raise ClusterError("this buffer has no cluster (open it with cluster=...)")
    buf._cluster.place(page, worker)


def placement(buf: Any) -> dict:
    """``{derived page: worker address}``."""
    if buf._cluster is None:
        raise ClusterError("this buffer has no cluster (open it with cluster=...)")
    return buf._cluster.placement()


def shards(buf: Any, name: Any) -> list:
    """``[(start, stop, worker address)]``: the blocks of a page created with ``shards=`` (a matrix: its row
    blocks). A page that is not sharded is one block: ``[(0, size, worker computing it or None)]``."""
    if buf._cluster is None:
        raise ClusterError("this buffer has no cluster (open it with cluster=...)")
    name = name if isinstance(name, str) else name.name
    page = buf[name]
    mgr = buf._cluster.engine.shards
    if name in mgr.infos:
        return mgr.layout(name)
    n = page.shape[0] if page.kind == "matrix" else page.size
    return [(0, int(n), buf._cluster.engine.placement().get(name))]


def shard_stats(buf: Any, name: Any) -> dict:
    """Figures of a sharded matrix page: ``nnz``, ``cut`` (entries whose column lies outside their row block),
    ``cut_fraction`` and per-block ``(entries, cut entries)``."""
    if buf._cluster is None:
        raise ClusterError("this buffer has no cluster (open it with cluster=...)")
    name = name if isinstance(name, str) else name.name
    mgr = buf._cluster.engine.shards
    if name not in mgr.infos or mgr.infos[name].kind != "matrix":
        raise KeyError(f"{name!r} is not a sharded matrix page")
    return mgr.matrix_stats(name)


def elementwise(fn: Any) -> Any:
    """Mark ``fn`` element-wise (output entry i depends only on entry i of each input), so that a ``derive``
    over sharded pages runs it block by block on the workers. Returns ``fn``."""
    fn.mmsb_elementwise = True
    return fn


def run_batch(*args: Any, **kwargs: Any) -> dict:
    """See :func:`mmsb.dask.batch.run_batch`."""
    from mmsb.dask.batch import run_batch as _run

    return _run(*args, **kwargs)


__all__ = ["ClusterError", "ClusterHandle", "DistributedEngine", "attach_cluster", "connect", "cut_fraction",
           "elementwise", "from_dask_array", "partition", "place", "placement", "run_batch", "shard_stats",
           "shards", "to_dask_array"]

"""dask.array interop: blocks of a dask array become pages, and pages become a dask array."""
from __future__ import annotations

import itertools
import uuid
from typing import Any, Optional, Sequence

import numpy as np


def from_dask_array(buf: Any, arr: Any, prefix: str, semiring: Any = "plus_times", shards: bool = False,
                    **page_kwargs: Any) -> list[str]:
    """One page per block of ``arr``, named ``f"{prefix}{i}"`` with ``i`` counting the blocks in C order.

    Each page has the block's shape and the array's dtype; ``page_kwargs`` go to ``create_page`` (``fill``,
    ``device``, ``metadata``). The blocks are computed together (on the default Dask scheduler). Returns the
    page names.

    ``shards=True`` (a 1-D array, a buffer with a cluster): one sharded page named ``prefix`` whose blocks are the
    array's chunks, each owned by the worker that computed the chunk (see :func:`_sharded_from_chunks`).
    """
    import dask
    import dask.array as da

    arr = da.asarray(arr)
    if shards:
        return _sharded_from_chunks(buf, arr, prefix, semiring, **page_kwargs)
    if any(np.isnan(c).any() for c in map(np.asarray, arr.chunks)):
        raise ValueError("from_dask_array needs known chunk sizes (call arr.compute_chunk_sizes() first)")
    keys = list(itertools.product(*(range(n) for n in arr.numblocks)))
    names = [f"{prefix}{i}" for i in range(len(keys))]
    taken = [n for n in names if n in buf]
    if taken:
        from mmsb.errors import PageExistsError

        raise PageExistsError(f"pages already exist: {taken[:5]}{'...' if len(taken) > 5 else ''}")
    blocks = dask.compute(*[arr.blocks[k] for k in keys]) if keys else ()
    dtype = page_kwargs.pop("dtype", arr.dtype)
    for name, block in zip(names, blocks):
        block = np.asarray(block)
        page = buf.create_page(name, block.shape if block.ndim else (1,), dtype=dtype, semiring=semiring,
                               **page_kwargs)
        if block.size:
            buf.write(page, block.reshape(page.shape))
    return names


def to_dask_array(buf: Any, names: Sequence[Any], grid: Optional[Sequence[int]] = None) -> Any:
    """A dask array over snapshots (taken now) of the named pages.

    1-D pages are concatenated in order; a sharded page (``shards=``) gives one chunk per block, copied on the
    worker that owns it (nothing goes through the driver until the array is computed). With ``grid`` (a block-grid
    shape whose product is ``len(names)``), N-D pages given in C order of that grid are reassembled with
    ``dask.array.block``. Without ``grid``, N-D pages are concatenated along axis 0.
    """
    import dask.array as da

    names = [n if isinstance(n, str) else n.name for n in names]
    if not names:
        raise ValueError("to_dask_array needs at least one page name")
    token = uuid.uuid4().hex[:12]
    parts = []
    for i, n in enumerate(names):
        page = buf[n]
        if getattr(page, "_sh", None) is not None and page.kind != "matrix":
            from mmsb.dask.sharding import to_dask_chunks

            parts.append(to_dask_chunks(buf, page))     # one chunk per block, snapshotted on its owner
            continue
        snap = page.read()
        parts.append(da.from_array(snap, chunks=snap.shape, name=f"mmsb-{n}-{token}-{i}"))
    if grid is not None:
        grid = tuple(int(g) for g in grid)
        if int(np.prod(grid)) != len(names):
            raise ValueError(f"grid {grid} has {int(np.prod(grid))} blocks, got {len(names)} pages")
        nested: Any = np.empty(grid, dtype=object)
        for idx, p in zip(np.ndindex(*grid), parts):
            nested[idx] = p
        return da.block(nested.tolist())
    ndims = {p.ndim for p in parts}
    if len(ndims) != 1:
        raise ValueError(f"pages of different ranks {sorted(ndims)}: pass grid=")
    return da.concatenate(parts, axis=0)


def _sharded_from_chunks(buf: Any, arr: Any, name: str, semiring: Any, **page_kwargs: Any) -> list[str]:
    """``from_dask_array(..., shards=True)``: the chunks are computed on the cluster (``persist``), the page is
    created with one block per chunk, each owned by a worker that holds that chunk, and the values are written
    chunk by chunk (the driver logs every user write, so each chunk passes through it once, one at a time; the
    block then lives where the chunk was computed). Without a cluster the page is an ordinary page."""
    import dask.array as da

    if arr.ndim != 1:
        raise ValueError(f"from_dask_array(..., shards=True) needs a 1-D array, got {arr.ndim}-D")
    if any(np.isnan(c) for c in arr.chunks[0]):
        raise ValueError("from_dask_array needs known chunk sizes (call arr.compute_chunk_sizes() first)")
    if name in buf:
        from mmsb.errors import PageExistsError

        raise PageExistsError(f"a page named {name!r} already exists")
    dtype = page_kwargs.pop("dtype", arr.dtype)
    sizes = [int(c) for c in arr.chunks[0]]
    bounds = [0] + [int(x) for x in np.cumsum(sizes)]
    n = bounds[-1]
    if buf._cluster is None or n == 0 or 0 in sizes:
        page = buf.create_page(name, n, dtype=dtype, semiring=semiring, **page_kwargs)
        if n:
            buf.write(page, np.asarray(arr.compute()).astype(dtype, copy=False))
        return [name]
    from distributed import futures_of

    client = buf._cluster.client
    persisted = client.persist(da.asarray(arr))
    futs = sorted(futures_of(persisted), key=lambda f: f.key[1:] if isinstance(f.key, tuple) else (0,))
    who = client.who_has(futs)
    owners = [sorted(who.get(f.key) or ["?"])[0] for f in futs]
    buf._cluster.engine.shards.prefer[name] = owners
    page = buf.create_page(name, n, dtype=dtype, semiring=semiring, shards=bounds, **page_kwargs)
    for b, f in enumerate(futs):
        chunk = np.asarray(f.result()).astype(dtype, copy=False)
        buf.write(page, chunk, index=np.arange(bounds[b], bounds[b + 1], dtype=np.int64))
        f.release()
    return [name]

"""dask.array interop: blocks of a dask array become pages, and pages become a dask array."""
from __future__ import annotations

import itertools
import uuid
from typing import Any, Optional, Sequence

import numpy as np


def from_dask_array(buf: Any, arr: Any, prefix: str, semiring: Any = "plus_times", **page_kwargs: Any) -> list[str]:
    """One page per block of ``arr``, named ``f"{prefix}{i}"`` with ``i`` counting the blocks in C order.

    Each page has the block's shape and the array's dtype; ``page_kwargs`` go to ``create_page`` (``fill``,
    ``device``, ``metadata``). The blocks are computed together (on the default Dask scheduler). Returns the
    page names.
    """
    import dask
    import dask.array as da

    arr = da.asarray(arr)
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
    worker that owns it (nothing goes through the driver until the array is computed). With ``grid`` (a block-grid shape whose product is ``len(names)``), N-D
    pages given in C order of that grid are reassembled with ``dask.array.block``. Without ``grid``, N-D pages
    are concatenated along axis 0.
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

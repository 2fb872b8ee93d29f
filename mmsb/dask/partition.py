"""Partitioners for sharded pages: contiguous blocks, and graph-aware orderings that keep cut edges low.

Sharded pages are split into contiguous blocks of positions, so a partition is an *ordering* of the vertices:
:func:`partition` returns a permutation (``order[k]`` is the vertex placed at position ``k``) for which contiguous
blocks cut few edges, the block boundaries, and the cut fraction. Relabel the graph with it before creating the
pages (``A[order][:, order]``, ``x[order]``) and read results back through ``inverse``.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from mmsb.dask._shard_worker import bounds_for


def cut_fraction(A: Any, bounds: np.ndarray, order: Optional[np.ndarray] = None) -> float:
    """The fraction of the stored entries ``A[i, j]`` whose row and column fall in different blocks of
    ``bounds`` (after relabelling by ``order`` when given). ``A`` is square, scipy sparse."""
    import scipy.sparse as sp

    A = sp.csr_array(A)
    if order is not None:
        A = A[order][:, order]
    coo = A.tocoo()
    if not coo.nnz:
        return 0.0
    bounds = np.asarray(bounds)
    br = np.searchsorted(bounds, coo.row, "right")
    bc = np.searchsorted(bounds, coo.col, "right")
    return float(np.count_nonzero(br != bc)) / coo.nnz


def partition(A: Any, k: int, method: str = "contiguous") -> dict:
    """A partition of the square sparse matrix ``A`` into ``k`` contiguous blocks.

    ``method``: ``"contiguous"`` (the vertices as numbered), ``"rcm"`` (reverse Cuthill-McKee: a small bandwidth,
    so neighbours land in the same or the next block) or ``"bfs"`` (breadth-first order from vertex 0, and from
    the next unvisited vertex for each further component). Returns ``{"order", "inverse", "bounds",
    "cut_fraction", "method"}``; ``order`` is None for ``"contiguous"``.
    """
    import scipy.sparse as sp
    import scipy.sparse.csgraph as csgraph

    A = sp.csr_array(A)
    n = A.shape[0]
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"partition needs a square matrix, got shape {A.shape}")
    if not 1 <= k <= max(n, 1):
        raise ValueError(f"k={k} blocks for {n} vertices")
    sym = (A + A.T).tocsr()
    if method == "contiguous":
        order = None
    elif method == "rcm":
        order = np.asarray(csgraph.reverse_cuthill_mckee(sp.csr_matrix(sym), symmetric_mode=True), dtype=np.int64)
    elif method == "bfs":
        seen = np.zeros(n, dtype=bool)
        parts = []
        for start in range(n):
            if seen[start]:
                continue
            comp = csgraph.breadth_first_order(sp.csr_matrix(sym), start, directed=False, return_predecessors=False)
            seen[comp] = True
            parts.append(comp)
        order = np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)
    else:
        raise ValueError(f"unknown partition method {method!r} (contiguous, rcm, bfs)")
    bounds = bounds_for(n, k)
    inverse = None
    if order is not None:
        inverse = np.empty(n, dtype=np.int64)
        inverse[order] = np.arange(n, dtype=np.int64)
    return {"order": order, "inverse": inverse, "bounds": bounds, "method": method,
            "cut_fraction": cut_fraction(A, bounds, order)}

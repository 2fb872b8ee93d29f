"""Type stubs for the compiled semiring sparse kernels (twin: ``mmsb._ref.spmv``)."""
from typing import Any, Optional

import numpy as np
import numpy.typing as npt

__all__ = ["spmv", "push", "closure", "set_threads", "threads"]

def spmv(
    indptr: npt.ArrayLike,
    indices: npt.ArrayLike,
    data: npt.ArrayLike,
    x: npt.ArrayLike,
    y: np.ndarray,
    add_op: int,
    mul_op: int,
    zero: Any,
    rows: npt.ArrayLike | None = None,
    nthreads: int = 0,
    old_out: Optional[np.ndarray] = None,
) -> Optional[int]:
    """Pull SpMV ``y[i] = zero ⊕ (⊕_k data[k] ⊗ x[indices[k]])`` for all rows or only ``rows`` (in place); with
    ``old_out`` (all rows), y's old values go there and the number of changed rows is returned."""

def push(
    indptr_t: npt.ArrayLike,
    indices_t: npt.ArrayLike,
    data_t: npt.ArrayLike,
    idx: npt.ArrayLike,
    vals: npt.ArrayLike,
    y: np.ndarray,
    add_op: int,
    mul_op: int,
    zero: Any,
) -> npt.NDArray[np.int64]:
    """Sparse push with Aᵀ in CSR form; returns the sorted unique changed entries of ``y``."""

def closure(
    indptr_t: npt.ArrayLike,
    indices_t: npt.ArrayLike,
    data_t: npt.ArrayLike,
    x: np.ndarray,
    frontier: npt.ArrayLike,
    add_op: int,
    mul_op: int,
    zero: Any,
    old_out: Optional[npt.NDArray[Any]] = ...,
    weight_range: Optional[tuple[float, float]] = ...,
    nthreads: int = ...,
) -> npt.NDArray[np.int64]:
    """Semi-naive least fixpoint (idempotent ⊕) from ``frontier``; returns the sorted unique changed entries."""
def set_threads(max_threads: int, cpus: int, adapt: bool = True) -> None: ...
def threads() -> int: ...
def set_gather_ahead(entries: int) -> int: ...
def set_vector_gather(on: bool) -> bool: ...

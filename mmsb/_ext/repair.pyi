"""Type stubs for the compiled matrix-page kernels (twin: ``mmsb._ref.repair``)."""
from typing import Any, Optional

import numpy as np
import numpy.typing as npt

__all__ = ["assign", "locate", "reach", "reach_build", "repair", "set_parallel_min", "set_threads", "threads",
           "update"]

OK: int
TOO_LARGE: int
NAN_ENTRY: int

def locate(indptr: npt.ArrayLike, indices: npt.ArrayLike, data: npt.ArrayLike, rows: npt.ArrayLike,
           cols: npt.ArrayLike, zero: Any, free: Any = None) -> tuple[np.ndarray, npt.NDArray[np.int64]]:
    """``(values, positions)`` of the entries ``(rows[k], cols[k])`` (-1 and ``zero`` where absent)."""

def assign(indptr: npt.ArrayLike, indices: np.ndarray, data: np.ndarray, ncols: int, rows: npt.ArrayLike,
           cols: npt.ArrayLike, vals: npt.ArrayLike, present: npt.ArrayLike, pos: Optional[npt.ArrayLike] = None,
           free: Any = None) -> tuple[int, bool, npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Set or remove entries in place; ``(misses, claimed, positions, miss)``."""

def update(indptr: npt.ArrayLike, indices: np.ndarray, data: np.ndarray, ncols: int, keys: npt.ArrayLike,
           vals: npt.ArrayLike, op: int, zero: Any, free: Any = None, indptr_t: Optional[npt.ArrayLike] = None,
           indices_t: Optional[np.ndarray] = None, data_t: Optional[np.ndarray] = None) -> Optional[tuple]:
    """Merge entries (flat keys) into A and its transpose in place; None when nothing changes (old and new values
    in the dtype of ``data``)."""

def repair(indptr: npt.ArrayLike, indices: npt.ArrayLike, data: npt.ArrayLike, indptr_t: npt.ArrayLike,
           indices_t: npt.ArrayLike, data_t: npt.ArrayLike, y: np.ndarray, src: npt.ArrayLike, keys: npt.ArrayLike,
           old: npt.ArrayLike, add_op: int, mul_op: int, zero: Any, free: Any = None, limit: int = -1,
           mark: Optional[np.ndarray] = None, old_out: Optional[np.ndarray] = None,
           ) -> tuple[int, Optional[npt.NDArray[np.int64]], Optional[np.ndarray], int, bool]:
    """Repair the closure after entries of its matrix changed; ``(status, idx, old_values, region, nonfinite)``
    (old values in the dtype of ``y``)."""

def reach_build(indptr_t: npt.ArrayLike, indices_t: npt.ArrayLike, data_t: npt.ArrayLike, y: np.ndarray,
                src: npt.ArrayLike, level: np.ndarray) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
    """Levels of a reachability closure from scratch (one BFS); ``y`` set from them; ``(idx, old_values)``."""

def reach(indptr: npt.ArrayLike, indices: npt.ArrayLike, data: npt.ArrayLike, indptr_t: npt.ArrayLike,
          indices_t: npt.ArrayLike, data_t: npt.ArrayLike, y: np.ndarray, src: npt.ArrayLike, level: np.ndarray,
          keys: npt.ArrayLike, old: npt.ArrayLike, points: npt.ArrayLike, mark: Optional[np.ndarray] = None,
          old_out: Optional[np.ndarray] = None) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8], int]:
    """Repair a reachability closure and its levels after entries and sources changed; ``(idx, old_values,
    region)``."""


def set_threads(max_threads: int, cpus: int, adapt: bool = True) -> None:
    """Configure the thread policy of the threaded update (mmsb/_ext/_threads.h)."""

def threads() -> int:
    """The number of threads a parallel kernel of this module would use now."""

def set_parallel_min(n: int) -> int:
    """The number of keys from which update runs on several threads; returns the previous one."""

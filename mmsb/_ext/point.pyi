"""Type stubs for the compiled point-wave kernels (twin: ``mmsb._ref.point``)."""
from typing import Optional

import numpy as np

__all__ = ["entry_push", "link_push", "set_parallel_min", "set_threads", "threads"]

def link_push(
    indptr_t: np.ndarray,
    indices_t: np.ndarray,
    data_t: np.ndarray,
    idx: np.ndarray,
    new: np.ndarray,
    old: np.ndarray,
    y: np.ndarray,
    err: Optional[np.ndarray],
    add_op: int,
    mul_op: int,
    tol: float,
) -> Optional[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]:
    """One link step ``y ⊕= A ⊗ Δx`` for a few changed source positions, fused; None where the general step is
    needed (nothing touched)."""

def entry_push(
    keys: np.ndarray,
    old: np.ndarray,
    new: np.ndarray,
    ncols: int,
    x: np.ndarray,
    y: np.ndarray,
    err: Optional[np.ndarray],
    mul_op: int,
    zero: float,
    tol: float,
    after: bool = False,
) -> tuple:
    """One link step ``y += (A' - A) ⊗ x`` after entries of A changed (float64, ⊕ = plus), fused: ``(rows, before,
    bad)``, and ``y[rows]`` after the push when ``after`` (see the compiled kernel); threaded for large changes."""

def set_threads(max_threads: int, cpus: int, adapt: bool = True) -> None:
    """Configure the thread policy of the threaded entry_push (mmsb/_ext/_threads.h)."""

def threads() -> int:
    """The number of threads a parallel kernel of this module would use now."""

def set_parallel_min(n: int) -> int:
    """The number of keys from which entry_push runs on several threads; returns the previous one."""

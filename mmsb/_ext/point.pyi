"""Type stubs for the compiled point-wave kernels (twin: ``mmsb._ref.point``)."""
from typing import Optional

import numpy as np

__all__ = ["entry_push", "link_push"]

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
) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """One link step ``y += (A' - A) ⊗ x`` after entries of A changed (float64, ⊕ = plus), fused: ``(rows, before,
    bad)`` (see the compiled kernel)."""

"""Chooses the compiled kernels (mmsb._ext) or their pure-numpy twins (mmsb._ref).

``MMSB_PUREPYTHON=1`` selects the twins. If the extensions were not built, the twins are used with a warning.
"""
from __future__ import annotations

import os
import warnings

KIND = "python"
if os.environ.get("MMSB_PUREPYTHON") == "1":
    from mmsb._ref import alloc, codecs, cpu, merge, packed, spmv
else:
    try:
        from mmsb._ext import alloc, codecs, cpu, merge, packed, spmv
        KIND = "compiled"
    except ImportError as exc:  # pragma: no cover - only on a broken install
        warnings.warn(f"mmsb: compiled kernels unavailable ({exc}); using the numpy reference kernels",
                      RuntimeWarning, stacklevel=2)
        from mmsb._ref import alloc, codecs, cpu, merge, packed, spmv

__all__ = ["KIND", "alloc", "codecs", "cpu", "merge", "packed", "spmv"]

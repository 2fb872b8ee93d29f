"""mmsb: a paged, durable, semiring-algebraic state buffer with incremental propagation.

>>> import mmsb
>>> buf = mmsb.open(None)
>>> p = buf.create_page("x", 4, semiring="min_plus")

``mmsb.hookimpl``, ``mmsb.verify``, ``mmsb.Report`` and the submodules ``mmsb.testing``, ``mmsb.plugins`` and
``mmsb.codecs`` load on first use, so that ``import mmsb`` stays cheap.
"""
import importlib
from typing import Any

from mmsb import errors, semirings
from mmsb._kernels import KIND as kernels
from mmsb.buffer import Buffer, LogView
from mmsb.delta import Delta
from mmsb.graph import Graph
from mmsb.pages import Page
from mmsb.semiring import Semiring
from mmsb.store import open
from mmsb.txn import Transaction, with_transaction


__version__ = "0.1.0"

__all__ = ["Buffer", "Delta", "Graph", "LogView", "Page", "Report", "Semiring", "Transaction", "errors",
           "hookimpl", "kernels", "open", "semirings", "verify", "with_transaction", "__version__"]

_LAZY = {"hookimpl": ("mmsb.plugins", "hookimpl"), "Report": ("mmsb.verification", "Report"),
         "verify": ("mmsb.verification", "verify")}
_SUBMODULES = ("testing", "plugins", "codecs", "hookspecs")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"mmsb.{name}")
    raise AttributeError(f"module 'mmsb' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))

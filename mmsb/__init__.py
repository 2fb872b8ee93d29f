"""mmsb: a paged, durable, semiring-algebraic state buffer with incremental propagation.

>>> import mmsb
>>> buf = mmsb.open(None)
>>> p = buf.create_page("x", 4, semiring="min_plus")

``import mmsb`` loads numpy, the semirings, the errors and the kernels; the buffer, the log, the store, the
plugin manager and the submodules ``mmsb.testing``, ``mmsb.plugins`` and ``mmsb.codecs`` load on first use of a
name that needs them (``mmsb.open``, ``mmsb.Buffer``, ``mmsb.hookimpl``, ``mmsb.verify``...), and blosc2 only
when a codec first needs it.
"""
import importlib
from typing import TYPE_CHECKING, Any

from mmsb import errors, semirings
from mmsb._kernels import KIND as kernels
from mmsb.semiring import Semiring

if TYPE_CHECKING:  # pragma: no cover - the names below load lazily at run time
    from mmsb.buffer import Buffer, LogView
    from mmsb.delta import Delta
    from mmsb.graph import Graph
    from mmsb.open_buffer import open
    from mmsb.pages import Page
    from mmsb.plugins import hookimpl
    from mmsb.txn import Transaction, with_transaction
    from mmsb.verification import Report, verify

__version__ = "0.1.0"

__all__ = ["Buffer", "Delta", "Graph", "LogView", "Page", "Report", "Semiring", "Transaction", "errors",
           "hookimpl", "kernels", "open", "semirings", "verify", "with_transaction", "__version__"]

_LAZY = {"Buffer": "mmsb.buffer", "LogView": "mmsb.buffer", "Delta": "mmsb.delta", "Graph": "mmsb.graph",
         "Page": "mmsb.pages", "hookimpl": "mmsb.plugins", "open": "mmsb.open_buffer", "Transaction": "mmsb.txn",
         "with_transaction": "mmsb.txn", "Report": "mmsb.verification", "verify": "mmsb.verification"}
_SUBMODULES = ("testing", "plugins", "codecs", "hookspecs")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"mmsb.{name}")
    raise AttributeError(f"module 'mmsb' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))

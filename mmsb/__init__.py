"""mmsb: a paged, durable, semiring-algebraic state buffer with incremental propagation.

>>> import mmsb
>>> buf = mmsb.open(None)
>>> p = buf.create_page("x", 4, semiring="min_plus")
"""
from mmsb import errors, semirings
from mmsb._kernels import KIND as kernels
from mmsb.buffer import Buffer, LogView
from mmsb.delta import Delta
from mmsb.graph import Graph
from mmsb.pages import Page
from mmsb.plugins import hookimpl
from mmsb.semiring import Semiring
from mmsb.store import open
from mmsb.txn import Transaction, with_transaction
from mmsb.verification import Report, verify


__version__ = "0.1.0"

__all__ = ["Buffer", "Delta", "Graph", "LogView", "Page", "Report", "Semiring", "Transaction", "errors",
           "hookimpl", "kernels", "open", "semirings", "verify", "with_transaction", "__version__"]

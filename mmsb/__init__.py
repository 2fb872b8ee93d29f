"""mmsb: a paged, durable, semiring-algebraic state buffer with incremental propagation."""
from mmsb import errors
from mmsb.semiring import Semiring

__version__ = "0.1.0"

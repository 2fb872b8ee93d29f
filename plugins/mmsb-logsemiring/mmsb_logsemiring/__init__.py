"""Example mmsb plugin: the log semiring and the Łukasiewicz semiring.

Installed, it is found through the entry point ``logsemiring = "mmsb_logsemiring"`` of group ``"mmsb"``;
``mmsb.semirings.get("log")`` then loads it on first use.

``log``
    ``(logaddexp, +, -inf, 0)`` over log-probabilities: ``a ⊕ b = log(exp a + exp b)``. A ``link`` in this
    semiring sums probabilities of paths without underflow (forward algorithm, marginals). ⊕ is not
    idempotent, so a ``closure`` needs ``convergence_bound`` on acyclic graphs or converges only approximately.
``lukasiewicz``
    ``(max, max(0, a + b - 1), 0, 1)`` on truth degrees in [0, 1]: the Łukasiewicz t-norm of fuzzy logic. A
    ``closure`` gives the strongest chain of fuzzy implications between facts; ⊕ is idempotent, so it always
    converges.
"""
from __future__ import annotations

import numpy as np

from mmsb.plugins import hookimpl
from mmsb.semiring import Semiring

__version__ = "0.1.0"


def lukasiewicz_tnorm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The Łukasiewicz t-norm ``max(0, a + b - 1)``, elementwise, in the inputs' float dtype."""
    a, b = np.asarray(a), np.asarray(b)
    s = a + b
    return np.maximum(s - s.dtype.type(1), s.dtype.type(0))


LOG = Semiring(
    "log", np.logaddexp, np.add, float("-inf"), 0.0, idempotent=False,
    dtypes=("float32", "float64"),
    cuda_add="(a == b) ? a + 0.6931471805599453 : fmax(a, b) + log1p(exp(-fabs(a - b)))",
    cuda_mul="a + b",
    samples=(float("-inf"), -3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0),
)
"""The log semiring; samples are small dyadic values, so the law checks meet no precision trouble."""

LUKASIEWICZ = Semiring(
    "lukasiewicz", np.maximum, lukasiewicz_tnorm, 0.0, 1.0, idempotent=True, terminal=1.0,
    dtypes=("float32", "float64"),
    cuda_add="fmax(a, b)",
    cuda_mul="fmax(a + b - 1.0, 0.0)",
    samples=(0.0, 0.125, 0.25, 0.5, 0.625, 0.75, 0.875, 1.0),
)
"""The Łukasiewicz semiring on [0, 1] (its laws hold on that interval only, hence the samples)."""


@hookimpl
def mmsb_register_semirings(registry) -> None:
    """Register :data:`LOG` and :data:`LUKASIEWICZ`."""
    registry.register(LOG)
    registry.register(LUKASIEWICZ)


__all__ = ["LOG", "LUKASIEWICZ", "lukasiewicz_tnorm", "mmsb_register_semirings"]

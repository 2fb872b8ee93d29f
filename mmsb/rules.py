"""Rules: how a derived page depends on others (``link``, ``derive``, ``closure``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from mmsb.csr import CSR, as_csr
from mmsb.delta import SchemaOp

__all__ = ["CSR", "Rule", "as_csr"]


@dataclass
class Rule:
    """One rule into ``dst``. ``kind`` is ``link``, ``derive`` or ``closure``."""

    id: int
    kind: str
    dst: str
    srcs: list
    semiring: Any = None
    matrix: Optional[CSR] = None
    fn: Optional[Callable] = None
    fn_name: Optional[str] = None
    #: the matrix page the rule reads (its second source), or None for a matrix kept with the rule
    matrix_page: Optional[str] = None
    #: the engine's kernel arguments for this rule (derived state, rebuilt when the matrix changes; never logged)
    kernel: Any = field(default=None, repr=False, compare=False)

    @property
    def active(self) -> bool:
        return self.kind != "derive" or self.fn is not None

    def to_schema(self) -> SchemaOp:
        """The rule as a log/checkpoint record (matrices as arrays, functions by name, never pickled)."""
        payload = {"id": self.id, "kind": self.kind, "dst": self.dst, "srcs": list(self.srcs),
                   "semiring": self.semiring.name if self.semiring is not None else None,
                   "function": self.fn_name}
        arrays = {}
        if self.matrix_page is not None:
            payload["matrix_page"] = self.matrix_page
        elif self.matrix is not None:
            payload["shape"] = list(self.matrix.shape)
            arrays = {"indptr": self.matrix.indptr, "indices": self.matrix.indices, "data": self.matrix.data}
        return SchemaOp("rule_added", payload, arrays)

"""Test helpers for semiring authors: :func:`check_semiring` checks the laws with hypothesis.

``mmsb`` itself never imports this module, so hypothesis is needed only by those who use it::

    from mmsb.testing import check_semiring

    def test_my_semiring():
        check_semiring(MY_SEMIRING)
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mmsb.semiring import Semiring, _scalar_for

_RTOL = {2: 1e-2, 4: 1e-5, 8: 1e-9}
_FLOAT_RANGE = 1e3
_INT_RANGE = 1000


def check_semiring(sr: Semiring, dtype: Any = None, max_examples: int = 200, rtol: Optional[float] = None,
                   atol: float = 1e-12) -> None:
    """Check the semiring laws of ``sr`` on values of ``dtype`` drawn by hypothesis; raise AssertionError if one fails.

    Checked: ⊕ associative, commutative, ``zero`` its identity; ⊗ associative, ``one`` its identity; ⊗
    distributes over ⊕ on both sides; ``zero`` annihilates ⊗ on finite values; the declared flags
    (``idempotent``: a ⊕ a = a; ``invertible``: (a ⊕ b) ⊖ b = a on finite values; ``terminal`` absorbs ⊕).

    Values come from ``sr.samples`` when the semiring declares them (a semiring on a sub-domain, such as
    ``max_times`` on non-negative values), else from finite floats (or integers) in a modest range, or bools;
    ``zero`` and ``one`` are always in the domain. ``dtype=None`` means the samples' dtype, else float64, else
    the semiring's first supported dtype; an unsupported ``dtype`` raises :class:`~mmsb.errors.SemiringError`.
    Floating-point results are compared with a relative tolerance ``rtol`` (by default 1e-9 for float64, 1e-5
    for float32) scaled by the largest magnitude met while evaluating both sides, plus ``atol``.
    """
    dt = _pick_dtype(sr, dtype)
    if rtol is None:
        rtol = _RTOL.get(dt.itemsize, 1e-9) if dt.kind == "f" else 0.0
    zero, one = sr.zero_for(dt), sr.one_for(dt)
    values = _domain(sr, dt, zero, one)
    laws = _Laws(sr, dt, rtol, atol)

    @settings(max_examples=max_examples, deadline=None)
    @given(values, values, values)
    @example(zero, zero, zero)
    @example(one, one, one)
    @example(zero, one, zero)
    @example(one, zero, one)
    def run(a: Any, b: Any, c: Any) -> None:
        with np.errstate(all="ignore"):
            laws.check(a, b, c)

    run()


def _pick_dtype(sr: Semiring, dtype: Any) -> np.dtype:
    if dtype is None:
        if sr.samples is not None and sr.supports(np.asarray(sr.samples).dtype):
            return np.asarray(sr.samples).dtype
        if sr.supports("float64"):
            return np.dtype("float64")
        if sr.dtypes:
            return np.dtype(sr.dtypes[0])
    return sr.check_dtype(dtype)


def _domain(sr: Semiring, dt: np.dtype, zero: Any, one: Any) -> st.SearchStrategy:
    if sr.samples is not None:
        samples = sorted({_scalar_for(v, dt).item() for v in sr.samples} | {zero.item(), one.item()})
        return st.sampled_from(samples).map(dt.type)
    if dt.kind == "b":
        return st.booleans().map(dt.type)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = max(int(info.min), -_INT_RANGE), min(int(info.max), _INT_RANGE)
        drawn = st.integers(lo, hi)
    else:
        width = min(dt.itemsize * 8, 64)
        limit = float(min(_FLOAT_RANGE, np.floor(np.cbrt(float(np.finfo(dt).max)) / 2)))
        grid = st.integers(-int(limit) * 8, int(limit) * 8).map(lambda k: k / 8)
        drawn = st.one_of(grid, st.floats(-limit, limit, allow_nan=False, allow_infinity=False,
                                          allow_subnormal=False, width=width))
    return st.one_of(drawn.map(dt.type), st.sampled_from([zero, one]))


class _Laws:
    """Evaluates the laws on three values of one dtype and asserts them with readable messages."""

    def __init__(self, sr: Semiring, dt: np.dtype, rtol: float, atol: float) -> None:
        self.sr, self.dt, self.rtol, self.atol = sr, dt, rtol, atol
        self.zero, self.one = sr.zero_for(dt), sr.one_for(dt)
        self.scale = 0.0

    def add(self, a: Any, b: Any) -> Any:
        return self._op(self.sr.add_arrays, a, b)

    def mul(self, a: Any, b: Any) -> Any:
        return self._op(self.sr.mul_arrays, a, b)

    def _op(self, f: Callable, a: Any, b: Any) -> Any:
        out = f(np.asarray(a, dtype=self.dt), np.asarray(b, dtype=self.dt))[()]
        self._track(a, b, out)
        return out

    def _track(self, *xs: Any) -> None:
        if self.dt.kind == "f":
            for x in xs:
                x = float(x)
                if np.isfinite(x):
                    self.scale = max(self.scale, abs(x))

    def same(self, x: Any, y: Any) -> bool:
        if self.dt.kind != "f":
            return bool(x == y)
        x, y = float(x), float(y)
        if np.isnan(x) or np.isnan(y):
            return np.isnan(x) and np.isnan(y)
        if np.isinf(x) or np.isinf(y):
            return x == y
        return abs(x - y) <= self.rtol * max(self.scale, abs(x), abs(y)) + self.atol

    def law(self, name: str, lhs_text: str, lhs: Any, rhs_text: str, rhs: Any) -> None:
        if not self.same(lhs, rhs):
            raise AssertionError(f"semiring {self.sr.name!r} on {self.dt.name}: {name} fails: "
                                 f"{lhs_text} = {_show(lhs)} ≠ {_show(rhs)} = {rhs_text}")

    def finite(self, *xs: Any) -> bool:
        return self.dt.kind != "f" or all(np.isfinite(float(x)) for x in xs)

    def check(self, a: Any, b: Any, c: Any) -> None:
        self.scale = 0.0
        self._track(a, b, c)
        try:
            self._check(a, b, c)
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(f"semiring {self.sr.name!r} on {self.dt.name}: evaluating the operations on "
                                 f"{_show(a)}, {_show(b)}, {_show(c)} raised {type(exc).__name__}: {exc}") from exc

    def _check(self, a: Any, b: Any, c: Any) -> None:
        add, mul, law, z, o = self.add, self.mul, self.law, self.zero, self.one
        sa, sb, sc = _show(a), _show(b), _show(c)
        ab, bc = f"{sa} ⊕ {sb}", f"{sb} ⊕ {sc}"
        law("⊕ associative", f"({ab}) ⊕ {sc}", add(add(a, b), c), f"{sa} ⊕ ({bc})", add(a, add(b, c)))
        law("⊕ commutative", ab, add(a, b), f"{sb} ⊕ {sa}", add(b, a))
        law("zero is the identity of ⊕", f"{sa} ⊕ zero", add(a, z), "a", a)
        law("zero is the identity of ⊕", f"zero ⊕ {sa}", add(z, a), "a", a)
        law("⊗ associative", f"({sa} ⊗ {sb}) ⊗ {sc}", mul(mul(a, b), c),
            f"{sa} ⊗ ({sb} ⊗ {sc})", mul(a, mul(b, c)))
        law("one is the identity of ⊗", f"{sa} ⊗ one", mul(a, o), "a", a)
        law("one is the identity of ⊗", f"one ⊗ {sa}", mul(o, a), "a", a)
        law("⊗ distributes over ⊕ (left)", f"{sa} ⊗ ({bc})", mul(a, add(b, c)),
            f"({sa} ⊗ {sb}) ⊕ ({sa} ⊗ {sc})", add(mul(a, b), mul(a, c)))
        law("⊗ distributes over ⊕ (right)", f"({bc}) ⊗ {sa}", mul(add(b, c), a),
            f"({sb} ⊗ {sa}) ⊕ ({sc} ⊗ {sa})", add(mul(b, a), mul(c, a)))
        if self.finite(a):
            law("zero annihilates ⊗", f"{sa} ⊗ zero", mul(a, z), "zero", z)
            law("zero annihilates ⊗", f"zero ⊗ {sa}", mul(z, a), "zero", z)
        if self.sr.idempotent:
            law("idempotent=True: a ⊕ a == a", f"{sa} ⊕ {sa}", add(a, a), "a", a)
        if self.sr.invertible and self.finite(a, b):
            if self.sr.sub is None:
                raise AssertionError(f"semiring {self.sr.name!r}: declared invertible (invertible=True) but the argument "
                                     f"sub=, the inverse of ⊕, was not given (e.g. sub=np.subtract for add=np.add)")
            back = np.asarray(self.sr.sub(np.asarray(add(a, b), dtype=self.dt), np.asarray(b, dtype=self.dt)))
            law("invertible=True: sub(a ⊕ b, b) == a", f"({ab}) ⊖ {sb}", back.astype(self.dt)[()], "a", a)
        if self.sr.terminal is not None:
            t = _scalar_for(self.sr.terminal, self.dt)
            law("terminal=: a ⊕ terminal == terminal", f"{sa} ⊕ terminal", add(a, t), "terminal", t)


def _show(x: Any) -> str:
    """A numpy scalar as its plain Python repr (``1.5``, not ``np.float64(1.5)``)."""
    return repr(x.item() if isinstance(x, np.generic) else x)

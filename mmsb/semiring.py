"""The :class:`Semiring`: ``(⊕, ⊗, zero, one)`` with flags, dtype handling, folds and law checks."""
from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from mmsb import _ops
from mmsb.errors import SemiringError

NUMERIC_KINDS = "biuf"


def _is_ufunc(f: Any) -> bool:
    return isinstance(f, np.ufunc) and f.nin == 2


class Semiring:
    """A semiring ``(add, mul, zero, one)`` over numpy arrays.

    ``add`` and ``mul`` are binary numpy ufuncs (or vectorised callables ``f(a, b) -> array``).
    ``idempotent``: ``a ⊕ a == a``; ``invertible``: ⊕ has an inverse, given by ``sub`` (``np.subtract``
    is assumed for ``np.add``). ``terminal`` is an absorbing element of ⊕ (e.g. True for or), used as a cutoff.
    ``dtypes`` limits the dtypes a page of this semiring may have (default: every numeric dtype and bool).
    ``convergence_bound`` declares that closure iterations converge within that many rounds for a
    non-idempotent ⊕. ``cuda_add`` / ``cuda_mul`` are optional CUDA C expressions over ``a`` and ``b`` that
    give the semiring GPU kernels.
    """

    __slots__ = ("name", "add", "mul", "zero", "one", "idempotent", "invertible", "terminal", "dtypes", "sub",
                 "convergence_bound", "cuda_add", "cuda_mul", "add_code", "mul_code", "builtin", "samples",
                 "provider")

    def __init__(self, name: str, add: Callable, mul: Callable, zero: Any, one: Any, idempotent: bool = False,
                 invertible: bool = False, *, terminal: Any = None, dtypes: Optional[Sequence[str]] = None,
                 sub: Optional[Callable] = None, convergence_bound: Optional[int] = None,
                 cuda_add: Optional[str] = None, cuda_mul: Optional[str] = None,
                 samples: Optional[Sequence[Any]] = None):
        if not isinstance(name, str) or not name.isidentifier():
            raise SemiringError(f"semiring name must be an identifier, got {name!r}")
        if not callable(add) or not callable(mul):
            raise SemiringError(f"semiring {name!r}: add and mul must be callables (numpy ufuncs preferred)")
        self.name = name
        self.add = add
        self.mul = mul
        self.zero = zero
        self.one = one
        self.idempotent = bool(idempotent)
        self.invertible = bool(invertible)
        self.terminal = terminal
        self.dtypes = tuple(np.dtype(d).name for d in dtypes) if dtypes else None
        if sub is None and add is np.add:
            sub = np.subtract
        self.sub = sub
        self.convergence_bound = convergence_bound
        self.cuda_add = cuda_add
        self.cuda_mul = cuda_mul
        self.add_code: Optional[int] = None
        self.mul_code: Optional[int] = None
        self.builtin = False
        self.samples = tuple(samples) if samples is not None else None
        self.provider = "runtime"

    def __repr__(self) -> str:
        flags = [f for f in ("idempotent", "invertible") if getattr(self, f)]
        return f"Semiring({self.name!r}{', ' if flags else ''}{', '.join(flags)})"

    def __reduce__(self):
        # Pickled by name (for Dask workers); never as code.
        return (_semiring_by_name, (self.name,))

    # -- dtypes -------------------------------------------------------------------------------------------
    def supports(self, dtype: Any) -> bool:
        dt = np.dtype(dtype)
        if dt.kind not in NUMERIC_KINDS:
            return False
        return self.dtypes is None or dt.name in self.dtypes

    def check_dtype(self, dtype: Any, page: str = "?") -> np.dtype:
        dt = np.dtype(dtype)
        if not self.supports(dt):
            allowed = ", ".join(self.dtypes) if self.dtypes else "numeric and bool"
            raise SemiringError(f"page {page!r}: semiring {self.name!r} does not support dtype {dt.name} "
                                f"(supported: {allowed})")
        return dt

    def zero_for(self, dtype: Any) -> Any:
        """The additive identity as a scalar of ``dtype`` (±inf become the integer max/min, True/False for bool)."""
        return _scalar_for(self.zero, np.dtype(dtype))

    def one_for(self, dtype: Any) -> Any:
        """The multiplicative identity as a scalar of ``dtype``."""
        return _scalar_for(self.one, np.dtype(dtype))

    def codes_for(self, dtype: Any) -> Optional[tuple[int, int]]:
        """Kernel op codes ``(add, mul)`` for a built-in semiring on ``dtype``, or None for a numpy-only one."""
        if self.add_code is None:
            return None
        if (dtype.kind if isinstance(dtype, np.dtype) else np.dtype(dtype).kind) == "b":
            return _BOOL_CODE[self.add_code], _BOOL_CODE[self.mul_code]
        return self.add_code, self.mul_code

    # -- array operations ---------------------------------------------------------------------------------
    def add_arrays(self, a: Any, b: Any) -> np.ndarray:
        """Elementwise ``a ⊕ b``, in ``a``'s dtype."""
        a = np.asarray(a)
        out = self.add(a, np.asarray(b))
        return np.asarray(out).astype(a.dtype, copy=False)

    def mul_arrays(self, a: Any, b: Any) -> np.ndarray:
        """Elementwise ``a ⊗ b``, in ``a``'s dtype."""
        a = np.asarray(a)
        out = self.mul(a, np.asarray(b))
        return np.asarray(out).astype(a.dtype, copy=False)

    def fold_add(self, x: Any) -> Any:
        """⊕ over all elements (the zero for an empty array)."""
        return self._fold(self.add, x, self.zero)

    def fold_mul(self, x: Any) -> Any:
        """⊗ over all elements (the one for an empty array)."""
        return self._fold(self.mul, x, self.one)

    @staticmethod
    def _fold(op: Callable, x: Any, identity: Any) -> Any:
        x = np.asarray(x).ravel()
        if x.size == 0:
            return _scalar_for(identity, x.dtype) if x.dtype.kind in NUMERIC_KINDS else identity
        if _is_ufunc(op):
            return op.reduce(x)
        return functools.reduce(lambda a, b: op(a, b), x[1:], x[0])

    def accumulate(self, page_array: np.ndarray, index: Any, values: Any) -> None:
        """In place: ``page_array[index[k]] = page_array[index[k]] ⊕ values[k]``, duplicates ⊕-combined."""
        from mmsb import _kernels

        index = np.ascontiguousarray(index, dtype=np.int64)
        values = np.ascontiguousarray(values, dtype=page_array.dtype)
        if index.shape != values.shape:
            raise ValueError(f"index has {index.size} entries but values has {values.size}")
        flat = page_array.reshape(-1)
        codes = self.codes_for(page_array.dtype)
        if codes is not None and page_array.flags.c_contiguous:
            if index.size and (index.min() < 0 or index.max() >= flat.size):
                raise IndexError(f"index out of range [0, {flat.size})")
            _kernels.merge.scatter(_kview(flat), index, _kview(values), codes[0], False)
        elif _is_ufunc(self.add):
            self.add.at(flat, index, values)
        else:
            for i, v in zip(index.tolist(), values):
                flat[i] = self.add(flat[i], v)

    def reduce_duplicates(self, index: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sort a sparse delta and ⊕-combine duplicate indices (numpy path for any semiring)."""
        order = np.argsort(index, kind="stable")
        idx, vals = index[order], values[order]
        if idx.size == 0:
            return idx, vals
        starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
        if starts.size == idx.size:
            return idx, vals
        if _is_ufunc(self.add):
            out = self.add.reduceat(vals, starts).astype(vals.dtype, copy=False)
        else:
            ends = np.r_[starts[1:], idx.size]
            out = np.array([self._fold(self.add, vals[s:e], self.zero) for s, e in zip(starts, ends)],
                           dtype=vals.dtype)
        return idx[starts], out


def _kview(a: np.ndarray) -> np.ndarray:
    """Kernels see bool arrays as uint8."""
    return a.view(np.uint8) if a.dtype == np.bool_ else a


_BOOL_CODE = {_ops.OP_PLUS: _ops.OP_MAX, _ops.OP_TIMES: _ops.OP_MIN, _ops.OP_MIN: _ops.OP_MIN,
              _ops.OP_MAX: _ops.OP_MAX}


def _scalar_for(value: Any, dt: np.dtype) -> Any:
    if dt.kind == "b":
        if isinstance(value, (float, np.floating)) and np.isinf(value):
            return np.bool_(value > 0)
        return np.bool_(value)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if isinstance(value, (float, np.floating)) and np.isinf(value):
            return dt.type(info.max if value > 0 else info.min)
        if isinstance(value, (bool, np.bool_)):
            return dt.type(int(value))
        return dt.type(value)
    return dt.type(value)


def _semiring_by_name(name: str) -> "Semiring":
    from mmsb import semirings

    return semirings.get(name)


# -- law checks -----------------------------------------------------------------------------------------------
_FLOAT_SAMPLES = (0.0, 1.0, 2.0, 3.0, -1.0, 0.5, 7.0)


def _default_samples(sr: Semiring) -> tuple[np.ndarray, np.dtype]:
    if sr.samples is not None:
        arr = np.asarray(sr.samples)
        return arr, arr.dtype
    if sr.dtypes is not None and all(np.dtype(d).kind == "b" for d in sr.dtypes):
        return np.array([False, True]), np.dtype(bool)
    dt = np.dtype(sr.dtypes[0]) if sr.dtypes else np.dtype("float64")
    if dt.kind == "b":
        return np.array([False, True]), dt
    vals = [v for v in _FLOAT_SAMPLES if dt.kind == "f" or v == int(v)]
    if dt.kind == "u":
        vals = [v for v in vals if v >= 0]
    arr = np.array(vals, dtype=dt)
    extra = np.array([sr.zero_for(dt), sr.one_for(dt)], dtype=dt)
    return np.unique(np.concatenate([arr, extra])), dt


def _same(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        a, b = a.astype(np.float64), b.astype(np.float64)
        both_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
        with np.errstate(invalid="ignore"):
            close = np.isclose(a, b, rtol=1e-9, atol=1e-12)
        return bool(np.all(both_inf | close | (np.isnan(a) & np.isnan(b))))
    return bool(np.all(a == b))


def check_laws(sr: Semiring, samples: Optional[Iterable[Any]] = None) -> list[str]:
    """Check the semiring laws on sample values; return the list of violated laws (empty when all hold)."""
    if samples is None:
        vals, dt = _default_samples(sr)
    else:
        vals = np.asarray(list(samples))
        dt = vals.dtype
    zero, one = sr.zero_for(dt), sr.one_for(dt)
    add = lambda a, b: sr.add_arrays(np.asarray(a, dtype=dt), np.asarray(b, dtype=dt))  # noqa: E731
    mul = lambda a, b: sr.mul_arrays(np.asarray(a, dtype=dt), np.asarray(b, dtype=dt))  # noqa: E731
    problems: list[str] = []

    def law(name: str, ok: bool, *args: Any, hint: str = "") -> None:
        if not ok and not any(p.startswith(name) for p in problems):
            values = ", ".join(repr(a.item() if hasattr(a, "item") else a) for a in args)
            problems.append(f"{name} fails for {values}{hint}")

    try:
        with np.errstate(all="ignore"):
            for a, b in itertools.product(vals, repeat=2):
                law("⊕ commutative", _same(add(a, b), add(b, a)), a, b)
            for a in vals:
                law("zero is the identity of ⊕", _same(add(a, zero), a) and _same(add(zero, a), a), a)
                law("one is the identity of ⊗", _same(mul(a, one), a) and _same(mul(one, a), a), a)
                if dt.kind != "f" or np.isfinite(a):
                    law("zero annihilates ⊗", _same(mul(a, zero), zero) and _same(mul(zero, a), zero), a)
                if sr.idempotent:
                    law("idempotent=True: a ⊕ a == a", _same(add(a, a), a), a, hint=" (declared by idempotent=True)")
            for a, b, c in itertools.product(vals, repeat=3):
                law("⊕ associative", _same(add(add(a, b), c), add(a, add(b, c))), a, b, c)
                law("⊗ associative", _same(mul(mul(a, b), c), mul(a, mul(b, c))), a, b, c)
                law("⊗ distributes over ⊕ (left)", _same(mul(a, add(b, c)), add(mul(a, b), mul(a, c))), a, b, c)
                law("⊗ distributes over ⊕ (right)", _same(mul(add(b, c), a), add(mul(b, a), mul(c, a))), a, b, c)
            if sr.invertible:
                if sr.sub is None:
                    problems.append("invertible=True needs the argument sub=, the inverse of ⊕ with sub(a ⊕ b, b) == a "
                                    "(e.g. sub=np.subtract for add=np.add, sub=np.bitwise_xor for add=np.bitwise_xor); "
                                    "none was given")
                else:
                    for a, b in itertools.product(vals, repeat=2):
                        if dt.kind == "f" and not (np.isfinite(a) and np.isfinite(b)):
                            continue
                        back = np.asarray(sr.sub(add(a, b), np.asarray(b, dtype=dt))).astype(dt)
                        law("invertible=True: sub(a ⊕ b, b) == a", _same(back, a), a, b,
                            hint=" (the sub= given does not undo ⊕)")
            if sr.terminal is not None:
                t = _scalar_for(sr.terminal, dt)
                for a in vals:
                    law(f"terminal={sr.terminal!r}: a ⊕ terminal == terminal", _same(add(a, t), t), a,
                        hint=" (declared by terminal=)")
    except Exception as exc:  # a broken callable is a failed law, not a crash
        problems.append(f"evaluating the operations raised {type(exc).__name__}: {exc}")
    return problems


def _builtin(name: str, add: np.ufunc, mul: np.ufunc, zero: Any, one: Any, add_code: int, mul_code: int,
             idempotent: bool, invertible: bool = False, terminal: Any = None, dtypes: Any = None,
             cuda_add: str = "", cuda_mul: str = "", samples: Any = None) -> Semiring:
    sr = Semiring(name, add, mul, zero, one, idempotent=idempotent, invertible=invertible, terminal=terminal,
                  dtypes=dtypes, cuda_add=cuda_add, cuda_mul=cuda_mul, samples=samples)
    sr.add_code, sr.mul_code, sr.builtin, sr.provider = add_code, mul_code, True, "mmsb"
    return sr


inf = float("inf")
BUILTINS: tuple[Semiring, ...] = (
    _builtin("plus_times", np.add, np.multiply, 0.0, 1.0, _ops.OP_PLUS, _ops.OP_TIMES, False, True,
             cuda_add="a + b", cuda_mul="a * b"),
    _builtin("min_plus", np.minimum, np.add, inf, 0.0, _ops.OP_MIN, _ops.OP_PLUS, True, terminal=-inf,
             cuda_add="min(a, b)", cuda_mul="a + b"),
    _builtin("max_plus", np.maximum, np.add, -inf, 0.0, _ops.OP_MAX, _ops.OP_PLUS, True, terminal=inf,
             cuda_add="max(a, b)", cuda_mul="a + b"),
    _builtin("max_times", np.maximum, np.multiply, 0.0, 1.0, _ops.OP_MAX, _ops.OP_TIMES, True, terminal=inf,
             cuda_add="max(a, b)", cuda_mul="a * b", samples=(0.0, 0.5, 1.0, 2.0, 3.0, 7.0)),
    _builtin("max_min", np.maximum, np.minimum, -inf, inf, _ops.OP_MAX, _ops.OP_MIN, True, terminal=inf,
             cuda_add="max(a, b)", cuda_mul="min(a, b)"),
    _builtin("min_max", np.minimum, np.maximum, inf, -inf, _ops.OP_MIN, _ops.OP_MAX, True, terminal=-inf,
             cuda_add="min(a, b)", cuda_mul="max(a, b)"),
    _builtin("or_and", np.logical_or, np.logical_and, False, True, _ops.OP_MAX, _ops.OP_MIN, True,
             terminal=True, dtypes=("bool",), cuda_add="a | b", cuda_mul="a & b"),
)

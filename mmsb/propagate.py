"""The propagation engine: one wave pushes page changes down the DAG, incrementally where the algebra allows.

A :class:`Change` is what a commit did to one page: the sorted flat positions that changed and their values
before. For a ``link`` or ``closure`` the engine pushes ``A ⊗ d`` merged with ⊕ (semi-naive, with a cutoff where
nothing changes); when a change cannot be pushed that way (a value that worsens under an idempotent,
non-invertible ⊕) only the affected rows are recomputed; invertible ⊕ (plus) propagates differences. ``derive``
rules recompute in topological order with an equality cutoff. The engine never logs: the buffer turns the changes
it returns into derived deltas of the same epoch.
"""
from __future__ import annotations

import functools
import time
import weakref
from dataclasses import dataclass
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import numpy as np

from mmsb import _kernels, _ops
from mmsb._sets import unique, unique_first
from mmsb.errors import InvalidDeltaError, MMSBError, SemiringError
from mmsb.delta import full_index
from mmsb.devices import backend_for
from mmsb.graph import Graph
from mmsb import csr
from mmsb.rules import CSR, Rule
from mmsb.scratch import ScratchPool
from mmsb.semiring import Semiring, _is_ufunc, _kview

_MISSING = object()
_F64 = np.dtype(np.float64)
_PULL_FRACTION = 8          # a link change of >= 1/8 of its inputs' entries is recomputed by one pull ...
_PULL_MIN = 4096            # ... once it is big enough for the pull's fixed costs not to matter
_SELECTIVE = (np.minimum, np.maximum, np.fmin, np.fmax, np.logical_or)


@dataclass(slots=True)
class Change:
    """Positions of one page that changed in a commit (sorted, unique, flat) and their values before it; ``new``,
    where the step that made it has them (a matrix page's entry update, a link's difference push after a matrix
    change), their values after it (None: read the page)."""

    idx: np.ndarray
    old: np.ndarray
    new: Optional[np.ndarray] = None

    def merged_after(self, later: "Change") -> "Change":
        """This change followed by ``later``: the union of positions, each with its oldest value."""
        idx, old = _kernels.merge.merge_sparse(later.idx, _kview(later.old), self.idx, _kview(self.old),
                                               _ops.OP_ASSIGN)
        return Change(idx, old.view(self.old.dtype))


def changed_positions(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Boolean mask of entries where ``new`` differs from ``old`` (NaN equal to NaN)."""
    diff = new != old
    if new.dtype.kind == "f":
        diff &= ~(np.isnan(new) & np.isnan(old))
    return diff


REL_TOL = 1e-10
"""Difference propagation (float links under ⊕ = plus) keeps, per derived row, a bound on the rounding error it
has accumulated since the row was last recomputed; a row whose bound exceeds ``REL_TOL * |value|`` is recomputed
from its inputs (so cancellation, e.g. a source going 1e20 -> 1, never leaves a wrong result behind)."""

_PUSH_SHARE = 8        # a change to >= 1/8 of a float plus link's source recomputes the rows instead of pushing
_REPAIR_SHARE = 16     # a matrix change that invalidates > 1/16 of a closure's values recomputes the closure
_SERIAL_ROWS = 2048    # a pull over fewer rows runs on one thread
_FEW = 64              # a link step for at most this many changed source positions is one fused kernel call

_FLAGS: dict = {}

# how a closure over a matrix page takes a change of the matrix (Engine._matrix_plan)
_REACH, _RECOMPUTE, _NUMPY, _KERNEL = range(4)


def algebra_flags(sr: Semiring, dtype: np.dtype) -> tuple[bool, bool]:
    """``(idempotent, invertible)`` of ``sr`` as it acts on ``dtype``.

    On bool pages every ⊕ saturates: plus is logical or (numpy's ``np.add`` on bools), so plus_times on bool is
    the idempotent or/and and has no inverse; the flags then come from ⊕ on {False, True} itself.
    """
    key = (sr, np.dtype(dtype).str)
    got = _FLAGS.get(key)
    if got is None:
        if np.dtype(dtype).kind == "b":
            t, f = np.array([True]), np.array([False])
            try:
                got = (bool(sr.add_arrays(t, t)[0]) and not bool(sr.add_arrays(f, f)[0]), False)
            except Exception:       # an ⊕ that cannot take bools: recompute rows (its errors surface there)
                got = (False, False)
        else:
            got = (sr.idempotent, sr.invertible and sr.sub is not None)
        if len(_FLAGS) >= 1024:
            _FLAGS.clear()
        _FLAGS[key] = got
    return got


class RuleKernel:
    """What the kernels need of one rule acting on a page of ``dtype``, built once per version of its matrix: the
    ⊕/⊗ op codes (None: a numpy-only semiring), ⊕'s zero as a scalar of ``dtype`` and as the kernels see it, ⊕ on
    two arrays of ``dtype``, the algebra flags, and, looked up on first use, whether the matrix holds ±inf or NaN
    and its transpose (the CSR object, whose arrays are read at each use: a spilled matrix reloads then) with the
    range of its weights. Derived state kept on the rule (``Rule.kernel``), never logged."""

    __slots__ = ("matrix", "version", "dtype", "codes", "zero", "kzero", "add", "idem", "inv", "nonfinite", "t",
                 "t_range")

    def __init__(self, A: CSR, sr: Semiring, dtype: np.dtype):
        self.matrix = A
        self.version = A.version
        self.dtype = dtype
        self.codes = sr.codes_for(dtype)
        self.zero = sr.zero_for(dtype)
        self.kzero = _kview(np.array([self.zero], dtype=dtype))[0]
        self.add = sr.add if sr.add in _DTYPE_KEEPING else sr.add_arrays
        self.idem, self.inv = algebra_flags(sr, dtype)
        self.nonfinite: Optional[bool] = None
        self.t: Optional[CSR] = None
        self.t_range: tuple = (0.0, 0.0)

    def matrix_nonfinite(self) -> bool:
        """Whether the matrix holds ±inf or NaN (looked up on first use)."""
        if self.nonfinite is None:
            self.nonfinite = self.matrix.has_nonfinite
        return self.nonfinite

    def transpose(self) -> CSR:
        """The matrix's transpose (built on first use), its weight range kept in ``t_range``."""
        if self.t is None:
            t = self.matrix.T
            self.t_range = t.weight_range
            self.t = t
        return self.t


_DTYPE_KEEPING = (np.minimum, np.maximum, np.fmin, np.fmax)     # ⊕ whose result has its inputs' dtype


def rule_kernel(rule: Rule, dtype: np.dtype) -> RuleKernel:
    """The rule's :class:`RuleKernel` for ``dtype``, rebuilt when its matrix changed."""
    k = rule.kernel
    A = rule.matrix
    if k is None or k.matrix is not A or k.version != A.version or k.dtype != dtype:
        k = rule.kernel = RuleKernel(A, rule.semiring, dtype)
    return k


_ROUNDOFF: dict = {}


def _unit_roundoff(dtype: np.dtype) -> float:
    u = _ROUNDOFF.get(dtype)
    if u is None:
        u = _ROUNDOFF[dtype] = float(np.finfo(dtype).eps) / 2
    return u


def _reachability(sr: Semiring, y: np.ndarray, A: CSR) -> bool:
    """A closure of bool values over a bool matrix whose ⊕ is or and ⊗ is and (or_and, plus_times and max_min on
    bool pages): a reachability closure, repaired on BFS levels."""
    return y.dtype == np.bool_ and A.data.dtype == np.bool_ and sr.codes_for(y.dtype) == (_ops.OP_MAX, _ops.OP_MIN)

def _rule_ref(table: dict, name: str, rule: Rule) -> weakref.ref:
    """A weak reference to ``rule`` for the entry ``table[name] = (ref, ...)``: the entry goes with the rule (unless
    it was replaced by then)."""

    def gone(ref: weakref.ref, table: dict = table, name: str = name) -> None:
        if name in table and table[name][0] is ref:
            del table[name]

    return weakref.ref(rule, gone)


class _NoFixpoint(Exception):
    """A closure iteration ran past its round bound (e.g. a negative cycle under min_plus)."""


def _foreign_error(name: str, rules: list, exc: Exception) -> MMSBError:
    """A :class:`~mmsb.errors.PropagationError` for ``exc``, raised by user code while computing page ``name``."""
    from mmsb.errors import PropagationError

    kind = rules[0].kind
    srcs = sorted({s for r in rules for s in r.srcs})
    what = (f"derive function {rules[0].fn_name!r}" if kind == "derive"
            else f"semiring {rules[0].semiring.name!r} of the {kind} rule")
    return PropagationError(f"propagation into page {name!r} (from {srcs}) failed: {what} raised "
                            f"{type(exc).__name__}: {exc}; nothing was committed", page=name, rule=kind)


def _wrap_foreign(step: Callable) -> Callable:
    """Turn an exception raised by a plugin semiring's ⊕/⊗ inside one page's step into a
    :class:`~mmsb.errors.PropagationError` naming the page and the rule, with the original chained. Steps under
    built-in semirings run only mmsb's own code, and I/O or memory errors (a spill, a reload) are not the
    semiring's: those pass through unchanged. The step leaves its page as it was; the commit's undo log restores
    the rest."""

    @functools.wraps(step)
    def run(self: "Engine", name: str, rule_or_rules: Any, *args: Any) -> Optional["Change"]:
        try:
            return step(self, name, rule_or_rules, *args)
        except (MMSBError, OSError, MemoryError):
            raise
        except Exception as exc:
            rules = rule_or_rules if isinstance(rule_or_rules, list) else [rule_or_rules]
            if all(r.semiring is None or r.semiring.builtin for r in rules):
                raise
            raise _foreign_error(name, rules, exc) from exc

    return run


class UndoLog:
    """Old values of every position a commit touched, to restore the pages if the commit fails.

    ``pool``: where :meth:`scratch` takes arrays for whole-page old values (None: fresh arrays); the commit
    pipeline lends its :class:`~mmsb.scratch.ScratchPool`.
    """

    __slots__ = ("pool", "steps")

    def __init__(self, pool: Optional[ScratchPool] = None) -> None:
        self.steps: list[Callable[[], None]] = []
        self.pool = pool

    def scratch(self, like: np.ndarray) -> np.ndarray:
        """An uninitialised array like ``like`` for old values that this commit's undo steps and changes keep: from
        the pool (reused across commits once nothing references it) or fresh."""
        pool = self.pool
        return np.empty(like.shape, dtype=like.dtype) if pool is None else pool.take(like)

    def record(self, get: Callable[[], np.ndarray], idx: np.ndarray, old: np.ndarray) -> None:
        """Remember ``old`` values at ``idx`` of the array that ``get()`` returns."""
        self.steps.append(lambda: get().__setitem__(idx, old))

    def action(self, fn: Callable[[], None]) -> None:
        """Remember an arbitrary undo step (schema changes)."""
        self.steps.append(fn)

    def rollback(self) -> None:
        """Undo every recorded step, newest first."""
        for fn in reversed(self.steps):
            fn()
        self.steps.clear()


@dataclass
class WaveStats:
    waves: int = 0
    pages_touched: int = 0
    entries_pushed: int = 0
    rows_recomputed: int = 0
    derive_calls: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Engine:
    """Runs propagation waves over a :class:`Graph` of rules."""

    def __init__(self, graph: Graph, array: Callable[[str], np.ndarray], shape: Callable[[str], tuple],
                 semiring: Callable[[str], Semiring], nthreads: int = 0,
                 pages: Optional[Callable[[str], Any]] = None):
        self.graph = graph
        self.array = array          # name -> flat, writable, resident array
        self.shape = shape
        self.semiring = semiring
        self.nthreads = nthreads
        self._pages = pages         # name -> Page (routes pages of other devices to their backend), or None
        self.stats = WaveStats()
        self._scratch_arrays: dict[str, np.ndarray] = {}
        self._errors: dict[str, np.ndarray] = {}     # float plus links: per-row rounding-error bounds
        # reachability closures over a matrix page: the BFS level of every value, under a weak reference to the
        # rule (dropped with it). Derived state, never logged: built on the first matrix change, dropped by a
        # full recompute or a rolled-back commit, rebuilt on the next change.
        self._levels: dict[str, tuple[weakref.ref, np.ndarray]] = {}
        # closures over a matrix page: how a matrix change updates each (see _matrix_plan)
        self._matrix_plans: dict[str, tuple] = {}
        # the point strategy's route from each written page (see point_wave), for the graph generation named
        self._routes: dict[str, tuple[str, Rule] | None] = {}
        self._routes_gen = -1

    # -- a wave -----------------------------------------------------------------------------------------------
    def wave(self, changes: dict[str, Change], undo: UndoLog, force: Optional[set] = None) -> dict[str, Change]:
        """Propagate ``changes`` (and full recomputes of the pages in ``force``) down the DAG.

        Returns the changes made to derived pages, each page computed at most once, in topological order.
        """
        if not changes and not force:
            return {}
        force = set(force) if force else set()
        plan = self.graph.plan(tuple(changes), tuple(sorted(force)) if force else ())
        if not plan:                        # nothing downstream of the changes
            self.stats.waves += 1
            return {}
        t0 = time.perf_counter()
        pending = dict(changes)
        produced: dict[str, Change] = {}
        for name, rules in plan:
            inputs = {}
            for r in rules:
                for s in r.srcs:
                    if s in pending:
                        inputs[s] = pending[s]
            if not inputs and name not in force:
                continue
            ch = self.update(name, rules, inputs, name in force, undo)
            self.stats.pages_touched += 1
            if ch is not None and ch.idx.size:
                # a page that had a change of its own in this wave (written, then made a rule target before a
                # deferred wave) changed from its oldest value as far as its readers are concerned
                pending[name] = pending[name].merged_after(ch) if name in pending else ch
                produced[name] = ch
        self.stats.waves += 1
        self.stats.seconds += time.perf_counter() - t0
        return produced

    def point_wave(self, name: str, ch: Change, undo: UndoLog) -> dict[str, Change]:
        """:meth:`wave` for a change of a few values of page ``name`` (the commit pipeline's point strategy): when
        the whole wave is one ``link`` from ``name`` under a built-in semiring, over a matrix of its own, into a CPU
        page, that link's step goes straight to the fused kernel; anything else takes :meth:`wave`."""
        gen = self.graph.generation
        if self._routes_gen != gen:
            self._routes.clear()
            self._routes_gen = gen
        route = self._routes.get(name, _MISSING)
        if route is _MISSING:
            route = self._routes[name] = self._point_route(name)
        if route is not None:
            dst, rule = route
            if self._pages is None or self._pages(dst).device == "cpu":
                t0 = time.perf_counter()
                got = self._links_few(dst, rule, {name: ch}, self.array(dst), rule.semiring, undo)
                if got is not _MISSING:
                    stats = self.stats
                    stats.waves += 1
                    stats.pages_touched += 1
                    stats.seconds += time.perf_counter() - t0
                    return {dst: got} if got is not None else {}
        return self.wave({name: ch}, undo)

    def _point_route(self, name: str) -> tuple[str, Rule] | None:
        """``(dst, rule)`` where the whole wave of a change of page ``name`` is that one ``link`` rule under a
        built-in semiring, over a matrix of its own (kept per graph generation by :meth:`point_wave`); else None."""
        plan = self.graph.plan((name,), ())
        if len(plan) == 1 and len(plan[0][1]) == 1:
            dst, (rule,) = plan[0]
            if rule.kind == "link" and rule.srcs[0] == name and rule.semiring.builtin and rule.matrix_page is None:
                return dst, rule
        return None

    def page(self, name: str, default: Any = _MISSING) -> Any:
        """The Page object named ``name`` (``default``, or KeyError, when there is none)."""
        try:
            return self._pages(name)            # type: ignore[misc]
        except (KeyError, TypeError):
            if default is _MISSING:
                raise KeyError(name) from None
            return default

    def update(self, name: str, rules: list[Rule], inputs: dict[str, Change], full: bool,
               undo: UndoLog) -> Optional[Change]:
        """One page's step of a wave: apply ``rules`` into page ``name`` given its inputs' changes."""
        if self._pages is not None:
            page = self._pages(name)
            for r in rules:                     # the matrix pages it reads: reloaded first if spilled (memory_limit)
                if r.matrix_page is not None:
                    self._pages(r.matrix_page).use()
            if page.device != "cpu":            # another device family runs the step where the page lives
                return backend_for(page.device).update_page(self, page, rules, inputs, full, undo)
        kind = rules[0].kind
        if kind == "derive":
            return self._derive(name, rules[0], undo)
        if kind == "closure":
            r = rules[0]
            mch = inputs.get(r.matrix_page) if r.matrix_page is not None else None
            if mch is not None and not full:
                return self._closure_matrix(name, r, inputs.get(r.srcs[0]), mch, undo)
            return self._closure(name, r, inputs.get(r.srcs[0]), full, undo)
        return self._links(name, rules, inputs, full, undo)

    @staticmethod
    def _refuse_nan(name: str, rule: Rule, src: str, how: str) -> InvalidDeltaError:
        sr = rule.semiring.name if rule.semiring is not None else "?"
        return InvalidDeltaError(f"NaN would enter page {name!r} from page {src!r} through the {rule.kind} rule "
                                 f"({how}); NaN is not allowed on a page whose ⊕ is idempotent ({sr}); nothing "
                                 "was committed")

    def _check_nan_columns(self, name: str, rule: Rule, sr: Semiring, cols: np.ndarray, vals: np.ndarray,
                           k: Optional[RuleKernel] = None) -> None:
        """Refuse a NaN that ``A ⊗ x`` would carry into ``name`` from the columns ``cols`` (values ``vals``).

        A NaN source value on a column with stored entries, or a product IEEE makes NaN (±inf against an
        opposite infinity, 0 × inf); values equal to ⊕'s zero are skipped, as the kernels skip them. ``k``: the
        rule's kernel arguments for ``vals``' dtype, when the caller has them.
        """
        if vals.dtype.kind != "f" or not cols.size:
            return
        A = rule.matrix
        if k is None or k.matrix is not A or k.dtype != vals.dtype:
            k = RuleKernel(A, sr, vals.dtype)
        if k.nonfinite if k.nonfinite is not None else k.matrix_nonfinite():
            suspect = np.ones(cols.size, dtype=bool)
        else:
            suspect = ~np.isfinite(vals)
            if not suspect.any():
                return
        suspect &= vals != k.zero
        if not suspect.any():
            return
        at, _, data = A.column_entries(cols[suspect])
        if not at.size:
            return
        with np.errstate(all="ignore"):
            prod = sr.mul_arrays(data, vals[suspect][at])
        if np.isnan(prod).any():
            raise self._refuse_nan(name, rule, rule.srcs[0], "a NaN source value or a NaN product A[i, j] ⊗ x[j]")

    def _refuse_nan_links(self, name: str, rules: list[Rule], inputs: dict[str, Change], full: bool,
                          sr: Semiring, dtype: np.dtype) -> None:
        """Refuse a NaN that the links into ``name`` (idempotent ⊕) would carry in: from NaN matrix entries or
        from every source column when ``full``, else from the changed columns of the sources."""
        for r in rules:
            if full:
                if r.matrix.has_nan:
                    what = f"matrix {r.matrix_page!r}" if r.matrix_page is not None else "matrix"
                    raise InvalidDeltaError(f"the link into page {name!r} from page {r.srcs[0]!r} has NaN {what} "
                                            f"entries; NaN is not allowed under an idempotent ⊕ ({sr.name}); "
                                            "nothing was committed")
                x = self._x(r, dtype)
                self._check_nan_columns(name, r, sr, np.arange(x.size, dtype=np.int64), x)
                continue
            ch = inputs.get(r.srcs[0])
            if ch is not None and ch.idx.size:
                new = self.array(r.srcs[0])[ch.idx].astype(dtype, copy=False)
                self._check_nan_columns(name, r, sr, ch.idx, new)

    def _record(self, name: str, idx: np.ndarray, old: np.ndarray, undo: UndoLog,
                new: Optional[np.ndarray] = None) -> Change:
        """The change of page ``name`` at ``idx`` (values before: ``old``; after: ``new`` where the step has them),
        undo-logged (as UndoLog.record)."""
        undo.steps.append(lambda: self.array(name).__setitem__(idx, old))
        return Change(idx, old, new)

    # -- derive ---------------------------------------------------------------------------------------------
    def _derive(self, name: str, rule: Rule, undo: UndoLog) -> Optional[Change]:
        if rule.fn is None:
            raise MMSBError(f"derive rule for page {name!r} is inactive: its function {rule.fn_name!r} is not "
                            f"registered; call buf.register_function({rule.fn_name!r}, fn)")
        args = [self.array(s).reshape(self.shape(s)).copy() for s in rule.srcs]
        self.stats.derive_calls += 1
        try:
            out = np.asarray(rule.fn(*args))
        except MMSBError:
            raise
        except Exception as exc:
            raise _foreign_error(name, [rule], exc) from exc
        y = self.array(name)
        shape = self.shape(name)
        if out.shape != tuple(shape) and not (out.size == y.size and out.ndim <= 1 and len(shape) == 1):
            raise InvalidDeltaError(f"derive function {rule.fn_name!r} for page {name!r} returned shape "
                                    f"{out.shape}, expected {tuple(shape)}")
        if out.dtype.kind not in "biuf" or not np.can_cast(out.dtype, y.dtype, "same_kind"):
            raise InvalidDeltaError(f"derive function {rule.fn_name!r} for page {name!r} returned dtype "
                                    f"{out.dtype}, which does not cast safely to {y.dtype}")
        out = out.reshape(-1).astype(y.dtype, copy=False)
        dst_sr = self.semiring(name)
        if out.dtype.kind == "f" and dst_sr is not None and algebra_flags(dst_sr, out.dtype)[0] \
                and np.isnan(out).any():
            raise InvalidDeltaError(f"derive function {rule.fn_name!r} for page {name!r} (from {list(rule.srcs)}) "
                                    f"returned NaN; NaN is not allowed on a page whose ⊕ is idempotent "
                                    f"({dst_sr.name}); nothing was committed")
        idx = np.flatnonzero(changed_positions(out, y)).astype(np.int64)
        if not idx.size:
            return None
        old = y[idx].copy()
        y[idx] = out[idx]
        return self._record(name, idx, old, undo)

    # -- links ----------------------------------------------------------------------------------------------
    @_wrap_foreign
    def _links(self, name: str, rules: list[Rule], inputs: dict[str, Change], full: bool,
               undo: UndoLog) -> Optional[Change]:
        sr = rules[0].semiring
        y = self.array(name)
        if not full and len(rules) == 1:
            got = self._links_few(name, rules[0], inputs, y, sr, undo)
            if got is not _MISSING:
                return got
        idem, inv = algebra_flags(sr, y.dtype)
        if idem:
            self._refuse_nan_links(name, rules, inputs, full, sr, y.dtype)
        track = inv and y.dtype.kind == "f" and sr.add is np.add     # float differences: bound their rounding
        pushes: list[tuple[Rule, np.ndarray, np.ndarray]] = []
        mags: list[tuple[Rule, np.ndarray, np.ndarray]] = []
        recompute: list[np.ndarray] = []
        if idem and not full:
            for r in rules:                     # NaN entries of a changed matrix page (a view in another semiring)
                if r.matrix_page is not None and r.matrix_page in inputs:
                    self._refuse_nan_entries(name, r, inputs[r.matrix_page])
        if not full and track:
            got = self._links_entries(name, rules, inputs, y, sr, undo)
            if got is not _MISSING:
                return got
        if not full and self._pull_is_cheaper(rules, inputs):
            return self._links_all_rows(name, rules, y, sr, undo)
        if full:
            rows = np.arange(y.size, dtype=np.int64)
            recompute.append(rows)
        else:
            for r in rules:
                ch = inputs.get(r.srcs[0])
                if ch is None or not ch.idx.size:
                    continue
                new = self.array(r.srcs[0])[ch.idx].astype(y.dtype, copy=False)
                old = ch.old.astype(y.dtype, copy=False)
                if inv:
                    if track and ch.idx.size * _PUSH_SHARE >= r.matrix.shape[1]:
                        recompute.append(r.matrix.column_rows(ch.idx))   # a large change: pull, exactly
                        continue
                    pushes.append((r, ch.idx, np.asarray(sr.sub(new, old)).astype(y.dtype, copy=False)))
                    if track:
                        mags.append((r, ch.idx, np.abs(new) + np.abs(old)))
                elif idem:
                    better = ~changed_positions(sr.add_arrays(old, new), new)
                    if better.any():
                        pushes.append((r, ch.idx[better], new[better]))
                    if not better.all():
                        recompute.append(r.matrix.column_rows(ch.idx[~better]))
                else:
                    recompute.append(r.matrix.column_rows(ch.idx))
            for r in rules:
                mch = inputs.get(r.matrix_page) if r.matrix_page is not None else None
                if mch is not None and mch.idx.size:     # changed entries: recompute the rows they sit in
                    recompute.append(unique(mch.idx // r.matrix.shape[1]))
        cand_parts = [r.matrix.column_rows(idx) for r, idx, _ in pushes] + recompute
        if not cand_parts:
            return None
        cand = unique(np.concatenate(cand_parts)) if len(cand_parts) > 1 else cand_parts[0]
        if not cand.size:
            return None
        before = y[cand].copy()
        err = self._error_bounds(name, y, cand, undo) if track else None
        try:
            for r, idx, vals in pushes:
                self._push(r.matrix, idx, vals, y, sr)
            if pushes and inv and y.dtype.kind == "f":
                # differences through ±inf/NaN are not exact (inf - inf = nan): recompute those rows
                bad = ~(np.isfinite(y[cand]) & np.isfinite(before))
                if mags:
                    bad |= self._rounding_too_large(y, cand, before, mags, err)
                if bad.any():
                    recompute.append(cand[bad])
            if recompute:
                rows = unique(np.concatenate(recompute)) if len(recompute) > 1 else recompute[0]
                self._pull_rows(rules, rows, y, sr)
                self.stats.rows_recomputed += int(rows.size)
                if err is not None:
                    err[rows] = 0.0
        except BaseException:
            y[cand] = before
            raise
        diff = changed_positions(y[cand], before)
        if not diff.any():
            return None
        return self._record(name, cand[diff], before[diff], undo)

    def _links_few(self, name: str, rule: Rule, inputs: dict[str, Change], y: np.ndarray, sr: Semiring,
                   undo: UndoLog) -> Any:
        """The step of one link whose source changed at a few positions, as one fused kernel call (float64 pages,
        plus/min/max ⊕): the same result as the general step. ``_MISSING`` where the general step is needed (it
        also refuses NaN: the kernel declines every non-finite value, and matrices with non-finite entries under
        an idempotent ⊕ are left to it). Rounding bounds of rows that stay exact only grow here and are not
        undo-logged: a rolled-back commit leaves them larger, which is safe (a bound only triggers recomputes)."""
        ch = inputs.get(rule.srcs[0])
        if ch is None or len(inputs) != 1 or y.dtype != _F64 or ch.idx.size > _FEW \
                or ch.idx.size * _PUSH_SHARE >= rule.matrix.shape[1]:
            return _MISSING
        k = rule_kernel(rule, y.dtype)
        codes = k.codes
        x = self.array(rule.srcs[0])
        if codes is None or x.dtype != y.dtype or ch.old.dtype != y.dtype:
            return _MISSING
        if k.idem and (k.nonfinite if k.nonfinite is not None else k.matrix_nonfinite()):
            return _MISSING
        err = None
        if k.inv:
            if sr.add is not np.add:
                return _MISSING
            err = self._errors.get(name)         # (the hot path's lookup; _bounds starts the array)
            if err is None or err.size != y.size:
                err = self._bounds(name, y)
        t = k.t if k.t is not None else k.transpose()
        try:
            got = _kernels.point.link_push(t.indptr, t.indices, t.data, ch.idx, x[ch.idx], ch.old, y, err,
                                           codes[0], codes[1], REL_TOL)
        except TypeError:                       # a layout the kernel does not take (checked before any write)
            return _MISSING
        if got is None:
            return _MISSING
        rows, before, bad = got
        self.stats.entries_pushed += int(ch.idx.size)
        if bad is None:                         # (the common ending of _pushed, without its call)
            return self._record(name, rows, before, undo) if rows.size else None
        return self._pushed(name, [rule], y, sr, rows, before, bad, err, undo)

    def _bounds(self, name: str, y: np.ndarray) -> np.ndarray:
        """The per-row rounding-error bounds (float64) of float plus link target ``name``. A page this engine has
        not computed yet (e.g. after reopening a store) starts from the largest bound the invariant allows,
        ``REL_TOL * |y|``."""
        err = self._errors.get(name)
        if err is None or err.size != y.size:
            err = self._errors[name] = REL_TOL * np.abs(y, dtype=np.float64)
        return err

    def _pushed(self, name: str, rules: list[Rule], y: np.ndarray, sr: Semiring, rows: np.ndarray,
                before: np.ndarray, bad: Optional[np.ndarray], err: Optional[np.ndarray],
                undo: UndoLog) -> Optional[Change]:
        """The end of a fused push into ``name``: the candidate ``rows`` (values ``before``) it touched; the rows
        marked ``bad`` (None: none) are recomputed from ``rules`` with their bounds reset (undo-logged); returns
        the rows that changed."""
        if bad is not None:
            try:
                redo = rows[bad.view(np.bool_)]
                undo.record(lambda a=err: a, redo, err[redo])
                self._pull_rows(rules, redo, y, sr)
                self.stats.rows_recomputed += int(redo.size)
                err[redo] = 0.0
            except BaseException:
                y[rows] = before
                raise
            diff = changed_positions(y[rows], before)
            rows, before = rows[diff], before[diff]
        if not rows.size:
            return None
        return self._record(name, rows, before, undo)

    def _links_entries(self, name: str, rules: list[Rule], inputs: dict[str, Change], y: np.ndarray,
                       sr: Semiring, undo: UndoLog) -> Any:
        """The step of float64 plus_times links after entries of one rule's matrix page changed (and nothing
        else): ``y += (A' - A) x`` on the touched rows, in one kernel call that keeps the rounding-error bounds of
        difference propagation (rows whose bound grows too large, or that are not finite, are recomputed).
        ``_MISSING`` where the general step is needed (a source changed too, several matrices changed, a matrix
        change without its new values, another dtype or ⊗). As in :meth:`_links_few`, bounds that only grow are
        not undo-logged."""
        if y.dtype != _F64 or len(inputs) != 1:
            return _MISSING
        (mp, mch), = inputs.items()
        rule = None
        for r in rules:
            if r.srcs[0] in inputs:
                return _MISSING
            if r.matrix_page == mp:
                if rule is not None:
                    return _MISSING
                rule = r
        if rule is None or mch.new is None:
            return _MISSING
        codes = sr.codes_for(y.dtype)
        x = self.array(rule.srcs[0])
        if codes is None or codes[1] != _ops.OP_TIMES or x.dtype != y.dtype:
            return _MISSING
        zero = sr.zero_for(y.dtype)
        old, new = mch.old, mch.new
        pzero = self.semiring(mp).zero_for(old.dtype)
        if old.dtype != y.dtype or pzero != zero:       # the page's entries as the rule's view holds them
            # a stored entry equal to the rule's zero is an entry of the view that the push would skip (0 ⊗ inf is
            # NaN in a recompute): then the touched rows are recomputed
            if pzero != zero and (((old == zero) & (old != pzero)).any() or ((new == zero) & (new != pzero)).any()):
                return _MISSING
            old = np.where(old == pzero, zero, old.astype(y.dtype))
            new = np.where(new == pzero, zero, new.astype(y.dtype))
        err = self._bounds(name, y)
        try:
            rows, before, bad, after = _kernels.point.entry_push(mch.idx, old, new, rule.matrix.shape[1], x, y, err,
                                                                 codes[1], float(zero), REL_TOL, True)
        except TypeError:                       # a layout the kernel does not take (checked before any write)
            return _MISSING
        self.stats.entries_pushed += int(mch.idx.size)
        if bad is None:                         # (the values after go to the log: no gather of y[rows] there)
            if not rows.size:
                return None
            return self._record(name, rows, before, undo, after)
        return self._pushed(name, rules, y, sr, rows, before, bad, err, undo)

    def _refuse_nan_entries(self, name: str, rule: Rule, mch: Change) -> None:
        """Refuse NaN entries of a matrix page entering an idempotent ⊕ (through a view in another semiring)."""
        A = rule.matrix
        if A.data.dtype.kind != "f":
            return
        rows, cols = np.divmod(mch.idx, A.shape[1])
        if np.isnan(csr.get_entries(A, rows, cols, 0)).any():
            raise InvalidDeltaError(f"matrix {rule.matrix_page!r} would carry NaN into page {name!r} through the "
                                    f"{rule.kind} rule; NaN is not allowed under an idempotent ⊕ "
                                    f"({rule.semiring.name}); nothing was committed")

    @staticmethod
    def _pull_is_cheaper(rules: list[Rule], inputs: dict[str, Change]) -> bool:
        """A change that touches a large part of the inputs costs less as one pull over every row (a streaming
        SpMV) than as a push through the changed columns plus the bookkeeping of the candidate rows."""
        changed = sum(inputs[r.srcs[0]].idx.size for r in rules if r.srcs[0] in inputs)
        cols = sum(r.matrix.shape[1] for r in rules)
        return changed * _PULL_FRACTION >= cols and changed >= _PULL_MIN

    def _links_all_rows(self, name: str, rules: list[Rule], y: np.ndarray, sr: Semiring,
                        undo: UndoLog) -> Optional[Change]:
        """Recompute every row of a link target; the positions that changed and their old values."""
        codes = sr.codes_for(y.dtype)
        if codes is not None and len(rules) == 1:
            # one kernel pass keeps the old values and counts the changed rows (no separate copy and compare)
            A = rules[0].matrix
            before = undo.scratch(y)
            count = _kernels.spmv.spmv(A.indptr, A.indices, _kview(A.data), _kview(self._x(rules[0], y.dtype)),
                                       _kview(y), codes[0], codes[1], _kview(np.array([sr.zero_for(y.dtype)]))[0],
                                       None, self.nthreads, _kview(before))
            moved = None
        else:
            before = undo.scratch(y)
            np.copyto(before, y)
            self._pull_rows(rules, None, y, sr)
            moved = changed_positions(y, before)
            count = int(np.count_nonzero(moved))
        self.stats.rows_recomputed += int(y.size)
        if not count:
            return None
        if count == y.size:
            return self._record(name, full_index(y.size), before, undo)
        if moved is None:
            moved = changed_positions(y, before)
        idx = np.flatnonzero(moved).astype(np.int64, copy=False)
        return self._record(name, idx, before[idx], undo)

    def _x(self, rule: Rule, dtype: np.dtype) -> np.ndarray:
        x = self.array(rule.srcs[0])
        return x if x.dtype == dtype else x.astype(dtype)

    def _push(self, A: CSR, idx: np.ndarray, vals: np.ndarray, y: np.ndarray, sr: Semiring) -> None:
        """y ⊕= A ⊗ d for the sparse vector d = (idx, vals)."""
        t = A.T
        self.stats.entries_pushed += int(idx.size)
        codes = sr.codes_for(y.dtype)
        zero = sr.zero_for(y.dtype)
        if codes is not None:
            _kernels.spmv.push(t.indptr, t.indices, _kview(t.data), idx, _kview(vals), _kview(y), codes[0],
                               codes[1], _kview(np.array([zero]))[0])
            return
        keep = changed_positions(vals, np.full_like(vals, zero))
        idx, vals = idx[keep], vals[keep]
        starts, lens = t.indptr[idx], t.indptr[idx + 1] - t.indptr[idx]
        total = int(lens.sum())
        if not total:
            return
        offs = np.repeat(starts - np.cumsum(np.r_[0, lens[:-1]]), lens) + np.arange(total)
        contrib = sr.mul_arrays(t.data[offs], np.repeat(vals, lens))
        sr.accumulate(y, t.indices[offs], contrib)

    def _pull_rows(self, rules: list[Rule], rows: Optional[np.ndarray], y: np.ndarray, sr: Semiring) -> None:
        """y[rows] = ⊕ over the rules of (A ⊗ x)[rows] (every row when ``rows`` is None)."""
        zero = sr.zero_for(y.dtype)
        codes = sr.codes_for(y.dtype)
        if rows is None and codes is not None and len(rules) == 1:
            A = rules[0].matrix                      # one rule over every row: straight into y, no gather
            _kernels.spmv.spmv(A.indptr, A.indices, _kview(A.data), _kview(self._x(rules[0], y.dtype)),
                               _kview(y), codes[0], codes[1], _kview(np.array([zero]))[0], None, self.nthreads)
            return
        sel = slice(None) if rows is None else rows
        every = np.arange(y.size, dtype=np.int64) if rows is None else rows
        acc = None
        for r in rules:
            x = self._x(r, y.dtype)
            if codes is not None:
                target = y if acc is None else np.empty_like(y)
                A = r.matrix
                _kernels.spmv.spmv(A.indptr, A.indices, _kview(A.data), _kview(x), _kview(target), codes[0],
                                   codes[1], _kview(np.array([zero]))[0], rows, self._threads_for(rows))
                part = target[sel].copy() if target is y else target[sel]
            else:
                part = self._pull_numpy(r.matrix, x, every, sr, zero)
            acc = part if acc is None else sr.add_arrays(acc, part)
        y[sel] = acc

    @staticmethod
    def _pull_numpy(A: CSR, x: np.ndarray, rows: np.ndarray, sr: Semiring, zero) -> np.ndarray:
        starts, lens = A.indptr[rows], A.indptr[rows + 1] - A.indptr[rows]
        out = np.full(rows.size, zero, dtype=x.dtype)
        total = int(lens.sum())
        if not total:
            return out
        offs = np.repeat(starts - np.cumsum(np.r_[0, lens[:-1]]), lens) + np.arange(total)
        xv = x[A.indices[offs]]
        prod = sr.mul_arrays(A.data[offs].astype(x.dtype), xv)
        prod[~changed_positions(xv, np.full_like(xv, zero))] = zero
        owner = np.repeat(np.arange(rows.size), lens)
        if _is_ufunc(sr.add):
            sr.add.at(out, owner, prod)
        else:
            for k, v in zip(owner.tolist(), prod):
                out[k] = sr.add(out[k], v)
        return out

    def _error_bounds(self, name: str, y: np.ndarray, cand: np.ndarray, undo: UndoLog) -> np.ndarray:
        """The per-row rounding-error bounds of float page ``name`` (:meth:`_bounds`); their values at ``cand``
        are undo-logged."""
        err = self._bounds(name, y)
        undo.record(lambda a=err: a, cand, err[cand])
        return err

    def _rounding_too_large(self, y: np.ndarray, cand: np.ndarray, before: np.ndarray,
                            mags: list[tuple[Rule, np.ndarray, np.ndarray]], err: np.ndarray) -> np.ndarray:
        """Add this push's rounding bound to ``err`` at ``cand``; True where it exceeds ``REL_TOL * |y|``.

        Summing ``before + Σ_j A[i, j] (new_j - old_j)`` over ``k`` pushed columns errs by at most
        ``(k + 2) u (|before| + Σ_j |A[i, j]| (|new_j| + |old_j|))`` (u the unit roundoff): the differences, the
        products and the k additions each round once, and every partial sum is bounded by that magnitude.
        """
        r, idx, m = mags[0]
        t = r.matrix.T
        if len(mags) == 1 and idx.size == 1 and t.indptr[idx[0] + 1] - t.indptr[idx[0]] == cand.size:
            j = idx[0]                          # one column: cand is exactly its rows, in order
            mag = np.abs(t.data[t.indptr[j]:t.indptr[j + 1]]) * m[0]
            k = 1
        else:
            scratch = self._scratch("\0magnitude", y)
            scratch[cand] = 0
            k = 0
            for r, idx, m in mags:
                t = r.matrix.abs_T
                _kernels.spmv.push(t.indptr, t.indices, t.data, idx, m, scratch, _ops.OP_PLUS, _ops.OP_TIMES,
                                   y.dtype.type(0))
                k += int(idx.size)
            mag = scratch[cand]
        bound = err[cand]
        bound += (k + 2) * _unit_roundoff(y.dtype) * (np.abs(before) + mag)
        ok = bound <= REL_TOL * np.abs(y[cand])
        bad = ~ok
        bound[bad] = 0.0                        # the rows that fail are recomputed: exact again
        err[cand] = bound
        return bad

    # -- closure --------------------------------------------------------------------------------------------
    @_wrap_foreign
    def _closure(self, name: str, rule: Rule, ch: Optional[Change], full: bool,
                 undo: UndoLog) -> Optional[Change]:
        sr = rule.semiring
        y = self.array(name)
        src = self._x(rule, y.dtype)
        k = rule_kernel(rule, y.dtype)
        zero = k.zero
        idem = k.idem
        if full:
            self._levels.pop(name, None)
        elif name in self._levels and _reachability(sr, y, rule.matrix):
            return self._closure_reach(name, rule, ch, None, undo)
        if full or not idem:
            if idem:
                if rule.matrix.has_nan:
                    what = f"matrix {rule.matrix_page!r}" if rule.matrix_page is not None else "matrix"
                    raise InvalidDeltaError(f"the closure on page {name!r} from page {rule.srcs[0]!r} has NaN "
                                            f"{what} entries; NaN is not allowed under an idempotent ⊕ "
                                            f"({sr.name}); nothing was committed")
                if src.dtype.kind == "f" and np.isnan(src).any():
                    raise self._refuse_nan(name, rule, rule.srcs[0], "a NaN source value")
            before = y.copy()
            with self._restored_on_failure(name, rule, y, before):
                if not idem:
                    self._closure_bounded(rule, src, y, sr)
                else:
                    y[:] = src
                    frontier = np.flatnonzero(changed_positions(y, np.full_like(y, zero))).astype(np.int64)
                    self._run_closure(rule.matrix, y, frontier, sr)
            idx = np.flatnonzero(changed_positions(y, before)).astype(np.int64)
            if not idx.size:
                return None
            out = self._record(name, idx, before[idx], undo)
            if idem:
                self._check_closure_nan(name, rule, sr, y, idx)
            return out
        if ch is None or not ch.idx.size:
            return None
        new, old = src[ch.idx], ch.old.astype(y.dtype, copy=False)
        if new.dtype.kind == "f" and np.isnan(new).any():
            raise self._refuse_nan(name, rule, rule.srcs[0], "a NaN source value")
        add = k.add
        better = ~changed_positions(add(old, new), new)
        if not better.all():
            out = self._closure_worse(name, rule, ch, better, src, y, sr, undo)
        else:
            imp = ch.idx
            was = y[imp]
            merged = add(was, new)
            moved = changed_positions(merged, was)
            seeds, seed_old = imp[moved], was[moved]
            if not seeds.size:
                return None
            y[seeds] = merged[moved]
            old_out = self._scratch(name, y)
            try:
                reached = self._run_closure(rule.matrix, y, seeds, sr, old_out, k)
            except BaseException as exc:
                self._closure_restore(rule, ch, src, y, sr)
                if isinstance(exc, _NoFixpoint):
                    raise self._no_fixpoint(name, rule) from None
                raise
            # the union of the seeds and the entries reached, each with its value before the commit (a seed's
            # old value wins: old_out holds its seeded value)
            idx, olds = _kernels.merge.merge_sparse(reached, old_out[reached], seeds, seed_old, _ops.OP_ASSIGN)
            out = self._record(name, idx, olds, undo)
        if out is not None:
            self._check_closure_nan(name, rule, sr, y, out.idx, k)
        return out

    @contextmanager
    def _restored_on_failure(self, name: str, rule: Rule, y: np.ndarray, before: np.ndarray) -> Iterator[None]:
        """Put ``before`` back into ``y`` when the block fails; a run past the round bound becomes the
        SemiringError of a closure that does not converge."""
        try:
            yield
        except _NoFixpoint:
            y[:] = before
            raise self._no_fixpoint(name, rule) from None
        except BaseException:
            y[:] = before
            raise

    @staticmethod
    def _no_fixpoint(name: str, rule: Rule) -> SemiringError:
        via = f" over matrix {rule.matrix_page!r}" if rule.matrix_page is not None else ""
        return SemiringError(f"closure on page {name!r} from page {rule.srcs[0]!r}{via} does not converge under "
                             f"{rule.semiring.name} (a cycle that improves on every pass, e.g. a negative cycle "
                             f"under min_plus); page {name!r} is left as it was and nothing was committed")

    def _check_closure_nan(self, name: str, rule: Rule, sr: Semiring, y: np.ndarray, changed: np.ndarray,
                           k: Optional[RuleKernel] = None) -> None:
        """Refuse (after the change was undo-logged) a NaN that entered the closure through ``A ⊗ x``."""
        if y.dtype.kind != "f" or not changed.size:
            return
        vals = y[changed]
        if np.isnan(vals).any():
            raise self._refuse_nan(name, rule, rule.srcs[0], "a NaN product A[i, j] ⊗ x[j]")
        self._check_nan_columns(name, rule, sr, changed, vals, k)

    def _closure_restore(self, rule: Rule, ch: Change, src: np.ndarray, y: np.ndarray, sr: Semiring) -> None:
        """Put back the closure of the source as it was before ``ch`` (the value ``y`` held) after a failed run."""
        old_src = src.copy()
        old_src[ch.idx] = ch.old.astype(y.dtype, copy=False)
        y[:] = old_src
        zero = sr.zero_for(y.dtype)
        self._run_closure(rule.matrix, y, np.flatnonzero(changed_positions(y, np.full_like(y, zero))), sr)

    def _closure_worse(self, name: str, rule: Rule, ch: Change, better: np.ndarray, src: np.ndarray,
                       y: np.ndarray, sr: Semiring, undo: UndoLog) -> Optional[Change]:
        """Some sources got worse: reset the region that depended on them, then re-converge."""
        before = y.copy()
        with self._restored_on_failure(name, rule, y, before):
            parts = [self._reset_region(rule, ch.idx[~better], src, y, sr)]
            imp = ch.idx[better]
            if imp.size:
                merged = sr.add_arrays(y[imp], src[imp])
                moved = changed_positions(merged, y[imp])
                y[imp] = merged
                parts.append(imp[moved])
            self._run_closure(rule.matrix, y, unique(np.concatenate(parts)), sr)
        idx = np.flatnonzero(changed_positions(y, before)).astype(np.int64)
        return self._record(name, idx, before[idx], undo) if idx.size else None

    @_wrap_foreign
    def _closure_matrix(self, name: str, rule: Rule, ch: Optional[Change], mch: Change,
                        undo: UndoLog) -> Optional[Change]:
        """The closure after entries of its matrix page changed (the rule's matrix already holds the new ones).

        Entries that got better push from their heads (their column: ``x[i] ⊕= A[i, j] ⊗ x[j]``). Entries that
        got worse (an increase, a removal) under an idempotent ⊕ invalidate only the values that were tight
        through them, and what was tight through those, and those values are repaired from their unaffected
        neighbours before the push (the dynamic shortest-path repair of Ramalingam and Reps). Everything costs
        the region it touches, not the page. A change of the source in the same wave, or a non-idempotent ⊕,
        recomputes the closure. Under the built-in semirings the whole step (which entries improved, the tight
        region, the reset and pull, the push) is one call of the compiled ``repair`` kernel.
        """
        y = self.array(name)
        plan = self._matrix_plans.get(name)
        if plan is None or plan[0]() is not rule or plan[1] is not y.dtype:
            plan = self._matrix_plan(name, rule, y)
        how = plan[2]
        if how == _REACH:
            return self._closure_reach(name, rule, ch, mch, undo)
        if (ch is not None and ch.idx.size) or how == _RECOMPUTE:
            return self._closure(name, rule, ch, True, undo)
        if how == _NUMPY:
            return self._closure_matrix_numpy(name, rule, mch, undo)
        codes, zero = plan[3], plan[4]
        A = rule.matrix
        t = A.T
        M = self.page(rule.matrix_page)
        if A is M.csr:
            old = mch.old
        else:                                            # a view: an absent entry of the page is ⊕'s zero of the rule
            old = mch.old.astype(y.dtype)
            old[mch.old == M.zero] = zero
        src = self._x(rule, y.dtype)
        try:
            status, idx, olds, nregion, nonfinite = _kernels.repair.repair(
                A.indptr, A.indices, A.data, t.indptr, t.indices, t.data, y, src, mch.idx, old, codes[0], codes[1],
                zero, A.free, y.size // _REPAIR_SHARE, self._marks8(y.size), self._scratch(name, y))
        except BaseException as exc:
            sr = rule.semiring
            rows, cols = np.divmod(mch.idx, A.shape[1])
            self._closure_rebuild_before(name, rule, rows, cols, old, csr.get_entries(A, rows, cols, zero), y, sr)
            if "converge" in str(exc):
                raise self._no_fixpoint(name, rule) from None
            raise
        if status == _kernels.repair.NAN_ENTRY:
            self._refuse_nan_entries(name, rule, mch)
        if status == _kernels.repair.TOO_LARGE:         # most of the page depended on them: recompute it instead
            return self._closure(name, rule, ch, True, undo)
        self.stats.rows_recomputed += nregion
        self.stats.entries_pushed += mch.idx.size
        if not idx.size:
            return None
        out = self._record(name, idx, olds, undo)
        if nonfinite or A.has_nonfinite:        # (finite values over finite entries carry no NaN)
            self._check_closure_nan(name, rule, rule.semiring, y, out.idx)
        return out

    def _matrix_plan(self, name: str, rule: Rule, y: np.ndarray) -> tuple:
        """How :meth:`_closure_matrix` updates the closure ``name`` of ``rule`` over values of ``y``'s dtype,
        kept until the rule or the dtype changes: ``(rule ref, dtype, how, op codes, zero)``."""
        sr = rule.semiring
        codes = sr.codes_for(y.dtype)
        if _reachability(sr, y, rule.matrix):
            how = _REACH
        elif not algebra_flags(sr, y.dtype)[0]:
            how = _RECOMPUTE
        else:
            how = _NUMPY if codes is None else _KERNEL
        plan = self._matrix_plans[name] = (_rule_ref(self._matrix_plans, name, rule), y.dtype, how, codes,
                                           sr.zero_for(y.dtype))
        return plan

    def _closure_reach(self, name: str, rule: Rule, ch: Optional[Change], mch: Optional[Change],
                       undo: UndoLog) -> Optional[Change]:
        """A reachability closure (bool, ⊕ or, ⊗ and) after entries of its matrix (``mch``) and/or its sources
        (``ch``) changed, repaired on the BFS levels the engine keeps for it (see ``repair.reach``): a removed
        entry costs only the values whose level it raised. The levels are built by one BFS on the first call."""
        y = self.array(name)
        A = rule.matrix
        t = A.T
        src = self._x(rule, y.dtype)
        got = self._levels.get(name)
        level = got[1] if got is not None and got[0]() is rule else None
        undo.action(lambda: self._levels.pop(name, None))     # rolled back: rebuilt on the next change
        if level is None:
            self._levels.pop(name, None)
            level = np.empty(y.size, dtype=np.int32 if y.size < np.iinfo(np.int32).max else np.int64)
            idx, olds = _kernels.repair.reach_build(t.indptr, t.indices, _kview(t.data), _kview(y), _kview(src),
                                                    level)
            self._levels[name] = (_rule_ref(self._levels, name, rule), level)
            self.stats.rows_recomputed += int(y.size)
        else:
            keys = np.empty(0, dtype=np.int64)
            old = np.empty(0, dtype=np.bool_)
            if mch is not None:
                M = self.page(rule.matrix_page)
                keys = mch.idx
                old = mch.old if A is M.csr else mch.old.astype(np.bool_) & (mch.old != M.zero)
            points = ch.idx if ch is not None else np.empty(0, dtype=np.int64)
            try:
                idx, olds, region = _kernels.repair.reach(
                    A.indptr, A.indices, A.data, t.indptr, t.indices, t.data, y, src, level, keys, old, points,
                    self._marks8(y.size), self._scratch(name, y))
            except BaseException:
                self._levels.pop(name, None)
                raise
            self.stats.rows_recomputed += region
            self.stats.entries_pushed += int(keys.size + points.size)
        if not idx.size:
            return None
        return self._record(name, idx, olds.view(y.dtype), undo)

    def _closure_matrix_numpy(self, name: str, rule: Rule, mch: Change, undo: UndoLog) -> Optional[Change]:
        """:meth:`_closure_matrix` under a semiring the kernels do not know (numpy ⊕ and ⊗, same steps)."""
        sr = rule.semiring
        y = self.array(name)
        A = rule.matrix
        zero = sr.zero_for(y.dtype)
        rows, cols = np.divmod(mch.idx, A.shape[1])
        new = csr.get_entries(A, rows, cols, zero)
        if new.dtype.kind == "f" and np.isnan(new).any():
            self._refuse_nan_entries(name, rule, mch)
        M = self.page(rule.matrix_page)
        old = mch.old.astype(y.dtype)
        old[~(mch.old != M.zero)] = zero                 # an absent entry of the page is ⊕'s zero of the rule
        better = ~changed_positions(sr.add_arrays(old, new), new)
        src = self._x(rule, y.dtype)
        region = np.empty(0, dtype=np.int64)
        if not better.all():
            # entries tight under their old weight: y[i] == old ⊗ y[j]. If a worsened one is among them, the values
            # through it are invalidated; so are those tight through an improved one, since the region is grown
            # with the new weights (a value tight under an improved entry's old weight would be missed)
            yj = y[cols]
            with np.errstate(all="ignore"):
                via = sr.mul_arrays(old, yj)
            tight = ~changed_positions(via, y[rows]) & (yj != zero) & (old != zero)
            if (tight & ~better).any():
                region = self._region(A, unique(rows[tight]), y, sr, zero, limit=y.size // _REPAIR_SHARE)
                if region is None:              # most of the page depended on them: recompute it instead
                    return self._closure(name, rule, None, True, undo)
        heads = cols[better]
        saved = y[region].copy()
        try:
            if region.size:
                y[region] = src[region]
                self._pull_into(rule, region, y, sr)
                self.stats.rows_recomputed += int(region.size)
            frontier = unique(np.concatenate([region, heads])) if heads.size else region
            old_out = self._scratch(name, y)
            reached = self._run_closure(A, y, frontier, sr, old_out)
        except BaseException as exc:
            self._closure_rebuild_before(name, rule, rows, cols, old, new, y, sr)
            if isinstance(exc, _NoFixpoint):
                raise self._no_fixpoint(name, rule) from None
            raise
        idx, pos = unique_first(np.concatenate([region, reached]))
        olds = np.concatenate([saved, old_out[reached]])[pos]
        moved = changed_positions(y[idx], olds)
        if not moved.any():
            return None
        out = self._record(name, idx[moved], olds[moved], undo)
        self._check_closure_nan(name, rule, sr, y, out.idx)
        return out

    def _closure_rebuild_before(self, name: str, rule: Rule, rows: np.ndarray, cols: np.ndarray, old: np.ndarray,
                                new: np.ndarray, y: np.ndarray, sr: Semiring) -> None:
        """After a failed repair: put back the closure under the matrix as it was (the undo log then restores
        the matrix page itself)."""
        A = rule.matrix
        zero = sr.zero_for(y.dtype)
        csr.set_entries(A, rows, cols, old, old != zero)
        try:
            y[:] = self._x(rule, y.dtype)
            self._run_closure(A, y, np.flatnonzero(changed_positions(y, np.full_like(y, zero))).astype(np.int64),
                              sr)
        finally:
            csr.set_entries(A, rows, cols, new, new != zero)

    def _region(self, A: CSR, seeds: np.ndarray, y: np.ndarray, sr: Semiring, zero: Any,
                limit: Optional[int] = None) -> Optional[np.ndarray]:
        """``seeds`` and every entry whose value was tight through one of them (``y[i] == A[i, j] ⊗ y[j]``),
        transitively: the values that may have depended on the seeds (sorted). None once it holds more than
        ``limit`` entries (a repair would then cost more than a recompute)."""
        t = A.T
        selective = sr.builtin or sr.add in _SELECTIVE
        mark = self._marks(y.size)
        parts = [seeds]
        frontier = seeds
        mark[seeds] = True
        size = seeds.size
        try:
            while frontier.size:
                starts = t.indptr[frontier]
                lens = t.indptr[frontier + 1] - starts
                total = int(lens.sum())
                if not total:
                    break
                offs = csr._expand(starts, lens, total)
                tgt = t.indices[offs]
                if selective:
                    w = t.data[offs]
                    with np.errstate(all="ignore"):
                        via = sr.mul_arrays(w, np.repeat(y[frontier], lens))
                    tight = ~changed_positions(via, y[tgt]) & (w != zero)
                    tgt = tgt[tight]
                tgt = unique(tgt[~mark[tgt]])
                mark[tgt] = True
                parts.append(tgt)
                frontier = tgt
                size += tgt.size
                if limit is not None and size > limit:
                    return None
            rows = unique(np.concatenate(parts)) if len(parts) > 1 else seeds
        finally:
            for p in parts:
                mark[p] = False
        return rows

    def _marks(self, n: int) -> np.ndarray:
        """A bool scratch array of length ``n``, all False between calls (every user clears what it sets)."""
        mark = self._scratch_arrays.get("\0marks")
        if mark is None or mark.size != n:
            mark = self._scratch_arrays["\0marks"] = np.zeros(n, dtype=bool)
            self._scratch_arrays["\0marks8"] = mark.view(np.uint8)
        return mark

    def _marks8(self, n: int) -> np.ndarray:
        """:meth:`_marks` seen as uint8 (the kernels' bit flags)."""
        mark = self._scratch_arrays.get("\0marks8")
        if mark is None or mark.size != n:
            mark = self._marks(n).view(np.uint8)
        return mark

    def _threads_for(self, rows: Optional[np.ndarray]) -> int:
        """Threads for a pull over ``rows`` (None: every row): one below ``_SERIAL_ROWS`` rows, where waking a
        thread team costs more than the rows (most on a many-core host), else the engine's setting."""
        return 1 if rows is not None and rows.size < _SERIAL_ROWS else self.nthreads

    def _scratch(self, name: str, like: np.ndarray) -> np.ndarray:
        """A reusable uninitialised array like ``like`` (closure old values land there)."""
        buf = self._scratch_arrays.get(name)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = np.empty_like(like)
            self._scratch_arrays[name] = buf
        return buf

    def _run_closure(self, A: CSR, y: np.ndarray, frontier: np.ndarray, sr: Semiring,
                     old_out: Optional[np.ndarray] = None, k: Optional[RuleKernel] = None) -> np.ndarray:
        """Converge y from ``frontier``; returns the entries changed (their old values land in ``old_out``).
        ``k``: the kernel arguments of the rule over ``A``, when the caller has them.

        Raises :class:`_NoFixpoint` when the iteration runs past ``n + 1`` rounds; ``y`` is then partly updated
        (the caller restores it).
        """
        if not frontier.size:
            return np.empty(0, dtype=np.int64)
        if k is None or k.matrix is not A:
            k = RuleKernel(A, sr, y.dtype)
        codes = k.codes
        self.stats.entries_pushed += int(frontier.size)
        if codes is not None:
            t = k.t if k.t is not None else k.transpose()
            try:
                return _kernels.spmv.closure(t.indptr, t.indices, t.data, y, frontier, codes[0], codes[1], k.kzero,
                                             old_out, k.t_range)    # (the kernel views bool arrays as uint8)
            except ValueError as exc:
                if "converge" in str(exc):
                    raise _NoFixpoint() from exc
                raise
        start = y.copy()
        rounds = 0
        while frontier.size:
            rounds += 1
            if rounds > y.size + 1:
                raise _NoFixpoint()
            before = y.copy()
            self._push(A, frontier, y[frontier].copy(), y, sr)
            frontier = np.flatnonzero(changed_positions(y, before)).astype(np.int64)
        changed = np.flatnonzero(changed_positions(y, start)).astype(np.int64)
        if old_out is not None:
            old_out[changed] = start[changed]
        return changed

    def _reset_region(self, rule: Rule, worse: np.ndarray, src: np.ndarray, y: np.ndarray,
                      sr: Semiring) -> np.ndarray:
        """Reset the entries whose value may have come through the worsened sources; return them."""
        rows = self._region(rule.matrix, worse, y, sr, sr.zero_for(y.dtype))
        y[rows] = src[rows]
        self._pull_into(rule, rows, y, sr)
        self.stats.rows_recomputed += int(rows.size)
        return rows

    def _pull_into(self, rule: Rule, rows: np.ndarray, y: np.ndarray, sr: Semiring) -> None:
        """y[rows] = y[rows] ⊕ (A ⊗ y)[rows]."""
        tmp = self._scratch("\0pull", y)           # (only the rows asked for are written, and read back)
        codes = sr.codes_for(y.dtype)
        zero = sr.zero_for(y.dtype)
        A = rule.matrix
        if codes is not None:
            _kernels.spmv.spmv(A.indptr, A.indices, _kview(A.data), _kview(y), _kview(tmp), codes[0], codes[1],
                               _kview(np.array([zero]))[0], rows, self._threads_for(rows))
            part = tmp[rows]
        else:
            part = self._pull_numpy(A, y, rows, sr, zero)
        y[rows] = sr.add_arrays(y[rows], part)

    def _closure_bounded(self, rule: Rule, src: np.ndarray, y: np.ndarray, sr: Semiring) -> None:
        """x = src ⊕ A ⊗ x iterated from src, at most ``convergence_bound`` rounds (non-idempotent ⊕)."""
        bound = sr.convergence_bound
        if not bound:
            raise SemiringError(f"closure on page {rule.dst!r}: semiring {sr.name!r} has no fixpoint guarantee")
        rows = np.arange(y.size, dtype=np.int64)
        zero = sr.zero_for(y.dtype)
        x = src.copy()
        for _ in range(int(bound)):
            nxt = sr.add_arrays(src, self._pull_numpy(rule.matrix, x, rows, sr, zero))
            done = not changed_positions(nxt, x).any()
            x = nxt
            if done:
                break
        y[:] = x

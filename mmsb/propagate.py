"""The propagation engine: one wave pushes page changes down the DAG, incrementally where the algebra allows.

A :class:`Change` is what a commit did to one page: the sorted flat positions that changed and their values
before. For a ``link`` or ``closure`` the engine pushes ``A ⊗ d`` merged with ⊕ (semi-naive, with a cutoff where
nothing changes); when a change cannot be pushed that way (a value that worsens under an idempotent,
non-invertible ⊕) only the affected rows are recomputed; invertible ⊕ (plus) propagates differences. ``derive``
rules recompute in topological order with an equality cutoff. The engine never logs: the buffer turns the changes
it returns into derived deltas of the same epoch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from mmsb import _kernels, _ops
from mmsb._sets import unique, unique_first
from mmsb.errors import InvalidDeltaError, MMSBError, SemiringError
from mmsb.delta import full_index
from mmsb.devices import backend_for
from mmsb.graph import Graph
from mmsb.rules import CSR, Rule
from mmsb.semiring import Semiring, _is_ufunc, _kview

_MISSING = object()
_PULL_FRACTION = 8          # a link change of >= 1/8 of its inputs' entries is recomputed by one pull ...
_PULL_MIN = 4096            # ... once it is big enough for the pull's fixed costs not to matter
_SELECTIVE = (np.minimum, np.maximum, np.fmin, np.fmax, np.logical_or)


@dataclass
class Change:
    """Positions of one page that changed in a commit (sorted, unique, flat) and their values before it."""

    idx: np.ndarray
    old: np.ndarray

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


class UndoLog:
    """Old values of every position a commit touched, to restore the pages if the commit fails."""

    def __init__(self) -> None:
        self.steps: list[Callable[[], None]] = []

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

    # -- a wave -----------------------------------------------------------------------------------------------
    def wave(self, changes: dict[str, Change], undo: UndoLog, force: Optional[set] = None) -> dict[str, Change]:
        """Propagate ``changes`` (and full recomputes of the pages in ``force``) down the DAG.

        Returns the changes made to derived pages, each page computed at most once, in topological order.
        """
        if not changes and not force:
            return {}
        if not force and not self.graph.rule_count:   # no rules at all: nothing downstream of anything
            self.stats.waves += 1
            return {}
        force = set(force or ())
        t0 = time.perf_counter()
        affected = set(force)
        for name in list(changes) + list(force):
            affected.update(self.graph.descendants(name))
        pending = dict(changes)
        produced: dict[str, Change] = {}
        if not affected:  # nothing downstream: skip the O(pages) walk of the topological order
            self.stats.waves += 1
            self.stats.seconds += time.perf_counter() - t0
            return produced
        for name in self.graph.in_order(affected):
            rules = self.graph.rules_into(name)
            if not rules:
                continue
            inputs = {s: pending[s] for r in rules for s in r.srcs if s in pending}
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
            if page.device != "cpu":            # another device family runs the step where the page lives
                return backend_for(page.device).update_page(self, page, rules, inputs, full, undo)
        kind = rules[0].kind
        if kind == "derive":
            return self._derive(name, rules[0], undo)
        if kind == "closure":
            return self._closure(name, rules[0], inputs.get(rules[0].srcs[0]), full, undo)
        return self._links(name, rules, inputs, full, undo)

    def _record(self, name: str, idx: np.ndarray, old: np.ndarray, undo: UndoLog) -> Change:
        undo.record(lambda n=name: self.array(n), idx, old)
        return Change(idx, old)

    # -- derive ---------------------------------------------------------------------------------------------
    def _derive(self, name: str, rule: Rule, undo: UndoLog) -> Optional[Change]:
        if rule.fn is None:
            raise MMSBError(f"derive rule for page {name!r} is inactive: its function {rule.fn_name!r} is not "
                            f"registered; call buf.register_function({rule.fn_name!r}, fn)")
        args = [self.array(s).reshape(self.shape(s)).copy() for s in rule.srcs]
        self.stats.derive_calls += 1
        out = np.asarray(rule.fn(*args))
        y = self.array(name)
        shape = self.shape(name)
        if out.shape != tuple(shape) and not (out.size == y.size and out.ndim <= 1 and len(shape) == 1):
            raise InvalidDeltaError(f"derive function {rule.fn_name!r} for page {name!r} returned shape "
                                    f"{out.shape}, expected {tuple(shape)}")
        if out.dtype.kind not in "biuf" or not np.can_cast(out.dtype, y.dtype, "same_kind"):
            raise InvalidDeltaError(f"derive function {rule.fn_name!r} for page {name!r} returned dtype "
                                    f"{out.dtype}, which does not cast safely to {y.dtype}")
        out = out.reshape(-1).astype(y.dtype, copy=False)
        idx = np.flatnonzero(changed_positions(out, y)).astype(np.int64)
        if not idx.size:
            return None
        old = y[idx].copy()
        y[idx] = out[idx]
        return self._record(name, idx, old, undo)

    # -- links ----------------------------------------------------------------------------------------------
    def _links(self, name: str, rules: list[Rule], inputs: dict[str, Change], full: bool,
               undo: UndoLog) -> Optional[Change]:
        sr = rules[0].semiring
        y = self.array(name)
        pushes: list[tuple[Rule, np.ndarray, np.ndarray]] = []
        recompute: list[np.ndarray] = []
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
                if sr.invertible and sr.sub is not None:
                    pushes.append((r, ch.idx, np.asarray(sr.sub(new, old)).astype(y.dtype, copy=False)))
                elif sr.idempotent:
                    better = ~changed_positions(sr.add_arrays(old, new), new)
                    if better.any():
                        pushes.append((r, ch.idx[better], new[better]))
                    if not better.all():
                        recompute.append(r.matrix.column_rows(ch.idx[~better]))
                else:
                    recompute.append(r.matrix.column_rows(ch.idx))
        cand_parts = [r.matrix.column_rows(idx) for r, idx, _ in pushes] + recompute
        if not cand_parts:
            return None
        cand = unique(np.concatenate(cand_parts)) if len(cand_parts) > 1 else cand_parts[0]
        if not cand.size:
            return None
        before = y[cand].copy()
        for r, idx, vals in pushes:
            self._push(r.matrix, idx, vals, y, sr)
        if pushes and sr.invertible and y.dtype.kind == "f":
            # differences through ±inf/NaN are not exact (inf - inf = nan): recompute those rows
            bad = ~(np.isfinite(y[cand]) & np.isfinite(before))
            if bad.any():
                recompute.append(cand[bad])
        if recompute:
            rows = unique(np.concatenate(recompute)) if len(recompute) > 1 else recompute[0]
            self._pull_rows(rules, rows, y, sr)
            self.stats.rows_recomputed += int(rows.size)
        diff = changed_positions(y[cand], before)
        if not diff.any():
            return None
        return self._record(name, cand[diff], before[diff], undo)

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
        before = y.copy()
        self._pull_rows(rules, None, y, sr)
        self.stats.rows_recomputed += int(y.size)
        moved = changed_positions(y, before)
        count = int(np.count_nonzero(moved))
        if not count:
            return None
        if count == y.size:
            return self._record(name, full_index(y.size), before, undo)
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
                                   codes[1], _kview(np.array([zero]))[0], rows, self.nthreads)
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

    # -- closure --------------------------------------------------------------------------------------------
    def _closure(self, name: str, rule: Rule, ch: Optional[Change], full: bool,
                 undo: UndoLog) -> Optional[Change]:
        sr = rule.semiring
        y = self.array(name)
        src = self._x(rule, y.dtype)
        zero = sr.zero_for(y.dtype)
        if full or not sr.idempotent:
            before = y.copy()
            if not sr.idempotent:
                self._closure_bounded(rule, src, y, sr)
            else:
                y[:] = src
                frontier = np.flatnonzero(changed_positions(y, np.full_like(y, zero))).astype(np.int64)
                self._run_closure(rule.matrix, y, frontier, sr)
            idx = np.flatnonzero(changed_positions(y, before)).astype(np.int64)
            return self._record(name, idx, before[idx], undo) if idx.size else None
        if ch is None or not ch.idx.size:
            return None
        new, old = src[ch.idx], ch.old.astype(y.dtype, copy=False)
        better = ~changed_positions(sr.add_arrays(old, new), new)
        if not better.all():
            return self._closure_worse(name, rule, ch, better, src, y, sr, undo)
        imp = ch.idx
        merged = sr.add_arrays(y[imp], new)
        moved = changed_positions(merged, y[imp])
        seeds, seed_old = imp[moved], y[imp][moved]
        if not seeds.size:
            return None
        y[seeds] = merged[moved]
        old_out = self._scratch(name, y)
        reached = self._run_closure(rule.matrix, y, seeds, sr, old_out)
        idx, pos = unique_first(np.concatenate([seeds, reached]))
        olds = np.concatenate([seed_old, old_out[reached]])[pos]
        return self._record(name, idx, olds, undo)

    def _closure_worse(self, name: str, rule: Rule, ch: Change, better: np.ndarray, src: np.ndarray,
                       y: np.ndarray, sr: Semiring, undo: UndoLog) -> Optional[Change]:
        """Some sources got worse: reset the region that depended on them, then re-converge."""
        before = y.copy()
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

    def _scratch(self, name: str, like: np.ndarray) -> np.ndarray:
        """A reusable uninitialised array like ``like`` (closure old values land there)."""
        buf = self._scratch_arrays.get(name)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = np.empty_like(like)
            self._scratch_arrays[name] = buf
        return buf

    def _run_closure(self, A: CSR, y: np.ndarray, frontier: np.ndarray, sr: Semiring,
                     old_out: Optional[np.ndarray] = None) -> np.ndarray:
        """Converge y from ``frontier``; returns the entries changed (their old values land in ``old_out``)."""
        if not frontier.size:
            return np.empty(0, dtype=np.int64)
        t = A.T
        codes = sr.codes_for(y.dtype)
        zero = sr.zero_for(y.dtype)
        self.stats.entries_pushed += int(frontier.size)
        if codes is not None:
            return _kernels.spmv.closure(t.indptr, t.indices, _kview(t.data), _kview(y), frontier, codes[0],
                                         codes[1], _kview(np.array([zero]))[0],
                                         None if old_out is None else _kview(old_out), t.weight_range)
        start = y.copy()
        while frontier.size:
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
        A = rule.matrix
        t = A.T
        selective = sr.builtin or sr.add in _SELECTIVE
        region = np.zeros(y.size, dtype=bool)
        region[worse] = True
        frontier = worse
        while frontier.size:
            starts, lens = t.indptr[frontier], t.indptr[frontier + 1] - t.indptr[frontier]
            total = int(lens.sum())
            if not total:
                break
            offs = np.repeat(starts - np.cumsum(np.r_[0, lens[:-1]]), lens) + np.arange(total)
            tgt = t.indices[offs]
            if selective:
                via = sr.mul_arrays(t.data[offs], np.repeat(y[frontier], lens))
                tight = ~changed_positions(via, y[tgt])
                tgt = tgt[tight]
            tgt = unique(tgt[~region[tgt]])
            region[tgt] = True
            frontier = tgt
        rows = np.flatnonzero(region).astype(np.int64)
        y[rows] = src[rows]
        self._pull_into(rule, rows, y, sr)
        self.stats.rows_recomputed += int(rows.size)
        return rows

    def _pull_into(self, rule: Rule, rows: np.ndarray, y: np.ndarray, sr: Semiring) -> None:
        """y[rows] = y[rows] ⊕ (A ⊗ y)[rows]."""
        tmp = np.empty_like(y)
        codes = sr.codes_for(y.dtype)
        zero = sr.zero_for(y.dtype)
        A = rule.matrix
        if codes is not None:
            _kernels.spmv.spmv(A.indptr, A.indices, _kview(A.data), _kview(y), _kview(tmp), codes[0], codes[1],
                               _kview(np.array([zero]))[0], rows, self.nthreads)
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

"""Differential test: random histories against an independent model of DESIGN.md.

A hypothesis state machine drives an in-memory or a durable buffer, in eager or deferred propagation, through
page creation (min_plus, max_min, plus_times, or_and), link / derive / closure rules with small random matrices,
writes (sparse or masked, assign or accumulate, worsening assigns included), batches, transactions, drops (with
cascade), unlink, propagate(), checkpoint, reopen and time travel. After every step every page must equal the
model, bit for bit: the model keeps user writes on source pages and recomputes every derived page from scratch in
topological order with plain numpy semiring products and fixpoint iteration for closures. ``buf.at(e)`` is
checked against the model's recorded history at a random past epoch.

Values are small integers (and ±inf where the semiring's values allow it), so plus_times sums are exact and every
comparison can be exact.
"""
import os
import shutil
import tempfile

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import mmsb
from mmsb import errors as E

inf = np.inf
SEMIRINGS = ("min_plus", "max_min", "plus_times", "or_and")
ADD = {"plus_times": np.add, "min_plus": np.minimum, "max_min": np.maximum, "or_and": np.logical_or}
MUL = {"plus_times": np.multiply, "min_plus": np.add, "max_min": np.minimum, "or_and": np.logical_and}
ZERO = {"plus_times": 0.0, "min_plus": inf, "max_min": -inf, "or_and": False}
DTYPE = {"plus_times": np.float64, "min_plus": np.float64, "max_min": np.float64, "or_and": np.bool_}
MAX_SIZE = 5

# Without the commit pipeline (mmsb/commit.py) deferred mode loses its queue on reopen and breaks on dropping a
# page with a pending rule (tests/test_exactness.py pins both). On such a tree the machine propagates first.
PIPELINE = os.path.exists(os.path.join(os.path.dirname(mmsb.__file__), "commit.py"))


def derive_fn(sr, n):
    """The derive function for a dst of semiring ``sr`` and size ``n``: inputs tiled to n, ⊕-combined."""
    def fn(*arrays):
        parts = [np.resize(np.asarray(a).reshape(-1), n) for a in arrays]
        if sr == "plus_times":
            return np.sum(parts, axis=0)
        if sr == "min_plus":
            return np.min(parts, axis=0) + 1.0
        if sr == "max_min":
            return np.max(parts, axis=0)
        return np.any(parts, axis=0)

    return fn


FUNCS = {f"d_{sr}_{n}": derive_fn(sr, n) for sr in SEMIRINGS for n in range(1, MAX_SIZE + 1)}


def reference_derive(sr, n, inputs):
    """Independent of derive_fn's numpy calls: element by element."""
    out = []
    for i in range(n):
        vals = [a[i % a.size] for a in inputs]
        if sr == "plus_times":
            v = 0.0
            for x in vals:
                v += x
        elif sr == "min_plus":
            v = min(vals) + 1.0
        elif sr == "max_min":
            v = max(vals)
        else:
            v = any(vals)
        out.append(v)
    return np.array(out, dtype=DTYPE[sr])


def product(sr, M, stored, x):
    """(A ⊗ x)[i] = ⊕ over stored j of A[i, j] ⊗ x[j], with ⊕'s zero for a row without stored entries."""
    with np.errstate(all="ignore"):
        prod = MUL[sr](M, x[None, :])
    prod = np.where(stored, prod, ZERO[sr]).astype(DTYPE[sr])
    out = np.full(M.shape[0], ZERO[sr], dtype=DTYPE[sr])
    for j in range(M.shape[1]):
        out = ADD[sr](out, prod[:, j])
    return out


def closure_fixpoint(sr, M, stored, src):
    x = src.copy()
    for _ in range(src.size + 2):
        nxt = ADD[sr](src, product(sr, M, stored, x))
        if np.array_equal(nxt, x):
            return x
        x = nxt
    raise AssertionError("reference closure did not converge (the machine only makes convergent ones)")


class Model:
    """Pages, rules, expected values and their history."""

    def __init__(self):
        self.pages = {}              # name -> (size, semiring), in creation order
        self.vals = {}               # name -> expected values now
        self.rules = {}              # dst -> list of (kind, srcs, payload)
        self.history = {}            # epoch -> (names, {name: values})
        self.epoch = 0
        self.counter = 0

    def copy_state(self):
        return list(self.pages), {n: v.copy() for n, v in self.vals.items()}

    def record(self, epoch):
        self.epoch = epoch
        self.history[epoch] = self.copy_state()

    def derived(self, name):
        return bool(self.rules.get(name))

    def reaches(self, a, b):
        """Whether b is downstream of a (or a itself)."""
        seen, stack = {a}, [a]
        while stack:
            u = stack.pop()
            if u == b:
                return True
            for dst, rules in self.rules.items():
                if dst not in seen and any(u in srcs for _, srcs, _ in rules):
                    seen.add(dst)
                    stack.append(dst)
        return False

    def order(self):
        names = list(self.pages)
        indeg = {n: len({s for _, srcs, _ in self.rules.get(n, []) for s in srcs}) for n in names}
        out, ready = [], [n for n in names if indeg[n] == 0]
        while ready:
            u = ready.pop(0)
            out.append(u)
            for n in names:
                if any(u in srcs for _, srcs, _ in self.rules.get(n, [])):
                    indeg[n] -= 1
                    if indeg[n] == 0:
                        ready.append(n)
        assert len(out) == len(names)
        return out

    def recompute(self):
        """Every derived page from scratch, in topological order."""
        for n in self.order():
            rules = self.rules.get(n)
            if not rules:
                continue
            size, sr = self.pages[n]
            kind = rules[0][0]
            if kind == "link":
                acc = np.full(size, ZERO[sr], dtype=DTYPE[sr])
                for _, (s,), (M, stored) in rules:
                    acc = ADD[sr](acc, product(sr, M, stored, self.vals[s]))
                self.vals[n] = acc
            elif kind == "closure":
                _, (s,), (M, stored) = rules[0]
                self.vals[n] = closure_fixpoint(sr, M, stored, self.vals[s])
            else:
                _, srcs, _ = rules[0]
                self.vals[n] = reference_derive(sr, size, [self.vals[s] for s in srcs])

    def apply_write(self, name, kind, idx, mask, values, accumulate):
        v = self.vals[name]
        sr = self.pages[name][1]
        if kind == "sparse":
            for i, x in zip(idx, values):
                v[i] = ADD[sr](v[i], x) if accumulate else x
        else:
            if accumulate:
                v[mask] = ADD[sr](v[mask], values[mask])
            else:
                v[mask] = values[mask]


class HypothesisChooser:
    """Random choices drawn through hypothesis (so failures shrink)."""

    def __init__(self, data):
        self.data = data

    def pick(self, seq):
        return self.data.draw(st.sampled_from(list(seq)))

    def picks(self, seq, n):
        return self.data.draw(st.lists(st.sampled_from(list(seq)), min_size=n, max_size=n))

    def integer(self, lo, hi):
        return self.data.draw(st.integers(lo, hi))

    def flag(self):
        return self.data.draw(st.booleans())

    def flags(self, n):
        return np.array(self.data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)


class SeededChooser:
    """The same choices from a seeded numpy generator (long histories, reproducible by seed)."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def pick(self, seq):
        seq = list(seq)
        return seq[int(self.rng.integers(0, len(seq)))]

    def picks(self, seq, n):
        return [self.pick(seq) for _ in range(n)]

    def integer(self, lo, hi):
        return int(self.rng.integers(lo, hi + 1))

    def flag(self):
        return bool(self.rng.integers(0, 2))

    def flags(self, n):
        return self.rng.integers(0, 2, n).astype(bool)


def page_values(sr, n, c):
    if sr == "or_and":
        return c.flags(n)
    pool = [float(k) for k in range(-3, 7)]
    if sr in ("min_plus", "max_min"):
        pool += [inf, -inf]
    return np.array(c.picks(pool, n), dtype=np.float64)


def matrix(sr, rows, cols, c, closure):
    """A random matrix for a rule: (values, stored mask, what is passed to mmsb)."""
    stored = c.flags(rows * cols).reshape(rows, cols)
    if sr == "or_and":
        pool = [True, False]
    elif sr == "plus_times":
        pool = [-2.0, -1.0, 0.0, 1.0, 2.0]
    elif closure or sr == "min_plus":
        pool = [0.0, 1.0, 2.0, 3.0]                  # no negative cycles
    else:
        pool = [-2.0, 0.0, 1.0, 3.0, inf]
    vals = np.array(c.picks(pool, rows * cols), dtype=DTYPE[sr]).reshape(rows, cols)
    if c.flag():
        return vals, np.ones_like(stored), vals      # a dense ndarray stores every entry
    r, k = np.nonzero(stored)
    return vals, stored, sp.csr_array((vals[r, k], (r, k)), shape=(rows, cols))


class Driver:
    """One buffer and its model; every operation checks the buffer against the model afterwards."""

    def __init__(self, durable, mode):
        self.durable, self.mode = durable, mode
        self.tmp = tempfile.mkdtemp(prefix="mmsb-diff-") if durable else None
        self.path = os.path.join(self.tmp, "store") if durable else None
        self.buf = self._open()
        self.m = Model()
        self.m.record(self.buf.epoch)
        self.trace = []

    def _open(self):
        return mmsb.open(self.path, propagation=self.mode, durability="none", functions=FUNCS)

    def close(self):
        try:
            self.buf.close()
        finally:
            if self.tmp:
                shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------------------------------
    def committed(self, epoch=None):
        """A commit happened: the epoch moved by one; in eager mode derived pages follow at once."""
        assert self.buf.epoch == self.m.epoch + 1, (self.buf.epoch, self.m.epoch)
        if epoch is not None:
            assert epoch == self.buf.epoch
        if self.mode == "eager":
            self.m.recompute()
        self.m.record(self.buf.epoch)

    def refused(self, exc_type, fn):
        names = list(self.m.pages)
        epoch = self.buf.epoch
        with pytest.raises(exc_type):
            fn()
        assert self.buf.epoch == epoch
        assert list(self.buf) == names

    @staticmethod
    def refusal(cycle, has_rule):
        """The error a new rule must raise: CycleError, InvalidDeltaError (dst already computed otherwise), or
        either one when both apply (the contract does not order the checks); None when it is accepted."""
        if cycle and has_rule:
            return (E.CycleError, E.InvalidDeltaError)
        return E.CycleError if cycle else E.InvalidDeltaError if has_rule else None

    def sources(self):
        return [n for n in self.m.pages if not self.m.derived(n)]

    def settle_deferred(self):
        """On a tree without the commit pipeline, run the pending wave before a known-broken deferred step."""
        if self.mode == "deferred" and not PIPELINE:
            self.propagate()

    # -- operations (each returns nothing; ``c`` makes the random choices) ---------------------------------------
    def create(self, c):
        sr = c.pick(SEMIRINGS)
        n = c.integer(1, MAX_SIZE)
        name = f"p{self.m.counter}"
        self.m.counter += 1
        self.trace.append(("create", name, sr, n))
        p = self.buf.create_page(name, n, dtype=DTYPE[sr], semiring=sr)
        assert p.shape == (n,)
        self.m.pages[name] = (n, sr)
        self.m.vals[name] = np.full(n, ZERO[sr], dtype=DTYPE[sr])
        self.committed()

    def drop(self, c):
        name = c.pick(self.m.pages)
        readers = {dst for dst, rules in self.m.rules.items() if any(name in srcs for _, srcs, _ in rules)}
        cascade = c.flag()
        self.trace.append(("drop", name, cascade))
        if readers and not cascade:
            self.refused(E.MMSBError, lambda: self.buf.drop_page(name))
            return
        self.settle_deferred()
        e = self.buf.drop_page(name, cascade=True)
        for dst in readers:
            left = [r for r in self.m.rules[dst] if name not in r[1]]
            if left:
                self.m.rules[dst] = left             # dst stays a function of the links left
            else:
                self.m.rules.pop(dst, None)          # no rule left: dst keeps its values
        self.m.rules.pop(name, None)
        del self.m.pages[name]
        del self.m.vals[name]
        self.committed(e)

    def _pair(self, c, same_size=False):
        dst = c.pick(self.m.pages)
        n, sr = self.m.pages[dst]
        src = c.pick([p for p in self.m.pages if self.m.pages[p][1] == sr and
                      (not same_size or self.m.pages[p][0] == n)])
        return dst, src, sr

    def link(self, c):
        dst, src, sr = self._pair(c)
        M, stored, mat = matrix(sr, self.m.pages[dst][0], self.m.pages[src][0], c, closure=False)
        self.trace.append(("link", dst, src, M, stored))
        existing = self.m.rules.get(dst, [])
        why = self.refusal(self.m.reaches(dst, src), bool(existing) and existing[0][0] != "link")
        if why:
            self.refused(why, lambda: self.buf.link(dst, src, mat))
            return
        e = self.buf.link(dst, src, mat)
        self.m.rules.setdefault(dst, []).append(("link", (src,), (M, stored)))
        self.committed(e)

    def closure(self, c):
        dst, src, sr = self._pair(c, same_size=True)
        n = self.m.pages[dst][0]
        M, stored, mat = matrix(sr, n, n, c, closure=True)
        self.trace.append(("closure", dst, src, M, stored))
        why = self.refusal(self.m.reaches(dst, src), bool(self.m.rules.get(dst)))
        if sr == "plus_times":                       # not idempotent, no convergence bound
            why = (E.SemiringError,) + (why if isinstance(why, tuple) else (why,) if why else ())
        if why:
            self.refused(why, lambda: self.buf.closure(dst, src, mat))
            return
        e = self.buf.closure(dst, src, mat)
        self.m.rules[dst] = [("closure", (src,), (M, stored))]
        self.committed(e)

    def derive(self, c):
        dst, src, sr = self._pair(c)
        srcs = [src] + c.picks([p for p in self.m.pages if self.m.pages[p][1] == sr], c.integer(0, 1))
        fn = f"d_{sr}_{self.m.pages[dst][0]}"
        self.trace.append(("derive", dst, srcs))
        why = self.refusal(any(self.m.reaches(dst, s) for s in srcs), bool(self.m.rules.get(dst)))
        if why:
            self.refused(why, lambda: self.buf.derive(dst, srcs, fn))
            return
        e = self.buf.derive(dst, srcs, fn)
        self.m.rules[dst] = [("derive", tuple(srcs), None)]
        self.committed(e)

    def unlink(self, c):
        dst = c.pick(sorted(d for d, r in self.m.rules.items() if r))
        self.trace.append(("unlink", dst))
        e = self.buf.unlink(dst)
        self.m.rules.pop(dst)                        # dst keeps its values
        self.committed(e)

    def _draw_write(self, c):
        name = c.pick(self.sources())
        n, sr = self.m.pages[name]
        accumulate = c.flag()
        how = c.pick(["sparse", "sparse", "dense", "whole"])
        if how == "sparse":
            k = c.integer(1, 2 * n)
            idx = np.array(c.picks(range(n), k), dtype=np.int64)
            return name, how, idx, None, page_values(sr, k, c), accumulate
        mask = np.ones(n, dtype=bool) if how == "whole" else c.flags(n)
        return name, how, None, mask, page_values(sr, n, c), accumulate

    @staticmethod
    def _send(target, w):
        name, how, idx, mask, values, accumulate = w
        if how == "sparse":
            return target.write(name, values, index=idx, accumulate=accumulate)
        if how == "whole":
            return target.write(name, values, accumulate=accumulate)
        return target.write(name, values, mask=mask, accumulate=accumulate)

    def write(self, c):
        w = self._draw_write(c)
        self.trace.append(("write",) + w)
        e = self._send(self.buf, w)
        self.m.apply_write(*w)
        self.committed(e)

    def write_derived_refused(self, c):
        name = c.pick([n for n in self.m.pages if self.m.derived(n)])
        n, sr = self.m.pages[name]
        self.trace.append(("write_derived", name))
        self.refused(E.InvalidDeltaError, lambda: self.buf.write(name, page_values(sr, n, c)))

    def many_writes(self, c):
        how = c.pick(["batch", "transaction"])
        ws = [self._draw_write(c) for _ in range(c.integer(1, 3))]
        self.trace.append((how, ws))
        if how == "batch":
            with self.buf.batch():
                for w in ws:
                    assert self._send(self.buf, w) is None
        else:
            with self.buf.transaction() as tx:
                for w in ws:
                    self._send(tx, w)
        for w in ws:
            self.m.apply_write(*w)
        self.committed()

    def propagate(self, c=None):
        self.trace.append(("propagate",))
        e = self.buf.propagate()
        assert e == self.buf.epoch >= self.m.epoch
        self.m.recompute()
        self.m.record(self.buf.epoch)

    def checkpoint(self, c=None):
        self.trace.append(("checkpoint",))
        assert self.buf.checkpoint() == self.m.epoch

    def reopen(self, c=None):
        self.trace.append(("reopen",))
        self.settle_deferred()
        self.buf.close()
        self.buf = self._open()
        assert self.buf.epoch == self.m.epoch

    def time_travel(self, c):
        e = c.pick(sorted(self.m.history))
        self.trace.append(("at", e))
        names, vals = self.m.history[e]
        view = self.buf.at(e)
        assert list(view) == names
        for n in names:
            np.testing.assert_array_equal(view[n].read(), vals[n], err_msg=f"at({e})[{n}]")

    def check(self):
        assert list(self.buf) == list(self.m.pages)
        for name, want in self.m.vals.items():
            got = self.buf[name].read()
            assert got.dtype == want.dtype, name
            np.testing.assert_array_equal(got, want, err_msg=f"page {name} at epoch {self.buf.epoch}")

    # -- which operations apply now, and how often ----------------------------------------------------------------
    def enabled(self):
        pages, m = bool(self.m.pages), self.m
        ops = [("create", 3 if len(m.pages) < 3 else 1 if len(m.pages) < 7 else 0),
               ("drop", 1 if pages else 0), ("link", 3 if pages else 0), ("closure", 2 if pages else 0),
               ("derive", 2 if pages else 0), ("unlink", 1 if any(m.rules.values()) else 0),
               ("write", 8 if self.sources() else 0),
               ("write_derived_refused", 1 if any(m.derived(n) for n in m.pages) else 0),
               ("many_writes", 3 if self.sources() else 0),
               ("propagate", 3 if self.mode == "deferred" else 0), ("checkpoint", 1),
               ("reopen", 1 if self.durable else 0), ("time_travel", 2)]
        return [(op, w) for op, w in ops if w]


class DifferentialMachine(RuleBasedStateMachine):
    """The driver's operations as hypothesis rules (failures shrink to a short history)."""

    durable = False
    mode = "eager"

    def __init__(self):
        super().__init__()
        self.d = Driver(self.durable, self.mode)

    def teardown(self):
        self.d.close()

    @initialize(data=st.data())
    def some_pages(self, data):
        for _ in range(data.draw(st.integers(2, 4))):
            self.d.create(HypothesisChooser(data))

    @rule(data=st.data())
    def step(self, data):
        c = HypothesisChooser(data)
        ops = self.d.enabled()
        op = c.pick([op for op, _ in ops])
        getattr(self.d, op)(c)

    @invariant()
    def pages_equal_the_model(self):
        self.d.check()


def _machine(durable, mode, examples, steps):
    cls = type(f"Machine_{'durable' if durable else 'memory'}_{mode}", (DifferentialMachine,),
               {"durable": durable, "mode": mode})
    cls.TestCase.settings = settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                                     suppress_health_check=list(HealthCheck))
    return cls


def run_seeded(durable, mode, seed, steps):
    """A seeded random history of ``steps`` operations, checked after each one; the trace names the failure."""
    d = Driver(durable, mode)
    c = SeededChooser(seed)
    try:
        for _ in range(steps):
            ops = d.enabled()
            weights = np.array([w for _, w in ops], dtype=float)
            op = ops[int(c.rng.choice(len(ops), p=weights / weights.sum()))][0]
            getattr(d, op)(c)
            d.check()
        if mode == "deferred":
            d.propagate()
            d.check()
    except BaseException as exc:
        raise AssertionError(f"seed {seed} ({'durable' if durable else 'memory'}, {mode}) failed after "
                             f"{len(d.trace)} steps; last steps: {d.trace[-6:]}") from exc
    finally:
        d.close()


VARIANTS = [pytest.param(durable, mode, id=f"{'durable' if durable else 'memory'}-{mode}")
            for durable in (False, True) for mode in ("eager", "deferred")]


@pytest.mark.parametrize("durable,mode", VARIANTS)
def test_seeded_histories_match_the_model(durable, mode):
    for seed in range(6 if durable else 10):
        run_seeded(durable, mode, seed, steps=60)


@pytest.mark.parametrize("durable,mode", VARIANTS)
def test_hypothesis_histories_match_the_model(durable, mode):
    _machine(durable, mode, examples=8 if durable else 15, steps=30).TestCase().runTest()


@pytest.mark.slow
@pytest.mark.parametrize("durable,mode", VARIANTS)
def test_long_histories_match_the_model(durable, mode):
    for seed in range(100, 160):
        run_seeded(durable, mode, seed, steps=200)
    _machine(durable, mode, examples=150, steps=60).TestCase().runTest()

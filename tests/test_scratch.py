"""Whole-page old values live in arrays of the commit pipeline's scratch pool, reused across commits: a reused
array never holds old values that anyone can still read (a deferred wave's queue, a commit rolled back after a
failing wave or log append restores exactly)."""
import gc

import numpy as np
import pytest
import scipy.sparse as sp

import mmsb
from mmsb.errors import PropagationError
from mmsb.scratch import ScratchPool

N = 5000          # a full change of this many positions takes the whole-page paths (>= 4096: one pull)


def _matrix(n, seed=0):
    rng = np.random.default_rng(seed)
    A = sp.random(n, n, density=4 / n, random_state=seed, format="csr")
    A.data = rng.integers(1, 5, A.nnz).astype(float)        # small integers: every sum is exact
    return A


def _ints(n, seed):
    """Small integers (exact sums), different from those of every other seed at every position."""
    return np.random.default_rng(seed).integers(-50, 50, n).astype(float) + 1000.0 * seed


# -- the pool ---------------------------------------------------------------------------------------------------
def test_the_pool_lends_an_array_again_once_nothing_references_it():
    pool = ScratchPool()
    like = np.zeros(10)
    a = pool.take(like)
    assert a.shape == like.shape and a.dtype == like.dtype and a.flags.c_contiguous
    b = pool.take(like)
    assert b is not a                       # a is still held here
    ida = id(a)
    del a, b
    c = pool.take(like)
    assert id(c) == ida                     # nothing else holds it: lent again
    del c


def _hold(a, how):
    """Something that keeps ``a`` (or part of it) alive, and the values it shows."""
    if how == "list":
        return [a], lambda k: k[0]
    if how == "view":
        return a.view(), lambda k: k
    if how == "slice":
        return a[2:5], lambda k: k
    if how == "memoryview":
        return memoryview(a), np.asarray
    from mmsb.propagate import Change

    return Change(np.arange(a.size), a), lambda k: k.old


@pytest.mark.parametrize("how", ["list", "view", "slice", "memoryview", "change"])
def test_the_pool_never_lends_an_array_that_something_still_holds(how):
    pool = ScratchPool(per_shape=1)
    a = pool.take(np.zeros(8))
    a[:] = np.arange(8.0)
    keep, shown = _hold(a, how)
    del a
    gc.collect()
    b = pool.take(np.zeros(8))
    b[:] = -1.0
    held = shown(keep)
    np.testing.assert_array_equal(held, np.arange(8.0)[2:5] if how == "slice" else np.arange(8.0))
    assert not np.shares_memory(b, np.asarray(held))


def test_the_pool_keeps_shapes_and_dtypes_apart_and_bounds_what_it_keeps():
    pool = ScratchPool(max_bytes=1000, per_shape=2)
    a = pool.take(np.zeros(10))
    b = pool.take(np.zeros(10, dtype=np.float32))
    c = pool.take(np.zeros((2, 5)))
    assert (a.dtype, b.dtype, c.shape) == (np.float64, np.float32, (2, 5))
    assert pool.nbytes == 80 + 40 + 80
    d = pool.take(np.zeros(10))
    e = pool.take(np.zeros(10))              # a third one of that shape: lent, not kept
    assert pool.nbytes == 80 + 40 + 80 + 80
    big = pool.take(np.zeros(1000))          # over the byte bound: lent, not kept
    assert pool.nbytes == 280 and big.size == 1000
    del a, b, c, d, e, big
    pool.clear()
    assert pool.nbytes == 0


# -- the pipeline -----------------------------------------------------------------------------------------------
def _linked(propagation="eager"):
    buf = mmsb.open(None, propagation=propagation)
    x, y = buf.create_page("x", N), buf.create_page("y", N)
    A = _matrix(N)
    buf.link(y, x, A)
    return buf, x, y, A


def test_full_writes_through_a_link_reuse_the_pool_and_stay_exact():
    buf, x, y, A = _linked()
    ids = set()
    for k in range(6):
        v = _ints(N, k)
        buf.write(x, v)
        np.testing.assert_array_equal(x.read(), v)
        np.testing.assert_array_equal(y.read(), A @ v)
        ids.update(id(a) for arrays in buf._pipe.scratch._arrays.values() for a in arrays)
    assert 0 < buf._pipe.scratch.nbytes <= 2 * N * 8 and len(ids) <= 2     # x's and y's old values, reused
    # the log holds the values of every epoch (time travel reads them back)
    np.testing.assert_array_equal(buf.at(buf.epoch - 1)["y"].read(), A @ _ints(N, 4))


def test_a_failing_wave_after_a_full_recompute_restores_both_pages_exactly():
    buf, x, y, A = _linked()
    z = buf.create_page("z", N)
    boom = {"on": False}

    def double(v):
        if boom["on"]:
            raise RuntimeError("derive failed")
        return v * 2

    buf.register_function("double", double)
    buf.derive(z, [y], double)
    for k in range(3):                                      # the pool's arrays exist and are in use
        buf.write(x, _ints(N, k))
    want = {n: buf[n].read() for n in buf}
    epoch = buf.epoch
    boom["on"] = True
    with pytest.raises(PropagationError):
        buf.write(x, _ints(N, 9))
    assert buf.epoch == epoch
    for n, v in want.items():
        np.testing.assert_array_equal(buf[n].read(), v)
    boom["on"] = False
    buf.write(x, _ints(N, 10))
    np.testing.assert_array_equal(y.read(), A @ _ints(N, 10))
    np.testing.assert_array_equal(z.read(), 2 * (A @ _ints(N, 10)))


def test_a_failing_log_append_restores_both_pages_exactly(monkeypatch):
    buf, x, y, A = _linked()
    for k in range(3):
        buf.write(x, _ints(N, k))
    want = {n: buf[n].read() for n in buf}

    def broken(txn):
        raise OSError("disk full")

    monkeypatch.setattr(buf._log, "append", broken)
    for k in range(3):                                      # and again: each rollback reads a reused array
        with pytest.raises(OSError):
            buf.write(x, _ints(N, 20 + k))
        for n, v in want.items():
            np.testing.assert_array_equal(buf[n].read(), v)
    monkeypatch.undo()
    buf.write(x, _ints(N, 30))
    np.testing.assert_array_equal(y.read(), A @ _ints(N, 30))


def test_a_batch_writing_one_page_twice_rolls_back_to_the_first_values(monkeypatch):
    buf, x, y, A = _linked()
    w = buf.create_page("w", N)
    buf.write(x, _ints(N, 1))
    buf.write(w, _ints(N, 2))
    want = {n: buf[n].read() for n in buf}

    def broken(txn):
        raise OSError("disk full")

    monkeypatch.setattr(buf._log, "append", broken)
    with pytest.raises(OSError):
        with buf.batch():
            buf.write(x, _ints(N, 3))
            buf.write(w, _ints(N, 4))
            buf.write(x, _ints(N, 5))                       # x's second whole-page copy needs its own array
            buf.write(w, _ints(N, 6))
    for n, v in want.items():
        np.testing.assert_array_equal(buf[n].read(), v)


@pytest.mark.parametrize("n", [8, N])
def test_deferred_waves_keep_their_queued_old_values(n):
    """A deferred wave queues the Change of a whole-page write (its old values) until propagate(); whole-page
    writes to other pages of the same shape meanwhile must not reuse that array."""
    buf = mmsb.open(None, propagation="deferred")
    x, y, w, v = (buf.create_page(name, n) for name in "xywv")
    A = _matrix(n, 3)
    buf.link(y, x, A)
    buf.link(v, w, A)                                      # (w has a reader: its writes take the general path)
    buf.write(x, _ints(n, 0))
    buf.propagate()
    buf.write(x, _ints(n, 1))                              # queued: x's old values are _ints(n, 0)
    queued = buf._pipe.pending.changes["x"]
    for k in range(3):
        buf.write(w, _ints(n, 10 + k))                     # whole-page writes of the same shape
    np.testing.assert_array_equal(queued.old[np.argsort(queued.idx)], _ints(n, 0)[np.sort(queued.idx)])
    buf.propagate()
    np.testing.assert_array_equal(y.read(), A @ _ints(n, 1))


def test_no_pool_under_a_memory_limit():
    buf = mmsb.open(None, memory_limit="64 MiB")
    x, y = buf.create_page("x", N), buf.create_page("y", N)
    A = _matrix(N)
    buf.link(y, x, A)
    for k in range(3):
        buf.write(x, _ints(N, k))
    np.testing.assert_array_equal(y.read(), A @ _ints(N, 2))
    assert buf._pipe.scratch.nbytes == 0


def _matvec(A, x, sr):
    """A ⊗ x under plus_times, min_plus or max_plus, from the CSR arrays (rows without entries: ⊕'s zero)."""
    if sr == "plus_times":
        return A @ x
    add, zero = (np.minimum, np.inf) if sr == "min_plus" else (np.maximum, -np.inf)
    out = np.full(A.shape[0], zero)
    terms = A.data + x[A.indices]
    rows = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))
    add.at(out, rows, terms)
    return out


@pytest.mark.parametrize("sr, op", [("plus_times", np.add), ("min_plus", np.minimum), ("max_plus", np.maximum)])
def test_whole_page_accumulate_and_partial_assign_match_numpy(sr, op):
    """Whole-page deltas take the dense merge kernel: accumulated with ⊕, or assigned with only some positions
    changing; the link downstream sees exactly the changed positions."""
    buf = mmsb.open(None)
    x, y = buf.create_page("x", N, semiring=sr), buf.create_page("y", N, semiring=sr)
    A = _matrix(N)
    buf.link(y, x, A)
    ref = x.read()
    for k in range(1, 5):
        v = _ints(N, k) * (-1.0 if sr == "min_plus" else 1.0)       # every step changes every position
        buf.write(x, v, accumulate=True)
        ref = op(ref, v)
        np.testing.assert_array_equal(x.read(), ref)
        np.testing.assert_array_equal(y.read(), _matvec(A, ref, sr))
    part = ref.copy()
    part[::3] = 7.0                                        # a whole-page assignment changing a third of x
    buf.write(x, part)
    np.testing.assert_array_equal(x.read(), part)
    np.testing.assert_array_equal(y.read(), _matvec(A, part, sr))

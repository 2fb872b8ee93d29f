"""The threaded paths of the matrix-change kernels (``repair.update``, ``point.entry_push``) give bit for bit what
one thread and the numpy twins give: the same outputs in the same order, the same matrix, transpose, target and
rounding bounds. The threads are forced (``set_threads(4)`` without the busy-machine fallback) and the parallel
threshold lowered, so that small random cases run the threaded code: rows with many changes, empty rows, free
slots, insertions and removals, a transpose, keys out of order (the serial fallback). Also a link over a matrix
page: a history of large matrix changes gives the same target, threaded or not, as a scipy recompute."""

import contextlib
import os

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmsb
from mmsb import _kernels, propagate
from mmsb._ops import OP_ASSIGN, OP_MIN, OP_PLUS, OP_TIMES
from mmsb._ref import point as ref_point
from mmsb._ref import repair as ref_repair

pytestmark = pytest.mark.skipif(_kernels.KIND != "compiled", reason="compiled kernels not built")

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = propagate.REL_TOL


@contextlib.contextmanager
def threads(n, par_min):
    """The compiled point and repair kernels run with ``n`` threads (no busy-machine fallback) from ``par_min``
    keys on; the configured policy and thresholds are restored after."""
    mods = (_kernels.point, _kernels.repair)
    was = [m.set_parallel_min(par_min) for m in mods]
    for m in mods:
        m.set_threads(n, os.cpu_count() or n, False)
    try:
        assert all(m.threads() == n for m in mods)
        yield
    finally:
        for m, w in zip(mods, was):
            m.set_parallel_min(w)
        _kernels.set_threads(_kernels.THREADS)


SERIAL = (1, 1 << 40)           # one thread
THREADED = (4, 1)               # four threads from one key on


def _model(rng, n, m, heavy):
    """A random sparse model {(r, c): value} of an n x m matrix: some rows empty, ``heavy`` rows nearly full."""
    model = {}
    full = set(rng.choice(n, min(heavy, n), replace=False).tolist())
    for r in range(n):
        if r not in full and rng.random() < 0.3:
            continue                                # an empty row
        dens = 0.9 if r in full else 0.3
        for c in np.flatnonzero(rng.random(m) < dens):
            model[(r, int(c))] = float(rng.integers(1, 9))
    return model


def _csr(model, n, m, rng, free):
    """CSR arrays (int64 indptr, int32 indices, float64 data) of ``model``, rows in random slot order, with up to
    two free slots (value ``free``) per row when ``free`` is not None."""
    indptr, cols, vals = [0], [], []
    for r in range(n):
        slots = [(c, v) for (rr, c), v in model.items() if rr == r]
        if free is not None:
            slots += [(int(rng.integers(0, m)), free) for _ in range(int(rng.integers(0, 3)))]
        rng.shuffle(slots)
        cols += [c for c, _ in slots]
        vals += [v for _, v in slots]
        indptr.append(len(cols))
    return (np.array(indptr, dtype=np.int64), np.array(cols, dtype=np.int32), np.array(vals, dtype=np.float64))


def _update_case(seed, n, m, heavy, k, slots, transpose):
    rng = np.random.default_rng(seed)
    free = np.inf if slots else None
    model = _model(rng, n, m, heavy)
    A = _csr(model, n, m, rng, free)
    T = _csr({(c, r): v for (r, c), v in model.items()}, m, n, rng, free) if transpose else None
    live = np.array(sorted(r * m + c for r, c in model), dtype=np.int64)
    pick = np.concatenate([rng.choice(live, min(k, live.size), replace=False) if live.size else live[:0],
                           rng.integers(0, n * m, k // 3)])         # existing entries, and new ones
    keys = np.unique(pick).astype(np.int64)
    vals = rng.integers(1, 9, keys.size).astype(np.float64)
    vals[rng.random(keys.size) < 0.2] = np.inf                          # removals (⊕-zero)
    return A, T, keys, vals


def _update(kern, case, m, op, free, keys=None, vals=None):
    """``kern.update`` on copies of the case's arrays: ``(result, A arrays after, transpose arrays after)``."""
    A, T, k, v = case
    arrs = [a.copy() for a in A]
    tarrs = [a.copy() for a in T] if T is not None else []
    got = kern.update(*arrs, m, k if keys is None else keys, v if vals is None else vals, op, np.float64(np.inf),
                      free, *tarrs)
    return got, arrs, tarrs


def _same(a, b, bits=True):
    """Equal results: arrays of one dtype and shape with equal bytes (``bits``; else equal values, NaN equal to
    NaN, as the twins promise: numpy and C may give NaNs of another sign), other values equal, item by item."""
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        assert isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y, bits)
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape
        if bits:
            assert a.tobytes() == b.tobytes()
        else:
            np.testing.assert_array_equal(a, b)
    else:
        assert a == b or (a != a and b != b)


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), m=st.integers(1, 40), heavy=st.integers(0, 4),
       k=st.integers(0, 200), slots=st.booleans(), transpose=st.booleans(), accumulate=st.booleans())
@SETTINGS
def test_threaded_update_equals_serial_and_twin(seed, n, m, heavy, k, slots, transpose, accumulate):
    case = _update_case(seed, n, m, heavy, k, slots, transpose)
    free = np.inf if slots else None
    op = OP_MIN if accumulate else OP_ASSIGN
    with threads(*SERIAL):
        serial = _update(_kernels.repair, case, m, op, free)
    with threads(*THREADED):
        threaded = _update(_kernels.repair, case, m, op, free)
    twin = _update(ref_repair, case, m, op, free)
    _same(threaded, serial)
    _same(twin, serial, bits=False)


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 30), m=st.integers(2, 30), slots=st.booleans(),
       transpose=st.booleans())
@SETTINGS
def test_threaded_update_of_keys_out_of_order_equals_serial_and_twin(seed, n, m, slots, transpose):
    case = _update_case(seed, n, m, 2, 80, slots, transpose)
    free = np.inf if slots else None
    rng = np.random.default_rng(seed + 1)
    order = rng.permutation(case[2].size)
    keys, vals = case[2][order], case[3][order]
    with threads(*SERIAL):
        serial = _update(_kernels.repair, case, m, OP_ASSIGN, free, keys, vals)
    with threads(*THREADED):
        threaded = _update(_kernels.repair, case, m, OP_ASSIGN, free, keys, vals)
    twin = _update(ref_repair, case, m, OP_ASSIGN, free, keys, vals)
    _same(threaded, serial)
    _same(twin, serial, bits=False)


def test_threaded_update_error_changes_nothing():
    """A key out of range (in the last part) and a malformed transpose row (met after the parts set entries in
    place) each raise the serial error and leave A and its transpose as they were."""
    n = m = 30
    A, T, keys, _ = _update_case(3, n, m, 3, 300, False, True)
    vals = 100.0 + np.arange(keys.size, dtype=np.float64)       # every key changes (stored values are below 9)
    with threads(*THREADED):
        arrs, tarrs = [a.copy() for a in A], [a.copy() for a in T]
        with pytest.raises(ValueError, match="out of range"):
            _kernels.repair.update(*arrs, m, np.append(keys, n * m), np.append(vals, 1.0), OP_ASSIGN,
                                   np.float64(np.inf), None, *tarrs)
        _same(tuple(arrs), A)
        _same(tuple(tarrs), T)
        broken = [T[0].copy(), T[1], T[2]]
        col = int(keys[-1] % m)                                 # the transpose row of the last change: malformed
        broken[0][col + 1] = broken[0][col] - 1
        arrs, tarrs = [a.copy() for a in A], [a.copy() for a in broken]
        with pytest.raises(ValueError, match="out of range"):
            _kernels.repair.update(*arrs, m, keys, vals, OP_ASSIGN, np.float64(np.inf), None, *tarrs)
        _same(tuple(arrs), A)
        _same(tuple(tarrs), tuple(broken))


def _push_case(seed, nr, nc, heavy, k, special):
    rng = np.random.default_rng(seed)
    dense_rows = rng.choice(nr, min(heavy, nr), replace=False)
    base = rng.choice(nr * nc, min(k, nr * nc), replace=False)
    extra = (dense_rows[:, None] * nc + np.arange(nc)[None, :]).ravel()
    keys = np.unique(np.concatenate([base, extra])).astype(np.int64)
    empty = rng.choice(nr, nr // 4, replace=False)                  # rows with no change at all
    keys = keys[~np.isin(keys // nc, empty)]
    pick = [0.0, 1.5, -2.0, 3.25, 7.0] + ([np.inf, 1e20, np.nan] if special else [])
    old = rng.choice(pick, keys.size)
    new = rng.choice(pick, keys.size)
    new[new == old] += 1.0
    x = rng.uniform(-5, 5, nc)
    x[rng.random(nc) < 0.1] = 0.0                                   # changes that leave their row as it was
    if special:
        x[rng.integers(0, nc)] = rng.choice([np.inf, np.nan, 1e300])
    y = rng.uniform(-50, 50, nr)
    err = TOL * np.abs(y) * rng.uniform(0, 1, nr)
    return keys, old, new, x, y, err


def _push(kern, case, nc, track, mul):
    keys, old, new, x, y, err = case
    yy, ee = y.copy(), err.copy()
    got = kern.entry_push(keys, old, new, nc, x, yy, ee if track else None, mul, 0.0, TOL, True)
    return got, yy, ee


@given(seed=st.integers(0, 2**32 - 1), nr=st.integers(1, 50), nc=st.integers(1, 50), heavy=st.integers(0, 3),
       k=st.integers(0, 300), track=st.booleans(), special=st.booleans(),
       mul=st.sampled_from([OP_TIMES, OP_PLUS]))
@SETTINGS
def test_threaded_entry_push_equals_serial_and_twin(seed, nr, nc, heavy, k, track, special, mul):
    case = _push_case(seed, nr, nc, heavy, k, special)
    with threads(*SERIAL):
        serial = _push(_kernels.point, case, nc, track, mul)
    with threads(*THREADED):
        threaded = _push(_kernels.point, case, nc, track, mul)
    twin = _push(ref_point, case, nc, track, mul)
    _same(threaded, serial)
    _same(twin, serial, bits=False)
    rows, before, bad, after = serial[0]
    np.testing.assert_array_equal(after, serial[1][rows])             # the values after are y's
    if bad is None:
        assert (after != before).all()                                  # only rows that changed


def test_threaded_entry_push_names_the_first_wrong_key():
    keys = np.arange(0, 40000, dtype=np.int64)
    vals = np.ones(keys.size)
    x, y = np.ones(200), np.zeros(200)
    with threads(*THREADED):
        for bad, msg in ((39000, "strictly increasing"), (-1, "strictly increasing")):
            ks = keys.copy()
            ks[bad] = ks[bad - 1]
            with pytest.raises(ValueError, match=f"{msg} \\(key {ks[bad]} after {ks[bad]}\\)"):
                _kernels.point.entry_push(ks, vals, vals, 200, x, y, None, OP_TIMES, 0.0, TOL)
        ks = keys.copy()
        ks[-1] = 200 * 200
        with pytest.raises(ValueError, match=f"key {200 * 200} out of range"):
            _kernels.point.entry_push(ks, vals, vals, 200, x, y, None, OP_TIMES, 0.0, TOL)
        np.testing.assert_array_equal(y, 0.0)                           # nothing written


def _history(side, steps, seed):
    """A link over a plus_times matrix page written with large changes; the target after every commit."""
    rng = np.random.default_rng(seed)
    n = side * side
    A = sp.random(n, n, density=8.0 / n, random_state=seed, format="csr") + sp.eye(n, format="csr")
    A.sort_indices()
    x = rng.uniform(0, 1, n)
    buf = mmsb.open(None)
    xp, yp = buf.create_page("x", n), buf.create_page("y", n)
    M = buf.create_matrix("A", (n, n), data=A)
    buf.write(xp, x)
    buf.link(yp, xp, M)
    coo = A.tocoo()
    out = []
    for _ in range(steps):
        pick = rng.choice(coo.nnz, coo.nnz // 5, replace=False)
        rows, cols = coo.row[pick].astype(np.int64), coo.col[pick].astype(np.int64)
        vals = rng.uniform(1.0, 10.0, pick.size)
        buf.write(M, vals, index=(rows, cols))
        out.append((yp.read().copy(), M.read()))
    buf.close()
    return out, x


def test_link_over_large_matrix_changes_threaded_equals_serial_and_recompute():
    with threads(*SERIAL):
        serial, x = _history(12, 5, 7)
    with threads(*THREADED):
        threaded, _ = _history(12, 5, 7)
    for (ys, ms), (yt, mt) in zip(serial, threaded):
        assert ys.tobytes() == yt.tobytes()
        assert (ms != mt).nnz == 0
        np.testing.assert_allclose(yt, mt @ x, rtol=1e-9)

"""Matrix pages under ``memory_limit``: counted in ``stats()["memory"]``, spilled when cold, reloaded on their next
use (a write, a read, a wave through a rule that reads them, a checkpoint, ``at(e)``, verify), exactly as they were.

The reference for every history is the same history on a buffer without a limit: every page and every matrix must
read back bit for bit equal after every step, and at past epochs through ``at(e)``."""
import copy
import os
import pickle
import shutil

import numpy as np
import pytest

import mmsb
from mmsb import spill
from mmsb.csr import CSR
from mmsb.errors import CorruptionError

sp = pytest.importorskip("scipy.sparse")

N = 48


def _coo(M):
    """(rows, cols, vals) of a matrix page read back, row-major."""
    c = M.read().tocoo()
    order = np.lexsort((c.col, c.row))
    return c.row[order], c.col[order], c.data[order]


def same_state(a, b):
    """Every page and matrix of buffers ``a`` and ``b`` read back bit for bit equal."""
    assert sorted(a) == sorted(b)
    for name in a:
        p, q = a[name], b[name]
        if p.kind == "matrix":
            for x, y in zip(_coo(p), _coo(q)):
                assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), name
        else:
            x, y = p.read(), q.read()
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), name


def _grid(rng, n, density, weights):
    A = sp.random(n, n, density=density, random_state=np.random.RandomState(int(rng.integers(2**31))),
                  format="csr")
    A.data = weights(A.data.size)
    return A


def build(buf, rng_seed):
    """Three matrices and the rules over them: a min_plus closure, a max_min link reading a view of the same
    matrix (another semiring), a plus_times link and an or_and closure."""
    rng = np.random.default_rng(rng_seed)
    M1 = buf.create_matrix("M1", (N, N), "float64", "min_plus",
                           data=_grid(rng, N, 0.12, lambda k: rng.integers(1, 9, k).astype(float)))
    M2 = buf.create_matrix("M2", (N, N), "float64", "plus_times",
                           data=_grid(rng, N, 0.1, lambda k: rng.integers(-3, 4, k) / 4.0))
    M3 = buf.create_matrix("M3", (N, N), "bool", "or_and", data=_grid(rng, N, 0.06, lambda k: np.ones(k, bool)))
    s = buf.create_page("s", N, "float64", "min_plus")
    d = buf.create_page("d", N, "float64", "min_plus")
    w = buf.create_page("w", N, "float64", "max_min")
    x = buf.create_page("x", N, "float64", "plus_times")
    y = buf.create_page("y", N, "float64", "plus_times")
    r0 = buf.create_page("r0", N, "bool", "or_and")
    r = buf.create_page("r", N, "bool", "or_and")
    wsrc = buf.create_page("wsrc", N, "float64", "max_min")
    buf.write(s, 0.0, index=[0, 7])
    buf.write(x, rng.integers(-4, 5, N) / 2.0)
    buf.write(r0, True, index=[1])
    buf.write(wsrc, np.inf, index=[3])
    buf.closure(d, s, M1)
    buf.link(w, wsrc, M1)                      # max_min over a min_plus matrix: a view of M1
    buf.link(y, x, M2)
    buf.closure(r, r0, M3)
    return [M1, M2, M3]


def step(buf, rng):
    """One random change: a page write, or a matrix write (insertions, deletions, increases, decreases,
    accumulate), sometimes several in one batch."""
    def one():
        k = int(rng.integers(1, 6))
        what = rng.integers(0, 7)
        if what == 0:
            idx = rng.choice(N, k, replace=False)
            vals = np.where(rng.random(k) < 0.3, np.inf, rng.integers(0, 5, k).astype(float))
            buf.write("s", vals, index=idx)
        elif what == 1:
            buf.write("x", rng.integers(-4, 5, k) / 2.0, index=rng.choice(N, k, replace=False),
                      accumulate=bool(rng.random() < 0.5))
        elif what == 2:
            buf.write("r0", rng.random(k) < 0.5, index=rng.choice(N, k, replace=False))
        else:
            name = ("M1", "M1", "M2", "M3")[what - 3]
            keys = rng.choice(N * N, k, replace=False)
            rows, cols = np.divmod(keys, N)
            if name == "M1":
                vals = np.where(rng.random(k) < 0.25, np.inf, rng.integers(1, 9, k).astype(float))
            elif name == "M2":
                vals = np.where(rng.random(k) < 0.25, 0.0, rng.integers(-3, 4, k) / 4.0)
            else:
                vals = rng.random(k) < 0.6
            buf.write(name, vals, index=(rows, cols), accumulate=bool(name != "M3" and rng.random() < 0.3))

    if rng.random() < 0.2:
        with buf.batch():
            for _ in range(int(rng.integers(2, 4))):
                one()
    else:
        one()


def _held(M):
    """Bytes of the arrays a resident matrix holds, counted independently of mmsb.spill.held_bytes."""
    arrays = {}
    A = M.csr
    objs = [A, A._t, A._abs_t] + [c for v, _, _ in M._views.values() for c in (v, v._t, v._abs_t)]
    for c in objs:
        if c is not None:
            for a in (c.__dict__["indptr"], c.__dict__["indices"], c.__dict__["data"]):
                arrays[id(a)] = a.nbytes
    return sum(arrays.values())


# -- stats ------------------------------------------------------------------------------------------------------
def test_stats_count_matrices_with_their_transposes_and_views():
    with mmsb.open(None) as buf:
        mats = build(buf, 1)
        mem = buf.stats()["memory"]
        pages = sum(buf[n].nbytes for n in buf if buf[n].kind != "matrix")
        assert mem["matrix_bytes"] == sum(_held(M) for M in mats) == sum(M.memory_bytes for M in mats)
        assert mem["resident_bytes"] == pages + mem["matrix_bytes"]
        M1 = mats[0]
        assert M1._views and M1.memory_bytes > M1.nbytes      # the max_min view is counted, M.nbytes is its CSR
        own = M1.csr.indptr.nbytes + M1.csr.indices.nbytes + M1.csr.data.nbytes
        assert M1.nbytes == own
        assert M1.csr._t is not None                          # (the closure's transpose, counted in _held)
        M2 = mats[1]
        before = M2.memory_bytes
        z = buf.create_page("z", N, "float64", "min_plus")
        buf.link(z, "x", M2)                                  # a min_plus view of the plus_times M2
        assert M2._views and M2.memory_bytes == _held(M2) > before
        assert buf.stats()["memory"]["matrix_bytes"] == sum(_held(M) for M in mats)


def test_dropped_matrix_leaves_the_count_and_its_spill_file(tmp_path):
    with mmsb.open(str(tmp_path / "s"), "w", memory_limit=4096, durability="none") as buf:
        M = buf.create_matrix("M", (N, N), "float64", "min_plus", data=np.eye(N) + 1)
        buf.create_page("p", 400)
        assert M._mspill is not None
        path = M._mspill.path
        assert os.path.exists(path)
        buf.drop_page(M)
        st = buf.stats()["memory"]
        assert not os.path.exists(path) and st["spilled_bytes"] == 0 and st["matrices_spilled"] == 0


# -- random histories against the same history without a limit ---------------------------------------------------
def _mbytes(seed):
    with mmsb.open(None) as buf:
        build(buf, seed)
        for k in ("s", "x", "r0", "wsrc"):
            buf.write(k, buf[k].read())
        buf.write("s", 0.0, index=[2])
        buf.write("M1", 3.0, index=([1], [2]))
        return [buf[n].memory_bytes for n in ("M1", "M2", "M3")], buf.stats()["memory"]["resident_bytes"]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fit", ["none", "some"])
def test_random_histories_equal_the_unlimited_buffer(seed, fit):
    mats, total = _mbytes(seed)
    # "none": smaller than any one matrix (each use reloads it); "some": a fraction of all that the history holds
    limit = min(mats) // 2 if fit == "none" else total // 3
    rng_a, rng_b = np.random.default_rng(seed + 100), np.random.default_rng(seed + 100)
    with mmsb.open(None, memory_limit=limit) as a, mmsb.open(None) as b:
        build(a, seed)
        build(b, seed)
        same_state(a, b)
        spilled_seen = 0
        epochs = []
        for _ in range(40):
            step(a, rng_a)
            step(b, rng_b)
            assert a.epoch == b.epoch
            epochs.append(a.epoch)
            spilled_seen += a.stats()["memory"]["matrices_spilled"]
            same_state(a, b)
        a.checkpoint()
        b.checkpoint()
        for _ in range(10):
            step(a, rng_a)
            step(b, rng_b)
        same_state(a, b)
        st = a.stats()["memory"]
        assert spilled_seen > 0 and st["reloads"] > 0 and st["evictions"] > 0
        assert b.stats()["memory"]["evictions"] == 0
        for e in sorted(np.random.default_rng(seed).choice(epochs, 5, replace=False)) + [a.epoch]:
            va, vb = a.at(int(e)), b.at(int(e))
            same_state(va, vb)
            va.close()
            vb.close()


def test_transactions_read_and_write_spilled_matrices():
    with mmsb.open(None, memory_limit=2048) as a, mmsb.open(None) as b:
        for buf in (a, b):
            build(buf, 5)
        assert a["M1"]._mspill is not None
        for buf in (a, b):
            with buf.transaction() as tx:
                got = tx.read("M1", index=([0, 1, 2], [3, 4, 5]))
                tx.write("M1", got + 1.0, index=([0, 1, 2], [3, 4, 5]))
                tx.write("M2", 0.5, index=([4], [4]))
        same_state(a, b)


# -- durable stores -------------------------------------------------------------------------------------------------
def test_durable_store_with_spilled_matrices_reopens_equal_and_verifies(tmp_path):
    root = str(tmp_path / "s")
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    with mmsb.open(root, "w", memory_limit=3000, durability="flush", auto_checkpoint=False) as a, \
            mmsb.open(None) as b:
        build(a, 3)
        build(b, 3)
        for i in range(30):
            step(a, rng_a)
            step(b, rng_b)
            if i == 12:
                a.checkpoint()              # a checkpoint reloads the spilled matrices it writes
        same_state(a, b)
        files = os.listdir(os.path.join(root, "spill"))
        kinds = set()
        for f in files:
            try:
                spill.read_matrix_spill(os.path.join(root, "spill", f))
                kinds.add("matrix")
            except CorruptionError:
                spill.read_blob_file(os.path.join(root, "spill", f))
                kinds.add("page")
        assert "matrix" in kinds
        rep = mmsb.verify(root)                 # the spill files of the open buffer are checked too
        assert rep.ok, rep.problems
        want = {n: (_coo(b[n]) if b[n].kind == "matrix" else b[n].read()) for n in b}
        past = {e: b.at(e) for e in (5, 20)}
        pw = {e: {n: (_coo(v[n]) if v[n].kind == "matrix" else v[n].read()) for n in v} for e, v in past.items()}
    for limit in (3000, None):
        with mmsb.open(root, "a", memory_limit=limit) as c:
            for n, w in want.items():
                got = _coo(c[n]) if c[n].kind == "matrix" else c[n].read()
                for x, y in zip(got, w) if c[n].kind == "matrix" else [(got, w)]:
                    assert np.array_equal(x, y, equal_nan=True), n
            for e, ws in pw.items():
                v = c.at(e)
                for n, w in ws.items():
                    got = _coo(v[n]) if v[n].kind == "matrix" else v[n].read()
                    for x, y in zip(got, w) if v[n].kind == "matrix" else [(got, w)]:
                        assert np.array_equal(x, y, equal_nan=True), (e, n)
                v.close()


def test_verify_reports_a_damaged_matrix_spill_file(tmp_path):
    root = str(tmp_path / "s")
    with mmsb.open(root, "w", memory_limit=2048, durability="none") as buf:
        build(buf, 2)
        M = buf["M2"]
        assert M._mspill is not None
        _flip(M._mspill.path)
        rep = mmsb.verify(root)
        assert not rep.ok and any(os.path.basename(M._mspill.path) in p for p in rep.problems)


# -- errors ---------------------------------------------------------------------------------------------------------
def _flip(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.seek(size // 2)
        b = fh.read(1)
        fh.seek(size // 2)
        fh.write(bytes([b[0] ^ 0xFF]))


@pytest.mark.parametrize("damage", ["flip", "missing", "other"])
@pytest.mark.parametrize("use", ["write", "wave", "read"])
def test_damaged_spill_file_raises_and_changes_nothing(tmp_path, damage, use):
    with mmsb.open(str(tmp_path / "s"), "w", memory_limit=2048, durability="none") as buf:
        build(buf, 4)
        M = buf["M1"]
        assert M._mspill is not None
        path = M._mspill.path
        if damage == "flip":
            _flip(path)
        elif damage == "missing":
            os.remove(path)
        else:                                   # a valid spill file of another matrix in its place
            other = buf["M2"]
            assert other._mspill is not None
            shutil.copyfile(other._mspill.path, path)
        epoch, before = buf.epoch, {n: buf[n].read() for n in buf if buf[n].kind != "matrix"}
        with pytest.raises(CorruptionError, match="matrix 'M1'"):
            if use == "write":
                buf.write(M, 1.0, index=([0], [1]))
            elif use == "wave":
                buf.write("s", 0.0, index=[9])        # the closure over M1 must read it
            else:
                M.read()
        assert buf.epoch == epoch and M._mspill is not None and M._mspill.path == path
        for n, v in before.items():
            assert np.array_equal(buf[n].read(), v, equal_nan=True), n
        buf.write("x", 1.0, index=[0])                # what does not read M1 still works


# -- the spilled CSR --------------------------------------------------------------------------------------------------
def test_a_rule_matrix_reloads_on_any_use():
    with mmsb.open(None, memory_limit=1024) as buf:
        build(buf, 6)
        M = buf["M1"]
        rule = next(r for r in buf._graph.rules_into("d"))
        assert M._mspill is not None and isinstance(rule.matrix, spill.SpilledCSR)
        assert rule.matrix is M.csr and "spilled" in repr(rule.matrix)
        assert rule.matrix.shape == (N, N)             # no reload for what is not an array
        assert M._mspill is not None
        n = M.nnz                                       # nnz and nbytes of a spilled matrix: no reload
        assert M._mspill is not None and n == M._mspill.nnz
        ip = rule.matrix.indptr                         # an array: reloads, exactly as it was
        assert M._mspill is None and type(rule.matrix) is CSR and ip is M.csr.indptr
        assert M.nnz == n
        buf.create_page("big", 100)                     # evicts M again
        assert M._mspill is not None
        for clone in (pickle.loads(pickle.dumps(rule.matrix)), copy.copy(rule.matrix)):
            assert type(clone) is CSR and np.array_equal(clone.indptr, M.csr.indptr)


def test_eviction_order_is_least_recently_used():
    def mk(buf, name, k):
        return buf.create_matrix(name, (N, N), "float64", "min_plus",
                                 data=sp.diags(np.arange(1, k + 1, dtype=float), 0, shape=(N, N)))

    with mmsb.open(None) as probe:
        one = mk(probe, "A", N).memory_bytes
    with mmsb.open(None, memory_limit=int(2.5 * one)) as buf:
        A, B, C = (mk(buf, n, N) for n in "ABC")
        assert [m._mspill is not None for m in (A, B, C)] == [True, False, False]
        A.read(index=([0], [0]))                         # A back, B now the least recently used
        assert [m._mspill is not None for m in (A, B, C)] == [False, True, False]
        buf.write(C, 2.0, index=([1], [1]))
        buf.write(A, 2.0, index=([1], [1]))
        B.read()
        assert [m._mspill is not None for m in (A, B, C)] == [False, False, True]
        with A.pin(), B.pin():
            C.read()                                     # over the limit: nothing unpinned to evict
            assert [m._mspill is not None for m in (A, B, C)] == [False, False, False]
        buf.write(A, 3.0, index=([2], [2]))
        assert [m._mspill is not None for m in (A, B, C)] == [False, True, False]


def test_evicting_an_unchanged_matrix_writes_nothing():
    with mmsb.open(None, memory_limit=2048) as buf:
        build(buf, 8)
        M = buf["M3"]
        assert M._mspill is not None
        M.read()
        path = buf._memory._mclean["M3"][1]
        writes = buf.stats()["memory"]["spill_writes"]
        buf.create_page("big", 200)
        assert M._mspill is not None and M._mspill.path == path
        assert buf.stats()["memory"]["spill_writes"] == writes
        now = bool(M.read(index=([0], [1]))[0])
        buf.write(M, not now, index=([0], [1]))           # changed: the next eviction writes it again
        buf.create_page("big2", 200)
        assert M._mspill is not None and M._mspill.path != path
        assert not os.path.exists(path)
        assert bool(M.read(index=([0], [1]))[0]) is not now


# -- the file format ---------------------------------------------------------------------------------------------------
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


def test_golden_matrix_spill_file_reads_back():
    """tests/golden/matrix_spill_v1.spill (tests/golden/make_golden_matrix_spill.py): a min_plus matrix with
    free slots, its transpose and a max_min view. Format 1 must keep reading to exactly these arrays."""
    import json

    with open(os.path.join(HERE, "expected_matrix_spill_v1.json")) as fh:
        want = json.load(fh)
    pl, arrays = spill.read_matrix_spill(os.path.join(HERE, "matrix_spill_v1.spill"))
    assert pl["format"] == 1 == spill.MATRIX_SPILL_FORMAT
    assert {k: pl[k] for k in ("matrix", "shape", "dtype", "semiring")} == want["payload"]
    assert [c["part"] for c in pl["csrs"]] == list(want["parts"])
    for part, w in want["parts"].items():
        got = arrays[part]
        for a, name in zip(got, ("indptr", "indices", "data")):
            assert a.dtype.str == w[name]["dtype"], (part, name)
            assert a.tolist() == w[name]["values"], (part, name)
    spill.check_spill_file(os.path.join(HERE, "matrix_spill_v1.spill"))


def test_writer_matches_the_golden_layout(tmp_path):
    """What the writer writes today has the golden file's layout (same entry, payload keys and CSR fields)."""
    import importlib.util

    from mmsb.container import read_container

    spec = importlib.util.spec_from_file_location("mk", os.path.join(HERE, "make_golden_matrix_spill.py"))
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    path = mk.write(str(tmp_path / "new.spill"))
    man_new, _, rules_new = read_container(path, spill.BLOB_MAGIC)
    man_old, _, rules_old = read_container(os.path.join(HERE, "matrix_spill_v1.spill"), spill.BLOB_MAGIC)
    assert man_new["kind"] == man_old["kind"] == "blob" and man_new["pages"] == man_old["pages"] == []
    (new,), (old,) = rules_new, rules_old
    assert new.kind == old.kind == spill.MATRIX_SPILL_KIND
    assert new.payload == old.payload
    assert sorted(new.arrays) == sorted(old.arrays)
    for k in new.arrays:                            # (the values are the CSR layout's business, not the format's)
        assert new.arrays[k].dtype == old.arrays[k].dtype and new.arrays[k].ndim == old.arrays[k].ndim == 1


@pytest.mark.parametrize("bad", ["format", "length", "index", "indptr"])
def test_a_malformed_matrix_spill_file_is_refused(tmp_path, bad):
    from mmsb.container import write_container
    from mmsb.delta import SchemaOp

    _, arrays = spill.read_matrix_spill(os.path.join(HERE, "matrix_spill_v1.spill"))
    pl, _ = spill.read_matrix_spill(os.path.join(HERE, "matrix_spill_v1.spill"))
    arrs = {f"{i}.{a}": x.copy() for i, c in enumerate(pl["csrs"])
            for a, x in zip(("indptr", "indices", "data"), arrays[c["part"]])}
    if bad == "format":
        pl["format"] = 2
    elif bad == "length":
        arrs["0.data"] = arrs["0.data"][:-1]
    elif bad == "index":
        arrs["0.indices"][0] = pl["shape"][1]
    else:
        arrs["0.indptr"][1] = arrs["0.indptr"][-1] + 1
    path = str(tmp_path / "bad.spill")
    write_container(path, spill.BLOB_MAGIC, 0, [], [SchemaOp(spill.MATRIX_SPILL_KIND, pl, arrs)], None, False,
                    kind="blob")
    with pytest.raises(CorruptionError):
        spill.read_matrix_spill(path)
    with pytest.raises(CorruptionError):
        spill.read_blob_file(path)                 # never mistaken for a value page's spill file


def test_a_failed_commit_restores_a_matrix_spilled_meanwhile():
    """A batch writes M1 (reloading it), then a derive function raises: the rollback restores M1's entries, even
    though the wave spilled and reloaded it in between."""
    def boom(a):
        if a[0] > 100:
            raise RuntimeError("boom")
        return a + 1

    with mmsb.open(None, memory_limit=1500) as a, mmsb.open(None) as b:
        for buf in (a, b):
            build(buf, 9)
            q = buf.create_page("q", N)
            buf.derive(buf.create_page("dq", N), [q], boom)
        assert a["M1"]._mspill is not None and a["M2"]._mspill is not None
        for buf in (a, b):
            with pytest.raises(mmsb.errors.PropagationError), buf.batch():
                buf.write("M1", [1.0, np.inf, 2.0], index=([0, 1, 2], [5, 6, 7]))
                buf.write("s", 0.0, index=[11])                # a wave through the closure over M1
                buf.write("M2", 0.0, index=([3], [3]))
                buf.write("q", 1000.0, index=[0])              # the derive raises: nothing is committed
        assert a.epoch == b.epoch
        same_state(a, b)
        assert a.stats()["memory"]["reloads"] > 0
        step(a, np.random.default_rng(1))
        step(b, np.random.default_rng(1))
        same_state(a, b)


def test_pinning_a_spilled_matrix_reloads_it():
    with mmsb.open(None) as probe:
        one = probe.create_matrix("A", (N, N), "float64", "min_plus",
                                  data=sp.diags(np.arange(1, N + 1, dtype=float), 0, shape=(N, N))).memory_bytes
    with mmsb.open(None, memory_limit=int(1.5 * one)) as buf:
        A, B = (buf.create_matrix(n, (N, N), "float64", "min_plus",
                                  data=sp.diags(np.arange(1, N + 1, dtype=float), 0, shape=(N, N))) for n in "AB")
        assert A._mspill is not None
        with A.pin():
            assert A._mspill is None and B._mspill is not None
            buf.write(B, 5.0, index=([0], [0]))          # B comes back; A, pinned, stays
            assert A._mspill is None
        np.testing.assert_array_equal(A.read().toarray(), np.diag(np.arange(1, N + 1, dtype=float)))


def test_a_spilled_matrix_dropped_and_created_again_in_one_batch_leaves_no_spill_behind():
    with mmsb.open(None) as probe:
        one = probe.create_matrix("A", (N, N), "float64", "min_plus",
                                  data=sp.diags(np.arange(1, N + 1, dtype=float), 0, shape=(N, N))).memory_bytes
    with mmsb.open(None, memory_limit=int(1.5 * one)) as buf:
        buf.create_matrix("A", (N, N), "float64", "min_plus",
                          data=sp.diags(np.arange(1, N + 1, dtype=float), 0, shape=(N, N)))
        buf.create_matrix("B", (N, N), "float64", "min_plus",
                          data=sp.diags(np.ones(N), 0, shape=(N, N)))
        A = buf["A"]
        assert A._mspill is not None
        spilled = A._mspill.path
        with buf.batch():
            buf.drop_page("A")
            buf.create_matrix("A", (N, N), "float64", "min_plus", data=sp.diags(np.ones(N), 0, shape=(N, N)))
        assert not os.path.exists(spilled)
        mem = buf.stats()["memory"]
        expect = sum(m._mspill.nbytes for m in (buf["A"], buf["B"]) if m._mspill is not None)
        assert mem["spilled_bytes"] == expect
        np.testing.assert_array_equal(buf["A"].read().toarray(), np.eye(N))

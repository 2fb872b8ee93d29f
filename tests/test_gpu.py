"""GPU pages (CuPy). CPU-runnable fallback tests run everywhere; tests marked ``gpu`` need CuPy and a device,
``multigpu`` two devices; they skip cleanly otherwise."""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

import mmsb
from mmsb import _kernels, _ops
from mmsb.errors import DeviceError, DeviceFallbackWarning


def _gpu_ok() -> bool:
    try:
        import mmsb.gpu as g

        return g.available()
    except Exception:
        return False


HAVE_GPU = _gpu_ok()
NGPU = __import__("mmsb.gpu").gpu.device_count() if HAVE_GPU else 0
needs_gpu = pytest.mark.skipif(not HAVE_GPU, reason="needs CuPy and a CUDA device")
needs_2gpu = pytest.mark.skipif(NGPU < 2, reason="needs two CUDA devices")

SEMIRINGS = ["plus_times", "min_plus", "max_plus", "max_times", "max_min", "min_max", "or_and"]
DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64"]


def _values(rng, dt, n, lo=-5, hi=6):
    dt = np.dtype(dt)
    if dt.kind == "b":
        return rng.random(n) < 0.5
    if dt.kind == "u":
        return rng.integers(0, hi, n).astype(dt)
    if dt.kind == "i":
        return rng.integers(lo, hi, n).astype(dt)
    return (rng.standard_normal(n) * 3).astype(dt)


def _pairs():
    for s in SEMIRINGS:
        for d in (["bool"] if s == "or_and" else DTYPES):
            yield s, d


def _close(a, b, dt, plus):
    a, b = np.asarray(a), np.asarray(b)
    if np.dtype(dt).kind == "f" and plus:
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64),
                                   rtol=1e-5 if np.dtype(dt) == np.float32 else 1e-12, atol=1e-5)
    else:
        np.testing.assert_array_equal(a.view(np.uint8) if a.dtype == bool else a,
                                      b.view(np.uint8) if b.dtype == bool else b)


# -- everywhere (CPU CI included) -----------------------------------------------------------------------------
def test_import_mmsb_does_not_import_cupy():
    code = "import sys, mmsb; import mmsb.gpu; assert 'cupy' not in sys.modules, 'cupy imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fallback_without_cupy_warns_and_stays_correct():
    import mmsb.gpu as g

    g.inject_failure("no_cupy")
    try:
        with mmsb.open(None) as buf:
            with pytest.warns(DeviceFallbackWarning):
                p = buf.create_page("x", 8, "float64", "min_plus", device="cuda")
            assert p.device == "cpu"
            buf.write(p, [3.0, 1.0], index=[1, 2], accumulate=True)
            assert p.read()[1] == 3.0 and p.read()[2] == 1.0
            with pytest.warns(DeviceFallbackWarning):
                p.to("cuda:0")
            assert p.device == "cpu"
            fb = buf.stats()["device"]["gpu"]["fallbacks"]
            assert fb and fb[0]["page"] == "x"
    finally:
        g.clear_injected()


def test_fallback_from_open_default_device():
    import mmsb.gpu as g

    g.inject_failure("no_cupy")
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            with mmsb.open(None, device="cuda") as buf:
                a = buf.create_page("a", 4, "int64", "plus_times")
                b = buf.create_page("b", 4, "int64", "plus_times")
                buf.link(b, a, np.eye(4, dtype=np.int64) * 2)
                buf.write(a, [1, 2, 3, 4])
                assert b.read().tolist() == [2, 4, 6, 8]
        assert any(issubclass(x.category, DeviceFallbackWarning) for x in w)
    finally:
        g.clear_injected()


def test_unknown_device_is_an_error():
    with mmsb.open(None) as buf:
        with pytest.raises(DeviceError):
            buf.create_page("x", 4, device="tpu")


# -- on a GPU -------------------------------------------------------------------------------------------------
@pytest.fixture
def K():
    from mmsb.gpu import kernels

    return kernels


def _dev(a):
    import cupy as cp

    return cp.asarray(a)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("sr,dt", list(_pairs()))
def test_kernels_merge_equal_cpu(K, sr, dt):
    import cupy as cp

    s = mmsb.semirings.get(sr)
    rng = np.random.default_rng(1)
    n = 1000
    add, mul = s.codes_for(np.dtype(dt))
    page = _values(rng, dt, n)
    plus = add == _ops.OP_PLUS
    ops = K.Ops.for_codes(dt, add, mul, s.zero_for(dt))
    kv = lambda a: a.view(np.uint8) if a.dtype == bool else a  # noqa: E731
    for assign in (False, True):
        code = _ops.OP_ASSIGN if assign else add
        # unsorted scatter with duplicates (atomics / sort-and-segment)
        idx = rng.integers(0, n, 3000).astype(np.int64)
        vals = _values(rng, dt, idx.size)
        ref = page.copy()
        _kernels.merge.scatter(kv(ref), idx, kv(vals), code, False)
        for exact in (False, True):
            g = _dev(page)
            K.scatter(ops if not assign else K.Ops.for_codes(dt, -1), g, _dev(idx), _dev(vals), assign=assign,
                      exact=exact)
            _close(cp.asnumpy(g), ref, dt, plus and not exact and not assign)
        # sorted scatter
        o = np.argsort(idx, kind="stable")
        g = _dev(page)
        K.scatter(ops if not assign else K.Ops.for_codes(dt, -1), g, _dev(idx[o]), _dev(vals[o]), assign=assign,
                  is_sorted=True)
        ref2 = page.copy()
        _kernels.merge.scatter(kv(ref2), idx[o], kv(vals[o]), code, True)
        _close(cp.asnumpy(g), ref2, dt, False)
        # dense masked merge (vectorised)
        mask = rng.random(n) < 0.5
        dv = _values(rng, dt, n)
        ref3 = page.copy()
        _kernels.merge.masked_merge(kv(ref3), mask.view(np.uint8), kv(dv), code)
        g = _dev(page)
        K.masked_merge(ops if not assign else K.Ops.for_codes(dt, -1), g, _dev(mask.view(np.uint8)), _dev(dv),
                       assign=assign)
        _close(cp.asnumpy(g), ref3, dt, False)
        # normalized apply
        uidx = np.unique(idx)
        uv = _values(rng, dt, uidx.size)
        ref4 = page.copy()
        old_c, ch_c = _kernels.merge.apply_normalized(kv(ref4), uidx, kv(uv), code)
        g = _dev(page)
        old_g, ch_g = K.apply_normalized(ops if not assign else K.Ops.for_codes(dt, -1), g, _dev(uidx), _dev(uv),
                                         assign)
        _close(cp.asnumpy(g), ref4, dt, False)
        np.testing.assert_array_equal(cp.asnumpy(ch_g), np.asarray(ch_c).view(np.uint8))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("sr,dt", list(_pairs()))
def test_kernels_spmv_push_closure_equal_cpu(K, sr, dt):
    import cupy as cp
    import scipy.sparse as sp

    from mmsb.rules import as_csr

    s = mmsb.semirings.get(sr)
    rng = np.random.default_rng(2)
    n = 600
    add, mul = s.codes_for(np.dtype(dt))
    plus = add == _ops.OP_PLUS
    ops = K.Ops.for_codes(dt, add, mul, s.zero_for(dt))
    zero = s.zero_for(dt)
    kv = lambda a: a.view(np.uint8) if a.dtype == bool else a  # noqa: E731
    M = sp.random(n, n, density=0.02, random_state=3, format="csr")
    M.data = _values(rng, dt, M.nnz, 0, 4).astype(np.float64) if np.dtype(dt).kind != "b" else np.ones(M.nnz)
    A = as_csr(M, (n, n), np.dtype(dt), "t")
    x = _values(rng, dt, n, 0, 4)
    for group in (1, 2, 8, None):
        dA = K.DeviceCSR(A, 0, np.dtype(dt))
        y = np.empty(n, dtype=dt)
        _kernels.spmv.spmv(A.indptr, A.indices, kv(A.data), kv(x), kv(y), add, mul, kv(np.array([zero]))[0],
                           None, 0)
        gy = cp.empty(n, dtype=dt)
        K.spmv(ops, dA, _dev(x), gy, group=group)
        _close(cp.asnumpy(gy), y, dt, plus)     # (the AVX2/AVX-512 CPU kernels sum a row in another order)
    # push
    t = A.T
    dAt = K.DeviceCSR(t, 0, np.dtype(dt))
    fidx = np.unique(rng.integers(0, n, 50)).astype(np.int64)
    fv = _values(rng, dt, fidx.size, 0, 4)
    y0 = _values(rng, dt, n, 0, 8)
    ref = y0.copy()
    ch = _kernels.spmv.push(t.indptr, t.indices, kv(t.data), fidx, kv(fv), kv(ref), add, mul,
                            kv(np.array([zero]))[0])
    gy = _dev(y0)
    flags = cp.zeros(n, dtype=np.uint8)
    K.push(ops, dAt, _dev(fidx), _dev(fv), gy, flags)
    _close(cp.asnumpy(gy), ref, dt, plus)
    if not (plus and np.dtype(dt).kind == "f"):
        np.testing.assert_array_equal(np.flatnonzero(cp.asnumpy(flags)), np.asarray(ch))
    # closure (idempotent ⊕ only)
    if add in (_ops.OP_MIN, _ops.OP_MAX) and not (sr in ("max_plus", "max_times") and np.dtype(dt).kind != "b"):
        x0 = np.full(n, zero, dtype=dt)
        x0[:5] = _values(rng, dt, 5, 0, 3)
        ref = x0.copy()
        front = np.flatnonzero(ref != zero).astype(np.int64)
        try:
            ch = _kernels.spmv.closure(t.indptr, t.indices, kv(t.data), kv(ref), front, add, mul,
                                       kv(np.array([zero]))[0])
        except ValueError:
            return
        gx = _dev(x0)
        gch = K.closure(ops, dAt, gx, _dev(front))
        _close(cp.asnumpy(gx), ref, dt, False)
        np.testing.assert_array_equal(cp.asnumpy(gch), np.asarray(ch))


def _pipeline(device, sr="min_plus", dt="float64"):
    import scipy.sparse as sp

    rng = np.random.default_rng(5)
    n = 300
    W = sp.random(n, n, density=0.03, random_state=7, format="csr")
    W.data = rng.integers(1, 9, W.nnz).astype(np.float64)
    out = {}
    with mmsb.open(None) as buf:
        a = buf.create_page("a", n, dt, sr, device=device)
        b = buf.create_page("b", n, dt, sr, device=device)
        c = buf.create_page("c", n, dt, sr, device=device)
        d = buf.create_page("d", n, dt, sr, device=device)
        buf.link(b, a, W)
        buf.link(b, c, W.T)
        if sr != "plus_times":
            buf.closure(d, a, W.T)
        for step in range(6):
            idx = rng.integers(0, n, 20)
            buf.write(a, _values(rng, dt, 20, 0, 9), index=idx, accumulate=step % 2 == 0)
            buf.write(c, _values(rng, dt, 20, 0, 9), index=idx)
        with buf.batch():
            buf.write(a, _values(rng, dt, 5, 0, 9), index=[1, 2, 3, 4, 5], accumulate=True)
            buf.write(c, _values(rng, dt, 5, 0, 9), index=[1, 2, 3, 4, 5], accumulate=True)
        for name in "abcd":
            out[name] = buf[name].read()
        out["log"] = [(x.page, x.index.tolist()) for x in buf.log.query() if x.index is not None]
        out["dev"] = buf["b"].device
        out["stats"] = buf.stats()
    return out


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("sr", ["min_plus", "max_min", "plus_times"])
def test_buffer_on_gpu_equals_cpu(sr):
    dt = "int64" if sr == "plus_times" else "float64"
    cpu = _pipeline("cpu", sr, dt)
    gpu = _pipeline("cuda:0", sr, dt)
    assert gpu["dev"] == "cuda:0"
    for name in "abcd":
        np.testing.assert_array_equal(gpu[name], cpu[name])
    assert gpu["log"] == cpu["log"]
    st = gpu["stats"]["device"]["gpu"]
    assert st["pages"]["cuda:0"]["pages"] == 4 and "cuda:0" in st["pool"]
    assert st["counters"]["batches"] >= 1


@pytest.mark.gpu
@needs_gpu
def test_read_device_and_interop():
    import cupy as cp

    with mmsb.open(None) as buf:
        p = buf.create_page("x", (4, 3), "float32", device="cuda")
        buf.write(p, np.arange(12, dtype=np.float32).reshape(4, 3))
        d = p.read_device()
        assert isinstance(d, cp.ndarray) and d.shape == (4, 3)
        assert "__cuda_array_interface__" in dir(d) and hasattr(d, "__dlpack__")
        assert isinstance(p.read(), np.ndarray) and p.read()[3, 2] == 11
        assert p.read([0, 11]).tolist() == [0.0, 11.0]
        p.to("cpu")
        assert p.device == "cpu" and p.read()[3, 2] == 11
        p.to("cuda:0")
        assert p.device == "cuda:0" and buf.stats()["memory"]["resident_bytes"] == 0


@pytest.mark.gpu
@needs_gpu
def test_injected_cuda_failure_falls_back_identically():
    import mmsb.gpu as g

    ref = _pipeline("cpu")
    g.inject_failure("launch", times=1)
    try:
        with pytest.warns(DeviceFallbackWarning):
            got = _pipeline("cuda:0")
    finally:
        g.clear_injected()
    for name in "abcd":
        np.testing.assert_array_equal(got[name], ref[name])
    assert got["stats"]["device"]["gpu"]["fallbacks"]


@pytest.mark.gpu
@needs_gpu
def test_plugin_semiring_generated_and_cpu_warning():
    sr = mmsb.Semiring("gpu_test_minplus", np.minimum, np.add, float("inf"), 0.0, idempotent=True,
                       cuda_add="(b < a ? b : a)", cuda_mul="a + b")
    sr2 = mmsb.Semiring("gpu_test_nocuda", np.minimum, np.add, float("inf"), 0.0, idempotent=True)
    for s in (sr, sr2):
        mmsb.semirings.register(s, replace=True)
    try:
        for name in ("gpu_test_minplus", "gpu_test_nocuda"):
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                with mmsb.open(None) as buf:
                    p = buf.create_page("p", 16, "float64", name, device="cuda")
                    q = buf.create_page("q", 16, "float64", name, device="cuda")
                    buf.link(q, p, __import__("scipy.sparse").sparse.eye(16, format="csr"))
                    buf.write(p, np.arange(16.0)[::-1][:4], index=[0, 1, 2, 3], accumulate=True)
                    assert q.read()[:4].tolist() == [16.0, 15.0, 14.0, 13.0]   # I (x) p with (x) = +
            warned = any("no GPU kernels" in str(x.message) for x in w)
            assert warned == (name == "gpu_test_nocuda")
    finally:
        for s in ("gpu_test_minplus", "gpu_test_nocuda"):
            mmsb.semirings.unregister(s)


@pytest.mark.gpu
@needs_gpu
def test_graph_wave_replay_and_invalidate():
    import mmsb.gpu as g

    n = 64
    A = np.eye(n) * 2.0
    with mmsb.open(None, propagation="deferred") as buf:
        prev = buf.create_page("p0", n, "float64", device="cuda")
        for i in range(1, 6):
            p = buf.create_page(f"p{i}", n, "float64", device="cuda")
            buf.link(p, prev, A)
            prev = p
        buf.write("p0", np.ones(n))
        w = g.GraphWave(buf)
        w.run()
        w.run()
        assert w.captures == 1 and w.replays == 2
        assert buf["p5"].read()[0] == 32.0
        e = w.commit()
        assert e == buf.epoch
        buf.propagate()
        assert buf["p5"].read()[0] == 32.0
        q = buf.create_page("q", n, "float64", device="cuda")
        buf.link(q, "p5", A)
        w.run()
        assert w.captures == 2 and buf["q"].read()[0] == 64.0
        g.config["cuda_graphs"] = False
        try:
            w.run()
            assert w.captures == 2
        finally:
            g.config["cuda_graphs"] = True


@pytest.mark.gpu
@needs_gpu
def test_checkpoint_and_reopen_gpu_pages(tmp_path):
    path = str(tmp_path / "s")
    with mmsb.open(path, device="cuda") as buf:
        p = buf.create_page("x", 100, "float64", "plus_times")
        buf.write(p, np.arange(100.0))
        buf.checkpoint()
        buf.write(p, np.ones(3), index=[0, 1, 2], accumulate=True)
        expect = p.read()
    with mmsb.open(path, "r") as buf:
        np.testing.assert_array_equal(buf["x"].read(), expect)
    assert mmsb.verify(path).ok


@pytest.mark.gpu
@pytest.mark.multigpu
@needs_2gpu
def test_two_gpus_peer_propagation_and_nccl():
    import cupy as cp

    from mmsb.gpu import multi

    n = 1 << 16
    with mmsb.open(None) as buf:
        a = buf.create_page("a", n, "float64", device="cuda:0")
        b = buf.create_page("b", n, "float64", device="cuda:1")
        buf.link(b, a, np.eye(8).repeat(1, 0) if False else __import__("scipy.sparse").sparse.eye(n) * 3.0)
        buf.write(a, np.ones(n))
        assert b.read()[0] == 3.0 and b.device == "cuda:1"
        r0 = buf.create_page("r0", n, "float64", device="cuda:0")
        r1 = buf.create_page("r1", n, "float64", device="cuda:1")
        buf.write(r0, np.full(n, 1.0))
        buf.write(r1, np.full(n, 2.0))
        multi.allreduce_pages(buf, [r0, r1])
        assert r0.read()[5] == 3.0 and r1.read()[5] == 3.0
        shards = multi.allgather_pages(buf, [a, b])
        assert shards[1].device.id == 1 and float(shards[1][n]) == 3.0 and float(shards[0][0]) == 1.0
        _ = cp


@pytest.mark.gpu
@needs_gpu
def test_reopen_with_a_device_puts_the_pages_there(tmp_path):
    path = str(tmp_path / "s")
    with mmsb.open(path, "w") as buf:
        x, y = buf.create_page("x", 8), buf.create_page("y", 8)
        buf.link(y, x, np.eye(8) * 2)
        buf.checkpoint()
        buf.write(x, np.arange(8.0))
    with mmsb.open(path, "a", device="cuda") as buf:
        assert {buf[n].device for n in buf} == {"cuda:0"}
        np.testing.assert_array_equal(buf["y"].read(), 2 * np.arange(8.0))
        buf.write("x", np.ones(8))
        np.testing.assert_array_equal(buf["y"].read(), 2 * np.ones(8))
    with mmsb.open(path, "r") as buf:
        assert {buf[n].device for n in buf} == {"cpu"}


@pytest.mark.gpu
@needs_gpu
def test_graph_wave_commit_is_recorded_for_conflicts():
    """GraphWave.commit goes through the commit pipeline: an open transaction that read what the wave changed
    conflicts, the counters count its deltas, and the log holds them."""
    import mmsb.gpu as g

    n = 16
    with mmsb.open(None, propagation="deferred") as buf:
        x = buf.create_page("x", n, "float64", device="cuda")
        y = buf.create_page("y", n, "float64", device="cuda")
        buf.link(y, x, np.eye(n) * 3.0)
        buf.propagate()
        tx = buf.transaction()
        tx.read(y, [4])
        buf.write(x, np.ones(n))
        deltas = buf.stats()["transactions"]["deltas"]
        e = g.GraphWave(buf).commit()
        assert e == buf.epoch and buf["y"].read()[4] == 3.0
        assert buf.stats()["transactions"]["deltas"] == deltas + 1
        assert [d.page for d in buf.log.query(since=e - 1)] == ["y"]
        tx.write(x, [2.0], index=[0])
        with pytest.raises(mmsb.errors.ConflictError):
            tx.commit()


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("sr,dt", [("min_plus", "float64"), ("max_min", "float32"), ("or_and", "bool"),
                                   ("plus_times", "float64")])
def test_matrix_page_deltas_on_gpu_pages_match_the_cpu(sr, dt):
    """A closure (idempotent ⊕) or a link (plus) over a matrix page into a GPU page follows inserts, removals,
    increases and decreases of the matrix exactly as the same rules into a CPU page do."""
    rng = np.random.default_rng(11)
    n = 300
    kind = "link" if sr == "plus_times" else "closure"
    rows, cols = rng.integers(0, n, 1200), rng.integers(0, n, 1200)
    bufs = []
    for device in ("cpu", "cuda:0"):
        buf = mmsb.open(None)
        src = buf.create_page("src", n, dtype=dt, semiring=sr)
        dst = buf.create_page("dst", n, dtype=dt, semiring=sr, device=device)
        M = buf.create_matrix("M", (n, n), dtype=dt, semiring=sr)
        getattr(buf, kind)(dst, src, M)
        bufs.append(buf)
    x = np.abs(_values(rng, dt, n, lo=0))
    steps = [("src", x, None)]
    for _ in range(6):
        k = rng.integers(0, rows.size, 40)
        vals = np.abs(_values(rng, dt, k.size, lo=0))           # no negative cycle under min_plus
        if dt != "bool" and sr != "plus_times":
            vals[: k.size // 4] = mmsb.semirings.get(sr).zero_for(np.dtype(dt))     # removals
        steps.append(("M", vals, (rows[k], cols[k])))
    for buf in bufs:
        for name, vals, idx in steps:
            buf.write(name, vals, index=idx)
    _close(bufs[1]["dst"].read(), bufs[0]["dst"].read(), dt, sr == "plus_times")

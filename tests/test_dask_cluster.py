"""Propagation on a Dask LocalCluster equals propagation in process (link, derive, closure; failures)."""
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from _localcluster import client_fixture

import mmsb

distributed = pytest.importorskip("distributed")
import mmsb.dask  # noqa: E402

sp = pytest.importorskip("scipy.sparse")

KILL_MARKER = os.path.join(tempfile.gettempdir(), "mmsb-dask-test-kill-marker")


# derive functions live at module level so that workers can run them (shipped by value, see the fixture)
def scaled_sum(a, b):
    return 0.5 * a + np.sqrt(np.abs(b))


def clipped(a):
    return np.minimum(a, 10.0)


def killer(a):
    """Kills its worker process the first time it runs while the marker file exists."""
    if os.path.exists(KILL_MARKER):
        os.remove(KILL_MARKER)
        os._exit(1)
    return a * 2.0


client = client_fixture(__name__)


def _random_dag(buf, rng, n_pages=8, size=300):
    """Roots r0..r2 (min_plus and plus_times families) and derived pages built from them."""
    names = []
    for i in range(3):
        sr = "min_plus" if i < 2 else "plus_times"
        buf.create_page(f"r{i}", size, semiring=sr)
        names.append((f"r{i}", sr))
    for j in range(n_pages):
        kind = ["link", "closure", "derive", "link2"][j % 4]
        srcs = [n for n, s in names]
        if kind == "closure":
            cand = [n for n, s in names if s == "min_plus"]
            src = cand[rng.integers(len(cand))]
            d = buf.create_page(f"p{j}", size, semiring="min_plus")
            m = rng.integers(0, size, 3 * size), rng.integers(0, size, 3 * size)
            W = sp.csr_matrix((rng.uniform(1, 5, 3 * size), m), shape=(size, size))
            buf.closure(d, src, W.T.tocsr())
            names.append((d.name, "min_plus"))
        elif kind in ("link", "link2"):
            sr = "min_plus" if kind == "link" else "plus_times"
            cand = [n for n, s in names if s == sr] or [n for n, s in names]
            d = buf.create_page(f"p{j}", size, semiring=sr)
            k = 1 if kind == "link" else 2
            for src in rng.choice(cand, size=min(k, len(cand)), replace=False):
                A = sp.random(size, size, density=0.01, random_state=int(rng.integers(1 << 30)), format="csr")
                A.data[:] = rng.uniform(0.5, 2.0, A.nnz)
                buf.link(d, str(src), A)
            names.append((d.name, sr))
        else:
            a, b = rng.choice(srcs, size=2, replace=False)
            d = buf.create_page(f"p{j}", size, semiring="plus_times")
            buf.derive(d, [str(a), str(b)], scaled_sum)
            names.append((d.name, "plus_times"))
    return names


def _writes(buf, rng, size, n):
    for _ in range(n):
        page = f"r{rng.integers(3)}"
        k = int(rng.integers(1, 20))
        idx = rng.choice(size, size=k, replace=False)
        vals = rng.uniform(0, 10, k).round(3)
        acc = bool(rng.integers(2))
        buf.write(page, vals, index=idx, accumulate=acc)


def _state(buf):
    return {n: buf[n].read() for n in buf}


def _compare(a, b):
    assert a.keys() == b.keys()
    for n in a:
        np.testing.assert_array_equal(a[n], b[n], err_msg=n)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_dag_equals_local(client, seed):
    states, tasks = [], []
    for cluster in (None, client):
        rng = np.random.default_rng(seed)
        with distributed.get_task_stream(client) as ts:
            with mmsb.open(None, cluster=cluster) as buf:
                _random_dag(buf, rng)
                _writes(buf, rng, 300, 12)
                with buf.batch():
                    _writes(buf, rng, 300, 4)
                states.append(_state(buf))
                if cluster is not None:
                    st = buf.stats()["cluster"]
                    assert st["tasks"] > 0 and st["full_ships"] > 0
                    assert set(st["placement"].values()) <= set(st["workers"])
        tasks.append(len(ts.data))
    assert tasks[0] == 0 and tasks[1] > 0
    _compare(states[0], states[1])


def _chain(buf, size=200):
    """a -> b (link) -> c (derive) -> d (closure) -> e (link): a chain that can cross workers."""
    rng = np.random.default_rng(7)
    buf.create_page("a", size, semiring="min_plus")
    for n, sr in (("b", "min_plus"), ("c", "min_plus"), ("d", "min_plus"), ("e", "min_plus")):
        buf.create_page(n, size, semiring=sr)
    A = sp.random(size, size, density=0.02, random_state=1, format="csr")
    A.data[:] = 1.0
    buf.link("b", "a", A)
    buf.derive("c", ["b"], clipped)
    W = sp.csr_matrix((rng.uniform(1, 3, 4 * size), (rng.integers(0, size, 4 * size),
                                                       rng.integers(0, size, 4 * size))), shape=(size, size))
    buf.closure("d", "c", W.T.tocsr())
    buf.link("e", "d", A)


def _chain_writes(buf, size=200, seed=5, n=10):
    rng = np.random.default_rng(seed)
    for i in range(n):
        idx = rng.choice(size, size=5, replace=False)
        # mix of improvements (accumulate min) and worsening assigns (row recompute / region reset)
        buf.write("a", rng.uniform(0, 20, 5), index=idx, accumulate=bool(i % 3))


def test_supersteps_across_workers_and_pins(client):
    with mmsb.open(None) as local:
        _chain(local)
        _chain_writes(local)
        want = _state(local)
    workers = sorted(client.scheduler_info()["workers"])
    with mmsb.open(None, cluster=client) as buf:
        _chain(buf)
        # alternate the chain between the two workers: every hop is a superstep
        for n, w in zip("bcde", [workers[0], workers[1], workers[0], workers[1]]):
            mmsb.dask.place(buf, n, w)
        _chain_writes(buf)
        got = _state(buf)
        assert mmsb.dask.placement(buf) == {"b": workers[0], "c": workers[1], "d": workers[0], "e": workers[1]}
        st = buf.stats()["cluster"]
        assert st["supersteps"] > st["tasks"] / 2
        # the resident copies on the workers equal the driver's pages
        held = client.run(mmsb.dask._worker.held_pages, buf._engine.id)
        for w, pages in held.items():
            for n, arr in pages.items():
                np.testing.assert_array_equal(arr, buf[n].read().reshape(-1), err_msg=f"{n} on {w}")
    _compare(want, got)


def test_metadata_pins_and_deferred(client):
    workers = sorted(client.scheduler_info()["workers"])
    results = []
    for cluster in (None, client):
        with mmsb.open(None, cluster=cluster, propagation="deferred") as buf:
            x = buf.create_page("x", 100)
            y = buf.create_page("y", 100, metadata={"worker": workers[1]})
            z = buf.create_page("z", 100)
            A = sp.random(100, 100, density=0.05, random_state=3, format="csr")
            buf.link(y, x, A)
            buf.link(z, x, A.T.tocsr())
            buf.write(x, np.arange(100.0))
            buf.write(x, np.ones(3), index=[1, 5, 7], accumulate=True)
            buf.propagate()
            buf.write(x, np.full(2, -4.0), index=[0, 99])
            buf.propagate()
            results.append(_state(buf))
            if cluster is not None:
                pl = buf.stats()["cluster"]["placement"]
                assert pl["y"] == workers[1]
    _compare(results[0], results[1])


class _FailingLog:
    def __init__(self, log):
        self._log, self.fail = log, False

    def append(self, txn):
        if self.fail:
            self.fail = False
            raise OSError("injected log failure")
        return self._log.append(txn)

    def __getattr__(self, name):
        return getattr(self._log, name)


def test_rollback_after_wave_resyncs_workers(client):
    with mmsb.open(None) as local:
        _chain(local)
        _chain_writes(local, seed=9, n=6)
        want = _state(local)
    with mmsb.open(None, cluster=client) as buf:
        _chain(buf)
        buf._log = _FailingLog(buf._log)
        _chain_writes(buf, seed=9, n=3)
        before = _state(buf)
        buf._log.fail = True
        with pytest.raises(OSError):
            buf.write("a", np.zeros(50), index=np.arange(50), accumulate=True)
        _compare(before, _state(buf))           # the driver rolled back; workers must be re-shipped
        assert buf.stats()["cluster"]["invalidations"] >= 1
        rng = np.random.default_rng(9)          # replay the same writes from the start of the stream
        for i in range(6):
            idx = rng.choice(200, size=5, replace=False)
            vals = rng.uniform(0, 20, 5)
            if i >= 3:
                buf.write("a", vals, index=idx, accumulate=bool(i % 3))
        _compare(want, _state(buf))


def test_derive_error_propagates_and_leaves_state(client):
    def bad(a):
        raise ValueError("boom in derive")

    with mmsb.open(None, cluster=client) as buf:
        buf.create_page("a", 10)
        buf.create_page("b", 10)
        buf.link("b", "a", np.eye(10))
        buf.write("a", np.arange(10.0))
        buf.create_page("c", 10)
        with pytest.raises(mmsb.errors.PropagationError, match="boom") as info:
            buf.derive("c", ["b"], bad)
        assert info.value.page == "c"
        assert "c" not in buf.graph.parents("b") and not buf.graph.is_derived("c")
        buf.write("a", np.ones(10))
        np.testing.assert_array_equal(buf["b"].read(), np.ones(10))


def test_unreachable_cluster_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MMSB_DASK_CONNECT_TIMEOUT", "1s")
    with pytest.raises(mmsb.dask.ClusterError) as info:
        mmsb.open(None, cluster="tcp://127.0.0.1:9")
    assert isinstance(info.value, mmsb.errors.MMSBError) and isinstance(info.value, ConnectionError)
    assert "127.0.0.1:9" in str(info.value)


def test_import_mmsb_does_not_import_dask():
    code = "import sys, mmsb; b = mmsb.open(None); print('dask' in sys.modules, 'distributed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), check=True)
    assert out.stdout.split() == ["False", "False"]


def _kill_dag(buf):
    buf.create_page("src", 500, semiring="min_plus")
    buf.create_page("mid", 500, semiring="min_plus")
    buf.create_page("dbl", 500, semiring="min_plus")
    buf.create_page("dist", 500, semiring="min_plus")
    rng = np.random.default_rng(11)
    W = sp.csr_matrix((rng.uniform(1, 4, 2000), (rng.integers(0, 500, 2000), rng.integers(0, 500, 2000))),
                      shape=(500, 500))
    buf.closure("mid", "src", W.T.tocsr())
    buf.derive("dbl", ["mid"], killer)
    buf.link("dist", "dbl", sp.eye(500, format="csr"))


def _kill_writes(buf, start, stop):
    rng = np.random.default_rng(21)
    for i in range(stop):
        idx, vals = rng.integers(0, 500, 3), rng.uniform(0, 5, 3)
        if i >= start:
            buf.write("src", vals, index=idx, accumulate=True)


def test_worker_killed_mid_wave_loses_nothing(client):
    if os.path.exists(KILL_MARKER):
        os.remove(KILL_MARKER)
    with mmsb.open(None) as local:
        _kill_dag(local)
        _kill_writes(local, 0, 8)
        want = _state(local)
    with mmsb.open(None, cluster=client) as buf:
        _kill_dag(buf)
        _kill_writes(buf, 0, 3)
        owner = buf.stats()["cluster"]["placement"]["dbl"]
        open(KILL_MARKER, "w").close()          # the next derive call kills its worker, mid-wave
        _kill_writes(buf, 3, 5)
        assert not os.path.exists(KILL_MARKER)
        st = buf.stats()["cluster"]
        assert st["retries"] >= 1, st
        _kill_writes(buf, 5, 6)
        # a worker restarted between waves: its resident pages are gone and get rebuilt from the driver
        client.wait_for_workers(2, timeout=60)
        alive = sorted(client.scheduler_info()["workers"])
        victim = buf.stats()["cluster"]["placement"]["dbl"]
        if victim in alive:
            client.restart_workers([victim])
        client.wait_for_workers(2, timeout=60)
        _kill_writes(buf, 6, 8)
        got = _state(buf)
        assert owner  # placement existed before the kill
    _compare(want, got)


def _make_source(path):
    with mmsb.open(path, mode="w", durability="none") as buf:
        _chain(buf)
        _chain_writes(buf, seed=3, n=5)
        buf.create_page("loose", 7, dtype="int64", semiring="max_plus")
        buf.write("loose", np.arange(7), accumulate=True)
        return _state(buf)


def test_batch_replay_and_deltas(client, tmp_path, capsys, monkeypatch):
    from mmsb.dask.batch import main, run_batch, save_deltas

    monkeypatch.setenv("MMSB_PROGRESS", "1")       # draw the bar although stderr is not a terminal

    want = _make_source(str(tmp_path / "src"))
    res = run_batch(str(tmp_path / "copy"), replay=str(tmp_path / "src"), scheduler=client, functions={
        f"{__name__}:clipped": clipped})
    assert res["mismatches"] == [] and res["cluster"]["tasks"] > 0
    with mmsb.open(str(tmp_path / "copy"), mode="r") as copy:
        _compare(want, _state(copy))
    err = capsys.readouterr().err
    assert "replay" in err and "/" in err          # the progress bar went to stderr

    rng = np.random.default_rng(4)
    deltas = [{"page": "a", "values": rng.uniform(0, 9, 4), "index": rng.choice(200, 4, replace=False),
               "accumulate": True, "commit": k // 2} for k in range(6)]
    deltas.append({"page": "loose", "values": np.full(7, 3), "commit": 99})
    save_deltas(str(tmp_path / "d.npz"), deltas)
    with mmsb.open(None) as local:
        _chain(local)
        _chain_writes(local, seed=3, n=5)
        local.create_page("loose", 7, dtype="int64", semiring="max_plus")
        local.write("loose", np.arange(7), accumulate=True)
        for k in range(3):
            with local.batch():
                for d in deltas[2 * k: 2 * k + 2]:
                    local.write(d["page"], d["values"], index=d["index"], accumulate=True)
        local.write("loose", np.full(7, 3))
        want2 = _state(local)
    code = main([str(tmp_path / "copy"), "--scheduler", client.scheduler.address, "--deltas",
                 str(tmp_path / "d.npz"), "--no-progress", "--function", f"{__name__}:clipped"])
    assert code == 0
    assert "dashboard" in capsys.readouterr().out
    with mmsb.open(str(tmp_path / "copy"), mode="r") as copy:
        _compare(want2, _state(copy))

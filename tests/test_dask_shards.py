"""Sharded pages on a Dask LocalCluster (mmsb.dask.sharding): equal to in-process, no block on the driver,
rebuilt after a worker restart, durable without the cluster, matrix deltas, bad input."""
import os
import pickle
import socket
import struct
import tempfile

import numpy as np
import pytest
from _localcluster import client_fixture

import mmsb
from mmsb.errors import InvalidDeltaError, MMSBError

distributed = pytest.importorskip("distributed")
sp = pytest.importorskip("scipy.sparse")
csgraph = pytest.importorskip("scipy.sparse.csgraph")
import mmsb.dask  # noqa: E402

KILL_MARKER = os.path.join(tempfile.gettempdir(), "mmsb-dask-shards-kill-marker")


@mmsb.dask.elementwise
def clipped(a):
    return np.minimum(a, 3.0)


@mmsb.dask.elementwise
def picky(a):
    """Fails on a block holding the value 13 (an error raised by user code on a worker)."""
    if np.any(a == 13.0):
        raise ValueError("13 is unlucky")
    return a + 1.0


@mmsb.dask.elementwise
def killer(a):
    """Kills its worker process the first time it sees a 7 while the marker file exists (a death mid-wave)."""
    if np.any(a == 7.0) and os.path.exists(KILL_MARKER):
        os.remove(KILL_MARKER)
        os._exit(1)
    return a * 2.0


client = client_fixture(__name__)


def _grid(rng, side):
    ids = np.arange(side * side).reshape(side, side)
    u = np.concatenate([ids[:, :-1].ravel(), ids[:, 1:].ravel(), ids[:-1, :].ravel(), ids[1:, :].ravel()])
    v = np.concatenate([ids[:, 1:].ravel(), ids[:, :-1].ravel(), ids[1:, :].ravel(), ids[:-1, :].ravel()])
    return sp.csr_matrix((rng.uniform(1.0, 10.0, u.size), (v, u)), shape=(side * side,) * 2)   # W.T


def _build(buf, n, Wt, A, B, k):
    buf.create_page("src", n, semiring="min_plus", shards=k)
    buf.create_page("dist", n, semiring="min_plus", shards=k)
    buf.create_matrix("W", (n, n), semiring="min_plus", data=Wt, shards=k)
    buf.closure("dist", "src", "W")
    buf.create_page("x", n, shards=k)
    buf.create_page("y", n, shards=k)
    buf.create_page("z", n, shards=k)
    buf.create_page("c", n, shards=k)
    buf.create_matrix("A", (n, n), data=A, shards=k)
    buf.link("y", "x", "A")
    buf.link("z", "y", B)                   # a rule's own matrix (not a page): its rows travel with the rule
    buf.derive("c", ["z"], clipped)


def _history(rng, n, steps):
    """Random operations: (page, values, index, accumulate) with matrix entries as (rows, cols)."""
    ops = []
    for _ in range(steps):
        what = rng.integers(0, 5)
        if what == 0:
            k = int(rng.integers(1, 8))
            ops.append(("src", rng.uniform(0, 20, k), rng.choice(n, k, replace=False), bool(rng.integers(0, 2))))
        elif what == 1:
            k = int(rng.integers(1, 50))
            ops.append(("x", rng.normal(size=k), rng.choice(n, k, replace=False), False))
        elif what == 2:
            ops.append(("x", rng.normal(size=n), None, False))
        elif what == 3:                       # change, insert or remove (inf) entries of W
            k = int(rng.integers(1, 6))
            r, c = rng.integers(0, n, k), rng.integers(0, n, k)
            v = np.where(rng.random(k) < 0.3, np.inf, rng.uniform(0.5, 10.0, k))
            keep = np.unique(r * n + c, return_index=True)[1]
            ops.append(("W", v[keep], (r[keep], c[keep]), False))
        else:
            k = int(rng.integers(1, 6))
            r, c = rng.integers(0, n, k), rng.integers(0, n, k)
            keep = np.unique(r * n + c, return_index=True)[1]
            ops.append(("A", rng.normal(size=k)[keep], (r[keep], c[keep]), False))
    return ops


def _state(buf):
    return {p: buf[p].read() for p in ("dist", "y", "z", "c")}


def _check_equal(a, b):
    np.testing.assert_array_equal(a["dist"], b["dist"])          # min_plus: bit for bit
    for p in ("y", "z", "c"):
        np.testing.assert_allclose(a[p], b[p], rtol=1e-9, atol=1e-12)


def test_random_history_equals_in_process(client):
    rng = np.random.default_rng(11)
    side = 16
    n = side * side
    Wt = _grid(rng, side)
    A = sp.random(n, n, density=4 / n, random_state=5, format="csr")
    B = sp.random(n, n, density=3 / n, random_state=6, format="csr")
    local = mmsb.open(None)
    sharded = mmsb.open(None, cluster=client)
    for buf in (local, sharded):
        _build(buf, n, Wt, A, B, 3)
    assert [b[1] - b[0] for b in mmsb.dask.shards(sharded, "dist")] == [85, 85, 86]
    for page, vals, index, acc in _history(rng, n, 14):
        for buf in (local, sharded):
            buf.write(page, vals, index=index, accumulate=acc)
        _check_equal(_state(local), _state(sharded))
    for _ in range(3):                         # several pages and matrices in one commit: one wave
        ops = _history(rng, n, 4) + [("src", np.zeros(3), rng.choice(n, 3, replace=False), True),
                                     ("x", rng.normal(size=5), rng.choice(n, 5, replace=False), False),
                                     ("A", rng.normal(size=3), (rng.choice(n, 3, replace=False), rng.integers(0, n, 3)),
                                      False)]
        for buf in (local, sharded):
            with buf.batch():
                for page, vals, index, acc in ops:
                    buf.write(page, vals, index=index, accumulate=acc)
        _check_equal(_state(local), _state(sharded))
    st = sharded.stats()["cluster"]["shards"]
    assert st["pages"] == 8 and st["rebuilds"] == 0 and st["messages"] > 0
    assert sharded.stats()["memory"]["resident_bytes"] == 0      # the driver holds no block
    local.close()
    sharded.close()


def test_driver_holds_no_block(client):
    buf = mmsb.open(None, cluster=client)
    before = buf.stats()["memory"]["resident_bytes"]
    for i, n in enumerate((10_000, 100_000, 400_000)):
        p = buf.create_page(f"p{i}", n, shards=4)
        buf.write(p, np.arange(n, dtype="float64"))
        assert buf.stats()["memory"]["resident_bytes"] == before == 0
        assert p.read(index=[0, n - 1]).tolist() == [0.0, n - 1.0]
    M = buf.create_matrix("M", (400_000, 400_000), data=sp.eye(400_000, format="csr"), shards=4)
    assert M.nbytes == 0 and M.nnz == 400_000
    assert buf.stats()["memory"]["resident_bytes"] == 0 and buf.stats()["allocator"]["allocations"] == 0
    workers = buf._cluster.engine.shards.worker_stats()
    assert sum(w["block_bytes"] for w in workers.values()) > 3 * 400_000 * 8
    plain = buf.create_page("plain", 1000)                      # an ordinary page does take driver memory
    assert buf.stats()["memory"]["resident_bytes"] == plain.nbytes
    buf.close()


def test_matrix_deltas_on_sharded_closure(client):
    rng = np.random.default_rng(3)
    side = 20
    n = side * side
    Wt = _grid(rng, side)
    buf = mmsb.open(None, cluster=client)
    buf.create_page("s", n, semiring="min_plus", shards=4)
    buf.create_page("d", n, semiring="min_plus", shards=4)
    buf.create_matrix("Wt", (n, n), semiring="min_plus", data=Wt, shards=4)
    buf.closure("d", "s", "Wt")
    buf.write("s", np.zeros(2), index=[0, n - 1])
    ref = Wt.T.tolil()

    def check():
        W = ref.tocsr()
        W.data[np.isinf(W.data)] = 0
        W.eliminate_zeros()
        np.testing.assert_array_equal(buf["d"].read(), csgraph.dijkstra(W, indices=[0, n - 1], min_only=True))

    check()
    # cut a shortest-path edge crossing blocks (worse: a forced recompute), add a shortcut (better: a push)
    for (u, v), w in [((side * 9 + 3, side * 10 + 3), np.inf), ((5, n - 7), 0.5), ((1, 2), 100.0)]:
        buf.write("Wt", np.array([w]), index=([v], [u]))
        ref[u, v] = w
        check()
    assert mmsb.dask.shard_stats(buf, "Wt")["cut_fraction"] < 0.1
    buf.close()


def test_durable_reopen_without_cluster_and_time_travel(client, tmp_path):
    rng = np.random.default_rng(5)
    side = 12
    n = side * side
    Wt = _grid(rng, side)
    A = sp.random(n, n, density=4 / n, random_state=2, format="csr")
    B = sp.random(n, n, density=3 / n, random_state=3, format="csr")
    path = str(tmp_path / "store")
    buf = mmsb.open(path, cluster=client)            # (automatic checkpoints skip a store with sharded pages)
    _build(buf, n, Wt, A, B, 2)
    for page, vals, index, acc in _history(rng, n, 6):
        buf.write(page, vals, index=index, accumulate=acc)
    mid = buf.epoch
    at_mid = _state(buf)
    for page, vals, index, acc in _history(rng, n, 4):
        buf.write(page, vals, index=index, accumulate=acc)
    final = _state(buf)
    _check_equal(_state(buf.at(mid)), at_mid)                  # a view recomputes the sharded derived pages
    buf.close()
    with mmsb.open(path, functions={"test_dask_shards:clipped": clipped}) as plain:
        assert plain._cluster is None
        _check_equal(_state(plain), final)
        _check_equal(_state(plain.at(mid)), at_mid)
    with mmsb.open(path, cluster=client, functions={"test_dask_shards:clipped": clipped}) as again:    # sharded

        assert len(mmsb.dask.shards(again, "dist")) == 2
        _check_equal(_state(again), final)
        again.write("src", np.zeros(1), index=[7])
        assert again["dist"].read()[7] == 0.0


def test_dask_array_chunks_stay_with_blocks(client):
    import dask.array as da

    buf = mmsb.open(None, cluster=client)
    assert mmsb.dask.from_dask_array(buf, da.arange(1000, chunks=300, dtype="float64"), "a", shards=True) == ["a"]
    blocks = mmsb.dask.shards(buf, "a")
    assert [(b[0], b[1]) for b in blocks] == [(0, 300), (300, 600), (600, 900), (900, 1000)]
    np.testing.assert_array_equal(buf["a"].read(), np.arange(1000.0))
    arr = mmsb.dask.to_dask_array(buf, ["a"])
    assert arr.chunks == ((300, 300, 300, 100),)
    np.testing.assert_array_equal((arr * 2).compute(), np.arange(1000.0) * 2)
    buf.close()


def test_bad_input_changes_nothing(client):
    buf = mmsb.open(None, cluster=client)
    for bad in (0, -1, 11, 2.5, "some", [0, 5], True):
        with pytest.raises(InvalidDeltaError, match="'p'"):
            buf.create_page("p", 10, shards=bad)
        with pytest.raises(InvalidDeltaError, match="'m'"):
            buf.create_matrix("m", (10, 10), shards=bad)
    assert "p" not in buf and "m" not in buf and buf.epoch == 0
    buf.create_page("a", 10, shards=2)
    buf.create_page("b", 10)
    buf.create_page("c", 10, shards=5)
    e = buf.epoch
    with pytest.raises(InvalidDeltaError, match="sharded"):
        buf.link("a", "b", sp.eye(10, format="csr"))           # mixing sharded and unsharded pages
    with pytest.raises(InvalidDeltaError, match="not sharded like"):
        buf.closure("a", "c", sp.eye(10, format="csr"), semiring="min_plus")
    assert buf.epoch == e and not buf.graph.rules_into("a")
    buf.write("a", np.ones(10))
    np.testing.assert_array_equal(buf["a"].read(), np.ones(10))
    local = mmsb.open(None)                                    # without a cluster: accepted and ignored
    p = local.create_page("p", 10, shards=3)
    assert p.metadata == {} and local.stats()["memory"]["resident_bytes"] == 80
    with pytest.raises(InvalidDeltaError):
        local.create_page("q", 10, shards=0)
    buf.close()


def test_vanished_cluster_is_a_clear_error(client):
    other = distributed.Client(client.scheduler.address, set_as_default=False)
    buf = mmsb.open(None, cluster=other)
    buf.create_page("s", 100, semiring="min_plus", shards=2)
    buf.create_page("d", 100, semiring="min_plus", shards=2)
    buf.closure("d", "s", sp.eye(100, k=1, format="csr"))
    buf.write("s", np.zeros(1), index=[10])
    e = buf.epoch
    other.close()
    with pytest.raises(MMSBError):
        buf.write("s", np.zeros(1), index=[20])
    assert buf.epoch == e
    with pytest.raises(MMSBError):
        buf.create_page("t", 10, shards=2)
    assert "t" not in buf


def test_worker_restart_rebuilds_blocks(client):
    rng = np.random.default_rng(9)
    side = 14
    n = side * side
    Wt = _grid(rng, side)
    A = sp.random(n, n, density=4 / n, random_state=7, format="csr")
    B = sp.random(n, n, density=3 / n, random_state=8, format="csr")
    local = mmsb.open(None)
    buf = mmsb.open(None, cluster=client)
    for b in (local, buf):
        _build(b, n, Wt, A, B, 4)
    for page, vals, index, acc in _history(rng, n, 6):
        for b in (local, buf):
            b.write(page, vals, index=index, accumulate=acc)
    before = _state(buf)
    old = {s[2] for s in mmsb.dask.shards(buf, "dist")}
    client.restart()
    _check_equal(_state(buf), before)                          # rebuilt from the log, identical
    assert buf.stats()["cluster"]["shards"]["rebuilds"] == 1
    assert {s[2] for s in mmsb.dask.shards(buf, "dist")} != old
    for page, vals, index, acc in _history(rng, n, 3):
        for b in (local, buf):
            b.write(page, vals, index=index, accumulate=acc)
    _check_equal(_state(local), _state(buf))
    buf.close()


def _frame(kind, obj):
    data = pickle.dumps(obj, protocol=5)
    return struct.pack("<BIQ", kind, 0, len(data)) + data


def test_data_plane_needs_the_token(client):
    from mmsb.dask import _rpc

    buf = mmsb.open(None, cluster=client)
    buf.create_page("a", 100, shards=2)
    buf.write("a", np.arange(100.0))
    mgr = buf._cluster.engine.shards
    w = min(mgr.conns)
    ep = mgr.conns[w].endpoint
    drop_all = _frame(_rpc.REQUEST, ("drop_pages", ([],)))     # would forget every page, if it were obeyed
    for token in (b"x" * 32, b"short", b""):
        with socket.create_connection(ep, timeout=10) as s:
            s.sendall(struct.pack("<I", len(token)) + token + _frame(_rpc.HELLO, "driver") + drop_all)
            try:
                got = s.recv(1)
            except ConnectionResetError:                          # closed with our frames unread
                got = b""
            assert got == b""                                     # closed, unanswered
    good = _rpc.Conn(ep, mgr._token, "peer", 10, pickle.dumps)
    assert good.call("ping") == w                                 # the same frames with the token are served
    good.close()
    np.testing.assert_array_equal(buf["a"].read(), np.arange(100.0))
    assert buf.stats()["cluster"]["shards"]["rebuilds"] == 0
    buf.close()


def test_lost_connection_rebuilds_from_the_log(client):
    rng = np.random.default_rng(4)
    side = 12
    n = side * side
    Wt = _grid(rng, side)
    A = sp.random(n, n, density=4 / n, random_state=1, format="csr")
    B = sp.random(n, n, density=3 / n, random_state=2, format="csr")
    local = mmsb.open(None)
    buf = mmsb.open(None, cluster=client)
    for b in (local, buf):
        _build(b, n, Wt, A, B, 2)
    for page, vals, index, acc in _history(rng, n, 5):
        for b in (local, buf):
            b.write(page, vals, index=index, accumulate=acc)
    mgr = buf._cluster.engine.shards
    next(iter(mgr.conns.values())).close()    # the actor sees its driver gone: it stops serving, drops its blocks
    for page, vals, index, acc in _history(rng, n, 3):
        for b in (local, buf):
            b.write(page, vals, index=index, accumulate=acc)
    _check_equal(_state(local), _state(buf))
    assert buf.stats()["cluster"]["shards"]["rebuilds"] == 1
    local.close()
    buf.close()


def test_worker_error_keeps_its_type_and_changes_nothing(client):
    buf = mmsb.open(None, cluster=client)
    buf.create_page("x", 20, shards=2)
    buf.create_page("y", 20, shards=2)
    buf.derive("y", ["x"], picky)
    base = np.arange(20.0) + 100.0
    buf.write("x", base)
    e = buf.epoch
    with pytest.raises(MMSBError, match="picky.*ValueError: 13 is unlucky"):      # raised on a worker
        buf.write("x", np.array([13.0]), index=[3])
    assert buf.epoch == e
    np.testing.assert_array_equal(buf["x"].read(), base)
    np.testing.assert_array_equal(buf["y"].read(), base + 1.0)
    buf.write("x", np.array([5.0]), index=[3])
    np.testing.assert_array_equal(buf["y"].read()[:5], [101.0, 102.0, 103.0, 6.0, 105.0])
    buf.close()


def test_worker_killed_mid_wave_reruns_the_commit(client):
    if os.path.exists(KILL_MARKER):
        os.remove(KILL_MARKER)
    client.wait_for_workers(2, timeout=60)
    buf = mmsb.open(None, cluster=client)
    buf.create_page("x", 40, shards=2)
    buf.create_page("y", 40, shards=2)
    buf.derive("y", ["x"], killer)
    buf.write("x", np.arange(40.0) + 10.0)
    e = buf.epoch
    open(KILL_MARKER, "w").close()
    buf.write("x", np.array([7.0, 1.0]), index=[30, 31])       # its worker dies computing this wave
    assert not os.path.exists(KILL_MARKER)
    want = 2.0 * (np.arange(40.0) + 10.0)
    want[30:32] = [14.0, 2.0]
    np.testing.assert_array_equal(buf["y"].read(), want)
    st = buf.stats()["cluster"]["shards"]
    assert st["retries"] >= 1 and st["rebuilds"] >= 1
    assert buf.epoch == e + 1
    buf.close()
    client.wait_for_workers(2, timeout=60)


def test_a_raised_source_on_one_worker_is_repaired_in_the_same_commit(client):
    """A commit whose only delta sits on one worker and makes a closure source worse (a retracted source) takes
    the solo path; the closure must equal the in-process one right after that commit, not a later one."""
    rng = np.random.default_rng(3)
    side = 8
    n = side * side
    Wt = _grid(rng, side)
    bufs = [mmsb.open(None), mmsb.open(None, cluster=client)]
    for b in bufs:
        b.create_page("src", n, semiring="min_plus", shards=2)
        b.create_page("dist", n, semiring="min_plus", shards=2)
        b.create_matrix("W", (n, n), semiring="min_plus", data=Wt, shards=2)
        b.closure("dist", "src", "W")
        b.write("src", np.array([0.0, 0.0, 0.0]), index=[1, 20, n - 2])
    for index, vals in (([1], [np.inf]), ([n - 2], [5.0]), ([20], [np.inf]), ([1, n - 2], [0.0, np.inf])):
        for b in bufs:
            b.write("src", np.array(vals), index=index)
        np.testing.assert_array_equal(bufs[1]["dist"].read(), bufs[0]["dist"].read())
    for b in bufs:
        b.close()


def _spill_error_on_read(on: bool) -> None:
    """On a worker: the actors' ``read`` raises an OSError (as a spill file that cannot be read would), or no
    more."""
    from mmsb.dask._shard_worker import ShardActor

    if on:
        def read(self, name, parts):
            raise PermissionError(13, "spill file unreadable", f"/spill/{name}.blk")
        ShardActor._test_read, ShardActor.read = ShardActor.read, read
    elif hasattr(ShardActor, "_test_read"):
        ShardActor.read = ShardActor._test_read
        del ShardActor._test_read


def test_an_oserror_raised_on_a_worker_is_an_error_not_a_lost_worker(client):
    """An OSError that the actor's code raised comes back in a reply: the caller gets it, with its type and the
    worker's traceback, and the worker is neither taken for dead nor rebuilt (its connection is fine)."""
    buf = mmsb.open(None, cluster=client)
    buf.create_page("a", 100, shards=2)
    buf.write("a", np.arange(100.0))
    mgr = buf._cluster.engine.shards
    client.run(_spill_error_on_read, True)
    try:
        with pytest.raises(PermissionError, match="spill file unreadable") as info:
            buf["a"].read()
    finally:
        client.run(_spill_error_on_read, False)
    assert any("on the worker" in note for note in getattr(info.value, "__notes__", []))
    assert mgr._dead == set()
    assert buf.stats()["cluster"]["shards"]["rebuilds"] == 0 and mgr.counters["retries"] == 0
    np.testing.assert_array_equal(buf["a"].read(), np.arange(100.0))
    buf.close()


def test_error_replies_are_told_from_connection_failures():
    """The data plane alone: an exception raised by the handler (an OSError here) is raised by ``recv`` marked
    as remote, the connection still usable; a connection that breaks raises an unmarked OSError."""
    from mmsb.dask import _rpc

    def handle(meth, args):
        if meth == "fail":
            raise FileNotFoundError(2, "no such spill file", args[0])
        return args

    server = _rpc.Server("127.0.0.1", b"t" * 32, handle, lambda m, a: None, lambda: None, lambda: True)
    conn = _rpc.Conn(server.endpoint, b"t" * 32, "driver", 10, pickle.dumps)
    try:
        with pytest.raises(FileNotFoundError) as info:
            conn.call("fail", "/spill/x")
        assert _rpc.is_remote(info.value) and not conn.broken
        assert conn.call("echo", 1, 2) == (1, 2)
        server.close()
        with pytest.raises(OSError) as info:
            conn.call("echo", 3)
        assert not _rpc.is_remote(info.value) and conn.broken
    finally:
        conn.close()
        server.close()


@pytest.mark.parametrize("address, host", [
    ("tcp://10.1.2.3:4000", "10.1.2.3"), ("ucx://10.1.2.3:4000", "10.1.2.3"), ("ucxx://10.1.2.4:1", "10.1.2.4"),
    ("ucx://[fe80::1]:4000", "fe80::1"), ("tls://[::1]:99", "::1"), ("ws://node7.example:80", "node7.example"),
    ("wss://node8:443", "node8"), ("ucx://10.0.0.5", "10.0.0.5"), ("inproc://10.0.0.1/123/4", "127.0.0.1"),
])
def test_actor_listens_on_the_host_of_its_worker_address(address, host):
    from mmsb.dask import _rpc

    assert _rpc.bind_host(address) == host


@pytest.mark.parametrize("address", ["udp://1.2.3.4:5", "10.1.2.3:4000", "tcp://", "ucx://:4000", "ucx://[:4"])
def test_an_address_without_a_host_to_listen_on_is_refused(address):
    from mmsb.dask import _rpc

    with pytest.raises(ValueError, match="worker address"):
        _rpc.bind_host(address)


_DRIVER = r'''
import sys
import numpy as np
import scipy.sparse as sp
import distributed
import mmsb

path, address = sys.argv[1], sys.argv[2]
client = distributed.Client(address, timeout=60)
sys.path.insert(0, sys.argv[3])
from test_dask_shards import _driver_history, _driver_schema

buf = mmsb.open(path, mode="w", cluster=client, durability="flush")
_driver_schema(buf, 2)
print("ready", buf.epoch, flush=True)
for i, (page, vals, index, acc) in enumerate(_driver_history()):
    e = buf.write(page, vals, index=index, accumulate=acc)
    print("acked", i, e, flush=True)
print("done", flush=True)
sys.stdin.read()
'''


def _driver_schema(buf, k):
    """The sharded pages of the driver kill test (``k`` shards; 0: in-process pages)."""
    rng = np.random.default_rng(21)
    side = 10
    n = side * side
    kw = {"shards": k} if k else {}
    buf.create_page("src", n, semiring="min_plus", **kw)
    buf.create_page("dist", n, semiring="min_plus", **kw)
    buf.create_matrix("W", (n, n), semiring="min_plus", data=_grid(rng, side), **kw)
    buf.closure("dist", "src", "W")
    buf.create_page("x", n, **kw)
    buf.create_page("y", n, **kw)
    buf.create_matrix("A", (n, n), data=sp.random(n, n, density=4 / n, random_state=4, format="csr"), **kw)
    buf.link("y", "x", "A")


def _driver_history():
    rng = np.random.default_rng(22)
    return [(p, v, i, a) for p, v, i, a in _history(rng, 100, 400) if p in ("src", "x", "W", "A")]


def test_driver_killed_loses_no_acknowledged_commit(client, tmp_path):
    """kill -9 of the driver mid-history: a reopen without the cluster holds every commit the driver acknowledged,
    each equal at its epoch to the same history run in process."""
    import signal
    import subprocess
    import sys

    path = str(tmp_path / "store")
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    child = subprocess.Popen([sys.executable, str(script), path, client.scheduler.address,
                              os.path.dirname(__file__)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    acked = {}
    try:
        for line in child.stdout:
            words = line.split()
            if words[0] == "acked":
                acked[int(words[1])] = int(words[2])
                if len(acked) == 60:
                    break
            elif words[0] == "done":
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert len(acked) == 60, "the driver did not acknowledge 60 commits"
    ref = mmsb.open(None)
    _driver_schema(ref, 0)
    want = {}
    for i, (page, vals, index, acc) in enumerate(_driver_history()):
        if i in acked:
            ref.write(page, vals, index=index, accumulate=acc)
            want[i] = {p: ref[p].read() for p in ("dist", "y")}
    with mmsb.open(path) as plain:
        assert plain._cluster is None
        assert plain.epoch >= acked[59]
        for i in (0, 30, 59):
            got = plain.at(acked[i])
            np.testing.assert_array_equal(got["dist"].read(), want[i]["dist"])
            np.testing.assert_allclose(got["y"].read(), want[i]["y"], rtol=1e-9, atol=1e-12)

"""dask.array interop: blocks to pages and pages to a dask array, computed on a LocalCluster."""

import numpy as np
import pytest
from _localcluster import client_fixture

import mmsb

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
import mmsb.dask  # noqa: E402

client = client_fixture()


def test_round_trip_uneven_chunks(client):
    buf = mmsb.open(None)
    x = np.random.default_rng(0).uniform(size=1003)
    arr = da.from_array(x, chunks=(300, 300, 300, 103))
    names = mmsb.dask.from_dask_array(buf, arr, prefix="b", semiring="min_plus", metadata={"src": "dask"})
    assert names == ["b0", "b1", "b2", "b3"]
    assert [buf[n].shape for n in names] == [(300,), (300,), (300,), (103,)]
    assert buf["b0"].semiring.name == "min_plus" and buf["b0"].metadata == {"src": "dask"}
    back = mmsb.dask.to_dask_array(buf, names)
    assert back.chunks == ((300, 300, 300, 103),)
    np.testing.assert_array_equal(back.compute(), x)


def test_snapshot_taken_at_call_time_and_usable_in_computations(client):
    buf = mmsb.open(None)
    names = mmsb.dask.from_dask_array(buf, da.arange(100, chunks=25, dtype="float64"), prefix="c")
    arr = mmsb.dask.to_dask_array(buf, names)
    buf.write("c1", np.zeros(25))
    assert float(arr.sum().compute()) == float(np.arange(100).sum())
    arr2 = mmsb.dask.to_dask_array(buf, names)
    expect = np.arange(100.0)
    expect[25:50] = 0
    np.testing.assert_array_equal((arr2 * 2 + 1).compute(), expect * 2 + 1)
    assert float(da.dot(arr2, arr2).compute()) == float(expect @ expect)


def test_nd_blocks_with_grid(client):
    buf = mmsb.open(None)
    x = np.arange(48, dtype="float64").reshape(6, 8)
    arr = da.from_array(x, chunks=(3, 4))
    names = mmsb.dask.from_dask_array(buf, arr, prefix="m")
    assert names == ["m0", "m1", "m2", "m3"]
    np.testing.assert_array_equal(buf["m1"].read(), x[:3, 4:])       # C order of the block grid
    back = mmsb.dask.to_dask_array(buf, names, grid=(2, 2))
    np.testing.assert_array_equal(back.compute(), x)
    rows = mmsb.dask.to_dask_array(buf, ["m0", "m2"])                 # N-D without grid: along axis 0
    np.testing.assert_array_equal(rows.compute(), x[:, :4])


def test_pages_from_dask_feed_rules(client):
    sp = pytest.importorskip("scipy.sparse")
    buf = mmsb.open(None, cluster=client)
    names = mmsb.dask.from_dask_array(buf, da.ones(40, chunks=20), prefix="in")
    buf.create_page("out", 20)
    buf.link("out", names[0], sp.eye(20, format="csr") * 3)
    buf.link("out", names[1], sp.eye(20, format="csr"))
    np.testing.assert_array_equal(buf["out"].read(), np.full(20, 4.0))
    buf.write(names[1], np.full(20, 2.0))
    res = mmsb.dask.to_dask_array(buf, ["out"]).compute()
    np.testing.assert_array_equal(res, np.full(20, 5.0))
    buf.close()


def test_errors():
    buf = mmsb.open(None)
    mmsb.dask.from_dask_array(buf, da.zeros(4, chunks=2), prefix="e")
    with pytest.raises(mmsb.errors.PageExistsError):
        mmsb.dask.from_dask_array(buf, da.zeros(4, chunks=2), prefix="e")
    with pytest.raises(ValueError):
        mmsb.dask.to_dask_array(buf, ["e0", "e1"], grid=(3,))
    with pytest.raises(mmsb.errors.PageNotFoundError):
        mmsb.dask.to_dask_array(buf, ["nope"])

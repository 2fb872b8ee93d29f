"""Page objects: attributes, reads, devices, and the errors of page-level calls."""
import numpy as np
import pytest

import mmsb
from mmsb import errors as E


@pytest.fixture
def buf():
    b = mmsb.open(None)
    yield b
    b.close()


def test_page_attributes(buf):
    p = buf.create_page("p", (3, 4), dtype="float32", semiring="max_min", metadata={"k": 1})
    assert (p.name, p.shape, p.dtype, p.semiring.name, p.device, p.epoch) == ("p", (3, 4), np.float32, "max_min",
                                                                              "cpu", 1)
    assert p.size == 12 and p.ndim == 2 and p.nbytes == 48 and len(p) == 3
    assert p.metadata == {"k": 1} and "p" in repr(p) and "max_min" in repr(p)
    assert p.to("cpu") is p and p.device == "cpu"


def test_read_index_errors(buf):
    p = buf.create_page("p", (2, 2), fill=1.0)
    for bad in ([4], [-1], [0.0], np.array([1.5])):
        with pytest.raises(E.InvalidDeltaError, match="'p'") as info:
            p.read(bad)
        assert isinstance(info.value, ValueError)
    np.testing.assert_array_equal(p.read(np.array([], dtype=np.int64)), [])


def test_device_errors(buf):
    p = buf.create_page("p", 2)
    for bad in ("tpu", "cuda:x", "gpu0"):
        with pytest.raises(E.DeviceError) as info:
            p.to(bad)
        assert isinstance(info.value, RuntimeError)
        assert p.device == "cpu"


def test_dropped_page_object(buf):
    p = buf.create_page("p", 2)
    buf.drop_page("p")
    with pytest.raises(E.PageNotFoundError, match="'p'"):
        buf.write(p, 1.0)
    q = buf.create_page("p", 2)           # same name, a new page: the old object is not it
    with pytest.raises(E.PageNotFoundError):
        buf.write(p, 1.0)
    buf.write(q, 1.0)
    np.testing.assert_array_equal(q.read(), [1.0, 1.0])


def test_page_of_a_view_is_read_only(buf):
    p = buf.create_page("p", 2)
    buf.write(p, 5.0)
    v = buf.at(buf.epoch)
    vp = v["p"]
    np.testing.assert_array_equal(vp.read(), [5.0, 5.0])
    with pytest.raises(E.ReadOnlyError):
        v.write(vp, 1.0)
    buf.write(p, 6.0)
    np.testing.assert_array_equal(vp.read(), [5.0, 5.0])    # a view does not follow later commits


def test_pin_nested_and_after_error(buf):
    p = buf.create_page("p", 2)
    with pytest.raises(RuntimeError):
        with p.pin():
            with p.pin():
                assert p._pins == 2
                raise RuntimeError
    assert p._pins == 0

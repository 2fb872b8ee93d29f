"""The built-in log, store, engine and device implementations satisfy the interfaces the pipeline uses, and
engines and devices are chosen through their registries."""
import numpy as np
import pytest

import mmsb
from mmsb import devices, engines, interfaces
from mmsb.errors import DeviceError


def test_logs_and_store_satisfy_their_protocols(tmp_path):
    with mmsb.open(None) as mem:
        assert isinstance(mem._log, interfaces.Log)
        assert isinstance(mem._engine, engines.PropagationEngine)
    with mmsb.open(tmp_path / "s", "w") as buf:
        assert isinstance(buf._log, interfaces.Log)
        assert isinstance(buf._store, interfaces.Store)


def test_device_backends_come_from_the_registry():
    assert devices.backend_for("cpu") is devices.CPU
    assert devices.normalize("cuda") == "cuda:0" and devices.normalize("cuda:3") == "cuda:3"
    with pytest.raises(DeviceError):
        devices.normalize("tpu:0")
    with pytest.raises(DeviceError):
        devices.backend_for("tpu")


def test_a_registered_engine_is_used(monkeypatch):
    """A factory registered as "local" builds the engine of every new in-process buffer."""
    built = []
    real = engines.factory("local")

    def factory(buf, cluster):
        engine, handle = real(buf, cluster)
        built.append(engine)
        return engine, handle

    monkeypatch.setitem(engines._registry._entries, "local", factory)
    buf = mmsb.open(None)
    x, y = buf.create_page("x", 3), buf.create_page("y", 3)
    buf.link(y, x, np.eye(3) * 2)
    buf.write(x, [1.0, 2.0, 3.0])
    assert built == [buf._engine] and built[0].stats.waves >= 1
    np.testing.assert_array_equal(y.read(), [2.0, 4.0, 6.0])


def test_a_lazily_registered_device_family_is_imported_on_first_use(monkeypatch):
    class Fake(devices.CPUBackend):
        family = "fake"

    import sys
    import types
    mod = types.ModuleType("mmsb_fake_device")
    mod.Fake = Fake
    monkeypatch.setitem(sys.modules, "mmsb_fake_device", mod)
    devices.register_lazy("fake", "mmsb_fake_device:Fake")
    try:
        assert devices.normalize("fake") == "fake:0"
        assert isinstance(devices.backend_for("fake:0"), Fake)
    finally:
        devices._registry._entries.pop("fake", None)
        devices._registry._lazy.pop("fake", None)

"""The golden stores written by tests/golden/make_golden.py must keep opening to exactly the recorded state,
read-only and with mode "a", at every recorded epoch, and must verify: store_v1 (STORE version 1, before the
MANIFEST) and store_v2 (STORE version 2 with a MANIFEST), both from the same seeded history."""
import json
import os
import shutil

import numpy as np
import pytest

import mmsb

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
META = json.load(open(os.path.join(HERE, "expected.json")))
EXPECTED = dict(np.load(os.path.join(HERE, "expected.npz")))


def golden_affine(x):
    return 2 * x + 1


def at_epoch(e):
    assert e in META["epochs"]
    return {key.split("/", 1)[1]: v for key, v in EXPECTED.items() if int(key.split("/")[0]) == e}


@pytest.fixture(params=["store_v1", "store_v2"])
def copy(tmp_path, request):
    root = str(tmp_path / request.param)
    shutil.copytree(os.path.join(HERE, request.param), root)   # never open the committed files themselves
    return root


def check_state(buf, exp):
    assert sorted(buf) == sorted(exp)
    for name, v in exp.items():
        got = buf[name].read()
        assert got.dtype == v.dtype and got.shape == v.shape, name
        np.testing.assert_array_equal(got, v, err_msg=name)


def test_golden_small():
    size = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(HERE) for n in ns
               if "__pycache__" not in d)
    assert size < 200_000


def test_golden_verify(copy):
    rep = mmsb.verify(copy)
    assert rep.ok, rep.problems
    assert rep.checkpoints == [META["checkpoint"]]


@pytest.mark.parametrize("mode", ["r", "a"])
def test_golden_state_and_history(copy, mode):
    with mmsb.open(copy, mode, functions={META["function"]: golden_affine}) as buf:
        assert buf.epoch == META["final_epoch"]
        check_state(buf, at_epoch(META["final_epoch"]))
        for name, sr in META["semirings"].items():
            assert buf[name].semiring.name == sr
            assert str(buf[name].dtype) == META["pages"][name]["dtype"]
            assert list(buf[name].shape) == META["pages"][name]["shape"]
        assert buf["f"].metadata == {"unit": "m"}
        assert buf.graph.parents("lk") == ["f"] and buf.graph.parents("dv") == ["f"]
        assert buf.graph.parents("cl") == ["i"]
        assert len(META["epochs"]) > 10
        for e in META["epochs"]:                          # every recorded epoch, across the checkpoint
            check_state(buf.at(e), at_epoch(e))
        # derived pages agree with an independent numpy computation
        f = buf["f"].read()
        np.testing.assert_array_equal(buf["dv"].read(), 2 * f + 1)
        assert sum(1 for d in buf.log.query(source="golden")) == 12
        if mode == "a":
            buf.write("f", 1.0, index=[3], accumulate=True)
            f[3] += 1
            np.testing.assert_array_equal(buf["dv"].read(), 2 * f + 1)
    assert mmsb.verify(copy).ok


def test_golden_without_function_warns_but_reads(copy):
    with pytest.warns(RuntimeWarning, match=META["function"]):
        buf = mmsb.open(copy, "r")
    with buf:
        check_state(buf, at_epoch(META["final_epoch"]))


def test_golden_checkpoint_v2(tmp_path):
    """The version-2 container (RAW chunks of 64 KiB or more aligned to 4096, zero padding) keeps loading to
    exactly the arrays it was written from (SHA-256 of their bytes recorded at generation), and verifies."""
    import hashlib

    from mmsb import checkpoint as C

    meta = json.load(open(os.path.join(HERE, "expected_ckpt_v2.json")))
    root = tmp_path / "ckpt_v2"
    shutil.copytree(os.path.join(HERE, "ckpt_v2"), root)
    snap = C.load_checkpoint(str(root), epoch=5)
    got = {m["name"]: a for m, a in snap.pages}
    got["rule_data"] = snap.rules[0].arrays["data"]
    assert sorted(got) == sorted(meta["arrays"])
    for name, exp in meta["arrays"].items():
        a = got[name]
        assert a.dtype.str == exp["dtype"] and list(a.shape) == exp["shape"], name
        assert hashlib.sha256(a.tobytes()).hexdigest() == exp["sha256"], name
    path = str(tmp_path / meta["file"])
    man = C.read_checkpoint_file(path)[0]
    assert man["format"] == meta["format"] == 2
    assert {p["meta"]["name"]: [c["offset"] for c in p["chunks"]] for p in man["pages"]} == meta["offsets"]
    assert C.verify_checkpoint(path)["epoch"] == 5


def test_golden_manifest_v2(tmp_path):
    """The MANIFEST of store_v2 (docs/FORMAT.md) decodes by hand: magic, version 1, JSON listing exactly the
    segment files (with the salt in each segment's header) and the checkpoint (with its container's manifest
    SHA-256), under the store id of STORE (version 2), with a valid masked CRC32C."""
    import struct

    import crc32c

    from mmsb import checkpoint as C
    from mmsb import identity as ID
    from mmsb.manifest import read_manifest

    root = os.path.join(HERE, "store_v2")
    data = open(os.path.join(root, "MANIFEST"), "rb").read()
    magic, version, reserved, n = struct.unpack_from("<8sHHI", data)
    assert (magic, version, reserved, len(data)) == (b"MMSBMANI", 1, 0, 16 + n + 4)
    c = crc32c.crc32c(data[:-4])
    assert struct.unpack_from("<I", data, len(data) - 4)[0] == ((((c >> 15) | (c << 17)) & 0xFFFFFFFF)
                                                               + 0xA282EAD8) & 0xFFFFFFFF
    body = json.loads(data[16:-4])
    store = ID.read_store_file(root)
    assert store["version"] == 2 and body["store_id"] == store["store_id"]
    segs = sorted(os.listdir(os.path.join(root, "log")))
    assert [f"{s['base']:020d}.seg" for s in body["segments"]] == segs
    for s in body["segments"]:
        head = open(os.path.join(root, "log", f"{s['base']:020d}.seg"), "rb").read(44)
        assert head[16:32].hex() == s["salt"] and struct.unpack_from("<Q", head, 32)[0] == s["base"]
    assert [c["epoch"] for c in body["checkpoints"]] == [META["checkpoint"]]
    ck = C.checkpoint_path(root, META["checkpoint"])
    tail = open(ck, "rb").read()[-64:]
    assert tail[20:52].hex() == body["checkpoints"][0]["sha256"]
    assert body.get("gaps", []) == []
    man = read_manifest(root)
    assert [b for b, _ in man.segments] == [s["base"] for s in body["segments"]]

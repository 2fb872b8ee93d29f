"""Security of inputs: no reader can be made to execute code; manifests cannot point outside their file;
built-in semirings cannot be replaced by a plugin."""
import hashlib
import json
import os
import re
import struct

import numpy as np
import pytest

import mmsb
from mmsb import checkpoint as C
from mmsb import container as K
from mmsb.errors import CorruptionError, SemiringError

pytestmark = pytest.mark.reliability
PKG = os.path.dirname(mmsb.__file__)


def test_no_code_executing_deserialisers():
    bad = re.compile(r"\b(pickle|cPickle|marshal|shelve|dill|cloudpickle)\b|\beval\s*\(|\bexec\s*\(|"
                     r"yaml\.load\s*\(|np\.load\s*\([^)]*allow_pickle\s*=\s*True|allow_pickle\s*=\s*True")
    hits = []
    for dirpath, _, files in os.walk(PKG):
        if any(part in dirpath for part in ("dask", "gpu", "bench")):
            continue                # cluster transport and benchmarks are not file readers
        for f in files:
            if f.endswith((".py", ".pyx")):
                p = os.path.join(dirpath, f)
                for i, line in enumerate(open(p, encoding="utf-8"), 1):
                    code = line.split("#", 1)[0]
                    if bad.search(code) and "No pickle" not in line and "no pickle" not in line:
                        hits.append(f"{os.path.relpath(p, PKG)}:{i}: {line.strip()}")
    assert not hits, hits


def _rewrite_manifest(path, fn):
    """Re-seal a container after fn(manifest) changed its manifest (so only the content checks can refuse)."""
    data = open(path, "rb").read()
    moff, mlen = struct.unpack_from("<QQ", data, len(data) - K.TRAIL_SIZE)
    man = json.loads(data[moff:moff + mlen])
    fn(man)
    mb = json.dumps(man).encode()
    tr = K._TRAIL.pack(moff, len(mb), K._crc32c(mb), hashlib.sha256(mb).digest(), K.END_MAGIC)
    out = data[:moff] + mb + tr + struct.pack("<I", K._mask(K._crc32c(tr)))
    open(path, "wb").write(out)


@pytest.mark.parametrize("evil", ["../../etc/passwd", "/etc/passwd", "spill/../../x", -1, 10**12, "0", None])
def test_crafted_manifest_paths_and_offsets_refused(tmp_path, evil):
    C.write_checkpoint(str(tmp_path), 4, [({"name": "p"}, np.arange(10.0))], [], fsync=False)
    path = C.checkpoint_path(str(tmp_path), 4)

    def fn(man):
        ch = man["pages"][0]["chunks"][0]
        ch["offset"] = evil
        ch["path"] = evil
        man["pages"][0]["path"] = evil
    _rewrite_manifest(path, fn)
    with pytest.raises(CorruptionError):
        C.load_checkpoint(str(tmp_path))


def test_crafted_manifest_extra_path_keys_are_inert(tmp_path):
    """Path-like values anywhere in a manifest are never opened (chunks are addressed by offset only)."""
    C.write_checkpoint(str(tmp_path), 4, [({"name": "p"}, np.arange(10.0))], [], fsync=False)
    path = C.checkpoint_path(str(tmp_path), 4)
    _rewrite_manifest(path, lambda m: m.update(file="/etc/passwd", blob="../../etc/shadow"))
    snap = C.load_checkpoint(str(tmp_path))
    assert np.array_equal(snap.pages[0][1], np.arange(10.0))


def test_crafted_dtype_refused(tmp_path):
    C.write_checkpoint(str(tmp_path), 4, [({"name": "p"}, np.arange(10.0))], [], fsync=False)
    path = C.checkpoint_path(str(tmp_path), 4)
    _rewrite_manifest(path, lambda m: m["pages"][0].update(dtype="O"))
    with pytest.raises(CorruptionError):
        C.load_checkpoint(str(tmp_path))


@pytest.mark.parametrize("name", ["min_plus", "plus_times", "or_and"])
def test_builtin_semiring_cannot_be_replaced(name):
    orig = mmsb.semirings.get(name)
    fake = mmsb.Semiring(name, np.add, np.multiply, 0.0, 1.0, invertible=True)
    for replace in (False, True):
        with pytest.raises(SemiringError):
            mmsb.semirings.register(fake, replace=replace)
    assert mmsb.semirings.get(name) is orig


@pytest.mark.parametrize("shape", [[0, 2**62, 2**62], [2**32, 2**32], [-1], [2**70]])
def test_crafted_manifest_shape_refused(tmp_path, shape):
    """A re-sealed manifest whose shape overflows or hides a huge dim behind a 0 is CorruptionError."""
    C.write_checkpoint(str(tmp_path), 4, [({"name": "p"}, np.zeros(0))], [], fsync=False)
    path = C.checkpoint_path(str(tmp_path), 4)
    _rewrite_manifest(path, lambda m: m["pages"][0].update(shape=shape))
    with pytest.raises(CorruptionError):
        C.load_checkpoint(str(tmp_path))

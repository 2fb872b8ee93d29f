"""Fuzzing every decoder and file reader with hypothesis: random bytes and mutations of valid inputs may only
raise CorruptionError, never another exception, a crash or a hang (a per-example deadline)."""
import os
import subprocess
import tempfile
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mmsb import checkpoint as C
from mmsb import identity as ID
from mmsb import spill as SP
from mmsb import codecs
from mmsb.delta import Delta, SchemaOp
from mmsb.errors import CorruptionError
from mmsb.log import records as R
from mmsb.log import segment as S

import _targets as T
from _figures import count

pytestmark = pytest.mark.reliability
LONG = os.environ.get("MMSB_RELIABILITY_LONG", "") not in ("", "0")
EXAMPLES = 3000 if LONG else 250
SET = settings(max_examples=EXAMPLES, deadline=5000, derandomize=not LONG,
               suppress_health_check=list(HealthCheck), database=None)


def _valid_inputs() -> dict:
    """Valid byte strings per target (the mutation seeds)."""
    d1 = Delta("p", np.arange(5.0), index=np.array([0, 3, 4, 9, 200]), accumulate=True, source="s",
               metadata={"k": [1, 2]})
    d2 = Delta("q", np.ones(300, dtype=np.float32), mask=np.arange(300) % 3 == 0)
    d3 = Delta("r", np.arange(1000, dtype=np.int64))
    sch = SchemaOp(kind="page_created", payload={"name": "p", "shape": [4], "dtype": "<f8", "semiring": "min_plus",
                                                 "device": "cpu", "metadata": None}, arrays={"fill": np.zeros(1)})
    rule = SchemaOp(kind="rule_added", payload={"kind": "link", "dst": "p", "srcs": ["q"], "shape": [3, 3]},
                    arrays={"m": np.eye(3)})
    pays = [R.encode_op(op)[1] for op in (d1, d2, d3, sch)]
    records = [bytes([0]) + pays[0], bytes([0]) + pays[1], bytes([0]) + pays[2], bytes([1]) + pays[3]]
    seg = S.build_header(T.SALT, 1) + b"".join(
        S.build_record(rt, 1, 1, p, T.SALT) for (rt, p, _, _) in (R.encode_op(d1), R.encode_op(sch))) + \
        S.build_record(R.COMMIT, 1, 1, b"\x02\0\0\0", T.SALT)
    idx = np.cumsum(np.arange(50)).astype(np.int64)
    mask = np.arange(300) % 7 < 3
    cods = [bytes([0]) + b"\x32\0" + codecs._k.encode_index(idx),
            bytes([1]) + b"\x2c\x01" + codecs._k.encode_mask_rle(mask),
            bytes([2]) + b"\x2c\x01" + codecs._k.encode_bitpack(mask),
            bytes([3]) + b"\x20\x03" + codecs.encode_values(np.zeros(800), max_fraction=1.0)[1]]
    import tempfile
    d = tempfile.mkdtemp()
    C.write_checkpoint(d, 3, [({"name": "p"}, np.arange(100.0)), ({"name": "z"}, np.zeros(5000))],
                       [rule], extra={"txid": 1}, fsync=False)
    ck = open(C.checkpoint_path(d, 3), "rb").read()
    SP.write_blob_file(os.path.join(d, "b.spill"), np.arange(40, dtype=np.int32), {"page": "p"})
    blob = open(os.path.join(d, "b.spill"), "rb").read()
    ID.write_store_file(d, fsync=False)
    store = open(os.path.join(d, "STORE"), "rb").read()
    return {"segment": [seg], "records": records, "codecs": cods, "codecs_agree": [c[1:] for c in cods[:3]],
            "container": [b"\x01" + ck[1:] if False else ck, blob], "store": [store]}


VALID = _valid_inputs()


def _run(name, data):
    try:
        T.TARGETS[name](data)
    except CorruptionError:
        pass
    count("inputs_fuzzed")


@st.composite
def mutated(draw, name):
    seeds = VALID[name]
    b = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.integers(0, 3))
        if not b:
            break
        pos = draw(st.integers(0, len(b) - 1))
        if op == 0:
            b[pos] = draw(st.integers(0, 255))
        elif op == 1:
            b[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == 2:
            del b[pos:pos + draw(st.integers(1, 16))]
        else:
            b[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(b)


@pytest.mark.parametrize("name", sorted(T.TARGETS))
def test_random_bytes(name):
    @SET
    @given(st.binary(max_size=600))
    def run(data):
        _run(name, data)
    run()


@pytest.mark.parametrize("name", sorted(T.TARGETS))
def test_mutated_valid_inputs(name):
    for v in VALID[name]:          # the seeds themselves decode
        T.TARGETS[name](v) if name not in ("container",) else None

    @SET
    @given(mutated(name))
    def run(data):
        _run(name, data)
    run()


def test_huge_declared_counts_do_not_allocate():
    """A count far beyond what the bytes can hold is refused before any allocation."""
    for n in (2**40, 2**48, 2**62):
        for k in (T.ext, T.ref):
            for f, buf in ((k.decode_index, b"\x01" + bytes(9)), (k.decode_bitpack, b"\xff" * 8),
                           (k.decode_mask_rle, b"\x01\xff\xff\xff\xff\xff\xff\xff\xff\x7f")):
                with pytest.raises(CorruptionError):
                    f(buf, n)
                count("inputs_fuzzed")


def test_atheris_harness_runs():
    """The atheris harness (coverage-guided) runs for a while without a finding, when atheris is installed."""
    pytest.importorskip("atheris")
    runs = 200000 if LONG else 3000
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, os.path.join(here, "fuzz_atheris.py"), f"-atheris_runs={runs}"],
                       capture_output=True, text=True, timeout=1800, cwd=tempfile.gettempdir())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    count("inputs_fuzzed_atheris", runs)

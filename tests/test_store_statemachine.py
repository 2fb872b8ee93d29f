"""A hypothesis state machine drives a durable store (writes, transactions, checkpoints, reopen, simulated
crashes that drop unsynced bytes, replay via at()) against a pure-numpy model."""
import os
import shutil
import tempfile
import warnings

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import mmsb
from mmsb.log.segment import HEADER_SIZE, iter_segments, scan_segment

N = 8
# link: lf = A (x) f under plus_times; small integers keep float sums exact in any order
A = np.array([[(i * 3 + j * 5) % 4 for j in range(N)] for i in range(5)], dtype=np.float64)
IMAX = np.iinfo(np.int32).max

idx_st = st.lists(st.integers(0, N - 1), min_size=1, max_size=5)
fval = st.integers(-40, 40).map(lambda v: v / 4)
ival = st.integers(-1000, 1000)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="mmsb-sm-")
        self.root = os.path.join(self.dir, "s")
        self.buf = None

    # -- model ------------------------------------------------------------------------------------------------
    def snap(self):
        f, m = self.model["f"].copy(), self.model["m"].copy()
        return {"f": f, "m": m, "lf": A @ f}

    def record(self, epoch):
        assert epoch == self.buf.epoch
        self.history[epoch] = self.snap()

    @initialize(durability=st.sampled_from(["none", "flush", "fsync"]), seg=st.sampled_from([400, 1500, 1 << 20]))
    def setup(self, durability, seg):
        self.durability, self.seg = durability, seg
        self.buf = mmsb.open(self.root, "w", durability=durability, segment_bytes=seg)
        self.buf.create_page("f", N, dtype="float64", semiring="plus_times")
        self.buf.create_page("m", N, dtype="int32", semiring="min_plus")
        self.buf.create_page("lf", 5, dtype="float64", semiring="plus_times")
        self.buf.link("lf", "f", A)
        self.model = {"f": np.zeros(N), "m": np.full(N, IMAX, dtype=np.int32)}
        self.history = {}
        self.history[self.buf.epoch] = self.snap()
        self.do_checkpoint()

    def apply(self, name, idx, vals, accumulate):
        arr = self.model[name]
        for i, v in zip(idx, vals):
            if not accumulate:
                arr[i] = v
            elif name == "f":
                arr[i] += v
            else:
                arr[i] = min(arr[i], v)

    # -- rules ------------------------------------------------------------------------------------------------
    @rule(idx=idx_st, data=st.data(), acc=st.booleans(), name=st.sampled_from(["f", "m"]))
    def write_sparse(self, idx, data, acc, name):
        vals = data.draw(st.lists(fval if name == "f" else ival, min_size=len(idx), max_size=len(idx)))
        dt = np.float64 if name == "f" else np.int32
        e = self.buf.write(name, np.array(vals, dtype=dt), index=idx, accumulate=acc)
        self.apply(name, idx, vals, acc)
        self.record(e)

    @rule(mask=st.lists(st.booleans(), min_size=N, max_size=N), v=fval, name=st.sampled_from(["f", "m"]))
    def write_dense(self, mask, v, name):
        mask = np.array(mask)
        vals = np.arange(N) + v if name == "f" else (np.arange(N) * 7 + int(v * 4)).astype(np.int32)
        e = self.buf.write(name, vals, mask=mask)
        self.model[name][mask] = vals[mask]
        self.record(e)

    @rule(fi=idx_st, mi=idx_st, v=fval, fail=st.booleans())
    def transaction(self, fi, mi, v, fail):
        try:
            with self.buf.transaction() as tx:
                cur = tx.read("f", fi)
                tx.write("f", cur + v, index=fi)
                tx.write("m", np.full(len(mi), int(v * 4), dtype=np.int32), index=mi, accumulate=True)
                if fail:
                    raise KeyError("boom")
        except KeyError:
            assert fail
            return
        expect = self.model["f"].copy()
        # duplicates in an assign: the last occurrence wins, each computed from the pre-transaction value
        for i in fi:
            expect[i] = self.model["f"][i] + v
        self.model["f"] = expect
        self.apply("m", mi, [int(v * 4)] * len(mi), True)
        self.record(self.buf.epoch)

    def do_checkpoint(self):
        e = self.buf.checkpoint()
        assert e == self.buf.epoch
        self.ckpt_epoch = e
        seg = iter_segments(os.path.join(self.root, "log"))[-1][1]
        self.ckpt_pos = (seg, os.path.getsize(seg))

    @rule()
    def checkpoint(self):
        self.do_checkpoint()

    @rule()
    def reopen(self):
        self.buf.close()
        self.buf = mmsb.open(self.root, "a", durability=self.durability, segment_bytes=self.seg)
        assert self.buf.epoch == max(self.history)

    @rule(frac=st.integers(0, 1000), boundary=st.booleans())
    def crash(self, frac, boundary):
        log = self.buf._log
        log._wbuf = bytearray()              # bytes never written to the OS die with the process
        self.buf.close()
        seg = iter_segments(os.path.join(self.root, "log"))[-1][1]
        size = os.path.getsize(seg)
        lo = self.ckpt_pos[1] if seg == self.ckpt_pos[0] else HEADER_SIZE
        lo = min(lo, size)
        if boundary:
            ends = [lo] + [r.end for r in scan_segment(seg).records if r.end >= lo]
            cut = ends[frac * len(ends) // 1001]
        else:
            cut = lo + (size - lo) * frac // 1000
        with open(seg, "r+b") as f:
            f.truncate(cut)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.buf = mmsb.open(self.root, "a", durability=self.durability, segment_bytes=self.seg)
        e = self.buf.epoch
        assert self.ckpt_epoch <= e <= max(self.history), (self.ckpt_epoch, e, max(self.history))
        assert e in self.history
        self.history = {k: v for k, v in self.history.items() if k <= e}
        self.model = {"f": self.history[e]["f"].copy(), "m": self.history[e]["m"].copy()}

    @rule(data=st.data())
    def replay(self, data):
        e = data.draw(st.integers(0, self.buf.epoch))
        view = self.buf.at(e)
        known = [k for k in self.history if k <= e]
        if not known:                       # before the pages and the link existed
            assert set(view) <= {"f", "m", "lf"}
            return
        exp = self.history[max(known)]
        for n, v in exp.items():
            np.testing.assert_array_equal(view[n].read(), v, err_msg=f"{n} at {e}")

    @invariant()
    def state_matches(self):
        if self.buf is None:
            return
        for n, v in self.snap().items():
            np.testing.assert_array_equal(self.buf[n].read(), v, err_msg=n)

    def teardown(self):
        if self.buf is not None:
            self.buf.close()
            rep = mmsb.verify(self.root)
            assert rep.ok, rep.problems
        shutil.rmtree(self.dir, ignore_errors=True)


StoreMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None,
                                          suppress_health_check=list(HealthCheck))
TestStore = StoreMachine.TestCase

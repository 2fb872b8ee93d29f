"""Stress: writer threads running read-modify-write transactions (mmsb.with_transaction), a thread taking
checkpoints and compacting, a memory_limit that keeps pages spilling, and a read-only second process opening the
store over and over, all at once; then a full verify and replays (buf.at) checked against the invariants."""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import mmsb

from _figures import count

pytestmark = [pytest.mark.reliability, pytest.mark.long_slow]
N = 512            # 4 KiB pages
THREADS = 3


def twice(a):
    return 2 * a


FUNCS = {"twice": twice}


def check_invariants(buf):
    """sum(ctr) == tot[0] == sum over threads of last[t]; derived pages follow their inputs."""
    if "dbl" not in buf:
        return
    ctr, tot, last = buf["ctr"].read(), buf["tot"].read(), buf["last"].read()
    assert ctr.sum() == tot[0] == last.sum(), (ctr.sum(), tot[0], last.sum())
    assert np.array_equal(buf["dbl"].read(), 2 * ctr)
    assert np.array_equal(buf["lsum"].read(), np.array([ctr.sum()] * 4, dtype=np.int64))


def test_stress(tmp_path, LONG):
    path = str(tmp_path / "s")
    seconds = 60 if LONG else 8
    buf = mmsb.open(path, "w", functions=FUNCS, memory_limit=3 * N * 8 + 512, segment_bytes=16384)
    ctr = buf.create_page("ctr", N, dtype="int64")
    buf.create_page("tot", 1, dtype="int64")
    buf.create_page("last", THREADS, dtype="int64")
    buf.create_page("pad", N)                         # extra cold pages: memory pressure
    buf.create_page("pad2", N)
    buf.create_page("dbl", N, dtype="int64")
    buf.derive("dbl", ["ctr"], "twice")
    lsum = buf.create_page("lsum", 4, dtype="int64")
    buf.link(lsum, ctr, np.ones((4, N), dtype=np.int64))
    setup_epoch = buf.epoch
    stop = threading.Event()
    errors = []
    done = [0] * THREADS

    def writer(t):
        rng = np.random.default_rng(t)
        try:
            while not stop.is_set():
                i = int(rng.integers(0, 16))          # a hot spot: many conflicts

                def fn(tx, i=i):
                    v = tx.read("ctr", [i])
                    k = tx.read("last", [t])
                    tx.write("ctr", v + 1, index=[i])
                    tx.write("tot", [1], index=[0], accumulate=True)
                    tx.write("last", k + 1, index=[t])
                    if rng.random() < 0.2:
                        tx.write("pad", rng.random(4), index=rng.choice(N, 4, replace=False))
                mmsb.with_transaction(buf, fn, retries=200)
                done[t] += 1
        except BaseException as exc:   # noqa: BLE001
            errors.append(exc)

    def maintainer():
        try:
            n = 0
            while not stop.is_set():
                time.sleep(0.05)
                n += 1
                if n % 5 == 0:
                    buf.compact(keep=50)
                else:
                    buf.checkpoint()
                buf["pad2"].read()                      # reloads a spilled page
        except BaseException as exc:   # noqa: BLE001
            errors.append(exc)

    here = os.path.dirname(os.path.abspath(__file__))
    reader = subprocess.Popen([sys.executable, os.path.join(here, "stress_reader.py"), path, str(seconds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, MMSB_DISABLE_PLUGIN_AUTOLOAD="1",
                                       PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(mmsb.__file__)))))
    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    threads.append(threading.Thread(target=maintainer))
    for th in threads:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join(60)
    out, err = reader.communicate(timeout=120)
    assert not errors, errors
    assert reader.returncode == 0 and out.startswith("OK"), err[-3000:]
    # no lost update: every acknowledged increment is there
    assert ctr.read().sum() == sum(done) == buf["tot"].read()[0]
    assert list(buf["last"].read()) == done
    check_invariants(buf)
    mem = buf.stats()["memory"]
    assert mem["evictions"] > 0 and mem["reloads"] > 0
    final = buf.epoch
    horizon = buf._horizon
    rng = np.random.default_rng(0)
    for e in sorted(set(rng.integers(max(horizon, setup_epoch), final + 1, size=5).tolist()) | {final}):
        view = buf.at(e)
        check_invariants(view)
    assert np.array_equal(buf.at(final)["ctr"].read(), ctr.read())
    buf.close()
    rep = mmsb.verify(path)
    assert rep.ok, rep.problems
    with mmsb.open(path, "r", functions=FUNCS) as ro:
        assert ro.epoch == final
        check_invariants(ro)
        assert list(ro["last"].read()) == done
    count("stress_transactions", sum(done))
    count("stress_reader_opens", int(out.split()[1]))

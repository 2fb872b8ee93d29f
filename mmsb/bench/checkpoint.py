"""checkpoint: checkpoint write and reopen of many pages against numpy.save / numpy.load of the same arrays; reopen,
commit throughput and time travel after a long history of small commits (#16.11), against numpy.load and LMDB."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Iterator

import numpy as np

import mmsb
from mmsb.bench._common import Row, have, missing, scratch_dir
from mmsb.fileio import fsync_dir as fsync_path

GROUP = "checkpoint"


def _data(kind: str, n_pages: int, n: int, seed: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "random":                     # incompressible: uniform [0, 1) float64
        return [rng.random(n) for _ in range(n_pages)]
    # structured: a smooth field quantised to 1/1024 (compressible, like simulation state)
    x = np.linspace(0.0, 50.0, n)
    return [np.round(np.sin(x + i) * 100.0 * 1024) / 1024 for i in range(n_pages)]


def _np_save(d: str, arrays: list[np.ndarray]) -> float:
    t0 = time.perf_counter()
    for i, a in enumerate(arrays):
        path = os.path.join(d, f"p{i}.npy")
        with open(path, "wb") as f:
            np.save(f, a)
            f.flush()
            os.fsync(f.fileno())
    fsync_path(d)
    return time.perf_counter() - t0


def _np_load(d: str, count: int) -> float:
    t0 = time.perf_counter()
    out = [np.load(os.path.join(d, f"p{i}.npy")) for i in range(count)]
    dt = time.perf_counter() - t0
    del out
    return dt


_LOAD_CHILD = """
import os, sys, time
import numpy as np
import mmsb
import mmsb.codecs, mmsb.store, mmsb.verification   # what `import mmsb` loads lazily, loaded before the clock
mmsb.codecs._blosc2()
what, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
if what == "mmsb":
    ro = mmsb.open(path, mode="r")
    got = [ro[f"p{i}"] for i in range(count)]
else:
    got = [np.load(os.path.join(path, f"p{i}.npy")) for i in range(count)]
print(time.perf_counter() - t0)
"""


def _fresh_load(what: str, path: str, count: int) -> float:
    """Seconds one load takes in a new process (imports done before the clock starts; page cache warm): the
    allocator starts empty on both sides, as when a program opens a store, instead of recycling memory that an
    earlier iteration freed."""
    out = subprocess.run([sys.executable, "-c", _LOAD_CHILD, what, path, str(count)], capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"load in a fresh process failed: {out.stderr.strip()[-500:]}")
    return float(out.stdout.split()[-1])


def _fresh_pair(store: str, npd: str, count: int, repeat: int = 3) -> tuple[float, float]:
    a = b = float("inf")
    for _ in range(repeat):                 # A B A B, best of each
        a = min(a, _fresh_load("mmsb", store, count))
        b = min(b, _fresh_load("numpy", npd, count))
    return a, b


def run(quick: bool = False) -> Iterator[Row]:
    n_pages, page_mib = (8, 4) if quick else (64, 16)
    n = page_mib * 2**20 // 8
    total = n_pages * page_mib
    for kind in ("random", "structured"):
        arrays = _data(kind, n_pages, n)
        with scratch_dir("ckpt") as d:
            npd = os.path.join(d, "npy")
            os.mkdir(npd)
            store = os.path.join(d, "store")
            with mmsb.open(store, mode="w", durability="fsync") as buf:
                pages = [buf.create_page(f"p{i}", n) for i in range(n_pages)]
                for p, a in zip(pages, arrays):
                    buf.write(p, a)
                t_w = float("inf")
                t_s = float("inf")
                for _ in range(2):           # A B A B, best of each
                    buf.write(pages[0], arrays[0][:1], index=[0])   # a new epoch, so a new full checkpoint
                    t0 = time.perf_counter()
                    buf.checkpoint()
                    t_w = min(t_w, time.perf_counter() - t0)
                    t_s = min(t_s, _np_save(npd, arrays))
                ck = buf.stats().get("store", {})
            size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(store))
                       for f in fs if "checkpoint" in r or f.startswith("ckpt") or f.endswith(".ckpt"))
            what = f"{n_pages} pages x {page_mib} MiB float64 ({total} MiB, {kind})"
            yield Row(GROUP, f"checkpoint write, {what}", t_w, "numpy.save + fsync per file", t_s,
                      note=f"both fsync; checkpoint files {size / 2**20 / 2:.0f} MiB each",
                      extra={"store": {k: v for k, v in ck.items() if isinstance(v, (int, float, str))}}
                      ).judge_ratio(1.0)
            with mmsb.open(store, mode="r") as ro:
                for i, a in enumerate(arrays):
                    if not np.array_equal(ro[f"p{i}"].read(), a):
                        raise AssertionError(f"page p{i} differs after reopen")
            t_l, t_nl = _fresh_pair(store, npd, n_pages)
            yield Row(GROUP, f"reopen (load checkpoint), {what}", t_l, "numpy.load of each file", t_nl,
                      note="each load in a new process (page cache warm): mmsb.open(path, 'r') = newest checkpoint "
                           "+ empty log tail, the log still holding the history that wrote the pages"
                      ).judge_ratio(1.0)
            t_l = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                with mmsb.open(store, mode="r") as ro:
                    [ro[f"p{i}"] for i in range(n_pages)]
                    t_l = min(t_l, time.perf_counter() - t0)
            t_nl = min(_np_load(npd, n_pages) for _ in range(3))
            yield Row(GROUP, f"reopen repeated in one process, {what}", t_l, "numpy.load of each file", t_nl,
                      note="context: 3 loads in a row on each side, best; freed page memory is reused (mmsb's "
                           "block cache, glibc's heap for numpy)")
            with mmsb.open(store, mode="a") as buf:
                buf.compact()
            t_c, t_nl = _fresh_pair(store, npd, n_pages)
            yield Row(GROUP, f"reopen after compact(), {what}", t_c, "numpy.load of each file", t_nl,
                      note="context: history before the checkpoint dropped; each load in a new process")
        del arrays
    yield from history_rows(quick)


# ------------------------------------------------------------------ long histories (#16.11): reopen, throughput, at(e)

_HIST_CHILD = """
import hashlib, sys, time
import numpy as np
import mmsb
import mmsb.codecs, mmsb.store, mmsb.verification   # what `import mmsb` loads lazily, loaded before the clock
mmsb.codecs._blosc2()
what, path = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if what == "mmsb":
    with mmsb.open(path, mode="r") as ro:
        a = ro["x"].read()
else:
    a = np.load(path)
t = time.perf_counter() - t0
print(t, hashlib.sha256(a.tobytes()).hexdigest())
"""


def _hist_load(what: str, path: str) -> tuple[float, str]:
    out = subprocess.run([sys.executable, "-c", _HIST_CHILD, what, path], capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"load in a fresh process failed: {out.stderr.strip()[-500:]}")
    t, digest = out.stdout.split()[-2:]
    return float(t), digest


class _Workload:
    """The issue's history: one float64 page of ``size`` entries, then commits that each overwrite ``frac`` of it
    at random positions (given in random order, as an application would). A pool of ``sets`` index/value sets
    is drawn once and cycled, so that drawing random numbers is outside every clock."""

    def __init__(self, size: int, frac: float = 0.01, sets: int = 40, seed: int = 7):
        rng = np.random.default_rng(seed)
        k = max(1, int(size * frac))
        self.size = size
        self.init = rng.random(size)
        self.idx = [rng.choice(size, k, replace=False) for _ in range(sets)]
        self.vals = [rng.random(k) for _ in range(sets)]

    def delta(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.idx[i % len(self.idx)], self.vals[i % len(self.vals)]


def _history(path: str, w: _Workload, commits: int, auto: bool = True, lmdb_env=None,
             crash_copy: str | None = None) -> dict:
    """Write the history into a new store (durability "flush"); returns the seconds of the commit loop, of the
    loop plus close(), the state, and the epoch of each commit. ``lmdb_env``: the same deltas go to LMDB too
    (outside the clock), keyed by epoch. ``crash_copy``: before close(), the store's files are copied there once
    the automatic checkpoint in flight is written (what a crash at that point leaves on disk)."""
    epochs = []
    with mmsb.open(path, mode="w", durability="flush", auto_checkpoint=auto) as buf:
        p = buf.create_page("x", w.size)
        e = buf.write(p, w.init)
        if lmdb_env is not None:
            _lmdb_put(lmdb_env, e, None, w.init)
        t0 = time.perf_counter()
        for i in range(commits):
            idx, vals = w.delta(i)
            e = buf.write(p, vals, index=idx)
            epochs.append(e)
            if lmdb_env is not None:
                t1 = time.perf_counter()
                _lmdb_put(lmdb_env, e, idx, vals)
                t0 += time.perf_counter() - t1           # (LMDB's time is not mmsb's)
        t_loop = time.perf_counter() - t0
        state = buf["x"].read()
        st = buf.stats()["store"]
        if crash_copy is not None:
            buf._store.wait_background()
            shutil.copytree(path, crash_copy, ignore=shutil.ignore_patterns("LOCK"))
        t_close0 = time.perf_counter()
    t_close = time.perf_counter() - t_close0
    return {"loop": t_loop, "with_close": t_loop + t_close, "state": state, "epochs": epochs, "store": st}


def _lmdb_put(env, epoch: int, idx, vals) -> None:
    """One commit's raw delta under its epoch (8 bytes, big-endian): b"F" + the whole array, or b"D" + count +
    int64 positions + float64 values."""
    import struct

    if idx is None:
        val = b"F" + np.ascontiguousarray(vals, dtype=np.float64).tobytes()
    else:
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        val = b"D" + struct.pack("<Q", idx.size) + idx.tobytes() + np.ascontiguousarray(vals, np.float64).tobytes()
    with env.begin(write=True) as txn:
        txn.put(int(epoch).to_bytes(8, "big"), val)


def _lmdb_replay(env, size: int, epoch: int) -> np.ndarray:
    """The state at ``epoch``: every raw delta up to it, read zero-copy from LMDB's map and applied in order."""
    import struct

    a = np.zeros(size)
    with env.begin(buffers=True) as txn:
        cur = txn.cursor()
        for key, val in cur:
            if int.from_bytes(bytes(key), "big") > epoch:
                break
            if val[0] == ord("F"):
                a[:] = np.frombuffer(val, np.float64, size, 1)
            else:
                (n,) = struct.unpack_from("<Q", val, 1)
                idx = np.frombuffer(val, np.int64, n, 9)
                a[idx] = np.frombuffer(val, np.float64, n, 9 + 8 * n)
    return a


def history_rows(quick: bool = False, size: int | None = None, commits: int | None = None,
                 repeat: int | None = None) -> Iterator[Row]:
    """#16.11's figures on the issue's workload: a float64 page of 10M entries (1M with ``quick``), then commits
    of 1 % random changes each, durability "flush", the automatic checkpoint policy at its defaults."""
    size = size or (1_000_000 if quick else 10_000_000)
    commits = commits or (200 if quick else 1000)
    short = max(1, commits // 10)
    repeat = repeat or (2 if quick else 5)
    w = _Workload(size)
    mib = size * 8 / 2**20
    what = f"{mib:.0f} MiB float64 page"
    lm_why = have("lmdb")
    with scratch_dir("hist") as d:
        env = None
        if lm_why is None:
            import lmdb

            env = lmdb.open(os.path.join(d, "lmdb"), map_size=int((commits + 2) * w.idx[0].size * 16
                                                                   + size * 8 + 2**26), sync=False)
        runs = {}
        for n in (short, commits):
            store = os.path.join(d, f"s{n}")
            crash = os.path.join(d, f"crash{n}") if n == commits else None
            runs[n] = _history(store, w, n, lmdb_env=env if n == commits else None, crash_copy=crash)
            np.save(os.path.join(d, f"s{n}.npy"), runs[n]["state"])
        best: dict = {}
        for _ in range(repeat):                     # alternate: mmsb, numpy.load, per history
            for key, path, npy in [(n, os.path.join(d, f"s{n}"), os.path.join(d, f"s{n}.npy")) for n in runs] + \
                    [("crash", os.path.join(d, f"crash{commits}"), os.path.join(d, f"s{commits}.npy"))]:
                t, h1 = _hist_load("mmsb", path)
                u, h2 = _hist_load("numpy", npy)
                if h1 != h2:
                    raise AssertionError(f"the reopened state of {path} differs from the saved array")
                best[("mmsb", key)] = min(best.get(("mmsb", key), 1e9), t)
                best[("npy", key)] = min(best.get(("npy", key), 1e9), u)
        for n in runs:
            st = runs[n]["store"]
            yield Row(GROUP, f"reopen after {n} commits of 1% changes, {what} (clean close)", best[("mmsb", n)],
                      "numpy.load of the same state", best[("npy", n)], target="<= 10x numpy.load",
                      note=f"fresh process per load, imports before the clock, page cache warm; "
                           f"{st['auto_checkpoints']} automatic checkpoints during the history",
                      extra={"store": st}).judge_ratio(0.1)
        r = Row(GROUP, f"reopen after {commits} vs after {short} commits, {what}", best[("mmsb", commits)],
                f"reopen after {short} commits", best[("mmsb", short)], target="<= 1.5x (ratio >= 0.667)",
                note="both clean closes, fresh process each")
        r.met = r.ratio is not None and r.ratio >= 1 / 1.5
        yield r
        yield Row(GROUP, f"reopen after a crash at {commits} commits, {what} (no shutdown checkpoint)",
                  best[("mmsb", "crash")], "numpy.load of the same state", best[("npy", commits)],
                  note="context: the files as a crash leaves them (copied before close); the tail since the newest "
                       "automatic checkpoint is replayed")
        # time travel to the middle of the history against replaying the raw deltas from LMDB
        mid = runs[commits]["epochs"][commits // 2]
        with mmsb.open(os.path.join(d, f"s{commits}"), mode="r") as ro:
            want = ro.at(mid)["x"].read()
            if env is not None and not np.array_equal(_lmdb_replay(env, size, mid), want):
                raise AssertionError("LMDB replay and at(e) disagree")
            t_at = t_lm = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                ro.at(mid)["x"].read()
                t_at = min(t_at, time.perf_counter() - t0)
                if env is not None:
                    t0 = time.perf_counter()
                    _lmdb_replay(env, size, mid)
                    t_lm = min(t_lm, time.perf_counter() - t0)
        name = f"at(e) in the middle of {commits} commits (e = {mid}), {what}"
        if env is None:
            yield missing(GROUP, name, t_at, "LMDB: replay each commit's raw deltas to e", lm_why, target=">= 1x")
        else:
            env.close()
            yield Row(GROUP, name, t_at, "LMDB: replay each commit's raw deltas to e", t_lm,
                      note="both in one process, page cache warm, best of 3; mmsb: newest checkpoint <= e + its "
                           "log tail; LMDB: every delta from epoch 1, zero-copy from its map").judge_ratio(1.0)
        # commit throughput with the automatic checkpoint policy on and off
        res: dict = {True: [], False: []}
        for r_ in range(max(2, repeat // 2 + 1)):
            for auto in ((True, False) if r_ % 2 == 0 else (False, True)):
                path = os.path.join(d, f"t{r_}{int(auto)}")
                res[auto].append(_history(path, w, commits, auto=auto))
                shutil.rmtree(path)
        on = min(x["with_close"] for x in res[True])
        off = min(x["with_close"] for x in res[False])
        cks = [x["store"]["auto_checkpoints"] for x in res[True]]
        yield Row(GROUP, f"{commits} commits of 1% changes, {what}, flush: automatic checkpoints on (time incl. "
                         "close)", on, "the same with the policy off", off,
                  note=f"alternating, best of {len(res[True])}; {min(cks)}-{max(cks)} automatic checkpoints, "
                       "close() writes the shutdown checkpoint").judge_ratio(0.9)
        on = min(x["loop"] for x in res[True])
        off = min(x["loop"] for x in res[False])
        yield Row(GROUP, f"{commits} commits of 1% changes, {what}, flush: policy on (commit loop only)", on,
                  "the same with the policy off", off, note="context: close() excluded")

"""Scratch benchmark: log commit (append+fsync, 16 KiB deltas) vs raw write+fsync vs SQLite WAL FULL;
checkpoint write/load vs numpy.save/numpy.load. Usage: python benchmarks_tmp/bench_log_ckpt.py [GiB]"""
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

warnings.simplefilter("ignore")
from mmsb.delta import Delta, Txn  # noqa: E402
from mmsb.log import DurableLog  # noqa: E402
from mmsb import checkpoint as C  # noqa: E402

N = 400
rng = np.random.default_rng(0)
payload = rng.random(2048)            # 16 KiB of float64 per commit
blob = payload.tobytes()
base = tempfile.mkdtemp(dir=os.environ.get("BENCH_DIR", "/tmp"))


def t_raw():
    p = os.path.join(base, "raw.bin")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    t = time.perf_counter()
    for _ in range(N):
        os.write(fd, blob)
        os.fsync(fd)
    dt = time.perf_counter() - t
    os.close(fd)
    return dt


def t_sqlite():
    p = os.path.join(base, "db.sqlite")
    con = sqlite3.connect(p, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE d (id INTEGER PRIMARY KEY, v BLOB)")
    t = time.perf_counter()
    for i in range(N):
        con.execute("BEGIN")
        con.execute("INSERT INTO d (v) VALUES (?)", (blob,))
        con.execute("COMMIT")
    dt = time.perf_counter() - t
    con.close()
    return dt


def t_mmsb(kind="dense", durability="fsync"):
    root = os.path.join(base, f"mmsb_{kind}_{durability}")
    log = DurableLog(root, durability=durability)
    idx = np.sort(rng.choice(10**6, 2048, replace=False))
    t = time.perf_counter()
    for e in range(1, N + 1):
        d = Delta("p", payload, index=idx if kind == "sparse" else None)
        log.sync(log.append(Txn(e, e, [d])))
    dt = time.perf_counter() - t
    st = log.stats()
    log.close()
    return dt, st


def t_mmsb_threads(nthreads=8):
    root = os.path.join(base, f"mmsb_threads")
    log = DurableLog(root)
    lock = threading.Lock()
    ctr = [0]

    def w():
        for _ in range(N // nthreads):
            with lock:
                ctr[0] += 1
                tok = log.append(Txn(ctr[0], ctr[0], [Delta("p", payload)]))
            log.sync(tok)

    ths = [threading.Thread(target=w) for _ in range(nthreads)]
    t = time.perf_counter()
    for x in ths:
        x.start()
    for x in ths:
        x.join()
    dt = time.perf_counter() - t
    st = log.stats()
    log.close()
    return dt, st


def log_bench():
    raw = t_raw()
    sq = t_sqlite()
    md, st = t_mmsb("dense")
    ms, st2 = t_mmsb("sparse")
    mf, _ = t_mmsb("dense", "flush")
    mt, st3 = t_mmsb_threads()
    print(f"log, {N} commits of 16 KiB each (per commit):")
    print(f"  raw os.write+os.fsync       {raw / N * 1e6:8.1f} us")
    print(f"  sqlite3 WAL synchronous=FULL{sq / N * 1e6:8.1f} us")
    print(f"  mmsb dense  append+sync     {md / N * 1e6:8.1f} us  (x{md / raw:.2f} raw, x{md / sq:.2f} sqlite) "
          f"ratio {st['compression_ratio']:.2f}")
    print(f"  mmsb sparse append+sync     {ms / N * 1e6:8.1f} us  ratio {st2['compression_ratio']:.2f}")
    print(f"  mmsb dense durability=flush {mf / N * 1e6:8.1f} us")
    print(f"  mmsb 8 threads group commit {mt / N * 1e6:8.1f} us/commit, fsyncs {st3['group_commit_batches']} "
          f"for {st3['transactions']} commits")


def ckpt_bench(gib):
    n = int(gib * 2**30 // 8)
    for label, arr in (("random", np.random.default_rng(1).random(n)),
                       ("smooth", np.cumsum(np.ones(n)))):
        npy = os.path.join(base, "a.npy")
        t = time.perf_counter()
        with open(npy, "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
        t_save = time.perf_counter() - t
        t_load = 1e9
        for _ in range(3):
            t = time.perf_counter()
            b = np.load(npy)
            t_load = min(t_load, time.perf_counter() - t)
            del b
        root = os.path.join(base, "ck")
        pages = [({"name": f"p{i}"}, part) for i, part in enumerate(np.array_split(arr, 8))]
        t = time.perf_counter()
        path = C.write_checkpoint(root, 1, pages, [], fsync=True)
        t_w = time.perf_counter() - t
        size = os.path.getsize(path)
        t_l = 1e9
        for _ in range(3):
            snap = None
            t = time.perf_counter()
            snap = C.load_checkpoint(root, 1)
            t_l = min(t_l, time.perf_counter() - t)
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(snap.pages, pages))
        del snap
        print(f"checkpoint {gib} GiB float64 ({label}): file {size / 2**20:.0f} MiB")
        print(f"  numpy.save+fsync {t_save:.3f}s  numpy.load {t_load:.3f}s (best of 3)")
        print(f"  mmsb write       {t_w:.3f}s  mmsb load  {t_l:.3f}s  (load x{t_l / t_load:.2f} numpy.load)")
        os.unlink(npy)
        shutil.rmtree(root)


if __name__ == "__main__":
    try:
        if os.environ.get("SKIP_LOG") != "1":
            log_bench()
        ckpt_bench(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
    finally:
        shutil.rmtree(base, ignore_errors=True)

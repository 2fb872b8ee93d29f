"""Twelfth session diagnosis (2-core VM); output in vm_diag.txt."""

import os
import time
import hashlib
import multiprocessing as mp
import numpy as np


def hog(kind, stop):
    os.sched_setaffinity(0, {1})
    buf = np.random.default_rng(0).random(10_000_000).tobytes()
    x = 0
    while not stop.is_set():
        if kind == "sha":
            hashlib.sha256(buf).digest()
        elif kind == "alu":
            for i in range(200000):
                x += i * i
        elif kind == "mem":
            np.copyto(np.empty(10_000_000), np.frombuffer(buf))


def work():
    os.sched_setaffinity(0, {0})
    rng = np.random.default_rng(1)
    a = rng.random(10_000_000)
    idx = rng.choice(10_000_000, 100_000, replace=False)
    v = rng.random(100_000)
    t = time.perf_counter()
    n = 0
    while time.perf_counter() - t < 2.0:
        a[idx] = v
        a[idx].sum()
        n += 1
    return n / (time.perf_counter() - t)


def alu():
    os.sched_setaffinity(0, {0})
    t = time.perf_counter()
    n = 0
    x = 0
    while time.perf_counter() - t < 2.0:
        for i in range(100000):
            x += i * i
        n += 1
    return n / (time.perf_counter() - t)


if __name__ == "__main__":
    for kind in ["idle", "sha", "alu", "mem", "idle", "sha", "alu", "mem"]:
        stop = mp.Event()
        p = None
        if kind != "idle":
            p = mp.Process(target=hog, args=(kind, stop))
            p.start()
            time.sleep(1.0)
        r1 = work()
        r2 = alu()
        stop.set()
        if p:
            p.join()
        print(kind, "scatter/s %.1f  alu/s %.1f" % (r1, r2), flush=True)

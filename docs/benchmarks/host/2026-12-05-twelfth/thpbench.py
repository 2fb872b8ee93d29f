"""Twelfth session diagnosis (2-core VM); output in vm_diag.txt."""

import mmap
import time
import numpy as np
import ctypes

N = 10_000_000
rng = np.random.default_rng(0)
idx = [rng.choice(N, 100_000, replace=False) for _ in range(10)]
vals = rng.random(100_000)
libc = ctypes.CDLL(None)
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def buf(huge):
    m = mmap.mmap(-1, N * 8 + (2 << 20), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    a = np.frombuffer(m, dtype=np.float64)
    if huge:
        libc.madvise(a.ctypes.data, a.nbytes, 14)  # MADV_HUGEPAGE
    a = a[:N]
    a[:] = 1.0
    return a


bufs = {h: buf(h) for h in (False, True)}


def ahp():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("AnonHugePages"):
            return line.split()[1]


print("AHP kB", ahp())
res = {False: [], True: []}
for r in range(8):
    for h in (False, True) if r % 2 == 0 else (True, False):
        a = bufs[h]
        t = time.perf_counter()
        for _ in range(5):
            for ix in idx:
                a[ix] = vals  # numpy fancy assignment (random scatter)
        res[h].append((time.perf_counter() - t) / 50)
for h in (False, True):
    print(
        "huge" if h else "4k  ",
        "best %.3f ms median %.3f ms per 100k scatter" % (1e3 * min(res[h]), 1e3 * np.median(res[h])),
    )

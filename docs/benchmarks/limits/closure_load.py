"""#18's figure "each kernel ratio with one competing busy process >= 0.7x its quiet value", for the full closure
build (1000x1000 grid, 10k sources, against scipy dijkstra): what any thread count can reach.

Quiet and beside one busy process (``while 1: pass``), alternating, the closure build at 1 thread and at 2
threads with the busy-machine fallback off, and scipy's dijkstra; best of N each. Two CPUs (on a larger machine
the process and its competitor are pinned to two, as ``mmsb bench --only load`` does). With one competitor,
fair scheduling gives two threads 4/3 of a CPU where they had 2, and one thread a whole CPU where two threads
were s times faster: whichever thread count the loaded run takes, loaded ÷ quiet is at most max(2/3, 1/s).
Run: python closure_load.py [N]."""
import os
import subprocess
import sys
import time

import numpy as np
from scipy.sparse import csgraph

from mmsb import _kernels
from mmsb.bench.closure import closure_build, grid

N = int(sys.argv[1]) if len(sys.argv) > 1 else 3
mask = os.sched_getaffinity(0)
if len(mask) > 2:
    os.sched_setaffinity(0, sorted(mask)[:2])
W = grid(1000)
src = np.sort(np.random.default_rng(12).permutation(1000 * 1000)[:10_000]).astype(np.int64)
build = closure_build(W, src)
_kernels.set_threads(2, adapt=False)


def dijkstra() -> np.ndarray:
    return csgraph.dijkstra(W, directed=True, indices=src, min_only=True)


want = dijkstra()
assert np.array_equal(build(1), want) and np.array_equal(build(2), want)


def best(f, n: int) -> float:
    b = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        b = min(b, time.perf_counter() - t0)
    return b


res: dict = {}
for _ in range(N):
    for loaded in (False, True):
        hog = subprocess.Popen([sys.executable, "-c", "while 1: pass"]) if loaded else None
        try:
            if hog is not None:
                time.sleep(1.0)
            for name, f in (("dijkstra", dijkstra), ("closure, 1 thread", lambda: build(1)),
                            ("closure, 2 threads", lambda: build(2))):
                key = (name, loaded)
                res[key] = min(res.get(key, float("inf")), best(f, 2))
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
print(f"2 CPUs{' (pinned, of ' + str(len(mask)) + ')' if len(mask) > 2 else ''}; best of {2 * N} each")
print(f"{'':22s} {'quiet':>9s} {'loaded':>9s}  loaded/quiet   ratio vs dijkstra quiet, loaded")
for name in ("dijkstra", "closure, 1 thread", "closure, 2 threads"):
    q, ld = res[(name, False)], res[(name, True)]
    rq = res[("dijkstra", False)] / q
    rl = res[("dijkstra", True)] / ld
    print(f"{name:22s} {q * 1e3:7.1f}ms {ld * 1e3:7.1f}ms  {q / ld:10.3f}    {rq:6.2f}x {rl:6.2f}x")
q2 = res[("closure, 2 threads", False)]
s = res[("closure, 1 thread", False)] / q2
dq, dl = res[("dijkstra", False)], res[("dijkstra", True)]
print(f"quiet 2-thread speedup s = {s:.2f}: ceiling max(2/3, 1/s) = {max(2 / 3, 1 / s):.3f}")
for name in ("closure, 1 thread", "closure, 2 threads"):
    print(f"figure as judged (kernel ratio loaded / quiet ratio at 2 threads), loaded run at {name[9:]}: "
          f"{(dl / res[(name, True)]) / (dq / q2):.3f}")

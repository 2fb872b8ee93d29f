"""Figures of issue #16.11 (not a test): reopen after N commits with the automatic checkpoint policy, against
numpy.load of the same state, and commit throughput with the policy on and off.

    python tests/reliability/bench_reopen.py [--size 1000000] [--frac 0.01] [--repeat 5] [--durability fsync]

Each reopen runs in a fresh process (the time is taken inside it, from before ``mmsb.open`` to the page read
back; interpreter start-up and imports excluded); numpy.load of the final state (a .npy file) is timed the same
way, alternating with the reopens; best of ``--repeat``. Results are checked equal first.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import mmsb  # noqa: E402

CHILD = r"""
import sys, time, hashlib
import numpy as np
sys.path.insert(0, sys.argv[1])
kind, path = sys.argv[2], sys.argv[3]
if kind == "npy":
    t0 = time.perf_counter(); a = np.load(path); t1 = time.perf_counter()
else:
    import mmsb
    t0 = time.perf_counter()
    with mmsb.open(path, "r") as b:
        a = b["x"].read()
    t1 = time.perf_counter()
print(t1 - t0, hashlib.sha256(a.tobytes()).hexdigest())
"""


def build(path, n_commits, size, frac, durability, auto):
    rng = np.random.default_rng(7)
    k = max(1, int(size * frac))
    t0 = time.perf_counter()
    with mmsb.open(path, "w", durability=durability, auto_checkpoint=None if auto else False) as buf:
        p = buf.create_page("x", size)
        buf.write(p, rng.random(size))
        t1 = time.perf_counter()
        for _ in range(n_commits):
            buf.write(p, rng.random(k), index=rng.choice(size, k, replace=False))
        t2 = time.perf_counter()
        state = buf["x"].read()
        ck = buf.stats()["store"]["auto_checkpoints"]
    return state, t2 - t1, ck, t1 - t0


def timed(kind, path):
    out = subprocess.run([sys.executable, "-c", CHILD, ROOT, kind, path], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), out[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--frac", type=float, default=0.01)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--durability", default="fsync")
    ap.add_argument("--commits", default="100,1000")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mmsb-bench-reopen-")
    res = {"size": a.size, "frac": a.frac, "durability": a.durability, "load": os.getloadavg()}
    try:
        stores = {}
        for n in map(int, a.commits.split(",")):
            path = os.path.join(tmp, f"s{n}")
            state, secs, ck, _ = build(path, n, a.size, a.frac, a.durability, True)
            npy = os.path.join(tmp, f"s{n}.npy")
            np.save(npy, state)
            stores[n] = (path, npy)
            res[f"commit_s_on_{n}"] = secs
            res[f"auto_checkpoints_{n}"] = ck
        best = {}
        for _ in range(a.repeat):                   # alternate: mmsb reopen, numpy.load, per history length
            for n, (path, npy) in stores.items():
                t, h1 = timed("mmsb", path)
                u, h2 = timed("npy", npy)
                assert h1 == h2, "reopened state differs from the saved array"
                best[("mmsb", n)] = min(best.get(("mmsb", n), 1e9), t)
                best[("npy", n)] = min(best.get(("npy", n), 1e9), u)
        for n in stores:
            res[f"reopen_s_{n}"] = best[("mmsb", n)]
            res[f"numpy_load_s_{n}"] = best[("npy", n)]
            res[f"reopen_over_numpy_{n}"] = best[("mmsb", n)] / best[("npy", n)]
        ns = sorted(stores)
        res["reopen_ratio_long_over_short"] = best[("mmsb", ns[-1])] / best[("mmsb", ns[0])]
        # commit throughput: policy on vs off, alternating, best of 3 (the longest history)
        n = ns[-1]
        on, off = [], []
        for r in range(3):
            for auto, acc in ((True, on), (False, off)):
                path = os.path.join(tmp, f"t{r}{int(auto)}")
                _, secs, _, _ = build(path, n, a.size, a.frac, a.durability, auto)
                acc.append(secs)
                shutil.rmtree(path)
        res["commit_s_policy_on"] = min(on)
        res["commit_s_policy_off"] = min(off)
        res["throughput_on_over_off"] = min(off) / min(on)
        res["load_after"] = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

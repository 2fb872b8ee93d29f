"""checkpoint: checkpoint write and reopen of many pages against numpy.save / numpy.load of the same arrays."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Iterator

import numpy as np

import mmsb
from mmsb.bench._common import Row, scratch_dir
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
import mmsb.codecs, mmsb.durable, mmsb.verification   # what `import mmsb` loads lazily, loaded before the clock
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

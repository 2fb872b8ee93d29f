"""Twelfth session diagnosis (2-core VM); output in vm_diag.txt."""

import os
import shutil
import tempfile
import time
import numpy as np
import mmsb
from mmsb.bench.checkpoint import _Workload

w = _Workload(10_000_000)
d = tempfile.mkdtemp(dir="/tmp")


def run(auto, tag):
    path = os.path.join(d, tag)
    lat = []
    bgs = []
    with mmsb.open(path, mode="w", durability="flush", auto_checkpoint=auto) as buf:
        p = buf.create_page("x", w.size)
        buf.write(p, w.init)
        st = buf._store
        for i in range(1000):
            idx, vals = w.delta(i)
            t = time.perf_counter()
            buf.write(p, vals, index=idx)
            lat.append(time.perf_counter() - t)
            bgs.append(st._bg is not None and st._bg.is_alive())
    shutil.rmtree(path)
    return np.array(lat), np.array(bgs)


for r in range(3):
    for auto in (True, False) if r % 2 == 0 else (False, True):
        lat, bg = run(auto, f"{r}{auto}")
        if auto:
            # commit i started a checkpoint if bg[i] and not bg[i-1]
            start = bg & ~np.r_[False, bg[:-1]]
            print(
                "on  total %.3f  start n=%d mean %.1fms  in-bg n=%d mean %.2fms  idle n=%d mean %.2fms"
                % (
                    lat.sum(),
                    start.sum(),
                    1e3 * lat[start].mean(),
                    (bg & ~start).sum(),
                    1e3 * lat[bg & ~start].mean(),
                    (~bg).sum(),
                    1e3 * lat[~bg].mean(),
                ),
                flush=True,
            )
        else:
            print(
                "off total %.3f mean %.2fms median %.2f" % (lat.sum(), 1e3 * lat.mean(), 1e3 * np.median(lat)),
                flush=True,
            )

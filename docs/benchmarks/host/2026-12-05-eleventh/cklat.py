"""The commit that starts an automatic checkpoint: 1000 commits of 1 % changes to a 76 MiB page, durability
"flush", policy on then off, ``argv[1]`` times (default 2). Prints each commit loop's total, the mean latency of the
commits that started a checkpoint (their copy of the page is taken under the buffer lock) and of the others."""
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import mmsb
from mmsb.bench.checkpoint import _Workload

w = _Workload(10_000_000)
d = tempfile.mkdtemp(dir=os.environ.get("CKDIR", "/tmp"))
for rep in range(int(sys.argv[1]) if len(sys.argv) > 1 else 2):
    for auto in (True, False):
        path = os.path.join(d, f"x{rep}{int(auto)}")
        lat, starts, seen = [], [], None
        with mmsb.open(path, mode="w", durability="flush", auto_checkpoint=auto) as buf:
            page = buf.create_page("x", w.size)
            buf.write(page, w.init)
            for i in range(1000):
                idx, vals = w.delta(i)
                t0 = time.perf_counter()
                buf.write(page, vals, index=idx)
                lat.append(time.perf_counter() - t0)
                bg = buf._store._bg
                if bg is not None and bg is not seen:
                    seen = bg
                    starts.append(i)
        lat = np.array(lat) * 1e3
        other = np.ones(lat.size, bool)
        other[starts] = False
        print(f"policy {'on ' if auto else 'off'}: loop {lat.sum():.0f} ms, {len(starts)} checkpoints, starting "
              f"commits {lat[starts].mean() if starts else 0:.1f} ms, others {lat[other].mean():.2f} ms "
              f"(median {np.median(lat[other]):.2f}); load {os.getloadavg()[0]:.1f}", flush=True)
        shutil.rmtree(path)
shutil.rmtree(d)

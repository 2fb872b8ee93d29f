"""Which part of an automatic checkpoint slows the commits beside it: 1000 commits of 1 % changes to a 76 MiB
page, durability "flush", policy on and off alternating 3 times, with one part of the checkpoint switched off by
patching (a diagnosis only: the stores it writes are not valid): ``base`` (nothing off), ``nosha`` (no SHA-256 of
the chunks), ``nologsync`` (no log flush before publication), ``nowrite`` (no checkpoint file: the copy under the
lock and the log flush remain). Prints the commit loops' times and off ÷ on."""
import hashlib
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import mmsb
import mmsb.container as container
import mmsb.log.durable as durable
import mmsb.store as store
from mmsb.bench.checkpoint import _Workload


class _NoDigest:
    def update(self, data) -> None:
        pass

    def hexdigest(self) -> str:
        return "0" * 64


class _NoChunkSha:
    """hashlib for mmsb.container: sha256() with no data (a chunk's running digest) hashes nothing."""

    @staticmethod
    def sha256(*data):
        return hashlib.sha256(*data) if data else _NoDigest()


mode = sys.argv[1] if len(sys.argv) > 1 else "base"
if mode == "nosha":
    container.hashlib = _NoChunkSha
elif mode == "nologsync":
    durable.DurableLog.flush = lambda self, fsync=True, paced=0: None
elif mode == "nowrite":
    store.Store._publish = lambda self, *args, **kwargs: None
w = _Workload(10_000_000)
d = tempfile.mkdtemp(dir=os.environ.get("CKDIR", "/tmp"))
res: dict = {True: [], False: []}
for rep in range(3):
    for auto in ((True, False) if rep % 2 == 0 else (False, True)):
        path = os.path.join(d, f"x{rep}{int(auto)}")
        with mmsb.open(path, mode="w", durability="flush", auto_checkpoint=auto) as buf:
            page = buf.create_page("x", w.size)
            buf.write(page, w.init)
            t0 = time.perf_counter()
            for i in range(1000):
                idx, vals = w.delta(i)
                buf.write(page, vals, index=idx)
            res[auto].append(time.perf_counter() - t0)
            buf._store.wait_background()
        shutil.rmtree(path)
on, off = res[True], res[False]
print(mode, "on", ["%.2f" % v for v in on], "off", ["%.2f" % v for v in off],
      "off/on best %.3f median %.3f" % (min(off) / min(on), np.median(off) / np.median(on)), flush=True)
shutil.rmtree(d)

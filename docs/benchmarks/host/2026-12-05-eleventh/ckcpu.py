"""Where the CPU goes in #14's automatic-checkpoint row: 1000 commits of 1 % changes to a 76 MiB page, durability
"flush", policy on and off alternating ``argv[1]`` times (default 2). Prints the commit loop's wall time, the
process's CPU time over it (user + system, all threads: the cores it kept busy on average) and, with the policy
on, the CPU time of the background writer threads (their own clocks)."""
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

import mmsb
import mmsb.store as store_mod
from mmsb.bench.checkpoint import _Workload

writer_cpu: list = []
_run_auto = store_mod.Store._run_auto


def _timed_run_auto(self, *args, **kwargs):
    t0 = time.thread_time()
    try:
        return _run_auto(self, *args, **kwargs)
    finally:
        writer_cpu.append(time.thread_time() - t0)


store_mod.Store._run_auto = _timed_run_auto
w = _Workload(10_000_000)
d = tempfile.mkdtemp(dir=os.environ.get("CKDIR", "/tmp"))
for rep in range(int(sys.argv[1]) if len(sys.argv) > 1 else 2):
    for auto in ((True, False) if rep % 2 == 0 else (False, True)):
        writer_cpu.clear()
        path = os.path.join(d, f"x{rep}{int(auto)}")
        with mmsb.open(path, mode="w", durability="flush", auto_checkpoint=auto) as buf:
            page = buf.create_page("x", w.size)
            buf.write(page, w.init)
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            for i in range(1000):
                idx, vals = w.delta(i)
                buf.write(page, vals, index=idx)
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            buf._store.wait_background()
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        wc = np.array(writer_cpu) * 1e3
        print(f"policy {'on ' if auto else 'off'}: loop {wall:.2f} s, process CPU {cpu:.2f} s "
              f"({cpu / wall:.2f} cores), {wc.size} checkpoints, writer CPU {wc.sum() / 1e3:.2f} s "
              f"({np.mean(wc) if wc.size else 0:.0f} ms each); load {os.getloadavg()[0]:.1f}", flush=True)
        shutil.rmtree(path)
shutil.rmtree(d)

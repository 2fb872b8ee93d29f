"""#14's automatic-checkpoint row alone: 1000 commits of 1 % changes to a 76 MiB page, durability "flush", the
policy on and off alternating N times (argv[1], default 4); prints each run and the best and median ratio off/on.
Stores go under $CKDIR (default /tmp)."""
import os
import shutil
import sys
import tempfile

import numpy as np

from mmsb.bench.checkpoint import _history, _Workload

w = _Workload(10_000_000)
d = tempfile.mkdtemp(dir=os.environ.get("CKDIR", "/tmp"))
res = {True: [], False: []}
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 4):
    for auto in ((True, False) if r % 2 == 0 else (False, True)):
        p = os.path.join(d, f"t{r}{int(auto)}")
        x = _history(p, w, 1000, auto=auto)
        res[auto].append((x["loop"], x["with_close"], x["store"]["auto_checkpoints"]))
        shutil.rmtree(p)
        print(auto, "loop %.3f close %.3f ck %d" % res[auto][-1], os.getloadavg()[0], flush=True)
on = [a[1] for a in res[True]]
off = [a[1] for a in res[False]]
print("best ratio %.3f  median ratio %.3f" % (min(off) / min(on), np.median(off) / np.median(on)))
shutil.rmtree(d)

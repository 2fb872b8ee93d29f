"""Twelfth session diagnosis (2-core VM); output in vm_diag.txt."""

import os
import shutil
import sys
import tempfile
import numpy as np
import mmsb.store as S
from mmsb.bench.checkpoint import _history, _Workload

orig = S.Store._run_auto


def nofs(self, log, ep, pages, rules, extra, fsync, lent):
    return orig(self, log, ep, pages, rules, extra, False, lent)


w = _Workload(10_000_000)
d = tempfile.mkdtemp(dir="/tmp")
res = {k: [] for k in ("on", "nofs", "off")}
for r in range(int(sys.argv[1])):
    order = ("on", "nofs", "off") if r % 2 == 0 else ("off", "nofs", "on")
    for k in order:
        S.Store._run_auto = nofs if k == "nofs" else orig
        p = os.path.join(d, f"t{r}{k}")
        x = _history(p, w, 1000, auto=(k != "off"))
        res[k].append((x["loop"], x["with_close"]))
        shutil.rmtree(p)
        print(
            k,
            "loop %.3f close %.3f" % res[k][-1],
            "ck",
            x["store"]["auto_checkpoints"],
            os.getloadavg()[0],
            flush=True,
        )
for k in ("on", "nofs"):
    for i, nm in ((0, "loop"), (1, "close")):
        a = [t[i] for t in res[k]]
        o = [t[i] for t in res["off"]]
        print(k, nm, "best %.3f median %.3f" % (min(o) / min(a), np.median(o) / np.median(a)))

"""#14's automatic-checkpoint row against the policy's factor: 1000 commits of 1 % changes to a 76 MiB page,
durability "flush", each factor (argv[2:]; the default policy is 1) and the policy off, alternating argv[1] times
(the order reversed every other round). Prints each run, then per factor the best and median ratio off ÷ on of the
commit loop and of the loop plus close()."""
import os
import shutil
import sys
import tempfile

import numpy as np

from mmsb.bench.checkpoint import _history, _Workload

w = _Workload(10_000_000)
d = tempfile.mkdtemp(dir=os.environ.get("CKDIR", "/tmp"))
keys = [float(a) for a in sys.argv[2:]] + [False]
res: dict = {k: [] for k in keys}
for r in range(int(sys.argv[1])):
    for k in (keys if r % 2 == 0 else keys[::-1]):
        p = os.path.join(d, f"t{r}{k}")
        x = _history(p, w, 1000, auto=k)
        res[k].append((x["loop"], x["with_close"]))
        shutil.rmtree(p)
        print("off" if k is False else f"factor {k:g}", "loop %.3f close %.3f" % res[k][-1],
              "checkpoints", x["store"]["auto_checkpoints"], "load %.2f" % os.getloadavg()[0], flush=True)
for k in keys[:-1]:
    for i, what in ((0, "loop"), (1, "loop+close")):
        on = [t[i] for t in res[k]]
        off = [t[i] for t in res[False]]
        print(f"factor {k:g} {what}: best ratio %.3f  median ratio %.3f" % (min(off) / min(on),
                                                                            np.median(off) / np.median(on)))
shutil.rmtree(d)

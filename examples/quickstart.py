"""Pages, semiring deltas, epochs and time travel in memory."""
import numpy as np

import mmsb

buf = mmsb.open(None)
p = buf.create_page("best_price", 5, semiring="min_plus")       # ⊕ = min: accumulate keeps the best offer
e1 = buf.write(p, [7.0, 3.0, 9.0], index=[1, 1, 4], accumulate=True)
e2 = buf.write(p, [2.0], index=[1], accumulate=True)
assert p.read()[1] == 2.0 and buf.at(e1)["best_price"].read()[1] == 3.0
for d in buf.log.query(page="best_price"):
    print(d)
print("state:", p.read(), "epoch:", buf.epoch)

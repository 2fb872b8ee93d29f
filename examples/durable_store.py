"""A durable store: transactions, checkpoint, reopen, verify."""
import os
import sys
import tempfile

import numpy as np

import mmsb

path = os.path.join(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(), "store")
with mmsb.open(path, mode="w") as buf:
    counts = buf.create_page("counts", 10, dtype="int64")
    total = buf.create_page("total", 1, dtype="int64")
    buf.register_function("sum", lambda x: np.array([x.sum()]))
    buf.derive(total, [counts], "sum")
    for i in range(5):
        with buf.transaction() as tx:
            tx.write(counts, [1], index=[i], accumulate=True)
    buf.checkpoint()
with mmsb.open(path, mode="r", functions={"sum": lambda x: np.array([x.sum()])}) as buf:
    assert buf["total"].read()[0] == 5
    print(buf, buf.log.stats()["transactions"], "transactions")
print("verify:", mmsb.verify(path).ok)

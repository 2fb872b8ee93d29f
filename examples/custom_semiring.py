"""Runtime semirings: the laws are checked on sample values before anything is registered.

Plugins register theirs through the "mmsb" entry-point group (see plugins/mmsb-logsemiring).
"""
import numpy as np

import mmsb
from mmsb.errors import SemiringError

# (max, +) on int64 wraps around at the dtype's limits, so zero does not annihilate: refused.
try:
    mmsb.semirings.register(mmsb.Semiring("int_max_plus", add=np.maximum, mul=np.add, zero=-np.inf, one=0,
                                          idempotent=True, dtypes=["int64"]))
except SemiringError as exc:
    print("refused:", str(exc)[:100], "...")

# Viterbi (max, ×) over probabilities: a semiring on [0, 1].
viterbi = mmsb.Semiring("viterbi", add=np.maximum, mul=np.multiply, zero=0.0, one=1.0, idempotent=True,
                        dtypes=["float32", "float64"], samples=[0.0, 0.25, 0.5, 1.0])
mmsb.semirings.register(viterbi)
buf = mmsb.open(None)
p = buf.create_page("best", 3, semiring="viterbi")
buf.write(p, [0.5, 0.9, 0.2], index=[0, 0, 2], accumulate=True)
print(p.read())                                 # [0.9 0.  0.2]
mmsb.semirings.unregister("viterbi")

"""Operation codes shared by the compiled kernels (mmsb/_ext/_types.pxd) and their numpy twins (mmsb/_ref)."""

OP_ASSIGN = -1   # overwrite, last writer wins
OP_PLUS = 0
OP_TIMES = 1
OP_MIN = 2
OP_MAX = 3

NAMES = {OP_ASSIGN: "assign", OP_PLUS: "plus", OP_TIMES: "times", OP_MIN: "min", OP_MAX: "max"}

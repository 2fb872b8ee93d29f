"""Write the golden matrix store tests/golden/matrix_v1/ and its expected state (expected_matrix_v1.json).

The store holds matrix pages (the "matrix_created" schema record, in the log and in a checkpoint's rules list) and
matrix deltas (sparse deltas over flat positions row * ncols + col: assign, ⊕-zero removals, accumulate, a scipy
sparse delta, in a batch and in a transaction), with a closure and links over them.

Run once with the format version it captures (``python tests/golden/make_golden_matrix.py``); the output is
committed and tests/test_matrix_golden.py checks that later versions still read it exactly. Never regenerate it to
make a failing test pass: a format change needs a new matrix_vN next to this one.
"""
import json
import os
import shutil
import sys

import numpy as np
import scipy.sparse as sp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import mmsb  # noqa: E402

INF = np.inf
NAME = "matrix_v1"


def _entries(M):
    """(rows, cols, vals) of a matrix page, in row-major order."""
    c = M.read().tocoo()
    order = np.lexsort((c.col, c.row))
    return c.row[order].astype(np.int64), c.col[order].astype(np.int64), c.data[order]


def main(out=HERE):
    root = os.path.join(out, NAME)
    if os.path.exists(root):
        shutil.rmtree(root)
    expected = {}
    epochs = []

    def save(buf):
        epochs.append(buf.epoch)
        state = expected[str(buf.epoch)] = {}
        for name in buf:
            p = buf[name]
            if p.kind == "matrix":
                r, c, v = _entries(p)
                state[name] = {"rows": r.tolist(), "cols": c.tolist(), "vals": v.tolist(), "dtype": v.dtype.str}
            else:
                a = p.read()
                state[name] = {"values": a.tolist(), "dtype": a.dtype.str}

    with mmsb.open(root, "x", durability="fsync", segment_bytes=4096) as buf:
        # a min_plus closure over W (weights of edges j -> i at W[i, j]) and a min_plus link over the same W
        s = buf.create_page("s", 6, semiring="min_plus")
        d = buf.create_page("d", 6, semiring="min_plus")
        lk = buf.create_page("lk", 6, semiring="min_plus")
        W0 = sp.csr_array(([1.0, 2.0, 0.5, 4.0, 3.0], ([1, 2, 3, 3, 5], [0, 1, 2, 0, 4])), shape=(6, 6))
        W = buf.create_matrix("W", (6, 6), semiring="min_plus", data=W0, metadata={"unit": "minutes"})
        buf.closure(d, s, W)
        buf.link(lk, s, "W")
        # a plus_times link over a rectangular int32 matrix page, and a bool or_and closure
        x = buf.create_page("x", 5, dtype="int32")
        y = buf.create_page("y", 3, dtype="int32")
        P = buf.create_matrix("P", (3, 5), dtype="int32",
                              data=np.array([[1, 0, 2, 0, 0], [0, 3, 0, 0, -1], [0, 0, 0, 4, 0]], dtype=np.int32))
        buf.link(y, x, P)
        b = buf.create_page("b", 4, dtype="bool", semiring="or_and")
        rb = buf.create_page("rb", 4, dtype="bool", semiring="or_and")
        R = buf.create_matrix("R", (4, 4), dtype="bool", semiring="or_and",
                              data=sp.csr_array(([True, True], ([1, 2], [0, 1])), shape=(4, 4)))
        buf.closure(rb, b, R)
        save(buf)
        buf.write(s, [0.0], index=[0], source="golden")
        save(buf)
        buf.write(x, np.array([1, 2, 3, 4, 5], dtype=np.int32))
        save(buf)
        buf.write(b, [True], index=[0])
        save(buf)
        buf.write(W, [INF, 0.25], index=([3, 4], [2, 3]), source="golden")     # remove 2 -> 3, add 3 -> 4
        save(buf)
        buf.write(W, [0.5, 7.0, 7.0], index=([1, 5, 5], [0, 3, 3]), accumulate=True)   # min: 1 -> 0.5; new 3 -> 5
        save(buf)
        buf.checkpoint()
        ckpt = buf.epoch
        buf.write(P, sp.csr_array((np.array([5, -3], dtype=np.int32), ([0, 1], [1, 1])), shape=(3, 5)),
                  accumulate=True)                                             # 0 + 5 inserted; 3 - 3 removed
        save(buf)
        with buf.batch():
            buf.write(W, [2.0], index=([1], [0]))                              # increase 0.5 -> 2
            buf.write(R, [False, True], index=([1, 3], [0, 2]))                # remove 0 -> 1, add 2 -> 3
            buf.write(b, [True], index=[1], accumulate=True)
        save(buf)
        with buf.transaction() as tx:
            tx.write(W, [INF], index=([1], [0]))                               # remove 0 -> 1
            tx.write(s, [1.0], index=[2])
            tx.write(P, np.array([9], dtype=np.int32), index=([2], [0]))
        save(buf)
        final = buf.epoch
    lock = os.path.join(root, "LOCK")
    if os.path.exists(lock):
        os.remove(lock)
    meta = {"states": expected, "format": 1, "mmsb_version": mmsb.__version__, "final_epoch": final, "checkpoint": ckpt,
            "epochs": sorted(set(epochs)),
            "matrices": {"W": {"shape": [6, 6], "dtype": "float64", "semiring": "min_plus",
                               "metadata": {"unit": "minutes"}},
                         "P": {"shape": [3, 5], "dtype": "int32", "semiring": "plus_times", "metadata": None},
                         "R": {"shape": [4, 4], "dtype": "bool", "semiring": "or_and", "metadata": None}},
            "rules": {"d": ["s", "W"], "lk": ["s", "W"], "y": ["x", "P"], "rb": ["b", "R"]}}
    with open(os.path.join(out, f"expected_{NAME}.json"), "w") as fh:
        json.dump(meta, fh, indent=None, sort_keys=True)   # ±inf as Infinity (Python's json reads it back)
        fh.write("\n")
    size = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(root) for n in ns)
    print(f"golden matrix store at epoch {final} (checkpoint {ckpt}), {size} bytes under {root}")


if __name__ == "__main__":
    main()

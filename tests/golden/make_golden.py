"""Write the golden store tests/golden/store_v1/ and the expected state (expected.npz, expected.json).

Run once with the format version it captures (``python tests/golden/make_golden.py``); the output is committed
and tests/test_golden.py checks that later versions still read it exactly. Never regenerate it to make a
failing test pass: a format change needs a new store_vN next to this one.
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


def golden_affine(x):
    """The derive function, registered under the name "golden_affine"."""
    return 2 * x + 1


def main(out=HERE, name="store_v1", write_expected=True):
    """Write the store ``name`` under ``out`` (store_v1: STORE version 1, no MANIFEST, written by mmsb before the
    MANIFEST existed; store_v2: the same history written with a MANIFEST) and, with ``write_expected``, the expected
    state (the history is seeded, so every version of the store holds the same states)."""
    root = os.path.join(out, name)
    if os.path.exists(root):
        shutil.rmtree(root)
    expected = {}
    epochs = []

    def save(buf):
        epochs.append(buf.epoch)
        for name in buf:
            expected[f"{buf.epoch}/{name}"] = buf[name].read()

    with mmsb.open(root, "x", durability="fsync", segment_bytes=4096) as buf:
        buf.register_function("golden_affine", golden_affine)
        f = buf.create_page("f", 16, dtype="float64", semiring="plus_times", metadata={"unit": "m"})
        i = buf.create_page("i", 6, dtype="int32", semiring="min_plus")
        b = buf.create_page("b", 16, dtype="bool", semiring="or_and")
        m = buf.create_page("m", (4, 4), dtype="float32", semiring="max_plus")
        u = buf.create_page("u", 8, dtype="uint8", semiring="max_min", fill=3)
        lk = buf.create_page("lk", 5, dtype="float64", semiring="plus_times")
        cl = buf.create_page("cl", 6, dtype="int32", semiring="min_plus")
        dv = buf.create_page("dv", 16, dtype="float64", semiring="plus_times")
        save(buf)
        A = sp.csr_matrix(np.array([[(r * 7 + c * 3) % 5 if (r + c) % 3 == 0 else 0 for c in range(16)]
                                    for r in range(5)], dtype=np.float64))
        buf.link(lk, f, A)
        W = np.zeros((6, 6), dtype=np.int32)          # edges u -> u+1 of weight u+1 and 0 -> 3 of weight 10
        for k in range(5):
            W[k, k + 1] = k + 1
        W[0, 3] = 10
        buf.closure(cl, i, sp.csr_matrix(W.T))
        buf.derive(dv, [f], "golden_affine")
        save(buf)
        rng = np.random.default_rng(2024)
        for k in range(12):
            buf.write(f, (rng.integers(-8, 8, 4) / 4), index=rng.integers(0, 16, 4), accumulate=True,
                      source="golden")
            if k % 3 == 0:
                buf.write(i, rng.integers(0, 50, 2).astype(np.int32), index=rng.integers(0, 6, 2))
            if k % 4 == 1:
                buf.write(b, rng.random(16) < 0.3, mask=rng.random(16) < 0.5, accumulate=True)
                buf.write(m, rng.integers(-5, 5, (4, 4)).astype(np.float32), accumulate=True)
            if k % 5 == 2:
                with buf.transaction() as tx:
                    tx.write(u, rng.integers(0, 255, 3).astype(np.uint8), index=[1, 4, 7])
                    tx.write(f, 1.0, index=[0], accumulate=True)
            save(buf)
            if k == 5:
                buf.checkpoint()
                ckpt = buf.epoch
        final = buf.epoch
    lock = os.path.join(root, "LOCK")
    if os.path.exists(lock):
        os.remove(lock)
    if not write_expected:
        print(f"golden store {name} at epoch {final} (checkpoint {ckpt})")
        return
    np.savez_compressed(os.path.join(out, "expected.npz"), **expected)
    meta = {"format": 1, "mmsb_version": mmsb.__version__, "final_epoch": final, "checkpoint": ckpt,
            "epochs": sorted(set(epochs)), "function": "golden_affine",
            "pages": {n: {"dtype": str(expected[f"{final}/{n}"].dtype), "shape": list(expected[f"{final}/{n}"].shape)}
                      for n in ["f", "i", "b", "m", "u", "lk", "cl", "dv"]},
            "semirings": {"f": "plus_times", "i": "min_plus", "b": "or_and", "m": "max_plus", "u": "max_min",
                          "lk": "plus_times", "cl": "min_plus", "dv": "plus_times"}}
    with open(os.path.join(out, "expected.json"), "w") as fh:
        json.dump(meta, fh, indent=1, sort_keys=True)
    lock = os.path.join(root, "LOCK")
    if os.path.exists(lock):
        os.remove(lock)
    size = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(out) for n in ns)
    print(f"golden store at epoch {final} (checkpoint {ckpt}), {size} bytes under {out}")


if __name__ == "__main__":
    if len(sys.argv) > 1:                 # e.g. "store_v2": only that store, against the same expected state
        main(name=sys.argv[1], write_expected=False)
    else:
        main()

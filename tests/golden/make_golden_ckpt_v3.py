"""Write the golden checkpoints of container format version 3 (tests/golden/ckpt_v3/) and their expectations.

Version 3 adds borrowed chunks: an incremental checkpoint lists, for a page unchanged since an older checkpoint,
that page's chunks with ``ref`` = the epoch of the checkpoint file that holds them (and ``refs`` names those files
with the SHA-256 of their manifests). This writes a full checkpoint at epoch 3 (version 2) and one at epoch 8
(version 3) that borrows two of its pages (one RAW, one compressed) and writes the third anew (kept small: the
golden files together stay under 200 kB). Run once
(``python tests/golden/make_golden_ckpt_v3.py``); the output is committed and
tests/test_checkpoint_incremental.py checks that later versions still read it exactly. Never regenerate it to
make a failing test pass.
"""
import hashlib
import json
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from mmsb import checkpoint as C  # noqa: E402
from mmsb.delta import SchemaOp  # noqa: E402


def arrays():
    rng = np.random.default_rng(20261204)
    return {
        "small": np.arange(7, dtype=np.int16),                   # written anew by the incremental checkpoint
        "rand": rng.random(700),                                  # 5,600 bytes RAW (incompressible): borrowed
        "smooth": np.round(np.sin(np.linspace(0, 20, 4000)) * 64) / 64,    # BLOSC2: borrowed
    }


def meta(k, v, epoch):
    return {"name": k, "shape": list(v.shape), "dtype": v.dtype.str, "semiring": "plus_times", "epoch": epoch}


def describe(arrs):
    return {k: {"dtype": v.dtype.str, "shape": list(v.shape), "sha256": hashlib.sha256(v.tobytes()).hexdigest()}
            for k, v in arrs.items()}


def main(out=HERE):
    root = os.path.join(out, "ckpt_v3")
    if os.path.exists(root):
        shutil.rmtree(root)
    a = arrays()
    rules = [SchemaOp("rule_added", {"kind": "link", "dst": "rand", "src": "small"},
                      {"data": np.array([1.0, 2.0, 3.0])})]
    C.write_checkpoint(root, 3, [(meta(k, v, 1), v) for k, v in a.items()], rules, extra={"golden": 3},
                       fsync=False, compress=True)
    lay = C.load_checkpoint(root, epoch=3).layout
    b = dict(a, small=a["small"] * 3)
    pages = [(meta("small", b["small"], 7), b["small"]), (meta("rand", a["rand"], 1), lay["rand"]),
             (meta("smooth", a["smooth"], 1), lay["smooth"])]
    C.write_checkpoint(root, 8, pages, rules, extra={"golden": 3}, fsync=False, compress=True)
    expected = {"checkpoints": {}}
    for e, arrs in ((3, a), (8, b)):
        summ = C.verify_checkpoint(C.checkpoint_path(root, e))
        snap = C.load_checkpoint(root, epoch=e)
        expected["checkpoints"][str(e)] = {
            "format": summ["format"], "refs": summ["refs"], "arrays": describe(arrs),
            "layout": {n: sorted({c["ref"] for c in r.chunks}) for n, r in snap.layout.items()}}
    with open(os.path.join(out, "expected_ckpt_v3.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
    print(json.dumps(expected, indent=1))


if __name__ == "__main__":
    main()

"""Write the golden checkpoint container of format version 2 (tests/golden/ckpt_v2/) and its expectations.

Version 2 differs from version 1 only in layout: a RAW chunk of 64 KiB or more starts at a multiple of 4096 and
the bytes skipped before it are zero. This file holds one such chunk after an unaligned start, a small RAW page
and a compressed one. Run once (``python tests/golden/make_golden_ckpt_v2.py``); the output is committed and
tests/test_golden.py checks that later versions still read it exactly. Never regenerate it to make a failing test
pass.
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
    rng = np.random.default_rng(20261128)
    return {
        "small": np.arange(7, dtype=np.int16),                   # 14 bytes: the next chunk starts unaligned
        "aligned": rng.random(9000),                              # 72,000 bytes RAW (incompressible): aligned
        "smooth": np.round(np.sin(np.linspace(0, 20, 20000)) * 64) / 64,   # compressible: BLOSC2
        "rule_data": np.array([1.0, 2.0, 3.0]),
    }


def main(out=HERE):
    root = os.path.join(out, "ckpt_v2")
    if os.path.exists(root):
        shutil.rmtree(root)
    a = arrays()
    pages = [({"name": k, "shape": list(v.shape), "dtype": v.dtype.str}, v) for k, v in a.items() if k != "rule_data"]
    rules = [SchemaOp("rule_added", {"kind": "link", "dst": "aligned", "src": "small"},
                      {"data": a["rule_data"]})]
    path = C.write_checkpoint(root, 5, pages, rules, extra={"golden": 2}, fsync=False, compress=True)
    man = C.read_checkpoint_file(path)[0]
    expected = {
        "file": os.path.relpath(path, out),
        "format": man["format"],
        "arrays": {k: {"dtype": v.dtype.str, "shape": list(v.shape), "sha256": hashlib.sha256(v.tobytes()).hexdigest()}
                   for k, v in a.items()},
        "offsets": {p["meta"]["name"]: [c["offset"] for c in p["chunks"]] for p in man["pages"]},
        "codecs": {p["meta"]["name"]: [c["codec"] for c in p["chunks"]] for p in man["pages"]},
    }
    with open(os.path.join(out, "expected_ckpt_v2.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
    print(json.dumps(expected, indent=1))


if __name__ == "__main__":
    main()

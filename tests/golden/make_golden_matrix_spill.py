"""Write the golden matrix spill file tests/golden/matrix_spill_v1.spill and its expected content
(expected_matrix_spill_v1.json).

The file is what ``memory_limit`` writes when it spills a matrix page (format 1, docs/FORMAT.md "Matrix spill
files"): a 4x5 min_plus matrix whose removed entries left free slots and whose rows got slack, its transpose (built
by a closure's push) and a max_min view (kept for a link in another semiring).

Run once with the format version it captures (``python tests/golden/make_golden_matrix_spill.py``); the output is
committed and tests/test_matrix_spill.py checks that later versions still read it exactly and that the writer
still writes its layout. Never regenerate it to make a failing test pass: a format change needs a new
matrix_spill_vN next to this one.
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import mmsb  # noqa: E402
from mmsb import spill  # noqa: E402

NAME = "matrix_spill_v1"


def write(path):
    """Build the matrix and write its spill file to ``path``; returns ``path``."""
    dense = np.full((4, 5), np.inf)
    dense[0, 1], dense[0, 3], dense[1, 2], dense[2, 0], dense[2, 4], dense[3, 3] = 2.0, 5.0, 1.5, 4.0, 0.25, 3.0
    with mmsb.open(None) as buf:
        M = buf.create_matrix("roads", (4, 5), "float64", "min_plus", data=dense)
        buf.write(M, [np.inf, 7.0, 6.0], index=([0, 1, 3], [3, 4, 0]))    # a removal, two insertions (slack)
        M.csr.T                                                          # noqa: B018 - the transpose
        M.view(mmsb.semirings.get("max_min"), np.dtype("float64"))      # a view in another semiring
        return spill.write_matrix_spill(path, M, list(spill.matrix_parts(M)))


def main(out=HERE):
    path = write(os.path.join(out, f"{NAME}.spill"))
    pl, arrays = spill.read_matrix_spill(path)
    expected = {"payload": {k: pl[k] for k in ("matrix", "shape", "dtype", "semiring")},
                "parts": {c["part"]: {name: {"dtype": a.dtype.str, "values": a.tolist()}
                                      for name, a in zip(("indptr", "indices", "data"), arrays[c["part"]])}
                          for c in pl["csrs"]}}
    with open(os.path.join(out, f"expected_{NAME}.json"), "w") as fh:
        json.dump(expected, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main()

"""Crash-loop child: runs seeded transactions on a store and reports each acknowledged epoch on stdout.

    python crash_child.py PATH SEED TRIAL DURABILITY

(or ``run(...)`` in a forked child, which skips the interpreter start-up).

Lines: ``S <epoch>`` once the store is open (recovered), ``A <epoch>`` after each commit returned,
``C <epoch>`` after a checkpoint, ``K <horizon>`` after a compaction. The parent SIGKILLs it at a random moment.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import mmsb  # noqa: E402
import _workload as W  # noqa: E402


def run(path: str, seed: int, trial: int, durability: str, out) -> None:
    """Commit transactions forever (until killed), writing one line per acknowledged event to ``out``."""
    buf = mmsb.open(path, "a", durability=durability, functions=W.FUNCS, segment_bytes=2048)
    out.write(f"S {buf.epoch}\n")
    out.flush()
    rng = np.random.default_rng([seed, trial, 999_999])
    k = 0
    while True:
        e = W.write_ops(buf, W.gen_txn(seed, trial, k))
        out.write(f"A {e}\n")
        out.flush()
        k += 1
        r = rng.random()
        if r < 0.08:
            out.write(f"C {buf.checkpoint()}\n")
            out.flush()
        elif r < 0.10:
            out.write(f"K {buf.compact(keep=int(rng.integers(0, 20)))}\n")
            out.flush()


def main() -> None:
    run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.stdout)


if __name__ == "__main__":
    main()

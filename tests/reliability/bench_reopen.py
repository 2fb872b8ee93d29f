"""Figures of issue #16.11 (not a test): reopen after N commits against numpy.load of the same state, commit
throughput with the automatic checkpoint policy on and off, and ``at(e)`` against replaying raw deltas from LMDB.

    python tests/reliability/bench_reopen.py [--size 10000000] [--commits 1000] [--repeat 5]

The rows are those of ``mmsb bench --only checkpoint`` (``mmsb.bench.checkpoint.history_rows``: each reopen in a
fresh process with imports before the clock, alternating with numpy.load, best of ``--repeat``; results checked
equal first); this runs them alone, at any size.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from mmsb.bench.checkpoint import history_rows  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=10_000_000)
    ap.add_argument("--commits", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    out = {"load_before": os.getloadavg(), "rows": []}
    for r in history_rows(size=a.size, commits=a.commits, repeat=a.repeat):
        out["rows"].append({"name": r.name, "mmsb": r.mmsb, "baseline": r.baseline_name, "baseline_s": r.baseline,
                            "ratio": r.ratio, "target": r.target, "met": r.met, "note": r.note})
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

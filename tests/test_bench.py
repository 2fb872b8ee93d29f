"""Smoke test of ``mmsb bench``: it runs, prints valid JSON rows with ratios. No timing is asserted."""
import json
import subprocess
import sys

import pytest


def test_bench_quick_merge_json():
    out = subprocess.run([sys.executable, "-m", "mmsb", "bench", "--quick", "--only", "merge", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["quick"] is True
    assert "numpy" in doc["environment"]
    rows = doc["rows"]
    assert rows and all(r["group"] == "merge" for r in rows)
    names = " ".join(r["name"] for r in rows)
    assert "scatter" in names and "masked_merge" in names and "accumulate" in names
    for r in rows:
        assert r["mmsb"] is not None and r["mmsb"] > 0
        assert r["baseline_name"]
        assert r["ratio"] is not None and r["ratio"] > 0
        assert r["ratio"] == pytest.approx(r["baseline"] / r["mmsb"])
        assert r["met"] in (True, False, None)


def test_bench_unknown_group():
    from mmsb.bench import main

    assert main(quick=True, only="nope") == 2


def _children() -> int:
    """Processes whose parent is this one (Linux /proc; -1 elsewhere)."""
    import os

    if not os.path.isdir("/proc"):
        return -1
    me, n = os.getpid(), 0
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/stat") as fh:
                n += int(fh.read().rsplit(")", 1)[1].split()[1]) == me
        except (OSError, ValueError, IndexError):
            pass
    return n


def test_load_group_takes_the_best_ratio_of_each_state_and_stops_its_competitor():
    from mmsb.bench import load

    seen = []
    calls = iter([{"k": 2.0}, {"k": 1.0}, {"k": 3.0}, {"k": 1.5}])

    def ratios():
        seen.append(_children())
        return next(calls)

    quiet, loaded = load.quiet_and_loaded(ratios, cycles=2)
    assert quiet == {"k": 3.0} and loaded == {"k": 1.5}
    if seen[0] >= 0:                      # the competitor runs beside the loaded calls only, and is gone after
        b = seen[0]
        assert seen == [b, b + 1, b, b + 1] and _children() == b

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

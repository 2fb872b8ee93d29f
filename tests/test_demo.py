"""The demo: it runs, returns 0 and says the scipy comparison agrees; the CLI entry point exits 0."""
import os
import subprocess
import sys

from mmsb.demo import run_demo


def test_run_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = []
    rc = run_demo(side=60, updates=4, path=str(tmp_path / "store"), out=lines.append)
    text = "\n".join(lines)
    assert rc == 0, text
    scipy_rows = [ln for ln in lines if ln.startswith("scipy csgraph recompute")]
    assert len(scipy_rows) == 1, text
    assert "agree" in scipy_rows[0] and "DIFFER" not in scipy_rows[0], text
    assert "all checks passed" in text and "DIFFERS" not in text and "FAILED" not in text


def test_cli_demo(tmp_path):
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "mmsb", "demo", "--side", "40", "--updates", "2"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout

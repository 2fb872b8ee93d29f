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


def test_demo_plot_marks_the_change(tmp_path):
    """The PNG has three panels side by side (before, after, difference): a wide image, written without error."""
    mpl = __import__("pytest").importorskip("matplotlib")
    png = tmp_path / "demo.png"
    lines = []
    assert run_demo(side=40, updates=4, path=str(tmp_path / "s"), plot=str(png), out=lines.append) == 0
    assert any(ln.startswith("plot") and "wrote" in ln for ln in lines), lines
    import matplotlib.image as mpimg

    img = mpimg.imread(str(png))
    assert img.shape[1] > 2.5 * img.shape[0], img.shape
    assert mpl is not None


def test_demo_with_no_updates(tmp_path):
    lines = []
    assert run_demo(side=10, updates=0, path=str(tmp_path / "s"), out=lines.append) == 0, lines
    assert any("none (--updates 0)" in ln for ln in lines)

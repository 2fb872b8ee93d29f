"""The demo: it runs, returns 0, streams road changes through a matrix page next to facility changes, checks every
state against the road network it wrote (numpy) and, with scipy, against csgraph; the CLI entry point exits 0; it
runs without scipy and matplotlib (the runtime dependencies only)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import mmsb
from mmsb.demo import ROAD_EVENTS, RoadNet, _schedule, fixed_point, run_demo


def test_run_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = []
    rc = run_demo(side=60, updates=4, path=str(tmp_path / "store"), out=lines.append)
    text = "\n".join(lines)
    assert rc == 0, text
    scipy_rows = [ln for ln in lines if ln.startswith("scipy csgraph recompute")]
    assert len(scipy_rows) == 1, text
    assert "agree" in scipy_rows[0] and "DIFFER" not in scipy_rows[0], text
    assert "new facility:" in scipy_rows[0] and "road closure:" in scipy_rows[0], text
    fp = next(ln for ln in lines if ln.startswith("fixed-point check"))
    assert "exactly in 5 of 5 states" in fp and "road matrix entries agree" in fp, text
    for kind in ("new facility", "facility closed", "road closure", "traffic jam"):
        assert any(ln.startswith(f"  {kind} ") for ln in lines), (kind, text)
    assert "all checks passed" in text and "DIFFERS" not in text and "FAILED" not in text


def test_the_store_holds_the_road_matrix_and_its_changes(tmp_path):
    root = str(tmp_path / "store")
    assert run_demo(side=20, updates=8, path=root, out=lambda s: None) == 0
    edges = 2 * 2 * 20 * 19                             # both directions of every road of a 20x20 grid
    with mmsb.open(root, mode="r", functions={"within_budget": lambda d: d <= 60}) as buf:
        roads = buf["roads"]
        assert roads.kind == "matrix" and roads.shape == (400, 400) and roads.semiring.name == "min_plus"
        assert set(buf.graph.parents("dist")) == {"facilities", "roads"}
        deltas = list(buf.log.query(page="roads"))
        assert [d.source for d in deltas] == list(ROAD_EVENTS), [d.source for d in deltas]
        assert roads.nnz == edges                        # the closed roads were reopened at the end
        closure = deltas[0]
        assert np.isinf(closure.values).all()
        assert buf.at(closure.epoch)["roads"].nnz == edges - closure.nnz
        assert buf.at(closure.epoch - 1)["roads"].nnz == edges


def test_schedule_mixes_road_and_facility_updates():
    kinds = _schedule(20, roads=True)
    assert kinds[0] == "new facility" and kinds[10] == "facility closed"
    assert [k for k in kinds if k in ROAD_EVENTS] == list(ROAD_EVENTS) * 2 + list(ROAD_EVENTS[:2])
    assert _schedule(4, roads=False) == ["new facility", "new facility", "facility closed", "new facility"]


def _bellman_ford(net: RoadNet, fac: np.ndarray) -> np.ndarray:
    d = fac.copy()
    while True:
        cand = np.full(net.n, np.inf)
        np.minimum.at(cand, net.v, d[net.u] + net.w)
        new = np.minimum(fac, cand)
        if np.array_equal(new, d):
            return d
        d = new


def test_fixed_point_check_certifies_and_catches_errors():
    rng = np.random.default_rng(0)
    net = RoadNet(8, rng)
    fac = np.full(net.n, np.inf)
    fac[[3, 40]] = 0.0
    d = _bellman_ford(net, fac)
    assert fixed_point(net.A, fac, d)
    for k, bump in ((10, -0.5), (10, +0.5), (63, 1e-9)):
        wrong = d.copy()
        wrong[k] += bump
        assert not fixed_point(net.A, fac, wrong), (k, bump)
    roads, edges, w = net.plan("road closure", rng, near=3)     # close roads but keep the old distances
    net.apply(edges, w)
    d2 = _bellman_ford(net, fac)
    assert not np.array_equal(d, d2) and fixed_point(net.A, fac, d2) and not fixed_point(net.A, fac, d)
    roads, edges, w = net.plan("road reopened", rng, near=3)
    net.apply(edges, w)
    assert fixed_point(net.A, fac, d)


def test_cli_demo(tmp_path):
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "mmsb", "demo", "--side", "40", "--updates", "2"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout


BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("scipy", "matplotlib"):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
from mmsb.demo import run_demo
rc = run_demo(side=30, updates=6, path=sys.argv[1], plot=sys.argv[2])
assert "scipy" not in sys.modules and "matplotlib" not in sys.modules
sys.exit(rc)
"""


def test_demo_needs_only_the_runtime_dependencies(tmp_path):
    """scipy and matplotlib are extras: without them the matrix is built from numpy arrays, the scipy comparison
    and the plot are skipped, and every other check still runs."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""), MMSB_PROGRESS="0")
    proc = subprocess.run([sys.executable, "-c", BLOCK, str(tmp_path / "s"), str(tmp_path / "p.png")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped (scipy not installed)" in proc.stdout and "skipped (matplotlib not installed)" in proc.stdout
    assert "exactly in 7 of 7 states" in proc.stdout and "all checks passed" in proc.stdout, proc.stdout


def test_demo_plot_marks_the_change(tmp_path):
    """Four panels side by side (before, after, change from facilities, change from roads) and, when roads
    changed, a second row with each road update zoomed: a wide image, taller with the second row."""
    pytest.importorskip("matplotlib")
    import matplotlib.image as mpimg

    shapes = {}
    for updates in (1, 4):
        png = tmp_path / f"demo{updates}.png"
        lines = []
        assert run_demo(side=40, updates=updates, path=str(tmp_path / f"s{updates}"), plot=str(png),
                        out=lines.append) == 0
        assert any(ln.startswith("plot") and "wrote" in ln for ln in lines), lines
        shapes[updates] = mpimg.imread(str(png)).shape
    assert shapes[1][1] > 3 * shapes[1][0], shapes          # one row of four panels
    assert shapes[4][1] == shapes[1][1] and shapes[4][0] > 1.4 * shapes[1][0], shapes   # the zoomed road row


def test_demo_with_no_updates(tmp_path):
    lines = []
    assert run_demo(side=10, updates=0, path=str(tmp_path / "s"), out=lines.append) == 0, lines
    assert any("none (--updates 0)" in ln for ln in lines)

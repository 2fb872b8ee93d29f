"""Progress bars (mmsb.progress, on tqdm): shown only for a terminal or MMSB_PROGRESS=1, final line drawn once."""
import io
import os
import subprocess
import sys
import time

import pytest

from mmsb import progress as P


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("env,stdout_tty,expect", [("", True, True), ("", False, False), ("0", True, False),
                                                    ("1", False, True)])
def test_enabled_for(monkeypatch, env, stdout_tty, expect):
    monkeypatch.setenv("MMSB_PROGRESS", env)
    monkeypatch.setattr(sys, "stdout", FakeTTY() if stdout_tty else io.StringIO())
    assert P.enabled_for(FakeTTY()) is expect


def test_counted_bar_draws_the_final_line_once():
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    with P.Progress(20, "stream", enabled=True, stream=stream, leave=True) as bar:
        for _ in range(20):
            bar.update()
    assert bar.n == 20
    assert stream.getvalue().count("20/20") == 1, stream.getvalue()


def test_disabled_bar_counts_silently():
    stream = io.StringIO()
    with P.Progress(5, "quiet", enabled=False, stream=stream) as bar:
        for _ in range(5):
            bar.update()
    assert bar.n == 5 and stream.getvalue() == ""
    assert list(P.progress(range(4), desc="x")) == [0, 1, 2, 3]      # not a terminal under pytest: no output


def test_phase_shows_its_name_and_stops_its_thread():
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    with P.phase("long step", enabled=True, stream=stream, refresh=0.01) as ph:
        time.sleep(0.05)
    assert "long step: 00:00" in stream.getvalue()
    assert ph.seconds > 0 and not ph._thread.is_alive()
    quiet = io.StringIO()
    with P.phase("silent", enabled=False, stream=quiet) as ph:
        pass
    assert quiet.getvalue() == "" and ph._thread is None


def _demo(env_progress):
    env = dict(os.environ)
    env.pop("MMSB_PROGRESS", None)
    if env_progress is not None:
        env["MMSB_PROGRESS"] = env_progress
    return subprocess.run([sys.executable, "-m", "mmsb", "demo", "--side", "30", "--updates", "6"],
                          capture_output=True, text=True, timeout=300, env=env)


def test_demo_shows_every_phase_when_asked_and_nothing_on_a_pipe():
    shown = _demo("1")
    assert shown.returncode == 0, shown.stderr
    for desc in ("build the grid graph", "create the store and its rules", "initial closure", "update stream",
                 "checkpoint", "reopen", "time travel", "verify"):
        assert desc in shown.stderr, desc
    assert shown.stderr.count("6/6") == 1, shown.stderr
    piped = _demo(None)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    assert "all checks passed" in piped.stdout

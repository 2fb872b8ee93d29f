"""Crash loop: a child process commits seeded transactions (with link, derive and closure propagation, periodic
checkpoints and compaction) and reports every acknowledged epoch; the parent SIGKILLs it at random moments,
reopens the store and checks that no acknowledged commit was lost and that the state (and a few past epochs
replayed with ``buf.at``) equals the numpy model."""
import os
import random
import selectors
import signal
import subprocess
import sys
import time
import warnings

import pytest

import mmsb
from mmsb.errors import HistoryError, TornWriteWarning

import _workload as W
from _figures import count

pytestmark = [pytest.mark.reliability, pytest.mark.long_slow]

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "crash_child.py")


class _Forked:
    """A forked child running crash_child.run (no interpreter start-up), with Popen's few methods."""

    def __init__(self, path, seed, trial, durability):
        r, w = os.pipe()
        er, ew = os.pipe()
        pid = os.fork()
        if pid == 0:                      # child
            code = 0
            try:
                os.close(r)
                os.close(er)
                os.dup2(ew, 2)
                import crash_child
                crash_child.run(path, seed, trial, durability, os.fdopen(w, "w", buffering=1))
            except BaseException:
                import traceback
                traceback.print_exc()
                sys.stderr.flush()
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        os.close(ew)
        self.pid = pid
        self.stdout = os.fdopen(r, "rb", buffering=0)
        self.stderr = os.fdopen(er, "rb", buffering=0)
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(st)
        return self.returncode

    def send_signal(self, sig):
        if self.returncode is None:
            os.kill(self.pid, sig)

    def wait(self):
        if self.returncode is None:
            _, st = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(st)
        return self.returncode


def _run_child(path, seed, trial, durability, kill_after, fork=False):
    """Start the child, SIGKILL it ``kill_after`` seconds after it reported its start; return its lines.

    ``fork=True`` forks this process (fast); otherwise a fresh interpreter runs crash_child.py."""
    if fork:
        proc = _Forked(path, seed, trial, durability)
    else:
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(mmsb.__file__)))   # the mmsb under test
        env = dict(os.environ, PYTHONUNBUFFERED="1", MMSB_DISABLE_PLUGIN_AUTOLOAD="1",
                   PYTHONPATH=os.pathsep.join([pkg_root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        proc = subprocess.Popen([sys.executable, CHILD, path, str(seed), str(trial), durability],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    data = b""
    deadline = None
    hard = time.monotonic() + 60
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        if now > hard:
            break
        timeout = 0.05 if deadline is None else max(0.0, deadline - now)
        for key, _ in sel.select(timeout=min(timeout, 0.05)):
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                deadline = now      # child exited on its own
            data += chunk
        if deadline is None and b"S " in data:
            deadline = time.monotonic() + kill_after
        if proc.poll() is not None and deadline is None:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rest = proc.stdout.read()
    data += rest
    err = proc.stderr.read().decode(errors="replace")
    proc.stdout.close()
    proc.stderr.close()
    sel.close()
    lines = data.decode().split("\n")
    if data and not data.endswith(b"\n"):
        lines = lines[:-1]              # a line cut by the kill
    return [ln for ln in lines if ln], err, proc.returncode


def _check(buf, model_hist, lo, hi):
    """buf's epoch lies in [lo, hi] and its state and two replayed past epochs equal the model."""
    e = buf.epoch
    assert lo <= e <= hi, f"recovered epoch {e} outside [{lo}, {hi}] (acknowledged {lo})"
    d = W.diff(W.state_of(buf), W.full_state(model_hist[e]))
    assert not d, f"state at epoch {e} differs from the model on pages {d}"
    rng = random.Random(e)
    for pe in rng.sample(sorted(model_hist), k=min(2, len(model_hist))):
        if pe > e:
            continue
        try:
            view = buf.at(pe)
        except HistoryError:
            assert pe < buf._horizon
            continue
        d = W.diff(W.state_of(view), W.full_state(model_hist[pe]))
        assert not d, f"buf.at({pe}) differs from the model on pages {d}"


@pytest.mark.parametrize("durability", ["fsync", "flush", "fsync-auto"])
def test_crash_loop(tmp_path, LONG, durability, monkeypatch):
    """``fsync-auto``: the automatic checkpoint policy fires after nearly every commit (incremental checkpoints,
    container version 3, written on the background thread while the child is killed) and every clean close in
    the parent writes a shutdown checkpoint."""
    if durability == "fsync-auto":
        from mmsb import store as D

        durability = "fsync"
        monkeypatch.setenv("MMSB_AUTO_CHECKPOINT", "1e-9")
        monkeypatch.setenv("MMSB_AUTO_CHECKPOINT_MIN_BYTES", "1")            # (a fresh interpreter's)
        monkeypatch.setattr(D, "AUTO_CHECKPOINT_MIN_BYTES", 1)               # (a forked child's)
        monkeypatch.setattr(D, "SHUTDOWN_CHECKPOINT_MIN_BYTES", 1)
        trials = 40 if LONG else 12
        seed = 20242
    else:
        trials = (200 if durability == "fsync" else 40) if LONG else (30 if durability == "fsync" else 10)
        seed = 20240 + (durability == "flush")
    rnd = random.Random(seed)
    chain_len = 6
    path = None
    model_hist = {}
    committed = 0
    torn = 0
    for trial in range(trials):
        if trial % chain_len == 0:          # a fresh store every few trials; in between, recovered stores
            path = str(tmp_path / f"store{trial}")
            with mmsb.open(path, "w", functions=W.FUNCS, segment_bytes=2048) as buf:
                e0 = W.setup(buf)
            model_hist = {e0: W.initial_state()}
        start = max(model_hist)
        kill_after = rnd.choice([0.0, 0.001, 0.01]) if rnd.random() < 0.25 else rnd.uniform(0.0, 0.35)
        # most trials fork this (already initialised) process; every fourth starts a fresh interpreter
        lines, err, rc = _run_child(path, seed, trial, durability, kill_after, fork=trial % 4 != 3)
        starts = [int(ln.split()[1]) for ln in lines if ln.startswith("S ")]
        acked = [int(ln.split()[1]) for ln in lines if ln.startswith("A ")]
        assert "Traceback" not in err, err
        if starts:
            assert starts[0] == start, f"child recovered epoch {starts[0]}, expected {start}"
        last_acked = max(acked, default=start)
        assert acked == list(range(start + 1, last_acked + 1)), "acknowledged epochs must be consecutive"
        # the model may be asked for epochs the child committed but never acknowledged (one at most in flight)
        st = model_hist[start]
        for k in range(last_acked - start + 1):
            st = W.apply_ops(st, W.gen_txn(seed, trial, k))
            model_hist[start + k + 1] = st
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            buf = mmsb.open(path, "a", functions=W.FUNCS, segment_bytes=2048)
        torn += sum(issubclass(w.category, TornWriteWarning) for w in caught)
        try:
            _check(buf, model_hist, last_acked, last_acked + 1)
            # drop model epochs beyond what survived (the next trial continues from here)
            for ep in [ep for ep in model_hist if ep > buf.epoch]:
                del model_hist[ep]
            committed += buf.epoch - start
        finally:
            buf.close()
        if trial % chain_len == chain_len - 1 or trial == trials - 1:
            rep = mmsb.verify(path)
            assert rep.ok, rep.problems
        count("crash_trials")
    count("crash_commits_checked", committed)
    count("crash_torn_tails_repaired", torn)
    if seed == 20242:
        from mmsb import checkpoint as C

        formats = [C.verify_checkpoint(C.checkpoint_path(p, e))["format"] for p in
                   [str(tmp_path / n) for n in os.listdir(tmp_path)] for e in C.list_checkpoints(p)]
        assert 3 in formats, formats          # incremental checkpoints were written (and verified)


def test_readonly_open_of_a_killed_store(tmp_path):
    """A reader opening a killed (unrepaired) store sees a committed prefix and modifies nothing."""
    path = str(tmp_path / "s")
    with mmsb.open(path, "w", functions=W.FUNCS, segment_bytes=2048) as buf:
        e0 = W.setup(buf)
    lines, err, _ = _run_child(path, 7, 0, "fsync", 0.2)
    acked = [int(ln.split()[1]) for ln in lines if ln.startswith("A ")]
    last = max(acked, default=e0)
    before = {n: open(os.path.join(path, "log", n), "rb").read() for n in os.listdir(os.path.join(path, "log"))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TornWriteWarning)
        ro = mmsb.open(path, "r", functions=W.FUNCS)
    try:
        st = W.initial_state()
        hist = {e0: st}
        for k in range(last - e0 + 1):
            st = W.apply_ops(st, W.gen_txn(7, 0, k))
            hist[e0 + k + 1] = st
        _check(ro, hist, last, last + 1)
    finally:
        ro.close()
    after = {n: open(os.path.join(path, "log", n), "rb").read() for n in os.listdir(os.path.join(path, "log"))}
    assert before == after
    count("crash_trials")

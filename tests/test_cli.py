"""The ``mmsb`` command line, run as a subprocess (``python -m mmsb``): output and exit codes."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import mmsb

ENV = dict(os.environ, MMSB_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONWARNINGS="ignore")


class Result:
    def __init__(self, args, returncode, stdout, stderr):
        self.args, self.returncode, self.stdout, self.stderr = args, returncode, stdout, stderr


def _check(out, check):
    if check is not None:
        assert out.returncode == check, (out.args, out.returncode, out.stdout, out.stderr)
    return out


def cli(*args, check=None):
    """Run ``python -m mmsb ARGS`` in a subprocess."""
    out = subprocess.run([sys.executable, "-m", "mmsb", *map(str, args)], capture_output=True, text=True,
                         timeout=120, env=ENV)
    return _check(Result(args, out.returncode, out.stdout, out.stderr), check)


def cli_many(*argvs):
    """Several read-only commands as concurrent subprocesses (interpreter start-up dominates their cost)."""
    procs = [subprocess.Popen([sys.executable, "-m", "mmsb", *map(str, a)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV) for a in argvs]
    out = []
    for a, p in zip(argvs, procs):
        so, se = p.communicate(timeout=120)
        out.append(Result(a, p.returncode, so, se))
    return out


def main(*args, check=None, capsys=None):
    """The same command line in-process (mmsb.cli.main), for the many variants of one command."""
    from mmsb.cli import main as cli_main

    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rc = cli_main([str(a) for a in args])
        except SystemExit as exc:
            rc = exc.code
    so, se = capsys.readouterr()
    return _check(Result(args, rc, so, se), check)


def plus_one(x):
    return x + 1


def make(root):
    with mmsb.open(root, "w") as buf:
        buf.register_function("plus_one", plus_one)
        a = buf.create_page("a", 10)
        b = buf.create_page("b", 6)
        c = buf.create_page("c", 10, dtype="int64", semiring="min_plus")
        d = buf.create_page("d", 10)
        buf.link(b, a, sp.random(6, 10, density=0.4, random_state=1, format="csr"))
        buf.derive(d, [a], "plus_one")
        rng = np.random.default_rng(0)
        for k in range(8):
            buf.write(a, rng.integers(0, 5, 3).astype(float), index=rng.integers(0, 10, 3), accumulate=True,
                      source="sensor" if k % 2 else "user")
            buf.write(c, rng.integers(0, 100, 4), index=rng.integers(0, 10, 4), accumulate=True)
            if k == 3:
                buf.checkpoint()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cli") / "s")
    make(root)
    return root


@pytest.fixture(scope="module")
def runs(store):
    names = ["version", "info", "verify", "verify_json", "log", "plugins", "dot"]
    argvs = [("--version",), ("info", store), ("verify", store), ("verify", "--json", store), ("log", store),
             ("plugins",), ("graph", "--dot", store)]
    return dict(zip(names, cli_many(*argvs)))


def test_version_and_help(runs, capsys):
    out = _check(runs["version"], 0)
    assert f"mmsb {mmsb.__version__}" in out.stdout
    assert main(check=2, capsys=capsys).returncode == 2          # a command is required
    assert main("nonsense", check=2, capsys=capsys).returncode == 2


def test_info(store, runs, capsys):
    out = _check(runs["info"], 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mmsb.open(store, "r") as buf:
            epoch = buf.epoch
    assert f"epoch       {epoch}" in out.stdout
    for name in "abcd":
        assert f"\n{name} " in out.stdout
    assert "link(a)" in out.stdout and "derive(a)" in out.stdout and "min_plus" in out.stdout
    bad = main("info", os.path.join(store, "missing"), check=2, capsys=capsys)
    assert "FileNotFoundError" in bad.stderr


def test_verify_json_and_corruption(store, runs, tmp_path, capsys):
    out = _check(runs["verify"], 0)
    assert out.stdout.startswith("OK")
    rep = json.loads(_check(runs["verify_json"], 0).stdout)
    assert rep["ok"] is True and rep["problems"] == [] and rep["checkpoints"]
    import shutil

    bad = str(tmp_path / "bad")
    shutil.copytree(store, bad)
    seg = sorted(os.listdir(os.path.join(bad, "log")))[-1]
    path = os.path.join(bad, "log", seg)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(path, "wb").write(bytes(data))
    out = main("verify", bad, check=1, capsys=capsys)
    assert out.stdout.startswith("FAILED") and "problem:" in out.stdout
    rep = json.loads(cli("verify", "--json", bad, check=1).stdout)
    assert rep["ok"] is False and rep["problems"]


def _deltas(store, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mmsb.open(store, "r") as buf:
            return [(d.epoch, d.page) for d in buf.log.query(**kw)]


def _log_lines(out):
    return [(int(line.split()[1]), line.split()[2]) for line in out.stdout.splitlines() if line.strip()]


def test_log_filters(store, runs, capsys):
    assert _log_lines(_check(runs["log"], 0)) == _deltas(store)
    assert _log_lines(main("log", store, "--page", "a", check=0, capsys=capsys)) == _deltas(store, page="a")
    got = _log_lines(main("log", store, "--since", 10, "--until", 14, check=0, capsys=capsys))
    assert got == _deltas(store, since=10, until=14) and got
    got = _log_lines(main("log", store, "--source", "sensor", check=0, capsys=capsys))
    assert got == _deltas(store, source="sensor") and len(got) == 4
    assert len(_log_lines(main("log", store, "--limit", 3, check=0, capsys=capsys))) == 3
    out = main("log", store, "--page", "b", check=0, capsys=capsys)
    assert "derived" in out.stdout


def test_replay(store, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mmsb.open(store, "r") as buf:
            top = buf.epoch
            for n in (9, top):
                out_dir = str(tmp_path / f"r{n}")
                if n == 9:
                    cli("replay", store, "--epoch", n, "--out", out_dir, check=0)
                else:
                    main("replay", store, "--epoch", n, "--out", out_dir, check=0, capsys=capsys)
                assert mmsb.verify(out_dir).ok
                view = buf.at(n)
                with mmsb.open(out_dir, "r") as new:
                    assert new.epoch == n
                    assert list(new) == list(view)
                    for name in view:
                        np.testing.assert_array_equal(new[name].read(), view[name].read())
                        assert new[name].semiring.name == view[name].semiring.name
                    assert new.graph.parents("b") == ["a"]
    assert main("replay", store, "--epoch", 9, "--out", str(tmp_path / "r9"), check=2, capsys=capsys)
    assert main("replay", store, "--epoch", top + 5, "--out", str(tmp_path / "rx"), check=2, capsys=capsys)


def test_checkpoint_compact_graph_plugins(store, runs, tmp_path, capsys):
    import shutil

    root = str(tmp_path / "c")
    shutil.copytree(store, root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mmsb.open(root, "r") as buf:
            top = buf.epoch
            before = {n: buf[n].read() for n in buf}
    out = cli("checkpoint", root, check=0)
    assert f"checkpoint at epoch {top}" in out.stdout
    with mmsb.open(root, "a", functions={"plus_one": plus_one}) as buf:   # the writer lock is held here
        assert top in buf.stats()["store"]["checkpoints"]
        locked = main("checkpoint", root, check=2, capsys=capsys)
        assert "StoreLockedError" in locked.stderr
    out = cli("compact", root, "--keep", 0, check=0)
    assert "compacted" in out.stdout
    assert mmsb.verify(root).ok
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mmsb.open(root, "r") as buf:
            assert buf.epoch == top
            for n, v in before.items():
                np.testing.assert_array_equal(buf[n].read(), v)
    text = main("graph", root, check=0, capsys=capsys).stdout
    assert "a" in text and "b" in text
    dot = _check(runs["dot"], 0).stdout
    assert dot.lstrip().startswith("digraph") and '"a"' in dot and "->" in dot
    plug = _check(runs["plugins"], 0).stdout
    for name in ("plus_times", "min_plus", "max_plus", "max_times", "max_min", "min_max", "or_and"):
        assert name in plug

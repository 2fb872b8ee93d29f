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
    missing = os.path.join(store, "missing")
    bad = main("info", missing, check=3, capsys=capsys)
    assert bad.stderr == f"mmsb info: error: no store at {missing}\n"


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
        locked = main("checkpoint", root, check=3, capsys=capsys)
        assert "StoreLockedError" in locked.stderr and len(locked.stderr.splitlines()) == 1
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


# -- help, usage and errors (issue 19, issue 16 item 10) ---------------------------------------------------------
def _one_line_error(out, command):
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mmsb {command}: error: "), out.stderr
    assert "Traceback" not in out.stderr and ".py:" not in out.stderr
    return lines[0]


def test_every_argument_has_help():
    from mmsb.cli import build_parser

    ap = build_parser()
    sub = next(a for a in ap._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) >= {"demo", "info", "stats", "verify", "log", "replay", "checkpoint", "compact", "bench",
                                "plugins", "graph", "batch"}
    for name, parser in sub.choices.items():
        for action in parser._actions:
            assert action.help, f"mmsb {name}: argument {action.dest} has no help"
        text = parser.format_help()
        assert "exit status:" in text and "130" in text, name


def test_exit_codes_documented():
    from mmsb.cli import EXIT_CODES, build_parser

    text = build_parser().format_help()
    docs = open(os.path.join(os.path.dirname(__file__), "..", "docs", "cli.md")).read()
    for code, what in EXIT_CODES.items():
        assert f"  {code:<4} {what}" in text
        assert f"| {code} |" in docs, f"docs/cli.md lacks exit status {code}"


def test_version_is_one_line():
    env = dict(ENV, COLUMNS="40")
    out = subprocess.run([sys.executable, "-m", "mmsb", "--version"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 1, out.stdout
    from mmsb.cli import simd_level

    assert f"SIMD in use: {simd_level()};" in out.stdout


def test_unknown_option_shows_the_subcommands_usage(store, capsys):
    out = main("info", store, "--bogus", check=2, capsys=capsys)
    assert out.stderr.startswith("usage: mmsb info ")
    assert "unrecognized arguments: --bogus" in out.stderr


@pytest.mark.parametrize("args", [("--side", "0"), ("--side", "-3"), ("--updates", "-1"), ("--side", "ten")])
def test_demo_rejects_bad_numbers_in_the_parser(args, capsys, tmp_path):
    out = main("demo", "--path", tmp_path / "s", *args, check=2, capsys=capsys)
    assert out.stderr.startswith("usage: mmsb demo") and f"argument {args[0]}:" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "s").exists()


def test_demo_refuses_an_existing_store_without_force(tmp_path, capsys):
    root = tmp_path / "keep"
    with mmsb.open(str(root), "w") as buf:
        buf.write(buf.create_page("precious", 3), [1.0, 2.0, 3.0])
    out = main("demo", "--path", root, "--side", 8, "--updates", 1, check=2, capsys=capsys)
    assert "--force" in _one_line_error(out, "demo")
    with mmsb.open(str(root), "r") as buf:
        assert list(buf) == ["precious"] and buf["precious"].read().tolist() == [1.0, 2.0, 3.0]
    out = main("demo", "--path", root, "--side", 8, "--updates", 1, "--force", check=0, capsys=capsys)
    assert "all checks passed" in out.stdout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mmsb.open(str(root), "r") as buf:
            assert "precious" not in buf and "dist" in buf
    other = tmp_path / "not-a-store"
    other.mkdir()
    (other / "mine.txt").write_text("mine")
    out = main("demo", "--path", other, "--side", 8, "--updates", 1, "--force", check=3, capsys=capsys)
    assert "not an mmsb store" in _one_line_error(out, "demo")
    assert (other / "mine.txt").read_text() == "mine"


@pytest.mark.parametrize("command", ["checkpoint", "compact"])
def test_writing_commands_never_create_a_store(command, tmp_path, capsys):
    missing = tmp_path / "typo"
    out = main(command, missing, check=3, capsys=capsys)
    assert "no store at" in _one_line_error(out, command)
    assert not missing.exists()


def test_replay_out_onto_a_file(store, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep")
    out = main("replay", store, "--epoch", 3, "--out", target, check=2, capsys=capsys)
    assert "is a file" in _one_line_error(out, "replay")
    assert target.read_text() == "keep"


def test_log_of_a_missing_page_is_an_error(store, capsys):
    out = main("log", store, "--page", "nosuchpage", check=2, capsys=capsys)
    assert "'nosuchpage'" in _one_line_error(out, "log")


def test_read_only_commands_print_no_internal_warning(store):
    """The store's derive function is not registered in a fresh process: no RuntimeWarning, no file:line."""
    env = {k: v for k, v in ENV.items() if k != "PYTHONWARNINGS"}
    for args in (("info", store), ("log", store, "--limit", "1"), ("graph", store), ("stats", store)):
        out = subprocess.run([sys.executable, "-m", "mmsb", *args], capture_output=True, text=True, env=env,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stderr == "", (args, out.stderr)


def test_recovery_truncate(store, tmp_path, capsys):
    import shutil

    root = str(tmp_path / "torn")
    shutil.copytree(store, root)
    seg = os.path.join(root, "log", sorted(os.listdir(os.path.join(root, "log")))[-1])
    data = bytearray(open(seg, "rb").read())
    data[len(data) - 40] ^= 0xFF          # inside the last committed transaction: strict recovery refuses
    open(seg, "wb").write(bytes(data))
    strict = main("info", root, check=3, capsys=capsys)
    assert "Corruption" in _one_line_error(strict, "info")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mmsb.open(root, "r", recovery="truncate") as buf:
            expect = buf.epoch
    out = main("info", root, "--recovery", "truncate", check=0, capsys=capsys)
    assert f"epoch       {expect}\n" in out.stdout


def test_record_counts_agree_between_demo_info_stats_and_verify(tmp_path, capsys):
    from mmsb.demo import run_demo

    root = str(tmp_path / "demo")
    lines = []
    assert run_demo(side=12, updates=3, path=root, out=lines.append) == 0
    demo_row = next(ln for ln in lines if ln.startswith("log "))
    demo_records = int(demo_row.split(" transactions, ")[1].split()[0])
    info = main("info", root, check=0, capsys=capsys).stdout
    info_records = int(next(ln for ln in info.splitlines() if ln.startswith("log ")).split(", ")[1].split()[0])
    stats = json.loads(main("stats", "--json", root, check=0, capsys=capsys).stdout)
    report = mmsb.verify(root)
    assert demo_records == info_records == stats["log"]["records"] == report.records_checked


def test_stats(store, capsys):
    out = main("stats", store, check=0, capsys=capsys).stdout
    st = json.loads(main("stats", store, "--json", check=0, capsys=capsys).stdout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mmsb.open(store, "r") as buf:
            ref = buf.stats()
    assert st["epoch"] == ref["epoch"] and st["memory"]["resident_bytes"] == ref["memory"]["resident_bytes"]
    assert set(st) == set(ref)
    for section in ref:
        assert section in out
    assert f"epoch{' ' * 9}{ref['epoch']}" in out or f"epoch {ref['epoch']}" in " ".join(out.split())


def test_batch_rejects_a_bad_deltas_file_before_starting(tmp_path, capsys):
    pytest.importorskip("distributed")
    target = tmp_path / "new-store"
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not an npz archive")
    out = main("batch", target, "--deltas", bad, check=2, capsys=capsys)
    line = _one_line_error(out, "batch")
    assert str(bad) in line and "allow_pickle" not in line
    np.savez(tmp_path / "nopages.npz", values_0=np.zeros(3))
    out = main("batch", target, "--deltas", tmp_path / "nopages.npz", check=2, capsys=capsys)
    assert "'pages'" in _one_line_error(out, "batch")
    out = main("batch", target, "--deltas", tmp_path / "missing.npz", check=2, capsys=capsys)
    assert "no such file" in _one_line_error(out, "batch")
    assert not target.exists()

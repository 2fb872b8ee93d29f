"""docs/plugins.md, followed word for word: write its files, run its commands, compare the printed output.

It pip-installs the guide's plugin into the running environment (and uninstalls it at the end), hence ``slow``.
"""
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(ROOT, "docs", "plugins.md")
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def guide_steps(text: str) -> list:
    """The guide's steps in order: ("file", path, text), ("run", argv) and ("output", text)."""
    steps = []
    for lang, body in BLOCK.findall(text):
        first, _, rest = body.partition("\n")
        if first.startswith("# file: "):
            steps.append(("file", first[len("# file: "):].strip(), rest if lang == "python" else body))
        elif lang == "bash":
            steps.extend(("run", shlex.split(line)) for line in body.splitlines() if line.strip())
        elif lang == "text" and steps and steps[-1][0] == "run":
            steps.append(("output", body))
    return steps


@pytest.mark.slow
def test_plugin_guide_works_as_written(tmp_path):
    pytest.importorskip("hypothesis")
    steps = guide_steps(open(GUIDE, encoding="utf-8").read())
    assert [s[0] for s in steps].count("file") == 4 and any(s[0] == "output" for s in steps)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MMSB_DISABLE_PLUGIN_AUTOLOAD", None)
    installed = False
    last = None
    try:
        for step in steps:
            if step[0] == "file":
                path = tmp_path / step[1]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(step[2], encoding="utf-8")
            elif step[0] == "run":
                argv = step[1]
                assert argv[0] == "python", f"the guide runs {argv}; this test only knows python commands"
                installed |= argv[1:4] == ["-m", "pip", "install"]
                last = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=env, capture_output=True,
                                      text=True, timeout=300)
                assert last.returncode == 0, (argv, last.stdout, last.stderr)
                if argv[1:] == ["-m", "mmsb", "plugins"]:
                    row = next(ln.split() for ln in last.stdout.splitlines() if ln.startswith("gf2 "))
                    assert row[2:4] == ["False", "True"], row        # idempotent False, invertible True
            else:
                assert last.stdout == step[1], (last.stdout, step[1])
        # an independent check of the printed parities: y = A x mod 2
        A = np.array([[1, 1, 0], [0, 1, 1]])
        want = [A @ np.array([1, 1, 0]) % 2, A @ np.array([1, 1, 1]) % 2]
        assert last.stdout == "".join(f"{np.array(w, dtype=np.uint8)}\n" for w in want)
    finally:
        if installed:
            subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "mmsb-gf2"], capture_output=True,
                           timeout=300)


def test_guide_steps_parse():
    """The parser above finds the four files, the commands and the expected output of the guide."""
    steps = guide_steps(open(GUIDE, encoding="utf-8").read())
    files = [s[1] for s in steps if s[0] == "file"]
    assert files == ["mmsb-gf2/pyproject.toml", "mmsb-gf2/mmsb_gf2/__init__.py", "mmsb-gf2/tests/test_gf2.py",
                     "use_gf2.py"]
    assert '[project.entry-points.mmsb]\ngf2 = "mmsb_gf2"' in steps[0][2]
    runs = [s[1] for s in steps if s[0] == "run"]
    assert runs[0][:4] == ["python", "-m", "pip", "install"] and runs[-1] == ["python", "use_gf2.py"]

"""docs/plugins.md, followed word for word: write its files, run its commands, compare the printed output.

The guide's ``python`` is a fresh virtual environment that sees this environment's packages (mmsb, numpy,
hypothesis, pytest), so that installing the guide's plugin changes nothing outside the test's temporary
directory. Creating it and pip-installing take seconds, hence ``slow``.
"""
import os
import re
import shlex
import site
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


def _private_python(root) -> str:
    """A new virtual environment layered over this one (a .pth adds this environment's site-packages)."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / ("Scripts" if os.name == "nt" else "bin") / "python")
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    parents = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    with open(os.path.join(purelib, "zz_parent_env.pth"), "w") as f:
        f.write("".join(f"import site; site.addsitedir({p!r})\n" for p in parents))
    return py


@pytest.mark.slow
def test_plugin_guide_works_as_written(tmp_path):
    pytest.importorskip("hypothesis")
    steps = guide_steps(open(GUIDE, encoding="utf-8").read())
    assert [s[0] for s in steps].count("file") == 4 and any(s[0] == "output" for s in steps)
    work = tmp_path / "guide"
    work.mkdir()
    python = _private_python(tmp_path)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("MMSB_DISABLE_PLUGIN_AUTOLOAD", None)
    last = None
    for step in steps:
        if step[0] == "file":
            path = work / step[1]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(step[2], encoding="utf-8")
        elif step[0] == "run":
            argv = step[1]
            assert argv[0] == "python", f"the guide runs {argv}; this test only knows python commands"
            last = subprocess.run([python, *argv[1:]], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=600)
            assert last.returncode == 0, (argv, last.stdout, last.stderr)
            if argv[1:] == ["-m", "mmsb", "plugins"]:
                row = next(ln.split() for ln in last.stdout.splitlines() if ln.startswith("gf2 "))
                assert row[1:4] == ["gf2", "False", "True"], row    # provider, idempotent, invertible
        else:
            assert last.stdout == step[1], (last.stdout, step[1])
    # an independent check of the printed parities: y = A x mod 2
    A = np.array([[1, 1, 0], [0, 1, 1]])
    want = [A @ np.array([1, 1, 0]) % 2, A @ np.array([1, 1, 1]) % 2]
    assert last.stdout == "".join(f"{np.array(w, dtype=np.uint8)}\n" for w in want)
    outside = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; print(m.version('mmsb-gf2'))"],
                             capture_output=True, text=True)
    assert outside.returncode != 0, "the guide's plugin leaked into the test environment"


def test_guide_steps_parse():
    """The parser above finds the four files, the commands and the expected output of the guide."""
    steps = guide_steps(open(GUIDE, encoding="utf-8").read())
    files = [s[1] for s in steps if s[0] == "file"]
    assert files == ["mmsb-gf2/pyproject.toml", "mmsb-gf2/mmsb_gf2/__init__.py", "mmsb-gf2/tests/test_gf2.py",
                     "use_gf2.py"]
    assert '[project.entry-points.mmsb]\ngf2 = "mmsb_gf2"' in steps[0][2]
    runs = [s[1] for s in steps if s[0] == "run"]
    assert runs[0][:4] == ["python", "-m", "pip", "install"] and runs[-1] == ["python", "use_gf2.py"]

"""Every ```python block of README.md and docs/**/*.md runs, so that a snippet cannot rot (issue 19).

The blocks of one file run in order in one namespace (later blocks may use names from earlier ones), in a
temporary working directory, each file in a fresh interpreter. Two kinds of block do not run here:

- a block whose first line is ``# file: PATH`` is a file of a walkthrough; the walkthrough's own test writes and
  runs it (docs/plugins.md: tests/test_plugin_guide.py);
- a block whose first line is ``# docs-test: skip (needs a GPU)`` or ``# docs-test: skip (needs a cluster)``
  needs hardware or services the test suite does not have; no other reason is accepted.
"""
import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"^# docs-test: skip \((needs a GPU|needs a cluster)\)")
WALKTHROUGH_TESTS = {"docs/plugins.md": "tests/test_plugin_guide.py"}


def doc_files() -> list:
    files = ["README.md"] + sorted(glob.glob("docs/**/*.md", root_dir=ROOT, recursive=True))
    return [f for f in files if not f.startswith("docs/_build/")]


def blocks(rel: str) -> tuple:
    """``(to_run, skipped)``: the blocks of ``rel`` this test runs, and the reasons of those it does not."""
    text = open(os.path.join(ROOT, rel), encoding="utf-8").read()
    run, skipped = [], []
    for body in BLOCK.findall(text):
        first = body.split("\n", 1)[0]
        if first.startswith("# file: "):
            assert rel in WALKTHROUGH_TESTS, f"{rel}: a '# file:' block needs a walkthrough test"
            skipped.append(f"file of a walkthrough, run by {WALKTHROUGH_TESTS[rel]}")
        elif first.startswith("# docs-test:"):
            m = SKIP.match(first)
            assert m, f"{rel}: {first!r} is not an accepted opt-out (only GPU or cluster blocks may opt out)"
            skipped.append(m.group(1))
        else:
            run.append(body)
    return run, skipped


@pytest.mark.parametrize("rel", [f for f in doc_files() if any(blocks(f))])
def test_doc_snippets_run(rel, tmp_path):
    run, skipped = blocks(rel)
    if not run:
        pytest.skip(f"{rel}: every python block opts out: {'; '.join(skipped)}")
    script = "\n\n".join(f"# --- block {k + 1} of {rel}\n{body}" for k, body in enumerate(run))
    path = tmp_path / "snippets.py"
    path.write_text(script, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg",
               MMSB_PROGRESS="0")
    out = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, f"{rel}: a python block failed\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    if skipped:
        print(f"{rel}: {len(skipped)} block(s) not run here: {'; '.join(skipped)}")


def test_opt_outs_are_only_for_gpu_or_cluster():
    reasons = {r for f in doc_files() for r in blocks(f)[1]}
    assert reasons <= {"needs a GPU", "needs a cluster"} | {f"file of a walkthrough, run by {t}"
                                                           for t in WALKTHROUGH_TESTS.values()}, reasons

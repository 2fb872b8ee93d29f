"""Reliability suite configuration: CI mode by default, long mode with MMSB_RELIABILITY_LONG=1 or --long.

Every test here carries the ``reliability`` mark; in long mode the long-running ones also carry ``slow``.
Figures (trials, faults injected, bytes flipped, inputs fuzzed, failures) are summed over the session, printed
at the end and written as JSON to $MMSB_RELIABILITY_FIGURES when that is set.
"""
import json
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _figures import FIGURES, count  # noqa: E402,F401


def pytest_addoption(parser):
    try:
        parser.addoption("--long", action="store_true", default=False,
                         help="mmsb reliability suite: long mode (hundreds of trials, every byte flipped)")
    except ValueError:  # registered twice
        pass


def long_mode(config=None) -> bool:
    if os.environ.get("MMSB_RELIABILITY_LONG", "") not in ("", "0"):
        return True
    if config is not None:
        try:
            return bool(config.getoption("--long"))
        except ValueError:
            return False
    return False


def pytest_configure(config):
    if long_mode(config):
        os.environ["MMSB_RELIABILITY_LONG"] = "1"
    config._mmsb_rel_t0 = time.time()
    config.addinivalue_line("markers", "long_slow: takes over ~20 s in long mode (marked slow there)")


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    long = long_mode(config)
    for item in items:
        if str(item.fspath).startswith(here):
            if item.get_closest_marker("reliability") is None:
                item.add_marker(pytest.mark.reliability)
            if long and item.get_closest_marker("long_slow") is not None:
                item.add_marker(pytest.mark.slow)


@pytest.fixture
def LONG(request) -> bool:
    return long_mode(request.config)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not FIGURES:
        return
    figs = dict(sorted(FIGURES.items()))
    figs["failures"] = len(terminalreporter.stats.get("failed", [])) + len(terminalreporter.stats.get("error", []))
    figs["mode"] = "long" if long_mode(config) else "ci"
    figs["seconds"] = round(time.time() - getattr(config, "_mmsb_rel_t0", time.time()), 1)
    terminalreporter.write_sep("-", "mmsb reliability figures")
    for k, v in figs.items():
        terminalreporter.write_line(f"{k}: {v}")
    out = os.environ.get("MMSB_RELIABILITY_FIGURES")
    if out:
        with open(out, "w") as f:
            json.dump(figs, f, indent=2)

"""#14's automatic-checkpoint row (the ninth session's ckrow.py, ``argv[1]`` alternations, default 3) with the
background writer thread at a lower priority: ``CKMODE=idle`` (SCHED_IDLE), ``nice`` (nice 19) or ``none``."""
import os
import runpy
import sys
import threading

import mmsb.store as store

_run_auto = store.Store._run_auto
MODE = os.environ.get("CKMODE", "idle")


def _lowered_run_auto(self, *args, **kwargs):
    tid = threading.get_native_id()
    if MODE == "idle":
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    elif MODE == "nice":
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    return _run_auto(self, *args, **kwargs)


store.Store._run_auto = _lowered_run_auto
sys.argv = ["ckrow.py", sys.argv[1] if len(sys.argv) > 1 else "3"]
runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "2026-12-05-ninth", "ckrow.py"),
               run_name="__main__")

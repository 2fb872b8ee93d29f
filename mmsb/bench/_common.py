"""Shared pieces of ``mmsb bench``: the result row, timers, scratch directories and formatting."""
from __future__ import annotations

import contextlib
import gc
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Optional


@dataclass
class Row:
    """One comparison: mmsb's figure, the baseline's, and ``ratio = baseline / mmsb`` (>1: mmsb better).

    ``unit`` is ``"s"`` (lower is better, printed scaled) or another unit such as ``"B"`` (also lower is better).
    ``target`` is the goal from the issues in words; ``met`` is True/False where it can be judged, else None.
    A row whose baseline is missing has ``baseline=None`` and ``ratio=None`` and says why in ``note``.
    """

    group: str
    name: str
    mmsb: Optional[float]
    baseline_name: str = ""
    baseline: Optional[float] = None
    unit: str = "s"
    ratio: Optional[float] = None
    target: str = ""
    met: Optional[bool] = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ratio is None and self.mmsb and self.baseline is not None and self.mmsb > 0:
            self.ratio = self.baseline / self.mmsb

    def judge_ratio(self, minimum: float) -> "Row":
        """Set ``met`` from ``ratio >= minimum``; ``target`` defaults to ``">= {minimum}x"``."""
        if not self.target:
            self.target = f">= {minimum:g}x"
        if self.ratio is not None:
            self.met = self.ratio >= minimum
        return self

    def as_dict(self) -> dict:
        return asdict(self)


def best_of(fn: Callable[[], Any], repeat: int = 3, setup: Optional[Callable[[], Any]] = None,
            number: int = 1) -> float:
    """Minimum over ``repeat`` runs of the seconds one call of ``fn`` takes (``number`` calls per run).

    ``setup`` runs before each timed run, untimed. The garbage collector is off while timing.
    """
    best = float("inf")
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(max(1, repeat)):
            if setup is not None:
                setup()
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            best = min(best, (time.perf_counter() - t0) / number)
    finally:
        if was:
            gc.enable()
    return best


def pair(fn_a: Callable[[], Any], fn_b: Callable[[], Any], repeat: int = 3,
         setup_a: Optional[Callable[[], Any]] = None, setup_b: Optional[Callable[[], Any]] = None,
         number: int = 1) -> tuple[float, float]:
    """Time ``fn_a`` and ``fn_b`` alternately (A B A B …), best of ``repeat`` each, so drift hits both alike."""
    a = b = float("inf")
    for _ in range(max(1, repeat)):
        a = min(a, best_of(fn_a, 1, setup_a, number))
        b = min(b, best_of(fn_b, 1, setup_b, number))
    return a, b


@contextlib.contextmanager
def scratch_dir(tag: str) -> Iterator[str]:
    """A temporary directory on local disk (``MMSB_BENCH_DIR`` picks the parent), removed afterwards."""
    parent = os.environ.get("MMSB_BENCH_DIR") or None
    d = tempfile.mkdtemp(prefix=f"mmsb-bench-{tag}-", dir=parent)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def missing(group: str, name: str, mmsb_value: Optional[float], baseline_name: str, why: str,
            unit: str = "s", target: str = "") -> Row:
    """A row whose baseline could not run (not installed): mmsb's figure alone, with a note."""
    return Row(group, name, mmsb_value, baseline_name, None, unit, None, target, None, f"baseline skipped: {why}")


def fmt_value(v: Optional[float], unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        for scale, u in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns")):
            if abs(v) >= scale or u == "ns":
                return f"{v / scale:.3g} {u}"
    if unit == "B":
        for scale, u in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(v) >= scale:
                return f"{v / scale:.3g} {u}"
        return f"{v:.4g} B"
    return f"{v:.4g} {unit}"


def fmt_ratio(r: Optional[float]) -> str:
    if r is None:
        return "-"
    return f"{r:.3g}x" if r < 100 else f"{r:.0f}x"


#: What a baseline needs beyond ``import module``: attributes touched here load its lazy dependencies (e.g.
#: python-graphblas imports donfig only when its configuration is first used).
PROBES: dict[str, tuple[str, ...]] = {"graphblas": ("ss.config", "Matrix", "semiring.min_plus", "io")}


def have(module: str) -> Optional[str]:
    """None when ``module`` imports and works far enough to run a baseline, else the reason, naming what is missing."""
    try:
        mod = __import__(module)
        for path in PROBES.get(module, ()):
            obj = mod
            for part in path.split("."):
                obj = getattr(obj, part)
        return None
    except Exception as exc:  # ImportError, or a broken install (a dependency of the module missing)
        name = getattr(exc, "name", None)
        if isinstance(exc, ImportError) and name and name.split(".")[0] != module:
            return f"{module} is installed but its dependency {name} is missing (pip install {name})"
        return f"{module} not installed ({type(exc).__name__}: {exc})"


def machine_load(sample: float = 0.5, busy_fraction: float = 0.2) -> dict:
    """How loaded the machine is while benchmarking: load averages, CPUs, and competing busy processes.

    ``busy`` lists the other processes that used more than ``busy_fraction`` of a core over ``sample`` seconds
    (Linux ``/proc``; elsewhere only the load average). ``loaded`` is True when the 1-minute load average exceeds
    three quarters of the CPUs or a competing process is busy: figures measured then are noisy.
    """
    cpus = os.cpu_count() or 1
    try:
        load = tuple(round(x, 2) for x in os.getloadavg())
    except (OSError, AttributeError):  # pragma: no cover - not on Linux/macOS
        load = None
    busy: list[dict] = []
    if os.path.isdir("/proc") and sample > 0:
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        first = _proc_times()
        time.sleep(sample)
        second = _proc_times()
        me = os.getpid()
        for pid, (name, t1) in second.items():
            if pid == me or pid not in first:
                continue
            share = (t1 - first[pid][1]) / tick / sample
            if share > busy_fraction:
                busy.append({"pid": pid, "name": name, "cpu": round(share, 2)})
        busy.sort(key=lambda b: -b["cpu"])
    loaded = bool(busy) or (load is not None and load[0] > 0.75 * cpus)
    return {"loadavg": load, "cpus": cpus, "busy": busy, "loaded": loaded}


def _proc_times() -> dict:
    """``{pid: (command name, user + system clock ticks)}`` of every process (Linux)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        name = raw[raw.find("(") + 1: raw.rfind(")")]
        fields = raw[raw.rfind(")") + 2:].split()
        try:
            out[int(entry)] = (name, int(fields[11]) + int(fields[12]))
        except (IndexError, ValueError):
            continue
    return out


def fmt_load(load: dict) -> str:
    """One line: the load averages, CPUs and busy competing processes, and whether figures are trustworthy."""
    la = "/".join(f"{x:g}" for x in load["loadavg"]) if load.get("loadavg") else "unknown"
    busy = ", ".join(f"{b['name']} (pid {b['pid']}, {b['cpu'] * 100:.0f}% of a core)" for b in load["busy"][:5])
    more = f" and {len(load['busy']) - 5} more" if len(load["busy"]) > 5 else ""
    text = f"machine load: load average {la} (1/5/15 min) on {load['cpus']} CPU(s); busy competing processes: " \
           f"{busy + more if busy else 'none'}"
    if load.get("loaded"):
        text += " -- the machine is LOADED: figures are noisy, compare ratios with care"
    return text

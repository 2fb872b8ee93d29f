"""``mmsb bench``: mmsb against what a user would use instead, measured side by side in one run.

Each row gives mmsb's figure, the baseline's and ``ratio = baseline / mmsb`` (> 1: mmsb is faster or smaller).
Groups (one module each): path, merge, alloc, spmv, closure, log, checkpoint, txn, dynamic. ``quick=True`` runs every group
at reduced sizes and prints the ratios without judging any target (targets are judged on full runs only).
Baselines that are not installed, or installed without a dependency they need, keep their row, which names what
is missing. The machine's load (load average, busy competing processes) is measured before and after and printed
next to the table. No figure here is asserted in tests.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from typing import Iterable, Optional, Sequence, Union

from mmsb.bench._common import Row, fmt_load, fmt_ratio, fmt_value, machine_load

GROUPS = ("path", "merge", "alloc", "spmv", "closure", "log", "checkpoint", "txn", "dynamic", "load")

__all__ = ["GROUPS", "Row", "main", "run", "environment"]


def environment() -> dict:
    """What the figures were measured on."""
    import numpy as np

    import mmsb

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
           "mmsb": mmsb.__version__, "kernels": mmsb.kernels, "numpy": np.__version__,
           "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
           "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE")}
    try:
        env["loadavg"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    for mod in ("scipy", "graphblas", "blosc2"):
        try:
            env[mod] = importlib.import_module(mod).__version__
        except Exception:
            env[mod] = None
    env["sqlite"] = __import__("sqlite3").sqlite_version
    return env


def _parse_only(only: Union[str, Sequence[str], None]) -> list[str]:
    if not only:
        return list(GROUPS)
    names = only.split(",") if isinstance(only, str) else list(only)
    names = [n.strip() for n in names if n.strip()]
    bad = [n for n in names if n not in GROUPS]
    if bad:
        raise ValueError(f"unknown bench group(s) {bad}; choose from {', '.join(GROUPS)}")
    return names


def run(quick: bool = False, only: Union[str, Sequence[str], None] = None,
        on_row=None, on_group=None) -> list[Row]:
    """Run the groups and return their rows; a group that fails yields one row with the error in ``note``."""
    rows: list[Row] = []
    for g in _parse_only(only):
        if on_group:
            on_group(g)
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(f"mmsb.bench.{g}")
            for row in mod.run(quick=quick):
                rows.append(row)
                if on_row:
                    on_row(row)
        except Exception as exc:  # keep going: one broken group must not hide the others
            row = Row(g, "group failed", None, note=f"{type(exc).__name__}: {exc}",
                      extra={"traceback": traceback.format_exc()})
            rows.append(row)
            if on_row:
                on_row(row)
        if on_group:
            on_group(f"{g} done in {time.perf_counter() - t0:.1f} s")
    return rows


def _line(r: Row, quick: bool = False) -> str:
    met = "not judged (--quick)" if quick else {True: "met", False: "MISSED", None: "not judged"}[r.met]
    tgt = f"[{r.target}: {met}]" if r.target else ""
    base = f"{r.baseline_name}: {fmt_value(r.baseline, r.unit)}" if r.baseline_name else ""
    s = f"  {r.name}\n      mmsb {fmt_value(r.mmsb, r.unit)}"
    if base:
        s += f" | {base} | ratio {fmt_ratio(r.ratio)}"
    if tgt:
        s += f" {tgt}"
    if r.note:
        s += f"\n      ({r.note})"
    return s


def plot_rows(rows: Iterable[Row], path: str) -> None:
    """A horizontal bar chart of the ratios (log scale), targets marked; needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.ratio]
    if not rows:
        raise ValueError("no ratios to plot")
    def short(text: str, n: int) -> str:
        return text if len(text) <= n else text[: n - 1] + "…"

    labels = [f"{r.group}: {short(r.name, 55)}\nvs {short(r.baseline_name, 60)}" for r in rows]
    colors = ["tab:green" if r.met else ("tab:red" if r.met is False else "tab:gray") for r in rows]
    fig, ax = plt.subplots(figsize=(14, 0.42 * len(rows) + 1.5))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [r.ratio for r in rows], color=colors)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=6.5)
    for yi, r in zip(y, rows):
        ax.text(r.ratio, yi, f" {fmt_ratio(r.ratio)}", va="center", fontsize=6.5)
    ax.set_xlabel("baseline time / mmsb time (log scale; > 1: mmsb faster). green: target met, red: missed")
    ax.set_title("mmsb bench")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _missing_dependencies(rows: Iterable[Row]) -> list[str]:
    """The reasons of every skipped baseline and failed group, once each (e.g. a missing optional dependency)."""
    seen: list[str] = []
    for r in rows:
        why = r.note[len("baseline skipped: "):] if r.note.startswith("baseline skipped: ") else (
            r.note if r.name == "group failed" and "Import" in r.note.split(":")[0] else "")
        if why and why not in seen:
            seen.append(why)
    return seen


def main(quick: bool = False, as_json: bool = False, plot: Optional[str] = None,
         only: Union[str, Sequence[str], None] = None) -> int:
    """The ``mmsb bench`` command. Returns the exit code: 0, or 1 when a group failed, 2 on bad arguments.

    A full run judges each row against its target; ``quick=True`` prints the ratios and judges none. The
    machine's load before and after is printed next to the table (and is in the JSON as ``load``).
    """
    try:
        groups = _parse_only(only)
    except ValueError as exc:
        print(f"mmsb bench: {exc}", file=sys.stderr)
        return 2
    env = environment()
    load_before = machine_load()
    if not as_json:
        print(f"mmsb bench{' --quick' if quick else ''}: {', '.join(groups)}")
        print("  " + ", ".join(f"{k}={v}" for k, v in env.items()))
        print("  ratio = baseline / mmsb (> 1: mmsb faster or smaller)")
        if quick:
            print("  --quick: reduced sizes; ratios are printed, targets are NOT judged (run without --quick)")
        print("  before: " + fmt_load(load_before))

    def on_group(g: str) -> None:
        if not as_json:
            print(f"[{g}]" if " done" not in g else f"  -- {g}", flush=True)

    def on_row(r: Row) -> None:
        if not as_json:
            print(_line(r, quick), flush=True)

    rows = run(quick=quick, only=groups, on_row=on_row, on_group=on_group)
    load_after = machine_load()
    if quick:
        for r in rows:
            r.met = None
    failed = [r for r in rows if r.name == "group failed"]
    missing = _missing_dependencies(rows)
    if as_json:
        json.dump({"quick": quick, "judged": not quick, "environment": env,
                   "load": {"before": load_before, "after": load_after}, "missing": missing,
                   "rows": [r.as_dict() for r in rows]}, sys.stdout, indent=1, default=str, allow_nan=False)
        sys.stdout.write("\n")
    else:
        if quick:
            print(f"targets: not judged (--quick); {sum(1 for r in rows if r.target)} rows have a target")
        else:
            judged = [r for r in rows if r.met is not None]
            print(f"targets met: {sum(bool(r.met) for r in judged)} of {len(judged)} judged")
        for why in missing:
            print(f"not measured: {why}")
        print("after: " + fmt_load(load_after))
        for r in failed:
            print(f"group {r.group} failed: {r.note}", file=sys.stderr)
    if plot:
        try:
            plot_rows(rows, plot)
            if not as_json:
                print(f"plot written to {plot}")
        except Exception as exc:
            print(f"mmsb bench: cannot plot ({type(exc).__name__}: {exc})", file=sys.stderr)
            return 1
    return 1 if failed else 0

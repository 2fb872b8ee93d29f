"""Batch analytics on a cluster: apply a file of deltas to a store, or replay a store's log into a new one.

``run_batch(store, deltas=FILE.npz, scheduler=ADDRESS)`` opens ``store`` with ``cluster=`` so that every
propagation wave runs on the cluster, commits the deltas (grouped into commits as the file says) and prints the
dashboard address and a progress bar. ``run_batch(new_store, replay=OLD_STORE, ...)`` re-executes OLD_STORE's
history (schema and user deltas; derived deltas are recomputed on the cluster) and checks the result.

The deltas file is an ``.npz`` (no pickle): ``pages`` a unicode array with one page name per delta;
``values_K`` and optional ``index_K`` (int) for delta K (no index: the whole page); optional ``accumulate``
(bool, one per delta) and ``commit`` (int, one per delta: consecutive deltas with the same number form one
commit; default: one commit per delta). :func:`save_deltas` writes one.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, Iterable, Optional, TextIO

import numpy as np

from mmsb.progress import progress as _progress


def save_deltas(path: str, deltas: Iterable[dict]) -> None:
    """Write ``[{"page", "values", "index"?, "accumulate"?, "commit"?}, ...]`` in the batch ``.npz`` format."""
    arrays: dict[str, np.ndarray] = {}
    pages, acc, commit = [], [], []
    for k, d in enumerate(deltas):
        pages.append(str(d["page"]))
        arrays[f"values_{k}"] = np.asarray(d["values"])
        if d.get("index") is not None:
            arrays[f"index_{k}"] = np.asarray(d["index"], dtype=np.int64)
        acc.append(bool(d.get("accumulate", False)))
        commit.append(int(d.get("commit", k)))
    np.savez(path, pages=np.array(pages, dtype=str), accumulate=np.array(acc, dtype=bool),
             commit=np.array(commit, dtype=np.int64), **arrays)


def load_deltas(source: Any) -> list[list[dict]]:
    """The deltas of a batch file (path or mapping of arrays) grouped into commits."""
    if isinstance(source, (str, os.PathLike)):
        with np.load(os.fspath(source), allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    elif isinstance(source, dict):
        data = dict(source)
    else:  # a list of delta dicts
        items = list(source)
        return _group([dict(d, commit=d.get("commit", k)) for k, d in enumerate(items)])
    if "pages" not in data:
        raise ValueError("deltas file has no 'pages' array (see mmsb.dask.batch for the format)")
    pages = [str(p) for p in np.asarray(data["pages"]).reshape(-1)]
    n = len(pages)
    acc = np.asarray(data.get("accumulate", np.zeros(n, bool)), dtype=bool).reshape(-1)
    commit = np.asarray(data.get("commit", np.arange(n)), dtype=np.int64).reshape(-1)
    if acc.size != n or commit.size != n:
        raise ValueError("deltas file: 'accumulate' and 'commit' need one entry per page name")
    out = []
    for k in range(n):
        if f"values_{k}" not in data:
            raise ValueError(f"deltas file: delta {k} ({pages[k]!r}) has no 'values_{k}'")
        out.append({"page": pages[k], "values": data[f"values_{k}"], "index": data.get(f"index_{k}"),
                    "accumulate": bool(acc[k]), "commit": int(commit[k])})
    return _group(out)


def _group(deltas: list[dict]) -> list[list[dict]]:
    groups: list[list[dict]] = []
    for d in deltas:
        if groups and groups[-1][0]["commit"] == d["commit"]:
            groups[-1].append(d)
        else:
            groups.append([d])
    return groups


class _Matrix:
    def __init__(self, shape: Any, indptr: Any, indices: Any, data: Any):
        self.shape, self.indptr, self.indices, self.data = tuple(shape), indptr, indices, data


def _replay_ops(src: Any) -> Iterable[tuple]:
    """(epoch, schema ops, user deltas) of every committed transaction of a store, oldest first."""
    first = True
    for txn in src._log.txns():
        if first and txn.epoch > 1:
            from mmsb.errors import HistoryError

            raise HistoryError(f"the store's log starts at epoch {txn.epoch} (compacted); replay needs the whole "
                               "history")
        first = False
        yield txn


def _apply_txn(buf: Any, txn: Any, rules: dict) -> None:
    from mmsb.delta import Delta

    data = []
    for op in txn.ops:
        if isinstance(op, Delta):
            if not op.derived:
                data.append(op)
            continue
        pl = op.payload
        if op.kind == "page_created":
            buf.create_page(pl["name"], tuple(pl["shape"]), dtype=pl["dtype"], semiring=pl["semiring"],
                            fill=op.arrays["fill"][0], metadata=pl.get("metadata"))
        elif op.kind == "page_dropped":
            buf.drop_page(pl["name"], cascade=True)
        elif op.kind == "rule_added":
            m = _Matrix(pl["shape"], op.arrays["indptr"], op.arrays["indices"], op.arrays["data"]) \
                if "shape" in pl else None
            if pl["kind"] == "link":
                buf.link(pl["dst"], pl["srcs"][0], m, semiring=pl["semiring"])
            elif pl["kind"] == "closure":
                buf.closure(pl["dst"], pl["srcs"][0], m, semiring=pl["semiring"])
            else:
                buf.derive(pl["dst"], pl["srcs"], pl["function"])
            rules[pl["id"]] = (pl["dst"], pl["srcs"])
        elif op.kind == "rule_removed":
            dst, srcs = rules.pop(pl["id"], (pl["dst"], None))
            if pl["dst"] in buf and buf.graph.is_derived(pl["dst"]):
                buf.unlink(dst, srcs[0] if srcs and len(buf.graph.rules_into(dst)) > 1 else None)
    if data:
        with buf.batch():
            for d in data:
                idx, vals = d.sparse()
                buf.write(d.page, vals, index=idx, accumulate=d.accumulate, source=d.source,
                          metadata=d.metadata or None)


def run_batch(store_path: Optional[str], deltas: Any = None, scheduler: Any = None, *, replay: Optional[str] = None,
              mode: str = "a", functions: Optional[dict[str, Callable]] = None, durability: str = "flush",
              n_workers: Optional[int] = None, show_progress: bool = True, out: Optional[TextIO] = None,
              check: bool = True) -> dict:
    """Apply ``deltas`` to the store at ``store_path`` (None: in memory), or replay the store ``replay`` into it,
    with propagation on the cluster ``scheduler`` (an address, a ``distributed.Client``, or None to start a
    LocalCluster here with ``n_workers`` single-threaded worker processes).

    Prints the dashboard address and a progress bar (stderr). Returns ``{"epoch", "commits", "seconds",
    "dashboard", "workers", "mismatches", "cluster"}``; ``mismatches`` (replay with ``check``) lists the pages
    whose replayed state differs from the source.
    """
    import distributed

    import mmsb
    from mmsb.dask import connect

    if (deltas is None) == (replay is None):
        raise ValueError("give exactly one of deltas= or replay=")
    out = out if out is not None else sys.stdout
    cluster = None
    if scheduler is None:
        cluster = distributed.LocalCluster(n_workers=n_workers or max(1, min(4, os.cpu_count() or 1)),
                                           threads_per_worker=1, processes=True, host="127.0.0.1",
                                           dashboard_address=":0")
        scheduler = cluster.scheduler_address
    client, owned = connect(scheduler)
    try:
        link = getattr(client, "dashboard_link", None)
        workers = sorted(client.scheduler_info().get("workers", {}))
        print(f"mmsb batch: scheduler {client.scheduler.address}, {len(workers)} workers, dashboard "
              f"{link or '(none)'}", file=out, flush=True)
        t0 = time.perf_counter()
        commits = 0
        mismatches: list[str] = []
        src = None
        if replay is not None:
            if store_path is not None and os.path.abspath(store_path) == os.path.abspath(replay):
                raise ValueError("replay into the same store: give a new store path")
            src = mmsb.open(replay, mode="r", functions=functions)
        with mmsb.open(store_path, mode=mode, durability=durability, cluster=client, functions=functions) as buf:
            if replay is not None:
                txns = list(_replay_ops(src))
                rules: dict = {}
                for txn in (_progress(txns, desc="replay") if show_progress else txns):
                    _apply_txn(buf, txn, rules)
                    commits += 1
                if check:
                    for name in src:
                        if name not in buf or not np.array_equal(src[name].read(), buf[name].read(),
                                                                  equal_nan=src[name].dtype.kind == "f"):
                            mismatches.append(name)
            else:
                groups = load_deltas(deltas)
                for group in (_progress(groups, desc="commits") if show_progress else groups):
                    if len(group) == 1:
                        d = group[0]
                        buf.write(d["page"], d["values"], index=d["index"], accumulate=d["accumulate"],
                                  source="mmsb-batch")
                    else:
                        with buf.batch():
                            for d in group:
                                buf.write(d["page"], d["values"], index=d["index"], accumulate=d["accumulate"],
                                          source="mmsb-batch")
                    commits += 1
            stats = buf.stats().get("cluster", {})
            epoch = buf.epoch
        if src is not None:
            src.close()
        secs = time.perf_counter() - t0
        print(f"mmsb batch: {commits} commits in {secs:.2f} s, epoch {epoch}, {stats.get('tasks', 0)} tasks"
              + (f", {len(mismatches)} pages differ: {mismatches}" if mismatches else ""), file=out, flush=True)
        return {"epoch": epoch, "commits": commits, "seconds": secs, "dashboard": link, "workers": workers,
                "mismatches": mismatches, "cluster": stats}
    finally:
        if owned:
            client.close()
        if cluster is not None:
            cluster.close()


def _cli(args: argparse.Namespace) -> int:
    from mmsb.errors import MMSBError

    try:
        functions = _functions(args.function)
        res = run_batch(args.store, deltas=args.deltas, scheduler=args.scheduler, replay=args.replay,
                        durability=args.durability, n_workers=args.workers, show_progress=not args.no_progress,
                        functions=functions or None)
    except (MMSBError, OSError, ValueError, ImportError, AttributeError) as exc:
        print(f"mmsb batch: error: {exc}", file=sys.stderr)
        return 1
    return 1 if res["mismatches"] else 0


def _functions(specs: list) -> dict:
    import importlib

    out = {}
    for spec in specs:
        name, _, target = spec.rpartition("=")
        mod, _, attr = target.partition(":")
        if not mod or not attr:
            raise ValueError(f"--function {spec!r}: expected NAME=MODULE:ATTR")
        fn = importlib.import_module(mod)
        for part in attr.split("."):
            fn = getattr(fn, part)
        out[name or target] = fn
    return out


def main(argv: Optional[list] = None) -> int:
    """``python -m mmsb.dask.batch STORE ...`` (the same as ``mmsb batch``)."""
    from mmsb.cli import main as cli_main

    return cli_main(["batch", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``mmsb`` command line: demo, info, verify, log, replay, checkpoint, compact, bench, plugins, graph, batch."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np


def _version() -> str:
    import mmsb
    from mmsb import _kernels

    feats = _kernels.cpu.features()
    return (f"mmsb {mmsb.__version__} (kernels: {_kernels.KIND}; SIMD in use: {feats.get('simd_level', '?')}; "
            f"build: {','.join(feats.get('build', [])) or '-'}; machine: {_machine_best(feats)}; "
            f"numpy {np.__version__})")


def _machine_best(feats: dict) -> str:
    from mmsb import _kernels

    levels = getattr(_kernels.cpu, "LEVELS", ())
    return next((lv for lv in levels if lv in feats.get("machine", [])), "?")


def _log_ratio(buf) -> tuple[int, int]:
    """Raw bytes of every logged delta and schema array, and the log's bytes on disk."""
    raw = 0
    for txn in buf._log.txns():
        for op in txn.ops:
            arrays = [op.values, op.index, op.mask] if hasattr(op, "values") else list(op.arrays.values())
            raw += sum(np.asarray(a).nbytes for a in arrays if a is not None)
    return raw, buf.log.stats().get("bytes", 0)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def cmd_info(args: argparse.Namespace) -> int:
    import mmsb
    from mmsb import _kernels

    with mmsb.open(args.path, mode="r") as buf:
        st = buf.stats()
        log = st["log"]
        print(f"store       {os.path.abspath(args.path)}")
        print(f"epoch       {buf.epoch}")
        print(f"pages       {len(buf)}")
        print(f"log         {log.get('transactions', 0)} transactions, {log.get('records', 0)} records, "
              f"{_human(log.get('bytes', 0))} in {log.get('segments', 0)} segment(s)")
        raw, on_disk = _log_ratio(buf)
        print(f"compression {raw / on_disk if on_disk else 1.0:.2f}x (raw deltas {_human(raw)} -> log "
              f"{_human(on_disk)}, framing included)")
        print(f"checkpoints {st.get('store', {}).get('checkpoints', [])}")
        print(f"kernels     {_kernels.KIND}; SIMD in use {st['device']['cpu'].get('simd_level', '?')}, "
              f"machine {_machine_best(st['device']['cpu'])}")
        if len(buf):
            print()
            print(f"{'page':<24} {'shape':<14} {'dtype':<8} {'semiring':<12} {'epoch':>6} rule")
            for name, p in buf.items():
                rules = buf.graph.rules_into(name)
                rule = ", ".join(f"{r.kind}({', '.join(r.srcs)})" for r in rules)
                print(f"{name:<24} {str(p.shape):<14} {p.dtype.name:<8} {p.semiring.name:<12} {p.epoch:>6} {rule}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import mmsb

    report = mmsb.verify(args.path)
    if args.json:
        print(report.to_json())
    else:
        print(f"{'OK' if report.ok else 'FAILED'}: {args.path}")
        for p in report.problems:
            print(f"  problem: {p}")
    return 0 if report.ok else 1


def cmd_log(args: argparse.Namespace) -> int:
    import mmsb

    with mmsb.open(args.path, mode="r") as buf:
        n = 0
        for d in buf.log.query(page=args.page, since=args.since, until=args.until, source=args.source):
            if args.limit is not None and n >= args.limit:
                break
            n += 1
            op = "acc" if d.accumulate else "set"
            tag = " derived" if d.derived else ""
            src = f" source={d.source}" if d.source else ""
            print(f"epoch {d.epoch:>6}  {d.page:<20} {d.kind:<6} {op} nnz={d.nnz}{tag}{src}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import mmsb
    from mmsb.checkpoint import write_checkpoint, write_store_file

    with mmsb.open(args.path, mode="r") as buf:
        view = buf.at(args.epoch)
        epoch, pages, rules = view._snapshot()
    if os.path.exists(args.out) and os.listdir(args.out):
        print(f"mmsb replay: {args.out} exists and is not empty", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    write_store_file(args.out)
    write_checkpoint(args.out, epoch, pages, rules, extra={"replayed_from": os.path.abspath(args.path)})
    print(f"wrote the state at epoch {epoch} ({len(pages)} pages) to {args.out}")
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    import mmsb

    with mmsb.open(args.path, mode="a") as buf:
        print(f"checkpoint at epoch {buf.checkpoint()}")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    import mmsb

    with mmsb.open(args.path, mode="a") as buf:
        horizon = buf.compact(keep=args.keep)
        print(f"compacted: history kept from epoch {horizon} to {buf.epoch}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from mmsb import plugins, semirings

    names = semirings.names()
    print(f"{'semiring':<20} {'provider':<24} {'idempotent':<10} {'invertible':<10} gpu")
    for n in names:
        sr = semirings.get(n)
        gpu = "yes" if sr.cuda_add and sr.cuda_mul else "-"
        print(f"{n:<20} {sr.provider:<24} {str(sr.idempotent):<10} {str(sr.invertible):<10} {gpu}")
    for failure in plugins.failures():
        print(f"plugin failed: {failure}")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    import mmsb

    with mmsb.open(args.path, mode="r") as buf:
        print(buf.graph.to_dot() if args.dot else (buf.graph.to_text() or "(no rules)"), end="" if args.dot else "\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mmsb.demo import run_demo

    return run_demo(side=args.side, path=args.path, updates=args.updates, plot=args.plot, seed=args.seed)


def cmd_bench(args: argparse.Namespace) -> int:
    from mmsb.bench import main as bench_main

    return bench_main(quick=args.quick, as_json=args.json, plot=args.plot, only=args.only)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mmsb", description="mmsb: a paged, durable, semiring-algebraic state buffer")
    ap.add_argument("--version", action="version", version=_version())
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the main job: incremental shortest distances on a road-like grid")
    p.add_argument("--side", type=int, default=1000, help="grid side (vertices = side**2; default 1000)")
    p.add_argument("--updates", type=int, default=20, help="update transactions to stream")
    p.add_argument("--path", default=None, help="keep the store in this directory (default: a temporary one)")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="draw the distance field (needs matplotlib)")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("info", help="pages, epochs, log size, compression, checkpoints")
    p.add_argument("path")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("verify", help="check every checksum of a store (exit 1 on a problem)")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_verify)

    p = sub.add_parser("log", help="list committed deltas")
    p.add_argument("path")
    p.add_argument("--page")
    p.add_argument("--since", type=int)
    p.add_argument("--until", type=int)
    p.add_argument("--source")
    p.add_argument("--limit", type=int)
    p.set_defaults(fn=cmd_log)

    p = sub.add_parser("replay", help="write the state at an epoch as a new store")
    p.add_argument("path")
    p.add_argument("--epoch", type=int, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("checkpoint", help="write a checkpoint at the current epoch")
    p.add_argument("path")
    p.set_defaults(fn=cmd_checkpoint)

    p = sub.add_parser("compact", help="checkpoint and drop old log segments")
    p.add_argument("path")
    p.add_argument("--keep", type=int, default=0, help="epochs of history to keep before now")
    p.set_defaults(fn=cmd_compact)

    p = sub.add_parser("bench", help="mmsb against numpy, scipy, GraphBLAS, SQLite, side by side")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", default=None, metavar="FILE.png")
    p.add_argument("--only", default=None, help="comma-separated groups to run")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("plugins", help="semirings and the plugins that provide them")
    p.set_defaults(fn=cmd_plugins)

    p = sub.add_parser("graph", help="print the rule DAG of a store")
    p.add_argument("path")
    p.add_argument("--dot", action="store_true", help="Graphviz text")
    p.set_defaults(fn=cmd_graph)

    p = sub.add_parser("batch", help="apply deltas (or replay a store's log) with propagation on a Dask cluster")
    p.add_argument("store", help="store directory to write (created if missing)")
    p.add_argument("--scheduler", default=None,
                   help="Dask scheduler address (tcp://host:8786); default: a LocalCluster started here")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--deltas", help="an .npz file of deltas (format: see mmsb.dask.batch)")
    src.add_argument("--replay", metavar="SRC_STORE", help="replay SRC_STORE's log into STORE on the cluster")
    p.add_argument("--workers", type=int, default=None, help="workers of the local cluster (no --scheduler)")
    p.add_argument("--durability", default="flush", choices=("fsync", "flush", "none"))
    p.add_argument("--function", action="append", default=[], metavar="NAME=MODULE:ATTR",
                   help="bind derive function NAME to MODULE:ATTR (repeatable; NAME= may be omitted)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_batch)
    return ap


def cmd_batch(args: argparse.Namespace) -> int:
    try:
        from mmsb.dask.batch import _cli
    except ImportError as exc:
        print(f"mmsb batch: needs the dask extra (pip install 'mmsb[dask]'): {exc}", file=sys.stderr)
        return 2
    return _cli(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from mmsb.errors import MMSBError

    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (MMSBError, FileNotFoundError, FileExistsError) as exc:
        print(f"mmsb {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``mmsb`` command line: demo, info, stats, verify, log, replay, checkpoint, compact, bench, plugins, graph,
batch.

Every error is one line on stderr, ``mmsb COMMAND: error: WHAT``, and the exit status says what kind of error it
was (see :data:`EXIT_CODES`; ``mmsb --help`` lists them too).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any, Callable, Optional, Sequence

import numpy as np

#: Exit statuses of every ``mmsb`` command.
EXIT_CODES = {
    0: "success",
    1: "a check failed (verify found a problem, the demo or a batch disagreed with its reference)",
    2: "bad usage: an unknown option, a bad value, a missing page or epoch, or a refusal to overwrite",
    3: "the store: missing, already there, locked by a writer, corrupt, or refused the operation",
    4: "an optional dependency is missing (the message names the extra to install)",
    5: "an unexpected internal error (MMSB_TRACEBACK=1 shows the traceback)",
    130: "interrupted (Ctrl-C)",
}

USAGE, STORE, MISSING_DEP, INTERNAL = 2, 3, 4, 5

_EPILOG = "exit status:\n" + "\n".join(f"  {code:<4} {what}" for code, what in EXIT_CODES.items())


class CLIError(Exception):
    """An error the command line reports as one line with exit status ``code``."""

    def __init__(self, message: str, code: int = USAGE):
        super().__init__(message)
        self.code = code


# -- small helpers ----------------------------------------------------------------------------------------------
def simd_level() -> str:
    """The SIMD level the compiled kernels use (``mmsb._kernels.SIMD`` where it exists)."""
    from mmsb import _kernels

    return str(getattr(_kernels, "SIMD", _kernels.cpu.features().get("simd_level", "?")))


def _version() -> str:
    import mmsb
    from mmsb import _kernels

    feats = _kernels.cpu.features()
    return (f"mmsb {mmsb.__version__} (kernels: {_kernels.KIND}; SIMD in use: {simd_level()}; "
            f"build: {','.join(feats.get('build', [])) or '-'}; machine: {_machine_best(feats)}; "
            f"numpy {np.__version__})")


class _VersionAction(argparse.Action):
    """``--version`` printed as one line (argparse's own action re-wraps it to the terminal width)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def _machine_best(feats: dict) -> str:
    from mmsb import _kernels

    levels = getattr(_kernels.cpu, "LEVELS", ())
    return next((lv for lv in levels if lv in feats.get("machine", [])), "?")


def log_records(buf) -> tuple[int, int]:
    """``(transactions, records)`` of a buffer's log, by one definition used by demo, info and stats.

    A record is one framed record in a log segment: one per delta or schema operation, one COMMIT per
    transaction, and one per checkpoint mark -- the records ``mmsb verify`` checks.
    """
    txns = records = 0
    for txn in buf._log.txns():
        txns += 1
        records += len(txn.ops) + 1
    return txns, records + int(buf.log.stats().get("checkpoint_marks", 0))


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


def _open(args: argparse.Namespace, mode: str = "r"):
    """Open the store named by ``args.path`` (never creates one)."""
    import mmsb

    if not os.path.exists(args.path):
        raise CLIError(f"no store at {args.path}", STORE)
    return mmsb.open(args.path, mode=mode, recovery=getattr(args, "recovery", "strict"))


# -- commands ---------------------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from mmsb import _kernels

    with _open(args) as buf:
        st = buf.stats()
        log = st["log"]
        txns, records = log_records(buf)
        print(f"store       {os.path.abspath(args.path)}")
        print(f"epoch       {buf.epoch}")
        print(f"pages       {len(buf)}")
        print(f"log         {txns} transactions, {records} records, "
              f"{_human(log.get('bytes', 0))} in {log.get('segments', 0)} segment(s)")
        raw, on_disk = _log_ratio(buf)
        print(f"compression {raw / on_disk if on_disk else 1.0:.2f}x (raw deltas {_human(raw)} -> log "
              f"{_human(on_disk)}, framing included)")
        print(f"checkpoints {st.get('store', {}).get('checkpoints', [])}")
        print(f"kernels     {_kernels.KIND}; SIMD in use {simd_level()}, "
              f"machine {_machine_best(st['device']['cpu'])}")
        if len(buf):
            print()
            print(f"{'page':<24} {'shape':<14} {'dtype':<8} {'semiring':<12} {'epoch':>6} rule")
            for name, p in buf.items():
                rules = buf.graph.rules_into(name)
                rule = ", ".join(f"{r.kind}({', '.join(r.srcs)})" for r in rules)
                print(f"{name:<24} {str(p.shape):<14} {p.dtype.name:<8} {p.semiring.name:<12} {p.epoch:>6} {rule}")
    return 0


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) or "-"
    return "-" if v is None or isinstance(v, dict) else str(v)


def _table(d: dict, indent: int) -> list[str]:
    """A dict of dicts with the same keys (e.g. the allocator's size classes) as one table."""
    cols = list(next(iter(d.values())))
    rows = [[str(k)] + [_cell(v.get(c)) for c in cols] for k, v in d.items()]
    widths = [max(len(r[i]) for r in rows + [[""] + cols]) for i in range(len(cols) + 1)]
    head = " " * indent + " ".join(f"{c:>{w}}" for c, w in zip([""] + cols, widths))
    return [head] + [" " * indent + " ".join(f"{c:>{w}}" for c, w in zip(r, widths)) for r in rows]


def _pretty(d: dict, indent: int = 0) -> list[str]:
    """A nested dict as indented ``key  value`` lines."""
    lines = []
    width = max((len(str(k)) for k in d), default=0)
    for k, v in d.items():
        subs = list(v.values()) if isinstance(v, dict) else []
        if subs and all(isinstance(s, dict) and s.keys() == subs[0].keys() and s for s in subs) and len(subs) > 1:
            lines.append(f"{' ' * indent}{k}")
            lines.extend(_table(v, indent + 2))
        elif isinstance(v, dict) and v:
            lines.append(f"{' ' * indent}{k}")
            lines.extend(_pretty(v, indent + 2))
        else:
            lines.append(f"{' ' * indent}{str(k):<{width}}  {_cell(v)}")
    return lines


def cmd_stats(args: argparse.Namespace) -> int:
    with _open(args) as buf:
        st = buf.stats()
        txns, records = log_records(buf)
        st["log"] = dict(st.get("log", {}), transactions=txns, records=records)
    if args.json:
        print(json.dumps(st, indent=2, default=str))
    else:
        print("\n".join(_pretty(st)))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import mmsb

    if not os.path.exists(args.path):
        raise CLIError(f"no store at {args.path}", STORE)
    report = mmsb.verify(args.path)
    if args.json:
        print(report.to_json())
    else:
        print(f"{'OK' if report.ok else 'FAILED'}: {args.path}")
        for p in report.problems:
            print(f"  problem: {p}")
    return 0 if report.ok else 1


def cmd_log(args: argparse.Namespace) -> int:
    with _open(args) as buf:
        if args.page is not None and args.page not in buf:
            raise CLIError(f"no page {args.page!r} in {args.path} (pages: {', '.join(buf) or 'none'})")
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
    from mmsb.checkpoint import write_checkpoint
    from mmsb.errors import HistoryError
    from mmsb.identity import write_store_file

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out {args.out} is a file; give a new directory")
    if os.path.isdir(args.out) and os.listdir(args.out):
        raise CLIError(f"--out {args.out} exists and is not empty; give a new directory")
    with _open(args) as buf:
        if not 0 <= args.epoch <= buf.epoch:
            raise CLIError(f"--epoch {args.epoch} is not in the store's history (0 to {buf.epoch})")
        try:
            view = buf.at(args.epoch)
        except HistoryError as exc:
            raise CLIError(f"--epoch {args.epoch}: {exc}") from exc
        epoch, pages, rules = view._snapshot()
    os.makedirs(args.out, exist_ok=True)
    write_store_file(args.out)
    write_checkpoint(args.out, epoch, pages, rules, extra={"replayed_from": os.path.abspath(args.path)})
    count = len(pages) + sum(1 for op in rules if op.kind == "matrix_created")
    print(f"wrote the state at epoch {epoch} ({count} pages) to {args.out}")
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    with _open(args, mode="r+") as buf:
        print(f"checkpoint at epoch {buf.checkpoint()}")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    with _open(args, mode="r+") as buf:
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
    with _open(args) as buf:
        print(buf.graph.to_dot() if args.dot else (buf.graph.to_text() or "(no rules)"), end="" if args.dot else "\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mmsb.demo import run_demo

    if args.path is not None and os.path.exists(args.path):
        if not os.path.isdir(args.path):
            raise CLIError(f"--path {args.path} is a file; give a directory for the demo's store")
        if os.listdir(args.path) and not args.force:
            raise CLIError(f"--path {args.path} exists and is not empty; the demo would overwrite it "
                           f"(add --force to replace it)")
    return run_demo(side=args.side, path=args.path, updates=args.updates, plot=args.plot, seed=args.seed)


def cmd_bench(args: argparse.Namespace) -> int:
    from mmsb.bench import main as bench_main

    return bench_main(quick=args.quick, as_json=args.json, plot=args.plot, only=args.only)


def _load_batch_deltas(path: str) -> dict:
    """The arrays of a ``--deltas`` file, checked before any cluster starts or store is created."""
    import zipfile

    from mmsb.dask.batch import load_deltas

    if not os.path.isfile(path):
        raise CLIError(f"--deltas {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise CLIError(f"--deltas {path}: a single array, not an .npz archive of deltas "
                               f"(format: see mmsb.dask.batch)")
            data = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CLIError(f"--deltas {path}: not an .npz archive of numeric arrays (format: see mmsb.dask.batch)") \
            from exc
    try:
        load_deltas(dict(data))
    except (ValueError, TypeError, KeyError) as exc:
        raise CLIError(f"--deltas {path}: {exc}") from exc
    return data


def cmd_batch(args: argparse.Namespace) -> int:
    try:
        import distributed  # noqa: F401

        from mmsb.dask.batch import _cli
    except ImportError as exc:
        raise CLIError(f"needs the dask extra (pip install 'mmsb[dask]'): {exc}", MISSING_DEP) from exc
    if args.deltas is not None:
        args.deltas = _load_batch_deltas(args.deltas)
    elif not os.path.exists(args.replay):
        raise CLIError(f"--replay {args.replay}: no store there", STORE)
    return _cli(args)


# -- argument types ---------------------------------------------------------------------------------------------
def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {low}")
        return value

    parse.__name__ = "integer"
    return parse


positive_int = _int_at_least(1)
count_int = _int_at_least(0)


def _path_arg(p: argparse.ArgumentParser, what: str = "the store directory") -> None:
    p.add_argument("path", help=what)


def _recovery_arg(p: argparse.ArgumentParser) -> None:
    from mmsb.log.durable import RECOVERY

    p.add_argument("--recovery", choices=RECOVERY, default="strict",
                   help="strict (default): refuse a store whose log is corrupt; truncate: open it at the last "
                        "good committed transaction (the store on disk is not changed by read-only commands)")


def build_parser() -> argparse.ArgumentParser:
    """The ``mmsb`` argument parser (also the source of every ``--help`` page)."""
    from mmsb.log.durable import DURABILITY

    fmt = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(prog="mmsb", description="mmsb: a paged, durable, semiring-algebraic state buffer",
                                 epilog=_EPILOG, formatter_class=fmt)
    ap.add_argument("--version", action=_VersionAction, help="print mmsb's version, kernels and SIMD level")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description or help[:1].upper() + help[1:] + ".",
                              epilog=_EPILOG, formatter_class=fmt)

    p = command("demo", "the main job: incremental shortest distances on a road-like grid",
                "Facility distances on a side x side grid, kept current incrementally in a durable store; checks "
                "every result against scipy / numpy references.")
    p.add_argument("--side", type=positive_int, default=1000, help="grid side, >= 1 (vertices = side**2; default 1000)")
    p.add_argument("--updates", type=count_int, default=20,
                   help="update transactions to stream, >= 0 (default 20)")
    p.add_argument("--path", default=None, metavar="DIR",
                   help="keep the store in DIR (default: a temporary one, removed at the end)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --path DIR")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="draw the distance field (needs matplotlib)")
    p.add_argument("--seed", type=int, default=7, help="random seed of the grid and the updates (default 7)")
    p.set_defaults(fn=cmd_demo)

    p = command("info", "pages, epochs, log size, compression, checkpoints")
    _path_arg(p)
    _recovery_arg(p)
    p.set_defaults(fn=cmd_info)

    p = command("stats", "every figure of buf.stats(): allocator, log, propagation, memory, device, store")
    _path_arg(p)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    _recovery_arg(p)
    p.set_defaults(fn=cmd_stats)

    p = command("verify", "check every checksum of a store (exit 1 on a problem)")
    _path_arg(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(fn=cmd_verify)

    p = command("log", "list committed deltas, one line each")
    _path_arg(p)
    p.add_argument("--page", metavar="NAME", help="only deltas of page NAME (an error if there is no such page)")
    p.add_argument("--since", type=count_int, metavar="EPOCH", help="only deltas at epochs >= EPOCH")
    p.add_argument("--until", type=count_int, metavar="EPOCH", help="only deltas at epochs <= EPOCH")
    p.add_argument("--source", metavar="TAG", help="only deltas written with source=TAG")
    p.add_argument("--limit", type=count_int, metavar="N", help="print at most N deltas")
    _recovery_arg(p)
    p.set_defaults(fn=cmd_log)

    p = command("replay", "write the state at an epoch as a new store")
    _path_arg(p, "the store to read")
    p.add_argument("--epoch", type=count_int, required=True, help="the epoch whose state to write")
    p.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) directory for the new store")
    _recovery_arg(p)
    p.set_defaults(fn=cmd_replay)

    p = command("checkpoint", "write a checkpoint at the current epoch (the store must exist)")
    _path_arg(p)
    _recovery_arg(p)
    p.set_defaults(fn=cmd_checkpoint)

    p = command("compact", "checkpoint and drop old log segments (the store must exist)")
    _path_arg(p)
    p.add_argument("--keep", type=count_int, default=0, metavar="N",
                   help="epochs of history to keep before now (default 0)")
    _recovery_arg(p)
    p.set_defaults(fn=cmd_compact)

    p = command("bench", "mmsb against numpy, scipy, GraphBLAS, SQLite, side by side")
    p.add_argument("--quick", action="store_true",
                   help="reduced sizes: prints the ratios but judges no target")
    p.add_argument("--json", action="store_true", help="print the rows and the environment as JSON")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="draw the ratios (needs matplotlib)")
    p.add_argument("--only", default=None, metavar="GROUPS", help="comma-separated groups to run")
    p.set_defaults(fn=cmd_bench)

    p = command("plugins", "semirings and the plugins that provide them")
    p.set_defaults(fn=cmd_plugins)

    p = command("graph", "print the rule DAG of a store")
    _path_arg(p)
    p.add_argument("--dot", action="store_true", help="Graphviz text")
    _recovery_arg(p)
    p.set_defaults(fn=cmd_graph)

    p = command("batch", "apply deltas (or replay a store's log) with propagation on a Dask cluster")
    p.add_argument("store", help="store directory to write (created if missing)")
    p.add_argument("--scheduler", default=None,
                   help="Dask scheduler address (tcp://host:8786); default: a LocalCluster started here")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--deltas", help="an .npz file of deltas (format: see mmsb.dask.batch)")
    src.add_argument("--replay", metavar="SRC_STORE", help="replay SRC_STORE's log into STORE on the cluster")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="workers of the local cluster (no --scheduler)")
    p.add_argument("--durability", default="flush", choices=DURABILITY,
                   help="durability of the written store (default flush)")
    p.add_argument("--function", action="append", default=[], metavar="NAME=MODULE:ATTR",
                   help="bind derive function NAME to MODULE:ATTR (repeatable; NAME= may be omitted)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_batch)
    return ap


# -- entry point ------------------------------------------------------------------------------------------------
def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra:     # reported by the subcommand's parser, with its own usage line
        sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _error_code(exc: BaseException) -> Optional[int]:
    from mmsb.errors import HistoryError, MMSBError, PageNotFoundError

    if isinstance(exc, CLIError):
        return exc.code
    if isinstance(exc, (HistoryError, PageNotFoundError)):
        return USAGE
    if isinstance(exc, (MMSBError, OSError)):
        return STORE
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CLIError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return f"{type(exc).__name__}: {' '.join(text.split())}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (see :data:`EXIT_CODES`)."""
    args = _parse(argv)
    prefix = f"mmsb {args.command}"

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        print(f"{prefix}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show          # one line, never an internal file:line
        if args.command != "batch":          # no command but batch propagates: derive functions are not needed
            warnings.filterwarnings("ignore", message="derive rule for page", category=RuntimeWarning)
        try:
            return int(args.fn(args) or 0)
        except KeyboardInterrupt:
            print(f"{prefix}: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:      # one line per error; the exit status says which kind
            code = _error_code(exc)
            if code is None:
                if os.environ.get("MMSB_TRACEBACK") == "1":
                    raise
                code = INTERNAL
            print(f"{prefix}: error: {_describe(exc)}", file=sys.stderr)
            return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

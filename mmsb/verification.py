"""Read-only verification of a whole store: every file except LOCK is checked; nothing is modified or locked."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from mmsb import checkpoint as C
from mmsb.errors import CorruptionError
from mmsb.identity import read_store_file
from mmsb.layout import (CKPT_DIR, LOCK_FILE, LOG_DIR, MANIFEST_FILE, SPILL_DIR, STORE_FILE, is_temp_name,
                         parse_checkpoint_name)
from mmsb.log import scan_store_log
from mmsb.log.segment import iter_segments, parse_segment_name
from mmsb.manifest import read_manifest, reconcile
from mmsb.spill import check_spill_file


@dataclass
class Report:
    ok: bool = True
    problems: list = field(default_factory=list)
    files_checked: int = 0
    records_checked: int = 0
    checkpoints: list = field(default_factory=list)   # epochs of the checkpoints that verified
    torn_tail: bool = False
    transactions_checked: int = 0
    notes: list = field(default_factory=list)          # benign findings (crash leftovers, zero padding)
    path: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def __bool__(self) -> bool:
        return self.ok


def _segment_has_records(path: str) -> bool:
    from mmsb.store import _segment_has_records as has

    return has(path)


def _seed_pages(root: str, segs: list, listed) -> "dict | None":
    """The pages (name -> (size, dtype)) that exist before the first logged epoch: none when the log starts at
    epoch 1, else those of the checkpoint just before it (None: unknown, the fit of deltas is not checked)."""
    if not segs or segs[0][0] <= 1:
        return {}
    first = segs[0][0]
    cands = [e for e in (listed if listed is not None else C.list_checkpoints(root)) if e == first - 1]
    if not cands:
        return None
    try:
        snap = C.load_checkpoint(root, epoch=cands[0])
    except (CorruptionError, OSError):
        return None
    if snap is None:
        return None
    out = {m.get("name"): (int(a.size), a.dtype if m.get("device", "cpu") == "cpu" else None)
           for m, a in snap.pages}
    for op in snap.rules:
        if op.kind == "matrix_created":
            out[op.payload["name"]] = (op.payload["shape"][0] * op.payload["shape"][1],
                                       op.arrays["values"].dtype)
    return out


def _fits(table: dict, epoch: int, op) -> "str | None":
    """Track page creation/removal and check a delta against its page, as replay does (None when it fits)."""
    import numpy as np

    from mmsb.delta import Delta

    if not isinstance(op, Delta):
        if op.kind in ("page_created", "matrix_created"):
            shape = op.payload["shape"]
            size = 1
            for n in shape:
                size *= n
            table[op.payload["name"]] = (size, np.dtype(op.payload["dtype"]) if op.payload.get("device", "cpu") ==
                                         "cpu" else None)
        elif op.kind == "page_dropped":
            table.pop(op.payload.get("name"), None)
        return None
    ent = table.get(op.page)
    why = None
    if ent is None:
        why = "no such page"
    elif ent[1] is not None and op.values.dtype != ent[1]:
        why = f"values of dtype {op.values.dtype}, page has {ent[1]}"
    elif op.mask is not None:
        if op.mask.size != ent[0]:
            why = f"mask of {op.mask.size} entries, page has {ent[0]}"
        elif op.values.size != int(np.count_nonzero(op.mask)) and op.values.size != ent[0]:
            why = "value count does not match the mask"
    elif op.index is not None:
        if op.index.size != op.values.size:
            why = "value count does not match the index"
        elif op.index.size and (int(op.index.min()) < 0 or int(op.index.max()) >= ent[0]):
            why = f"index outside [0, {ent[0]})"
    else:
        why = "neither index nor mask"
    return None if why is None else f"the delta of epoch {epoch} to page {op.page!r} does not fit it ({why})"


def verify(path) -> Report:
    root = os.fspath(path)
    rep = Report(path=root)
    if not os.path.isdir(root):
        rep.ok = False
        rep.problems.append(f"{root}: not a store directory")
        return rep

    # STORE identity and MANIFEST
    store = os.path.join(root, STORE_FILE)
    info = None
    if os.path.exists(store):
        rep.files_checked += 1
        try:
            info = read_store_file(root)
        except CorruptionError as exc:
            rep.problems.append(f"STORE: {exc}")
    else:
        rep.problems.append("STORE: missing store identity file")
    manifest = None
    if info is not None and info.get("version", 1) >= 2:
        rep.files_checked += 1
        try:
            manifest = read_manifest(root)
        except FileNotFoundError:
            rep.problems.append("MANIFEST: missing (the store's list of segments and checkpoints)")
        except CorruptionError as exc:
            rep.problems.append(f"MANIFEST: {exc}")
    segs = iter_segments(os.path.join(root, LOG_DIR))
    ckpt_files = [(e, C.checkpoint_path(root, e)) for e in C.list_checkpoints(root)]
    leftovers: set = set()
    salts = None
    gaps: tuple = ()
    listed_ckpts = None
    if manifest is not None:
        rec = reconcile(root, manifest, segs, ckpt_files, segment_has_records=_segment_has_records,
                        checkpoint_store_id=C.checkpoint_store_id, checkpoint_digest=C.checkpoint_digest)
        rep.problems.extend(f"{exc.file or root}: {exc}" for exc in rec.problems)
        for path in rec.leftovers:
            rep.notes.append(f"{os.path.relpath(path, root)}: left by an interrupted roll, checkpoint or "
                             "compaction (removed by the next writer)")
        leftovers = set(rec.leftovers)
        segs = [(b, p) for b, p, _ in rec.segments]
        salts = dict(manifest.segments)
        gaps = tuple(manifest.gaps)
        listed_ckpts = rec.checkpoints

    # log segments (the validator open uses), and every delta against the page it names (as replay checks it)
    table = _seed_pages(root, segs, listed_ckpts) if not gaps else None   # (history with a gap: not tracked)
    infos = scan_store_log(root, segments=segs, salts=salts, gaps=gaps, contiguous=manifest is not None,
                           on_op=(lambda e, op: _fits(table, e, op)) if table is not None else None)
    for info_ in infos:
        rep.files_checked += 1
        rep.records_checked += info_["records"]
        rep.transactions_checked += info_["transactions"]
        rep.problems.extend(info_["problems"])
        rep.torn_tail |= info_["torn"]
        if info_["trailing_zero_bytes"]:
            rep.notes.append(f"{info_['path']}: {info_['trailing_zero_bytes']} zero bytes after the last record")
    firsts = [i["first_epoch"] for i in infos if i["first_epoch"] is not None]
    lasts = [i["last_epoch"] for i in infos if i["last_epoch"] is not None]
    log_first = segs[0][0] if segs else None
    log_end = max(lasts + ([segs[-1][0] - 1] if segs else []), default=0)
    ck_valid = []

    # every other file
    known_dirs = {LOG_DIR, CKPT_DIR, SPILL_DIR}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        top = rel.split(os.sep)[0]
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            relf = os.path.relpath(full, root)
            if rel == ".":
                if name in (LOCK_FILE, STORE_FILE) or (name == MANIFEST_FILE and manifest is not None):
                    continue
                if is_temp_name(name):
                    rep.notes.append(f"{relf}: temporary file left by an interrupted write")
                    continue
                rep.problems.append(f"{relf}: unknown file")
                continue
            if top not in known_dirs or rel != top:
                rep.problems.append(f"{relf}: unknown file")
                continue
            if top == LOG_DIR:
                if parse_segment_name(name) is None and not is_temp_name(name):
                    rep.problems.append(f"{relf}: unknown file")
                continue
            if is_temp_name(name):
                rep.notes.append(f"{relf}: temporary file left by an interrupted write")
                continue
            if top == CKPT_DIR:
                ep = parse_checkpoint_name(name)
                if ep is None:
                    rep.problems.append(f"{relf}: unknown file")
                    continue
                if full in leftovers:
                    continue
                rep.files_checked += 1
                try:
                    summ = C.verify_checkpoint(full)
                    if summ["epoch"] != ep:
                        rep.problems.append(f"{relf}: epoch {summ['epoch']} does not match its name")
                    else:
                        rep.checkpoints.append(ep)
                        ck_valid.append(ep)
                except CorruptionError as exc:
                    rep.problems.append(f"{relf}: {exc}")
                except OSError as exc:
                    rep.problems.append(f"{relf}: unreadable ({exc})")
                continue
            if top == SPILL_DIR:
                rep.files_checked += 1
                try:
                    check_spill_file(full)
                except CorruptionError as exc:
                    rep.problems.append(f"{relf}: {exc}")
                except OSError as exc:
                    rep.problems.append(f"{relf}: unreadable ({exc})")
        for dn in list(dirnames):
            if rel == "." and dn not in known_dirs:
                rep.problems.append(f"{dn}/: unknown directory")
                dirnames.remove(dn)
    # the history: every epoch from the first one that no checkpoint covers to the end is in the log
    ck_use = sorted(e for e in ck_valid if listed_ckpts is None or e in listed_ckpts)
    newest = ck_use[-1] if ck_use else 0
    if log_first is not None and not any(e >= log_first - 1 for e in [0] + ck_use) \
            and not any(a <= (min(ck_use, default=0) + 1) and log_first - 1 <= b for a, b in gaps):
        rep.problems.append(f"log: the history from epoch {min(ck_use, default=0) + 1} to {log_first - 1} is "
                            "missing")
    if manifest is not None and log_end < newest and not any(a <= log_end + 1 and newest <= b for a, b in gaps):
        rep.problems.append(f"log: ends at epoch {log_end}, before the checkpoint at {newest} (segments missing)")
    del firsts
    rep.checkpoints.sort()
    rep.ok = not rep.problems
    return rep


__all__ = ["Report", "verify"]

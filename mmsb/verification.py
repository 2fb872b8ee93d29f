"""Read-only verification of a whole store: every file except LOCK is checked; nothing is modified or locked."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from mmsb import checkpoint as C
from mmsb.errors import CorruptionError
from mmsb.log import scan_store_log
from mmsb.log.segment import parse_segment_name


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


def verify(path) -> Report:
    root = os.fspath(path)
    rep = Report(path=root)
    if not os.path.isdir(root):
        rep.ok = False
        rep.problems.append(f"{root}: not a store directory")
        return rep

    # STORE identity
    store = os.path.join(root, C.STORE_FILE)
    if os.path.exists(store):
        rep.files_checked += 1
        try:
            C.read_store_file(root)
        except CorruptionError as exc:
            rep.problems.append(f"STORE: {exc}")
    else:
        rep.problems.append("STORE: missing store identity file")

    # log segments
    for info in scan_store_log(root):
        rep.files_checked += 1
        rep.records_checked += info["records"]
        rep.transactions_checked += info["transactions"]
        rep.problems.extend(info["problems"])
        rep.torn_tail |= info["torn"]
        if info["trailing_zero_bytes"]:
            rep.notes.append(f"{info['path']}: {info['trailing_zero_bytes']} zero bytes after the last record")

    # every other file
    known_dirs = {"log", C.CKPT_DIR, "spill"}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        top = rel.split(os.sep)[0]
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            relf = os.path.relpath(full, root)
            if rel == ".":
                if name in ("LOCK", C.STORE_FILE):
                    continue
                if C.is_temp_name(name):
                    rep.notes.append(f"{relf}: temporary file left by an interrupted write")
                    continue
                rep.problems.append(f"{relf}: unknown file")
                continue
            if top not in known_dirs or rel != top:
                rep.problems.append(f"{relf}: unknown file")
                continue
            if top == "log":
                if parse_segment_name(name) is None:
                    rep.problems.append(f"{relf}: unknown file")
                continue
            if C.is_temp_name(name):
                rep.notes.append(f"{relf}: temporary file left by an interrupted write")
                continue
            if top == C.CKPT_DIR:
                ep = C.parse_checkpoint_name(name)
                if ep is None:
                    rep.problems.append(f"{relf}: unknown file")
                    continue
                rep.files_checked += 1
                try:
                    summ = C.verify_checkpoint(full)
                    if summ["epoch"] != ep:
                        rep.problems.append(f"{relf}: epoch {summ['epoch']} does not match its name")
                    else:
                        rep.checkpoints.append(ep)
                except CorruptionError as exc:
                    rep.problems.append(f"{relf}: {exc}")
                except OSError as exc:
                    rep.problems.append(f"{relf}: unreadable ({exc})")
                continue
            if top == "spill":
                rep.files_checked += 1
                try:
                    C.read_blob_file(full)
                except CorruptionError as exc:
                    rep.problems.append(f"{relf}: {exc}")
                except OSError as exc:
                    rep.problems.append(f"{relf}: unreadable ({exc})")
        for dn in list(dirnames):
            if rel == "." and dn not in known_dirs:
                rep.problems.append(f"{dn}/: unknown directory")
                dirnames.remove(dn)
    rep.checkpoints.sort()
    rep.ok = not rep.problems
    return rep


__all__ = ["Report", "verify"]

"""mmsb's transaction log: record framing (segment), payloads (records), the durable log and an in-memory twin.

``DurableLog(root, durability="fsync", segment_bytes=64 MiB, readonly=False, recovery="strict")`` and
``MemoryLog()`` share ``append / sync / txns / stats / close``. ``scan_store_log`` is used by :mod:`mmsb.verification`.
"""
from __future__ import annotations

from mmsb.log.durable import DurableLog, assemble, fsync_dir
from mmsb.log.memory import MemoryLog
from mmsb.log.records import ABORT, CHECKPOINT_MARK, COMMIT, DELTA, SCHEMA
from mmsb.log.segment import iter_segments, scan_segment


def scan_store_log(root: str) -> list[dict]:
    """Read-only check of every segment under root/log: one dict per segment with problems found.

    Keys: path, records, transactions, torn (bool), problems (list of str), trailing_zero_bytes.
    """
    import os

    out = []
    segs = iter_segments(os.path.join(root, "log"))
    last_epoch = 0
    for i, (base, path) in enumerate(segs):
        is_last = i == len(segs) - 1
        res = scan_segment(path)
        info = dict(path=path, records=len(res.records), transactions=0, torn=False, problems=[],
                    trailing_zero_bytes=0)
        if res.header is None:
            if is_last and res.torn:
                info["torn"] = True
                info["problems"].append(f"{path}: torn segment header (torn tail)")
            else:
                info["problems"].append(f"{path} @ 0: {res.error}")
            out.append(info)
            continue
        if res.header.base_epoch != base:
            info["problems"].append(f"{path} @ 32: segment header epoch {res.header.base_epoch} != name")
        for item in assemble(res.records, path):
            if item[0] == "error":
                info["problems"].append(f"{path} @ {item[1]}: {item[2]}")
                break
            if item[0] == "txn":
                if item[1] <= last_epoch:
                    info["problems"].append(f"{path} @ {item[4]}: epoch {item[1]} does not follow {last_epoch}")
                    break
                last_epoch = item[1]
                info["transactions"] += 1
                # decode every operation: the payloads must parse too
                from mmsb.log import records as R
                from mmsb.errors import CorruptionError
                for rec in item[3]:
                    try:
                        R.decode_op(rec.rtype, rec.payload, item[1])
                    except CorruptionError as exc:
                        info["problems"].append(f"{path} @ {rec.offset}: undecodable payload ({exc.what})")
        if res.error is not None:
            if is_last and res.torn:
                info["torn"] = True
                info["problems"].append(f"{path} @ {res.error_offset}: torn tail ({res.error})")
            else:
                info["problems"].append(f"{path} @ {res.error_offset}: {res.error}")
        elif res.clean_end < res.good_end:
            # valid records of a transaction that never committed (no COMMIT/ABORT after them)
            if is_last:
                info["torn"] = True
                info["problems"].append(f"{path} @ {res.clean_end}: torn tail (uncommitted transaction)")
            else:
                info["problems"].append(f"{path} @ {res.clean_end}: uncommitted records before a later segment")
        elif res.trailing_zero:
            info["trailing_zero_bytes"] = os.path.getsize(path) - res.good_end
        out.append(info)
    return out


__all__ = ["DurableLog", "MemoryLog", "scan_store_log", "scan_segment", "iter_segments", "assemble",
           "fsync_dir", "DELTA", "SCHEMA", "COMMIT", "ABORT", "CHECKPOINT_MARK"]

"""mmsb's transaction log: record framing (segment), payloads (records), the durable log and an in-memory twin.

``DurableLog(root, durability="fsync", segment_bytes=64 MiB, readonly=False, recovery="strict")`` and
``MemoryLog()`` share ``append / sync / txns / stats / close``. ``scan_store_log`` is used by :mod:`mmsb.verification`.
"""
from __future__ import annotations

from mmsb.layout import LOG_DIR
from mmsb.log.durable import DurableLog, fsync_dir
from mmsb.log.memory import MemoryLog
from mmsb.log.records import ABORT, CHECKPOINT_MARK, COMMIT, DELTA, SCHEMA
from mmsb.log.segment import assemble, check_segment, iter_segments, scan_segment


def scan_store_log(root: str, segments=None, salts=None, gaps=(), contiguous: bool = False,
                   on_op=None) -> list[dict]:
    """Read-only check of every segment under root/log (or of ``segments`` = [(base, path)]): one dict per
    segment with the problems found, through the same validator as open (:func:`check_segment`), plus a decode of
    every operation. ``salts`` ({base: salt} from the MANIFEST), ``gaps`` and ``contiguous`` as for
    :func:`check_segment`. ``on_op(epoch, op)`` sees every decoded operation in log order and returns a problem
    (str) or None.

    Keys: path, records, transactions, torn (bool), problems (list of str), trailing_zero_bytes, first_epoch,
    last_epoch, base.
    """
    import os

    from mmsb.errors import CorruptionError
    from mmsb.log import records as R
    from mmsb.log.segment import _in_gap, check_segment

    out = []
    segs = iter_segments(os.path.join(root, LOG_DIR)) if segments is None else list(segments)
    prev = None
    for i, (base, path) in enumerate(segs):
        is_last = i == len(segs) - 1
        chk = check_segment(path, base, prev, (salts or {}).get(base), gaps=gaps, contiguous=contiguous)
        info = dict(path=path, base=base, records=sum(len(t.records) + 1 for t in chk.txns) + len(chk.marks),
                    transactions=len(chk.txns), torn=False, problems=[], trailing_zero_bytes=chk.trailing_zero,
                    first_epoch=chk.txns[0].epoch if chk.txns else None, last_epoch=chk.last_epoch)
        for t in chk.txns:             # decode every operation: the payloads must parse too
            for rec in t.records:
                try:
                    op = R.decode_op(rec.rtype, rec.payload, t.epoch)
                except CorruptionError as exc:
                    info["problems"].append(f"{path} @ {rec.offset}: undecodable payload ({exc})")
                    continue
                why = on_op(t.epoch, op) if on_op is not None else None
                if why:
                    info["problems"].append(f"{path} @ {rec.offset}: {why}")
        if chk.error is not None:
            if is_last and chk.torn:
                info["torn"] = True
                info["problems"].append(f"{path} @ {chk.error[0]}: torn tail ({chk.error[1]})")
            else:
                info["problems"].append(f"{path} @ {chk.error[0]}: {chk.error[1]}")
        elif chk.dangling:
            if is_last:
                info["torn"] = True
                info["problems"].append(f"{path} @ {chk.good_end}: torn tail (uncommitted transaction)")
            else:
                info["problems"].append(f"{path} @ {chk.good_end}: uncommitted records before a later segment")
        if not is_last and contiguous and chk.error is None and chk.txns:
            nxt = segs[i + 1][0]
            if chk.last_epoch != nxt - 1 and not _in_gap(gaps, chk.last_epoch + 1, nxt - 1):
                info["problems"].append(f"{path}: ends at epoch {chk.last_epoch}, the next segment starts at {nxt}")
        if chk.txns:
            prev = chk.last_epoch
        elif contiguous:
            prev = base - 1
        out.append(info)
    return out


__all__ = ["DurableLog", "MemoryLog", "scan_store_log", "scan_segment", "iter_segments", "assemble", "check_segment",
           "fsync_dir", "DELTA", "SCHEMA", "COMMIT", "ABORT", "CHECKPOINT_MARK"]

"""Decoder entry points fed to the fuzzers (hypothesis in test_fuzz.py, atheris in fuzz_atheris.py).

Each target takes bytes and may only return or raise CorruptionError."""
import os
import struct
import tempfile

import numpy as np

from mmsb import checkpoint as C
from mmsb import codecs
from mmsb import identity as ID
from mmsb import spill as SP
from mmsb._ref import codecs as ref
from mmsb.log import records as R
from mmsb.log import segment as S

try:
    from mmsb._ext import codecs as ext
except ImportError:  # pragma: no cover
    ext = ref

SALT = bytes(range(16))
_TMP = tempfile.mkdtemp(prefix="mmsb-fuzz-")


def _n(data: bytes) -> tuple[int, bytes]:
    """A declared element count from the first two bytes (bounded like a checksummed header would)."""
    if len(data) < 2:
        return 0, data
    return struct.unpack_from("<H", data)[0] % 4096, data[2:]


def t_segment(data: bytes):
    S.scan_segment("fuzz.seg", data=data)           # never raises
    mv = memoryview(data)
    for pos in range(0, min(len(data), 64), 7):
        S.record_at(mv, pos, SALT)
    S.parse_header(data)


def t_records(data: bytes):
    rtype = R.DELTA if (data[:1] or b"\0")[0] % 2 == 0 else R.SCHEMA
    R.decode_op(rtype, data[1:], 1)


def t_codecs(data: bytes):
    n, body = _n(data[1:])
    sel = (data[:1] or b"\0")[0] % 9
    if sel == 0:
        codecs.decode_index(codecs.INDEX_DELTA_PACK, body, n)
    elif sel == 1:
        codecs.decode_mask(codecs.MASK_RLE, body, n)
    elif sel == 2:
        codecs.decode_mask(codecs.MASK_BITPACK, body, n)
    elif sel == 3:
        codecs.decode_values(codecs.BLOSC2, body, np.float64, n)
    elif sel == 4:
        codecs.decode_values(n % 6, body, "<i4", len(body) // 4)
    else:
        k = (ext, ref)[sel % 2]
        f = (k.decode_index, k.decode_mask_rle, k.decode_bitpack)[sel % 3]
        f(body, n)


def t_codecs_agree(data: bytes):
    """The compiled and numpy decoders accept and reject the same inputs and decode them identically."""
    n, body = _n(data)
    for name in ("decode_index", "decode_mask_rle", "decode_bitpack"):
        outs = []
        for k in (ext, ref):
            try:
                outs.append(np.asarray(getattr(k, name)(body, n)))
            except Exception as exc:  # noqa: BLE001 - compared below
                outs.append(type(exc))
        a, b = outs
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            assert np.array_equal(a, b), name
        else:
            assert a is b, (name, a, b)


def _as_file(data: bytes, name: str) -> str:
    path = os.path.join(_TMP, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def t_container(data: bytes):
    path = _as_file(data, f"{os.getpid()}.ckpt")
    (C.read_checkpoint_file(path) if (data[:1] or b"\0")[0] % 2 else SP.read_blob_file(path))


def t_store(data: bytes):
    d = os.path.join(_TMP, f"store{os.getpid()}")
    os.makedirs(d, exist_ok=True)
    _as_file(data, os.path.join(d, "STORE"))
    ID.read_store_file(d)


TARGETS = {"segment": t_segment, "records": t_records, "codecs": t_codecs, "codecs_agree": t_codecs_agree,
           "container": t_container, "store": t_store}

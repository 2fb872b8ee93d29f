"""``import mmsb`` stays cheap: heavy and optional dependencies load on first use, not at import (issue 19)."""
import json
import subprocess
import sys

HEAVY = ("blosc2", "httpx", "rich", "pydantic", "dask", "distributed", "cupy", "scipy", "matplotlib", "pluggy",
         "tqdm")


def _loaded_after(code: str) -> set:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=120, check=True)
    return {m.split(".")[0] for m in json.loads(out.stdout.splitlines()[-1])}


def test_import_mmsb_loads_no_heavy_or_optional_dependency():
    loaded = _loaded_after("import mmsb")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_lazy_names_still_work():
    loaded = _loaded_after("import mmsb\n"
                           "assert callable(mmsb.verify) and mmsb.Report.__name__ == 'Report'\n"
                           "assert callable(mmsb.testing.check_semiring)\n"
                           "assert mmsb.hookimpl is __import__('mmsb.plugins').plugins.hookimpl\n"
                           "from mmsb import verify, hookimpl, Report\n"
                           "assert set(mmsb.__all__) <= set(dir(mmsb))")
    assert "pluggy" in loaded


def test_blosc2_loads_when_a_codec_needs_it():
    code = ("import numpy as np, mmsb.codecs as c, sys\n"
            "assert 'blosc2' not in sys.modules\n"
            "a = np.zeros(1 << 16)\n"
            "cid, data = c.encode_values(a)\n"
            "assert cid == c.BLOSC2, cid\n"
            "assert (c.decode_values(cid, data, a.dtype, a.size) == a).all()")
    assert "blosc2" in _loaded_after(code)     # the codec round trip itself is asserted in the subprocess

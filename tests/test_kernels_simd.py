"""SIMD dispatch and thread policy of the compiled kernels (mmsb._kernels): every level built equals the twins."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mmsb import _kernels, _ops
from mmsb._ref import codecs as ref_codecs
from mmsb.errors import CorruptionError

LEVELS = _kernels.compiled_levels()
needs_ext = pytest.mark.skipif(not LEVELS, reason="compiled kernels not built (or MMSB_PUREPYTHON=1)")
LEVEL_IDS = sorted(LEVELS) or [pytest.param("none", marks=pytest.mark.skip(reason="compiled kernels not built"))]
FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code, **env):
    """Run code in a fresh interpreter with the worktree first on sys.path; returns its stdout and stderr."""
    full = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    full.pop("MMSB_PUREPYTHON", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout, out.stderr


@pytest.mark.parametrize("level", LEVEL_IDS)
@FAST
@given(st.lists(st.integers(0, 5000), max_size=300).map(lambda xs: np.array(sorted(xs), dtype=np.int64)))
def test_codecs_index_every_level_equals_twin(level, idx):
    ext = LEVELS[level].codecs
    enc = ext.encode_index(idx)
    assert enc == ref_codecs.encode_index(idx)
    np.testing.assert_array_equal(ext.decode_index(enc, idx.size), idx)


@pytest.mark.parametrize("level", LEVEL_IDS)
@FAST
@given(hnp.arrays(np.bool_, st.integers(0, 3000)))
def test_codecs_masks_every_level_equal_twin(level, mask):
    ext = LEVELS[level].codecs
    rle, bits = ext.encode_mask_rle(mask), ext.encode_bitpack(mask)
    assert rle == ref_codecs.encode_mask_rle(mask)
    assert bits == ref_codecs.encode_bitpack(mask)
    np.testing.assert_array_equal(ext.decode_mask_rle(rle, mask.size), mask)
    np.testing.assert_array_equal(ext.decode_bitpack(bits, mask.size), mask)


@pytest.mark.parametrize("level", LEVEL_IDS)
@FAST
@given(st.binary(max_size=200), st.integers(0, 500))
def test_codecs_random_bytes_every_level_raise_corruption(level, data, n):
    ext = LEVELS[level].codecs
    for decode in (ext.decode_index, ext.decode_mask_rle, ext.decode_bitpack):
        try:
            decode(data, n)
        except CorruptionError:
            pass


@pytest.mark.parametrize("level", LEVEL_IDS)
@pytest.mark.parametrize("op", [0, 1, 2, 3, -1])
@pytest.mark.parametrize("dtype", ["float64", "float32", "int32", "uint8"])
def test_large_parallel_merges_every_level_equal_twin(level, op, dtype):
    """Sizes past the parallel thresholds (sorted and unsorted scatter, masked merge) at every level."""
    from mmsb._ref import merge as ref
    ext = LEVELS[level].merge
    rng = np.random.default_rng(7)
    n, m = 300_000, 120_000
    page = (rng.random(n) * 50).astype(dtype)
    idx = rng.integers(0, n, m)
    vals = (rng.random(m) * 50).astype(dtype)
    for index in (idx, np.sort(idx)):
        a, b = page.copy(), page.copy()
        ext.scatter(a, index, vals, op, is_sorted=index is not idx)
        ref.scatter(b, index, vals, op, is_sorted=index is not idx)
        assert a.tobytes() == b.tobytes()
    mask = rng.random(n) < 0.5
    full = (rng.random(n) * 50).astype(dtype)
    a, b = page.copy(), page.copy()
    ext.masked_merge(a, mask, full, op)
    ref.masked_merge(b, mask, full, op)
    assert a.tobytes() == b.tobytes()


@needs_ext
def test_dispatch_reports_the_level_in_use():
    feats = _kernels.cpu.features()
    assert _kernels.SIMD in _kernels.SIMD_LEVELS
    assert feats["simd"] == _kernels.SIMD
    assert feats["simd_levels"] == _kernels.SIMD_LEVELS
    assert feats["simd_level"] == {"sse2": "SSE2", "avx2": "AVX2", "avx512": "AVX512F"}[_kernels.SIMD]
    assert _kernels.merge is LEVELS[_kernels.SIMD].merge
    assert _kernels.spmv is LEVELS[_kernels.SIMD].spmv
    for level in _kernels.SIMD_LEVELS:
        assert _kernels.cpu.level_supported(level)
    with pytest.raises(ValueError, match="unknown SIMD level"):
        _kernels.cpu.level_supported("avx9000")


@needs_ext
@pytest.mark.parametrize("level", sorted(LEVELS))
def test_mmsb_simd_pins_a_level(level):
    out, _ = _run("import mmsb, mmsb._kernels as k; print(k.SIMD, k.merge.__name__, "
                  "k.cpu.features()['simd'])", MMSB_SIMD=level)
    simd, name, reported = out.split()
    assert simd == level == reported
    assert name == {"sse2": "mmsb._ext.merge", "avx2": "mmsb._ext._avx2.merge",
                    "avx512": "mmsb._ext._avx512.merge"}[level]


@needs_ext
def test_mmsb_simd_unknown_level_warns_and_uses_the_default():
    out, err = _run("import warnings; warnings.simplefilter('always'); import mmsb._kernels as k; print(k.SIMD)",
                    MMSB_SIMD="avx9000")
    assert "MMSB_SIMD='avx9000' cannot be used (unknown level" in err
    assert out.strip() == _kernels.SIMD


@needs_ext
def test_threads_env_caps_and_passive_wait_policy():
    out, _ = _run("import os, mmsb, mmsb._kernels as k; print(k.THREADS, k.threads_now(), "
                  "os.environ['OMP_WAIT_POLICY'], k.cpu.features()['threads'])", MMSB_THREADS="1")
    assert out.split() == ["1", "1", "passive", "1"]
    out, _ = _run("import os, mmsb._kernels as k; print(os.environ['OMP_WAIT_POLICY'])", OMP_WAIT_POLICY="active")
    assert out.strip() == "active"   # the user's choice is kept


@needs_ext
def test_set_threads_bounds_the_policy():
    before = _kernels.THREADS
    try:
        assert _kernels.set_threads(1) == 1
        assert _kernels.threads_now() == 1
        cap = _kernels.set_threads(3, adapt=False)
        assert cap == 3 and _kernels.threads_now() == 3      # no load fallback: exactly the cap
        _kernels.set_threads(3, adapt=True)
        assert 1 <= _kernels.threads_now() <= 3
    finally:
        _kernels.set_threads(before, adapt=True)
    assert 1 <= _kernels.default_threads() <= (os.cpu_count() or 1)


def test_compiled_spmv_does_not_import_its_twin():
    out, _ = _run("import sys, mmsb._ext.spmv, mmsb._ext.merge; "
                  "print(sorted(m for m in sys.modules if m.startswith('mmsb._ref')))")
    assert out.strip() == "[]"


@needs_ext
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2
                    or not os.path.isdir("/proc/self/task"), reason="needs Linux and two CPUs")
def test_busy_policy_moves_workers_without_pinning_them():
    """With the policy told the machine is busy (one CPU configured, so every run queue counts as full) and a busy
    process beside it, the dynamic kernels move a worker that woke on the starting thread's CPU to another one
    (mmsb_threads_spread): the results stay exact, and afterwards every thread that existed before has its
    affinity mask back (moved, never pinned)."""
    mask = os.sched_getaffinity(0)
    before = _kernels.THREADS
    rng = np.random.default_rng(5)
    page = rng.random(1 << 20)
    index = rng.integers(0, page.size, 1 << 17)
    values = rng.random(index.size)
    dense = rng.random(page.size)
    sel = rng.random(page.size) < 0.5
    import scipy.sparse as sp

    A = sp.csr_array((rng.random(1 << 20), (rng.integers(0, 1 << 16, 1 << 20), rng.integers(0, 1 << 16, 1 << 20))),
                     shape=(1 << 16, 1 << 16))
    A.sum_duplicates()
    ip, ix, x = A.indptr.astype(np.int64), A.indices.astype(np.int64), rng.random(1 << 16)
    want = page.copy()
    np.minimum.at(want, index, values)
    want = np.where(sel, np.minimum(want, dense), want)

    def run() -> None:
        got = page.copy()
        _kernels.merge.scatter(got, index, values, _ops.OP_MIN, False)
        _kernels.merge.masked_merge(got, sel, dense, _ops.OP_MIN)
        np.testing.assert_array_equal(got, want)
        y = np.empty(x.size)
        _kernels.spmv.spmv(ip, ix, A.data, x, y, _ops.OP_PLUS, _ops.OP_TIMES, 0.0)
        np.testing.assert_allclose(y, A @ x, rtol=1e-12)

    def masks() -> dict:
        out = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                out[int(tid)] = os.sched_getaffinity(int(tid))
            except ProcessLookupError:
                pass
        return out

    try:
        for ns in _kernels._LEVELS.values():
            ns.merge.set_threads(2, 1, True)
            ns.spmv.set_threads(2, 1, True)
        run()                                          # the worker threads exist now, with the full mask
        start = masks()
        # the starting thread on one CPU, a busy process on another: no CPU is idle, so workers wake beside the
        # starting thread (where the spreading moves them off)
        first, second = sorted(mask)[:2]
        hog = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{second}}})\nwhile 1: pass"])
        os.sched_setaffinity(0, {first})
        for _ in range(100):
            run()
    finally:
        os.sched_setaffinity(0, mask)
        if "hog" in locals():
            hog.kill()
            hog.wait()
        _kernels.set_threads(before, adapt=True)
    end = masks()
    for tid, m in start.items():
        if tid in end:
            assert end[tid] == m, f"thread {tid} was left pinned to {end[tid]}"

"""Page allocator: compiled (mmsb._ext.alloc) and numpy twin (mmsb._ref.alloc) behave the same."""
import gc
import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsb._ref import alloc as ref_alloc

PURE = os.environ.get("MMSB_PUREPYTHON") == "1"


def _modules():
    out = [ref_alloc]
    if not PURE:
        try:
            from mmsb._ext import alloc as ext_alloc
            out.append(ext_alloc)
        except ImportError:
            pass
    return out


MODULES = _modules()
KEYS = {"allocations", "frees", "bytes_in_use", "bytes_reserved", "high_water", "reuse_hits", "lock_waits",
        "arenas", "classes"}


@pytest.fixture(params=MODULES, ids=lambda m: m.__name__)
def mod(request):
    return request.param


def small(mod):
    return mod.Allocator(arena_bytes=1 << 16, min_class=64, max_class=1 << 12)


def test_views_disjoint_and_persistent(mod):
    a = small(mod)
    handles = [a.alloc(n) for n in (1, 64, 65, 100, 1000, 4096, 4096, 3000)]
    views = [a.view(h, np.uint8, a.view(h, np.uint8, 0).shape) for h in handles]
    for k, h in enumerate(handles):
        v = a.view(h, np.int8, (1,))
        assert v.flags.writeable and v.flags.c_contiguous
        assert v.ctypes.data % 64 == 0
        v[0] = k
    spans = []
    for h, n in zip(handles, (1, 64, 65, 100, 1000, 4096, 4096, 3000)):
        v = a.view(h, np.uint8, n)
        spans.append((v.ctypes.data, v.ctypes.data + n))
    spans.sort()
    assert all(e <= s for (_, e), (s, _) in zip(spans, spans[1:]))
    for k, h in enumerate(handles):
        assert a.view(h, np.int8, (1,))[0] == k
    del views


def test_view_shapes_and_limits(mod):
    a = small(mod)
    h = a.alloc(800)
    v = a.view(h, "float64", (10, 10))
    v[:] = np.arange(100).reshape(10, 10)
    w = a.view(h, np.float64, 100)
    assert w[57] == 57.0
    with pytest.raises(ValueError):
        a.view(h, np.float64, 101)
    with pytest.raises(TypeError):
        a.view(h, object, 1)


def test_reuse_and_stats(mod):
    a = small(mod)
    h1 = a.alloc(100)
    p1 = a.view(h1, np.uint8, 100).ctypes.data
    a.free(h1)
    h2 = a.alloc(120)
    assert a.view(h2, np.uint8, 120).ctypes.data == p1
    s = a.stats()
    assert KEYS <= set(s)
    assert s["reuse_hits"] == 1 and s["allocations"] == 2 and s["frees"] == 1
    assert s["bytes_in_use"] == 128 and s["high_water"] == 128
    assert s["classes"][128]["in_use"] == 1 and s["classes"][128]["free"] == 0
    assert s["arenas"] == 1 and s["bytes_reserved"] == 1 << 16


def test_double_free_and_unknown(mod):
    a = small(mod)
    h = a.alloc(10)
    a.free(h)
    with pytest.raises(ValueError):
        a.free(h)
    h2 = a.alloc(10)  # same block, new generation: the stale handle stays invalid
    with pytest.raises(ValueError):
        a.free(h)
    with pytest.raises(ValueError):
        a.view(h, np.uint8, 1)
    for bad in (-1, 12345, 2 ** 40, "x"):
        with pytest.raises(ValueError):
            a.free(bad)
    a.free(h2)


def test_big_blocks_outlive_free(mod):
    a = small(mod)
    h = a.alloc(100_000)
    v = a.view(h, np.float64, 12_500)
    v[:] = 7.0
    s = a.stats()
    assert s["bytes_in_use"] == 100_000 and s["bytes_reserved"] == 100_000 and s["arenas"] == 0
    a.free(h)
    s = a.stats()
    assert s["bytes_in_use"] == 0 and s["bytes_reserved"] == 0
    del a
    gc.collect()
    v[:] += 1.0  # the view keeps its own block alive
    assert v.sum() == 8.0 * 12_500


def test_arena_outlives_allocator(mod):
    a = small(mod)
    h = a.alloc(256)
    v = a.view(h, np.int32, 64)
    v[:] = 3
    a.free(h)
    del a
    gc.collect()
    assert int(v.sum()) == 192


def test_many_small_allocations(mod):
    a = mod.Allocator()
    handles = [a.alloc(1024) for _ in range(20_000)]
    s = a.stats()
    assert s["classes"][1024]["in_use"] == 20_000
    assert s["bytes_in_use"] == 20_000 * 1024
    for h in handles:
        a.free(h)
    s = a.stats()
    assert s["bytes_in_use"] == 0 and s["classes"][1024]["free"] == 20_000
    assert s["high_water"] == 20_000 * 1024


def test_thread_safety(mod):
    a = small(mod)
    errors = []

    def work(tid):
        try:
            for k in range(300):
                h = a.alloc(64 * (1 + k % 8))
                v = a.view(h, np.uint8, 64)
                v[:] = tid
                assert (v == tid).all()
                a.free(h)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    s = a.stats()
    assert s["allocations"] == s["frees"] == 1200 and s["bytes_in_use"] == 0
    assert s["lock_waits"] >= 0


def test_bench_cycle(mod):
    a = mod.Allocator()
    ns = a.bench_cycle(1000, 512)
    assert ns > 0
    assert a.stats()["bytes_in_use"] == 0


def test_bad_arguments(mod):
    with pytest.raises(ValueError):
        mod.Allocator(min_class=48)
    with pytest.raises(ValueError):
        mod.Allocator(arena_bytes=1024, max_class=4096)
    a = small(mod)
    with pytest.raises(ValueError):
        a.alloc(-1)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 10_000)), max_size=60))
def test_twins_agree(ops):
    allocators = [m.Allocator(arena_bytes=1 << 15, min_class=64, max_class=1 << 12) for m in MODULES]
    live = [[] for _ in MODULES]
    for do_alloc, n in ops:
        for a, hs in zip(allocators, live):
            if do_alloc or not hs:
                h = a.alloc(n)
                a.view(h, np.uint8, n)[:] = n % 251
                hs.append((h, n))
            else:
                h, _ = hs.pop(n % len(hs))
                a.free(h)
    stats = [a.stats() for a in allocators]
    for s in stats[1:]:
        assert {k: v for k, v in s.items() if k != "lock_waits"} == \
               {k: v for k, v in stats[0].items() if k != "lock_waits"}
    for a, hs in zip(allocators, live):
        for h, n in hs:
            assert (a.view(h, np.uint8, n) == n % 251).all()
        s = a.stats()
        assert s["bytes_in_use"] == sum(c["bytes_in_use"] for c in s["classes"].values()) + \
            sum(n for _, n in hs if n > a.max_class)


def test_alloc_view(mod):
    a = small(mod)
    h, v = a.alloc_view(800, np.dtype("float64"), (10, 10))
    assert v.shape == (10, 10) and v.dtype == np.float64 and v.flags.writeable and v.flags.c_contiguous
    assert v.ctypes.data % 64 == 0
    v[...] = np.arange(100).reshape(10, 10)
    w = a.view(h, np.float64, 100)
    assert w[57] == 57.0 and w.ctypes.data == v.ctypes.data
    h2, v2 = a.alloc_view(8 * 1024 * 1024, "int64", (3,))           # an own block, dtype given as a string
    assert v2.dtype == np.int64 and a.view(h2, np.int64, 3).ctypes.data == v2.ctypes.data
    before = a.stats()
    with pytest.raises(ValueError):
        a.alloc_view(80, np.dtype("float64"), (11,))
    with pytest.raises(ValueError):
        a.alloc_view(80, np.dtype("float64"), (-1,))
    with pytest.raises(TypeError):
        a.alloc_view(80, np.dtype(object), (1,))
    with pytest.raises(ValueError):                                  # 2**64 bytes: no wrap-around to 0
        a.alloc_view(64, np.dtype("float64"), (2**61,))
    after = a.stats()
    assert after["allocations"] == before["allocations"] and after["bytes_in_use"] == before["bytes_in_use"]
    a.free(h)
    a.free(h2)
    assert a.stats()["bytes_in_use"] == 0
    with pytest.raises(ValueError):
        a.free(h)


# ---------------------------------------------------------------- block cache (compiled allocator)

EXT = next((m for m in MODULES if m is not ref_alloc), None)
MIB = 2**20


@pytest.fixture
def cache():
    """The compiled allocator's block cache, emptied, with its limit restored afterwards."""
    if EXT is None:
        pytest.skip("compiled allocator not in use")
    old = EXT.block_cache_limit()
    EXT.block_cache_clear()
    EXT.block_cache_limit(64 * MIB)
    gc.collect()
    yield EXT
    EXT.block_cache_limit(old)
    EXT.block_cache_clear()


def _fill(mod, a, nbytes, value):
    h = a.alloc(nbytes)
    v = a.view(h, np.uint8, (nbytes,))
    v[...] = value
    return h, v


def test_block_cache_reuses_a_dead_block(cache):
    a = cache.Allocator()
    h, v = _fill(cache, a, 3 * MIB, 7)
    ptr = v.ctypes.data
    a.free(h)
    s = cache.block_cache_stats()
    assert s["blocks"] == 0                      # a live view keeps the block out of the cache
    assert (v == 7).all()
    del v
    gc.collect()
    s = cache.block_cache_stats()
    assert s["blocks"] == 1 and s["bytes"] == 3 * MIB
    h2, v2 = _fill(cache, a, 3 * MIB - 4096, 9)  # a little smaller: takes the cached block
    s2 = cache.block_cache_stats()
    assert s2["blocks"] == 0 and s2["hits"] == s["hits"] + 1
    assert v2.ctypes.data == ptr and (v2 == 9).all() and v2.nbytes == 3 * MIB - 4096
    a.free(h2)
    del v2


def test_block_cache_size_window_and_small_blocks(cache):
    a = cache.Allocator()
    h, v = _fill(cache, a, 4 * MIB, 1)
    a.free(h)
    del v
    s = cache.block_cache_stats()
    assert s["blocks"] == 1
    h2, v2 = _fill(cache, a, 2 * MIB, 2)         # a block over 1/8 larger is not handed out
    assert cache.block_cache_stats()["blocks"] == 1
    h3, v3 = _fill(cache, a, 512 * 1024, 3)      # below 1 MiB: never cached
    for hh in (h2, h3):
        a.free(hh)
    del v2, v3
    assert cache.block_cache_stats()["blocks"] == 2


def test_block_cache_limit_evicts_oldest(cache):
    a = cache.Allocator()
    cache.block_cache_limit(5 * MIB)
    hs = [_fill(cache, a, 2 * MIB, k) for k in range(3)]
    before = cache.block_cache_stats()["evictions"]
    for h, _ in hs:
        a.free(h)
    del hs, h, _
    gc.collect()
    s = cache.block_cache_stats()
    assert s["blocks"] == 2 and s["bytes"] == 4 * MIB and s["evictions"] == before + 1
    assert cache.block_cache_limit(2 * MIB) == 2 * MIB     # lowering the limit evicts down to it
    assert cache.block_cache_stats()["bytes"] == 2 * MIB
    cache.block_cache_clear()
    assert cache.block_cache_stats()["bytes"] == 0 and cache.block_cache_limit() == 2 * MIB
    cache.block_cache_limit(0)                             # off: freed blocks go straight back
    h, v = _fill(cache, a, 2 * MIB, 5)
    a.free(h)
    del v
    assert cache.block_cache_stats()["blocks"] == 0
    with pytest.raises(ValueError):
        cache.block_cache_limit(-1)


def test_block_cache_threads_get_distinct_blocks(cache):
    a = cache.Allocator()
    for k in range(4):
        h, v = _fill(cache, a, 2 * MIB, k)
        a.free(h)
    del v
    gc.collect()
    errors = []

    def worker(k):
        try:
            for _ in range(50):
                h, v = _fill(cache, a, 2 * MIB, k)
                assert (v == k).all()
                a.free(h)
                del v
        except AssertionError as exc:            # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert cache.block_cache_stats()["hits"] > 0


def test_block_cache_api_of_the_twin():
    old = ref_alloc.block_cache_limit()
    assert ref_alloc.block_cache_limit(5) == 5
    ref_alloc.block_cache_clear()
    assert ref_alloc.block_cache_stats() == {"bytes": 0, "blocks": 0, "limit": 5, "hits": 0, "misses": 0,
                                             "evictions": 0}
    ref_alloc.block_cache_limit(old)
    with pytest.raises(ValueError):
        ref_alloc.block_cache_limit(-1)

"""memory_limit: a working set of 4x the limit gives exact results with resident memory bounded (RSS measured
in a subprocess), pins are honoured, MemoryBudgetError changes nothing, spill to a temp dir, stats, parsing."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mmsb
from mmsb.errors import MemoryBudgetError
from mmsb.memory import parse_bytes

KB = 1024


def test_parse_bytes():
    assert parse_bytes(None) is None
    assert parse_bytes(1234) == 1234
    assert parse_bytes("2GB") == 2 * 2**30
    assert parse_bytes("2 GiB") == 2 * 2**30
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("512 mb") == 512 * 2**20
    assert parse_bytes("1.5k") == 1536
    assert parse_bytes("100") == 100
    assert parse_bytes("3 B") == 3
    for bad in ("lots", "2XB", "-5MB", "", "GB"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    for bad in (0, -1):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    with mmsb.open(None, memory_limit="1MB") as buf:
        assert buf.stats()["memory"]["limit"] == 2**20


RSS_CHILD = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import mmsb
    import blosc2  # noqa: F401  mmsb loads it on first codec use; its ~30 MiB of code must not count as growth

    def rss():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024

    limit = None if sys.argv[1] == "none" else int(sys.argv[1])
    path = None if sys.argv[2] == "none" else sys.argv[2]
    npages, n = int(sys.argv[3]), int(sys.argv[4])
    buf = mmsb.open(path, "w" if path else "a", memory_limit=limit, durability="none")
    base = rss()
    peak = 0
    writes = [[] for _ in range(npages)]      # the model, kept small: the writes, replayed at the end
    for k in range(npages):
        buf.create_page(f"p{k}", n, dtype="float64")
        peak = max(peak, rss())
    rng = np.random.default_rng(0)
    for rnd in range(3):
        for k in range(npages):
            idx = rng.integers(0, n, 64)
            buf.write(f"p{k}", 1.0 + k, index=idx, accumulate=True)
            writes[k].append(idx)
            if rnd == 2:
                buf[f"p{k}"].read()
            peak = max(peak, rss())
    st = buf.stats()["memory"]
    for k in range(npages):                   # exact results, one page at a time
        model = np.zeros(n)
        for idx in writes[k]:
            np.add.at(model, idx, 1.0 + k)
        assert np.array_equal(buf[f"p{k}"].read(), model), k
    buf.close()
    print(json.dumps({"base": base, "peak": peak, "mem": st}))
""")


def _rss_run(limit, path, npages, n):
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(limit), str(path), str(npages), str(n)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_working_set_4x_limit_bounded_rss(tmp_path):
    page = 4 * 2**20                                # 4 MiB pages
    npages = 16                                     # 64 MiB working set
    limit = 16 * 2**20                              # 4x smaller
    n = page // 8
    limited = _rss_run(limit, "none", npages, n)    # path=None: spills to a temporary directory
    free = _rss_run("none", "none", npages, n)
    mem = limited["mem"]
    assert mem["resident_bytes"] <= limit
    assert mem["evictions"] >= npages and mem["reloads"] > 0
    grow_limited = limited["peak"] - limited["base"]
    grow_free = free["peak"] - free["base"]
    assert grow_free >= 0.9 * npages * page         # the unlimited run holds the whole working set
    # the limited run stays near the limit (plus transient copies), far below the working set
    assert grow_limited < limit + 3 * page + 8 * 2**20, (grow_limited, grow_free)
    assert grow_limited < 0.6 * grow_free, (grow_limited, grow_free)


def test_pinned_pages_never_spilled(tmp_path):
    with mmsb.open(str(tmp_path / "s"), "w", memory_limit=4 * 8 * KB, durability="none") as buf:
        pages = [buf.create_page(f"p{k}", KB, dtype="float64") for k in range(8)]
        hot = pages[0]
        with hot.pin():
            for rnd in range(3):
                for p in pages[1:]:
                    buf.write(p, float(rnd), index=[rnd])
                    assert hot._data is not None and hot._spill is None
                    buf.write(hot, 1.0, index=[rnd], accumulate=True)
                    assert hot._data is not None and hot._spill is None
            st = buf.stats()["memory"]
            assert st["evictions"] > 0 and st["reloads"] > 0 and st["resident_bytes"] <= 4 * 8 * KB
        assert hot.read()[:3].tolist() == [7.0, 7.0, 7.0]
        for p in pages[1:]:
            assert p.read()[:3].tolist() == [0.0, 1.0, 2.0]
        # once unpinned, the hot page can be spilled again (pinning the others makes each resident in turn; a
        # read of a spilled page alone would read its spill file and evict nothing)
        for p in pages[1:]:
            with p.pin():
                pass
        assert hot._data is None and hot._spill is not None
        np.testing.assert_array_equal(hot.read()[:3], [7.0, 7.0, 7.0])


def test_memory_budget_error_changes_nothing():
    with mmsb.open(None, memory_limit=2 * 8 * KB) as buf:
        a = buf.create_page("a", KB)
        b = buf.create_page("b", KB)
        c = buf.create_page("c", KB)                  # a is spilled
        buf.write(c, 3.0, index=[0])
        epoch, nlog = buf.epoch, len(list(buf.log.query()))
        with b.pin(), c.pin():
            np.testing.assert_array_equal(a.read(), np.zeros(KB))     # read from its spill file: no room needed
            assert a._data is None
            with pytest.raises(MemoryBudgetError):
                with a.pin():                                        # residency needs room
                    pass
            with pytest.raises(MemoryBudgetError):
                buf.write(a, 1.0, index=[0])
            with pytest.raises(MemoryBudgetError):
                buf.create_page("d", KB)
            assert buf.epoch == epoch and list(buf) == ["a", "b", "c"]
            assert len(list(buf.log.query())) == nlog
        with pytest.raises(MemoryBudgetError):
            buf.create_page("huge", 4 * KB)           # larger than the whole limit
        assert list(buf) == ["a", "b", "c"] and buf.epoch == epoch
        np.testing.assert_array_equal(a.read(), np.zeros(KB))
        assert c.read()[0] == 3.0
        buf.write(a, 1.0, index=[0])
        assert a.read()[0] == 1.0


def test_in_memory_buffer_spills_to_temp_dir():
    buf = mmsb.open(None, memory_limit=3 * 8 * KB)
    model = {}
    for k in range(6):
        buf.create_page(f"p{k}", KB)
        buf.write(f"p{k}", np.arange(KB) * k)
        model[f"p{k}"] = np.arange(KB) * k
    st = buf.stats()["memory"]
    assert st["spilled_bytes"] >= 3 * 8 * KB and st["evictions"] >= 3
    tmp = buf._memory._own_tmp
    assert tmp is not None and os.path.isdir(tmp) and os.listdir(tmp)
    for name, v in model.items():
        np.testing.assert_array_equal(buf[name].read(), v)
    st2 = buf.stats()["memory"]
    assert st2["reloads"] + st2["read_throughs"] >= 3 and st2["resident_bytes"] <= 3 * 8 * KB
    # history and replay still exact with spilled pages
    np.testing.assert_array_equal(buf.at(2)["p0"].read(), np.zeros(KB))
    buf.close()
    assert not os.path.exists(tmp)


def test_store_with_memory_limit_reopens_equal(tmp_path):
    root = str(tmp_path / "s")
    model = {}
    with mmsb.open(root, "w", memory_limit="24KiB") as buf:
        for k in range(8):
            buf.create_page(f"p{k}", KB, dtype="int64", semiring="min_plus")
        rng = np.random.default_rng(3)
        for k in range(8):
            model[f"p{k}"] = np.full(KB, np.iinfo(np.int64).max)
        for i in range(40):
            k = int(rng.integers(0, 8))
            idx = rng.integers(0, KB, 8)
            vals = rng.integers(0, 1000, 8)
            buf.write(f"p{k}", vals, index=idx, accumulate=True)
            np.minimum.at(model[f"p{k}"], idx, vals)
            if i == 20:
                buf.checkpoint()
        assert buf.stats()["memory"]["evictions"] > 0
        assert os.listdir(os.path.join(root, "spill"))
        rep = mmsb.verify(root)                    # spill files are checksummed too
        assert rep.ok, rep.problems
    assert mmsb.verify(root).ok
    with mmsb.open(root, "r", memory_limit="16KiB") as buf:
        for name, v in model.items():
            np.testing.assert_array_equal(buf[name].read(), v)


def test_block_cache_default_from_env(monkeypatch):
    from mmsb.memory import default_block_cache

    monkeypatch.setenv("MMSB_BLOCK_CACHE", "3MiB")
    assert default_block_cache() == 3 * 2**20
    monkeypatch.setenv("MMSB_BLOCK_CACHE", "0")
    assert default_block_cache() == 0
    monkeypatch.delenv("MMSB_BLOCK_CACHE")
    d = default_block_cache()
    assert 0 < d <= 4 * 2**30
    monkeypatch.setenv("MMSB_BLOCK_CACHE", "lots")
    with pytest.warns(RuntimeWarning, match="MMSB_BLOCK_CACHE"):
        assert default_block_cache() == d


def test_spill_empties_the_block_cache():
    """Under a memory limit freed page memory goes back to the OS: a spill empties the block cache."""
    from mmsb import _kernels

    alloc = _kernels.alloc
    old = alloc.block_cache_limit()
    alloc.block_cache_limit(64 * 2**20)
    try:
        with mmsb.open(memory_limit=3 * 2**20) as buf:
            for k in range(3):
                buf.create_page(f"p{k}", 2**18)            # 2 MiB each: the third one spills the first
                buf.write(f"p{k}", float(k + 1))
            assert buf.stats()["memory"]["evictions"] >= 1
            assert alloc.block_cache_stats()["bytes"] == 0
            assert np.array_equal(buf["p0"].read(), np.full(2**18, 1.0))
    finally:
        alloc.block_cache_limit(old)


def test_evicting_a_clean_page_writes_nothing(tmp_path):
    """#16.12: a page reloaded from its spill file and not changed since is evicted without writing (its file is
    reused); a page changed by a commit, or changed in place behind the log's back (CRC32C differs), is written
    again; every reload returns the right content."""
    import mmsb

    n = 1 << 18
    rng = np.random.default_rng(3)
    vals = {k: rng.random(n) for k in "abc"}
    with mmsb.open(str(tmp_path / "s"), "w", memory_limit=int(2.5 * n * 8), durability="flush",
                   auto_checkpoint=False) as buf:
        for k, v in vals.items():
            buf.create_page(k, n)
            buf.write(k, v)
        mem = buf._memory

        def cycle():
            for k in "abc":
                with buf[k].pin():          # resident (reloaded if spilled, evicting another), then read
                    np.testing.assert_array_equal(buf[k].read(), vals[k])

        cycle()
        cycle()
        before = mem.spill_writes
        files = set(os.listdir(os.path.join(str(tmp_path / "s"), "spill")))
        cycle()
        cycle()
        assert mem.spill_writes == before                      # clean evictions wrote nothing
        assert mem.evictions > 4
        assert set(os.listdir(os.path.join(str(tmp_path / "s"), "spill"))) <= files
        buf.write("a", 5.0, index=[7])                           # a commit changes a: its next eviction writes
        vals["a"][7] = 5.0
        cycle()
        assert mem.spill_writes == before + 1
        cycle()
        assert mem.spill_writes == before + 1
        page = buf["b"]                                          # a change the epoch does not show
        mem.array(page)[0] += 1.0
        vals["b"][0] += 1.0
        cycle()
        cycle()
        assert mem.spill_writes == before + 2
    assert not os.path.exists(os.path.join(str(tmp_path / "s"), "spill")) or \
        not os.listdir(os.path.join(str(tmp_path / "s"), "spill"))


def test_damaged_clean_spill_file_is_rewritten_not_reused(tmp_path):
    """The file a resident page was reloaded from is reused on eviction only while untouched: damaged meanwhile,
    it is rewritten from the (good) page, and the next reload returns the right content."""
    import mmsb

    n = 1 << 16
    vals = {k: np.arange(n, dtype=np.float64) * (i + 1) for i, k in enumerate("abc")}
    with mmsb.open(str(tmp_path / "s"), "w", memory_limit=int(2.5 * n * 8), auto_checkpoint=False) as buf:
        for k, v in vals.items():
            buf.create_page(k, n)
            buf.write(k, v)
        for _ in range(2):
            for k in "abc":
                with buf[k].pin():          # resident: reloaded if spilled
                    buf[k].read()
        mem = buf._memory
        clean = {name: ent[1] for name, ent in mem._clean.items() if buf[name]._data is not None}
        assert clean
        name, path = next(iter(clean.items()))
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0x55
        open(path, "wb").write(bytes(data))
        before = mem.spill_writes
        for _ in range(2):
            for k in "abc":
                with buf[k].pin():
                    np.testing.assert_array_equal(buf[k].read(), vals[k])
        assert mem.spill_writes > before


def test_scan_reads_spilled_pages_from_their_files(tmp_path):
    """#16.12: under a memory limit a read of a spilled page goes straight from its spill file into the copy it
    returns (checked like a reload): a scan over twice the limit evicts nothing and writes nothing, the resident
    pages stay resident, every read is exact; a page read that way again soon after is made resident (2Q's
    admission)."""
    n = 1 << 14
    rng = np.random.default_rng(4)
    vals = {f"p{k}": rng.random(n) for k in range(8)}
    with mmsb.open(str(tmp_path / "s"), "w", memory_limit=4 * n * 8, durability="none",
                   auto_checkpoint=False) as buf:
        for k, v in vals.items():
            buf.create_page(k, n)
            buf.write(k, v)
        mem = buf._memory
        resident = {k for k in vals if buf[k]._data is not None}
        assert len(resident) == 4
        ev, rl, sw = mem.evictions, mem.reloads, mem.spill_writes
        for _ in range(3):
            for k, v in vals.items():
                np.testing.assert_array_equal(buf[k].read(), v)
        assert (mem.evictions, mem.spill_writes) == (ev, sw)
        assert {k for k in vals if buf[k]._data is not None} == resident
        assert mem.read_throughs == 3 * 4 and buf.stats()["memory"]["read_throughs"] == 12
        assert mem.reloads == rl + 12                  # every load of spilled data counts as a reload
        cold = sorted(set(vals) - resident)[0]
        buf[cold].read()
        buf[cold].read()                               # read again at once: admitted, made resident
        assert buf[cold]._data is not None and mem.reloads == rl + 14 and mem.read_throughs == 13
        np.testing.assert_array_equal(buf[cold].read(), vals[cold])


def test_read_through_of_a_damaged_spill_file(tmp_path):
    """A damaged spill file read straight into a copy: CorruptionError naming the file; the page stays
    spilled and the buffer's memory is unchanged."""
    from mmsb.errors import CorruptionError

    n = 1 << 14
    with mmsb.open(str(tmp_path / "s"), "w", memory_limit=2 * n * 8, durability="none",
                   auto_checkpoint=False) as buf:
        for k in "abc":
            buf.create_page(k, n)
            buf.write(k, np.full(n, float(ord(k))))
        spilled = [k for k in "abc" if buf[k]._spill is not None]
        page = buf[spilled[0]]
        path = page._spill
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0x20
        open(path, "wb").write(bytes(data))
        before = buf.stats()["memory"]
        with pytest.raises(CorruptionError) as ei:
            page.read()
        assert ei.value.file == path
        assert page._data is None and page._spill == path
        after = buf.stats()["memory"]
        assert {k: after[k] for k in ("resident_bytes", "evictions", "reloads")} == \
            {k: before[k] for k in ("resident_bytes", "evictions", "reloads")}


def test_clean_eviction_of_a_compressible_page_writes_nothing(tmp_path):
    """Evicting a page reloaded from a compressed (BLOSC2) spill file and not changed since writes nothing: its
    chunks' CRC32C are taken from the decoded values at reload (the file's are those of the encoded bytes)."""
    n = 1 << 17
    vals = {k: np.arange(n, dtype=np.float64) * (i + 1) for i, k in enumerate("abc")}
    with mmsb.open(str(tmp_path / "s"), "w", memory_limit=int(2.5 * n * 8), durability="none",
                   auto_checkpoint=False) as buf:
        for k, v in vals.items():
            buf.create_page(k, n)
            buf.write(k, v)
        mem = buf._memory

        def cycle():
            for k in "abc":
                with buf[k].pin():
                    np.testing.assert_array_equal(buf[k].read(), vals[k])

        cycle()
        cycle()
        from mmsb.container import read_container
        from mmsb.spill import BLOB_MAGIC
        spilled = [buf[k]._spill for k in "abc" if buf[k]._spill is not None]
        assert spilled and all(c["codec"] != 0 for p in spilled
                               for c in read_container(p, BLOB_MAGIC)[0]["pages"][0]["chunks"])
        before, ev = mem.spill_writes, mem.evictions
        cycle()
        cycle()
        assert mem.evictions > ev and mem.spill_writes == before

"""alloc: allocator alloc+free cycle, create_page of many small pages, bookkeeping bytes per page."""
from __future__ import annotations

import gc
import time
import timeit
import tracemalloc
from typing import Iterator

import numpy as np

import mmsb
from mmsb import _kernels
from mmsb.bench._common import Row, best_of

GROUP = "alloc"


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            import os
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        return 0


def run(quick: bool = False) -> Iterator[Row]:
    n = 200_000 if quick else 2_000_000
    a = _kernels.alloc.Allocator()
    a.bench_cycle(10_000, 1024)
    ns = min(a.bench_cycle(n, 1024) for _ in range(3))
    t_np = min(timeit.repeat("np.empty(128)", "import numpy as np", number=n // 4, repeat=3)) / (n // 4) * 1e9
    yield Row(GROUP, "Allocator.bench_cycle(n, 1024): alloc+free of 1 KiB, ns per cycle", ns, "np.empty(128) (1 KiB)",
              t_np, unit="ns", target="< 100 ns", met=ns < 100,
              note="mmsb loop runs in C; np.empty includes a Python call")
    # the same cycle through the Python-level methods, for context
    h = a.alloc(1024)
    a.free(h)
    m = n // 10

    def py_cycle() -> None:
        al, fr = a.alloc, a.free
        for _ in range(m):
            fr(al(1024))
    t_py = best_of(py_cycle, 3) / m * 1e9
    yield Row(GROUP, "Allocator.alloc + .free from Python, 1 KiB, ns per cycle", t_py, "np.empty(128) (1 KiB)", t_np,
              unit="ns", note="context (no target)")

    pages = 10_000 if quick else 100_000
    buf = mmsb.open(None)
    gc.collect()
    t0 = time.perf_counter()
    for i in range(pages):
        buf.create_page(f"p{i}", 128)
    t_create = time.perf_counter() - t0
    buf.close()
    del buf
    # memory, in a second buffer under tracemalloc (which slows creation, so it is not timed)
    buf = mmsb.open(None)
    gc.collect()
    rss0 = _rss_bytes()
    tracemalloc.start()
    for i in range(pages):
        buf.create_page(f"p{i}", 128)
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = _rss_bytes()
    data = pages * 1024
    arena = buf.stats()["allocator"]
    # baseline: a dict of numpy arrays, the plain Python alternative
    t0 = time.perf_counter()
    d = {f"p{i}": np.zeros(128) for i in range(pages)}
    t_dict = time.perf_counter() - t0
    del d
    yield Row(GROUP, f"create_page x {pages:,} (1 KiB float64 each, in-memory buffer)", t_create,
              "dict of np.zeros(128)", t_dict, target="< 1 s" + ("" if not quick else " (at 100k; quick runs 10k)"),
              met=(t_create < 1.0) if not quick else None,
              note="each create_page is a logged, committed schema epoch")
    # tracemalloc sees Python-heap bookkeeping (page objects, log records, graph nodes); page data lives in
    # the allocator's arenas (not traced), so traced bytes are bookkeeping alone.
    per_page_traced = traced / pages
    per_page_rss = max(0, rss1 - rss0 - data) / pages
    yield Row(GROUP, "bookkeeping bytes per 1 KiB page beyond its data (tracemalloc, Python heap)",
              per_page_traced, "", None, unit="B", target="<= 512 B", met=per_page_traced <= 512,
              note=f"RSS delta minus data: {per_page_rss:.0f} B/page; allocator: "
                   f"{arena.get('bytes_reserved', '?')} B reserved for {data} B of data",
              extra={"rss_per_page": per_page_rss, "allocator": {k: v for k, v in arena.items()
                                                                 if isinstance(v, (int, float))}})
    buf.close()

import tracemalloc

import numpy as np

import mmsb
from mmsb import _kernels


class Allocator:
    def setup(self):
        self.a = _kernels.alloc.Allocator()

    def track_bench_cycle_ns(self):
        return self.a.bench_cycle(200_000, 1024)
    track_bench_cycle_ns.unit = "ns"

    def time_alloc_free_python(self):
        a = self.a
        for _ in range(1000):
            a.free(a.alloc(1024))

    def time_numpy_empty(self):
        for _ in range(1000):
            np.empty(128)


class CreatePage:
    timeout = 300

    def time_create_page_5k(self):
        buf = mmsb.open(None)
        for i in range(5000):
            buf.create_page(f"p{i}", 128)
        buf.close()

    def track_bookkeeping_bytes_per_page(self):
        buf = mmsb.open(None)
        tracemalloc.start()
        for i in range(2000):
            buf.create_page(f"p{i}", 128)
        traced, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        buf.close()
        return traced / 2000
    track_bookkeeping_bytes_per_page.unit = "bytes"

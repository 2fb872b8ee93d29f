"""Helpers shared by the asv benchmarks."""
import time


def ratio(fn_mmsb, fn_base, repeat=3):
    """baseline / mmsb, each the best of ``repeat`` runs, alternated."""
    a = b = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn_mmsb()
        a = min(a, time.perf_counter() - t0)
        t0 = time.perf_counter()
        fn_base()
        b = min(b, time.perf_counter() - t0)
    return b / a
